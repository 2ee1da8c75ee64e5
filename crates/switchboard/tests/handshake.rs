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

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.0/8 is all ours).
async fn tcp_from(from: [u8; 4], addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((from, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A plain health check, answered 200 by a serving node.
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

/// `count` sockets from 127.0.0.1 that connect and then say nothing.
async fn silent_sockets(count: usize, addr: std::net::SocketAddr) -> Vec<tokio::net::TcpStream> {
    let mut silent = Vec::new();
    for _ in 0..count {
        silent.push(tcp_from([127, 0, 0, 1], addr).await);
    }
    silent
}

/// A WebSocket upgrade from the loopback address `from`, with extra request headers.
async fn connect_from(
    from: [u8; 4],
    server: &TestServer,
    user: &str,
    headers: &[(&str, &str)],
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}?token={}", server.url("/ws/chat/a"), token(user, 60));
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let tcp = tcp_from(from, server.addr).await;
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("handshake in time")
        .map(|(client, _)| client)
}

/// The HTTP status of `connect_from`'s refusal (panics when it was accepted).
async fn refused_from(
    from: [u8; 4],
    server: &TestServer,
    user: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>) {
    match connect_from(from, server, user, headers).await {
        Ok(_) => panic!("upgrade from {from:?} {headers:?} was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            (
                response.status().as_u16(),
                body["error"]["code"].as_str().map(str::to_owned),
            )
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

/// Writes `request` whole (the server may stop reading early) and returns the status of the
/// answer once its head is in, or `None` when the socket closed with no answer.
async fn raw_status(mut tcp: tokio::net::TcpStream, request: &[u8]) -> Option<u16> {
    let _ = tcp.write_all(request).await;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("an answer or the end of the socket in time")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

/// An upgrade request to `/ws/chat/a` for `user`, with an `X-Pad` header of `pad` bytes.
fn padded_upgrade(user: &str, pad: usize) -> Vec<u8> {
    format!(
        "GET /ws/chat/a?token={} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Pad: {}\r\n\r\n",
        token(user, 60),
        "a".repeat(pad)
    )
    .into_bytes()
}

#[tokio::test]
async fn request_headers_over_max_header_bytes_are_answered_431() {
    let server = start(config()).await;
    let near = padded_upgrade("near", 15 * 1024);
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(raw_status(tcp, &near).await, Some(101), "16 KiB by default");
    let over = padded_upgrade("over", 17 * 1024);
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(raw_status(tcp, &over).await, Some(431));
    // Every request, not only upgrades.
    let probe = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(17 * 1024)
    );
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(raw_status(tcp, probe.as_bytes()).await, Some(431));
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn max_header_bytes_is_configurable() {
    let mut config = config();
    config.server.max_header_bytes = 4096;
    let server = start(config).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(
        raw_status(tcp, &padded_upgrade("over", 5 * 1024)).await,
        Some(431)
    );
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn silent_sockets_over_the_per_ip_bound_are_closed_at_once_and_others_are_served() {
    let mut config = config();
    config.server.max_pending_handshakes_per_ip = 3;
    config.server.handshake_timeout = std::time::Duration::from_secs(60);
    let server = start(config).await;
    let silent = silent_sockets(3, server.addr).await;
    // The fourth from the same address is closed before anything is read or answered.
    let fourth = tcp_from([127, 0, 0, 1], server.addr).await;
    assert_eq!(raw_status(fourth, b"").await, None);
    // Another address is served meanwhile.
    let other = tcp_from([127, 0, 0, 2], server.addr).await;
    assert_eq!(raw_status(other, HEALTHZ).await, Some(200));
    drop(silent);
    eventually("the silent sockets' places are given back", || async {
        let tcp = tcp_from([127, 0, 0, 1], server.addr).await;
        raw_status(
            tcp,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
            == Some(200)
    })
    .await;
    assert_eq!(
        metric(
            server.addr,
            "switchboard_pending_closed_total{reason=\"per_ip\"}"
        )
        .await,
        Some(1.0)
    );
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn at_the_node_bound_the_oldest_silent_socket_makes_room_for_a_probe() {
    let mut config = config();
    config.server.max_pending_handshakes = 4;
    config.server.handshake_timeout = std::time::Duration::from_secs(60);
    let server = start(config).await;
    let mut silent = silent_sockets(4, server.addr).await;
    let probe = tcp_from([127, 0, 0, 1], server.addr).await;
    assert_eq!(raw_status(probe, HEALTHZ).await, Some(200));
    // The oldest silent socket was closed for it, unanswered.
    let oldest = silent.remove(0);
    assert_eq!(raw_status(oldest, b"").await, None);
    // The API is reachable the same way, however many silent sockets came before.
    silent.extend(silent_sockets(8, server.addr).await);
    let (status, _) = server.api("info", serde_json::json!({})).await;
    assert_eq!(status, 200);
    drop(silent);
    server.assert_still_serving().await;
    server.stop().await;
}

/// Starts `count` upgrades at once; returns the clients let in and the refusals' codes.
async fn concurrent_upgrades(server: &TestServer, count: usize) -> (Vec<Client>, Vec<String>) {
    let url = server.url("/ws/chat/a");
    let attempts: Vec<_> = (0..count)
        .map(|i| {
            let url = format!("{url}?token={}", token(&format!("u{i}"), 60));
            tokio::spawn(async move { connect(&url).await })
        })
        .collect();
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(client) => admitted.push(client),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response.body().clone().unwrap_or_default();
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                refused.push(format!(
                    "{} {}",
                    response.status().as_u16(),
                    body["error"]["code"].as_str().unwrap_or("")
                ));
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    (admitted, refused)
}

#[tokio::test]
async fn the_node_limit_is_exact_under_concurrent_handshakes() {
    let mut config = config();
    config.server.max_connections = 5;
    let server = start(config).await;
    let (admitted, refused) = concurrent_upgrades(&server, 50).await;
    assert_eq!(admitted.len(), 5, "refused: {refused:?}");
    assert!(refused.iter().all(|r| r == "503 node_full"), "{refused:?}");
    drop(admitted);
    eventually("the five places are given back", || async {
        let (admitted, _) = concurrent_upgrades(&server, 5).await;
        admitted.len() == 5
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn the_per_ip_limit_is_exact_under_concurrent_handshakes() {
    let mut config = config();
    config.server.max_connections_per_ip = 5;
    let server = start(config).await;
    let (admitted, refused) = concurrent_upgrades(&server, 50).await;
    assert_eq!(admitted.len(), 5, "refused: {refused:?}");
    assert!(
        refused
            .iter()
            .all(|r| r == "429 too_many_connections_per_ip"),
        "{refused:?}"
    );
    drop(admitted);
    eventually("the five places are given back", || async {
        let (admitted, _) = concurrent_upgrades(&server, 5).await;
        admitted.len() == 5
    })
    .await;
    let other = connect_from([127, 0, 0, 2], &server, "elsewhere", &[]).await;
    assert!(
        other.is_ok(),
        "another address is not held to 127.0.0.1's limit"
    );
    server.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_counted() {
    let mut config = config();
    config.server.max_connections_per_ip = 1;
    config.server.trusted_proxies = vec!["127.0.0.2".into()];
    let server = start(config).await;
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];
    // Through the proxy, two clients are two addresses; a forged entry on the left is skipped.
    let _a = connect_from([127, 0, 0, 2], &server, "a", &xff("203.0.113.5"))
        .await
        .unwrap();
    let _b = connect_from([127, 0, 0, 2], &server, "b", &xff("6.6.6.6, 203.0.113.6"))
        .await
        .unwrap();
    assert_eq!(
        refused_from([127, 0, 0, 2], &server, "c", &xff("203.0.113.5")).await,
        (429, Some("too_many_connections_per_ip".into()))
    );
    // From a peer that is not a trusted proxy the header is the client's own text: ignored.
    let _d = connect_from([127, 0, 0, 3], &server, "d", &xff("198.51.100.1"))
        .await
        .unwrap();
    assert_eq!(
        refused_from([127, 0, 0, 3], &server, "e", &xff("198.51.100.2")).await,
        (429, Some("too_many_connections_per_ip".into()))
    );
    // Another client is still served.
    connect_from([127, 0, 0, 9], &server, "z", &[])
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_rfc_7239_forwarded_is_read_when_named() {
    let mut config = config();
    config.server.max_connections_per_ip = 1;
    config.server.trusted_proxies = vec!["127.0.0.0/30".into()];
    config.server.client_ip_header = switchboard::peer::ClientIpHeader::Forwarded;
    let server = start(config).await;
    let fwd = |v: &'static str| [("Forwarded", v)];
    let _a = connect_from(
        [127, 0, 0, 2],
        &server,
        "a",
        &fwd("for=203.0.113.5;proto=http"),
    )
    .await
    .unwrap();
    let _b = connect_from(
        [127, 0, 0, 2],
        &server,
        "b",
        &fwd("for=\"[2001:db8::7]:4711\", for=127.0.0.1"),
    )
    .await
    .unwrap();
    assert_eq!(
        refused_from([127, 0, 0, 3], &server, "c", &fwd("for=203.0.113.5")).await,
        (429, Some("too_many_connections_per_ip".into())),
        "another trusted proxy forwarding the same client"
    );
    // X-Forwarded-For is not the named header: the proxy's own address is counted.
    let _d = connect_from(
        [127, 0, 0, 2],
        &server,
        "d",
        &[("X-Forwarded-For", "198.51.100.1")],
    )
    .await
    .unwrap();
    assert_eq!(
        refused_from(
            [127, 0, 0, 2],
            &server,
            "e",
            &[("X-Forwarded-For", "198.51.100.2")]
        )
        .await,
        (429, Some("too_many_connections_per_ip".into()))
    );
    connect_from([127, 0, 0, 9], &server, "z", &[])
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn ipv6_clients_are_counted_per_64_by_default() {
    let mut config = config();
    config.server.max_connections_per_ip = 1;
    config.server.trusted_proxies = vec!["127.0.0.2".into()];
    let server = start(config).await;
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];
    let _a = connect_from([127, 0, 0, 2], &server, "a", &xff("2001:db8:1:2::1"))
        .await
        .unwrap();
    assert_eq!(
        refused_from([127, 0, 0, 2], &server, "b", &xff("2001:db8:1:2:ffff::9")).await,
        (429, Some("too_many_connections_per_ip".into())),
        "the same /64"
    );
    let _c = connect_from([127, 0, 0, 2], &server, "c", &xff("2001:db8:1:3::1"))
        .await
        .unwrap();
    connect_from([127, 0, 0, 9], &server, "z", &[])
        .await
        .unwrap();
    server.stop().await;
}
