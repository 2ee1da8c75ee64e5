//! The permessage-deflate inflater: `ws::deflate::Inflater` given hostile compressed
//! messages, with and without context takeover, at every window size.
//!
//! Input: three bytes of settings, then messages, each a length byte and that many bytes.
//! Checked beyond "no panic":
//! - the size bound: a message comes out at most `max_len` bytes long, or is refused as
//!   `TooBig { limit: max_len }`;
//! - the memory bound: while inflating one message, the heap grows by no more than the
//!   inflate state, the window and `max_len + 1` bytes of output (measured with a counting
//!   allocator against a one-byte message inflated with the same settings);
//! - the server's own compressor round-trips each message's bytes: `deflate_message` then
//!   `inflate` gives them back, and inflating with a limit one byte short is refused.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use switchboard::ws::deflate::{deflate_message, DeflateError, Inflater, Negotiated};

/// The system allocator, counting live bytes and their peak (the fuzzer runs one thread).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is passed through to `System` unchanged; only counters are updated.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result and how far the heap grew above where it started.
fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(start))
}

fuzz_target!(|data: &[u8]| {
    let [flags, limit_high, limit_low, messages @ ..] = data else {
        return;
    };
    let negotiated = Negotiated {
        client_no_context_takeover: flags & 0x01 != 0,
        client_max_window_bits: 8 + (flags >> 1) % 8,
        server_max_window_bits: None,
    };
    let max_len = usize::from(u16::from_be_bytes([*limit_high, *limit_low]));

    // What the state, the window and one byte of output cost with these settings.
    let one_byte = deflate_message(b"a", negotiated.client_max_window_bits);
    let mut probe = negotiated.inflater();
    let (probed, fixed) = peak_growth(|| probe.inflate(&one_byte, 1));
    assert_eq!(probed.ok().as_deref(), Some(&b"a"[..]));
    drop(probe);

    let mut inflater: Inflater = negotiated.inflater();
    let mut rest = messages;
    while let [len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (message, after) = tail.split_at(len);
        rest = after;

        let (result, growth) = peak_growth(|| inflater.inflate(message, max_len));
        assert!(
            growth <= fixed + max_len + 1,
            "inflating grew the heap by {growth} bytes (bound {fixed} + {max_len} + 1)"
        );
        match result {
            Ok(out) => assert!(out.len() <= max_len, "inflated past the limit"),
            Err(DeflateError::TooBig { limit }) => assert_eq!(limit, max_len),
            // After an error the connection is failed; the next message starts afresh.
            Err(DeflateError::Corrupt(_) | DeflateError::TrailingData) => {
                inflater = negotiated.inflater();
            }
        }

        // The server's compressor, inflated by a fresh inflater with the same window.
        let bits = negotiated.client_max_window_bits.max(9);
        let compressed = deflate_message(message, bits);
        let mut fresh = negotiated.with_client_no_context_takeover().inflater();
        let back = fresh.inflate(&compressed, message.len());
        assert_eq!(
            back.ok().as_deref(),
            Some(message),
            "round trip changed the bytes"
        );
        if !message.is_empty() {
            let short = fresh.inflate(&compressed, message.len() - 1);
            assert!(
                matches!(short, Err(DeflateError::TooBig { .. })),
                "{short:?}"
            );
        }
    }
});
