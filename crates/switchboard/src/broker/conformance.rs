//! The broker conformance suite: one async function per behaviour the contract in
//! [`super`] promises, each asserting it with a message that names the rule broken, so every
//! engine (memory, Redis, NATS) is held to the same rules by the same code.
//!
//! An engine's test hands the suite an [`Engine`]: something that makes fresh brokers whose
//! state is isolated under a namespace (a key prefix), two brokers of one namespace being two
//! nodes of one cluster. [`run_all`] runs every check in turn; each check is also public, so an
//! engine may run them as separate tests. [`MemoryEngine`] is the memory broker's.
//!
//! Waiting is always bounded: deliveries are awaited on a [`Recorder`] (a log plus a
//! [`Notify`]) under [`tokio::time::timeout`], and expiry is polled every few milliseconds up to
//! a deadline, so a broken engine fails in seconds instead of hanging. Expiry checks use short
//! real TTLs (hundreds of milliseconds) because external brokers expire on their own clock.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::memory::MemoryBroker;
use super::{Broker, BrokerEvents, HistoryRange, Position, PublishOptions};
use crate::publication::{ClientInfo, PayloadKind, Publication};

/// How long a delivery may take before a check fails.
const DELIVERY: Duration = Duration::from_secs(5);
/// How long an expiry may take past its TTL before a check fails.
const EXPIRY: Duration = Duration::from_secs(5);
/// How often expiry is polled.
const POLL: Duration = Duration::from_millis(25);
/// A TTL short enough to wait for.
const SHORT: Duration = Duration::from_millis(300);
/// A TTL no check outlives.
const LONG: Duration = Duration::from_secs(60);

/// What the suite needs from the engine under test.
#[async_trait]
pub trait Engine: Send + Sync {
    /// A new broker, not started. Brokers made with the same `namespace` are nodes of one
    /// cluster (they share streams and presence, and reach each other's events); brokers of
    /// different namespaces share nothing.
    async fn make(&self, namespace: &str) -> Arc<dyn Broker>;

    /// Whether two brokers of one namespace are two nodes of one cluster. When not (memory:
    /// each broker is its own world), the checks that need two nodes use one broker twice.
    fn clustered(&self) -> bool {
        true
    }

    /// Whether a broker delivers only the channels it subscribed to. The memory broker
    /// delivers every channel (the node's hub picks the receivers), so it answers `false` and
    /// the "nothing after unsubscribe" check is skipped.
    fn filters_subscriptions(&self) -> bool {
        true
    }

    /// Runs the housekeeping of engines that expire lazily (the memory broker's
    /// [`MemoryBroker::expire`], which a node runs on a timer); called while polling expiry.
    fn expire(&self) {}
}

/// The memory broker as an [`Engine`]: one broker per namespace, expiry run on demand.
#[derive(Default)]
pub struct MemoryEngine {
    made: Mutex<Vec<Arc<MemoryBroker>>>,
}

#[async_trait]
impl Engine for MemoryEngine {
    async fn make(&self, _namespace: &str) -> Arc<dyn Broker> {
        let broker = Arc::new(MemoryBroker::default());
        lock(&self.made).push(Arc::clone(&broker));
        broker
    }

    fn clustered(&self) -> bool {
        false
    }

    fn filters_subscriptions(&self) -> bool {
        false
    }

    fn expire(&self) {
        for broker in lock(&self.made).iter() {
            broker.expire();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A check that panicked holding the log leaves it readable for the next assertion.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One thing a broker handed to its node.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// [`BrokerEvents::publication`].
    Publication {
        /// The channel.
        channel: String,
        /// The publication's offset (0: no history).
        offset: u64,
        /// The stream's epoch.
        epoch: String,
        /// The payload's kind.
        kind: PayloadKind,
        /// The payload.
        data: Bytes,
        /// The publisher.
        info: Option<ClientInfo>,
    },
    /// [`BrokerEvents::join`].
    Join {
        /// The channel.
        channel: String,
        /// Who joined.
        info: ClientInfo,
    },
    /// [`BrokerEvents::leave`].
    Leave {
        /// The channel.
        channel: String,
        /// Who left.
        info: ClientInfo,
    },
    /// [`BrokerEvents::control`].
    Control(Bytes),
    /// [`BrokerEvents::link_lost`].
    LinkLost,
    /// [`BrokerEvents::link_restored`].
    LinkRestored,
}

/// A [`BrokerEvents`] that records everything, for checks to wait on.
#[derive(Default)]
pub struct Recorder {
    log: Mutex<Vec<Event>>,
    changed: Notify,
}

impl Recorder {
    /// A new, empty recorder.
    pub fn new() -> Arc<Self> {
        Arc::new(Recorder::default())
    }

    fn push(&self, event: Event) {
        lock(&self.log).push(event);
        self.changed.notify_waiters();
    }

    /// Everything recorded so far.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.log).clone()
    }

    /// Forgets everything recorded so far.
    pub fn clear(&self) {
        lock(&self.log).clear();
    }

    /// Waits until `done` holds for the log, up to `within`.
    ///
    /// # Panics
    /// When `done` still does not hold after `within`, naming `what` and showing the log.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[Event]) -> bool,
    ) -> Vec<Event> {
        let deadline = Instant::now() + within;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a push between the check and the wait wakes us.
            notified.as_mut().enable();
            {
                let log = lock(&self.log);
                if done(&log) {
                    return log.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let log = self.events();
                assert!(
                    done(&log),
                    "{what}: not seen within {within:?}; log: {log:?}"
                );
                return log;
            }
        }
    }

    /// The publications of `channel` recorded so far, as (offset, epoch, data).
    pub fn publications(&self, channel: &str) -> Vec<(u64, String, Bytes)> {
        publications_in(&self.events(), channel)
    }

    /// Waits until `count` publications of `channel` are recorded, and returns them.
    ///
    /// # Panics
    /// When fewer arrive within the delivery bound.
    pub async fn wait_publications(
        &self,
        channel: &str,
        count: usize,
    ) -> Vec<(u64, String, Bytes)> {
        let what = format!("{count} publications on {channel:?}");
        let log = self
            .wait_until(&what, DELIVERY, |log| {
                publications_in(log, channel).len() >= count
            })
            .await;
        publications_in(&log, channel)
    }

    /// Waits until the control message `message` is recorded.
    ///
    /// # Panics
    /// When it does not arrive within the delivery bound.
    pub async fn wait_control(&self, message: &Bytes) {
        let what = format!("control message {message:?}");
        self.wait_until(&what, DELIVERY, |log| {
            log.iter()
                .any(|e| matches!(e, Event::Control(m) if m == message))
        })
        .await;
    }

    /// How many times `event` was recorded.
    pub fn count(&self, event: &Event) -> usize {
        lock(&self.log).iter().filter(|e| *e == event).count()
    }
}

fn publications_in(log: &[Event], channel: &str) -> Vec<(u64, String, Bytes)> {
    log.iter()
        .filter_map(|e| match e {
            Event::Publication {
                channel: c,
                offset,
                epoch,
                data,
                ..
            } if c == channel => Some((*offset, epoch.clone(), data.clone())),
            _ => None,
        })
        .collect()
}

impl BrokerEvents for Recorder {
    fn publication(&self, channel: &str, publication: Arc<Publication>, epoch: &str) {
        let (kind, data) = publication.payload();
        self.push(Event::Publication {
            channel: channel.to_owned(),
            offset: publication.offset,
            epoch: epoch.to_owned(),
            kind,
            data: data.clone(),
            info: publication.info.as_deref().cloned(),
        });
    }

    fn join(&self, channel: &str, info: Arc<ClientInfo>) {
        self.push(Event::Join {
            channel: channel.to_owned(),
            info: (*info).clone(),
        });
    }

    fn leave(&self, channel: &str, info: Arc<ClientInfo>) {
        self.push(Event::Leave {
            channel: channel.to_owned(),
            info: (*info).clone(),
        });
    }

    fn control(&self, message: Bytes) {
        self.push(Event::Control(message));
    }

    fn link_lost(&self) {
        self.push(Event::LinkLost);
    }

    fn link_restored(&self) {
        self.push(Event::LinkRestored);
    }
}

/// A namespace no other check uses.
pub fn namespace(check: &str) -> String {
    format!("conf-{check}-{:08x}", fastrand::u32(..))
}

/// A started broker with its recorder.
pub struct Node {
    /// The broker.
    pub broker: Arc<dyn Broker>,
    /// What it delivered.
    pub events: Arc<Recorder>,
}

impl Node {
    /// Makes a broker in `namespace` and starts it with a new [`Recorder`].
    ///
    /// # Panics
    /// When the broker does not start.
    pub async fn start(engine: &dyn Engine, namespace: &str) -> Node {
        let broker = engine.make(namespace).await;
        let events = Recorder::new();
        let handed: Arc<dyn BrokerEvents> = Arc::clone(&events) as Arc<dyn BrokerEvents>;
        broker
            .start(handed)
            .await
            .unwrap_or_else(|e| panic!("start {}: {e}", broker.name()));
        Node { broker, events }
    }

    /// Subscribes to every channel in `channels`.
    ///
    /// # Panics
    /// When a subscribe fails.
    pub async fn subscribe(&self, channels: &[&str]) {
        for channel in channels {
            self.broker
                .subscribe(channel)
                .await
                .unwrap_or_else(|e| panic!("subscribe {channel:?}: {e}"));
        }
    }

    /// Publishes `data` (JSON) to `channel`.
    ///
    /// # Panics
    /// When the publish fails.
    pub async fn publish(
        &self,
        channel: &str,
        data: &str,
        options: &PublishOptions,
    ) -> Option<Position> {
        let publication =
            Publication::from_payload(PayloadKind::Json, Bytes::from(data.to_owned()));
        self.broker
            .publish(channel, &publication, options)
            .await
            .unwrap_or_else(|e| panic!("publish to {channel:?}: {e}"))
    }

    /// Reads `channel`'s history in `range` as (offsets, position).
    ///
    /// # Panics
    /// When the read fails.
    pub async fn history(&self, channel: &str, range: HistoryRange) -> (Vec<u64>, Position) {
        let page = self
            .broker
            .history(channel, &range)
            .await
            .unwrap_or_else(|e| panic!("history of {channel:?}: {e}"));
        (
            page.publications.iter().map(|p| p.offset).collect(),
            page.position,
        )
    }

    /// Stops the broker.
    pub async fn stop(self) {
        self.broker.stop().await;
    }
}

/// Two nodes of one cluster in a new namespace (one node twice when the engine is not
/// clustered).
async fn two_nodes(engine: &dyn Engine, check: &str) -> (Node, Node) {
    let ns = namespace(check);
    let a = Node::start(engine, &ns).await;
    let b = if engine.clustered() {
        Node::start(engine, &ns).await
    } else {
        Node {
            broker: Arc::clone(&a.broker),
            events: Arc::clone(&a.events),
        }
    };
    (a, b)
}

async fn stop_both(engine: &dyn Engine, a: Node, b: Node) {
    if engine.clustered() {
        b.stop().await;
    }
    a.stop().await;
}

/// History kept `size` deep for a minute, its position for a minute.
pub fn keep(size: usize) -> PublishOptions {
    PublishOptions {
        history_size: size,
        history_ttl: LONG,
        history_meta_ttl: LONG,
        idempotency_key: None,
        idempotency_ttl: LONG,
        key_ttl: Duration::ZERO,
    }
}

/// Polls `probe` until it returns `Some`, up to `within`, running the engine's expiry
/// between tries.
///
/// # Panics
/// When `probe` gives nothing within `within`, naming `what`.
pub async fn eventually<T, F, Fut>(engine: &dyn Engine, what: &str, within: Duration, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        engine.expire();
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Runs every check, each in its own namespace.
///
/// # Panics
/// At the first broken rule, naming it.
pub async fn run_all(engine: &dyn Engine) {
    publications_reach_subscribers(engine).await;
    no_delivery_after_unsubscribe(engine).await;
    offsets_start_at_one(engine).await;
    concurrent_publishes_from_two_nodes_get_distinct_offsets_in_one_order(engine).await;
    history_keeps_size_and_ttl(engine).await;
    meta_ttl_expiry_starts_a_new_epoch(engine).await;
    reading_an_unknown_channel_creates_nothing(engine).await;
    a_subscriber_starts_a_stream_that_publishes_continue(engine).await;
    a_started_stream_nobody_publishes_to_expires_after_its_ttl(engine).await;
    keep_stream_keeps_a_started_stream_alive(engine).await;
    a_published_stream_keeps_its_meta_ttl(engine).await;
    history_ranges(engine).await;
    remove_history_keeps_the_position(engine).await;
    idempotent_publish_applies_once(engine).await;
    presence_add_remove_stats(engine).await;
    presence_expires_and_re_add_refreshes(engine).await;
    join_leave_and_control_reach_every_node(engine).await;
    channels_without_history_get_no_offset(engine).await;
}

/// A publication reaches every subscribed node's [`BrokerEvents::publication`] with its payload,
/// kind, publisher, offset and epoch.
pub async fn publications_reach_subscribers(engine: &dyn Engine) {
    let (a, b) = two_nodes(engine, "deliver").await;
    a.subscribe(&["chat"]).await;
    b.subscribe(&["chat"]).await;
    let info = ClientInfo::from_parts("c1", "u1", Bytes::from_static(b"{\"n\":1}"), Bytes::new());
    let publication = Publication::from_payload(PayloadKind::Binary, Bytes::from_static(&[0, 255]))
        .positioned(0, Some(Arc::new(info.clone())));
    let position = b
        .broker
        .publish("chat", &publication, &keep(10))
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"))
        .unwrap_or_else(|| panic!("a channel with history must return a position"));
    for node in [&a, &b] {
        let log = node
            .events
            .wait_until("the publication", DELIVERY, |log| {
                !publications_in(log, "chat").is_empty()
            })
            .await;
        let delivered = log
            .iter()
            .find(|e| matches!(e, Event::Publication { .. }))
            .cloned();
        assert_eq!(
            delivered,
            Some(Event::Publication {
                channel: "chat".to_owned(),
                offset: position.offset,
                epoch: position.epoch.to_string(),
                kind: PayloadKind::Binary,
                data: Bytes::from_static(&[0, 255]),
                info: Some(info.clone()),
            }),
            "the delivered publication must carry the payload, its kind, the publisher, and the \
             offset and epoch that publish returned"
        );
    }
    stop_both(engine, a, b).await;
}

/// After [`Broker::unsubscribe`], a node receives nothing more from that channel.
pub async fn no_delivery_after_unsubscribe(engine: &dyn Engine) {
    if !engine.filters_subscriptions() {
        return;
    }
    let node = Node::start(engine, &namespace("unsubscribe")).await;
    node.subscribe(&["gone"]).await;
    node.publish("gone", "1", &keep(10)).await;
    node.events.wait_publications("gone", 1).await;
    node.broker
        .unsubscribe("gone")
        .await
        .unwrap_or_else(|e| panic!("unsubscribe: {e}"));
    node.publish("gone", "2", &keep(10)).await;
    node.publish("gone", "3", &PublishOptions::default()).await;
    // The control message is published after them, so once it is back they would be too.
    let fence = Bytes::from_static(b"fence-after-unsubscribe");
    node.broker
        .publish_control(fence.clone())
        .await
        .unwrap_or_else(|e| panic!("publish_control: {e}"));
    node.events.wait_control(&fence).await;
    assert_eq!(
        node.events.publications("gone").len(),
        1,
        "nothing may be delivered after unsubscribe"
    );
    node.stop().await;
}

/// Offsets start at 1 and grow by one under one epoch; delivery carries the same ones.
pub async fn offsets_start_at_one(engine: &dyn Engine) {
    let node = Node::start(engine, &namespace("offsets")).await;
    node.subscribe(&["count"]).await;
    let mut epoch = None;
    for expected in 1..=5u64 {
        let position = node
            .publish("count", &expected.to_string(), &keep(10))
            .await
            .unwrap_or_else(|| panic!("a channel with history must return a position"));
        assert_eq!(
            position.offset, expected,
            "offsets start at 1 and never skip"
        );
        assert!(!position.epoch.is_empty(), "a stream has a non-empty epoch");
        let epoch = epoch.get_or_insert_with(|| position.epoch.clone());
        assert_eq!(
            &position.epoch, epoch,
            "the epoch stays while the stream lives"
        );
    }
    let delivered = node.events.wait_publications("count", 5).await;
    let offsets: Vec<u64> = delivered.iter().map(|(o, _, _)| *o).collect();
    assert_eq!(
        offsets,
        [1, 2, 3, 4, 5],
        "delivered in offset order, once each"
    );
    node.stop().await;
}

/// Two nodes publishing to one channel at once never get one offset twice nor skip one, and
/// every subscriber sees the publications in one order: the offsets' order.
pub async fn concurrent_publishes_from_two_nodes_get_distinct_offsets_in_one_order(
    engine: &dyn Engine,
) {
    const EACH: u64 = 50;
    let (a, b) = two_nodes(engine, "race").await;
    a.subscribe(&["race"]).await;
    b.subscribe(&["race"]).await;
    let run = |node: &Node, name: &'static str| {
        let broker = Arc::clone(&node.broker);
        tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..EACH {
                let publication =
                    Publication::from_payload(PayloadKind::Text, Bytes::from(format!("{name}{i}")));
                let position = broker
                    .publish("race", &publication, &keep(1000))
                    .await
                    .unwrap_or_else(|e| panic!("publish from {name}: {e}"));
                offsets.push(position.map_or(0, |p| p.offset));
            }
            offsets
        })
    };
    let from_a = run(&a, "a");
    let from_b = run(&b, "b");
    let (from_a, from_b) = (from_a.await, from_b.await);
    let (Ok(from_a), Ok(from_b)) = (from_a, from_b) else {
        panic!("a publishing task panicked");
    };
    let mut all: Vec<u64> = from_a.iter().chain(&from_b).copied().collect();
    all.sort_unstable();
    let expected: Vec<u64> = (1..=2 * EACH).collect();
    assert_eq!(
        all, expected,
        "concurrent publishes: every offset once, none skipped"
    );
    let seen_a = a
        .events
        .wait_publications("race", (2 * EACH) as usize)
        .await;
    let seen_b = b
        .events
        .wait_publications("race", (2 * EACH) as usize)
        .await;
    let offsets =
        |seen: &[(u64, String, Bytes)]| seen.iter().map(|(o, _, _)| *o).collect::<Vec<_>>();
    assert_eq!(
        offsets(&seen_a),
        expected,
        "node a: delivered in offset order, once each"
    );
    assert_eq!(seen_a, seen_b, "every node sees one order");
    stop_both(engine, a, b).await;
}

/// History keeps at most `history_size` publications, each for `history_ttl`; the position
/// outlives them.
pub async fn history_keeps_size_and_ttl(engine: &dyn Engine) {
    let node = Node::start(engine, &namespace("size-ttl")).await;
    for i in 1..=5 {
        node.publish("sized", &i.to_string(), &keep(3)).await;
    }
    let (offsets, position) = node.history("sized", HistoryRange::default()).await;
    assert_eq!(
        offsets,
        [3, 4, 5],
        "history keeps the last history_size publications"
    );
    assert_eq!(position.offset, 5);

    let short = PublishOptions {
        history_ttl: SHORT,
        ..keep(10)
    };
    let first = node
        .publish("short", "1", &short)
        .await
        .unwrap_or_else(|| panic!("a position"));
    let (offsets, _) = node.history("short", HistoryRange::default()).await;
    assert_eq!(offsets, [1], "kept before its ttl");
    let position = eventually(
        engine,
        "publications expire after history_ttl",
        EXPIRY,
        || async {
            let (offsets, position) = node.history("short", HistoryRange::default()).await;
            offsets.is_empty().then_some(position)
        },
    )
    .await;
    assert_eq!(
        position, first,
        "the position outlives expired publications"
    );
    node.stop().await;
}

/// Once `history_meta_ttl` passes with nothing published, the stream is gone (offset 0, empty
/// epoch), and the next publish starts a new epoch at offset 1.
pub async fn meta_ttl_expiry_starts_a_new_epoch(engine: &dyn Engine) {
    let node = Node::start(engine, &namespace("meta-ttl")).await;
    let options = PublishOptions {
        history_ttl: Duration::from_millis(100),
        history_meta_ttl: SHORT,
        ..keep(10)
    };
    node.publish("meta", "1", &options).await;
    let old = node
        .publish("meta", "2", &options)
        .await
        .unwrap_or_else(|| panic!("a position"));
    assert_eq!(old.offset, 2);
    eventually(
        engine,
        "the stream expires after history_meta_ttl",
        EXPIRY,
        || async {
            let (offsets, position) = node.history("meta", HistoryRange::default()).await;
            (position.offset == 0).then(|| {
                assert!(
                    offsets.is_empty(),
                    "an expired stream keeps no publications"
                );
                assert_eq!(&*position.epoch, "", "an expired stream has an empty epoch");
            })
        },
    )
    .await;
    let new = node
        .publish("meta", "3", &options)
        .await
        .unwrap_or_else(|| panic!("a position"));
    assert_eq!(new.offset, 1, "a new stream starts at offset 1");
    assert_ne!(new.epoch, old.epoch, "a new stream has a new epoch");
    assert!(!new.epoch.is_empty());
    node.stop().await;
}

/// Reading a channel that was never published gives offset 0 and an empty epoch, and creates
/// no stream: reading again says the same, and presence reads create nothing either.
pub async fn reading_an_unknown_channel_creates_nothing(engine: &dyn Engine) {
    let node = Node::start(engine, &namespace("unknown")).await;
    let range = HistoryRange {
        since: Some(3),
        limit: Some(10),
        reverse: false,
    };
    for _ in 0..2 {
        let (offsets, position) = node.history("never", range.clone()).await;
        assert!(offsets.is_empty());
        assert_eq!(
            position,
            Position {
                offset: 0,
                epoch: "".into()
            },
            "a channel with no stream: offset 0, empty epoch"
        );
    }
    let present = node
        .broker
        .presence("never")
        .await
        .unwrap_or_else(|e| panic!("presence: {e}"));
    assert!(present.is_empty());
    let first = node
        .publish("never", "1", &keep(10))
        .await
        .unwrap_or_else(|| panic!("a position"));
    assert_eq!(
        first.offset, 1,
        "reads created nothing: the first publish is offset 1"
    );
    node.stop().await;
}

/// [`Broker::stream_position`] starts a stream (an epoch at offset 0) when there is none, the
/// same epoch on every node and on a second call, and publishes continue it from offset 1.
pub async fn a_subscriber_starts_a_stream_that_publishes_continue(engine: &dyn Engine) {
    let (a, b) = two_nodes(engine, "start").await;
    let started = a
        .broker
        .stream_position("s", LONG)
        .await
        .unwrap_or_else(|e| panic!("stream_position: {e}"));
    assert_eq!(started.offset, 0, "a new stream is at offset 0");
    assert!(!started.epoch.is_empty(), "a started stream has an epoch");
    let again = b
        .broker
        .stream_position("s", LONG)
        .await
        .unwrap_or_else(|e| panic!("stream_position: {e}"));
    assert_eq!(again, started, "every node finds the same stream");
    let (_, read) = a.history("s", HistoryRange::default()).await;
    assert_eq!(read, started, "history reads the started stream");
    let first = b
        .publish("s", "1", &keep(10))
        .await
        .unwrap_or_else(|| panic!("a position"));
    assert_eq!(
        first,
        Position {
            offset: 1,
            epoch: started.epoch.clone()
        },
        "the first publish continues the started stream under its epoch"
    );
    stop_both(engine, a, b).await;
}

/// Waits `SHORT` three times over, running the engine's expiry, then reads `channel`'s
/// position: what a stream that should have outlived `SHORT` must still say.
async fn position_after_short_ttl(engine: &dyn Engine, node: &Node, channel: &str) -> Position {
    tokio::time::sleep(SHORT * 3).await;
    engine.expire();
    node.history(channel, HistoryRange::default()).await.1
}

/// A stream that [`Broker::stream_position`] started with a short TTL and that nobody
/// publishes to is gone after it (offset 0, empty epoch: a subscribe to a made-up name leaves
/// nothing lasting), and the next `stream_position` starts another under a new epoch.
pub async fn a_started_stream_nobody_publishes_to_expires_after_its_ttl(engine: &dyn Engine) {
    let node = Node::start(engine, &namespace("unused-ttl")).await;
    let started = node
        .broker
        .stream_position("idle", SHORT)
        .await
        .unwrap_or_else(|e| panic!("stream_position: {e}"));
    assert!(!started.epoch.is_empty(), "a started stream has an epoch");
    eventually(
        engine,
        "a started stream nobody published to expires after its ttl",
        EXPIRY,
        || async {
            let (_, position) = node.history("idle", HistoryRange::default()).await;
            (position.epoch.is_empty()).then(|| {
                assert_eq!(position.offset, 0, "an expired stream is at offset 0");
            })
        },
    )
    .await;
    let again = node
        .broker
        .stream_position("idle", SHORT)
        .await
        .unwrap_or_else(|e| panic!("stream_position: {e}"));
    assert_eq!(again.offset, 0);
    assert_ne!(again.epoch, started.epoch, "a new stream has a new epoch");
    node.stop().await;
}

/// [`Broker::keep_stream`] extends a started stream past the TTL it was started with (what a
/// node with subscribers to a quiet channel does), returns its position, and starts nothing
/// for a channel with no stream.
pub async fn keep_stream_keeps_a_started_stream_alive(engine: &dyn Engine) {
    let node = Node::start(engine, &namespace("keep")).await;
    let started = node
        .broker
        .stream_position("quiet", SHORT)
        .await
        .unwrap_or_else(|e| panic!("stream_position: {e}"));
    let kept = node
        .broker
        .keep_stream("quiet", LONG)
        .await
        .unwrap_or_else(|e| panic!("keep_stream: {e}"));
    assert_eq!(kept, started, "keep_stream gives the stream's position");
    assert_eq!(
        position_after_short_ttl(engine, &node, "quiet").await,
        started,
        "a kept stream outlives the ttl it was started with"
    );
    let none = node
        .broker
        .keep_stream("never", LONG)
        .await
        .unwrap_or_else(|e| panic!("keep_stream: {e}"));
    assert_eq!(
        none,
        Position {
            offset: 0,
            epoch: "".into()
        },
        "keep_stream starts nothing"
    );
    let (_, read) = node.history("never", HistoryRange::default()).await;
    assert!(read.epoch.is_empty(), "keep_stream starts nothing");
    node.stop().await;
}

/// A publish to a stream started with a short TTL gives it the publication's long
/// `history_meta_ttl`, and neither a later `stream_position` nor `keep_stream` with a short TTL
/// shortens that.
pub async fn a_published_stream_keeps_its_meta_ttl(engine: &dyn Engine) {
    let node = Node::start(engine, &namespace("published-ttl")).await;
    let started = node
        .broker
        .stream_position("busy", SHORT)
        .await
        .unwrap_or_else(|e| panic!("stream_position: {e}"));
    let first = node
        .publish("busy", "1", &keep(10))
        .await
        .unwrap_or_else(|| panic!("a position"));
    assert_eq!(first.epoch, started.epoch);
    for call in 0..2 {
        let found = if call == 0 {
            node.broker.stream_position("busy", SHORT).await
        } else {
            node.broker.keep_stream("busy", SHORT).await
        };
        assert_eq!(found.unwrap_or_else(|e| panic!("{e}")), first);
    }
    assert_eq!(
        position_after_short_ttl(engine, &node, "busy").await,
        first,
        "a published stream lives its meta ttl, never shortened by a short one"
    );
    let (offsets, _) = node.history("busy", HistoryRange::default()).await;
    assert_eq!(offsets, vec![1], "its publications are kept");
    node.stop().await;
}

/// `since`, `limit` and `reverse` pick the documented slice.
pub async fn history_ranges(engine: &dyn Engine) {
    let node = Node::start(engine, &namespace("ranges")).await;
    for i in 1..=5 {
        node.publish("r", &i.to_string(), &keep(10)).await;
    }
    let range = |since: Option<u64>, limit: Option<usize>, reverse: bool| HistoryRange {
        since,
        limit,
        reverse,
    };
    let cases: [(HistoryRange, &[u64]); 9] = [
        (range(None, None, false), &[1, 2, 3, 4, 5]),
        (range(Some(2), None, false), &[3, 4, 5]),
        (range(None, Some(2), false), &[1, 2]),
        (range(Some(1), Some(2), false), &[2, 3]),
        (range(None, None, true), &[5, 4, 3, 2, 1]),
        (range(None, Some(2), true), &[5, 4]),
        (range(Some(4), Some(2), true), &[3, 2]),
        (range(Some(5), None, false), &[]),
        (range(None, Some(0), false), &[]),
    ];
    for (range, expected) in cases {
        let (offsets, position) = node.history("r", range.clone()).await;
        assert_eq!(offsets, expected, "history {range:?}");
        assert_eq!(position.offset, 5, "history {range:?}: the position");
    }
    let page = node
        .broker
        .history("r", &range(Some(3), Some(1), false))
        .await
        .unwrap_or_else(|e| panic!("history: {e}"));
    let data = page.publications.first().map(|p| p.payload().1.clone());
    assert_eq!(
        data,
        Some(Bytes::from_static(b"4")),
        "history keeps the payload"
    );
    node.stop().await;
}

/// [`Broker::remove_history`] forgets publications but not the position.
pub async fn remove_history_keeps_the_position(engine: &dyn Engine) {
    let node = Node::start(engine, &namespace("remove")).await;
    let mut last = None;
    for i in 1..=3 {
        last = node.publish("rm", &i.to_string(), &keep(10)).await;
    }
    let last = last.unwrap_or_else(|| panic!("a position"));
    node.broker
        .remove_history("rm")
        .await
        .unwrap_or_else(|e| panic!("remove_history: {e}"));
    let (offsets, position) = node.history("rm", HistoryRange::default()).await;
    assert!(
        offsets.is_empty(),
        "remove_history forgets the publications"
    );
    assert_eq!(position, last, "remove_history keeps the position");
    let next = node
        .publish("rm", "4", &keep(10))
        .await
        .unwrap_or_else(|| panic!("a position"));
    assert_eq!(next.offset, 4, "offsets go on after remove_history");
    assert_eq!(
        next.epoch, last.epoch,
        "the epoch stays after remove_history"
    );
    node.stop().await;
}

/// A publish repeating an idempotency key is not applied again and returns the first result.
pub async fn idempotent_publish_applies_once(engine: &dyn Engine) {
    let node = Node::start(engine, &namespace("idempotency")).await;
    node.subscribe(&["once"]).await;
    let with_key = |key: &str| PublishOptions {
        idempotency_key: Some(key.into()),
        ..keep(10)
    };
    let first = node.publish("once", "1", &with_key("k1")).await;
    let again = node.publish("once", "1-again", &with_key("k1")).await;
    assert_eq!(first.as_ref().map(|p| p.offset), Some(1));
    assert_eq!(
        again, first,
        "a repeated key returns the first publish's position"
    );
    let other = node.publish("once", "2", &with_key("k2")).await;
    assert_eq!(other.map(|p| p.offset), Some(2), "another key is applied");
    let (offsets, _) = node.history("once", HistoryRange::default()).await;
    assert_eq!(offsets, [1, 2], "a repeated key stores nothing");
    let delivered = node.events.wait_publications("once", 2).await;
    let fence = Bytes::from_static(b"fence-idempotency");
    node.broker
        .publish_control(fence.clone())
        .await
        .unwrap_or_else(|e| panic!("publish_control: {e}"));
    node.events.wait_control(&fence).await;
    let delivered_now = node.events.publications("once");
    assert_eq!(delivered_now, delivered, "a repeated key delivers nothing");
    let data: Vec<&[u8]> = delivered.iter().map(|(_, _, d)| &d[..]).collect();
    assert_eq!(data, [&b"1"[..], &b"2"[..]]);
    node.stop().await;
}

fn client(client: &str, user: &str) -> ClientInfo {
    ClientInfo::from_parts(client, user, Bytes::from_static(b"{\"x\":1}"), Bytes::new())
}

async fn present(node: &Node, channel: &str) -> Vec<ClientInfo> {
    let mut found: Vec<ClientInfo> = node
        .broker
        .presence(channel)
        .await
        .unwrap_or_else(|e| panic!("presence of {channel:?}: {e}"))
        .iter()
        .map(|info| (**info).clone())
        .collect();
    found.sort_by(|x, y| x.client.cmp(&y.client));
    found
}

/// Presence: added entries are listed with their info (from every node), removed ones are
/// not, and the stats count clients and distinct users.
pub async fn presence_add_remove_stats(engine: &dyn Engine) {
    let (a, b) = two_nodes(engine, "presence").await;
    let (c1, c2, c3) = (client("c1", "u1"), client("c2", "u1"), client("c3", "u2"));
    for (node, info) in [(&a, &c1), (&b, &c2), (&a, &c3)] {
        node.broker
            .add_presence("room", info, LONG)
            .await
            .unwrap_or_else(|e| panic!("add_presence: {e}"));
    }
    assert_eq!(
        present(&b, "room").await,
        [c1.clone(), c2.clone(), c3.clone()]
    );
    let stats = a
        .broker
        .presence_stats("room")
        .await
        .unwrap_or_else(|e| panic!("presence_stats: {e}"));
    assert_eq!(stats, (3, 2), "presence_stats: clients and distinct users");
    b.broker
        .remove_presence("room", "c2")
        .await
        .unwrap_or_else(|e| panic!("remove_presence: {e}"));
    assert_eq!(
        present(&a, "room").await,
        [c1, c3],
        "a removed client is gone"
    );
    let stats = b
        .broker
        .presence_stats("room")
        .await
        .unwrap_or_else(|e| panic!("presence_stats: {e}"));
    assert_eq!(stats, (2, 2));
    stop_both(engine, a, b).await;
}

/// A presence entry expires after its TTL; adding it again before that refreshes it (and
/// replaces its info).
pub async fn presence_expires_and_re_add_refreshes(engine: &dyn Engine) {
    let node = Node::start(engine, &namespace("presence-ttl")).await;
    let add = |info: ClientInfo, ttl: Duration| {
        let broker = Arc::clone(&node.broker);
        async move {
            broker
                .add_presence("ttl", &info, ttl)
                .await
                .unwrap_or_else(|e| panic!("add_presence: {e}"));
        }
    };
    add(client("short", "u1"), SHORT).await;
    add(client("refreshed", "u2"), SHORT).await;
    let refreshed =
        ClientInfo::from_parts("refreshed", "u2", Bytes::from_static(b"2"), Bytes::new());
    add(refreshed.clone(), LONG).await;
    eventually(
        engine,
        "a presence entry expires after its ttl",
        EXPIRY,
        || async {
            let now = present(&node, "ttl").await;
            now.iter()
                .all(|info| &*info.client != "short")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        present(&node, "ttl").await,
        [refreshed],
        "re-adding refreshes the entry and replaces its info"
    );
    node.stop().await;
}

/// Join, leave and control messages reach every node (the sender's too).
pub async fn join_leave_and_control_reach_every_node(engine: &dyn Engine) {
    let (a, b) = two_nodes(engine, "join-leave").await;
    a.subscribe(&["lobby"]).await;
    b.subscribe(&["lobby"]).await;
    let info = client("c9", "u9");
    a.broker
        .publish_join("lobby", &info)
        .await
        .unwrap_or_else(|e| panic!("publish_join: {e}"));
    b.broker
        .publish_leave("lobby", &info)
        .await
        .unwrap_or_else(|e| panic!("publish_leave: {e}"));
    let message = Bytes::from_static(b"control: hello nodes");
    b.broker
        .publish_control(message.clone())
        .await
        .unwrap_or_else(|e| panic!("publish_control: {e}"));
    let join = Event::Join {
        channel: "lobby".to_owned(),
        info: info.clone(),
    };
    let leave = Event::Leave {
        channel: "lobby".to_owned(),
        info,
    };
    for node in [&a, &b] {
        node.events
            .wait_until("join, leave and control", DELIVERY, |log| {
                log.contains(&join)
                    && log.contains(&leave)
                    && log.contains(&Event::Control(message.clone()))
            })
            .await;
    }
    if engine.clustered() {
        for node in [&a, &b] {
            assert_eq!(
                node.events.count(&join),
                1,
                "one join delivered once per node"
            );
        }
    }
    stop_both(engine, a, b).await;
}

/// A channel that keeps no history (`history_size` 0) is delivered with offset 0 and an empty
/// epoch, publish returns no position, and no stream is made.
pub async fn channels_without_history_get_no_offset(engine: &dyn Engine) {
    let node = Node::start(engine, &namespace("no-history")).await;
    node.subscribe(&["live"]).await;
    let none = PublishOptions {
        history_size: 0,
        ..keep(0)
    };
    for i in 1..=2 {
        let position = node.publish("live", &i.to_string(), &none).await;
        assert_eq!(position, None, "no history, no position");
    }
    let delivered = node.events.wait_publications("live", 2).await;
    let delivered: Vec<(u64, &str)> = delivered.iter().map(|(o, e, _)| (*o, e.as_str())).collect();
    assert_eq!(
        delivered,
        [(0, ""), (0, "")],
        "no history: offset 0, empty epoch"
    );
    let (offsets, position) = node.history("live", HistoryRange::default()).await;
    assert!(offsets.is_empty());
    assert_eq!(position.offset, 0, "no history: no stream");
    assert_eq!(&*position.epoch, "");
    node.stop().await;
}
