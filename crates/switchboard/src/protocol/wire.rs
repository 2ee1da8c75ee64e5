//! The client protocol's JSON shapes: the commands a client sends, and the builders of the
//! replies and pushes the server sends. docs/protocol.md is the description of these shapes.
//!
//! Unknown fields are ignored (SDKs add fields over time); a frame that is not JSON, or a
//! field of the wrong type, is a bad request.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// One command. Exactly one method field is set (none at all is the client's pong).
#[derive(Debug, Default, Deserialize)]
pub struct Command {
    /// Reply id (0: the client wants no reply, as for `send`).
    #[serde(default)]
    pub id: u64,
    /// `connect`.
    pub connect: Option<ConnectRequest>,
    /// `subscribe`.
    pub subscribe: Option<SubscribeRequest>,
    /// `unsubscribe`.
    pub unsubscribe: Option<ChannelRequest>,
    /// `publish`.
    pub publish: Option<PublishRequest>,
    /// `presence`.
    pub presence: Option<ChannelRequest>,
    /// `presence_stats`.
    pub presence_stats: Option<ChannelRequest>,
    /// `history`.
    pub history: Option<HistoryRequest>,
    /// `refresh`.
    pub refresh: Option<RefreshRequest>,
    /// `sub_refresh`.
    pub sub_refresh: Option<SubRefreshRequest>,
    /// `send` (asynchronous message; no handler here).
    pub send: Option<Box<RawValue>>,
    /// `rpc` (no handlers here).
    pub rpc: Option<Box<RawValue>>,
}

/// Where a recovering subscription left off.
#[derive(Debug, Default, Deserialize)]
pub struct RecoverFrom {
    /// Whether to recover.
    #[serde(default)]
    pub recover: bool,
    /// Last offset seen.
    #[serde(default)]
    pub offset: u64,
    /// Epoch it belongs to.
    #[serde(default)]
    pub epoch: String,
}

/// `connect`.
#[derive(Debug, Default, Deserialize)]
pub struct ConnectRequest {
    /// The connection token (empty: anonymous).
    #[serde(default)]
    pub token: String,
    /// Recovery positions of server-side subscriptions, by channel.
    #[serde(default)]
    pub subs: HashMap<String, RecoverFrom>,
}

/// `subscribe`.
#[derive(Debug, Default, Deserialize)]
pub struct SubscribeRequest {
    /// The channel.
    pub channel: String,
    /// A subscription token.
    #[serde(default)]
    pub token: String,
    /// Recover from `offset`/`epoch`.
    #[serde(default)]
    pub recover: bool,
    /// Last offset seen.
    #[serde(default)]
    pub offset: u64,
    /// Epoch it belongs to.
    #[serde(default)]
    pub epoch: String,
    /// Bit 2 (`rejectUnrecovered`): answer error 112 instead of `recovered: false`.
    #[serde(default)]
    pub flag: u64,
}

/// The `rejectUnrecovered` bit of `SubscribeRequest::flag`.
pub const FLAG_REJECT_UNRECOVERED: u64 = 2;

/// A command that names only a channel.
#[derive(Debug, Default, Deserialize)]
pub struct ChannelRequest {
    /// The channel.
    pub channel: String,
}

/// `publish`.
#[derive(Debug, Deserialize)]
pub struct PublishRequest {
    /// The channel.
    pub channel: String,
    /// Any JSON.
    pub data: Box<RawValue>,
}

/// A stream position in a request.
#[derive(Debug, Default, Deserialize)]
pub struct Since {
    /// Offset.
    #[serde(default)]
    pub offset: u64,
    /// Epoch.
    #[serde(default)]
    pub epoch: String,
}

/// `history`.
#[derive(Debug, Default, Deserialize)]
pub struct HistoryRequest {
    /// The channel.
    pub channel: String,
    /// 0 (or absent): no publications, only the position; negative: all kept.
    #[serde(default)]
    pub limit: i64,
    /// Only after this position.
    pub since: Option<Since>,
    /// Newest first.
    #[serde(default)]
    pub reverse: bool,
}

/// `refresh`.
#[derive(Debug, Default, Deserialize)]
pub struct RefreshRequest {
    /// A new connection token.
    pub token: String,
}

/// `sub_refresh`.
#[derive(Debug, Default, Deserialize)]
pub struct SubRefreshRequest {
    /// The channel.
    pub channel: String,
    /// A new subscription token.
    pub token: String,
}

/// `{"id":N,"METHOD":result}`.
pub fn reply(id: u64, method: &str, result: Value) -> String {
    let mut object = serde_json::Map::new();
    object.insert("id".into(), Value::from(id));
    object.insert(method.into(), result);
    Value::Object(object).to_string()
}

/// `{"id":N,"error":{"code","message","temporary"?}}`.
pub fn error_reply(id: u64, error: crate::error::ClientError) -> String {
    let mut body = json!({ "code": error.code(), "message": error.to_string() });
    if error.temporary() {
        body["temporary"] = Value::Bool(true);
    }
    json!({ "id": id, "error": body }).to_string()
}

/// `{"push":{"channel":...,KIND:body}}`.
pub fn push(channel: &str, kind: &str, body: Value) -> String {
    let mut inner = serde_json::Map::new();
    inner.insert("channel".into(), Value::from(channel));
    inner.insert(kind.into(), body);
    json!({ "push": Value::Object(inner) }).to_string()
}

/// Parses one JSON value that is already known to be valid (a publication object built by
/// us) so it can sit inside a `json!` tree.
pub fn raw(text: &[u8]) -> Value {
    serde_json::from_slice(text).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscribe_command_parses_with_recovery_fields() {
        let command: Command = serde_json::from_str(
            r#"{"id":3,"subscribe":{"channel":"a","recover":true,"offset":5,"epoch":"e","flag":3,"new_field":1}}"#,
        )
        .unwrap();
        let subscribe = command.subscribe.unwrap();
        assert_eq!(command.id, 3);
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
    fn an_empty_object_is_a_pong() {
        let command: Command = serde_json::from_str("{}").unwrap();
        assert!(command.connect.is_none() && command.id == 0);
    }

    #[test]
    fn publish_data_is_kept_as_raw_json() {
        let command: Command =
            serde_json::from_str(r#"{"id":1,"publish":{"channel":"a","data":{"x": [1, 2]}}}"#)
                .unwrap();
        assert_eq!(command.publish.unwrap().data.get(), r#"{"x": [1, 2]}"#);
    }

    #[test]
    fn errors_carry_code_and_message() {
        let text = error_reply(7, crate::error::ClientError::PermissionDenied);
        assert_eq!(
            text,
            r#"{"error":{"code":103,"message":"permission denied"},"id":7}"#
        );
    }
}
