//! Test-only: end-to-end runs of every scenario against the in-process test server
//! (`testserver`), and of the client protocol's door (`fanout --door protocol`, also in
//! `slow`) and of permessage-deflate (`fanout --deflate`, on both doors) against the real
//! gateway (`gateway`), through the same entry points the command line uses.

use super::*;

fn local<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}

fn num(r: &report::Report, k: &str) -> f64 {
    r.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN)
}

#[test]
fn echo_end_to_end() {
    local(async {
        let (addr, _) = testserver::start(false).await;
        let t = net::Nodes::parse(&format!("ws://{addr}"), Some("tok")).expect("target");
        let p = echo::Params {
            connections: 3,
            in_flight: 2,
            size: 40,
            duration: Duration::from_millis(300),
            drain: Duration::from_secs(2),
        };
        let r = echo::run(&t, &p, &[std::process::id()], 8)
            .await
            .expect("run");
        assert!(r.complete);
        assert_eq!(num(&r, "loss"), 0.0);
        assert!(num(&r, "received_in_window") > 0.0);
        assert!(num(&r, "server_cpu_s") >= 0.0);
    });
}

#[test]
fn fanout_max_end_to_end() {
    local(async {
        let (addr, _) = testserver::start(false).await;
        let t = net::Nodes::parse(&format!("ws://{addr}"), None).expect("target");
        let p = fanout::Params {
            size: 64,
            duration: Duration::from_millis(300),
            ..small_params("room", fanout::Door::Plain, fanout::Mode::Max { window: 3 })
        };
        let r = fanout::run(&t, &p, &[], 8).await.expect("run");
        assert!(r.complete);
        assert_eq!(num(&r, "loss"), 0.0);
        assert_eq!(num(&r, "stalled_publications"), 0.0);
        assert!(num(&r, "deliveries") > 0.0);
        // Every publication reaches the 3 subscribers of its room.
        assert_eq!(
            num(&r, "expected_deliveries"),
            3.0 * num(&r, "publications")
        );
        // Without --deflate nothing is compressed; each delivery is one frame.
        assert_eq!(r.get("deflate").and_then(|v| v.as_bool()), Some(false));
        assert_eq!(num(&r, "frames_compressed"), 0.0);
        assert_eq!(num(&r, "frames_uncompressed"), num(&r, "deliveries"));
        assert!(num(&r, "wire_bytes_per_delivery") >= 66.0);
        assert!(r.get("deflate_saved_pct").is_some_and(|v| v.is_null()));
    });
}

/// `--url` with three nodes (test servers sharing their rooms, as a broker joins nodes): the
/// subscribers are spread round-robin, the publisher is on the first node, every publication
/// reaches every node's subscribers, and the latency is reported per node and cross-node.
#[test]
fn fanout_spreads_subscribers_over_a_cluster() {
    local(async {
        let nodes = testserver::start_cluster(3).await;
        let urls: Vec<String> = nodes.iter().map(|(a, _)| format!("ws://{a}")).collect();
        let t = net::Nodes::parse(&urls.join(","), None).expect("nodes");
        let p = fanout::Params {
            rooms: 1,
            subscribers: 7,
            publishers: 1,
            ..small_params("room", fanout::Door::Plain, fanout::Mode::Rate(50.0))
        };
        let me = std::process::id();
        let pids = [me, std::os::unix::process::parent_id()];
        // The phase file: `start`, then `end` (nobody removes it: no hold).
        let phase = std::env::temp_dir().join(format!("bench-phase-{me}"));
        let p = fanout::Params {
            phase_file: Some(phase.clone()),
            ..p
        };
        let r = fanout::run(&t, &p, &pids, 8).await.expect("run");
        assert_eq!(
            std::fs::read_to_string(&phase).expect("phase file"),
            "end\n"
        );
        std::fs::remove_file(&phase).expect("remove");
        assert!(r.complete, "{:?}", r.get("notes"));
        assert_eq!(num(&r, "loss"), 0.0);
        assert!(num(&r, "deliveries") > 0.0);
        assert_eq!(
            num(&r, "expected_deliveries"),
            7.0 * num(&r, "publications")
        );
        // Subscribers 0, 3, 6 and the publisher on node 0; 1, 4 on node 1; 2, 5 on node 2.
        let accepted: Vec<usize> = nodes
            .iter()
            .map(|(_, s)| s.accepted.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        assert_eq!(accepted, [4, 2, 2]);
        assert_eq!(num(&r, "nodes"), 3.0);
        assert_eq!(
            [0, 1, 2].map(|j| num(&r, &format!("node{j}_subscribers"))),
            [3.0, 2.0, 2.0]
        );
        // Every subscriber's deliveries are in its node's histogram; nodes 1 and 2 are remote.
        let per_node: f64 = (0..3)
            .map(|j| num(&r, &format!("node{j}_latency_samples")))
            .sum();
        assert_eq!(per_node, num(&r, "latency_samples"));
        assert_eq!(
            num(&r, "remote_latency_samples"),
            num(&r, "node1_latency_samples") + num(&r, "node2_latency_samples")
        );
        assert!(num(&r, "remote_latency_p99_us") > 0.0);
        // Both pids' CPU is summed, and split.
        assert_eq!(
            r.get("server_pid").and_then(|v| v.as_str()),
            Some(format!("{},{}", pids[0], pids[1]).as_str())
        );
        let split = r.get("server_cpu_by_process").expect("split");
        assert!(split.get(me.to_string()).is_some());
        assert_eq!(
            r.get("url").and_then(|v| v.as_str()),
            Some(t.describe().as_str())
        );
    });
}

/// `echo`, `idle` and `connect` spread their connections round-robin over the nodes too.
#[test]
fn other_scenarios_spread_over_a_cluster() {
    local(async {
        let nodes = testserver::start_cluster(2).await;
        let urls: Vec<String> = nodes.iter().map(|(a, _)| format!("ws://{a}")).collect();
        let t = net::Nodes::parse(&urls.join(","), None).expect("nodes");
        let accepted = || -> Vec<usize> {
            nodes
                .iter()
                .map(|(_, s)| s.accepted.load(std::sync::atomic::Ordering::Relaxed))
                .collect()
        };
        let p = echo::Params {
            connections: 4,
            in_flight: 2,
            size: 40,
            duration: Duration::from_millis(200),
            drain: Duration::from_secs(2),
        };
        let r = echo::run(&t, &p, &[], 8).await.expect("echo");
        assert!(r.complete);
        assert_eq!(accepted(), [2, 2]);
        let p = connect::Params {
            connections: 6,
            concurrency: 2,
            with_token: false,
            pusher: None,
        };
        let r = connect::run(&t, &p, &[]).await.expect("connect");
        assert!(r.complete);
        assert_eq!(accepted(), [5, 5]);
        let p = idle::Params {
            connections: 3,
            room_prefix: "idle".into(),
            rooms: 1,
            hold: Duration::from_millis(100),
            pusher: None,
        };
        let me = std::process::id();
        let r = idle::run(&t, &p, &[me, std::os::unix::process::parent_id()], 8)
            .await
            .expect("idle");
        assert!(r.complete);
        assert_eq!(accepted(), [7, 6]);
        assert!(num(&r, "server_rss_after_kib") > 0.0);
    });
}

#[test]
fn fanout_rate_end_to_end() {
    local(async {
        let (addr, _) = testserver::start(false).await;
        let t = net::Nodes::parse(&format!("ws://{addr}"), None).expect("target");
        let p = fanout::Params {
            rooms: 1,
            subscribers: 4,
            publishers: 1,
            ..small_params("room", fanout::Door::Plain, fanout::Mode::Rate(20.0))
        };
        let r = fanout::run(&t, &p, &[], 8).await.expect("run");
        assert!(r.complete);
        assert_eq!(num(&r, "loss"), 0.0);
        let pubs = num(&r, "publications");
        assert!(
            (9.0..=11.0).contains(&pubs),
            "{pubs} publications at 20/s for 0.5 s"
        );
    });
}

#[test]
fn connect_end_to_end() {
    local(async {
        let (addr, _) = testserver::start(false).await;
        let t = net::Nodes::parse(&format!("ws://{addr}"), Some("tok")).expect("target");
        let p = connect::Params {
            connections: 40,
            concurrency: 8,
            with_token: true,
            pusher: None,
        };
        let r = connect::run(&t, &p, &[std::process::id()])
            .await
            .expect("run");
        assert!(r.complete);
        assert_eq!(num(&r, "handshakes"), 40.0);
        assert_eq!(num(&r, "failed"), 0.0);
        assert_eq!(num(&r, "connect_samples"), 40.0);
        assert!(num(&r, "connect_p99_us") > 0.0);
        assert!(num(&r, "handshakes_per_s") > 0.0);
    });
}

#[test]
fn connect_failures_make_the_run_incomplete() {
    local(async {
        // A port nobody listens on: every connect is refused.
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = free.local_addr().expect("addr");
        drop(free);
        let t = net::Nodes::parse(&format!("ws://{addr}"), None).expect("target");
        let p = connect::Params {
            connections: 5,
            concurrency: 2,
            with_token: false,
            pusher: None,
        };
        let r = connect::run(&t, &p, &[]).await.expect("run");
        assert!(!r.complete);
        assert_eq!(num(&r, "failed"), 5.0);
    });
}

fn slow_params(mode: fanout::Mode, baseline: bool) -> slow::Params {
    slow::Params {
        fanout: fanout::Params {
            rooms: 1,
            subscribers: 8,
            publishers: 1,
            duration: Duration::from_millis(400),
            ..small_params("slow", fanout::Door::Plain, mode)
        },
        stalled_percent: 25.0,
        stalled_rcvbuf: Some(4096),
        stalled_read_timeout: Duration::from_secs(3),
        baseline,
    }
}

#[test]
fn slow_with_baseline_end_to_end() {
    local(async {
        // The test server never closes anyone: the stalled subscribers are still open at
        // the end and get every publication once they read again.
        let (addr, _) = testserver::start(false).await;
        let t = net::Nodes::parse(&format!("ws://{addr}"), None).expect("target");
        let p = slow_params(fanout::Mode::Rate(50.0), true);
        let r = slow::run(&t, &p, &[], 8).await.expect("run");
        assert!(r.complete);
        assert_eq!(num(&r, "stalled_subscribers"), 2.0);
        assert_eq!(num(&r, "healthy_subscribers"), 6.0);
        assert_eq!(num(&r, "loss"), 0.0);
        let pubs = num(&r, "publications");
        assert_eq!(num(&r, "expected_deliveries"), 6.0 * pubs);
        assert_eq!(num(&r, "stalled_closed"), 0.0);
        assert_eq!(num(&r, "stalled_open"), 2.0);
        assert_eq!(num(&r, "stalled_backlog_max"), pubs);
        let codes = r.get("stalled_close_codes").expect("codes");
        assert_eq!(codes.get("open").and_then(|v| v.as_u64()), Some(2));
        assert_eq!(num(&r, "baseline_loss"), 0.0);
        assert!(num(&r, "baseline_latency_p99_us") > 0.0);
        assert!(num(&r, "p99_ratio") > 0.0);
    });
}

#[test]
fn slow_max_is_not_held_back_by_stalled_subscribers() {
    local(async {
        // In --max a publication completes when every healthy subscriber has it: the
        // stalled ones must not hold the window (no publication given up).
        let (addr, _) = testserver::start(false).await;
        let t = net::Nodes::parse(&format!("ws://{addr}"), None).expect("target");
        let p = slow_params(fanout::Mode::Max { window: 2 }, false);
        let r = slow::run(&t, &p, &[], 8).await.expect("run");
        assert!(r.complete);
        assert_eq!(num(&r, "stalled_publications"), 0.0);
        assert!(num(&r, "publications") > 10.0);
        assert_eq!(num(&r, "loss"), 0.0);
        assert!(r.get("p99_ratio").is_none());
    });
}

#[test]
fn slow_reports_stalled_subscribers_closed_by_the_server() {
    local(async {
        // A queue of 8 messages, 4 KiB socket buffers both ways and 2 KB publications:
        // the stalled subscribers overflow within a few dozen publications.
        let (addr, _) = testserver::start_with(false, Some(8)).await;
        let t = net::Nodes::parse(&format!("ws://{addr}"), None).expect("target");
        let mut p = slow_params(fanout::Mode::Rate(200.0), false);
        p.fanout.size = 2000;
        let r = slow::run(&t, &p, &[], 8).await.expect("run");
        assert!(r.complete, "healthy subscribers are not affected");
        assert_eq!(num(&r, "loss"), 0.0);
        assert_eq!(num(&r, "stalled_closed"), 2.0);
        let codes = r.get("stalled_close_codes").expect("codes");
        assert_eq!(codes.get("4000").and_then(|v| v.as_u64()), Some(2));
        assert!(num(&r, "stalled_backlog_max") < num(&r, "publications"));
    });
}

#[test]
fn idle_answers_pings() {
    local(async {
        let (addr, seen) = testserver::start(true).await;
        let t = net::Nodes::parse(&format!("ws://{addr}"), None).expect("target");
        let p = idle::Params {
            connections: 5,
            room_prefix: "idle".into(),
            rooms: 2,
            hold: Duration::from_millis(300),
            pusher: None,
        };
        let r = idle::run(&t, &p, &[std::process::id()], 8)
            .await
            .expect("run");
        assert!(r.complete);
        assert_eq!(num(&r, "established"), 5.0);
        assert!(num(&r, "kib_per_connection").is_finite());
        let pongs = seen.pongs.lock().expect("lock").clone();
        assert_eq!(pongs.len(), 5);
        assert!(pongs.iter().all(|p| p == b"are you there"));
    });
}

/// A small, short fan-out: 2 rooms × 3 subscribers, 2 publishers, 100 B for 0.5 s.
fn small_params(room_prefix: &str, door: fanout::Door, mode: fanout::Mode) -> fanout::Params {
    fanout::Params {
        room_prefix: room_prefix.into(),
        rooms: 2,
        subscribers: 6,
        publishers: 2,
        size: 100,
        payload: payload::PayloadKind::Padded,
        duration: Duration::from_millis(500),
        mode,
        drain: Duration::from_secs(2),
        stall_timeout: Duration::from_secs(2),
        join_timeout: Duration::from_secs(5),
        stall: fanout::Stall::default(),
        door,
        deflate: false,
        phase_file: None,
        phase_hold: Duration::ZERO,
        pusher: None,
    }
}

fn protocol_params(mode: fanout::Mode) -> fanout::Params {
    small_params("proto", fanout::Door::Protocol, mode)
}

/// The figures every complete protocol-door run shows.
fn assert_lossless_protocol_run(r: &report::Report) {
    assert!(r.complete, "incomplete run");
    assert_eq!(r.get("door").and_then(|v| v.as_str()), Some("protocol"));
    assert_eq!(num(r, "loss"), 0.0);
    assert_eq!(num(r, "closed_early"), 0.0);
    assert_eq!(num(r, "unknown_messages"), 0.0);
    assert_eq!(num(r, "stalled_publications"), 0.0);
    assert!(num(r, "deliveries_in_window") > 0.0);
    assert!(num(r, "latency_p50_us") > 0.0);
}

#[test]
fn fanout_protocol_door_against_the_gateway() {
    // `--dev`: anonymous connect. The 100 ms heartbeat closes a protocol client that does not
    // answer the server's `{}` pings within 200 ms, so a complete run also shows they were.
    let gw = gateway::start(gateway::config(true));
    local(async {
        let t = net::Nodes::parse(&format!("ws://{}", gw.addr), None).expect("target");
        let p = protocol_params(fanout::Mode::Max { window: 3 });
        let r = fanout::run(&t, &p, &[], 8).await.expect("run");
        assert_lossless_protocol_run(&r);
        // Every publication reaches the 3 protocol subscribers of its room.
        assert!(num(&r, "publications") > 10.0);
        assert_eq!(
            num(&r, "expected_deliveries"),
            3.0 * num(&r, "publications")
        );
        assert_eq!(num(&r, "deliveries"), num(&r, "expected_deliveries"));
    });
}

#[test]
fn fanout_over_http_streaming_and_sse_against_the_gateway() {
    // The same run with the subscribers on the HTTP transports. The 100 ms heartbeat closes a
    // stream whose `{}` pings are not answered through /emulation within 200 ms, so a complete
    // run also shows the pongs arrived.
    let gw = gateway::start(gateway::config(true));
    for door in [fanout::Door::HttpStream, fanout::Door::Sse] {
        local(async {
            let t = net::Nodes::parse(&format!("ws://{}", gw.addr), None).expect("target");
            let p = small_params("stream", door, fanout::Mode::Max { window: 3 });
            let r = fanout::run(&t, &p, &[], 8).await.expect("run");
            assert!(r.complete, "incomplete run");
            assert_eq!(r.get("door").and_then(|v| v.as_str()), Some(door.label()));
            assert_eq!(num(&r, "loss"), 0.0);
            assert_eq!(num(&r, "closed_early"), 0.0);
            assert_eq!(num(&r, "unknown_messages"), 0.0);
            assert!(num(&r, "publications") > 10.0);
            assert_eq!(num(&r, "deliveries"), 3.0 * num(&r, "publications"));
        });
    }
}

#[test]
fn fanout_protocol_door_with_a_token() {
    // Tokens required: the subscribers send theirs in `connect`, the publishers as ?token=.
    let gw = gateway::start(gateway::config(false));
    let token = switchboard::auth::mint_hs256(gateway::SECRET, "bench", 3600).expect("token");
    local(async {
        let addr = format!("ws://{}", gw.addr);
        let p = protocol_params(fanout::Mode::Rate(40.0));
        let t = net::Nodes::parse(&addr, Some(&token)).expect("target");
        let r = fanout::run(&t, &p, &[], 8).await.expect("run");
        assert_lossless_protocol_run(&r);
        // Without one, connect is refused with the server's error.
        let t = net::Nodes::parse(&addr, None).expect("target");
        let e = fanout::run(&t, &p, &[], 8).await.err().expect("refused");
        assert!(format!("{e:#}").contains("failed"), "{e:#}");
    });
}

#[test]
fn slow_protocol_door_against_the_gateway() {
    // The stalled subscribers answer no `{}` ping once they stop reading: with a 100 ms
    // heartbeat the gateway closes them with 3012 (no pong) during the run.
    let gw = gateway::start(gateway::config(true));
    local(async {
        let t = net::Nodes::parse(&format!("ws://{}", gw.addr), None).expect("target");
        let mut p = slow_params(fanout::Mode::Rate(50.0), true);
        p.fanout.door = fanout::Door::Protocol;
        let r = slow::run(&t, &p, &[], 8).await.expect("run");
        assert!(r.complete);
        assert_eq!(r.get("door").and_then(|v| v.as_str()), Some("protocol"));
        assert_eq!(num(&r, "loss"), 0.0);
        assert_eq!(num(&r, "baseline_loss"), 0.0);
        assert_eq!(num(&r, "unknown_messages"), 0.0);
        assert_eq!(num(&r, "stalled_closed"), 2.0);
        let codes = r.get("stalled_close_codes").expect("codes");
        assert_eq!(
            codes.get("3012").and_then(|v| v.as_u64()),
            Some(2),
            "{codes}"
        );
    });
}

fn deflate_params(door: fanout::Door) -> fanout::Params {
    fanout::Params {
        room_prefix: format!("deflate-{}", door.label()),
        size: 600,
        payload: payload::PayloadKind::Json,
        door,
        deflate: true,
        ..protocol_params(fanout::Mode::Max { window: 3 })
    }
}

#[test]
fn fanout_deflate_against_the_gateway() {
    // The gateway compresses each publication once for its deflate subscribers (RSV1, no
    // context takeover); the subscribers inflate every one and parse it as usual.
    let mut config = gateway::config(true);
    config.server.permessage_deflate = true;
    let gw = gateway::start(config);
    local(async {
        let t = net::Nodes::parse(&format!("ws://{}", gw.addr), None).expect("target");
        for door in [fanout::Door::Plain, fanout::Door::Protocol] {
            let p = deflate_params(door);
            let r = fanout::run(&t, &p, &[], 8).await.expect("run");
            let what = door.label();
            assert!(r.complete, "{what}: incomplete run");
            assert_eq!(r.get("door").and_then(|v| v.as_str()), Some(what));
            assert_eq!(r.get("deflate").and_then(|v| v.as_bool()), Some(true));
            assert_eq!(r.get("payload_kind").and_then(|v| v.as_str()), Some("json"));
            assert_eq!(num(&r, "loss"), 0.0, "{what}");
            assert_eq!(num(&r, "closed_early"), 0.0, "{what}");
            assert_eq!(num(&r, "unknown_messages"), 0.0, "{what}");
            assert_eq!(num(&r, "stalled_publications"), 0.0, "{what}");
            assert!(num(&r, "publications") > 10.0, "{what}");
            assert_eq!(
                num(&r, "deliveries"),
                num(&r, "expected_deliveries"),
                "{what}"
            );
            // Every delivery came as a compressed frame of its own, much smaller than 600 B.
            assert_eq!(
                num(&r, "frames_compressed"),
                num(&r, "deliveries"),
                "{what}"
            );
            assert!(num(&r, "deflate_saved_pct") > 20.0, "{what}");
            assert!(num(&r, "wire_bytes_per_delivery") < 500.0, "{what}");
            assert!(num(&r, "latency_p50_us") > 0.0, "{what}");
        }
    });
}

#[test]
fn fanout_deflate_fails_when_the_server_does_not_agree() {
    // permessage_deflate is off by default: the offer is ignored and the run must say so.
    let gw = gateway::start(gateway::config(true));
    local(async {
        let t = net::Nodes::parse(&format!("ws://{}", gw.addr), None).expect("target");
        let e = fanout::run(&t, &deflate_params(fanout::Door::Plain), &[], 8)
            .await
            .err()
            .expect("refused");
        let e = format!("{e:#}");
        assert!(
            e.contains("the server did not accept permessage-deflate"),
            "{e}"
        );
    });
}

/// `api-publish` against the real gateway (`--dev`: an open API, and `chat:` keeps history, so
/// every answer carries an offset), over two "nodes" that are the same gateway twice.
#[test]
fn api_publish_end_to_end() {
    let gw = gateway::start(gateway::config(true));
    local(async {
        let url = format!("ws://{}", gw.addr);
        let t = net::Nodes::parse(&format!("{url},{url}"), None).expect("nodes");
        let p = api::Params {
            connections: 3,
            channel: "chat:api-bench".into(),
            size: 64,
            api_key: None,
            duration: Duration::from_millis(300),
            drain: Duration::from_secs(2),
        };
        let r = api::run(&t, &p, &[std::process::id()], 8)
            .await
            .expect("run");
        assert!(r.complete, "{:?}", r.get("notes"));
        assert!(num(&r, "ok_in_window") > 0.0);
        assert_eq!(num(&r, "ok"), num(&r, "sent"));
        assert_eq!(num(&r, "with_offset"), num(&r, "ok"));
        assert!(num(&r, "server_cpu_s") >= 0.0);
    });
    drop(gw);
    // With an API key configured: the right key publishes, a wrong one is refused (401), and
    // the run is then incomplete.
    let mut config = gateway::config(true);
    config.api.key = switchboard::config::Secret("bench-key".into());
    let gw = gateway::start(config);
    local(async {
        let t = net::Nodes::parse(&format!("ws://{}", gw.addr), None).expect("nodes");
        let p = api::Params {
            connections: 2,
            channel: "chat:api-bench".into(),
            size: 64,
            api_key: Some("bench-key".into()),
            duration: Duration::from_millis(200),
            drain: Duration::from_secs(2),
        };
        let r = api::run(&t, &p, &[], 8).await.expect("run");
        assert!(r.complete, "{:?}", r.get("notes"));
        let p = api::Params {
            api_key: Some("wrong".into()),
            ..p
        };
        let r = api::run(&t, &p, &[], 8).await.expect("run");
        assert!(!r.complete);
        assert!(r.get("statuses").and_then(|v| v.get("200")).is_none());
    });
}

/// The app of the Pusher-door tests, configured on the gateway and given to the bench.
fn pusher_app(gw: &gateway::Gateway, secret: &str) -> crate::pusher::App {
    crate::pusher::App {
        id: "bench-app".into(),
        key: "bench-key".into(),
        secret: secret.into(),
        host: gw.addr.to_string(),
    }
}

/// A gateway with the Pusher app `bench-app` (key `bench-key`).
fn pusher_gateway() -> gateway::Gateway {
    let mut config = gateway::config(true);
    config
        .pusher
        .apps
        .push(switchboard::config::PusherAppConfig {
            id: "bench-app".into(),
            key: "bench-key".into(),
            secret: gateway::SECRET.into(),
            client_events: false,
            allowed_origins: Vec::new(),
            ..switchboard::config::PusherAppConfig::default()
        });
    gateway::start(config)
}

#[test]
fn fanout_pusher_door_against_the_gateway() {
    // Subscribers on /app/bench-key, publications through the signed HTTP API, pipelined.
    let gw = pusher_gateway();
    local(async {
        let t = net::Nodes::parse(&format!("ws://{}", gw.addr), None).expect("target");
        let mut p = small_params(
            "pusher",
            fanout::Door::Pusher,
            fanout::Mode::Max { window: 3 },
        );
        p.pusher = Some(pusher_app(&gw, gateway::SECRET));
        let r = fanout::run(&t, &p, &[], 8).await.expect("run");
        assert!(r.complete, "incomplete run");
        assert_eq!(r.get("door").and_then(|v| v.as_str()), Some("pusher"));
        assert_eq!(num(&r, "loss"), 0.0);
        assert_eq!(num(&r, "closed_early"), 0.0);
        assert_eq!(num(&r, "unknown_messages"), 0.0);
        assert!(num(&r, "publications") > 10.0);
        assert_eq!(
            num(&r, "expected_deliveries"),
            3.0 * num(&r, "publications")
        );
        assert_eq!(num(&r, "deliveries"), num(&r, "expected_deliveries"));
        // The gateway keeps the API connection alive: everything was pipelined on it.
        assert_eq!(num(&r, "api_connections"), 0.0);
        // The rate mode too.
        let mut p = small_params(
            "pusher-rate",
            fanout::Door::Pusher,
            fanout::Mode::Rate(40.0),
        );
        p.pusher = Some(pusher_app(&gw, gateway::SECRET));
        let r = fanout::run(&t, &p, &[], 8).await.expect("run");
        assert!(r.complete, "incomplete rate run");
        assert_eq!(num(&r, "loss"), 0.0);
    });
}

#[test]
fn fanout_pusher_door_through_an_api_that_closes_after_each_answer() {
    // Behind the proxy the gateway answers every API request with `Connection: close` and
    // closes, as Sockudo does: the publishers send one request per connection, nothing is lost.
    let gw = pusher_gateway();
    local(async {
        let proxy = closingproxy::start(gw.addr).await;
        let t = net::Nodes::parse(&format!("ws://{proxy}"), None).expect("target");
        for mode in [fanout::Mode::Max { window: 3 }, fanout::Mode::Rate(40.0)] {
            let mut p = small_params("pusher-close", fanout::Door::Pusher, mode);
            p.pusher = Some(pusher_app(&gw, gateway::SECRET));
            let r = fanout::run(&t, &p, &[], 8).await.expect("run");
            assert!(
                r.complete,
                "incomplete run ({mode:?}): {:?}",
                r.get("notes")
            );
            assert_eq!(num(&r, "loss"), 0.0);
            assert_eq!(num(&r, "closed_early"), 0.0);
            assert_eq!(num(&r, "stalled_publications"), 0.0);
            assert!(num(&r, "publications") > 10.0);
            assert_eq!(num(&r, "deliveries"), num(&r, "expected_deliveries"));
            // A connection of its own for every publication but each publisher's first
            // request (a warm-up, on the connection opened at set-up).
            assert!(
                num(&r, "api_connections") >= num(&r, "publications"),
                "{} connections for {} publications",
                num(&r, "api_connections"),
                num(&r, "publications")
            );
        }
    });
}

#[test]
fn fanout_pusher_door_with_a_wrong_secret_fails_the_run() {
    // The API refuses the badly signed publications: the run says so instead of hanging.
    let gw = pusher_gateway();
    local(async {
        let t = net::Nodes::parse(&format!("ws://{}", gw.addr), None).expect("target");
        let mut p = small_params(
            "pusher-bad",
            fanout::Door::Pusher,
            fanout::Mode::Max { window: 1 },
        );
        p.pusher = Some(pusher_app(&gw, "not-the-secret-0123456789"));
        let e = match fanout::run(&t, &p, &[], 8).await {
            Ok(_) => panic!("a run with a wrong secret must fail"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains("HTTP API answered 401"), "{e}");
    });
}

#[test]
fn idle_and_connect_on_the_pusher_door() {
    let gw = pusher_gateway();
    local(async {
        let t = net::Nodes::parse(&format!("ws://{}", gw.addr), None).expect("target");
        let p = idle::Params {
            connections: 5,
            room_prefix: "idle".into(),
            rooms: 2,
            hold: Duration::from_millis(300),
            pusher: Some(pusher_app(&gw, gateway::SECRET)),
        };
        let r = idle::run(&t, &p, &[], 4).await.expect("idle");
        assert!(r.complete, "incomplete idle run");
        assert_eq!(num(&r, "established"), 5.0);
        assert_eq!(num(&r, "alive_after_hold"), 5.0);
        let p = connect::Params {
            connections: 20,
            concurrency: 4,
            with_token: false,
            pusher: Some(pusher_app(&gw, gateway::SECRET)),
        };
        let r = connect::run(&t, &p, &[]).await.expect("connect");
        assert!(r.complete, "incomplete connect run");
        assert_eq!(num(&r, "handshakes"), 20.0);
        // An unknown key is refused (pusher:error 4001): every handshake fails.
        let mut app = pusher_app(&gw, gateway::SECRET);
        app.key = "no-such-key".into();
        let p = connect::Params {
            connections: 3,
            concurrency: 1,
            with_token: false,
            pusher: Some(app),
        };
        let r = connect::run(&t, &p, &[]).await.expect("connect");
        assert!(!r.complete);
        assert_eq!(num(&r, "failed"), 3.0);
    });
}
