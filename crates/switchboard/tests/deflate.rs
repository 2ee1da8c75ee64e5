//! permessage-deflate (RFC 7692) end to end over raw sockets: negotiation, compressed messages
//! in, one shared compressed frame out, and the limits that keep a compressed message from
//! costing more than an uncompressed one.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use switchboard::ws::deflate::{deflate_message, negotiate_offers, Inflater};
use switchboard::ws::frame::{encode_masked, Opcode, RSV1};
use switchboard::Config;
use tokio::io::AsyncWriteExt;

const OFFER: (&str, &str) = ("Sec-WebSocket-Extensions", "permessage-deflate");

/// Anonymous clients allowed (raw sockets on the echo door), deflate on.
fn deflate_config() -> Config {
    let mut config = config();
    config.token.allow_anonymous = Some(true);
    config.server.permessage_deflate = true;
    config
}

/// A masked, compressed (RSV1) client message.
fn compressed_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut frame = encode_masked(true, opcode, &deflate_message(payload, 15), [1, 2, 3, 4]);
    frame[0] |= RSV1;
    frame
}

fn inflate(payload: &[u8]) -> Vec<u8> {
    let negotiated = negotiate_offers(["permessage-deflate"]).unwrap();
    Inflater::new(&negotiated)
        .inflate(payload, 1 << 24)
        .unwrap()
}

fn repetitive(n: usize) -> String {
    "switchboard fans out; ".repeat(n)
}

#[tokio::test]
async fn an_offer_is_answered_with_no_context_takeover_both_ways() {
    let server = start(deflate_config()).await;
    let (_stream, head) = raw_upgrade_with(server.addr, "/ws", &[OFFER]).await;
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        "{head}"
    );
    server.stop().await;
}

#[tokio::test]
async fn nothing_is_negotiated_unless_enabled() {
    let mut config = deflate_config();
    config.server.permessage_deflate = false;
    let server = start(config).await;
    let (_stream, head) = raw_upgrade_with(server.addr, "/ws", &[OFFER]).await;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_compressed_message_is_inflated_and_the_echo_comes_back_compressed() {
    let server = start(deflate_config()).await;
    let (mut stream, _) = raw_upgrade_with(server.addr, "/ws", &[OFFER]).await;
    let text = repetitive(50);
    stream
        .write_all(&compressed_frame(Opcode::Text, text.as_bytes()))
        .await
        .unwrap();
    let (first, payload) = raw_frame(&mut stream).await;
    assert_eq!(first & 0x0F, 0x1, "a text frame");
    assert_eq!(first & RSV1, RSV1, "compressed");
    assert!(payload.len() < text.len() / 4);
    assert_eq!(inflate(&payload), text.as_bytes());
    server.stop().await;
}

#[tokio::test]
async fn deflate_subscribers_get_the_shared_compressed_frame_and_others_the_plain_one() {
    let server = start(deflate_config()).await;
    let token = token("u", 60);
    let path = format!("/ws/chat/z?token={token}");
    let (mut compressed, _) = raw_upgrade_with(server.addr, &path, &[OFFER]).await;
    let (mut plain, _) = raw_upgrade_with(server.addr, &path, &[]).await;
    let text = repetitive(40);
    let (status, _) = server
        .api("publish", json!({ "channel": "chat:z", "data": text }))
        .await;
    assert_eq!(status, 200);
    let (first, payload) = raw_frame(&mut compressed).await;
    assert_eq!(first & RSV1, RSV1);
    assert_eq!(inflate(&payload), text.as_bytes());
    let (first, payload) = raw_frame(&mut plain).await;
    assert_eq!(first & RSV1, 0);
    assert_eq!(payload, text.as_bytes());
    server.stop().await;
}

#[tokio::test]
async fn a_message_that_inflates_past_the_limit_closes_with_1009_and_others_carry_on() {
    let mut config = deflate_config();
    config.limits.max_message_bytes = 64 * 1024;
    let server = start(config).await;
    let (mut stream, _) = raw_upgrade_with(server.addr, "/ws", &[OFFER]).await;
    // 1 MiB of zeros compresses to about a kilobyte: well under the limit on the wire.
    let bomb = vec![0u8; 1 << 20];
    stream
        .write_all(&compressed_frame(Opcode::Binary, &bomb))
        .await
        .unwrap();
    let (_, code) = raw_until_close(&mut stream).await;
    assert_eq!(code, Some(1009));
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn rsv1_without_a_negotiated_extension_is_a_protocol_error() {
    let server = start(deflate_config()).await;
    let mut stream = raw_upgrade(server.addr, "/ws").await;
    stream
        .write_all(&compressed_frame(Opcode::Text, b"hello"))
        .await
        .unwrap();
    let (_, code) = raw_until_close(&mut stream).await;
    assert_eq!(code, Some(1002));
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn rsv1_on_a_control_frame_is_a_protocol_error_even_with_deflate() {
    let server = start(deflate_config()).await;
    let (mut stream, _) = raw_upgrade_with(server.addr, "/ws", &[OFFER]).await;
    let mut ping = encode_masked(true, Opcode::Ping, b"", [1, 2, 3, 4]);
    ping[0] |= RSV1;
    stream.write_all(&ping).await.unwrap();
    let (_, code) = raw_until_close(&mut stream).await;
    assert_eq!(code, Some(1002));
    server.stop().await;
}
