//! The RFC 6455 frame format: parsing client frame headers, unmasking, and encoding server
//! frames.
//!
//! Server frames are never masked, so a frame for a publication is the same bytes for every
//! subscriber: [`encode`] builds it once into a [`Bytes`] that all outbound queues share.

use bytes::{BufMut, Bytes, BytesMut};

/// A frame's opcode (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// Continuation of a fragmented message.
    Continuation,
    /// A text message (UTF-8).
    Text,
    /// A binary message.
    Binary,
    /// Close (control).
    Close,
    /// Ping (control).
    Ping,
    /// Pong (control).
    Pong,
}

impl Opcode {
    /// The opcode of a frame header's low four bits, if it is one RFC 6455 defines.
    pub fn from_bits(bits: u8) -> Option<Opcode> {
        match bits {
            0x0 => Some(Opcode::Continuation),
            0x1 => Some(Opcode::Text),
            0x2 => Some(Opcode::Binary),
            0x8 => Some(Opcode::Close),
            0x9 => Some(Opcode::Ping),
            0xA => Some(Opcode::Pong),
            _ => None,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Control frames (close, ping, pong) may not be fragmented and carry at most 125 bytes.
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// The header of one client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of its message.
    pub fin: bool,
    /// The opcode.
    pub opcode: Opcode,
    /// The client's masking key.
    pub mask: [u8; 4],
    /// Payload length in bytes.
    pub payload_len: usize,
    /// Header length in bytes (2 to 14).
    pub header_len: usize,
    /// RSV1: with permessage-deflate, the message this frame starts is compressed.
    pub rsv1: bool,
}

/// A client frame that breaks the protocol or a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A rule of RFC 6455 is broken; the text says which.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The payload is longer than the message limit.
    #[error("frame exceeds the message size limit")]
    TooBig,
}

/// The opcode and payload of one whole, unmasked frame this server encoded (what a
/// connection's queue holds), for the transports that carry the payload without WebSocket
/// framing. `None` for bytes that are not one such frame.
pub fn server_frame_payload(frame: &[u8]) -> Option<(Opcode, &[u8])> {
    let (&b0, &b1) = (frame.first()?, frame.get(1)?);
    let opcode = Opcode::from_bits(b0 & 0x0F)?;
    if b1 & 0x80 != 0 {
        return None;
    }
    let (len, start): (usize, usize) = match b1 & 0x7F {
        126 => (
            usize::from(u16::from_be_bytes([*frame.get(2)?, *frame.get(3)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = frame.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(bytes)).ok()?, 10)
        }
        n => (usize::from(n), 2),
    };
    Some((opcode, frame.get(start..start.checked_add(len)?)?))
}

/// Parses a client frame header from the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold the whole header.
///
/// # Errors
/// [`FrameError::Protocol`] for reserved bits, unknown opcodes, unmasked frames, fragmented or
/// oversized control frames and non-minimal-safe 64-bit lengths; [`FrameError::TooBig`] when
/// the payload is longer than `max_payload`.
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<FrameHeader>, FrameError> {
    parse_header_with(buf, max_payload, false)
}

/// [`parse_header`] on a connection where RSV1 may be set (permessage-deflate negotiated);
/// whether it is legal on this frame's opcode is the reader's to check.
///
/// # Errors
/// As [`parse_header`], with RSV1 allowed when `rsv1_allowed`.
pub fn parse_header_with(
    buf: &[u8],
    max_payload: usize,
    rsv1_allowed: bool,
) -> Result<Option<FrameHeader>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let reserved = if rsv1_allowed { 0x30 } else { 0x70 };
    if b0 & reserved != 0 {
        return Err(FrameError::Protocol(
            "reserved bits set without a negotiated extension",
        ));
    }
    let rsv1 = b0 & RSV1 != 0;
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("client frames must be masked"));
    }
    let (len, len_bytes) = match b1 & 0x7F {
        126 => {
            let Some(bytes) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 2)
        }
        127 => {
            let Some(bytes) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut array = [0u8; 8];
            array.copy_from_slice(bytes);
            let len = u64::from_be_bytes(array);
            if len >> 63 != 0 {
                return Err(FrameError::Protocol("64-bit length with the high bit set"));
            }
            (len, 8)
        }
        short => (u64::from(short), 0),
    };
    if opcode.is_control() {
        if !fin {
            return Err(FrameError::Protocol("fragmented control frame"));
        }
        if len > 125 {
            return Err(FrameError::Protocol("control frame longer than 125 bytes"));
        }
    }
    let payload_len = usize::try_from(len).map_err(|_| FrameError::TooBig)?;
    if payload_len > max_payload {
        return Err(FrameError::TooBig);
    }
    let mask_at = 2 + len_bytes;
    let Some(mask_bytes) = buf.get(mask_at..mask_at + 4) else {
        return Ok(None);
    };
    let mut mask = [0u8; 4];
    mask.copy_from_slice(mask_bytes);
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        payload_len,
        header_len: mask_at + 4,
        rsv1,
    }))
}

/// Unmasks `payload` in place, eight bytes at a time.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// The first header byte's RSV1 bit: set on the first frame of a message compressed by
/// permessage-deflate (RFC 7692 §6), only when that extension was negotiated.
pub const RSV1: u8 = 0x40;

/// Encodes one unfragmented, unmasked server frame.
pub fn encode(opcode: Opcode, payload: &[u8]) -> Bytes {
    encode_with_flags(opcode, payload, 0)
}

/// Encodes one unfragmented, unmasked server frame with [`RSV1`] set: `payload` is a message
/// compressed by permessage-deflate (`ws::deflate::encode_compressed` builds one). Otherwise
/// the same bytes as [`encode`].
pub fn encode_rsv1(opcode: Opcode, payload: &[u8]) -> Bytes {
    encode_with_flags(opcode, payload, RSV1)
}

fn encode_with_flags(opcode: Opcode, payload: &[u8], flags: u8) -> Bytes {
    let mut out = BytesMut::with_capacity(10 + payload.len());
    put_header(&mut out, opcode, payload.len());
    out[0] |= flags;
    out.put_slice(payload);
    out.freeze()
}

/// Encodes one masked client frame (`fin` and `opcode` as given): what a client sends. Used
/// by the Rust client and by tests that play a client.
pub fn encode_masked(fin: bool, opcode: Opcode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(14 + payload.len());
    put_header(&mut out, opcode, payload.len());
    if !fin {
        out[0] &= 0x7F;
    }
    out[1] |= 0x80;
    out.put_slice(&mask);
    let start = out.len();
    out.put_slice(payload);
    unmask(&mut out[start..], mask);
    out.to_vec()
}

/// Encodes a close frame carrying `code` and `reason` (the reason is cut to fit 125 bytes).
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode(Opcode::Close, &payload)
}

fn put_header(out: &mut BytesMut, opcode: Opcode, len: usize) {
    out.put_u8(0x80 | opcode.bits());
    if len < 126 {
        out.put_u8(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.put_u8(126);
        out.put_u16(short);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// Whether a close code received from a client is one a peer may send (RFC 6455 §7.4).
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let opcode = Opcode::from_bits(opcode).unwrap();
        encode_masked(fin, opcode, payload, [1, 2, 3, 4])
    }

    #[test]
    fn short_header_needs_more_bytes() {
        let frame = masked(0x1, true, b"hello");
        for cut in 0..6 {
            assert_eq!(parse_header(&frame[..cut], 1024), Ok(None), "cut at {cut}");
        }
        let header = parse_header(&frame, 1024).unwrap().unwrap();
        assert_eq!((header.header_len, header.payload_len), (6, 5));
    }

    #[test]
    fn extended_lengths_parse() {
        let frame = masked(0x2, true, &vec![0u8; 300]);
        assert_eq!(
            parse_header(&frame, 1024).unwrap().unwrap().payload_len,
            300
        );
        let frame = masked(0x2, true, &vec![0u8; 70_000]);
        let header = parse_header(&frame, 100_000).unwrap().unwrap();
        assert_eq!((header.header_len, header.payload_len), (14, 70_000));
    }

    #[test]
    fn oversized_payload_is_too_big_before_it_arrives() {
        let frame = masked(0x2, true, &vec![0u8; 2000]);
        assert_eq!(parse_header(&frame[..8], 1000), Err(FrameError::TooBig));
    }

    #[test]
    fn unmasked_and_reserved_and_unknown_are_protocol_errors() {
        assert!(matches!(
            parse_header(&[0x81, 0x05], 10),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse_header(&[0xC1, 0x80], 10),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse_header(&[0x83, 0x80], 10),
            Err(FrameError::Protocol(_))
        ));
    }

    #[test]
    fn control_frames_must_be_final_and_short() {
        assert!(matches!(
            parse_header(&masked(0x9, false, b""), 10),
            Err(FrameError::Protocol(_))
        ));
        let long = masked(0x9, true, &[0u8; 126]);
        assert!(matches!(
            parse_header(&long, 1000),
            Err(FrameError::Protocol(_))
        ));
    }

    #[test]
    fn unmask_round_trips_every_length() {
        for len in 0..40 {
            let original: Vec<u8> = (0..len as u8).collect();
            let mut data = original.clone();
            unmask(&mut data, [9, 8, 7, 6]);
            unmask(&mut data, [9, 8, 7, 6]);
            assert_eq!(data, original);
        }
    }

    #[test]
    fn encode_uses_the_shortest_length_form() {
        assert_eq!(encode(Opcode::Text, b"hi")[..], [0x81, 2, b'h', b'i']);
        assert_eq!(encode(Opcode::Binary, &[0; 200])[..4], [0x82, 126, 0, 200]);
        assert_eq!(encode(Opcode::Binary, &[0; 70_000])[..2], [0x82, 127]);
    }

    #[test]
    fn encode_rsv1_differs_from_encode_only_in_rsv1() {
        for len in [2, 200, 70_000] {
            let payload = vec![7u8; len];
            let (plain, compressed) = (
                encode(Opcode::Binary, &payload),
                encode_rsv1(Opcode::Binary, &payload),
            );
            assert_eq!(compressed[0], plain[0] | RSV1);
            assert_eq!(compressed[1..], plain[1..]);
        }
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let frame = encode_close(1000, &"é".repeat(100));
        assert!(frame.len() <= 127);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }
}
