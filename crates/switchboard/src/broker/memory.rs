//! The memory broker: channel streams (history with offsets and epochs) and presence kept in
//! this process, for a single node. It is the default, and the fastest path: it delivers a
//! publication to the node synchronously, inside [`MemoryBroker::publish_now`].
//!
//! Publishing to a channel that keeps history takes that channel's stream lock, gives the
//! publication the next offset, keeps it, and hands it to the node (which fans it out through
//! the hub) before letting go; [`MemoryBroker::subscribe_atomically`] takes the same lock to
//! read what was missed and join. So a subscriber sees recovered publications, then live ones,
//! with no gap and no duplicate. Lock order is always stream, then whatever the node takes.
//! A restart loses every stream, and the next one starts under a new epoch, which recovering
//! clients are told (`recovered: false`).
//!
//! What it holds is bounded: at most `max_streams` streams (a publish or subscribe that would
//! start one more gets [`StreamsFull`]), and a stream that was never published to is kept only
//! the short TTL it was started with, extended while the channel has subscribers here (see
//! [`MemoryBroker::expire_unused`]): the same contract as the remote engines, where the node's
//! position check does the extending. So subscribing to made-up names leaves nothing behind.
//! Reads never start a stream.

use std::collections::hash_map::DefaultHasher;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Broker, BrokerError, BrokerEvents, BrokerHealth, HistoryPage, HistoryRange, MapPage,
    PublishOptions,
};
use crate::history::{ChannelHistory, HistoryQuery, Position, Unrecoverable};
use crate::keyed::MapState;
use crate::publication::{ClientInfo, Publication};

const SHARDS: usize = 64;

/// One channel's stream and how long its position outlives its last publication.
struct Stream {
    history: ChannelHistory,
    /// A map channel's state (empty on a stream channel), changed with the history in one step.
    map: MapState,
    /// How the last publication was kept: what a key's expiry, which appends a removal,
    /// keeps it with.
    history_size: usize,
    history_ttl_ms: u64,
    meta_ttl_ms: u64,
    /// Until it is first published to: when it is dropped unless extended (by a subscribe,
    /// [`Broker::keep_stream`], or `expire_unused` finding subscribers here).
    unused_until_ms: u64,
}

/// How long a stream that was never published to outlives its last subscriber here unless
/// told otherwise: long enough for a client whose connection dropped to come back and recover
/// under the epoch it was given, short enough that made-up names do not pile up.
const UNUSED_TTL: Duration = Duration::from_secs(60);

struct Present {
    info: Arc<ClientInfo>,
    expires_ms: u64,
}

type Streams = HashMap<Box<str>, Stream>;
type Presence = HashMap<Box<str>, HashMap<Box<str>, Present>>;
type Remembered = HashMap<Box<str>, (Option<Position>, u64)>;

/// What a subscribe found in the channel's stream.
#[derive(Debug)]
pub struct StreamState {
    /// The position now (channels that keep history).
    pub position: Option<Position>,
    /// Asked to recover: the missed publications, or why not.
    pub recovery: Option<Result<Vec<Arc<Publication>>, Unrecoverable>>,
}

/// A publish or subscribe would start a stream beyond the broker's `max_streams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("history stream limit reached")]
pub struct StreamsFull;

/// Streams and presence of every channel, in this process.
pub struct MemoryBroker {
    streams: Box<[Mutex<Streams>]>,
    presence: Box<[Mutex<Presence>]>,
    idempotency: Mutex<Remembered>,
    events: OnceLock<Arc<dyn BrokerEvents>>,
    started: Instant,
    /// Most streams kept (0: no limit).
    max_streams: usize,
    /// How long a never-published stream outlives its last subscriber (`expire_unused`).
    unused_ttl_ms: u64,
    /// Streams kept now, across shards (a slot is taken before a stream is inserted).
    stream_count: AtomicUsize,
    /// Presence entries (client in channel) kept now, across shards.
    presence_count: AtomicUsize,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::bounded(0, UNUSED_TTL)
    }
}

fn shard_of(channel: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    channel.hash(&mut hasher);
    (hasher.finish() as usize) % SHARDS
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the maps consistent, even if a caller panicked.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Pushes a never-published stream's end to at least `ttl` from now; a published stream
/// lives by its meta TTL and is left alone.
fn extend_unused(stream: &mut Stream, now_ms: u64, ttl: Duration) {
    if stream.history.next_offset() == 1 {
        let until = now_ms.saturating_add(millis(ttl));
        stream.unused_until_ms = stream.unused_until_ms.max(until);
    }
}

/// The position of a channel with no stream.
fn no_stream() -> Position {
    Position {
        offset: 0,
        epoch: "".into(),
    }
}

impl MemoryBroker {
    /// A broker that keeps at most `max_streams` streams (0: no limit), and a stream that was
    /// never published to for `unused_ttl` after its last subscriber here.
    pub fn bounded(max_streams: usize, unused_ttl: Duration) -> Self {
        MemoryBroker {
            streams: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            presence: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            idempotency: Mutex::new(HashMap::new()),
            events: OnceLock::new(),
            started: Instant::now(),
            max_streams,
            unused_ttl_ms: millis(unused_ttl),
            stream_count: AtomicUsize::new(0),
            presence_count: AtomicUsize::new(0),
        }
    }

    /// Streams kept now.
    pub fn stream_count(&self) -> usize {
        self.stream_count.load(Ordering::Relaxed)
    }

    /// Presence entries kept now.
    pub fn presence_count(&self) -> usize {
        self.presence_count.load(Ordering::Relaxed)
    }

    /// `channel`'s stream, started (under a new epoch) when there is none and a slot is free.
    /// The slot is taken with one atomic step, so shards racing for the last one cannot both
    /// have it.
    fn stream_of<'a>(
        &self,
        streams: &'a mut Streams,
        channel: &str,
        now_ms: u64,
        meta_ttl_ms: u64,
        unused_ms: u64,
    ) -> Result<&'a mut Stream, StreamsFull> {
        match streams.entry(channel.into()) {
            Entry::Occupied(found) => Ok(found.into_mut()),
            Entry::Vacant(free) => {
                let max = self.max_streams;
                self.stream_count
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (max == 0 || n < max).then_some(n + 1)
                    })
                    .map_err(|_| StreamsFull)?;
                Ok(free.insert(Stream {
                    history: ChannelHistory::new(now_ms),
                    map: MapState::default(),
                    history_size: 0,
                    history_ttl_ms: 0,
                    meta_ttl_ms,
                    unused_until_ms: now_ms.saturating_add(unused_ms),
                }))
            }
        }
    }

    /// Milliseconds on this broker's clock.
    fn now_ms(&self) -> u64 {
        millis(self.started.elapsed())
    }

    fn streams(&self, channel: &str) -> MutexGuard<'_, Streams> {
        lock(&self.streams[shard_of(channel)])
    }

    fn presence_shard(&self, channel: &str) -> MutexGuard<'_, Presence> {
        lock(&self.presence[shard_of(channel)])
    }

    fn deliver(&self, channel: &str, publication: Arc<Publication>, epoch: &str) {
        if let Some(events) = self.events.get() {
            events.publication(channel, publication, epoch);
        }
    }

    /// Connects the node's events (what [`Broker::start`] does, synchronously).
    pub fn attach(&self, events: Arc<dyn BrokerEvents>) {
        let _ = self.events.set(events);
    }

    /// Publishes to `channel` and hands it to the node before returning: keeps it under the
    /// next offset when the channel keeps history.
    ///
    /// # Errors
    /// [`StreamsFull`] when the channel has no stream and no more may be started; nothing was
    /// published.
    pub fn publish_now(
        &self,
        channel: &str,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<Option<Position>, StreamsFull> {
        let Some(key) = &options.idempotency_key else {
            return self.publish_once(channel, publication, options);
        };
        let now_ms = self.now_ms();
        let mut remembered = lock(&self.idempotency);
        remembered.retain(|_, (_, expires_ms)| *expires_ms > now_ms);
        if let Some((position, _)) = remembered.get(key.as_ref()) {
            return Ok(position.clone());
        }
        // Held across the publish, so two publishes with one key cannot both apply.
        let position = self.publish_once(channel, publication, options)?;
        let expires_ms = now_ms.saturating_add(millis(options.idempotency_ttl));
        remembered.insert(key.clone(), (position.clone(), expires_ms));
        Ok(position)
    }

    fn publish_once(
        &self,
        channel: &str,
        mut publication: Publication,
        options: &PublishOptions,
    ) -> Result<Option<Position>, StreamsFull> {
        if options.history_size == 0 {
            self.deliver(channel, Arc::new(publication), "");
            return Ok(None);
        }
        let now_ms = self.now_ms();
        let mut streams = self.streams(channel);
        let stream = self.stream_of(&mut streams, channel, now_ms, 0, 0)?;
        stream.meta_ttl_ms = millis(options.history_meta_ttl);
        if let (Some(key), true) = (publication.key.as_deref(), publication.removed) {
            if !stream.map.contains(key, now_ms) {
                // Removing a key that is not there changes nothing: nothing to tell anyone.
                stream.history.prune(now_ms);
                return Ok(Some(stream.history.position()));
            }
        }
        // The value a keyed set replaces: its subscribers' per-key delta base.
        let replaced = (!publication.removed)
            .then_some(publication.key.as_deref())
            .flatten()
            .and_then(|key| stream.map.latest(key, now_ms))
            .cloned();
        if let Some(previous) = replaced {
            publication.follows(&previous);
        }
        publication.offset = stream.history.next_offset();
        let publication = Arc::new(publication);
        let ttl_ms = millis(options.history_ttl);
        stream.history_size = options.history_size;
        stream.history_ttl_ms = ttl_ms;
        stream.history.append(
            Arc::clone(&publication),
            options.history_size,
            ttl_ms,
            now_ms,
        );
        stream
            .map
            .apply(&publication, millis(options.key_ttl), now_ms);
        let position = stream.history.position();
        self.deliver(channel, publication, &position.epoch);
        Ok(Some(position))
    }

    /// A page of map channel `channel`'s state: up to `limit` keys after `after` that `keep`
    /// passes, read under the stream's lock with the position it is consistent with. A
    /// channel with no stream gets one (as a subscribe does), so the reader's epoch means
    /// something when it catches up.
    ///
    /// # Errors
    /// [`StreamsFull`] when the channel has no stream and no more may be started.
    pub fn map_state_now(
        &self,
        channel: &str,
        meta_ttl: Duration,
        after: &str,
        limit: usize,
        keep: impl Fn(&Publication) -> bool,
    ) -> Result<MapPage, StreamsFull> {
        let now_ms = self.now_ms();
        let mut streams = self.streams(channel);
        let meta_ttl_ms = millis(meta_ttl);
        let unused_ms = self.unused_ttl_ms.min(meta_ttl_ms);
        let stream = self.stream_of(&mut streams, channel, now_ms, meta_ttl_ms, unused_ms)?;
        self.expire_keys(channel, stream, now_ms);
        stream.history.prune(now_ms);
        let page = stream.map.page(after, limit, now_ms, keep);
        Ok(MapPage {
            entries: page.entries,
            cursor: page.cursor,
            position: stream.history.position(),
        })
    }

    /// Takes `stream`'s expired map keys out, each as a removal appended to its history and
    /// delivered, as if it had been removed through the API.
    fn expire_keys(&self, channel: &str, stream: &mut Stream, now_ms: u64) {
        if stream.map.is_empty() {
            return;
        }
        for key in stream.map.take_expired(now_ms) {
            let mut removal = Publication::removal(&key);
            removal.offset = stream.history.next_offset();
            let removal = Arc::new(removal);
            stream.history.append(
                Arc::clone(&removal),
                stream.history_size,
                stream.history_ttl_ms,
                now_ms,
            );
            let epoch = stream.history.position().epoch;
            self.deliver(channel, removal, &epoch);
        }
    }

    /// Reads `channel`'s stream and runs `join` under its lock with what was found (and, with
    /// `recover_from`, what was missed since that offset and epoch), so that no publication
    /// reaches the node between the read and whatever `join` does. A channel with no stream
    /// gets one, so the subscriber's epoch means something later; until its first
    /// publication it is kept only while the channel has subscribers (`expire_unused`).
    ///
    /// # Errors
    /// [`StreamsFull`] (and `join` is not called) when the channel has no stream and no more
    /// may be started.
    pub fn subscribe_atomically<T>(
        &self,
        channel: &str,
        history: Option<Duration>,
        recover_from: Option<(u64, &str)>,
        join: impl FnOnce(StreamState) -> T,
    ) -> Result<T, StreamsFull> {
        let Some(meta_ttl) = history else {
            return Ok(join(StreamState {
                position: None,
                recovery: recover_from.map(|_| Err(Unrecoverable)),
            }));
        };
        let now_ms = self.now_ms();
        let mut streams = self.streams(channel);
        let meta_ttl_ms = millis(meta_ttl);
        // Kept `unused_ttl` (at most the meta TTL) until extended or published to.
        let unused_ms = self.unused_ttl_ms.min(meta_ttl_ms);
        let stream = self.stream_of(&mut streams, channel, now_ms, meta_ttl_ms, unused_ms)?;
        stream.history.prune(now_ms);
        let state = StreamState {
            position: Some(stream.history.position()),
            recovery: recover_from.map(|(offset, epoch)| stream.history.recover(offset, epoch)),
        };
        Ok(join(state))
    }

    /// The stream's position, starting it when there is none (see
    /// [`Broker::stream_position`]).
    ///
    /// # Errors
    /// [`StreamsFull`] when there is none and no more may be started.
    pub fn stream_position_now(
        &self,
        channel: &str,
        ttl: Duration,
    ) -> Result<Position, StreamsFull> {
        let now_ms = self.now_ms();
        let mut streams = self.streams(channel);
        let stream = self.stream_of(&mut streams, channel, now_ms, u64::MAX, millis(ttl))?;
        stream.history.prune(now_ms);
        extend_unused(stream, now_ms, ttl);
        Ok(stream.history.position())
    }

    /// The stream's position, extending a never-published one and taking out expired map
    /// keys (see [`Broker::keep_stream`]).
    pub fn keep_stream_now(&self, channel: &str, ttl: Duration) -> Position {
        let now_ms = self.now_ms();
        let mut streams = self.streams(channel);
        let Some(stream) = streams.get_mut(channel) else {
            return no_stream();
        };
        self.expire_keys(channel, stream, now_ms);
        stream.history.prune(now_ms);
        extend_unused(stream, now_ms, ttl);
        stream.history.position()
    }

    /// `channel`'s kept publications in `range`, with its position.
    pub fn history_now(&self, channel: &str, range: &HistoryRange) -> HistoryPage {
        let now_ms = self.now_ms();
        let mut streams = self.streams(channel);
        let Some(stream) = streams.get_mut(channel) else {
            return HistoryPage {
                publications: Vec::new(),
                position: no_stream(),
            };
        };
        stream.history.prune(now_ms);
        let query = HistoryQuery {
            limit: range.limit,
            since: range.since.map(|offset| (offset, String::new())),
            reverse: range.reverse,
        };
        HistoryPage {
            // An empty epoch matches any, so the query cannot fail.
            publications: stream.history.query(&query).unwrap_or_default(),
            position: stream.history.position(),
        }
    }

    /// Forgets the kept publications of `channel` (its position stays).
    pub fn remove_history_now(&self, channel: &str) {
        if let Some(stream) = self.streams(channel).get_mut(channel) {
            stream.history.clear();
        }
    }

    /// Drops expired publications and presence everywhere, streams idle past their meta TTL,
    /// and never-published streams past their unused TTL (nothing counts as in use).
    pub fn expire(&self) {
        self.expire_unused(|_| false);
    }

    /// [`expire`](Self::expire), except that a never-published stream whose channel is
    /// `in_use` (has a subscriber here) gets its unused TTL extended instead, as the node's
    /// position check does on a remote broker: a subscribe started it only to give its
    /// subscriber an epoch, and once nobody can come back with that epoch it serves no one.
    /// `in_use` is called under the stream's lock (the node's hub lock comes after it, as in
    /// a join).
    pub fn expire_unused(&self, in_use: impl Fn(&str) -> bool) {
        let now_ms = self.now_ms();
        for shard in self.streams.iter() {
            let mut dropped = 0;
            lock(shard).retain(|channel, stream| {
                self.expire_keys(channel, stream, now_ms);
                stream.history.prune(now_ms);
                let keep = if stream.history.next_offset() != 1 {
                    !stream.history.is_stale(now_ms, stream.meta_ttl_ms)
                } else if in_use(channel) {
                    let unused_ms = self.unused_ttl_ms.min(stream.meta_ttl_ms);
                    let until = now_ms.saturating_add(unused_ms);
                    stream.unused_until_ms = stream.unused_until_ms.max(until);
                    true
                } else {
                    now_ms < stream.unused_until_ms
                };
                dropped += usize::from(!keep);
                keep
            });
            self.stream_count.fetch_sub(dropped, Ordering::AcqRel);
        }
        for shard in self.presence.iter() {
            let mut dropped = 0;
            lock(shard).retain(|_, clients| {
                let before = clients.len();
                clients.retain(|_, present| present.expires_ms > now_ms);
                dropped += before - clients.len();
                !clients.is_empty()
            });
            self.presence_count.fetch_sub(dropped, Ordering::AcqRel);
        }
    }

    /// Records `info` as present in `channel` for `ttl`.
    pub fn add_presence_now(&self, channel: &str, info: Arc<ClientInfo>, ttl: Duration) {
        let expires_ms = self.now_ms().saturating_add(millis(ttl));
        let added = self
            .presence_shard(channel)
            .entry(channel.into())
            .or_default()
            .insert(info.client.clone(), Present { info, expires_ms })
            .is_none();
        if added {
            self.presence_count.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Removes client `client` from `channel`'s presence.
    pub fn remove_presence_now(&self, channel: &str, client: &str) {
        let mut shard = self.presence_shard(channel);
        if let Some(clients) = shard.get_mut(channel) {
            if clients.remove(client).is_some() {
                self.presence_count.fetch_sub(1, Ordering::AcqRel);
            }
            if clients.is_empty() {
                shard.remove(channel);
            }
        }
    }

    /// Everyone present in `channel`.
    pub fn presence_now(&self, channel: &str) -> Vec<Arc<ClientInfo>> {
        let now_ms = self.now_ms();
        self.presence_shard(channel)
            .get(channel)
            .map(|clients| {
                clients
                    .values()
                    .filter(|present| present.expires_ms > now_ms)
                    .map(|present| Arc::clone(&present.info))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn events(&self) -> Option<&Arc<dyn BrokerEvents>> {
        self.events.get()
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn start(&self, events: Arc<dyn BrokerEvents>) -> Result<(), BrokerError> {
        self.attach(events);
        Ok(())
    }

    async fn stop(&self) {}

    fn health(&self) -> BrokerHealth {
        BrokerHealth {
            connected: true,
            round_trip: Some(Duration::ZERO),
            reconnects: 0,
        }
    }

    // In one process every channel is delivered: the node's hub decides who receives it.
    async fn subscribe(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        publication: &Publication,
        options: &PublishOptions,
    ) -> Result<Option<Position>, BrokerError> {
        let (kind, payload) = publication.payload();
        let mut copy = Publication::from_payload(kind, payload.clone());
        copy.info = publication.info.clone();
        copy.tags = publication.tags.clone();
        copy.trace = publication.trace;
        copy.key = publication.key.clone();
        copy.removed = publication.removed;
        self.publish_now(channel, copy, options)
            .map_err(|full| BrokerError::Unavailable(full.to_string()))
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        if let Some(events) = self.events() {
            events.join(channel, Arc::new(info.clone()));
        }
        Ok(())
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        if let Some(events) = self.events() {
            events.leave(channel, Arc::new(info.clone()));
        }
        Ok(())
    }

    async fn publish_control(&self, message: Bytes) -> Result<(), BrokerError> {
        if let Some(events) = self.events() {
            events.control(message);
        }
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        range: &HistoryRange,
    ) -> Result<HistoryPage, BrokerError> {
        Ok(self.history_now(channel, range))
    }

    async fn stream_position(&self, channel: &str, ttl: Duration) -> Result<Position, BrokerError> {
        self.stream_position_now(channel, ttl)
            .map_err(|full| BrokerError::Unavailable(full.to_string()))
    }

    async fn keep_stream(&self, channel: &str, ttl: Duration) -> Result<Position, BrokerError> {
        Ok(self.keep_stream_now(channel, ttl))
    }

    fn serves_maps(&self) -> bool {
        true
    }

    async fn map_state(
        &self,
        channel: &str,
        after: &str,
        limit: usize,
        ttl: Duration,
    ) -> Result<MapPage, BrokerError> {
        self.map_state_now(channel, ttl, after, limit, |_| true)
            .map_err(|full| BrokerError::Unavailable(full.to_string()))
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        self.remove_history_now(channel);
        Ok(())
    }

    async fn add_presence(
        &self,
        channel: &str,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.add_presence_now(channel, Arc::new(info.clone()), ttl);
        Ok(())
    }

    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), BrokerError> {
        self.remove_presence_now(channel, client);
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<Vec<Arc<ClientInfo>>, BrokerError> {
        Ok(self.presence_now(channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn keeping() -> PublishOptions {
        PublishOptions {
            history_size: 10,
            history_ttl: DAY,
            history_meta_ttl: DAY,
            ..PublishOptions::default()
        }
    }

    fn publish(broker: &MemoryBroker, channel: &str) -> Result<Option<Position>, StreamsFull> {
        broker.publish_now(
            channel,
            Publication::json(Bytes::from_static(b"1")),
            &keeping(),
        )
    }

    #[test]
    fn past_the_stream_bound_a_new_stream_is_refused_and_an_existing_one_continues() {
        let broker = MemoryBroker::bounded(1, UNUSED_TTL);
        assert!(publish(&broker, "a").is_ok());
        assert_eq!(publish(&broker, "b"), Err(StreamsFull));
        assert_eq!(
            broker.subscribe_atomically("b", Some(DAY), None, |_| ()),
            Err(StreamsFull)
        );
        assert_eq!(
            publish(&broker, "a").map(|p| p.map(|p| p.offset)),
            Ok(Some(2))
        );
        assert_eq!(broker.stream_count(), 1);
    }

    #[test]
    fn an_unpublished_stream_is_dropped_once_unused_and_a_published_one_is_kept() {
        let broker = MemoryBroker::bounded(0, Duration::ZERO);
        broker
            .subscribe_atomically("started", Some(DAY), None, |_| ())
            .unwrap();
        publish(&broker, "published").unwrap();
        broker.expire_unused(|channel| channel == "started");
        assert_eq!(broker.stream_count(), 2, "in use: kept");
        broker.expire_unused(|_| false);
        assert_eq!(broker.stream_count(), 1);
        assert_eq!(
            broker
                .history_now("started", &HistoryRange::default())
                .position,
            no_stream()
        );
        assert_eq!(
            broker
                .history_now("published", &HistoryRange::default())
                .position
                .offset,
            1
        );
    }

    /// Keeps what the broker delivers.
    #[derive(Default)]
    struct Delivered(Mutex<Vec<(Box<str>, Arc<Publication>)>>);

    impl BrokerEvents for Delivered {
        fn publication(&self, channel: &str, publication: Arc<Publication>, _: &str) {
            lock(&self.0).push((channel.into(), publication));
        }
        fn join(&self, _: &str, _: Arc<ClientInfo>) {}
        fn leave(&self, _: &str, _: Arc<ClientInfo>) {}
        fn control(&self, _: Bytes) {}
        fn link_lost(&self) {}
        fn link_restored(&self) {}
    }

    fn set(broker: &MemoryBroker, key: &str, value: &'static str, options: &PublishOptions) -> u64 {
        let publication = Publication::json(Bytes::from_static(value.as_bytes())).keyed(key);
        broker
            .publish_now("m", publication, options)
            .unwrap()
            .unwrap()
            .offset
    }

    fn keys(page: &MapPage) -> Vec<(&str, u64)> {
        page.entries
            .iter()
            .map(|p| (p.key.as_deref().unwrap_or_default(), p.offset))
            .collect()
    }

    #[test]
    fn keyed_publications_change_the_map_with_its_stream_and_pages_carry_the_position() {
        let broker = MemoryBroker::default();
        let options = keeping();
        assert_eq!(set(&broker, "b", "1", &options), 1);
        assert_eq!(set(&broker, "a", "2", &options), 2);
        assert_eq!(set(&broker, "b", "3", &options), 3);
        let page = broker.map_state_now("m", DAY, "", 1, |_| true).unwrap();
        assert_eq!(keys(&page), [("a", 2)]);
        assert_eq!(page.cursor.as_deref(), Some("a"));
        assert_eq!(page.position.offset, 3);
        let rest = broker.map_state_now("m", DAY, "a", 1, |_| true).unwrap();
        assert_eq!(keys(&rest), [("b", 3)], "the key's latest value");
        assert_eq!(rest.cursor, None);
        assert_eq!(rest.position.epoch, page.position.epoch);

        let removed = broker
            .publish_now("m", Publication::removal("a"), &options)
            .unwrap()
            .unwrap();
        assert_eq!(removed.offset, 4);
        // Removing what is not there takes no offset and delivers nothing.
        let attached = Arc::new(Delivered::default());
        broker.attach(attached.clone());
        let nothing = broker
            .publish_now("m", Publication::removal("a"), &options)
            .unwrap()
            .unwrap();
        assert_eq!(nothing.offset, 4);
        assert!(lock(&attached.0).is_empty());
        let page = broker.map_state_now("m", DAY, "", 10, |_| true).unwrap();
        assert_eq!(keys(&page), [("b", 3)]);
        // The stream holds every change, the removal with its key.
        let stream = broker.history_now("m", &HistoryRange::default());
        let changes: Vec<_> = stream
            .publications
            .iter()
            .map(|p| (p.key.as_deref().unwrap_or_default(), p.removed))
            .collect();
        assert_eq!(
            changes,
            [("b", false), ("a", false), ("b", false), ("a", true)]
        );
    }

    #[test]
    fn a_keyed_set_carries_the_value_it_replaces_as_its_delta_base_and_a_removal_resets_it() {
        let broker = MemoryBroker::default();
        let delivered = Arc::new(Delivered::default());
        broker.attach(delivered.clone());
        let options = keeping();
        set(
            &broker,
            "k",
            r#"{"v":1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
            &options,
        );
        set(&broker, "other", "2", &options);
        set(
            &broker,
            "k",
            r#"{"v":2,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
            &options,
        );
        broker
            .publish_now("m", Publication::removal("k"), &options)
            .unwrap();
        set(&broker, "k", "3", &options);
        let got = lock(&delivered.0);
        let bases: Vec<bool> = got.iter().map(|(_, p)| p.has_key_base()).collect();
        // A new key, another new key, a replaced value, a removal, a key set again.
        assert_eq!(bases, [false, false, true, false, false]);
        let delta = got[2]
            .1
            .key_delta_frame("m", crate::kind::Encoding::Json, false)
            .expect("a delta against the value it replaced");
        assert!(String::from_utf8_lossy(delta).contains(r#""delta":true"#));
    }

    #[test]
    fn an_expired_key_is_taken_out_as_a_removal_in_the_stream_and_delivered() {
        let broker = MemoryBroker::default();
        let delivered = Arc::new(Delivered::default());
        broker.attach(delivered.clone());
        let short = PublishOptions {
            key_ttl: Duration::from_millis(1),
            ..keeping()
        };
        set(&broker, "lease", "1", &short);
        set(&broker, "kept", "2", &keeping());
        std::thread::sleep(Duration::from_millis(5));
        // Past its time it is no longer served, even before the sweep.
        let page = broker.map_state_now("m", DAY, "", 10, |_| true).unwrap();
        assert_eq!(keys(&page), [("kept", 2)]);
        broker.expire();
        broker.expire();
        let seen: Vec<_> = lock(&delivered.0)
            .iter()
            .map(|(_, p)| {
                (
                    p.key.as_deref().unwrap_or_default().to_owned(),
                    p.removed,
                    p.offset,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("lease".to_owned(), false, 1),
                ("kept".to_owned(), false, 2),
                ("lease".to_owned(), true, 3)
            ],
            "one removal, however many sweeps"
        );
        assert_eq!(
            broker
                .history_now("m", &HistoryRange::default())
                .position
                .offset,
            3
        );
    }

    #[test]
    fn presence_entries_are_counted_once_each() {
        let broker = MemoryBroker::default();
        let info = Arc::new(ClientInfo::new("c", "u", None, None));
        broker.add_presence_now("a", Arc::clone(&info), DAY);
        broker.add_presence_now("a", Arc::clone(&info), DAY);
        broker.add_presence_now("b", Arc::clone(&info), DAY);
        assert_eq!(broker.presence_count(), 2);
        broker.remove_presence_now("a", "c");
        broker.remove_presence_now("a", "c");
        assert_eq!(broker.presence_count(), 1);
    }
}
