//! The Redis engine on a private three-master Redis Cluster (`redis+cluster://`): the shared
//! conformance suite, channels spread over the masters with their sharded pub/sub on the
//! master that holds their keys, awkward channel names (every script's keys in one slot, the
//! map scripts' too), a
//! slot moved to another master, and a master killed then restarted. Every wait is bounded.

mod cluster_support;
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cluster_support::RedisCluster;
use switchboard::broker::conformance::{self, keep, Engine, Event, Recorder};
use switchboard::broker::{Broker, PublishOptions};
use switchboard::publication::{PayloadKind, Publication};
use switchboard_redis::RedisBroker;

const BOUND: Duration = Duration::from_secs(20);

fn publication(data: &str) -> Publication {
    Publication::from_payload(PayloadKind::Json, Bytes::from(data.to_owned()))
}

struct ClusterEngine {
    url: String,
}

#[async_trait]
impl Engine for ClusterEngine {
    async fn make(&self, namespace: &str) -> Arc<dyn Broker> {
        let settings = common::quick_settings(&self.url, namespace);
        Arc::new(RedisBroker::new(settings).expect("broker"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_broker_conforms() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let engine = ClusterEngine { url: cluster.url() };
    tokio::time::timeout(Duration::from_secs(180), conformance::run_all(&engine))
        .await
        .expect("the suite finishes within three minutes");
}

async fn wait_event(events: &Recorder, what: &str, event: Event) {
    events
        .wait_until(what, BOUND, |log| log.contains(&event))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_spread_over_masters_with_their_pubsub_on_the_same_master() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let (broker, events) = common::started(&cluster.url(), "spread").await;
    let channels: Vec<String> = (0..24).map(|i| format!("room-{i}")).collect();
    for channel in &channels {
        broker.subscribe(channel).await.expect("subscribe");
        broker
            .publish(channel, &publication("1"), &keep(10))
            .await
            .expect("publish");
    }
    for channel in &channels {
        events.wait_publications(channel, 1).await;
    }
    let mut used = vec![0usize; cluster.len()];
    for channel in &channels {
        let meta = format!("spread:meta:{{={channel}}}");
        let stream = format!("spread:stream:{{={channel}}}");
        let pubsub = format!("spread:p:{{={channel}}}");
        let holders: Vec<usize> = (0..cluster.len())
            .filter(|&node| cluster.keys(node, &meta).contains(&meta))
            .collect();
        assert_eq!(holders.len(), 1, "{channel}'s stream is on one master");
        let node = holders[0];
        used[node] += 1;
        assert!(cluster.keys(node, &stream).contains(&stream), "{channel}");
        // The node's sharded subscriptions: only the master owning the slot has them.
        for other in 0..cluster.len() {
            let shard_channels = format!(
                "{:?}",
                cluster.command(other, &["PUBSUB", "SHARDCHANNELS", &pubsub])
            );
            assert_eq!(
                shard_channels.contains(&pubsub),
                other == node,
                "{channel}'s sharded pub/sub lives with its keys, on node {node}"
            );
        }
    }
    assert!(
        used.iter().all(|&count| count > 0),
        "every master holds channels: {used:?}"
    );
    // Nothing goes through classic pub/sub, which a cluster copies to every node.
    for node in 0..cluster.len() {
        assert_eq!(
            cluster.command(node, &["PUBSUB", "CHANNELS"]),
            redis::Value::Array(vec![]),
            "node {node} has classic subscriptions"
        );
    }
    let message = Bytes::from_static(b"to every node");
    broker
        .publish_control(message.clone())
        .await
        .expect("control");
    events.wait_control(&message).await;
    let health = broker.health();
    assert!(
        health.connected && health.round_trip.is_some(),
        "{health:?}"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_calls_then_they_recover_once_it_is_back() {
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    let (broker, events) = common::started(&cluster.url(), "kill").await;
    // A channel on node 0 and one elsewhere.
    let on = |node: usize| {
        (0..)
            .map(|i| format!("c{i}"))
            .find(|channel| cluster.owner(&format!("kill:meta:{{={channel}}}")) == node)
            .expect("a channel")
    };
    let (doomed, other) = (on(0), on(1));
    for channel in [&doomed, &other] {
        broker.subscribe(channel).await.expect("subscribe");
    }
    let before = broker
        .publish(&doomed, &publication("1"), &keep(10))
        .await
        .expect("publish")
        .expect("position");
    events.wait_publications(&doomed, 1).await;

    cluster.kill(0);
    let started = Instant::now();
    let result = broker.publish(&doomed, &publication("2"), &keep(10)).await;
    assert!(result.is_err(), "a publish to a dead master: {result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded: {:?}",
        started.elapsed()
    );
    let result = broker.history(&doomed, &Default::default()).await;
    assert!(result.is_err(), "a read on a dead master: {result:?}");
    wait_event(&events, "link lost", Event::LinkLost).await;
    assert!(!broker.health().connected);

    cluster.restart(0);
    wait_event(&events, "link restored", Event::LinkRestored).await;
    let after = common::until_ok("publish after restart", BOUND, || async {
        broker.publish(&doomed, &publication("3"), &keep(10)).await
    })
    .await
    .expect("position");
    assert_eq!(
        after.offset, 1,
        "the restarted master lost its data: a new stream"
    );
    assert_ne!(after.epoch, before.epoch, "a new stream has a new epoch");
    let seen = events.wait_publications(&doomed, 2).await;
    assert_eq!(
        (seen[1].0, seen[1].1.as_str()),
        (1, &*after.epoch),
        "resubscribed"
    );
    common::until_ok("the other master's channel", BOUND, || async {
        broker
            .publish(&other, &publication("4"), &PublishOptions::default())
            .await
    })
    .await;
    events.wait_publications(&other, 1).await;
    common::until_ok("healthy again", BOUND, || async {
        if broker.health().connected {
            Ok(())
        } else {
            Err("not connected")
        }
    })
    .await;
    assert!(broker.health().reconnects >= 1);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_channel_names_keep_every_script_on_one_slot() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let (broker, events) = common::started(&cluster.url(), "awk").await;
    for channel in ["}x", "}", "a}b", "{", "a{b}c", "{}", "=}"] {
        broker.subscribe(channel).await.expect("subscribe");
        let options = PublishOptions {
            idempotency_key: Some("}{k}".into()),
            idempotency_ttl: Duration::from_secs(60),
            ..keep(10)
        };
        for _ in 0..2 {
            let position = broker
                .publish(channel, &publication("1"), &options)
                .await
                .unwrap_or_else(|e| panic!("{channel:?}: {e}"))
                .expect("position");
            assert_eq!(position.offset, 1, "{channel:?}: applied once");
        }
        events.wait_publications(channel, 1).await;
        let page = broker
            .history(channel, &Default::default())
            .await
            .expect("history");
        assert_eq!(page.publications.len(), 1, "{channel:?}");
        let info =
            switchboard::publication::ClientInfo::from_parts("c", "u", Bytes::new(), Bytes::new());
        broker
            .add_presence(channel, &info, Duration::from_secs(60))
            .await
            .expect("add presence");
        assert_eq!(broker.presence(channel).await.expect("presence").len(), 1);
        broker
            .stream_position(channel, Duration::from_secs(60))
            .await
            .expect("position");
        // The map scripts name the map's keys and an idempotency key beside the stream's.
        let map = format!("{channel}:map");
        let keyed = PublishOptions {
            key_ttl: Duration::from_secs(60),
            ..options.clone()
        };
        let set = broker
            .publish(&map, &publication("2").keyed("}{key"), &keyed)
            .await
            .unwrap_or_else(|e| panic!("{map:?}: {e}"))
            .expect("position");
        assert_eq!(set.offset, 1, "{map:?}");
        let page = broker
            .map_state(&map, "", 10, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{map:?}: {e}"));
        assert_eq!(page.entries.len(), 1, "{map:?}");
        assert_eq!(page.position, set, "{map:?}");
        broker
            .keep_stream(&map, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{map:?}: {e}"));
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_slot_takes_its_stream_and_the_subscription_follows() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let (broker, events) = common::started(&cluster.url(), "move").await;
    let channel = "wanderer";
    let meta = format!("move:meta:{{={channel}}}");
    broker.subscribe(channel).await.expect("subscribe");
    let before = broker
        .publish(channel, &publication("1"), &keep(10))
        .await
        .expect("publish")
        .expect("position");
    events.wait_publications(channel, 1).await;
    let from = cluster.owner(&meta);
    let to = (from + 1) % cluster.len();
    cluster.move_slot(&meta, to);
    assert_eq!(cluster.owner(&meta), to);
    // The old master drops the sharded subscription; the worker resubscribes on the new one.
    wait_event(&events, "link lost (slot moved)", Event::LinkLost).await;
    wait_event(&events, "link restored", Event::LinkRestored).await;
    let after = common::until_ok("publish after the move", BOUND, || async {
        broker.publish(channel, &publication("2"), &keep(10)).await
    })
    .await
    .expect("position");
    assert_eq!(
        (after.offset, &after.epoch),
        (2, &before.epoch),
        "the stream moved with its slot"
    );
    let seen = events.wait_publications(channel, 2).await;
    assert_eq!(seen[1].0, 2, "delivered from the new master");
    broker.stop().await;
}
