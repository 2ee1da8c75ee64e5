//! Reassembles client frames into messages and control events.
//!
//! [`MessageReader::feed`] takes whatever bytes the socket gave, parses every complete frame,
//! unmasks it in place and hands each finished message or control frame to a callback. An
//! unfragmented message is handed over straight from the read buffer (no copy); only fragmented
//! messages are gathered in a buffer of the reader's own, which is freed once delivered. Text is
//! checked for UTF-8 fragment by fragment, so a bad byte ends the connection without waiting for
//! the rest of the message.
//!
//! With permessage-deflate negotiated, a message whose first frame has RSV1 set is compressed:
//! its frames are gathered as they come, inflated whole (never past the message limit), and
//! only then checked for UTF-8 and handed over. RSV1 anywhere else is a protocol error.
//!
//! A fragmented message may have at most [`max_fragments`] frames: without a count, empty
//! continuation frames would never reach the size limit, and a client could keep the node
//! parsing frames at its line rate without ever finishing a message (which is what the
//! message rate counts).

use super::deflate::{DeflateError, Inflater};
use super::frame::{self, FrameError, Opcode};
use crate::error::CloseReason;

/// One thing the client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole text message (valid UTF-8).
    Text(&'a [u8]),
    /// A whole binary message.
    Binary(&'a [u8]),
    /// A ping with its payload (to be answered by a pong with the same payload).
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame: its code (if any) and reason. Nothing after it is read.
    Close(Option<u16>),
}

/// Frames of one message are, on average, at least this long: at most
/// `max_message / MIN_AVERAGE_FRAGMENT` fragments (RFC 6455 test suites send 64-byte fragments).
const MIN_AVERAGE_FRAGMENT: usize = 64;

/// Fragments one message may never exceed whatever the size limit, so that short messages split
/// byte by byte stay valid.
const MIN_FRAGMENTS: usize = 64;

/// The most frames one message may arrive in, for a message limit of `max_message` bytes; more
/// closes the connection as for a message too big (1009).
pub fn max_fragments(max_message: usize) -> usize {
    (max_message / MIN_AVERAGE_FRAGMENT).max(MIN_FRAGMENTS)
}

/// Frame reassembly state for one connection.
#[derive(Debug, Default)]
pub struct MessageReader {
    max_message: usize,
    /// The fragmented message in progress: its opcode and the bytes so far.
    fragmented: Option<(Opcode, Vec<u8>)>,
    /// How many leading bytes of the fragmented text have been checked as UTF-8.
    utf8_checked: usize,
    closed: bool,
    /// permessage-deflate, when negotiated.
    /// Boxed so connections without deflate carry one pointer for it.
    inflater: Option<Box<Inflater>>,
    /// The message in progress is compressed.
    compressed: bool,
    /// Frames of the fragmented message in progress so far.
    fragments: usize,
}

/// Checks that `bytes` is UTF-8, allowing an incomplete character at the end when `partial`.
/// Returns how many bytes are known good.
fn check_utf8(bytes: &[u8], partial: bool) -> Result<usize, CloseReason> {
    match std::str::from_utf8(bytes) {
        Ok(_) => Ok(bytes.len()),
        Err(error) if partial && error.error_len().is_none() => Ok(error.valid_up_to()),
        Err(_) => Err(CloseReason::InvalidUtf8),
    }
}

impl MessageReader {
    /// A reader that refuses messages longer than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        MessageReader {
            max_message,
            ..Default::default()
        }
    }

    /// A reader for a connection that negotiated permessage-deflate.
    pub fn with_inflater(mut self, inflater: Inflater) -> Self {
        self.inflater = Some(Box::new(inflater));
        self
    }

    /// Whether a close frame has been read (nothing more will be).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Bytes of a fragmented message held between frames (for memory accounting).
    pub fn buffered(&self) -> usize {
        self.fragmented
            .as_ref()
            .map_or(0, |(_, bytes)| bytes.capacity())
    }

    /// Parses the complete frames at the start of `buf` and calls `on_event` for each finished
    /// message or control frame. Returns how many bytes were consumed; the caller keeps the rest
    /// and calls again with more bytes appended.
    ///
    /// # Errors
    /// The [`CloseReason`] to close with: a protocol error, invalid UTF-8, a message over the
    /// limit, or whatever `on_event` returned.
    pub fn feed(
        &mut self,
        buf: &mut [u8],
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), CloseReason>,
    ) -> Result<usize, CloseReason> {
        let mut at = 0;
        while !self.closed {
            let rsv1_allowed = self.inflater.is_some();
            let header = match frame::parse_header_with(&buf[at..], self.max_message, rsv1_allowed)
            {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(FrameError::TooBig) => return Err(CloseReason::MessageTooBig),
                Err(FrameError::Protocol(_)) => return Err(CloseReason::ProtocolError),
            };
            let start = at + header.header_len;
            let end = start + header.payload_len;
            if buf.len() < end {
                break;
            }
            at = end;
            let payload = &mut buf[start..end];
            frame::unmask(payload, header.mask);
            if header.rsv1 {
                // Only the first frame of a data message may say "compressed".
                if !matches!(header.opcode, Opcode::Text | Opcode::Binary) {
                    return Err(CloseReason::ProtocolError);
                }
                if self.fragmented.is_some() {
                    return Err(CloseReason::ProtocolError);
                }
                self.on_compressed_frame(header.fin, header.opcode, payload, on_event)?;
            } else if self.compressed && header.opcode == Opcode::Continuation {
                self.on_compressed_frame(header.fin, header.opcode, payload, on_event)?;
            } else {
                self.on_frame(header.fin, header.opcode, payload, on_event)?;
            }
        }
        Ok(at)
    }

    /// The number of bytes needed before the frame at the start of `buf` is complete, when its
    /// header is known; lets the caller size its buffer once for a large frame.
    pub fn frame_len_hint(&self, buf: &[u8]) -> Option<usize> {
        match frame::parse_header_with(buf, self.max_message, self.inflater.is_some()) {
            Ok(Some(header)) => Some(header.header_len + header.payload_len),
            _ => None,
        }
    }

    fn on_frame(
        &mut self,
        fin: bool,
        opcode: Opcode,
        payload: &[u8],
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), CloseReason>,
    ) -> Result<(), CloseReason> {
        match opcode {
            Opcode::Ping => on_event(Event::Ping(payload)),
            Opcode::Pong => on_event(Event::Pong),
            Opcode::Close => {
                self.closed = true;
                on_event(Event::Close(parse_close(payload)?))
            }
            Opcode::Text | Opcode::Binary if fin => {
                if self.fragmented.is_some() {
                    return Err(CloseReason::ProtocolError);
                }
                if opcode == Opcode::Text {
                    check_utf8(payload, false)?;
                    on_event(Event::Text(payload))
                } else {
                    on_event(Event::Binary(payload))
                }
            }
            Opcode::Text | Opcode::Binary => {
                if self.fragmented.is_some() {
                    return Err(CloseReason::ProtocolError);
                }
                self.utf8_checked = 0;
                self.fragments = 0;
                self.fragmented = Some((opcode, Vec::new()));
                self.append_fragment(fin, payload, on_event)
            }
            Opcode::Continuation => {
                if self.fragmented.is_none() {
                    return Err(CloseReason::ProtocolError);
                }
                self.append_fragment(fin, payload, on_event)
            }
        }
    }

    /// A frame of a compressed message: gathered until the last, then inflated and checked.
    fn on_compressed_frame(
        &mut self,
        fin: bool,
        opcode: Opcode,
        payload: &[u8],
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), CloseReason>,
    ) -> Result<(), CloseReason> {
        let opcode = match (opcode, self.fragmented.is_some()) {
            (Opcode::Continuation, true) => self.gather(payload)?,
            (Opcode::Text | Opcode::Binary, false) => {
                if !fin {
                    self.compressed = true;
                    self.fragments = 1;
                    self.fragmented = Some((opcode, payload.to_vec()));
                    return Ok(());
                }
                return self.inflate_and_deliver(opcode, payload, on_event);
            }
            _ => return Err(CloseReason::ProtocolError),
        };
        if !fin {
            return Ok(());
        }
        self.compressed = false;
        let Some((_, bytes)) = self.fragmented.take() else {
            return Err(CloseReason::ProtocolError);
        };
        self.inflate_and_deliver(opcode, &bytes, on_event)
    }

    fn inflate_and_deliver(
        &mut self,
        opcode: Opcode,
        compressed: &[u8],
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), CloseReason>,
    ) -> Result<(), CloseReason> {
        let Some(inflater) = self.inflater.as_mut() else {
            return Err(CloseReason::ProtocolError);
        };
        let message =
            inflater
                .inflate(compressed, self.max_message)
                .map_err(|error| match error {
                    DeflateError::TooBig { .. } => CloseReason::MessageTooBig,
                    DeflateError::Corrupt(_) | DeflateError::TrailingData => {
                        CloseReason::ProtocolError
                    }
                })?;
        if opcode == Opcode::Text {
            check_utf8(&message, false)?;
            on_event(Event::Text(&message))
        } else {
            on_event(Event::Binary(&message))
        }
    }

    /// Adds a fragment to the message in progress, within the message limit and the fragment
    /// count; returns the message's opcode.
    fn gather(&mut self, payload: &[u8]) -> Result<Opcode, CloseReason> {
        let Some((opcode, bytes)) = self.fragmented.as_mut() else {
            return Err(CloseReason::ProtocolError);
        };
        self.fragments += 1;
        if bytes.len() + payload.len() > self.max_message
            || self.fragments > max_fragments(self.max_message)
        {
            return Err(CloseReason::MessageTooBig);
        }
        bytes.extend_from_slice(payload);
        Ok(*opcode)
    }

    fn append_fragment(
        &mut self,
        fin: bool,
        payload: &[u8],
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), CloseReason>,
    ) -> Result<(), CloseReason> {
        if self.gather(payload)? == Opcode::Text {
            let checked = self.utf8_checked;
            let bytes = self
                .fragmented
                .as_ref()
                .map_or(&[][..], |(_, b)| &b[checked..]);
            let good = check_utf8(bytes, !fin)?;
            self.utf8_checked += good;
        }
        if !fin {
            return Ok(());
        }
        let Some((opcode, bytes)) = self.fragmented.take() else {
            return Err(CloseReason::ProtocolError);
        };
        match opcode {
            Opcode::Text => on_event(Event::Text(&bytes)),
            _ => on_event(Event::Binary(&bytes)),
        }
    }
}

/// Reads a close frame's payload: empty, or a valid code followed by a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<u16>, CloseReason> {
    match payload {
        [] => Ok(None),
        [_] => Err(CloseReason::ProtocolError),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !frame::is_valid_close_code(code) {
                return Err(CloseReason::ProtocolError);
            }
            check_utf8(reason, false)?;
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked frame whose first byte (FIN and opcode) is `first`.
    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame =
            frame::encode_masked(true, Opcode::Binary, payload, [0x11, 0x22, 0x33, 0x44]);
        frame[0] = first;
        frame
    }

    /// Feeds `bytes` one byte at a time (the worst split) and collects what comes out.
    fn collect(reader: &mut MessageReader, bytes: &[u8]) -> Result<Vec<String>, CloseReason> {
        let mut out = Vec::new();
        let mut pending = Vec::new();
        for byte in bytes {
            pending.push(*byte);
            let used = reader.feed(&mut pending, &mut |event| {
                out.push(match event {
                    Event::Text(t) => format!("text:{}", String::from_utf8_lossy(t)),
                    Event::Binary(b) => format!("binary:{}", b.len()),
                    Event::Ping(p) => format!("ping:{}", p.len()),
                    Event::Pong => "pong".into(),
                    Event::Close(code) => format!("close:{code:?}"),
                });
                Ok(())
            })?;
            pending.drain(..used);
        }
        Ok(out)
    }

    #[test]
    fn whole_messages_come_out_in_order_however_the_bytes_are_split() {
        let mut bytes = masked(0x81, b"one");
        bytes.extend(masked(0x82, &[0; 300]));
        bytes.extend(masked(0x89, b"p"));
        bytes.extend(masked(0x81, b"two"));
        let events = collect(&mut MessageReader::new(1000), &bytes).unwrap();
        assert_eq!(events, ["text:one", "binary:300", "ping:1", "text:two"]);
    }

    #[test]
    fn fragments_are_joined_and_control_frames_may_interleave() {
        let mut bytes = masked(0x01, b"hel");
        bytes.extend(masked(0x89, b""));
        bytes.extend(masked(0x00, b"lo "));
        bytes.extend(masked(0x80, b"world"));
        let events = collect(&mut MessageReader::new(1000), &bytes).unwrap();
        assert_eq!(events, ["ping:0", "text:hello world"]);
    }

    #[test]
    fn a_character_split_across_fragments_is_valid() {
        let euro = "€".as_bytes();
        let mut bytes = masked(0x01, &euro[..1]);
        bytes.extend(masked(0x80, &euro[1..]));
        assert_eq!(
            collect(&mut MessageReader::new(100), &bytes).unwrap(),
            ["text:€"]
        );
    }

    #[test]
    fn invalid_utf8_fails_at_the_fragment_that_holds_it() {
        let mut reader = MessageReader::new(100);
        let mut first = masked(0x01, &[b'a', 0xFF]);
        let result = reader.feed(&mut first, &mut |_| Ok(()));
        assert_eq!(result, Err(CloseReason::InvalidUtf8));
    }

    #[test]
    fn continuation_without_a_start_is_a_protocol_error() {
        let result = collect(&mut MessageReader::new(100), &masked(0x80, b"x"));
        assert_eq!(result, Err(CloseReason::ProtocolError));
    }

    #[test]
    fn a_new_message_inside_a_fragmented_one_is_a_protocol_error() {
        let mut bytes = masked(0x01, b"a");
        bytes.extend(masked(0x81, b"b"));
        assert_eq!(
            collect(&mut MessageReader::new(100), &bytes),
            Err(CloseReason::ProtocolError)
        );
    }

    #[test]
    fn fragments_over_the_limit_are_too_big() {
        let mut bytes = masked(0x02, &[0; 60]);
        bytes.extend(masked(0x80, &[0; 60]));
        assert_eq!(
            collect(&mut MessageReader::new(100), &bytes),
            Err(CloseReason::MessageTooBig)
        );
    }

    #[test]
    fn a_message_in_more_fragments_than_the_bound_is_too_big() {
        // 1000-byte limit: 64 fragments at most, even empty ones.
        let mut bytes = masked(0x01, b"");
        for _ in 0..62 {
            bytes.extend(masked(0x00, b""));
        }
        let mut at_bound = bytes.clone();
        at_bound.extend(masked(0x80, b"ok"));
        assert_eq!(
            collect(&mut MessageReader::new(1000), &at_bound).unwrap(),
            ["text:ok"]
        );
        bytes.extend(masked(0x00, b""));
        bytes.extend(masked(0x80, b"late"));
        assert_eq!(
            collect(&mut MessageReader::new(1000), &bytes),
            Err(CloseReason::MessageTooBig)
        );
    }

    #[test]
    fn close_codes_are_checked() {
        let ok = masked(0x88, &1000u16.to_be_bytes());
        assert_eq!(
            collect(&mut MessageReader::new(100), &ok).unwrap(),
            ["close:Some(1000)"]
        );
        let reserved = masked(0x88, &1005u16.to_be_bytes());
        assert_eq!(
            collect(&mut MessageReader::new(100), &reserved),
            Err(CloseReason::ProtocolError)
        );
        assert_eq!(
            collect(&mut MessageReader::new(100), &masked(0x88, &[3])),
            Err(CloseReason::ProtocolError)
        );
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.push(0xFF);
        assert_eq!(
            collect(&mut MessageReader::new(100), &masked(0x88, &bad_reason)),
            Err(CloseReason::InvalidUtf8)
        );
    }

    #[test]
    fn nothing_is_read_after_a_close() {
        let mut bytes = masked(0x88, b"");
        bytes.extend(masked(0x81, b"late"));
        assert_eq!(
            collect(&mut MessageReader::new(100), &bytes).unwrap(),
            ["close:None"]
        );
    }
}
