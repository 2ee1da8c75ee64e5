//! Backend hooks against a real backend: an HTTP server on its own loopback port, started by
//! each test, that answers in Centrifugo's proxy format and records what it was sent. The
//! gateway is real, and so are its clients (tokio-tungstenite over real sockets).
//!
//! Covered: each hook allows, refuses and rewrites; the allowlisted headers and cookies and the
//! trace id arrive and nothing else does; a plain `/ws/chat/{room}` client is let in by its
//! session cookie; a backend that is down, answers 500, or hangs past the timeout gives the
//! documented codes (error 100, 503 with Retry-After) and is used again when it recovers; the
//! breaker opens (no call is made), half-opens and closes as configured, with its metrics; and
//! clients that do not need the backend are served all along.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::SinkExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use switchboard::auth::unix_now;
use switchboard::config::{BreakerConfig, HookConfig, NamespaceConfig, PublishRule, SubscribeRule};
use switchboard::Config;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

// ---- the backend -------------------------------------------------------------------------

/// How the backend answers every hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// As its routes say.
    Answer,
    /// HTTP 500.
    Fail,
    /// Not before it is released (or 30 s): past any hook timeout here.
    Hang,
}

/// One request the backend received.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    headers: HashMap<String, String>,
    body: Value,
}

struct BackendState {
    mode: Mutex<Mode>,
    calls: Mutex<Vec<Call>>,
    release: tokio::sync::Notify,
}

struct Backend {
    addr: SocketAddr,
    state: Arc<BackendState>,
    task: JoinHandle<()>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState {
            mode: Mutex::new(Mode::Answer),
            calls: Mutex::new(Vec::new()),
            release: tokio::sync::Notify::new(),
        });
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(Arc::clone(&state), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Backend { addr, state, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
        self.state.release.notify_waiters();
    }

    fn calls(&self, path: &str) -> Vec<Call> {
        let calls = self.state.calls.lock().unwrap();
        calls.iter().filter(|c| c.path == path).cloned().collect()
    }

    fn stop(self) {
        self.state.release.notify_waiters();
        self.task.abort();
    }
}

async fn answer(
    state: Arc<BackendState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let body: Value = body
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    state.calls.lock().unwrap().push(Call {
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
    });
    let mode = *state.mode.lock().unwrap();
    let fail = || {
        let mut response = Response::new(Full::new(Bytes::from_static(b"down")));
        *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        Ok(response)
    };
    match mode {
        Mode::Fail => return fail(),
        Mode::Hang => {
            let _ = tokio::time::timeout(Duration::from_secs(30), state.release.notified()).await;
            return fail();
        }
        Mode::Answer => {}
    }
    let reply = route(&path, &body, &headers);
    Ok(Response::new(Full::new(Bytes::from(reply.to_string()))))
}

/// The application's decisions.
fn route(path: &str, body: &Value, headers: &HashMap<String, String>) -> Value {
    let user = body["user"].as_str().unwrap_or("");
    let cookie = headers.get("cookie").map_or("", String::as_str);
    match path {
        "/connect-by-cookie" => {
            if cookie.split("; ").any(|pair| pair == "sid=good") {
                json!({"result": {"user": "alice"}})
            } else {
                json!({"error": {"code": 101, "message": "unauthorized"}})
            }
        }
        "/connect" => {
            json!({"result": {"user": "alice", "info": {"name": "Alice"}, "data": {"welcome": true}}})
        }
        "/connect-by-data" => match body["data"]["session"].as_str() {
            Some("s1") => json!({"result": {"user": "bob"}}),
            Some("banned") => json!({"disconnect": {"code": 4501, "reason": "banned"}}),
            _ => json!({"error": {"code": 101, "message": "unauthorized"}}),
        },
        "/connect-expiring" => {
            json!({"result": {"user": "carol", "expire_at": unix_now() + 1}})
        }
        "/refresh" | "/sub_refresh" => json!({"result": {"expire_at": unix_now() + 3600}}),
        "/subscribe" => match body["channel"].as_str() {
            Some("room:secret") => {
                json!({"error": {"code": 103, "message": "permission denied"}})
            }
            Some("room:expiring") => json!({"result": {"expire_at": unix_now() + 1}}),
            _ => json!({"result": {"info": {"role": "member", "by": user}}}),
        },
        "/publish" => {
            let text = body["data"]["text"].as_str().unwrap_or("");
            if text == "bad" {
                json!({"error": {"code": 1002, "message": "rejected by the backend"}})
            } else {
                json!({"result": {"data": {"text": text.to_uppercase(), "by": user}}})
            }
        }
        "/rpc/echo" => json!({"result": {"data": {"echo": body["data"].clone(), "user": user}}}),
        _ => json!({"error": {"code": 404, "message": "no such route"}}),
    }
}

// ---- the gateway and its clients -----------------------------------------------------------

fn hook(url: String) -> Option<HookConfig> {
    Some(HookConfig {
        url,
        ..HookConfig::default()
    })
}

/// Every hook on `backend`; namespace `room` uses subscribe and publish, `news` uses none.
fn hooked_config(backend: &Backend) -> Config {
    let mut config = config();
    config.client.expiry_grace = Duration::from_secs(30);
    config.channels.namespaces.insert(
        "room".into(),
        NamespaceConfig {
            subscribe: Some(SubscribeRule::Token),
            publish: Some(PublishRule::None),
            ..NamespaceConfig::default()
        },
    );
    config.channels.namespaces.insert(
        "news".into(),
        NamespaceConfig {
            subscribe: Some(SubscribeRule::Authenticated),
            ..NamespaceConfig::default()
        },
    );
    let hooks = &mut config.hooks;
    hooks.forward_headers = vec!["X-Session".into()];
    hooks.forward_cookies = vec!["sid".into()];
    hooks.connect = hook(backend.url("/connect"));
    hooks.subscribe = Some(HookConfig {
        namespaces: vec!["room".into()],
        ..hook(backend.url("/subscribe")).unwrap()
    });
    hooks.publish = Some(HookConfig {
        namespaces: vec!["room".into()],
        ..hook(backend.url("/publish")).unwrap()
    });
    let mut methods = std::collections::BTreeMap::new();
    methods.insert("echo".to_owned(), backend.url("/rpc/echo"));
    hooks.rpc = Some(HookConfig {
        methods,
        ..HookConfig::default()
    });
    config
}

/// A client-protocol connection speaking JSON.
struct Proto {
    ws: Client,
    next_id: u64,
    /// Messages read but not yet taken (a frame may hold several).
    buffered: VecDeque<Value>,
    /// Pushes read while waiting for a reply.
    pushes: VecDeque<Value>,
}

impl Proto {
    async fn open(server: &TestServer, headers: &[(&str, &str)]) -> Proto {
        let ws = connect_with(&server.url("/connection/websocket"), headers)
            .await
            .unwrap();
        Proto {
            ws,
            next_id: 0,
            buffered: VecDeque::new(),
            pushes: VecDeque::new(),
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id });
        command[method] = params;
        self.ws
            .send(Message::text(command.to_string()))
            .await
            .unwrap();
        loop {
            let message = self.next_json().await;
            if message["id"] == id {
                return message;
            }
            if let Some(push) = message.get("push") {
                self.pushes.push_back(push.clone());
            }
        }
    }

    async fn next_json(&mut self) -> Value {
        loop {
            if let Some(value) = self.buffered.pop_front() {
                return value;
            }
            let text = next_text(&mut self.ws).await;
            for line in text.lines() {
                let value: Value = serde_json::from_str(line).unwrap();
                if value != json!({}) {
                    self.buffered.push_back(value);
                }
            }
        }
    }

    async fn next_push(&mut self) -> Value {
        if let Some(push) = self.pushes.pop_front() {
            return push;
        }
        loop {
            let message = self.next_json().await;
            if message.get("push").is_some() {
                return message["push"].clone();
            }
        }
    }
}

async fn metrics_text(server: &TestServer) -> String {
    http(server.addr, "GET", "/metrics", &[], "").await.1
}

/// A client that needs no hook: a token on a plain room, and a token connect on the client
/// protocol subscribing to a namespace without hooks. Both must work whatever the backend does.
async fn assert_token_clients_served(server: &TestServer) {
    server.assert_still_serving().await;
    let mut proto = Proto::open(server, &[]).await;
    let reply = proto
        .call("connect", json!({"token": token("dave", 3600)}))
        .await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    let reply = proto.call("subscribe", json!({"channel": "news:a"})).await;
    assert!(reply.get("error").is_none(), "{reply}");
}

// ---- hooks that allow, refuse and rewrite --------------------------------------------------

#[tokio::test]
async fn the_client_protocol_connects_subscribes_publishes_and_calls_through_the_hooks() {
    let backend = Backend::start().await;
    let server = start(hooked_config(&backend)).await;
    let mut alice = Proto::open(
        &server,
        &[
            ("Cookie", "theme=dark; sid=good-session; other=1"),
            ("X-Session", "xs-1"),
            ("X-Not-Allowed", "secret"),
            ("X-Trace-ID", "trace-hooks-1"),
        ],
    )
    .await;
    let reply = alice.call("connect", json!({})).await;
    let connect = &reply["connect"];
    assert!(connect["client"].is_string(), "{reply}");
    assert_eq!(connect["data"], json!({"welcome": true}), "{reply}");

    // What arrived at the backend: the allowlisted header and cookie, the trace id, nothing
    // else of the client's request.
    let calls = backend.calls("/connect");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(
        call.headers.get("cookie").map(String::as_str),
        Some("sid=good-session")
    );
    assert_eq!(
        call.headers.get("x-session").map(String::as_str),
        Some("xs-1")
    );
    assert_eq!(
        call.headers.get("x-trace-id").map(String::as_str),
        Some("trace-hooks-1")
    );
    assert!(!call.headers.contains_key("x-not-allowed"));
    assert_eq!(call.body["client"], connect["client"]);
    assert_eq!(call.body["transport"], "websocket");
    assert_eq!(call.body["protocol"], "json");
    assert_eq!(call.body["encoding"], "json");

    // subscribe: allowed with channel info, refused with the backend's own error.
    let reply = alice
        .call("subscribe", json!({"channel": "room:open"}))
        .await;
    assert!(reply["subscribe"].is_object(), "{reply}");
    let sub_call = backend.calls("/subscribe");
    assert_eq!(sub_call[0].body["user"], "alice");
    assert_eq!(sub_call[0].body["channel"], "room:open");
    assert_eq!(
        sub_call[0].headers.get("cookie").map(String::as_str),
        Some("sid=good-session")
    );
    let reply = alice
        .call("subscribe", json!({"channel": "room:secret"}))
        .await;
    assert_eq!(reply["error"]["code"], 103, "{reply}");

    // publish: rewritten by the backend, or refused with its error.
    let reply = alice
        .call(
            "publish",
            json!({"channel": "room:open", "data": {"text": "hello"}}),
        )
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    let push = alice.next_push().await;
    assert_eq!(push["channel"], "room:open");
    assert_eq!(
        push["pub"]["data"],
        json!({"text": "HELLO", "by": "alice"}),
        "{push}"
    );
    let reply = alice
        .call(
            "publish",
            json!({"channel": "room:open", "data": {"text": "bad"}}),
        )
        .await;
    assert_eq!(reply["error"]["code"], 1002, "{reply}");
    assert_eq!(reply["error"]["message"], "rejected by the backend");

    // rpc: routed by method; an unknown method is 104 without a call.
    let reply = alice
        .call("rpc", json!({"method": "echo", "data": {"q": 1}}))
        .await;
    assert_eq!(
        reply["rpc"]["data"],
        json!({"echo": {"q": 1}, "user": "alice"}),
        "{reply}"
    );
    let reply = alice
        .call("rpc", json!({"method": "nope", "data": {}}))
        .await;
    assert_eq!(reply["error"]["code"], 104, "{reply}");

    // A namespace without hooks keeps its own rules.
    let reply = alice.call("subscribe", json!({"channel": "news:x"})).await;
    assert!(reply["subscribe"].is_object(), "{reply}");

    let metrics = metrics_text(&server).await;
    assert!(
        metrics.contains("switchboard_hook_calls_total{hook=\"connect\",result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchboard_hook_calls_total{hook=\"subscribe\",result=\"denied\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("switchboard_hook_duration_seconds_count{hook=\"rpc\"} 1"));
    assert!(metrics.contains("switchboard_hook_breaker_state{upstream="));
    assert_token_clients_served(&server).await;
    server.stop().await;
    backend.stop();
}

#[tokio::test]
async fn the_connect_hook_refuses_with_its_error_or_disconnects_with_its_code() {
    let backend = Backend::start().await;
    let mut config = hooked_config(&backend);
    config.hooks.connect = hook(backend.url("/connect-by-data"));
    let server = start(config).await;

    let mut bob = Proto::open(&server, &[]).await;
    let reply = bob
        .call("connect", json!({"data": {"session": "s1"}}))
        .await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    assert_eq!(
        backend.calls("/connect-by-data")[0].body["data"],
        json!({"session": "s1"})
    );

    let mut stranger = Proto::open(&server, &[]).await;
    let reply = stranger
        .call("connect", json!({"data": {"session": "nope"}}))
        .await;
    assert_eq!(reply["error"]["code"], 101, "{reply}");
    // Still unconnected, and still open: a command before connect is 101.
    let reply = stranger
        .call("subscribe", json!({"channel": "news:a"}))
        .await;
    assert_eq!(reply["error"]["code"], 101, "{reply}");

    let mut banned = Proto::open(&server, &[]).await;
    banned
        .ws
        .send(Message::text(
            json!({"id": 1, "connect": {"data": {"session": "banned"}}}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(close_code(&mut banned.ws).await, 4501);
    assert_token_clients_served(&server).await;
    server.stop().await;
    backend.stop();
}

#[tokio::test]
async fn a_plain_chat_client_is_let_in_by_its_session_cookie() {
    let backend = Backend::start().await;
    let mut config = hooked_config(&backend);
    config.hooks.connect = Some(HookConfig {
        doors: vec!["chat".into()],
        ..hook(backend.url("/connect-by-cookie")).unwrap()
    });
    let server = start(config).await;
    let url = server.url("/ws/chat/lobby");
    let mut a = connect_with(&url, &[("Cookie", "theme=dark; sid=good")])
        .await
        .unwrap();
    let mut b = connect_with(&url, &[("Cookie", "sid=good")]).await.unwrap();
    a.send(Message::text("hi from a cookie")).await.unwrap();
    assert_eq!(next_text(&mut b).await, "hi from a cookie");
    let calls = backend.calls("/connect-by-cookie");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].body["door"], "chat");
    assert_eq!(calls[0].body["channel"], "chat:lobby");
    assert_eq!(
        calls[0].headers.get("cookie").map(String::as_str),
        Some("sid=good")
    );

    // A session the backend does not know: refused before the upgrade.
    let (status, body) = refused(&url, &[("Cookie", "sid=nobody")]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "backend_denied");
    // A token still works without asking the backend.
    let before = backend.calls("/connect-by-cookie").len();
    let _c = server.connect_as("/ws/chat/lobby", "carol").await;
    assert_eq!(backend.calls("/connect-by-cookie").len(), before);
    // The notify door was not named in `doors`: it still needs a token.
    let (status, _) = refused(
        &server.url("/ws/notify/user/alice"),
        &[("Cookie", "sid=good")],
    )
    .await;
    assert_eq!(status, 401);
    a.send(Message::text("still in")).await.unwrap();
    assert_eq!(next_text(&mut b).await, "still in");
    server.assert_still_serving().await;
    server.stop().await;
    backend.stop();
}

#[tokio::test]
async fn the_refresh_hooks_extend_a_session_and_a_subscription_the_hooks_made() {
    let backend = Backend::start().await;
    let mut config = hooked_config(&backend);
    config.hooks.connect = hook(backend.url("/connect-expiring"));
    config.hooks.refresh = hook(backend.url("/refresh"));
    config.hooks.sub_refresh = Some(HookConfig {
        namespaces: vec!["room".into()],
        ..hook(backend.url("/sub_refresh")).unwrap()
    });
    config.client.expiry_grace = Duration::ZERO;
    let server = start(config).await;
    let mut carol = Proto::open(&server, &[]).await;
    let reply = carol.call("connect", json!({})).await;
    // The client is not asked to refresh: the server does it with the hook.
    assert!(reply["connect"].get("expires").is_none(), "{reply}");
    eventually("the refresh hook is called", || async {
        !backend.calls("/refresh").is_empty()
    })
    .await;
    assert_eq!(backend.calls("/refresh")[0].body["user"], "carol");

    // A subscription the subscribe hook gave an expiry: renewed by sub_refresh, server-side.
    let reply = carol
        .call("subscribe", json!({"channel": "room:expiring"}))
        .await;
    assert!(reply["subscribe"].is_object(), "{reply}");
    assert!(reply["subscribe"].get("expires").is_none(), "{reply}");
    eventually("the sub_refresh hook is called", || async {
        !backend.calls("/sub_refresh").is_empty()
    })
    .await;
    let call = &backend.calls("/sub_refresh")[0];
    assert_eq!(call.body["channel"], "room:expiring");
    assert_eq!(call.body["user"], "carol");
    let reply = carol.call("ping", json!({})).await;
    assert!(reply.get("error").is_none(), "{reply}");
    server
        .api(
            "publish",
            json!({"channel": "room:expiring", "data": "still subscribed"}),
        )
        .await;
    assert_eq!(carol.next_push().await["pub"]["data"], "still subscribed");
    server.stop().await;
    backend.stop();
}

#[tokio::test]
async fn subscribe_decisions_are_cached_for_their_ttl() {
    let backend = Backend::start().await;
    let mut config = hooked_config(&backend);
    if let Some(subscribe) = config.hooks.subscribe.as_mut() {
        subscribe.cache_ttl = Duration::from_secs(60);
    }
    let server = start(config).await;
    for _ in 0..3 {
        let mut alice = Proto::open(&server, &[("Cookie", "sid=good")]).await;
        alice.call("connect", json!({})).await;
        let reply = alice
            .call("subscribe", json!({"channel": "room:cached"}))
            .await;
        assert!(reply["subscribe"].is_object(), "{reply}");
    }
    assert_eq!(
        backend.calls("/subscribe").len(),
        1,
        "one call for three subscribes"
    );
    server.stop().await;
    backend.stop();
}

// ---- failures ------------------------------------------------------------------------------

/// A config whose breaker opens after 4 failed calls and half-opens after 1 s.
fn fragile_config(backend: &Backend) -> Config {
    let mut config = hooked_config(backend);
    config.hooks.connect = Some(HookConfig {
        doors: vec!["chat".into()],
        ..hook(backend.url("/connect")).unwrap()
    });
    config.hooks.timeout = Duration::from_millis(300);
    config.hooks.retries = 0;
    config.hooks.breaker = BreakerConfig {
        window: Duration::from_secs(60),
        min_calls: 4,
        failure_ratio: 0.5,
        cooldown: Duration::from_secs(1),
        half_open_calls: 1,
        recovery_rate: 0,
    };
    config
}

/// A protocol connect through the connect hook: its reply.
async fn hook_connect(server: &TestServer) -> Value {
    let mut proto = Proto::open(server, &[("Cookie", "sid=good")]).await;
    proto.call("connect", json!({})).await
}

#[tokio::test]
async fn a_failing_backend_gives_temporary_errors_then_the_breaker_opens_and_closes() {
    let backend = Backend::start().await;
    let server = start(fragile_config(&backend)).await;
    // Connected while the backend is well: it stays served throughout.
    let mut early = Proto::open(&server, &[("Cookie", "sid=good")]).await;
    assert!(early.call("connect", json!({})).await["connect"].is_object());

    // 500, then hanging past the timeout: error 100, temporary (the SDKs retry with backoff).
    backend.set_mode(Mode::Fail);
    let reply = hook_connect(&server).await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert_eq!(reply["error"]["temporary"], true, "{reply}");
    let (status, headers, _) = http_full(
        server.addr,
        "GET",
        "/ws/chat/lobby",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Cookie", "sid=good"),
        ],
        "",
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        headers.iter().any(|(n, v)| n == "retry-after" && v == "1"),
        "{headers:?}"
    );
    backend.set_mode(Mode::Hang);
    let reply = hook_connect(&server).await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    let metrics = metrics_text(&server).await;
    assert!(
        metrics.contains("switchboard_hook_calls_total{hook=\"connect\",result=\"timeout\"} 1"),
        "{metrics}"
    );
    // The fourth failure of four calls opens the breaker.
    let reply = hook_connect(&server).await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert_eq!(
        metric(
            server.addr,
            "switchboard_hook_breaker_state{upstream=\"http://127.0.0.1:"
        )
        .await,
        Some(2.0),
        "the breaker is open"
    );

    // Open: no call reaches the backend, the client is answered at once.
    let calls_before = backend.state.calls.lock().unwrap().len();
    let reply = hook_connect(&server).await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    let (status, _) = refused(&server.url("/ws/chat/lobby"), &[("Cookie", "sid=good")]).await;
    assert_eq!(status, 503);
    assert_eq!(
        backend.state.calls.lock().unwrap().len(),
        calls_before,
        "no call while open"
    );
    let metrics = metrics_text(&server).await;
    assert!(
        metrics.contains("switchboard_hook_calls_total{hook=\"connect\",result=\"breaker_open\"}"),
        "{metrics}"
    );
    // Clients that do not need the backend, and the one connected before, are served.
    assert_token_clients_served(&server).await;
    let reply = early
        .call("subscribe", json!({"channel": "news:still"}))
        .await;
    assert!(reply["subscribe"].is_object(), "{reply}");

    // The backend recovers: after the cooldown a trial call succeeds and closes the breaker.
    backend.set_mode(Mode::Answer);
    let deadline = tokio::time::Instant::now() + WAIT;
    let connected = loop {
        let reply = hook_connect(&server).await;
        if reply["connect"].is_object() {
            break reply;
        }
        assert_eq!(reply["error"]["code"], 100, "{reply}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connect through the recovered backend: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(connected["connect"]["client"].is_string());
    assert_eq!(
        metric(
            server.addr,
            "switchboard_hook_breaker_state{upstream=\"http://127.0.0.1:"
        )
        .await,
        Some(0.0),
        "the breaker is closed"
    );
    let metrics = metrics_text(&server).await;
    for to in ["open", "half_open", "closed"] {
        assert!(
            metrics.contains(&format!(
                "switchboard_hook_breaker_transitions_total{{to=\"{to}\",upstream="
            )),
            "transition to {to}: {metrics}"
        );
    }
    let mut chat = connect_with(&server.url("/ws/chat/lobby"), &[("Cookie", "sid=good")])
        .await
        .unwrap();
    chat.send(Message::text("back")).await.unwrap();
    assert_eq!(next_text(&mut chat).await, "back");
    server.stop().await;
    backend.stop();
}

#[tokio::test]
async fn a_backend_that_is_down_is_a_temporary_error_and_others_are_unaffected() {
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let backend = Backend::start().await;
    let mut config = fragile_config(&backend);
    config.hooks.connect = Some(HookConfig {
        doors: vec!["chat".into()],
        ..hook(format!("http://{addr}/connect")).unwrap()
    });
    config.hooks.retries = 2;
    config.hooks.breaker.min_calls = 100;
    let server = start(config).await;
    let reply = hook_connect(&server).await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert_eq!(reply["error"]["temporary"], true);
    let (status, body) = refused(&server.url("/ws/chat/room-1"), &[("Cookie", "sid=good")]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "backend_unavailable");
    let metrics = metrics_text(&server).await;
    assert!(
        metrics.contains("switchboard_hook_calls_total{hook=\"connect\",result=\"error\"} 2"),
        "{metrics}"
    );
    // The other hooks' upstream is a different one: its breaker is closed and it serves.
    let mut token_client = Proto::open(&server, &[]).await;
    let reply = token_client
        .call("connect", json!({"token": token("erin", 3600)}))
        .await;
    assert!(reply["connect"].is_object(), "{reply}");
    let reply = token_client
        .call("subscribe", json!({"channel": "room:open"}))
        .await;
    assert!(reply["subscribe"].is_object(), "{reply}");
    assert_token_clients_served(&server).await;
    server.stop().await;
    backend.stop();
}
