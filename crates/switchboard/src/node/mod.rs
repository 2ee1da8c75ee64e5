//! The node: this process's place in the cluster. It owns the local hub and connection
//! registry, and speaks to the broker for the doors and the API, which never speak to a broker
//! themselves.
//!
//! Two engines sit behind it. The memory broker runs in this process and delivers a
//! publication synchronously inside the publish, so one node pays no queue and no task per
//! publication (the hot path). A remote broker (Redis, NATS) delivers asynchronously; the node
//! then listens to a channel in the broker only while it has local subscribers, and every
//! channel's deliveries, joins and position checks run in order in one channel worker
//! (`worker`), which is where gaps are found and recovering subscribers are merged without loss
//! or duplicate. Control messages between nodes (API calls for a user, node announcements,
//! channel surveys) are in `control`.
//!
//! What the node calls on the doors' behalf completes either at once (memory) or later, on a
//! task (remote): the `*_then` methods take what to do with the result, the `async` ones are
//! awaited by the API.

mod control;
mod pusher;
mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::broker::memory::{MemoryBroker, StreamState, StreamsFull};
use crate::broker::{
    Broker, BrokerError, BrokerEvents, BrokerHealth, HistoryPage, HistoryRange, MapPage, Position,
    PublishOptions,
};
use crate::channels::{ChannelRules, Namespaces};
use crate::conn::{Conn, ConnRegistry, ServerCommand};
use crate::error::{ClientError, EmulationError};
use crate::hub::{DeltaMode, Hub};
use crate::kind::Encoding;
use crate::metrics::{Metrics, Snapshot};
use crate::publication::{ClientInfo, Publication};
use crate::pusher_wire;
use crate::trace::{Kind, Span, Tracer};
use crate::webhooks::Webhooks;
use crate::wire::{self, Push, Reply};
use crate::ws::frame::{self, Opcode};

pub use control::NodeInfo;
pub(crate) use control::UserCommand;
use control::{Control, Peers, Surveys};
pub(crate) use pusher::AppSlot;
use pusher::{PusherBook, PusherChange};
use worker::Work;

/// Channel workers of a node on a remote broker.
const WORKERS: usize = 16;
/// Deliveries waiting per channel worker before the node drops (and later recovers) them.
const WORKER_QUEUE: usize = 8192;
/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(300);

/// The node's settings, from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct NodeSettings {
    /// This node's name.
    pub(crate) name: String,
    /// How long a presence entry lives unless refreshed.
    pub(crate) presence_ttl: Duration,
    /// How often the node announces itself.
    pub(crate) announce_interval: Duration,
    /// How often channel positions are checked against the broker.
    pub(crate) position_check_interval: Duration,
    /// The longest one broker call may take.
    pub(crate) broker_timeout: Duration,
    /// How long a channel worker may hold a delivery to fan it out with the next ones.
    pub(crate) delivery_batch_delay: Duration,
    /// How long a stream position outlives its last publication.
    pub(crate) history_meta_ttl: Duration,
    /// Most channels with subscribers here (0: no limit).
    pub(crate) max_channels: usize,
    /// Most streams the memory broker keeps (0: no limit).
    pub(crate) max_history_streams: usize,
    /// How long a never-published stream outlives its last subscriber (memory broker).
    pub(crate) history_unused_ttl: Duration,
    /// Most presence entries of this node's clients (0: no limit).
    pub(crate) max_presence_entries: usize,
    /// The largest frame a connection may be sent (its queue bound): a publication that
    /// would make a larger one is refused.
    pub(crate) max_frame_bytes: usize,
    /// Traces (`[traces]`): disabled unless configured.
    pub(crate) tracer: Tracer,
    /// The Pusher apps' webhooks and their delivery settings (`[pusher]`).
    pub(crate) pusher: crate::config::PusherConfig,
}

/// The engine behind the node.
enum Engine {
    Memory(Arc<MemoryBroker>),
    Remote(Arc<dyn Broker>),
}

/// This node's presence entries: (channel, client) → info.
type OwnedPresence = HashMap<(Box<str>, Box<str>), Arc<ClientInfo>>;

/// What only a node on a remote broker keeps.
struct Remote {
    broker: Arc<dyn Broker>,
    workers: Box<[mpsc::Sender<Work>]>,
    receivers: Mutex<Vec<mpsc::Receiver<Work>>>,
    /// Local subscribers per channel (joins in flight included): the node listens to a
    /// channel in the broker while this is above zero.
    listeners: Mutex<HashMap<Box<str>, usize>>,
    /// Presence entries of this node's clients, refreshed before they expire.
    presence: Mutex<OwnedPresence>,
    /// Presence changes and join/leave pushes, carried out one after another.
    chores: mpsc::Sender<Chore>,
    chores_receiver: Mutex<Option<mpsc::Receiver<Chore>>>,
}

/// A presence change or a join/leave push for a remote broker. They are carried out in the
/// order they were made (one task), so a client's leave never overtakes its join.
enum Chore {
    AddPresence {
        channel: Box<str>,
        info: Arc<ClientInfo>,
    },
    RemovePresence {
        channel: Box<str>,
        client: Box<str>,
    },
    Join {
        channel: Box<str>,
        info: Arc<ClientInfo>,
    },
    Leave {
        channel: Box<str>,
        info: Arc<ClientInfo>,
    },
    /// A Pusher member or occupancy change to settle against the cluster's presence.
    Pusher(PusherChange),
}

/// Chores waiting before new ones are dropped (with a warning; presence then heals at the
/// next refresh or expiry).
const CHORE_QUEUE: usize = 65536;

/// Keeps one connection's publications in the order it sent them while they wait for a
/// remote broker (empty, and unused, on the memory broker).
#[derive(Default)]
pub(crate) struct PublishOrder {
    /// Done when the connection's last publish is over.
    last: Option<oneshot::Receiver<()>>,
}

/// A connection joining a channel.
pub(crate) struct JoinRequest {
    /// The channel.
    pub(crate) channel: Box<str>,
    /// Its rules.
    pub(crate) rules: ChannelRules,
    /// The connection.
    pub(crate) conn: Arc<Conn>,
    /// How it appears in presence and join/leave.
    pub(crate) info: Arc<ClientInfo>,
    /// Recover from this offset and epoch.
    pub(crate) recover_from: Option<(u64, Box<str>)>,
    /// Which subscribe of this connection to this channel it is (see `ServerCommand::Joined`).
    pub(crate) generation: u64,
    /// Where the join stands, shared with the session (remote broker).
    pub(crate) ticket: Arc<JoinTicket>,
    /// The subscription's tag filter, if any.
    pub(crate) filter: Option<Arc<crate::filter::Filter>>,
    /// It asked for fossil deltas (and the reply said `delta: true`).
    pub(crate) delta: bool,
}

impl JoinRequest {
    /// What the hub keeps for its deltas: a stream's chain, or in a map one chain per key
    /// from the state it holds up to offset `held` (where its subscribe reply ended).
    pub(crate) fn delta_mode(&self, held: u64) -> DeltaMode {
        match (self.delta, self.rules.map) {
            (false, _) => DeltaMode::Off,
            (true, false) => DeltaMode::Stream,
            (true, true) => DeltaMode::Map { held },
        }
    }
}

/// Where a join that waits for the broker stands. The session and the channel worker both
/// hold it; its lock makes "the worker joins" and "the session gives up" one or the other.
#[derive(Default)]
pub(crate) struct JoinTicket(Mutex<TicketState>);

/// See [`JoinTicket`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum TicketState {
    /// The worker has not decided yet.
    #[default]
    Pending,
    /// The connection joined (hub, presence, join push).
    Joined,
    /// The join was refused or failed; nothing to undo.
    Failed,
    /// The session gave up first (unsubscribe, disconnect); the worker will not join.
    Abandoned,
}

impl JoinTicket {
    /// The session gives up: returns the state it found (on `Joined`, the session must
    /// leave the channel; on `Pending`, the worker undoes its side).
    pub(crate) fn abandon(&self) -> TicketState {
        let mut state = lock(&self.0);
        let found = *state;
        if found == TicketState::Pending {
            *state = TicketState::Abandoned;
        }
        found
    }
}

/// What a join does with what the stream held: queue the reply; returns whether to join.
pub(crate) type JoinReply = Box<dyn FnOnce(Result<StreamState, ClientError>) -> bool + Send>;

/// This process's node.
pub(crate) struct Node {
    /// Local channel → subscribers.
    pub(crate) hub: Hub,
    /// Local connections.
    pub(crate) conns: ConnRegistry,
    /// Channel rules.
    pub(crate) channels: Namespaces,
    /// Metrics.
    pub(crate) metrics: Metrics,
    /// The Pusher apps' webhooks.
    pub(crate) webhooks: Webhooks,
    pusher: PusherBook,
    engine: Engine,
    remote: Option<Remote>,
    settings: NodeSettings,
    uid: String,
    started: Instant,
    peers: Peers,
    surveys: Surveys,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves its map consistent, even if a caller panicked.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn shard_of(channel: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    channel.hash(&mut hasher);
    (hasher.finish() as usize) % WORKERS
}

/// The frame that carries `reply` in `encoding`.
pub(crate) fn encode_frame(reply: &Reply, encoding: Encoding) -> Bytes {
    let opcode = match encoding {
        Encoding::Json => Opcode::Text,
        Encoding::Protobuf => Opcode::Binary,
    };
    frame::encode(opcode, &reply.encode_as(encoding))
}

impl Node {
    /// A node on `broker` (`None`: the memory broker).
    pub(crate) fn new(
        broker: Option<Arc<dyn Broker>>,
        channels: Namespaces,
        settings: NodeSettings,
    ) -> Arc<Node> {
        let (engine, remote) = match broker {
            None => (
                Engine::Memory(Arc::new(MemoryBroker::bounded(
                    settings.max_history_streams,
                    settings.history_unused_ttl,
                ))),
                None,
            ),
            Some(broker) => {
                let (senders, receivers): (Vec<_>, Vec<_>) =
                    (0..WORKERS).map(|_| mpsc::channel(WORKER_QUEUE)).unzip();
                let (chores, chores_receiver) = mpsc::channel(CHORE_QUEUE);
                let remote = Remote {
                    chores,
                    chores_receiver: Mutex::new(Some(chores_receiver)),
                    broker: Arc::clone(&broker),
                    workers: senders.into(),
                    receivers: Mutex::new(receivers),
                    listeners: Mutex::new(HashMap::new()),
                    presence: Mutex::new(HashMap::new()),
                };
                (Engine::Remote(broker), Some(remote))
            }
        };
        let metrics = Metrics::new();
        let webhooks = Webhooks::from_config(&settings.pusher, &metrics.webhooks);
        Arc::new(Node {
            hub: Hub::new(),
            conns: ConnRegistry::default(),
            channels,
            metrics,
            webhooks,
            pusher: PusherBook::default(),
            engine,
            remote,
            settings,
            uid: format!("{:016x}", fastrand::u64(..)),
            started: Instant::now(),
            peers: Peers::default(),
            surveys: Surveys::default(),
        })
    }

    /// Connects the broker and starts the node's background work (workers, announcements,
    /// presence refresh, position checks, expiry); all of it stops with `shutdown`.
    pub(crate) async fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        let events: Arc<dyn BrokerEvents> = Arc::new(NodeEvents(Arc::downgrade(self)));
        self.webhooks.start(&shutdown);
        match &self.engine {
            Engine::Memory(memory) => {
                memory.attach(events);
                let node = Arc::clone(self);
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tick.tick() => {}
                        }
                        if let Engine::Memory(memory) = &node.engine {
                            memory.expire_unused(|channel| node.hub.has_channel(channel));
                        }
                    }
                });
            }
            Engine::Remote(broker) => {
                if let Some(remote) = &self.remote {
                    let receivers = std::mem::take(&mut *lock(&remote.receivers));
                    for (index, receiver) in receivers.into_iter().enumerate() {
                        let worker = worker::ChannelWorker::new(Arc::clone(self), index);
                        tokio::spawn(worker.run(receiver, shutdown.clone()));
                    }
                }
                if let Err(error) = broker.start(events).await {
                    tracing::error!(event = "broker_unavailable", broker = broker.name(), %error, "broker unreachable at start; retrying in the background, /readyz is 503 until it answers");
                } else {
                    tracing::info!(
                        event = "broker_connected",
                        broker = broker.name(),
                        "broker connected"
                    );
                }
                tokio::spawn(control::announce_loop(Arc::clone(self), shutdown.clone()));
                tokio::spawn(refresh_presence_loop(Arc::clone(self), shutdown.clone()));
                let chores = self
                    .remote
                    .as_ref()
                    .and_then(|r| lock(&r.chores_receiver).take());
                if let Some(chores) = chores {
                    tokio::spawn(do_chores(Arc::clone(self), chores, shutdown.clone()));
                }
                tokio::spawn(worker::position_check_loop(Arc::clone(self), shutdown));
            }
        }
    }

    /// Stops the broker's connections (at the end of shutdown).
    pub(crate) async fn stop(&self) {
        if let Engine::Remote(broker) = &self.engine {
            broker.stop().await;
        }
    }

    /// The node's tracer.
    pub(crate) fn tracer(&self) -> &Tracer {
        &self.settings.tracer
    }

    /// The span of a publication's way to the broker, under the publisher's span (the API
    /// call, or the connection's handshake); the publication then carries this span's
    /// context to every node. No span, and nothing carried, when the publisher has none.
    fn publish_span(&self, channel: &str, publication: &mut Publication) -> Span {
        let Some(parent) = publication.trace else {
            return Span::none();
        };
        let mut span = self
            .settings
            .tracer
            .child("broker publish", Kind::Producer, Some(parent));
        span.set_str("messaging.system", self.broker_name());
        span.set_str("messaging.destination.name", channel);
        publication.trace = span.context();
        span
    }

    /// Hands a publication to the local hub: the fan-out. One span per publication on this
    /// node when it carries a trace context, never one per delivery.
    pub(crate) fn fan_out(&self, channel: &str, publication: &Publication) -> usize {
        let Some(parent) = publication.trace else {
            return self.hub.publish(channel, publication);
        };
        let mut span = self
            .settings
            .tracer
            .child("fan-out", Kind::Consumer, Some(parent));
        let delivered = self.hub.publish(channel, publication);
        span.set_str("messaging.destination.name", channel);
        span.set_str("switchboard.node", &self.settings.name);
        span.set_int("switchboard.offset", publication.offset as i64);
        span.set_int("switchboard.subscribers", delivered as i64);
        delivered
    }

    /// This node's unique id (random per start).
    pub(crate) fn uid(&self) -> &str {
        &self.uid
    }

    /// This node's name.
    pub(crate) fn name(&self) -> &str {
        &self.settings.name
    }

    /// Seconds since the node started.
    pub(crate) fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Whether the broker is the memory one, which answers every call at once.
    pub(crate) fn is_local(&self) -> bool {
        matches!(self.engine, Engine::Memory(_))
    }

    /// The broker's name (`memory`, `redis`, `nats`).
    pub(crate) fn broker_name(&self) -> &'static str {
        match &self.engine {
            Engine::Memory(_) => "memory",
            Engine::Remote(broker) => broker.name(),
        }
    }

    /// The broker link's state.
    pub(crate) fn broker_health(&self) -> BrokerHealth {
        match &self.engine {
            Engine::Memory(memory) => memory.health(),
            Engine::Remote(broker) => broker.health(),
        }
    }

    /// What `/metrics` shows of the node.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let health = self.broker_health();
        Snapshot {
            channels: self.hub.channel_count(),
            subscriptions: self.hub.subscription_count(),
            history_streams: match &self.engine {
                Engine::Memory(memory) => memory.stream_count(),
                Engine::Remote(_) => 0,
            },
            presence_entries: self.presence_entries(),
            uptime_secs: self.uptime_secs(),
            broker_connected: health.connected,
            broker_round_trip_secs: health.round_trip.map_or(0.0, |rtt| rtt.as_secs_f64()),
            broker_reconnects: health.reconnects,
            cluster_nodes: self.peers.live(self.peer_ttl()).len().max(1),
            // Known to the gateway's state, not to the node: the caller fills them in.
            ready: false,
            connections_limit: 0,
            shared_poll_channels: 0,
            shared_poll_keys: 0,
        }
    }

    /// Presence entries of this node's clients.
    fn presence_entries(&self) -> usize {
        match (&self.engine, &self.remote) {
            (Engine::Memory(memory), _) => memory.presence_count(),
            (Engine::Remote(_), Some(remote)) => lock(&remote.presence).len(),
            (Engine::Remote(_), None) => 0,
        }
    }

    /// Whether a subscriber of `channel` may join here: the channel has subscribers already,
    /// or the node holds fewer than `limits.max_channels`. Checked before the join, so joins
    /// racing for the last slot may pass the bound by the few running at that instant.
    ///
    /// # Errors
    /// [`ClientError::NodeLimit`] when it would open one channel too many.
    pub(crate) fn admit_channel(&self, channel: &str) -> Result<(), ClientError> {
        let max = self.settings.max_channels;
        if max != 0 && self.hub.channel_count() >= max && !self.hub.has_channel(channel) {
            self.metrics
                .node_limits
                .with_label_values(&["channels"])
                .inc();
            return Err(ClientError::NodeLimit);
        }
        Ok(())
    }

    /// Whether `request` may join: [`admit_channel`](Self::admit_channel), and room for its
    /// presence entry under `limits.max_presence_entries`.
    fn admit(&self, request: &JoinRequest) -> Result<(), ClientError> {
        self.admit_channel(&request.channel)?;
        let max = self.settings.max_presence_entries;
        if request.rules.presence && max != 0 && self.presence_entries() >= max {
            self.metrics
                .node_limits
                .with_label_values(&["presence"])
                .inc();
            return Err(ClientError::NodeLimit);
        }
        Ok(())
    }

    /// A publication refused before it reaches the broker: its frame could never be queued.
    fn refuse_oversized(
        &self,
        channel: &str,
        publication: &Publication,
    ) -> Result<(), ClientError> {
        if publication.fits(channel, self.settings.max_frame_bytes) {
            return Ok(());
        }
        self.metrics
            .node_limits
            .with_label_values(&["publication_size"])
            .inc();
        Err(ClientError::TooLarge)
    }

    /// The memory broker refused to start one more stream.
    fn streams_full(&self, _: StreamsFull) -> ClientError {
        self.metrics
            .node_limits
            .with_label_values(&["history_streams"])
            .inc();
        ClientError::NodeLimit
    }

    fn peer_ttl(&self) -> Duration {
        self.settings.announce_interval * 3
    }

    fn options(&self, rules: &ChannelRules, idempotency_key: Option<Box<str>>) -> PublishOptions {
        PublishOptions {
            history_size: if rules.keeps_history() {
                rules.history_size
            } else {
                0
            },
            history_ttl: rules.history_ttl,
            history_meta_ttl: self.settings.history_meta_ttl,
            idempotency_key,
            idempotency_ttl: IDEMPOTENCY_TTL,
            key_ttl: rules.map_key_ttl,
        }
    }

    /// Map channels need a broker that keeps each map's state with its stream, changed in
    /// one step: the memory, Redis and NATS brokers do ([`Broker::serves_maps`]).
    ///
    /// # Errors
    /// [`ClientError::NotSupported`] on a broker that serves no maps.
    pub(crate) fn serves_maps(&self) -> Result<(), ClientError> {
        let serves = match &self.engine {
            Engine::Memory(_) => true,
            Engine::Remote(broker) => broker.serves_maps(),
        };
        if serves {
            Ok(())
        } else {
            Err(ClientError::NotSupported("map channel on this broker"))
        }
    }

    /// Map-clients presence lists a map's subscribers from the session that joins (the join
    /// decided at once): the memory broker only.
    ///
    /// # Errors
    /// [`ClientError::NotSupported`] on a remote broker.
    pub(crate) fn serves_map_clients_presence(&self) -> Result<(), ClientError> {
        match &self.engine {
            Engine::Memory(_) => Ok(()),
            Engine::Remote(_) => Err(ClientError::NotSupported(
                "map clients presence on this broker",
            )),
        }
    }

    /// Keyed publications go to map channels (on a broker that serves them), the others to
    /// stream channels, and none to shared polls (their items come from the backend's poll
    /// only): whichever door or API call it came from.
    fn fits_kind(
        &self,
        rules: &ChannelRules,
        publication: &Publication,
    ) -> Result<(), ClientError> {
        if rules.shared_poll.is_some() {
            return Err(ClientError::IsSharedPoll);
        }
        match (rules.map, publication.key.is_some()) {
            (true, true) => self.serves_maps(),
            (true, false) => Err(ClientError::IsAMap),
            (false, true) => Err(ClientError::NotAMap),
            (false, false) => Ok(()),
        }
    }

    /// A page of map channel `channel`'s state after `after` (see [`MapPage`]), its entries
    /// those `filter` passes, read at once from the memory broker (a remote one is read
    /// with [`map_state_then`](Self::map_state_then)).
    ///
    /// # Errors
    /// [`ClientError::NotSupported`] on a remote broker; [`ClientError::NodeLimit`] when it
    /// would start a stream past `limits.max_history_streams`.
    pub(crate) fn map_state(
        &self,
        channel: &str,
        after: &str,
        limit: usize,
        filter: Option<&crate::filter::Filter>,
    ) -> Result<MapPage, ClientError> {
        let Engine::Memory(memory) = &self.engine else {
            return Err(ClientError::NotSupported("map channel on this broker"));
        };
        memory
            .map_state_now(
                channel,
                self.settings.history_meta_ttl,
                after,
                limit,
                |publication| filter.is_none_or(|f| f.matches(publication.tags.as_deref())),
            )
            .map_err(|full| self.streams_full(full))
    }

    /// A page of map channel `channel`'s state from a remote broker, handed to `done` when
    /// read: up to `limit` keys after `after`, those `filter` passes (the filter runs here,
    /// so a page may hold fewer than `limit`, or none, and still name a cursor). The stream
    /// it is read at lives as one a subscribe starts.
    pub(crate) fn map_state_then(
        self: &Arc<Self>,
        channel: &str,
        after: &str,
        limit: usize,
        filter: Option<crate::filter::Filter>,
        done: impl FnOnce(Result<MapPage, ClientError>) + Send + 'static,
    ) {
        let Some(remote) = &self.remote else {
            return done(Err(ClientError::NotSupported("map channel on this broker")));
        };
        let broker = Arc::clone(&remote.broker);
        let node = Arc::clone(self);
        let (channel, after) = (Box::<str>::from(channel), Box::<str>::from(after));
        let ttl = self.remote_unused_ttl();
        self.then(
            async move {
                let mut page = node
                    .call(broker.map_state(&channel, &after, limit, ttl))
                    .await
                    .map_err(|error| {
                        tracing::warn!(event = "map_state_failed", channel = %channel, %error, "a map's state could not be read");
                        ClientError::Unavailable
                    })?;
                if let Some(filter) = &filter {
                    page.entries
                        .retain(|publication| filter.matches(publication.tags.as_deref()));
                }
                Ok(page)
            },
            done,
        );
    }

    /// Runs a broker call with the node's timeout, counting failures.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let result = match tokio::time::timeout(self.settings.broker_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Timeout),
        };
        if let Err(error) = &result {
            let kind = match error {
                BrokerError::Unavailable(_) => "unavailable",
                BrokerError::Timeout => "timeout",
                BrokerError::Protocol(_) => "protocol",
            };
            self.metrics.broker_errors.with_label_values(&[kind]).inc();
        }
        result
    }

    /// Runs `work` and hands its result to `done`: at once when it completes at once (the
    /// memory broker), else on a task.
    fn then<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
        done: impl FnOnce(T) + Send + 'static,
    ) {
        let mut work = Box::pin(work);
        match work.as_mut().now_or_never() {
            Some(result) => done(result),
            None => {
                tokio::spawn(async move { done(work.await) });
            }
        }
    }

    // ---- publishing ----

    /// Publishes to `channel` under `rules` from any door or the API; returns the stream
    /// position after it when the channel keeps history.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] when the broker cannot take it; [`ClientError::TooLarge`]
    /// when its frame could never be delivered; [`ClientError::NodeLimit`] when it would
    /// start a stream past `limits.max_history_streams`. Nothing is published on an error
    /// but the first.
    pub(crate) async fn publish(
        &self,
        channel: &str,
        rules: &ChannelRules,
        mut publication: Publication,
        idempotency_key: Option<Box<str>>,
    ) -> Result<Option<Position>, ClientError> {
        let started = Instant::now();
        self.refuse_oversized(channel, &publication)?;
        self.fits_kind(rules, &publication)?;
        self.metrics.publications.inc();
        let options = self.options(rules, idempotency_key);
        let mut span = self.publish_span(channel, &mut publication);
        let published = match &self.engine {
            Engine::Memory(memory) => {
                let published = memory
                    .publish_now(channel, publication, &options)
                    .map_err(|full| self.streams_full(full));
                self.published_here(started);
                published
            }
            Engine::Remote(broker) => {
                let published = self
                    .call(broker.publish(channel, &publication, &options))
                    .await
                    .map_err(|error| {
                        tracing::warn!(event = "publish_failed", channel, %error, "broker refused a publication; the publisher is told");
                        span.fail(&error.to_string());
                        ClientError::Unavailable
                    });
                // Deliveries are timed where the broker hands them back (the channel worker).
                self.metrics
                    .publish_seconds
                    .observe(started.elapsed().as_secs_f64());
                published
            }
        };
        if let Ok(Some(position)) = &published {
            span.set_int("switchboard.offset", position.offset as i64);
        }
        published
    }

    /// Times a publish on the memory broker, which fanned it out before returning: the
    /// publish call and the delivery are the same span here, so one clock read serves both.
    fn published_here(&self, started: Instant) {
        let elapsed = started.elapsed().as_secs_f64();
        self.metrics.publish_seconds.observe(elapsed);
        self.metrics.delivery_seconds.observe(elapsed);
    }

    /// Publishes, then hands the result to `done`: at once on the memory broker (the hot path
    /// allocates nothing here); on a remote broker from a task, after the publish before it in
    /// `order` (one connection's publications reach the broker in the order it sent them).
    pub(crate) fn publish_then(
        self: &Arc<Self>,
        order: &mut PublishOrder,
        channel: &str,
        rules: &ChannelRules,
        publication: Publication,
        done: impl FnOnce(Result<Option<Position>, ClientError>) + Send + 'static,
    ) {
        if let Err(error) = self.refuse_oversized(channel, &publication) {
            return done(Err(error));
        }
        if let Err(error) = self.fits_kind(rules, &publication) {
            return done(Err(error));
        }
        if let Engine::Memory(memory) = &self.engine {
            let started = Instant::now();
            self.metrics.publications.inc();
            let options = self.options(rules, None);
            let mut publication = publication;
            let span = self.publish_span(channel, &mut publication);
            let published = memory
                .publish_now(channel, publication, &options)
                .map_err(|full| self.streams_full(full));
            self.published_here(started);
            drop(span);
            return done(published);
        }
        let (node, channel, rules) = (Arc::clone(self), Box::<str>::from(channel), rules.clone());
        let before = order.last.take();
        let (finished, next) = oneshot::channel();
        order.last = Some(next);
        tokio::spawn(async move {
            if let Some(before) = before {
                // Sent or dropped when the previous publish is over, either way.
                let _ = before.await;
            }
            let result = node.publish(&channel, &rules, publication, None).await;
            let _ = finished.send(());
            done(result);
        });
    }

    // ---- joining and leaving ----

    /// Joins a connection to a channel: reads the stream (recovering from the offset asked
    /// for), lets `reply` queue the subscribe reply, and joins the hub right after it, before
    /// any later publication. Then records presence and tells the channel. Returns whether it
    /// joined when that was decided at once (memory); `None` when the answer comes later
    /// through `ServerCommand::Joined` (remote).
    pub(crate) fn join(self: &Arc<Self>, request: JoinRequest, reply: JoinReply) -> Option<bool> {
        if let Err(error) = self.admit(&request) {
            reply(Err(error));
            return Some(false);
        }
        match &self.engine {
            Engine::Memory(memory) => {
                let history = request
                    .rules
                    .keeps_history()
                    .then_some(self.settings.history_meta_ttl);
                let recover_from = request
                    .recover_from
                    .as_ref()
                    .map(|(offset, epoch)| (*offset, &**epoch));
                let mut reply = Some(reply);
                let joined =
                    memory.subscribe_atomically(&request.channel, history, recover_from, |found| {
                        // The reply's catch-up ends at the stream's top.
                        let held = found.position.as_ref().map_or(0, |at| at.offset);
                        let go = reply.take().is_some_and(|reply| reply(Ok(found)));
                        if go {
                            self.hub.subscribe_filtered(
                                &request.channel,
                                &request.conn,
                                0,
                                request.filter.clone(),
                                request.delta_mode(held),
                            );
                        }
                        go
                    });
                let joined = match joined {
                    Ok(joined) => joined,
                    Err(full) => {
                        let error = self.streams_full(full);
                        if let Some(reply) = reply.take() {
                            reply(Err(error));
                        }
                        false
                    }
                };
                if joined {
                    self.joined(&request);
                }
                Some(joined)
            }
            Engine::Remote(_) => {
                self.listen(&request.channel);
                let work = Work::Join {
                    request: Box::new(request),
                    reply,
                };
                if let Err(Work::Join { request, reply }) = self.to_worker(work) {
                    reply(Err(ClientError::Unavailable));
                    self.release(&request.channel);
                    return Some(false);
                }
                None
            }
        }
    }

    /// After a connection joined: presence, and the join push to the channel.
    fn joined(self: &Arc<Self>, request: &JoinRequest) {
        if request.rules.presence {
            self.add_presence(&request.channel, &request.info);
        }
        if request.rules.join_leave {
            self.announce(&request.channel, &request.info, true);
        }
    }

    /// Takes a connection out of a channel it joined: hub, presence, the leave push, and (on a
    /// remote broker) the broker subscription after the last local subscriber.
    pub(crate) fn leave(
        self: &Arc<Self>,
        channel: &str,
        conn_id: u64,
        rules: &ChannelRules,
        info: &Arc<ClientInfo>,
    ) {
        self.hub.unsubscribe(channel, conn_id);
        if rules.presence {
            self.remove_presence(channel, &info.client);
        }
        if rules.join_leave {
            self.announce(channel, info, false);
        }
        self.release(channel);
    }

    /// A plain door's connection joins its channel (no stream, no presence).
    pub(crate) fn attach(&self, channel: &str, conn: &Arc<Conn>) {
        self.hub.subscribe(channel, conn);
        if self.remote.is_some() {
            self.listen(channel);
            let _ = self.to_worker(Work::Listen {
                channel: channel.into(),
            });
        }
    }

    /// A plain door's connection leaves its channel.
    pub(crate) fn detach(&self, channel: &str, conn_id: u64) {
        self.hub.unsubscribe(channel, conn_id);
        self.release(channel);
    }

    /// Counts one more local subscriber of `channel` (remote broker).
    fn listen(&self, channel: &str) {
        if let Some(remote) = &self.remote {
            *lock(&remote.listeners).entry(channel.into()).or_insert(0) += 1;
        }
    }

    /// Counts one local subscriber less; after the last, the node stops listening.
    fn release(&self, channel: &str) {
        let Some(remote) = &self.remote else {
            return;
        };
        let mut listeners = lock(&remote.listeners);
        let Some(count) = listeners.get_mut(channel) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            listeners.remove(channel);
            drop(listeners);
            let _ = self.to_worker(Work::Unlisten {
                channel: channel.into(),
            });
        }
    }

    /// Local subscribers of `channel` (joins in flight included), remote broker only.
    fn listeners(&self, channel: &str) -> usize {
        self.remote.as_ref().map_or(0, |remote| {
            lock(&remote.listeners).get(channel).copied().unwrap_or(0)
        })
    }

    /// Hands `work` to its channel's worker without waiting.
    fn to_worker(&self, work: Work) -> Result<(), Work> {
        let Some(remote) = &self.remote else {
            return Err(work);
        };
        let sender = &remote.workers[shard_of(work.channel())];
        sender.try_send(work).map_err(|error| match error {
            mpsc::error::TrySendError::Full(work) | mpsc::error::TrySendError::Closed(work) => work,
        })
    }

    // ---- join and leave pushes ----

    /// Tells the channel's protocol subscribers on every node that `info` joined (or left).
    fn announce(self: &Arc<Self>, channel: &str, info: &Arc<ClientInfo>, joined: bool) {
        match &self.engine {
            Engine::Memory(_) => self.push_presence(channel, info, joined),
            Engine::Remote(_) => {
                let (channel, info) = (channel.into(), Arc::clone(info));
                self.chore(if joined {
                    Chore::Join { channel, info }
                } else {
                    Chore::Leave { channel, info }
                });
            }
        }
    }

    /// Queues the join (or leave) push for this node's protocol subscribers of `channel`.
    fn push_presence(&self, channel: &str, info: &ClientInfo, joined: bool) {
        let presence = Some(wire::Presence {
            info: Some(info.body()),
        });
        let mut push = Push {
            channel: channel.to_owned(),
            ..Push::default()
        };
        if joined {
            push.join = presence;
        } else {
            push.leave = presence;
        }
        let reply = Reply::push(push);
        self.hub.push_to_protocol(
            channel,
            &encode_frame(&reply, Encoding::Json),
            &encode_frame(&reply, Encoding::Protobuf),
            &info.client,
        );
        // Pusher subscribers of a `presence-` channel see the member, by user id.
        let name = pusher_wire::pusher_name(channel);
        if name != channel
            && pusher_wire::ChannelKind::of(name) == pusher_wire::ChannelKind::Presence
        {
            let frame = pusher_wire::member_frame(channel, &info.user, info.chan_info(), joined);
            self.hub.push_to_pusher(channel, &frame, &info.client);
        }
    }

    // ---- presence ----

    fn add_presence(self: &Arc<Self>, channel: &str, info: &Arc<ClientInfo>) {
        match &self.engine {
            // In one process nobody else can lose track of it: no expiry.
            Engine::Memory(memory) => memory.add_presence_now(
                channel,
                Arc::clone(info),
                Duration::from_secs(u32::MAX.into()),
            ),
            Engine::Remote(_) => {
                if let Some(remote) = &self.remote {
                    lock(&remote.presence)
                        .insert((channel.into(), info.client.clone()), Arc::clone(info));
                }
                self.chore(Chore::AddPresence {
                    channel: channel.into(),
                    info: Arc::clone(info),
                });
            }
        }
    }

    fn remove_presence(self: &Arc<Self>, channel: &str, client: &str) {
        match &self.engine {
            Engine::Memory(memory) => memory.remove_presence_now(channel, client),
            Engine::Remote(_) => {
                if let Some(remote) = &self.remote {
                    lock(&remote.presence)
                        .remove(&(Box::<str>::from(channel), Box::<str>::from(client)));
                }
                self.chore(Chore::RemovePresence {
                    channel: channel.into(),
                    client: client.into(),
                });
            }
        }
    }

    /// Everyone present in `channel`, on every node.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] when the broker cannot answer.
    pub(crate) async fn presence(
        &self,
        channel: &str,
    ) -> Result<Vec<Arc<ClientInfo>>, ClientError> {
        match &self.engine {
            Engine::Memory(memory) => Ok(memory.presence_now(channel)),
            Engine::Remote(broker) => self
                .call(broker.presence(channel))
                .await
                .map_err(|_| ClientError::Unavailable),
        }
    }

    /// How many clients and distinct users are present in `channel`.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] when the broker cannot answer.
    pub(crate) async fn presence_stats(
        &self,
        channel: &str,
    ) -> Result<(usize, usize), ClientError> {
        match &self.engine {
            Engine::Memory(memory) => memory
                .presence_stats(channel)
                .now_or_never()
                .unwrap_or(Ok((0, 0)))
                .map_err(|_| ClientError::Unavailable),
            Engine::Remote(broker) => self
                .call(broker.presence_stats(channel))
                .await
                .map_err(|_| ClientError::Unavailable),
        }
    }

    /// `presence`, with the result handed to `done`.
    pub(crate) fn presence_then(
        self: &Arc<Self>,
        channel: &str,
        done: impl FnOnce(Result<Vec<Arc<ClientInfo>>, ClientError>) + Send + 'static,
    ) {
        let (node, channel) = (Arc::clone(self), Box::<str>::from(channel));
        self.then(async move { node.presence(&channel).await }, done);
    }

    /// `presence_stats`, with the result handed to `done`.
    pub(crate) fn presence_stats_then(
        self: &Arc<Self>,
        channel: &str,
        done: impl FnOnce(Result<(usize, usize), ClientError>) + Send + 'static,
    ) {
        let (node, channel) = (Arc::clone(self), Box::<str>::from(channel));
        self.then(async move { node.presence_stats(&channel).await }, done);
    }

    // ---- history ----

    /// The stream's position for a subscriber, starting the stream when there is none.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] when the broker cannot answer.
    pub(crate) async fn stream_position(&self, channel: &str) -> Result<Position, ClientError> {
        match &self.engine {
            Engine::Memory(memory) => memory
                .stream_position_now(channel, self.settings.history_unused_ttl)
                .map_err(|full| self.streams_full(full)),
            Engine::Remote(broker) => self
                .call(broker.stream_position(channel, self.remote_unused_ttl()))
                .await
                .map_err(|_| ClientError::Unavailable),
        }
    }

    /// The stream's top for a position check, extending a never-published stream that this
    /// node's subscribers hold an epoch of (see [`Broker::keep_stream`]).
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] when the broker cannot answer.
    pub(crate) async fn keep_stream(&self, channel: &str) -> Result<Position, ClientError> {
        match &self.engine {
            Engine::Memory(memory) => {
                Ok(memory.keep_stream_now(channel, self.settings.history_unused_ttl))
            }
            Engine::Remote(broker) => self
                .call(broker.keep_stream(channel, self.remote_unused_ttl()))
                .await
                .map_err(|_| ClientError::Unavailable),
        }
    }

    /// How long a remote broker keeps a started, never-published stream past the last
    /// extension. The extension rides on the position check (one read of the stream's top
    /// per subscribed channel, which the check makes anyway, so a quiet channel costs no extra
    /// round trip), so the TTL must outlast the gap between two checks, with room for a round
    /// skipped because a worker's queue was full: three intervals at least. Otherwise a
    /// subscriber of a quiet channel would see its epoch vanish and the next publish start a
    /// new one, closing it with 3010 for nothing.
    fn remote_unused_ttl(&self) -> Duration {
        let floor = self.settings.position_check_interval.saturating_mul(3);
        self.settings.history_unused_ttl.max(floor)
    }

    /// `channel`'s kept publications in `range`.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] when the broker cannot answer.
    pub(crate) async fn history(
        &self,
        channel: &str,
        range: &HistoryRange,
    ) -> Result<HistoryPage, ClientError> {
        match &self.engine {
            Engine::Memory(memory) => Ok(memory.history_now(channel, range)),
            Engine::Remote(broker) => self
                .call(broker.history(channel, range))
                .await
                .map_err(|_| ClientError::Unavailable),
        }
    }

    /// `history`, with the result handed to `done`.
    pub(crate) fn history_then(
        self: &Arc<Self>,
        channel: &str,
        range: HistoryRange,
        done: impl FnOnce(Result<HistoryPage, ClientError>) + Send + 'static,
    ) {
        let (node, channel) = (Arc::clone(self), Box::<str>::from(channel));
        self.then(async move { node.history(&channel, &range).await }, done);
    }

    /// Forgets `channel`'s kept publications.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] when the broker cannot answer.
    pub(crate) async fn remove_history(&self, channel: &str) -> Result<(), ClientError> {
        match &self.engine {
            Engine::Memory(memory) => {
                memory.remove_history_now(channel);
                Ok(())
            }
            Engine::Remote(broker) => self
                .call(broker.remove_history(channel))
                .await
                .map_err(|_| ClientError::Unavailable),
        }
    }

    // ---- what the API asks of a user's connections, on every node ----

    /// Carries out `control` on this node's connections, and (remote broker) on every other
    /// node's.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] when the broker cannot carry it to the other nodes; on the
    /// memory broker, a connection's refusal (see [`UserCommand::apply`]). On a remote broker
    /// each node carries it out later and logs a refusal (`server_command_refused`).
    pub(crate) async fn for_user(&self, control: control::UserCommand) -> Result<(), ClientError> {
        match &self.engine {
            Engine::Memory(_) => control.apply(self).map(|_| ()),
            Engine::Remote(broker) => {
                let message = Control::User(control).encode();
                self.call(broker.publish_control(message))
                    .await
                    .map_err(|_| ClientError::Unavailable)
            }
        }
    }

    // ---- what HTTP-streaming and SSE clients post to the emulation endpoint ----

    /// Hands the commands `data` to the session `session` open on the node `node`: here, or
    /// (remote broker) through the control channel to the node that holds it, so no sticky
    /// sessions are needed. An empty `node` means this one.
    ///
    /// # Errors
    /// [`EmulationError::UnknownSession`] when the session is not open here;
    /// [`EmulationError::UnknownNode`] when `node` is neither this node nor a live peer;
    /// [`EmulationError::Busy`] when the session's inbox is full;
    /// [`EmulationError::Unavailable`] when the broker cannot carry it. A session that ended
    /// on another node is found out there, and logged (`emulation_refused`); one that ended here
    /// is this error, which the endpoint answers as accepted (`door::emulation`).
    pub(crate) async fn emulate(
        &self,
        node: &str,
        session: &str,
        data: Bytes,
    ) -> Result<(), EmulationError> {
        if node.is_empty() || node == self.uid {
            return self.emulate_here(session, data);
        }
        let Engine::Remote(broker) = &self.engine else {
            return Err(EmulationError::UnknownNode);
        };
        if !self
            .peers
            .live(self.peer_ttl())
            .iter()
            .any(|peer| peer.uid == node)
        {
            return Err(EmulationError::UnknownNode);
        }
        let message = Control::Emulation {
            to: node.to_owned(),
            session: session.to_owned(),
            data: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &data),
        }
        .encode();
        self.call(broker.publish_control(message))
            .await
            .map_err(|_| EmulationError::Unavailable)
    }

    /// Hands the commands to a session open on this node.
    pub(crate) fn emulate_here(&self, session: &str, data: Bytes) -> Result<(), EmulationError> {
        let conn = self
            .conns
            .session(session)
            .ok_or(EmulationError::UnknownSession)?;
        conn.request(ServerCommand::Emulated(data))
            .map_err(|_| EmulationError::Busy)
    }

    /// Every live node of the cluster (this one first).
    pub(crate) fn nodes(&self) -> Vec<NodeInfo> {
        let mut nodes = vec![self.info()];
        nodes.extend(
            self.peers
                .live(self.peer_ttl())
                .into_iter()
                .filter(|peer| peer.uid != self.uid),
        );
        nodes
    }

    /// This node's own entry in `info`.
    pub(crate) fn info(&self) -> NodeInfo {
        let (mut messages_in, mut bytes_in, mut messages_out, mut bytes_out) = (0, 0, 0, 0);
        for door in crate::kind::Door::ALL {
            let counters = self.metrics.door(door);
            messages_in += counters.messages_in.get();
            bytes_in += counters.bytes_in.get();
            messages_out += counters.messages_out.get();
            bytes_out += counters.bytes_out.get();
        }
        NodeInfo {
            uid: self.uid.clone(),
            name: self.settings.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            num_clients: self.conns.len(),
            num_users: self.conns.users(),
            num_channels: self.hub.channel_count(),
            num_subs: self.hub.subscription_count(),
            uptime: self.uptime_secs(),
            messages_in,
            bytes_in,
            messages_out,
            bytes_out,
        }
    }

    /// Every channel with a subscriber on any node, with its subscriber count, sorted.
    pub(crate) async fn channels(&self) -> Vec<(String, usize)> {
        match &self.engine {
            Engine::Memory(_) => self.hub.channels(),
            Engine::Remote(broker) => {
                let others: Vec<String> = self
                    .peers
                    .live(self.peer_ttl())
                    .into_iter()
                    .map(|peer| peer.uid)
                    .filter(|uid| *uid != self.uid)
                    .collect();
                control::survey_channels(self, broker.as_ref(), &others).await
            }
        }
    }
}

impl Node {
    /// Queues a presence change or a join/leave push (remote broker).
    fn chore(&self, chore: Chore) {
        if let Some(remote) = &self.remote {
            if remote.chores.try_send(chore).is_err() {
                tracing::warn!(event = "presence_failed", "presence and join/leave queue full; a change was dropped (presence heals at the next refresh or expiry)");
            }
        }
    }
}

/// Carries out presence changes and join/leave pushes in order (remote broker).
async fn do_chores(
    node: Arc<Node>,
    mut chores: mpsc::Receiver<Chore>,
    shutdown: CancellationToken,
) {
    let Engine::Remote(broker) = &node.engine else {
        return;
    };
    loop {
        let chore = tokio::select! {
            _ = shutdown.cancelled() => return,
            chore = chores.recv() => chore,
        };
        let Some(chore) = chore else { return };
        let chore = match chore {
            Chore::Pusher(change) => {
                node.settle_pusher(broker, change).await;
                continue;
            }
            chore => chore,
        };
        let (what, channel, done) = match &chore {
            Chore::AddPresence { channel, info } => {
                let ttl = node.settings.presence_ttl;
                (
                    "presence",
                    channel,
                    node.call(broker.add_presence(channel, info, ttl)).await,
                )
            }
            Chore::RemovePresence { channel, client } => (
                "presence",
                channel,
                node.call(broker.remove_presence(channel, client)).await,
            ),
            Chore::Join { channel, info } => (
                "join",
                channel,
                node.call(broker.publish_join(channel, info)).await,
            ),
            Chore::Leave { channel, info } => (
                "leave",
                channel,
                node.call(broker.publish_leave(channel, info)).await,
            ),
            Chore::Pusher(_) => continue,
        };
        if let Err(error) = done {
            if what == "presence" {
                tracing::warn!(event = "presence_failed", channel = %channel, %error, "presence not changed; entries expire after node.presence_ttl, the next refresh re-adds the live ones");
            } else {
                tracing::warn!(event = "join_leave_lost", channel = %channel, push = what, %error, "a join/leave push could not be sent");
            }
        }
    }
}

/// Re-adds this node's presence entries before they expire (remote broker).
async fn refresh_presence_loop(node: Arc<Node>, shutdown: CancellationToken) {
    let (Engine::Remote(broker), Some(remote)) = (&node.engine, &node.remote) else {
        return;
    };
    let every = node.settings.presence_ttl / 3;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let entries: Vec<_> = lock(&remote.presence)
            .iter()
            .map(|((channel, _), info)| (channel.clone(), Arc::clone(info)))
            .collect();
        for (channel, info) in entries {
            let ttl = node.settings.presence_ttl;
            if let Err(error) = node.call(broker.add_presence(&channel, &info, ttl)).await {
                tracing::warn!(event = "presence_refresh_failed", %error, "presence refresh failed; entries may expire");
                break;
            }
        }
    }
}

/// What the broker hands back, routed to the node (weakly: the broker may outlive it).
struct NodeEvents(Weak<Node>);

impl BrokerEvents for NodeEvents {
    fn publication(&self, channel: &str, publication: Arc<Publication>, epoch: &str) {
        let Some(node) = self.0.upgrade() else {
            return;
        };
        if node.remote.is_none() {
            node.fan_out(channel, &publication);
            return;
        }
        let work = Work::Deliver {
            channel: channel.into(),
            publication,
            epoch: epoch.into(),
            received: Instant::now(),
        };
        if node.to_worker(work).is_err() {
            // The gap shows in the next offset (or the next position check), and the
            // channel's subscribers recover.
            node.metrics.broker_dropped.inc();
        }
    }

    fn join(&self, channel: &str, info: Arc<ClientInfo>) {
        if let Some(node) = self.0.upgrade() {
            node.push_presence(channel, &info, true);
        }
    }

    fn leave(&self, channel: &str, info: Arc<ClientInfo>) {
        if let Some(node) = self.0.upgrade() {
            node.push_presence(channel, &info, false);
        }
    }

    fn control(&self, message: Bytes) {
        if let Some(node) = self.0.upgrade() {
            control::handle(&node, &message);
        }
    }

    fn link_lost(&self) {
        if let Some(node) = self.0.upgrade() {
            tracing::warn!(
                event = "broker_link_lost",
                broker = node.broker_name(),
                "broker delivery link lost; publications may be missed until it is back"
            );
        }
    }

    fn link_restored(&self) {
        if let Some(node) = self.0.upgrade() {
            tracing::info!(
                event = "broker_link_restored",
                broker = node.broker_name(),
                "broker delivery link restored; checking every channel's position"
            );
            worker::check_all(&node, true);
        }
    }
}
