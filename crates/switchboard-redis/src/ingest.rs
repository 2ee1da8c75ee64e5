//! Ingestion from a Redis Stream ([`RedisStreamSource`]): a backend `XADD`s publications to a
//! stream, and every node reads it through one consumer group, so each entry is handed to one
//! node and comes again until that node acknowledges it (`XACK`, after the publish).
//!
//! What comes again: on start, a node first reads its own pending entries (handed to it
//! before a crash or restart under the same consumer name, the node name); and every
//! [`CLAIM_EVERY`] it claims entries another consumer left pending for longer than
//! [`CLAIM_IDLE`] (a node that died), with `XAUTOCLAIM`. The entry's payload is its `payload`
//! field (the JSON of an API publish).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::Value;
use switchboard::broker::BrokerError;
use switchboard::ingest::{LogEntry, LogSource};

use crate::link::Shard;
use crate::settings::{RedisSettings, ShardAddress};

/// How long an entry may stay pending with another consumer before this node takes it.
pub const CLAIM_IDLE: Duration = Duration::from_secs(30);
/// How often pending entries of other consumers are looked for.
pub const CLAIM_EVERY: Duration = Duration::from_secs(10);
/// How long one read waits for new entries.
const BLOCK: Duration = Duration::from_secs(1);

/// Where this consumer stands in the group.
struct Cursor {
    /// Still reading entries handed to this consumer earlier (`0`), not new ones (`>`).
    own_pending: bool,
    group_ready: bool,
    last_claim: Instant,
}

/// A Redis Stream read through a consumer group.
pub struct RedisStreamSource {
    shard: Shard,
    stream: String,
    group: String,
    consumer: String,
    name: String,
    cursor: Mutex<Cursor>,
}

fn lock(cursor: &Mutex<Cursor>) -> std::sync::MutexGuard<'_, Cursor> {
    cursor.lock().unwrap_or_else(|e| e.into_inner())
}

impl RedisStreamSource {
    /// Reads `stream` as `consumer` (this node's name) of `group`, on the first server of
    /// `settings` (ingestion is not sharded: one log, one server).
    ///
    /// # Errors
    /// When the settings name no server or the client refuses the address.
    pub fn new(
        settings: &RedisSettings,
        stream: &str,
        group: &str,
        consumer: &str,
    ) -> Result<Self, String> {
        let address: &ShardAddress = settings
            .shards
            .first()
            .ok_or_else(|| "no Redis server configured".to_owned())?;
        // A read blocks for up to BLOCK; the call bound must leave room for it.
        let timeout = settings.call_timeout.max(BLOCK * 2);
        let shard = Shard::new(address, timeout).map_err(|e| e.to_string())?;
        Ok(RedisStreamSource {
            shard,
            stream: stream.to_owned(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            name: format!("redis-stream:{stream}"),
            cursor: Mutex::new(Cursor {
                own_pending: true,
                group_ready: false,
                last_claim: Instant::now(),
            }),
        })
    }

    /// Creates the group (at the stream's start, making the stream if needed) unless it
    /// exists.
    async fn ensure_group(&self) -> Result<(), BrokerError> {
        if lock(&self.cursor).group_ready {
            return Ok(());
        }
        let (stream, group) = (self.stream.clone(), self.group.clone());
        let created: Result<(), BrokerError> = self
            .shard
            .call(|mut connection| async move {
                let reply: Result<Value, redis::RedisError> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&stream)
                    .arg(&group)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut connection)
                    .await;
                match reply {
                    Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
                    other => other.map(|_| ()),
                }
            })
            .await;
        created?;
        lock(&self.cursor).group_ready = true;
        Ok(())
    }

    async fn read(
        &self,
        from: &str,
        max: usize,
        block: bool,
    ) -> Result<Vec<LogEntry>, BrokerError> {
        let (stream, group, consumer) = (
            self.stream.clone(),
            self.group.clone(),
            self.consumer.clone(),
        );
        let from = from.to_owned();
        let reply: Option<StreamReadReply> = self
            .shard
            .call(|mut connection| async move {
                let mut command = redis::cmd("XREADGROUP");
                command
                    .arg("GROUP")
                    .arg(&group)
                    .arg(&consumer)
                    .arg("COUNT")
                    .arg(max);
                if block {
                    command.arg("BLOCK").arg(BLOCK.as_millis() as u64);
                }
                command
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(&from)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(reply
            .map(|reply| {
                reply
                    .keys
                    .into_iter()
                    .flat_map(|key| key.ids)
                    .map(entry_of)
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn claim(&self, max: usize) -> Result<Vec<LogEntry>, BrokerError> {
        let (stream, group, consumer) = (
            self.stream.clone(),
            self.group.clone(),
            self.consumer.clone(),
        );
        let reply: StreamAutoClaimReply = self
            .shard
            .call(|mut connection| async move {
                redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(&group)
                    .arg(&consumer)
                    .arg(CLAIM_IDLE.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(max)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(reply.claimed.into_iter().map(entry_of).collect())
    }
}

/// The entry's id and its `payload` field (empty when missing: the node drops it as bad).
fn entry_of(id: StreamId) -> LogEntry {
    let payload = match id.map.get("payload") {
        Some(Value::BulkString(bytes)) => Bytes::from(bytes.clone()),
        Some(Value::SimpleString(text)) => Bytes::from(text.clone()),
        _ => Bytes::new(),
    };
    LogEntry { id: id.id, payload }
}

#[async_trait]
impl LogSource for RedisStreamSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn next(&self, max: usize) -> Result<Vec<LogEntry>, BrokerError> {
        self.ensure_group().await?;
        if lock(&self.cursor).own_pending {
            let pending = self.read("0", max, false).await?;
            if !pending.is_empty() {
                return Ok(pending);
            }
            lock(&self.cursor).own_pending = false;
        }
        let claim_due = lock(&self.cursor).last_claim.elapsed() >= CLAIM_EVERY;
        if claim_due {
            lock(&self.cursor).last_claim = Instant::now();
            let claimed = self.claim(max).await?;
            if !claimed.is_empty() {
                return Ok(claimed);
            }
        }
        self.read(">", max, true).await.inspect_err(|_| {
            // After a failure, entries handed out but not acknowledged are this consumer's
            // pending ones: read those first next time.
            lock(&self.cursor).own_pending = true;
        })
    }

    async fn ack(&self, ids: &[String]) -> Result<(), BrokerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let (stream, group, ids) = (self.stream.clone(), self.group.clone(), ids.to_vec());
        self.shard
            .call(|mut connection| async move {
                redis::cmd("XACK")
                    .arg(&stream)
                    .arg(&group)
                    .arg(&ids)
                    .query_async::<i64>(&mut connection)
                    .await
            })
            .await
            .map(|_| ())
    }
}
