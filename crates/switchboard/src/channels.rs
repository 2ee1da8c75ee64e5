//! Channel names and the rules of their namespaces, resolved once at start.
//!
//! A channel's namespace is the part of its name before the first `:` (`chat:lobby` is in
//! `chat`); a name with no `:` is in the default namespace. Every door and the server API ask
//! here before touching a channel, so one channel has one set of rules whatever the door. A
//! name holding `#` is user-limited: the comma-separated ids after the `#` are the only users
//! who may subscribe. The namespace `chat` exists even when not configured while the plain chat
//! door is open, since that door's rooms are its channels.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{
    Config, MapClientKey, NamespaceConfig, PublishRule, Resolved, SharedPollMode, SubscribeRule,
    SHARED_POLL_DEFAULT_BATCH_SIZE, SHARED_POLL_DEFAULT_MAX_KEYS,
    SHARED_POLL_DEFAULT_REFRESH_INTERVAL,
};

/// Longest channel name, bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// The rules that apply to one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRules {
    /// Who may subscribe.
    pub subscribe: SubscribeRule,
    /// Who may publish from a client.
    pub publish: PublishRule,
    /// Presence kept.
    pub presence: bool,
    /// Join and leave pushed to subscribers.
    pub join_leave: bool,
    /// Publications kept.
    pub history_size: usize,
    /// How long each lives.
    pub history_ttl: Duration,
    /// Subscriptions are recoverable.
    pub recover: bool,
    /// Channels are maps: keyed publications, a state of each key's latest, map
    /// subscriptions only.
    pub map: bool,
    /// How long a map key lives after its last publish (zero: until removed).
    pub map_key_ttl: Duration,
    /// Which key a client's map publish or removal writes.
    pub map_client_key: MapClientKey,
    /// A map-clients presence map: written by the server, read by map-clients subscriptions.
    pub map_clients: bool,
    /// Where this map's subscribers are listed: channel `<prefix><channel>` (a map-clients
    /// map) holds each one's client id while it is subscribed.
    pub map_clients_presence_prefix: Option<Arc<str>>,
    /// Channels are shared polls: shared-poll subscriptions only, items polled from a
    /// backend (`None`: not a shared poll).
    pub shared_poll: Option<SharedPollRules>,
}

/// How a shared-poll namespace's channels are polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedPollRules {
    /// The backend asked for the tracked keys' items.
    pub url: Arc<str>,
    /// How a change is told.
    pub mode: SharedPollMode,
    /// How often the backend is asked.
    pub refresh_interval: Duration,
    /// Keys per backend request.
    pub batch_size: usize,
    /// Keys one connection may track in one channel.
    pub max_keys_per_connection: usize,
}

impl SharedPollRules {
    /// The rules `written` sets, when it makes its channels shared polls.
    fn from_written(written: &NamespaceConfig) -> Option<SharedPollRules> {
        if written.shared_poll != Some(true) {
            return None;
        }
        Some(SharedPollRules {
            url: written
                .shared_poll_url
                .as_deref()
                .unwrap_or_default()
                .into(),
            mode: written.shared_poll_mode.unwrap_or_default(),
            refresh_interval: written
                .shared_poll_refresh_interval
                .unwrap_or(SHARED_POLL_DEFAULT_REFRESH_INTERVAL),
            batch_size: written
                .shared_poll_refresh_batch_size
                .unwrap_or(SHARED_POLL_DEFAULT_BATCH_SIZE),
            max_keys_per_connection: written
                .shared_poll_max_keys_per_connection
                .unwrap_or(SHARED_POLL_DEFAULT_MAX_KEYS),
        })
    }
}

impl ChannelRules {
    /// Whether publications get offsets and are kept.
    pub fn keeps_history(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }
}

/// Why a channel cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The name is empty, too long, or holds whitespace or control characters.
    #[error("bad channel name: {0}")]
    BadName(&'static str),
    /// The namespace is not configured.
    #[error("unknown namespace {0:?}")]
    UnknownNamespace(String),
}

/// Every namespace's resolved rules.
#[derive(Debug, Clone)]
pub struct Namespaces {
    default: ChannelRules,
    named: HashMap<String, ChannelRules>,
}

fn resolve(written: &NamespaceConfig, base: &ChannelRules) -> ChannelRules {
    ChannelRules {
        subscribe: written.subscribe.unwrap_or(base.subscribe),
        publish: written.publish.unwrap_or(base.publish),
        presence: written.presence.unwrap_or(base.presence),
        join_leave: written.join_leave.unwrap_or(base.join_leave),
        history_size: written.history_size.unwrap_or(base.history_size),
        history_ttl: written.history_ttl.unwrap_or(base.history_ttl),
        recover: written.recover.unwrap_or(base.recover),
        map: written.map.unwrap_or(base.map),
        map_key_ttl: written.map_key_ttl.unwrap_or(base.map_key_ttl),
        map_client_key: written.map_client_key.unwrap_or(base.map_client_key),
        map_clients: written.map_clients.unwrap_or(base.map_clients),
        map_clients_presence_prefix: match &written.map_clients_presence_channel_prefix {
            Some(prefix) => (!prefix.is_empty()).then(|| Arc::from(prefix.as_str())),
            None => base.map_clients_presence_prefix.clone(),
        },
        // Not inherited: the default namespace cannot be a shared poll.
        shared_poll: SharedPollRules::from_written(written),
    }
}

impl Namespaces {
    /// Resolves the configuration: unset keys of the default namespace take the closed
    /// defaults (or `--dev`'s open ones); unset keys of a named namespace take the default
    /// namespace's values.
    pub fn from_config(config: &Config, resolved: &Resolved) -> Self {
        let dev = config.server.dev;
        let base = if dev {
            ChannelRules {
                subscribe: SubscribeRule::Anonymous,
                publish: PublishRule::Subscribers,
                presence: true,
                join_leave: true,
                history_size: 100,
                history_ttl: Duration::from_secs(300),
                recover: true,
                map: false,
                map_key_ttl: Duration::ZERO,
                map_client_key: MapClientKey::Sent,
                map_clients: false,
                map_clients_presence_prefix: None,
                shared_poll: None,
            }
        } else {
            ChannelRules {
                subscribe: SubscribeRule::Token,
                publish: PublishRule::None,
                presence: false,
                join_leave: false,
                history_size: 0,
                history_ttl: Duration::ZERO,
                recover: false,
                map: false,
                map_key_ttl: Duration::ZERO,
                map_client_key: MapClientKey::Sent,
                map_clients: false,
                map_clients_presence_prefix: None,
                shared_poll: None,
            }
        };
        let default = resolve(&config.channels.default, &base);
        let mut named: HashMap<String, ChannelRules> = config
            .channels
            .namespaces
            .iter()
            .map(|(name, written)| (name.clone(), resolve(written, &default)))
            .collect();
        if config.doors.chat && !named.contains_key("chat") {
            // The plain chat door's rooms: whoever may open the door may join and talk.
            let mut chat = default.clone();
            chat.subscribe = if resolved.allow_anonymous {
                SubscribeRule::Anonymous
            } else {
                SubscribeRule::Authenticated
            };
            chat.publish = PublishRule::Subscribers;
            named.insert("chat".to_owned(), chat);
        }
        Namespaces { default, named }
    }

    /// The rules of `channel`'s namespace.
    ///
    /// # Errors
    /// [`ChannelError`] when the name is bad or its namespace is not configured.
    pub fn rules(&self, channel: &str) -> Result<&ChannelRules, ChannelError> {
        check_name(channel).map_err(ChannelError::BadName)?;
        match namespace_of(channel) {
            None => Ok(&self.default),
            Some(ns) => self
                .named
                .get(ns)
                .ok_or_else(|| ChannelError::UnknownNamespace(ns.to_owned())),
        }
    }
}

/// A channel name: 1 to 255 bytes, no whitespace or control characters.
pub fn check_name(channel: &str) -> Result<(), &'static str> {
    if channel.is_empty() {
        return Err("empty channel");
    }
    if channel.len() > MAX_CHANNEL_LEN {
        return Err("channel longer than 255 bytes");
    }
    if channel.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("channel may not hold whitespace or control characters");
    }
    Ok(())
}

/// The namespace of a channel, if it names one.
pub fn namespace_of(channel: &str) -> Option<&str> {
    let head = channel.split('#').next().unwrap_or(channel);
    head.split_once(':').map(|(ns, _)| ns)
}

/// For a user-limited channel (`name#42,43`), whether `user` is one of its users; `None` for
/// any other channel.
pub fn user_limited(channel: &str, user: &str) -> Option<bool> {
    let (_, users) = channel.split_once('#')?;
    Some(!user.is_empty() && users.split(',').any(|allowed| allowed == user))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespaces(toml: &str, dev: bool) -> Namespaces {
        let mut config = Config::from_toml(toml).unwrap();
        config.server.dev = dev;
        Namespaces::from_config(&config, &config.resolve())
    }

    #[test]
    fn the_namespace_is_the_part_before_the_first_colon() {
        assert_eq!(namespace_of("chat:lobby"), Some("chat"));
        assert_eq!(namespace_of("news"), None);
        assert_eq!(namespace_of("a:b:c"), Some("a"));
        assert_eq!(namespace_of("#42"), None);
        assert_eq!(namespace_of("dm:x#1,2"), Some("dm"));
    }

    #[test]
    fn user_limited_channels_list_their_users() {
        assert_eq!(user_limited("#42", "42"), Some(true));
        assert_eq!(user_limited("dialog#42,43", "43"), Some(true));
        assert_eq!(user_limited("dialog#42,43", "4"), Some(false));
        assert_eq!(user_limited("#42", ""), Some(false));
        assert_eq!(user_limited("news", "42"), None);
    }

    #[test]
    fn defaults_are_closed_and_dev_opens_them() {
        let closed = namespaces("", false);
        let rules = closed.rules("news").unwrap();
        assert_eq!(rules.subscribe, SubscribeRule::Token);
        assert_eq!(rules.publish, PublishRule::None);
        assert!(!rules.keeps_history() && !rules.presence && !rules.recover);
        let open = namespaces("", true);
        let rules = open.rules("news").unwrap();
        assert_eq!(rules.subscribe, SubscribeRule::Anonymous);
        assert_eq!(rules.history_size, 100);
        assert_eq!(rules.history_ttl, Duration::from_secs(300));
        assert!(rules.presence && rules.join_leave && rules.recover);
    }

    #[test]
    fn the_rules_applied_are_the_rules_the_configuration_log_shows() {
        // `Config::with_resolved` (the start-up log) resolves the same rules as this module.
        let text = "[channels]\npresence = true\n[channels.namespaces.feed]\nhistory_size = 10\n";
        for dev in [false, true] {
            let mut config = Config::from_toml(text).unwrap();
            config.server.dev = dev;
            let shown = config.with_resolved().channels;
            let applied = Namespaces::from_config(&config, &config.resolve());
            for (channel, written) in [
                ("news", &shown.default),
                ("feed:x", &shown.namespaces["feed"]),
            ] {
                let rules = applied.rules(channel).unwrap();
                let as_shown = ChannelRules {
                    subscribe: written.subscribe.unwrap(),
                    publish: written.publish.unwrap(),
                    presence: written.presence.unwrap(),
                    join_leave: written.join_leave.unwrap(),
                    history_size: written.history_size.unwrap(),
                    history_ttl: written.history_ttl.unwrap(),
                    recover: written.recover.unwrap(),
                    map: written.map.unwrap(),
                    map_key_ttl: written.map_key_ttl.unwrap(),
                    map_client_key: written.map_client_key.unwrap(),
                    map_clients: written.map_clients.unwrap(),
                    map_clients_presence_prefix: written
                        .map_clients_presence_channel_prefix
                        .clone()
                        .filter(|prefix| !prefix.is_empty())
                        .map(Arc::from),
                    shared_poll: None,
                };
                assert_eq!(rules, &as_shown, "dev = {dev}, {channel}");
            }
        }
    }

    #[test]
    fn named_namespaces_inherit_unset_keys_from_the_default_one() {
        let ns = namespaces(
            "[channels]\npresence = true\n[channels.namespaces.feed]\nhistory_size = 10\nhistory_ttl = \"1m\"\n",
            false,
        );
        let feed = ns.rules("feed:x").unwrap();
        assert!(feed.presence && feed.keeps_history());
        assert_eq!(feed.subscribe, SubscribeRule::Token);
    }

    #[test]
    fn unknown_namespaces_and_bad_names_are_errors() {
        let ns = namespaces("", false);
        assert_eq!(
            ns.rules("nope:x"),
            Err(ChannelError::UnknownNamespace("nope".into()))
        );
        assert!(matches!(ns.rules("a b"), Err(ChannelError::BadName(_))));
        assert!(matches!(ns.rules(""), Err(ChannelError::BadName(_))));
    }

    #[test]
    fn the_chat_door_namespace_exists_unless_configured() {
        let ns = namespaces("", false);
        let chat = ns.rules("chat:lobby").unwrap();
        assert_eq!(chat.subscribe, SubscribeRule::Authenticated);
        assert_eq!(chat.publish, PublishRule::Subscribers);
        let ns = namespaces("[doors]\nchat = false\n", false);
        assert!(ns.rules("chat:lobby").is_err());
    }
}
