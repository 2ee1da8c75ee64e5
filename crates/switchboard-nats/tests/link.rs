//! The link under a failing server: killed and restarted mid-stream (link lost, then restored,
//! and publishing works again), and frozen with SIGSTOP (calls time out instead of hanging,
//! and work again after SIGCONT).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard::broker::conformance::{keep, Event, Recorder};
use switchboard::broker::{Broker, BrokerError, BrokerEvents, HistoryRange, Position};
use switchboard::publication::{PayloadKind, Publication};
use switchboard_nats::NatsBroker;

/// The whole of one test.
const TEST: Duration = Duration::from_secs(90);
/// How long the link may take to notice or recover.
const LINK: Duration = Duration::from_secs(20);

fn publication(data: &str) -> Publication {
    Publication::from_payload(PayloadKind::Json, Bytes::from(data.to_owned()))
}

async fn started(url: &str) -> (Arc<NatsBroker>, Arc<Recorder>) {
    let broker = common::broker(url, &format!("link-{:08x}", fastrand::u32(..)));
    let events = Recorder::new();
    broker
        .start(Arc::clone(&events) as Arc<dyn BrokerEvents>)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    (broker, events)
}

/// Publishes until it works (the server may still be recovering its streams), for `within`.
async fn publish_eventually(broker: &NatsBroker, data: &str, within: Duration) -> Position {
    let deadline = Instant::now() + within;
    loop {
        match broker.publish("feed", &publication(data), &keep(100)).await {
            Ok(Some(position)) => return position,
            Ok(None) => panic!("a channel with history must return a position"),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "publishing did not come back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_server_is_lost_then_restored_and_publishing_goes_on() {
    let Some(mut server) = common::NatsServer::start() else {
        return;
    };
    let run = async {
        let (broker, events) = started(&server.url()).await;
        broker
            .subscribe("feed")
            .await
            .unwrap_or_else(|e| panic!("subscribe: {e}"));
        for i in 1..=3u64 {
            let position = publish_eventually(&broker, &i.to_string(), LINK).await;
            assert_eq!(position.offset, i);
        }
        events.wait_publications("feed", 3).await;
        assert!(broker.health().connected);

        server.kill();
        events
            .wait_until("link_lost", LINK, |log| log.contains(&Event::LinkLost))
            .await;
        assert!(!broker.health().connected, "health says the link is down");
        let started = Instant::now();
        let refused = broker.publish("feed", &publication("x"), &keep(100)).await;
        assert!(
            matches!(
                refused,
                Err(BrokerError::Unavailable(_) | BrokerError::Timeout)
            ),
            "a publish while the server is down fails: {refused:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "and fails quickly"
        );

        server.restart();
        events
            .wait_until("link_restored", LINK, |log| {
                log.contains(&Event::LinkRestored)
            })
            .await;
        let health = broker.health();
        assert!(health.connected);
        assert!(
            health.reconnects >= 1,
            "health counts the reconnection: {health:?}"
        );

        let after = publish_eventually(&broker, "4", LINK).await;
        let delivered = events.wait_publications("feed", 4).await;
        assert_eq!(
            delivered
                .last()
                .map(|(offset, epoch, _)| (*offset, epoch.clone())),
            Some((after.offset, after.epoch.to_string())),
            "the channel was resubscribed: the new publication is delivered"
        );
        // The store survived the restart, so the stream goes on where it was.
        assert_eq!(
            after.offset, 4,
            "offsets continue after a restart on the same store"
        );
        broker.stop().await;
    };
    tokio::time::timeout(TEST, run)
        .await
        .unwrap_or_else(|_| panic!("kill/restart did not finish in {TEST:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_gives_timeouts_then_recovers() {
    let Some(server) = common::NatsServer::start() else {
        return;
    };
    let run = async {
        let (broker, events) = started(&server.url()).await;
        broker
            .subscribe("feed")
            .await
            .unwrap_or_else(|e| panic!("subscribe: {e}"));
        publish_eventually(&broker, "1", LINK).await;

        server.pause();
        let limit = common::quick().request_timeout;
        let started = Instant::now();
        let frozen = broker.publish("feed", &publication("2"), &keep(100)).await;
        assert!(
            matches!(frozen, Err(BrokerError::Timeout)),
            "a publish to a frozen server times out: {frozen:?}"
        );
        let read = broker.history("feed", &HistoryRange::default()).await;
        assert!(
            matches!(
                read,
                Err(BrokerError::Timeout | BrokerError::Unavailable(_))
            ),
            "so does a read: {read:?}"
        );
        let control = broker.publish_control(Bytes::from_static(b"c")).await;
        assert!(control.is_err(), "and a control message: {control:?}");
        assert!(
            started.elapsed() < limit * 3 + Duration::from_secs(1),
            "each call ends at its deadline: {:?}",
            started.elapsed()
        );

        server.resume();
        let position = publish_eventually(&broker, "3", LINK).await;
        assert!(position.offset >= 2, "publishing works again: {position:?}");
        let lost = events.count(&Event::LinkLost);
        if lost > 0 {
            events
                .wait_until("link_restored after link_lost", LINK, |log| {
                    log.contains(&Event::LinkRestored)
                })
                .await;
        }
        let page = broker
            .history("feed", &HistoryRange::default())
            .await
            .unwrap_or_else(|e| panic!("history after resume: {e}"));
        assert_eq!(page.position, position);
        broker.stop().await;
    };
    tokio::time::timeout(TEST, run)
        .await
        .unwrap_or_else(|_| panic!("stop/cont did not finish in {TEST:?}"));
}
