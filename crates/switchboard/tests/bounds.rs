//! Node-wide bounds (channels, history streams, presence entries; issue 11, item 2): each
//! refused with its documented code, what exists kept working, and the node still serving
//! others.
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

/// A client-protocol connection spoken by hand.
struct Proto {
    ws: Client,
    next_id: u64,
}

impl Proto {
    async fn connected(server: &TestServer, user: &str) -> Proto {
        let ws = connect(&server.url("/connection/websocket")).await.unwrap();
        let mut proto = Proto { ws, next_id: 0 };
        let reply = proto
            .call("connect", json!({ "token": token(user, 3600) }))
            .await;
        assert!(reply["connect"]["client"].is_string(), "{reply}");
        proto
    }

    /// Sends one command and returns its reply (pushes before it are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id });
        command[method] = params;
        self.ws
            .send(Message::text(command.to_string()))
            .await
            .unwrap();
        loop {
            let message = self.next_json().await;
            if message["id"] == id {
                return message;
            }
        }
    }

    async fn next_json(&mut self) -> Value {
        loop {
            let text = next_text(&mut self.ws).await;
            for line in text.lines() {
                let value: Value = serde_json::from_str(line).unwrap();
                if value != json!({}) {
                    return value;
                }
            }
        }
    }

    /// The next publication pushed to this client.
    async fn next_publication(&mut self) -> Value {
        loop {
            let message = self.next_json().await;
            if message["push"]["pub"].is_object() {
                return message["push"]["pub"].clone();
            }
        }
    }
}

async fn api_publish(server: &TestServer, channel: &str, data: Value) -> Value {
    let (status, body) = server
        .api("publish", json!({ "channel": channel, "data": data }))
        .await;
    assert_eq!(status, 200, "{body}");
    body
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
