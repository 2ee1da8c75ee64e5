//! Test support: a real gateway on 127.0.0.1:0, real WebSocket clients (tokio-tungstenite),
//! a raw HTTP client for the API, and tokens.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use switchboard::config::Secret;
use switchboard::{CancellationToken, Config, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod proto;
#[allow(unused_imports)]
pub use proto::Proto;

pub const SECRET: &str = "test-secret-0123456789-abcdefghij";
pub const API_KEY: &str = "test-api-key";
/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<()>,
}

/// Production-like defaults: tokens required, API key set, no rate limit unless a test sets one.
pub fn config() -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.token.hmac_secret = Secret(SECRET.into());
    config.api.key = Secret(API_KEY.into());
    config.limits.client_message_rate = 0;
    config.doors.echo = Some(true);
    config
}

pub async fn start(config: Config) -> TestServer {
    let gateway = Gateway::bind(config).await.expect("gateway binds");
    let addr = gateway.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(gateway.run(shutdown.clone()));
    TestServer {
        addr,
        shutdown,
        handle,
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Connects with a token for `user` in the query string.
    pub async fn connect_as(&self, path: &str, user: &str) -> Client {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}token={}", self.url(path), token(user, 3600));
        connect(&url).await.expect("connects")
    }

    /// Calls a server API method with the right key.
    pub async fn api(&self, method: &str, body: Value) -> (u16, Value) {
        let (status, body) = http(
            self.addr,
            "POST",
            &format!("/api/{method}"),
            &[("X-API-Key", API_KEY)],
            &body.to_string(),
        )
        .await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Proves the server still serves: two clients in a fresh room exchange a message.
    pub async fn assert_still_serving(&self) {
        let room = format!("/ws/chat/alive-{}", fastrand::u32(..));
        let mut a = self.connect_as(&room, "alive-a").await;
        let mut b = self.connect_as(&room, "alive-b").await;
        a.send(Message::text("still here")).await.unwrap();
        assert_eq!(next_text(&mut b).await, "still here");
        assert_eq!(next_text(&mut a).await, "still here");
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("gateway stops")
            .unwrap();
    }
}

pub fn token(user: &str, ttl: u64) -> String {
    switchboard::auth::mint_hs256(SECRET, user, ttl).unwrap()
}

pub async fn connect(url: &str) -> Result<Client, WsError> {
    connect_with(url, &[]).await
}

pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Client, WsError> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request
            .headers_mut()
            .insert(name, HeaderValue::from_str(value).unwrap());
    }
    let (client, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake in time")?;
    Ok(client)
}

/// The HTTP status and JSON body of a refused upgrade.
pub async fn refused(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    match connect_with(url, headers).await {
        Ok(_) => panic!("upgrade to {url} was accepted"),
        Err(WsError::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            (
                response.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or(Value::Null),
            )
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

/// The next data message as text, skipping pings and pongs.
pub async fn next_text(client: &mut Client) -> String {
    loop {
        match next(client).await {
            Message::Text(text) => return text.to_string(),
            Message::Binary(bytes) => return String::from_utf8_lossy(&bytes).into_owned(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

pub async fn next(client: &mut Client) -> Message {
    tokio::time::timeout(WAIT, client.next())
        .await
        .expect("a message in time")
        .expect("stream open")
        .expect("no error")
}

/// Reads until the close frame and returns its code (1006 when the socket ends without one).
pub async fn close_code(client: &mut Client) -> u16 {
    loop {
        match tokio::time::timeout(WAIT, client.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Close(None))) => return 1005,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return 1006,
        }
    }
}

/// A minimal HTTP/1.1 request over a fresh socket; returns status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path, headers, body).await;
    (status, body)
}

/// Like [`http`], also returning the response headers (lower-cased names).
pub async fn http_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// Reads a metric's value from `/metrics` (the first line starting with `prefix`).
pub async fn metric(addr: SocketAddr, prefix: &str) -> Option<f64> {
    let (_, body) = http(addr, "GET", "/metrics", &[], "").await;
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Waits until `check` holds, polling; fails the test after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw WebSocket: handshake by hand, then bytes. For clients that misbehave on purpose.
pub async fn raw_upgrade(addr: SocketAddr, path: &str) -> TcpStream {
    raw_upgrade_with(addr, path, &[]).await.0
}

/// [`raw_upgrade`] with extra request headers; also returns the response head.
pub async fn raw_upgrade_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(WAIT, stream.read_exact(&mut byte))
            .await
            .expect("101 in time")
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (stream, head)
}

/// Reads one server frame from a raw socket: its first byte (FIN, RSV1, opcode) and payload.
pub async fn raw_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    try_raw_frame(stream)
        .await
        .expect("a frame, not the end of the socket")
}

/// [`raw_frame`], or `None` when the socket ends first.
async fn try_raw_frame(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 2];
    tokio::time::timeout(WAIT, stream.read_exact(&mut header))
        .await
        .expect("frame in time")
        .ok()?;
    let mut len = u64::from(header[1] & 0x7F);
    if len == 126 {
        let mut ext = [0u8; 2];
        stream.read_exact(&mut ext).await.ok()?;
        len = u64::from(u16::from_be_bytes(ext));
    } else if len == 127 {
        let mut ext = [0u8; 8];
        stream.read_exact(&mut ext).await.ok()?;
        len = u64::from_be_bytes(ext);
    }
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).await.ok()?;
    Some((header[0], payload))
}

/// A masked client frame whose first byte (FIN and opcode) is `first_byte`.
pub fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    use switchboard::ws::frame::{encode_masked, Opcode};
    let mut frame = encode_masked(true, Opcode::Binary, payload, [7, 1, 9, 3]);
    frame[0] = first_byte;
    frame
}

/// Reads server frames from a raw socket until a close frame; returns (opcodes seen, close code).
/// The socket ending without a close frame gives no code.
pub async fn raw_until_close(stream: &mut TcpStream) -> (Vec<u8>, Option<u16>) {
    let mut opcodes = Vec::new();
    loop {
        let Some((first, payload)) = try_raw_frame(stream).await else {
            return (opcodes, None);
        };
        let opcode = first & 0x0F;
        opcodes.push(opcode);
        if opcode == 0x8 {
            let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            return (opcodes, code);
        }
    }
}
