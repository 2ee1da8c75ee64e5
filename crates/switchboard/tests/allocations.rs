//! Encode once: a publication costs the same number of heap allocations whether its channel has
//! ten subscribers or ten thousand, plain-door members and client-protocol subscribers mixed
//! (one encoding per format). Counted with dhat's heap profiler in testing mode (this file is
//! its own test binary, so nothing else allocates through the counting allocator meanwhile).
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;

use switchboard::conn::Conn;
use switchboard::door::Door;
use switchboard::hub::Hub;
use switchboard::publication::Publication;
use switchboard::ws::frame::Opcode;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn message(byte: u8) -> Publication {
    Publication::plain(Opcode::Text, bytes::Bytes::from(vec![byte; 100]))
}

/// Heap allocations made by making and publishing one 100-byte message to `subscribers`
/// subscribers, half of them plain-door members and half client-protocol subscribers, whose
/// queues are already warm (as they are in steady state).
fn allocations_per_publication(subscribers: u64) -> u64 {
    let hub = Hub::new();
    let conns: Vec<Arc<Conn>> = (0..subscribers)
        .map(|id| {
            let door = if id % 2 == 0 {
                Door::Chat
            } else {
                Door::Protocol
            };
            Arc::new(Conn::new(id, door, "", 0, 1 << 20, 0))
        })
        .collect();
    for conn in &conns {
        hub.subscribe("chat:room", conn);
    }
    // Warm-up: the first frames size each subscriber's queue once.
    for _ in 0..2 {
        hub.publish("chat:room", &message(b'w'));
    }
    let before = dhat::HeapStats::get().total_blocks;
    let delivered = hub.publish("chat:room", &message(b'x'));
    let after = dhat::HeapStats::get().total_blocks;
    assert_eq!(delivered as u64, subscribers);
    assert!(
        conns.iter().all(|c| c.queued_bytes() > 0),
        "every subscriber holds its frames"
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
    // The payload, and per format its encoding steps (plain frame; JSON data, publication
    // object, push frame) with the shared reference counts `Bytes` allocates on first clone.
    assert!(
        many <= 20,
        "a handful of allocations per publication, whatever the subscriber count: {many}"
    );
}
