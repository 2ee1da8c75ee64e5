//! `hook-backend`: the backend side of the connect-hook benchmark. A minimal HTTP/1.1
//! keep-alive server that answers every POST with one fixed connect-hook result
//! (`{"result":{"user":...}}`), for `--duration`, then reports how many calls it answered. It
//! does the least a backend can do, so a `connect` run against a gateway whose connect hook
//! points here measures what the hook costs the gateway, not what a real backend costs
//! (docs/benchmarks.md, docs/hooks.md).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::report::Report;

/// Longest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Where the request head ends (after its blank line), if it has arrived.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The `Content-Length` of a request head (0 when absent).
fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

/// Answers requests on one connection until the peer closes it.
async fn serve(mut tcp: TcpStream, reply: Rc<[u8]>, calls: Rc<Cell<u64>>) -> Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let end = loop {
            if let Some(end) = head_end(&buf) {
                break end;
            }
            if buf.len() > MAX_HEAD {
                bail!("request head over {MAX_HEAD} bytes");
            }
            if tcp.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let total = end + content_length(&buf[..end]);
        while buf.len() < total {
            if tcp.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        buf.drain(..total);
        tcp.write_all(&reply).await?;
        calls.set(calls.get() + 1);
    }
}

/// Serves on `listen` for `duration`; the report counts the calls answered.
pub async fn run(listen: SocketAddr, user: &str, duration: Duration) -> Result<Report> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the hook backend to {listen}"))?;
    let bound = listener.local_addr()?;
    eprintln!("hook backend: http://{bound}/ answers every POST as user {user:?} for {duration:?}");
    let body = serde_json::json!({ "result": { "user": user } }).to_string();
    let reply: Rc<[u8]> = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into();
    let calls = Rc::new(Cell::new(0u64));
    let accepting = async {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                // Out of descriptors, most likely: give the open connections a moment.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (reply, calls) = (Rc::clone(&reply), Rc::clone(&calls));
            tokio::task::spawn_local(async move {
                let _ = serve(tcp, reply, calls).await;
            });
        }
    };
    let _ = tokio::time::timeout(duration, accepting).await;
    let mut r = Report::new("hook-backend");
    r.param("listen", bound.to_string());
    r.param("user", user);
    r.int("calls", "connect-hook calls answered", calls.get());
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_lengths_are_read() {
        let head = b"POST /c HTTP/1.1\r\nContent-Length: 12\r\nHost: x\r\n\r\n{\"a\":1}";
        let end = head_end(head).unwrap();
        assert_eq!(content_length(&head[..end]), 12);
        assert_eq!(head_end(b"POST / HTTP/1.1\r\n"), None);
    }
}
