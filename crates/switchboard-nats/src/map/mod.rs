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

mod change;
mod index;

use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream;
use async_nats::HeaderMap;
use bytes::Bytes;
use switchboard::broker::codec::{encode_publication, encode_publication_with_base};
use switchboard::broker::{BrokerError, MapPage, Position, PublishOptions};
use switchboard::publication::Publication;

use crate::error::{protocol, unavailable};
use crate::history::{History, Top, MAX_ATTEMPTS};
use crate::meta::{millis, new_epoch, now_ms, Meta};
pub(crate) use change::{is_map_top, mark_map};
use change::{Change, Lifetimes};

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

impl History {
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
            // A set of a live key carries the value it replaces, so each node makes the
            // per-key delta for its delta subscribers (kept in the stream with the change: the
            // republish delivers what was stored).
            let payload = match current.as_ref().filter(|_| !publication.removed) {
                Some(previous) => encode_publication_with_base(publication, &previous.publication),
                None => payload.clone(),
            };
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
