//! The hub: which connections subscribe to which channel, and fan-out.
//!
//! The registry is split into shards by channel name, each behind a short `std` read-write
//! lock that is never held across an `.await` (nothing in here is async). A [`Publication`]
//! carries its frame for each door format, each encoded at most once (plain bytes for plain
//! doors, a JSON push for the client protocol); fan-out clones the right handle into each
//! subscriber's outbound queue and never waits for a socket: a subscriber whose queue is full
//! is closed as a slow consumer by its own [`Conn::push`]. The hub never sees a socket.
//!
//! A channel's subscribers are a dense list, which fan-out walks; a big channel also knows
//! where each connection sits in it ([`Members`]), so a connection leaves in constant time
//! (swap-remove, then fix the moved entry's slot) and a mass disconnect from a channel of
//! 100,000 does not hold its shard's write lock for a quadratic scan.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

use crate::conn::Conn;
use crate::filter::Filter;
use crate::kind::Door;
use crate::kind::Encoding;
use crate::kind::Format;
use crate::publication::Publication;

const SHARDS: usize = 64;

/// One subscriber of a channel.
struct Subscriber {
    conn: Arc<Conn>,
    /// Publications at or below this offset are not for it: it got them in its subscribe
    /// reply (a node joined to a broker may receive them late, after the subscriber joined).
    since: u64,
    /// Its tag filter: only publications whose tags pass it (one of its channel's
    /// [`Members::filters`], shared by every subscriber with an equal filter).
    filter: Option<Arc<Filter>>,
    /// A delta subscriber (it asked for fossil deltas): where its chain stands.
    delta: Option<Chain>,
}

/// What a subscriber asks of the hub in deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaMode {
    /// Whole publications.
    Off,
    /// A stream's fossil deltas: each against the channel's previous publication.
    Stream,
    /// A map's fossil deltas, one chain per key: each against the value its key held
    /// before. The subscriber holds the map's state up to stream offset `held` (its state
    /// pages and catch-up ended there).
    Map {
        /// The offset its state is complete up to.
        held: u64,
    },
}

impl From<bool> for DeltaMode {
    fn from(stream_delta: bool) -> Self {
        if stream_delta {
            DeltaMode::Stream
        } else {
            DeltaMode::Off
        }
    }
}

/// A delta subscriber's chain.
enum Chain {
    /// Whether it holds the channel's previous publication, so the next one may reach it as
    /// a delta. It does not after it joins, or after a publication skipped it (its position,
    /// its filter); then it gets the next one whole.
    Stream(AtomicBool),
    /// The stream offset up to which it holds the map's state (every key's latest value), so
    /// the publication right after it may reach it as a delta against its key's previous
    /// value; [`MAP_CHAIN_BROKEN`] once it may hold a stale value under some key: a
    /// publication for it did not reach it (its filter), or one came out of sequence (a gap
    /// missed some key's change; a new epoch). It gets whole values from then on, until it
    /// subscribes again.
    Map(AtomicU64),
}

/// [`Chain::Map`] of a subscriber that missed a publication it should have had.
const MAP_CHAIN_BROKEN: u64 = u64::MAX;

/// The publication a channel's next delta is made against: the last one fanned out to it
/// while it had delta subscribers.
struct Base {
    offset: u64,
    /// Its [`Publication::delta_payload`] per encoding (JSON, Protobuf).
    payloads: [Bytes; 2],
}

impl Base {
    fn of(publication: &Publication) -> Base {
        Base {
            offset: publication.offset,
            payloads: [
                publication.delta_payload(Encoding::Json).clone(),
                publication.delta_payload(Encoding::Protobuf).clone(),
            ],
        }
    }

    /// Whether `next` comes right after this one: the next offset of the same stream, or
    /// (no history) simply the next fanned out. A gap or a new epoch (offsets start over)
    /// is not, and everyone gets that publication whole.
    fn precedes(&self, next: &Publication) -> bool {
        match (self.offset, next.offset) {
            (0, 0) => true,
            (before, after) => before != 0 && after == before + 1,
        }
    }
}

/// A channel passing this many subscribers gets an index of their slots; below it, scanning
/// the list finds a connection about as fast and costs no memory (most channels are small:
/// a user's inbox, a room of a few).
const INDEX_FROM: usize = 32;

/// Whether `publication` skips `conn`: Pusher leaves out the socket that sent an event (a
/// client event, or an API event naming its `socket_id`), which published it as its client.
fn excluded(conn: &Conn, publication: &Publication) -> bool {
    conn.door == Door::Pusher
        && publication
            .info
            .as_ref()
            .is_some_and(|info| *info.client == *conn.client_id())
}

/// Hashes a connection id, which the node hands out in sequence (never chosen by a client),
/// with one multiplication: the default SipHash would cost more than the rest of a leave.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The subscribers of one channel. A connection is in `list` at most once; once the channel
/// passes [`INDEX_FROM`] subscribers, `slots` says where each one is.
#[derive(Default)]
struct Members {
    list: Vec<Subscriber>,
    slots: Option<HashMap<u64, usize, BuildHasherDefault<IdHasher>>>,
    /// The distinct tag filters of the subscribers, each held once here and once by each
    /// subscriber that uses it: a publication evaluates each once, however many share it.
    filters: Vec<Arc<Filter>>,
    /// How many subscribers are delta subscribers; with none, no base is kept.
    deltas: usize,
    /// The base of the channel's next delta; its lock also keeps the fan-outs of a channel
    /// with delta subscribers in one order, so every subscriber's chain is the channel's.
    base: Mutex<Option<Base>>,
}

impl Members {
    /// Where connection `conn_id` is in `list`.
    fn slot_of(&self, conn_id: u64) -> Option<usize> {
        match &self.slots {
            Some(slots) => slots.get(&conn_id).copied(),
            None => self.list.iter().position(|s| s.conn.id == conn_id),
        }
    }

    /// Adds a subscriber unless its connection is already one; returns whether it was added.
    fn add(&mut self, mut subscriber: Subscriber) -> bool {
        let id = subscriber.conn.id;
        if self.slot_of(id).is_some() {
            return false;
        }
        if let Some(filter) = subscriber.filter.take() {
            let shared = match self.filters.iter().find(|known| ***known == *filter) {
                Some(known) => Arc::clone(known),
                None => {
                    self.filters.push(Arc::clone(&filter));
                    filter
                }
            };
            subscriber.filter = Some(shared);
        }
        if subscriber.delta.is_some() {
            self.deltas += 1;
        }
        let slot = self.list.len();
        self.list.push(subscriber);
        if let Some(slots) = &mut self.slots {
            slots.insert(id, slot);
        } else if self.list.len() > INDEX_FROM {
            self.slots = Some(
                self.list
                    .iter()
                    .enumerate()
                    .map(|(slot, s)| (s.conn.id, slot))
                    .collect(),
            );
        }
        true
    }

    /// Removes connection `conn_id`; returns whether it was a subscriber. The last entry
    /// takes its slot, and the index learns where that one went.
    fn remove(&mut self, conn_id: u64) -> bool {
        let Some(slot) = self.slot_of(conn_id) else {
            return false;
        };
        let removed = self.list.swap_remove(slot);
        if removed.delta.is_some() {
            self.deltas -= 1;
            if self.deltas == 0 {
                *self.base.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        if let Some(filter) = removed.filter {
            // Held by this list and the leaving subscriber only: nobody else uses it.
            if Arc::strong_count(&filter) == 2 {
                self.filters.retain(|known| !Arc::ptr_eq(known, &filter));
            }
        }
        if let Some(slots) = &mut self.slots {
            slots.remove(&conn_id);
            if let Some(moved) = self.list.get(slot) {
                slots.insert(moved.conn.id, slot);
            }
            // Halfway below the threshold, so a channel hovering around it does not rebuild
            // its index on every join.
            if self.list.len() < INDEX_FROM / 2 {
                self.slots = None;
            }
        }
        // A channel emptied by a mass disconnect gives its memory back; shrinking by half
        // only when a quarter is used keeps this amortised constant.
        if self.list.capacity() > 2 * INDEX_FROM && self.list.len() < self.list.capacity() / 4 {
            self.list.shrink_to(self.list.len() * 2);
            if let Some(slots) = &mut self.slots {
                slots.shrink_to(self.list.len() * 2);
            }
        }
        true
    }
}

type Channels = HashMap<Box<str>, Members>;

/// Channel → subscribers, sharded.
pub struct Hub {
    shards: Box<[RwLock<Channels>]>,
    channels: AtomicUsize,
    subscriptions: AtomicUsize,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

fn shard_of(channel: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    channel.hash(&mut hasher);
    (hasher.finish() as usize) % SHARDS
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            channels: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
        }
    }

    fn shard(&self, channel: &str) -> &RwLock<Channels> {
        &self.shards[shard_of(channel)]
    }

    /// Adds `conn` to `channel`'s subscribers.
    pub fn subscribe(&self, channel: &str, conn: &Arc<Conn>) {
        self.subscribe_since(channel, conn, 0);
    }

    /// Adds `conn` to `channel`'s subscribers for publications after offset `since` (and every
    /// publication without an offset). A connection already subscribed stays as it was (a
    /// connection is a channel's subscriber at most once).
    pub fn subscribe_since(&self, channel: &str, conn: &Arc<Conn>, since: u64) {
        self.subscribe_filtered(channel, conn, since, None, false);
    }

    /// Adds `conn` to `channel`'s subscribers for publications after offset `since` whose
    /// tags pass `filter` (every one without a filter); with `delta` (a [`DeltaMode`], or
    /// `true` for a stream's), as a delta subscriber (fossil deltas against the previous
    /// publication, or in a map the key's previous value, when it holds it).
    pub fn subscribe_filtered(
        &self,
        channel: &str,
        conn: &Arc<Conn>,
        since: u64,
        filter: Option<Arc<Filter>>,
        delta: impl Into<DeltaMode>,
    ) {
        let mut shard = self
            .shard(channel)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let members = shard.entry(channel.into()).or_insert_with(|| {
            self.channels.fetch_add(1, Ordering::Relaxed);
            Members::default()
        });
        let added = members.add(Subscriber {
            conn: Arc::clone(conn),
            since,
            filter,
            delta: match delta.into() {
                DeltaMode::Off => None,
                DeltaMode::Stream => Some(Chain::Stream(AtomicBool::new(false))),
                DeltaMode::Map { held } => Some(Chain::Map(AtomicU64::new(held))),
            },
        });
        if added {
            self.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes connection `conn_id` from `channel`, in constant time; drops the channel when
    /// it empties.
    pub fn unsubscribe(&self, channel: &str, conn_id: u64) {
        let mut shard = self
            .shard(channel)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let Some(members) = shard.get_mut(channel) else {
            return;
        };
        if members.remove(conn_id) {
            self.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
        if members.list.is_empty() {
            shard.remove(channel);
            self.channels.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Queues `publication` for every subscriber of `channel`, each in its door's format;
    /// returns how many it reached.
    pub fn publish(&self, channel: &str, publication: &Publication) -> usize {
        let shard = self
            .shard(channel)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let Some(members) = shard.get(channel) else {
            return 0;
        };
        let offset = publication.offset;
        // Each distinct filter's verdict, made when a subscriber first needs it.
        let mut verdicts: Vec<Option<bool>> = vec![None; members.filters.len()];
        let tags = publication.tags.as_deref();
        let mut passes = |filter: &Arc<Filter>| {
            let Some(index) = members.filters.iter().position(|f| Arc::ptr_eq(f, filter)) else {
                return filter.matches(tags);
            };
            *verdicts[index].get_or_insert_with(|| filter.matches(tags))
        };
        // With delta subscribers: this publication becomes the base, and the previous one is
        // what its delta is made against when it directly precedes it. The lock is held for
        // the walk (see `Members::base`).
        let mut base_lock =
            (members.deltas > 0).then(|| members.base.lock().unwrap_or_else(|e| e.into_inner()));
        // A map's publication has its own base (its key's previous value): the lock only
        // keeps the order.
        let keyed = publication.key.is_some();
        let previous = base_lock
            .as_mut()
            .filter(|_| !keyed)
            .and_then(|base| base.replace(Base::of(publication)))
            .filter(|base| base.precedes(publication));
        let delivered = members
            .list
            .iter()
            .filter(|subscriber| {
                let conn = &subscriber.conn;
                let wanted = (offset == 0 || offset > subscriber.since)
                    && subscriber.filter.as_ref().is_none_or(&mut passes)
                    && !excluded(conn, publication);
                if let Some(Chain::Map(held)) = &subscriber.delta {
                    if !wanted {
                        // Already in its subscribe reply (at or below `since`): no gap.
                        if offset == 0 || offset > subscriber.since {
                            held.store(MAP_CHAIN_BROKEN, Ordering::Relaxed);
                        }
                        return false;
                    }
                    let before = held.load(Ordering::Relaxed);
                    let chained = keyed && offset != 0 && before.checked_add(1) == Some(offset);
                    held.store(
                        if chained { offset } else { MAP_CHAIN_BROKEN },
                        Ordering::Relaxed,
                    );
                    let encoding = conn.encoding;
                    let delta = chained
                        .then(|| publication.key_delta_frame(channel, encoding, conn.deflate))
                        .flatten();
                    return conn.push(delta.unwrap_or_else(|| {
                        publication.full_frame_for_delta(channel, encoding, conn.deflate)
                    }));
                }
                if let Some(Chain::Stream(holds_previous)) = &subscriber.delta {
                    let chained = holds_previous.swap(wanted, Ordering::Relaxed);
                    if !wanted {
                        return false;
                    }
                    let encoding = conn.encoding;
                    let delta = match &previous {
                        Some(base) if chained => publication.delta_frame(
                            channel,
                            encoding,
                            conn.deflate,
                            &base.payloads[encoding as usize],
                        ),
                        _ => None,
                    };
                    return conn.push(delta.unwrap_or_else(|| {
                        publication.full_frame_for_delta(channel, encoding, conn.deflate)
                    }));
                }
                wanted
                    && conn.push(publication.frame(
                        channel,
                        Format::of(conn.door, conn.encoding),
                        conn.deflate,
                    ))
            })
            .count();
        drop(base_lock);
        delivered
    }

    /// Queues a push for the client-protocol subscribers of `channel` only (join and leave,
    /// which plain doors have no way to show), in each one's encoding, except the connection
    /// of client `except`.
    pub fn push_to_protocol(&self, channel: &str, json: &Bytes, protobuf: &Bytes, except: &str) {
        self.each_of_door(channel, Door::Protocol, except, |conn| {
            conn.push(match conn.encoding {
                Encoding::Json => json,
                Encoding::Protobuf => protobuf,
            });
        });
    }

    /// Queues `frame` for the Pusher subscribers of `channel` (member added or removed),
    /// except the connection of client (socket id) `except`.
    pub fn push_to_pusher(&self, channel: &str, frame: &Bytes, except: &str) {
        self.each_of_door(channel, Door::Pusher, except, |conn| {
            conn.push(frame);
        });
    }

    /// Calls `each` for every subscriber of `channel` on `door`, except the connection of
    /// client `except`: the walk behind the door-specific pushes (joins, leaves, members).
    fn each_of_door(&self, channel: &str, door: Door, except: &str, mut each: impl FnMut(&Conn)) {
        let shard = self
            .shard(channel)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(members) = shard.get(channel) {
            for Subscriber { conn, .. } in &members.list {
                if conn.door == door && conn.client_id() != except {
                    each(conn);
                }
            }
        }
    }

    /// Whether connection `conn_id` subscribes to `channel`.
    pub fn is_subscribed(&self, channel: &str, conn_id: u64) -> bool {
        let shard = self
            .shard(channel)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        shard
            .get(channel)
            .is_some_and(|members| members.slot_of(conn_id).is_some())
    }

    /// Whether `channel` has a subscriber here.
    pub fn has_channel(&self, channel: &str) -> bool {
        let shard = self
            .shard(channel)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        shard.contains_key(channel)
    }

    /// Calls `f` on every subscriber of `channel` (under the shard's read lock: `f` must not
    /// subscribe or unsubscribe).
    pub fn for_each_subscriber(&self, channel: &str, mut f: impl FnMut(&Arc<Conn>)) {
        let shard = self
            .shard(channel)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(members) = shard.get(channel) {
            members.list.iter().for_each(|s| f(&s.conn));
        }
    }

    /// Channels with at least one subscriber.
    pub fn channel_count(&self) -> usize {
        self.channels.load(Ordering::Relaxed)
    }

    /// Subscriptions across all channels.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Every channel with its subscriber count, sorted by name.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let mut all: Vec<(String, usize)> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.read().unwrap_or_else(|e| e.into_inner());
                shard
                    .iter()
                    .map(|(name, members)| (name.to_string(), members.list.len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap, VecDeque};

    use super::*;
    use crate::ws::frame::Opcode;

    /// The frames queued on `conn` since last taken (counted as written).
    fn taken(conn: &Conn) -> Vec<Bytes> {
        let mut frames = VecDeque::new();
        let _ = conn.take_queued(&mut frames);
        conn.written(frames.iter().map(|f| f.len()).sum(), frames.len());
        frames.into_iter().collect()
    }

    /// Whether `frame` is a delta push.
    fn is_delta(frame: &Bytes) -> bool {
        String::from_utf8_lossy(frame).contains(r#""delta":true"#)
    }

    fn conn(id: u64) -> Arc<Conn> {
        let door = if id.is_multiple_of(3) {
            Door::Protocol
        } else {
            Door::Chat
        };
        Arc::new(Conn::new(id, door, "", 0, usize::MAX, 0))
    }

    /// The connections a publication to `channel` reaches, read back from their queues.
    fn reached(hub: &Hub, channel: &str, conns: &[Arc<Conn>]) -> BTreeSet<u64> {
        let publication = Publication::plain(Opcode::Text, Bytes::from_static(b"x"));
        let count = hub.publish(channel, &publication);
        let mut got = BTreeSet::new();
        for conn in conns {
            let mut frames = VecDeque::new();
            let _ = conn.take_queued(&mut frames);
            if !frames.is_empty() {
                conn.written(frames.iter().map(|f| f.len()).sum(), frames.len());
                assert_eq!(frames.len(), 1, "one frame per publication");
                got.insert(conn.id);
            }
        }
        assert_eq!(count, got.len(), "publish counts what it queued");
        got
    }

    fn check(hub: &Hub, model: &HashMap<&str, BTreeSet<u64>>, conns: &[Arc<Conn>]) {
        for (channel, members) in model {
            assert_eq!(&reached(hub, channel, conns), members, "{channel}");
            for conn in conns {
                assert_eq!(
                    hub.is_subscribed(channel, conn.id),
                    members.contains(&conn.id)
                );
            }
        }
        let listed: Vec<(String, usize)> = {
            let mut all: Vec<(String, usize)> = model
                .iter()
                .filter(|(_, members)| !members.is_empty())
                .map(|(channel, members)| (channel.to_string(), members.len()))
                .collect();
            all.sort();
            all
        };
        assert_eq!(hub.channels(), listed);
        assert_eq!(hub.channel_count(), listed.len());
        let total: usize = model.values().map(BTreeSet::len).sum();
        assert_eq!(hub.subscription_count(), total);
    }

    #[test]
    fn subscribers_removed_in_any_order_leave_exactly_the_others_receiving() {
        for (seed, n) in [(1, 10), (2, INDEX_FROM as u64 + 1), (3, 300), (4, 2000)] {
            let hub = Hub::new();
            let conns: Vec<Arc<Conn>> = (0..n).map(conn).collect();
            for conn in &conns {
                hub.subscribe("room", conn);
            }
            let mut order: Vec<u64> = (0..n).collect();
            fastrand::Rng::with_seed(seed).shuffle(&mut order);
            let mut left: BTreeSet<u64> = (0..n).collect();
            for (step, id) in order.into_iter().enumerate() {
                hub.unsubscribe("room", id);
                left.remove(&id);
                // Checking after every removal is quadratic; every few (and the last) suffice.
                if step.is_multiple_of(7) || left.len() < 3 {
                    let model = HashMap::from([("room", left.clone())]);
                    check(&hub, &model, &conns);
                }
            }
            assert_eq!(hub.channel_count(), 0, "the emptied channel is dropped");
        }
    }

    #[test]
    fn subscribe_and_unsubscribe_interleavings_match_a_model() {
        let channels = ["a", "b", "c"];
        let conns: Vec<Arc<Conn>> = (0..120).map(conn).collect();
        for seed in 0..20 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let hub = Hub::new();
            let mut model: HashMap<&str, BTreeSet<u64>> =
                channels.iter().map(|c| (*c, BTreeSet::new())).collect();
            for step in 0..3000 {
                let channel = channels[rng.usize(..channels.len())];
                let conn = &conns[rng.usize(..conns.len())];
                // Mostly joins early, mostly leaves late: channels cross the index threshold
                // both ways.
                let join = rng.usize(..3000) > step;
                if join {
                    hub.subscribe(channel, conn);
                    model.entry(channel).or_default().insert(conn.id);
                } else {
                    hub.unsubscribe(channel, conn.id);
                    model.entry(channel).or_default().remove(&conn.id);
                }
                if step.is_multiple_of(100) {
                    check(&hub, &model, &conns);
                }
            }
            check(&hub, &model, &conns);
        }
    }

    #[test]
    fn equal_filters_are_shared_and_each_subscriber_gets_what_its_filter_passes() {
        use crate::filter::Filter;
        use crate::wire::FilterNode;
        let btc = || {
            Some(Arc::new(
                Filter::from_node(&FilterNode {
                    key: "t".into(),
                    cmp: "eq".into(),
                    val: "BTC".into(),
                    ..FilterNode::default()
                })
                .unwrap(),
            ))
        };
        let hub = Hub::new();
        let conns: Vec<Arc<Conn>> = (0..4).map(conn).collect();
        hub.subscribe_filtered("m", &conns[0], 0, btc(), false);
        hub.subscribe_filtered("m", &conns[1], 0, btc(), false);
        hub.subscribe_filtered("m", &conns[2], 0, None, false);
        let distinct = |hub: &Hub| {
            let shard = hub.shard("m").read().unwrap();
            shard.get("m").map_or(0, |m| m.filters.len())
        };
        assert_eq!(distinct(&hub), 1, "two equal filters are held once");
        let mut tagged = Publication::plain(Opcode::Text, Bytes::from_static(b"x"));
        tagged.tags = Some(Arc::new(
            [("t".to_owned(), "BTC".to_owned())].into_iter().collect(),
        ));
        assert_eq!(hub.publish("m", &tagged), 3);
        let untagged = Publication::plain(Opcode::Text, Bytes::from_static(b"y"));
        assert_eq!(
            hub.publish("m", &untagged),
            1,
            "only the unfiltered subscriber"
        );
        hub.unsubscribe("m", conns[0].id);
        assert_eq!(distinct(&hub), 1, "still used by the other");
        hub.unsubscribe("m", conns[1].id);
        assert_eq!(distinct(&hub), 0, "dropped with its last user");
    }

    #[test]
    fn delta_subscribers_share_one_delta_frame_and_get_whole_ones_after_a_join_or_a_gap() {
        let publication = |offset: u64| {
            let doc = format!(r#"{{"v":{offset},"list":"{}"}}"#, "abcdefghij".repeat(30));
            let mut p = Publication::json(Bytes::from(doc));
            p.offset = offset;
            p
        };
        let hub = Hub::new();
        let conns: Vec<Arc<Conn>> = (0..3)
            .map(|id| Arc::new(Conn::new(id, Door::Protocol, "", 0, usize::MAX, 0)))
            .collect();
        hub.subscribe_filtered("d", &conns[0], 0, None, true);
        hub.subscribe_filtered("d", &conns[1], 0, None, true);
        hub.subscribe_filtered("d", &conns[2], 0, None, false);
        hub.publish("d", &publication(1));
        let first: Vec<Vec<Bytes>> = conns.iter().map(|c| taken(c)).collect();
        assert!(
            !is_delta(&first[0][0]) && !is_delta(&first[1][0]),
            "first: whole"
        );
        let second = publication(2);
        hub.publish("d", &second);
        let (a, b, plain) = (taken(&conns[0]), taken(&conns[1]), taken(&conns[2]));
        assert!(
            is_delta(&a[0]) && a[0].as_ptr() == b[0].as_ptr(),
            "one shared delta"
        );
        assert!(!is_delta(&plain[0]), "a plain subscriber never gets one");
        assert!(
            a[0].len() * 3 < plain[0].len(),
            "{} vs {}",
            a[0].len(),
            plain[0].len()
        );
        // A late joiner gets its first whole; the others keep the chain.
        let late = Arc::new(Conn::new(9, Door::Protocol, "", 0, usize::MAX, 0));
        hub.subscribe_filtered("d", &late, 0, None, true);
        hub.publish("d", &publication(3));
        assert!(is_delta(&taken(&conns[0])[0]));
        assert!(
            !is_delta(&taken(&late)[0]),
            "the late joiner's first: whole"
        );
        // A gap (offset 5 after 3): whole for everyone.
        hub.publish("d", &publication(5));
        assert!(!is_delta(&taken(&conns[0])[0]) && !is_delta(&taken(&late)[0]));
        assert!(
            !is_delta(&taken(&conns[1])[1]),
            "its frames of 3 and 5: 5 whole"
        );
        hub.publish("d", &publication(6));
        assert!(is_delta(&taken(&conns[1])[0]));
    }

    #[test]
    fn map_delta_subscribers_get_each_key_against_its_own_previous_value_until_a_gap() {
        let value = |key: &str, v: u64| {
            Publication::json(Bytes::from(format!(
                r#"{{"key":"{key}","v":{v},"pad":"{}"}}"#,
                "0123456789".repeat(30)
            )))
            .keyed(key)
        };
        // What the broker hands over: offsets in sequence, each set of a key that was there
        // carrying the value it replaced.
        let set = |key: &str, v: u64, offset: u64, previous: Option<&Publication>| {
            let mut p = value(key, v);
            p.offset = offset;
            if let Some(previous) = previous {
                p.follows(previous);
            }
            p
        };
        let hub = Hub::new();
        let conns: Vec<Arc<Conn>> = (0..3)
            .map(|id| Arc::new(Conn::new(id, Door::Protocol, "", 0, usize::MAX, 0)))
            .collect();
        // Both joined with the state up to offset 2 (keys a and b, each set once).
        let (a1, b1) = (set("a", 1, 1, None), set("b", 1, 2, None));
        hub.subscribe_filtered("m", &conns[0], 0, None, DeltaMode::Map { held: 2 });
        hub.subscribe_filtered("m", &conns[1], 0, None, DeltaMode::Map { held: 2 });
        hub.subscribe_filtered("m", &conns[2], 0, None, false);
        let a2 = set("a", 2, 3, Some(&a1));
        hub.publish("m", &a2);
        let (x, y, plain) = (taken(&conns[0]), taken(&conns[1]), taken(&conns[2]));
        assert!(
            is_delta(&x[0]) && x[0].as_ptr() == y[0].as_ptr(),
            "one shared delta"
        );
        assert!(!is_delta(&plain[0]) && x[0].len() * 3 < plain[0].len());
        // Another key's chain is its own; a new key has none.
        hub.publish("m", &set("b", 2, 4, Some(&b1)));
        hub.publish("m", &set("c", 1, 5, None));
        let frames = taken(&conns[0]);
        assert!(is_delta(&frames[0]) && !is_delta(&frames[1]));
        // A subscriber that joined at an older position than what follows got it whole.
        let late = Arc::new(Conn::new(9, Door::Protocol, "", 0, usize::MAX, 0));
        hub.subscribe_filtered("m", &late, 0, None, DeltaMode::Map { held: 1 });
        hub.publish("m", &set("a", 3, 6, Some(&a2)));
        assert!(is_delta(&taken(&conns[0])[0]));
        assert!(!is_delta(&taken(&late)[0]), "out of sequence: whole");
        assert_eq!(taken(&conns[1]).len(), 3, "b, c and a since its last take");
        // A gap: whole, and whole from then on (it may have missed some key's change).
        hub.publish("m", &set("a", 4, 8, Some(&a2)));
        hub.publish("m", &set("a", 5, 9, Some(&a2)));
        let frames = taken(&conns[1]);
        assert!(
            frames.iter().all(|f| !is_delta(f)),
            "{} frames",
            frames.len()
        );
    }

    #[test]
    fn a_second_subscribe_of_one_connection_is_not_a_second_delivery() {
        let hub = Hub::new();
        let conns: Vec<Arc<Conn>> = (0..40).map(conn).collect();
        for conn in conns.iter().chain(conns.iter()) {
            hub.subscribe("room", conn);
        }
        assert_eq!(hub.subscription_count(), 40);
        let all: BTreeSet<u64> = (0..40).collect();
        assert_eq!(reached(&hub, "room", &conns), all);
        for conn in &conns {
            hub.unsubscribe("room", conn.id);
        }
        assert_eq!((hub.subscription_count(), hub.channel_count()), (0, 0));
    }
}
