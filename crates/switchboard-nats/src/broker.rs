//! [`NatsBroker`]: the contract's `Broker` on NATS, tying together the link, the channel
//! subscriptions this node holds, and the JetStream parts (history, presence, idempotency).
//!
//! Delivery is core NATS: a node subscribes `{prefix}.ch.{channel}.*` on the one connection
//! while it has local subscribers, and a task per subscribed channel hands what arrives to the
//! node's events. Publications without history, joins, leaves and control messages are core
//! publishes followed by a round trip through the server (async-nats only queues a publish;
//! the echo coming back is the server's receipt, see [`crate::link::Echo`]). Kept
//! publications reach nodes through the stream's republish (see [`crate::history`]). Each
//! channel's task drops a kept publication whose offset is not past the last one it delivered
//! under the same epoch, and holds one that arrives ahead of its turn until those before it
//! come (briefly, see [`crate::reorder`]), so a node sees offsets in order and at most once;
//! what it missed it finds by the gap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::{Message, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use switchboard::broker::codec::{
    decode_client_info, decode_publication, encode_client_info, encode_publication,
};
use switchboard::broker::{
    Broker, BrokerError, BrokerEvents, BrokerHealth, HistoryPage, HistoryRange, MapPage, Position,
    PublishOptions,
};
use switchboard::config::NatsConfig;
use switchboard::publication::{ClientInfo, Publication};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use crate::error::{bounded, unavailable};
use crate::history::History;
use crate::idempotency::{Claimed, Idempotency};
use crate::link::{servers, Link};
use crate::meta::Meta;
use crate::presence::Presence;
use crate::reorder::Reorder;
use crate::subject::{escape, Delivery, Names};

/// Engine settings beyond `[nats]` in the node's config.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// The deadline of every broker call.
    pub request_timeout: Duration,
    /// How long `start` waits for the first connection.
    pub connect_timeout: Duration,
    /// How often the client pings the server (a dead server is noticed after two missed
    /// pings) and the round trip is measured.
    pub ping_interval: Duration,
    /// How long the history stream keeps any message: must exceed every channel's
    /// `history_meta_ttl`, or positions are lost (and a new epoch starts) that much earlier.
    pub history_max_age: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(5),
            history_max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// One subscribed channel: its delivery task and how to stop it.
struct Subscription {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// What exists between `start` and `stop`.
struct Running {
    link: Link,
    history: History,
    presence: Presence,
    idempotency: Idempotency,
    events: Arc<dyn BrokerEvents>,
    subscriptions: Mutex<HashMap<Box<str>, Subscription>>,
    control: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Reached without `stop` when the broker is dropped: the delivery tasks must not
        // outlive it.
        self.control.abort();
        let subscriptions = self
            .subscriptions
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        for (_, subscription) in subscriptions.drain() {
            subscription.task.abort();
        }
    }
}

/// The NATS engine.
pub struct NatsBroker {
    url: String,
    names: Names,
    options: NatsOptions,
    running: Mutex<Option<Arc<Running>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is one map or slot operation: a panic cannot leave it half done.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl NatsBroker {
    /// An engine for `config` with default [`NatsOptions`]; nothing connects until `start`.
    pub fn new(config: &NatsConfig) -> Self {
        NatsBroker::with_options(config, NatsOptions::default())
    }

    /// An engine for `config` with `options`.
    pub fn with_options(config: &NatsConfig, options: NatsOptions) -> Self {
        NatsBroker {
            url: config.url.0.clone(),
            names: Names::new(&config.prefix),
            options,
            running: Mutex::new(None),
        }
    }

    fn running(&self) -> Result<Arc<Running>, BrokerError> {
        lock(&self.running)
            .clone()
            .ok_or_else(|| BrokerError::Unavailable("nats: not started".to_owned()))
    }

    /// Runs `call` on the running engine, connected, within the request timeout.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, BrokerError>
    where
        F: FnOnce(Arc<Running>) -> Fut,
        Fut: std::future::Future<Output = Result<T, BrokerError>>,
    {
        let running = self.running()?;
        running.link.check()?;
        bounded(self.options.request_timeout, call(running)).await
    }

    /// A core publish, acknowledged once the server has it.
    async fn send(running: &Running, subject: String, payload: Bytes) -> Result<(), BrokerError> {
        running
            .link
            .client
            .publish(subject, payload)
            .await
            .map_err(|e| unavailable("publish", e))?;
        running.link.round_trip().await
    }

    async fn publish_once(
        &self,
        running: &Running,
        channel: &str,
        publication: &Publication,
        payload: Bytes,
        options: &PublishOptions,
    ) -> Result<Option<Position>, BrokerError> {
        if publication.key.is_some() {
            let message_id = options.idempotency_key.as_deref().map(escape);
            return running
                .history
                .publish_keyed(channel, publication, options, message_id.as_deref())
                .await
                .map(Some);
        }
        if options.history_size == 0 {
            let subject = self.names.delivery(channel, Delivery::Publication);
            Self::send(running, subject, payload).await?;
            return Ok(None);
        }
        let message_id = options.idempotency_key.as_deref().map(escape);
        running
            .history
            .publish(channel, payload, options, message_id.as_deref())
            .await
            .map(Some)
    }
}

/// Hands one message of `channel`'s delivery subject to `events`; `last` is the epoch and
/// offset of the last kept publication delivered.
/// A kept publication and its epoch, on its way to the node.
type Kept = (Arc<Publication>, Box<str>);

fn deliver(
    events: &dyn BrokerEvents,
    channel: &str,
    message: &Message,
    reorder: &mut Reorder<Kept>,
    ready: &mut Vec<Kept>,
) {
    let Some(kind) = Delivery::from_subject(message.subject.as_str()) else {
        return;
    };
    match kind {
        Delivery::Publication => {
            let meta = match message.headers.as_ref().map(Meta::read) {
                None => None,
                Some(Ok(meta)) => Some(meta),
                Some(Err(e)) => {
                    tracing::warn!(channel, error = %e, "nats: dropped a publication");
                    return;
                }
            };
            let mut publication = match decode_publication(&message.payload) {
                Ok(publication) => publication,
                // A removal marker has no payload and is no publication.
                Err(_) if meta.as_ref().is_some_and(|meta| meta.removed) => return,
                Err(e) => {
                    tracing::warn!(channel, error = %e, "nats: dropped a publication");
                    return;
                }
            };
            match meta {
                // Not kept: no offset to order by.
                None => events.publication(channel, Arc::new(publication), ""),
                Some(meta) if meta.removed => {}
                Some(meta) => {
                    publication.offset = meta.offset;
                    let offset = meta.offset;
                    let held = reorder.held();
                    reorder.accept(
                        &meta.epoch.clone(),
                        offset,
                        (Arc::new(publication), meta.epoch),
                        Instant::now(),
                        ready,
                    );
                    if reorder.held() > held {
                        tracing::debug!(
                            channel,
                            offset,
                            "nats: a publication arrived ahead of its turn; held"
                        );
                    }
                    hand_on(events, channel, ready);
                }
            }
        }
        Delivery::Join | Delivery::Leave => match decode_client_info(&message.payload) {
            Ok(info) if kind == Delivery::Join => events.join(channel, Arc::new(info)),
            Ok(info) => events.leave(channel, Arc::new(info)),
            Err(e) => tracing::warn!(channel, error = %e, "nats: dropped a join or leave"),
        },
    }
}

/// Hands `ready` to the node, in order, and empties it.
fn hand_on(events: &dyn BrokerEvents, channel: &str, ready: &mut Vec<Kept>) {
    for (publication, epoch) in ready.drain(..) {
        events.publication(channel, publication, &epoch);
    }
}

async fn run_subscription(
    channel: Box<str>,
    mut subscriber: Subscriber,
    events: Arc<dyn BrokerEvents>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut reorder = Reorder::default();
    let mut ready = Vec::new();
    loop {
        let deadline = reorder.deadline();
        tokio::select! {
            biased;
            _ = &mut stop => break,
            // The held ones waited long enough for those missing before them.
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                reorder.release(&mut ready);
                hand_on(&*events, &channel, &mut ready);
            }
            message = subscriber.next() => match message {
                Some(message) => deliver(&*events, &channel, &message, &mut reorder, &mut ready),
                None => return,
            },
        }
    }
    if let Err(e) = subscriber.unsubscribe().await {
        tracing::debug!(channel = &*channel, error = %e, "nats: unsubscribe");
    }
}

async fn run_control(mut subscriber: Subscriber, events: Arc<dyn BrokerEvents>) {
    while let Some(message) = subscriber.next().await {
        events.control(message.payload);
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn name(&self) -> &'static str {
        "nats"
    }

    async fn start(&self, events: Arc<dyn BrokerEvents>) -> Result<(), BrokerError> {
        if lock(&self.running).is_some() {
            return Ok(());
        }
        let (link, connected) = Link::connect(
            servers(&self.url)?,
            Arc::clone(&events),
            self.options.connect_timeout,
            self.options.request_timeout,
            self.options.ping_interval,
        )
        .await?;
        let control = link
            .client
            .subscribe(self.names.control())
            .await
            .map_err(|e| unavailable("subscribe control", e))?;
        let js = async_nats::jetstream::new(link.client.clone());
        let running = Arc::new(Running {
            history: History::new(js.clone(), self.names.clone(), self.options.history_max_age),
            presence: Presence::new(js.clone(), self.names.presence_bucket()),
            idempotency: Idempotency::new(js, self.names.idempotency_bucket()),
            control: tokio::spawn(run_control(control, Arc::clone(&events))),
            events,
            subscriptions: Mutex::new(HashMap::new()),
            link,
        });
        *lock(&self.running) = Some(Arc::clone(&running));
        connected?;
        // The control subscription is in place before start returns.
        bounded(self.options.request_timeout, running.link.round_trip()).await
    }

    async fn stop(&self) {
        let Some(running) = lock(&self.running).take() else {
            return;
        };
        running.control.abort();
        let subscriptions: Vec<Subscription> = lock(&running.subscriptions)
            .drain()
            .map(|(_, s)| s)
            .collect();
        for subscription in subscriptions {
            let _ = subscription.stop.send(());
            let _ = subscription.task.await;
        }
        running.link.close(self.options.request_timeout).await;
    }

    fn health(&self) -> BrokerHealth {
        match lock(&self.running).as_ref() {
            Some(running) => running.link.health(),
            None => BrokerHealth::default(),
        }
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.call(|running| async move {
            if lock(&running.subscriptions).contains_key(channel) {
                return Ok(());
            }
            let subscriber = running
                .link
                .client
                .subscribe(self.names.deliveries(channel))
                .await
                .map_err(|e| unavailable("subscribe", e))?;
            let (stop, stopped) = oneshot::channel();
            {
                let mut subscriptions = lock(&running.subscriptions);
                if subscriptions.contains_key(channel) {
                    // A concurrent subscribe won; dropping ours unsubscribes it.
                    return Ok(());
                }
                let task = tokio::spawn(run_subscription(
                    channel.into(),
                    subscriber,
                    Arc::clone(&running.events),
                    stopped,
                ));
                subscriptions.insert(channel.into(), Subscription { stop, task });
            }
            // Once the round trip is back the server has the subscription: every later publication
            // reaches this node.
            running.link.round_trip().await
        })
        .await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let Some(subscription) = self
            .running()
            .ok()
            .and_then(|running| lock(&running.subscriptions).remove(channel))
        else {
            return Ok(());
        };
        let _ = subscription.stop.send(());
        // The task is gone once this returns, so nothing more is delivered for the channel.
        let _ = subscription.task.await;
        self.call(|running| async move { running.link.round_trip().await })
            .await
    }

    async fn publish(
        &self,
        channel: &str,
        publication: &Publication,
        options: &PublishOptions,
    ) -> Result<Option<Position>, BrokerError> {
        let payload = encode_publication(publication);
        self.call(|running| async move {
            let Some(key) = options.idempotency_key.as_deref() else {
                return self
                    .publish_once(&running, channel, publication, payload, options)
                    .await;
            };
            let claim = match running
                .idempotency
                .claim(key, options.idempotency_ttl)
                .await?
            {
                Claimed::Done(position) => return Ok(position),
                Claimed::Mine(claim) => claim,
            };
            match self
                .publish_once(&running, channel, publication, payload, options)
                .await
            {
                Ok(position) => {
                    if let Err(e) = running
                        .idempotency
                        .finish(claim, options.idempotency_ttl, position.clone())
                        .await
                    {
                        // Applied all the same: say so, and let the record's claim expire.
                        tracing::warn!(error = %e, "nats: idempotency record not written");
                    }
                    Ok(position)
                }
                Err(e) => {
                    running.idempotency.abandon(claim).await;
                    Err(e)
                }
            }
        })
        .await
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let subject = self.names.delivery(channel, Delivery::Join);
        let payload = encode_client_info(info);
        self.call(|running| async move { Self::send(&running, subject, payload).await })
            .await
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let subject = self.names.delivery(channel, Delivery::Leave);
        let payload = encode_client_info(info);
        self.call(|running| async move { Self::send(&running, subject, payload).await })
            .await
    }

    async fn publish_control(&self, message: Bytes) -> Result<(), BrokerError> {
        let subject = self.names.control();
        self.call(|running| async move { Self::send(&running, subject, message).await })
            .await
    }

    async fn history(
        &self,
        channel: &str,
        range: &HistoryRange,
    ) -> Result<HistoryPage, BrokerError> {
        self.call(|running| async move { running.history.read(channel, range).await })
            .await
    }

    async fn stream_position(&self, channel: &str, ttl: Duration) -> Result<Position, BrokerError> {
        self.call(|running| async move { running.history.start(channel, ttl).await })
            .await
    }

    async fn keep_stream(&self, channel: &str, ttl: Duration) -> Result<Position, BrokerError> {
        self.call(|running| async move { running.history.keep(channel, ttl).await })
            .await
    }

    fn serves_maps(&self) -> bool {
        true
    }

    async fn map_state(
        &self,
        channel: &str,
        after: &str,
        limit: usize,
        ttl: Duration,
    ) -> Result<MapPage, BrokerError> {
        self.call(
            |running| async move { running.history.map_state(channel, after, limit, ttl).await },
        )
        .await
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        self.call(|running| async move { running.history.remove(channel).await })
            .await
    }

    async fn add_presence(
        &self,
        channel: &str,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.call(|running| async move { running.presence.add(channel, info, ttl).await })
            .await
    }

    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), BrokerError> {
        self.call(|running| async move { running.presence.remove(channel, client).await })
            .await
    }

    async fn presence(&self, channel: &str) -> Result<Vec<Arc<ClientInfo>>, BrokerError> {
        self.call(|running| async move { running.presence.list(channel).await })
            .await
    }
}
