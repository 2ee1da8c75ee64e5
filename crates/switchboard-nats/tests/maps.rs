//! A node that dies between a map change and its index copy loses nothing: the change is in
//! the channel's stream (the truth), and the next reader or writer of the map completes the
//! index before it reads or stores anything (crates/switchboard-nats/src/map.rs). The dead
//! node is played by a raw JetStream client storing a keyed change exactly as the engine
//! does, and never indexing it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE;
use async_nats::HeaderMap;
use bytes::Bytes;
use switchboard::broker::codec::encode_publication;
use switchboard::broker::conformance::{keep, Recorder};
use switchboard::broker::{Broker, BrokerEvents, Position};
use switchboard::publication::Publication;
use switchboard_nats::meta::{now_ms, Meta};
use switchboard_nats::subject::Names;

/// Stores `publication` (keyed) as the next change of `channel` the way a node does, then
/// "dies": no index copy. Returns its offset.
async fn store_unindexed(url: &str, prefix: &str, channel: &str, publication: &Publication) -> u64 {
    let client = async_nats::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let js = async_nats::jetstream::new(client);
    let names = Names::new(prefix);
    let stream = js
        .get_stream(names.stream())
        .await
        .unwrap_or_else(|e| panic!("the history stream: {e}"));
    let subject = names.stored(channel);
    let last = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .unwrap_or_else(|e| panic!("the channel's last message: {e}"));
    let top = Meta::read(&last.headers).unwrap_or_else(|e| panic!("its headers: {e}"));
    let now = now_ms();
    let meta = Meta {
        offset: top.offset + 1,
        epoch: top.epoch,
        expires_ms: now + 60_000,
        keep_ms: now + 60_000,
        size: 100,
        removed: false,
    };
    let mut headers = HeaderMap::new();
    meta.write(&mut headers);
    // The keyed change's own headers (see map.rs): no key expiry, the TTLs of `keep`.
    headers.insert("Sb-Key-Expires", "0");
    headers.insert("Sb-Expiring", "0");
    headers.insert("Sb-History-Ttl", "60000");
    headers.insert("Sb-Meta-Ttl", "60000");
    headers.insert(
        NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        last.sequence.to_string(),
    );
    js.publish_with_headers(subject, headers, encode_publication(publication))
        .await
        .unwrap_or_else(|e| panic!("store: {e}"))
        .await
        .unwrap_or_else(|e| panic!("stored: {e}"));
    meta.offset
}

/// Every (key, data) of `channel`'s state, one page, and its position.
async fn state(broker: &dyn Broker, channel: &str) -> (Vec<(String, Bytes)>, Position) {
    let page = broker
        .map_state(channel, "", 100, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("map state: {e}"));
    assert!(page.cursor.is_none());
    let entries = page
        .entries
        .iter()
        .map(|p| {
            (
                p.key.as_deref().unwrap_or_default().to_owned(),
                p.payload().1.clone(),
            )
        })
        .collect();
    (entries, page.position)
}

/// Runs a test's body, failing it when it takes more than a minute.
async fn within_a_minute(run: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish in a minute"));
}

/// A started broker on `server` under a fresh prefix `<name>-…`, whose history stream drops
/// messages older than `max_age`.
async fn aging_broker(
    server: &common::NatsServer,
    name: &str,
    max_age: Duration,
) -> Arc<switchboard_nats::NatsBroker> {
    let config = switchboard::config::NatsConfig {
        url: switchboard::config::Secret(server.url()),
        prefix: format!("{name}-{:08x}", fastrand::u32(..)),
    };
    let options = switchboard_nats::NatsOptions {
        history_max_age: max_age,
        ..common::quick()
    };
    let broker = Arc::new(switchboard_nats::NatsBroker::with_options(&config, options));
    broker
        .start(Recorder::new() as Arc<dyn BrokerEvents>)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    broker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_node_died_before_indexing_it_is_completed_by_the_next_reader_or_writer() {
    let Some(server) = common::NatsServer::start() else {
        return;
    };
    let run = async {
        let prefix = format!("crash-{:08x}", fastrand::u32(..));
        let mut nodes = Vec::new();
        for _ in 0..2 {
            let broker = common::broker(&server.url(), &prefix);
            broker
                .start(Recorder::new() as Arc<dyn BrokerEvents>)
                .await
                .unwrap_or_else(|e| panic!("start: {e}"));
            nodes.push(broker);
        }
        let (a, b) = (&nodes[0], &nodes[1]);
        let set = |key: &str, value: &'static str| {
            Publication::json(Bytes::from_static(value.as_bytes())).keyed(key)
        };
        a.publish("board", &set("k1", "1"), &keep(100))
            .await
            .unwrap_or_else(|e| panic!("publish: {e}"));

        // A set nobody indexed: the next state read (on the other node) completes it.
        let offset = store_unindexed(&server.url(), &prefix, "board", &set("k2", "2")).await;
        assert_eq!(offset, 2);
        let (entries, position) = state(&**b, "board").await;
        assert_eq!(
            entries,
            [
                ("k1".to_owned(), Bytes::from_static(b"1")),
                ("k2".to_owned(), Bytes::from_static(b"2"))
            ],
            "the state holds a change its node never indexed"
        );
        assert_eq!(position.offset, 2);

        // A removal nobody indexed, then a keyed publish of another key: the writer completes
        // the index before it stores, so the removal is not lost behind the new change.
        let offset =
            store_unindexed(&server.url(), &prefix, "board", &Publication::removal("k1")).await;
        assert_eq!(offset, 3);
        let after = a
            .publish("board", &set("k3", "3"), &keep(100))
            .await
            .unwrap_or_else(|e| panic!("publish: {e}"))
            .unwrap_or_else(|| panic!("a position"));
        assert_eq!(after.offset, 4);
        let (entries, position) = state(&**b, "board").await;
        assert_eq!(
            entries,
            [
                ("k2".to_owned(), Bytes::from_static(b"2")),
                ("k3".to_owned(), Bytes::from_static(b"3"))
            ],
            "a removal its node never indexed still takes the key out"
        );
        assert_eq!(position, after);
        // Removing the key again changes nothing: the index knows it is gone.
        let again = a
            .publish("board", &Publication::removal("k1"), &keep(100))
            .await
            .unwrap_or_else(|e| panic!("publish: {e}"));
        assert_eq!(again, Some(after));
        for node in &nodes {
            node.stop().await;
        }
    };
    within_a_minute(run).await;
}

/// What a node does with a map a subscriber started: the state read starts the stream (a
/// marker), a key is set with a TTL, and the node's position checks (`keep_stream` with the
/// unused-stream TTL) turn its expiry into one removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_set_on_a_map_a_subscriber_started_expires_at_a_position_check() {
    let Some(server) = common::NatsServer::start() else {
        return;
    };
    let run = async {
        let prefix = format!("started-{:08x}", fastrand::u32(..));
        let broker = common::broker(&server.url(), &prefix);
        broker
            .start(Recorder::new() as Arc<dyn BrokerEvents>)
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        let (entries, started) = state(&*broker, "lease").await;
        assert!(entries.is_empty());
        assert_eq!(started.offset, 0);
        let options = switchboard::broker::PublishOptions {
            key_ttl: Duration::from_millis(300),
            ..keep(100)
        };
        let set = Publication::json(Bytes::from_static(b"1")).keyed("held");
        broker
            .publish("lease", &set, &options)
            .await
            .unwrap_or_else(|e| panic!("publish: {e}"));
        let mut top = 0;
        for _ in 0..200 {
            top = broker
                .keep_stream("lease", Duration::from_secs(60))
                .await
                .unwrap_or_else(|e| panic!("keep_stream: {e}"))
                .offset;
            if top >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(top, 2, "the expiry is one removal, at the next offset");
        let (entries, _) = state(&*broker, "lease").await;
        assert!(entries.is_empty(), "the expired key is gone: {entries:?}");
        broker.stop().await;
    };
    within_a_minute(run).await;
}

/// The history stream drops messages older than its `max_age`, copies in the map index too:
/// a key nobody touches stays in the map as long as the map lives, because position checks
/// and state reads store old copies again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_nobody_touches_outlives_the_streams_max_age_while_its_map_lives() {
    let Some(server) = common::NatsServer::start() else {
        return;
    };
    const MAX_AGE: Duration = Duration::from_secs(2);
    let run = async {
        let broker = aging_broker(&server, "aged", MAX_AGE).await;
        let set = |key: &str, value: String| Publication::json(Bytes::from(value)).keyed(key);
        broker
            .publish("board", &set("still", "1".to_owned()), &keep(100))
            .await
            .unwrap_or_else(|e| panic!("publish: {e}"));
        // Three times max_age of another key changing (which keeps the position alive) and
        // of position checks, as a node with subscribers makes them.
        let started = tokio::time::Instant::now();
        let mut i = 0;
        while started.elapsed() < MAX_AGE * 3 {
            i += 1;
            broker
                .publish("board", &set("busy", i.to_string()), &keep(100))
                .await
                .unwrap_or_else(|e| panic!("publish: {e}"));
            broker
                .keep_stream("board", Duration::from_secs(60))
                .await
                .unwrap_or_else(|e| panic!("keep_stream: {e}"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (entries, _) = state(&*broker, "board").await;
        assert_eq!(
            entries,
            [
                ("busy".to_owned(), Bytes::from(i.to_string())),
                ("still".to_owned(), Bytes::from_static(b"1"))
            ],
            "a key set once, {MAX_AGE:?} ago three times over, is still there"
        );
        broker.stop().await;
    };
    within_a_minute(run).await;
}

/// A map only ever published to (nobody reads it, no node checks it) still has its expired
/// keys taken out: a keyed publish makes a pass over the index now and then (every quarter
/// of `max_age` per node), after its own change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_only_published_to_has_its_expired_keys_taken_out_by_a_publishs_pass() {
    let Some(server) = common::NatsServer::start() else {
        return;
    };
    const MAX_AGE: Duration = Duration::from_secs(2);
    let run = async {
        let broker = aging_broker(&server, "pass", MAX_AGE).await;
        let short = switchboard::broker::PublishOptions {
            key_ttl: Duration::from_millis(100),
            ..keep(100)
        };
        let lease = Publication::json(Bytes::from_static(b"1")).keyed("lease");
        broker
            .publish("board", &lease, &short)
            .await
            .unwrap_or_else(|e| panic!("publish: {e}"));
        // The lease expires, and the next pass is due (a quarter of max_age).
        tokio::time::sleep(MAX_AGE / 4 + Duration::from_millis(100)).await;
        let other = Publication::json(Bytes::from_static(b"2")).keyed("other");
        let position = broker
            .publish("board", &other, &keep(100))
            .await
            .unwrap_or_else(|e| panic!("publish: {e}"))
            .unwrap_or_else(|| panic!("a position"));
        assert_eq!(position.offset, 2);
        let stream = broker
            .history("board", &switchboard::broker::HistoryRange::default())
            .await
            .unwrap_or_else(|e| panic!("history: {e}"));
        let kept: Vec<(u64, Option<&str>, bool)> = stream
            .publications
            .iter()
            .map(|p| (p.offset, p.key.as_deref(), p.removed))
            .collect();
        assert_eq!(
            kept,
            [
                (1, Some("lease"), false),
                (2, Some("other"), false),
                (3, Some("lease"), true)
            ],
            "the publish's pass removed the expired lease once, after its own change"
        );
        broker.stop().await;
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap_or_else(|_| {
            panic!("the test did not finish in 30 s (a pass waiting for its own publish's turn?)")
        });
}
