//! Shared-poll settings as written: the top-level `[shared_poll]` table (the HMAC secret that
//! signs track requests) and the mode a shared-poll namespace compares items by. The
//! namespace keys themselves (`shared_poll = true`, `shared_poll_url`, ...) live with the
//! other namespace keys in `config`; their checks are here. The polling itself lives in
//! `crate::poll`.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError, NamespaceConfig, Secret};

/// `[shared_poll]`: what every shared-poll namespace shares.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedPollConfig {
    /// The HMAC-SHA256 secret the application's backend signs track requests with (no
    /// default; needed when a namespace sets `shared_poll = true`).
    pub hmac_secret: Secret,
}

/// How a shared-poll namespace tells that an item changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharedPollMode {
    /// The backend gives each item a version that grows with each change; the server
    /// forwards an item whose version is above the one a client holds.
    Versioned,
    /// The backend gives no versions; the server compares each item's data with what it
    /// last saw and numbers the changes itself (valid within the epoch it names).
    #[default]
    Versionless,
}

/// The shortest `shared_poll_refresh_interval` accepted: polling faster would turn the
/// gateway into a load generator against the backend.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(10);
/// The default `shared_poll_refresh_interval`.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// The default `shared_poll_refresh_batch_size`.
pub const DEFAULT_BATCH_SIZE: usize = 100;
/// The default `shared_poll_max_keys_per_connection`.
pub const DEFAULT_MAX_KEYS: usize = 1000;

/// Checks the shared-poll keys of one resolved namespace (`prefix` names it in errors).
///
/// # Errors
/// [`ConfigError::Invalid`] naming the key: a `shared_poll_*` key without
/// `shared_poll = true`, a shared poll that is also a map or has no URL, a URL that is not
/// `http://`, a zero batch size or key limit, an interval under 10ms, or no
/// `[shared_poll] hmac_secret`.
pub(super) fn validate_namespace(
    prefix: &str,
    which: &str,
    rules: &NamespaceConfig,
    shared: &SharedPollConfig,
) -> Result<(), ConfigError> {
    let on = rules.shared_poll == Some(true);
    let set = [
        ("shared_poll_url", rules.shared_poll_url.is_some()),
        ("shared_poll_mode", rules.shared_poll_mode.is_some()),
        (
            "shared_poll_refresh_interval",
            rules.shared_poll_refresh_interval.is_some(),
        ),
        (
            "shared_poll_refresh_batch_size",
            rules.shared_poll_refresh_batch_size.is_some(),
        ),
        (
            "shared_poll_max_keys_per_connection",
            rules.shared_poll_max_keys_per_connection.is_some(),
        ),
    ];
    if !on {
        if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
            return Err(invalid(
                &format!("{prefix}.{key}"),
                format!("{key} in {which} needs shared_poll = true there"),
            ));
        }
        return Ok(());
    }
    if rules.map == Some(true) {
        return Err(invalid(
            &format!("{prefix}.shared_poll"),
            format!("{which} cannot be both a map and a shared poll: choose one"),
        ));
    }
    let url = rules.shared_poll_url.as_deref().unwrap_or("");
    if url.is_empty() {
        return Err(invalid(
            &format!("{prefix}.shared_poll_url"),
            format!(
                "shared_poll = true in {which} needs shared_poll_url, the backend the \
                 server polls (e.g. \"http://127.0.0.1:3000/poll\")"
            ),
        ));
    }
    let http_url = match url.parse::<http::Uri>() {
        Ok(uri) => uri.scheme_str() == Some("http") && uri.host().is_some(),
        Err(_) => false,
    };
    if !http_url {
        return Err(invalid(
            &format!("{prefix}.shared_poll_url"),
            format!("{url:?} is not an http:// URL with a host"),
        ));
    }
    if rules
        .shared_poll_refresh_interval
        .is_some_and(|interval| interval < MIN_REFRESH_INTERVAL)
    {
        return Err(invalid(
            &format!("{prefix}.shared_poll_refresh_interval"),
            "must be at least 10ms".to_owned(),
        ));
    }
    if rules.shared_poll_refresh_batch_size == Some(0) {
        return Err(invalid(
            &format!("{prefix}.shared_poll_refresh_batch_size"),
            "must be at least 1".to_owned(),
        ));
    }
    if rules.shared_poll_max_keys_per_connection == Some(0) {
        return Err(invalid(
            &format!("{prefix}.shared_poll_max_keys_per_connection"),
            "must be at least 1".to_owned(),
        ));
    }
    if shared.hmac_secret.is_empty() {
        return Err(invalid(
            "shared_poll.hmac_secret",
            format!(
                "shared_poll = true in {which} needs [shared_poll] hmac_secret, the secret \
                 track signatures are checked with"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    const GOOD: &str = "[shared_poll]\nhmac_secret = \"s\"\n[channels.namespaces.poll]\n\
                        shared_poll = true\nshared_poll_url = \"http://127.0.0.1:3000/poll\"\n";

    fn refusal(text: &str) -> String {
        Config::from_toml(text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_shared_poll_namespace_with_a_url_and_a_secret_starts_with_the_defaults() {
        let config = Config::from_toml(GOOD).unwrap();
        config.validate().unwrap();
        let namespaces = crate::channels::Namespaces::from_config(&config, &config.resolve());
        let rules = namespaces
            .rules("poll:x")
            .unwrap()
            .shared_poll
            .clone()
            .unwrap();
        assert_eq!(&*rules.url, "http://127.0.0.1:3000/poll");
        assert_eq!(rules.mode, super::SharedPollMode::Versionless);
        assert_eq!(rules.refresh_interval, super::DEFAULT_REFRESH_INTERVAL);
        assert_eq!(
            (rules.batch_size, rules.max_keys_per_connection),
            (super::DEFAULT_BATCH_SIZE, super::DEFAULT_MAX_KEYS)
        );
        assert!(namespaces.rules("x").unwrap().shared_poll.is_none());
    }

    #[test]
    fn bad_shared_poll_settings_are_refused_naming_the_key() {
        for (text, key, says) in [
            (
                "[channels.namespaces.poll]\nshared_poll_mode = \"versioned\"\n".to_owned(),
                "channels.namespaces.poll.shared_poll_mode",
                "needs shared_poll = true",
            ),
            (
                "[shared_poll]\nhmac_secret = \"s\"\n[channels.namespaces.poll]\nshared_poll = true\n"
                    .to_owned(),
                "channels.namespaces.poll.shared_poll_url",
                "needs shared_poll_url",
            ),
            (
                GOOD.replace("http://127.0.0.1:3000/poll", "https://example.com/poll"),
                "channels.namespaces.poll.shared_poll_url",
                "not an http:// URL",
            ),
            (
                GOOD.replace("hmac_secret = \"s\"", "hmac_secret = \"\""),
                "shared_poll.hmac_secret",
                "needs [shared_poll] hmac_secret",
            ),
            (
                format!("{GOOD}shared_poll_refresh_interval = \"1ms\"\n"),
                "shared_poll_refresh_interval",
                "at least 10ms",
            ),
            (
                format!("{GOOD}shared_poll_refresh_batch_size = 0\n"),
                "shared_poll_refresh_batch_size",
                "at least 1",
            ),
            (
                format!("{GOOD}shared_poll_max_keys_per_connection = 0\n"),
                "shared_poll_max_keys_per_connection",
                "at least 1",
            ),
            (
                format!("{GOOD}map = true\nhistory_size = 10\nhistory_ttl = \"1m\"\n"),
                "channels.namespaces.poll.shared_poll",
                "both a map and a shared poll",
            ),
        ] {
            let error = refusal(&text);
            assert!(error.contains(key) && error.contains(says), "{text}: {error}");
        }
        let mode = Config::from_toml(&format!("{GOOD}shared_poll_mode = \"sometimes\"\n"));
        assert!(mode.is_err());
        // The default namespace cannot be a shared poll.
        assert!(Config::from_toml("[channels]\nshared_poll = true\n").is_err());
    }
}
