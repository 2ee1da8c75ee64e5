//! Checks made before the upgrade: tokens, origins, malformed requests, connection limits.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn missing_token_is_401_with_a_json_error() {
    let server = start(config()).await;
    let (status, body) = refused(&server.url("/ws/chat/a"), &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_required"))
    );
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn token_signed_with_another_secret_is_401() {
    let server = start(config()).await;
    let forged = switchboard::auth::mint_hs256("not-the-server-secret", "u", 60).unwrap();
    let (status, body) =
        refused(&format!("{}?token={forged}", server.url("/ws/chat/a")), &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("bad signature"));
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn a_garbage_token_is_401_with_a_human_message_and_no_internal_name() {
    let server = start(config()).await;
    let (status, body) = refused(
        &format!("{}?token=not-a-token", server.url("/ws/chat/a")),
        &[],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("not a JSON Web Token") && message.contains("header.payload.signature"),
        "{message}"
    );
    assert!(!message.contains("InvalidToken"), "{message}");
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn expired_token_is_401() {
    let server = start(config()).await;
    let claims = switchboard::auth::Claims {
        sub: "u".into(),
        exp: Some(switchboard::auth::unix_now() - 5),
        ..Default::default()
    };
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (status, body) = refused(
        &format!("{}?token={expired}", server.url("/ws/chat/a")),
        &[],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["message"], "invalid token: token expired");
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn token_in_the_authorization_header_is_accepted() {
    let server = start(config()).await;
    let bearer = format!("Bearer {}", token("u", 60));
    assert!(
        connect_with(&server.url("/ws/chat/a"), &[("authorization", &bearer)])
            .await
            .is_ok()
    );
    server.stop().await;
}

#[tokio::test]
async fn token_as_a_subprotocol_is_accepted_and_a_protocol_is_selected() {
    let server = start(config()).await;
    let offered = format!("switchboard, {}", token("u", 60));
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.url("/ws/chat/a"),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", offered.parse().unwrap());
    let (_client, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "switchboard");
    server.stop().await;
}

#[tokio::test]
async fn a_token_offered_as_the_only_subprotocol_is_read_but_never_echoed() {
    let server = start(config()).await;
    let jwt = token("u", 60);
    let (_socket, head) = raw_upgrade_with(
        server.addr,
        "/ws/chat/a",
        &[("Sec-WebSocket-Protocol", &jwt)],
    )
    .await;
    assert!(!head.contains(&jwt), "the 101 echoed the token: {head}");
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "no known subprotocol was offered, none is selected: {head}"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_origin_that_is_not_visible_ascii_is_refused_not_ignored() {
    let mut config = config();
    config.origins.allowed = vec!["https://app.example.com".into()];
    let server = start(config).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut bytes = format!(
        "GET /ws/chat/a?token={} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        token("u", 60)
    )
    .into_bytes();
    bytes.extend_from_slice(b"Origin: https://app.example.com\xff\r\n\r\n");
    stream.write_all(&bytes).await.unwrap();
    let mut head = vec![0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 403");
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn anonymous_clients_are_let_in_only_when_allowed() {
    let mut config = config();
    config.token.allow_anonymous = Some(true);
    let server = start(config).await;
    assert!(connect(&server.url("/ws/chat/open")).await.is_ok());
    let (status, _) = refused(&server.url("/ws/notify/user/1"), &[]).await;
    assert_eq!(status, 401, "user push always needs the user's token");
    server.stop().await;
}

#[tokio::test]
async fn a_connection_is_closed_when_its_token_expires() {
    let server = start(config()).await;
    let mut client = connect(&format!(
        "{}?token={}",
        server.url("/ws/chat/a"),
        token("u", 1)
    ))
    .await
    .unwrap();
    assert_eq!(close_code(&mut client).await, 4002);
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn disallowed_origin_is_403() {
    let mut config = config();
    config.origins.allowed = vec![
        "https://app.example.com".into(),
        "https://*.example.org".into(),
    ];
    let server = start(config).await;
    let url = format!("{}?token={}", server.url("/ws/chat/a"), token("u", 60));
    let (status, body) = refused(&url, &[("origin", "https://evil.example.net")]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    assert!(connect_with(&url, &[("origin", "https://app.example.com")])
        .await
        .is_ok());
    assert!(connect_with(&url, &[("origin", "https://eu.example.org")])
        .await
        .is_ok());
    assert!(
        connect(&url).await.is_ok(),
        "no Origin header: not a browser, token rules only"
    );
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn a_request_that_is_not_an_upgrade_is_400_with_a_reason() {
    let server = start(config()).await;
    let (status, body) = http(
        server.addr,
        "GET",
        "/ws/chat/a",
        &[("Connection", "Upgrade"), ("Upgrade", "websocket")],
        "",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("Sec-WebSocket-Version"), "{body}");
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_stalls_mid_handshake_is_cut_off() {
    let mut config = config();
    config.server.handshake_timeout = std::time::Duration::from_millis(300);
    let server = start(config).await;
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(b"GET /ws/chat/a HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    // The server ends the socket (hyper may answer 408 first); no upgrade ever happens.
    let _ = tokio::time::timeout(WAIT, stalled.read_to_end(&mut rest))
        .await
        .expect("server closes the stalled socket");
    assert!(!String::from_utf8_lossy(&rest).contains(" 101 "));
    // A socket that sends nothing at all is cut off the same way.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut nothing = Vec::new();
    let _ = tokio::time::timeout(WAIT, silent.read_to_end(&mut nothing))
        .await
        .expect("server closes the silent socket");
    server.assert_still_serving().await;
    server.stop().await;
}

/// The HTTP server's timeouts end at the upgrade: a WebSocket outlives the handshake timeout.
#[tokio::test]
async fn the_handshake_timeout_never_cuts_an_upgraded_connection() {
    let mut config = config();
    config.server.handshake_timeout = std::time::Duration::from_millis(200);
    let server = start(config).await;
    let mut client = server.connect_as("/ws", "u").await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    futures_util::SinkExt::send(
        &mut client,
        tokio_tungstenite::tungstenite::Message::text("later"),
    )
    .await
    .unwrap();
    assert_eq!(next_text(&mut client).await, "later");
    server.stop().await;
}

#[tokio::test]
async fn connections_per_ip_over_the_limit_are_429() {
    let mut config = config();
    config.server.max_connections_per_ip = 2;
    let server = start(config).await;
    let _a = server.connect_as("/ws/chat/a", "a").await;
    let b = server.connect_as("/ws/chat/a", "b").await;
    let (status, body) = refused(
        &format!("{}?token={}", server.url("/ws/chat/a"), token("c", 60)),
        &[],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_connections_per_ip"))
    );
    drop(b);
    eventually("the freed place is given back", || async {
        connect(&format!(
            "{}?token={}",
            server.url("/ws/chat/a"),
            token("c", 60)
        ))
        .await
        .is_ok()
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_node_limit_are_503() {
    let mut config = config();
    config.server.max_connections = 1;
    let server = start(config).await;
    let _a = server.connect_as("/ws/chat/a", "a").await;
    let (status, body) = refused(
        &format!("{}?token={}", server.url("/ws/chat/a"), token("b", 60)),
        &[],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("node_full"))
    );
    server.stop().await;
}
