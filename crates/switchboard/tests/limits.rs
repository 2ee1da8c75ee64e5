//! Per-connection limits and protocol errors, each with its documented close code, and the
//! server still serving others afterwards.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::SinkExt;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_message_over_the_size_limit_closes_with_1009() {
    let mut config = config();
    config.limits.max_message_bytes = 1024;
    let server = start(config).await;
    let mut client = server.connect_as("/ws/chat/a", "u").await;
    client.send(Message::binary(vec![0u8; 1025])).await.unwrap();
    assert_eq!(close_code(&mut client).await, 1009);
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn a_message_at_the_size_limit_passes() {
    let mut config = config();
    config.limits.max_message_bytes = 1024;
    let server = start(config).await;
    let mut client = server.connect_as("/ws", "u").await;
    client.send(Message::binary(vec![1u8; 1024])).await.unwrap();
    assert_eq!(next(&mut client).await, Message::binary(vec![1u8; 1024]));
    server.stop().await;
}

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    let mut config = config();
    config.token.allow_anonymous = Some(true);
    let server = start(config).await;
    let mut raw = raw_upgrade(server.addr, "/ws/chat/a").await;
    raw.write_all(&client_frame(0x81, &[b'o', b'k', 0xC3, 0x28]))
        .await
        .unwrap();
    let (_, code) = raw_until_close(&mut raw).await;
    assert_eq!(code, Some(1007));
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn an_unmasked_frame_closes_with_1002() {
    let mut config = config();
    config.token.allow_anonymous = Some(true);
    let server = start(config).await;
    let mut raw = raw_upgrade(server.addr, "/ws/chat/a").await;
    raw.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    let (_, code) = raw_until_close(&mut raw).await;
    assert_eq!(code, Some(1002));
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn too_many_messages_per_second_closes_with_4004() {
    let mut config = config();
    config.limits.client_message_rate = 5;
    config.limits.client_message_burst = 5;
    let server = start(config).await;
    let mut client = server.connect_as("/ws/chat/flood", "u").await;
    for i in 0..50 {
        if client.send(Message::text(format!("{i}"))).await.is_err() {
            break;
        }
    }
    assert_eq!(close_code(&mut client).await, 4004);
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn the_client_close_code_is_echoed() {
    let server = start(config()).await;
    let mut client = server.connect_as("/ws/chat/a", "u").await;
    client
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 4321.into(),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    assert_eq!(close_code(&mut client).await, 4321);
    server.stop().await;
}
