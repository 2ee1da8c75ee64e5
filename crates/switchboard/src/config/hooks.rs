//! `[hooks]`: the backend hooks' settings as written (docs/hooks.md), their defaults and their
//! checks. The hooks themselves (HTTP client, circuit breakers, cache) live in `crate::hooks`;
//! this module only says what was asked for.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, invalid, optional_duration, ConfigError};

/// `[hooks]`: settings shared by every hook, the breaker, and one table per hook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// How long one attempt of a hook may take, unless the hook sets its own (default 1s).
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// More attempts after a failed one, for the idempotent hooks only (connect, refresh,
    /// subscribe, sub_refresh); publish and rpc are never retried (default 1).
    pub retries: u32,
    /// The wait before the first retry, doubled for each next one, with full jitter
    /// (default 50ms).
    #[serde(deserialize_with = "duration")]
    pub retry_backoff: Duration,
    /// Request headers of the client's upgrade passed on to every hook (case-insensitive;
    /// default none). `Cookie` is never passed whole: see `forward_cookies`.
    pub forward_headers: Vec<String>,
    /// Cookies of the client's upgrade passed on to every hook, by name (default none).
    pub forward_cookies: Vec<String>,
    /// Idle keep-alive connections kept per upstream (default 32).
    pub max_idle_per_upstream: usize,
    /// How long an idle keep-alive connection to an upstream is kept (default 60s).
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Largest reply body read from a hook (default 65536); a larger one is a failure.
    pub max_reply_bytes: usize,
    /// Most results kept in the hook cache at once, across hooks (default 100000).
    pub cache_max_entries: usize,
    /// The circuit breaker each upstream (scheme, host and port of a hook URL) has.
    pub breaker: BreakerConfig,
    /// `connect`: a client-protocol connect without a token, and (with `doors`) the handshake
    /// of plain doors.
    pub connect: Option<HookConfig>,
    /// `refresh`: called when a connection the connect hook made reaches its `expire_at`.
    pub refresh: Option<HookConfig>,
    /// `subscribe`: a subscribe without a subscription token, in the namespaces listed.
    pub subscribe: Option<HookConfig>,
    /// `publish`: a client publication, in the namespaces listed.
    pub publish: Option<HookConfig>,
    /// `sub_refresh`: a subscription the subscribe hook gave an `expire_at` reaches it.
    pub sub_refresh: Option<HookConfig>,
    /// `rpc`: the client protocol's `rpc` command, by method.
    pub rpc: Option<HookConfig>,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            timeout: Duration::from_secs(1),
            retries: 1,
            retry_backoff: Duration::from_millis(50),
            forward_headers: Vec::new(),
            forward_cookies: Vec::new(),
            max_idle_per_upstream: 32,
            idle_timeout: Duration::from_secs(60),
            max_reply_bytes: 64 * 1024,
            cache_max_entries: 100_000,
            breaker: BreakerConfig::default(),
            connect: None,
            refresh: None,
            subscribe: None,
            publish: None,
            sub_refresh: None,
            rpc: None,
        }
    }
}

/// One hook's table, e.g. `[hooks.subscribe]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HookConfig {
    /// Where the hook POSTs (`http://host:port/path`). For `rpc`, the URL of methods that
    /// `methods` does not name (empty: those answer 104).
    pub url: String,
    /// This hook's attempt timeout (default: `hooks.timeout`).
    #[serde(default, deserialize_with = "optional_duration")]
    pub timeout: Option<Duration>,
    /// How long an answer is reused for the same request (same user, channel, forwarded
    /// headers...); idempotent hooks only (default 0s: never).
    #[serde(deserialize_with = "duration")]
    pub cache_ttl: Duration,
    /// subscribe, publish, sub_refresh: the namespaces that use this hook; `""` is the
    /// default namespace, `"*"` every namespace.
    pub namespaces: Vec<String>,
    /// connect: the plain doors whose handshake (when it carries no token) calls it, among
    /// `chat` and `notify` (default none: the client protocol only).
    pub doors: Vec<String>,
    /// rpc: method → URL.
    pub methods: BTreeMap<String, String>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_calls: 20,
            failure_ratio: 0.5,
            cooldown: Duration::from_secs(5),
            half_open_calls: 3,
            recovery_rate: 50,
        }
    }
}

/// `[hooks.breaker]`: when an upstream is given up on, and how it is tried again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// The sliding window failures are counted over (default 10s).
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// Calls the window must hold before it can open (default 20).
    pub min_calls: u32,
    /// Share of failed calls (errors, timeouts, bad replies) that opens it (default 0.5).
    pub failure_ratio: f64,
    /// How long it stays open before trial calls (default 5s); also how long the recovery
    /// rate applies after it closes.
    #[serde(deserialize_with = "duration")]
    pub cooldown: Duration,
    /// Trial calls while half-open; that many successes close it, one failure opens it again
    /// (default 3).
    pub half_open_calls: u32,
    /// Calls per second through an upstream for `cooldown` after its breaker closes, so new
    /// connections waiting to reconnect do not all land at once (default 50; 0: no limit).
    pub recovery_rate: u32,
}

/// Which hooks a table may configure for: (name, may name namespaces, may name doors, may
/// name methods, may cache).
const HOOKS: [(&str, bool, bool, bool, bool); 6] = [
    ("connect", false, true, false, true),
    ("refresh", false, false, false, true),
    ("subscribe", true, false, false, true),
    ("publish", true, false, false, false),
    ("sub_refresh", true, false, false, true),
    ("rpc", false, false, true, false),
];

/// Checks an upstream URL: plain `http://host:port/...` (TLS to the backend is left to a
/// sidecar; see docs/hooks.md).
pub(crate) fn check_url(key: &str, url: &str) -> Result<http::Uri, ConfigError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| invalid(key, format!("{url:?} is not a URL: {e}")))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(invalid(
            key,
            format!("{url:?}: a hook URL is http://host[:port]/path (https is not supported)"),
        ));
    }
    Ok(uri)
}

impl HooksConfig {
    /// The hooks' tables with their names, in a fixed order.
    pub fn tables(&self) -> [(&'static str, Option<&HookConfig>); 6] {
        [
            ("connect", self.connect.as_ref()),
            ("refresh", self.refresh.as_ref()),
            ("subscribe", self.subscribe.as_ref()),
            ("publish", self.publish.as_ref()),
            ("sub_refresh", self.sub_refresh.as_ref()),
            ("rpc", self.rpc.as_ref()),
        ]
    }

    /// Checks ranges, URLs and which keys each hook may use; `namespaces` are the configured
    /// namespace names.
    pub(crate) fn validate<'a>(
        &self,
        namespaces: impl Iterator<Item = &'a String> + Clone,
    ) -> Result<(), ConfigError> {
        if self.timeout < Duration::from_millis(10) {
            return Err(invalid("hooks.timeout", "must be at least 10ms"));
        }
        if self.retries > 5 {
            return Err(invalid("hooks.retries", "must be at most 5"));
        }
        if self.max_reply_bytes < 1024 {
            return Err(invalid("hooks.max_reply_bytes", "must be at least 1024"));
        }
        for name in &self.forward_headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(
                    "hooks.forward_headers",
                    format!("{name:?} is not a header name"),
                ));
            }
        }
        let breaker = &self.breaker;
        if breaker.window < Duration::from_millis(100) {
            return Err(invalid("hooks.breaker.window", "must be at least 100ms"));
        }
        if breaker.min_calls == 0 {
            return Err(invalid("hooks.breaker.min_calls", "must be at least 1"));
        }
        let ratio = breaker.failure_ratio;
        if ratio.is_nan() || ratio <= 0.0 || ratio > 1.0 {
            return Err(invalid(
                "hooks.breaker.failure_ratio",
                "must be above 0 and at most 1",
            ));
        }
        if breaker.half_open_calls == 0 {
            return Err(invalid(
                "hooks.breaker.half_open_calls",
                "must be at least 1",
            ));
        }
        if breaker.cooldown < Duration::from_millis(100) {
            return Err(invalid("hooks.breaker.cooldown", "must be at least 100ms"));
        }
        for ((name, table), (_, namespaced, doors, methods, caches)) in
            self.tables().into_iter().zip(HOOKS)
        {
            let Some(table) = table else { continue };
            let key = |field: &str| format!("hooks.{name}.{field}");
            if !table.url.is_empty() {
                check_url(&key("url"), &table.url)?;
            } else if name != "rpc" {
                return Err(invalid(&key("url"), "is required"));
            }
            if table.timeout.is_some_and(|t| t < Duration::from_millis(10)) {
                return Err(invalid(&key("timeout"), "must be at least 10ms"));
            }
            if !caches && !table.cache_ttl.is_zero() {
                return Err(invalid(
                    &key("cache_ttl"),
                    "only the idempotent hooks (connect, refresh, subscribe, sub_refresh) cache",
                ));
            }
            if !namespaced && !table.namespaces.is_empty() {
                return Err(invalid(
                    &key("namespaces"),
                    "only subscribe, publish and sub_refresh are per namespace",
                ));
            }
            if namespaced && table.namespaces.is_empty() {
                return Err(invalid(
                    &key("namespaces"),
                    "name the namespaces that use this hook (\"\" the default one, \"*\" all)",
                ));
            }
            for ns in &table.namespaces {
                if !(ns.is_empty() || ns == "*" || namespaces.clone().any(|n| n == ns)) {
                    return Err(invalid(
                        &key("namespaces"),
                        format!("{ns:?} is not a namespace of [channels.namespaces]"),
                    ));
                }
            }
            if !doors && !table.doors.is_empty() {
                return Err(invalid(&key("doors"), "only the connect hook has doors"));
            }
            for door in &table.doors {
                if door != "chat" && door != "notify" {
                    return Err(invalid(
                        &key("doors"),
                        format!("{door:?}: the doors are \"chat\" and \"notify\""),
                    ));
                }
            }
            if !methods && !table.methods.is_empty() {
                return Err(invalid(&key("methods"), "only the rpc hook has methods"));
            }
            for (method, url) in &table.methods {
                check_url(&format!("hooks.rpc.methods.{method}"), url)?;
            }
            if name == "rpc" && table.url.is_empty() && table.methods.is_empty() {
                return Err(invalid(&key("url"), "set url, methods, or both"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn checked(toml: &str) -> Result<Config, String> {
        let config = Config::from_toml(toml)?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn hook_tables_parse_and_are_checked() {
        let config = checked(
            r#"
            [channels.namespaces.room]
            [hooks]
            forward_cookies = ["sid"]
            [hooks.connect]
            url = "http://127.0.0.1:9000/connect"
            doors = ["chat"]
            timeout = "250ms"
            [hooks.subscribe]
            url = "http://127.0.0.1:9000/subscribe"
            namespaces = ["room", ""]
            cache_ttl = "5s"
            [hooks.rpc]
            methods = { echo = "http://127.0.0.1:9001/echo" }
            "#,
        )
        .unwrap();
        let connect = config.hooks.connect.unwrap();
        assert_eq!(connect.timeout, Some(std::time::Duration::from_millis(250)));
        assert_eq!(config.hooks.breaker.min_calls, 20);

        let refused = |toml: &str, key: &str| {
            let error = checked(toml).unwrap_err();
            assert!(error.contains(key), "{error}");
        };
        refused(
            "[hooks.connect]\nurl = \"https://backend/connect\"",
            "hooks.connect.url",
        );
        refused(
            "[hooks.subscribe]\nurl = \"http://b/s\"\nnamespaces = [\"nope\"]",
            "hooks.subscribe.namespaces",
        );
        refused(
            "[hooks.subscribe]\nurl = \"http://b/s\"",
            "hooks.subscribe.namespaces",
        );
        refused(
            "[hooks.publish]\nurl = \"http://b/p\"\nnamespaces = [\"*\"]\ncache_ttl = \"1s\"",
            "hooks.publish.cache_ttl",
        );
        refused(
            "[hooks.connect]\nurl = \"http://b/c\"\ndoors = [\"echo\"]",
            "hooks.connect.doors",
        );
        refused(
            "[hooks.breaker]\nfailure_ratio = 0.0",
            "hooks.breaker.failure_ratio",
        );
        refused("[hooks.rpc]\ntimeout = \"1s\"", "hooks.rpc.url");
    }
}
