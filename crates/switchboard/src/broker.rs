//! The memory broker: channel streams (history with offsets and epochs) and presence, kept in
//! this process, and the one publish path every door and the API go through.
//!
//! Publishing to a channel that keeps history takes that channel's stream lock, gives the
//! publication the next offset, keeps it, and fans it out through the [`Hub`] before letting
//! go; a recovering subscribe takes the same lock to read what was missed, queue its reply and
//! join the channel. So a subscriber sees recovered publications, then live ones, with no gap
//! and no duplicate. Lock order is always stream, then hub shard. With the memory broker a
//! restart loses every stream, and the next one starts under a new epoch, which recovering
//! clients are told (`recovered: false`).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::channels::ChannelRules;
use crate::conn::Conn;
use crate::history::{ChannelHistory, HistoryQuery, Position, Unrecoverable};
use crate::hub::Hub;
use crate::publication::{ClientInfo, Publication};

const SHARDS: usize = 64;

type Streams = HashMap<Box<str>, ChannelHistory>;
type Present = HashMap<Box<str>, HashMap<Box<str>, Arc<ClientInfo>>>;

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Local subscribers it was queued for.
    pub delivered: usize,
    /// The channel's position after it (channels that keep history).
    pub position: Option<Position>,
}

/// What a subscribe found in the channel's stream.
#[derive(Debug)]
pub struct StreamState {
    /// The position now (channels that keep history).
    pub position: Option<Position>,
    /// Asked to recover: the missed publications, or why not.
    pub recovery: Option<Result<Vec<Arc<Publication>>, Unrecoverable>>,
}

/// A connection about to join a channel.
pub struct Joining<'a> {
    /// The channel.
    pub channel: &'a str,
    /// Its rules.
    pub rules: &'a ChannelRules,
    /// The connection.
    pub conn: &'a Arc<Conn>,
    /// Recover from this offset and epoch.
    pub recover_from: Option<(u64, &'a str)>,
}

/// Streams and presence of every channel on this node.
pub struct Broker {
    streams: Box<[Mutex<Streams>]>,
    presence: Box<[Mutex<Present>]>,
}

impl Default for Broker {
    fn default() -> Self {
        Broker {
            streams: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            presence: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
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

impl Broker {
    fn streams(&self, channel: &str) -> MutexGuard<'_, Streams> {
        lock(&self.streams[shard_of(channel)])
    }

    fn presence_shard(&self, channel: &str) -> MutexGuard<'_, Present> {
        lock(&self.presence[shard_of(channel)])
    }

    /// Publishes to `channel`: keeps it under the next offset when the channel keeps history,
    /// and queues it for every local subscriber.
    pub fn publish(
        &self,
        hub: &Hub,
        channel: &str,
        rules: &ChannelRules,
        mut publication: Publication,
        now_ms: u64,
    ) -> Published {
        if !rules.keeps_history() {
            let delivered = hub.publish(channel, &publication);
            return Published {
                delivered,
                position: None,
            };
        }
        let mut streams = self.streams(channel);
        let stream = streams
            .entry(channel.into())
            .or_insert_with(|| ChannelHistory::new(now_ms));
        publication.offset = stream.next_offset();
        let publication = Arc::new(publication);
        let ttl_ms = rules.history_ttl.as_millis() as u64;
        stream.append(Arc::clone(&publication), rules.history_size, ttl_ms, now_ms);
        let delivered = hub.publish(channel, &publication);
        Published {
            delivered,
            position: Some(stream.position()),
        }
    }

    /// Subscribes `conn` to `channel` atomically with reading its stream: `reply` runs under
    /// the channel's lock with what was found (it queues the subscribe reply), and the
    /// connection joins the channel right after, before any later publication. `reply`
    /// returns `false` to not join after all.
    pub fn subscribe(
        &self,
        hub: &Hub,
        joining: Joining<'_>,
        now_ms: u64,
        reply: impl FnOnce(StreamState) -> bool,
    ) {
        let Joining {
            channel,
            rules,
            conn,
            recover_from,
        } = joining;
        if !rules.keeps_history() {
            let state = StreamState {
                position: None,
                recovery: recover_from.map(|_| Err(Unrecoverable)),
            };
            if reply(state) {
                hub.subscribe(channel, conn);
            }
            return;
        }
        let mut streams = self.streams(channel);
        let stream = streams
            .entry(channel.into())
            .or_insert_with(|| ChannelHistory::new(now_ms));
        stream.prune(now_ms);
        let state = StreamState {
            position: Some(stream.position()),
            recovery: recover_from.map(|(offset, epoch)| stream.recover(offset, epoch)),
        };
        if reply(state) {
            hub.subscribe(channel, conn);
        }
    }

    /// The kept publications of `channel` asked for by `query`, with its position.
    ///
    /// # Errors
    /// [`Unrecoverable`] when `query.since` names another epoch.
    pub fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
        now_ms: u64,
    ) -> Result<(Vec<Arc<Publication>>, Position), Unrecoverable> {
        let mut streams = self.streams(channel);
        let stream = streams
            .entry(channel.into())
            .or_insert_with(|| ChannelHistory::new(now_ms));
        stream.prune(now_ms);
        Ok((stream.query(query)?, stream.position()))
    }

    /// Forgets the kept publications of `channel` (its position stays).
    pub fn remove_history(&self, channel: &str) {
        if let Some(stream) = self.streams(channel).get_mut(channel) {
            stream.clear();
        }
    }

    /// Drops expired publications everywhere, and streams idle for `meta_ttl_ms`.
    pub fn expire(&self, now_ms: u64, meta_ttl_ms: u64) {
        for shard in self.streams.iter() {
            let mut streams = lock(shard);
            streams.retain(|_, stream| {
                stream.prune(now_ms);
                !stream.is_stale(now_ms, meta_ttl_ms)
            });
        }
    }

    /// Records `info` as present in `channel`.
    pub fn join(&self, channel: &str, info: Arc<ClientInfo>) {
        self.presence_shard(channel)
            .entry(channel.into())
            .or_default()
            .insert(info.client.clone(), info);
    }

    /// Removes client `client` from `channel`'s presence.
    pub fn leave(&self, channel: &str, client: &str) {
        let mut shard = self.presence_shard(channel);
        if let Some(clients) = shard.get_mut(channel) {
            clients.remove(client);
            if clients.is_empty() {
                shard.remove(channel);
            }
        }
    }

    /// Everyone present in `channel`.
    pub fn presence(&self, channel: &str) -> Vec<Arc<ClientInfo>> {
        self.presence_shard(channel)
            .get(channel)
            .map(|clients| clients.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many clients and distinct users are present in `channel`.
    pub fn presence_stats(&self, channel: &str) -> (usize, usize) {
        let shard = self.presence_shard(channel);
        let Some(clients) = shard.get(channel) else {
            return (0, 0);
        };
        let users: std::collections::HashSet<&str> =
            clients.values().map(|info| &*info.user).collect();
        (clients.len(), users.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::door::Door;
    use bytes::Bytes;
    use std::collections::VecDeque;
    use std::time::Duration;

    fn rules(history_size: usize) -> ChannelRules {
        ChannelRules {
            subscribe: crate::config::SubscribeRule::Anonymous,
            publish: crate::config::PublishRule::Subscribers,
            presence: true,
            join_leave: true,
            history_size,
            history_ttl: Duration::from_secs(60),
            recover: true,
        }
    }

    fn data(n: u32) -> Publication {
        Publication::json(Bytes::from(n.to_string()))
    }

    #[test]
    fn a_recovering_subscriber_gets_the_missed_then_the_live_in_order() {
        let (broker, hub) = (Broker::default(), Hub::new());
        let rules = rules(10);
        for n in 1..=3 {
            broker.publish(&hub, "c", &rules, data(n), 0);
        }
        let conn = Arc::new(Conn::new(1, Door::Protocol, "", 0, 1 << 20, 0));
        let epoch = broker
            .history("c", &HistoryQuery::default(), 0)
            .unwrap()
            .1
            .epoch;
        let mut recovered = Vec::new();
        let joining = Joining {
            channel: "c",
            rules: &rules,
            conn: &conn,
            recover_from: Some((1, &epoch)),
        };
        broker.subscribe(&hub, joining, 0, |state| {
            recovered = state.recovery.unwrap().unwrap();
            true
        });
        assert_eq!(
            recovered.iter().map(|p| p.offset).collect::<Vec<_>>(),
            [2, 3]
        );
        let published = broker.publish(&hub, "c", &rules, data(4), 0);
        assert_eq!(published.delivered, 1);
        assert_eq!(published.position.unwrap().offset, 4);
        let mut queued = VecDeque::new();
        conn.take_queued(&mut queued);
        assert_eq!(queued.len(), 1, "the live publication follows");
    }

    #[test]
    fn channels_without_history_have_no_position() {
        let (broker, hub) = (Broker::default(), Hub::new());
        let published = broker.publish(&hub, "c", &rules(0), data(1), 0);
        assert_eq!(published.position, None);
    }

    #[test]
    fn presence_counts_clients_and_distinct_users() {
        let broker = Broker::default();
        broker.join("c", Arc::new(ClientInfo::new("a", "u1", None, None)));
        broker.join("c", Arc::new(ClientInfo::new("b", "u1", None, None)));
        broker.join("c", Arc::new(ClientInfo::new("d", "u2", None, None)));
        assert_eq!(broker.presence_stats("c"), (3, 2));
        broker.leave("c", "a");
        assert_eq!(broker.presence("c").len(), 2);
    }

    #[test]
    fn idle_streams_are_forgotten_after_the_meta_ttl() {
        let (broker, hub) = (Broker::default(), Hub::new());
        let rules = rules(10);
        broker.publish(&hub, "c", &rules, data(1), 0);
        let before = broker.history("c", &HistoryQuery::default(), 0).unwrap().1;
        broker.expire(120_000, 100_000);
        let after = broker
            .history("c", &HistoryQuery::default(), 120_000)
            .unwrap()
            .1;
        assert_ne!(before.epoch, after.epoch, "a new stream, a new epoch");
        assert_eq!(after.offset, 0);
    }
}
