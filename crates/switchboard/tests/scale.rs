//! The hub and per-user paths at scale, through real sockets: members leaving a big room in
//! any order leave exactly the others receiving; what the API asks of a user reaches exactly
//! that user's open connections after churn; a connection's inbox of API requests is bounded;
//! server-side subscriptions (the token's `channels`, the API's `subscribe`) count against
//! `client.max_subscriptions`. Each test also shows the server serving others afterwards.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use switchboard::auth::{mint_claims_hs256, Claims};
use switchboard::config::{NamespaceConfig, SubscribeRule};
use switchboard::Config;

/// Production-like defaults plus `room`, which any signed-in user may subscribe to.
fn room_config() -> Config {
    let mut config = config();
    let room = NamespaceConfig {
        subscribe: Some(SubscribeRule::Authenticated),
        ..NamespaceConfig::default()
    };
    config.channels.namespaces.insert("room".into(), room);
    config
}

async fn info(server: &TestServer) -> Value {
    let (status, body) = server.api("info", json!({})).await;
    assert_eq!(status, 200, "{body}");
    body["result"]["nodes"][0].clone()
}

/// Subscribers of `channel` on the node, as the API's `channels` counts them.
async fn subscribers(server: &TestServer, channel: &str) -> u64 {
    let (_, body) = server.api("channels", json!({})).await;
    body["result"]["channels"][channel]["num_clients"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test]
async fn members_leaving_a_big_room_in_any_order_leave_exactly_the_others_receiving() {
    let server = start(config()).await;
    let mut members = Vec::new();
    for n in 0..80 {
        members.push((n, server.connect_as("/ws/chat/big", &format!("m{n}")).await));
    }
    eventually("80 members joined", || async {
        subscribers(&server, "chat:big").await == 80
    })
    .await;
    fastrand::Rng::with_seed(11).shuffle(&mut members);
    let (leaving, mut staying) = {
        let staying = members.split_off(50);
        (members, staying)
    };
    for (_, mut client) in leaving {
        client.close(None).await.unwrap();
    }
    eventually("50 members left", || async {
        subscribers(&server, "chat:big").await == 30
    })
    .await;
    server
        .api(
            "publish",
            json!({ "channel": "chat:big", "data": "to the rest" }),
        )
        .await;
    for (_, client) in &mut staying {
        assert_eq!(next_text(client).await, "to the rest");
    }
    assert_eq!(info(&server).await["num_subs"], 30);
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn per_user_api_calls_reach_exactly_the_users_open_connections_after_churn() {
    let server = start(room_config()).await;
    let mut rng = fastrand::Rng::with_seed(5);
    // Per user: client-protocol connections and notify-door ones; about half of each closed.
    let mut open: Vec<(&str, Proto)> = Vec::new();
    let mut plain: Vec<(&str, Client)> = Vec::new();
    let mut expected = 0;
    for user in ["a", "b", "c"] {
        for _ in 0..8 {
            let mut proto = Proto::connected(&server, user).await;
            if rng.bool() {
                proto.ws.close(None).await.unwrap();
            } else {
                open.push((user, proto));
            }
        }
        for _ in 0..4 {
            let path = format!("/ws/notify/user/{user}");
            let mut client = server.connect_as(&path, user).await;
            if rng.bool() {
                client.close(None).await.unwrap();
            } else {
                plain.push((user, client));
            }
        }
    }
    expected += open.len() + plain.len();
    eventually("closed connections are gone", || async {
        info(&server).await["num_clients"] == expected
    })
    .await;
    assert_eq!(info(&server).await["num_users"], 3);

    // Subscribe reaches exactly b's open protocol connections.
    let (status, body) = server
        .api("subscribe", json!({ "user": "b", "channel": "room:b" }))
        .await;
    assert_eq!((status, body["result"].clone()), (200, json!({})), "{body}");
    let bs = open.iter().filter(|(user, _)| *user == "b").count() as u64;
    assert!(bs > 0, "the seed leaves b an open connection");
    for (_, proto) in open.iter_mut().filter(|(user, _)| *user == "b") {
        assert_eq!(proto.next_push().await["channel"], "room:b");
    }
    assert_eq!(subscribers(&server, "room:b").await, bs);

    // Disconnect closes exactly a's open connections, on both doors.
    server.api("disconnect", json!({ "user": "a" })).await;
    for (_, proto) in open.iter_mut().filter(|(user, _)| *user == "a") {
        assert_eq!(close_code(&mut proto.ws).await, 3503);
    }
    for (_, client) in plain.iter_mut().filter(|(user, _)| *user == "a") {
        assert_eq!(close_code(client).await, 4003);
    }
    let others = open.iter().filter(|(user, _)| *user != "a").count()
        + plain.iter().filter(|(user, _)| *user != "a").count();
    eventually("only a's connections closed", || async {
        info(&server).await["num_clients"] == others
    })
    .await;
    assert_eq!(info(&server).await["num_users"], 2);
    for (_, proto) in open.iter_mut().filter(|(user, _)| *user != "a") {
        proto.served().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_token_naming_more_channels_than_max_subscriptions_is_refused_with_106() {
    let mut config = room_config();
    config.client.max_subscriptions = 2;
    let server = start(config).await;
    let claims = |channels: &[&str]| Claims {
        sub: "s".into(),
        channels: channels.iter().map(|c| c.to_string()).collect(),
        ..Claims::default()
    };
    let mut proto = Proto::open(&server).await;
    let token = mint_claims_hs256(SECRET, &claims(&["room:1", "room:2", "room:3"])).unwrap();
    let reply = proto.call("connect", json!({ "token": token })).await;
    assert_eq!(reply["error"]["code"], 106, "{reply}");
    assert_eq!(
        subscribers(&server, "room:1").await,
        0,
        "nothing was joined"
    );
    // Not connected: commands are refused until a connect succeeds.
    let refused = proto
        .call("subscribe", json!({ "channel": "room:4" }))
        .await;
    assert_eq!(refused["error"]["code"], 101, "{refused}");
    // A token within the limit connects with its channels.
    let mut other = Proto::open(&server).await;
    let token = mint_claims_hs256(SECRET, &claims(&["room:1", "room:2"])).unwrap();
    let reply = other.call("connect", json!({ "token": token })).await;
    assert!(reply["connect"]["subs"]["room:2"].is_object(), "{reply}");
    other.served().await;
    server.stop().await;
}

#[tokio::test]
async fn an_api_subscribe_past_max_subscriptions_answers_106_and_changes_nothing() {
    let mut config = room_config();
    config.client.max_subscriptions = 2;
    // The subscribe rate's burst is `max_subscriptions`: this test's own churn is not the point.
    config.client.subscribe_rate = 0;
    let server = start(config).await;
    let mut proto = Proto::connected(&server, "full").await;
    for channel in ["room:1", "room:2"] {
        let reply = proto.call("subscribe", json!({ "channel": channel })).await;
        assert!(reply.get("subscribe").is_some(), "{reply}");
    }
    let (status, body) = server
        .api("subscribe", json!({ "user": "full", "channel": "room:3" }))
        .await;
    assert_eq!((status, body["error"]["code"].clone()), (200, json!(106)));
    assert_eq!(subscribers(&server, "room:3").await, 0);
    // A channel it already holds is no new subscription: no error.
    let (_, body) = server
        .api("subscribe", json!({ "user": "full", "channel": "room:1" }))
        .await;
    assert_eq!(body["result"], json!({}), "{body}");
    // After an unsubscribe there is room again.
    proto
        .call("unsubscribe", json!({ "channel": "room:2" }))
        .await;
    let (_, body) = server
        .api("subscribe", json!({ "user": "full", "channel": "room:3" }))
        .await;
    assert_eq!(body["result"], json!({}), "{body}");
    assert_eq!(proto.next_push().await["channel"], "room:3");
    proto.served().await;
    server.stop().await;
}

#[tokio::test]
async fn api_requests_past_a_connections_inbox_bound_answer_111_and_the_connection_is_served() {
    let mut config = room_config();
    config.client.max_subscriptions = 4;
    let server = start(config).await;
    let mut proto = Proto::connected(&server, "busy").await;
    // One batch runs without yielding on the memory broker (and the test runtime has one
    // thread), so the connection's task cannot take its inbox between the commands: the
    // first four fill it, the rest are refused.
    let commands: Vec<Value> = (0..10)
        .map(|n| json!({ "unsubscribe": { "user": "busy", "channel": format!("room:{n}") } }))
        .collect();
    let (status, body) = server.api("batch", json!({ "commands": commands })).await;
    assert_eq!(status, 200, "{body}");
    let codes: Vec<Value> = body["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|reply| reply["error"]["code"].clone())
        .collect();
    let mut expected = vec![Value::Null; 4];
    expected.extend(vec![json!(111); 6]);
    assert_eq!(codes, expected, "{body}");
    // The inbox drains; the next request is taken and carried out.
    proto.served().await;
    let (_, body) = server
        .api("subscribe", json!({ "user": "busy", "channel": "room:x" }))
        .await;
    assert_eq!(body["result"], json!({}), "{body}");
    assert_eq!(proto.next_push().await["channel"], "room:x");
    server.stop().await;
}
