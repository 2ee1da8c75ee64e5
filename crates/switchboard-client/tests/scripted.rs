//! The client against a scripted server (tokio-tungstenite, in the test), for what the real
//! gateway does not do on demand: every kind of close code, temporary connect errors, a
//! server that stops pinging, a frame that batches a reply with pushes.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{quick_backoff, Watch, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_client::{Client, Config, Event};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type ServerSide = WebSocketStream<TcpStream>;

struct Script {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Script {
    async fn new() -> Script {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Script { listener, addr }
    }

    fn client(&self, max_ping_delay: Duration) -> (Client, Watch) {
        let mut config = Config::new(format!("ws://{}/connection/websocket", self.addr))
            .with_backoff(quick_backoff());
        config.max_ping_delay = max_ping_delay;
        let (client, events) = Client::connect(config).unwrap();
        (client, Watch::new(events))
    }

    async fn accept(&self) -> ServerSide {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("client connects in time")
            .unwrap();
        tokio_tungstenite::accept_async(tcp).await.unwrap()
    }

    /// Accepts a connection and answers its `connect` with `reply` (given the command's id).
    async fn accept_connect(&self, reply: impl FnOnce(u64) -> Value) -> ServerSide {
        let mut ws = self.accept().await;
        let command = read(&mut ws).await;
        assert!(command.get("connect").is_some(), "{command}");
        let id = command["id"].as_u64().unwrap();
        send(&mut ws, &reply(id).to_string()).await;
        ws
    }
}

fn connected_reply(ping: u32) -> impl FnOnce(u64) -> Value {
    move |id| json!({"id": id, "connect": {"client": "c-1", "version": "test", "ping": ping, "pong": true}})
}

async fn read(ws: &mut ServerSide) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a client frame in time")
            .expect("client still connected")
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

async fn send(ws: &mut ServerSide, text: &str) {
    ws.send(Message::text(text.to_owned())).await.unwrap();
}

async fn close_with(ws: &mut ServerSide, code: u16, reason: &str) {
    ws.close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }))
    .await
    .unwrap();
}

async fn disconnected(watch: &mut Watch) -> (u32, String, bool) {
    match watch
        .until("Disconnected", |e| matches!(e, Event::Disconnected { .. }))
        .await
    {
        Event::Disconnected {
            code,
            reason,
            reconnect,
        } => (code, reason, reconnect),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn close_codes_decide_between_reconnect_and_stop() {
    let script = Script::new().await;
    let (client, mut watch) = script.client(Duration::from_secs(10));
    // Reconnect codes: the client comes back each time.
    for code in [3001, 3008, 4000, 1011] {
        let mut ws = script.accept_connect(connected_reply(0)).await;
        common::connected(&mut watch).await;
        close_with(&mut ws, code, "go away for now").await;
        drop(ws);
        let (got, reason, reconnect) = disconnected(&mut watch).await;
        assert_eq!(
            (got, reason.as_str(), reconnect),
            (u32::from(code), "go away for now", true)
        );
        let Event::Connecting { attempt: 0, .. } = watch.next("Connecting").await else {
            panic!("{:#?}", watch.log);
        };
    }
    // A stop code: the client stops and its events end.
    let mut ws = script.accept_connect(connected_reply(0)).await;
    common::connected(&mut watch).await;
    close_with(&mut ws, 3503, "force disconnect").await;
    drop(ws);
    assert_eq!(
        disconnected(&mut watch).await,
        (3503, "force disconnect".to_owned(), false)
    );
    watch.until_end().await;
    assert!(client.subscribe("x").await.is_err());
}

#[tokio::test]
async fn message_too_big_stops_and_other_transport_failures_reconnect() {
    let script = Script::new().await;
    let (_client, mut watch) = script.client(Duration::from_secs(10));
    let ws = script.accept_connect(connected_reply(0)).await;
    common::connected(&mut watch).await;
    drop(ws); // TCP gone, no close frame: 1006, reconnect.
    let (code, _, reconnect) = disconnected(&mut watch).await;
    assert_eq!((code, reconnect), (1006, true));
    // A Centrifugo-style `disconnect` push, then the TCP connection ends with no close
    // frame: the push's code decides.
    let mut ws = script.accept_connect(connected_reply(0)).await;
    common::connected(&mut watch).await;
    let push = json!({"push": {"disconnect": {"code": 3013, "reason": "too many requests"}}});
    send(&mut ws, &push.to_string()).await;
    drop(ws);
    assert_eq!(
        disconnected(&mut watch).await,
        (3013, "too many requests".to_owned(), true)
    );
    let mut ws = script.accept_connect(connected_reply(0)).await;
    common::connected(&mut watch).await;
    ws.close(Some(CloseFrame {
        code: CloseCode::Size,
        reason: "message too big".into(),
    }))
    .await
    .unwrap();
    drop(ws);
    let (code, _, reconnect) = disconnected(&mut watch).await;
    assert_eq!((code, reconnect), (1009, false));
    watch.until_end().await;
}

#[tokio::test]
async fn temporary_connect_errors_retry_and_permanent_ones_stop() {
    let script = Script::new().await;
    let (_client, mut watch) = script.client(Duration::from_secs(10));
    // The server side of a refused try is dropped at once: the client closes it anyway.
    drop(
        script
            .accept_connect(|id| json!({"id": id, "error": {"code": 100, "message": "internal server error", "temporary": true}}))
            .await,
    );
    drop(
        script
            .accept_connect(
                |id| json!({"id": id, "error": {"code": 109, "message": "token expired"}}),
            )
            .await,
    );
    let third = script.accept_connect(connected_reply(0)).await;
    common::connected(&mut watch).await;
    let attempts: Vec<u32> = watch
        .log
        .iter()
        .filter_map(|e| match e {
            Event::Connecting { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, vec![0, 1, 2], "failed tries count up");
    assert!(
        !watch
            .log
            .iter()
            .any(|e| matches!(e, Event::Disconnected { .. })),
        "a failed try is not a disconnection: {:#?}",
        watch.log
    );
    drop(third);
    disconnected(&mut watch).await;
    let refused = script
        .accept_connect(
            |id| json!({"id": id, "error": {"code": 103, "message": "permission denied"}}),
        )
        .await;
    drop(refused);
    assert_eq!(
        disconnected(&mut watch).await,
        (103, "permission denied".to_owned(), false)
    );
    watch.until_end().await;
}

#[tokio::test]
async fn a_server_that_stops_pinging_is_given_up() {
    let script = Script::new().await;
    let (_client, mut watch) = script.client(Duration::from_millis(50));
    // The connect reply promises a ping every second; none comes.
    let _silent = script.accept_connect(connected_reply(1)).await;
    common::connected(&mut watch).await;
    let (code, reason, reconnect) = disconnected(&mut watch).await;
    assert_eq!((code, reconnect), (1006, true));
    assert!(reason.contains("ping"), "{reason}");
    let _next = script.accept_connect(connected_reply(0)).await;
    common::connected(&mut watch).await;
}

#[tokio::test]
async fn pings_are_answered_and_batched_frames_are_handled_in_order() {
    let script = Script::new().await;
    let (client, mut watch) = script.client(Duration::from_secs(10));
    let mut ws = script.accept_connect(connected_reply(25)).await;
    common::connected(&mut watch).await;
    send(&mut ws, "{}").await;
    assert_eq!(read(&mut ws).await, json!({}));

    client.subscribe("news").await.unwrap();
    let subscribe = read(&mut ws).await;
    assert_eq!(subscribe["subscribe"], json!({"channel": "news"}));
    let id = subscribe["id"].as_u64().unwrap();
    // A live publication overtaking the reply, then the reply with recovered publications and
    // another live one, all in one frame.
    let frame = [
        json!({"push": {"channel": "news", "pub": {"data": "live-3", "offset": 3}}}),
        json!({"id": id, "subscribe": {"recoverable": true, "epoch": "e", "offset": 2,
            "recovered": true, "was_recovering": true,
            "publications": [{"data": "old-1", "offset": 1}, {"data": "old-2", "offset": 2}]}}),
        json!({"push": {"channel": "news", "pub": {"data": "live-4", "offset": 4}}}),
    ]
    .map(|v| v.to_string())
    .join("\n");
    send(&mut ws, &frame).await;
    watch.until_publications(4).await;
    let data: Vec<&str> = watch
        .publications
        .iter()
        .map(|(_, _, d)| d.as_str().unwrap())
        .collect();
    assert_eq!(data, vec!["old-1", "old-2", "live-3", "live-4"]);
    let subscribed_at = watch
        .log
        .iter()
        .position(|e| {
            matches!(
                e,
                Event::Subscribed {
                    recovered: true,
                    ..
                }
            )
        })
        .unwrap();
    let first_publication = watch
        .log
        .iter()
        .position(|e| matches!(e, Event::Publication { .. }))
        .unwrap();
    assert!(subscribed_at < first_publication);

    // After a reconnect the subscription recovers from the last offset delivered.
    drop(ws);
    disconnected(&mut watch).await;
    let mut ws = script.accept_connect(connected_reply(25)).await;
    common::connected(&mut watch).await;
    let resubscribe = read(&mut ws).await;
    assert_eq!(
        resubscribe["subscribe"],
        json!({"channel": "news", "recover": true, "offset": 4, "epoch": "e"})
    );
}
