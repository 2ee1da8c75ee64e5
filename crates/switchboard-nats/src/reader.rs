//! Reading stored messages of one subject filter in one pass: an ephemeral, in-memory pull
//! consumer with no acks, drained in batches up to what was pending when it was made.
//!
//! JetStream 2.9 has no batched direct get, and a message-by-message walk costs one round trip
//! per message, so history and presence reads both go through here.

use std::time::Duration;

use async_nats::jetstream::stream::{ConsumerErrorKind, Stream};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{consumer, Message};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use switchboard::broker::BrokerError;

use crate::error::{protocol, unavailable};

/// Messages asked for per fetch.
const BATCH: u64 = 256;

/// One stored message.
pub struct Stored {
    /// Its stream sequence.
    pub sequence: u64,
    /// Its headers (empty when it had none).
    pub headers: HeaderMap,
    /// Its payload.
    pub payload: Bytes,
}

fn stored(message: Message) -> Result<Stored, BrokerError> {
    let sequence = message
        .info()
        .map_err(|e| protocol("stored message", e))?
        .stream_sequence;
    let message = message.message;
    Ok(Stored {
        sequence,
        headers: message.headers.unwrap_or_default(),
        payload: message.payload,
    })
}

/// Every message of `stream` matching `filter` that `policy` delivers, oldest first, stopping
/// after sequence `until`. `None` when the stream does not exist.
///
/// # Errors
/// [`BrokerError`] when the server cannot be reached or answers something else.
pub async fn read(
    stream: &Stream<()>,
    filter: &str,
    policy: consumer::DeliverPolicy,
    until: u64,
) -> Result<Option<Vec<Stored>>, BrokerError> {
    let created = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: filter.to_owned(),
            deliver_policy: policy,
            ack_policy: consumer::AckPolicy::None,
            // It lives for one read; the server drops it even if this node never deletes it.
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            ..Default::default()
        })
        .await;
    let consumer = match created {
        Ok(consumer) => consumer,
        Err(e) => {
            if let ConsumerErrorKind::JetStream(js) = e.kind() {
                if js.error_code() == ErrorCode::STREAM_NOT_FOUND {
                    return Ok(None);
                }
            }
            return Err(unavailable("create a reader", e));
        }
    };
    let name = consumer.cached_info().name.clone();
    let mut pending = consumer.cached_info().num_pending;
    let mut found = Vec::new();
    'read: while pending > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(usize::try_from(pending.min(BATCH)).unwrap_or(1))
            .messages()
            .await
            .map_err(|e| unavailable("read", e))?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = stored(message.map_err(|e| unavailable("read", e))?)?;
            got += 1;
            if message.sequence > until {
                break 'read;
            }
            let last = message.sequence == until;
            found.push(message);
            if last {
                break 'read;
            }
        }
        if got == 0 {
            break;
        }
        pending = pending.saturating_sub(got);
    }
    let stream = stream.clone();
    tokio::spawn(async move {
        // Best effort: the inactivity threshold removes it anyway.
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.delete_consumer(&name)).await;
    });
    Ok(Some(found))
}
