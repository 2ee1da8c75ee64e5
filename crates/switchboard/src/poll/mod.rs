//! Shared polls: channels whose items live in the application's backend. Clients track keys
//! (with a signature from that backend, see `signature`); this node polls the backend for
//! the union of the keys its connections track, one loop per channel, and forwards each
//! changed item to exactly the connections tracking its key.
//!
//! This module owns the node's registry of shared-poll channels (who tracks which key at
//! which version, the latest item seen per key) and each channel's refresh loop, which asks
//! the backend in batches of `shared_poll_refresh_batch_size` keys every
//! `shared_poll_refresh_interval` through `crate::hooks` (its client, retries and circuit
//! breaker). The loop starts with the first tracked key and ends when none is tracked. It
//! knows nothing of commands or replies beyond queueing the frames it is handed: the
//! client-protocol side (`protocol`) checks permissions and signatures and builds replies.
//!
//! Ordering: a track's reply (with the items already known) is queued under the channel's
//! lock, and so is every push the loop makes, so a client never reads an older version of
//! an item after a newer one. Every node polls for its own connections: with several nodes
//! the backend is asked once per node, which is correct because the backend is the source
//! of truth (docs/protocol.md).

pub mod signature;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde_json::{json, Value};

use crate::channels::SharedPollRules;
use crate::config::SharedPollMode;
use crate::conn::Conn;
use crate::error::ClientError;
use crate::hooks::{Answer, Hooks};
use crate::wire::{Encoding, PublicationBody, Push, Reply};
use crate::ws::frame::{self, Opcode};

/// Length of a versionless epoch (what the SDKs expect).
const EPOCH_LEN: usize = 8;

/// One item as the backend last gave it.
#[derive(Debug, Clone, PartialEq)]
struct Item {
    /// The backend's version (versioned), or this node's number for the change
    /// (versionless).
    version: u64,
    /// The item's JSON (empty for a removal).
    data: Bytes,
    removed: bool,
}

/// One connection's hold on a key.
struct Tracker {
    /// The version it holds.
    holds: u64,
    /// Its signature's expiry, Unix seconds: past it (and the grace) the key is dropped.
    until: u64,
}

/// One tracked key of a channel.
#[derive(Default)]
struct Key {
    latest: Option<Item>,
    /// Connection id → its hold.
    trackers: HashMap<u64, Tracker>,
}

/// A connection subscribed to a shared-poll channel.
struct Subscriber {
    conn: Arc<Conn>,
    /// How many keys it tracks.
    tracked: usize,
}

#[derive(Default)]
struct ChannelState {
    keys: HashMap<Box<str>, Key>,
    subscribers: HashMap<u64, Subscriber>,
    /// The refresh loop is running (set and cleared under this lock).
    polling: bool,
}

/// One shared-poll channel on this node.
struct PollChannel {
    name: Box<str>,
    rules: SharedPollRules,
    state: Mutex<ChannelState>,
}

impl PollChannel {
    fn lock(&self) -> MutexGuard<'_, ChannelState> {
        // A panic elsewhere must not take every shared poll down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a track answers with.
pub(crate) struct Tracked {
    /// The items this node already holds at a newer version than the client named.
    pub(crate) items: Vec<PublicationBody>,
}

/// The node's shared polls.
pub struct SharedPolls {
    /// The versionless epoch: this process's, so versions a client got from another node or
    /// an earlier run are never taken for this one's.
    epoch: Box<str>,
    /// The next versionless version (one counter for the node: a key's versions only grow,
    /// even across a channel's loop stopping and starting again).
    next_version: AtomicU64,
    /// The secret track signatures are checked with.
    secret: Box<[u8]>,
    channels: Mutex<HashMap<Box<str>, Arc<PollChannel>>>,
}

/// What the backend answered for one batch.
#[derive(Debug, PartialEq)]
pub(crate) struct Polled {
    key: String,
    data: Bytes,
    version: u64,
    removed: bool,
}

impl SharedPolls {
    /// The shared polls of a node whose track signatures are checked with `secret`.
    pub fn new(secret: &str) -> SharedPolls {
        let epoch: String = (0..EPOCH_LEN).map(|_| fastrand::alphanumeric()).collect();
        SharedPolls {
            epoch: epoch.into(),
            next_version: AtomicU64::new(1),
            secret: secret.as_bytes().into(),
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The secret track signatures are checked with.
    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// How many channels this node is polling, and how many keys its connections track
    /// across them (a key tracked by several connections counts once): what `/metrics`
    /// shows at scrape time.
    pub fn load(&self) -> (usize, usize) {
        let channels: Vec<Arc<PollChannel>> = self.channels().values().cloned().collect();
        channels.iter().fold((0, 0), |(polled, keys), channel| {
            let state = channel.lock();
            (polled + usize::from(state.polling), keys + state.keys.len())
        })
    }

    fn channels(&self) -> MutexGuard<'_, HashMap<Box<str>, Arc<PollChannel>>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn channel(&self, channel: &str) -> Option<Arc<PollChannel>> {
        self.channels().get(channel).cloned()
    }

    /// Subscribes `conn` to `channel`; returns the epoch its subscribe reply names (empty in
    /// versioned mode, where versions are the backend's).
    pub(crate) fn subscribe(
        &self,
        channel: &str,
        rules: &SharedPollRules,
        conn: &Arc<Conn>,
    ) -> String {
        let found = Arc::clone(self.channels().entry(channel.into()).or_insert_with(|| {
            Arc::new(PollChannel {
                name: channel.into(),
                rules: rules.clone(),
                state: Mutex::default(),
            })
        }));
        found.lock().subscribers.insert(
            conn.id,
            Subscriber {
                conn: Arc::clone(conn),
                tracked: 0,
            },
        );
        match rules.mode {
            SharedPollMode::Versioned => String::new(),
            SharedPollMode::Versionless => self.epoch.to_string(),
        }
    }

    /// Untracks `untrack`, then tracks `track` (key, version held, signature expiry in Unix
    /// seconds) for connection `conn_id` in `channel`, and queues the reply `answer` makes of the items already known, all
    /// under the channel's lock; starts the channel's loop when it is not running.
    ///
    /// # Errors
    /// [`ClientError::LimitExceeded`] when the connection would track more keys than the
    /// namespace allows (nothing is changed then); [`ClientError::NotAvailable`] when the
    /// connection is not subscribed.
    pub(crate) fn track(
        self: &Arc<Self>,
        hooks: Option<&Arc<Hooks>>,
        channel: &str,
        conn_id: u64,
        untrack: &[String],
        track: &[(String, u64, u64)],
        answer: impl FnOnce(Tracked),
    ) -> Result<(), ClientError> {
        let found = self.channel(channel).ok_or(ClientError::NotAvailable)?;
        let mut state = found.lock();
        let tracked_now = state
            .subscribers
            .get(&conn_id)
            .map(|s| s.tracked)
            .ok_or(ClientError::NotAvailable)?;
        let held = |state: &ChannelState, key: &str| {
            state
                .keys
                .get(key)
                .is_some_and(|k| k.trackers.contains_key(&conn_id))
        };
        // The count after this request, without changing anything yet.
        let mut unique_untracked: Vec<&str> = untrack
            .iter()
            .map(String::as_str)
            .filter(|k| held(&state, k))
            .collect();
        unique_untracked.sort_unstable();
        unique_untracked.dedup();
        let mut added: Vec<&str> = track
            .iter()
            .map(|(k, _, _)| k.as_str())
            .filter(|k| !held(&state, k) || unique_untracked.contains(k))
            .collect();
        added.sort_unstable();
        added.dedup();
        let after = tracked_now - unique_untracked.len() + added.len();
        if after > found.rules.max_keys_per_connection {
            return Err(ClientError::LimitExceeded);
        }
        untrack_keys(&mut state, conn_id, untrack);
        let mut items = Vec::new();
        for (key, version, until) in track {
            let entry = state.keys.entry(key.as_str().into()).or_default();
            let mut holds = *version;
            if let Some(latest) = entry.latest.as_ref().filter(|l| !l.removed) {
                if latest.version > holds {
                    items.push(body(key, latest));
                    holds = latest.version;
                }
            }
            entry.trackers.insert(
                conn_id,
                Tracker {
                    holds,
                    until: *until,
                },
            );
        }
        if let Some(subscriber) = state.subscribers.get_mut(&conn_id) {
            subscriber.tracked = after;
        }
        answer(Tracked { items });
        if !state.polling && !state.keys.is_empty() {
            if let Some(hooks) = hooks.and_then(|h| h.shared_poll(channel).map(|_| Arc::clone(h))) {
                state.polling = true;
                tokio::spawn(run(Arc::clone(self), Arc::clone(&found), hooks));
            }
        }
        Ok(())
    }

    /// Stops tracking `keys` of `channel` for connection `conn_id`.
    pub(crate) fn untrack(&self, channel: &str, conn_id: u64, keys: &[String]) {
        if let Some(found) = self.channel(channel) {
            let mut state = found.lock();
            untrack_keys(&mut state, conn_id, keys);
        }
    }

    /// Unsubscribes connection `conn_id` from `channel`, untracking all its keys; the
    /// channel is forgotten when it was the last subscriber (its loop then ends).
    pub(crate) fn leave(&self, channel: &str, conn_id: u64) {
        let mut channels = self.channels();
        let Some(found) = channels.get(channel).cloned() else {
            return;
        };
        let mut state = found.lock();
        state.subscribers.remove(&conn_id);
        state.keys.retain(|_, key| {
            key.trackers.remove(&conn_id);
            !key.trackers.is_empty()
        });
        if state.subscribers.is_empty() {
            drop(state);
            channels.remove(channel);
        }
    }

    /// A versionless item: the latest with a new version when the data changed.
    fn versionless(&self, latest: Option<&Item>, polled: &Polled) -> Option<Item> {
        let same = latest.is_some_and(|l| l.removed == polled.removed && l.data == polled.data);
        (!same).then(|| Item {
            version: self.next_version.fetch_add(1, Ordering::Relaxed),
            data: polled.data.clone(),
            removed: polled.removed,
        })
    }

    /// Applies one batch of the backend's answer to `channel`: updates each key's latest
    /// item and queues it to every tracker holding an older version.
    fn apply(&self, channel: &PollChannel, polled: Vec<Polled>) {
        let mut state = channel.lock();
        let ChannelState {
            keys, subscribers, ..
        } = &mut *state;
        for polled in polled {
            let Some(key) = keys.get_mut(polled.key.as_str()) else {
                continue;
            };
            let newer = match channel.rules.mode {
                SharedPollMode::Versioned => {
                    is_newer(key.latest.as_ref(), polled.version).then(|| Item {
                        version: polled.version,
                        data: polled.data.clone(),
                        removed: polled.removed,
                    })
                }
                SharedPollMode::Versionless => self.versionless(key.latest.as_ref(), &polled),
            };
            if let Some(item) = newer {
                key.latest = Some(item);
            }
            let Some(latest) = key.latest.as_ref() else {
                continue;
            };
            let mut frames = Frames::new(&channel.name, &polled.key, latest);
            for (conn_id, tracker) in &mut key.trackers {
                if tracker.holds >= latest.version {
                    continue;
                }
                tracker.holds = latest.version;
                if let Some(subscriber) = subscribers.get(conn_id) {
                    subscriber
                        .conn
                        .push(frames.for_encoding(subscriber.conn.encoding));
                }
            }
        }
    }
}

/// Whether the backend's `version` is news against the `latest` item held: above it, or the
/// first version above zero (versioned mode; version 0 means "no version").
fn is_newer(latest: Option<&Item>, version: u64) -> bool {
    match latest {
        Some(item) => item.version < version,
        None => version > 0,
    }
}

fn untrack_keys(state: &mut ChannelState, conn_id: u64, keys: &[String]) {
    let mut removed = 0;
    for key in keys {
        if let Some(entry) = state.keys.get_mut(key.as_str()) {
            if entry.trackers.remove(&conn_id).is_some() {
                removed += 1;
            }
            if entry.trackers.is_empty() {
                state.keys.remove(key.as_str());
            }
        }
    }
    if let Some(subscriber) = state.subscribers.get_mut(&conn_id) {
        subscriber.tracked = subscriber.tracked.saturating_sub(removed);
    }
}

/// The publication of `key`'s `item`.
fn body(key: &str, item: &Item) -> PublicationBody {
    PublicationBody {
        data: item.data.clone(),
        key: key.to_owned(),
        removed: item.removed,
        version: item.version,
        ..PublicationBody::default()
    }
}

/// The push of one item, encoded once per encoding when first needed.
struct Frames<'a> {
    channel: &'a str,
    key: &'a str,
    item: &'a Item,
    json: Option<Bytes>,
    protobuf: Option<Bytes>,
}

impl<'a> Frames<'a> {
    fn new(channel: &'a str, key: &'a str, item: &'a Item) -> Frames<'a> {
        Frames {
            channel,
            key,
            item,
            json: None,
            protobuf: None,
        }
    }

    fn for_encoding(&mut self, encoding: Encoding) -> &Bytes {
        let (slot, opcode) = match encoding {
            Encoding::Json => (&mut self.json, Opcode::Text),
            Encoding::Protobuf => (&mut self.protobuf, Opcode::Binary),
        };
        let (channel, key, item) = (self.channel, self.key, self.item);
        slot.get_or_insert_with(|| {
            let reply = Reply::push(Push {
                channel: channel.to_owned(),
                publication: Some(body(key, item)),
                ..Push::default()
            });
            frame::encode(opcode, &reply.encode_as(encoding))
        })
    }
}

/// The keys to ask for in the next round, each with the version this node holds, after
/// dropping the holds whose signature expired more than the grace ago (`now`, Unix seconds):
/// the SDK tracks again with a fresh signature before that, so only a client that lost its
/// right to a key (or stopped refreshing) loses it. `None` when no key is tracked: the loop
/// ends.
fn due_keys(channel: &PollChannel, now: u64) -> Option<Vec<(String, u64)>> {
    let mut state = channel.lock();
    let ChannelState {
        keys, subscribers, ..
    } = &mut *state;
    keys.retain(|_, key| {
        key.trackers.retain(|conn_id, tracker| {
            let live = now <= tracker.until.saturating_add(signature::EXPIRY_GRACE_SECS);
            if !live {
                if let Some(subscriber) = subscribers.get_mut(conn_id) {
                    subscriber.tracked = subscriber.tracked.saturating_sub(1);
                }
            }
            live
        });
        !key.trackers.is_empty()
    });
    if state.keys.is_empty() {
        state.polling = false;
        return None;
    }
    let mut keys: Vec<(String, u64)> = state
        .keys
        .iter()
        .map(|(key, entry)| {
            (
                key.to_string(),
                entry.latest.as_ref().map_or(0, |l| l.version),
            )
        })
        .collect();
    keys.sort_unstable();
    Some(keys)
}

/// The request body for one batch. Versionless versions are this node's own, which the
/// backend has no use for, so they are left out.
pub(crate) fn request_body(channel: &str, mode: SharedPollMode, batch: &[(String, u64)]) -> Value {
    let items: Vec<Value> = batch
        .iter()
        .map(|(key, version)| match mode {
            SharedPollMode::Versioned => json!({ "key": key, "version": version }),
            SharedPollMode::Versionless => json!({ "key": key }),
        })
        .collect();
    json!({ "channel": channel, "items": items })
}

/// Reads the backend's `result`: `{"items": [{"key", "data", "version", "removed"}]}`. An
/// item without a string key is skipped.
pub(crate) fn parse_items(result: &Value) -> Vec<Polled> {
    let Some(items) = result.get("items").and_then(Value::as_array) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let key = item.get("key")?.as_str()?.to_owned();
            let removed = item
                .get("removed")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let data = match item.get("data") {
                Some(data) if !removed && !data.is_null() => {
                    Bytes::from(serde_json::to_vec(data).unwrap_or_default())
                }
                _ => Bytes::new(),
            };
            let version = item.get("version").and_then(Value::as_u64).unwrap_or(0);
            Some(Polled {
                key,
                data,
                version,
                removed,
            })
        })
        .collect()
}

/// One channel's refresh loop: every interval, asks the backend for every tracked key in
/// batches and applies the answers; ends when no key is tracked. A failed batch (backend
/// down, breaker open, an error answer) is logged and retried in the next round; the
/// clients keep the items they have.
async fn run(polls: Arc<SharedPolls>, channel: Arc<PollChannel>, hooks: Arc<Hooks>) {
    let Some(endpoint) = hooks.shared_poll(&channel.name).map(Arc::clone) else {
        channel.lock().polling = false;
        return;
    };
    let mut ticker = tokio::time::interval(channel.rules.refresh_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        let Some(keys) = due_keys(&channel, crate::auth::unix_now()) else {
            return;
        };
        for batch in keys.chunks(channel.rules.batch_size.max(1)) {
            let body = request_body(&channel.name, channel.rules.mode, batch);
            match hooks.call(&endpoint, &body, None).await {
                Ok(Answer::Result(result)) => {
                    failing = false;
                    polls.apply(&channel, parse_items(&result));
                }
                Ok(Answer::Error { code, message, .. }) => {
                    if !failing {
                        tracing::warn!(event = "shared_poll_failed", channel = %channel.name, code, %message, "shared-poll backend answered an error");
                    }
                    failing = true;
                }
                Ok(Answer::Disconnect { code, .. }) => {
                    if !failing {
                        tracing::warn!(event = "shared_poll_failed", channel = %channel.name, code, "shared-poll backend answered a disconnect, which a poll cannot carry out");
                    }
                    failing = true;
                }
                // The hook layer logs failed calls (and breaker transitions) itself.
                Err(_) => failing = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_the_tracked_keys_and_carry_versions_only_when_versioned() {
        let keys: Vec<(String, u64)> = (0..5).map(|i| (format!("k{i}"), i)).collect();
        let batches: Vec<Value> = keys
            .chunks(2)
            .map(|b| request_body("poll:a", SharedPollMode::Versioned, b))
            .collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(
            batches[0],
            json!({"channel": "poll:a", "items": [{"key": "k0", "version": 0}, {"key": "k1", "version": 1}]})
        );
        assert_eq!(batches[2]["items"].as_array().unwrap().len(), 1);
        let versionless = request_body("poll:a", SharedPollMode::Versionless, &keys[..1]);
        assert_eq!(
            versionless,
            json!({"channel": "poll:a", "items": [{"key": "k0"}]})
        );
    }

    #[test]
    fn answers_are_read_leniently() {
        let result = json!({"items": [
            {"key": "a", "data": {"x": 1}, "version": 3},
            {"key": "b", "data": null, "version": 4, "removed": true},
            {"data": {"no": "key"}},
            {"key": 5},
        ]});
        let polled = parse_items(&result);
        assert_eq!(
            polled,
            vec![
                Polled {
                    key: "a".into(),
                    data: Bytes::from_static(br#"{"x":1}"#),
                    version: 3,
                    removed: false
                },
                Polled {
                    key: "b".into(),
                    data: Bytes::new(),
                    version: 4,
                    removed: true
                },
            ]
        );
        assert!(parse_items(&json!({})).is_empty());
    }

    #[test]
    fn versionless_numbers_only_changes() {
        let polls = SharedPolls::new("s");
        assert_eq!(polls.epoch.len(), EPOCH_LEN);
        let polled = |data: &'static [u8]| Polled {
            key: "k".into(),
            data: Bytes::from_static(data),
            version: 0,
            removed: false,
        };
        let first = polls.versionless(None, &polled(b"1")).unwrap();
        assert!(first.version > 0);
        assert_eq!(polls.versionless(Some(&first), &polled(b"1")), None);
        let second = polls.versionless(Some(&first), &polled(b"2")).unwrap();
        assert!(second.version > first.version);
    }

    const NOW: u64 = 1_800_000_000;

    fn rules(mode: SharedPollMode, max_keys: usize) -> SharedPollRules {
        SharedPollRules {
            url: "http://127.0.0.1:9/poll".into(),
            mode,
            refresh_interval: std::time::Duration::from_secs(1),
            batch_size: 2,
            max_keys_per_connection: max_keys,
        }
    }

    fn conn(id: u64) -> Arc<Conn> {
        Arc::new(Conn::new(
            id,
            crate::kind::Door::Protocol,
            "",
            0,
            1 << 20,
            0,
        ))
    }

    fn polled(key: &str, version: u64, data: &'static str) -> Polled {
        Polled {
            key: key.into(),
            data: Bytes::from_static(data.as_bytes()),
            version,
            removed: false,
        }
    }

    /// `key@version` of each publication push queued on `conn` (JSON text frames).
    fn pushed(conn: &Conn) -> Vec<String> {
        let mut frames = std::collections::VecDeque::new();
        conn.take_queued(&mut frames);
        frames
            .iter()
            .map(|frame| {
                // A server frame: no mask, 7-bit or 16-bit length.
                let start = if frame[1] & 0x7f == 126 { 4 } else { 2 };
                let reply: Value = serde_json::from_slice(&frame[start..]).unwrap();
                let publication = &reply["push"]["pub"];
                format!(
                    "{}@{}",
                    publication["key"].as_str().unwrap(),
                    publication["version"]
                )
            })
            .collect()
    }

    #[test]
    fn each_item_goes_to_exactly_the_connections_tracking_its_key_once_per_version() {
        let polls = Arc::new(SharedPolls::new("s"));
        let rules = rules(SharedPollMode::Versioned, 2);
        let (a, b) = (conn(1), conn(2));
        assert_eq!(polls.subscribe("poll:x", &rules, &a), "");
        polls.subscribe("poll:x", &rules, &b);
        let track = |id: u64, keys: &[(&str, u64)]| {
            let keys: Vec<(String, u64, u64)> = keys
                .iter()
                .map(|(k, v)| (k.to_string(), *v, u64::MAX))
                .collect();
            let mut answered = Vec::new();
            polls
                .track(None, "poll:x", id, &[], &keys, |t| answered = t.items)
                .map(|()| {
                    answered
                        .iter()
                        .map(|p| format!("{}@{}", p.key, p.version))
                        .collect::<Vec<_>>()
                })
        };
        assert_eq!(track(1, &[("k1", 0)]), Ok(vec![]));
        assert_eq!(track(2, &[("k2", 0), ("shared", 0)]), Ok(vec![]));
        assert_eq!(track(1, &[("shared", 0)]), Ok(vec![]));
        let channel = polls.channel("poll:x").unwrap();
        let due: Vec<String> = due_keys(&channel, NOW)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(due, ["k1", "k2", "shared"]);

        polls.apply(
            &channel,
            vec![
                polled("k1", 1, "1"),
                polled("k2", 1, "2"),
                polled("shared", 4, "4"),
            ],
        );
        assert_eq!(pushed(&a), ["k1@1", "shared@4"]);
        assert_eq!(pushed(&b), ["k2@1", "shared@4"]);
        // The same versions again, and an older one: nothing.
        polls.apply(
            &channel,
            vec![polled("k1", 1, "1"), polled("shared", 3, "3")],
        );
        assert!(pushed(&a).is_empty() && pushed(&b).is_empty());

        // Past the limit (2 keys for connection 1): refused, nothing changed.
        assert_eq!(track(1, &[("k3", 0)]), Err(ClientError::LimitExceeded));
        // Untracking one makes room; a key known already is answered at once.
        let mut answered = Vec::new();
        polls
            .track(
                None,
                "poll:x",
                1,
                &["k1".to_owned()],
                &[("k2".to_owned(), 0, u64::MAX)],
                |t| answered = t.items,
            )
            .unwrap();
        assert_eq!(
            answered
                .iter()
                .map(|p| (p.key.as_str(), p.version))
                .collect::<Vec<_>>(),
            [("k2", 1)]
        );
        polls.apply(&channel, vec![polled("k1", 2, "1"), polled("k2", 2, "2")]);
        assert_eq!(pushed(&a), ["k2@2"]);
        assert_eq!(pushed(&b), ["k2@2"]);

        // Leaving untracks everything; the last one out forgets the channel.
        polls.leave("poll:x", 1);
        assert_eq!(due_keys(&channel, NOW).unwrap().len(), 2);
        polls.leave("poll:x", 2);
        assert!(polls.channel("poll:x").is_none());
        assert!(due_keys(&channel, NOW).is_none(), "the loop ends");
        assert_eq!(track(1, &[("k1", 0)]), Err(ClientError::NotAvailable));
    }

    #[test]
    fn a_hold_past_its_signature_expiry_and_the_grace_is_dropped() {
        let polls = Arc::new(SharedPolls::new("s"));
        let a = conn(1);
        polls.subscribe("poll:x", &rules(SharedPollMode::Versioned, 2), &a);
        let keys = [
            ("soon".to_owned(), 0, NOW),
            ("later".to_owned(), 0, NOW + 60),
        ];
        polls.track(None, "poll:x", 1, &[], &keys, |_| {}).unwrap();
        let channel = polls.channel("poll:x").unwrap();
        let grace = signature::EXPIRY_GRACE_SECS;
        assert_eq!(due_keys(&channel, NOW + grace).unwrap().len(), 2);
        let due = due_keys(&channel, NOW + grace + 1).unwrap();
        assert_eq!(due, [("later".to_owned(), 0)]);
        // The dropped key no longer counts against the limit.
        polls
            .track(
                None,
                "poll:x",
                1,
                &[],
                &[("other".to_owned(), 0, NOW + 60)],
                |_| {},
            )
            .unwrap();
        assert!(due_keys(&channel, NOW + 60 + grace + 1).is_none());
    }

    #[test]
    fn versionless_channels_name_the_epoch_and_number_data_changes() {
        let polls = Arc::new(SharedPolls::new("s"));
        let rules = rules(SharedPollMode::Versionless, 10);
        let a = conn(1);
        assert_eq!(polls.subscribe("vl:x", &rules, &a).len(), EPOCH_LEN);
        polls
            .track(
                None,
                "vl:x",
                1,
                &[],
                &[("k".to_owned(), 0, u64::MAX)],
                |_| {},
            )
            .unwrap();
        let channel = polls.channel("vl:x").unwrap();
        polls.apply(&channel, vec![polled("k", 0, "1")]);
        polls.apply(&channel, vec![polled("k", 0, "1")]);
        polls.apply(&channel, vec![polled("k", 0, "2")]);
        assert_eq!(pushed(&a), ["k@1", "k@2"]);
    }

    #[test]
    fn versioned_takes_only_newer_versions() {
        let item = Item {
            version: 5,
            data: Bytes::new(),
            removed: false,
        };
        assert!(!is_newer(Some(&item), 5));
        assert!(!is_newer(Some(&item), 4));
        assert!(is_newer(Some(&item), 6));
        assert!(is_newer(None, 1));
        assert!(!is_newer(None, 0));
    }
}
