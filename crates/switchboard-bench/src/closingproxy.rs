//! Test-only: a proxy on 127.0.0.1:0 in front of a server that makes it answer plain HTTP
//! requests the way Sockudo's HTTP API does, one request per connection: it adds
//! `Connection: close` to the first request of each connection (so the server answers with
//! `Connection: close` and closes), passes the answer back and closes; anything pipelined
//! behind that request is dropped unanswered. A WebSocket upgrade passes through untouched, so
//! subscribers and publishers can share the one address as they do on a real server.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Starts the proxy in front of `upstream` (on the current runtime); its address.
pub async fn start(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = serve(client, upstream).await;
            });
        }
    });
    addr
}

/// Reads the first request's head on `client` (and what came with it), forwards it to a new
/// connection to `upstream`, closing after it unless it is a WebSocket upgrade.
async fn serve(mut client: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let mut server = TcpStream::connect(upstream).await?;
    if head.contains("\r\nupgrade: websocket") {
        server.write_all(&buf).await?;
        tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        return Ok(());
    }
    let length: usize = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + 4 + length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    // The request with `Connection: close` added; what was pipelined behind it is dropped.
    let mut request = buf[..head_end].to_vec();
    request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    request.extend_from_slice(&buf[head_end + 4..head_end + 4 + length]);
    server.write_all(&request).await?;
    tokio::io::copy(&mut server, &mut client).await?;
    client.shutdown().await
}
