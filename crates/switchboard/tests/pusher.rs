//! The Pusher door and its HTTP API over real sockets, in process: request signing (good,
//! wrong, stale, body mismatch), channel signatures, and the `pusher:error` codes with their
//! close codes. Every refusal is followed by a check that the server still serves.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::{close_code, connect, connect_with, http, next, next_text, start, TestServer};
use futures_util::SinkExt;
use serde_json::{json, Value};
use switchboard::config::PusherAppConfig;
use switchboard::pusher_wire::{md5_hex, sign};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "rust-key";
const SECRET: &str = "rust-secret-0123456789";

async fn server() -> TestServer {
    let mut config = common::config();
    config.pusher.apps = vec![PusherAppConfig {
        id: "rust-app".into(),
        key: KEY.into(),
        secret: SECRET.into(),
        client_events: true,
        allowed_origins: vec!["https://good.example".into()],
        ..PusherAppConfig::default()
    }];
    config.origins.allowed = vec![
        "https://good.example".into(),
        "https://other.example".into(),
    ];
    start(config).await
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The signed path-and-query of a request, as a `pusher` SDK makes it.
fn signed(method: &str, path: &str, body: &str, timestamp: u64, secret: &str) -> String {
    let mut params = vec![
        ("auth_key".to_owned(), KEY.to_owned()),
        ("auth_timestamp".to_owned(), timestamp.to_string()),
        ("auth_version".to_owned(), "1.0".to_owned()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".to_owned(), md5_hex(body.as_bytes())));
    }
    params.sort();
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let query = query.join("&");
    let signature = sign(secret, &format!("{method}\n{path}\n{query}"));
    format!("{path}?{query}&auth_signature={signature}")
}

async fn connected(server: &TestServer) -> (common::Client, String) {
    let mut client = connect(&server.url(&format!("/app/{KEY}?protocol=7&client=rust&version=1")))
        .await
        .unwrap();
    let established: Value = serde_json::from_str(&next_text(&mut client).await).unwrap();
    assert_eq!(established["event"], "pusher:connection_established");
    let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["activity_timeout"], 120);
    (client, data["socket_id"].as_str().unwrap().to_owned())
}

async fn event(client: &mut common::Client) -> Value {
    serde_json::from_str(&next_text(client).await).unwrap()
}

async fn send(client: &mut common::Client, value: Value) {
    client.send(Message::text(value.to_string())).await.unwrap();
}

#[tokio::test]
async fn signed_requests_publish_and_bad_signatures_are_refused() {
    let server = server().await;
    let (mut client, _) = connected(&server).await;
    send(
        &mut client,
        json!({"event": "pusher:subscribe", "data": {"channel": "news"}}),
    )
    .await;
    assert_eq!(
        event(&mut client).await["event"],
        "pusher_internal:subscription_succeeded"
    );

    let path = "/apps/rust-app/events";
    let body = json!({"name": "greet", "channels": ["news"], "data": "{\"n\":1}"}).to_string();
    let stale = signed("POST", path, &body, now() - 3600, SECRET);
    let (status, reply) = http(server.addr, "POST", &stale, &[], &body).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply.contains("auth_timestamp"), "{reply}");
    let forged = signed("POST", path, &body, now(), "another-secret-0123456");
    assert_eq!(http(server.addr, "POST", &forged, &[], &body).await.0, 401);
    let good = signed("POST", path, &body, now(), SECRET);
    let tampered = body.replace("greet", "grEEt");
    assert_eq!(
        http(server.addr, "POST", &good, &[], &tampered).await.0,
        401
    );
    let (status, reply) = http(server.addr, "POST", &good, &[], &body).await;
    assert_eq!((status, reply.as_str()), (200, "{}"));

    let received = event(&mut client).await;
    assert_eq!(received["event"], "greet");
    assert_eq!(received["channel"], "news");
    assert_eq!(received["data"], "{\"n\":1}");

    let list = signed("GET", "/apps/rust-app/channels", "", now(), SECRET);
    let (status, reply) = http(server.addr, "GET", &list, &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap(),
        json!({"channels": {"news": {}}})
    );
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn private_channels_check_the_signature_of_socket_and_channel() {
    let server = server().await;
    let (mut client, socket_id) = connected(&server).await;
    let wrong = sign(SECRET, &format!("{socket_id}:private-other"));
    send(
        &mut client,
        json!({"event": "pusher:subscribe", "data": {"channel": "private-a", "auth": format!("{KEY}:{wrong}")}}),
    )
    .await;
    let refused = event(&mut client).await;
    assert_eq!(refused["event"], "pusher:subscription_error");
    assert_eq!(refused["channel"], "private-a");
    let right = sign(SECRET, &format!("{socket_id}:private-a"));
    send(
        &mut client,
        json!({"event": "pusher:subscribe", "data": {"channel": "private-a", "auth": format!("{KEY}:{right}")}}),
    )
    .await;
    let ok = event(&mut client).await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(ok["channel"], "private-a");
    send(&mut client, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(event(&mut client).await["event"], "pusher:pong");
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn pusher_errors_carry_their_codes_and_close_with_them() {
    let server = server().await;
    for (path, code) in [
        ("/app/no-such-key?protocol=7".to_owned(), 4001),
        (format!("/app/{KEY}?protocol=6"), 4007),
        (format!("/app/{KEY}"), 4007),
    ] {
        let mut client = connect(&server.url(&path)).await.unwrap();
        let error = event(&mut client).await;
        assert_eq!(error["event"], "pusher:error", "{path}");
        assert_eq!(error["data"]["code"], code, "{path}");
        assert_eq!(close_code(&mut client).await, code, "{path}");
    }
    let (mut client, _) = connected(&server).await;
    client.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    let error = loop {
        if let Message::Text(text) = next(&mut client).await {
            break serde_json::from_str::<Value>(&text).unwrap();
        }
    };
    assert_eq!(error["data"]["code"], 4000);
    assert_eq!(close_code(&mut client).await, 4000);
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn an_app_admits_only_its_own_origins() {
    let server = server().await;
    let url = server.url(&format!("/app/{KEY}?protocol=7"));
    let mut good = connect_with(&url, &[("origin", "https://good.example")])
        .await
        .unwrap();
    assert_eq!(
        event(&mut good).await["event"],
        "pusher:connection_established"
    );
    // Allowed by the node's `origins.allowed`, not by the app's list.
    let mut other = connect_with(&url, &[("origin", "https://other.example")])
        .await
        .unwrap();
    let refused = event(&mut other).await;
    assert_eq!(refused["event"], "pusher:error");
    assert_eq!(refused["data"]["code"], 4009);
    assert_eq!(close_code(&mut other).await, 4009);
    send(&mut good, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(event(&mut good).await["event"], "pusher:pong");
    server.assert_still_serving().await;
    server.stop().await;
}
