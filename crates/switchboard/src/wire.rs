//! The client protocol's messages, one set of types for both encodings: JSON (text frames,
//! newline-separated objects) and Protobuf (binary frames, length-delimited messages), as the
//! SDKs' JSON and protobuf builds speak them. docs/protocol.md describes the shapes.
//!
//! Each type derives serde (JSON) and prost (Protobuf) with the same field names and the
//! protocol's field numbers. Payloads (`data`, `conn_info`, `chan_info`) are bytes: in JSON
//! they are embedded as the raw JSON they hold, in Protobuf sent as they are. JSON output
//! leaves out empty fields, as the SDKs expect. Unknown fields are ignored in both encodings
//! (SDKs add fields over time); a frame that does not decode is a bad request.

use std::collections::HashMap;

use bytes::{Buf, Bytes};
use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::error::ClientError;
pub use crate::kind::Encoding;

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_zero_i32(value: &i32) -> bool {
    *value == 0
}

fn is_zero_u32(value: &u32) -> bool {
    *value == 0
}

fn is_zero_u64(value: &u64) -> bool {
    *value == 0
}

/// Writes bytes that hold JSON as that JSON (not as a string).
fn raw_json<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    let text = std::str::from_utf8(bytes).map_err(serde::ser::Error::custom)?;
    let raw: &RawValue = serde_json::from_str(text).map_err(serde::ser::Error::custom)?;
    raw.serialize(serializer)
}

/// Reads any JSON value as its raw text bytes.
fn json_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    let raw = Box::<RawValue>::deserialize(deserializer)?;
    Ok(Bytes::copy_from_slice(raw.get().as_bytes()))
}

// ---- commands (client → server) ----

/// One command. At most one request field is set; none at all is the client's pong.
#[derive(Clone, PartialEq, Message, Deserialize)]
pub struct Command {
    /// Reply id (0: no reply wanted).
    #[prost(uint32, tag = "1")]
    #[serde(default)]
    pub id: u32,
    /// `connect`.
    #[prost(message, optional, tag = "4")]
    #[serde(default)]
    pub connect: Option<ConnectRequest>,
    /// `subscribe`.
    #[prost(message, optional, tag = "5")]
    #[serde(default)]
    pub subscribe: Option<SubscribeRequest>,
    /// `unsubscribe`.
    #[prost(message, optional, tag = "6")]
    #[serde(default)]
    pub unsubscribe: Option<ChannelRequest>,
    /// `publish`.
    #[prost(message, optional, tag = "7")]
    #[serde(default)]
    pub publish: Option<PublishRequest>,
    /// `presence`.
    #[prost(message, optional, tag = "8")]
    #[serde(default)]
    pub presence: Option<ChannelRequest>,
    /// `presence_stats`.
    #[prost(message, optional, tag = "9")]
    #[serde(default)]
    pub presence_stats: Option<ChannelRequest>,
    /// `history`.
    #[prost(message, optional, tag = "10")]
    #[serde(default)]
    pub history: Option<HistoryRequest>,
    /// `ping` (answered with an empty result).
    #[prost(message, optional, tag = "11")]
    #[serde(default)]
    pub ping: Option<Empty>,
    /// `send` (asynchronous message; no handler here).
    #[prost(message, optional, tag = "12")]
    #[serde(default)]
    pub send: Option<Empty>,
    /// `rpc` (answered by the rpc hook, when configured).
    #[prost(message, optional, tag = "13")]
    #[serde(default)]
    pub rpc: Option<RpcRequest>,
    /// `refresh`.
    #[prost(message, optional, tag = "14")]
    #[serde(default)]
    pub refresh: Option<RefreshRequest>,
    /// `sub_refresh`.
    #[prost(message, optional, tag = "15")]
    #[serde(default)]
    pub sub_refresh: Option<SubRefreshRequest>,
}

/// A message whose fields are not read (or that has none).
#[derive(Clone, PartialEq, Message, Deserialize, Serialize)]
pub struct Empty {}

/// `connect`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(default)]
pub struct ConnectRequest {
    /// The connection token (empty: anonymous, or the connect hook when configured).
    #[prost(string, tag = "1")]
    pub token: String,
    /// Data for the connect hook: any JSON (JSON encoding) or any bytes (Protobuf).
    #[prost(bytes = "bytes", tag = "2")]
    #[serde(deserialize_with = "json_bytes")]
    pub data: Bytes,
    /// Recovery positions of server-side subscriptions, by channel.
    #[prost(map = "string, message", tag = "3")]
    pub subs: HashMap<String, SubscribeRequest>,
    /// The SDK's name (passed to the connect hook).
    #[prost(string, tag = "4")]
    pub name: String,
    /// The SDK's version (passed to the connect hook).
    #[prost(string, tag = "5")]
    pub version: String,
}

/// `rpc`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(default)]
pub struct RpcRequest {
    /// The payload: any JSON (JSON encoding) or any bytes (Protobuf).
    #[prost(bytes = "bytes", tag = "1")]
    #[serde(deserialize_with = "json_bytes")]
    pub data: Bytes,
    /// The method, which picks the rpc hook's URL.
    #[prost(string, tag = "2")]
    pub method: String,
}

/// `subscribe` (also a server-side subscription's recovery position in `connect`).
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(default)]
pub struct SubscribeRequest {
    /// The channel.
    #[prost(string, tag = "1")]
    pub channel: String,
    /// A subscription token.
    #[prost(string, tag = "2")]
    pub token: String,
    /// Recover from `offset`/`epoch`.
    #[prost(bool, tag = "3")]
    pub recover: bool,
    /// Epoch of the last publication seen.
    #[prost(string, tag = "6")]
    pub epoch: String,
    /// Last offset seen.
    #[prost(uint64, tag = "7")]
    pub offset: u64,
    /// Bit 2 (`rejectUnrecovered`): answer error 112 instead of `recovered: false`.
    #[prost(int64, tag = "14")]
    pub flag: i64,
    /// Delta compression asked for: `"fossil"` (the only kind; anything else is error 107).
    #[prost(string, tag = "12")]
    pub delta: String,
    /// A tags filter (the SDK's `tagsFilter`): only publications whose tags pass it.
    #[prost(message, optional, tag = "13")]
    pub tf: Option<FilterNode>,
    /// The subscription type: 0 a stream, 1 a map, 2 a map of clients, 4 a shared poll;
    /// others (users presence as a map) are refused with error 108.
    #[prost(int32, tag = "15")]
    #[serde(rename = "type")]
    pub kind: i32,
    /// Map subscriptions' state-sync phase (`MAP_PHASE_*`).
    #[prost(int32, tag = "16")]
    pub phase: i32,
    /// Map subscriptions' paging cursor.
    #[prost(string, tag = "17")]
    pub cursor: String,
    /// Map subscriptions' page size.
    #[prost(int32, tag = "18")]
    pub limit: i32,
    /// Map subscriptions' order (ordered maps: not supported, error 108).
    #[prost(bool, tag = "19")]
    pub asc: bool,
}

impl SubscribeRequest {
    /// What of this request names something this server does not have, if anything: a
    /// subscription type other than a stream or a map (shared poll, users presence as a map), a
    /// state-sync phase that does not exist, or the map state-sync fields on a stream
    /// subscribe. Such a subscribe is refused (error 108) rather than answered as a plain
    /// stream, which the SDK would take for something else.
    pub fn unsupported(&self) -> Option<&'static str> {
        match self.kind {
            SUBSCRIPTION_STREAM => {
                let map_fields =
                    self.phase != 0 || !self.cursor.is_empty() || self.limit != 0 || self.asc;
                map_fields.then_some("map state sync")
            }
            SUBSCRIPTION_MAP | SUBSCRIPTION_MAP_CLIENTS if self.asc => Some("ordered map state"),
            SUBSCRIPTION_MAP | SUBSCRIPTION_MAP_CLIENTS
                if ![MAP_PHASE_LIVE, MAP_PHASE_STREAM, MAP_PHASE_STATE].contains(&self.phase) =>
            {
                Some("map state sync phase")
            }
            SUBSCRIPTION_MAP | SUBSCRIPTION_MAP_CLIENTS => None,
            SUBSCRIPTION_SHARED_POLL => {
                let map_fields =
                    self.phase != 0 || !self.cursor.is_empty() || self.limit != 0 || self.asc;
                map_fields.then_some("map state sync")
            }
            _ => Some("subscription type"),
        }
    }
}

/// `SubscribeRequest::kind` of a stream subscription.
pub const SUBSCRIPTION_STREAM: i32 = 0;
/// `SubscribeRequest::kind` (and `PublishRequest::kind`) of a map subscription.
pub const SUBSCRIPTION_MAP: i32 = 1;
/// `SubscribeRequest::kind` of a map-clients subscription: a map subscription to a channel
/// of a namespace with `map_clients = true`, whose keys are the clients subscribed to its
/// companion map channel.
pub const SUBSCRIPTION_MAP_CLIENTS: i32 = 2;
/// `SubscribeRequest::kind` of a shared-poll subscription.
pub const SUBSCRIPTION_SHARED_POLL: i32 = 4;
/// A map subscribe's phase: go live (join the channel, with the catch-up since the position
/// given).
pub const MAP_PHASE_LIVE: i32 = 0;
/// A map subscribe's phase: catch up on the stream since the position given.
pub const MAP_PHASE_STREAM: i32 = 1;
/// A map subscribe's phase: read a page of the state.
pub const MAP_PHASE_STATE: i32 = 2;

/// A node of a tags filter: a comparison of one tag (`op` empty) or `and`/`or`/`not` of
/// `nodes`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(default)]
pub struct FilterNode {
    /// `""` (a comparison), `and`, `or` or `not`.
    #[prost(string, tag = "1")]
    pub op: String,
    /// The tag compared.
    #[prost(string, tag = "2")]
    pub key: String,
    /// The comparison: `eq`, `neq`, `in`, `nin`, `ex`, `nex`, `sw`, `ew`, `ct`, `lt`, `lte`,
    /// `gt`, `gte`.
    #[prost(string, tag = "3")]
    pub cmp: String,
    /// The value compared with.
    #[prost(string, tag = "4")]
    pub val: String,
    /// The values of `in` and `nin`.
    #[prost(string, repeated, tag = "5")]
    pub vals: Vec<String>,
    /// The operands of `and`, `or`, `not`.
    #[prost(message, repeated, tag = "6")]
    pub nodes: Vec<FilterNode>,
}

/// The `rejectUnrecovered` bit of `SubscribeRequest::flag`.
pub const FLAG_REJECT_UNRECOVERED: i64 = 2;

/// A command that names only a channel.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(default)]
pub struct ChannelRequest {
    /// The channel.
    #[prost(string, tag = "1")]
    pub channel: String,
}

/// `publish`.
#[derive(Clone, PartialEq, Message, Deserialize)]
pub struct PublishRequest {
    /// The channel.
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub channel: String,
    /// The payload: any JSON (JSON encoding) or any bytes (Protobuf). Absent in JSON: empty,
    /// which a stream publish refuses (107) and a map removal does not carry.
    #[prost(bytes = "bytes", tag = "2")]
    #[serde(default, deserialize_with = "json_bytes")]
    pub data: Bytes,
    /// The publication type: 0 a stream publication; 1 a map's keyed publish or removal.
    #[prost(int32, tag = "3")]
    #[serde(default, rename = "type")]
    pub kind: i32,
    /// A map publication's key.
    #[prost(string, tag = "4")]
    #[serde(default)]
    pub key: String,
    /// A map key's removal.
    #[prost(bool, tag = "5")]
    #[serde(default)]
    pub removed: bool,
}

/// A stream position.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(default)]
pub struct StreamPosition {
    /// Offset.
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    /// Epoch.
    #[prost(string, tag = "2")]
    pub epoch: String,
}

/// `history`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(default)]
pub struct HistoryRequest {
    /// The channel.
    #[prost(string, tag = "1")]
    pub channel: String,
    /// 0 (or absent): no publications, only the position; negative: all kept.
    #[prost(int32, tag = "7")]
    pub limit: i32,
    /// Only after this position.
    #[prost(message, optional, tag = "8")]
    pub since: Option<StreamPosition>,
    /// Newest first.
    #[prost(bool, tag = "9")]
    pub reverse: bool,
}

/// `refresh`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(default)]
pub struct RefreshRequest {
    /// A new connection token.
    #[prost(string, tag = "1")]
    pub token: String,
}

/// `sub_refresh`: a new subscription token (`type` 0), or a shared-poll subscription's
/// track (`type` 1) or untrack (`type` 2) of keys.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(default)]
pub struct SubRefreshRequest {
    /// The channel.
    #[prost(string, tag = "1")]
    pub channel: String,
    /// A new subscription token.
    #[prost(string, tag = "2")]
    pub token: String,
    /// What it is: [`SUB_REFRESH_TOKEN`], [`SUB_REFRESH_TRACK`] or [`SUB_REFRESH_UNTRACK`].
    #[prost(int32, tag = "3")]
    #[serde(rename = "type")]
    pub kind: i32,
    /// Keys to track, in batches, each under its own signature.
    #[prost(message, repeated, tag = "4")]
    pub track: Vec<TrackBatch>,
    /// Keys to stop tracking (applied before `track`).
    #[prost(string, repeated, tag = "5")]
    pub untrack: Vec<String>,
}

/// `sub_refresh` type: a new subscription token.
pub const SUB_REFRESH_TOKEN: i32 = 0;
/// `sub_refresh` type: track keys of a shared-poll subscription (untrack first, if any).
pub const SUB_REFRESH_TRACK: i32 = 1;
/// `sub_refresh` type: untrack keys of a shared-poll subscription.
pub const SUB_REFRESH_UNTRACK: i32 = 2;

/// Keys a shared-poll subscription tracks under one signature.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(default)]
pub struct TrackBatch {
    /// `issued:expiry:hmac`, from the application's backend (docs/protocol.md).
    #[prost(string, tag = "1")]
    pub signature: String,
    /// The keys, each with the version the client holds.
    #[prost(message, repeated, tag = "2")]
    pub items: Vec<KeyedItem>,
}

/// A key and the version of it the client holds (0: none).
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(default)]
pub struct KeyedItem {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The version held.
    #[prost(uint64, tag = "2")]
    pub version: u64,
}

impl Command {
    /// Whether no request field is set: the client's answer to a ping.
    pub fn is_empty(&self) -> bool {
        self.connect.is_none()
            && self.subscribe.is_none()
            && self.unsubscribe.is_none()
            && self.publish.is_none()
            && self.presence.is_none()
            && self.presence_stats.is_none()
            && self.history.is_none()
            && self.ping.is_none()
            && self.send.is_none()
            && self.rpc.is_none()
            && self.refresh.is_none()
            && self.sub_refresh.is_none()
    }
}

/// A frame that is not valid protocol in the connection's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame does not decode as protocol commands")]
pub struct BadFrame;

/// Decodes every command of one frame.
///
/// # Errors
/// [`BadFrame`] when the frame does not decode in `encoding` (the connection is then closed
/// with 3501).
pub fn decode_commands(encoding: Encoding, frame: &[u8]) -> Result<Vec<Command>, BadFrame> {
    match encoding {
        Encoding::Json => frame
            .split(|b| *b == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .map(|line| serde_json::from_slice(line).map_err(|_| BadFrame))
            .collect(),
        Encoding::Protobuf => {
            let mut buf = frame;
            let mut commands = Vec::new();
            while buf.has_remaining() {
                commands.push(Command::decode_length_delimited(&mut buf).map_err(|_| BadFrame)?);
            }
            Ok(commands)
        }
    }
}

// ---- replies and pushes (server → client) ----

/// An error in a reply.
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct ErrorBody {
    /// The code (docs/protocol.md).
    #[prost(uint32, tag = "1")]
    pub code: u32,
    /// Its message.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Retrying may succeed.
    #[prost(bool, tag = "3")]
    #[serde(skip_serializing_if = "is_false")]
    pub temporary: bool,
}

impl From<ClientError> for ErrorBody {
    fn from(error: ClientError) -> Self {
        ErrorBody {
            code: error.code(),
            message: error.to_string(),
            temporary: error.temporary(),
        }
    }
}

/// The result of `rpc`: what the rpc hook answered.
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct RpcResult {
    /// JSON (JSON encoding) or bytes (Protobuf).
    #[prost(bytes = "bytes", tag = "1")]
    #[serde(skip_serializing_if = "Bytes::is_empty", serialize_with = "raw_json")]
    pub data: Bytes,
}

/// Who a connection is, as others see it.
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct ClientInfoBody {
    /// The user.
    #[prost(string, tag = "1")]
    pub user: String,
    /// The client id.
    #[prost(string, tag = "2")]
    pub client: String,
    /// The connection token's `info` (JSON).
    #[prost(bytes = "bytes", tag = "3")]
    #[serde(skip_serializing_if = "Bytes::is_empty", serialize_with = "raw_json")]
    pub conn_info: Bytes,
    /// The subscription token's `info` (JSON).
    #[prost(bytes = "bytes", tag = "4")]
    #[serde(skip_serializing_if = "Bytes::is_empty", serialize_with = "raw_json")]
    pub chan_info: Bytes,
}

/// A publication.
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct PublicationBody {
    /// The payload (JSON in the JSON encoding); empty only in a map key's removal.
    #[prost(bytes = "bytes", tag = "4")]
    #[serde(skip_serializing_if = "Bytes::is_empty", serialize_with = "raw_json")]
    pub data: Bytes,
    /// The publisher, when a client published it.
    #[prost(message, optional, tag = "5")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<ClientInfoBody>,
    /// Its offset in the channel's history (0: none kept).
    #[prost(uint64, tag = "6")]
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    /// Its tags (what tag filters select on).
    #[prost(btree_map = "string, string", tag = "7")]
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
    /// `data` is a fossil delta against the previous publication's data (delta
    /// subscriptions only).
    #[prost(bool, tag = "8")]
    #[serde(skip_serializing_if = "is_false")]
    pub delta: bool,
    /// The map key it sets or removes (map channels only).
    #[prost(string, tag = "11")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// It removes `key` from the map (or, in a shared poll, the backend removed the item).
    #[prost(bool, tag = "12")]
    #[serde(skip_serializing_if = "is_false")]
    pub removed: bool,
    /// A shared-poll item's version (the backend's, or the server's own in versionless
    /// mode).
    #[prost(uint64, tag = "16")]
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub version: u64,
}

/// The result of `connect`.
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct ConnectResult {
    /// The client id.
    #[prost(string, tag = "1")]
    pub client: String,
    /// Server version.
    #[prost(string, tag = "2")]
    pub version: String,
    /// The session expires (send `refresh` before `ttl`).
    #[prost(bool, tag = "3")]
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until it does.
    #[prost(uint32, tag = "4")]
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    /// Data from the connect hook's `data`: JSON (JSON encoding) or bytes (Protobuf).
    #[prost(bytes = "bytes", tag = "5")]
    #[serde(skip_serializing_if = "Bytes::is_empty", serialize_with = "raw_json")]
    pub data: Bytes,
    /// Server-side subscriptions (a `map<string, SubscribeResult>` on the wire).
    #[prost(message, repeated, tag = "6")]
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "entries_as_map"
    )]
    pub subs: Vec<SubscriptionEntry>,
    /// Server ping interval, seconds.
    #[prost(uint32, tag = "7")]
    pub ping: u32,
    /// The client answers pings.
    #[prost(bool, tag = "8")]
    pub pong: bool,
    /// The session an HTTP-streaming or SSE client names in its emulation requests (empty,
    /// and left out, on a WebSocket).
    #[prost(string, tag = "9")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub session: String,
    /// Node id.
    #[prost(string, tag = "10")]
    pub node: String,
}

/// One entry of [`ConnectResult::subs`], written out by hand rather than as a prost map: a
/// map leaves out a value equal to the default (a channel with no history has an all-default
/// result), and the SDK's protobuf build reads a missing value as `null` and fails.
#[derive(Clone, PartialEq, Message)]
pub struct SubscriptionEntry {
    /// The channel.
    #[prost(string, tag = "1")]
    pub channel: String,
    /// Its subscribe result, always present on the wire.
    #[prost(message, optional, tag = "2")]
    pub result: Option<SubscribeResult>,
}

/// Writes the entries as a JSON object: channel → result.
fn entries_as_map<S: Serializer>(
    entries: &[SubscriptionEntry],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(entries.len()))?;
    for entry in entries {
        map.serialize_entry(&entry.channel, &entry.result.clone().unwrap_or_default())?;
    }
    map.end()
}

/// The result of `subscribe` (also the body of a `subscribe` push).
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct SubscribeResult {
    /// The subscription token expires.
    #[prost(bool, tag = "1")]
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until it does.
    #[prost(uint32, tag = "2")]
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    /// The subscription can recover after a reconnect.
    #[prost(bool, tag = "3")]
    #[serde(skip_serializing_if = "is_false")]
    pub recoverable: bool,
    /// The stream's epoch.
    #[prost(string, tag = "6")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    /// Recovered publications, in order.
    #[prost(message, repeated, tag = "7")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<PublicationBody>,
    /// Every missed publication is in `publications`.
    #[prost(bool, tag = "8")]
    #[serde(skip_serializing_if = "is_false")]
    pub recovered: bool,
    /// The stream's last offset.
    #[prost(uint64, tag = "9")]
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    /// Publications carry positions.
    #[prost(bool, tag = "10")]
    #[serde(skip_serializing_if = "is_false")]
    pub positioned: bool,
    /// Recovery was asked for.
    #[prost(bool, tag = "12")]
    #[serde(skip_serializing_if = "is_false")]
    pub was_recovering: bool,
    /// Fossil delta compression is on for this subscription (it asked for it).
    #[prost(bool, tag = "13")]
    #[serde(skip_serializing_if = "is_false")]
    pub delta: bool,
    /// A map subscribe's phase after this reply: [`MAP_PHASE_STATE`] (more state pages or
    /// the stream catch-up follow), 0 (live: the subscription is made).
    #[prost(int32, tag = "16")]
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub phase: i32,
    /// Where the next state page starts (empty: this was the last).
    #[prost(string, tag = "17")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cursor: String,
    /// A page of a map's state: one publication per key, the key's latest.
    #[prost(message, repeated, tag = "18")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub state: Vec<PublicationBody>,
}

/// The result of `presence`.
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct PresenceResult {
    /// Client id → who.
    #[prost(map = "string, message", tag = "1")]
    pub presence: HashMap<String, ClientInfoBody>,
}

/// The result of `presence_stats`.
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct PresenceStatsResult {
    /// Connections present.
    #[prost(uint32, tag = "1")]
    pub num_clients: u32,
    /// Distinct users present.
    #[prost(uint32, tag = "2")]
    pub num_users: u32,
}

/// The result of `history`.
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct HistoryResult {
    /// The publications asked for.
    #[prost(message, repeated, tag = "1")]
    pub publications: Vec<PublicationBody>,
    /// The stream's epoch.
    #[prost(string, tag = "2")]
    pub epoch: String,
    /// The stream's last offset.
    #[prost(uint64, tag = "3")]
    pub offset: u64,
}

/// The result of `refresh`.
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct RefreshResult {
    /// The client id.
    #[prost(string, tag = "1")]
    pub client: String,
    /// Server version.
    #[prost(string, tag = "2")]
    pub version: String,
    /// The session expires.
    #[prost(bool, tag = "3")]
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until it does.
    #[prost(uint32, tag = "4")]
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

/// The result of `sub_refresh`, and the body of a `refresh` push.
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct ExpiryResult {
    /// It expires.
    #[prost(bool, tag = "1")]
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until it does.
    #[prost(uint32, tag = "2")]
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    /// A shared-poll track's answer: the items the server already holds at a newer version
    /// than the client named.
    #[prost(message, repeated, tag = "3")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<PublicationBody>,
}

/// Join or leave.
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct Presence {
    /// Who.
    #[prost(message, optional, tag = "1")]
    pub info: Option<ClientInfoBody>,
}

/// The body of an `unsubscribe` push.
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct Unsubscribed {
    /// Below 2500: do not resubscribe.
    #[prost(uint32, tag = "2")]
    pub code: u32,
    /// Why.
    #[prost(string, tag = "3")]
    pub reason: String,
}

/// A push: something the server sends unasked.
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct Push {
    /// The channel it is about.
    #[prost(string, tag = "2")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub channel: String,
    /// A publication.
    #[prost(message, optional, tag = "4")]
    #[serde(rename = "pub", skip_serializing_if = "Option::is_none")]
    pub publication: Option<PublicationBody>,
    /// Someone subscribed.
    #[prost(message, optional, tag = "5")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<Presence>,
    /// Someone unsubscribed.
    #[prost(message, optional, tag = "6")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leave: Option<Presence>,
    /// The server unsubscribed this connection.
    #[prost(message, optional, tag = "7")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<Unsubscribed>,
    /// The server subscribed this connection.
    #[prost(message, optional, tag = "9")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribeResult>,
    /// The session's expiry moved.
    #[prost(message, optional, tag = "12")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh: Option<ExpiryResult>,
    /// The server ends the connection: what an HTTP-streaming or SSE client reads in place
    /// of a WebSocket close code.
    #[prost(message, optional, tag = "11")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<Disconnected>,
}

/// The body of a `disconnect` push.
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct Disconnected {
    /// The close code the WebSocket door would have sent.
    #[prost(uint32, tag = "1")]
    pub code: u32,
    /// Its text.
    #[prost(string, tag = "2")]
    pub reason: String,
    /// Whether the client should reconnect.
    #[prost(bool, tag = "3")]
    pub reconnect: bool,
}

/// What an HTTP-streaming or SSE client posts to the emulation endpoint: commands for its
/// session, which lives on the node named. In JSON, `data` is the commands as a string (the
/// SDK's form); in Protobuf, their bytes.
#[derive(Clone, PartialEq, Message, Deserialize)]
pub struct EmulationRequest {
    /// The uid of the node holding the session (the connect reply's `node`).
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub node: String,
    /// The session (the connect reply's `session`).
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub session: String,
    /// The commands, encoded as on a WebSocket.
    #[prost(bytes = "bytes", tag = "3")]
    #[serde(default, deserialize_with = "string_as_bytes")]
    pub data: Bytes,
}

/// Reads a JSON string into its UTF-8 bytes.
fn string_as_bytes<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    let text = String::deserialize(deserializer)?;
    Ok(Bytes::from(text))
}

/// Everything the server sends: a reply to a command (with its id) or a push.
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct Reply {
    /// The command's id (0 for pushes).
    #[prost(uint32, tag = "1")]
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub id: u32,
    /// The command failed.
    #[prost(message, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// A push.
    #[prost(message, optional, tag = "4")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<Push>,
    /// `connect`'s result.
    #[prost(message, optional, tag = "5")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectResult>,
    /// `subscribe`'s result.
    #[prost(message, optional, tag = "6")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribeResult>,
    /// `unsubscribe`'s result.
    #[prost(message, optional, tag = "7")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<Empty>,
    /// `publish`'s result.
    #[prost(message, optional, tag = "8")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<Empty>,
    /// `presence`'s result.
    #[prost(message, optional, tag = "9")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceResult>,
    /// `presence_stats`'s result.
    #[prost(message, optional, tag = "10")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_stats: Option<PresenceStatsResult>,
    /// `history`'s result.
    #[prost(message, optional, tag = "11")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryResult>,
    /// `ping`'s result.
    #[prost(message, optional, tag = "12")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping: Option<Empty>,
    /// `rpc`'s result.
    #[prost(message, optional, tag = "13")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc: Option<RpcResult>,
    /// `refresh`'s result.
    #[prost(message, optional, tag = "14")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshResult>,
    /// `sub_refresh`'s result.
    #[prost(message, optional, tag = "15")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_refresh: Option<ExpiryResult>,
}

impl Reply {
    /// A reply to command `id` carrying `error`.
    pub fn error(id: u32, error: ClientError) -> Reply {
        Reply {
            id,
            error: Some(error.into()),
            ..Reply::default()
        }
    }

    /// A push.
    pub fn push(push: Push) -> Reply {
        Reply {
            push: Some(push),
            ..Reply::default()
        }
    }

    /// The payload of the WebSocket frame that carries this reply.
    pub fn encode_as(&self, encoding: Encoding) -> Vec<u8> {
        match encoding {
            // Serializing these types cannot fail: every `raw_json` field holds JSON we
            // produced or parsed; an empty object is the fallback.
            Encoding::Json => serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec()),
            Encoding::Protobuf => self.encode_length_delimited_to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_subscribe_command_decodes_with_recovery_fields() {
        let commands = decode_commands(
            Encoding::Json,
            br#"{"id":3,"subscribe":{"channel":"a","recover":true,"offset":5,"epoch":"e","flag":3,"new_field":1}}"#,
        )
        .unwrap();
        let subscribe = commands[0].subscribe.clone().unwrap();
        assert_eq!(commands[0].id, 3);
        assert_eq!(
            (
                subscribe.channel.as_str(),
                subscribe.offset,
                subscribe.epoch.as_str()
            ),
            ("a", 5, "e")
        );
        assert!(subscribe.recover && subscribe.flag & FLAG_REJECT_UNRECOVERED != 0);
    }

    #[test]
    fn several_json_commands_share_a_frame() {
        let commands = decode_commands(Encoding::Json, b"{\"id\":1,\"ping\":{}}\n\n{}\n").unwrap();
        assert_eq!(commands.len(), 2);
        assert!(commands[1].is_empty(), "{{}} is a pong");
    }

    #[test]
    fn json_publish_data_is_kept_as_its_raw_text() {
        let commands = decode_commands(
            Encoding::Json,
            br#"{"id":1,"publish":{"channel":"a","data":{"x": [1, 2]}}}"#,
        )
        .unwrap();
        assert_eq!(
            &commands[0].publish.as_ref().unwrap().data[..],
            br#"{"x": [1, 2]}"#
        );
    }

    #[test]
    fn protobuf_commands_are_length_delimited() {
        let mut frame = Vec::new();
        for id in [1, 2] {
            let command = Command {
                id,
                subscribe: Some(SubscribeRequest {
                    channel: format!("c{id}"),
                    ..SubscribeRequest::default()
                }),
                ..Command::default()
            };
            command.encode_length_delimited(&mut frame).unwrap();
        }
        let commands = decode_commands(Encoding::Protobuf, &frame).unwrap();
        assert_eq!(commands.len(), 2);
        assert_eq!(commands[1].subscribe.as_ref().unwrap().channel, "c2");
        assert!(decode_commands(Encoding::Protobuf, &frame[..frame.len() - 1]).is_err());
    }

    #[test]
    fn json_replies_leave_out_empty_fields_and_embed_data() {
        let reply = Reply {
            id: 7,
            subscribe: Some(SubscribeResult {
                publications: vec![PublicationBody {
                    data: Bytes::from_static(br#"{"a":1}"#),
                    offset: 2,
                    ..PublicationBody::default()
                }],
                recovered: true,
                ..SubscribeResult::default()
            }),
            ..Reply::default()
        };
        assert_eq!(
            String::from_utf8(reply.encode_as(Encoding::Json)).unwrap(),
            r#"{"id":7,"subscribe":{"publications":[{"data":{"a":1},"offset":2}],"recovered":true}}"#
        );
    }

    #[test]
    fn a_server_side_subscription_with_a_default_result_is_still_written() {
        let result = ConnectResult {
            subs: vec![SubscriptionEntry {
                channel: "news".into(),
                result: Some(SubscribeResult::default()),
            }],
            ..ConnectResult::default()
        };
        let bytes = result.encode_to_vec();
        // field 6 entry: key (field 1) and an empty value (field 2, length 0).
        assert!(
            bytes.windows(2).any(|w| w == [0x12, 0x00]),
            "the empty value is on the wire: {bytes:02x?}"
        );
        let json = serde_json::to_string(&result).unwrap();
        assert!(json.contains(r#""subs":{"news":{}}"#), "{json}");
    }

    #[test]
    fn errors_carry_code_and_message() {
        let reply = Reply::error(7, ClientError::PermissionDenied);
        assert_eq!(
            String::from_utf8(reply.encode_as(Encoding::Json)).unwrap(),
            r#"{"id":7,"error":{"code":103,"message":"permission denied"}}"#
        );
        let decoded =
            Reply::decode_length_delimited(&reply.encode_as(Encoding::Protobuf)[..]).unwrap();
        assert_eq!(decoded.error.unwrap().code, 103);
    }
}
