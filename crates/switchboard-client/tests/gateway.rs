//! The client against the real gateway, in-process: connect, subscribe and receive API
//! publications; calls with typed results and errors; reconnect with backoff across a server
//! restart on the same port; zero-loss recovery across dropped connections.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use switchboard_client::codes::{close, error};
use switchboard_client::{Client, Config, Error, Event, HistoryOptions};
use tokio::sync::oneshot;

#[tokio::test]
async fn connects_subscribes_and_receives_api_publications() {
    let server = start(dev_config(any_port())).await;
    let (client, events) = Client::connect(Config::new(server.client_url())).unwrap();
    let mut watch = Watch::new(events);
    let id = connected(&mut watch).await;
    assert!(!id.is_empty());

    client.subscribe("news").await.unwrap();
    let (recovered, was_recovering, recoverable) = subscribed(&mut watch, "news").await;
    assert!(recoverable, "--dev keeps history with recovery");
    assert!(!recovered && !was_recovering);

    for n in 1..=3 {
        let (status, body) = server.publish("news", json!({ "n": n })).await;
        assert_eq!(status, 200, "{body}");
    }
    watch.until_publications(3).await;
    let got: Vec<(Option<u64>, Value)> = watch
        .publications
        .iter()
        .map(|(channel, offset, data)| {
            assert_eq!(channel, "news");
            (*offset, data.clone())
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(1), json!({"n": 1})),
            (Some(2), json!({"n": 2})),
            (Some(3), json!({"n": 3})),
        ]
    );

    close(client, watch).await;
    server.stop().await;
}

#[tokio::test]
async fn calls_return_typed_results_and_errors() {
    let server = start(dev_config(any_port())).await;
    let (client, events) = Client::connect(Config::new(server.client_url())).unwrap();
    let mut watch = Watch::new(events);
    // A call made before the connection is up waits for it.
    client.subscribe("room").await.unwrap();
    let stats = client.presence_stats("room").await;
    connected(&mut watch).await;
    subscribed(&mut watch, "room").await;
    // presence_stats may have been answered before or after the subscribe took effect.
    assert!(stats.unwrap().num_clients <= 1);

    client
        .publish("room", &json!({"text": "mine"}))
        .await
        .unwrap();
    watch.until_publications(1).await;
    assert_eq!(watch.publications[0].2, json!({"text": "mine"}));
    let Some(Event::Publication { info, .. }) = watch
        .log
        .iter()
        .rev()
        .find(|e| matches!(e, Event::Publication { .. }))
    else {
        unreachable!()
    };
    assert!(info.is_some(), "a client's publication carries its info");

    let presence = client.presence("room").await.unwrap();
    assert_eq!(presence.len(), 1, "{presence:?}");
    let stats = client.presence_stats("room").await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (1, 1));

    let history = client
        .history(
            "room",
            HistoryOptions {
                limit: Some(10),
                ..HistoryOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(history.publications.len(), 1);
    assert_eq!(history.offset, 1);
    assert!(!history.epoch.is_empty());
    let position = client
        .history("room", HistoryOptions::default())
        .await
        .unwrap();
    assert!(position.publications.is_empty(), "no limit: position only");
    assert_eq!((position.offset, &position.epoch), (1, &history.epoch));

    // An unconfigured namespace: a typed error, for calls and for subscriptions.
    match client.publish("nowhere:x", &json!(1)).await {
        Err(Error::Reply(reply)) => assert_eq!(reply.code, error::UNKNOWN_CHANNEL, "{reply}"),
        other => panic!("expected error 102, got {other:?}"),
    }
    client.subscribe("nowhere:x").await.unwrap();
    let failed = watch
        .until("SubscriptionFailed", |e| {
            matches!(e, Event::SubscriptionFailed { .. })
        })
        .await;
    let Event::SubscriptionFailed { channel, error } = failed else {
        unreachable!()
    };
    assert_eq!((channel.as_str(), error.code), ("nowhere:x", 102));
    assert!(matches!(
        client.subscribe("room").await,
        Err(Error::AlreadySubscribed { .. })
    ));

    client.unsubscribe("room").await.unwrap();
    watch
        .until("Unsubscribed", |e| {
            matches!(e, Event::Unsubscribed { code: 0, .. })
        })
        .await;

    close(client.clone(), watch).await;
    assert!(matches!(
        client.publish("room", &json!(1)).await,
        Err(Error::Closed)
    ));
    server.stop().await;
}

#[tokio::test]
async fn connects_with_a_token_and_stops_when_refused() {
    let mut config = dev_config(any_port());
    config.server.dev = false;
    let server = start(config).await;

    let token = switchboard::auth::mint_hs256(SECRET, "42", 3600).unwrap();
    let (client, events) =
        Client::connect(Config::new(server.client_url()).with_token(token)).unwrap();
    let mut watch = Watch::new(events);
    connected(&mut watch).await;
    close(client, watch).await;

    // No token and anonymous connections refused: error 101, and the client stops.
    let (client, events) = Client::connect(Config::new(server.client_url())).unwrap();
    let mut watch = Watch::new(events);
    let event = watch
        .until("Disconnected", |e| matches!(e, Event::Disconnected { .. }))
        .await;
    assert_eq!(
        event,
        Event::Disconnected {
            code: error::UNAUTHORIZED,
            reason: "unauthorized".into(),
            reconnect: false
        }
    );
    watch.until_end().await;
    assert!(matches!(client.subscribe("x").await, Err(Error::Closed)));
    server.stop().await;
}

#[tokio::test]
async fn reconnects_with_jittered_backoff_across_a_server_restart_on_the_same_port() {
    const SEED: u64 = 0x5eed;
    const ATTEMPTS: u32 = 7;
    let server = start(dev_config(any_port())).await;
    let addr = server.addr;
    let backoff = quick_backoff();
    let mut config = Config::new(server.client_url()).with_backoff(backoff);
    config.backoff_seed = Some(SEED);
    let (client, events) = Client::connect(config).unwrap();
    let mut watch = Watch::new(events);
    connected(&mut watch).await;
    client.subscribe("restart").await.unwrap();
    subscribed(&mut watch, "restart").await;
    server.publish("restart", json!("before")).await;
    watch.until_publications(1).await;

    // Stop the server for good: the client is told, and keeps trying with growing delays.
    server.stop().await;
    let disconnected = watch
        .until("Disconnected", |e| matches!(e, Event::Disconnected { .. }))
        .await;
    assert_eq!(
        disconnected,
        Event::Disconnected {
            code: u32::from(close::SHUTDOWN),
            reason: "shutdown".into(),
            reconnect: true
        }
    );
    let mut delays = Vec::new();
    while delays.len() < ATTEMPTS as usize {
        match watch.next("Connecting").await {
            Event::Connecting { attempt, delay } => {
                assert_eq!(attempt as usize, delays.len(), "attempts count up from 0");
                delays.push(delay);
            }
            Event::Connected { .. } => panic!("connected to a stopped server: {:#?}", watch.log),
            _ => {}
        }
    }
    for (attempt, delay) in (0..).zip(&delays) {
        assert!(
            *delay <= backoff.upper_bound(attempt),
            "attempt {attempt}: {delay:?}"
        );
    }
    // The upper bound doubles from 10 ms up to the 200 ms cap.
    let bounds: Vec<u64> = (0..ATTEMPTS)
        .map(|a| backoff.upper_bound(a).as_millis() as u64)
        .collect();
    assert_eq!(bounds, vec![10, 20, 40, 80, 160, 200, 200]);
    assert!(
        delays.iter().any(|d| *d != delays[0]),
        "jittered: {delays:?}"
    );
    // The delays are exactly the backoff's schedule for the seeded random source.
    let mut rng = fastrand::Rng::with_seed(SEED);
    let expected: Vec<Duration> = (0..ATTEMPTS).map(|a| backoff.delay(a, &mut rng)).collect();
    assert_eq!(delays, expected);

    // A new server on the same port: the client comes back and resubscribes. Its history is
    // new (a new epoch), so recovery is tried and honestly reported as failed.
    let server = start(dev_config(addr)).await;
    connected(&mut watch).await;
    let (recovered, was_recovering, _) = subscribed(&mut watch, "restart").await;
    assert!(was_recovering && !recovered);
    server.publish("restart", json!("after")).await;
    watch.until_publications(2).await;
    assert_eq!(watch.publications[1].2, json!("after"));

    close(client, watch).await;
    server.stop().await;
}

/// Publishes `{"n": from..=to}` through the API, counting in `published`.
async fn publish_range(
    addr: std::net::SocketAddr,
    channel: &str,
    from: u64,
    to: u64,
    published: &AtomicU64,
) {
    for n in from..=to {
        let (status, body) = api(
            addr,
            "publish",
            json!({"channel": channel, "data": {"n": n}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        published.store(n, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn recovers_every_publication_exactly_once_across_dropped_connections() {
    const CHANNEL: &str = "recovery";
    // Three phases of 30: within the 100 publications --dev keeps, so recovery must succeed.
    const PHASE: u64 = 30;
    let server = start(dev_config(any_port())).await;
    let proxy = Proxy::start(server.addr).await;
    let config = Config::new(client_url(proxy.addr)).with_backoff(quick_backoff());
    let (client, events) = Client::connect(config).unwrap();
    let mut watch = Watch::new(events);
    connected(&mut watch).await;
    client.subscribe(CHANNEL).await.unwrap();
    let (_, _, recoverable) = subscribed(&mut watch, CHANNEL).await;
    assert!(recoverable);

    // The publisher runs on its own, phase by phase: the first phase races with the cut, the
    // second happens entirely while the client is cut off, the third after it is back (and
    // races with a second cut).
    let published = Arc::new(AtomicU64::new(0));
    let (gap_open, gap_opened) = oneshot::channel::<()>();
    let (gap_done, gap_finished) = oneshot::channel::<()>();
    let (back, came_back) = oneshot::channel::<()>();
    let publisher = tokio::spawn({
        let addr = server.addr;
        let published = Arc::clone(&published);
        async move {
            publish_range(addr, CHANNEL, 1, PHASE, &published).await;
            gap_opened.await.unwrap();
            publish_range(addr, CHANNEL, PHASE + 1, 2 * PHASE, &published).await;
            gap_done.send(()).unwrap();
            came_back.await.unwrap();
            publish_range(addr, CHANNEL, 2 * PHASE + 1, 3 * PHASE, &published).await;
        }
    });

    watch.until_publications(5).await;
    proxy.cut_and_block();
    let disconnected = watch
        .until("Disconnected", |e| matches!(e, Event::Disconnected { .. }))
        .await;
    assert!(
        matches!(disconnected, Event::Disconnected { code, reconnect: true, .. } if code == u32::from(close::ABNORMAL)),
        "{disconnected:?}"
    );
    let before_gap = watch.publications.len();
    gap_open.send(()).unwrap();
    tokio::time::timeout(WAIT, gap_finished)
        .await
        .expect("gap publications in time")
        .unwrap();
    assert!(published.load(Ordering::SeqCst) >= 2 * PHASE);

    proxy.unblock();
    let (recovered, was_recovering, _) = subscribed(&mut watch, CHANNEL).await;
    assert!(recovered && was_recovering, "{:#?}", watch.log);
    assert!(
        watch.publications.len() >= before_gap,
        "nothing is taken back"
    );
    back.send(()).unwrap();
    // Cut again while the last phase is being published, and let the client straight back in:
    // its resubscription races with live publications.
    watch.until_publications((2 * PHASE + 5) as usize).await;
    proxy.cut();
    watch
        .until("Disconnected", |e| matches!(e, Event::Disconnected { .. }))
        .await;
    let (recovered, was_recovering, _) = subscribed(&mut watch, CHANNEL).await;
    assert!(recovered && was_recovering, "{:#?}", watch.log);
    watch.until_publications((3 * PHASE) as usize).await;
    tokio::time::timeout(WAIT, publisher)
        .await
        .expect("publisher done in time")
        .unwrap();

    let ns: Vec<u64> = watch
        .publications
        .iter()
        .map(|(_, _, data)| data["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ns,
        (1..=3 * PHASE).collect::<Vec<_>>(),
        "exactly once, in order"
    );
    let offsets: Vec<u64> = watch
        .publications
        .iter()
        .map(|(_, offset, _)| offset.unwrap())
        .collect();
    assert_eq!(offsets, (1..=3 * PHASE).collect::<Vec<_>>(), "offset order");

    // Nothing more arrives: no duplicate was pending.
    let (status, _) = server.publish(CHANNEL, json!({"n": "last"})).await;
    assert_eq!(status, 200);
    watch.until_publications((3 * PHASE + 1) as usize).await;
    assert_eq!(watch.publications.last().unwrap().2, json!({"n": "last"}));

    close(client, watch).await;
    proxy.stop();
    server.stop().await;
}

#[tokio::test]
async fn answers_server_pings_and_stays_connected() {
    let mut config = dev_config(any_port());
    config.server.heartbeat_interval = Duration::from_millis(100);
    let server = start(config).await;
    let (client, events) = Client::connect(Config::new(server.client_url())).unwrap();
    let mut watch = Watch::new(events);
    connected(&mut watch).await;
    // A client that did not answer would be closed (3012) after two silent intervals; six
    // intervals go by with no event at all.
    let quiet = tokio::time::timeout(Duration::from_millis(600), watch.next("nothing")).await;
    assert!(quiet.is_err(), "unexpected event: {:#?}", watch.log);
    client.subscribe("alive").await.unwrap();
    subscribed(&mut watch, "alive").await;
    close(client, watch).await;
    server.stop().await;
}
