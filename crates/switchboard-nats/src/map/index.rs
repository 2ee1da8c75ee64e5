//! The map index: each key's latest change copied beside the channel's stream, the rule
//! that keeps it complete (a channel's last change goes into it before anything follows),
//! reading it whole, and storing old copies again before the stream's `max_age` drops them
//! (see the parent module).

use std::collections::BTreeMap;

use async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use async_nats::jetstream::ErrorCode;
use async_nats::HeaderMap;
use bytes::Bytes;
use switchboard::broker::codec::decode_publication;
use switchboard::broker::BrokerError;

use super::change::{Change, Lifetimes, COPIED, MAP, REMEMBERED_PASSES, SOURCE};
use super::{is_live_top, jitter};
use crate::error::unavailable;
use crate::history::{History, Top, MAX_ATTEMPTS};
use crate::meta::{millis, now_ms, Meta};
use crate::reader;

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
    pub(super) async fn indexed(
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
    pub(super) async fn live_key(
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
    pub(super) async fn index(
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
    pub(super) async fn copy_to_index(
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
    pub(super) async fn refresh(&self, channel: &str, keys: &BTreeMap<String, Change>) {
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

    /// Indexes a change this node just stored. Best effort: if it fails, the next writer or
    /// reader of the channel does it (they settle the last change before anything else).
    pub(super) async fn index_stored(
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

    /// Every change `channel`'s index holds under `epoch` that leaves a key live (expired
    /// ones included), by key.
    pub(super) async fn live_keys(
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
}
