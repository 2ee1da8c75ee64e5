//! The admin UI at `/admin` on a real gateway over real sockets: off by default, the login
//! (right and wrong password, the per-IP bound, the cookie's attributes), sessions that end
//! (logout, expiry, forged ones refused), every endpoint closed without a session, and the
//! pages' data and actions (a real client appears, receives what the UI publishes, and is
//! disconnected by it).
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use switchboard::config::Secret;
use switchboard::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PASSWORD: &str = "correct horse battery staple";
const TOKEN: &str = "admin-token-for-scripts-0123";

/// Every endpoint under `/admin/api/`, with its method.
const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/admin/api/session"),
    ("GET", "/admin/api/nodes"),
    ("GET", "/admin/api/connections"),
    ("GET", "/admin/api/channels"),
    ("GET", "/admin/api/channel?name=chat:a"),
    ("GET", "/admin/api/config"),
    ("GET", "/admin/api/events"),
    ("POST", "/admin/api/publish"),
    ("POST", "/admin/api/disconnect"),
    ("GET", "/admin/api/no-such-endpoint"),
];

fn admin_config() -> Config {
    let mut config = config();
    config.admin.enabled = true;
    config.admin.password = Secret(PASSWORD.into());
    config
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `POST /admin/login`; returns status, headers and the JSON body.
async fn login(
    addr: SocketAddr,
    password: &str,
    extra: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Value) {
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend_from_slice(extra);
    let body = json!({ "password": password }).to_string();
    let (status, headers, body) = http_full(addr, "POST", "/admin/login", &headers, &body).await;
    (
        status,
        headers,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

/// Logs in with the right password; returns the `Cookie` header value to send back.
async fn session(addr: SocketAddr) -> String {
    let (status, headers, body) = login(addr, PASSWORD, &[]).await;
    assert_eq!(status, 200, "{body}");
    let set = header(&headers, "set-cookie").expect("a session cookie");
    set.split(';').next().unwrap().to_owned()
}

/// An admin request with `cookie`; returns status and the JSON body.
async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut headers = vec![("Cookie", cookie)];
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, text) = http(addr, method, path, &headers, &body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Opens the live-update stream and reads until `done` holds for what was read (or the
/// stream ends); returns the status and everything read.
async fn read_events(addr: SocketAddr, cookie: &str, done: impl Fn(&str) -> bool) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /admin/api/events HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&raw).into_owned();
        if done(text.as_str()) {
            break;
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("events in time")
            .unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn the_admin_ui_is_off_by_default_and_its_paths_are_404() {
    let server = start(config()).await;
    for (method, path) in [
        ("GET", "/admin"),
        ("GET", "/admin/admin.js"),
        ("POST", "/admin/login"),
    ]
    .iter()
    .chain(ENDPOINTS)
    {
        let (status, _) = http(server.addr, method, path, &[], "").await;
        assert_eq!(status, 404, "{method} {path}");
    }
    let (status, _, _) = login(server.addr, "", &[]).await;
    assert_eq!(status, 404);
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn an_enabled_admin_needs_a_credential_to_start() {
    let mut config = config();
    config.admin.enabled = true;
    let error = switchboard::Gateway::bind(config).await.err().unwrap();
    assert!(error.to_string().contains("admin.enabled"), "{error}");
}

#[tokio::test]
async fn the_pages_load_with_a_strict_policy_and_no_data() {
    let server = start(admin_config()).await;
    let (status, headers, page) = http_full(server.addr, "GET", "/admin", &[], "").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>Switchboard admin</title>"), "{page}");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no CDN"
    );
    let csp = header(&headers, "content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(header(&headers, "cache-control"), Some("no-store"));
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    let mut total = page.len();
    for (path, kind) in [
        ("/admin/admin.js", "text/javascript"),
        ("/admin/admin.css", "text/css"),
        ("/admin/icon.svg", "image/svg+xml"),
    ] {
        let (status, headers, body) = http_full(server.addr, "GET", path, &[], "").await;
        assert_eq!(status, 200, "{path}");
        assert!(!body.is_empty());
        assert!(
            header(&headers, "content-type").unwrap().starts_with(kind),
            "{path}"
        );
        // (The SVG's `xmlns` is a name, not an address it loads.)
        let loads = body.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !loads.contains("http://") && !loads.contains("https://"),
            "{path} loads nothing from elsewhere"
        );
        total += body.len();
    }
    // Small: the whole UI, embedded in the binary, stays under 64 KiB.
    assert!(total < 64 * 1024, "{total} bytes");
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_the_right_one_sets_a_strict_http_only_cookie() {
    let server = start(admin_config()).await;
    let (status, headers, body) = login(server.addr, "wrong password!", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "wrong_password");
    assert!(header(&headers, "set-cookie").is_none());
    // Not JSON (what a form on another site would send): refused before any check.
    let (status, _) = http(
        server.addr,
        "POST",
        "/admin/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "password=x",
    )
    .await;
    assert_eq!(status, 415);

    let (status, headers, body) = login(server.addr, PASSWORD, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body["expires_in"], 8 * 3600);
    let cookie = header(&headers, "set-cookie").unwrap();
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).collect();
    assert!(attributes[0].starts_with("sb_admin="), "{cookie}");
    assert_eq!(attributes[0].len(), "sb_admin=".len() + 64, "{cookie}");
    for wanted in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
        "Max-Age=28800",
    ] {
        assert!(attributes.contains(&wanted), "{wanted} missing: {cookie}");
    }
    assert!(
        !attributes.contains(&"Secure"),
        "plain HTTP from no proxy: {cookie}"
    );

    let session = attributes[0].to_owned();
    let (status, body) = admin(server.addr, "GET", "/admin/api/session", &session, None).await;
    assert_eq!(status, 200);
    let left = body["expires_in"].as_u64().unwrap();
    assert!((1..=8 * 3600).contains(&left), "{body}");

    // Logout ends the session on the server, whatever the browser keeps.
    let (status, headers, _) = http_full(
        server.addr,
        "POST",
        "/admin/logout",
        &[("Cookie", session.as_str())],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(header(&headers, "set-cookie")
        .unwrap()
        .contains("Max-Age=0"));
    let (status, _) = admin(server.addr, "GET", "/admin/api/session", &session, None).await;
    assert_eq!(status, 401);
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn the_cookie_is_secure_when_a_trusted_proxy_says_the_browser_used_tls() {
    let mut config = admin_config();
    config.server.trusted_proxies = vec!["127.0.0.1".into()];
    let server = start(config).await;
    fn secure(headers: &[(String, String)]) -> bool {
        header(headers, "set-cookie")
            .unwrap()
            .split(';')
            .any(|a| a.trim() == "Secure")
    }
    let (status, headers, _) =
        login(server.addr, PASSWORD, &[("X-Forwarded-Proto", "https")]).await;
    assert_eq!(status, 200);
    assert!(secure(&headers));
    let (_, headers, _) = login(
        server.addr,
        PASSWORD,
        &[("Forwarded", "for=10.1.1.1;proto=https")],
    )
    .await;
    assert!(secure(&headers));
    let (_, headers, _) = login(server.addr, PASSWORD, &[("X-Forwarded-Proto", "http")]).await;
    assert!(!secure(&headers));
    server.stop().await;

    // From a peer that is not a trusted proxy the header is not believed.
    let server = start(admin_config()).await;
    let (status, headers, _) =
        login(server.addr, PASSWORD, &[("X-Forwarded-Proto", "https")]).await;
    assert_eq!(status, 200);
    assert!(!secure(&headers));
    server.stop().await;
}

#[tokio::test]
async fn logins_are_rate_limited_per_client_address() {
    let mut config = admin_config();
    config.admin.login_attempts_per_minute = 3;
    config.server.trusted_proxies = vec!["127.0.0.1".into()];
    let server = start(config).await;
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];
    for _ in 0..3 {
        let (status, _, _) = login(server.addr, "guess guess guess", &from("10.0.0.1")).await;
        assert_eq!(status, 401);
    }
    // Past the bound even the right password is refused: a guesser learns nothing more.
    let (status, headers, body) = login(server.addr, PASSWORD, &from("10.0.0.1")).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "too_many_attempts");
    let retry: u64 = header(&headers, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Another address is not held to it.
    let (status, _, _) = login(server.addr, PASSWORD, &from("10.0.0.2")).await;
    assert_eq!(status, 200);
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn every_admin_endpoint_is_refused_without_a_session() {
    let mut config = admin_config();
    config.admin.token = Secret(TOKEN.into());
    let server = start(config).await;
    let forged = format!("sb_admin={}", "ab".repeat(32));
    for (method, path) in ENDPOINTS {
        for headers in [
            vec![],
            vec![("Cookie", forged.as_str())],
            vec![("Cookie", "sb_admin=")],
            vec![("Authorization", "Bearer not-the-token")],
            vec![("Authorization", "Bearer ")],
            vec![("X-API-Key", API_KEY)],
        ] {
            let mut headers = headers.clone();
            headers.push(("Content-Type", "application/json"));
            let (status, body) = http(server.addr, method, path, &headers, "{}").await;
            assert_eq!(status, 401, "{method} {path} with {headers:?}: {body}");
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["error"]["code"], "unauthorized");
        }
    }
    // The admin token opens them for scripts, with no cookie.
    let bearer = format!("Bearer {TOKEN}");
    let (status, body) = http(
        server.addr,
        "GET",
        "/admin/api/nodes",
        &[("Authorization", bearer.as_str())],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // And the token is also a password at the login form.
    let (status, _, _) = login(server.addr, TOKEN, &[]).await;
    assert_eq!(status, 200);
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn an_expired_session_is_refused_and_its_live_stream_ends() {
    let mut config = admin_config();
    config.admin.session_ttl = Duration::from_secs(2);
    let server = start(config).await;
    let cookie = session(server.addr).await;
    // The stream opens on the live session, then says it expired when it did.
    let (status, events) =
        read_events(server.addr, &cookie, |text| text.contains("event: expired")).await;
    assert_eq!(status, 200, "{events}");
    assert!(events.contains("text/event-stream"), "{events}");
    assert!(events.contains("event: expired"), "{events}");
    let (status, body) = admin(server.addr, "GET", "/admin/api/nodes", &cookie, None).await;
    assert_eq!(status, 401, "{body}");
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn the_live_stream_carries_every_node_with_its_counters() {
    let server = start(admin_config()).await;
    let cookie = session(server.addr).await;
    let _client = server.connect_as("/ws/chat/live", "watcher").await;
    // Up to the end of the first `nodes` event's data line.
    let (status, events) = read_events(server.addr, &cookie, |text| {
        text.split("event: nodes\ndata: ")
            .nth(1)
            .is_some_and(|rest| rest.contains('\n'))
    })
    .await;
    assert_eq!(status, 200);
    let data = events
        .split("event: nodes\ndata: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap()
        .to_owned();
    let nodes: Value = serde_json::from_str(&data).unwrap();
    let node = &nodes["nodes"][0];
    assert_eq!(node["uid"], nodes["this"]);
    assert_eq!(node["num_clients"], 1);
    for counter in ["messages_in", "messages_out", "bytes_in", "bytes_out"] {
        assert!(node[counter].is_u64(), "{counter} in {node}");
    }
    server.stop().await;
}

#[tokio::test]
async fn the_pages_show_a_client_publish_to_it_and_disconnect_it() {
    let server = start(admin_config()).await;
    let cookie = session(server.addr).await;
    let mut alice = server.connect_as("/ws/chat/lobby", "alice").await;
    let mut bob = server.connect_as("/ws/chat/other", "bob").await;

    let (status, page) = admin(
        server.addr,
        "GET",
        "/admin/api/connections?q=ali",
        &cookie,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["connections"][0]["user"], "alice");
    assert_eq!(page["connections"][0]["door"], "chat");
    let alice_id = page["connections"][0]["id"].as_u64().unwrap();

    // Paging: one row per page, the second page after the first's id.
    let (_, first) = admin(
        server.addr,
        "GET",
        "/admin/api/connections?limit=1",
        &cookie,
        None,
    )
    .await;
    assert_eq!(
        (
            first["total"].as_u64(),
            first["connections"].as_array().unwrap().len()
        ),
        (Some(2), 1)
    );
    let after = first["next_after"].as_u64().unwrap();
    let (_, second) = admin(
        server.addr,
        "GET",
        &format!("/admin/api/connections?limit=1&after={after}"),
        &cookie,
        None,
    )
    .await;
    assert!(second["connections"][0]["id"].as_u64().unwrap() > after);

    let (_, channels) = admin(
        server.addr,
        "GET",
        "/admin/api/channels?q=lob",
        &cookie,
        None,
    )
    .await;
    assert_eq!(channels["total"], 1, "{channels}");
    assert_eq!(channels["channels"][0]["channel"], "chat:lobby");
    assert_eq!(channels["channels"][0]["num_clients"], 1);

    let (_, channel) = admin(
        server.addr,
        "GET",
        "/admin/api/channel?name=chat%3Alobby",
        &cookie,
        None,
    )
    .await;
    assert_eq!(channel["subscribers"]["count"], 1, "{channel}");
    assert_eq!(channel["subscribers"]["list"][0]["id"], alice_id);
    assert!(
        channel["presence"]["error"].is_string(),
        "closed defaults keep no presence: {channel}"
    );

    let (status, reply) = admin(
        server.addr,
        "POST",
        "/admin/api/publish",
        &cookie,
        Some(json!({"channel": "chat:lobby", "data": "hello from the admin"})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(next_text(&mut alice).await, "hello from the admin");

    // Bad input gets a clear error and nothing else.
    let (status, reply) = admin(
        server.addr,
        "POST",
        "/admin/api/publish",
        &cookie,
        Some(json!({"channel": "nope:x", "data": 1})),
    )
    .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"]["code"], "api_102");
    let (status, _) = admin(
        server.addr,
        "POST",
        "/admin/api/disconnect",
        &cookie,
        Some(json!({"user": "alice", "conn": 1})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = admin(
        server.addr,
        "GET",
        "/admin/api/connections?after=x",
        &cookie,
        None,
    )
    .await;
    assert_eq!(status, 400);

    let (status, reply) = admin(
        server.addr,
        "POST",
        "/admin/api/disconnect",
        &cookie,
        Some(json!({"user": "alice"})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(close_code(&mut alice).await, 4003);

    let bob_id = {
        let (_, page) = admin(
            server.addr,
            "GET",
            "/admin/api/connections?q=bob",
            &cookie,
            None,
        )
        .await;
        page["connections"][0]["id"].as_u64().unwrap()
    };
    let (status, _) = admin(
        server.addr,
        "POST",
        "/admin/api/disconnect",
        &cookie,
        Some(json!({ "conn": bob_id })),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(close_code(&mut bob).await, 4003);
    let (status, _) = admin(
        server.addr,
        "POST",
        "/admin/api/disconnect",
        &cookie,
        Some(json!({ "conn": 999_999 })),
    )
    .await;
    assert_eq!(status, 404);
    server.assert_still_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn the_configuration_page_masks_every_secret() {
    let mut config = admin_config();
    config.admin.token = Secret(TOKEN.into());
    let server = start(config).await;
    let cookie = session(server.addr).await;
    let (status, body) = admin(server.addr, "GET", "/admin/api/config", &cookie, None).await;
    assert_eq!(status, 200);
    let text = body["text"].as_str().unwrap();
    assert!(text.contains("max_queued_bytes"), "{text}");
    assert!(text.contains("********"), "{text}");
    for secret in [PASSWORD, TOKEN, SECRET, API_KEY] {
        assert!(!text.contains(secret), "{secret} shown in\n{text}");
    }
    server.stop().await;
}
