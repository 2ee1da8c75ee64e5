//! Fossil delta compression on a realistic stream: a ~3 KB JSON document (50 items) of which
//! one price changes per publication. Prints the bytes on the wire per publication with and
//! without delta (the push frame a subscriber receives, JSON and Protobuf), the CPU one
//! publication's delta costs (made once per channel, whatever the subscribers), and the
//! fan-out cost per delivery to delta and to plain subscribers.
//!
//! Wall time, printed, never asserted. `cargo bench -p switchboard --bench delta`;
//! `SUBSCRIBERS` sets the fan-out's channel size (default 1000), `PUBLICATIONS` the stream's
//! length (default 1000).
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use switchboard::conn::Conn;
use switchboard::door::Door;
use switchboard::hub::Hub;
use switchboard::kind::Encoding;
use switchboard::publication::Publication;

/// Version `v` of the document: 50 items, item `v % 50`'s price moved by `v`.
fn document(v: u64) -> Bytes {
    let items: Vec<String> = (0..50u64)
        .map(|i| {
            let price = i * 10 + if i == v % 50 { v } else { 0 };
            format!(r#"{{"id":{i},"name":"item number {i}","status":"active","price":{price}}}"#)
        })
        .collect();
    Bytes::from(format!(
        r#"{{"version":{v},"updated":"2026-12-06T10:00:{:02}Z","items":[{}]}}"#,
        v % 60,
        items.join(",")
    ))
}

fn stream(n: u64) -> Vec<Publication> {
    (1..=n)
        .map(|v| {
            let mut p = Publication::json(document(v));
            p.offset = v;
            p
        })
        .collect()
}

/// Bytes of every push frame with and without delta, and ns per delta made.
fn bytes_and_cpu(encoding: Encoding, n: u64) -> (usize, usize, f64) {
    let publications = stream(n);
    let full: usize = publications
        .iter()
        .map(|p| p.push_frame("doc:live", encoding).len())
        .sum();
    let started = Instant::now();
    let mut delta = publications[0]
        .full_frame_for_delta("doc:live", encoding, false)
        .len();
    for pair in publications.windows(2) {
        let base = pair[0].delta_payload(encoding).clone();
        delta += pair[1]
            .delta_frame("doc:live", encoding, false, &base)
            .unwrap_or_else(|| pair[1].full_frame_for_delta("doc:live", encoding, false))
            .len();
    }
    let per = started.elapsed().as_secs_f64() * 1e9 / (n - 1) as f64;
    (full, delta, per)
}

/// ns per delivery of the stream to `subscribers` (all delta ones, or all plain).
fn fan_out(subscribers: u64, n: u64, delta: bool) -> f64 {
    let hub = Hub::new();
    let conns: Vec<Arc<Conn>> = (0..subscribers)
        .map(|id| Arc::new(Conn::new(id, Door::Protocol, "", 0, usize::MAX, 0)))
        .collect();
    for conn in &conns {
        hub.subscribe_filtered("doc:live", conn, 0, None, delta);
    }
    let publications = stream(n);
    let started = Instant::now();
    let mut delivered = 0;
    for publication in &publications {
        delivered += hub.publish("doc:live", publication);
    }
    let took = started.elapsed().as_secs_f64();
    assert_eq!(delivered as u64, subscribers * n);
    took * 1e9 / delivered as f64
}

fn main() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = env("PUBLICATIONS", 1000);
    let subscribers = env("SUBSCRIBERS", 1000);
    println!(
        "stream: {n} versions of a {} B JSON document",
        document(1).len()
    );
    for encoding in [Encoding::Json, Encoding::Protobuf] {
        let (full, delta, per) = bytes_and_cpu(encoding, n);
        println!(
            "{encoding:?}: {:.0} B per publication whole, {:.0} B with delta ({:.1}x less); delta made in {:.1} µs per publication (once per channel)",
            full as f64 / n as f64,
            delta as f64 / n as f64,
            full as f64 / delta as f64,
            per / 1e3
        );
    }
    let plain = fan_out(subscribers, n.min(200), false);
    let delta = fan_out(subscribers, n.min(200), true);
    println!(
        "fan-out to {subscribers} JSON subscribers: {plain:.1} ns per delivery plain, {delta:.1} ns per delivery delta (delta made once per publication, included)"
    );
}
