//! Micro-benchmark of the hub's registry: leaving a big channel, and the fan-out loop.
//!
//! Wall time, printed, never asserted (shared machines are noisy; tests assert behaviour).
//! `cargo bench -p switchboard --bench hub` prints one line per case; an argument filters the
//! cases by name (`cargo bench -p switchboard --bench hub -- unsubscribe`). `SUBSCRIBERS`
//! sets the channel size (default 100000).
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use switchboard::conn::Conn;
use switchboard::door::Door;
use switchboard::hub::Hub;
use switchboard::publication::Publication;
use switchboard::ws::frame::Opcode;

fn conns(n: u64) -> Vec<Arc<Conn>> {
    (0..n)
        .map(|id| {
            let door = if id.is_multiple_of(2) {
                Door::Chat
            } else {
                Door::Protocol
            };
            Arc::new(Conn::new(id, door, "", 0, usize::MAX, 0))
        })
        .collect()
}

/// Subscribes `n` connections to one channel, then takes them out in `order`; returns the
/// seconds the unsubscribes took.
fn unsubscribe_all(n: u64, order: &str) -> f64 {
    let hub = Hub::new();
    let conns = conns(n);
    for conn in &conns {
        hub.subscribe("chat:big", conn);
    }
    let mut ids: Vec<u64> = conns.iter().map(|c| c.id).collect();
    match order {
        "reverse" => ids.reverse(),
        "random" => fastrand::Rng::with_seed(7).shuffle(&mut ids),
        _ => {}
    }
    let started = Instant::now();
    for id in ids {
        hub.unsubscribe("chat:big", id);
    }
    let took = started.elapsed().as_secs_f64();
    assert_eq!(hub.subscription_count(), 0);
    took
}

/// Publishes `rounds` publications to `n` subscribers; returns nanoseconds per delivery.
fn fan_out(n: u64, rounds: u32) -> f64 {
    let hub = Hub::new();
    let conns = conns(n);
    for conn in &conns {
        hub.subscribe("chat:big", conn);
    }
    let message = |round: u32| {
        Publication::plain(
            Opcode::Text,
            bytes::Bytes::from(format!("{round:0100}").into_bytes()),
        )
    };
    // Warm-up: the first frames size each subscriber's queue.
    hub.publish("chat:big", &message(0));
    let started = Instant::now();
    let mut delivered = 0;
    for round in 1..=rounds {
        delivered += hub.publish("chat:big", &message(round));
    }
    let took = started.elapsed().as_secs_f64();
    assert_eq!(delivered as u64, n * u64::from(rounds));
    took * 1e9 / delivered as f64
}

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .unwrap_or_default();
    let n: u64 = std::env::var("SUBSCRIBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    for order in ["subscribe", "reverse", "random"] {
        let name = format!("unsubscribe/{order}");
        if name.contains(&filter) {
            let took = unsubscribe_all(n, order);
            println!(
                "{name}: {n} subscribers of one channel removed in {took:.3} s ({:.1} ns each)",
                took * 1e9 / n as f64
            );
        }
    }
    if "fanout".contains(filter.as_str()) {
        let per = fan_out(n.min(10_000), 50);
        println!(
            "fanout: {:.1} ns per delivery ({} subscribers, 50 publications)",
            per,
            n.min(10_000)
        );
    }
}
