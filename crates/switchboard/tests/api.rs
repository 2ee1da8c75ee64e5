//! The server HTTP API: every method, its key check and its errors.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn publish_reaches_plain_room_members() {
    let server = start(config()).await;
    let mut member = server.connect_as("/ws/chat/lobby", "m").await;
    let (status, body) = server
        .api(
            "publish",
            json!({"channel": "chat:lobby", "data": "from the backend"}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"result": {}})));
    assert_eq!(next_text(&mut member).await, "from the backend");
    server.stop().await;
}

#[tokio::test]
async fn broadcast_reaches_every_listed_channel() {
    let server = start(config()).await;
    let mut a = server.connect_as("/ws/chat/a", "a").await;
    let mut user = server.connect_as("/ws/notify/user/9", "9").await;
    let (status, body) = server
        .api(
            "broadcast",
            json!({"channels": ["chat:a", "#9"], "data": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["responses"].as_array().unwrap().len(), 2);
    assert_eq!(next_text(&mut a).await, r#"{"n":1}"#);
    assert_eq!(next_text(&mut user).await, r#"{"n":1}"#);
    server.stop().await;
}

#[tokio::test]
async fn disconnect_closes_every_connection_of_the_user_with_4003() {
    let server = start(config()).await;
    let mut first = server.connect_as("/ws/chat/a", "bad-actor").await;
    let mut second = server
        .connect_as("/ws/notify/user/bad-actor", "bad-actor")
        .await;
    let mut bystander = server.connect_as("/ws/chat/a", "good").await;
    let (status, _) = server.api("disconnect", json!({"user": "bad-actor"})).await;
    assert_eq!(status, 200);
    assert_eq!(close_code(&mut first).await, 4003);
    assert_eq!(close_code(&mut second).await, 4003);
    server
        .api("publish", json!({"channel": "chat:a", "data": "still on"}))
        .await;
    assert_eq!(next_text(&mut bystander).await, "still on");
    server.stop().await;
}

#[tokio::test]
async fn info_counts_connections_channels_and_subscriptions() {
    let server = start(config()).await;
    let _a = server.connect_as("/ws/chat/a", "u1").await;
    let _b = server.connect_as("/ws/chat/b", "u2").await;
    let _c = server.connect_as("/ws/chat/b", "u2").await;
    eventually("three connections registered", || async {
        server.api("info", json!({})).await.1["result"]["nodes"][0]["num_clients"] == 3
    })
    .await;
    let (_, body) = server.api("info", json!({})).await;
    let node = &body["result"]["nodes"][0];
    assert_eq!(
        (
            node["num_channels"].as_u64(),
            node["num_subs"].as_u64(),
            node["num_users"].as_u64()
        ),
        (Some(2), Some(3), Some(2))
    );
    assert!(node["uptime"].is_u64() && node["uid"].is_string());
    server.stop().await;
}

#[tokio::test]
async fn channels_lists_active_channels_with_subscriber_counts() {
    let server = start(config()).await;
    let _a = server.connect_as("/ws/chat/a", "u1").await;
    let _b = server.connect_as("/ws/chat/a", "u2").await;
    eventually("two subscribers", || async {
        server.api("channels", json!({})).await.1["result"]["channels"]["chat:a"]["num_clients"]
            == 2
    })
    .await;
    drop((_a, _b));
    eventually("the channel goes when its last member leaves", || async {
        server.api("channels", json!({})).await.1["result"]["channels"]
            .as_object()
            .unwrap()
            .is_empty()
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_key_is_401() {
    let server = start(config()).await;
    let body = r#"{"channel":"chat:a","data":"x"}"#;
    let (status, text) = http(
        server.addr,
        "POST",
        "/api/publish",
        &[("X-API-Key", "wrong")],
        body,
    )
    .await;
    assert_eq!(status, 401);
    assert!(text.contains(r#""code":101"#), "{text}");
    let (status, _) = http(server.addr, "POST", "/api/publish", &[], body).await;
    assert_eq!(status, 401);
    server.stop().await;
}

#[tokio::test]
async fn the_authorization_apikey_form_is_accepted() {
    let server = start(config()).await;
    let (status, _) = http(
        server.addr,
        "POST",
        "/api/info",
        &[("Authorization", &format!("apikey {API_KEY}"))],
        "{}",
    )
    .await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn the_method_and_params_envelope_is_accepted() {
    let server = start(config()).await;
    let mut member = server.connect_as("/ws/chat/env", "m").await;
    let body = r#"{"method":"publish","params":{"channel":"chat:env","data":"enveloped"}}"#;
    let (status, _) = http(server.addr, "POST", "/api", &[("X-API-Key", API_KEY)], body).await;
    assert_eq!(status, 200);
    assert_eq!(next_text(&mut member).await, "enveloped");
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_server_carries_on() {
    let server = start(config()).await;
    let key = [("X-API-Key", API_KEY)];
    let publish = r#"{"publish":{"channel":"chat:x","data":1}}"#;
    let oversized_batch = format!(r#"{{"commands":[{}]}}"#, vec![publish; 1001].join(","));
    let channels: Vec<String> = (0..1001).map(|n| format!(r#""chat:{n}""#)).collect();
    let oversized_broadcast = format!(r#"{{"channels":[{}],"data":1}}"#, channels.join(","));
    let cases = [
        // The request itself is wrong: an HTTP status of its own.
        ("POST", "/api/publish", "{not json", 400, r#""code":107"#),
        (
            "POST",
            "/api/publish",
            r#"{"channel":"a"}"#,
            400,
            r#""code":107"#,
        ),
        (
            "POST",
            "/api/publish",
            r#"{"channel":"a","data":1,"extra":true}"#,
            400,
            r#""code":107"#,
        ),
        ("POST", "/api/frobnicate", "{}", 404, r#""code":104"#),
        ("GET", "/api/info", "", 405, r#""code":107"#),
        // What was asked is wrong: 200 and the client protocol's code, as server SDKs expect.
        (
            "POST",
            "/api/publish",
            r#"{"channel":"","data":1}"#,
            200,
            r#""code":102"#,
        ),
        (
            "POST",
            "/api/publish",
            r#"{"channel":"nope:x","data":1}"#,
            200,
            r#""code":102"#,
        ),
        (
            "POST",
            "/api/history",
            r#"{"channel":"news"}"#,
            200,
            r#""code":108"#,
        ),
        // Bounded requests: at most 1000 commands in a batch, 1000 channels in a broadcast.
        ("POST", "/api/batch", &oversized_batch, 400, r#""code":107"#),
        (
            "POST",
            "/api/broadcast",
            &oversized_broadcast,
            400,
            r#""code":107"#,
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got, text) = http(server.addr, method, path, &key, body).await;
        let body = &body[..body.len().min(80)];
        assert_eq!(got, status, "{method} {path} {body}: {text}");
        assert!(text.contains(code), "{text}");
    }
    server.assert_still_serving().await;
    server.stop().await;
}
