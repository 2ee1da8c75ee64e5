//! The client protocol on `/connection/websocket`, spoken by hand over a real socket: each test
//! is one behaviour of docs/protocol.md. (The real SDKs are exercised by tests/node.)
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use prost::Message as _;
use serde_json::{json, Value};
use switchboard::auth::{mint_claims_hs256, unix_now, Claims};
use switchboard::config::{NamespaceConfig, PublishRule, SubscribeRule};
use switchboard::protocol::wire::{
    Command, ConnectRequest, PublishRequest, Reply, SubscribeRequest,
};
use switchboard::Config;
use tokio_tungstenite::tungstenite::Message;

/// Production-like defaults plus namespaces for the tests: `feed` keeps history with
/// recovery; `room` is open to any user with presence and join/leave; `secret` needs a
/// subscription token; the default namespace stays closed.
fn protocol_config() -> Config {
    let mut config = config();
    // Expiry tests wait for a token to lapse; the default grace would make them wait 25 s.
    config.client.expiry_grace = Duration::ZERO;
    let feed = NamespaceConfig {
        subscribe: Some(SubscribeRule::Authenticated),
        history_size: Some(5),
        history_ttl: Some(Duration::from_secs(60)),
        recover: Some(true),
        ..NamespaceConfig::default()
    };
    let room = NamespaceConfig {
        subscribe: Some(SubscribeRule::Authenticated),
        publish: Some(PublishRule::Subscribers),
        presence: Some(true),
        join_leave: Some(true),
        ..NamespaceConfig::default()
    };
    let secret = NamespaceConfig {
        subscribe: Some(SubscribeRule::Token),
        ..NamespaceConfig::default()
    };
    let namespaces = &mut config.channels.namespaces;
    namespaces.insert("feed".into(), feed);
    namespaces.insert("room".into(), room);
    namespaces.insert("secret".into(), secret);
    config
}

fn sub_token(user: &str, channel: &str, ttl: u64) -> String {
    let claims = Claims {
        sub: user.into(),
        exp: Some(unix_now() + ttl),
        channel: Some(channel.into()),
        ..Claims::default()
    };
    mint_claims_hs256(SECRET, &claims).unwrap()
}

async fn publish(server: &TestServer, channel: &str, data: Value) -> Value {
    let (status, body) = server
        .api("publish", json!({ "channel": channel, "data": data }))
        .await;
    assert_eq!(status, 200, "{body}");
    body["result"].clone()
}

#[tokio::test]
async fn connect_with_a_token_returns_a_client_id_and_the_ping_settings() {
    let server = start(protocol_config()).await;
    let (_proto, result) = Proto::connected_with_result(&server, "alice").await;
    assert_eq!(result["pong"], true);
    assert_eq!(result["ping"], 25);
    assert_eq!(result["expires"], true, "the token has an exp");
    assert!(result["ttl"].as_u64().unwrap() > 3500);
    server.stop().await;
}

#[tokio::test]
async fn anonymous_connect_is_unauthorized_unless_allowed() {
    let server = start(protocol_config()).await;
    let mut proto = Proto::open(&server).await;
    let reply = proto.call("connect", json!({})).await;
    assert_eq!(reply["error"]["code"], 101, "{reply}");
    server.assert_still_serving().await;
    server.stop().await;

    let mut config = protocol_config();
    config.token.allow_anonymous = Some(true);
    let server = start(config).await;
    let mut proto = Proto::open(&server).await;
    let reply = proto.call("connect", json!({})).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn a_bad_token_closes_with_3500_and_an_expired_one_is_error_109() {
    let server = start(protocol_config()).await;
    let mut proto = Proto::open(&server).await;
    proto
        .send_raw(r#"{"id":1,"connect":{"token":"not.a.jwt"}}"#)
        .await;
    assert_eq!(close_code(&mut proto.ws).await, 3500);

    let expired = mint_claims_hs256(
        SECRET,
        &Claims {
            sub: "u".into(),
            exp: Some(unix_now() - 5),
            ..Claims::default()
        },
    )
    .unwrap();
    let mut proto = Proto::open(&server).await;
    let reply = proto.call("connect", json!({ "token": expired })).await;
    assert_eq!(reply["error"]["code"], 109, "{reply}");
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn a_command_before_connect_is_unauthorized() {
    let server = start(protocol_config()).await;
    let mut proto = Proto::open(&server).await;
    let reply = proto
        .call("subscribe", json!({ "channel": "feed:a" }))
        .await;
    assert_eq!(reply["error"]["code"], 101, "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn a_frame_that_is_not_protocol_json_closes_with_3501_and_others_carry_on() {
    let server = start(protocol_config()).await;
    let mut proto = Proto::connected(&server, "u").await;
    proto.send_raw("this is not json").await;
    assert_eq!(close_code(&mut proto.ws).await, 3501);
    let mut other = Proto::connected(&server, "v").await;
    let reply = other
        .call("subscribe", json!({ "channel": "feed:ok" }))
        .await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    server.stop().await;
}

/// Several commands in one text frame, one per line.
fn frame_of(commands: impl IntoIterator<Item = Value>) -> String {
    commands
        .into_iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn more_commands_in_one_message_than_the_cap_close_with_3501_and_others_carry_on() {
    let mut config = protocol_config();
    config.client.max_subscriptions = 4;
    config.client.max_commands_per_message = 10;
    let server = start(config).await;
    let mut proto = Proto::connected(&server, "u").await;
    let pings = (1..=11).map(|id| json!({ "id": id, "ping": {} }));
    proto.send_raw(&frame_of(pings)).await;
    assert_eq!(close_code(&mut proto.ws).await, 3501);
    let mut other = Proto::connected(&server, "v").await;
    assert!(other.call("ping", json!({})).await.get("ping").is_some());
    server.stop().await;
}

#[tokio::test]
async fn each_command_counts_against_the_message_rate() {
    let mut config = protocol_config();
    config.limits.client_message_rate = 5;
    config.client.max_subscriptions = 4;
    config.client.max_commands_per_message = 10;
    let server = start(config).await;
    let mut proto = Proto::connected(&server, "u").await;
    // The burst is the cap (10 tokens, 5 a second): two full messages at once exceed it.
    for round in 0..2 {
        let pings = (1..=10).map(|id| json!({ "id": round * 10 + id, "ping": {} }));
        proto.send_raw(&frame_of(pings)).await;
    }
    assert_eq!(close_code(&mut proto.ws).await, 3013);
    let mut other = Proto::connected(&server, "v").await;
    assert!(other.call("ping", json!({})).await.get("ping").is_some());
    server.stop().await;
}

#[tokio::test]
async fn subscribe_churn_past_the_subscribe_rate_gets_error_111() {
    let mut config = protocol_config();
    config.client.max_subscriptions = 4;
    config.client.subscribe_rate = 1;
    let server = start(config).await;
    let mut proto = Proto::connected(&server, "u").await;
    let mut refused = 0;
    for _ in 0..6 {
        let reply = proto
            .call("subscribe", json!({ "channel": "room:churn" }))
            .await;
        let unsub = proto
            .call("unsubscribe", json!({ "channel": "room:churn" }))
            .await;
        for answer in [reply, unsub] {
            if answer["error"]["code"] == 111 {
                assert_eq!(answer["error"]["temporary"], true, "{answer}");
                refused += 1;
            }
        }
    }
    assert!(
        refused >= 6,
        "12 subscribes and unsubscribes, 4 at once, refused {refused}"
    );
    // The connection stays open and served.
    assert!(proto.call("ping", json!({})).await.get("ping").is_some());
    server.stop().await;
}

#[tokio::test]
async fn several_commands_in_one_frame_each_get_their_reply_in_order() {
    let server = start(protocol_config()).await;
    let mut proto = Proto::connected(&server, "u").await;
    proto
        .send_raw(
            "{\"id\":10,\"subscribe\":{\"channel\":\"feed:a\"}}\n{\"id\":11,\"subscribe\":{\"channel\":\"feed:b\"}}",
        )
        .await;
    assert_eq!(proto.next_json().await["id"], 10);
    assert_eq!(proto.next_json().await["id"], 11);
    server.stop().await;
}

#[tokio::test]
async fn subscribers_receive_api_publications_with_offsets_and_publish_returns_the_position() {
    let server = start(protocol_config()).await;
    let mut proto = Proto::connected(&server, "u").await;
    let reply = proto
        .call("subscribe", json!({ "channel": "feed:news" }))
        .await;
    let subscribed = &reply["subscribe"];
    assert_eq!(subscribed["recoverable"], true, "{reply}");
    assert_eq!(
        subscribed["offset"].as_u64().unwrap_or(0),
        0,
        "nothing published yet (a zero offset is left out)"
    );
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    let result = publish(&server, "feed:news", json!({ "n": 1 })).await;
    assert_eq!(result, json!({ "offset": 1, "epoch": epoch }));
    let push = proto.next_push().await;
    assert_eq!(push["channel"], "feed:news");
    assert_eq!(push["pub"]["data"], json!({ "n": 1 }));
    assert_eq!(push["pub"]["offset"], 1);
    server.stop().await;
}

#[tokio::test]
async fn recovery_returns_exactly_the_missed_publications_then_live_ones() {
    let server = start(protocol_config()).await;
    let mut first = Proto::connected(&server, "u").await;
    let reply = first
        .call("subscribe", json!({ "channel": "feed:r" }))
        .await;
    let epoch = reply["subscribe"]["epoch"].as_str().unwrap().to_owned();
    publish(&server, "feed:r", json!(1)).await;
    assert_eq!(first.next_push().await["pub"]["offset"], 1);
    drop(first);
    for n in 2..=4 {
        publish(&server, "feed:r", json!(n)).await;
    }
    let mut again = Proto::connected(&server, "u").await;
    let reply = again
        .call(
            "subscribe",
            json!({ "channel": "feed:r", "recover": true, "offset": 1, "epoch": epoch }),
        )
        .await;
    let result = &reply["subscribe"];
    assert_eq!(result["recovered"], true, "{reply}");
    assert_eq!(result["was_recovering"], true);
    let offsets: Vec<u64> = result["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [2, 3, 4]);
    publish(&server, "feed:r", json!(5)).await;
    assert_eq!(again.next_push().await["pub"]["offset"], 5);
    server.stop().await;
}

#[tokio::test]
async fn a_gap_history_cannot_fill_is_reported_as_not_recovered() {
    let server = start(protocol_config()).await;
    for n in 1..=8 {
        publish(&server, "feed:gap", json!(n)).await;
    }
    let mut proto = Proto::connected(&server, "u").await;
    let epoch = proto
        .call("history", json!({ "channel": "feed:gap" }))
        .await["history"]["epoch"]
        .clone();
    // history_size is 5: offsets 4..=8 are kept, so recovering from 1 leaves a gap.
    let reply = proto
        .call(
            "subscribe",
            json!({ "channel": "feed:gap", "recover": true, "offset": 1, "epoch": epoch }),
        )
        .await;
    assert_eq!(reply["subscribe"]["was_recovering"], true, "{reply}");
    assert_ne!(reply["subscribe"]["recovered"], true, "{reply}");
    assert!(reply["subscribe"].get("publications").is_none());
    let reply = proto
        .call(
            "subscribe",
            json!({ "channel": "feed:other", "recover": true, "offset": 3, "epoch": "gone" }),
        )
        .await;
    assert_ne!(
        reply["subscribe"]["recovered"], true,
        "another epoch: {reply}"
    );
    server.stop().await;
}

#[tokio::test]
async fn reject_unrecovered_answers_error_112_instead() {
    let server = start(protocol_config()).await;
    let mut proto = Proto::connected(&server, "u").await;
    let reply = proto
        .call(
            "subscribe",
            json!({ "channel": "feed:x", "recover": true, "offset": 3, "epoch": "old", "flag": 2 }),
        )
        .await;
    assert_eq!(reply["error"]["code"], 112, "{reply}");
    let reply = proto
        .call("subscribe", json!({ "channel": "feed:x" }))
        .await;
    assert!(
        reply.get("subscribe").is_some(),
        "it did not stay subscribed: {reply}"
    );
    server.stop().await;
}

#[tokio::test]
async fn map_and_shared_poll_subscribes_and_map_publishes_are_refused_with_108_not_degraded() {
    // `room` is neither a map nor a shared-poll namespace: map and shared-poll commands there
    // are refused as such; presence-as-map subscriptions are refused everywhere.
    let server = start(protocol_config()).await;
    let mut proto = Proto::connected(&server, "u").await;
    let refusals = [
        (
            "subscribe",
            json!({ "channel": "room:m", "type": 1, "phase": 2 }),
            "not a map channel",
        ),
        (
            "subscribe",
            json!({ "channel": "room:p", "type": 3 }),
            "subscription type not supported",
        ),
        (
            "subscribe",
            json!({ "channel": "room:p", "type": 4 }),
            "not a shared-poll channel",
        ),
        (
            "sub_refresh",
            json!({ "channel": "room:p", "type": 2, "untrack": ["k"] }),
            "not a shared-poll channel",
        ),
        (
            "subscribe",
            json!({ "channel": "room:m", "phase": 2, "limit": 10 }),
            "map state sync not supported",
        ),
        (
            "subscribe",
            json!({ "channel": "room:m", "type": 1, "phase": 2, "asc": true }),
            "ordered map state not supported",
        ),
        // The SDK's mapRemove: a publish with a type, a key, no data.
        (
            "publish",
            json!({ "channel": "room:m", "type": 1, "key": "k", "removed": true }),
            "not a map channel",
        ),
        (
            "publish",
            json!({ "channel": "room:m", "type": 1, "key": "k", "data": {} }),
            "not a map channel",
        ),
    ];
    for (method, params, message) in refusals {
        let reply = proto.call(method, params.clone()).await;
        assert_eq!(reply["error"]["code"], 108, "{method} {params}: {reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(message)),
            "{method} {params}: {reply}"
        );
    }
    // A stream publish with no data is a bad request, not a closed connection.
    let reply = proto.call("publish", json!({ "channel": "room:m" })).await;
    assert_eq!(reply["error"]["code"], 107, "{reply}");
    // An unknown method with an id is 104, answered.
    let reply = proto.call("frobnicate", json!({})).await;
    assert_eq!(reply["error"]["code"], 104, "{reply}");
    // Nothing was subscribed by a refused subscribe, and the connection still serves.
    let reply = proto
        .call("subscribe", json!({ "channel": "room:m" }))
        .await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    let reply = proto
        .call(
            "publish",
            json!({ "channel": "room:m", "data": { "n": 1 } }),
        )
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn channel_rules_are_enforced_with_clear_error_codes() {
    let server = start(protocol_config()).await;
    let mut proto = Proto::connected(&server, "u").await;
    let code = |reply: Value| reply["error"]["code"].clone();
    assert_eq!(
        code(
            proto
                .call("subscribe", json!({ "channel": "nope:x" }))
                .await
        ),
        102
    );
    assert_eq!(
        code(
            proto
                .call("subscribe", json!({ "channel": "closed" }))
                .await
        ),
        103,
        "the default namespace needs a token"
    );
    assert_eq!(
        code(
            proto
                .call("subscribe", json!({ "channel": "secret:s" }))
                .await
        ),
        103
    );
    let granted = proto
        .call(
            "subscribe",
            json!({ "channel": "secret:s", "token": sub_token("u", "secret:s", 60) }),
        )
        .await;
    assert_eq!(
        granted["subscribe"]["expires"], true,
        "the subscription token's exp: {granted}"
    );
    let stolen = sub_token("someone-else", "secret:t", 60);
    assert_eq!(
        code(
            proto
                .call(
                    "subscribe",
                    json!({ "channel": "secret:t", "token": stolen })
                )
                .await
        ),
        103
    );
    assert_eq!(
        code(
            proto
                .call("subscribe", json!({ "channel": "secret:s" }))
                .await
        ),
        105,
        "already subscribed"
    );
    assert_eq!(
        code(proto.call("presence", json!({ "channel": "feed:a" })).await),
        108,
        "feed has no presence"
    );
    assert_eq!(
        code(
            proto
                .call("publish", json!({ "channel": "feed:a", "data": 1 }))
                .await
        ),
        103,
        "feed takes publications from the API only"
    );
    assert_eq!(
        code(proto.call("rpc", json!({ "method": "x" })).await),
        108,
        "no rpc hook: rpc is not available"
    );
    // The connection is still good after every refusal.
    assert!(proto
        .call("subscribe", json!({ "channel": "feed:fine" }))
        .await
        .get("subscribe")
        .is_some());
    server.stop().await;
}

#[tokio::test]
async fn user_limited_channels_admit_only_their_users() {
    let server = start(protocol_config()).await;
    let mut alice = Proto::connected(&server, "alice").await;
    let mut bob = Proto::connected(&server, "bob").await;
    let ok = alice
        .call("subscribe", json!({ "channel": "#alice,carol" }))
        .await;
    assert!(ok.get("subscribe").is_some(), "{ok}");
    let refused = bob
        .call("subscribe", json!({ "channel": "#alice,carol" }))
        .await;
    assert_eq!(refused["error"]["code"], 103);
    server.stop().await;
}

#[tokio::test]
async fn clients_cannot_publish_into_a_user_limited_channel_even_its_own_user() {
    let mut config = protocol_config();
    // Even where any client may publish: a user's channel is written by the backend only.
    config.channels.default.publish = Some(PublishRule::Anonymous);
    config.channels.default.subscribe = Some(SubscribeRule::Authenticated);
    let server = start(config).await;
    let mut alice = Proto::connected(&server, "alice").await;
    let mut mallory = Proto::connected(&server, "mallory").await;
    alice
        .call("subscribe", json!({ "channel": "#alice" }))
        .await;
    for (who, client) in [("mallory", &mut mallory), ("alice", &mut alice)] {
        let refused = client
            .call(
                "publish",
                json!({ "channel": "#alice", "data": { "fake": who } }),
            )
            .await;
        assert_eq!(refused["error"]["code"], 103, "{who}: {refused}");
    }
    // The backend still reaches her, and nothing forged arrived before it.
    publish(&server, "#alice", json!({ "from": "backend" })).await;
    assert_eq!(
        alice.next_push().await["pub"]["data"],
        json!({ "from": "backend" })
    );
    server.stop().await;
}

#[tokio::test]
async fn a_subscription_token_is_not_a_connection_token() {
    let server = start(protocol_config()).await;
    let mut proto = Proto::open(&server).await;
    let claims = Claims {
        sub: "u".into(),
        exp: Some(unix_now() + 60),
        channel: Some("secret:s".into()),
        ..Claims::default()
    };
    let token = mint_claims_hs256(SECRET, &claims).unwrap();
    proto
        .send_raw(&json!({ "id": 1, "connect": { "token": token } }).to_string())
        .await;
    assert_eq!(close_code(&mut proto.ws).await, 3500);
    let mut other = Proto::connected(&server, "v").await;
    assert!(other.call("ping", json!({})).await.get("ping").is_some());
    server.stop().await;
}

#[tokio::test]
async fn a_refresh_with_a_token_without_exp_is_refused() {
    let server = start(protocol_config()).await;
    let mut proto = Proto::connected(&server, "u").await;
    let endless = mint_claims_hs256(
        SECRET,
        &Claims {
            sub: "u".into(),
            ..Claims::default()
        },
    )
    .unwrap();
    proto
        .send_raw(&json!({ "id": 9, "refresh": { "token": endless } }).to_string())
        .await;
    assert_eq!(close_code(&mut proto.ws).await, 3500);
    server.stop().await;
}

#[tokio::test]
async fn a_subscription_token_past_its_exp_is_error_109() {
    let server = start(protocol_config()).await;
    let mut proto = Proto::connected(&server, "u").await;
    let claims = Claims {
        sub: "u".into(),
        exp: Some(unix_now() - 1),
        channel: Some("secret:s".into()),
        ..Claims::default()
    };
    let token = mint_claims_hs256(SECRET, &claims).unwrap();
    let reply = proto
        .call(
            "subscribe",
            json!({ "channel": "secret:s", "token": token }),
        )
        .await;
    assert_eq!(reply["error"]["code"], 109, "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn clients_publish_to_rooms_they_subscribe_and_others_see_who_sent_it() {
    let server = start(protocol_config()).await;
    let mut alice = Proto::connected(&server, "alice").await;
    let mut bob = Proto::connected(&server, "bob").await;
    alice
        .call("subscribe", json!({ "channel": "room:1" }))
        .await;
    bob.call("subscribe", json!({ "channel": "room:1" })).await;
    let reply = alice
        .call(
            "publish",
            json!({ "channel": "room:1", "data": { "text": "hi" } }),
        )
        .await;
    assert_eq!(reply["publish"], json!({}), "{reply}");
    let push = loop {
        let push = bob.next_push().await;
        if push.get("pub").is_some() {
            break push;
        }
    };
    assert_eq!(push["pub"]["data"], json!({ "text": "hi" }));
    assert_eq!(push["pub"]["info"]["user"], "alice");
    let outsider = alice
        .call("publish", json!({ "channel": "room:2", "data": 1 }))
        .await;
    assert_eq!(outsider["error"]["code"], 103, "not a subscriber of room:2");
    server.stop().await;
}

#[tokio::test]
async fn presence_join_and_leave() {
    let server = start(protocol_config()).await;
    let mut alice = Proto::connected(&server, "alice").await;
    let (mut bob, bob_connect) = Proto::connected_with_result(&server, "bob").await;
    alice
        .call("subscribe", json!({ "channel": "room:p" }))
        .await;
    bob.call("subscribe", json!({ "channel": "room:p" })).await;
    let join = alice.next_push().await;
    assert_eq!(join["join"]["info"]["user"], "bob", "{join}");
    let presence = alice.call("presence", json!({ "channel": "room:p" })).await;
    let clients = presence["presence"]["presence"].as_object().unwrap();
    assert_eq!(clients.len(), 2);
    assert_eq!(
        clients[bob_connect["client"].as_str().unwrap()]["user"],
        "bob"
    );
    let stats = alice
        .call("presence_stats", json!({ "channel": "room:p" }))
        .await;
    assert_eq!(
        stats["presence_stats"],
        json!({ "num_clients": 2, "num_users": 2 })
    );
    bob.call("unsubscribe", json!({ "channel": "room:p" }))
        .await;
    let leave = alice.next_push().await;
    assert_eq!(leave["leave"]["info"]["user"], "bob", "{leave}");
    drop(bob);
    let (status, body) = server
        .api("presence_stats", json!({ "channel": "room:p" }))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["num_clients"], 1, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn a_plain_chat_member_and_a_protocol_subscriber_share_the_channel_both_ways() {
    let server = start(protocol_config()).await;
    let mut member = server.connect_as("/ws/chat/lobby", "m").await;
    let mut proto = Proto::connected(&server, "p").await;
    let reply = proto
        .call("subscribe", json!({ "channel": "chat:lobby" }))
        .await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    member.send(Message::text("plain hello")).await.unwrap();
    assert_eq!(next_text(&mut member).await, "plain hello");
    assert_eq!(proto.next_push().await["pub"]["data"], "plain hello");
    member
        .send(Message::text(r#"{"kind":"json"}"#))
        .await
        .unwrap();
    assert_eq!(next_text(&mut member).await, r#"{"kind":"json"}"#);
    assert_eq!(
        proto.next_push().await["pub"]["data"],
        json!({ "kind": "json" })
    );
    proto
        .call(
            "publish",
            json!({ "channel": "chat:lobby", "data": { "from": "protocol" } }),
        )
        .await;
    assert_eq!(next_text(&mut member).await, r#"{"from":"protocol"}"#);
    server.stop().await;
}

#[tokio::test]
async fn the_tokens_channels_are_subscribed_at_connect() {
    let server = start(protocol_config()).await;
    let claims = Claims {
        sub: "s".into(),
        channels: vec!["feed:server".into()],
        ..Claims::default()
    };
    let mut proto = Proto::open(&server).await;
    let reply = proto
        .call(
            "connect",
            json!({ "token": mint_claims_hs256(SECRET, &claims).unwrap() }),
        )
        .await;
    assert_eq!(
        reply["connect"]["subs"]["feed:server"]["recoverable"], true,
        "{reply}"
    );
    publish(&server, "feed:server", json!("pushed")).await;
    let push = proto.next_push().await;
    assert_eq!(
        (push["channel"].clone(), push["pub"]["data"].clone()),
        (json!("feed:server"), json!("pushed"))
    );
    server.stop().await;
}

#[tokio::test]
async fn the_api_subscribes_and_unsubscribes_a_users_connections() {
    let server = start(protocol_config()).await;
    let mut proto = Proto::connected(&server, "target").await;
    let (status, body) = server
        .api(
            "subscribe",
            json!({ "user": "target", "channel": "feed:api" }),
        )
        .await;
    assert_eq!((status, body["result"].clone()), (200, json!({})));
    let push = proto.next_push().await;
    assert_eq!(push["channel"], "feed:api");
    assert!(push.get("subscribe").is_some(), "{push}");
    publish(&server, "feed:api", json!(1)).await;
    assert_eq!(proto.next_push().await["pub"]["data"], 1);
    server
        .api(
            "unsubscribe",
            json!({ "user": "target", "channel": "feed:api" }),
        )
        .await;
    let push = proto.next_push().await;
    assert_eq!(push["unsubscribe"]["code"], 2000, "{push}");
    server.stop().await;
}

#[tokio::test]
async fn the_api_disconnect_closes_protocol_clients_with_3503() {
    let server = start(protocol_config()).await;
    let mut proto = Proto::connected(&server, "gone").await;
    server.api("disconnect", json!({ "user": "gone" })).await;
    assert_eq!(close_code(&mut proto.ws).await, 3503);
    server.stop().await;
}

#[tokio::test]
async fn history_answers_with_limit_reverse_and_can_be_removed() {
    let server = start(protocol_config()).await;
    for n in 1..=4 {
        publish(&server, "feed:h", json!(n)).await;
    }
    let mut proto = Proto::connected(&server, "u").await;
    let reply = proto
        .call(
            "history",
            json!({ "channel": "feed:h", "limit": 2, "reverse": true }),
        )
        .await;
    let data: Vec<Value> = reply["history"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(data, [json!(4), json!(3)]);
    assert_eq!(reply["history"]["offset"], 4);
    let (_, body) = server
        .api("history", json!({ "channel": "feed:h", "limit": -1 }))
        .await;
    assert_eq!(body["result"]["publications"].as_array().unwrap().len(), 4);
    server
        .api("history_remove", json!({ "channel": "feed:h" }))
        .await;
    let (_, body) = server
        .api("history", json!({ "channel": "feed:h", "limit": -1 }))
        .await;
    assert_eq!(body["result"]["publications"], json!([]));
    assert_eq!(body["result"]["offset"], 4, "the position survives");
    server.stop().await;
}

#[tokio::test]
async fn batch_runs_each_command_and_answers_each() {
    let server = start(protocol_config()).await;
    let (status, body) = server
        .api(
            "batch",
            json!({ "commands": [
                { "publish": { "channel": "feed:b", "data": 1 } },
                { "publish": { "channel": "nope:x", "data": 1 } },
                { "history": { "channel": "feed:b", "limit": -1 } },
            ]}),
        )
        .await;
    assert_eq!(status, 200);
    let replies = body["replies"].as_array().unwrap();
    assert_eq!(replies[0]["publish"]["offset"], 1, "{body}");
    assert_eq!(replies[1]["error"]["code"], 102);
    assert_eq!(
        replies[2]["history"]["publications"][0]["data"], 1,
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_sends_connect_is_closed_as_stale() {
    let mut config = protocol_config();
    config.client.connect_timeout = Duration::from_millis(300);
    let server = start(config).await;
    let mut proto = Proto::open(&server).await;
    assert_eq!(close_code(&mut proto.ws).await, 3502);
    server.stop().await;
}

#[tokio::test]
async fn an_expired_session_closes_with_3005_unless_refreshed() {
    let server = start(protocol_config()).await;
    let short = |user: &str| {
        mint_claims_hs256(
            SECRET,
            &Claims {
                sub: user.into(),
                exp: Some(unix_now() + 2),
                ..Claims::default()
            },
        )
        .unwrap()
    };
    let mut lapsing = Proto::open(&server).await;
    lapsing
        .call("connect", json!({ "token": short("u") }))
        .await;
    let mut refreshed = Proto::open(&server).await;
    refreshed
        .call("connect", json!({ "token": short("v") }))
        .await;
    let reply = refreshed
        .call("refresh", json!({ "token": token("v", 3600) }))
        .await;
    assert!(reply["refresh"]["ttl"].as_u64().unwrap() > 3500, "{reply}");
    assert_eq!(close_code(&mut lapsing.ws).await, 3005);
    let still = refreshed
        .call("subscribe", json!({ "channel": "feed:alive" }))
        .await;
    assert!(still.get("subscribe").is_some(), "{still}");
    server.stop().await;
}

#[tokio::test]
async fn an_expired_subscription_token_closes_with_3006_unless_refreshed() {
    let server = start(protocol_config()).await;
    let mut lapsing = Proto::connected(&server, "u").await;
    let reply = lapsing
        .call(
            "subscribe",
            json!({ "channel": "secret:a", "token": sub_token("u", "secret:a", 2) }),
        )
        .await;
    assert_eq!(reply["subscribe"]["expires"], true, "{reply}");
    let mut refreshed = Proto::connected(&server, "v").await;
    refreshed
        .call(
            "subscribe",
            json!({ "channel": "secret:b", "token": sub_token("v", "secret:b", 2) }),
        )
        .await;
    let reply = refreshed
        .call(
            "sub_refresh",
            json!({ "channel": "secret:b", "token": sub_token("v", "secret:b", 3600) }),
        )
        .await;
    assert!(
        reply["sub_refresh"]["ttl"].as_u64().unwrap() > 3500,
        "{reply}"
    );
    assert_eq!(close_code(&mut lapsing.ws).await, 3006);
    let still = refreshed
        .call("presence_stats", json!({ "channel": "room:x" }))
        .await;
    assert!(still.get("presence_stats").is_some(), "{still}");
    server.stop().await;
}

/// Sends Protobuf commands in one binary frame.
async fn send_protobuf(ws: &mut Client, commands: &[Command]) {
    let mut frame = Vec::new();
    for command in commands {
        command.encode_length_delimited(&mut frame).unwrap();
    }
    ws.send(Message::binary(frame)).await.unwrap();
}

/// The next non-ping Protobuf reply or push.
async fn next_protobuf(ws: &mut Client) -> Reply {
    loop {
        match next(ws).await {
            Message::Binary(bytes) => {
                let mut buf = &bytes[..];
                while !buf.is_empty() {
                    let reply = Reply::decode_length_delimited(&mut buf).unwrap();
                    if reply != Reply::default() {
                        return reply;
                    }
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_protobuf_flavour_speaks_the_same_protocol_in_binary_frames() {
    let server = start(protocol_config()).await;
    let mut ws = connect(&server.url("/connection/websocket?cf_protocol=protobuf"))
        .await
        .unwrap();
    let connect = Command {
        id: 1,
        connect: Some(ConnectRequest {
            token: token("pb", 3600),
            ..ConnectRequest::default()
        }),
        ..Command::default()
    };
    let subscribe = Command {
        id: 2,
        subscribe: Some(SubscribeRequest {
            channel: "feed:pb".into(),
            ..SubscribeRequest::default()
        }),
        ..Command::default()
    };
    send_protobuf(&mut ws, &[connect, subscribe]).await;
    let connected = next_protobuf(&mut ws).await;
    assert_eq!(connected.id, 1);
    assert!(!connected.connect.unwrap().client.is_empty());
    let subscribed = next_protobuf(&mut ws).await;
    assert_eq!(subscribed.id, 2);
    assert!(subscribed.subscribe.unwrap().recoverable);
    publish(&server, "feed:pb", json!({ "n": 1 })).await;
    let push = next_protobuf(&mut ws).await.push.unwrap();
    let publication = push.publication.unwrap();
    assert_eq!(push.channel, "feed:pb");
    assert_eq!(&publication.data[..], br#"{"n":1}"#);
    assert_eq!(publication.offset, 1);
    // A JSON subscriber of the same channel gets the same publication in JSON.
    let mut json_client = Proto::connected(&server, "j").await;
    json_client
        .call("subscribe", json!({ "channel": "feed:pb" }))
        .await;
    let binary = Command {
        id: 3,
        publish: Some(PublishRequest {
            channel: "feed:pb".into(),
            data: bytes::Bytes::from_static(&[0xff, 0x00]),
            ..PublishRequest::default()
        }),
        ..Command::default()
    };
    send_protobuf(&mut ws, &[binary]).await;
    let reply = next_protobuf(&mut ws).await;
    assert_eq!(
        reply.error.map(|e| e.code),
        Some(103),
        "feed takes publications from the API only"
    );
    // A text frame on a Protobuf connection is a bad request.
    ws.send(Message::text("{}")).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 3501);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_protocol_clients_with_3001() {
    let server = start(protocol_config()).await;
    let mut proto = Proto::connected(&server, "u").await;
    server.shutdown.cancel();
    assert_eq!(close_code(&mut proto.ws).await, 3001);
    tokio::time::timeout(WAIT, server.handle)
        .await
        .unwrap()
        .unwrap();
}

/// Found by the `token` fuzz target (docs/fuzzing.md): an `nbf` written as `1699e99` was
/// skipped by the JWT library, so a token meant for much later connected at once.
#[tokio::test]
async fn a_token_whose_nbf_is_not_a_whole_number_closes_with_3500() {
    let server = start(protocol_config()).await;
    let premature = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": "u", "exp": unix_now() + 3600, "nbf": 1699e99 }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut proto = Proto::open(&server).await;
    proto
        .send_raw(&format!(
            r#"{{"id":1,"connect":{{"token":"{premature}"}}}}"#
        ))
        .await;
    assert_eq!(close_code(&mut proto.ws).await, 3500);
    server.assert_still_serving().await;
    server.stop().await;
}
