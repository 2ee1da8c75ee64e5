//! The hub: which connections subscribe to which channel, and fan-out.
//!
//! The registry is split into shards by channel name, each behind a short `std` read-write
//! lock that is never held across an `.await` (nothing in here is async). A [`Publication`]
//! carries its frame for each door format, each encoded at most once (plain bytes for plain
//! doors, a JSON push for the client protocol); fan-out clones the right handle into each
//! subscriber's outbound queue and never waits for a socket: a subscriber whose queue is full
//! is closed as a slow consumer by its own [`Conn::push`]. The hub never sees a socket.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::conn::Conn;
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
}

type Channels = HashMap<Box<str>, Vec<Subscriber>>;

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
    /// publication without an offset).
    pub fn subscribe_since(&self, channel: &str, conn: &Arc<Conn>, since: u64) {
        let mut shard = self
            .shard(channel)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let subscribers = shard.entry(channel.into()).or_insert_with(|| {
            self.channels.fetch_add(1, Ordering::Relaxed);
            Vec::new()
        });
        subscribers.push(Subscriber {
            conn: Arc::clone(conn),
            since,
        });
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes connection `conn_id` from `channel`; drops the channel when it empties.
    pub fn unsubscribe(&self, channel: &str, conn_id: u64) {
        let mut shard = self
            .shard(channel)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let Some(subscribers) = shard.get_mut(channel) else {
            return;
        };
        if let Some(at) = subscribers.iter().position(|s| s.conn.id == conn_id) {
            subscribers.swap_remove(at);
            self.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
        if subscribers.is_empty() {
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
        let Some(subscribers) = shard.get(channel) else {
            return 0;
        };
        let offset = publication.offset;
        subscribers
            .iter()
            .filter(|subscriber| {
                let conn = &subscriber.conn;
                (offset == 0 || offset > subscriber.since)
                    && conn.push(publication.frame(
                        channel,
                        Format::of(conn.door, conn.encoding),
                        conn.deflate,
                    ))
            })
            .count()
    }

    /// Queues a push for the client-protocol subscribers of `channel` only (join and leave,
    /// which plain doors have no way to show), in each one's encoding, except the connection
    /// of client `except`.
    pub fn push_to_protocol(&self, channel: &str, json: &Bytes, protobuf: &Bytes, except: &str) {
        let shard = self
            .shard(channel)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(subscribers) = shard.get(channel) {
            for Subscriber { conn, .. } in subscribers {
                if conn.door == Door::Protocol && conn.client_id() != except {
                    conn.push(match conn.encoding {
                        Encoding::Json => json,
                        Encoding::Protobuf => protobuf,
                    });
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
            .is_some_and(|subscribers| subscribers.iter().any(|s| s.conn.id == conn_id))
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
        if let Some(subscribers) = shard.get(channel) {
            subscribers.iter().for_each(|s| f(&s.conn));
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
                    .map(|(name, subs)| (name.to_string(), subs.len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort();
        all
    }
}
