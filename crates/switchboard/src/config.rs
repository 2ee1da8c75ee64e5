//! Typed, strict configuration: defaults, a TOML file, environment variables and flags, in
//! that order of precedence (flags win), validated once at start.
//!
//! Unknown keys and values that do not parse stop the start with an error naming the key.
//! Secrets are wrapped in [`Secret`], whose `Debug` never shows the value, so the resolved
//! configuration can be logged whole. `--dev` changes only the settings whose type is an
//! `Option` here (resolved by [`Config::resolve`]); everything else means the same in both
//! modes. docs/configuration.md lists every key; [`GENERATED_CONFIG`] is the commented file
//! `switchboard genconfig` writes, and a test checks it parses to the defaults.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

mod hooks;
mod shared_poll;
pub use hooks::{BreakerConfig, HookConfig, HooksConfig};
pub use shared_poll::{
    SharedPollConfig, SharedPollMode, DEFAULT_BATCH_SIZE as SHARED_POLL_DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_KEYS as SHARED_POLL_DEFAULT_MAX_KEYS,
    DEFAULT_REFRESH_INTERVAL as SHARED_POLL_DEFAULT_REFRESH_INTERVAL,
};

/// A string that is never printed (tokens' secrets, API keys).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"********\"")
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl Secret {
    /// Whether no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A configuration error: which key, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or holds an unknown key or a value of the wrong type.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (names the key).
        message: String,
    },
    /// A `SWITCHBOARD_*` environment variable that no setting reads (a misspelling would
    /// otherwise be ignored silently while the same mistake in the file stops the start).
    #[error(
        "unknown environment variable {name}{}; docs/configuration.md lists every SWITCHBOARD_* variable",
        suggestion.map(|known| format!(" (did you mean {known}?)")).unwrap_or_default()
    )]
    UnknownVariable {
        /// The variable.
        name: String,
        /// The known variable closest to it, if one is close.
        suggestion: Option<&'static str>,
    },
    /// A value is out of its allowed range or inconsistent with another.
    #[error("invalid value for {key}: {message}")]
    Invalid {
        /// The key (`section.name`) or environment variable.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines for a terminal.
    Pretty,
}

/// Token signature algorithm; exactly one is accepted, chosen here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TokenAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256 and a public key.
    RS256,
    /// ECDSA P-256 with SHA-256 and a public key.
    ES256,
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listener, timeouts and node-wide connection limits.
    pub server: ServerConfig,
    /// How tokens are verified.
    pub token: TokenConfig,
    /// Which browser origins may connect.
    pub origins: OriginsConfig,
    /// The server HTTP API.
    pub api: ApiConfig,
    /// Per-connection limits.
    pub limits: LimitsConfig,
    /// Which plain doors are open.
    pub doors: DoorsConfig,
    /// The client-protocol door `/connection/websocket`.
    pub client: ClientConfig,
    /// Channel rules: the default namespace, and named namespaces under `namespaces`.
    pub channels: ChannelsConfig,
    /// Logging.
    pub log: LogConfig,
    /// The engine that keeps streams and presence and joins nodes: `memory` (one node, the
    /// default), `redis` or `nats`.
    pub broker: BrokerKind,
    /// This node within a cluster.
    pub node: NodeConfig,
    /// The Redis engine (`broker = "redis"`).
    pub redis: RedisConfig,
    /// The NATS engine (`broker = "nats"`).
    pub nats: NatsConfig,
    /// Publications read from a log a backend writes to.
    pub ingest: IngestConfig,
    /// The admin web UI at `/admin` (off by default).
    pub admin: AdminConfig,
    /// Backend hooks: connect, refresh, subscribe, publish, sub_refresh, rpc (docs/hooks.md).
    pub hooks: HooksConfig,
    /// OpenTelemetry traces exported over OTLP/HTTP (off by default).
    pub traces: TracesConfig,
    /// The Pusher protocol door `/app/{key}` and its HTTP API `/apps/{id}/…`.
    pub pusher: PusherConfig,
    /// What shared-poll namespaces share (the track signatures' secret).
    pub shared_poll: SharedPollConfig,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin UI at `/admin` (off: `/admin` is 404, as if it did not exist).
    pub enabled: bool,
    /// What the login form asks for.
    pub password: Secret,
    /// Also accepted by the login form, and as `Authorization: Bearer TOKEN` on the admin's
    /// JSON endpoints (for scripts; no cookie).
    pub token: Secret,
    /// How long a login lasts; the session cookie and the server's record both end then.
    #[serde(deserialize_with = "duration")]
    pub session_ttl: Duration,
    /// Login attempts per minute from one client IP (IPv6: per `server.ipv6_prefix`
    /// network), right or wrong; more are answered 429 until the minute is over.
    pub login_attempts_per_minute: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: false,
            password: Secret::default(),
            token: Secret::default(),
            session_ttl: Duration::from_secs(8 * 3600),
            login_attempts_per_minute: 10,
        }
    }
}

/// `[pusher]`: the Pusher protocol door, open when at least one app is configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PusherConfig {
    /// The `activity_timeout` told to clients in `pusher:connection_established` (seconds of
    /// silence after which a client pings).
    #[serde(deserialize_with = "duration")]
    pub activity_timeout: Duration,
    /// How far an HTTP API request's `auth_timestamp` may be from this server's clock.
    #[serde(deserialize_with = "duration")]
    pub timestamp_window: Duration,
    /// Largest HTTP API request body.
    pub max_body_bytes: usize,
    /// How long webhook events are collected before one request carries them all.
    #[serde(deserialize_with = "duration")]
    pub webhook_batch_window: Duration,
    /// Most events in one webhook request.
    pub webhook_max_batch: usize,
    /// Events waiting for one webhook URL; past it new events are dropped and counted.
    pub webhook_queue: usize,
    /// How long one webhook request may take.
    #[serde(deserialize_with = "duration")]
    pub webhook_timeout: Duration,
    /// Tries of one webhook request (the first included) before its events count as failed.
    pub webhook_attempts: u32,
    /// The apps, each isolated from the others (`[[pusher.apps]]`).
    pub apps: Vec<PusherAppConfig>,
}

impl Default for PusherConfig {
    fn default() -> Self {
        PusherConfig {
            activity_timeout: Duration::from_secs(120),
            timestamp_window: Duration::from_secs(600),
            max_body_bytes: 256 * 1024,
            webhook_batch_window: Duration::from_millis(250),
            webhook_max_batch: 100,
            webhook_queue: 10_000,
            webhook_timeout: Duration::from_secs(5),
            webhook_attempts: 5,
            apps: Vec::new(),
        }
    }
}

/// `[[pusher.apps]]`: one Pusher app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PusherAppConfig {
    /// The app id (the HTTP API's `/apps/{id}`, and the hub namespace of its channels).
    pub id: String,
    /// The public key clients connect with (`/app/{key}`).
    pub key: String,
    /// The secret that signs channel authorizations and API requests.
    pub secret: String,
    /// Whether clients may send `client-*` events on private and presence channels.
    pub client_events: bool,
    /// Browser origins this app's clients may connect from (exact `scheme://host[:port]`);
    /// empty: only `origins.allowed` applies. Checked after it, never instead of it.
    pub allowed_origins: Vec<String>,
    /// This app's connections on this node; past it a connection gets `pusher:error` 4004.
    /// 0: only the node's limits.
    pub max_connections: usize,
    /// Client events one connection may send per second (`pusher:error` 4301 past it); 0: no
    /// bound beyond `limits.client_message_rate`.
    pub max_client_events_per_second: u32,
    /// Largest event `data` (API events and client events), in bytes.
    pub max_event_bytes: usize,
    /// Most channels one API event may name.
    pub max_channels_per_event: usize,
    /// Where this app's webhooks go (`[[pusher.apps.webhooks]]`).
    pub webhooks: Vec<PusherWebhookConfig>,
}

impl Default for PusherAppConfig {
    fn default() -> Self {
        PusherAppConfig {
            id: String::new(),
            key: String::new(),
            secret: String::new(),
            client_events: false,
            allowed_origins: Vec::new(),
            max_connections: 0,
            max_client_events_per_second: 10,
            max_event_bytes: 10 * 1024,
            max_channels_per_event: 100,
            webhooks: Vec::new(),
        }
    }
}

/// `[[pusher.apps.webhooks]]`: one URL that receives some of an app's webhook events.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PusherWebhookConfig {
    /// An `http://` URL (POSTed to).
    pub url: String,
    /// The events it receives (`channel_occupied`, `channel_vacated`, `member_added`,
    /// `member_removed`, `client_event`); empty: all of them.
    pub events: Vec<String>,
}

/// The webhook events Pusher defines.
pub const PUSHER_WEBHOOK_EVENTS: [&str; 5] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
];

/// Where ingested publications come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngestSource {
    /// No ingestion: publications come from the API and clients only.
    #[default]
    None,
    /// A Redis Stream on the `[redis]` server (its first one, when sharded).
    Redis,
    /// A JetStream stream on the `[nats]` servers.
    Nats,
}

impl std::str::FromStr for IngestSource {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "none" => Ok(IngestSource::None),
            "redis" => Ok(IngestSource::Redis),
            "nats" => Ok(IngestSource::Nats),
            other => Err(format!("{other:?}: use none, redis or nats")),
        }
    }
}

/// `[ingest]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// `none`, `redis` (a Redis Stream) or `nats` (a JetStream stream).
    pub source: IngestSource,
    /// The Redis Stream's key, or the JetStream stream's name.
    pub stream: String,
    /// NATS: the subject the stream keeps (the backend publishes there).
    pub subject: String,
    /// The consumer group (Redis) or durable consumer (NATS) every node reads through.
    pub group: String,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            source: IngestSource::None,
            stream: "switchboard-ingest".to_owned(),
            subject: "switchboard.ingest".to_owned(),
            group: "switchboard".to_owned(),
        }
    }
}

/// Which engine joins the nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// In this process: one node, no other service.
    #[default]
    Memory,
    /// Redis: pub/sub between nodes, streams and presence in Redis.
    Redis,
    /// NATS: subjects between nodes, streams and presence in JetStream.
    Nats,
}

impl std::str::FromStr for BrokerKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "memory" => Ok(BrokerKind::Memory),
            "redis" => Ok(BrokerKind::Redis),
            "nats" => Ok(BrokerKind::Nats),
            other => Err(format!("{other:?}: use memory, redis or nats")),
        }
    }
}

/// `[node]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's name in `info` and logs (default: the host name and a random suffix).
    pub name: Option<String>,
    /// How long a client stays in presence after its node stops refreshing it (a node
    /// refreshes its clients every third of this).
    #[serde(deserialize_with = "duration")]
    pub presence_ttl: Duration,
    /// How often each node announces itself to the others (`info` drops a node silent for
    /// three times this).
    #[serde(deserialize_with = "duration")]
    pub announce_interval: Duration,
    /// How often the node compares each channel's stream top with what it delivered (a
    /// publication lost between broker and node makes its subscribers recover, close 3010).
    #[serde(deserialize_with = "duration")]
    pub position_check_interval: Duration,
    /// The longest a broker call may take before it fails with a temporary error.
    #[serde(deserialize_with = "duration")]
    pub broker_timeout: Duration,
    /// How long a node may hold a publication from the broker to fan it out together with
    /// the ones that follow (0: each as it comes). Trades latency for CPU: subscribers then
    /// get several publications per write.
    #[serde(deserialize_with = "duration")]
    pub delivery_batch_delay: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: None,
            presence_ttl: Duration::from_secs(30),
            announce_interval: Duration::from_secs(5),
            position_check_interval: Duration::from_secs(5),
            broker_timeout: Duration::from_secs(3),
            delivery_batch_delay: Duration::ZERO,
        }
    }
}

/// `[redis]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db`; a comma list shards channels over several servers;
    /// `redis+sentinel://host:port,host:port/mastername` for Sentinel. Masked in logs (it
    /// may hold a password).
    pub url: Secret,
    /// Prefix of every key and pub/sub channel.
    pub prefix: String,
    /// Pub/sub connections per server (channels are spread over them by hash).
    pub pubsub_connections: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: Secret("redis://127.0.0.1:6379".to_owned()),
            prefix: "switchboard".to_owned(),
            pubsub_connections: 4,
        }
    }
}

/// `[nats]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// `nats://host:port`, or a comma list of servers.
    pub url: Secret,
    /// Prefix of every subject, stream and bucket.
    pub prefix: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: Secret("nats://127.0.0.1:4222".to_owned()),
            prefix: "switchboard".to_owned(),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on: an IP address and a port (host names are not resolved).
    #[serde(deserialize_with = "listen_addr")]
    pub listen: SocketAddr,
    /// Development mode: anonymous plain doors, echo on, localhost origins, pretty logs.
    pub dev: bool,
    /// Lets `dev` run on an address other than loopback. Development mode opens the API
    /// and signs tokens with a secret anyone can read in the source: never on a network.
    pub dev_insecure_on_network: bool,
    /// Time a client has to complete the HTTP upgrade request.
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// Server ping interval; a connection silent for two intervals is closed.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    /// How long shutdown waits for connections to close before exiting.
    #[serde(deserialize_with = "duration")]
    pub shutdown_drain: Duration,
    /// Most connections this node holds (0 = no limit).
    pub max_connections: usize,
    /// Most connections one client IP holds (0 = no limit).
    pub max_connections_per_ip: usize,
    /// Most HTTP connections that are not WebSockets (yet) on this node: waiting for or
    /// sending a request, or idle between requests (0 = no limit). At the bound the oldest
    /// one between requests is closed to make room.
    pub max_pending_handshakes: usize,
    /// Most such connections from one client IP (0 = no limit); more are closed at once.
    /// Trusted proxies are not held to it.
    pub max_pending_handshakes_per_ip: usize,
    /// Largest request line and headers, bytes; more is answered 431.
    pub max_header_bytes: usize,
    /// Addresses or networks (`10.0.0.0/8`) of proxies whose `client_ip_header` names the
    /// client, for per-IP limits and logs. From any other peer the header is ignored.
    pub trusted_proxies: Vec<String>,
    /// The header trusted proxies set: `x-forwarded-for` or `forwarded` (RFC 7239).
    pub client_ip_header: crate::peer::ClientIpHeader,
    /// IPv6 clients are counted per network of this prefix length for per-IP limits (a host
    /// usually holds a whole /64); IPv4 clients per address.
    pub ipv6_prefix: u8,
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it.
    pub permessage_deflate: bool,
}

/// `[token]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// The only algorithm accepted.
    pub algorithm: TokenAlgorithm,
    /// HS256 secret.
    pub hmac_secret: Secret,
    /// PEM file with the RS256/ES256 public key.
    pub public_key_file: Option<PathBuf>,
    /// Let plain-door clients connect with no token (default: off; on with `--dev`).
    pub allow_anonymous: Option<bool>,
    /// When set, tokens must carry this `aud` (or hold it in their `aud` list).
    pub audience: Option<String>,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
}

/// `[origins]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginsConfig {
    /// Allowed `Origin` values, e.g. `https://app.example.com` or `https://*.example.com`.
    /// `*` alone allows every origin. With `--dev` any localhost origin is allowed as well.
    pub allowed: Vec<String>,
}

/// `[api]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The API key; with none set the API refuses every call (or, with `--dev`, takes all).
    pub key: Secret,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest inbound message (after reassembly), bytes. Over it, or in more than
    /// `max_message_bytes / 64` frames (at least 64): close 1009.
    pub max_message_bytes: usize,
    /// Most bytes queued for one connection, each frame counted 32 bytes more (its queue
    /// slot). Over it: close 4000 (slow consumer).
    pub max_queued_bytes: usize,
    /// Inbound messages per second per connection (token bucket; 0 = no limit). Over: 4004.
    pub client_message_rate: u32,
    /// Burst allowed above the rate, in messages (0 = one second's worth).
    pub client_message_burst: u32,
    /// Kernel send buffer (SO_SNDBUF) of each accepted socket, bytes (0 = the OS default, which
    /// auto-grows to megabytes). It bounds how much a stalled client can owe beyond
    /// `max_queued_bytes` before it is closed as a slow consumer.
    pub socket_send_buffer_bytes: usize,
    /// Most channels with subscribers on this node (0 = no limit). A subscribe or a plain
    /// door that would open one more is refused (error 106, HTTP 503 `channel_limit`).
    pub max_channels: usize,
    /// Most channel streams (history positions) the memory broker keeps (0 = no limit). A
    /// publish or subscribe that would start one more is refused (error 106).
    pub max_history_streams: usize,
    /// Most presence entries (one per client per channel with presence) of this node's
    /// clients (0 = no limit). A subscribe that would add one more is refused (error 106).
    pub max_presence_entries: usize,
}

/// `[doors]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DoorsConfig {
    /// `/ws` echo door (default: off; on with `--dev`).
    pub echo: Option<bool>,
    /// `/ws/chat/{room}`.
    pub chat: bool,
    /// `/ws/notify/user/{id}`.
    pub notify: bool,
}

/// `[client]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Whether `/connection/websocket` is open.
    pub enabled: bool,
    /// Whether the client protocol is also served over HTTP streaming
    /// (`/connection/http_stream`) and SSE (`/connection/sse`), with their commands posted to
    /// `/emulation`: the SDK's fallback where WebSocket is blocked.
    pub stream_transports: bool,
    /// Time a new connection has to send its `connect` command (then: close 3502, stale).
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Most channels one connection may subscribe to (more: error 106).
    pub max_subscriptions: usize,
    /// Most commands in one message (more: close 3501). Above `max_subscriptions`, since an
    /// SDK resubscribes every channel in one message after a reconnect.
    pub max_commands_per_message: usize,
    /// Subscribes and unsubscribes per second per connection, with `max_subscriptions` at
    /// once (more: error 111; 0: no limit). Each may push a join or leave to every member.
    pub subscribe_rate: u32,
    /// How long after its token's `exp` a connection (3005) or a subscription (3006) is
    /// closed, if not refreshed: the SDKs refresh when the TTL they were given runs out, so
    /// closing exactly at `exp` would always beat them.
    #[serde(deserialize_with = "duration")]
    pub expiry_grace: Duration,
    /// How long a channel's stream position (epoch and last offset) outlives its last
    /// publication; after that the history is gone and the next publication starts a new epoch.
    #[serde(deserialize_with = "duration")]
    pub history_meta_ttl: Duration,
    /// How long a stream that a subscribe started, and that was never published to, outlives
    /// its channel's last subscriber on the node (every broker; on Redis and NATS at least
    /// three `position_check_interval`s, see `Node::remote_unused_ttl`): the window for a
    /// dropped client to come back and recover under the epoch it was given.
    #[serde(deserialize_with = "duration")]
    pub history_unused_ttl: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            enabled: true,
            stream_transports: true,
            connect_timeout: Duration::from_secs(10),
            max_subscriptions: 128,
            max_commands_per_message: 256,
            subscribe_rate: 32,
            expiry_grace: Duration::from_secs(25),
            history_meta_ttl: Duration::from_secs(24 * 3600),
            history_unused_ttl: Duration::from_secs(60),
        }
    }
}

/// Who may subscribe to a namespace's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscribeRule {
    /// Any connection, with or without a user.
    Anonymous,
    /// A connection whose token named a user.
    Authenticated,
    /// Only with a subscription token for the channel.
    Token,
}

/// Which key a client's keyed publish or removal in a map writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapClientKey {
    /// The key the client sent.
    #[default]
    Sent,
    /// The publisher's client id, whatever key it sent: each client writes only its own entry.
    ClientId,
    /// The publisher's user id, whatever key it sent: each user writes only its own entry
    /// (an anonymous connection, with no user id, may not write).
    UserId,
}

/// Who may publish from a client connection into a namespace's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishRule {
    /// Nobody; only the server API publishes.
    None,
    /// Connections subscribed to the channel.
    Subscribers,
    /// Any connection whose token named a user.
    Authenticated,
    /// Any connection.
    Anonymous,
}

/// The rules of one namespace as written; an unset key takes the default namespace's value
/// (and, in the default namespace, the closed default or `--dev`'s open one).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceConfig {
    /// Who may subscribe (default `token`; `anonymous` with `--dev`).
    pub subscribe: Option<SubscribeRule>,
    /// Who may publish from a client (default `none`; `subscribers` with `--dev`).
    pub publish: Option<PublishRule>,
    /// Presence on (default false; true with `--dev`).
    pub presence: Option<bool>,
    /// Join and leave pushes (default false; true with `--dev`).
    pub join_leave: Option<bool>,
    /// Publications kept per channel (default 0; 100 with `--dev`).
    pub history_size: Option<usize>,
    /// How long each kept publication lives (default 0s; 5m with `--dev`).
    #[serde(default, deserialize_with = "optional_duration")]
    pub history_ttl: Option<Duration>,
    /// Subscriptions recover missed publications after a reconnect (default false; true with
    /// `--dev`). Needs history.
    pub recover: Option<bool>,
    /// Channels are maps (keys to latest values, synced in phases; default false). Needs
    /// history: a map's stream is its history.
    pub map: Option<bool>,
    /// How long a map key lives after it was last published (default 0s: until removed).
    /// Needs `map = true`.
    #[serde(default, deserialize_with = "optional_duration")]
    pub map_key_ttl: Option<Duration>,
    /// Which key a client's map publish or removal writes (default `sent`; `client_id`: the
    /// publisher's client id; `user_id`: its user id). Needs `map = true` when not `sent`.
    pub map_client_key: Option<MapClientKey>,
    /// A map-clients presence namespace (default false): its channels' keys are the clients
    /// subscribed to a companion map channel, written by the server; it takes map-clients
    /// subscriptions (the SDK's `newMapClientsSubscription`) only. Needs `map = true`.
    pub map_clients: Option<bool>,
    /// Map-clients presence of this map namespace's channels (default none): a subscriber of
    /// channel `c` is a key (its client id) of channel `<prefix>c` while it is subscribed.
    /// The prefix names a namespace with `map_clients = true` (`"clients:"`). Needs
    /// `map = true`.
    pub map_clients_presence_channel_prefix: Option<String>,
    /// Channels are shared polls (default false): clients track keys, the server polls
    /// `shared_poll_url` for them and forwards changed items. Named namespaces only.
    pub shared_poll: Option<bool>,
    /// The backend a shared poll asks for the tracked keys' items (HTTP POST, JSON).
    pub shared_poll_url: Option<String>,
    /// How changes are told: `versionless` (default; the server compares data) or
    /// `versioned` (the backend's versions).
    pub shared_poll_mode: Option<SharedPollMode>,
    /// How often the backend is polled (default 1s).
    #[serde(default, deserialize_with = "optional_duration")]
    pub shared_poll_refresh_interval: Option<Duration>,
    /// Keys per backend request (default 100).
    pub shared_poll_refresh_batch_size: Option<usize>,
    /// Keys one connection may track in one channel (default 1000).
    pub shared_poll_max_keys_per_connection: Option<usize>,
}

impl NamespaceConfig {
    /// The rules the default namespace starts from, every key set: closed, or `--dev`'s open
    /// ones. `channels::Namespaces` resolves to the same values (a test there checks).
    pub fn base(dev: bool) -> NamespaceConfig {
        NamespaceConfig {
            subscribe: Some(if dev {
                SubscribeRule::Anonymous
            } else {
                SubscribeRule::Token
            }),
            publish: Some(if dev {
                PublishRule::Subscribers
            } else {
                PublishRule::None
            }),
            presence: Some(dev),
            join_leave: Some(dev),
            history_size: Some(if dev { 100 } else { 0 }),
            history_ttl: Some(Duration::from_secs(if dev { 300 } else { 0 })),
            recover: Some(dev),
            map: Some(false),
            map_key_ttl: Some(Duration::ZERO),
            map_client_key: Some(MapClientKey::Sent),
            map_clients: Some(false),
            map_clients_presence_channel_prefix: Some(String::new()),
            shared_poll: Some(false),
            shared_poll_url: Some(String::new()),
            shared_poll_mode: Some(SharedPollMode::default()),
            shared_poll_refresh_interval: Some(SHARED_POLL_DEFAULT_REFRESH_INTERVAL),
            shared_poll_refresh_batch_size: Some(SHARED_POLL_DEFAULT_BATCH_SIZE),
            shared_poll_max_keys_per_connection: Some(SHARED_POLL_DEFAULT_MAX_KEYS),
        }
    }

    /// These rules with each unset key taken from `base`.
    pub fn over(&self, base: &NamespaceConfig) -> NamespaceConfig {
        NamespaceConfig {
            subscribe: self.subscribe.or(base.subscribe),
            publish: self.publish.or(base.publish),
            presence: self.presence.or(base.presence),
            join_leave: self.join_leave.or(base.join_leave),
            history_size: self.history_size.or(base.history_size),
            history_ttl: self.history_ttl.or(base.history_ttl),
            recover: self.recover.or(base.recover),
            map: self.map.or(base.map),
            map_key_ttl: self.map_key_ttl.or(base.map_key_ttl),
            map_client_key: self.map_client_key.or(base.map_client_key),
            map_clients: self.map_clients.or(base.map_clients),
            map_clients_presence_channel_prefix: self
                .map_clients_presence_channel_prefix
                .clone()
                .or_else(|| base.map_clients_presence_channel_prefix.clone()),
            shared_poll: self.shared_poll.or(base.shared_poll),
            shared_poll_url: self
                .shared_poll_url
                .clone()
                .or(base.shared_poll_url.clone()),
            shared_poll_mode: self.shared_poll_mode.or(base.shared_poll_mode),
            shared_poll_refresh_interval: self
                .shared_poll_refresh_interval
                .or(base.shared_poll_refresh_interval),
            shared_poll_refresh_batch_size: self
                .shared_poll_refresh_batch_size
                .or(base.shared_poll_refresh_batch_size),
            shared_poll_max_keys_per_connection: self
                .shared_poll_max_keys_per_connection
                .or(base.shared_poll_max_keys_per_connection),
        }
    }

    /// Whether publications are kept (a size and a lifetime both above zero).
    fn keeps_history(&self) -> bool {
        self.history_size.unwrap_or(0) > 0 && self.history_ttl.is_some_and(|ttl| !ttl.is_zero())
    }
}

impl ChannelsConfig {
    /// Every namespace with each key set: the default namespace over
    /// [`NamespaceConfig::base`], each named namespace over the default one.
    pub fn resolved(&self, dev: bool) -> ChannelsConfig {
        let default = self.default.over(&NamespaceConfig::base(dev));
        let namespaces = self
            .namespaces
            .iter()
            .map(|(name, written)| (name.clone(), written.over(&default)))
            .collect();
        ChannelsConfig {
            default,
            namespaces,
        }
    }
}

/// `[channels]`: the default namespace's rules, and named namespaces.
#[derive(Debug, Clone, Default)]
pub struct ChannelsConfig {
    /// The default namespace (channels with no `ns:` prefix).
    pub default: NamespaceConfig,
    /// Named namespaces: `[channels.namespaces.NAME]`.
    pub namespaces: std::collections::BTreeMap<String, NamespaceConfig>,
}

/// The keys of `[channels]`: the default namespace's, and `namespaces`.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum ChannelsKey {
    Subscribe,
    Publish,
    Presence,
    JoinLeave,
    HistorySize,
    HistoryTtl,
    Recover,
    Map,
    MapKeyTtl,
    MapClientKey,
    MapClients,
    MapClientsPresenceChannelPrefix,
    Namespaces,
}

/// A duration written as text (`5m`), for [`ChannelsConfig`]'s hand-written deserializer.
struct TextDuration(Duration);

impl<'de> Deserialize<'de> for TextDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        duration(d).map(TextDuration)
    }
}

// Written by hand instead of `#[serde(flatten)]` on `default`: a flattened struct is buffered
// before it is read, and the TOML parser then reports an error in it (a bad rule, a negative
// size) at the `[channels]` header with no key. Read here, each value keeps its own key and
// line.
impl<'de> Deserialize<'de> for ChannelsConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ChannelsConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the [channels] table")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ChannelsConfig, A::Error> {
                let mut out = ChannelsConfig::default();
                let ns = &mut out.default;
                while let Some(key) = map.next_key::<ChannelsKey>()? {
                    match key {
                        ChannelsKey::Subscribe => ns.subscribe = Some(map.next_value()?),
                        ChannelsKey::Publish => ns.publish = Some(map.next_value()?),
                        ChannelsKey::Presence => ns.presence = Some(map.next_value()?),
                        ChannelsKey::JoinLeave => ns.join_leave = Some(map.next_value()?),
                        ChannelsKey::HistorySize => ns.history_size = Some(map.next_value()?),
                        ChannelsKey::HistoryTtl => {
                            ns.history_ttl = Some(map.next_value::<TextDuration>()?.0)
                        }
                        ChannelsKey::Recover => ns.recover = Some(map.next_value()?),
                        ChannelsKey::Map => ns.map = Some(map.next_value()?),
                        ChannelsKey::MapKeyTtl => {
                            ns.map_key_ttl = Some(map.next_value::<TextDuration>()?.0)
                        }
                        ChannelsKey::MapClientKey => ns.map_client_key = Some(map.next_value()?),
                        ChannelsKey::MapClients => ns.map_clients = Some(map.next_value()?),
                        ChannelsKey::MapClientsPresenceChannelPrefix => {
                            ns.map_clients_presence_channel_prefix = Some(map.next_value()?)
                        }
                        ChannelsKey::Namespaces => out.namespaces = map.next_value()?,
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// How spans are sent to the collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with a Protobuf body (the OTLP default).
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/HTTP with a JSON body.
    #[serde(rename = "http/json")]
    HttpJson,
}

impl std::str::FromStr for OtlpProtocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            "http/json" => Ok(OtlpProtocol::HttpJson),
            other => Err(format!("{other:?}: use http/protobuf or http/json")),
        }
    }
}

/// `[traces]`: OpenTelemetry spans for the handshake, each API call, a publication's path
/// (API → broker → fan-out on each node) and each hook call (docs/operations.md, Traces).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// Export spans (default: false; nothing is made or carried when off).
    pub enabled: bool,
    /// The collector's OTLP/HTTP traces URL (`http://` only: no TLS client is built in).
    pub endpoint: String,
    /// `http/protobuf` or `http/json`.
    pub protocol: OtlpProtocol,
    /// The share of new traces kept, 0.0 to 1.0; a request that carries a `traceparent`
    /// follows its caller's decision instead.
    pub sampling_ratio: f64,
    /// `service.name` of every span.
    pub service_name: String,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            enabled: false,
            endpoint: "http://127.0.0.1:4318/v1/traces".to_owned(),
            protocol: OtlpProtocol::HttpProtobuf,
            sampling_ratio: 1.0,
            service_name: "switchboard".to_owned(),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` or `pretty` (default: json; pretty with `--dev`).
    pub format: Option<LogFormat>,
    /// A tracing filter, e.g. `info` or `switchboard=debug`.
    pub level: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            dev: false,
            dev_insecure_on_network: false,
            handshake_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(25),
            shutdown_drain: Duration::from_secs(10),
            max_connections: 0,
            max_connections_per_ip: 0,
            max_pending_handshakes: 4096,
            max_pending_handshakes_per_ip: 256,
            max_header_bytes: 16 * 1024,
            trusted_proxies: Vec::new(),
            client_ip_header: crate::peer::ClientIpHeader::XForwardedFor,
            ipv6_prefix: 64,
            permessage_deflate: false,
        }
    }
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            algorithm: TokenAlgorithm::HS256,
            hmac_secret: Secret::default(),
            public_key_file: None,
            allow_anonymous: None,
            audience: None,
            issuer: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 64 * 1024,
            max_queued_bytes: 1024 * 1024,
            client_message_rate: 100,
            client_message_burst: 0,
            socket_send_buffer_bytes: 128 * 1024,
            max_channels: 100_000,
            max_history_streams: 100_000,
            max_presence_entries: 1_000_000,
        }
    }
}

impl Default for DoorsConfig {
    fn default() -> Self {
        DoorsConfig {
            echo: None,
            chat: true,
            notify: true,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: None,
            level: "info".to_owned(),
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// An IP address and port. Host names are refused with an example rather than resolved: a
/// name can resolve to several addresses (`localhost` to 127.0.0.1 and ::1), and which one
/// was bound would then depend on the resolver.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "{text:?} is not an IP address and port; host names are not accepted: use e.g. \
             127.0.0.1:8000 (this machine only, also for localhost), [::1]:8000, or \
             0.0.0.0:8000 (every interface)"
        )
    })
}

fn listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse_listen(&text).map_err(serde::de::Error::custom)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// The environment variables read by [`Config::apply_env`], with the key each sets.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("SWITCHBOARD_LISTEN", "server.listen"),
    ("SWITCHBOARD_DEV", "server.dev"),
    (
        "SWITCHBOARD_DEV_INSECURE_ON_NETWORK",
        "server.dev_insecure_on_network",
    ),
    ("SWITCHBOARD_HANDSHAKE_TIMEOUT", "server.handshake_timeout"),
    (
        "SWITCHBOARD_HEARTBEAT_INTERVAL",
        "server.heartbeat_interval",
    ),
    ("SWITCHBOARD_SHUTDOWN_DRAIN", "server.shutdown_drain"),
    ("SWITCHBOARD_MAX_CONNECTIONS", "server.max_connections"),
    (
        "SWITCHBOARD_MAX_CONNECTIONS_PER_IP",
        "server.max_connections_per_ip",
    ),
    (
        "SWITCHBOARD_MAX_PENDING_HANDSHAKES",
        "server.max_pending_handshakes",
    ),
    (
        "SWITCHBOARD_MAX_PENDING_HANDSHAKES_PER_IP",
        "server.max_pending_handshakes_per_ip",
    ),
    ("SWITCHBOARD_MAX_HEADER_BYTES", "server.max_header_bytes"),
    ("SWITCHBOARD_TRUSTED_PROXIES", "server.trusted_proxies"),
    ("SWITCHBOARD_CLIENT_IP_HEADER", "server.client_ip_header"),
    ("SWITCHBOARD_IPV6_PREFIX", "server.ipv6_prefix"),
    (
        "SWITCHBOARD_PERMESSAGE_DEFLATE",
        "server.permessage_deflate",
    ),
    ("SWITCHBOARD_TOKEN_ALGORITHM", "token.algorithm"),
    ("SWITCHBOARD_TOKEN_HMAC_SECRET", "token.hmac_secret"),
    ("SWITCHBOARD_TOKEN_PUBLIC_KEY_FILE", "token.public_key_file"),
    ("SWITCHBOARD_ALLOW_ANONYMOUS", "token.allow_anonymous"),
    ("SWITCHBOARD_TOKEN_AUDIENCE", "token.audience"),
    ("SWITCHBOARD_TOKEN_ISSUER", "token.issuer"),
    ("SWITCHBOARD_ALLOWED_ORIGINS", "origins.allowed"),
    ("SWITCHBOARD_API_KEY", "api.key"),
    ("SWITCHBOARD_MAX_MESSAGE_BYTES", "limits.max_message_bytes"),
    ("SWITCHBOARD_MAX_QUEUED_BYTES", "limits.max_queued_bytes"),
    (
        "SWITCHBOARD_CLIENT_MESSAGE_RATE",
        "limits.client_message_rate",
    ),
    (
        "SWITCHBOARD_CLIENT_MESSAGE_BURST",
        "limits.client_message_burst",
    ),
    (
        "SWITCHBOARD_SOCKET_SEND_BUFFER_BYTES",
        "limits.socket_send_buffer_bytes",
    ),
    ("SWITCHBOARD_MAX_CHANNELS", "limits.max_channels"),
    (
        "SWITCHBOARD_MAX_HISTORY_STREAMS",
        "limits.max_history_streams",
    ),
    (
        "SWITCHBOARD_MAX_PRESENCE_ENTRIES",
        "limits.max_presence_entries",
    ),
    ("SWITCHBOARD_ECHO", "doors.echo"),
    ("SWITCHBOARD_CLIENT_ENABLED", "client.enabled"),
    (
        "SWITCHBOARD_CLIENT_STREAM_TRANSPORTS",
        "client.stream_transports",
    ),
    (
        "SWITCHBOARD_CLIENT_CONNECT_TIMEOUT",
        "client.connect_timeout",
    ),
    (
        "SWITCHBOARD_CLIENT_MAX_SUBSCRIPTIONS",
        "client.max_subscriptions",
    ),
    (
        "SWITCHBOARD_CLIENT_MAX_COMMANDS_PER_MESSAGE",
        "client.max_commands_per_message",
    ),
    ("SWITCHBOARD_CLIENT_SUBSCRIBE_RATE", "client.subscribe_rate"),
    ("SWITCHBOARD_CLIENT_EXPIRY_GRACE", "client.expiry_grace"),
    ("SWITCHBOARD_LOG_FORMAT", "log.format"),
    ("SWITCHBOARD_LOG_LEVEL", "log.level"),
    ("SWITCHBOARD_BROKER", "broker"),
    ("SWITCHBOARD_NODE_NAME", "node.name"),
    ("SWITCHBOARD_PRESENCE_TTL", "node.presence_ttl"),
    ("SWITCHBOARD_ANNOUNCE_INTERVAL", "node.announce_interval"),
    (
        "SWITCHBOARD_POSITION_CHECK_INTERVAL",
        "node.position_check_interval",
    ),
    ("SWITCHBOARD_BROKER_TIMEOUT", "node.broker_timeout"),
    (
        "SWITCHBOARD_DELIVERY_BATCH_DELAY",
        "node.delivery_batch_delay",
    ),
    ("SWITCHBOARD_REDIS_URL", "redis.url"),
    ("SWITCHBOARD_REDIS_PREFIX", "redis.prefix"),
    ("SWITCHBOARD_NATS_URL", "nats.url"),
    ("SWITCHBOARD_NATS_PREFIX", "nats.prefix"),
    ("SWITCHBOARD_INGEST_SOURCE", "ingest.source"),
    ("SWITCHBOARD_INGEST_STREAM", "ingest.stream"),
    ("SWITCHBOARD_INGEST_SUBJECT", "ingest.subject"),
    ("SWITCHBOARD_INGEST_GROUP", "ingest.group"),
    ("SWITCHBOARD_ADMIN_ENABLED", "admin.enabled"),
    ("SWITCHBOARD_ADMIN_PASSWORD", "admin.password"),
    ("SWITCHBOARD_ADMIN_TOKEN", "admin.token"),
    ("SWITCHBOARD_ADMIN_SESSION_TTL", "admin.session_ttl"),
    (
        "SWITCHBOARD_ADMIN_LOGIN_ATTEMPTS_PER_MINUTE",
        "admin.login_attempts_per_minute",
    ),
    ("SWITCHBOARD_TRACES_ENABLED", "traces.enabled"),
    ("SWITCHBOARD_TRACES_ENDPOINT", "traces.endpoint"),
    ("SWITCHBOARD_TRACES_PROTOCOL", "traces.protocol"),
    ("SWITCHBOARD_TRACES_SAMPLING_RATIO", "traces.sampling_ratio"),
    ("SWITCHBOARD_TRACES_SERVICE_NAME", "traces.service_name"),
    (
        "SWITCHBOARD_SHARED_POLL_HMAC_SECRET",
        "shared_poll.hmac_secret",
    ),
];

/// The line (from 1) of byte `offset` in `text`, and the dotted key written there: the key
/// before `=` on that line under the nearest table header above it, or the header itself.
/// The TOML parser's own message names neither once a value fails inside a table.
fn locate(text: &str, offset: usize) -> (usize, Option<String>) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let mut lines = text.lines().take(line).collect::<Vec<_>>();
    let current = lines.pop().unwrap_or("").trim();
    let header = |line: &str| {
        let line = line.trim();
        line.starts_with('[').then(|| {
            let end = line.find(']').unwrap_or(line.len());
            line[..end].trim_start_matches('[').trim().to_owned()
        })
    };
    if let Some(table) = header(current) {
        return (line, Some(table));
    }
    let key = current
        .split_once('=')
        .map(|(key, _)| key.trim().trim_matches('"').to_owned())
        .filter(|key| !key.is_empty() && !key.starts_with('#'));
    let table = lines.iter().rev().find_map(|line| header(line));
    let full = match (table, key) {
        (Some(table), Some(key)) => Some(format!("{table}.{key}")),
        (None, Some(key)) => Some(key),
        (_, None) => None,
    };
    (line, full)
}

/// The parser's message with Rust's integer type names (`expected usize`) said in words: the
/// reader of a config error writes TOML, not Rust.
fn plain_words(message: &str) -> String {
    ["usize", "u64", "u32", "u16", "u8"]
        .iter()
        .fold(message.to_owned(), |text, name| {
            text.replace(
                &format!("expected {name}"),
                "expected a whole number, 0 or more",
            )
        })
}

/// `SWITCHBOARD_*` variables that the project's scripts, tests and examples read, not the
/// server: [`Config::apply_env`] leaves them alone instead of refusing them as misspellings.
pub const IGNORED_ENV_VARS: &[&str] = &[
    "SWITCHBOARD_BIN",
    "SWITCHBOARD_SHARED",
    "SWITCHBOARD_TOKEN",
    "SWITCHBOARD_TEST_KEEP",
    "SWITCHBOARD_TEST_LOG_LEVEL",
    "SWITCHBOARD_SCREENSHOT_DIR",
];

/// The known variable closest to `name` by edit distance, when it is close enough to be a
/// likely misspelling (at most a third of the name's length away).
fn closest_env_var(name: &str) -> Option<&'static str> {
    ENV_VARS
        .iter()
        .map(|(var, _)| (edit_distance(name, var), *var))
        .min()
        .filter(|(distance, _)| *distance <= name.len() / 3)
        .map(|(_, var)| var)
}

/// Levenshtein distance over bytes (variable names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    value
        .trim()
        .parse()
        .map_err(|e| invalid(key, format!("{value:?}: {e}")))
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(invalid(key, format!("{other:?} is not a boolean"))),
    }
}

fn parse_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.trim()).map_err(|e| invalid(key, format!("{value:?}: {e}")))
}

impl Config {
    /// Reads a TOML file over the defaults.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`] (unknown keys included).
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text over the defaults; the error names the offending key.
    ///
    /// # Errors
    /// The parser's message when the text is not valid for this schema.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => {
                let (line, key) = locate(text, span.start);
                let message = plain_words(e.message().trim_end());
                match key {
                    Some(key) => format!("{key} (line {line}): {message}"),
                    None => format!("line {line}: {message}"),
                }
            }
            None => plain_words(e.message().trim_end()),
        })
    }

    /// Sets one key (as named in [`ENV_VARS`]) from its text form; used for environment
    /// variables and flags alike.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `source` when the value does not parse.
    pub fn set(&mut self, key: &str, value: &str, source: &str) -> Result<(), ConfigError> {
        match key {
            "server.listen" => {
                self.server.listen =
                    parse_listen(value).map_err(|message| invalid(source, message))?
            }
            "server.dev" => self.server.dev = parse_bool(source, value)?,
            "server.dev_insecure_on_network" => {
                self.server.dev_insecure_on_network = parse_bool(source, value)?
            }
            "server.handshake_timeout" => {
                self.server.handshake_timeout = parse_duration(source, value)?
            }
            "server.heartbeat_interval" => {
                self.server.heartbeat_interval = parse_duration(source, value)?
            }
            "server.shutdown_drain" => self.server.shutdown_drain = parse_duration(source, value)?,
            "server.max_connections" => self.server.max_connections = parse(source, value)?,
            "server.max_connections_per_ip" => {
                self.server.max_connections_per_ip = parse(source, value)?
            }
            "server.max_pending_handshakes" => {
                self.server.max_pending_handshakes = parse(source, value)?
            }
            "server.max_pending_handshakes_per_ip" => {
                self.server.max_pending_handshakes_per_ip = parse(source, value)?
            }
            "server.max_header_bytes" => self.server.max_header_bytes = parse(source, value)?,
            "server.trusted_proxies" => {
                self.server.trusted_proxies = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            "server.client_ip_header" => self.server.client_ip_header = parse(source, value)?,
            "server.ipv6_prefix" => self.server.ipv6_prefix = parse(source, value)?,
            "server.permessage_deflate" => {
                self.server.permessage_deflate = parse_bool(source, value)?
            }
            "token.algorithm" => {
                self.token.algorithm = match value.trim() {
                    "HS256" => TokenAlgorithm::HS256,
                    "RS256" => TokenAlgorithm::RS256,
                    "ES256" => TokenAlgorithm::ES256,
                    other => {
                        return Err(invalid(
                            source,
                            format!("{other:?}: use HS256, RS256 or ES256"),
                        ))
                    }
                }
            }
            "token.hmac_secret" => self.token.hmac_secret = Secret(value.to_owned()),
            "token.public_key_file" => self.token.public_key_file = Some(PathBuf::from(value)),
            "token.allow_anonymous" => {
                self.token.allow_anonymous = Some(parse_bool(source, value)?)
            }
            "token.audience" => self.token.audience = Some(value.trim().to_owned()),
            "token.issuer" => self.token.issuer = Some(value.trim().to_owned()),
            "origins.allowed" => {
                self.origins.allowed = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            "api.key" => self.api.key = Secret(value.to_owned()),
            "limits.max_message_bytes" => self.limits.max_message_bytes = parse(source, value)?,
            "limits.max_queued_bytes" => self.limits.max_queued_bytes = parse(source, value)?,
            "limits.client_message_rate" => self.limits.client_message_rate = parse(source, value)?,
            "limits.client_message_burst" => {
                self.limits.client_message_burst = parse(source, value)?
            }
            "limits.socket_send_buffer_bytes" => {
                self.limits.socket_send_buffer_bytes = parse(source, value)?
            }
            "limits.max_channels" => self.limits.max_channels = parse(source, value)?,
            "limits.max_history_streams" => self.limits.max_history_streams = parse(source, value)?,
            "limits.max_presence_entries" => {
                self.limits.max_presence_entries = parse(source, value)?
            }
            "doors.echo" => self.doors.echo = Some(parse_bool(source, value)?),
            "client.enabled" => self.client.enabled = parse_bool(source, value)?,
            "client.stream_transports" => {
                self.client.stream_transports = parse_bool(source, value)?
            }
            "client.connect_timeout" => {
                self.client.connect_timeout = parse_duration(source, value)?
            }
            "client.max_subscriptions" => self.client.max_subscriptions = parse(source, value)?,
            "client.max_commands_per_message" => {
                self.client.max_commands_per_message = parse(source, value)?
            }
            "client.subscribe_rate" => self.client.subscribe_rate = parse(source, value)?,
            "client.expiry_grace" => self.client.expiry_grace = parse_duration(source, value)?,
            "log.format" => {
                self.log.format = Some(match value.trim() {
                    "json" => LogFormat::Json,
                    "pretty" => LogFormat::Pretty,
                    other => return Err(invalid(source, format!("{other:?}: use json or pretty"))),
                })
            }
            "log.level" => self.log.level = value.trim().to_owned(),
            "broker" => self.broker = parse(source, value)?,
            "node.name" => self.node.name = Some(value.trim().to_owned()),
            "node.presence_ttl" => self.node.presence_ttl = parse_duration(source, value)?,
            "node.announce_interval" => {
                self.node.announce_interval = parse_duration(source, value)?
            }
            "node.position_check_interval" => {
                self.node.position_check_interval = parse_duration(source, value)?
            }
            "node.broker_timeout" => self.node.broker_timeout = parse_duration(source, value)?,
            "node.delivery_batch_delay" => {
                self.node.delivery_batch_delay = parse_duration(source, value)?
            }
            "redis.url" => self.redis.url = Secret(value.trim().to_owned()),
            "redis.prefix" => self.redis.prefix = value.trim().to_owned(),
            "nats.url" => self.nats.url = Secret(value.trim().to_owned()),
            "nats.prefix" => self.nats.prefix = value.trim().to_owned(),
            "ingest.source" => self.ingest.source = parse(source, value)?,
            "ingest.stream" => self.ingest.stream = value.trim().to_owned(),
            "ingest.subject" => self.ingest.subject = value.trim().to_owned(),
            "ingest.group" => self.ingest.group = value.trim().to_owned(),
            "admin.enabled" => self.admin.enabled = parse_bool(source, value)?,
            "admin.password" => self.admin.password = Secret(value.to_owned()),
            "admin.token" => self.admin.token = Secret(value.to_owned()),
            "shared_poll.hmac_secret" => self.shared_poll.hmac_secret = Secret(value.to_owned()),
            "admin.session_ttl" => self.admin.session_ttl = parse_duration(source, value)?,
            "admin.login_attempts_per_minute" => {
                self.admin.login_attempts_per_minute = parse(source, value)?
            }
            "traces.enabled" => self.traces.enabled = parse_bool(source, value)?,
            "traces.endpoint" => self.traces.endpoint = value.trim().to_owned(),
            "traces.protocol" => self.traces.protocol = parse(source, value)?,
            "traces.sampling_ratio" => self.traces.sampling_ratio = parse(source, value)?,
            "traces.service_name" => self.traces.service_name = value.trim().to_owned(),
            other => return Err(invalid(source, format!("unknown key {other}"))),
        }
        Ok(())
    }

    /// Applies every `SWITCHBOARD_*` variable of [`ENV_VARS`] found in `vars`. Any other
    /// `SWITCHBOARD_*` variable is refused (unless it is one of [`IGNORED_ENV_VARS`]), as an
    /// unknown key in the file is.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the variable whose value does not parse;
    /// [`ConfigError::UnknownVariable`] naming an unknown `SWITCHBOARD_*` variable.
    pub fn apply_env<I>(&mut self, vars: I) -> Result<(), ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        for (name, value) in vars {
            if let Some((_, key)) = ENV_VARS.iter().find(|(var, _)| *var == name) {
                self.set(key, &value, &name)?;
            } else if name.starts_with("SWITCHBOARD_") && !IGNORED_ENV_VARS.contains(&name.as_str())
            {
                return Err(ConfigError::UnknownVariable {
                    suggestion: closest_env_var(&name),
                    name,
                });
            }
        }
        Ok(())
    }

    /// Checks the Pusher apps: every field set, names the door and the hub can carry, ids
    /// and keys unique.
    fn validate_pusher(&self) -> Result<(), ConfigError> {
        let apps = &self.pusher.apps;
        let sane = |text: &str| {
            !text.is_empty()
                && text.len() <= 64
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        for (i, app) in apps.iter().enumerate() {
            if !sane(&app.id) {
                return Err(invalid("pusher.apps.id", "1 to 64 of A-Z a-z 0-9 - _"));
            }
            if !sane(&app.key) {
                return Err(invalid("pusher.apps.key", "1 to 64 of A-Z a-z 0-9 - _"));
            }
            if app.secret.len() < 16 {
                return Err(invalid(
                    "pusher.apps.secret",
                    format!("app {:?}: at least 16 bytes", app.id),
                ));
            }
            if apps[..i].iter().any(|other| other.id == app.id) {
                return Err(invalid("pusher.apps.id", format!("{:?} twice", app.id)));
            }
            if apps[..i].iter().any(|other| other.key == app.key) {
                return Err(invalid("pusher.apps.key", format!("{:?} twice", app.key)));
            }
            if app.max_event_bytes == 0 || app.max_channels_per_event == 0 {
                return Err(invalid(
                    "pusher.apps.max_event_bytes",
                    format!(
                        "app {:?}: max_event_bytes and max_channels_per_event above zero",
                        app.id
                    ),
                ));
            }
            for hook in &app.webhooks {
                if !hook.url.starts_with("http://") || hook.url.parse::<http::Uri>().is_err() {
                    return Err(invalid(
                        "pusher.apps.webhooks.url",
                        format!("app {:?}: {:?} is not an http:// URL", app.id, hook.url),
                    ));
                }
                if let Some(unknown) = hook
                    .events
                    .iter()
                    .find(|e| !PUSHER_WEBHOOK_EVENTS.contains(&e.as_str()))
                {
                    return Err(invalid(
                        "pusher.apps.webhooks.events",
                        format!(
                            "app {:?}: {unknown:?} is not one of {PUSHER_WEBHOOK_EVENTS:?}",
                            app.id
                        ),
                    ));
                }
            }
        }
        if self.pusher.webhook_queue == 0
            || self.pusher.webhook_max_batch == 0
            || self.pusher.webhook_attempts == 0
            || self.pusher.webhook_timeout.is_zero()
        {
            return Err(invalid(
                "pusher.webhook_queue",
                "webhook_queue, webhook_max_batch, webhook_attempts and webhook_timeout above zero",
            ));
        }
        if self.pusher.activity_timeout.is_zero() || self.pusher.timestamp_window.is_zero() {
            return Err(invalid(
                "pusher.activity_timeout",
                "activity_timeout and timestamp_window must be above zero",
            ));
        }
        Ok(())
    }

    /// Checks ranges and consistency.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first key that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_pusher()?;
        let server = &self.server;
        let secret = &self.token.hmac_secret.0;
        if !server.dev && !secret.is_empty() && secret.len() < 32 {
            return Err(invalid(
                "token.hmac_secret",
                "must be at least 32 bytes: a shorter HS256 secret can be guessed offline from \
                 one token",
            ));
        }
        if server.dev && !server.listen.ip().is_loopback() && !server.dev_insecure_on_network {
            return Err(invalid(
                "server.dev",
                format!(
                    "development mode on {} would open the API and accept tokens signed with a \
                     secret published in the source to anyone on the network; listen on \
                     127.0.0.1 or [::1], or set server.dev_insecure_on_network = true \
                     (SWITCHBOARD_DEV_INSECURE_ON_NETWORK) if you really mean it",
                    server.listen
                ),
            ));
        }
        let limits = &self.limits;
        if !(125..=64 * 1024 * 1024).contains(&limits.max_message_bytes) {
            return Err(invalid(
                "limits.max_message_bytes",
                "must be between 125 and 67108864",
            ));
        }
        if limits.max_queued_bytes < limits.max_message_bytes {
            return Err(invalid(
                "limits.max_queued_bytes",
                "must be at least limits.max_message_bytes, or no message could be queued",
            ));
        }
        if self.server.heartbeat_interval < Duration::from_millis(100) {
            return Err(invalid(
                "server.heartbeat_interval",
                "must be at least 100ms",
            ));
        }
        if self.server.handshake_timeout < Duration::from_millis(100) {
            return Err(invalid(
                "server.handshake_timeout",
                "must be at least 100ms",
            ));
        }
        if !(1024..=256 * 1024).contains(&server.max_header_bytes) {
            return Err(invalid(
                "server.max_header_bytes",
                "must be between 1024 and 262144",
            ));
        }
        if !(1..=128).contains(&server.ipv6_prefix) {
            return Err(invalid("server.ipv6_prefix", "must be between 1 and 128"));
        }
        crate::peer::TrustedProxies::new(&server.trusted_proxies, server.client_ip_header)
            .map_err(|message| invalid("server.trusted_proxies", message))?;
        match self.token.algorithm {
            TokenAlgorithm::HS256 => {
                if self.token.public_key_file.is_some() {
                    return Err(invalid(
                        "token.public_key_file",
                        "is for RS256/ES256; HS256 uses token.hmac_secret",
                    ));
                }
            }
            TokenAlgorithm::RS256 | TokenAlgorithm::ES256 => {
                if self.token.public_key_file.is_none() {
                    return Err(invalid(
                        "token.public_key_file",
                        "required for RS256 and ES256",
                    ));
                }
                if !self.token.hmac_secret.is_empty() {
                    return Err(invalid(
                        "token.hmac_secret",
                        "is for HS256; RS256/ES256 use token.public_key_file",
                    ));
                }
            }
        }
        for name in self.channels.namespaces.keys() {
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            if !valid {
                return Err(invalid(
                    &format!("channels.namespaces.{name}"),
                    "a namespace name is 1 to 64 of A-Z a-z 0-9 _ - .",
                ));
            }
        }
        // Shared-poll keys are checked as written: the default namespace cannot set them, so
        // a named namespace never inherits them.
        for (name, written) in &self.channels.namespaces {
            shared_poll::validate_namespace(
                &format!("channels.namespaces.{name}"),
                &format!("namespace {name:?}"),
                written,
                &self.shared_poll,
            )?;
        }
        let channels = self.channels.resolved(server.dev);
        let every = std::iter::once(("channels", &channels.default)).chain(
            channels
                .namespaces
                .iter()
                .map(|(name, rules)| (name.as_str(), rules)),
        );
        for (name, rules) in every {
            let (prefix, which) = if name == "channels" {
                ("channels".to_owned(), "the default namespace".to_owned())
            } else {
                (
                    format!("channels.namespaces.{name}"),
                    format!("namespace {name:?}"),
                )
            };
            let is_map = rules.map == Some(true);
            if is_map && !rules.keeps_history() {
                return Err(invalid(
                    &format!("{prefix}.map"),
                    format!(
                        "map = true in {which} needs history, which is the map's stream (its \
                         subscribers catch up on it between the state they read and going \
                         live): set history_size and history_ttl above zero there (e.g. \
                         history_size = 1000, history_ttl = \"10m\")"
                    ),
                ));
            }
            if !is_map && rules.map_key_ttl.is_some_and(|ttl| !ttl.is_zero()) {
                return Err(invalid(
                    &format!("{prefix}.map_key_ttl"),
                    format!("map_key_ttl in {which} needs map = true there"),
                ));
            }
            if !is_map
                && rules
                    .map_client_key
                    .is_some_and(|key| key != MapClientKey::Sent)
            {
                return Err(invalid(
                    &format!("{prefix}.map_client_key"),
                    format!("map_client_key in {which} needs map = true there"),
                ));
            }
            let map_clients = rules.map_clients == Some(true);
            if map_clients && !is_map {
                return Err(invalid(
                    &format!("{prefix}.map_clients"),
                    format!("map_clients = true in {which} needs map = true there"),
                ));
            }
            if map_clients && rules.map_key_ttl.is_some_and(|ttl| !ttl.is_zero()) {
                return Err(invalid(
                    &format!("{prefix}.map_key_ttl"),
                    format!(
                        "map_key_ttl in {which}, a map_clients namespace, would remove clients \
                         still subscribed: its keys live exactly as long as their \
                         subscriptions; leave it at 0s"
                    ),
                ));
            }
            let presence_prefix = rules
                .map_clients_presence_channel_prefix
                .as_deref()
                .unwrap_or_default();
            if !presence_prefix.is_empty() {
                let key = format!("{prefix}.map_clients_presence_channel_prefix");
                if !is_map || map_clients {
                    return Err(invalid(
                        &key,
                        format!(
                            "map_clients_presence_channel_prefix in {which} needs map = true \
                             (and not map_clients) there"
                        ),
                    ));
                }
                // The companion channel `<prefix><channel>` must be a map-clients map.
                let companion = match presence_prefix.split_once(':') {
                    Some((ns, _)) => channels.namespaces.get(ns),
                    None => Some(&channels.default),
                };
                if companion.is_none_or(|ns| ns.map_clients != Some(true)) {
                    return Err(invalid(
                        &key,
                        format!(
                            "map_clients_presence_channel_prefix {presence_prefix:?} in {which} \
                             must name a namespace with map_clients = true (e.g. \
                             \"clients:\" with [channels.namespaces.clients] map = true, \
                             map_clients = true)"
                        ),
                    ));
                }
            }
            if rules.recover == Some(true) && !rules.keeps_history() {
                let (key, which) = if name == "channels" {
                    (
                        "channels.recover".to_owned(),
                        "the default namespace".to_owned(),
                    )
                } else {
                    (
                        format!("channels.namespaces.{name}.recover"),
                        format!("namespace {name:?}"),
                    )
                };
                return Err(invalid(
                    &key,
                    format!(
                        "recover = true in {which} needs history to recover from: set \
                         history_size and history_ttl above zero there (e.g. history_size = 100, \
                         history_ttl = \"5m\"), or recover = false"
                    ),
                ));
            }
        }
        for (key, value) in [
            ("node.presence_ttl", self.node.presence_ttl),
            ("node.announce_interval", self.node.announce_interval),
            (
                "node.position_check_interval",
                self.node.position_check_interval,
            ),
            ("node.broker_timeout", self.node.broker_timeout),
        ] {
            if value < Duration::from_millis(100) {
                return Err(invalid(key, "must be at least 100ms"));
            }
        }
        // Held longer, a publication would be late past what any real-time client tolerates,
        // and the position check could take the hold for a loss.
        if self.node.delivery_batch_delay > Duration::from_millis(100) {
            return Err(invalid(
                "node.delivery_batch_delay",
                "must be at most 100ms (0, the default, delivers each publication as it comes)",
            ));
        }
        if self.client.max_commands_per_message <= self.client.max_subscriptions {
            return Err(invalid(
                "client.max_commands_per_message",
                "must be above client.max_subscriptions: an SDK resubscribes every channel in one \
                 message after a reconnect",
            ));
        }
        if self.client.connect_timeout < Duration::from_millis(100) {
            return Err(invalid("client.connect_timeout", "must be at least 100ms"));
        }
        self.validate_admin()?;
        let traces = &self.traces;
        if !(0.0..=1.0).contains(&traces.sampling_ratio) {
            return Err(invalid(
                "traces.sampling_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        // No TLS client is built in (it would double the build for a link that is usually
        // to a collector agent on the same host or pod).
        if traces.enabled && !traces.endpoint.starts_with("http://") {
            return Err(invalid(
                "traces.endpoint",
                format!(
                    "{:?}: an http:// URL of the collector's OTLP/HTTP traces path, e.g. \
                     http://127.0.0.1:4318/v1/traces (no TLS: send to a collector agent \
                     nearby)",
                    traces.endpoint
                ),
            ));
        }
        for pattern in &self.origins.allowed {
            crate::origin::OriginPattern::parse(pattern)
                .map_err(|message| invalid("origins.allowed", format!("{pattern:?}: {message}")))?;
        }
        self.hooks.validate(self.channels.namespaces.keys())?;
        Ok(())
    }

    /// The admin UI's settings: on, it needs a credential long enough not to be guessed
    /// within the login rate, and a rate above zero.
    fn validate_admin(&self) -> Result<(), ConfigError> {
        let admin = &self.admin;
        if !admin.enabled {
            return Ok(());
        }
        if admin.password.is_empty() && admin.token.is_empty() {
            return Err(invalid(
                "admin.enabled",
                "the admin UI needs admin.password or admin.token (SWITCHBOARD_ADMIN_PASSWORD, \
                 SWITCHBOARD_ADMIN_TOKEN)",
            ));
        }
        for (key, secret) in [
            ("admin.password", &admin.password),
            ("admin.token", &admin.token),
        ] {
            if !self.server.dev && !secret.is_empty() && secret.0.chars().count() < 12 {
                return Err(invalid(
                    key,
                    "must be at least 12 characters (outside --dev): the login is the only \
                     door to publishing and disconnecting",
                ));
            }
        }
        if admin.login_attempts_per_minute == 0 {
            return Err(invalid(
                "admin.login_attempts_per_minute",
                "must be at least 1 (0 would refuse every login)",
            ));
        }
        if admin.session_ttl < Duration::from_secs(1) {
            return Err(invalid("admin.session_ttl", "must be at least 1s"));
        }
        Ok(())
    }

    /// A copy with every setting `--dev` decides filled in (the anonymous, echo and log format
    /// switches and every namespace's rules), as the gateway logs it at start: an unset
    /// `Option` there would say nothing of what applies.
    pub fn with_resolved(&self) -> Config {
        let resolved = self.resolve();
        let mut out = self.clone();
        out.token.allow_anonymous = Some(resolved.allow_anonymous);
        out.doors.echo = Some(resolved.echo);
        out.log.format = Some(resolved.log_format);
        out.channels = self.channels.resolved(self.server.dev);
        out
    }

    /// The settings as they apply, with `--dev`'s changes made.
    pub fn resolve(&self) -> Resolved {
        let dev = self.server.dev;
        Resolved {
            allow_anonymous: self.token.allow_anonymous.unwrap_or(dev),
            echo: self.doors.echo.unwrap_or(dev),
            log_format: self.log.format.unwrap_or(if dev {
                LogFormat::Pretty
            } else {
                LogFormat::Json
            }),
            localhost_origins: dev,
            open_api: dev && self.api.key.is_empty(),
        }
    }
}

/// The settings that depend on `--dev`, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// Plain doors accept connections with no token.
    pub allow_anonymous: bool,
    /// The `/ws` echo door is open.
    pub echo: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Any `http(s)://localhost|127.0.0.1|[::1]` origin is allowed.
    pub localhost_origins: bool,
    /// The API takes calls with no key (dev with no key set only).
    pub open_api: bool,
}

/// The commented configuration file written by `switchboard genconfig`: every key with its
/// default.
pub const GENERATED_CONFIG: &str = include_str!("../../../docs/switchboard.example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_hmac_secret_is_refused_outside_dev() {
        let mut config = Config::default();
        config.token.hmac_secret = Secret("too-short".into());
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("token.hmac_secret"), "{error}");
        config.server.dev = true;
        config.validate().unwrap();
        config.server.dev = false;
        config.token.hmac_secret = Secret("x".repeat(32));
        config.validate().unwrap();
    }

    #[test]
    fn dev_mode_is_refused_off_loopback_unless_loudly_allowed() {
        let mut config = Config::default();
        config.server.dev = true;
        config.validate().unwrap();
        config.server.listen = "0.0.0.0:8000".parse().unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("dev_insecure_on_network"), "{error}");
        config.server.dev_insecure_on_network = true;
        config.validate().unwrap();
        config.server.dev = false;
        config.server.dev_insecure_on_network = false;
        config.validate().unwrap();
    }

    #[test]
    fn generated_config_parses_to_the_defaults() {
        let parsed = Config::from_toml(GENERATED_CONFIG).unwrap();
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Config::default()));
        parsed.validate().unwrap();
    }

    #[test]
    fn traces_are_off_by_default_and_their_keys_come_from_file_and_env() {
        let config = Config::default();
        assert!(!config.traces.enabled);
        assert_eq!(config.traces.protocol, OtlpProtocol::HttpProtobuf);
        let mut config = Config::from_toml(
            "[traces]\nenabled = true\nprotocol = \"http/json\"\nsampling_ratio = 0.25\n",
        )
        .unwrap();
        assert!(config.traces.enabled && config.traces.protocol == OtlpProtocol::HttpJson);
        config
            .apply_env([
                (
                    "SWITCHBOARD_TRACES_ENDPOINT".to_owned(),
                    "http://collector:4318/v1/traces".to_owned(),
                ),
                (
                    "SWITCHBOARD_TRACES_SAMPLING_RATIO".to_owned(),
                    "0.5".to_owned(),
                ),
            ])
            .unwrap();
        assert_eq!(config.traces.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(config.traces.sampling_ratio, 0.5);
        config.validate().unwrap();
        let error = Config::from_toml("[traces]\nprotocol = \"grpc\"\n").unwrap_err();
        assert!(error.contains("traces.protocol"), "{error}");
    }

    #[test]
    fn a_sampling_ratio_outside_0_1_and_a_non_http_endpoint_are_refused() {
        for ratio in ["1.5", "-0.1", "NaN"] {
            let mut config = Config::default();
            config
                .set(
                    "traces.sampling_ratio",
                    ratio,
                    "SWITCHBOARD_TRACES_SAMPLING_RATIO",
                )
                .unwrap();
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains("traces.sampling_ratio"), "{error}");
        }
        let mut config = Config::default();
        config.traces.endpoint = "https://collector/v1/traces".to_owned();
        config.validate().unwrap();
        config.traces.enabled = true;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("traces.endpoint"), "{error}");
    }

    #[test]
    fn a_delivery_batch_delay_is_off_by_default_and_held_to_100ms() {
        let mut config = Config::default();
        assert_eq!(config.node.delivery_batch_delay, Duration::ZERO);
        config
            .set(
                "node.delivery_batch_delay",
                "5ms",
                "SWITCHBOARD_DELIVERY_BATCH_DELAY",
            )
            .unwrap();
        assert_eq!(config.node.delivery_batch_delay, Duration::from_millis(5));
        config.validate().unwrap();
        config.node.delivery_batch_delay = Duration::from_millis(101);
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("node.delivery_batch_delay"), "{error}");
    }

    #[test]
    fn pusher_apps_are_read_and_checked() {
        let app = |id: &str, key: &str, secret: &str| {
            format!("[[pusher.apps]]\nid = \"{id}\"\nkey = \"{key}\"\nsecret = \"{secret}\"\n")
        };
        let two = format!(
            "{}client_events = true\n{}",
            app("a1", "k1", "secret-0123456789"),
            app("a2", "k2", "secret-0123456789")
        );
        let config = Config::from_toml(&two).unwrap();
        assert_eq!(config.pusher.apps.len(), 2);
        assert!(config.pusher.apps[0].client_events && !config.pusher.apps[1].client_events);
        assert_eq!(config.pusher.activity_timeout, Duration::from_secs(120));
        assert!(config.validate().is_ok());
        let twice = format!(
            "{}{}",
            app("a1", "k1", "secret-0123456789"),
            app("a1", "k2", "secret-0123456789")
        );
        let error = Config::from_toml(&twice).unwrap().validate().unwrap_err();
        assert!(error.to_string().contains("pusher.apps.id"), "{error}");
        let short = app("a1", "k1", "short");
        let error = Config::from_toml(&short).unwrap().validate().unwrap_err();
        assert!(error.to_string().contains("pusher.apps.secret"), "{error}");
        let colon = app("a:1", "k1", "secret-0123456789");
        assert!(Config::from_toml(&colon).unwrap().validate().is_err());
    }

    #[test]
    fn pusher_limits_and_webhooks_are_read_and_checked() {
        let app = "[[pusher.apps]]\nid = \"a1\"\nkey = \"k1\"\nsecret = \"secret-0123456789\"\n";
        let config = Config::from_toml(app).unwrap();
        let first = &config.pusher.apps[0];
        assert_eq!(
            (first.max_connections, first.max_client_events_per_second),
            (0, 10)
        );
        assert_eq!(
            (first.max_event_bytes, first.max_channels_per_event),
            (10240, 100)
        );
        let hooked = format!(
            "{app}max_connections = 5\n[[pusher.apps.webhooks]]\nurl = \"http://127.0.0.1:9/h\"\nevents = [\"member_added\"]\n"
        );
        let config = Config::from_toml(&hooked).unwrap();
        assert!(config.validate().is_ok());
        assert_eq!(config.pusher.apps[0].max_connections, 5);
        assert_eq!(config.pusher.apps[0].webhooks[0].events, ["member_added"]);
        let unknown = hooked.replace("member_added", "member_joined");
        let error = Config::from_toml(&unknown).unwrap().validate().unwrap_err();
        assert!(
            error.to_string().contains("pusher.apps.webhooks.events"),
            "{error}"
        );
        let https = hooked.replace("http://", "ftp://");
        let error = Config::from_toml(&https).unwrap().validate().unwrap_err();
        assert!(
            error.to_string().contains("pusher.apps.webhooks.url"),
            "{error}"
        );
        let zero = format!("{app}max_event_bytes = 0\n");
        assert!(Config::from_toml(&zero).unwrap().validate().is_err());
        let queue = format!("[pusher]\nwebhook_queue = 0\n{app}");
        assert!(Config::from_toml(&queue).unwrap().validate().is_err());
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let error = Config::from_toml("[server]\nlisten_on = \"x\"").unwrap_err();
        assert!(error.contains("listen_on"), "{error}");
    }

    #[test]
    fn an_error_in_the_channels_table_names_the_full_key_and_its_line() {
        let text =
            "[server]\ndev = false\n\n[channels]\npresence = true\nsubscribe = \"everyone\"\n";
        let error = Config::from_toml(text).unwrap_err();
        assert!(
            error.starts_with("channels.subscribe (line 6): "),
            "{error}"
        );
        assert!(error.contains("everyone"), "{error}");
    }

    #[test]
    fn a_negative_history_size_names_the_key_and_its_line() {
        let error = Config::from_toml("[channels]\nhistory_size = -5\n").unwrap_err();
        assert!(
            error.starts_with("channels.history_size (line 2): "),
            "{error}"
        );
        assert!(error.contains("-5"), "{error}");
        assert!(
            error.ends_with("expected a whole number, 0 or more"),
            "{error}"
        );
    }

    #[test]
    fn an_error_in_a_named_namespace_or_another_table_names_the_full_key() {
        let text = "[channels.namespaces.chat]\npresence = true\nhistory_ttl = \"soon\"\n";
        let error = Config::from_toml(text).unwrap_err();
        assert!(
            error.starts_with("channels.namespaces.chat.history_ttl (line 3): "),
            "{error}"
        );
        let error = Config::from_toml("[limits]\nmax_queued_bytes = \"1MB\"\n").unwrap_err();
        assert!(
            error.starts_with("limits.max_queued_bytes (line 2): "),
            "{error}"
        );
        let error = Config::from_toml("[channels]\nsubscrib = \"token\"\n").unwrap_err();
        assert!(error.starts_with("channels.subscrib (line 2): "), "{error}");
    }

    #[test]
    fn the_channels_table_still_reads_every_key() {
        let text = "[channels]\nsubscribe = \"authenticated\"\npublish = \"subscribers\"\n\
                    presence = true\njoin_leave = true\nhistory_size = 10\nhistory_ttl = \"1m\"\n\
                    recover = true\n[channels.namespaces.news]\nsubscribe = \"anonymous\"\n";
        let config = Config::from_toml(text).unwrap();
        let ns = &config.channels.default;
        assert_eq!(ns.subscribe, Some(SubscribeRule::Authenticated));
        assert_eq!(ns.publish, Some(PublishRule::Subscribers));
        assert_eq!(
            (ns.presence, ns.join_leave, ns.recover),
            (Some(true), Some(true), Some(true))
        );
        assert_eq!(ns.history_size, Some(10));
        assert_eq!(ns.history_ttl, Some(Duration::from_secs(60)));
        assert_eq!(
            config.channels.namespaces["news"].subscribe,
            Some(SubscribeRule::Anonymous)
        );
        config.validate().unwrap();
    }

    #[test]
    fn an_unknown_switchboard_variable_is_refused_naming_the_closest_known_one() {
        let error = Config::default()
            .apply_env([("SWITCHBOARD_LISTN".to_owned(), "127.0.0.1:9".to_owned())])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("unknown environment variable SWITCHBOARD_LISTN"),
            "{error}"
        );
        assert!(
            error.contains("did you mean SWITCHBOARD_LISTEN?"),
            "{error}"
        );
        let error = Config::default()
            .apply_env([("SWITCHBOARD_QQQQQQQQQQQQ".to_owned(), "1".to_owned())])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("SWITCHBOARD_QQQQQQQQQQQQ") && !error.contains("did you mean"),
            "{error}"
        );
    }

    #[test]
    fn variables_the_scripts_read_and_other_programs_variables_are_left_alone() {
        let mut config = Config::default();
        let mut vars: Vec<(String, String)> = IGNORED_ENV_VARS
            .iter()
            .map(|name| ((*name).to_owned(), "x".to_owned()))
            .collect();
        vars.push(("PATH".to_owned(), "/bin".to_owned()));
        vars.push(("MY_SWITCHBOARD_LISTEN".to_owned(), "x".to_owned()));
        config.apply_env(vars).unwrap();
    }

    #[test]
    fn a_map_needs_history_and_a_key_ttl_needs_a_map_each_refused_naming_the_key() {
        let text = "[channels.namespaces.board]\nmap = true\n";
        let error = Config::from_toml(text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("channels.namespaces.board.map") && error.contains("needs history"),
            "{error}"
        );
        let text = "[channels.namespaces.feed]\nmap_key_ttl = \"30s\"\n";
        let error = Config::from_toml(text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("channels.namespaces.feed.map_key_ttl"),
            "{error}"
        );
        let text = "[channels.namespaces.board]\nmap = true\nmap_key_ttl = \"30s\"\n\
                    history_size = 100\nhistory_ttl = \"5m\"\n";
        let config = Config::from_toml(text).unwrap();
        config.validate().unwrap();
        let board = &config.channels.namespaces["board"];
        assert_eq!(
            (board.map, board.map_key_ttl),
            (Some(true), Some(Duration::from_secs(30)))
        );
    }

    #[test]
    fn map_client_key_needs_a_map_and_an_unknown_value_is_refused_naming_the_key() {
        let text = "[channels.namespaces.feed]\nmap_client_key = \"client_id\"\n";
        let error = Config::from_toml(text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("channels.namespaces.feed.map_client_key")
                && error.contains("map = true"),
            "{error}"
        );
        let text = "[channels.namespaces.board]\nmap = true\nhistory_size = 100\n\
                    history_ttl = \"5m\"\nmap_client_key = \"user\"\n";
        let error = Config::from_toml(text).unwrap_err();
        assert!(
            error.contains("map_client_key") && error.contains("user"),
            "{error}"
        );
        let error = Config::from_toml("[channels]\nmap_client_key = \"nobody\"\n").unwrap_err();
        assert!(
            error.starts_with("channels.map_client_key (line 2): "),
            "{error}"
        );
        let text = "[channels.namespaces.board]\nmap = true\nhistory_size = 100\n\
                    history_ttl = \"5m\"\nmap_client_key = \"client_id\"\n\
                    [channels.namespaces.feed]\nmap_client_key = \"sent\"\n";
        let config = Config::from_toml(text).unwrap();
        config.validate().unwrap();
        let resolved = config.with_resolved().channels;
        assert_eq!(
            (
                resolved.namespaces["board"].map_client_key,
                resolved.namespaces["feed"].map_client_key,
                resolved.default.map_client_key
            ),
            (
                Some(MapClientKey::ClientId),
                Some(MapClientKey::Sent),
                Some(MapClientKey::Sent)
            )
        );
    }

    #[test]
    fn map_clients_presence_needs_a_map_and_a_prefix_naming_a_map_clients_namespace() {
        let map = "map = true\nhistory_size = 10\nhistory_ttl = \"5m\"\n";
        let config = |room: &str, clients: &str| {
            format!(
                "[channels.namespaces.room]\n{map}{room}\n\
                 [channels.namespaces.clients]\n{map}{clients}\n"
            )
        };
        let good = config(
            "map_clients_presence_channel_prefix = \"clients:\"",
            "map_clients = true",
        );
        let good = Config::from_toml(&good).unwrap();
        good.validate().unwrap();
        let resolved = good.with_resolved().channels;
        assert_eq!(
            resolved.namespaces["room"]
                .map_clients_presence_channel_prefix
                .as_deref(),
            Some("clients:")
        );
        assert_eq!(resolved.namespaces["clients"].map_clients, Some(true));
        for (room, clients, names) in [
            // The prefix names a namespace that is not map_clients.
            (
                "map_clients_presence_channel_prefix = \"clients:\"",
                "",
                "room.map_clients_presence_channel_prefix",
            ),
            // ... or one that does not exist.
            (
                "map_clients_presence_channel_prefix = \"nobody:\"",
                "map_clients = true",
                "room.map_clients_presence_channel_prefix",
            ),
            // Keys that expire would drop clients still subscribed.
            (
                "",
                "map_clients = true\nmap_key_ttl = \"1m\"",
                "clients.map_key_ttl",
            ),
        ] {
            let error = Config::from_toml(&config(room, clients))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(error.contains(names), "{error}");
        }
        let not_a_map = "[channels.namespaces.clients]\nmap_clients = true\n";
        let error = Config::from_toml(not_a_map)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("clients.map_clients") && error.contains("map = true"),
            "{error}"
        );
    }

    #[test]
    fn recover_without_history_is_refused_naming_the_namespace() {
        let config = Config::from_toml("[channels]\nrecover = true\n").unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains("channels.recover") && error.contains("default namespace"),
            "{error}"
        );
        let text = "[channels.namespaces.feed]\nrecover = true\nhistory_size = 10\n";
        let error = Config::from_toml(text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("channels.namespaces.feed.recover") && error.contains("\"feed\""),
            "{error}"
        );
        // --dev keeps history by default, so recovery there is fine until a namespace drops it.
        let mut config = Config::from_toml("[channels.namespaces.feed]\nrecover = true\n").unwrap();
        config.server.dev = true;
        config.validate().unwrap();
        config
            .channels
            .namespaces
            .get_mut("feed")
            .unwrap()
            .history_size = Some(0);
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains("channels.namespaces.feed.recover"),
            "{error}"
        );
        let text = "[channels]\nrecover = true\nhistory_size = 10\nhistory_ttl = \"1m\"\n";
        Config::from_toml(text).unwrap().validate().unwrap();
    }

    #[test]
    fn a_host_name_as_listen_address_is_refused_with_an_ip_example() {
        let error = Config::from_toml("[server]\nlisten = \"localhost:8000\"\n").unwrap_err();
        assert!(error.starts_with("server.listen (line 2): "), "{error}");
        assert!(
            error.contains("host names are not accepted") && error.contains("127.0.0.1:8000"),
            "{error}"
        );
        let error = Config::default()
            .apply_env([("SWITCHBOARD_LISTEN".to_owned(), "localhost:8000".to_owned())])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("SWITCHBOARD_LISTEN") && error.contains("127.0.0.1:8000"),
            "{error}"
        );
        let config = Config::from_toml("[server]\nlisten = \"[::1]:8001\"\n").unwrap();
        assert_eq!(config.server.listen, "[::1]:8001".parse().unwrap());
    }

    #[test]
    fn the_resolved_copy_fills_every_setting_dev_decides() {
        let mut config =
            Config::from_toml("[channels.namespaces.feed]\npresence = false\n").unwrap();
        config.server.dev = true;
        let shown = config.with_resolved();
        assert_eq!(shown.token.allow_anonymous, Some(true));
        assert_eq!(shown.doors.echo, Some(true));
        assert_eq!(shown.log.format, Some(LogFormat::Pretty));
        assert_eq!(
            shown.channels.default.subscribe,
            Some(SubscribeRule::Anonymous)
        );
        let feed = &shown.channels.namespaces["feed"];
        assert_eq!(
            (feed.presence, feed.recover, feed.history_size),
            (Some(false), Some(true), Some(100))
        );
        let printed = format!("{:?}", shown.channels);
        assert!(!printed.contains("None"), "{printed}");
    }

    #[test]
    fn env_overrides_the_file_and_names_the_variable_on_error() {
        let mut config = Config::from_toml("[limits]\nmax_message_bytes = 1000").unwrap();
        config
            .apply_env([(
                "SWITCHBOARD_MAX_MESSAGE_BYTES".to_owned(),
                "2000".to_owned(),
            )])
            .unwrap();
        assert_eq!(config.limits.max_message_bytes, 2000);
        let error = config
            .apply_env([(
                "SWITCHBOARD_CLIENT_MESSAGE_RATE".to_owned(),
                "fast".to_owned(),
            )])
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("SWITCHBOARD_CLIENT_MESSAGE_RATE"),
            "{error}"
        );
    }

    #[test]
    fn origins_come_from_a_comma_list() {
        let mut config = Config::default();
        config
            .apply_env([(
                "SWITCHBOARD_ALLOWED_ORIGINS".into(),
                "https://a.com, https://*.b.com".into(),
            )])
            .unwrap();
        assert_eq!(config.origins.allowed, ["https://a.com", "https://*.b.com"]);
        config.validate().unwrap();
    }

    #[test]
    fn client_address_settings_are_checked_at_start() {
        let mut config = Config::default();
        config
            .apply_env([
                (
                    "SWITCHBOARD_TRUSTED_PROXIES".into(),
                    "10.0.0.0/8, 2001:db8::1".into(),
                ),
                ("SWITCHBOARD_CLIENT_IP_HEADER".into(), "forwarded".into()),
            ])
            .unwrap();
        assert_eq!(config.server.trusted_proxies, ["10.0.0.0/8", "2001:db8::1"]);
        config.validate().unwrap();
        config.server.trusted_proxies.push("10.0.0.0/40".into());
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("server.trusted_proxies"), "{error}");
        config.server.trusted_proxies.clear();
        config.server.ipv6_prefix = 0;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("server.ipv6_prefix"), "{error}");
        config.server.ipv6_prefix = 64;
        config.server.max_header_bytes = 100;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("server.max_header_bytes"), "{error}");
        let error = Config::from_toml("[server]\nclient_ip_header = \"x-real-ip\"").unwrap_err();
        assert!(error.contains("client_ip_header"), "{error}");
    }

    #[test]
    fn the_admin_ui_needs_a_long_enough_credential_and_reads_its_variables() {
        let mut config = Config::default();
        config
            .apply_env([
                ("SWITCHBOARD_ADMIN_ENABLED".into(), "true".into()),
                ("SWITCHBOARD_ADMIN_SESSION_TTL".into(), "30m".into()),
                (
                    "SWITCHBOARD_ADMIN_LOGIN_ATTEMPTS_PER_MINUTE".into(),
                    "3".into(),
                ),
            ])
            .unwrap();
        assert_eq!(config.admin.session_ttl, Duration::from_secs(1800));
        assert_eq!(config.admin.login_attempts_per_minute, 3);
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("admin.enabled"), "{error}");
        config
            .apply_env([("SWITCHBOARD_ADMIN_PASSWORD".into(), "short".into())])
            .unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("admin.password"), "{error}");
        config.admin.password = Secret("a-long-enough-password".into());
        config.validate().unwrap();
        config.admin.token = Secret("admin-token-hunter2".into());
        assert!(!format!("{config:?}").contains("hunter2"));
        config.admin.login_attempts_per_minute = 0;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("admin.login_attempts_per_minute"), "{error}");
    }

    #[test]
    fn queue_smaller_than_a_message_is_refused() {
        let mut config = Config::default();
        config.limits.max_queued_bytes = 10;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("limits.max_queued_bytes"), "{error}");
    }

    #[test]
    fn secrets_never_print() {
        let mut config = Config::default();
        config.api.key = Secret("hunter2".into());
        config.token.hmac_secret = Secret("topsecret".into());
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("topsecret"),
            "{shown}"
        );
    }

    #[test]
    fn dev_opens_only_the_optional_settings() {
        let mut config = Config::default();
        assert!(!config.resolve().allow_anonymous);
        config.server.dev = true;
        let resolved = config.resolve();
        assert!(resolved.allow_anonymous && resolved.echo && resolved.open_api);
        config.doors.echo = Some(false);
        assert!(!config.resolve().echo);
    }
}
