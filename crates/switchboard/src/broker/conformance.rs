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
        /// A map channel's key (`None` on a stream channel).
        key: Option<String>,
        /// It removed `key` from the map.
        removed: bool,
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
            key: publication.key.as_deref().map(str::to_owned),
            removed: publication.removed,
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
    keyed_publications_change_the_map_and_pages_walk_it_in_key_order(engine).await;
    a_state_page_and_the_stream_after_its_position_give_the_map(engine).await;
    an_expired_key_is_removed_once_for_every_node(engine).await;
    concurrent_keyed_publishes_from_two_nodes_leave_the_map_its_stream_says(engine).await;
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
                key: None,
                removed: false,
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

/// The map changes `channel`'s deliveries on `node` carried, as (offset, key, removed).
fn map_changes(log: &[Event], channel: &str) -> Vec<(u64, String, bool)> {
    log.iter()
        .filter_map(|e| match e {
            Event::Publication {
                channel: c,
                offset,
                key: Some(key),
                removed,
                ..
            } if c == channel => Some((*offset, key.clone(), *removed)),
            _ => None,
        })
        .collect()
}

/// Sets `key` to `value` (JSON) in map channel `channel`, or with `value` `None` removes it.
async fn set_key(
    node: &Node,
    channel: &str,
    key: &str,
    value: Option<&str>,
    options: &PublishOptions,
) -> Position {
    let publication = match value {
        Some(value) => Publication::json(Bytes::from(value.to_owned())).keyed(key),
        None => Publication::removal(key),
    };
    node.broker
        .publish(channel, &publication, options)
        .await
        .unwrap_or_else(|e| panic!("keyed publish to {channel:?}: {e}"))
        .unwrap_or_else(|| panic!("a map channel keeps history: publish returns a position"))
}

/// A page of `channel`'s map as ((key, offset, data) entries, cursor, position).
async fn state_page(
    node: &Node,
    channel: &str,
    after: &str,
    limit: usize,
) -> (Vec<(String, u64, Bytes)>, Option<String>, Position) {
    let page = node
        .broker
        .map_state(channel, after, limit, LONG)
        .await
        .unwrap_or_else(|e| panic!("map state of {channel:?}: {e}"));
    let entries = page
        .entries
        .iter()
        .map(|p| {
            let key = p.key.as_deref().unwrap_or_default().to_owned();
            (key, p.offset, p.payload().1.clone())
        })
        .collect();
    (entries, page.cursor.map(String::from), page.position)
}

/// Every key of `channel`'s map, walking the pages `limit` at a time, and the first page's
/// position.
async fn whole_state(node: &Node, channel: &str, limit: usize) -> (Vec<(String, Bytes)>, Position) {
    let mut all = Vec::new();
    let mut after = String::new();
    let mut first = None;
    loop {
        let (entries, cursor, position) = state_page(node, channel, &after, limit).await;
        first.get_or_insert(position);
        all.extend(entries.into_iter().map(|(key, _, data)| (key, data)));
        match cursor {
            Some(cursor) => after = cursor,
            None => break,
        }
    }
    (all, first.unwrap_or_else(|| panic!("at least one page")))
}

/// Keyed publications change a map's state with its stream in one step: each takes the next
/// offset and is delivered to every node with its key; a removal of a key that is not there
/// changes nothing; state pages walk the live keys in key order, each with its latest value
/// and that value's offset, and carry the stream position.
pub async fn keyed_publications_change_the_map_and_pages_walk_it_in_key_order(engine: &dyn Engine) {
    let (a, b) = two_nodes(engine, "map-keys").await;
    if !a.broker.serves_maps() {
        return stop_both(engine, a, b).await;
    }
    a.subscribe(&["board"]).await;
    b.subscribe(&["board"]).await;
    let options = keep(100);
    let mut offsets = Vec::new();
    for (key, value) in [("c", "1"), ("a", "2"), ("b", "3"), ("c", "4")] {
        offsets.push(
            set_key(&b, "board", key, Some(value), &options)
                .await
                .offset,
        );
    }
    let removed = set_key(&a, "board", "a", None, &options).await;
    offsets.push(removed.offset);
    assert_eq!(
        offsets,
        [1, 2, 3, 4, 5],
        "every change takes the next offset"
    );
    let nothing = set_key(&b, "board", "never-set", None, &options).await;
    assert_eq!(
        nothing, removed,
        "removing a key that is not there changes nothing and returns the position"
    );
    let fence = Bytes::from_static(b"fence-after-map-changes");
    b.broker
        .publish_control(fence.clone())
        .await
        .unwrap_or_else(|e| panic!("publish_control: {e}"));
    let expected = [
        (1, "c".to_owned(), false),
        (2, "a".to_owned(), false),
        (3, "b".to_owned(), false),
        (4, "c".to_owned(), false),
        (5, "a".to_owned(), true),
    ];
    for node in [&a, &b] {
        node.events.wait_control(&fence).await;
        assert_eq!(
            map_changes(&node.events.events(), "board"),
            expected,
            "every node gets each change once, in offset order, with its key (and nothing \
             for the removal of an absent key)"
        );
    }
    let (first, cursor, position) = state_page(&a, "board", "", 1).await;
    assert_eq!(
        first,
        [("b".to_owned(), 3, Bytes::from_static(b"3"))],
        "pages run in key order; a removed key is gone"
    );
    assert_eq!(
        cursor.as_deref(),
        Some("b"),
        "a page that is not the last names its last key"
    );
    assert_eq!(
        position, removed,
        "a page carries the stream position it was read at"
    );
    let (rest, cursor, _) = state_page(&b, "board", "b", 10).await;
    assert_eq!(
        rest,
        [("c".to_owned(), 4, Bytes::from_static(b"4"))],
        "the next page starts after the cursor; a key holds its latest value and offset"
    );
    assert_eq!(cursor, None, "the last page has no cursor");
    let stream = b
        .broker
        .history("board", &HistoryRange::default())
        .await
        .unwrap_or_else(|e| panic!("history: {e}"));
    let kept: Vec<(u64, Option<&str>, bool)> = stream
        .publications
        .iter()
        .map(|p| (p.offset, p.key.as_deref(), p.removed))
        .collect();
    assert_eq!(
        kept,
        [
            (1, Some("c"), false),
            (2, Some("a"), false),
            (3, Some("b"), false),
            (4, Some("c"), false),
            (5, Some("a"), true)
        ],
        "the stream keeps every change with its key"
    );
    stop_both(engine, a, b).await;
}

/// A state read at position P holds every change up to P, and the stream from P every
/// change after it: replaying the stream over the pages gives the map, whatever was
/// published between the pages.
pub async fn a_state_page_and_the_stream_after_its_position_give_the_map(engine: &dyn Engine) {
    let (a, b) = two_nodes(engine, "map-sync").await;
    if !a.broker.serves_maps() {
        return stop_both(engine, a, b).await;
    }
    let options = keep(1000);
    for i in 0..10 {
        set_key(&a, "sync", &format!("k{i}"), Some(&i.to_string()), &options).await;
    }
    // The first page, then changes from the other node before the next pages are read.
    let (mut state, cursor, position) = state_page(&b, "sync", "", 3).await;
    assert_eq!(position.offset, 10);
    set_key(&a, "sync", "k0", Some("\"new\""), &options).await;
    set_key(&a, "sync", "k5", None, &options).await;
    set_key(&a, "sync", "k9", Some("\"late\""), &options).await;
    set_key(
        &a,
        "sync",
        "a-first",
        Some("\"before every page\""),
        &options,
    )
    .await;
    let mut after = cursor.unwrap_or_else(|| panic!("ten keys do not fit in a page of 3"));
    loop {
        let (entries, cursor, later) = state_page(&b, "sync", &after, 3).await;
        assert_eq!(later.epoch, position.epoch);
        state.extend(entries);
        match cursor {
            Some(cursor) => after = cursor,
            None => break,
        }
    }
    let mut map: std::collections::BTreeMap<String, Bytes> = state
        .into_iter()
        .map(|(key, _, data)| (key, data))
        .collect();
    let since = HistoryRange {
        since: Some(position.offset),
        limit: None,
        reverse: false,
    };
    let catch_up = b
        .broker
        .history("sync", &since)
        .await
        .unwrap_or_else(|e| panic!("history: {e}"));
    for publication in &catch_up.publications {
        let key = publication.key.as_deref().unwrap_or_default().to_owned();
        if publication.removed {
            map.remove(&key);
        } else {
            map.insert(key, publication.payload().1.clone());
        }
    }
    let (now, _) = whole_state(&a, "sync", 100).await;
    let replayed: Vec<(String, Bytes)> = map.into_iter().collect();
    assert_eq!(
        replayed, now,
        "pages read from position P plus the stream from P give the map as it is"
    );
    assert!(
        !now.iter().any(|(key, _)| key == "k5"),
        "a removed key is not in the state"
    );
    stop_both(engine, a, b).await;
}

/// A key set with a TTL is taken out once its time is up: one removal kept in the stream
/// and delivered to every node, however many nodes run the expiry; state reads stop showing
/// it. The position check ([`Broker::keep_stream`]) runs the expiry on remote engines.
pub async fn an_expired_key_is_removed_once_for_every_node(engine: &dyn Engine) {
    let (a, b) = two_nodes(engine, "map-ttl").await;
    if !a.broker.serves_maps() {
        return stop_both(engine, a, b).await;
    }
    a.subscribe(&["leases"]).await;
    b.subscribe(&["leases"]).await;
    let short = PublishOptions {
        key_ttl: SHORT,
        ..keep(100)
    };
    set_key(&a, "leases", "lease", Some("1"), &short).await;
    set_key(&b, "leases", "kept", Some("2"), &keep(100)).await;
    let sweep = |node: &Node| {
        let broker = Arc::clone(&node.broker);
        async move {
            broker
                .keep_stream("leases", Duration::ZERO)
                .await
                .unwrap_or_else(|e| panic!("keep_stream: {e}"))
        }
    };
    let removal = (3, "lease".to_owned(), true);
    eventually(engine, "the expired key's removal", EXPIRY, || {
        let (on_a, on_b) = (sweep(&a), sweep(&b));
        async move {
            // Both nodes sweep at once: the removal must still be made once.
            let (top_a, top_b) = tokio::join!(on_a, on_b);
            (top_a.offset >= 3 && top_b.offset >= 3).then_some(())
        }
    })
    .await;
    for node in [&a, &b] {
        node.events
            .wait_until("the removal delivered", DELIVERY, |log| {
                map_changes(log, "leases").contains(&removal)
            })
            .await;
    }
    // More sweeps find nothing more to take out.
    sweep(&a).await;
    sweep(&b).await;
    engine.expire();
    let fence = Bytes::from_static(b"fence-after-expiry");
    a.broker
        .publish_control(fence.clone())
        .await
        .unwrap_or_else(|e| panic!("publish_control: {e}"));
    for node in [&a, &b] {
        node.events.wait_control(&fence).await;
        let changes = map_changes(&node.events.events(), "leases");
        assert_eq!(
            changes,
            [
                (1, "lease".to_owned(), false),
                (2, "kept".to_owned(), false),
                removal.clone()
            ],
            "one removal per expired key, delivered once to every node"
        );
    }
    let (state, position) = whole_state(&b, "leases", 10).await;
    assert_eq!(state, [("kept".to_owned(), Bytes::from_static(b"2"))]);
    assert_eq!(position.offset, 3, "the removal is in the stream, once");
    stop_both(engine, a, b).await;
}

/// Two nodes setting and removing the same keys at once: every change gets its own offset,
/// and the map is what replaying the whole stream gives, last write per key winning (no
/// change reaches the stream without the state, nor the state without the stream).
pub async fn concurrent_keyed_publishes_from_two_nodes_leave_the_map_its_stream_says(
    engine: &dyn Engine,
) {
    const EACH: usize = 40;
    let (a, b) = two_nodes(engine, "map-race").await;
    if !a.broker.serves_maps() {
        return stop_both(engine, a, b).await;
    }
    let run = |node: &Node, name: &'static str| {
        let broker = Arc::clone(&node.broker);
        tokio::spawn(async move {
            for i in 0..EACH {
                // Eight shared keys; every fifth change a removal.
                let key = format!("k{}", i % 8);
                let publication = if i % 5 == 4 {
                    Publication::removal(&key)
                } else {
                    Publication::json(Bytes::from(format!("\"{name}{i}\""))).keyed(&key)
                };
                broker
                    .publish("race", &publication, &keep(1000))
                    .await
                    .unwrap_or_else(|e| panic!("keyed publish from {name}: {e}"));
            }
        })
    };
    let (from_a, from_b) = (run(&a, "a"), run(&b, "b"));
    let (Ok(()), Ok(())) = (from_a.await, from_b.await) else {
        panic!("a publishing task panicked");
    };
    let stream = a
        .broker
        .history("race", &HistoryRange::default())
        .await
        .unwrap_or_else(|e| panic!("history: {e}"));
    let offsets: Vec<u64> = stream.publications.iter().map(|p| p.offset).collect();
    let expected: Vec<u64> = (1..=stream.position.offset).collect();
    assert_eq!(
        offsets, expected,
        "every change kept under its own offset, none skipped"
    );
    let mut replayed = std::collections::BTreeMap::new();
    for publication in &stream.publications {
        let key = publication.key.as_deref().unwrap_or_default().to_owned();
        if publication.removed {
            replayed.remove(&key);
        } else {
            replayed.insert(key, publication.payload().1.clone());
        }
    }
    let (state, position) = whole_state(&b, "race", 3).await;
    assert_eq!(position, stream.position);
    assert_eq!(
        state,
        replayed.into_iter().collect::<Vec<_>>(),
        "the map is what its stream says"
    );
    stop_both(engine, a, b).await;
}
