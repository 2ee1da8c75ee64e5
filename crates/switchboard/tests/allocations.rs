//! Encode once: a publication costs the same number of heap allocations whether its channel has
//! ten subscribers or ten thousand. Counted with dhat's heap profiler in testing mode (this file
//! is its own test binary, so nothing else allocates through the counting allocator meanwhile).
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;

use switchboard::conn::Conn;
use switchboard::door::Door;
use switchboard::hub::Hub;
use switchboard::ws::frame::{self, Opcode};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Heap allocations made by encoding and publishing one 100-byte message to `subscribers`
/// subscribers whose queues are already warm (as they are in steady state).
fn allocations_per_publication(subscribers: u64) -> u64 {
    let hub = Hub::new();
    let conns: Vec<Arc<Conn>> = (0..subscribers)
        .map(|id| Arc::new(Conn::new(id, Door::Chat, "", 0, 1 << 20, 0)))
        .collect();
    for conn in &conns {
        hub.subscribe("chat:room", conn);
    }
    // Warm-up: the first frames size each subscriber's queue once.
    for _ in 0..2 {
        hub.publish("chat:room", &frame::encode(Opcode::Text, &[b'w'; 100]));
    }
    let before = dhat::HeapStats::get().total_blocks;
    let delivered = hub.publish("chat:room", &frame::encode(Opcode::Text, &[b'x'; 100]));
    let after = dhat::HeapStats::get().total_blocks;
    assert_eq!(delivered as u64, subscribers);
    assert!(
        conns.iter().all(|c| c.queued_bytes() == 3 * 102),
        "every subscriber holds all three frames"
    );
    after - before
}

#[test]
fn a_publication_allocates_the_same_for_ten_or_ten_thousand_subscribers() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let few = allocations_per_publication(10);
    let many = allocations_per_publication(10_000);
    assert_eq!(
        few, many,
        "allocations must not grow with the subscriber count"
    );
    // The encoded frame's buffer, and the shared reference count `Bytes` allocates on the first
    // clone; every subscriber after that shares both.
    assert_eq!(
        many, 2,
        "the frame and its reference count, whatever the subscriber count"
    );
}
