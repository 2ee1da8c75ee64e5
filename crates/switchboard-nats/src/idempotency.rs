//! Idempotency keys in a JetStream KV bucket: the first publish with a key claims it with an
//! atomic create, publishes, and records the position it got; a repeat finds the record and
//! answers with it, applying nothing.
//!
//! An entry is `pending <until>` while its publish is in flight, then
//! `done <until> <offset> <epoch>` (or `done <until> -` when no history was kept), where
//! `<until>` is Unix milliseconds. A repeat that finds a pending claim waits for it; a claim
//! whose owner died expires after [`PENDING`] and is taken over with a compare-and-set on its
//! revision, as is a record past its `idempotency_ttl`. Kept publications also carry the key as
//! `Nats-Msg-Id`, so a retry after a publish whose outcome was unknown (a timeout after the
//! server stored it) is deduplicated by JetStream within its duplicate window too.

use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store, UpdateErrorKind};
use async_nats::jetstream::{self};
use bytes::Bytes;
use switchboard::broker::{BrokerError, Position};

use crate::bucket::Bucket;
use crate::error::{protocol, unavailable};
use crate::meta::{millis, now_ms};
use crate::subject::escape;

/// How long a claim holds without a result: longer than any publish is allowed to take.
const PENDING: Duration = Duration::from_secs(30);
/// How often a repeat looks again at a claim in flight.
const POLL: Duration = Duration::from_millis(20);

/// What a key's entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    Pending {
        until_ms: u64,
    },
    Done {
        until_ms: u64,
        position: Option<Position>,
    },
}

impl Record {
    fn until_ms(&self) -> u64 {
        match self {
            Record::Pending { until_ms } | Record::Done { until_ms, .. } => *until_ms,
        }
    }

    fn encode(&self) -> Bytes {
        Bytes::from(match self {
            Record::Pending { until_ms } => format!("pending {until_ms}"),
            Record::Done {
                until_ms,
                position: Some(position),
            } => format!("done {until_ms} {} {}", position.offset, position.epoch),
            Record::Done {
                until_ms,
                position: None,
            } => format!("done {until_ms} -"),
        })
    }

    fn decode(bytes: &[u8]) -> Option<Record> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut words = text.split(' ');
        let kind = words.next()?;
        let until_ms = words.next()?.parse().ok()?;
        match (kind, words.next(), words.next()) {
            ("pending", None, None) => Some(Record::Pending { until_ms }),
            ("done", Some("-"), None) => Some(Record::Done {
                until_ms,
                position: None,
            }),
            ("done", Some(offset), Some(epoch)) => Some(Record::Done {
                until_ms,
                position: Some(Position {
                    offset: offset.parse().ok()?,
                    epoch: epoch.into(),
                }),
            }),
            _ => None,
        }
    }
}

/// A key this node claimed: publish, then [`Idempotency::finish`] or [`Idempotency::abandon`].
pub struct Claim {
    key: String,
    revision: u64,
    store: Store,
}

/// What claiming a key found.
pub enum Claimed {
    /// Nobody had it: this node publishes (boxed: a claim holds the bucket's handle).
    Mine(Box<Claim>),
    /// It was applied already, with this result.
    Done(Option<Position>),
}

/// The idempotency keys of one prefix.
pub struct Idempotency {
    bucket: Bucket,
}

impl Idempotency {
    /// Keys kept in the bucket `name`.
    pub fn new(js: jetstream::Context, name: String) -> Self {
        Idempotency {
            bucket: Bucket::new(js, name),
        }
    }

    /// Claims `key` for `ttl`, or finds what its first publish got. Waits while another
    /// publish with the key is in flight (the caller's deadline bounds the wait).
    ///
    /// # Errors
    /// [`BrokerError`] when the server cannot be reached or answers something else.
    pub async fn claim(&self, key: &str, ttl: Duration) -> Result<Claimed, BrokerError> {
        let store = self.bucket.ensure(ttl.max(PENDING)).await?;
        let key = escape(key);
        loop {
            let now = now_ms();
            let pending = Record::Pending {
                until_ms: now.saturating_add(millis(PENDING)),
            };
            let taken = match store.entry(key.clone()).await {
                Err(e) => return Err(unavailable("read idempotency key", e)),
                Ok(None) => None,
                Ok(Some(entry)) if entry.operation != Operation::Put => None,
                Ok(Some(entry)) => {
                    let record = Record::decode(&entry.value)
                        .ok_or_else(|| protocol("idempotency record", key.clone()))?;
                    if record.until_ms() > now {
                        if let Record::Done { position, .. } = record {
                            return Ok(Claimed::Done(position));
                        }
                        tokio::time::sleep(POLL).await;
                        continue;
                    }
                    Some(entry.revision)
                }
            };
            let claimed = match taken {
                // An expired record: take it over only if nobody changed it since.
                Some(revision) => store
                    .update(key.clone(), pending.encode(), revision)
                    .await
                    .map_err(|e| match e.kind() {
                        UpdateErrorKind::WrongLastRevision => None,
                        _ => Some(unavailable("claim idempotency key", e)),
                    }),
                None => store
                    .create(key.clone(), pending.encode())
                    .await
                    .map_err(|e| match e.kind() {
                        CreateErrorKind::AlreadyExists => None,
                        _ => Some(unavailable("claim idempotency key", e)),
                    }),
            };
            match claimed {
                Ok(revision) => {
                    return Ok(Claimed::Mine(Box::new(Claim {
                        key,
                        revision,
                        store,
                    })))
                }
                // Someone else claimed it in between: look again.
                Err(None) => {}
                Err(Some(e)) => return Err(e),
            }
        }
    }

    /// Records what the claimed publish got, for `ttl`.
    ///
    /// # Errors
    /// [`BrokerError`] when the server cannot be reached; the publish was applied all the
    /// same, and a repeat within [`PENDING`] waits and then applies again.
    pub async fn finish(
        &self,
        claim: Box<Claim>,
        ttl: Duration,
        position: Option<Position>,
    ) -> Result<(), BrokerError> {
        let record = Record::Done {
            until_ms: now_ms().saturating_add(millis(ttl)),
            position,
        };
        claim
            .store
            .update(claim.key, record.encode(), claim.revision)
            .await
            .map(|_| ())
            .map_err(|e| unavailable("record idempotency key", e))
    }

    /// Gives the key up after a publish that failed, so a retry applies it.
    pub async fn abandon(&self, claim: Box<Claim>) {
        if let Err(e) = claim
            .store
            .delete_expect_revision(claim.key, Some(claim.revision))
            .await
        {
            tracing::debug!(error = %e, "nats: idempotency key left to expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for record in [
            Record::Pending { until_ms: 5 },
            Record::Done {
                until_ms: 6,
                position: None,
            },
            Record::Done {
                until_ms: 7,
                position: Some(Position {
                    offset: 3,
                    epoch: "ab12".into(),
                }),
            },
        ] {
            assert_eq!(Record::decode(&record.encode()), Some(record));
        }
        assert_eq!(Record::decode(b"done"), None);
        assert_eq!(Record::decode(b"other 1"), None);
    }
}
