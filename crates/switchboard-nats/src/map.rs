//! Map channels on JetStream: keyed publications kept in the channel's stream like any other,
//! and an index of each key's latest change, from which state pages are read.
//!
//! # The stream is the truth
//! A keyed publication (a set, or a removal) is stored on the channel's subject under the
//! next offset by the same optimistic concurrency as any publish (see [`crate::history`]): the
//! message itself carries its key, so the change and its offset are one message, stored or
//! not. It also carries the key's expiry (`Sb-Key-Expires`) and the TTLs it was published
//! with, which the removal an expiry makes is kept with.
//!
//! # The index
//! Each key's latest change is copied to `{prefix}.mk.{channel}.{key}` in the same stream
//! (never republished), with the channel message's stream sequence (`Sb-Source`). A copy is
//! stored only on the condition that the key's subject still ends where it was read, and only
//! when what it holds is older, so two nodes indexing at once leave the later change. The
//! copy is not atomic with the change, so every writer keeps one rule before it stores
//! anything on a channel (a publish, a removal marker): **the channel's last change goes into
//! the index first** ([`History::settle`]). Since every store is conditioned on the last
//! message it read, at any moment every change but perhaps the last is in the index; a
//! reader that reads the last message (the position P), settles it, then reads the index,
//! finds every change up to P (and perhaps later ones, which the stream from P replays, last
//! write winning). That is the promise of [`switchboard::broker::Broker::map_state`].
//!
//! Keys are compared under the channel's index, so a removal is conditional too: it is stored
//! only if the index (settled, read after the last message) shows the key live, and the store
//! only goes through if no message followed that last one. A removal of an absent key
//! changes nothing; an expired key is taken out by whoever finds it, once: the removal is
//! stored only while the index still holds the very change that expired, under the same
//! condition on the channel's last message. Expiry is found by position checks
//! (`keep_stream`, which reads the whole index of a map that has had keys with a TTL in its
//! epoch: each change passes that on to the next), by state reads, and by a keyed publish to
//! that key (which stores the removal before its own change).
//!
//! Removed keys stay in the index as removals (taking them out would let a late copy of an
//! older change bring a key back); the stream's `max_age` drops them with everything else.
//! Entries of an older epoch are ignored: a stream whose position expired takes its map with it.
//!
//! # Old copies
//! `max_age` would drop the copy of a key nobody touched too, so whoever goes through a
//! map's whole index (a state page, a sweep) stores again the copies older than half of it
//! (`Sb-Copied`), under the same condition on the key's subject. A node makes such a pass over
//! every map it checks or publishes to at least once per quarter of `max_age`
//! ([`History::map_pass_due`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use async_nats::jetstream::ErrorCode;
use async_nats::HeaderMap;
use bytes::Bytes;
use switchboard::broker::codec::{decode_publication, encode_publication};
use switchboard::broker::{BrokerError, MapPage, Position, PublishOptions};
use switchboard::publication::Publication;

use crate::error::{protocol, unavailable};
use crate::history::{History, Top, MAX_ATTEMPTS};
use crate::meta::{millis, new_epoch, now_ms, BadMeta, Meta};
use crate::reader;

const KEY_EXPIRES: &str = "Sb-Key-Expires";
const EXPIRING: &str = "Sb-Expiring";
const HISTORY_TTL: &str = "Sb-History-Ttl";
const META_TTL: &str = "Sb-Meta-Ttl";
const SOURCE: &str = "Sb-Source";
/// When an index copy was stored (ms): copies older than half the stream's `max_age` are
/// stored again, so a key nobody touches outlives `max_age` as long as its map lives.
const COPIED: &str = "Sb-Copied";
/// The most maps whose last pass a node remembers before it forgets them all (and passes
/// again once per map: harmless).
const REMEMBERED_PASSES: usize = 4096;
/// On a removal marker (`remove_history`) of a map that has had keys with a TTL: position
/// checks still sweep it.
const MAP: &str = "Sb-Map";

/// Marks a removal marker as one of a map that has had keys with a TTL.
pub(crate) fn mark_map(headers: &mut HeaderMap) {
    headers.insert(MAP, "1");
}

/// What a keyed change carries beside its [`Meta`]: when its key expires (0: never), whether
/// the map has had a key set with a TTL in this epoch (passed on from each change to the
/// next, so a position check reads the index of such maps only), and the history TTL and
/// meta TTL it was published with (a removal made by expiry is kept so).
#[derive(Debug, Clone, Copy, Default)]
struct Lifetimes {
    key_expires_ms: u64,
    expiring: bool,
    history_ttl_ms: u64,
    meta_ttl_ms: u64,
}

fn number(headers: &HeaderMap, name: &'static str) -> Result<u64, BadMeta> {
    headers
        .get(name)
        .and_then(|value| value.as_str().parse().ok())
        .ok_or(BadMeta(name))
}

impl Lifetimes {
    fn write(&self, headers: &mut HeaderMap) {
        headers.insert(KEY_EXPIRES, self.key_expires_ms.to_string());
        headers.insert(EXPIRING, if self.expiring { "1" } else { "0" });
        headers.insert(HISTORY_TTL, self.history_ttl_ms.to_string());
        headers.insert(META_TTL, self.meta_ttl_ms.to_string());
    }

    fn read(headers: &HeaderMap) -> Result<Lifetimes, BadMeta> {
        Ok(Lifetimes {
            key_expires_ms: number(headers, KEY_EXPIRES)?,
            expiring: number(headers, EXPIRING)? != 0,
            history_ttl_ms: number(headers, HISTORY_TTL)?,
            meta_ttl_ms: number(headers, META_TTL)?,
        })
    }
}

/// One keyed change: a map channel's stored message, or its copy in the index.
struct Change {
    /// The channel message's stream sequence (the copy's `Sb-Source`).
    source: u64,
    /// For a copy in the index: its own sequence, and when it was stored.
    copy: Option<(u64, u64)>,
    meta: Meta,
    lifetimes: Lifetimes,
    /// Decoded, its offset set.
    publication: Publication,
    payload: Bytes,
}

impl Change {
    /// The change a stored message is, if it is a keyed one; `sequence` is its own stream
    /// sequence, standing for the source when it carries none (a channel message).
    fn of(
        what: &str,
        sequence: u64,
        headers: &HeaderMap,
        payload: &Bytes,
    ) -> Result<Option<Change>, BrokerError> {
        let meta = Meta::read(headers).map_err(|e| protocol(what, e))?;
        if meta.removed {
            return Ok(None);
        }
        let mut publication = decode_publication(payload).map_err(|e| protocol(what, e))?;
        if publication.key.is_none() {
            return Ok(None);
        }
        publication.offset = meta.offset;
        let (source, copy) = match headers.get(SOURCE) {
            Some(_) => (
                number(headers, SOURCE).map_err(|e| protocol(what, e))?,
                // A copy without the time is as old as can be: stored again at the next pass.
                Some((sequence, number(headers, COPIED).unwrap_or(0))),
            ),
            None => (sequence, None),
        };
        Ok(Some(Change {
            source,
            copy,
            meta,
            lifetimes: Lifetimes::read(headers).map_err(|e| protocol(what, e))?,
            publication,
            payload: payload.clone(),
        }))
    }

    fn key(&self) -> &str {
        self.publication.key.as_deref().unwrap_or_default()
    }

    /// Whether this sets a key whose time is up at `now`.
    fn expired(&self, now: u64) -> bool {
        !self.publication.removed
            && self.lifetimes.key_expires_ms != 0
            && self.lifetimes.key_expires_ms <= now
    }
}

/// How a conditional store of a channel change ended.
enum Outcome {
    /// Stored at this stream sequence.
    Stored(u64),
    /// A repeat of the message id: the first one is at this sequence.
    Duplicate(u64),
    /// Another message got there first: read again.
    Raced,
}

/// A short random pause after a lost race, growing with the attempts.
async fn jitter(attempt: u32) {
    let pause = fastrand::u64(0..=u64::from(attempt.min(8)) * 2);
    tokio::time::sleep(Duration::from_millis(pause)).await;
}

/// The change following the channel's position at `offset` under `epoch`, made at `now` with
/// the given lifetimes.
fn next_meta(offset: u64, epoch: Box<str>, now: u64, size: u64, lifetimes: Lifetimes) -> Meta {
    Meta {
        offset,
        epoch,
        expires_ms: now.saturating_add(lifetimes.history_ttl_ms),
        keep_ms: now.saturating_add(lifetimes.history_ttl_ms.max(lifetimes.meta_ttl_ms)),
        size,
        removed: false,
    }
}

fn is_live_top(top: &Top, now: u64) -> bool {
    top.last.meta.alive(now)
}

/// Whether `top` is a map channel's last message (a keyed change, or a marker on a map with
/// expiring keys).
pub(crate) fn is_map_top(top: &Top) -> bool {
    top.headers.get(EXPIRING).is_some() || top.headers.get(MAP).is_some()
}

impl History {
    /// Puts `top`, `channel`'s last message, into the map index when it is a keyed change
    /// (the rule every writer keeps, see the module). Returns whether a position check
    /// should sweep the channel for expired keys: `top` is a keyed change of a map that has
    /// had keys with a TTL in its epoch, or a removal marker left on such a map.
    pub(crate) async fn settle(
        &self,
        stream: &stream::Stream<()>,
        channel: &str,
        top: &Top,
    ) -> Result<bool, BrokerError> {
        if !is_live_top(top, now_ms()) {
            return Ok(false);
        }
        if top.headers.get(MAP).is_some() {
            return Ok(true);
        }
        let what = self.names.stored(channel);
        match Change::of(&what, top.last.sequence, &top.headers, &top.payload)? {
            Some(change) => {
                self.index(stream, channel, &change).await?;
                Ok(change.lifetimes.expiring)
            }
            None => Ok(false),
        }
    }

    /// The index's entry for `key` of `channel`: the key subject's last sequence and the
    /// change it holds.
    async fn indexed(
        &self,
        stream: &stream::Stream<()>,
        channel: &str,
        key: &str,
    ) -> Result<Option<(u64, Change)>, BrokerError> {
        let subject = self.names.map_key(channel, key);
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => Ok(Change::of(
                &subject,
                message.sequence,
                &message.headers,
                &message.payload,
            )?
            .map(|change| (message.sequence, change))),
            Err(e) => match e.kind() {
                LastRawMessageErrorKind::NoMessageFound => Ok(None),
                LastRawMessageErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    self.set_known(false);
                    Ok(None)
                }
                _ => Err(unavailable("read a map key", e)),
            },
        }
    }

    /// The live key `key` of `channel` under `epoch`, as the index holds it.
    async fn live_key(
        &self,
        stream: &stream::Stream<()>,
        channel: &str,
        key: &str,
        epoch: &str,
    ) -> Result<Option<Change>, BrokerError> {
        Ok(self
            .indexed(stream, channel, key)
            .await?
            .map(|(_, change)| change)
            .filter(|change| &*change.meta.epoch == epoch && !change.publication.removed))
    }

    /// Makes `channel`'s index hold `change` unless it holds a later one: stored on the
    /// key's subject on the condition that the subject still ends where it was read, so of two
    /// nodes indexing at once the later change stays, whatever the order they store in.
    async fn index(
        &self,
        stream: &stream::Stream<()>,
        channel: &str,
        change: &Change,
    ) -> Result<(), BrokerError> {
        let subject = self.names.map_key(channel, change.key());
        for attempt in 0..MAX_ATTEMPTS {
            let existing = self.indexed(stream, channel, change.key()).await?;
            if let Some((_, held)) = &existing {
                if held.source >= change.source {
                    return Ok(());
                }
            }
            let expected = existing.map_or(0, |(sequence, _)| sequence);
            if self.copy_to_index(&subject, change, expected).await? {
                return Ok(());
            }
            jitter(attempt).await;
        }
        Err(unavailable(
            "index a map key",
            format!("{channel:?}: raced {MAX_ATTEMPTS} times"),
        ))
    }

    /// Stores `change` on the index subject `subject` if that subject's last message is the
    /// one at sequence `expected` (0: none); `false` when another got there first.
    async fn copy_to_index(
        &self,
        subject: &str,
        change: &Change,
        expected: u64,
    ) -> Result<bool, BrokerError> {
        let mut headers = HeaderMap::new();
        change.meta.write(&mut headers);
        change.lifetimes.write(&mut headers);
        headers.insert(SOURCE, change.source.to_string());
        headers.insert(COPIED, now_ms().to_string());
        headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string());
        let acked = match self
            .js
            .publish_with_headers(subject.to_owned(), headers, change.payload.clone())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
            Err(e) => Err(unavailable("index a map key", e)),
        }
    }

    /// Whether this node should go through map channel `channel`'s whole index now (to keep
    /// its copies from the stream's `max_age`): the last pass here is older than a quarter of
    /// `max_age`. Records the pass when it says yes.
    pub(crate) fn map_pass_due(&self, channel: &str) -> bool {
        let now = std::time::Instant::now();
        let mut passes = self.map_passes.lock().unwrap_or_else(|e| e.into_inner());
        match passes.get(channel) {
            Some(last) if now.duration_since(*last) < self.max_age / 4 => false,
            _ => {
                if passes.len() >= REMEMBERED_PASSES {
                    passes.clear();
                }
                passes.insert(channel.to_owned(), now);
                true
            }
        }
    }

    /// Stores again every copy among `keys` older than half the stream's `max_age`, so a key
    /// nobody touched is not dropped with old messages while its map lives. A copy that
    /// changed meanwhile is left: the newer one is fresh. Best effort: the next pass tries
    /// again.
    async fn refresh(&self, channel: &str, keys: &BTreeMap<String, Change>) {
        let now = now_ms();
        let old_before = now.saturating_sub(millis(self.max_age) / 2);
        for change in keys.values() {
            let Some((sequence, copied)) = change.copy else {
                continue;
            };
            if copied > old_before {
                continue;
            }
            let subject = self.names.map_key(channel, change.key());
            if let Err(error) = self.copy_to_index(&subject, change, sequence).await {
                tracing::debug!(channel, %error, "nats: a map key's copy was not refreshed");
            }
        }
    }

    /// Stores a change on `channel`'s subject if its last message is still the one at
    /// sequence `expected` (0: none).
    async fn store_change(
        &self,
        subject: &str,
        meta: &Meta,
        lifetimes: Lifetimes,
        payload: Bytes,
        expected: u64,
        message_id: Option<&str>,
    ) -> Result<Outcome, BrokerError> {
        let mut headers = HeaderMap::new();
        meta.write(&mut headers);
        lifetimes.write(&mut headers);
        headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string());
        if let Some(id) = message_id {
            headers.insert(NATS_MESSAGE_ID, id);
        }
        let acked = match self
            .js
            .publish_with_headers(subject.to_owned(), headers, payload)
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(ack) if ack.duplicate => Ok(Outcome::Duplicate(ack.sequence)),
            Ok(ack) => Ok(Outcome::Stored(ack.sequence)),
            Err(e) => match e.kind() {
                PublishErrorKind::WrongLastSequence => Ok(Outcome::Raced),
                PublishErrorKind::StreamNotFound => {
                    self.set_known(false);
                    Ok(Outcome::Raced)
                }
                _ => Err(unavailable("store a map change", e)),
            },
        }
    }

    /// Indexes a change this node just stored. Best effort: if it fails, the next writer or
    /// reader of the channel does it (they settle the last change before anything else).
    async fn index_stored(
        &self,
        stream: &stream::Stream<()>,
        channel: &str,
        source: u64,
        meta: Meta,
        lifetimes: Lifetimes,
        payload: Bytes,
    ) {
        let mut publication = match decode_publication(&payload) {
            Ok(publication) => publication,
            // It was encoded here a moment ago.
            Err(error) => {
                return tracing::warn!(channel, %error, "nats: a map change does not decode")
            }
        };
        publication.offset = meta.offset;
        let change = Change {
            source,
            copy: None,
            meta,
            lifetimes,
            publication,
            payload,
        };
        if let Err(error) = self.index(stream, channel, &change).await {
            tracing::debug!(channel, %error, "nats: a map change is not indexed yet; the next writer or reader will");
        }
    }

    /// A keyed publication (`publication.key` set) to map channel `channel`: its key's
    /// expiry taken out first if due, then the change stored under the next offset (a removal
    /// only if the key is live), and indexed. Returns the position after it (the position
    /// as it is, for the removal of an absent key).
    ///
    /// # Errors
    /// [`BrokerError`] when the server cannot be reached or answers something else.
    pub async fn publish_keyed(
        &self,
        channel: &str,
        publication: &Publication,
        options: &PublishOptions,
        message_id: Option<&str>,
    ) -> Result<Position, BrokerError> {
        let key = publication.key.as_deref().unwrap_or_default();
        let subject = self.names.stored(channel);
        // A map keeps history (the configuration insists): at least one.
        let size = u64::try_from(options.history_size.max(1)).unwrap_or(u64::MAX);
        // This node's changes to one channel take turns, as plain publishes do.
        let mut remembered = self.publish_lock(&subject).lock().await;
        // What the plain path remembers says nothing of the index: read.
        remembered.remove(&subject);
        let payload = encode_publication(publication);
        for attempt in 0..MAX_ATTEMPTS {
            self.ensure().await?;
            let stream = self.stream().await?;
            let top = self.top(&stream, &subject).await?;
            let now = now_ms();
            let expected = top.as_ref().map_or(0, |top| top.last.sequence);
            let live = top.filter(|top| is_live_top(top, now));
            let (offset, epoch, current, expiring) = match &live {
                Some(top) => {
                    let expiring = self.settle(&stream, channel, top).await?;
                    let epoch = top.last.meta.epoch.clone();
                    let current = self.live_key(&stream, channel, key, &epoch).await?;
                    (top.last.meta.offset + 1, epoch, current, expiring)
                }
                None => (1, new_epoch(), None, false),
            };
            if let Some(due) = current.as_ref().filter(|change| change.expired(now)) {
                // Its time is up: its removal comes first, as a sweep would have made it.
                let lifetimes = Lifetimes {
                    key_expires_ms: 0,
                    expiring: true,
                    ..due.lifetimes
                };
                let meta = next_meta(offset, epoch, now, due.meta.size, lifetimes);
                let removal = Publication::removal(key);
                let body = encode_publication(&removal);
                match self
                    .store_change(&subject, &meta, lifetimes, body.clone(), expected, None)
                    .await?
                {
                    Outcome::Stored(source) => {
                        self.index_stored(&stream, channel, source, meta, lifetimes, body)
                            .await;
                    }
                    Outcome::Duplicate(_) | Outcome::Raced => jitter(attempt).await,
                }
                continue;
            }
            if publication.removed && current.is_none() {
                return match live {
                    Some(top) => Ok(Position {
                        offset: top.last.meta.offset,
                        epoch: top.last.meta.epoch,
                    }),
                    None => self.start(channel, options.history_meta_ttl).await,
                };
            }
            let key_ttl = millis(options.key_ttl);
            let lifetimes = Lifetimes {
                key_expires_ms: if publication.removed || key_ttl == 0 {
                    0
                } else {
                    now.saturating_add(key_ttl)
                },
                expiring: expiring || key_ttl > 0,
                history_ttl_ms: millis(options.history_ttl),
                meta_ttl_ms: millis(options.history_meta_ttl),
            };
            let meta = next_meta(offset, epoch, now, size, lifetimes);
            match self
                .store_change(
                    &subject,
                    &meta,
                    lifetimes,
                    payload.clone(),
                    expected,
                    message_id,
                )
                .await?
            {
                Outcome::Stored(source) => {
                    let position = Position {
                        offset: meta.offset,
                        epoch: meta.epoch.clone(),
                    };
                    self.index_stored(&stream, channel, source, meta, lifetimes, payload.clone())
                        .await;
                    if offset > size {
                        self.trim(stream.clone(), subject, size);
                    }
                    // Expiring a key takes this channel's turn: give it back first.
                    drop(remembered);
                    if self.map_pass_due(channel) {
                        // A map nobody reads or checks still keeps its copies young.
                        if let Err(error) = self.sweep(&stream, channel, &position.epoch).await {
                            tracing::debug!(channel, %error, "nats: a map pass failed; the next will");
                        }
                    }
                    return Ok(position);
                }
                Outcome::Duplicate(sequence) => {
                    // The first publish with this id won; its message says where it went.
                    let first = stream
                        .get_raw_message(sequence)
                        .await
                        .map_err(|e| unavailable("read a deduplicated message", e))?;
                    let first = Meta::read(&first.headers).map_err(|e| protocol(&subject, e))?;
                    return Ok(Position {
                        offset: first.offset,
                        epoch: first.epoch,
                    });
                }
                Outcome::Raced => jitter(attempt).await,
            }
        }
        Err(unavailable(
            "publish to a map",
            format!("{channel:?}: no offset after {MAX_ATTEMPTS} attempts"),
        ))
    }

    /// Every change `channel`'s index holds under `epoch` that leaves a key live (expired
    /// ones included), by key.
    async fn live_keys(
        &self,
        stream: &stream::Stream<()>,
        channel: &str,
        epoch: &str,
    ) -> Result<BTreeMap<String, Change>, BrokerError> {
        let filter = self.names.map_keys(channel);
        let stored = reader::read(stream, &filter, DeliverPolicy::LastPerSubject, u64::MAX)
            .await?
            .unwrap_or_default();
        let mut latest: BTreeMap<String, Change> = BTreeMap::new();
        for message in stored {
            let Some(change) = Change::of(
                &filter,
                message.sequence,
                &message.headers,
                &message.payload,
            )?
            else {
                continue;
            };
            // A key indexed again while the read ran may come twice: the later change wins.
            match latest.get(change.key()) {
                Some(held) if held.source >= change.source => {}
                _ => {
                    latest.insert(change.key().to_owned(), change);
                }
            }
        }
        latest.retain(|_, change| &*change.meta.epoch == epoch && !change.publication.removed);
        Ok(latest)
    }

    /// Takes out `due`'s key as a removal, if the index still holds that very change for it
    /// (so of nodes sweeping at once, one stores the removal; the others find the key
    /// changed and stop).
    async fn expire(&self, channel: &str, due: &Change) -> Result<(), BrokerError> {
        let subject = self.names.stored(channel);
        let mut remembered = self.publish_lock(&subject).lock().await;
        remembered.remove(&subject);
        for attempt in 0..MAX_ATTEMPTS {
            let stream = self.stream().await?;
            let now = now_ms();
            let Some(top) = self
                .top(&stream, &subject)
                .await?
                .filter(|top| is_live_top(top, now))
            else {
                return Ok(());
            };
            if top.last.meta.epoch != due.meta.epoch {
                return Ok(());
            }
            self.settle(&stream, channel, &top).await?;
            let still = self
                .indexed(&stream, channel, due.key())
                .await?
                .is_some_and(|(_, held)| held.source == due.source);
            if !still {
                return Ok(());
            }
            let lifetimes = Lifetimes {
                key_expires_ms: 0,
                expiring: true,
                ..due.lifetimes
            };
            let meta = next_meta(
                top.last.meta.offset + 1,
                top.last.meta.epoch.clone(),
                now,
                due.meta.size,
                lifetimes,
            );
            let removal = Publication::removal(due.key());
            let body = encode_publication(&removal);
            match self
                .store_change(
                    &subject,
                    &meta,
                    lifetimes,
                    body.clone(),
                    top.last.sequence,
                    None,
                )
                .await?
            {
                Outcome::Stored(source) => {
                    self.index_stored(&stream, channel, source, meta, lifetimes, body)
                        .await;
                    return Ok(());
                }
                Outcome::Duplicate(_) | Outcome::Raced => jitter(attempt).await,
            }
        }
        Err(unavailable(
            "expire a map key",
            format!("{channel:?}: raced {MAX_ATTEMPTS} times"),
        ))
    }

    /// Takes out every expired key of map channel `channel` under `epoch`, and stores again
    /// the copies that grow old (see [`History::refresh`]); returns whether any key expired.
    pub(crate) async fn sweep(
        &self,
        stream: &stream::Stream<()>,
        channel: &str,
        epoch: &str,
    ) -> Result<bool, BrokerError> {
        let now = now_ms();
        let keys = self.live_keys(stream, channel, epoch).await?;
        self.refresh(channel, &keys).await;
        let due: Vec<&Change> = keys.values().filter(|change| change.expired(now)).collect();
        for change in &due {
            self.expire(channel, change).await?;
        }
        Ok(!due.is_empty())
    }

    /// A page of map channel `channel`'s state: up to `limit` live keys after `after`, in
    /// key order, with the position they hold every change up to (the channel's last message,
    /// settled, read before the index). Starts the stream when there is none (as
    /// [`History::start`] with `ttl`); expired keys are taken out first.
    ///
    /// # Errors
    /// [`BrokerError`] when the server cannot be reached or answers something else.
    pub async fn map_state(
        &self,
        channel: &str,
        after: &str,
        limit: usize,
        ttl: Duration,
    ) -> Result<MapPage, BrokerError> {
        let subject = self.names.stored(channel);
        let limit = limit.max(1);
        for _ in 0..MAX_ATTEMPTS {
            let started = self.start(channel, ttl).await?;
            let stream = self.stream().await?;
            let now = now_ms();
            let Some(top) = self
                .top(&stream, &subject)
                .await?
                .filter(|top| is_live_top(top, now) && top.last.meta.epoch == started.epoch)
            else {
                // Lost between the two reads: start over.
                continue;
            };
            let position = Position {
                offset: top.last.meta.offset,
                epoch: top.last.meta.epoch.clone(),
            };
            self.settle(&stream, channel, &top).await?;
            let keys = self.live_keys(&stream, channel, &position.epoch).await?;
            self.refresh(channel, &keys).await;
            if keys.values().any(|change| change.expired(now)) {
                self.sweep(&stream, channel, &position.epoch).await?;
                continue;
            }
            let mut page: Vec<Change> = keys
                .into_iter()
                .filter(|(key, _)| after.is_empty() || key.as_str() > after)
                .take(limit + 1)
                .map(|(_, change)| change)
                .collect();
            let cursor = if page.len() > limit {
                page.truncate(limit);
                page.last().map(|change| change.key().into())
            } else {
                None
            };
            return Ok(MapPage {
                entries: page
                    .into_iter()
                    .map(|change| Arc::new(change.publication))
                    .collect(),
                cursor,
                position,
            });
        }
        Err(unavailable(
            "read a map",
            format!("{channel:?}: lost {MAX_ATTEMPTS} times"),
        ))
    }
}
