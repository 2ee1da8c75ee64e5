//! What the bench puts inside its messages and the clock its timestamps come from: one
//! monotonic clock for the whole process ([`now_ns`]), and fixed-layout ASCII payloads (text
//! frames must be UTF-8) whose timestamp and sequence number are written and read in place,
//! so the receive path parses a few hex digits and allocates nothing.
//!
//! Layouts (padded with `.` up to the requested size):
//! - publication: `P` + 16 hex timestamp + 8 hex publisher id + 16 hex sequence number;
//! - echo: `E` + 16 hex timestamp;
//! - warm-up: `W`.

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
