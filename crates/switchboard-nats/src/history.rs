//! Channel streams on JetStream: one stream for every channel of a prefix, one subject per
//! channel, and the three things done with them (publish under the next offset, read a range,
//! forget the publications but keep the position).
//!
//! # Offsets
//! A channel's position is the one its last stored message carries (see [`crate::meta`]). A
//! publish reads that message, stores the next one with `Nats-Expected-Last-Subject-Sequence`
//! set to the sequence it read, and starts over when another node got there first (JetStream
//! answers "wrong last sequence"). So offsets are gapless and never repeat whoever publishes,
//! with no lock to lose. A channel with no message, or whose last message's position has
//! expired (`history_meta_ttl`), starts a new epoch at offset 1; so does every channel when
//! the stream itself is lost, since nothing of it is left to read.
//!
//! # Markers
//! Two things need a position with no publication behind it: `remove_history` (publications
//! gone, position kept) and `stream_position` (a stream started by a subscriber, at offset 0
//! under a new epoch). Both store a marker, a message with the position's headers, an
//! `Sb-Removed` header and no payload; reads serve nothing at or before the last marker, and
//! nodes never hand one to the node as a publication. A started stream's marker counts only
//! for the short TTL it was started with (`client.history_unused_ttl`, in its keep header);
//! `keep` stores a later one under the same epoch while a node has subscribers, and the
//! first publish gives the stream `history_meta_ttl`. JetStream 2.9 has no per-message TTL,
//! so an abandoned marker's bytes stay until the stream's `max_age`; it is never read again.
//!
//! # Size and TTL
//! Both come with each publish, while JetStream 2.9 only has stream-wide limits, so each
//! message carries its own expiry and the size it was published with. Reads serve only what
//! those allow, which makes them exact; storage is trimmed after the fact: a publish past the
//! size purges the subject down to the size, and the stream's `max_age` (an engine option that
//! must exceed every `history_meta_ttl`) drops channels nobody publishes to any more.
//!
//! # Delivery
//! The stream republishes every message it stores to the channel's delivery subject, in the
//! order it stored them, so nodes receive kept publications with their offset and epoch
//! headers, in offset order, and only once stored: a publish that lost the race is never
//! delivered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::header::{NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind, Republish, StorageType};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self};
use async_nats::HeaderMap;
use bytes::Bytes;
use switchboard::broker::codec::decode_publication;
use switchboard::broker::{BrokerError, HistoryPage, HistoryRange, Position, PublishOptions};
use switchboard::publication::Publication;

use crate::error::{protocol, unavailable};
use crate::meta::{millis, new_epoch, now_ms, Meta};
use crate::reader;
use crate::subject::Names;

/// How many times a publish retries after losing the race for the next offset before it gives
/// up; the caller's deadline usually ends it first.
pub(crate) const MAX_ATTEMPTS: u32 = 64;

/// Publish locks: channels are spread over this many by hash.
const PUBLISH_LOCKS: usize = 64;
/// Channels whose last stored message a lock remembers before it forgets them all.
const REMEMBERED: usize = 1024;

/// The last message this node stored, by subject.
type Remembered = HashMap<String, Last>;

/// The channel streams of one prefix.
pub struct History {
    pub(crate) js: jetstream::Context,
    pub(crate) names: Names,
    pub(crate) max_age: Duration,
    /// Whether the stream is known to exist; reset when the server says it does not.
    exists: Mutex<bool>,
    /// One node's publishes to one channel take turns (so they never race each other for
    /// the next offset: only other nodes can), and each lock remembers the last message this
    /// node stored for its channels, so a publish right after another needs no read first (a
    /// stale memory is found out by the conditional store, which then reads).
    publishing: Box<[tokio::sync::Mutex<Remembered>]>,
    /// When this node last went through each map's whole index (see [`crate::map`]).
    pub(crate) map_passes: Mutex<HashMap<String, std::time::Instant>>,
}

/// Whether a conditional store went through.
pub(crate) enum Stored {
    /// Stored, at this sequence.
    Done(u64),
    /// Another message got there first (or the stream was lost): read again.
    Raced,
}

/// A stored message: its sequence and headers.
#[derive(Clone)]
pub(crate) struct Last {
    pub(crate) sequence: u64,
    pub(crate) meta: Meta,
}

/// A channel's last stored message in full: what a map needs to know whether it was a keyed
/// change (see [`crate::map`]).
pub(crate) struct Top {
    pub(crate) last: Last,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
}

/// When something kept `ttl` from `now_ms` ends.
pub(crate) fn keep_until(now_ms: u64, ttl: Duration) -> u64 {
    now_ms.saturating_add(millis(ttl))
}

/// The position of a channel with no stream.
pub(crate) fn no_stream() -> Position {
    Position {
        offset: 0,
        epoch: "".into(),
    }
}

fn is_stream_not_found(error: &jetstream::Error) -> bool {
    error.error_code() == ErrorCode::STREAM_NOT_FOUND
}

impl History {
    /// The streams of `names`, whose stream drops messages older than `max_age`.
    pub fn new(js: jetstream::Context, names: Names, max_age: Duration) -> Self {
        History {
            js,
            names,
            max_age,
            exists: Mutex::new(false),
            map_passes: Mutex::new(HashMap::new()),
            publishing: (0..PUBLISH_LOCKS)
                .map(|_| tokio::sync::Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    pub(crate) fn publish_lock(&self, subject: &str) -> &tokio::sync::Mutex<Remembered> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        subject.hash(&mut hasher);
        &self.publishing[(hasher.finish() as usize) % PUBLISH_LOCKS]
    }

    fn known(&self) -> bool {
        *self.exists.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_known(&self, exists: bool) {
        *self.exists.lock().unwrap_or_else(|e| e.into_inner()) = exists;
    }

    /// The stream, without asking the server (reads find out from the answer).
    pub(crate) async fn stream(&self) -> Result<stream::Stream<()>, BrokerError> {
        self.js
            .get_stream_no_info(self.names.stream())
            .await
            .map_err(|e| protocol("stream name", e))
    }

    /// Creates the stream unless it is known to exist (publishing is the only thing that may).
    pub(crate) async fn ensure(&self) -> Result<(), BrokerError> {
        if self.known() {
            return Ok(());
        }
        let config = stream::Config {
            name: self.names.stream(),
            subjects: vec![self.names.stored_all(), self.names.map_all()],
            max_age: self.max_age,
            storage: StorageType::File,
            republish: Some(Republish {
                source: self.names.stored_all(),
                destination: self.names.republished(),
                headers_only: false,
            }),
            allow_direct: true,
            ..Default::default()
        };
        let stream = self
            .js
            .get_or_create_stream(config.clone())
            .await
            .map_err(|e| unavailable("create history stream", e))?;
        if !stream
            .cached_info()
            .config
            .subjects
            .contains(&self.names.map_all())
        {
            // Made by a version without map channels: give it their subjects.
            self.js
                .update_stream(config)
                .await
                .map_err(|e| unavailable("update history stream", e))?;
        }
        self.set_known(true);
        Ok(())
    }

    /// The last message stored for `subject`, if any (and if the stream exists).
    pub(crate) async fn last(
        &self,
        stream: &stream::Stream<()>,
        subject: &str,
    ) -> Result<Option<Last>, BrokerError> {
        Ok(self.top(stream, subject).await?.map(|top| top.last))
    }

    /// The last message stored for `subject` in full, if any (and if the stream exists).
    pub(crate) async fn top(
        &self,
        stream: &stream::Stream<()>,
        subject: &str,
    ) -> Result<Option<Top>, BrokerError> {
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some(Top {
                last: Last {
                    sequence: message.sequence,
                    meta: Meta::read(&message.headers).map_err(|e| protocol(subject, e))?,
                },
                headers: message.headers,
                payload: message.payload,
            })),
            Err(e) => match e.kind() {
                LastRawMessageErrorKind::NoMessageFound => Ok(None),
                LastRawMessageErrorKind::JetStream(js) if is_stream_not_found(&js) => {
                    self.set_known(false);
                    Ok(None)
                }
                _ => Err(unavailable("read last message", e)),
            },
        }
    }

    /// Stores `payload` as `channel`'s next publication and returns its position; with
    /// `message_id`, a repeat within JetStream's duplicate window is answered with the first
    /// one's position and stores nothing.
    ///
    /// # Errors
    /// [`BrokerError`] when the server cannot be reached or answers something else.
    pub async fn publish(
        &self,
        channel: &str,
        payload: Bytes,
        options: &PublishOptions,
        message_id: Option<&str>,
    ) -> Result<Position, BrokerError> {
        let subject = self.names.stored(channel);
        let size = u64::try_from(options.history_size).unwrap_or(u64::MAX);
        let mut remembered = self.publish_lock(&subject).lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            self.ensure().await?;
            let stream = self.stream().await?;
            // What this node stored last, if it is still to be trusted; read otherwise.
            let last = match remembered.remove(&subject) {
                Some(last) if attempt == 0 => Some(last),
                _ => {
                    let top = self.top(&stream, &subject).await?;
                    if let Some(top) = &top {
                        // A map's last change goes into its index before anything follows it.
                        self.settle(&stream, channel, top).await?;
                    }
                    top.map(|top| top.last)
                }
            };
            let now = now_ms();
            let expected = last.as_ref().map_or(0, |last| last.sequence);
            let (offset, epoch) = match last.filter(|last| last.meta.alive(now)) {
                Some(last) => (last.meta.offset + 1, last.meta.epoch),
                None => (1, new_epoch()),
            };
            let ttl = millis(options.history_ttl);
            let meta = Meta {
                offset,
                epoch,
                expires_ms: now.saturating_add(ttl),
                keep_ms: now.saturating_add(ttl.max(millis(options.history_meta_ttl))),
                size,
                removed: false,
            };
            let mut headers = HeaderMap::new();
            meta.write(&mut headers);
            headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string());
            if let Some(id) = message_id {
                headers.insert(NATS_MESSAGE_ID, id);
            }
            let acked = match self
                .js
                .publish_with_headers(subject.clone(), headers, payload.clone())
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match acked {
                Ok(ack) if ack.duplicate => {
                    // The first publish with this id won; its message says where it went.
                    let first = stream
                        .get_raw_message(ack.sequence)
                        .await
                        .map_err(|e| unavailable("read a deduplicated message", e))?;
                    let first = Meta::read(&first.headers).map_err(|e| protocol(&subject, e))?;
                    return Ok(Position {
                        offset: first.offset,
                        epoch: first.epoch,
                    });
                }
                Ok(ack) => {
                    if remembered.len() >= REMEMBERED {
                        remembered.clear();
                    }
                    let position = Position {
                        offset: meta.offset,
                        epoch: meta.epoch.clone(),
                    };
                    remembered.insert(
                        subject.clone(),
                        Last {
                            sequence: ack.sequence,
                            meta,
                        },
                    );
                    if offset > size {
                        self.trim(stream, subject, size);
                    }
                    return Ok(position);
                }
                Err(e) => match e.kind() {
                    PublishErrorKind::WrongLastSequence => {
                        // Another node stored first: read again. A little jitter keeps two
                        // nodes from colliding in step.
                        let pause = fastrand::u64(0..=u64::from(attempt.min(8)) * 2);
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                    PublishErrorKind::StreamNotFound => self.set_known(false),
                    _ => return Err(unavailable("publish to history", e)),
                },
            }
        }
        Err(unavailable(
            "publish to history",
            format!("{channel:?}: no offset after {MAX_ATTEMPTS} attempts"),
        ))
    }

    /// Purges `subject` down to its last `keep` messages, in the background: reads already
    /// serve only the last `keep`, so this only frees storage and nobody needs to wait for it.
    pub(crate) fn trim(&self, stream: stream::Stream<()>, subject: String, keep: u64) {
        tokio::spawn(async move {
            let purge = stream.purge().filter(subject.as_str()).keep(keep);
            if let Err(e) = tokio::time::timeout(Duration::from_secs(10), purge).await {
                tracing::debug!(subject, error = %e, "nats: trimming history timed out");
            }
        });
    }

    /// `channel`'s kept publications in `range` and its position; a channel with no stream
    /// gives offset 0 and an empty epoch, and nothing is created.
    ///
    /// # Errors
    /// [`BrokerError`] when the server cannot be reached or answers something else.
    pub async fn read(
        &self,
        channel: &str,
        range: &HistoryRange,
    ) -> Result<HistoryPage, BrokerError> {
        let empty = |position| HistoryPage {
            publications: Vec::new(),
            position,
        };
        let subject = self.names.stored(channel);
        let stream = self.stream().await?;
        let Some(last) = self.last(&stream, &subject).await? else {
            return Ok(empty(no_stream()));
        };
        let now = now_ms();
        if !last.meta.alive(now) {
            return Ok(empty(no_stream()));
        }
        let position = Position {
            offset: last.meta.offset,
            epoch: last.meta.epoch.clone(),
        };
        if last.meta.removed || range.limit == Some(0) {
            return Ok(empty(position));
        }
        let first_kept = last.meta.offset.saturating_sub(last.meta.size);
        let mut kept: Vec<(u64, Bytes)> = Vec::new();
        let stored = reader::read(&stream, &subject, DeliverPolicy::All, last.sequence)
            .await?
            .unwrap_or_default();
        for message in stored {
            let meta = Meta::read(&message.headers).map_err(|e| protocol(&subject, e))?;
            let payload = message.payload;
            if meta.removed || meta.epoch != last.meta.epoch {
                // Everything before a removal marker or a new epoch is gone.
                kept.clear();
                continue;
            }
            if meta.offset > first_kept && meta.expires_ms > now {
                kept.push((meta.offset, payload));
            }
        }
        let limit = range.limit.unwrap_or(usize::MAX);
        let picked: Vec<(u64, Bytes)> = match (range.since, range.reverse) {
            (None, false) => kept.into_iter().take(limit).collect(),
            (Some(after), false) => kept
                .into_iter()
                .filter(|(offset, _)| *offset > after)
                .take(limit)
                .collect(),
            (None, true) => kept.into_iter().rev().take(limit).collect(),
            (Some(before), true) => kept
                .into_iter()
                .rev()
                .filter(|(offset, _)| *offset < before)
                .take(limit)
                .collect(),
        };
        let publications = picked
            .into_iter()
            .map(|(offset, payload)| {
                let mut publication: Publication =
                    decode_publication(&payload).map_err(|e| protocol(&subject, e))?;
                publication.offset = offset;
                Ok(Arc::new(publication))
            })
            .collect::<Result<Vec<_>, BrokerError>>()?;
        Ok(HistoryPage {
            publications,
            position,
        })
    }

    /// `channel`'s position, starting a stream when there is none: a marker (no publication)
    /// at offset 0 under a new epoch, kept for `ttl`, stored under the same optimistic check
    /// as a publish so that two nodes starting one channel at once agree on one epoch. A
    /// started stream found alive is extended as by [`History::keep`].
    ///
    /// # Errors
    /// [`BrokerError`] when the server cannot be reached or answers something else.
    pub async fn start(&self, channel: &str, ttl: Duration) -> Result<Position, BrokerError> {
        let subject = self.names.stored(channel);
        for _ in 0..MAX_ATTEMPTS {
            self.ensure().await?;
            let stream = self.stream().await?;
            let last = self.last(&stream, &subject).await?;
            let last_sequence = last.as_ref().map(|last| last.sequence);
            let now = now_ms();
            if let Some(last) = last.filter(|last| last.meta.alive(now)) {
                return self.extend(&stream, &subject, last, ttl).await;
            }
            let last = last_sequence;
            let marker = Meta {
                offset: 0,
                epoch: new_epoch(),
                expires_ms: now,
                keep_ms: keep_until(now, ttl),
                size: 0,
                removed: true,
            };
            let expected = last.unwrap_or(0);
            match self
                .store_marker(&subject, &marker, expected, false)
                .await?
            {
                Stored::Done(_) => {
                    return Ok(Position {
                        offset: 0,
                        epoch: marker.epoch,
                    })
                }
                Stored::Raced => {}
            }
        }
        Err(unavailable(
            "start stream",
            format!("{channel:?}: raced {MAX_ATTEMPTS} times"),
        ))
    }

    /// `channel`'s position, as a read of its top; a stream a subscribe started and nobody
    /// published to is extended to live at least `ttl` from now (see [`History::extend`]).
    /// Starts nothing.
    ///
    /// # Errors
    /// [`BrokerError`] when the server cannot be reached or answers something else.
    pub async fn keep(&self, channel: &str, ttl: Duration) -> Result<Position, BrokerError> {
        let subject = self.names.stored(channel);
        let stream = self.stream().await?;
        let top = match self.top(&stream, &subject).await? {
            Some(top) if top.last.meta.alive(now_ms()) => top,
            _ => return Ok(no_stream()),
        };
        // A map channel's position check is what turns its keys' expiry into removals, and
        // now and then keeps its index from the stream's max_age.
        let expiring = self.settle(&stream, channel, &top).await?;
        if (expiring || (crate::map::is_map_top(&top) && self.map_pass_due(channel)))
            && self.sweep(&stream, channel, &top.last.meta.epoch).await?
        {
            // Removals were stored: the position moved on.
            if let Some(last) = self.last(&stream, &subject).await? {
                return Ok(Position {
                    offset: last.meta.offset,
                    epoch: last.meta.epoch,
                });
            }
        }
        self.extend(&stream, &subject, top.last, ttl).await
    }

    /// The position `last` gives; when it is the marker of a stream a subscribe started (offset
    /// 0: no publication to hide behind a new marker) with less than half of `ttl` left, a
    /// new marker under the same epoch, kept `ttl` from now, replaces it. Half, so that a
    /// node's checks every few seconds write once per half `ttl`, not once per check. A
    /// published stream's life comes from its publications and is never touched. A lost
    /// race (a publish, or another node's extension, got there first) extends nothing: that
    /// message carries its own life, and the next check looks again.
    async fn extend(
        &self,
        stream: &stream::Stream<()>,
        subject: &str,
        last: Last,
        ttl: Duration,
    ) -> Result<Position, BrokerError> {
        let position = Position {
            offset: last.meta.offset,
            epoch: last.meta.epoch.clone(),
        };
        let ttl_ms = millis(ttl);
        let now = now_ms();
        let started = last.meta.offset == 0 && last.meta.removed;
        if !started || ttl_ms == 0 || last.meta.keep_ms >= now.saturating_add(ttl_ms / 2) {
            return Ok(position);
        }
        let marker = Meta {
            keep_ms: keep_until(now, ttl).max(last.meta.keep_ms),
            ..last.meta
        };
        if let Stored::Done(sequence) = self
            .store_marker(subject, &marker, last.sequence, false)
            .await?
        {
            // The old markers say nothing the new one does not; free them now rather than at
            // the stream's max_age. Up to the new one only, so a racing publish is kept.
            let purged = stream.purge().filter(subject).sequence(sequence).await;
            if let Err(error) = purged {
                tracing::debug!(subject, %error, "purging replaced markers failed; max_age will");
            }
        }
        Ok(position)
    }

    /// Stores a marker (a message with no publication) on `subject`, if its last message is
    /// still the one at sequence `expected`; `expiring_map`: it stands on a map that has had
    /// keys with a TTL (see [`crate::map`]), which position checks still sweep.
    pub(crate) async fn store_marker(
        &self,
        subject: &str,
        marker: &Meta,
        expected: u64,
        expiring_map: bool,
    ) -> Result<Stored, BrokerError> {
        let mut headers = HeaderMap::new();
        marker.write(&mut headers);
        if expiring_map {
            crate::map::mark_map(&mut headers);
        }
        headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string());
        let acked = match self
            .js
            .publish_with_headers(subject.to_owned(), headers, Bytes::new())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(ack) => Ok(Stored::Done(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Stored::Raced),
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                self.set_known(false);
                Ok(Stored::Raced)
            }
            Err(e) => Err(unavailable("store a marker", e)),
        }
    }

    /// Forgets `channel`'s publications and keeps its position: stores a removal marker at
    /// the current offset (under the same optimistic check as a publish, so a racing publish
    /// is not lost behind it), then purges everything before the marker.
    ///
    /// # Errors
    /// [`BrokerError`] when the server cannot be reached or answers something else.
    pub async fn remove(&self, channel: &str) -> Result<(), BrokerError> {
        let subject = self.names.stored(channel);
        let stream = self.stream().await?;
        for _ in 0..MAX_ATTEMPTS {
            let Some(top) = self.top(&stream, &subject).await? else {
                return Ok(());
            };
            if top.last.meta.removed || !top.last.meta.alive(now_ms()) {
                return Ok(());
            }
            // A map's state outlives its publications: its last change goes into the index
            // first, and the marker of a map with expiring keys says so (position checks
            // sweep it).
            let expiring = self.settle(&stream, channel, &top).await?;
            let last = top.last;
            let marker = Meta {
                removed: true,
                ..last.meta
            };
            if let Stored::Done(_) = self
                .store_marker(&subject, &marker, last.sequence, expiring)
                .await?
            {
                stream
                    .purge()
                    .filter(subject.as_str())
                    .keep(1)
                    .await
                    .map_err(|e| unavailable("purge history", e))?;
                return Ok(());
            }
        }
        Err(unavailable(
            "remove history",
            format!("{channel:?}: raced {MAX_ATTEMPTS} times"),
        ))
    }
}
