//! What the bench puts inside its messages and the clock its timestamps come from: one
//! monotonic clock for the whole process ([`now_ns`]), and fixed-layout ASCII payloads (text
//! frames must be UTF-8) whose timestamp and sequence number are written and read in place,
//! so the receive path parses a few hex digits and allocates nothing.
//!
//! Layouts (padded with `.` up to the requested size):
//! - publication: `P` + 16 hex timestamp + 8 hex publisher id + 16 hex sequence number;
//! - echo: `E` + 16 hex timestamp;
//! - warm-up: `W`.
//!
//! A publication can also be a JSON chat message of the requested size ([`PayloadKind::Json`],
//! `fanout --payload-kind json`), for permessage-deflate to have something to compress: the
//! same header is its `id` string, first in the object at a fixed offset
//! (`{"id":"P…","type":"message","user":"u…","text":"Lorem ipsum …"}`, the text cut to fit),
//! and [`bench_message`] finds it there before [`parse_pub`] reads it as usual. Servers pass
//! valid JSON through as it is (Switchboard's client protocol carries it as the push's `data`
//! object rather than as a string).

use std::sync::OnceLock;
use std::time::Instant;

/// First byte of a publication.
pub const KIND_PUB: u8 = b'P';
/// First byte of an echo message.
pub const KIND_ECHO: u8 = b'E';
/// First byte of a warm-up message.
pub const KIND_WARMUP: u8 = b'W';
/// Smallest publication payload.
pub const PUB_MIN: usize = 1 + 16 + 8 + 16;
/// Smallest echo payload.
pub const ECHO_MIN: usize = 1 + 16;
/// What a JSON publication starts with; the publication header follows.
const JSON_HEAD: &[u8] = br#"{"id":""#;
/// Between the header and the publisher id (as 8 hex digits) in a JSON publication.
const JSON_USER: &[u8] = br#"","type":"message","user":"u"#;
/// Between the publisher id and the text.
const JSON_TEXT: &[u8] = br#"","text":""#;
/// The end of a JSON publication.
const JSON_END: &[u8] = br#""}"#;
/// What the text of a JSON publication repeats (no character JSON escapes).
const LOREM: &[u8] = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod \
tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud \
exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure dolor in \
reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur. Excepteur sint \
occaecat cupidatat non proident, sunt in culpa qui officia deserunt mollit anim id est laborum. ";
/// Smallest JSON publication (an empty text).
pub const JSON_MIN: usize =
    JSON_HEAD.len() + PUB_MIN + JSON_USER.len() + 8 + JSON_TEXT.len() + JSON_END.len();

/// What publications look like (`--payload-kind`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PayloadKind {
    /// The header padded with `.`: hardly compressible at the default 100 bytes.
    #[default]
    Padded,
    /// A JSON chat message whose `id` is the header and whose text repeats lorem ipsum.
    Json,
}

impl PayloadKind {
    /// The name shown in the report.
    pub fn label(self) -> &'static str {
        match self {
            PayloadKind::Padded => "padded",
            PayloadKind::Json => "json",
        }
    }

    /// The smallest payload of this kind.
    pub fn min_size(self) -> usize {
        match self {
            PayloadKind::Padded => PUB_MIN,
            PayloadKind::Json => JSON_MIN,
        }
    }

    /// Writes a publication of this kind, `size` bytes (at least [`Self::min_size`]), into
    /// `out` (cleared first).
    pub fn write(self, out: &mut Vec<u8>, size: usize, ts: u64, publisher: u32, seq: u64) {
        match self {
            PayloadKind::Padded => write_pub(out, size, ts, publisher, seq),
            PayloadKind::Json => write_json_pub(out, size, ts, publisher, seq),
        }
    }
}

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call, from the process' monotonic clock.
pub fn now_ns() -> u64 {
    let base = *BASE.get_or_init(Instant::now);
    base.elapsed().as_nanos() as u64
}

/// The `Instant` that [`now_ns`] counts from (initialising it if needed).
pub fn base() -> Instant {
    *BASE.get_or_init(Instant::now)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut Vec<u8>, v: u64, digits: u32) {
    for i in (0..digits).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize]);
    }
}

fn get_hex(b: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for &c in b {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

fn pad(out: &mut Vec<u8>, start: usize, size: usize) {
    let have = out.len() - start;
    if size > have {
        out.resize(start + size, b'.');
    }
}

/// Writes a publication payload of `size` bytes (at least [`PUB_MIN`]) into `out` (cleared first).
pub fn write_pub(out: &mut Vec<u8>, size: usize, ts: u64, publisher: u32, seq: u64) {
    out.clear();
    out.push(KIND_PUB);
    put_hex(out, ts, 16);
    put_hex(out, u64::from(publisher), 8);
    put_hex(out, seq, 16);
    pad(out, 0, size);
}

/// Writes a JSON publication of `size` bytes (at least [`JSON_MIN`]) into `out` (cleared first).
pub fn write_json_pub(out: &mut Vec<u8>, size: usize, ts: u64, publisher: u32, seq: u64) {
    out.clear();
    out.extend_from_slice(JSON_HEAD);
    out.push(KIND_PUB);
    put_hex(out, ts, 16);
    put_hex(out, u64::from(publisher), 8);
    put_hex(out, seq, 16);
    out.extend_from_slice(JSON_USER);
    put_hex(out, u64::from(publisher), 8);
    out.extend_from_slice(JSON_TEXT);
    let mut text = size.saturating_sub(out.len() + JSON_END.len());
    while text > 0 {
        let n = text.min(LOREM.len());
        out.extend_from_slice(&LOREM[..n]);
        text -= n;
    }
    out.extend_from_slice(JSON_END);
}

/// The bench message in a received payload: the header string of a JSON publication (from its
/// `P` on), else the payload itself.
#[inline]
pub fn bench_message(p: &[u8]) -> &[u8] {
    p.strip_prefix(JSON_HEAD).unwrap_or(p)
}

/// Writes an echo payload of `size` bytes (at least [`ECHO_MIN`]) into `out` (cleared first).
pub fn write_echo(out: &mut Vec<u8>, size: usize, ts: u64) {
    out.clear();
    out.push(KIND_ECHO);
    put_hex(out, ts, 16);
    pad(out, 0, size);
}

/// A parsed publication header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pub {
    /// Send time, from [`now_ns`].
    pub ts: u64,
    /// Publisher index.
    pub publisher: u32,
    /// Sequence number within that publisher.
    pub seq: u64,
}

/// Parses a publication payload (`None` if it is not one).
pub fn parse_pub(p: &[u8]) -> Option<Pub> {
    if p.len() < PUB_MIN || p[0] != KIND_PUB {
        return None;
    }
    Some(Pub {
        ts: get_hex(&p[1..17])?,
        publisher: u32::try_from(get_hex(&p[17..25])?).ok()?,
        seq: get_hex(&p[25..41])?,
    })
}

/// Parses the timestamp of an echo payload (`None` if it is not one).
pub fn parse_echo(p: &[u8]) -> Option<u64> {
    if p.len() < ECHO_MIN || p[0] != KIND_ECHO {
        return None;
    }
    get_hex(&p[1..17])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pub_round_trip() {
        let mut b = Vec::new();
        write_pub(&mut b, 100, 0x0123_4567_89ab_cdef, 7, u64::MAX - 3);
        assert_eq!(b.len(), 100);
        assert!(std::str::from_utf8(&b).is_ok());
        let p = parse_pub(&b).expect("publication");
        assert_eq!(
            p,
            Pub {
                ts: 0x0123_4567_89ab_cdef,
                publisher: 7,
                seq: u64::MAX - 3
            }
        );
        write_pub(&mut b, 10, 1, 2, 3);
        assert_eq!(b.len(), PUB_MIN);
    }

    #[test]
    fn json_pub_round_trip() {
        let mut b = Vec::new();
        for size in [JSON_MIN, 100, 1000, 5000] {
            PayloadKind::Json.write(&mut b, size, 0x0123_4567_89ab_cdef, 7, 42);
            assert_eq!(b.len(), size);
            let v: serde_json::Value = serde_json::from_slice(&b).expect("valid JSON");
            assert_eq!(v["type"], "message");
            assert_eq!(v["user"], "u00000007");
            let p = parse_pub(bench_message(&b)).expect("publication");
            assert_eq!((p.ts, p.publisher, p.seq), (0x0123_4567_89ab_cdef, 7, 42));
        }
        PayloadKind::Json.write(&mut b, 10, 1, 2, 3);
        assert_eq!(b.len(), JSON_MIN);
        // The plain layout is left as it is.
        assert_eq!(bench_message(b"P01"), b"P01");
        assert_eq!(bench_message(b"W"), b"W");
        assert_eq!(PayloadKind::default(), PayloadKind::Padded);
        assert_eq!(PayloadKind::Padded.min_size(), PUB_MIN);
    }

    #[test]
    fn echo_round_trip() {
        let mut b = Vec::new();
        write_echo(&mut b, 32, 123_456_789);
        assert_eq!(b.len(), 32);
        assert_eq!(parse_echo(&b), Some(123_456_789));
        assert_eq!(parse_pub(&b), None);
        assert_eq!(parse_echo(b"E0000zz"), None);
    }

    #[test]
    fn clock_is_monotonic() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
    }
}
