//! A publication: its payload once, and its encoding for each door format, each made at most
//! once however many subscribers there are.
//!
//! Plain doors receive the payload itself as a WebSocket frame; client-protocol subscribers
//! receive it as `data` inside a push, in JSON or in Protobuf. The three encodings are made
//! lazily and cached in the publication, so a channel with only plain members never builds a
//! push, and history keeps the same [`Publication`] that was fanned out.
//!
//! Between the formats: JSON from the API or a protocol client reaches plain doors as a string's
//! text or any other value's serialized text; text from a plain door reaches protocol clients
//! as-is when it is valid JSON, otherwise as a JSON string; binary becomes a base64 string.
//! Protobuf clients receive the payload's bytes as they are; what they publish reaches plain
//! doors as a text frame when it is UTF-8, a binary frame otherwise.

use std::sync::{Arc, OnceLock};

use base64::Engine;
use bytes::Bytes;
use serde_json::Value;

use crate::filter::Tags;
use crate::kind::Encoding;
pub use crate::kind::Format;
use crate::trace::TraceParent;
use crate::wire::{ClientInfoBody, PublicationBody, Push, Reply};
use crate::ws::frame::{self, Opcode};

/// Who published or subscribed, as others see it (presence, join/leave, a publication's `info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The connection's client id.
    pub client: Box<str>,
    /// Its user (empty when anonymous).
    pub user: Box<str>,
    /// The connection token's `info`, as JSON text (empty: none).
    conn_info: Bytes,
    /// The subscription token's `info`, as JSON text (empty: none).
    chan_info: Bytes,
}

impl ClientInfo {
    /// Info for a connection, with the token's `info` as `conn_info` and a subscription token's
    /// as `chan_info`.
    pub fn new(
        client: &str,
        user: &str,
        conn_info: Option<&Value>,
        chan_info: Option<&Value>,
    ) -> Self {
        let json = |info: Option<&Value>| info.map_or(Bytes::new(), |v| Bytes::from(v.to_string()));
        ClientInfo {
            client: client.into(),
            user: user.into(),
            conn_info: json(conn_info),
            chan_info: json(chan_info),
        }
    }

    /// Info from its parts as they travel between nodes (`conn_info` and `chan_info` are
    /// JSON text, empty for none).
    pub fn from_parts(client: &str, user: &str, conn_info: Bytes, chan_info: Bytes) -> Self {
        ClientInfo {
            client: client.into(),
            user: user.into(),
            conn_info,
            chan_info,
        }
    }

    /// The connection token's `info` as JSON text (empty: none).
    pub fn conn_info(&self) -> &Bytes {
        &self.conn_info
    }

    /// The subscription token's `info` as JSON text (empty: none).
    pub fn chan_info(&self) -> &Bytes {
        &self.chan_info
    }

    /// The wire form.
    pub(crate) fn body(&self) -> ClientInfoBody {
        ClientInfoBody {
            user: self.user.to_string(),
            client: self.client.to_string(),
            conn_info: self.conn_info.clone(),
            chan_info: self.chan_info.clone(),
        }
    }
}

/// What a publication's payload is, which decides its encoding in the other formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// JSON text (server API, protocol client).
    Json,
    /// A plain door's text message.
    Text,
    /// A plain door's binary message.
    Binary,
}

/// Where the payload came from, which decides the other format's encoding.
#[derive(Debug)]
enum Source {
    /// JSON text (server API, protocol client).
    Json(Bytes),
    /// A plain door's text message.
    Text(Bytes),
    /// A plain door's binary message.
    Binary(Bytes),
}

/// One publication to one channel.
#[derive(Debug)]
pub struct Publication {
    source: Source,
    /// Position in the channel's history (0 = the channel keeps none).
    pub offset: u64,
    /// The publishing client, when a protocol client published it.
    pub info: Option<Arc<ClientInfo>>,
    /// Its tags (server API `publish`), which subscribers' tag filters select on.
    pub tags: Option<Arc<Tags>>,
    /// The trace context it travels under (traces on and the publish sampled; else `None`):
    /// first its publisher's span, then the broker-publish span the fan-outs hang under.
    pub trace: Option<TraceParent>,
    /// The key it sets (or, with `removed`, removes) in a map channel's state; `None` on a
    /// stream channel.
    pub key: Option<Box<str>>,
    /// It removes `key` from the map's state (it carries no data).
    pub removed: bool,
    /// In a map channel: the payload `key` held just before this publication set it (none
    /// when the key was not there), which a map delta subscriber's delta is made against
    /// (see [`Publication::key_delta_frame`]). Only the payload is held, never the previous
    /// publication, so a key's versions do not keep each other alive.
    key_base: Option<(PayloadKind, Bytes)>,
    data_json: OnceLock<Bytes>,
    /// One frame per (format, compressed): see [`Publication::frame`].
    frames: [OnceLock<Bytes>; 8],
    /// For delta subscribers: the JSON push whose `data` is a JSON string, plain and
    /// compressed, and the delta push per (encoding, compressed) (`None`: no delta worth
    /// sending). See [`Publication::delta_frame`].
    json_string_frames: [OnceLock<Bytes>; 2],
    delta_frames: [OnceLock<Option<Bytes>>; 4],
}

/// `text` (UTF-8: JSON text or a checked delta) as a JSON string literal.
fn json_string(text: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(text);
    Bytes::from(Value::from(text.as_ref()).to_string())
}

/// The length of [`json_string`]`(text)` without making it: the quotes, and each byte that
/// JSON escapes taking its escape (`\"`, `\\`, `\n`, ... or `\u00XX`).
fn json_string_len(text: &[u8]) -> usize {
    let escapes: usize = text
        .iter()
        .map(|&b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0C => 1,
            0..=0x1F => 5,
            _ => 0,
        })
        .sum();
    text.len().saturating_add(escapes).saturating_add(2)
}

/// `plain` (an unmasked server frame) as a permessage-deflate message (no context takeover)
/// when that is smaller, else `plain` itself.
fn deflated(plain: &Bytes) -> Bytes {
    let (opcode, payload) = split_frame(plain);
    let compressed = crate::ws::deflate::deflate_message(payload, 15);
    if compressed.len() < payload.len() {
        frame::encode_rsv1(opcode, &compressed)
    } else {
        plain.clone()
    }
}

/// The opcode and payload of an unmasked server frame built by `frame::encode`.
fn split_frame(frame: &[u8]) -> (Opcode, &[u8]) {
    let opcode = Opcode::from_bits(frame[0] & 0x0F).unwrap_or(Opcode::Binary);
    let header = match frame[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    (opcode, &frame[header..])
}

impl Publication {
    fn new(source: Source) -> Self {
        Publication {
            source,
            offset: 0,
            info: None,
            tags: None,
            trace: None,
            key: None,
            removed: false,
            key_base: None,
            data_json: OnceLock::new(),
            frames: Default::default(),
            json_string_frames: Default::default(),
            delta_frames: Default::default(),
        }
    }

    /// A publication whose `data` is JSON text (already validated by the caller's parser).
    pub fn json(data: Bytes) -> Self {
        Publication::new(Source::Json(data))
    }

    /// A Protobuf client's payload (any bytes).
    pub fn bytes(payload: Bytes) -> Self {
        if std::str::from_utf8(&payload).is_ok() {
            Publication::new(Source::Text(payload))
        } else {
            Publication::new(Source::Binary(payload))
        }
    }

    /// A plain door's message.
    pub fn plain(opcode: Opcode, payload: Bytes) -> Self {
        match opcode {
            Opcode::Binary => Publication::new(Source::Binary(payload)),
            _ => Publication::new(Source::Text(payload)),
        }
    }

    /// A publication of `payload` of `kind` (as it travels between nodes).
    pub fn from_payload(kind: PayloadKind, payload: Bytes) -> Self {
        Publication::new(match kind {
            PayloadKind::Json => Source::Json(payload),
            PayloadKind::Text => Source::Text(payload),
            PayloadKind::Binary => Source::Binary(payload),
        })
    }

    /// The payload as it was published, with its kind.
    pub fn payload(&self) -> (PayloadKind, &Bytes) {
        match &self.source {
            Source::Json(bytes) => (PayloadKind::Json, bytes),
            Source::Text(bytes) => (PayloadKind::Text, bytes),
            Source::Binary(bytes) => (PayloadKind::Binary, bytes),
        }
    }

    /// A map channel's removal of `key`: no data.
    pub fn removal(key: &str) -> Self {
        let mut publication = Publication::new(Source::Json(Bytes::new()));
        publication.key = Some(key.into());
        publication.removed = true;
        publication
    }

    /// This publication, setting `key` in a map channel's state.
    pub fn keyed(mut self, key: &str) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Records `previous` as the value this publication's key held before it (the map
    /// state's entry it replaces), the base of its per-key delta.
    pub fn follows(&mut self, previous: &Publication) {
        let (kind, payload) = previous.payload();
        self.key_base = Some((kind, payload.clone()));
    }

    /// Whether it has a per-key delta base (see [`Publication::follows`]).
    pub fn has_key_base(&self) -> bool {
        self.key_base.is_some()
    }

    /// Sets the history offset and the publisher's info.
    pub fn positioned(mut self, offset: u64, info: Option<Arc<ClientInfo>>) -> Self {
        self.offset = offset;
        self.info = info;
        self
    }

    /// The frame a subscriber of `channel` receives in `format`, compressed (permessage-deflate
    /// with no context takeover) when `deflate` and the compressed form is smaller. Each of the
    /// six is made at most once and shared by every subscriber that takes it; `channel` must be
    /// the channel this publication was published to.
    pub fn frame(&self, channel: &str, format: Format, deflate: bool) -> &Bytes {
        let cell = &self.frames[format as usize * 2 + usize::from(deflate)];
        cell.get_or_init(|| {
            let plain = match format {
                _ if deflate => self.frame(channel, format, false),
                Format::Plain => return self.encode_plain(),
                Format::Json => return self.encode_push(channel, Encoding::Json),
                Format::Protobuf => return self.encode_push(channel, Encoding::Protobuf),
                Format::Pusher => {
                    return crate::pusher_wire::publication_frame(channel, self.data_json())
                }
            };
            deflated(plain)
        })
    }

    /// The frame a plain door member receives.
    pub fn plain_frame(&self) -> &Bytes {
        self.frame("", Format::Plain, false)
    }

    fn encode_plain(&self) -> Bytes {
        match &self.source {
            Source::Text(text) => frame::encode(Opcode::Text, text),
            Source::Binary(bytes) => frame::encode(Opcode::Binary, bytes),
            Source::Json(json) => match serde_json::from_slice::<String>(json) {
                Ok(text) => frame::encode(Opcode::Text, text.as_bytes()),
                Err(_) => frame::encode(Opcode::Text, json),
            },
        }
    }

    /// The JSON text of `data` as protocol clients receive it.
    pub fn data_json(&self) -> &Bytes {
        self.data_json.get_or_init(|| match &self.source {
            Source::Json(json) => json.clone(),
            Source::Text(text) => {
                if serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok() {
                    text.clone()
                } else {
                    let text = String::from_utf8_lossy(text);
                    Bytes::from(Value::from(text.as_ref()).to_string())
                }
            }
            Source::Binary(bytes) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                Bytes::from(Value::from(encoded).to_string())
            }
        })
    }

    /// Whether every frame this publication can become for a subscriber of `channel` is at
    /// most `max` bytes: one over a connection's queue bound (`limits.max_queued_bytes`) could
    /// never be delivered, and would close every subscriber as a slow consumer. Answered from
    /// an upper bound when that suffices (nothing is encoded: the usual case); otherwise from
    /// the JSON `data`, which is made once and kept for the fan-out.
    ///
    /// The largest form is a JSON delta subscriber's: its `data` is the JSON text as a JSON
    /// string, each `"`, `\` and whitespace control character escaped (a delta is smaller
    /// than that: it is used only when shorter than the text, and escapes no more of it).
    /// Any subscriber may ask for delta, on any node, so every publication is held to it.
    pub fn fits(&self, channel: &str, max: usize) -> bool {
        // Frame header, the push's keys, the offset and quotes take far less than this.
        const OVERHEAD: usize = 256;
        // Names and info may be escaped in JSON: at most 6 bytes per byte (`\u00XX`).
        let info = self.info.as_ref().map_or(0, |info| {
            6 * (info.client.len() + info.user.len() + info.conn_info.len() + info.chan_info.len())
        });
        let tags = self.tags.as_ref().map_or(0, |tags| {
            tags.iter()
                .map(|(k, v)| 6 * (k.len() + v.len()) + 6)
                .sum::<usize>()
        });
        let fixed = OVERHEAD
            .saturating_add(6 * channel.len())
            .saturating_add(info)
            .saturating_add(tags);
        // Plain and Protobuf frames carry the payload's bytes (a JSON string's text is shorter).
        let payload = self.data_bytes().len();
        let json_at_most = match &self.source {
            Source::Json(json) => json.len(),
            Source::Binary(bytes) => bytes.len().div_ceil(3) * 4 + 2,
            Source::Text(text) => text.len().saturating_mul(6).saturating_add(2),
        };
        // As a JSON string each byte of the JSON text takes at most 2 (JSON text holds no
        // control character but whitespace outside its strings), plus the quotes.
        let delta_string_at_most = json_at_most.saturating_mul(2).saturating_add(2);
        if fixed.saturating_add(delta_string_at_most.max(payload)) <= max {
            return true;
        }
        let json_string = json_string_len(self.data_json());
        fixed.saturating_add(json_string.max(payload)) <= max
    }

    /// At least the bytes this publication takes inside a reply (history, recovery) in
    /// `encoding`: its `data`, `info` (escaped at worst) and the keys around them.
    pub(crate) fn body_len(&self, encoding: Encoding) -> usize {
        let info = self.info.as_ref().map_or(0, |info| {
            6 * (info.client.len() + info.user.len() + info.conn_info.len() + info.chan_info.len())
        });
        let data = match encoding {
            Encoding::Json => self.data_json().len(),
            Encoding::Protobuf => self.data_bytes().len(),
        };
        data.saturating_add(info).saturating_add(96)
    }

    /// The payload's bytes as Protobuf clients receive them.
    fn data_bytes(&self) -> &Bytes {
        match &self.source {
            Source::Json(bytes) | Source::Text(bytes) | Source::Binary(bytes) => bytes,
        }
    }

    /// The publication as a protocol message, in `encoding`.
    pub(crate) fn body(&self, encoding: Encoding) -> PublicationBody {
        PublicationBody {
            data: match encoding {
                Encoding::Json => self.data_json().clone(),
                Encoding::Protobuf => self.data_bytes().clone(),
            },
            info: self.info.as_ref().map(|info| info.body()),
            offset: self.offset,
            tags: self.tags.as_deref().cloned().unwrap_or_default(),
            delta: false,
            key: self.key.as_deref().unwrap_or_default().to_owned(),
            removed: self.removed,
            version: 0,
        }
    }

    /// The frame a protocol subscriber of `channel` receives, in `encoding`:
    /// `{"push":{"channel":...,"pub":{...}}}` or its Protobuf form. Every subscriber of one
    /// channel gets the same one, so `channel` must be the channel this publication was
    /// published to.
    pub fn push_frame(&self, channel: &str, encoding: Encoding) -> &Bytes {
        let format = match encoding {
            Encoding::Json => Format::Json,
            Encoding::Protobuf => Format::Protobuf,
        };
        self.frame(channel, format, false)
    }

    /// The bytes a fossil delta is made over in `encoding`: what the SDK holds as the
    /// previous value (the JSON text of `data`, or the Protobuf `data` bytes).
    pub fn delta_payload(&self, encoding: Encoding) -> &Bytes {
        match encoding {
            Encoding::Json => self.data_json(),
            Encoding::Protobuf => self.data_bytes(),
        }
    }

    /// The body a delta subscriber receives in a reply (recovery): the delta against `base`
    /// (the previous publication's [`Publication::delta_payload`]) when there is one worth
    /// sending, otherwise the whole `data`; in JSON, either travels as a JSON string.
    pub(crate) fn delta_body(&self, encoding: Encoding, base: Option<&[u8]>) -> PublicationBody {
        if self.removed && encoding == Encoding::Json {
            // A map removal has no data, but the SDK decodes every `data` of a delta
            // subscription as JSON text: `"null"` decodes, an empty string would not.
            let mut body = self.body(encoding);
            body.data = Bytes::from_static(br#""null""#);
            return body;
        }
        let target = self.delta_payload(encoding);
        let delta =
            base.and_then(|base| crate::delta::fossil(base, target, encoding == Encoding::Json));
        let mut body = self.body(encoding);
        body.delta = delta.is_some();
        let data = delta.unwrap_or_else(|| target.clone());
        body.data = match encoding {
            Encoding::Json => json_string(&data),
            Encoding::Protobuf => data,
        };
        body
    }

    /// The push a delta subscriber of `channel` receives when it gets this publication whole
    /// (its first one, or after a gap): in JSON, `data` is a JSON string holding the JSON
    /// text (what the SDK decodes when delta is on); in Protobuf, the usual push. With
    /// `deflate` (the connection negotiated permessage-deflate) compressed when smaller, once
    /// per publication, as [`Publication::frame`] does.
    pub fn full_frame_for_delta(&self, channel: &str, encoding: Encoding, deflate: bool) -> &Bytes {
        match encoding {
            Encoding::Protobuf => self.frame(channel, Format::Protobuf, deflate),
            Encoding::Json => self.json_string_frames[usize::from(deflate)].get_or_init(|| {
                if deflate {
                    deflated(self.full_frame_for_delta(channel, encoding, false))
                } else {
                    self.encode_body_push(channel, encoding, self.delta_body(encoding, None))
                }
            }),
        }
    }

    /// The push a delta subscriber of `channel` that holds the previous publication receives:
    /// `data` is the fossil delta from `base` (that publication's
    /// [`Publication::delta_payload`]), `delta: true`. Made once per encoding, the first time
    /// a subscriber needs it, and shared by all; `None` when the delta would not be smaller
    /// (send [`Publication::full_frame_for_delta`]). With `deflate`, compressed when that is
    /// smaller still (once per publication, like the delta itself). The hub calls it with one
    /// base per publication: the one the channel held when it was fanned out.
    pub fn delta_frame(
        &self,
        channel: &str,
        encoding: Encoding,
        deflate: bool,
        base: &Bytes,
    ) -> Option<&Bytes> {
        self.delta_frame_from(channel, encoding, deflate, &|| Some(base.clone()))
    }

    /// The push a map delta subscriber that holds the map's state up to the publication
    /// before this one receives: `data` is the fossil delta from the value this
    /// publication's key held before it ([`Publication::follows`]), `delta: true`. Like
    /// [`Publication::delta_frame`], made once per encoding and shared; `None` when the key
    /// had no value before or the delta would not be smaller.
    pub fn key_delta_frame(
        &self,
        channel: &str,
        encoding: Encoding,
        deflate: bool,
    ) -> Option<&Bytes> {
        self.key_base.as_ref()?;
        self.delta_frame_from(channel, encoding, deflate, &|| {
            let (kind, payload) = self.key_base.as_ref()?;
            let previous = Publication::from_payload(*kind, payload.clone());
            Some(previous.delta_payload(encoding).clone())
        })
    }

    /// The delta push from the base `base` makes (asked for only when the frame is first
    /// made), cached per (encoding, compressed): a publication has one base.
    fn delta_frame_from(
        &self,
        channel: &str,
        encoding: Encoding,
        deflate: bool,
        base: &dyn Fn() -> Option<Bytes>,
    ) -> Option<&Bytes> {
        self.delta_frames[encoding as usize * 2 + usize::from(deflate)]
            .get_or_init(|| {
                if deflate {
                    return self
                        .delta_frame_from(channel, encoding, false, base)
                        .map(deflated);
                }
                let base = base()?;
                let body = self.delta_body(encoding, Some(&base));
                body.delta
                    .then(|| self.encode_body_push(channel, encoding, body))
            })
            .as_ref()
    }

    fn encode_body_push(&self, channel: &str, encoding: Encoding, body: PublicationBody) -> Bytes {
        let opcode = match encoding {
            Encoding::Json => Opcode::Text,
            Encoding::Protobuf => Opcode::Binary,
        };
        let push = Reply::push(Push {
            channel: channel.to_owned(),
            publication: Some(body),
            ..Push::default()
        });
        frame::encode(opcode, &push.encode_as(encoding))
    }

    fn encode_push(&self, channel: &str, encoding: Encoding) -> Bytes {
        let opcode = match encoding {
            Encoding::Json => Opcode::Text,
            Encoding::Protobuf => Opcode::Binary,
        };
        let push = Reply::push(Push {
            channel: channel.to_owned(),
            publication: Some(self.body(encoding)),
            ..Push::default()
        });
        frame::encode(opcode, &push.encode_as(encoding))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_never_admits_a_frame_larger_than_the_bound() {
        let conn_info = serde_json::json!({ "n": "\u{2}" });
        let info = Arc::new(ClientInfo::new(
            "client",
            "user\u{1}",
            Some(&conn_info),
            None,
        ));
        let channel = "ns:chan\u{1}";
        let cases = [
            Publication::json(Bytes::from_static(br#"{"a":"\u0001"}"#)),
            Publication::plain(Opcode::Text, Bytes::from("\u{1}".repeat(300))),
            Publication::plain(Opcode::Binary, Bytes::from(vec![0xFF_u8; 300])),
        ];
        for publication in cases {
            let publication = publication.positioned(u64::MAX, Some(Arc::clone(&info)));
            let largest = [Format::Plain, Format::Json, Format::Protobuf]
                .into_iter()
                .map(|format| publication.frame(channel, format, false).len())
                .chain([publication
                    .full_frame_for_delta(channel, Encoding::Json, false)
                    .len()])
                .max()
                .unwrap();
            assert!(!publication.fits(channel, largest - 1), "{publication:?}");
            assert!(
                publication.fits(channel, 2 * largest + 4096),
                "{publication:?}"
            );
        }
    }

    #[test]
    fn json_string_len_is_the_length_of_the_json_string() {
        for text in [
            "",
            "{}",
            r#"{"a":"b\"c\\d"}"#,
            "[1,\n\t2]\r\n",
            "\u{1}\u{8}\u{c}\u{1f}x",
            "{\"é\":\"日本\"}",
        ] {
            assert_eq!(
                json_string_len(text.as_bytes()),
                json_string(text.as_bytes()).len(),
                "{text:?}"
            );
        }
    }

    fn text_of(frame: &Bytes) -> String {
        // Server frames of these sizes have a 2-byte header.
        String::from_utf8(frame[2..].to_vec()).unwrap()
    }

    #[test]
    fn json_strings_reach_plain_doors_as_their_text() {
        let publication = Publication::json(Bytes::from_static(b"\"hi\""));
        assert_eq!(text_of(publication.plain_frame()), "hi");
        let publication = Publication::json(Bytes::from_static(br#"{"a":1}"#));
        assert_eq!(text_of(publication.plain_frame()), r#"{"a":1}"#);
    }

    #[test]
    fn plain_text_reaches_protocol_clients_as_json() {
        let json = Publication::plain(Opcode::Text, Bytes::from_static(br#"{"a":1}"#));
        assert_eq!(&json.data_json()[..], br#"{"a":1}"#);
        let text = Publication::plain(Opcode::Text, Bytes::from_static(b"hello \"you\""));
        assert_eq!(&text.data_json()[..], br#""hello \"you\"""#);
        let binary = Publication::plain(Opcode::Binary, Bytes::from_static(&[0, 255]));
        assert_eq!(&binary.data_json()[..], br#""AP8=""#);
    }

    #[test]
    fn the_push_carries_channel_offset_and_info() {
        let info = Arc::new(ClientInfo::new("c1", "u1", None, None));
        let publication =
            Publication::json(Bytes::from_static(b"1")).positioned(7, Some(Arc::clone(&info)));
        let frame = publication.push_frame("a\"b", Encoding::Json);
        let push: Value = serde_json::from_str(&text_of(frame)).unwrap();
        assert_eq!(push["push"]["channel"], "a\"b");
        assert_eq!(push["push"]["pub"]["data"], 1);
        assert_eq!(push["push"]["pub"]["offset"], 7);
        assert_eq!(push["push"]["pub"]["info"]["user"], "u1");
    }

    #[test]
    fn deflate_subscribers_share_one_compressed_frame_that_inflates_to_the_plain_one() {
        use crate::ws::deflate::{negotiate_offers, Inflater};
        let text = "a repetitive payload, a repetitive payload, a repetitive payload".repeat(4);
        let publication = Publication::plain(Opcode::Text, Bytes::from(text.clone()));
        let compressed = publication.frame("c", Format::Plain, true);
        assert!(
            std::ptr::eq(compressed, publication.frame("c", Format::Plain, true)),
            "made once"
        );
        assert_eq!(compressed[0] & frame::RSV1, frame::RSV1);
        assert!(compressed.len() < publication.plain_frame().len());
        let negotiated = negotiate_offers(["permessage-deflate"]).unwrap();
        let (_, payload) = split_frame(compressed);
        let inflated = Inflater::new(&negotiated)
            .inflate(payload, 1 << 20)
            .unwrap();
        assert_eq!(inflated, text.as_bytes());
        let tiny = Publication::plain(Opcode::Text, Bytes::from_static(b"x"));
        assert_eq!(
            tiny.frame("c", Format::Plain, true),
            tiny.plain_frame(),
            "sent as is when compression would not shrink it"
        );
    }

    #[test]
    fn protobuf_subscribers_get_the_payload_bytes() {
        use prost::Message;
        let publication = Publication::plain(Opcode::Binary, Bytes::from_static(&[0, 255]));
        let frame = publication.push_frame("c", Encoding::Protobuf);
        let reply = Reply::decode_length_delimited(&frame[2..]).unwrap();
        let push = reply.push.unwrap();
        assert_eq!(push.channel, "c");
        assert_eq!(&push.publication.unwrap().data[..], &[0, 255]);
    }
}
