//! Delivery on a Redis Cluster: sharded pub/sub (Redis 7 `SSUBSCRIBE`, `SPUBLISH`). A
//! channel's pub/sub names carry its keys' hash tag, so a publication is published by the
//! script that stores it, on the master owning the channel's slot, and only that master sends
//! it to subscribers; classic `PUBLISH` on a cluster would copy every message to every node.
//!
//! [`Sharded`] is the [`Transport`] of a cluster's pub/sub workers ([`crate::pubsub::Worker`]):
//! each worker owns one cluster pub/sub connection
//! ([`redis::cluster_async::ClusterConnection`] in RESP3, its messages arriving as pushes), and
//! the library sends each `SSUBSCRIBE` to the master owning the channel's slot. The worker keeps
//! the policy: it remembers its channels, probes every master (a nonce `SPUBLISH`ed from the
//! command link on a probe channel whose slot that master owns, found here when connecting),
//! and when a node's socket drops, a probe does not come back, or a master unsubscribes a
//! channel on its own (its slot moved), it drops the whole connection, reconnects with backoff
//! and jitter, asks the cluster for its masters again, subscribes everything on their current
//! owners, and only then reports the link restored. Rebuilding the whole connection for one
//! node's trouble costs a resubscription of every channel, but a node hears `link_lost` for
//! every channel anyway.

use std::collections::HashMap;

use futures_util::{StreamExt, TryStreamExt};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo, PushKind, RedisResult, Value};
use switchboard::broker::BrokerError;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::hash;
use crate::link::{broker_error, Shard};
use crate::pubsub::{Incoming, Opened, Shared, Timing, Transport};

/// How many `SSUBSCRIBE`s a (re)connection keeps in flight.
const SUBSCRIBE_CONCURRENCY: usize = 32;
/// How many candidate probe tags are tried to land in one master's slots.
const PROBE_TAG_TRIES: u32 = 1 << 20;

/// Sharded pub/sub on a Redis Cluster, through one cluster connection per worker.
pub(crate) struct Sharded {
    seeds: Vec<String>,
    /// Starts every probe channel's tag (unique per node and worker).
    probe_id: String,
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

impl Sharded {
    pub(crate) fn new(seeds: Vec<String>, probe_id: String) -> Self {
        Sharded { seeds, probe_id }
    }
}

impl Transport for Sharded {
    type Handle = ClusterConnection;
    type Stream = UnboundedReceiver<PushInfo>;
    const LABEL: &'static str = "redis cluster pub/sub";

    /// Connects to the cluster and finds its masters, with a probe channel in each one's slots.
    async fn open(
        &self,
        _link: &Shard,
        shared: &Shared,
        timing: &Timing,
    ) -> Result<Opened<Self>, BrokerError> {
        let (pushes, stream) = unbounded_channel();
        let client = ClusterClient::builder(self.seeds.iter().map(String::as_str))
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(pushes)
            .connection_timeout(timing.call)
            .response_timeout(timing.call)
            .retries(1)
            .build()
            .map_err(|e| broker_error(&e))?;
        let mut handle = client
            .get_async_connection()
            .await
            .map_err(|e| broker_error(&e))?;
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut handle)
            .await
            .map_err(|e| broker_error(&e))?;
        let probes = masters(&reply)?
            .values()
            .map(|ranges| {
                probe_channel(&self.probe_id, ranges, |tag| shared.names.probe(tag))
                    .ok_or_else(bad_slots)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Opened {
            handle,
            stream,
            probes,
        })
    }

    async fn subscribe(handle: &mut ClusterConnection, names: &[String]) -> RedisResult<()> {
        handle.ssubscribe(names).await
    }

    async fn unsubscribe(handle: &mut ClusterConnection, names: &[String]) -> RedisResult<()> {
        handle.sunsubscribe(names).await
    }

    /// One `SSUBSCRIBE` per slot (the names of one command must share a slot), a few in
    /// flight at once.
    async fn subscribe_all(handle: &ClusterConnection, names: Vec<String>) -> RedisResult<()> {
        let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
        for name in names {
            by_slot
                .entry(hash::slot(name.as_bytes()))
                .or_default()
                .push(name);
        }
        futures_util::stream::iter(by_slot.into_values().map(|group| {
            let mut handle = handle.clone();
            async move { handle.ssubscribe(group).await }
        }))
        .buffer_unordered(SUBSCRIBE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .map(drop)
    }

    /// The stream ends with the channel or a `Disconnection` push (a node's socket dropped);
    /// an `SUNSUBSCRIBE` push is a master dropping a channel on its own.
    async fn next(stream: &mut UnboundedReceiver<PushInfo>) -> Incoming {
        let Some(push) = stream.recv().await else {
            return Incoming::Dropped;
        };
        match push.kind {
            PushKind::Disconnection => Incoming::Dropped,
            PushKind::SUnsubscribe => {
                push_channel(&push).map_or(Incoming::Other, Incoming::Unsubscribed)
            }
            PushKind::SMessage | PushKind::Message => {
                redis::Msg::from_push_info(push).map_or(Incoming::Other, Incoming::Message)
            }
            _ => Incoming::Other,
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
