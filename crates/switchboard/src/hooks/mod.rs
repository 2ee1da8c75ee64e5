//! Backend hooks: the gateway asking the application's backend, over HTTP POST with JSON in
//! Centrifugo's proxy format, who a connection is (`connect`, `refresh`), whether it may
//! subscribe (`subscribe`, `sub_refresh`), what to publish (`publish`), and what to answer an
//! `rpc` (docs/hooks.md).
//!
//! This module owns the calls and what protects them: the routes from hook (and namespace,
//! and rpc method) to URL, the pooled keep-alive client (`client`), one circuit breaker per
//! upstream (`breaker`), retries with backoff and jitter for the idempotent hooks, the answer
//! cache (`cache`), the allowlist of forwarded headers and cookies, and the hook metrics. It
//! knows nothing of connections or doors: callers build the request body, and turn an
//! [`Answer`] or a [`HookError`] into a reply, a close or a refusal (`protocol`, `door`).

pub mod breaker;
mod cache;
pub(crate) mod client;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use serde_json::Value;

use crate::config::{HookConfig, HooksConfig};
use crate::metrics::HookMetrics;
use crate::trace::{Span, TraceParent, Tracer};
pub use breaker::{Breaker, BreakerState};
pub use client::AttemptError;

/// Which hook a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// Who is this connection.
    Connect,
    /// Extend a connection's session.
    Refresh,
    /// May this connection subscribe.
    Subscribe,
    /// Check or rewrite a client publication.
    Publish,
    /// Extend a subscription.
    SubRefresh,
    /// Answer a client's rpc.
    Rpc,
    /// The current items of a shared-poll channel's tracked keys (a namespace's
    /// `shared_poll_url`, polled by `crate::poll`).
    SharedPoll,
}

impl Hook {
    /// The `hook` label of the metrics, and the name in the configuration.
    pub fn label(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Refresh => "refresh",
            Hook::Subscribe => "subscribe",
            Hook::Publish => "publish",
            Hook::SubRefresh => "sub_refresh",
            Hook::Rpc => "rpc",
            Hook::SharedPoll => "shared_poll",
        }
    }

    /// Whether asking twice does no harm, so a failed attempt may be retried.
    pub fn idempotent(self) -> bool {
        match self {
            Hook::Connect
            | Hook::Refresh
            | Hook::Subscribe
            | Hook::SubRefresh
            | Hook::SharedPoll => true,
            Hook::Publish | Hook::Rpc => false,
        }
    }
}

/// What the backend answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `{"result": {...}}` (an absent result is an empty object).
    Result(Value),
    /// `{"error": {"code", "message", "temporary"}}`: refuse the request with this error.
    Error {
        /// The error code the client gets.
        code: u32,
        /// Its message.
        message: String,
        /// Whether the client should retry.
        temporary: bool,
    },
    /// `{"disconnect": {"code", "reason"}}`: close the connection with this code.
    Disconnect {
        /// The close code.
        code: u16,
        /// Why (logged; the close frame says "backend disconnect").
        reason: String,
    },
}

/// Why a hook gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The upstream's breaker is open (or its trial calls are under way): no call was made.
    #[error("circuit breaker open; retry in {}s", retry_after.as_secs().max(1))]
    BreakerOpen {
        /// When to try again.
        retry_after: Duration,
    },
    /// The call failed (the last attempt's reason).
    #[error("{0}")]
    Attempt(#[from] AttemptError),
    /// The reply is not the JSON a hook answers.
    #[error("bad reply: {0}")]
    BadReply(String),
}

impl HookError {
    /// The `result` label of `switchboard_hook_calls_total`.
    fn label(&self) -> &'static str {
        match self {
            HookError::BreakerOpen { .. } => "breaker_open",
            HookError::Attempt(AttemptError::Timeout) => "timeout",
            HookError::Attempt(_) | HookError::BadReply(_) => "error",
        }
    }

    /// How long a refused client should wait before trying again, in whole seconds.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            HookError::BreakerOpen { retry_after } => retry_after.as_secs().max(1),
            HookError::Attempt(_) | HookError::BadReply(_) => 1,
        }
    }

    /// Whether another attempt may succeed (timeouts, broken connections, 5xx).
    fn retryable(&self) -> bool {
        match self {
            HookError::Attempt(AttemptError::Timeout | AttemptError::Transport(_)) => true,
            HookError::Attempt(AttemptError::Status(status)) => *status >= 500,
            HookError::Attempt(AttemptError::TooLarge)
            | HookError::BadReply(_)
            | HookError::BreakerOpen { .. } => false,
        }
    }
}

/// One hook URL with its settings and its upstream's breaker.
pub struct Endpoint {
    hook: Hook,
    uri: Uri,
    timeout: Duration,
    cache_ttl: Duration,
    breaker: Arc<Breaker>,
}

impl Endpoint {
    /// Which hook it serves.
    pub fn hook(&self) -> Hook {
        self.hook
    }
}

/// A hook used by some namespaces.
struct Namespaced {
    endpoint: Arc<Endpoint>,
    every: bool,
    /// `""` is the default namespace.
    names: HashSet<String>,
}

impl Namespaced {
    fn covers(&self, channel: &str) -> bool {
        self.every
            || self
                .names
                .contains(crate::channels::namespace_of(channel).unwrap_or(""))
    }
}

/// The allowlisted request headers and cookies of a client's upgrade, and its trace id, as
/// they go along with each hook call of that connection.
#[derive(Debug, Default)]
pub struct Forwarded {
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The connection's handshake span (traces on and sampled): each hook call's span hangs
    /// under it.
    trace: Option<TraceParent>,
}

/// The trace-id header every hook call carries.
const TRACE_HEADER: &str = "x-trace-id";

/// Every hook of one gateway.
pub struct Hooks {
    client: client::HttpClient,
    retries: u32,
    retry_backoff: Duration,
    forward_headers: Vec<HeaderName>,
    forward_cookies: Vec<String>,
    cache: cache::Cache,
    metrics: HookMetrics,
    connect: Option<Arc<Endpoint>>,
    connect_chat: bool,
    connect_notify: bool,
    refresh: Option<Arc<Endpoint>>,
    subscribe: Option<Namespaced>,
    publish: Option<Namespaced>,
    sub_refresh: Option<Namespaced>,
    rpc_methods: HashMap<String, Arc<Endpoint>>,
    rpc_default: Option<Arc<Endpoint>>,
    /// Shared-poll backends by namespace.
    shared_polls: HashMap<String, Arc<Endpoint>>,
    breakers: Vec<Arc<Breaker>>,
    /// Spans of hook calls (`hook {name}`), with `traceparent` sent along; off unless traces are.
    tracer: Tracer,
}

/// `scheme://host:port` of a URL: what a breaker is kept per.
fn upstream_of(uri: &Uri) -> String {
    let port = uri.port_u16().unwrap_or(80);
    format!("http://{}:{port}", uri.host().unwrap_or(""))
}

impl Hooks {
    /// The hooks `config` configures, or `None` when it configures none. The configuration
    /// was validated (URLs parse).
    pub fn from_config(config: &HooksConfig, metrics: &HookMetrics) -> Option<Hooks> {
        Hooks::from_config_with_polls(config, &[], metrics)
    }

    /// The hooks `config` configures and the shared-poll backends `polls` names (namespace,
    /// URL), or `None` when there are none. Shared-poll calls take `[hooks]`' timeout,
    /// retries and breaker settings; an upstream shared with a hook shares its breaker.
    pub fn from_config_with_polls(
        config: &HooksConfig,
        polls: &[(String, Arc<str>)],
        metrics: &HookMetrics,
    ) -> Option<Hooks> {
        if config.tables().iter().all(|(_, table)| table.is_none()) && polls.is_empty() {
            return None;
        }
        let mut breakers: HashMap<String, Arc<Breaker>> = HashMap::new();
        let mut endpoint = |hook: Hook, table: &HookConfig, url: &str| -> Option<Arc<Endpoint>> {
            let uri: Uri = url.parse().ok()?;
            let upstream = upstream_of(&uri);
            let breaker = breakers.entry(upstream.clone()).or_insert_with(|| {
                Arc::new(Breaker::new(
                    &upstream,
                    &config.breaker,
                    metrics.breaker_state.with_label_values(&[&upstream]),
                    metrics.breaker_transitions.clone(),
                ))
            });
            Some(Arc::new(Endpoint {
                hook,
                uri,
                timeout: table.timeout.unwrap_or(config.timeout),
                cache_ttl: table.cache_ttl,
                breaker: Arc::clone(breaker),
            }))
        };
        let mut namespaced = |hook: Hook, table: Option<&HookConfig>| {
            let table = table?;
            Some(Namespaced {
                endpoint: endpoint(hook, table, &table.url)?,
                every: table.namespaces.iter().any(|ns| ns == "*"),
                names: table.namespaces.iter().cloned().collect(),
            })
        };
        let subscribe = namespaced(Hook::Subscribe, config.subscribe.as_ref());
        let publish = namespaced(Hook::Publish, config.publish.as_ref());
        let sub_refresh = namespaced(Hook::SubRefresh, config.sub_refresh.as_ref());
        let connect = config
            .connect
            .as_ref()
            .and_then(|t| endpoint(Hook::Connect, t, &t.url));
        let refresh = config
            .refresh
            .as_ref()
            .and_then(|t| endpoint(Hook::Refresh, t, &t.url));
        let mut rpc_methods = HashMap::new();
        let mut rpc_default = None;
        if let Some(table) = &config.rpc {
            for (method, url) in &table.methods {
                if let Some(e) = endpoint(Hook::Rpc, table, url) {
                    rpc_methods.insert(method.clone(), e);
                }
            }
            if !table.url.is_empty() {
                rpc_default = endpoint(Hook::Rpc, table, &table.url);
            }
        }
        let poll_table = HookConfig::default();
        let shared_polls = polls
            .iter()
            .filter_map(|(namespace, url)| {
                let endpoint = endpoint(Hook::SharedPoll, &poll_table, url)?;
                Some((namespace.clone(), endpoint))
            })
            .collect();
        let doors = config.connect.as_ref().map(|t| &t.doors);
        let has_door = |name: &str| doors.is_some_and(|d| d.iter().any(|x| x == name));
        Some(Hooks {
            client: client::HttpClient::new(
                config.max_idle_per_upstream,
                config.idle_timeout,
                config.max_reply_bytes,
            ),
            retries: config.retries,
            retry_backoff: config.retry_backoff,
            forward_headers: config
                .forward_headers
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .filter(|name| name != http::header::COOKIE)
                .collect(),
            forward_cookies: config.forward_cookies.clone(),
            cache: cache::Cache::new(config.cache_max_entries),
            metrics: metrics.clone(),
            connect,
            connect_chat: has_door("chat"),
            connect_notify: has_door("notify"),
            refresh,
            subscribe,
            publish,
            sub_refresh,
            rpc_methods,
            rpc_default,
            shared_polls,
            breakers: breakers.into_values().collect(),
            tracer: Tracer::disabled(),
        })
    }

    /// Hook calls make spans with `tracer` (the node's; a disabled one makes none).
    #[must_use]
    pub fn with_tracer(mut self, tracer: Tracer) -> Hooks {
        self.tracer = tracer;
        self
    }

    /// The connect hook, for the client protocol.
    pub fn connect(&self) -> Option<&Arc<Endpoint>> {
        self.connect.as_ref()
    }

    /// The connect hook, when the plain door `chat` or `notify` calls it at the handshake.
    pub fn connect_at_door(&self, door: crate::kind::Door) -> Option<&Arc<Endpoint>> {
        let asked = match door {
            crate::kind::Door::Chat => self.connect_chat,
            crate::kind::Door::Notify => self.connect_notify,
            crate::kind::Door::Echo | crate::kind::Door::Protocol | crate::kind::Door::Pusher => {
                false
            }
        };
        self.connect.as_ref().filter(|_| asked)
    }

    /// The refresh hook.
    pub fn refresh(&self) -> Option<&Arc<Endpoint>> {
        self.refresh.as_ref()
    }

    /// The subscribe hook of `channel`'s namespace.
    pub fn subscribe(&self, channel: &str) -> Option<&Arc<Endpoint>> {
        self.subscribe
            .as_ref()
            .filter(|n| n.covers(channel))
            .map(|n| &n.endpoint)
    }

    /// The publish hook of `channel`'s namespace.
    pub fn publish(&self, channel: &str) -> Option<&Arc<Endpoint>> {
        self.publish
            .as_ref()
            .filter(|n| n.covers(channel))
            .map(|n| &n.endpoint)
    }

    /// The sub_refresh hook of `channel`'s namespace.
    pub fn sub_refresh(&self, channel: &str) -> Option<&Arc<Endpoint>> {
        self.sub_refresh
            .as_ref()
            .filter(|n| n.covers(channel))
            .map(|n| &n.endpoint)
    }

    /// The shared-poll backend of `channel`'s namespace.
    pub fn shared_poll(&self, channel: &str) -> Option<&Arc<Endpoint>> {
        self.shared_polls
            .get(crate::channels::namespace_of(channel).unwrap_or(""))
    }

    /// The rpc hook of `method`.
    pub fn rpc(&self, method: &str) -> Option<&Arc<Endpoint>> {
        self.rpc_methods.get(method).or(self.rpc_default.as_ref())
    }

    /// Whether any rpc hook is configured: with none, `rpc` is not available at all (108);
    /// with some, a method that has no URL is not found (104).
    pub fn has_rpc(&self) -> bool {
        self.rpc_default.is_some() || !self.rpc_methods.is_empty()
    }

    /// Whether any upstream's breaker is not closed (for `/readyz`-style reporting).
    pub fn breaker_states(&self) -> Vec<BreakerState> {
        self.breakers.iter().map(|b| b.state()).collect()
    }

    /// What of a client's upgrade request goes along with its hook calls: the allowlisted
    /// headers, the allowlisted cookies (in one `Cookie` header), and the trace id.
    pub fn forwarded(
        &self,
        headers: &HeaderMap,
        trace_id: &str,
        trace: Option<TraceParent>,
    ) -> Forwarded {
        let mut out = Vec::new();
        for name in &self.forward_headers {
            for value in headers.get_all(name) {
                out.push((name.clone(), value.clone()));
            }
        }
        if !self.forward_cookies.is_empty() {
            let kept: Vec<&str> = headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .map(str::trim)
                .filter(|pair| {
                    pair.split_once('=')
                        .is_some_and(|(name, _)| self.forward_cookies.iter().any(|c| c == name))
                })
                .collect();
            if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
                if !kept.is_empty() {
                    out.push((http::header::COOKIE, value));
                }
            }
        }
        if let Ok(value) = HeaderValue::from_str(trace_id) {
            out.push((HeaderName::from_static(TRACE_HEADER), value));
        }
        Forwarded {
            headers: out,
            trace,
        }
    }

    /// Calls `endpoint` with `body` and the connection's forwarded headers: from the cache
    /// when it holds an answer, else through the breaker, with retries (idempotent hooks).
    ///
    /// # Errors
    /// [`HookError`] when no answer came: the breaker refused, or the last attempt failed.
    pub async fn call(
        &self,
        endpoint: &Endpoint,
        body: &Value,
        forwarded: Option<&Forwarded>,
    ) -> Result<Answer, HookError> {
        let started = Instant::now();
        let hook = endpoint.hook.label();
        let headers = forwarded.map_or(&[][..], |f| f.headers.as_slice());
        let key = (!endpoint.cache_ttl.is_zero()).then(|| cache_key(endpoint, body, headers));
        if let Some(answer) = key.as_deref().and_then(|k| self.cache.get(k, started)) {
            return Ok(answer);
        }
        // One span per call (retries included), under the connection's handshake span, and
        // its context sent as `traceparent`; nothing is made or sent with traces off.
        let mut span = if self.tracer.is_enabled() {
            self.tracer
                .client_span(&format!("hook {hook}"), forwarded.and_then(|f| f.trace))
        } else {
            Span::none()
        };
        let traced: Vec<(HeaderName, HeaderValue)>;
        let headers = match span
            .traceparent()
            .and_then(|parent| HeaderValue::from_str(&parent).ok())
        {
            Some(parent) => {
                traced = headers
                    .iter()
                    .cloned()
                    .chain([(HeaderName::from_static("traceparent"), parent)])
                    .collect();
                &traced[..]
            }
            None => headers,
        };
        span.set_str("url.full", &endpoint.uri.to_string());
        let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let attempts = if endpoint.hook.idempotent() {
            self.retries + 1
        } else {
            1
        };
        let mut last = HookError::BreakerOpen {
            retry_after: Duration::from_secs(1),
        };
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(jittered(self.retry_backoff, attempt)).await;
            }
            let permit = match endpoint.breaker.admit(Instant::now()) {
                Ok(permit) => permit,
                Err(retry_after) => {
                    last = HookError::BreakerOpen { retry_after };
                    break;
                }
            };
            let replied = self
                .client
                .post(&endpoint.uri, headers, bytes.clone(), endpoint.timeout)
                .await
                .map_err(HookError::from)
                .and_then(|reply| parse_reply(&reply));
            endpoint
                .breaker
                .record(permit, replied.is_err(), Instant::now());
            match replied {
                Ok(answer) => {
                    let result = match answer {
                        Answer::Result(_) => "ok",
                        Answer::Error { .. } | Answer::Disconnect { .. } => "denied",
                    };
                    self.observe(hook, result, started);
                    span.set_str("switchboard.hook.result", result);
                    if let Some(key) = key {
                        self.cache
                            .put(key.into(), &answer, endpoint.cache_ttl, Instant::now());
                    }
                    return Ok(answer);
                }
                Err(error) => {
                    let again = error.retryable();
                    last = error;
                    if !again {
                        break;
                    }
                }
            }
        }
        self.observe(hook, last.label(), started);
        span.fail(&last.to_string());
        match &last {
            // Logged at the transition, not once per refused call.
            HookError::BreakerOpen { .. } => {}
            error => {
                tracing::warn!(event = "hook_failed", hook, url = %endpoint.uri, %error, "backend hook failed")
            }
        }
        Err(last)
    }

    fn observe(&self, hook: &str, result: &str, started: Instant) {
        self.metrics
            .duration
            .with_label_values(&[hook])
            .observe(started.elapsed().as_secs_f64());
        self.metrics.calls.with_label_values(&[hook, result]).inc();
    }
}

/// The wait before retry `attempt` (1, 2...): up to `base` × 2^(attempt−1), drawn uniformly
/// (full jitter), so retries from many connections spread out instead of arriving together.
fn jittered(base: Duration, attempt: u32) -> Duration {
    let ceiling = base.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// The cache key of a request: hook, URL, body less the client id, forwarded headers less the
/// trace id.
fn cache_key(endpoint: &Endpoint, body: &Value, headers: &[(HeaderName, HeaderValue)]) -> String {
    let mut body = body.clone();
    if let Some(map) = body.as_object_mut() {
        map.remove("client");
    }
    let mut key = format!("{}\n{}\n{body}", endpoint.hook.label(), endpoint.uri);
    for (name, value) in headers {
        if name != TRACE_HEADER {
            key.push('\n');
            key.push_str(name.as_str());
            key.push(':');
            key.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
    }
    key
}

/// Reads a hook's reply: `disconnect` first, then `error`, else `result`.
fn parse_reply(body: &[u8]) -> Result<Answer, HookError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| HookError::BadReply(e.to_string()))?;
    let Value::Object(mut reply) = value else {
        return Err(HookError::BadReply("not a JSON object".to_owned()));
    };
    if let Some(disconnect) = reply.get("disconnect").filter(|v| !v.is_null()) {
        let code = disconnect.get("code").and_then(Value::as_u64).unwrap_or(0);
        let code = u16::try_from(code)
            .ok()
            .filter(|c| (3000..5000).contains(c))
            .ok_or_else(|| HookError::BadReply("disconnect code not in 3000-4999".to_owned()))?;
        let reason = disconnect
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        return Ok(Answer::Disconnect { code, reason });
    }
    if let Some(error) = reply.get("error").filter(|v| !v.is_null()) {
        let code = error.get("code").and_then(Value::as_u64).unwrap_or(0);
        let code = u32::try_from(code)
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| HookError::BadReply("error without a code".to_owned()))?;
        return Ok(Answer::Error {
            code,
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            temporary: error
                .get("temporary")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        });
    }
    match reply.remove("result") {
        None | Some(Value::Null) => Ok(Answer::Result(Value::Object(Default::default()))),
        Some(result @ Value::Object(_)) => Ok(Answer::Result(result)),
        Some(_) => Err(HookError::BadReply("result is not an object".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_disconnect_then_error_then_result() {
        assert_eq!(
            parse_reply(br#"{"result":{"user":"42"}}"#),
            Ok(Answer::Result(serde_json::json!({"user": "42"})))
        );
        assert_eq!(
            parse_reply(br#"{"error":{"code":1000,"message":"no"}}"#),
            Ok(Answer::Error {
                code: 1000,
                message: "no".into(),
                temporary: false
            })
        );
        assert_eq!(
            parse_reply(br#"{"disconnect":{"code":4501,"reason":"banned"},"result":{}}"#),
            Ok(Answer::Disconnect {
                code: 4501,
                reason: "banned".into()
            })
        );
        assert_eq!(
            parse_reply(b"{}"),
            Ok(Answer::Result(serde_json::json!({})))
        );
        assert!(parse_reply(b"[1]").is_err());
        assert!(parse_reply(br#"{"disconnect":{"code":1000}}"#).is_err());
        assert!(parse_reply(b"not json").is_err());
    }

    #[test]
    fn only_allowlisted_headers_and_cookies_go_along() {
        let config = HooksConfig {
            forward_headers: vec!["X-Session".into(), "cookie".into()],
            forward_cookies: vec!["sid".into()],
            connect: Some(HookConfig {
                url: "http://127.0.0.1:9/connect".into(),
                ..HookConfig::default()
            }),
            ..HooksConfig::default()
        };
        let metrics = crate::metrics::Metrics::new();
        let hooks = Hooks::from_config(&config, &metrics.hooks).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-session", HeaderValue::from_static("s1"));
        headers.insert("x-other", HeaderValue::from_static("no"));
        headers.insert(
            "cookie",
            HeaderValue::from_static("a=1; sid=abc; theme=dark"),
        );
        let forwarded = hooks.forwarded(&headers, "trace-1", None);
        let got: Vec<(String, String)> = forwarded
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("x-session".into(), "s1".into()),
                ("cookie".into(), "sid=abc".into()),
                ("x-trace-id".into(), "trace-1".into()),
            ]
        );
    }

    #[test]
    fn jitter_stays_under_the_doubling_ceiling() {
        for attempt in 1..5 {
            let wait = jittered(Duration::from_millis(10), attempt);
            assert!(wait <= Duration::from_millis(10) * (1 << (attempt - 1)));
        }
    }
}
