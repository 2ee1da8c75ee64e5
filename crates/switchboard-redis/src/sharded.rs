//! Delivery on a Redis Cluster: sharded pub/sub (Redis 7 `SSUBSCRIBE`, `SPUBLISH`). A
//! channel's pub/sub names carry its keys' hash tag, so a publication is published by the
//! script that stores it, on the master owning the channel's slot, and only that master sends
//! it to subscribers; classic `PUBLISH` on a cluster would copy every message to every node.
//!
//! Each [`ShardedWorker`] owns one cluster pub/sub connection
//! ([`redis::cluster_async::ClusterConnection`] in RESP3, its messages arriving as pushes): the
//! library sends each `SSUBSCRIBE` to the master owning the channel's slot. The worker keeps
//! the policy: it remembers its channels, probes every master (a nonce `SPUBLISH`ed from the
//! command link on a probe channel whose slot that master owns), and when a node's socket
//! drops, a probe does not come back, or a master unsubscribes a channel on its own (its slot
//! moved), it drops the whole connection, reconnects with backoff and jitter, asks the cluster
//! for its masters again, subscribes everything on their current owners, and only then
//! reports the link restored. Rebuilding the whole connection for one node's trouble costs a
//! resubscription of every channel, but a node hears `link_lost` for every channel anyway.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, TryStreamExt};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use switchboard::broker::BrokerError;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hash;
use crate::link::{broker_error, Shard};
use crate::pubsub::{backoff, deliver, lock, Shared, Timing};

/// How many `SSUBSCRIBE`s a (re)connection keeps in flight.
const SUBSCRIBE_CONCURRENCY: usize = 32;
/// How many candidate probe tags are tried to land in one master's slots.
const PROBE_TAG_TRIES: u32 = 1 << 20;

/// A master's probe: its channel, and the nonce in flight with when it was sent.
struct Probe {
    channel: String,
    pending: Option<(String, Instant)>,
}

/// Why a connection's read loop ended.
enum End {
    Cancelled,
    Dropped,
    ProbeLost,
    SlotMoved(String),
}

/// One cluster pub/sub connection and the channels it carries.
pub(crate) struct ShardedWorker {
    seeds: Vec<String>,
    /// The command link, to publish probes through.
    link: Arc<Shard>,
    /// Starts every probe channel's tag (unique per node and worker).
    probe_id: String,
    /// Extra channels this worker always carries (the control channel, on one worker).
    fixed: Vec<String>,
    desired: Mutex<HashSet<String>>,
    connection: Mutex<Option<ClusterConnection>>,
    connected: AtomicBool,
    timing: Timing,
}

/// Why the cluster's answer to `CLUSTER SLOTS` is unusable.
fn bad_slots() -> BrokerError {
    BrokerError::Protocol("redis: unexpected CLUSTER SLOTS reply".to_owned())
}

/// The masters in a `CLUSTER SLOTS` reply, by `host:port`, with the slot ranges each owns.
fn masters(reply: &Value) -> Result<HashMap<String, Vec<(u16, u16)>>, BrokerError> {
    let Value::Array(ranges) = reply else {
        return Err(bad_slots());
    };
    let mut masters: HashMap<String, Vec<(u16, u16)>> = HashMap::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(bad_slots());
        };
        let [Value::Int(start), Value::Int(end), Value::Array(master), ..] = fields.as_slice()
        else {
            return Err(bad_slots());
        };
        let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else {
            return Err(bad_slots());
        };
        let address = match master.as_slice() {
            [Value::BulkString(host), Value::Int(port), ..] => {
                format!("{}:{port}", String::from_utf8_lossy(host))
            }
            _ => return Err(bad_slots()),
        };
        masters.entry(address).or_default().push((start, end));
    }
    Ok(masters)
}

/// A probe channel (`probe_name(tag)`) whose slot is in `ranges`.
fn probe_channel(
    probe_id: &str,
    ranges: &[(u16, u16)],
    probe_name: impl Fn(&str) -> String,
) -> Option<String> {
    (0..PROBE_TAG_TRIES).find_map(|attempt| {
        let channel = probe_name(&format!("{{{probe_id}-{attempt}}}"));
        let slot = hash::slot(channel.as_bytes());
        ranges
            .iter()
            .any(|(start, end)| (*start..=*end).contains(&slot))
            .then_some(channel)
    })
}

/// The channel a sharded (un)subscribe push is about.
fn push_channel(push: &PushInfo) -> Option<String> {
    match push.data.first() {
        Some(Value::BulkString(name)) => String::from_utf8(name.clone()).ok(),
        _ => None,
    }
}

impl ShardedWorker {
    pub(crate) fn new(
        seeds: Vec<String>,
        link: Arc<Shard>,
        probe_id: String,
        fixed: Vec<String>,
        timing: Timing,
    ) -> Self {
        ShardedWorker {
            seeds,
            link,
            probe_id,
            fixed,
            desired: Mutex::new(HashSet::new()),
            connection: Mutex::new(None),
            connected: AtomicBool::new(false),
            timing,
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Subscribes `names` (one channel's pub/sub names: one slot) and waits for the master
    /// owning it to confirm.
    ///
    /// # Errors
    /// [`BrokerError`] when the connection is down or does not confirm in time (the names are
    /// then forgotten, so a later reconnect does not subscribe them).
    pub(crate) async fn subscribe(&self, names: &[String]) -> Result<(), BrokerError> {
        lock(&self.desired).extend(names.iter().cloned());
        // Read after remembering: a reconnect either saw the names or had already put its new
        // connection here (see `connect`).
        let connection = lock(&self.connection).clone();
        let result = match connection {
            None => Err(BrokerError::Unavailable(
                "redis cluster pub/sub connection is reconnecting".to_owned(),
            )),
            Some(mut connection) => {
                match tokio::time::timeout(self.timing.call, connection.ssubscribe(names)).await {
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
        let connection = lock(&self.connection).clone();
        let Some(mut connection) = connection else {
            return Ok(());
        };
        match tokio::time::timeout(self.timing.call, connection.sunsubscribe(names)).await {
            Ok(_) => Ok(()),
            Err(_elapsed) => Err(BrokerError::Timeout),
        }
    }

    /// Opens a cluster pub/sub connection, finds the masters, and subscribes every probe,
    /// fixed and remembered channel on its owner, within the connect bound.
    async fn connect(
        &self,
        shared: &Shared,
    ) -> Result<(UnboundedReceiver<PushInfo>, Vec<Probe>), BrokerError> {
        let attempt = async {
            let (pushes, received) = unbounded_channel();
            let client = ClusterClient::builder(self.seeds.iter().map(String::as_str))
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(pushes)
                .connection_timeout(self.timing.call)
                .response_timeout(self.timing.call)
                .retries(1)
                .build()
                .map_err(|e| broker_error(&e))?;
            let mut connection = client
                .get_async_connection()
                .await
                .map_err(|e| broker_error(&e))?;
            let reply: Value = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut connection)
                .await
                .map_err(|e| broker_error(&e))?;
            let probes = masters(&reply)?
                .values()
                .map(|ranges| {
                    probe_channel(&self.probe_id, ranges, |tag| shared.names.probe(tag))
                        .map(|channel| Probe {
                            channel,
                            pending: None,
                        })
                        .ok_or_else(bad_slots)
                })
                .collect::<Result<Vec<_>, _>>()?;
            // The connection goes where `subscribe` looks before the snapshot is taken, so a
            // channel remembered after the snapshot is subscribed by its own caller on it.
            *lock(&self.connection) = Some(connection.clone());
            let mut names: Vec<String> = lock(&self.desired).iter().cloned().collect();
            names.extend(probes.iter().map(|probe| probe.channel.clone()));
            names.extend(self.fixed.iter().cloned());
            // One SSUBSCRIBE per slot: the names of one command must share a slot.
            let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
            for name in names {
                by_slot
                    .entry(hash::slot(name.as_bytes()))
                    .or_default()
                    .push(name);
            }
            futures_util::stream::iter(by_slot.into_values().map(|group| {
                let mut connection = connection.clone();
                async move { connection.ssubscribe(group).await }
            }))
            .buffer_unordered(SUBSCRIBE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .map_err(|e| broker_error(&e))?;
            Ok::<_, BrokerError>((received, probes))
        };
        let result = match tokio::time::timeout(self.timing.connect, attempt).await {
            Ok(result) => result,
            Err(_elapsed) => Err(BrokerError::Timeout),
        };
        if result.is_err() {
            *lock(&self.connection) = None;
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
                connected = self.connect(&shared) => connected,
            };
            match connected {
                Ok((pushes, probes)) => {
                    if let Some(first) = first.take() {
                        let _ = first.send(Ok(()));
                    }
                    attempt = 0;
                    self.connected.store(true, Ordering::Relaxed);
                    if !up {
                        shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        shared.restored();
                    }
                    let end = self.read(pushes, probes, &shared, &cancel).await;
                    self.connected.store(false, Ordering::Relaxed);
                    *lock(&self.connection) = None;
                    match end {
                        End::Cancelled => return,
                        End::Dropped => tracing::warn!("redis cluster pub/sub link dropped"),
                        End::ProbeLost => tracing::warn!(
                            "redis cluster pub/sub probe not back in time; reconnecting"
                        ),
                        End::SlotMoved(channel) => tracing::warn!(
                            channel,
                            "redis cluster unsubscribed a channel (its slot moved); reconnecting"
                        ),
                    }
                    up = false;
                    shared.lost();
                }
                Err(error) => {
                    tracing::debug!(%error, "redis cluster pub/sub connect failed");
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

    /// Whether this worker still wants `channel` (so a master dropping it is news).
    fn wants(&self, channel: &str, probes: &[Probe]) -> bool {
        self.fixed.iter().any(|fixed| fixed == channel)
            || probes.iter().any(|probe| probe.channel == channel)
            || lock(&self.desired).contains(channel)
    }

    async fn read(
        &self,
        mut pushes: UnboundedReceiver<PushInfo>,
        mut probes: Vec<Probe>,
        shared: &Shared,
        cancel: &CancellationToken,
    ) -> End {
        let mut ticks = tokio::time::interval(self.timing.probe_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return End::Cancelled,
                push = pushes.recv() => {
                    let Some(push) = push else {
                        return End::Dropped;
                    };
                    match push.kind {
                        PushKind::Disconnection => return End::Dropped,
                        PushKind::SUnsubscribe => {
                            if let Some(channel) = push_channel(&push) {
                                if self.wants(&channel, &probes) {
                                    return End::SlotMoved(channel);
                                }
                            }
                        }
                        PushKind::SMessage | PushKind::Message => {
                            if let Some(message) = redis::Msg::from_push_info(push) {
                                if let Some(nonce) = deliver(shared, &message) {
                                    let channel = message.get_channel_name();
                                    for probe in &mut probes {
                                        if probe.channel == channel
                                            && probe.pending.as_ref().is_some_and(|(sent, _)| {
                                                sent.as_bytes() == nonce
                                            })
                                        {
                                            probe.pending = None;
                                        }
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
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
                        let link = Arc::clone(&self.link);
                        let channel = probe.channel.clone();
                        // Published from the command link, off this loop, so reading never
                        // waits.
                        tokio::spawn(async move {
                            let _ = link
                                .call(|mut connection| async move {
                                    redis::cmd("SPUBLISH")
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_are_read_from_cluster_slots_and_probes_land_in_their_slots() {
        let node = |port| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(7000),
                node(7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node(7001)]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node(7002)]),
            Value::Array(vec![Value::Int(12000), Value::Int(12001), node(7000)]),
        ]);
        let found = masters(&reply).expect("a valid reply");
        assert_eq!(found.len(), 3);
        assert_eq!(found["127.0.0.1:7000"], [(0, 5460), (12000, 12001)]);
        for ranges in found.values() {
            let channel =
                probe_channel("n1", ranges, |tag| format!("sb:probe:{tag}")).expect("a probe");
            let slot = hash::slot(channel.as_bytes());
            assert!(ranges.iter().any(|(s, e)| (*s..=*e).contains(&slot)));
        }
        assert!(masters(&Value::Array(vec![Value::Int(1)])).is_err());
        assert!(masters(&Value::Nil).is_err());
    }
}
