//! The wire format of `/connection/websocket`, with no I/O: commands this client sends
//! ([`Request`], encoded by [`encode_command`]) and what the server sends back
//! ([`decode_frame`] turns one text frame into pings, replies and pushes), plus the result
//! types the public API hands out ([`Publication`], [`ClientInfo`], [`History`], ...).
//!
//! Decoding is lenient in one direction only: unknown fields are ignored, so a newer server
//! can add fields without breaking this client; malformed JSON is an error.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{DecodeError, ReplyError};

/// What a client sends to answer the server's `{}` ping.
pub const PONG: &str = "{}";

/// A stream position in a channel's history: the offset of a publication within an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct StreamPosition {
    /// Offset of the last publication seen (publications are numbered 1, 2, 3, ...).
    #[serde(default)]
    pub offset: u64,
    /// The history's epoch; a new epoch means the old history is gone.
    #[serde(default)]
    pub epoch: String,
}

/// Who a connection is, as the server shows it to others (presence, join/leave, publisher).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct ClientInfo {
    /// The connection's client id.
    #[serde(default)]
    pub client: String,
    /// The user id (empty for anonymous connections).
    #[serde(default)]
    pub user: String,
    /// The connection token's `info` claim.
    #[serde(default)]
    pub conn_info: Option<Value>,
    /// The subscription token's `info` claim.
    #[serde(default)]
    pub chan_info: Option<Value>,
}

/// One publication in a channel.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Publication {
    /// Its offset in the channel's history; `None` when the channel keeps no history.
    #[serde(default)]
    pub offset: Option<u64>,
    /// The payload, any JSON.
    #[serde(default)]
    pub data: Value,
    /// The publisher, when a client published it.
    #[serde(default)]
    pub info: Option<ClientInfo>,
}

/// Counts from a `presence_stats` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct PresenceStats {
    /// Connections subscribed to the channel.
    #[serde(default)]
    pub num_clients: u32,
    /// Distinct users among them.
    #[serde(default)]
    pub num_users: u32,
}

/// The result of a `history` call.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct History {
    /// The publications asked for, oldest first unless `reverse` was set.
    #[serde(default)]
    pub publications: Vec<Publication>,
    /// The channel's current top offset.
    #[serde(default)]
    pub offset: u64,
    /// The channel's current epoch.
    #[serde(default)]
    pub epoch: String,
}

/// Options of a `history` call. The default asks for the stream position only.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryOptions {
    /// Most publications to return. `None` or 0: none, only the stream position; a negative
    /// limit: every publication kept.
    pub limit: Option<i32>,
    /// Only publications after this position.
    pub since: Option<StreamPosition>,
    /// Newest first.
    pub reverse: bool,
}

/// The result of the `connect` command.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct ConnectResult {
    /// The id the server gave this connection.
    #[serde(default)]
    pub client: String,
    /// The server's version.
    #[serde(default)]
    pub version: String,
    /// Whether the connection expires (the token had `exp`).
    #[serde(default)]
    pub expires: bool,
    /// Seconds until it expires.
    #[serde(default)]
    pub ttl: u32,
    /// The server's ping interval in seconds (0: no pings).
    #[serde(default)]
    pub ping: u32,
    /// Whether the server expects `{}` back for each ping.
    #[serde(default)]
    pub pong: bool,
    /// The node's id.
    #[serde(default)]
    pub node: String,
    /// Server-side subscriptions made at connect, by channel.
    #[serde(default)]
    pub subs: BTreeMap<String, SubscribeResult>,
}

/// The result of the `subscribe` command.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct SubscribeResult {
    /// The subscription can recover missed publications after a reconnect.
    #[serde(default)]
    pub recoverable: bool,
    /// The channel's epoch (with `recoverable`).
    #[serde(default)]
    pub epoch: String,
    /// The channel's top offset (with `recoverable`).
    #[serde(default)]
    pub offset: u64,
    /// The subscription is positioned (the server checks its position).
    #[serde(default)]
    pub positioned: bool,
    /// Every missed publication was recovered (in `publications`).
    #[serde(default)]
    pub recovered: bool,
    /// The subscribe command asked for recovery.
    #[serde(default)]
    pub was_recovering: bool,
    /// The recovered publications, in order.
    #[serde(default)]
    pub publications: Vec<Publication>,
    /// Whether the subscription expires.
    #[serde(default)]
    pub expires: bool,
    /// Seconds until it expires.
    #[serde(default)]
    pub ttl: u32,
}

/// A command's method and fields (the `id` is added by [`encode_command`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `connect`: the first command on every connection.
    Connect {
        /// Connection token (JWT), if any.
        token: Option<String>,
        /// Client name shown in the server's logs.
        name: String,
        /// Client version.
        version: String,
    },
    /// `subscribe`, optionally recovering from a stream position.
    Subscribe {
        /// The channel.
        channel: String,
        /// Recover from this position (after a reconnect).
        recover: Option<StreamPosition>,
    },
    /// `unsubscribe`.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// `publish`.
    Publish {
        /// The channel.
        channel: String,
        /// The payload.
        data: Value,
    },
    /// `presence`.
    Presence {
        /// The channel.
        channel: String,
    },
    /// `presence_stats`.
    PresenceStats {
        /// The channel.
        channel: String,
    },
    /// `history`.
    History {
        /// The channel.
        channel: String,
        /// Page options.
        options: HistoryOptions,
    },
}

impl Request {
    /// The method name, as on the wire.
    pub fn method(&self) -> &'static str {
        match self {
            Request::Connect { .. } => "connect",
            Request::Subscribe { .. } => "subscribe",
            Request::Unsubscribe { .. } => "unsubscribe",
            Request::Publish { .. } => "publish",
            Request::Presence { .. } => "presence",
            Request::PresenceStats { .. } => "presence_stats",
            Request::History { .. } => "history",
        }
    }

    fn body(&self) -> Value {
        match self {
            Request::Connect {
                token,
                name,
                version,
            } => {
                let mut body = Map::new();
                if let Some(token) = token {
                    body.insert("token".into(), token.as_str().into());
                }
                if !name.is_empty() {
                    body.insert("name".into(), name.as_str().into());
                }
                if !version.is_empty() {
                    body.insert("version".into(), version.as_str().into());
                }
                Value::Object(body)
            }
            Request::Subscribe { channel, recover } => match recover {
                Some(position) => json!({
                    "channel": channel,
                    "recover": true,
                    "offset": position.offset,
                    "epoch": position.epoch,
                }),
                None => json!({ "channel": channel }),
            },
            Request::Publish { channel, data } => json!({ "channel": channel, "data": data }),
            Request::Unsubscribe { channel }
            | Request::Presence { channel }
            | Request::PresenceStats { channel } => json!({ "channel": channel }),
            Request::History { channel, options } => {
                let mut body = Map::new();
                body.insert("channel".into(), channel.as_str().into());
                if let Some(limit) = options.limit {
                    body.insert("limit".into(), limit.into());
                }
                if let Some(since) = &options.since {
                    body.insert(
                        "since".into(),
                        json!({ "offset": since.offset, "epoch": since.epoch }),
                    );
                }
                if options.reverse {
                    body.insert("reverse".into(), true.into());
                }
                Value::Object(body)
            }
        }
    }
}

/// Encodes one command: `{"id":ID,"METHOD":{...}}`.
pub fn encode_command(id: u32, request: &Request) -> String {
    let mut command = Map::new();
    command.insert("id".into(), id.into());
    command.insert(request.method().into(), request.body());
    Value::Object(command).to_string()
}

/// One JSON object from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// `{}`: the server's ping; answer with [`PONG`].
    Ping,
    /// The answer to the command with the same id.
    Reply(Reply),
    /// Something the server sends on its own.
    Push(Push),
}

/// A reply: its command's id and the result or error.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The command's id.
    pub id: u32,
    /// The result fields, or the error.
    pub outcome: Result<ReplyBody, ReplyError>,
}

/// The result of a successful reply, under the method's name. Exactly one field is set for a
/// well-formed reply; results with no fields (`publish`, `unsubscribe`) may be absent.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct ReplyBody {
    /// `connect` result.
    #[serde(default)]
    pub connect: Option<ConnectResult>,
    /// `subscribe` result.
    #[serde(default)]
    pub subscribe: Option<SubscribeResult>,
    /// `presence` result.
    #[serde(default)]
    pub presence: Option<PresenceResult>,
    /// `presence_stats` result.
    #[serde(default)]
    pub presence_stats: Option<PresenceStats>,
    /// `history` result.
    #[serde(default)]
    pub history: Option<History>,
}

/// The result of a `presence` call.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct PresenceResult {
    /// Client id → client info of every connection subscribed to the channel.
    #[serde(default)]
    pub presence: BTreeMap<String, ClientInfo>,
}

/// A push: what the server sends on its own, about a channel or the connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    /// The channel it is about (empty for connection-wide pushes).
    pub channel: String,
    /// What happened.
    pub kind: PushKind,
}

/// The kinds of push.
#[derive(Debug, Clone, PartialEq)]
pub enum PushKind {
    /// A publication in a subscribed channel.
    Publication(Publication),
    /// Someone subscribed to the channel.
    Join(ClientInfo),
    /// Someone unsubscribed from the channel.
    Leave(ClientInfo),
    /// The server subscribed this connection to the channel.
    Subscribe,
    /// The server unsubscribed this connection from the channel.
    Unsubscribe {
        /// Why (2000: the server API's `unsubscribe`).
        code: u32,
        /// A short reason.
        reason: String,
    },
    /// The server moved this connection's expiry (server API `refresh`).
    Refresh {
        /// Whether the connection expires.
        expires: bool,
        /// Seconds until it does.
        ttl: u32,
    },
    /// The server is about to close the connection with this code (Centrifugo sends it
    /// before closing; Switchboard puts the code in the close frame only).
    Disconnect {
        /// The close code that follows.
        code: u32,
        /// The close reason.
        reason: String,
    },
    /// An asynchronous message to this connection.
    Message(Value),
    /// A push kind this client does not know; ignored.
    Unknown,
}

#[derive(Deserialize)]
struct RawIncoming {
    #[serde(default)]
    id: u32,
    #[serde(default)]
    error: Option<ReplyError>,
    #[serde(default)]
    push: Option<RawPush>,
    #[serde(flatten)]
    body: ReplyBody,
}

#[derive(Deserialize)]
struct RawPush {
    #[serde(default)]
    channel: String,
    #[serde(default, rename = "pub")]
    publication: Option<Publication>,
    #[serde(default)]
    join: Option<InfoPush>,
    #[serde(default)]
    leave: Option<InfoPush>,
    #[serde(default)]
    subscribe: Option<Value>,
    #[serde(default)]
    unsubscribe: Option<CodePush>,
    #[serde(default)]
    disconnect: Option<CodePush>,
    #[serde(default)]
    message: Option<MessagePush>,
    #[serde(default)]
    refresh: Option<RefreshPush>,
}

#[derive(Deserialize)]
struct RefreshPush {
    #[serde(default)]
    expires: bool,
    #[serde(default)]
    ttl: u32,
}

#[derive(Deserialize)]
struct InfoPush {
    #[serde(default)]
    info: ClientInfo,
}

#[derive(Deserialize)]
struct CodePush {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct MessagePush {
    #[serde(default)]
    data: Value,
}

impl RawPush {
    fn into_push(self) -> Push {
        let kind = if let Some(publication) = self.publication {
            PushKind::Publication(publication)
        } else if let Some(join) = self.join {
            PushKind::Join(join.info)
        } else if let Some(leave) = self.leave {
            PushKind::Leave(leave.info)
        } else if self.subscribe.is_some() {
            PushKind::Subscribe
        } else if let Some(CodePush { code, reason }) = self.unsubscribe {
            PushKind::Unsubscribe { code, reason }
        } else if let Some(CodePush { code, reason }) = self.disconnect {
            PushKind::Disconnect { code, reason }
        } else if let Some(message) = self.message {
            PushKind::Message(message.data)
        } else if let Some(RefreshPush { expires, ttl }) = self.refresh {
            PushKind::Refresh { expires, ttl }
        } else {
            PushKind::Unknown
        };
        Push {
            channel: self.channel,
            kind,
        }
    }
}

/// Decodes one text frame: one or more JSON objects, separated by newlines.
///
/// # Errors
/// [`DecodeError`] when the frame is not a sequence of JSON objects of the protocol's shape.
pub fn decode_frame(text: &str) -> Result<Vec<Incoming>, DecodeError> {
    let mut out = Vec::with_capacity(1);
    for raw in serde_json::Deserializer::from_str(text).into_iter::<RawIncoming>() {
        out.push(from_raw(raw?));
    }
    Ok(out)
}

fn from_raw(raw: RawIncoming) -> Incoming {
    if let Some(push) = raw.push {
        return Incoming::Push(push.into_push());
    }
    if raw.id == 0 {
        // No id and no push: `{}` is the ping. Anything else without an id answers no
        // command either, so it is treated the same (an extra `{}` is harmless).
        return Incoming::Ping;
    }
    let outcome = match raw.error {
        Some(error) => Err(error),
        None => Ok(raw.body),
    };
    Incoming::Reply(Reply {
        id: raw.id,
        outcome,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn connect_command_carries_the_token_only_when_given() {
        let with = encode_command(
            1,
            &Request::Connect {
                token: Some("abc".into()),
                name: String::new(),
                version: String::new(),
            },
        );
        let with: Value = serde_json::from_str(&with).unwrap();
        assert_eq!(with, json!({"id": 1, "connect": {"token": "abc"}}));
        let without = encode_command(
            1,
            &Request::Connect {
                token: None,
                name: "rust".into(),
                version: String::new(),
            },
        );
        let value: Value = serde_json::from_str(&without).unwrap();
        assert_eq!(value, json!({"id": 1, "connect": {"name": "rust"}}));
    }

    #[test]
    fn subscribe_command_asks_for_recovery_from_a_position() {
        let fresh = encode_command(
            2,
            &Request::Subscribe {
                channel: "news".into(),
                recover: None,
            },
        );
        let fresh: Value = serde_json::from_str(&fresh).unwrap();
        assert_eq!(fresh, json!({"id": 2, "subscribe": {"channel": "news"}}));
        let recovering = encode_command(
            3,
            &Request::Subscribe {
                channel: "news".into(),
                recover: Some(StreamPosition {
                    offset: 7,
                    epoch: "xyz".into(),
                }),
            },
        );
        let recovering: Value = serde_json::from_str(&recovering).unwrap();
        assert_eq!(
            recovering,
            json!({"id": 3, "subscribe": {"channel": "news", "recover": true, "offset": 7, "epoch": "xyz"}})
        );
    }

    #[test]
    fn publish_and_history_commands() {
        let publish = encode_command(
            4,
            &Request::Publish {
                channel: "x".into(),
                data: json!({"a": 1}),
            },
        );
        let publish: Value = serde_json::from_str(&publish).unwrap();
        assert_eq!(
            publish,
            json!({"id": 4, "publish": {"channel": "x", "data": {"a": 1}}})
        );
        let history = encode_command(
            5,
            &Request::History {
                channel: "x".into(),
                options: HistoryOptions {
                    limit: Some(10),
                    since: Some(StreamPosition {
                        offset: 3,
                        epoch: "e".into(),
                    }),
                    reverse: true,
                },
            },
        );
        let history: Value = serde_json::from_str(&history).unwrap();
        assert_eq!(
            history,
            json!({"id": 5, "history": {"channel": "x", "limit": 10, "since": {"offset": 3, "epoch": "e"}, "reverse": true}})
        );
        let stats = encode_command(
            6,
            &Request::PresenceStats {
                channel: "x".into(),
            },
        );
        let stats: Value = serde_json::from_str(&stats).unwrap();
        assert_eq!(stats, json!({"id": 6, "presence_stats": {"channel": "x"}}));
    }

    #[test]
    fn empty_object_is_a_ping() {
        assert_eq!(decode_frame("{}").unwrap(), vec![Incoming::Ping]);
    }

    #[test]
    fn batched_frame_decodes_in_order() {
        let frame = concat!(
            r#"{"id":1,"connect":{"client":"c1","version":"0.1.0","ping":25,"pong":true}}"#,
            "\n",
            r#"{"id":2,"subscribe":{"recoverable":true,"epoch":"ep","offset":4,"recovered":true,"was_recovering":true,"publications":[{"data":{"n":4},"offset":4}]}}"#,
            "\n",
            r#"{"push":{"channel":"news","pub":{"data":"hi","offset":5,"info":{"client":"c2","user":"u"}}}}"#,
            "\n{}\n",
        );
        let decoded = decode_frame(frame).unwrap();
        assert_eq!(decoded.len(), 4);
        let Incoming::Reply(Reply {
            id: 1,
            outcome: Ok(body),
        }) = &decoded[0]
        else {
            panic!("{:?}", decoded[0]);
        };
        let connect = body.connect.as_ref().unwrap();
        assert_eq!(
            (connect.client.as_str(), connect.ping, connect.pong),
            ("c1", 25, true)
        );
        let Incoming::Reply(Reply {
            id: 2,
            outcome: Ok(body),
        }) = &decoded[1]
        else {
            panic!("{:?}", decoded[1]);
        };
        let subscribe = body.subscribe.as_ref().unwrap();
        assert!(subscribe.recoverable && subscribe.recovered && subscribe.was_recovering);
        assert_eq!((subscribe.epoch.as_str(), subscribe.offset), ("ep", 4));
        assert_eq!(subscribe.publications[0].offset, Some(4));
        assert_eq!(subscribe.publications[0].data, json!({"n": 4}));
        let Incoming::Push(push) = &decoded[2] else {
            panic!("{:?}", decoded[2]);
        };
        assert_eq!(push.channel, "news");
        let PushKind::Publication(publication) = &push.kind else {
            panic!("{:?}", push.kind);
        };
        assert_eq!(publication.offset, Some(5));
        assert_eq!(publication.data, json!("hi"));
        assert_eq!(publication.info.as_ref().unwrap().user, "u");
        assert_eq!(decoded[3], Incoming::Ping);
    }

    #[test]
    fn error_reply_decodes_with_code_and_message() {
        let decoded =
            decode_frame(r#"{"id":9,"error":{"code":103,"message":"permission denied"}}"#).unwrap();
        assert_eq!(
            decoded,
            vec![Incoming::Reply(Reply {
                id: 9,
                outcome: Err(ReplyError {
                    code: 103,
                    message: "permission denied".into(),
                    temporary: false,
                }),
            })]
        );
        let temporary =
            decode_frame(r#"{"id":9,"error":{"code":100,"message":"x","temporary":true}}"#)
                .unwrap();
        let Incoming::Reply(Reply {
            outcome: Err(e), ..
        }) = &temporary[0]
        else {
            panic!("{temporary:?}");
        };
        assert!(e.temporary);
    }

    #[test]
    fn results_of_every_call_decode() {
        let frame = concat!(
            r#"{"id":3,"publish":{}}"#,
            r#"{"id":4,"presence":{"presence":{"c1":{"client":"c1","user":"42","conn_info":{"name":"a"}}}}}"#,
            r#"{"id":5,"presence_stats":{"num_clients":2,"num_users":1}}"#,
            r#"{"id":6,"history":{"publications":[{"data":1,"offset":1},{"data":2,"offset":2}],"offset":2,"epoch":"e"}}"#,
            r#"{"id":7}"#,
        );
        let decoded = decode_frame(frame).unwrap();
        let bodies: Vec<ReplyBody> = decoded
            .into_iter()
            .map(|incoming| match incoming {
                Incoming::Reply(Reply {
                    outcome: Ok(body), ..
                }) => body,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(bodies[0], ReplyBody::default());
        let presence = &bodies[1].presence.as_ref().unwrap().presence;
        assert_eq!(presence["c1"].user, "42");
        assert_eq!(presence["c1"].conn_info, Some(json!({"name": "a"})));
        assert_eq!(
            bodies[2].presence_stats,
            Some(PresenceStats {
                num_clients: 2,
                num_users: 1
            })
        );
        let history = bodies[3].history.as_ref().unwrap();
        assert_eq!(history.publications.len(), 2);
        assert_eq!((history.offset, history.epoch.as_str()), (2, "e"));
        assert_eq!(bodies[4], ReplyBody::default());
    }

    #[test]
    fn pushes_decode_by_kind() {
        let frame = concat!(
            r#"{"push":{"channel":"c","join":{"info":{"client":"a","user":"1"}}}}"#,
            r#"{"push":{"channel":"c","leave":{"info":{"client":"a","user":"1"}}}}"#,
            r#"{"push":{"channel":"c","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}}"#,
            r#"{"push":{"disconnect":{"code":3001,"reason":"shutdown"}}}"#,
            r#"{"push":{"channel":"s","subscribe":{"recoverable":false}}}"#,
            r#"{"push":{"message":{"data":{"x":1}}}}"#,
            r#"{"push":{"refresh":{"expires":true,"ttl":60}}}"#,
            r#"{"push":{"channel":"c","something_new":{}}}"#,
        );
        let kinds: Vec<PushKind> = decode_frame(frame)
            .unwrap()
            .into_iter()
            .map(|incoming| match incoming {
                Incoming::Push(push) => push.kind,
                other => panic!("{other:?}"),
            })
            .collect();
        let info = ClientInfo {
            client: "a".into(),
            user: "1".into(),
            ..ClientInfo::default()
        };
        assert_eq!(
            kinds,
            vec![
                PushKind::Join(info.clone()),
                PushKind::Leave(info),
                PushKind::Unsubscribe {
                    code: 2000,
                    reason: "server unsubscribe".into()
                },
                PushKind::Disconnect {
                    code: 3001,
                    reason: "shutdown".into()
                },
                PushKind::Subscribe,
                PushKind::Message(json!({"x": 1})),
                PushKind::Refresh {
                    expires: true,
                    ttl: 60
                },
                PushKind::Unknown,
            ]
        );
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert!(decode_frame("{").is_err());
        assert!(decode_frame("[1,2]").is_err());
        assert!(decode_frame(r#"{"id":"one"}"#).is_err());
    }
}
