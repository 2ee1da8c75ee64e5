//! permessage-deflate (RFC 7692): negotiating the extension, compressing a server message once
//! for every subscriber, and inflating client messages within a size limit.
//!
//! This module owns the extension's bytes and nothing else: the `Sec-WebSocket-Extensions`
//! offer/response ([`negotiate`], [`Negotiated::response_header`]), the compressed payload of a
//! server message ([`deflate_message`], [`encode_compressed`]) and the per-connection inflate
//! state ([`Inflater`]). Like the rest of `ws`, it does no I/O.
//!
//! The server always answers `server_no_context_takeover`: every message is compressed by a
//! fresh compressor, so a publication's compressed frame depends only on its payload (and the
//! window size) and can be encoded once and shared by every deflate subscriber, exactly like an
//! uncompressed one. Only the inflate side may keep state, and only while the client keeps its
//! compression context (it did not offer `client_no_context_takeover`).

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use http::{header, HeaderMap};

use super::frame::{self, Opcode};

/// The extension's registered name.
const EXTENSION: &str = "permessage-deflate";

/// What a sync flush ends with, and what RFC 7692 §7.2.1 removes from (and §7.2.2 appends to)
/// every compressed message.
const FLUSH_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The largest LZ77 window (32 KiB), used unless a `*_max_window_bits` parameter says less.
const MAX_WINDOW_BITS: u8 = 15;

/// The smallest window zlib accepts for a raw stream. RFC 7692 allows 8, but zlib rejects a raw
/// deflate stream with 8 (it maps 8 to 9 only for the zlib wrapper), and flate2 asserts 9..=15
/// for both directions.
const MIN_ZLIB_WINDOW_BITS: u8 = 9;

/// The first output chunk when inflating; later chunks double the output, up to the limit.
const FIRST_INFLATE_CHUNK: usize = 4096;

/// A client message that cannot be inflated. Either way the connection must be failed
/// (RFC 7692 §7.2.2); the [`Inflater`] is not usable afterwards.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeflateError {
    /// The inflated message would be longer than the limit; inflating stopped at the limit.
    #[error("inflated message exceeds the limit of {limit} bytes")]
    TooBig {
        /// The limit that was passed to [`Inflater::inflate`].
        limit: usize,
    },
    /// The compressed bytes are not a valid DEFLATE stream (or reference data the window no
    /// longer holds).
    #[error("compressed message is corrupt")]
    Corrupt(#[source] flate2::DecompressError),
    /// The message carried bytes after the end of its DEFLATE data: after a block with BFINAL
    /// set, or bytes inflate stopped consuming.
    #[error("compressed message has bytes after the end of its DEFLATE data")]
    TrailingData,
}

/// The permessage-deflate parameters agreed with one client.
///
/// Produced by [`negotiate`]; the connection keeps it to build its [`Inflater`] and to pick the
/// window its shared compressed frames must be made with ([`Negotiated::server_window_bits`]).
/// `server_no_context_takeover` is not a field because it is always agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The client compresses each message with a fresh context, so each message is inflated
    /// with a fresh state and nothing is kept between messages.
    pub client_no_context_takeover: bool,
    /// The largest window the client compresses with: the value it offered in
    /// `client_max_window_bits`, else 15. Inflating needs a window at least this large.
    pub client_max_window_bits: u8,
    /// The window the client asked the server to stay within (`server_max_window_bits=N`,
    /// echoed in the response); `None` when it asked nothing (the server then uses 15).
    pub server_max_window_bits: Option<u8>,
}

impl Negotiated {
    /// The `Sec-WebSocket-Extensions` value for the 101 response.
    pub fn response_header(&self) -> String {
        let mut value = format!("{EXTENSION}; server_no_context_takeover");
        if self.client_no_context_takeover {
            value.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = self.server_max_window_bits {
            value.push_str(&format!("; server_max_window_bits={bits}"));
        }
        value
    }

    /// The window to compress this client's messages with: what it asked for, else 15. Always
    /// in 9..=15 ([`negotiate`] declines an offer of 8).
    pub fn server_window_bits(&self) -> u8 {
        self.server_max_window_bits.unwrap_or(MAX_WINDOW_BITS)
    }

    /// Tells the client to compress every message with a fresh context too, whether or not it
    /// offered `client_no_context_takeover` (a server may add it unasked, RFC 7692 §7.1.1.2).
    /// The connection's [`Inflater`] then holds no state between messages, which keeps an idle
    /// deflate connection as small as a plain one, at some cost in compression ratio for
    /// what the client sends.
    pub fn with_client_no_context_takeover(self) -> Negotiated {
        Negotiated {
            client_no_context_takeover: true,
            ..self
        }
    }

    /// The inflate state for a connection that agreed on these parameters.
    pub fn inflater(&self) -> Inflater {
        Inflater::new(self)
    }
}

/// Picks the first acceptable `permessage-deflate` offer in the request's
/// `Sec-WebSocket-Extensions` header(s), in the order the client listed them.
///
/// Returns `None` when there is none: the connection then runs uncompressed, and the response
/// carries no `Sec-WebSocket-Extensions` header.
pub fn negotiate(headers: &HeaderMap) -> Option<Negotiated> {
    negotiate_offers(
        headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|value| value.to_str().ok()),
    )
}

/// [`negotiate`] over header values given as strings (one per header line).
///
/// An offer is declined, and the next one tried, when it has an unknown parameter, a parameter
/// twice, a value where none is allowed (or none where one is required), or a window size
/// outside 8..=15 written as a decimal without leading zeros. An offer of
/// `server_max_window_bits=8` is declined too: zlib cannot compress a raw stream with a 256-byte
/// window, and answering 9 would break a client that inflates with 8.
pub fn negotiate_offers<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Negotiated> {
    values
        .into_iter()
        .flat_map(|value| split_outside_quotes(value, b','))
        .map(str::trim)
        .filter(|offer| !offer.is_empty())
        .find_map(accept_offer)
}

/// The parameters RFC 7692 §7.1 defines.
#[derive(Clone, Copy)]
enum Param {
    ServerNoContextTakeover,
    ClientNoContextTakeover,
    ServerMaxWindowBits,
    ClientMaxWindowBits,
}

impl Param {
    fn from_name(name: &str) -> Option<Param> {
        [
            ("server_no_context_takeover", Param::ServerNoContextTakeover),
            ("client_no_context_takeover", Param::ClientNoContextTakeover),
            ("server_max_window_bits", Param::ServerMaxWindowBits),
            ("client_max_window_bits", Param::ClientMaxWindowBits),
        ]
        .into_iter()
        .find_map(|(known, param)| known.eq_ignore_ascii_case(name).then_some(param))
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The agreed parameters for one offer (`name; param; param=value ...`), or `None` to decline.
fn accept_offer(offer: &str) -> Option<Negotiated> {
    let mut parts = split_outside_quotes(offer, b';').into_iter();
    if !parts.next()?.trim().eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut agreed = Negotiated {
        client_no_context_takeover: false,
        client_max_window_bits: MAX_WINDOW_BITS,
        server_max_window_bits: None,
    };
    let mut seen = 0u8;
    for part in parts {
        let (name, value) = match part.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (part.trim(), None),
        };
        let param = Param::from_name(name)?;
        if seen & param.bit() != 0 {
            return None;
        }
        seen |= param.bit();
        match (param, value) {
            (Param::ServerNoContextTakeover, None) => {}
            (Param::ClientNoContextTakeover, None) => agreed.client_no_context_takeover = true,
            (Param::ServerMaxWindowBits, Some(value)) => {
                let bits = parse_window_bits(&value)?;
                if bits < MIN_ZLIB_WINDOW_BITS {
                    return None;
                }
                agreed.server_max_window_bits = Some(bits);
            }
            (Param::ClientMaxWindowBits, None) => {}
            (Param::ClientMaxWindowBits, Some(value)) => {
                agreed.client_max_window_bits = parse_window_bits(&value)?;
            }
            (Param::ServerNoContextTakeover | Param::ClientNoContextTakeover, Some(_))
            | (Param::ServerMaxWindowBits, None) => return None,
        }
    }
    Some(agreed)
}

/// Splits `text` at each `separator` that is not inside a quoted string (RFC 7230 §3.2.6).
fn split_outside_quotes(text: &str, separator: u8) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, byte) in text.bytes().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && byte == b'\\' {
            escaped = true;
        } else if byte == b'"' {
            quoted = !quoted;
        } else if byte == separator && !quoted {
            // `separator` is ASCII, so `at` is a char boundary.
            parts.push(&text[start..at]);
            start = at + 1;
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A parameter value as a token or a quoted string (RFC 6455 §9.1 allows both), unescaped.
fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return Some(value.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// A window size: a decimal in 8..=15 with no leading zero (RFC 7692 §7.1.2).
fn parse_window_bits(value: &str) -> Option<u8> {
    let digits_only = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || value.len() > 2 || value.starts_with('0') {
        return None;
    }
    let bits: u8 = value.parse().ok()?;
    (8..=MAX_WINDOW_BITS).contains(&bits).then_some(bits)
}

/// Compresses one message's payload as RFC 7692 §7.2.1 says: raw DEFLATE with a fresh
/// compressor (no context takeover), ended by a sync flush whose `00 00 ff ff` tail is removed.
/// An empty payload compresses to the single byte `00` (§7.2.3.6).
///
/// `window_bits` is the window to compress with ([`Negotiated::server_window_bits`]); values
/// outside 9..=15 are clamped into it (negotiation never agrees to 8).
///
/// # Panics
/// Only if zlib reports a stream-state error, which a fresh compressor fed one slice and a sync
/// flush cannot produce; the payload's content has no bearing on it.
pub fn deflate_message(payload: &[u8], window_bits: u8) -> Vec<u8> {
    let window_bits = window_bits.clamp(MIN_ZLIB_WINDOW_BITS, MAX_WINDOW_BITS);
    // Making a compressor costs about a third of compressing a kilobyte; each worker thread
    // keeps one per window size and resets it, which is the same as a fresh one.
    thread_local! {
        static COMPRESSORS: std::cell::RefCell<Vec<(u8, Compress)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    COMPRESSORS.with(|cell| {
        let Ok(mut compressors) = cell.try_borrow_mut() else {
            // Re-entered on this thread (not expected): use a fresh compressor.
            let mut fresh =
                Compress::new_with_window_bits(Compression::default(), false, window_bits);
            return compress_flushed(&mut fresh, payload);
        };
        let at = match compressors
            .iter()
            .position(|(bits, _)| *bits == window_bits)
        {
            Some(at) => at,
            None => {
                let fresh =
                    Compress::new_with_window_bits(Compression::default(), false, window_bits);
                compressors.push((window_bits, fresh));
                compressors.len() - 1
            }
        };
        let compressor = &mut compressors[at].1;
        compressor.reset();
        compress_flushed(compressor, payload)
    })
}

/// Feeds `payload` to `compressor`, sync-flushes and returns what came out, less the flush
/// tail. Without a reset between calls the compressor keeps its context (the tests use that
/// to play a client that keeps it).
fn compress_flushed(compressor: &mut Compress, payload: &[u8]) -> Vec<u8> {
    let start = compressor.total_in();
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    loop {
        let consumed = consumed_since(start, compressor.total_in());
        compressor
            .compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
            .expect("a sync flush on a healthy raw deflate stream cannot fail");
        // The flush is complete once all input is in and zlib stopped with output room left.
        if consumed_since(start, compressor.total_in()) == payload.len()
            && out.len() < out.capacity()
        {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.ends_with(&FLUSH_TAIL) {
        out.truncate(out.len() - FLUSH_TAIL.len());
    }
    out
}

/// Bytes consumed between two readings of a `total_in` counter. The difference is bounded by
/// the slice that was fed, so it fits a `usize`.
fn consumed_since(before: u64, now: u64) -> usize {
    usize::try_from(now - before).unwrap_or(usize::MAX)
}

/// Encodes one complete server frame for a deflate connection: FIN, RSV1 (compressed), the
/// opcode, no mask, and [`deflate_message`]`(payload, window_bits)` as the payload, with the
/// length encoded as [`frame::encode`] does.
///
/// Only text and binary messages are compressed (RFC 7692 §6.1 forbids RSV1 on control and
/// continuation frames); any other opcode is encoded uncompressed by [`frame::encode`].
///
/// # Panics
/// As [`deflate_message`].
pub fn encode_compressed(opcode: Opcode, payload: &[u8], window_bits: u8) -> Bytes {
    match opcode {
        Opcode::Text | Opcode::Binary => {
            frame::encode_rsv1(opcode, &deflate_message(payload, window_bits))
        }
        Opcode::Continuation | Opcode::Close | Opcode::Ping | Opcode::Pong => {
            frame::encode(opcode, payload)
        }
    }
}

/// The inflate side of one connection.
///
/// When the client keeps its compression context, the raw-inflate state (and its window) lives
/// as long as the connection, because the client's next message may refer to bytes of the
/// previous ones. When it does not (`client_no_context_takeover`), a state is made per message
/// and dropped after it, so an idle connection holds nothing.
#[derive(Debug)]
pub struct Inflater {
    /// The window to inflate with: the client's, raised to zlib's minimum of 9 (a larger
    /// window inflates a stream made with a smaller one).
    window_bits: u8,
    keep_context: bool,
    state: Option<Decompress>,
}

impl Inflater {
    /// The inflate state for a connection that agreed on `negotiated`.
    pub fn new(negotiated: &Negotiated) -> Inflater {
        Inflater {
            window_bits: negotiated
                .client_max_window_bits
                .clamp(MIN_ZLIB_WINDOW_BITS, MAX_WINDOW_BITS),
            keep_context: !negotiated.client_no_context_takeover,
            state: None,
        }
    }

    /// Whether an inflate state is held between messages (it is while the client keeps its
    /// context, from the first compressed message on).
    pub fn holds_state(&self) -> bool {
        self.state.is_some()
    }

    /// Inflates one whole compressed message (the reassembled payload of all its frames, as
    /// received), appending `00 00 ff ff` as RFC 7692 §7.2.2 says.
    ///
    /// Output is produced in chunks that double up to `max_len + 1` bytes, so a message that
    /// inflates past `max_len` (a decompression bomb) costs at most that much memory before
    /// it is refused.
    ///
    /// # Errors
    /// [`DeflateError::TooBig`] when the message inflates to more than `max_len` bytes,
    /// [`DeflateError::Corrupt`] when the bytes are not valid DEFLATE,
    /// [`DeflateError::TrailingData`] when bytes follow a final block. After any error the
    /// connection must be failed: with context takeover the state no longer matches the
    /// client's.
    pub fn inflate(&mut self, compressed: &[u8], max_len: usize) -> Result<Vec<u8>, DeflateError> {
        let mut out = Vec::new();
        self.inflate_into(compressed, max_len, &mut out)?;
        Ok(out)
    }

    /// [`Inflater::inflate`] into `out`, which must be empty with no capacity (so the tests can
    /// see how much was ever allocated).
    fn inflate_into(
        &mut self,
        compressed: &[u8],
        max_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), DeflateError> {
        let window_bits = self.window_bits;
        let state = self
            .state
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, window_bits));
        let result = inflate_message(state, compressed, max_len, out);
        // A final block ends the DEFLATE stream: whatever comes next starts a new one.
        let stream_ended = matches!(result, Ok(Ended::Stream));
        if !self.keep_context || stream_ended || result.is_err() {
            self.state = None;
        }
        result.map(|_| ())
    }
}

/// How a message's DEFLATE data ended.
enum Ended {
    /// With the flush tail: the stream goes on with the next message.
    Flush,
    /// With a block that had BFINAL set.
    Stream,
}

/// Inflates `compressed` followed by the flush tail into `out`, never letting `out` hold more
/// than `max_len + 1` bytes.
fn inflate_message(
    state: &mut Decompress,
    compressed: &[u8],
    max_len: usize,
    out: &mut Vec<u8>,
) -> Result<Ended, DeflateError> {
    // One byte past the limit tells "exactly max_len" from "more than max_len".
    let limit = max_len.saturating_add(1);
    for (input, is_tail) in [(compressed, false), (&FLUSH_TAIL[..], true)] {
        let start = state.total_in();
        loop {
            if out.len() == out.capacity() {
                // out.len() <= max_len here (checked below), so there is room for at least one.
                let grow = out.len().max(FIRST_INFLATE_CHUNK).min(limit - out.len());
                out.reserve_exact(grow);
            }
            let consumed = consumed_since(start, state.total_in());
            let produced_before = out.len();
            let status = state
                .decompress_vec(&input[consumed..], out, FlushDecompress::Sync)
                .map_err(DeflateError::Corrupt)?;
            if out.len() > max_len {
                return Err(DeflateError::TooBig { limit: max_len });
            }
            let now_consumed = consumed_since(start, state.total_in());
            if let Status::StreamEnd = status {
                // After a final block only the tail we appended may remain.
                return if is_tail || now_consumed == input.len() {
                    Ok(Ended::Stream)
                } else {
                    Err(DeflateError::TrailingData)
                };
            }
            let room_left = out.len() < out.capacity();
            if now_consumed == input.len() && room_left {
                break;
            }
            if room_left && now_consumed == consumed && out.len() == produced_before {
                // Input left and output room, but inflate took nothing: it never will.
                return Err(DeflateError::TrailingData);
            }
        }
    }
    Ok(Ended::Flush)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn offer(value: &str) -> Option<Negotiated> {
        negotiate_offers([value])
    }

    fn plain() -> Negotiated {
        Negotiated {
            client_no_context_takeover: false,
            client_max_window_bits: 15,
            server_max_window_bits: None,
        }
    }

    #[test]
    fn a_reused_compressor_keeps_no_context_between_messages() {
        let message = b"the same message twice, the same message twice";
        let first = deflate_message(message, 15);
        let second = deflate_message(message, 15);
        assert_eq!(
            first, second,
            "the second is not shortened by the first's context"
        );
    }

    #[test]
    fn a_bare_offer_is_accepted_and_answered_with_server_no_context_takeover() {
        let agreed = offer("permessage-deflate").unwrap();
        assert_eq!(agreed, plain());
        assert_eq!(
            agreed.response_header(),
            "permessage-deflate; server_no_context_takeover"
        );
        assert_eq!(agreed.server_window_bits(), 15);
    }

    #[test]
    fn the_browser_offer_keeps_a_15_bit_client_window_and_is_not_echoed() {
        let agreed = offer("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(agreed, plain());
        assert_eq!(
            agreed.response_header(),
            "permessage-deflate; server_no_context_takeover"
        );
    }

    #[test]
    fn every_parameter_together_is_accepted_and_echoed() {
        let agreed = offer(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=12",
        )
        .unwrap();
        assert_eq!(
            agreed,
            Negotiated {
                client_no_context_takeover: true,
                client_max_window_bits: 12,
                server_max_window_bits: Some(10),
            }
        );
        assert_eq!(
            agreed.response_header(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10"
        );
        assert_eq!(agreed.server_window_bits(), 10);
    }

    #[test]
    fn quoted_values_and_spaces_are_accepted() {
        let agreed = offer("permessage-deflate ; server_max_window_bits = \"1\\1\"").unwrap();
        assert_eq!(agreed.server_max_window_bits, Some(11));
    }

    #[test]
    fn an_unknown_parameter_declines_the_offer_and_the_next_is_taken() {
        let agreed =
            offer("permessage-deflate; mystery, permessage-deflate; client_no_context_takeover");
        assert_eq!(
            agreed,
            Some(Negotiated {
                client_no_context_takeover: true,
                ..plain()
            })
        );
        assert_eq!(offer("permessage-deflate; mystery"), None);
    }

    #[test]
    fn a_duplicate_parameter_declines_the_offer() {
        for value in [
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=9",
        ] {
            assert_eq!(offer(value), None, "{value}");
        }
    }

    #[test]
    fn invalid_values_decline_the_offer() {
        for params in [
            "server_max_window_bits",
            "server_max_window_bits=",
            "server_max_window_bits=7",
            "server_max_window_bits=16",
            "server_max_window_bits=08",
            "server_max_window_bits=abc",
            "server_max_window_bits=\"10",
            "client_max_window_bits=16",
            "client_max_window_bits=+9",
            "client_no_context_takeover=1",
            "server_no_context_takeover=\"\"",
            "",
        ] {
            let value = format!("permessage-deflate; {params}");
            assert_eq!(offer(&value), None, "{value}");
        }
    }

    #[test]
    fn server_window_8_is_declined_but_client_window_8_is_accepted() {
        assert_eq!(offer("permessage-deflate; server_max_window_bits=8"), None);
        let agreed = offer("permessage-deflate; client_max_window_bits=8").unwrap();
        assert_eq!(agreed.client_max_window_bits, 8);
        assert_eq!(agreed.inflater().window_bits, 9);
    }

    #[test]
    fn other_extensions_are_skipped_across_header_lines() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("x-webkit-deflate-frame; a=\"1,2\", , permessage-foo"),
        );
        headers.append(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate; server_max_window_bits=12"),
        );
        let agreed = negotiate(&headers).unwrap();
        assert_eq!(agreed.server_max_window_bits, Some(12));
    }

    #[test]
    fn no_offer_means_no_extension() {
        assert_eq!(negotiate(&HeaderMap::new()), None);
        assert_eq!(offer("x-webkit-deflate-frame"), None);
    }

    #[test]
    fn the_server_may_add_client_no_context_takeover() {
        let agreed = offer("permessage-deflate")
            .unwrap()
            .with_client_no_context_takeover();
        assert_eq!(
            agreed.response_header(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    #[test]
    fn the_rfc_example_inflates_to_hello() {
        let mut inflater = plain().inflater();
        let out = inflater
            .inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100)
            .unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn hello_compresses_to_the_rfc_example() {
        assert_eq!(
            deflate_message(b"Hello", 15),
            [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]
        );
    }

    #[test]
    fn the_rfc_example_with_context_takeover_inflates_both_messages() {
        // RFC 7692 §7.2.3.2: the second "Hello" is a back-reference into the first.
        let mut inflater = plain().inflater();
        let first = inflater
            .inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100)
            .unwrap();
        let second = inflater
            .inflate(&[0xf2, 0x00, 0x11, 0x00, 0x00], 100)
            .unwrap();
        assert_eq!((&first[..], &second[..]), (&b"Hello"[..], &b"Hello"[..]));
        assert!(inflater.holds_state());
    }

    #[test]
    fn an_empty_message_compresses_to_one_zero_byte() {
        assert_eq!(deflate_message(b"", 15), [0x00]);
    }

    fn round_trip(payload: &[u8], window_bits: u8) {
        let compressed = deflate_message(payload, window_bits);
        assert!(!compressed.ends_with(&FLUSH_TAIL));
        let agreed = Negotiated {
            client_max_window_bits: window_bits,
            ..plain()
        };
        let out = agreed
            .inflater()
            .inflate(&compressed, payload.len())
            .unwrap();
        assert_eq!(out, payload, "{} bytes", payload.len());
    }

    #[test]
    fn text_round_trips() {
        round_trip("Grüße aus Köln — ".repeat(300).as_bytes(), 15);
    }

    #[test]
    fn empty_and_one_byte_round_trip() {
        round_trip(b"", 15);
        round_trip(b"x", 15);
    }

    #[test]
    fn random_64_kib_round_trips() {
        let mut rng = fastrand::Rng::with_seed(7);
        let payload: Vec<u8> = (0..64 * 1024).map(|_| rng.u8(..)).collect();
        round_trip(&payload, 15);
    }

    #[test]
    fn every_window_size_round_trips() {
        let payload: Vec<u8> = (0..20_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 700) as u8)
            .collect();
        for bits in 9..=15 {
            round_trip(&payload, bits);
        }
    }

    #[test]
    fn context_takeover_inflates_a_series_of_messages() {
        let mut client = Compress::new(Compression::default(), false);
        let mut inflater = plain().inflater();
        for i in 0..5 {
            let message = format!("{{\"channel\":\"news\",\"seq\":{i},\"body\":\"same text\"}}");
            let compressed = compress_flushed(&mut client, message.as_bytes());
            assert_eq!(
                inflater.inflate(&compressed, 1000).unwrap(),
                message.as_bytes()
            );
        }
    }

    #[test]
    fn context_takeover_messages_need_the_kept_context() {
        let mut client = Compress::new(Compression::default(), false);
        let first = compress_flushed(&mut client, b"a message that repeats");
        let second = compress_flushed(&mut client, b"a message that repeats");
        let mut fresh = plain().with_client_no_context_takeover().inflater();
        fresh.inflate(&first, 100).unwrap();
        assert!(!fresh.holds_state());
        assert!(matches!(
            fresh.inflate(&second, 100),
            Err(DeflateError::Corrupt(_))
        ));
    }

    #[test]
    fn no_context_takeover_inflates_each_message_alone() {
        let mut inflater = plain().with_client_no_context_takeover().inflater();
        for message in [&b"one"[..], b"two two two", b""] {
            let out = inflater
                .inflate(&deflate_message(message, 15), 100)
                .unwrap();
            assert_eq!(out, message);
            assert!(!inflater.holds_state());
        }
    }

    #[test]
    fn a_10_mib_bomb_is_refused_without_growing_past_the_limit() {
        // 10 MiB of zeros, compressed a chunk at a time so the test never holds them either.
        let mut compressor = Compress::new(Compression::default(), false);
        let zeros = vec![0u8; 64 * 1024];
        let mut bomb = Vec::with_capacity(64 * 1024);
        for _ in 0..159 {
            compressor
                .compress_vec(&zeros, &mut bomb, FlushCompress::None)
                .unwrap();
        }
        bomb.extend(compress_flushed(&mut compressor, &zeros));
        assert_eq!(compressor.total_in(), 10 * 1024 * 1024);
        assert!(bomb.len() < 64 * 1024, "bomb is {} bytes", bomb.len());
        let max_len = 100_000;
        let mut out = Vec::new();
        let result = plain().inflater().inflate_into(&bomb, max_len, &mut out);
        assert!(
            matches!(result, Err(DeflateError::TooBig { limit: 100_000 })),
            "{result:?}"
        );
        assert!(out.capacity() <= max_len + 1, "capacity {}", out.capacity());
    }

    #[test]
    fn a_message_of_exactly_the_limit_is_accepted() {
        let payload = vec![b'a'; 5000];
        let compressed = deflate_message(&payload, 15);
        let mut inflater = plain().inflater();
        assert_eq!(inflater.inflate(&compressed, 5000).unwrap(), payload);
        let mut inflater = plain().inflater();
        assert!(matches!(
            inflater.inflate(&compressed, 4999),
            Err(DeflateError::TooBig { limit: 4999 })
        ));
    }

    #[test]
    fn corrupt_input_is_an_error() {
        // BTYPE 11 is reserved: the very first block header is invalid.
        let result = plain().inflater().inflate(&[0xff, 0xff, 0xff, 0xff], 100);
        assert!(matches!(result, Err(DeflateError::Corrupt(_))));
    }

    #[test]
    fn a_final_block_ends_the_message_and_the_tail_is_ignored() {
        let mut compressor = Compress::new(Compression::default(), false);
        let mut compressed = Vec::with_capacity(64);
        compressor
            .compress_vec(b"Hello", &mut compressed, FlushCompress::Finish)
            .unwrap();
        let mut inflater = plain().inflater();
        assert_eq!(inflater.inflate(&compressed, 100).unwrap(), b"Hello");
        assert!(!inflater.holds_state());
        compressed.push(0x00);
        assert!(matches!(
            inflater.inflate(&compressed, 100),
            Err(DeflateError::TrailingData)
        ));
    }

    #[test]
    fn encode_compressed_sets_rsv1_on_data_frames_only() {
        let frame = encode_compressed(Opcode::Text, b"Hello", 15);
        assert_eq!(
            frame[..],
            [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]
        );
        assert_eq!(
            encode_compressed(Opcode::Ping, b"hi", 15),
            frame::encode(Opcode::Ping, b"hi")
        );
    }

    #[test]
    fn a_large_compressed_frame_uses_the_long_length_form() {
        let mut rng = fastrand::Rng::with_seed(3);
        let payload: Vec<u8> = (0..70_000).map(|_| rng.u8(..)).collect();
        let frame = encode_compressed(Opcode::Binary, &payload, 15);
        assert_eq!(frame[..2], [0xc2, 127]);
        let len = u64::from_be_bytes(frame[2..10].try_into().unwrap());
        assert_eq!(len as usize, frame.len() - 10);
    }
}
