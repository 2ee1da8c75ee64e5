//! Ingestion from a log: publications a backend appends to a durable log (a Redis Stream, a
//! JetStream stream, and one day a Kafka topic) instead of calling the HTTP API. Every node
//! reads the log through one shared consumer group, so each entry is published once by one
//! node; an entry is acknowledged only after its publish succeeded, so a node that dies or a
//! broker that is away means the entry comes again (at least once), and the idempotency key
//! makes the second publish a no-op (exactly once, as the subscribers see it).
//!
//! An entry is the JSON of an API `publish` (`{"channel", "data" | "b64data",
//! "idempotency_key"?, "skip_history"?}`) or `broadcast` (`"channels"` instead of `"channel"`).
//! An entry without a key gets `ingest:<source>:<entry id>`, so a redelivered entry is still
//! applied once. An entry that can never be published (bad JSON, unknown namespace) is logged,
//! counted and acknowledged, so it does not block the log.
//!
//! Engines implement [`LogSource`]; [`run`] drives one until shutdown.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::broker::BrokerError;
use crate::error::ClientError;
use crate::node::Node;
use crate::publication::Publication;

/// One entry read from the log.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// The log's id of the entry (what [`LogSource::ack`] takes).
    pub id: String,
    /// Its payload: the JSON of an API publish or broadcast.
    pub payload: Bytes,
}

/// A durable log that publications are read from, shared by every node through a consumer
/// group: each entry goes to one node, and comes again until that node acknowledges it.
#[async_trait]
pub trait LogSource: Send + Sync + 'static {
    /// A short name for logs, metrics and default idempotency keys.
    fn name(&self) -> &str;

    /// The next entries for this node (at most `max`), waiting up to about a second for
    /// some; entries handed out earlier and never acknowledged come again.
    ///
    /// # Errors
    /// [`BrokerError`] when the log cannot be read (the caller backs off and retries).
    async fn next(&self, max: usize) -> Result<Vec<LogEntry>, BrokerError>;

    /// Acknowledges entries: they will not come again.
    ///
    /// # Errors
    /// [`BrokerError`] when the log cannot be reached (the entries then come again, and
    /// their idempotency keys keep them from being applied twice).
    async fn ack(&self, ids: &[String]) -> Result<(), BrokerError>;
}

/// The JSON of one entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    b64data: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    skip_history: bool,
}

/// Why an entry was not published.
#[derive(Debug, thiserror::Error)]
enum EntryError {
    /// It can never be published: drop it (acknowledge) with a warning.
    #[error("{0}")]
    Bad(String),
    /// The broker is away: leave it unacknowledged, it comes again.
    #[error("broker unavailable")]
    Unavailable,
}

/// Entries read per batch.
const BATCH: usize = 64;
/// Back-off bounds after a failed read or publish.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Reads `source` and publishes its entries through `node` until `shutdown`.
pub(crate) async fn run(node: Arc<Node>, source: Arc<dyn LogSource>, shutdown: CancellationToken) {
    tracing::info!(
        event = "ingest_started",
        source = source.name(),
        "reading publications from a log"
    );
    let mut backoff = BACKOFF_MIN;
    loop {
        let entries = tokio::select! {
            _ = shutdown.cancelled() => return,
            entries = source.next(BATCH) => entries,
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(event = "ingest_read_failed", source = source.name(), %error, "cannot read the log; retrying");
                pause(&shutdown, &mut backoff).await;
                continue;
            }
        };
        let mut done = Vec::with_capacity(entries.len());
        let mut stalled = false;
        for entry in &entries {
            match publish_entry(&node, source.name(), entry).await {
                Ok(()) => done.push(entry.id.clone()),
                Err(EntryError::Bad(why)) => {
                    node.metrics.ingest_dropped.inc();
                    tracing::warn!(event = "ingest_entry_dropped", source = source.name(), id = %entry.id, reason = %why, "log entry cannot be published; acknowledged and skipped");
                    done.push(entry.id.clone());
                }
                Err(EntryError::Unavailable) => {
                    // Stop here: this entry and the rest come again, in order.
                    stalled = true;
                    break;
                }
            }
        }
        if !done.is_empty() {
            node.metrics.ingested.inc_by(done.len() as u64);
            if let Err(error) = source.ack(&done).await {
                tracing::warn!(event = "ingest_ack_failed", source = source.name(), %error, "entries will come again; their idempotency keys apply them once");
            }
        }
        if stalled {
            pause(&shutdown, &mut backoff).await;
        } else {
            backoff = BACKOFF_MIN;
        }
    }
}

async fn pause(shutdown: &CancellationToken, backoff: &mut Duration) {
    let jittered = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(jittered) => {}
    }
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

async fn publish_entry(node: &Node, source: &str, entry: &LogEntry) -> Result<(), EntryError> {
    let parsed: Entry =
        serde_json::from_slice(&entry.payload).map_err(|e| EntryError::Bad(e.to_string()))?;
    let channels = match (&parsed.channel, &parsed.channels) {
        (Some(channel), None) => vec![channel.clone()],
        (None, Some(channels)) => channels.clone(),
        _ => {
            return Err(EntryError::Bad(
                "exactly one of channel and channels".to_owned(),
            ))
        }
    };
    let key = parsed
        .idempotency_key
        .clone()
        .unwrap_or_else(|| format!("ingest:{source}:{}", entry.id));
    for channel in &channels {
        let publication = match (&parsed.data, &parsed.b64data) {
            (Some(data), None) => Publication::json(Bytes::copy_from_slice(data.get().as_bytes())),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(|bytes| Publication::bytes(Bytes::from(bytes)))
                .map_err(|e| EntryError::Bad(format!("b64data: {e}")))?,
            _ => {
                return Err(EntryError::Bad(
                    "exactly one of data and b64data".to_owned(),
                ))
            }
        };
        let mut rules = node
            .channels
            .rules(channel)
            .map_err(|e| EntryError::Bad(format!("{channel}: {e}")))?
            .clone();
        if parsed.skip_history {
            rules.history_size = 0;
        }
        // One key per channel of a broadcast: each channel's publish is applied once.
        let key = if channels.len() > 1 {
            format!("{key}:{channel}")
        } else {
            key.clone()
        };
        match node
            .publish(channel, &rules, publication, Some(key.into()))
            .await
        {
            Ok(_) => {}
            Err(ClientError::Unavailable) => return Err(EntryError::Unavailable),
            Err(other) => return Err(EntryError::Bad(other.to_string())),
        }
    }
    Ok(())
}
