//! What the engine is told: the Redis servers (shards, each plain or behind Sentinel), the key
//! prefix and the time bounds, read from [`switchboard::config::RedisConfig`] and checked once,
//! at construction, so a bad URL is a startup error and never a runtime surprise.
//!
//! URL forms: `redis://[user:password@]host:port[/db]` (also `rediss://`); several of them
//! separated by commas are several shards; `redis+sentinel://[:password@]host:port,host:port/
//! mastername[/db]` is one shard whose master the Sentinels name (re-asked on every reconnect);
//! `redis+cluster://[user:password@]host:port,host:port` is a Redis Cluster reached through
//! those seed nodes (the cluster itself tells where each slot lives; it has only db 0).

use std::time::Duration;

use switchboard::config::RedisConfig;

/// Why the Redis settings are unusable. URLs are never echoed (they may hold a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// No URL at all.
    #[error("redis: the url is empty")]
    EmptyUrl,
    /// A shard's URL does not parse.
    #[error("redis: shard {shard}'s url is invalid: {reason}")]
    InvalidUrl {
        /// The shard's place in the comma list (from 0).
        shard: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The prefix would break the keys' hash tags or the pub/sub channel names.
    #[error("redis: the prefix must be non-empty and hold no '{{', '}}' or ':'")]
    InvalidPrefix,
    /// Zero pub/sub connections per shard.
    #[error("redis: pubsub_connections must be at least 1")]
    NoPubsubConnections,
}

/// Where one shard lives.
#[derive(Clone, PartialEq, Eq)]
pub enum ShardAddress {
    /// One server, by URL.
    Direct(String),
    /// A master named by Sentinels.
    Sentinel {
        /// The Sentinels' `redis://host:port` URLs.
        sentinels: Vec<String>,
        /// The master's name.
        master: String,
        /// The master's password, if any.
        password: Option<String>,
        /// The database number.
        db: i64,
    },
    /// A Redis Cluster: its seed nodes' `redis://` URLs (any one that answers is enough).
    Cluster {
        /// The seed nodes.
        seeds: Vec<String>,
    },
}

impl std::fmt::Debug for ShardAddress {
    // Masked: the address may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardAddress::Direct(_) => f.write_str("Direct(********)"),
            ShardAddress::Sentinel {
                sentinels, master, ..
            } => write!(f, "Sentinel({} sentinels, {master:?})", sentinels.len()),
            ShardAddress::Cluster { seeds } => write!(f, "Cluster({} seeds)", seeds.len()),
        }
    }
}

/// The engine's settings.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The shards; channels are spread over them by jump consistent hash. A cluster URL gives
    /// one [`ShardAddress::Cluster`], which spreads channels over its masters by slot.
    pub shards: Vec<ShardAddress>,
    /// Prefix of every key and pub/sub channel.
    pub prefix: String,
    /// Pub/sub connections per shard.
    pub pubsub_connections: usize,
    /// The bound on every call (connecting included).
    pub call_timeout: Duration,
    /// The bound on opening (and resubscribing) a pub/sub connection.
    pub connect_timeout: Duration,
    /// How often each pub/sub connection is probed and each shard pinged.
    pub probe_interval: Duration,
    /// How long a probe may take to come back before its connection is restarted.
    pub probe_timeout: Duration,
    /// The first reconnect delay's cap (full jitter: a random delay up to the cap).
    pub backoff_min: Duration,
    /// The largest reconnect delay's cap.
    pub backoff_max: Duration,
}

impl RedisSettings {
    /// Settings for `url` (see the module doc) with `prefix` and default time bounds.
    ///
    /// # Errors
    /// [`SettingsError`] when the URL or the prefix is unusable.
    pub fn from_url(url: &str, prefix: &str) -> Result<Self, SettingsError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(SettingsError::EmptyUrl);
        }
        if prefix.is_empty() || prefix.contains(['{', '}', ':']) {
            return Err(SettingsError::InvalidPrefix);
        }
        let shards = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            vec![parse_sentinel(rest)?]
        } else if let Some(rest) = url.strip_prefix("redis+cluster://") {
            vec![parse_cluster(rest)?]
        } else {
            url.split(',')
                .enumerate()
                .map(|(shard, one)| parse_direct(shard, one.trim()))
                .collect::<Result<_, _>>()?
        };
        Ok(RedisSettings {
            shards,
            prefix: prefix.to_owned(),
            pubsub_connections: 4,
            call_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            probe_interval: Duration::from_secs(2),
            probe_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
        })
    }

    /// Settings from the `[redis]` section.
    ///
    /// # Errors
    /// [`SettingsError`] when a value is unusable.
    pub fn from_config(config: &RedisConfig) -> Result<Self, SettingsError> {
        if config.pubsub_connections == 0 {
            return Err(SettingsError::NoPubsubConnections);
        }
        let mut settings = RedisSettings::from_url(&config.url.0, &config.prefix)?;
        settings.pubsub_connections = config.pubsub_connections;
        Ok(settings)
    }
}

fn parse_direct(shard: usize, url: &str) -> Result<ShardAddress, SettingsError> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(SettingsError::InvalidUrl {
            shard,
            reason: "use redis://, rediss:// or redis+sentinel://",
        });
    }
    redis::Client::open(url).map_err(|_| SettingsError::InvalidUrl {
        shard,
        reason: "not a Redis URL",
    })?;
    Ok(ShardAddress::Direct(url.to_owned()))
}

fn parse_sentinel(rest: &str) -> Result<ShardAddress, SettingsError> {
    let invalid = |reason| SettingsError::InvalidUrl { shard: 0, reason };
    let (password, rest) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => {
            let password = auth.rsplit_once(':').map_or(auth, |(_, p)| p);
            (Some(password.to_owned()).filter(|p| !p.is_empty()), hosts)
        }
        None => (None, rest),
    };
    let (hosts, path) = rest
        .split_once('/')
        .ok_or(invalid("a Sentinel URL needs /mastername"))?;
    let mut path = path.split('/');
    let master = path
        .next()
        .filter(|m| !m.is_empty())
        .ok_or(invalid("a Sentinel URL needs /mastername"))?;
    let db = match path.next() {
        None | Some("") => 0,
        Some(db) => db.parse().map_err(|_| invalid("the db is not a number"))?,
    };
    let sentinels: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{h}"))
        .collect();
    if sentinels.is_empty() {
        return Err(invalid("a Sentinel URL needs at least one host:port"));
    }
    for sentinel in &sentinels {
        redis::Client::open(sentinel.as_str())
            .map_err(|_| invalid("a Sentinel host:port is invalid"))?;
    }
    Ok(ShardAddress::Sentinel {
        sentinels,
        master: master.to_owned(),
        password,
        db,
    })
}

fn parse_cluster(rest: &str) -> Result<ShardAddress, SettingsError> {
    let invalid = |reason| SettingsError::InvalidUrl { shard: 0, reason };
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (Some(auth), hosts),
        None => (None, rest),
    };
    let hosts = match hosts.split_once('/') {
        None => hosts,
        Some((hosts, "" | "0")) => hosts,
        Some(_) => return Err(invalid("a cluster has only db 0; give no other path")),
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| match auth {
            Some(auth) => format!("redis://{auth}@{h}"),
            None => format!("redis://{h}"),
        })
        .collect();
    if seeds.is_empty() {
        return Err(invalid("a cluster URL needs at least one host:port"));
    }
    for seed in &seeds {
        redis::Client::open(seed.as_str())
            .map_err(|_| invalid("a cluster seed host:port is invalid"))?;
    }
    Ok(ShardAddress::Cluster { seeds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_list_is_several_shards() {
        let settings =
            RedisSettings::from_url("redis://127.0.0.1:7000/0, redis://127.0.0.1:7001/2", "sb")
                .expect("valid");
        assert_eq!(
            settings.shards,
            [
                ShardAddress::Direct("redis://127.0.0.1:7000/0".to_owned()),
                ShardAddress::Direct("redis://127.0.0.1:7001/2".to_owned())
            ]
        );
    }

    #[test]
    fn a_sentinel_url_names_its_sentinels_master_and_db() {
        let settings = RedisSettings::from_url(
            "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/main/3",
            "sb",
        )
        .expect("valid");
        assert_eq!(
            settings.shards,
            [ShardAddress::Sentinel {
                sentinels: vec![
                    "redis://10.0.0.1:26379".to_owned(),
                    "redis://10.0.0.2:26379".to_owned()
                ],
                master: "main".to_owned(),
                password: Some("pw".to_owned()),
                db: 3,
            }]
        );
    }

    #[test]
    fn a_cluster_url_names_its_seeds_with_their_credentials() {
        let settings =
            RedisSettings::from_url("redis+cluster://u:pw@10.0.0.1:7000, 10.0.0.2:7001/", "sb")
                .expect("valid");
        assert_eq!(
            settings.shards,
            [ShardAddress::Cluster {
                seeds: vec![
                    "redis://u:pw@10.0.0.1:7000".to_owned(),
                    "redis://u:pw@10.0.0.2:7001".to_owned()
                ],
            }]
        );
        assert_eq!(format!("{:?}", settings.shards[0]), "Cluster(2 seeds)");
        for bad in [
            "redis+cluster://",
            "redis+cluster://h:1/3",
            "redis+cluster://,",
            "redis+cluster://h:notaport",
        ] {
            assert!(
                matches!(
                    RedisSettings::from_url(bad, "sb"),
                    Err(SettingsError::InvalidUrl { shard: 0, .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_values_are_errors_that_do_not_echo_the_url() {
        assert_eq!(
            RedisSettings::from_url(" ", "sb").err(),
            Some(SettingsError::EmptyUrl)
        );
        let err = RedisSettings::from_url("http://secret@h:1", "sb").err();
        assert!(matches!(
            err,
            Some(SettingsError::InvalidUrl { shard: 0, .. })
        ));
        assert!(!err
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("secret"));
        assert_eq!(
            RedisSettings::from_url("redis://h:1", "a{b").err(),
            Some(SettingsError::InvalidPrefix)
        );
        assert!(RedisSettings::from_url("redis+sentinel://h:1", "sb").is_err());
        let config = RedisConfig {
            pubsub_connections: 0,
            ..RedisConfig::default()
        };
        assert_eq!(
            RedisSettings::from_config(&config).err(),
            Some(SettingsError::NoPubsubConnections)
        );
    }
}
