//! Failure isolation and lifecycle: slow consumers, heartbeats, panics, graceful shutdown.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

/// A subscriber that stops reading is dropped with 4000; the others get every publication.
#[tokio::test]
async fn a_stalled_reader_is_dropped_and_does_not_hold_up_the_others() {
    let mut config = config();
    config.limits.max_queued_bytes = 256 * 1024;
    // Linux doubles it: the stalled client can owe at most 256 KiB + 128 KiB + its small receive
    // buffer. Left at the OS default the send buffer alone grows past the 1.6 MB sent below.
    config.limits.socket_send_buffer_bytes = 64 * 1024;
    let server = start(config).await;
    // A small receive buffer so the kernel does not absorb the whole backlog.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let url = format!(
        "{}?token={}",
        server.url("/ws/chat/busy"),
        token("slow", 60)
    );
    let (mut stalled, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
    let mut healthy = server.connect_as("/ws/chat/busy", "fast").await;

    let payload = "x".repeat(16 * 1024);
    let total = 100; // 1.6 MB
    let reader = tokio::spawn(async move {
        for i in 0..total {
            let text = next_text(&mut healthy).await;
            assert!(
                text.starts_with(&format!("{i}:")),
                "publication {i} arrived in order"
            );
        }
        healthy
    });
    for i in 0..total {
        let (status, _) = server
            .api(
                "publish",
                json!({"channel": "chat:busy", "data": format!("{i}:{payload}")}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let _healthy = tokio::time::timeout(WAIT, reader)
        .await
        .expect("healthy subscriber keeps up")
        .unwrap();
    assert_eq!(close_code(&mut stalled).await, 4000);
    eventually("the drop is counted", || async {
        metric(server.addr, "switchboard_slow_consumer_drops_total").await == Some(1.0)
    })
    .await;
    server.assert_still_serving().await;
    server.stop().await;
}

/// The server pings; a client that answers nothing is closed with 4001 after two intervals.
#[tokio::test]
async fn a_silent_client_is_pinged_then_closed_with_4001() {
    let mut config = config();
    config.server.heartbeat_interval = Duration::from_millis(200);
    config.token.allow_anonymous = Some(true);
    let server = start(config).await;
    let mut raw = raw_upgrade(server.addr, "/ws/chat/quiet").await;
    let (opcodes, code) = raw_until_close(&mut raw).await;
    assert!(
        opcodes.contains(&0x9),
        "a ping came before the close: {opcodes:?}"
    );
    assert_eq!(code, Some(4001));
    server.assert_still_serving().await;
    server.stop().await;
}

/// A client that answers pings stays connected well past the deadline (two intervals).
#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let mut config = config();
    // Not shorter: the test client answers a ping when it next reads, and on a loaded machine
    // that can take longer than two very short intervals.
    config.server.heartbeat_interval = Duration::from_millis(300);
    let server = start(config).await;
    let mut client = server.connect_as("/ws/chat/alive", "u").await;
    let mut pings = 0;
    while pings < 5 {
        match next(&mut client).await {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    client.send(Message::text("after six pings")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "after six pings");
    server.stop().await;
}

/// A panic in one connection's handler closes that connection with 1011 and releases all it
/// held; the rest of the node carries on.
#[tokio::test]
async fn a_panic_ends_only_its_connection_and_releases_what_it_held() {
    let server = start(config()).await;
    let mut doomed = server.connect_as("/ws/chat/shared", "doomed").await;
    let mut neighbour = server.connect_as("/ws/chat/shared", "neighbour").await;
    eventually("both subscribed", || async {
        server.api("info", json!({})).await.1["result"]["nodes"][0]["num_subs"] == 2
    })
    .await;
    doomed
        .send(Message::binary(switchboard::TEST_PANIC_MESSAGE.to_vec()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut doomed).await, 1011);
    eventually("its subscription and connection are released", || async {
        let node = server.api("info", json!({})).await.1["result"]["nodes"][0].clone();
        node["num_subs"] == 1 && node["num_clients"] == 1
    })
    .await;
    neighbour.send(Message::text("carry on")).await.unwrap();
    assert_eq!(next_text(&mut neighbour).await, "carry on");
    server.assert_still_serving().await;
    server.stop().await;
}

/// On shutdown every client gets 1001, /readyz turns 503 while draining, and run() returns.
#[tokio::test]
async fn shutdown_closes_clients_with_1001_and_reports_not_ready() {
    let mut config = config();
    config.token.allow_anonymous = Some(true);
    config.server.shutdown_drain = Duration::from_secs(5);
    let server = start(config).await;
    let mut client = server.connect_as("/ws/chat/a", "u").await;
    // A raw client that never answers the close keeps the drain going for a moment.
    let mut lingering = raw_upgrade(server.addr, "/ws/chat/a").await;
    let (status, _) = http(server.addr, "GET", "/readyz", &[], "").await;
    assert_eq!(status, 200);
    server.shutdown.cancel();
    assert_eq!(close_code(&mut client).await, 1001);
    let (status, body) = http(server.addr, "GET", "/readyz", &[], "").await;
    assert_eq!((status, body.as_str()), (503, "draining"));
    let (status, _) = http(server.addr, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200, "alive while draining");
    let (_, code) = raw_until_close(&mut lingering).await;
    assert_eq!(code, Some(1001));
    lingering.shutdown().await.unwrap();
    tokio::time::timeout(WAIT, server.handle)
        .await
        .expect("run returns after the drain")
        .unwrap();
}
