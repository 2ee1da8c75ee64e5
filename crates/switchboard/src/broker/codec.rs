//! The bytes a publication, a client's info and a control message take between nodes: one
//! compact Protobuf form that every engine stores and carries, so nodes of one cluster agree
//! whatever the engine. Offsets and epochs are not in here: the engine assigns them and
//! carries them beside the bytes.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use crate::publication::{ClientInfo, PayloadKind, Publication};
use crate::trace::TraceParent;

/// Bytes that are not one of ours (a foreign writer, or a newer, incompatible node).
#[derive(Debug, Clone, thiserror::Error)]
#[error("undecodable broker message: {0}")]
pub struct CodecError(String);

#[derive(Clone, PartialEq, Message)]
struct InfoWire {
    #[prost(string, tag = "1")]
    client: String,
    #[prost(string, tag = "2")]
    user: String,
    #[prost(bytes = "bytes", tag = "3")]
    conn_info: Bytes,
    #[prost(bytes = "bytes", tag = "4")]
    chan_info: Bytes,
}

#[derive(Clone, PartialEq, Message)]
struct PublicationWire {
    /// 0 JSON, 1 text, 2 binary.
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(bytes = "bytes", tag = "2")]
    data: Bytes,
    #[prost(message, optional, tag = "3")]
    info: Option<InfoWire>,
    /// The W3C `traceparent` of the broker-publish span, only when traces are on and the
    /// publish is sampled: absent, it costs no byte, and nodes that predate it skip it.
    #[prost(string, optional, tag = "4")]
    traceparent: Option<String>,
    /// The publication's tags (none: empty, which costs nothing on the wire).
    #[prost(btree_map = "string, string", tag = "5")]
    tags: std::collections::BTreeMap<String, String>,
    /// A map channel's key (absent on a stream publication, costing nothing).
    #[prost(string, optional, tag = "6")]
    key: Option<String>,
    /// It removes `key` from the map's state. The Redis engine's key expiry writes this
    /// message itself, in Lua (`scripts.rs`): keep tags 6 and 7 as they are.
    #[prost(bool, tag = "7")]
    removed: bool,
    /// The codec bytes of the publication a keyed set replaces (its key's previous value),
    /// which the set's per-key delta is made against. Only on a live message, never kept in
    /// a stream; written by the Redis engine's keyed publish, in Lua: keep tag 8 as it is.
    #[prost(bytes = "bytes", optional, tag = "8")]
    base: Option<Bytes>,
}

fn info_wire(info: &ClientInfo) -> InfoWire {
    InfoWire {
        client: info.client.to_string(),
        user: info.user.to_string(),
        conn_info: info.conn_info().clone(),
        chan_info: info.chan_info().clone(),
    }
}

fn info_from(wire: InfoWire) -> ClientInfo {
    ClientInfo::from_parts(&wire.client, &wire.user, wire.conn_info, wire.chan_info)
}

/// A publication's payload and publisher (not its offset).
pub fn encode_publication(publication: &Publication) -> Bytes {
    Bytes::from(wire_of(publication).encode_to_vec())
}

/// A keyed set with the publication it replaces under its key (`previous`, whose own base
/// is left out): what an engine carries to the nodes so each makes the set's per-key delta
/// (`Publication::follows` after decoding).
pub fn encode_publication_with_base(publication: &Publication, previous: &Publication) -> Bytes {
    let mut wire = wire_of(publication);
    wire.base = Some(encode_publication(previous));
    Bytes::from(wire.encode_to_vec())
}

fn wire_of(publication: &Publication) -> PublicationWire {
    let (kind, data) = publication.payload();
    PublicationWire {
        kind: match kind {
            PayloadKind::Json => 0,
            PayloadKind::Text => 1,
            PayloadKind::Binary => 2,
        },
        data: data.clone(),
        info: publication.info.as_deref().map(info_wire),
        traceparent: publication.trace.map(|trace| trace.header()),
        tags: publication.tags.as_deref().cloned().unwrap_or_default(),
        key: publication.key.as_deref().map(str::to_owned),
        removed: publication.removed,
        base: None,
    }
}

/// The publication in `bytes`, with offset 0 (the engine sets it).
///
/// # Errors
/// [`CodecError`] when `bytes` is not an encoded publication.
pub fn decode_publication(bytes: &[u8]) -> Result<Publication, CodecError> {
    let wire = PublicationWire::decode(bytes).map_err(|e| CodecError(e.to_string()))?;
    let kind = match wire.kind {
        0 => PayloadKind::Json,
        1 => PayloadKind::Text,
        2 => PayloadKind::Binary,
        other => return Err(CodecError(format!("payload kind {other}"))),
    };
    let mut publication = Publication::from_payload(kind, wire.data);
    publication.info = wire.info.map(|info| Arc::new(info_from(info)));
    // A malformed context is dropped, not an error: the publication itself is sound.
    publication.trace = wire.traceparent.as_deref().and_then(TraceParent::parse);
    publication.tags = (!wire.tags.is_empty()).then(|| Arc::new(wire.tags));
    publication.key = wire.key.map(String::into_boxed_str);
    publication.removed = wire.removed;
    // A base that does not decode is dropped: the set goes whole, which is still right.
    if let Some(previous) = wire
        .base
        .as_deref()
        .and_then(|b| decode_publication(b).ok())
    {
        publication.follows(&previous);
    }
    Ok(publication)
}

/// A client's info.
pub fn encode_client_info(info: &ClientInfo) -> Bytes {
    Bytes::from(info_wire(info).encode_to_vec())
}

/// The client info in `bytes`.
///
/// # Errors
/// [`CodecError`] when `bytes` is not an encoded client info.
pub fn decode_client_info(bytes: &[u8]) -> Result<ClientInfo, CodecError> {
    InfoWire::decode(bytes)
        .map(info_from)
        .map_err(|e| CodecError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publication_survives_the_trip_with_its_kind_and_publisher() {
        let mut publication =
            Publication::from_payload(PayloadKind::Binary, Bytes::from(vec![0, 255]));
        publication.info = Some(Arc::new(ClientInfo::from_parts(
            "c1",
            "u1",
            Bytes::from_static(b"{\"a\":1}"),
            Bytes::new(),
        )));
        let back = decode_publication(&encode_publication(&publication)).unwrap();
        assert_eq!(
            back.payload(),
            (PayloadKind::Binary, &Bytes::from(vec![0, 255]))
        );
        assert_eq!(back.info, publication.info);
        assert_eq!(back.offset, 0);
        assert_eq!(back.trace, None);
    }

    #[test]
    fn the_trace_context_crosses_the_broker_and_costs_nothing_when_absent() {
        let plain = Publication::from_payload(PayloadKind::Json, Bytes::from_static(b"1"));
        let plain_bytes = encode_publication(&plain);
        let mut traced = Publication::from_payload(PayloadKind::Json, Bytes::from_static(b"1"));
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        traced.trace = TraceParent::parse(header);
        let traced_bytes = encode_publication(&traced);
        assert!(traced_bytes.len() > plain_bytes.len() + header.len());
        let back = decode_publication(&traced_bytes).unwrap();
        assert_eq!(back.trace.map(|t| t.header()).as_deref(), Some(header));
        assert!(back.trace.is_some_and(|t| t.remote));
        // Without a context the bytes are what they were before traces existed.
        assert_eq!(&plain_bytes[..], &[18, 1, b'1'][..]);
    }

    #[test]
    fn a_map_key_and_a_removal_survive_the_trip() {
        let set = Publication::json(Bytes::from_static(b"1")).keyed("k");
        let back = decode_publication(&encode_publication(&set)).unwrap();
        assert_eq!((back.key.as_deref(), back.removed), (Some("k"), false));
        let removal = Publication::removal("gone");
        let bytes = encode_publication(&removal);
        // What the Redis engine's Lua writes for an expired key: tag 6 (the key), tag 7 = 1.
        assert_eq!(&bytes[..], b"\x32\x04gone\x38\x01");
        let back = decode_publication(&bytes).unwrap();
        assert_eq!((back.key.as_deref(), back.removed), (Some("gone"), true));
        let plain = decode_publication(&encode_publication(&Publication::json(Bytes::new())));
        assert_eq!(plain.map(|p| (p.key, p.removed)).ok(), Some((None, false)));
    }

    #[test]
    fn a_set_with_the_value_it_replaces_appended_carries_it_as_its_delta_base() {
        let previous =
            encode_publication(&Publication::json(Bytes::from_static(b"{\"v\":1}")).keyed("k"));
        let set =
            encode_publication(&Publication::json(Bytes::from_static(b"{\"v\":2}")).keyed("k"));
        assert!(!decode_publication(&set).unwrap().has_key_base());
        // What the Redis engine's Lua publishes: the set, then field 8 holding the previous.
        let mut live = set.to_vec();
        live.push(0x42);
        live.push(u8::try_from(previous.len()).unwrap());
        live.extend_from_slice(&previous);
        let back = decode_publication(&live).unwrap();
        assert!(back.has_key_base());
        assert_eq!(back.payload().1, &Bytes::from_static(b"{\"v\":2}"));
        // The engines' Rust form is the same.
        let old_value = Publication::json(Bytes::from_static(b"{\"v\":1}")).keyed("k");
        let new_value = Publication::json(Bytes::from_static(b"{\"v\":2}")).keyed("k");
        assert_eq!(
            &encode_publication_with_base(&new_value, &old_value)[..],
            &live[..]
        );
        // A base that is not a publication is dropped, the set kept.
        let mut broken = set.to_vec();
        broken.extend_from_slice(&[0x42, 3, 0xff, 0xff, 0xff]);
        assert!(!decode_publication(&broken).unwrap().has_key_base());
    }

    #[test]
    fn client_info_survives_the_trip() {
        let info = ClientInfo::from_parts("c", "u", Bytes::new(), Bytes::from_static(b"[1]"));
        assert_eq!(
            decode_client_info(&encode_client_info(&info)).unwrap(),
            info
        );
    }

    #[test]
    fn foreign_bytes_are_an_error_not_a_panic() {
        assert!(decode_publication(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode_publication(&[8, 9]).is_err(), "unknown payload kind");
    }
}
