//! Delivery: pub/sub connections, each owned by one task ([`Worker::run`]) that reads messages
//! and hands them to the node's [`BrokerEvents`] at once (their methods never block, so neither
//! does the read loop).
//!
//! A worker remembers which pub/sub channels it should be subscribed to. When its connection
//! drops, or one of its probes (a message it publishes to itself every `probe_interval`, one per
//! server it reads from) is not back within `probe_timeout` (a stopped server, a half-open
//! socket), it reconnects with exponential backoff and full jitter, subscribes every remembered
//! channel again, and only then reports the link restored. Losses and restorations of all
//! workers are folded into one link state ([`Shared`]): `link_lost` when the first worker goes
//! down, `link_restored` when the last one is back, so the node never hears "restored" while a
//! channel is still deaf.
//!
//! That policy is the same on every deployment; what differs is a [`Transport`]: how a
//! connection is opened and (un)subscribes names, and what its message stream carries.
//! [`Classic`], here, is classic pub/sub on one server (a few connections per shard, a
//! Sentinel's master included); [`crate::sharded::Sharded`] is a Redis Cluster's sharded
//! pub/sub.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::RedisResult;
use switchboard::broker::{BrokerError, BrokerEvents};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::keys::{self, Names, Presence, Topic};
use crate::link::{broker_error, Shard};

/// The most channels named in one SUBSCRIBE when resubscribing.
const SUBSCRIBE_BATCH: usize = 256;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves its value consistent, even if a caller panicked.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every worker of one broker shares: names, the node's events, the link state.
pub(crate) struct Shared {
    pub(crate) names: Names,
    pub(crate) events: OnceLock<Arc<dyn BrokerEvents>>,
    /// Workers whose connection is down now.
    down: Mutex<usize>,
    pub(crate) reconnects: AtomicU64,
}

impl Shared {
    pub(crate) fn new(names: Names) -> Self {
        Shared {
            names,
            events: OnceLock::new(),
            down: Mutex::new(0),
            reconnects: AtomicU64::new(0),
        }
    }

    pub(crate) fn lost(&self) {
        let mut down = lock(&self.down);
        *down += 1;
        // Told under the lock so a "lost" and a "restored" are never reported out of order.
        if *down == 1 {
            if let Some(events) = self.events.get() {
                events.link_lost();
            }
        }
    }

    pub(crate) fn restored(&self) {
        let mut down = lock(&self.down);
        *down = down.saturating_sub(1);
        if *down == 0 {
            if let Some(events) = self.events.get() {
                events.link_restored();
            }
        }
    }
}

/// Time bounds of a worker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) connect: Duration,
    pub(crate) call: Duration,
    pub(crate) probe_interval: Duration,
    pub(crate) probe_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
}

/// What differs between kinds of pub/sub connection; [`Worker`] holds the policy around it.
pub(crate) trait Transport: Sized + Send + Sync + 'static {
    /// The command side of a live connection, cheap to clone, which (un)subscribes names.
    type Handle: Clone + Send + Sync + 'static;
    /// The read side of a live connection.
    type Stream: Send + 'static;
    /// Names the connection in errors and logs.
    const LABEL: &'static str;

    /// Opens a connection through, or next to, the command link `link`. The caller bounds the
    /// whole (re)connection by `timing.connect`.
    fn open(
        &self,
        link: &Shard,
        shared: &Shared,
        timing: &Timing,
    ) -> impl Future<Output = Result<Opened<Self>, BrokerError>> + Send;

    /// Subscribes `names` in one command (on a cluster, names of one slot).
    fn subscribe(
        handle: &mut Self::Handle,
        names: &[String],
    ) -> impl Future<Output = RedisResult<()>> + Send;

    /// Unsubscribes `names` in one command.
    fn unsubscribe(
        handle: &mut Self::Handle,
        names: &[String],
    ) -> impl Future<Output = RedisResult<()>> + Send;

    /// Subscribes everything a fresh connection carries, in as many commands as it takes.
    fn subscribe_all(
        handle: &Self::Handle,
        names: Vec<String>,
    ) -> impl Future<Output = RedisResult<()>> + Send;

    /// The next thing the stream carries. Cancel safe: it is raced against the probe ticks.
    fn next(stream: &mut Self::Stream) -> impl Future<Output = Incoming> + Send;
}

/// A connection [`Transport::open`] opened, nothing subscribed yet.
pub(crate) struct Opened<T: Transport> {
    pub(crate) handle: T::Handle,
    pub(crate) stream: T::Stream,
    /// One probe channel per server the connection reads from.
    pub(crate) probes: Vec<String>,
}

/// What a connection's stream carried.
pub(crate) enum Incoming {
    Message(redis::Msg),
    /// The server dropped `channel` on its own (on a cluster, its slot moved).
    Unsubscribed(String),
    /// Nothing for the worker (a confirmation, another kind of push).
    Other,
    /// The connection is gone.
    Dropped,
}

/// The channels a worker should carry besides its probes and fixed channels: what a
/// reconnection subscribes again.
#[derive(Default)]
struct Desired(Mutex<HashSet<String>>);

impl Desired {
    fn add(&self, names: &[String]) {
        lock(&self.0).extend(names.iter().cloned());
    }

    fn remove(&self, names: &[String]) {
        let mut desired = lock(&self.0);
        for name in names {
            desired.remove(name);
        }
    }

    fn contains(&self, name: &str) -> bool {
        lock(&self.0).contains(name)
    }

    fn snapshot(&self) -> Vec<String> {
        lock(&self.0).iter().cloned().collect()
    }
}

/// A probe channel, and the nonce in flight with when it was sent.
struct Probe {
    channel: String,
    pending: Option<(String, Instant)>,
}

/// Why a connection's read loop ended.
enum End {
    Cancelled,
    Dropped,
    ProbeLost,
    /// The server dropped a channel the worker still wants.
    Unsubscribed(String),
}

/// One pub/sub connection and the channels it carries.
pub(crate) struct Worker<T: Transport> {
    transport: T,
    /// The command link, to publish probes through.
    link: Arc<Shard>,
    /// Extra channels this worker always carries (the control channel, on one worker).
    fixed: Vec<String>,
    desired: Desired,
    handle: Mutex<Option<T::Handle>>,
    connected: AtomicBool,
    timing: Timing,
}

/// The delay before reconnect attempt `attempt` (from 0): a random time up to an
/// exponentially growing cap ("full jitter"), so nodes that lost one server do not all come
/// back at once.
pub(crate) fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let cap = min
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(max);
    let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..=cap_ms))
}

impl<T: Transport> Worker<T> {
    pub(crate) fn new(transport: T, link: Arc<Shard>, fixed: Vec<String>, timing: Timing) -> Self {
        Worker {
            transport,
            link,
            fixed,
            desired: Desired::default(),
            handle: Mutex::new(None),
            connected: AtomicBool::new(false),
            timing,
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Subscribes `names` (one channel's pub/sub names: on a cluster, one slot) and waits for
    /// Redis to confirm.
    ///
    /// # Errors
    /// [`BrokerError`] when the connection is down or does not confirm in time (the names are
    /// then forgotten, so a later reconnect does not subscribe them).
    pub(crate) async fn subscribe(&self, names: &[String]) -> Result<(), BrokerError> {
        self.desired.add(names);
        // Read after remembering: a reconnect either saw the names or had already put its new
        // handle here (see `connect`).
        let handle = lock(&self.handle).clone();
        let result = match handle {
            None => Err(BrokerError::Unavailable(format!(
                "{} connection is reconnecting",
                T::LABEL
            ))),
            Some(mut handle) => {
                match tokio::time::timeout(self.timing.call, T::subscribe(&mut handle, names)).await
                {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(broker_error(&error)),
                    Err(_elapsed) => Err(BrokerError::Timeout),
                }
            }
        };
        if result.is_err() {
            self.desired.remove(names);
        }
        result
    }

    /// Unsubscribes `names`. A connection that is down needs nothing: it will not subscribe
    /// them again.
    ///
    /// # Errors
    /// [`BrokerError::Timeout`] when a live connection does not confirm in time.
    pub(crate) async fn unsubscribe(&self, names: &[String]) -> Result<(), BrokerError> {
        self.desired.remove(names);
        let handle = lock(&self.handle).clone();
        let Some(mut handle) = handle else {
            return Ok(());
        };
        match tokio::time::timeout(self.timing.call, T::unsubscribe(&mut handle, names)).await {
            Ok(_) => Ok(()),
            Err(_elapsed) => Err(BrokerError::Timeout),
        }
    }

    /// Opens the connection and subscribes every probe, fixed and remembered channel, within
    /// the connect bound.
    async fn connect(&self, shared: &Shared) -> Result<(T::Stream, Vec<Probe>), BrokerError> {
        let attempt = async {
            let opened = self
                .transport
                .open(&self.link, shared, &self.timing)
                .await?;
            // The handle goes where `subscribe` looks before the snapshot is taken, so a
            // channel remembered after the snapshot is subscribed by its own caller on it.
            *lock(&self.handle) = Some(opened.handle.clone());
            let mut names = self.desired.snapshot();
            names.extend(opened.probes.iter().cloned());
            names.extend(self.fixed.iter().cloned());
            T::subscribe_all(&opened.handle, names)
                .await
                .map_err(|e| broker_error(&e))?;
            let probes = opened
                .probes
                .into_iter()
                .map(|channel| Probe {
                    channel,
                    pending: None,
                })
                .collect();
            Ok::<_, BrokerError>((opened.stream, probes))
        };
        let result = match tokio::time::timeout(self.timing.connect, attempt).await {
            Ok(result) => result,
            Err(_elapsed) => Err(BrokerError::Timeout),
        };
        if result.is_err() {
            *lock(&self.handle) = None;
        }
        result
    }

    /// Spawns [`Worker::run`] until `cancel`; the receiver hears the first connection
    /// attempt's result.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        cancel: CancellationToken,
    ) -> (JoinHandle<()>, oneshot::Receiver<Result<(), BrokerError>>) {
        let (first, reported) = oneshot::channel();
        let task = tokio::spawn(Arc::clone(self).run(Arc::clone(shared), cancel, first));
        (task, reported)
    }

    /// Keeps the connection up until `cancel`, reporting the first attempt's result on
    /// `first`.
    async fn run(
        self: Arc<Self>,
        shared: Arc<Shared>,
        cancel: CancellationToken,
        first: oneshot::Sender<Result<(), BrokerError>>,
    ) {
        let mut first = Some(first);
        let mut attempt: u32 = 0;
        let mut up = true;
        loop {
            let connected = tokio::select! {
                () = cancel.cancelled() => return,
                connected = self.connect(&shared) => connected,
            };
            match connected {
                Ok((stream, probes)) => {
                    if let Some(first) = first.take() {
                        let _ = first.send(Ok(()));
                    }
                    attempt = 0;
                    self.connected.store(true, Ordering::Relaxed);
                    if !up {
                        shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        shared.restored();
                    }
                    let end = self.read(stream, probes, &shared, &cancel).await;
                    self.connected.store(false, Ordering::Relaxed);
                    *lock(&self.handle) = None;
                    match end {
                        End::Cancelled => return,
                        End::Dropped => tracing::warn!("{} connection dropped", T::LABEL),
                        End::ProbeLost => {
                            tracing::warn!("{} probe not back in time; reconnecting", T::LABEL)
                        }
                        // Only a cluster's master drops a channel on its own.
                        End::Unsubscribed(channel) => tracing::warn!(
                            channel,
                            "redis cluster unsubscribed a channel (its slot moved); reconnecting"
                        ),
                    }
                    up = false;
                    shared.lost();
                }
                Err(error) => {
                    tracing::debug!(%error, "{} connect failed", T::LABEL);
                    if let Some(first) = first.take() {
                        let _ = first.send(Err(error));
                    }
                    if up {
                        up = false;
                        shared.lost();
                    }
                }
            }
            let delay = backoff(attempt, self.timing.backoff_min, self.timing.backoff_max);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Whether this worker still wants `channel` (so a server dropping it is news).
    fn wants(&self, channel: &str, probes: &[Probe]) -> bool {
        self.fixed.iter().any(|fixed| fixed == channel)
            || probes.iter().any(|probe| probe.channel == channel)
            || self.desired.contains(channel)
    }

    async fn read(
        &self,
        mut stream: T::Stream,
        mut probes: Vec<Probe>,
        shared: &Shared,
        cancel: &CancellationToken,
    ) -> End {
        let mut ticks = tokio::time::interval(self.timing.probe_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return End::Cancelled,
                incoming = T::next(&mut stream) => match incoming {
                    Incoming::Dropped => return End::Dropped,
                    Incoming::Unsubscribed(channel) => {
                        if self.wants(&channel, &probes) {
                            return End::Unsubscribed(channel);
                        }
                    }
                    Incoming::Message(message) => answer(shared, &message, &mut probes),
                    Incoming::Other => {}
                },
                _ = ticks.tick() => {
                    for probe in &mut probes {
                        if let Some((_, sent)) = &probe.pending {
                            if sent.elapsed() > self.timing.probe_timeout {
                                return End::ProbeLost;
                            }
                            continue;
                        }
                        let nonce = format!("{:016x}", fastrand::u64(..));
                        probe.pending = Some((nonce.clone(), Instant::now()));
                        self.send_probe(shared, probe.channel.clone(), nonce);
                    }
                }
            }
        }
    }

    /// Publishes `nonce` on `channel` from the command link, off the read loop, so reading
    /// never waits.
    fn send_probe(&self, shared: &Shared, channel: String, nonce: String) {
        let link = Arc::clone(&self.link);
        let command = shared.names.publish_command();
        tokio::spawn(async move {
            let _ = link
                .call(|mut connection| async move {
                    redis::cmd(command)
                        .arg(channel)
                        .arg(nonce)
                        .query_async::<i64>(&mut connection)
                        .await
                })
                .await;
        });
    }
}

/// Delivers `message`; a probe that is back is no longer pending.
fn answer(shared: &Shared, message: &redis::Msg, probes: &mut [Probe]) {
    let Some(nonce) = deliver(shared, message) else {
        return;
    };
    let channel = message.get_channel_name();
    for probe in probes {
        if probe.channel == channel
            && probe
                .pending
                .as_ref()
                .is_some_and(|(sent, _)| sent.as_bytes() == nonce)
        {
            probe.pending = None;
        }
    }
}

/// Classic pub/sub on one server: `SUBSCRIBE` on a connection of its own, next to the command
/// link, and one probe channel.
pub(crate) struct Classic {
    probe_channel: String,
}

impl Classic {
    pub(crate) fn new(probe_channel: String) -> Self {
        Classic { probe_channel }
    }
}

impl Transport for Classic {
    type Handle = PubSubSink;
    type Stream = PubSubStream;
    const LABEL: &'static str = "redis pub/sub";

    async fn open(
        &self,
        link: &Shard,
        _shared: &Shared,
        timing: &Timing,
    ) -> Result<Opened<Self>, BrokerError> {
        let (handle, stream) = link.open_pubsub(timing.connect).await?.split();
        Ok(Opened {
            handle,
            stream,
            probes: vec![self.probe_channel.clone()],
        })
    }

    async fn subscribe(handle: &mut PubSubSink, names: &[String]) -> RedisResult<()> {
        handle.subscribe(names).await
    }

    async fn unsubscribe(handle: &mut PubSubSink, names: &[String]) -> RedisResult<()> {
        handle.unsubscribe(names).await
    }

    async fn subscribe_all(handle: &PubSubSink, names: Vec<String>) -> RedisResult<()> {
        let mut handle = handle.clone();
        for batch in names.chunks(SUBSCRIBE_BATCH) {
            handle.subscribe(batch).await?;
        }
        Ok(())
    }

    async fn next(stream: &mut PubSubStream) -> Incoming {
        match stream.next().await {
            Some(message) => Incoming::Message(message),
            None => Incoming::Dropped,
        }
    }
}

/// Hands one pub/sub message to the node's events; a probe is not handed on but returned (its
/// payload, the nonce), for the caller to match against the probe it sent.
pub(crate) fn deliver<'m>(shared: &Shared, message: &'m redis::Msg) -> Option<&'m [u8]> {
    let payload = message.get_payload_bytes();
    let topic = shared.names.classify(message.get_channel_name())?;
    if let Topic::Probe = topic {
        return Some(payload);
    }
    let events = shared.events.get()?;
    match topic {
        Topic::Publications(channel) => match keys::read_publication(payload) {
            Ok((publication, epoch)) => events.publication(channel, publication, &epoch),
            Err(error) => tracing::warn!(channel, %error, "undecodable redis publication"),
        },
        Topic::JoinLeave(channel) => match keys::read_join_leave(payload) {
            Ok((Presence::Join, info)) => events.join(channel, info),
            Ok((Presence::Leave, info)) => events.leave(channel, info),
            Err(error) => tracing::warn!(channel, %error, "undecodable redis join/leave"),
        },
        Topic::Control => events.control(Bytes::copy_from_slice(payload)),
        Topic::Probe => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_under_a_growing_capped_limit() {
        let (min, max) = (Duration::from_millis(50), Duration::from_secs(5));
        for attempt in 0..40 {
            let cap = (min * 2u32.pow(attempt.min(20))).min(max);
            for _ in 0..20 {
                assert!(backoff(attempt, min, max) <= cap);
            }
        }
        let late: Vec<Duration> = (0..50).map(|_| backoff(30, min, max)).collect();
        assert!(
            late.iter().any(|d| *d > Duration::from_secs(1)),
            "the cap grows to max"
        );
        assert!(late.iter().any(|d| *d != late[0]), "jittered");
    }
}
