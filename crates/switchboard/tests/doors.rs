//! The plain doors: echo, chat rooms and user push, over real sockets.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn echo_returns_text_and_binary_as_sent() {
    let server = start(config()).await;
    let mut client = server.connect_as("/ws", "u1").await;
    client.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("hello"));
    client
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        next(&mut client).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );
    server.stop().await;
}

#[tokio::test]
async fn echo_is_off_by_default_outside_dev() {
    let mut config = config();
    config.doors.echo = None;
    let server = start(config).await;
    let (status, body) = refused(
        &format!("{}?token={}", server.url("/ws"), token("u", 60)),
        &[],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn a_room_message_reaches_every_member_including_the_sender() {
    let server = start(config()).await;
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(server.connect_as("/ws/chat/lobby", &format!("m{i}")).await);
    }
    members[0].send(Message::text("hi all")).await.unwrap();
    for member in &mut members {
        assert_eq!(next_text(member).await, "hi all");
    }
    server.stop().await;
}

#[tokio::test]
async fn rooms_are_isolated() {
    let server = start(config()).await;
    let mut red = server.connect_as("/ws/chat/red", "a").await;
    let mut blue = server.connect_as("/ws/chat/blue", "b").await;
    red.send(Message::text("for red")).await.unwrap();
    blue.send(Message::text("for blue")).await.unwrap();
    assert_eq!(next_text(&mut red).await, "for red");
    assert_eq!(
        next_text(&mut blue).await,
        "for blue",
        "blue must not see red's message first"
    );
    server.stop().await;
}

#[tokio::test]
async fn binary_messages_are_relayed_in_rooms() {
    let server = start(config()).await;
    let mut a = server.connect_as("/ws/chat/bin", "a").await;
    let mut b = server.connect_as("/ws/chat/bin", "b").await;
    a.send(Message::binary(vec![9u8; 1000])).await.unwrap();
    assert_eq!(next(&mut b).await, Message::binary(vec![9u8; 1000]));
    server.stop().await;
}

#[tokio::test]
async fn many_messages_arrive_in_order() {
    let server = start(config()).await;
    let mut a = server.connect_as("/ws/chat/order", "a").await;
    let mut b = server.connect_as("/ws/chat/order", "b").await;
    for i in 0..500 {
        a.send(Message::text(format!("{i}"))).await.unwrap();
    }
    for i in 0..500 {
        assert_eq!(next_text(&mut b).await, i.to_string());
    }
    server.stop().await;
}

#[tokio::test]
async fn notify_door_receives_what_the_backend_pushes_to_that_user() {
    let server = start(config()).await;
    let mut alice = server.connect_as("/ws/notify/user/42", "42").await;
    let mut bob = server.connect_as("/ws/notify/user/7", "7").await;
    let (status, _) = server
        .api(
            "publish",
            json!({"channel": "#42", "data": {"kind": "ping"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(next_text(&mut alice).await, r#"{"kind":"ping"}"#);
    server
        .api("publish", json!({"channel": "#7", "data": "for bob"}))
        .await;
    assert_eq!(
        next_text(&mut bob).await,
        "for bob",
        "bob gets only his own push"
    );
    server.stop().await;
}

#[tokio::test]
async fn notify_door_refuses_another_users_token() {
    let server = start(config()).await;
    let url = format!(
        "{}?token={}",
        server.url("/ws/notify/user/42"),
        token("7", 60)
    );
    let (status, body) = refused(&url, &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("wrong_subject"))
    );
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn bad_room_names_are_refused_with_400() {
    let server = start(config()).await;
    let long = "x".repeat(200);
    for room in ["bad%20name", long.as_str()] {
        let url = format!(
            "{}?token={}",
            server.url(&format!("/ws/chat/{room}")),
            token("u", 60)
        );
        let (status, body) = refused(&url, &[]).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("bad_channel")),
            "room {room}"
        );
    }
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let server = start(config()).await;
    let (status, body) = http(server.addr, "GET", "/nope", &[], "").await;
    assert_eq!(status, 404);
    assert!(body.contains("not_found"), "{body}");
    server.stop().await;
}
