//! Minimal client side of RFC 6455: the opening handshake (request text, `101` check,
//! `Sec-WebSocket-Accept` check, the `Sec-WebSocket-Extensions` answer handed back), masked
//! frame encoding into a reused buffer, and an in-place frame parser over a read buffer
//! ([`FrameReader`]) that yields many frames per read syscall without allocating per message.
//! With permessage-deflate agreed ([`FrameReader::enable_deflate`]) the reader inflates frames
//! with RSV1 set through the connection's [`Inflater`] and hands out the inflated message.
//! Everything above framing (what a payload means) lives elsewhere.

use crate::deflate::Inflater;
use anyhow::{bail, Context, Result};
use base64::Engine as _;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Continuation frame.
pub const OP_CONT: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest HTTP response head accepted during the handshake.
const MAX_HEAD: usize = 16 * 1024;

/// A fresh random `Sec-WebSocket-Key` (16 random bytes, base64).
pub fn new_key() -> String {
    let mut raw = [0u8; 16];
    for b in &mut raw {
        *b = fastrand::u8(..);
    }
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The `Sec-WebSocket-Accept` value a server must answer for `key`.
pub fn accept_for(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The upgrade request for `path` (path and query) on `host` (the `Host` header value), offering
/// `extensions` (a `Sec-WebSocket-Extensions` value) when given.
pub fn handshake_request(host: &str, path: &str, key: &str, extensions: Option<&str>) -> String {
    let offer = extensions
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    )
}

/// Checks a complete response head (without the final blank line): status 101 and the accept
/// key. Returns its `Sec-WebSocket-Extensions` value (several header lines joined with `, `),
/// `None` without one.
pub fn check_response(head: &[u8], key: &str) -> Result<Option<String>> {
    let text = std::str::from_utf8(head).context("handshake response is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split(' ').nth(1).unwrap_or_default();
    if code != "101" {
        bail!("handshake refused: {status:?}");
    }
    let want = accept_for(key);
    let mut accepted = false;
    let mut extensions: Option<String> = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("sec-websocket-accept") {
                if value != want {
                    bail!("bad Sec-WebSocket-Accept {value:?} (want {want:?})");
                }
                accepted = true;
            } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
                match &mut extensions {
                    Some(all) => {
                        all.push_str(", ");
                        all.push_str(value);
                    }
                    None => extensions = Some(value.to_string()),
                }
            }
        }
    }
    if !accepted {
        bail!("handshake response has no Sec-WebSocket-Accept");
    }
    Ok(extensions)
}

/// Appends one masked client frame (FIN set) carrying `payload` to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let mask = fastrand::u32(..).to_ne_bytes();
    out.push(0x80 | (opcode & 0x0f));
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// One parsed server frame, borrowing its payload from the read buffer (or, for a compressed
/// frame, from the connection's inflate buffer). Fragmented messages are not reassembled: the
/// first fragment carries the opcode and the start of the payload (where the bench's headers
/// are), continuation frames are seen with [`OP_CONT`].
#[derive(Debug)]
pub struct Frame<'a> {
    /// Opcode (low 4 bits of the first byte).
    pub opcode: u8,
    /// Unmasked payload; inflated when the frame was compressed.
    pub payload: &'a [u8],
    /// RSV1 was set (permessage-deflate): `payload` is what the frame's bytes inflated to.
    pub compressed: bool,
    /// Payload bytes on the wire (before inflating).
    pub wire_len: usize,
}

/// Result of trying to parse a frame at the start of a byte slice.
enum Parsed {
    /// A whole frame: header length, payload length, FIN and RSV1.
    Whole {
        opcode: u8,
        head: usize,
        len: usize,
        fin: bool,
        rsv1: bool,
    },
    /// Not enough bytes yet; at least this many are needed in total.
    Need(usize),
}

/// Parses the frame header at the start of `buf`. `deflate`: permessage-deflate was agreed, so
/// RSV1 may be set on the first frame of a data message.
fn parse_header(buf: &[u8], max_payload: usize, deflate: bool) -> Result<Parsed> {
    if buf.len() < 2 {
        return Ok(Parsed::Need(2));
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b1 & 0x80 != 0 {
        bail!("server sent a masked frame");
    }
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 {
        bail!("server frame has RSV2 or RSV3 set (no extension defines them)");
    }
    if rsv1 && !deflate {
        bail!("server frame has RSV1 set (permessage-deflate was not negotiated)");
    }
    if rsv1 && !matches!(b0 & 0x0f, OP_TEXT | OP_BINARY) {
        bail!("server set RSV1 on a continuation or control frame");
    }
    let (head, len) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(Parsed::Need(4));
            }
            (4, usize::from(u16::from_be_bytes([buf[2], buf[3]])))
        }
        127 => {
            if buf.len() < 10 {
                return Ok(Parsed::Need(10));
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            (
                10,
                usize::try_from(len).context("frame length overflows usize")?,
            )
        }
        n => (2, usize::from(n)),
    };
    if len > max_payload {
        bail!("server frame of {len} bytes exceeds the limit of {max_payload}");
    }
    if buf.len() < head + len {
        return Ok(Parsed::Need(head + len));
    }
    Ok(Parsed::Whole {
        opcode: b0 & 0x0f,
        head,
        len,
        fin: b0 & 0x80 != 0,
        rsv1,
    })
}

/// A read buffer that server frames are parsed from in place.
///
/// The buffer is allocated once; it grows only when a single frame is larger than it. So does
/// the inflate buffer, when permessage-deflate is on.
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_payload: usize,
    /// With permessage-deflate agreed: inflates frames with RSV1 set.
    inflater: Option<Inflater>,
}

impl FrameReader {
    /// A reader with `capacity` bytes of buffer that accepts frames up to `max_payload`.
    pub fn new(capacity: usize, max_payload: usize) -> Self {
        Self {
            buf: vec![0; capacity.max(64)],
            start: 0,
            end: 0,
            max_payload,
            inflater: None,
        }
    }

    /// permessage-deflate was agreed: from now on frames with RSV1 set are accepted and
    /// inflated (each message with a fresh state: the server keeps no context), up to the
    /// reader's payload limit.
    pub fn enable_deflate(&mut self) {
        self.inflater = Some(Inflater::new(self.max_payload));
    }

    /// Bytes buffered but not yet consumed.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks `n` pending bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once from `r` into the free space (compacting or growing first when needed).
    /// Returns the number of bytes read; 0 means end of stream.
    pub async fn read_from<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> std::io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let need = match parse_header(self.pending(), self.max_payload, self.inflater.is_some()) {
            Ok(Parsed::Need(n)) => n,
            _ => 0,
        };
        if self.end == self.buf.len() || self.start + need > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if need > self.buf.len() || self.end == self.buf.len() {
                let grown = need.max(self.buf.len() * 2);
                self.buf.resize(grown, 0);
            }
        }
        let n = r.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Parses the next whole frame from the buffer, if there is one, and consumes it; a
    /// compressed one is inflated.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        match parse_header(self.pending(), self.max_payload, self.inflater.is_some())? {
            Parsed::Need(_) => Ok(None),
            Parsed::Whole {
                opcode,
                head,
                len,
                fin,
                rsv1,
            } => {
                let from = self.start + head;
                self.start = from + len;
                if self.start == self.end {
                    // Everything consumed: the next read starts at the front. Only the cursors
                    // move; the bytes the returned payload points at stay as they are.
                    self.start = 0;
                    self.end = 0;
                }
                let raw = &self.buf[from..from + len];
                let payload = match (&mut self.inflater, rsv1) {
                    (Some(inflater), true) => inflater.inflate(raw, fin)?,
                    _ => raw,
                };
                Ok(Some(Frame {
                    opcode,
                    payload,
                    compressed: rsv1,
                    wire_len: len,
                }))
            }
        }
    }

    /// Reads the HTTP response head of a handshake from `r`, checks it against `key`, and keeps
    /// any bytes after the head (early frames) buffered. Returns the response's
    /// `Sec-WebSocket-Extensions` value, if any.
    pub async fn read_handshake<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        key: &str,
    ) -> Result<Option<String>> {
        loop {
            if let Some(pos) = find_head_end(self.pending()) {
                let extensions = check_response(&self.pending()[..pos], key)?;
                self.consume(pos + 4);
                return Ok(extensions);
            }
            if self.end - self.start > MAX_HEAD {
                bail!("handshake response head is larger than {MAX_HEAD} bytes");
            }
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = r
                .read(&mut self.buf[self.end..])
                .await
                .context("reading handshake")?;
            if n == 0 {
                bail!("connection closed during the handshake");
            }
            self.end += n;
        }
    }
}

/// Describes a close frame's payload: `close 1008 "reason"`, or `close (no code)`.
pub fn describe_close(payload: &[u8]) -> String {
    if payload.len() < 2 {
        return "close (no code)".to_string();
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let reason = String::from_utf8_lossy(&payload[2..]);
    if reason.is_empty() {
        format!("close {code}")
    } else {
        format!("close {code} {reason:?}")
    }
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n")
}

/// An unmasked server frame, for the tests' own servers.
#[cfg(test)]
pub(crate) fn server_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    server_frame_rsv(opcode, fin, 0, payload)
}

/// An unmasked server frame with the RSV bits `rsv` (e.g. `0x40`: RSV1), for the tests.
#[cfg(test)]
pub(crate) fn server_frame_rsv(opcode: u8, fin: bool, rsv: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![(if fin { 0x80 } else { 0 }) | rsv | opcode];
    let len = payload.len();
    if len < 126 {
        v.push(len as u8);
    } else if len <= 65535 {
        v.push(126);
        v.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        v.push(127);
        v.extend_from_slice(&(len as u64).to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_descriptions() {
        assert_eq!(describe_close(b""), "close (no code)");
        assert_eq!(describe_close(&[0x03, 0xe8]), "close 1000");
        assert_eq!(describe_close(b"\x03\xf0slow"), "close 1008 \"slow\"");
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn response_check() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        assert_eq!(check_response(ok, key).ok(), Some(None));
        let ext = b"HTTP/1.1 101 Switching Protocols\r\nsec-websocket-extensions: permessage-deflate; a\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Extensions: b";
        assert_eq!(
            check_response(ext, key).ok(),
            Some(Some("permessage-deflate; a, b".to_string()))
        );
        assert!(check_response(b"HTTP/1.1 404 Not Found\r\n", key).is_err());
        let bad = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope";
        assert!(check_response(bad, key).is_err());
    }

    #[test]
    fn client_frames_are_masked() {
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            encode_frame(&mut out, OP_TEXT, &payload);
            assert_eq!(out[0], 0x81);
            assert!(out[1] & 0x80 != 0);
            let (head, plen) = match out[1] & 0x7f {
                126 => (4, u16::from_be_bytes([out[2], out[3]]) as usize),
                127 => (
                    10,
                    u64::from_be_bytes(out[2..10].try_into().expect("8 bytes")) as usize,
                ),
                n => (2, n as usize),
            };
            assert_eq!(plen, len);
            let mask = &out[head..head + 4];
            let got: Vec<u8> = out[head + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i & 3])
                .collect();
            assert_eq!(got, payload);
        }
    }

    #[tokio::test]
    async fn parses_many_frames_across_reads() {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for i in 0..300usize {
            let p: Vec<u8> = vec![b'a' + (i % 26) as u8; (i * 37) % 700];
            wire.extend(server_frame(OP_TEXT, true, &p));
            want.push(p);
        }
        wire.extend(server_frame(OP_PING, true, b"hi"));
        // Feed in odd-sized chunks through a small buffer.
        let mut reader = FrameReader::new(64, 1 << 20);
        let mut got = Vec::new();
        let mut src: &[u8] = &wire;
        let mut ping = false;
        loop {
            while let Some(f) = reader.next_frame().expect("valid") {
                if f.opcode == OP_PING {
                    ping = true;
                } else {
                    got.push(f.payload.to_vec());
                }
            }
            // At most 97 bytes per read; what the buffer cannot take stays in `src`.
            let mut chunk = (&mut src).take(97);
            if reader.read_from(&mut chunk).await.expect("read") == 0 {
                break;
            }
        }
        assert_eq!(got, want);
        assert!(ping);
    }

    #[test]
    fn rejects_masked_and_oversized() {
        let mut r = FrameReader::new(64, 10);
        r.buf[..2].copy_from_slice(&[0x81, 0x85]);
        r.end = 2;
        assert!(r.next_frame().is_err());
        let mut r = FrameReader::new(64, 10);
        r.buf[..2].copy_from_slice(&[0x81, 20]);
        r.end = 2;
        assert!(r.next_frame().is_err());
    }

    #[test]
    fn requests_offer_extensions_when_asked() {
        let plain = handshake_request("h", "/ws", "k", None);
        assert!(!plain.contains("Extensions"));
        assert!(plain.ends_with("Version: 13\r\n\r\n"));
        let offer = handshake_request("h", "/ws", "k", Some("permessage-deflate"));
        assert!(
            offer.ends_with("Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
        );
    }

    fn reader_with(wire: &[u8], deflate: bool) -> FrameReader {
        let mut r = FrameReader::new(wire.len(), 1 << 20);
        r.buf[..wire.len()].copy_from_slice(wire);
        r.end = wire.len();
        if deflate {
            r.enable_deflate();
        }
        r
    }

    #[test]
    fn compressed_frames_are_inflated_only_with_deflate() {
        let msg = b"P0123456789abcdef lorem ipsum lorem ipsum lorem ipsum".repeat(3);
        let packed = crate::deflate::compress(&msg);
        let mut wire = server_frame_rsv(OP_TEXT, true, 0x40, &packed);
        wire.extend(server_frame(OP_TEXT, true, b"plain"));
        assert!(reader_with(&wire, false).next_frame().is_err());
        let mut r = reader_with(&wire, true);
        let f = r.next_frame().expect("valid").expect("frame");
        assert!(f.compressed);
        assert_eq!(
            (f.opcode, f.payload, f.wire_len),
            (OP_TEXT, &msg[..], packed.len())
        );
        let f = r.next_frame().expect("valid").expect("frame");
        assert!(!f.compressed);
        assert_eq!(f.payload, b"plain");
        // RSV1 on a control or continuation frame, RSV2 or RSV3 anywhere: refused.
        for (op, rsv) in [
            (OP_PING, 0x40),
            (OP_CONT, 0x40),
            (OP_TEXT, 0x20),
            (OP_TEXT, 0x10),
        ] {
            let wire = server_frame_rsv(op, true, rsv, b"x");
            assert!(reader_with(&wire, true).next_frame().is_err(), "{op} {rsv}");
        }
        // A corrupt compressed payload is an error, not a message.
        let wire = server_frame_rsv(OP_TEXT, true, 0x40, &[0xff; 8]);
        assert!(reader_with(&wire, true).next_frame().is_err());
    }

    #[tokio::test]
    async fn handshake_keeps_early_frames() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut wire = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n".to_vec();
        wire.extend(server_frame(OP_TEXT, true, b"early"));
        let mut r = FrameReader::new(16, 1024);
        let mut src: &[u8] = &wire;
        let ext = r.read_handshake(&mut src, key).await.expect("handshake");
        assert_eq!(ext, None);
        loop {
            if let Some(f) = r.next_frame().expect("valid") {
                assert_eq!(f.payload, b"early");
                break;
            }
            assert!(r.read_from(&mut src).await.expect("read") > 0);
        }
    }
}
