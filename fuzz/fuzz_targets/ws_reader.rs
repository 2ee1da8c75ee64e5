//! The WebSocket frame reader: `ws::reader::MessageReader` (and through it `ws::frame`'s header
//! parser, unmasking, reassembly, UTF-8 checks and, when negotiated, the inflater) fed a
//! hostile byte stream the way the connection task feeds it.
//!
//! Input: two bytes of settings, then the client's bytes. Checked beyond "no panic":
//! - how the stream is cut into reads never changes what comes out (events and the close
//!   reason are the same for one read of everything and for reads cut at fuzzer-chosen points);
//! - `feed` never claims more bytes than it was given;
//! - every message is within the message limit, text is UTF-8, a ping is at most 125 bytes;
//! - nothing is delivered after a close frame.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::error::CloseReason;
use switchboard::ws::deflate::Negotiated;
use switchboard::ws::{Event, MessageReader};

/// What a reader delivered, owned so two runs can be compared.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

fn reader(settings: u8, max_message: usize) -> MessageReader {
    let reader = MessageReader::new(max_message);
    if settings & 0x10 == 0 {
        return reader;
    }
    let negotiated = Negotiated {
        client_no_context_takeover: settings & 0x20 != 0,
        client_max_window_bits: 8 + (settings >> 6) * 2 + 1,
        server_max_window_bits: None,
    };
    reader.with_inflater(negotiated.inflater())
}

/// Feeds `stream` in reads that end at `cuts` (offsets into `stream`), keeping what `feed`
/// did not consume in front of the next read, as the connection task does.
fn run(
    mut reader: MessageReader,
    max_message: usize,
    stream: &[u8],
    cuts: &[usize],
) -> (Vec<Seen>, Result<(), CloseReason>) {
    let mut seen = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&stream.len())) {
        let to = to.clamp(from, stream.len());
        pending.extend_from_slice(&stream[from..to]);
        from = to;
        let closed_before = reader.is_closed();
        let result = reader.feed(&mut pending, &mut |event| {
            assert!(!closed_before, "an event after a close frame");
            seen.push(match event {
                Event::Text(text) => {
                    assert!(text.len() <= max_message, "text over the limit");
                    assert!(std::str::from_utf8(text).is_ok(), "text that is not UTF-8");
                    Seen::Text(text.to_vec())
                }
                Event::Binary(data) => {
                    assert!(data.len() <= max_message, "binary over the limit");
                    Seen::Binary(data.to_vec())
                }
                Event::Ping(payload) => {
                    assert!(payload.len() <= 125, "a ping longer than 125 bytes");
                    Seen::Ping(payload.to_vec())
                }
                Event::Pong => Seen::Pong,
                Event::Close(code) => Seen::Close(code),
            });
            Ok(())
        });
        match result {
            Ok(used) => {
                assert!(
                    used <= pending.len(),
                    "feed consumed more than it was given"
                );
                pending.drain(..used);
            }
            Err(reason) => return (seen, Err(reason)),
        }
    }
    (seen, Ok(()))
}

fuzz_target!(|data: &[u8]| {
    let [settings, cut_seed, stream @ ..] = data else {
        return;
    };
    // Small limits reach the "too big" paths; 64 KiB is the default's order of magnitude.
    let max_message = match settings & 0x0F {
        0 => 0,
        1 => 1,
        2 => 125,
        3 => 126,
        4 => 1024,
        _ => 64 * 1024,
    };
    let whole = run(reader(*settings, max_message), max_message, stream, &[]);
    // Reads cut every `step` bytes (1 is the worst case, every byte its own read).
    let step = usize::from(*cut_seed % 17) + 1;
    let cuts: Vec<usize> = (step..stream.len()).step_by(step).collect();
    let cut = run(reader(*settings, max_message), max_message, stream, &cuts);
    assert_eq!(whole, cut, "the result depends on how the stream was read");
});
