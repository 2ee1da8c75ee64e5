//! Ingestion from a JetStream stream ([`JetStreamSource`]): a backend publishes to a subject
//! that a stream keeps, and every node reads the stream through one durable pull consumer,
//! so each message is handed to one node and comes again (after the consumer's ack wait)
//! until that node acknowledges it, after the publish. The message's payload is the JSON of
//! an API publish; its id is its stream sequence.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, Consumer};
use async_nats::jetstream::{self, stream, Message};
use async_nats::ConnectOptions;
use async_trait::async_trait;
use futures_util::StreamExt;
use switchboard::broker::BrokerError;
use switchboard::ingest::{LogEntry, LogSource};
use tokio::sync::OnceCell;

use crate::link::servers;

type PullConsumer = Consumer<pull::Config>;

/// How long a message handed to a node may stay unacknowledged before it is handed again.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// How long one fetch waits for messages.
const FETCH_WAIT: Duration = Duration::from_secs(1);
/// The bound on connecting and on each call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A JetStream stream read through a durable pull consumer shared by every node.
pub struct JetStreamSource {
    url: String,
    stream: String,
    subject: String,
    durable: String,
    name: String,
    consumer: OnceCell<PullConsumer>,
    /// Messages handed out and not yet acknowledged, by id (acking needs the message).
    unacked: Mutex<HashMap<String, Message>>,
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("nats ingest: {what}: {error}"))
}

impl JetStreamSource {
    /// Reads stream `stream` (made, keeping `subject`, when it does not exist) at `url`
    /// through the durable consumer `durable`.
    pub fn new(url: &str, stream: &str, subject: &str, durable: &str) -> Self {
        JetStreamSource {
            url: url.to_owned(),
            stream: stream.to_owned(),
            subject: subject.to_owned(),
            durable: durable.to_owned(),
            name: format!("jetstream:{stream}"),
            consumer: OnceCell::new(),
            unacked: Mutex::new(HashMap::new()),
        }
    }

    async fn consumer(&self) -> Result<&PullConsumer, BrokerError> {
        self.consumer
            .get_or_try_init(|| async {
                let servers = servers(&self.url)?;
                let client = tokio::time::timeout(
                    CALL_TIMEOUT,
                    ConnectOptions::new()
                        .retry_on_initial_connect()
                        .max_reconnects(None)
                        .connect(servers),
                )
                .await
                .map_err(|_| BrokerError::Timeout)?
                .map_err(|e| unavailable("connect", e))?;
                let js = jetstream::new(client);
                let config = stream::Config {
                    name: self.stream.clone(),
                    subjects: vec![self.subject.clone()],
                    ..Default::default()
                };
                let stream = tokio::time::timeout(CALL_TIMEOUT, js.get_or_create_stream(config))
                    .await
                    .map_err(|_| BrokerError::Timeout)?
                    .map_err(|e| unavailable("stream", e))?;
                let consumer = pull::Config {
                    durable_name: Some(self.durable.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    ..Default::default()
                };
                tokio::time::timeout(
                    CALL_TIMEOUT,
                    stream.get_or_create_consumer(&self.durable, consumer),
                )
                .await
                .map_err(|_| BrokerError::Timeout)?
                .map_err(|e| unavailable("consumer", e))
            })
            .await
    }
}

#[async_trait]
impl LogSource for JetStreamSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn next(&self, max: usize) -> Result<Vec<LogEntry>, BrokerError> {
        let consumer = self.consumer().await?;
        let mut batch = tokio::time::timeout(
            CALL_TIMEOUT,
            consumer
                .fetch()
                .max_messages(max)
                .expires(FETCH_WAIT)
                .messages(),
        )
        .await
        .map_err(|_| BrokerError::Timeout)?
        .map_err(|e| unavailable("fetch", e))?;
        let mut entries = Vec::new();
        let deadline = tokio::time::Instant::now() + FETCH_WAIT + CALL_TIMEOUT;
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, batch.next()).await {
            let message = message.map_err(|e| unavailable("message", e))?;
            let id = match message.info() {
                Ok(info) => info.stream_sequence.to_string(),
                Err(e) => return Err(unavailable("message info", e)),
            };
            entries.push(LogEntry {
                id: id.clone(),
                payload: message.payload.clone(),
            });
            self.unacked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, message);
        }
        Ok(entries)
    }

    async fn ack(&self, ids: &[String]) -> Result<(), BrokerError> {
        let messages: Vec<Message> = {
            let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
            ids.iter().filter_map(|id| unacked.remove(id)).collect()
        };
        for message in messages {
            // Double ack: the server confirms, so an ack lost on the way is seen here.
            tokio::time::timeout(CALL_TIMEOUT, message.double_ack())
                .await
                .map_err(|_| BrokerError::Timeout)?
                .map_err(|e| unavailable("ack", e))?;
        }
        Ok(())
    }
}
