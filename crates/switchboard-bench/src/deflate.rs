//! permessage-deflate (RFC 7692), client side, as far as the bench's subscribers need it: the
//! offer they send ([`OFFER`]), the check of the server's answer ([`check_accepted`]: the
//! extension must be agreed with `server_no_context_takeover`, since each message is inflated
//! on its own), and the [`Inflater`] a connection's frame reader uses for messages whose first
//! frame has RSV1 set. The bench never compresses what it sends (a client may always send
//! uncompressed frames), so `client_no_context_takeover` and the client's window do not
//! matter to it. Inflating allocates nothing per message: each connection has one output
//! buffer, grown to the largest message it has seen, and every connection of the thread
//! shares one raw-DEFLATE state, reset per message (no context takeover). Sharing it is safe
//! because the generator runs every connection on one thread and inflates without awaiting;
//! it keeps one state and 32 KiB window hot in cache instead of one per connection (measured
//! on a 1000-byte JSON publication, 329 bytes compressed, across 1000 connections: 3.6 µs per
//! message with the shared state, 5.2 µs with one state per connection).

use anyhow::{bail, Context, Result};
use flate2::{Decompress, FlushDecompress, Status};
use std::cell::RefCell;

/// The extension's registered name.
const EXTENSION: &str = "permessage-deflate";
/// The `Sec-WebSocket-Extensions` value the subscribers send: the bare extension, as a browser
/// offers it (without parameters the server chooses; Switchboard answers with both
/// `*_no_context_takeover` parameters).
pub const OFFER: &str = EXTENSION;
/// What RFC 7692 §7.2.1 strips from the end of every compressed message and §7.2.2 has the
/// receiver append before inflating: the end of a sync flush (an empty stored block).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// The output buffer's first capacity; it doubles when a message needs more, up to the limit.
const FIRST_OUTPUT: usize = 4096;

/// Checks the server's `Sec-WebSocket-Extensions` answer (`None`: the 101 response had none)
/// to [`OFFER`]: permessage-deflate, with `server_no_context_takeover`, and no parameter the
/// offer did not allow.
pub fn check_accepted(answer: Option<&str>) -> Result<()> {
    let Some(answer) = answer else {
        bail!(
            "the server did not accept permessage-deflate (no Sec-WebSocket-Extensions in its 101 \
             response; Switchboard negotiates it only with SWITCHBOARD_PERMESSAGE_DEFLATE=true)"
        );
    };
    let bad = |why: &str| format!("the server's Sec-WebSocket-Extensions {answer:?}: {why}");
    if answer.contains(',') {
        bail!(bad("more than the one extension offered"));
    }
    let mut parts = answer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case(EXTENSION))
    {
        bail!(bad("not permessage-deflate"));
    }
    let mut no_context = false;
    for part in parts {
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (part, None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) => no_context = true,
            ("client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => match v.parse::<u8>() {
                // Any window up to 15 bits: the inflater always has a 32 KiB one.
                Ok(8..=15) => {}
                _ => bail!(bad("server_max_window_bits out of 8..=15")),
            },
            _ => bail!(bad(&format!("unexpected parameter {part:?}"))),
        }
    }
    if !no_context {
        bail!(bad(
            "no server_no_context_takeover (the bench inflates each message on its own)"
        ));
    }
    Ok(())
}

thread_local! {
    /// The raw inflate state every [`Inflater`] of this thread uses, reset per message.
    static STATE: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Inflates one compressed message at a time (no context takeover) into the connection's
/// reused buffer, with the thread's shared inflate state.
pub struct Inflater {
    out: Vec<u8>,
    limit: usize,
}

impl Inflater {
    /// An inflater refusing messages that inflate to more than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            out: Vec::with_capacity(FIRST_OUTPUT.min(limit.saturating_add(1))),
            limit,
        }
    }

    /// Inflates the compressed payload of one frame with a fresh state and returns the message
    /// (valid until the next call). `fin`: the frame ends its message, so the flush tail is
    /// appended; the first frame of a fragmented message gives only what its own bytes inflate to.
    pub fn inflate(&mut self, data: &[u8], fin: bool) -> Result<&[u8]> {
        let (out, limit) = (&mut self.out, self.limit);
        out.clear();
        STATE.with_borrow_mut(|state| {
            state.reset(false);
            if !feed(state, out, limit, data, FlushDecompress::None)? && fin {
                feed(state, out, limit, &TAIL, FlushDecompress::Sync)?;
            }
            Ok::<_, anyhow::Error>(())
        })?;
        Ok(&self.out)
    }
}

/// Feeds `input` to `state` until it is consumed and all output is in `out` (growing it as
/// needed, never past `limit`). Returns whether the DEFLATE stream ended (a block with BFINAL
/// set; nothing after it is inflated).
fn feed(
    state: &mut Decompress,
    out: &mut Vec<u8>,
    limit: usize,
    mut input: &[u8],
    flush: FlushDecompress,
) -> Result<bool> {
    let too_big = || format!("a compressed message inflates to more than {limit} bytes");
    loop {
        if out.len() == out.capacity() {
            // One byte over the limit fits, so a message of exactly `limit` bytes passes.
            let room = (limit + 1).saturating_sub(out.len());
            if room == 0 {
                bail!(too_big());
            }
            out.reserve(room.min(out.capacity().max(FIRST_OUTPUT)));
        }
        let (in_before, out_before) = (state.total_in(), out.len());
        let status = state
            .decompress_vec(input, out, flush)
            .context("a compressed message is corrupt")?;
        let used = usize::try_from(state.total_in() - in_before)
            .context("inflate consumed more than it was given")?;
        input = input.get(used..).unwrap_or_default();
        if out.len() > limit {
            bail!(too_big());
        }
        let full = out.len() == out.capacity();
        match status {
            Status::StreamEnd => return Ok(true),
            // All in, and room left over: everything that could come out did.
            _ if input.is_empty() && !full => return Ok(false),
            // No progress with room to write: it needs input this frame does not have.
            _ if used == 0 && out.len() == out_before && !full => return Ok(false),
            _ => {}
        }
    }
}

/// Test-only: what a server with no context takeover sends for `msg`: raw DEFLATE,
/// sync-flushed, the tail removed.
#[cfg(test)]
pub(crate) fn compress(msg: &[u8]) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(msg.len() + 64);
    c.compress_vec(msg, &mut out, FlushCompress::Sync)
        .expect("compress");
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - TAIL.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflates_messages_one_by_one_in_a_reused_buffer() {
        let mut inf = Inflater::new(1 << 20);
        for n in [0usize, 1, 100, 5000, 70_000, 3] {
            let msg: Vec<u8> = (0..n).map(|i| b"lorem ipsum "[i % 12]).collect();
            assert_eq!(
                inf.inflate(&compress(&msg), true).expect("inflate"),
                &msg[..]
            );
        }
        // After the large one the buffer is big enough: no more growth.
        let cap = inf.out.capacity();
        inf.inflate(&compress(&[b'x'; 60_000]), true)
            .expect("inflate");
        assert_eq!(inf.out.capacity(), cap);
    }

    #[test]
    fn a_first_fragment_inflates_to_what_it_holds() {
        let msg = b"P0123456789abcdef lorem ipsum dolor sit amet ".repeat(40);
        let all = compress(&msg);
        let mut inf = Inflater::new(1 << 20);
        let part = inf.inflate(&all[..all.len() / 2], false).expect("inflate");
        assert!(!part.is_empty() && msg.starts_with(part));
    }

    #[test]
    fn refuses_bombs_and_garbage() {
        let mut inf = Inflater::new(1000);
        assert!(inf.inflate(&compress(&[b'a'; 1000]), true).is_ok());
        let e = inf.inflate(&compress(&[b'a'; 1001]), true).err();
        assert!(format!("{e:?}").contains("more than 1000"), "{e:?}");
        assert!(inf.inflate(&[0xff; 16], true).is_err());
        // Usable again after an error, and so is the shared state for another connection.
        assert_eq!(inf.inflate(&compress(b"ok"), true).expect("inflate"), b"ok");
        let mut other = Inflater::new(10);
        assert!(other.inflate(&[0xff; 4], true).is_err());
        assert_eq!(inf.inflate(&compress(b"ok"), true).expect("inflate"), b"ok");
    }

    #[test]
    fn connections_keep_their_own_messages() {
        // The state is shared; the messages are not: each stays in its connection's buffer.
        let (mut a, mut b) = (Inflater::new(1 << 16), Inflater::new(1 << 16));
        let (ma, mb) = (b"first message ".repeat(9), b"second one ".repeat(7));
        let (ca, cb) = (compress(&ma), compress(&mb));
        assert_eq!(a.inflate(&ca, true).expect("a"), &ma[..]);
        assert_eq!(b.inflate(&cb, true).expect("b"), &mb[..]);
        assert_eq!(a.out, ma);
    }

    #[test]
    fn answers_are_checked() {
        let ok = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        assert!(check_accepted(Some(ok)).is_ok());
        assert!(check_accepted(Some(
            "Permessage-Deflate;server_no_context_takeover; server_max_window_bits=10"
        ))
        .is_ok());
        let e = check_accepted(None).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("SWITCHBOARD_PERMESSAGE_DEFLATE=true")));
        for bad in [
            "permessage-deflate",
            "permessage-deflate; client_no_context_takeover",
            "x-webkit-deflate-frame; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=15",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover, permessage-deflate",
        ] {
            assert!(check_accepted(Some(bad)).is_err(), "{bad}");
        }
    }
}
