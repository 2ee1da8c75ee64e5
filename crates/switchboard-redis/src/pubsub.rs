//! Delivery: a few pub/sub connections per shard, each owned by one task ([`Worker::run`])
//! that reads messages and hands them to the node's [`BrokerEvents`] at once (their methods
//! never block, so neither does the read loop).
//!
//! A worker remembers which pub/sub channels it should be subscribed to. When its connection
//! drops, or its probe (a message it publishes to itself every `probe_interval`) is not back
//! within `probe_timeout` (a stopped server, a half-open socket), it reconnects with
//! exponential backoff and full jitter, subscribes every remembered channel again, and only
//! then reports the link restored. Losses and restorations of all workers are folded into one
//! link state ([`Shared`]): `link_lost` when the first worker goes down, `link_restored` when
//! the last one is back, so the node never hears "restored" while a channel is still deaf.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use switchboard::broker::{BrokerError, BrokerEvents};
use tokio::sync::oneshot;
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

/// One pub/sub connection and the channels it carries.
pub(crate) struct Worker {
    shard: Arc<Shard>,
    probe_channel: String,
    /// Extra channels this worker always carries (the control channel, on one worker).
    fixed: Vec<String>,
    desired: Mutex<HashSet<String>>,
    sink: Mutex<Option<PubSubSink>>,
    connected: AtomicBool,
    timing: Timing,
}

/// Why a connection's read loop ended.
enum End {
    Cancelled,
    Dropped,
    ProbeLost,
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

impl Worker {
    pub(crate) fn new(
        shard: Arc<Shard>,
        probe_channel: String,
        fixed: Vec<String>,
        timing: Timing,
    ) -> Self {
        Worker {
            shard,
            probe_channel,
            fixed,
            desired: Mutex::new(HashSet::new()),
            sink: Mutex::new(None),
            connected: AtomicBool::new(false),
            timing,
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Subscribes `names` and waits for Redis to confirm.
    ///
    /// # Errors
    /// [`BrokerError`] when the connection is down or does not confirm in time (the names are
    /// then forgotten, so a later reconnect does not subscribe them).
    pub(crate) async fn subscribe(&self, names: &[String]) -> Result<(), BrokerError> {
        {
            let mut desired = lock(&self.desired);
            desired.extend(names.iter().cloned());
        }
        // Read after remembering: a reconnect either saw the names or had already put its
        // new sink here (see `connect`).
        let sink = lock(&self.sink).clone();
        let result = match sink {
            None => Err(BrokerError::Unavailable(
                "redis pub/sub connection is reconnecting".to_owned(),
            )),
            Some(mut sink) => {
                match tokio::time::timeout(self.timing.call, sink.subscribe(names)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(broker_error(&error)),
                    Err(_elapsed) => Err(BrokerError::Timeout),
                }
            }
        };
        if result.is_err() {
            let mut desired = lock(&self.desired);
            for name in names {
                desired.remove(name);
            }
        }
        result
    }

    /// Unsubscribes `names`. A connection that is down needs nothing: it will not subscribe
    /// them again.
    ///
    /// # Errors
    /// [`BrokerError::Timeout`] when a live connection does not confirm in time.
    pub(crate) async fn unsubscribe(&self, names: &[String]) -> Result<(), BrokerError> {
        {
            let mut desired = lock(&self.desired);
            for name in names {
                desired.remove(name);
            }
        }
        let sink = lock(&self.sink).clone();
        let Some(mut sink) = sink else {
            return Ok(());
        };
        match tokio::time::timeout(self.timing.call, sink.unsubscribe(names)).await {
            Ok(_) => Ok(()),
            Err(_elapsed) => Err(BrokerError::Timeout),
        }
    }

    /// Opens the connection and subscribes everything, within the connect bound.
    async fn connect(&self) -> Result<PubSubStream, BrokerError> {
        let bound = self.timing.connect;
        let attempt = async {
            let pubsub = self.shard.open_pubsub(bound).await?;
            let (mut sink, stream) = pubsub.split();
            // The sink goes where `subscribe` looks before the snapshot is taken, so a channel
            // remembered after the snapshot is subscribed by its own caller on this sink.
            *lock(&self.sink) = Some(sink.clone());
            let mut names: Vec<String> = lock(&self.desired).iter().cloned().collect();
            names.push(self.probe_channel.clone());
            names.extend(self.fixed.iter().cloned());
            for batch in names.chunks(SUBSCRIBE_BATCH) {
                sink.subscribe(batch).await.map_err(|e| broker_error(&e))?;
            }
            Ok::<_, BrokerError>(stream)
        };
        let result = match tokio::time::timeout(bound, attempt).await {
            Ok(result) => result,
            Err(_elapsed) => Err(BrokerError::Timeout),
        };
        if result.is_err() {
            *lock(&self.sink) = None;
        }
        result
    }

    /// Keeps the connection up until `cancel`, reporting the first attempt's result on
    /// `first`.
    pub(crate) async fn run(
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
                connected = self.connect() => connected,
            };
            match connected {
                Ok(stream) => {
                    if let Some(first) = first.take() {
                        let _ = first.send(Ok(()));
                    }
                    attempt = 0;
                    self.connected.store(true, Ordering::Relaxed);
                    if !up {
                        shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        shared.restored();
                    }
                    let end = self.read(stream, &shared, &cancel).await;
                    self.connected.store(false, Ordering::Relaxed);
                    *lock(&self.sink) = None;
                    match end {
                        End::Cancelled => return,
                        End::Dropped => tracing::warn!("redis pub/sub connection dropped"),
                        End::ProbeLost => {
                            tracing::warn!("redis pub/sub probe not back in time; reconnecting")
                        }
                    }
                    up = false;
                    shared.lost();
                }
                Err(error) => {
                    tracing::debug!(%error, "redis pub/sub connect failed");
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

    async fn read(
        &self,
        mut stream: PubSubStream,
        shared: &Shared,
        cancel: &CancellationToken,
    ) -> End {
        let mut ticks = tokio::time::interval(self.timing.probe_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The probe in flight: its nonce and when it was sent.
        let mut probe: Option<(String, Instant)> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return End::Cancelled,
                message = stream.next() => match message {
                    None => return End::Dropped,
                    Some(message) => self.dispatch(shared, &message, &mut probe),
                },
                _ = ticks.tick() => {
                    if let Some((_, sent)) = &probe {
                        if sent.elapsed() > self.timing.probe_timeout {
                            return End::ProbeLost;
                        }
                        continue;
                    }
                    let nonce = format!("{:016x}", fastrand::u64(..));
                    probe = Some((nonce.clone(), Instant::now()));
                    let shard = Arc::clone(&self.shard);
                    let channel = self.probe_channel.clone();
                    // Published from the command link, off this loop, so reading never waits.
                    tokio::spawn(async move {
                        let _ = shard
                            .call(|mut connection| async move {
                                redis::cmd("PUBLISH")
                                    .arg(channel)
                                    .arg(nonce)
                                    .query_async::<i64>(&mut connection)
                                    .await
                            })
                            .await;
                    });
                }
            }
        }
    }

    fn dispatch(
        &self,
        shared: &Shared,
        message: &redis::Msg,
        probe: &mut Option<(String, Instant)>,
    ) {
        if let Some(payload) = deliver(shared, message) {
            if probe
                .as_ref()
                .is_some_and(|(nonce, _)| nonce.as_bytes() == payload)
            {
                *probe = None;
            }
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
