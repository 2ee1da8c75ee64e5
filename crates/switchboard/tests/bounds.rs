//! Node-wide bounds (channels, history streams, presence entries) and replies and publications
//! that could never fit a connection's queue (issue 11, items 2 and 5): each refused with its
//! documented code, nobody disconnected for it, and the node still serving others.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use switchboard::config::{NamespaceConfig, PublishRule, SubscribeRule};
use switchboard::Config;
use tokio_tungstenite::tungstenite::Message;

/// `feed` keeps history (50) with recovery; `room` has presence and lets subscribers publish.
fn bounds_config() -> Config {
    let mut config = config();
    let feed = NamespaceConfig {
        subscribe: Some(SubscribeRule::Authenticated),
        publish: Some(PublishRule::Subscribers),
        history_size: Some(50),
        history_ttl: Some(Duration::from_secs(600)),
        recover: Some(true),
        ..NamespaceConfig::default()
    };
    let room = NamespaceConfig {
        subscribe: Some(SubscribeRule::Authenticated),
        publish: Some(PublishRule::Subscribers),
        presence: Some(true),
        ..NamespaceConfig::default()
    };
    config.channels.namespaces.insert("feed".into(), feed);
    config.channels.namespaces.insert("room".into(), room);
    config
}

async fn api_publish(server: &TestServer, channel: &str, data: Value) -> Value {
    let (status, body) = server
        .api("publish", json!({ "channel": channel, "data": data }))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn offsets(publications: &Value) -> Vec<u64> {
    publications
        .as_array()
        .map(|all| all.iter().map(|p| p["offset"].as_u64().unwrap()).collect())
        .unwrap_or_default()
}

// ---- node-wide bounds ----

#[tokio::test]
async fn a_subscribe_that_would_open_a_channel_past_max_channels_gets_error_106() {
    let mut config = bounds_config();
    config.limits.max_channels = 2;
    let server = start(config).await;
    let mut first = Proto::connected(&server, "a").await;
    for channel in ["room:1", "room:2"] {
        let reply = first.call("subscribe", json!({ "channel": channel })).await;
        assert!(reply.get("error").is_none(), "{reply}");
    }
    let reply = first
        .call("subscribe", json!({ "channel": "room:3" }))
        .await;
    assert_eq!(reply["error"]["code"], 106, "{reply}");

    // A channel that is open admits more subscribers, and publications still flow.
    let mut second = Proto::connected(&server, "b").await;
    let reply = second
        .call("subscribe", json!({ "channel": "room:1" }))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    api_publish(&server, "room:1", json!("still open")).await;
    assert_eq!(second.next_publication().await["data"], "still open");
    server.stop().await;
}

#[tokio::test]
async fn a_plain_door_that_would_open_a_channel_past_max_channels_is_refused_with_503() {
    let mut config = config();
    config.limits.max_channels = 1;
    let server = start(config).await;
    let mut a = server.connect_as("/ws/chat/open", "a").await;
    let url = format!(
        "{}?token={}",
        server.url("/ws/chat/other"),
        token("b", 3600)
    );
    let (status, body) = refused(&url, &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "channel_limit");

    // The open room still admits members, and they are served.
    let mut b = server.connect_as("/ws/chat/open", "b").await;
    b.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_text(&mut a).await, "hello");
    server.stop().await;
}

#[tokio::test]
async fn an_api_publish_that_would_start_a_stream_past_max_history_streams_gets_error_106() {
    let mut config = bounds_config();
    config.limits.max_history_streams = 1;
    let server = start(config).await;
    let body = api_publish(&server, "feed:kept", json!(1)).await;
    assert_eq!(body["result"]["offset"], 1, "{body}");
    let body = api_publish(&server, "feed:new", json!(1)).await;
    assert_eq!(body["error"]["code"], 106, "{body}");

    // The stream that exists keeps working.
    let mut reader = Proto::connected(&server, "r").await;
    let reply = reader
        .call("subscribe", json!({ "channel": "feed:kept" }))
        .await;
    assert_eq!(reply["subscribe"]["offset"], 1, "{reply}");
    api_publish(&server, "feed:kept", json!(2)).await;
    assert_eq!(reader.next_publication().await["offset"], 2);
    server.stop().await;
}

#[tokio::test]
async fn a_subscribe_that_would_start_a_stream_past_max_history_streams_gets_error_106() {
    let mut config = bounds_config();
    config.limits.max_history_streams = 1;
    let server = start(config).await;
    api_publish(&server, "feed:kept", json!(1)).await;
    let mut client = Proto::connected(&server, "c").await;
    let reply = client
        .call("subscribe", json!({ "channel": "feed:new" }))
        .await;
    assert_eq!(reply["error"]["code"], 106, "{reply}");
    let reply = client
        .call("subscribe", json!({ "channel": "feed:kept" }))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    api_publish(&server, "feed:kept", json!(2)).await;
    assert_eq!(client.next_publication().await["offset"], 2);
    server.stop().await;
}

#[tokio::test]
async fn a_subscribe_past_max_presence_entries_gets_error_106() {
    let mut config = bounds_config();
    config.limits.max_presence_entries = 1;
    let server = start(config).await;
    let mut first = Proto::connected(&server, "a").await;
    let reply = first
        .call("subscribe", json!({ "channel": "room:p" }))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    let mut second = Proto::connected(&server, "b").await;
    let reply = second
        .call("subscribe", json!({ "channel": "room:p" }))
        .await;
    assert_eq!(reply["error"]["code"], 106, "{reply}");

    // The member already present is still served, and presence shows it alone.
    let reply = first.call("presence", json!({ "channel": "room:p" })).await;
    assert_eq!(
        reply["presence"]["presence"].as_object().unwrap().len(),
        1,
        "{reply}"
    );
    api_publish(&server, "room:p", json!("hi")).await;
    assert_eq!(first.next_publication().await["data"], "hi");
    server.stop().await;
}

#[tokio::test]
async fn a_stream_a_subscribe_started_is_dropped_when_its_last_subscriber_leaves_unpublished() {
    let mut config = bounds_config();
    // No reconnect window: dropped at the next sweep (positions still outlive 24 h).
    config.client.history_unused_ttl = Duration::ZERO;
    let server = start(config).await;
    let mut client = Proto::connected(&server, "c").await;
    for n in 0..5 {
        let channel = format!("feed:made-up-{n}");
        let reply = client
            .call(
                "subscribe",
                json!({ "channel": channel, "recover": true, "offset": 0, "epoch": "" }),
            )
            .await;
        assert!(reply.get("error").is_none(), "{reply}");
        client
            .call("unsubscribe", json!({ "channel": channel }))
            .await;
    }
    let addr = server.addr;
    eventually("the unpublished streams are dropped", || async move {
        metric(addr, "switchboard_history_streams ").await == Some(0.0)
    })
    .await;
    // Reads create nothing either.
    client
        .call("history", json!({ "channel": "feed:never", "limit": -1 }))
        .await;
    server
        .api("history", json!({ "channel": "feed:never" }))
        .await;
    assert_eq!(
        metric(addr, "switchboard_history_streams ").await,
        Some(0.0)
    );
    // The client is still served.
    client
        .call("subscribe", json!({ "channel": "feed:live" }))
        .await;
    api_publish(&server, "feed:live", json!(1)).await;
    assert_eq!(client.next_publication().await["offset"], 1);
    server.stop().await;
}

// ---- what could never fit a connection's queue ----

/// A small queue bound: 16 KiB, so a reply may carry 8 KiB.
fn small_queue_config() -> Config {
    let mut config = bounds_config();
    config.limits.max_message_bytes = 4096;
    config.limits.max_queued_bytes = 16384;
    config
}

#[tokio::test]
async fn an_api_publish_larger_than_the_queue_bound_is_refused_and_nobody_is_disconnected() {
    let server = start(small_queue_config()).await;
    let mut subscriber = Proto::connected(&server, "s").await;
    subscriber
        .call("subscribe", json!({ "channel": "feed:big" }))
        .await;
    let body = api_publish(&server, "feed:big", json!("x".repeat(20_000))).await;
    assert_eq!(body["error"]["code"], 106, "{body}");
    assert_eq!(body["error"]["message"], "publication too large");
    // Nothing was published (the next offset is 1), and the subscriber was not closed.
    let body = api_publish(&server, "feed:big", json!("small")).await;
    assert_eq!(body["result"]["offset"], 1, "{body}");
    assert_eq!(subscriber.next_publication().await["data"], "small");
    server.stop().await;
}

#[tokio::test]
async fn a_client_publish_whose_push_would_pass_the_queue_bound_gets_error_106() {
    let mut config = bounds_config();
    // Messages as large as the queue: the push around such a message could never be queued.
    config.limits.max_message_bytes = 8192;
    config.limits.max_queued_bytes = 8192;
    let server = start(config).await;
    // The push carries the publisher's user and client id, which the command does not.
    let mut publisher = Proto::connected(&server, &"p".repeat(40)).await;
    let mut subscriber = Proto::connected(&server, "s").await;
    for client in [&mut publisher, &mut subscriber] {
        client
            .call("subscribe", json!({ "channel": "room:x" }))
            .await;
    }
    let reply = publisher
        .call(
            "publish",
            json!({ "channel": "room:x", "data": "y".repeat(8120) }),
        )
        .await;
    assert_eq!(reply["error"]["code"], 106, "{reply}");
    let reply = publisher
        .call("publish", json!({ "channel": "room:x", "data": "fits" }))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    assert_eq!(subscriber.next_publication().await["data"], "fits");
    server.stop().await;
}

/// Publishes `count` publications of about 1.5 KiB each to `channel`.
async fn publish_bulky(server: &TestServer, channel: &str, count: usize) {
    for n in 0..count {
        api_publish(server, channel, json!(format!("{n}:{}", "z".repeat(1500)))).await;
    }
}

#[tokio::test]
async fn a_recovery_larger_than_a_reply_may_be_is_not_recovered_and_not_a_disconnect() {
    let server = start(small_queue_config()).await;
    let mut first = Proto::connected(&server, "u").await;
    let reply = first
        .call("subscribe", json!({ "channel": "feed:r" }))
        .await;
    let epoch = reply["subscribe"]["epoch"].as_str().unwrap().to_owned();
    api_publish(&server, "feed:r", json!(1)).await;
    assert_eq!(first.next_publication().await["offset"], 1);
    drop(first);
    // About 30 KiB missed (offsets 2 to 21): more than the 16 KiB queue.
    publish_bulky(&server, "feed:r", 20).await;

    let mut again = Proto::connected(&server, "u").await;
    let reply = again
        .call(
            "subscribe",
            json!({ "channel": "feed:r", "recover": true, "offset": 1, "epoch": epoch }),
        )
        .await;
    let result = &reply["subscribe"];
    assert_eq!(result["was_recovering"], true, "{reply}");
    assert_ne!(result["recovered"], true, "a gap is reported: {reply}");
    assert_eq!(result["offset"], 21);
    let got = offsets(&result["publications"]);
    assert!(!got.is_empty() && got.len() < 20, "{got:?}");
    let first_kept = got[0];
    assert_eq!(
        got,
        (first_kept..=21).collect::<Vec<_>>(),
        "the newest that fit, contiguous up to the stream's top"
    );
    // Still connected, and live publications follow with no gap.
    api_publish(&server, "feed:r", json!("live")).await;
    let live = again.next_publication().await;
    assert_eq!(live["offset"], 22);
    server.stop().await;
}

#[tokio::test]
async fn a_history_reply_larger_than_a_reply_may_be_holds_the_first_that_fit() {
    let server = start(small_queue_config()).await;
    publish_bulky(&server, "feed:h", 20).await;
    let mut client = Proto::connected(&server, "u").await;
    let reply = client
        .call("history", json!({ "channel": "feed:h", "limit": -1 }))
        .await;
    let page = offsets(&reply["history"]["publications"]);
    assert!(!page.is_empty() && page.len() < 20, "{reply}");
    assert_eq!(page, (1..=page.len() as u64).collect::<Vec<_>>());
    assert_eq!(reply["history"]["offset"], 20);
    // The next page follows on from the last offset received.
    let last = *page.last().unwrap();
    let epoch = reply["history"]["epoch"].clone();
    let reply = client
        .call(
            "history",
            json!({ "channel": "feed:h", "limit": -1, "since": { "offset": last, "epoch": epoch } }),
        )
        .await;
    assert_eq!(offsets(&reply["history"]["publications"])[0], last + 1);
    // Still connected and served.
    client
        .call("subscribe", json!({ "channel": "feed:h" }))
        .await;
    api_publish(&server, "feed:h", json!("live")).await;
    assert_eq!(client.next_publication().await["offset"], 21);
    server.stop().await;
}
