//! The broker contract: what a node asks of the engine that joins it to the other nodes, and
//! what that engine hands back.
//!
//! A broker keeps each channel's stream (offsets under an epoch, the last publications for a
//! while), presence with a time to live, and carries publications, join/leave and control
//! messages to every node that listens. It never sees a connection: it hands what it delivers
//! to the node's [`BrokerEvents`], and the node feeds the local hub. Everything here is async
//! because every engine but [`memory`] talks over the network.
//!
//! Implementations: [`memory::MemoryBroker`] (one node, in this process; the default), and the
//! Redis and NATS engines in their own crates (`switchboard-redis`, `switchboard-nats`). Every
//! one passes the same conformance suite (`conformance`, behind the `conformance` feature).
//!
//! Rules every engine keeps:
//! - Offsets of one channel's stream start at 1 and are assigned atomically with storing the
//!   publication: never skipped, never repeated, whoever publishes from wherever.
//! - A stream that no longer exists (never published or subscribed to, expired after
//!   `history_meta_ttl`, or lost by a broker restart) is reported as offset 0 and an empty
//!   epoch; reading never creates a stream. The next publish, or a subscribe
//!   ([`Broker::stream_position`]), starts one under a new epoch.
//! - A stream a subscribe started and nobody published to lives only the short TTL it was
//!   started with, extended by [`Broker::keep_stream`] while a node has subscribers to it;
//!   a publish gives it the long `history_meta_ttl`. No call ever shortens a stream's life.
//! - Publications reach [`BrokerEvents::publication`] in offset order per channel, at most
//!   once; the node detects what was missed by comparing offsets.
//! - An engine that serves map channels ([`Broker::serves_maps`]) changes a map's state with
//!   its stream and offset in one step, reads state pages with the position they hold every
//!   change up to, and turns a key's expiry into one removal in the stream, whoever sweeps.
//! - [`BrokerEvents`] methods never block: an engine's read loop calls them directly.
//! - Engines reconnect by themselves, with backoff and jitter, resubscribe every channel they
//!   were subscribed to, and say so through [`BrokerEvents::link_lost`] and
//!   [`BrokerEvents::link_restored`].

pub mod codec;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod memory;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use crate::history::Position;
use crate::publication::{ClientInfo, Publication};

/// Why a broker call failed. The node maps every one to a temporary error for the caller
/// (API: 503 with code `broker_unavailable`; client protocol: error 100, temporary).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached right now (it is being reconnected to).
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker did not answer in time.
    #[error("broker timed out")]
    Timeout,
    /// The broker answered something this engine does not understand.
    #[error("broker protocol error: {0}")]
    Protocol(String),
}

/// How a publication is kept.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Keep at most this many publications of the channel; 0: keep none, assign no offset.
    pub history_size: usize,
    /// How long each publication is kept.
    pub history_ttl: Duration,
    /// How long the stream position (epoch and offset) outlives the last publication.
    pub history_meta_ttl: Duration,
    /// A publish repeating a key seen within `idempotency_ttl` is not applied again; it is
    /// answered with the first one's result.
    pub idempotency_key: Option<Box<str>>,
    /// How long an idempotency key is remembered.
    pub idempotency_ttl: Duration,
    /// A map channel's key lifetime: a keyed publication's key is dropped this long after
    /// it was last set (zero: only when removed).
    pub key_ttl: Duration,
}

/// Which part of a stream a history read wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRange {
    /// Only publications after this offset (before it, with `reverse`).
    pub since: Option<u64>,
    /// At most this many (`None`: every kept one).
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
}

/// What a history read found.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The publications, each with its offset set.
    pub publications: Vec<Arc<Publication>>,
    /// The stream's position at the time of the read.
    pub position: Position,
}

/// One page of a map channel's state, read with the stream position it holds every change
/// up to (see `keyed`).
#[derive(Debug)]
pub struct MapPage {
    /// The keys' latest publications, in key order.
    pub entries: Vec<Arc<Publication>>,
    /// Where the next page starts (`None`: this was the last).
    pub cursor: Option<Box<str>>,
    /// The stream's position when the page was read.
    pub position: Position,
}

/// The broker link's state, for `/readyz` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrokerHealth {
    /// Whether calls can reach the broker now.
    pub connected: bool,
    /// The last measured round trip.
    pub round_trip: Option<Duration>,
    /// Reconnections since start.
    pub reconnects: u64,
}

/// What a broker hands back to its node. Every method returns at once.
pub trait BrokerEvents: Send + Sync + 'static {
    /// A publication to `channel` (with its offset set when the channel keeps history, under
    /// `epoch`), from any node, this one included.
    fn publication(&self, channel: &str, publication: Arc<Publication>, epoch: &str);
    /// `info` subscribed to `channel` on some node.
    fn join(&self, channel: &str, info: Arc<ClientInfo>);
    /// `info` left `channel` on some node.
    fn leave(&self, channel: &str, info: Arc<ClientInfo>);
    /// A control message from any node (this one included).
    fn control(&self, message: Bytes);
    /// The delivery link dropped: publications may have been missed.
    fn link_lost(&self);
    /// The delivery link is back and every subscribed channel resubscribed.
    fn link_restored(&self);
}

/// The engine that joins nodes: streams, presence, and delivery between nodes.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A short name for logs and metrics (`memory`, `redis`, `nats`).
    fn name(&self) -> &'static str;

    /// Connects and starts delivering to `events`. Returns once the first connection
    /// attempt is over; on failure the engine keeps reconnecting in the background.
    ///
    /// # Errors
    /// The first attempt's failure (the engine still keeps trying).
    async fn start(&self, events: Arc<dyn BrokerEvents>) -> Result<(), BrokerError>;

    /// Stops delivering and closes every connection.
    async fn stop(&self);

    /// The link's state now.
    fn health(&self) -> BrokerHealth;

    /// Starts delivering `channel`'s publications and join/leave to this node. Returns once
    /// the broker has confirmed, so every later publication is delivered.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached.
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// Stops delivering `channel` to this node.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached.
    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// Publishes to `channel`: keeps it under the next offset when `options.history_size` is
    /// not 0, and delivers it to every node subscribed to the channel. Returns the stream's
    /// position after it (`None` when no history is kept). Acknowledged only once the
    /// broker has it.
    ///
    /// # Errors
    /// [`BrokerError`]; the publication may or may not have been applied (retry with the
    /// same idempotency key).
    async fn publish(
        &self,
        channel: &str,
        publication: &Publication,
        options: &PublishOptions,
    ) -> Result<Option<Position>, BrokerError>;

    /// Delivers a join of `info` to `channel` on every node.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached.
    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError>;

    /// Delivers a leave of `info` from `channel` on every node.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached.
    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError>;

    /// Delivers `message` to every node's [`BrokerEvents::control`], this one's too.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached.
    async fn publish_control(&self, message: Bytes) -> Result<(), BrokerError>;

    /// Reads `channel`'s kept publications in `range`, with the stream's position. A channel
    /// with no stream gives no publications, offset 0 and an empty epoch, and creates nothing.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached.
    async fn history(
        &self,
        channel: &str,
        range: &HistoryRange,
    ) -> Result<HistoryPage, BrokerError>;

    /// The stream's position, starting the stream when there is none (a new epoch at offset
    /// 0). A subscribe needs this: the epoch it hands the client is what later tells this
    /// stream from one started after it was lost. Reads (`history`) never start a stream.
    ///
    /// A stream started here and never published to lives `ttl` (the node passes
    /// `client.history_unused_ttl`, not the meta TTL: a subscribe to a made-up name must not
    /// leave state for a day); calling this again, or [`Broker::keep_stream`], pushes that to
    /// at least `ttl` from now, and the first publish gives the stream its publication's
    /// `history_meta_ttl`. Neither ever shortens what a stream has left. `ttl` zero: the
    /// started stream lives only as long as something keeps it.
    ///
    /// The default only reads (an engine that can start a stream should): a subscriber to a
    /// never-published channel then gets an empty epoch.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached.
    async fn stream_position(&self, channel: &str, ttl: Duration) -> Result<Position, BrokerError> {
        let _ = ttl;
        self.keep_stream(channel, Duration::ZERO).await
    }

    /// The stream's position, as a history read of its top would give it, and, when there is
    /// a stream, its expiry pushed to at least `ttl` from now (never shortened). An engine
    /// may write less often than every call (NATS: once less than half of `ttl` is left). Never starts a stream. The node calls this at every position
    /// check for each channel with subscribers here, so a started stream outlives its last
    /// subscriber here by about `ttl`, however quiet the channel.
    ///
    /// On an engine that serves maps it also takes out the channel's expired map keys, each
    /// as a removal kept in the stream and delivered, exactly once however many nodes call
    /// it at once: the position check is what turns a key's expiry into a removal its
    /// subscribers see (a state read and a keyed publish take them out too).
    ///
    /// The default only reads.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached.
    async fn keep_stream(&self, channel: &str, ttl: Duration) -> Result<Position, BrokerError> {
        let _ = ttl;
        let top = HistoryRange {
            since: None,
            limit: Some(0),
            reverse: false,
        };
        Ok(self.history(channel, &top).await?.position)
    }

    /// Whether this engine serves map channels: keyed publications change a map's state
    /// with its stream in one step ([`Broker::publish`] with `key` set), and
    /// [`Broker::map_state`] reads that state. Engines that do not are refused maps by the
    /// node (error 108).
    fn serves_maps(&self) -> bool {
        false
    }

    /// A page of map channel `channel`'s state: up to `limit` (at least one) live keys after
    /// `after` (from the first with an empty `after`), in key order (bytewise), with the
    /// stream position they are consistent with. The page holds every change up to that
    /// position (perhaps later ones too), so replaying the stream from it over the pages,
    /// last write per key winning, gives the map exactly. Expired keys are taken out first
    /// (see [`Broker::keep_stream`]). Starts the stream when there is none, as
    /// [`Broker::stream_position`] does with `ttl`.
    ///
    /// Keyed publications: a publication with `key` sets that key (for `options.key_ttl`;
    /// zero: until removed), one with `removed` too takes it out; either is kept in the
    /// stream under the next offset and delivered, carrying its key. Removing a key that is
    /// not there changes nothing and returns the position as it is.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached, or the engine serves no maps.
    async fn map_state(
        &self,
        channel: &str,
        after: &str,
        limit: usize,
        ttl: Duration,
    ) -> Result<MapPage, BrokerError> {
        let _ = (channel, after, limit, ttl);
        Err(BrokerError::Unavailable(format!(
            "the {} broker serves no map channels",
            self.name()
        )))
    }

    /// Forgets `channel`'s kept publications; its position stays.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached.
    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError>;

    /// Records `info` as present in `channel` for `ttl` (adding it again refreshes it).
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached.
    async fn add_presence(
        &self,
        channel: &str,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<(), BrokerError>;

    /// Removes client `client` from `channel`'s presence.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached.
    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), BrokerError>;

    /// Everyone present in `channel` whose entry has not expired.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached.
    async fn presence(&self, channel: &str) -> Result<Vec<Arc<ClientInfo>>, BrokerError>;

    /// How many clients, and how many distinct users, are present in `channel`.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached.
    async fn presence_stats(&self, channel: &str) -> Result<(usize, usize), BrokerError> {
        let present = self.presence(channel).await?;
        let users: std::collections::HashSet<&str> =
            present.iter().map(|info| &*info.user).collect();
        Ok((present.len(), users.len()))
    }
}
