//! The Redis engine under faults, each against its own `redis-server`: a restart (lost data,
//! new epoch), a stopped server (calls time out, then recover), a killed pub/sub connection,
//! a pub/sub output buffer overflow, and two shards. Every wait is bounded.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard::broker::conformance::{keep, Event, Recorder};
use switchboard::broker::{Broker, BrokerError, PublishOptions};
use switchboard::publication::{PayloadKind, Publication};
use switchboard_redis::RedisBroker;

const BOUND: Duration = Duration::from_secs(10);

fn publication(data: &str) -> Publication {
    Publication::from_payload(PayloadKind::Json, Bytes::from(data.to_owned()))
}

async fn wait_event(events: &Recorder, what: &str, event: Event, times: usize) {
    events
        .wait_until(what, BOUND, |log| {
            log.iter().filter(|e| **e == event).count() >= times
        })
        .await;
}

/// Publishes `data` to `channel` (retrying while the link comes back) and waits for it.
async fn publish_and_receive(broker: &RedisBroker, events: &Recorder, channel: &str, data: &str) {
    let before = events.publications(channel).len();
    common::until_ok("publish", BOUND, || async {
        broker
            .publish(channel, &publication(data), &PublishOptions::default())
            .await
    })
    .await;
    let seen = events.wait_publications(channel, before + 1).await;
    assert!(
        seen.iter().any(|(_, _, d)| &d[..] == data.as_bytes()),
        "{data} delivered on {channel}"
    );
}

#[tokio::test]
async fn a_restart_loses_the_link_then_restores_it_resubscribed_under_a_new_epoch() {
    let Some(mut server) = common::RedisServer::start() else {
        return;
    };
    let (broker, events) = common::started(&server.url(), "restart").await;
    broker.subscribe("news").await.expect("subscribe");
    let before = broker
        .publish("news", &publication("1"), &keep(10))
        .await
        .expect("publish")
        .expect("position");
    assert_eq!(before.offset, 1);
    events.wait_publications("news", 1).await;

    server.restart();
    wait_event(&events, "link lost", Event::LinkLost, 1).await;
    wait_event(&events, "link restored", Event::LinkRestored, 1).await;

    let after = common::until_ok("publish after restart", BOUND, || async {
        broker.publish("news", &publication("2"), &keep(10)).await
    })
    .await
    .expect("position");
    assert_eq!(after.offset, 1, "an emptied Redis starts a new stream");
    assert_ne!(after.epoch, before.epoch, "a new stream has a new epoch");
    let seen = events.wait_publications("news", 2).await;
    assert_eq!(
        (seen[1].0, seen[1].1.as_str()),
        (1, &*after.epoch),
        "resubscribed"
    );
    assert!(broker.health().reconnects >= 1);
    common::until_ok("healthy again", BOUND, || async {
        if broker.health().connected {
            Ok(())
        } else {
            Err("not connected")
        }
    })
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn a_stopped_server_makes_calls_time_out_then_they_recover() {
    let Some(mut server) = common::RedisServer::start() else {
        return;
    };
    let (broker, events) = common::started(&server.url(), "sigstop").await;
    broker.subscribe("s").await.expect("subscribe");
    server.pause();
    let call_timeout = Duration::from_millis(500);
    let slack = Duration::from_millis(400);
    let started = Instant::now();
    let result = broker.publish("s", &publication("x"), &keep(10)).await;
    assert!(matches!(result, Err(BrokerError::Timeout)), "{result:?}");
    assert!(
        started.elapsed() < call_timeout + slack,
        "bounded: {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let result = broker.history("s", &Default::default()).await;
    assert!(matches!(result, Err(BrokerError::Timeout)), "{result:?}");
    assert!(started.elapsed() < call_timeout + slack);
    let result = broker.subscribe("other").await;
    assert!(result.is_err(), "subscribe to a stopped server: {result:?}");
    // The probe notices the silent server and restarts the pub/sub connections.
    wait_event(&events, "link lost (probe)", Event::LinkLost, 1).await;
    assert!(!broker.health().connected);

    server.resume();
    wait_event(&events, "link restored", Event::LinkRestored, 1).await;
    publish_and_receive(&broker, &events, "s", "\"after\"").await;
    broker.stop().await;
}

#[tokio::test]
async fn a_killed_pubsub_connection_reconnects_and_resubscribes() {
    let Some(server) = common::RedisServer::start() else {
        return;
    };
    let (broker, events) = common::started(&server.url(), "clientkill").await;
    let channels: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
    for channel in &channels {
        broker.subscribe(channel).await.expect("subscribe");
    }
    server.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    wait_event(&events, "link lost", Event::LinkLost, 1).await;
    wait_event(&events, "link restored", Event::LinkRestored, 1).await;
    for channel in &channels {
        publish_and_receive(&broker, &events, channel, "1").await;
    }
    let message = Bytes::from_static(b"control after kill");
    broker
        .publish_control(message.clone())
        .await
        .expect("control");
    events.wait_control(&message).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_pubsub_output_buffer_overflow_drops_the_link_then_it_comes_back() {
    let Some(server) = common::RedisServer::start() else {
        return;
    };
    let (broker, events) = common::started(&server.url(), "overflow").await;
    broker.subscribe("burst").await.expect("subscribe");
    server
        .command(&[
            "CONFIG",
            "SET",
            "client-output-buffer-limit",
            "pubsub 16384 0 0",
        ])
        .await;
    // One script publishes ~2 MB at once, far past the 16 kB limit, to the channel's pub/sub
    // name (`<prefix>:p:<channel>`), so Redis must drop the subscriber.
    server
        .command(&[
            "EVAL",
            "for i = 1, 200 do redis.call('PUBLISH', KEYS[1], string.rep('x', 10000)) end return 1",
            "1",
            "overflow:p:burst",
        ])
        .await;
    wait_event(&events, "link lost (overflow)", Event::LinkLost, 1).await;
    wait_event(&events, "link restored", Event::LinkRestored, 1).await;
    server
        .command(&[
            "CONFIG",
            "SET",
            "client-output-buffer-limit",
            "pubsub 33554432 8388608 60",
        ])
        .await;
    publish_and_receive(&broker, &events, "burst", "\"ok\"").await;
    broker.stop().await;
}

#[tokio::test]
async fn two_shards_keep_each_channel_on_its_hashed_shard() {
    let (Some(first), Some(second)) = (common::RedisServer::start(), common::RedisServer::start())
    else {
        return;
    };
    let url = format!("{},{}", first.url(), second.url());
    let (broker, events) = common::started(&url, "shards").await;
    let servers = [&first, &second];
    let channels: Vec<String> = (0..20).map(|i| format!("room-{i}")).collect();
    let mut on = [0usize; 2];
    for channel in &channels {
        broker.subscribe(channel).await.expect("subscribe");
        broker
            .publish(channel, &publication("1"), &keep(10))
            .await
            .expect("publish");
        let shard = broker.shard_index(channel);
        on[shard] += 1;
        let meta = format!("shards:meta:{{{channel}}}");
        for (index, server) in servers.iter().enumerate() {
            let exists = server.command(&["EXISTS", &meta]).await;
            assert_eq!(
                exists,
                redis::Value::Int(i64::from(index == shard)),
                "{channel}'s stream is on shard {shard} only"
            );
        }
    }
    assert!(on[0] > 0 && on[1] > 0, "both shards used: {on:?}");
    for channel in &channels {
        events.wait_publications(channel, 1).await;
    }
    let message = Bytes::from_static(b"to all");
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

#[tokio::test]
async fn a_sentinel_url_reaches_the_master_it_names() {
    let Some(master) = common::RedisServer::start() else {
        return;
    };
    let sentinel = common::RedisServer::sentinel(&master, "main");
    let url = format!("redis+sentinel://127.0.0.1:{}/main", sentinel.port());
    let (broker, events) = common::started(&url, "sentinel").await;
    broker.subscribe("via").await.expect("subscribe");
    let position = broker
        .publish("via", &publication("1"), &keep(10))
        .await
        .expect("publish")
        .expect("position");
    assert_eq!(position.offset, 1);
    events.wait_publications("via", 1).await;
    let exists = master.command(&["EXISTS", "sentinel:meta:{via}"]).await;
    assert_eq!(exists, redis::Value::Int(1), "the stream is on the master");
    broker.stop().await;
}
