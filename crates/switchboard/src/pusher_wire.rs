//! The Pusher channels protocol as bytes, with no I/O: the signatures (HMAC-SHA256 of a
//! connection's channel, of an HTTP API request), the channel kinds and the name rules, the
//! mapping of a Pusher channel onto a hub channel, and the JSON events sent and read.
//!
//! A Pusher channel `C` of app `A` is the hub channel `A:C`: the app id is the namespace, so a
//! client-protocol subscriber of `A:C` and a Pusher subscriber of `C` in app `A` share one
//! channel, and two apps never share one. A Pusher event travels through the node and the
//! broker as a JSON publication `{"event":…,"data":…}` (plus `user_id` for a presence client
//! event); a Pusher subscriber receives any other publication as the event
//! [`PUBLICATION_EVENT`] whose `data` is the publication's JSON. docs/pusher.md describes it.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::Sha256;

use crate::ws::frame::{self, Opcode};

/// The event a Pusher subscriber receives for a publication that is not a Pusher event.
pub const PUBLICATION_EVENT: &str = "switchboard:publication";

/// The longest Pusher channel name, in bytes.
pub const MAX_CHANNEL_NAME: usize = 200;

/// The longest event name, in bytes.
pub const MAX_EVENT_NAME: usize = 200;

type HmacSha256 = Hmac<Sha256>;

/// The lowercase hex HMAC-SHA256 of `message` under `secret`.
pub fn sign(secret: &str, message: &str) -> String {
    // An HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature` (hex) is the HMAC-SHA256 of `message` under `secret`, compared in
/// constant time.
pub fn verify(secret: &str, message: &str, signature: &str) -> bool {
    let Ok(given) = hex::decode(signature) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(message.as_bytes());
    mac.verify_slice(&given).is_ok()
}

/// The lowercase hex MD5 of an HTTP API request's body (its `body_md5`).
pub fn md5_hex(body: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(body))
}

/// The kind of a Pusher channel, read from its name's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// No prefix: anyone may subscribe.
    Public,
    /// `private-`: a signature of `socket_id:channel` is needed.
    Private,
    /// `private-encrypted-`: as private; the payloads are end-to-end encrypted by the
    /// clients and pass through untouched.
    PrivateEncrypted,
    /// `presence-`: a signature of `socket_id:channel:channel_data`; members are kept.
    Presence,
}

impl ChannelKind {
    /// The kind of channel `name`.
    pub fn of(name: &str) -> ChannelKind {
        if name.starts_with("private-encrypted-") {
            ChannelKind::PrivateEncrypted
        } else if name.starts_with("private-") {
            ChannelKind::Private
        } else if name.starts_with("presence-") {
            ChannelKind::Presence
        } else {
            ChannelKind::Public
        }
    }

    /// Whether subscribing needs a signature.
    pub fn needs_auth(self) -> bool {
        self != ChannelKind::Public
    }
}

/// The prefix of a signed-in user's own channel (`#server-to-user-{id}`).
pub const USER_CHANNEL_PREFIX: &str = "#server-to-user-";

/// Checks a Pusher channel name: 1 to 200 of `A-Z a-z 0-9 _ - = @ , . ;` (no `:`, so the
/// hub channel `app:name` splits one way only), or a user's channel
/// [`USER_CHANNEL_PREFIX`]`{id}`.
pub fn check_channel(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_CHANNEL_NAME {
        return Err("channel names are 1 to 200 characters long");
    }
    let rest = name.strip_prefix(USER_CHANNEL_PREFIX).unwrap_or(name);
    if rest.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
    {
        return Err("channel names may only hold A-Z a-z 0-9 _ - = @ , . ;");
    }
    Ok(())
}

/// The hub channel of Pusher channel `name` in app `app_id`.
pub fn hub_channel(app_id: &str, name: &str) -> String {
    format!("{app_id}:{name}")
}

/// The Pusher channel name of hub channel `hub` (what follows the app id).
pub fn pusher_name(hub: &str) -> &str {
    hub.split_once(':').map_or(hub, |(_, name)| name)
}

/// One message from a Pusher client.
#[derive(Debug, Deserialize)]
pub struct ClientMessage<'a> {
    /// `pusher:subscribe`, `pusher:ping`, `client-…`, …
    #[serde(borrow)]
    pub event: std::borrow::Cow<'a, str>,
    /// The channel of a client event.
    #[serde(default, borrow)]
    pub channel: Option<std::borrow::Cow<'a, str>>,
    /// The event's data, kept as the client wrote it.
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
}

/// The `data` of `pusher:subscribe`.
#[derive(Debug, Deserialize)]
pub struct Subscribe {
    /// The channel.
    pub channel: String,
    /// `key:signature` for private and presence channels.
    #[serde(default)]
    pub auth: Option<String>,
    /// Presence: the signed JSON text `{"user_id":…,"user_info":…}`.
    #[serde(default)]
    pub channel_data: Option<String>,
}

/// The `data` of `pusher:unsubscribe`.
#[derive(Debug, Deserialize)]
pub struct Unsubscribe {
    /// The channel.
    pub channel: String,
}

/// A presence member as its `channel_data` describes it.
#[derive(Debug, Deserialize)]
pub struct ChannelData {
    /// The user's id: a string or a number, kept as a string.
    pub user_id: Value,
    /// What the others see of the user.
    #[serde(default)]
    pub user_info: Option<Value>,
}

impl ChannelData {
    /// The user id as text (`None` when it is neither a string nor a number, or empty).
    pub fn user_id(&self) -> Option<String> {
        match &self.user_id {
            Value::String(id) if !id.is_empty() => Some(id.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// A Pusher event as it travels in a publication.
#[derive(Debug, Deserialize)]
struct Envelope<'a> {
    event: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    user_id: Option<&'a str>,
}

/// The publication payload (JSON text) that carries event `event` with `data` (JSON text),
/// and the sender's user for a presence client event.
pub fn envelope(event: &str, data: &RawValue, user_id: Option<&str>) -> Bytes {
    let mut out = format!("{{\"event\":{},\"data\":{}", json_string(event), data.get());
    if let Some(user) = user_id {
        out.push_str(",\"user_id\":");
        out.push_str(&json_string(user));
    }
    out.push('}');
    Bytes::from(out)
}

fn json_string(text: &str) -> String {
    Value::from(text).to_string()
}

/// The text of a server event: `data` is JSON text put in as it is.
pub fn event_text(event: &str, channel: Option<&str>, data: &str) -> String {
    let mut out = format!("{{\"event\":{}", json_string(event));
    if let Some(channel) = channel {
        out.push_str(",\"channel\":");
        out.push_str(&json_string(channel));
    }
    out.push_str(",\"data\":");
    out.push_str(data);
    out.push('}');
    out
}

/// A server event as a WebSocket text frame.
pub fn event_frame(event: &str, channel: Option<&str>, data: &str) -> Bytes {
    frame::encode(Opcode::Text, event_text(event, channel, data).as_bytes())
}

/// A server event whose `data` is the JSON value `data` sent as a string, as Pusher does for
/// its own events (`connection_established`, `subscription_succeeded`, members).
pub fn event_frame_stringified(event: &str, channel: Option<&str>, data: &Value) -> Bytes {
    event_frame(event, channel, &json_string(&data.to_string()))
}

/// The frame a Pusher subscriber of hub channel `hub` receives for a publication whose JSON
/// `data` is `data_json`: the Pusher event it carries, or [`PUBLICATION_EVENT`].
pub fn publication_frame(hub: &str, data_json: &[u8]) -> Bytes {
    let channel = pusher_name(hub);
    if let Ok(envelope) = serde_json::from_slice::<Envelope<'_>>(data_json) {
        let mut out = format!(
            "{{\"event\":{},\"channel\":{},\"data\":{}",
            json_string(envelope.event),
            json_string(channel),
            envelope.data.get()
        );
        if let Some(user) = envelope.user_id {
            out.push_str(",\"user_id\":");
            out.push_str(&json_string(user));
        }
        out.push('}');
        return frame::encode(Opcode::Text, out.as_bytes());
    }
    let data = String::from_utf8_lossy(data_json);
    event_frame(PUBLICATION_EVENT, Some(channel), &data)
}

/// `pusher:error` with `code` and `message`.
pub fn error_frame(code: u16, message: &str) -> Bytes {
    let data = serde_json::json!({ "code": code, "message": message }).to_string();
    event_frame("pusher:error", None, &data)
}

/// `pusher_internal:member_added` or `member_removed` for hub channel `hub`.
pub fn member_frame(hub: &str, user_id: &str, user_info: &[u8], added: bool) -> Bytes {
    let channel = Some(pusher_name(hub));
    if added {
        let info: Value = serde_json::from_slice(user_info).unwrap_or(Value::Null);
        let data = serde_json::json!({ "user_id": user_id, "user_info": info });
        event_frame_stringified("pusher_internal:member_added", channel, &data)
    } else {
        let data = serde_json::json!({ "user_id": user_id });
        event_frame_stringified("pusher_internal:member_removed", channel, &data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            sign("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(
            "Jefe",
            "what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        ));
        assert!(!verify("Jefe", "what do ya want for nothing?", "00"));
        assert!(!verify("Jefe", "x", "not hex"));
    }

    #[test]
    fn md5_of_empty_body() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn kinds_and_names() {
        assert_eq!(
            ChannelKind::of("private-encrypted-a"),
            ChannelKind::PrivateEncrypted
        );
        assert_eq!(ChannelKind::of("private-a"), ChannelKind::Private);
        assert_eq!(ChannelKind::of("presence-a"), ChannelKind::Presence);
        assert_eq!(ChannelKind::of("a"), ChannelKind::Public);
        assert!(check_channel("a-b_c=d@e,f.g;h").is_ok());
        assert!(check_channel("a:b").is_err());
        assert!(check_channel("#server-to-user-u1").is_ok());
        assert!(check_channel("#other").is_err());
        assert!(check_channel(USER_CHANNEL_PREFIX).is_err());
        assert!(check_channel("").is_err());
        assert!(check_channel(&"x".repeat(201)).is_err());
        assert_eq!(pusher_name(&hub_channel("app1", "private-x")), "private-x");
    }

    #[test]
    fn envelopes_become_events_and_other_data_the_publication_event() {
        let data = RawValue::from_string("\"hello\"".to_owned()).unwrap();
        let payload = envelope("greet", &data, Some("u1"));
        let frame = publication_frame("app:room", &payload);
        let text = std::str::from_utf8(&frame[2..]).unwrap();
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(value["event"], "greet");
        assert_eq!(value["channel"], "room");
        assert_eq!(value["data"], "hello");
        assert_eq!(value["user_id"], "u1");
        let frame = publication_frame("app:room", b"{\"x\":1}");
        let value: Value = serde_json::from_str(std::str::from_utf8(&frame[2..]).unwrap()).unwrap();
        assert_eq!(value["event"], PUBLICATION_EVENT);
        assert_eq!(value["data"]["x"], 1);
    }
}
