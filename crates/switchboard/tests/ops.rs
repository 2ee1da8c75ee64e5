//! Operations endpoints: health, readiness, metrics and trace ids.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn health_and_readiness_answer_200() {
    let server = start(config()).await;
    assert_eq!(
        http(server.addr, "GET", "/healthz", &[], "").await,
        (200, "ok".into())
    );
    assert_eq!(
        http(server.addr, "GET", "/readyz", &[], "").await,
        (200, "ready".into())
    );
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_connections_messages_and_rejections() {
    let server = start(config()).await;
    let mut a = server.connect_as("/ws/chat/m", "a").await;
    let _ = refused(&server.url("/ws/chat/m"), &[]).await;
    a.send(Message::text("counted")).await.unwrap();
    assert_eq!(next_text(&mut a).await, "counted");
    let (status, body) = http(server.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    for line in [
        "switchboard_connections{door=\"chat\"} 1",
        "switchboard_messages_in_total{door=\"chat\"} 1",
        "switchboard_handshake_rejections_total{code=\"token_required\"} 1",
        "switchboard_auth_failures_total 1",
        "switchboard_channels 1",
        "switchboard_subscriptions 1",
        "switchboard_handshake_seconds_bucket",
    ] {
        assert!(body.contains(line), "missing {line:?} in\n{body}");
    }
    drop(a);
    eventually("the disconnect is counted by code", || async {
        metric(server.addr, "switchboard_disconnects_total{code=\"1006\"")
            .await
            .is_some()
            || metric(server.addr, "switchboard_disconnects_total{code=\"1005\"")
                .await
                .is_some()
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn publications_are_timed_once_each_and_the_limit_and_readiness_are_exported() {
    let mut cfg = config();
    cfg.server.max_connections = 50;
    let server = start(cfg).await;
    // Two members, so one publication reaches two queues: still one observation of each.
    let mut a = server.connect_as("/ws/chat/timed", "a").await;
    let mut b = server.connect_as("/ws/chat/timed", "b").await;
    for n in 0..3 {
        let (status, _) = server
            .api(
                "publish",
                serde_json::json!({"channel": "chat:timed", "data": n}),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(next_text(&mut a).await, n.to_string());
        assert_eq!(next_text(&mut b).await, n.to_string());
    }
    assert_eq!(
        metric(server.addr, "switchboard_publish_seconds_count").await,
        Some(3.0)
    );
    assert_eq!(
        metric(server.addr, "switchboard_delivery_seconds_count").await,
        Some(3.0)
    );
    assert_eq!(
        metric(server.addr, "switchboard_connections_limit ").await,
        Some(50.0)
    );
    assert_eq!(metric(server.addr, "switchboard_ready ").await, Some(1.0));
    server.stop().await;
}

#[tokio::test]
async fn the_trace_id_is_returned_or_generated() {
    let server = start(config()).await;
    let (_, headers, _) = http_full(
        server.addr,
        "GET",
        "/healthz",
        &[("X-Trace-ID", "trace-abc")],
        "",
    )
    .await;
    assert!(headers.contains(&("x-trace-id".into(), "trace-abc".into())));
    let (_, headers, _) = http_full(server.addr, "GET", "/healthz", &[], "").await;
    let generated = headers
        .iter()
        .find(|(n, _)| n == "x-trace-id")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(generated.len(), 32);
    server.stop().await;
}
