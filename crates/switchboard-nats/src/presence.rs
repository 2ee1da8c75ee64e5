//! Presence in a JetStream KV bucket: one entry per (channel, client), keyed
//! `{channel}.{client}` (both escaped), whose value is the client's info in the codec's bytes
//! and whose `Sb-Expires` header says when it stops counting.
//!
//! Adding again overwrites the entry (the bucket keeps one revision per key), which is how a
//! node refreshes its clients. Expiry is exact on reads, which skip entries past their
//! `Sb-Expires`; storage is freed by the bucket's `max_age`, which is the longest TTL any node
//! has passed to `add` (see [`crate::bucket`]), so an expired entry takes up space for at most
//! that long. Reading a channel's presence is one pass over the last entry of each of its keys.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self};
use async_nats::HeaderMap;
use switchboard::broker::codec::{decode_client_info, encode_client_info};
use switchboard::broker::BrokerError;
use switchboard::publication::ClientInfo;

use crate::bucket::Bucket;
use crate::error::{protocol, unavailable};
use crate::meta::{millis, now_ms};
use crate::reader;
use crate::subject::escape;

const EXPIRES: &str = "Sb-Expires";
/// What the KV layer writes on a deleted or purged key.
const KV_OPERATION: &str = "KV-Operation";

/// The presence of every channel of one prefix.
pub struct Presence {
    js: jetstream::Context,
    bucket: Bucket,
}

impl Presence {
    /// Presence kept in the bucket `name`.
    pub fn new(js: jetstream::Context, name: String) -> Self {
        Presence {
            bucket: Bucket::new(js.clone(), name),
            js,
        }
    }

    fn key(channel: &str, client: &str) -> String {
        format!("{}.{}", escape(channel), escape(client))
    }

    async fn store(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: bytes::Bytes,
    ) -> Result<(), PublishErrorKind> {
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| e.kind())?;
        ack.await.map(|_| ()).map_err(|e| e.kind())
    }

    /// Records `info` in `channel` until `ttl` from now.
    ///
    /// # Errors
    /// [`BrokerError`] when the server cannot be reached or refuses.
    pub async fn add(
        &self,
        channel: &str,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let subject = self.bucket.subject(&Self::key(channel, &info.client));
        let payload = encode_client_info(info);
        // Twice at most: the second time after remaking a bucket the server lost.
        for _ in 0..2 {
            self.bucket.ensure(ttl).await?;
            let mut headers = HeaderMap::new();
            headers.insert(EXPIRES, now_ms().saturating_add(millis(ttl)).to_string());
            match self.store(subject.clone(), headers, payload.clone()).await {
                Ok(()) => return Ok(()),
                Err(PublishErrorKind::StreamNotFound) => self.bucket.forget().await,
                Err(kind) => return Err(unavailable("add presence", kind)),
            }
        }
        Err(unavailable("add presence", "the bucket keeps disappearing"))
    }

    /// Removes `client` from `channel`: a purge of its key, which leaves nothing behind.
    ///
    /// # Errors
    /// [`BrokerError`] when the server cannot be reached or refuses.
    pub async fn remove(&self, channel: &str, client: &str) -> Result<(), BrokerError> {
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION, "PURGE");
        headers.insert("Nats-Rollup", "sub");
        let subject = self.bucket.subject(&Self::key(channel, client));
        match self.store(subject, headers, bytes::Bytes::new()).await {
            // No bucket: nobody was ever present.
            Ok(()) | Err(PublishErrorKind::StreamNotFound) => Ok(()),
            Err(kind) => Err(unavailable("remove presence", kind)),
        }
    }

    /// Everyone present in `channel` now.
    ///
    /// # Errors
    /// [`BrokerError`] when the server cannot be reached or answers something else.
    pub async fn list(&self, channel: &str) -> Result<Vec<Arc<ClientInfo>>, BrokerError> {
        let filter = self.bucket.subject(&format!("{}.*", escape(channel)));
        let stream = self.bucket.stream().await?;
        let Some(entries) =
            reader::read(&stream, &filter, DeliverPolicy::LastPerSubject, u64::MAX).await?
        else {
            return Ok(Vec::new());
        };
        let now = now_ms();
        let mut present = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.headers.get(KV_OPERATION).is_some() {
                continue;
            }
            let expires: u64 = entry
                .headers
                .get(EXPIRES)
                .and_then(|value| value.as_str().parse().ok())
                .ok_or_else(|| protocol("presence entry", "no Sb-Expires header"))?;
            if expires <= now {
                continue;
            }
            let info = decode_client_info(&entry.payload).map_err(|e| protocol("presence", e))?;
            present.push(Arc::new(info));
        }
        Ok(present)
    }
}
