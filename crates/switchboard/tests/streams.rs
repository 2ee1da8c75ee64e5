//! The HTTP-streaming and SSE transports and the emulation endpoint, over raw sockets: what a
//! stream carries, and every bad input refused with its status and code while the server goes
//! on serving others.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One open stream: the socket, and what was read of it and not yet parsed.
struct Stream {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// Decoded body bytes not yet taken as lines.
    body: Vec<u8>,
}

impl Stream {
    /// Sends the request and reads the response head; returns the status and the stream.
    async fn open(server: &TestServer, head: &str, body: &str) -> (u16, String, Stream) {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let request = format!(
            "{head}\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            server.addr,
            body.len()
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut stream = Stream {
            tcp,
            buf: Vec::new(),
            body: Vec::new(),
        };
        let head = loop {
            if let Some(at) = find(&stream.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&stream.buf[..at]).into_owned();
                stream.buf.drain(..at + 4);
                break head;
            }
            assert!(stream.fill().await, "the response head came");
        };
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, head.to_ascii_lowercase(), stream)
    }

    /// Reads more bytes; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("the stream sent something in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next line of the (chunked) body, or `None` once the body ended.
    async fn next_line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.body.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.body.drain(..=at).collect();
                return Some(String::from_utf8_lossy(&line[..at]).into_owned());
            }
            // One chunk: its size line, its bytes, CRLF.
            if let Some(end) = find(&self.buf, b"\r\n") {
                let size = usize::from_str_radix(
                    std::str::from_utf8(&self.buf[..end]).unwrap().trim(),
                    16,
                )
                .unwrap();
                if size == 0 {
                    return None;
                }
                if self.buf.len() >= end + 2 + size + 2 {
                    self.body
                        .extend_from_slice(&self.buf[end + 2..end + 2 + size]);
                    self.buf.drain(..end + 2 + size + 2);
                    continue;
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next JSON reply on an HTTP stream (`data: ` lines of SSE are unwrapped).
    async fn next_json(&mut self) -> Option<Value> {
        loop {
            let line = self.next_line().await?;
            let line = line.strip_prefix("data: ").unwrap_or(&line);
            if line.trim().is_empty() || line == "{}" {
                continue;
            }
            return Some(serde_json::from_str(line).unwrap());
        }
    }
}

/// The test defaults with channels any user may subscribe to.
fn stream_config() -> switchboard::Config {
    let mut config = config();
    config.channels.default.subscribe = Some(switchboard::config::SubscribeRule::Authenticated);
    config
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn connect_command(user: &str) -> String {
    json!({"id": 1, "connect": {"token": token(user, 3600)}}).to_string()
}

/// Opens an HTTP stream for `user`; returns it with the session and node of its connect reply.
async fn connected(server: &TestServer, user: &str) -> (Stream, String, String) {
    let (status, _, mut stream) = Stream::open(
        server,
        "POST /connection/http_stream HTTP/1.1\r\nContent-Type: application/json",
        &connect_command(user),
    )
    .await;
    assert_eq!(status, 200);
    let reply = stream.next_json().await.unwrap();
    let result = &reply["connect"];
    let session = result["session"].as_str().unwrap().to_owned();
    let node = result["node"].as_str().unwrap().to_owned();
    assert_eq!(session.len(), 32, "{reply}");
    (stream, session, node)
}

async fn emulate(server: &TestServer, body: &str) -> (u16, Value) {
    let (status, body) = http(
        server.addr,
        "POST",
        "/emulation",
        &[("Content-Type", "application/json")],
        body,
    )
    .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn emulation_request(session: &str, node: &str, commands: &Value) -> String {
    json!({"session": session, "node": node, "data": commands.to_string()}).to_string()
}

#[tokio::test]
async fn commands_posted_to_the_emulation_endpoint_are_answered_on_the_stream() {
    let server = start(stream_config()).await;
    let (mut stream, session, node) = connected(&server, "ann").await;
    let subscribe = json!({"id": 2, "subscribe": {"channel": "news"}});
    let (status, _) = emulate(&server, &emulation_request(&session, &node, &subscribe)).await;
    assert_eq!(status, 200);
    let reply = stream.next_json().await.unwrap();
    assert_eq!(reply["id"], 2, "{reply}");
    assert!(reply.get("subscribe").is_some(), "{reply}");
    server
        .api("publish", json!({"channel": "news", "data": {"n": 1}}))
        .await;
    let push = stream.next_json().await.unwrap();
    assert_eq!(push["push"]["pub"]["data"], json!({"n": 1}), "{push}");
    // The API's disconnect ends the stream with a disconnect push carrying 3503.
    server.api("disconnect", json!({"user": "ann"})).await;
    let push = stream.next_json().await.unwrap();
    assert_eq!(push["push"]["disconnect"]["code"], 3503, "{push}");
    assert_eq!(push["push"]["disconnect"]["reconnect"], false, "{push}");
    assert_eq!(stream.next_line().await, None, "the stream ends");
    server.stop().await;
}

#[tokio::test]
async fn sse_carries_the_connect_reply_as_an_event() {
    let server = start(stream_config()).await;
    let query: String = connect_command("sam")
        .bytes()
        .map(|b| format!("%{b:02X}"))
        .collect();
    let (status, head, mut stream) = Stream::open(
        &server,
        &format!("GET /connection/sse?cf_connect={query} HTTP/1.1"),
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("x-accel-buffering: no"), "{head}");
    assert!(head.contains("cache-control: private, no-cache"), "{head}");
    let reply = stream.next_json().await.unwrap();
    assert_eq!(reply["connect"]["session"].as_str().unwrap().len(), 32);
    server.stop().await;
}

#[tokio::test]
async fn emulation_requests_with_bad_input_get_their_error_and_the_server_still_serves() {
    let mut config = stream_config();
    config.limits.max_message_bytes = 1024;
    let server = start(config).await;
    let (mut stream, session, node) = connected(&server, "eve").await;

    let ping = json!({});
    let cases = [
        (
            emulation_request(&session, "no-such-node", &ping),
            404,
            "unknown_node",
        ),
        ("not json".to_owned(), 400, "bad_emulation_request"),
        (
            json!({"session": session, "data": 5}).to_string(),
            400,
            "bad_emulation_request",
        ),
        (
            json!({"node": node, "data": "{}"}).to_string(),
            400,
            "bad_emulation_request",
        ),
        (
            json!({"session": session, "node": node, "data": " "}).to_string(),
            400,
            "bad_emulation_request",
        ),
        (
            json!({"session": session, "data": "x".repeat(8000)}).to_string(),
            413,
            "body_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let (got, answer) = emulate(&server, &body).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body:.80}: {answer}"
        );
    }
    let (status, body) = http(server.addr, "GET", "/emulation", &[], "").await;
    assert_eq!(status, 400, "{body}");

    // A session that never was is accepted and its commands dropped, as a node that forwards
    // a request to another answers whatever became of the session there (and Centrifugo
    // answers either way); the drop is counted.
    let dropped = "switchboard_emulation_requests_total{result=\"unknown_session\"}";
    let (status, answer) = emulate(
        &server,
        &emulation_request("0123456789abcdef0123456789abcdef", &node, &ping),
    )
    .await;
    assert_eq!((status, answer), (200, Value::Null));
    assert_eq!(metric(server.addr, dropped).await, Some(1.0));

    // The session refused none of that as its own: it still answers its commands.
    let subscribe = json!({"id": 7, "subscribe": {"channel": "news"}});
    let (status, _) = emulate(&server, &emulation_request(&session, &node, &subscribe)).await;
    assert_eq!(status, 200);
    assert_eq!(stream.next_json().await.unwrap()["id"], 7);

    // Commands that are not the protocol close the session with 3501, as on a WebSocket.
    let (status, _) = emulate(
        &server,
        &json!({"session": session, "node": node, "data": "{not a command"}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let push = stream.next_json().await.unwrap();
    assert_eq!(push["push"]["disconnect"]["code"], 3501, "{push}");
    assert_eq!(stream.next_line().await, None);
    // The session is gone: what is posted for it from now on is dropped, answered as above.
    let (status, answer) = emulate(&server, &emulation_request(&session, &node, &ping)).await;
    assert_eq!((status, answer), (200, Value::Null));
    assert_eq!(metric(server.addr, dropped).await, Some(2.0));

    let (mut other, other_session, _) = connected(&server, "other").await;
    let (status, _) = emulate(&server, &emulation_request(&other_session, "", &subscribe)).await;
    assert_eq!(status, 200);
    assert_eq!(other.next_json().await.unwrap()["id"], 7);
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn stream_requests_with_bad_input_are_refused_and_the_server_still_serves() {
    let mut config = stream_config();
    config.limits.max_message_bytes = 1024;
    config.origins.allowed = vec!["https://good.example".into()];
    let server = start(config).await;
    let cases = [
        (
            "POST /connection/http_stream HTTP/1.1",
            String::new(),
            400,
            "bad_stream_request",
        ),
        (
            "GET /connection/http_stream HTTP/1.1",
            String::new(),
            400,
            "bad_stream_request",
        ),
        (
            "GET /connection/sse HTTP/1.1",
            String::new(),
            400,
            "bad_stream_request",
        ),
        (
            "POST /connection/http_stream HTTP/1.1",
            "x".repeat(2000),
            413,
            "body_too_large",
        ),
        (
            "POST /connection/http_stream HTTP/1.1\r\nOrigin: https://evil.example",
            connect_command("mal"),
            403,
            "origin_not_allowed",
        ),
    ];
    for (head, body, status, code) in cases {
        let (got, _, mut stream) = Stream::open(&server, head, &body).await;
        let mut rest = Vec::new();
        rest.extend_from_slice(&stream.buf);
        let _ = tokio::time::timeout(WAIT, stream.tcp.read_to_end(&mut rest)).await;
        let text = String::from_utf8_lossy(&rest);
        assert_eq!(got, status, "{head}: {text}");
        assert!(text.contains(code), "{head}: {text}");
    }
    // A connect command the protocol refuses (a bad token) is answered on the stream, then
    // the stream ends, as a WebSocket closes.
    let (status, _, mut stream) = Stream::open(
        &server,
        "POST /connection/http_stream HTTP/1.1",
        &json!({"id": 1, "connect": {"token": "a.b.c"}}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let push = stream.next_json().await.unwrap();
    assert_eq!(push["push"]["disconnect"]["code"], 3500, "{push}");
    assert_eq!(stream.next_line().await, None);
    // An allowed origin may read the stream across origins.
    let (status, head, _stream) = Stream::open(
        &server,
        "POST /connection/http_stream HTTP/1.1\r\nOrigin: https://good.example",
        &connect_command("fine"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        head.contains("access-control-allow-origin: https://good.example"),
        "{head}"
    );
    server.assert_still_serving().await;
    server.stop().await;
}
