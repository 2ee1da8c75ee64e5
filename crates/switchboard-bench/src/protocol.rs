//! The client protocol of `/connection/websocket` (the JSON flavour of Centrifugo's protocol),
//! client side, as far as the bench's subscribers need it. Once the WebSocket handshake is
//! done, [`join`] sends the `connect` command (with `--token` when given; none when the server
//! allows anonymous clients) and the `subscribe` command for the room's channel, both at once,
//! and reads until both replies have come back without an error. From then on every text frame
//! is split into its JSON objects (one frame may hold several, separated by `\n`) and each is
//! classified in place by [`classify`], allocating nothing: the server's ping `{}` (to be
//! answered with [`PONG`]), the `data` of a publication push, another push (`join` and `leave`
//! come to every subscriber of a namespace with `join_leave`, as `chat` has with `--dev`), or
//! anything else.
//!
//! A push is `{"push":{"channel":"chat:ROOM","pub":{"data":<json>,"offset":N}}}`: the `data`
//! is found by a scan for the `"pub":` key and then the `"data":` key (the server writes
//! compact JSON). The bench's payloads are not JSON, so the server sends them as JSON strings:
//! the quotes are stripped and the text is the payload itself (the payloads hold no character
//! that JSON escapes; a string is cut at its first `\`). Any other JSON value is returned from
//! its first byte to the end of the object, which is enough for a header-only parse.

use crate::net::Conn;
use crate::ws::{self, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Path of the client protocol's door.
pub const PATH: &str = "/connection/websocket";
/// The server's ping, and what the client answers it with (as a text frame).
pub const PONG: &[u8] = b"{}";
/// Time allowed from sending `connect` and `subscribe` to both replies.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Command ids of `connect` and `subscribe`.
const CONNECT_ID: u64 = 1;
const SUBSCRIBE_ID: u64 = 2;

/// The channel a plain chat room `room` is on the client protocol.
pub fn channel(room: &str) -> String {
    format!("chat:{room}")
}

/// One JSON object received on the client protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum Msg<'a> {
    /// The `data` of a publication push (a JSON string's text, without its quotes).
    Data(&'a [u8]),
    /// The server's ping: answer [`PONG`].
    Ping,
    /// A push without a publication (`join`, `leave`, ...).
    Push,
    /// Anything else (a reply, something unexpected).
    Other,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What follows the first `key` (quotes and colon included in `key`) in `obj`, from the first
/// byte of its value on (whitespace after the colon skipped).
pub(crate) fn value_after<'a>(obj: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = find(obj, key)? + key.len();
    let rest = &obj[at..];
    let skip = rest
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(rest.len());
    Some(&rest[skip..])
}

/// Classifies one JSON object received on the client protocol, in place.
#[inline]
pub fn classify(obj: &[u8]) -> Msg<'_> {
    if obj == PONG {
        return Msg::Ping;
    }
    if !obj.starts_with(b"{\"push\":") {
        return Msg::Other;
    }
    let Some(publication) = value_after(obj, b"\"pub\":") else {
        return Msg::Push;
    };
    let Some(data) = value_after(publication, b"\"data\":") else {
        return Msg::Other;
    };
    match data.first() {
        Some(b'"') => Msg::Data(string_start(data)),
        Some(_) => Msg::Data(data),
        None => Msg::Other,
    }
}

/// The text of the JSON string `value` starts with, up to its closing quote or its first
/// escape: enough for the bench's payloads (a counter and a timestamp), read without copying.
#[inline]
pub(crate) fn string_start(value: &[u8]) -> &[u8] {
    let text = value.strip_prefix(b"\"").unwrap_or(value);
    let end = text
        .iter()
        .position(|&b| b == b'"' || b == b'\\')
        .unwrap_or(text.len());
    &text[..end]
}

/// The JSON objects of one text frame, classified (empty lines skipped).
#[inline]
pub fn messages(payload: &[u8]) -> impl Iterator<Item = Msg<'_>> {
    payload
        .split(|&b| b == b'\n')
        .filter(|o| !o.is_empty())
        .map(classify)
}

/// The two commands' JSON texts: `connect` (with `token` if given) and `subscribe` to
/// `channel` (also what `crate::stream` opens its streams with).
pub fn command_texts(channel: &str, token: Option<&str>) -> [String; 2] {
    // `Value::from(..).to_string()`: a JSON string literal, escaped as needed.
    let connect = match token {
        Some(t) => format!(
            r#"{{"id":{CONNECT_ID},"connect":{{"token":{}}}}}"#,
            Value::from(t)
        ),
        None => format!(r#"{{"id":{CONNECT_ID},"connect":{{}}}}"#),
    };
    let subscribe = format!(
        r#"{{"id":{SUBSCRIBE_ID},"subscribe":{{"channel":{}}}}}"#,
        Value::from(channel)
    );
    [connect, subscribe]
}

/// The two commands, as masked text frames.
fn commands(channel: &str, token: Option<&str>) -> Vec<u8> {
    let [connect, subscribe] = command_texts(channel, token);
    let mut out = Vec::new();
    ws::encode_frame(&mut out, OP_TEXT, connect.as_bytes());
    ws::encode_frame(&mut out, OP_TEXT, subscribe.as_bytes());
    out
}

/// What one reply object says: `Ok(Some(id))` for a successful reply, `Ok(None)` for a push
/// or a ping, `Err` for an error reply or an object that is not JSON.
fn check_reply(obj: &[u8], channel: &str) -> Result<Option<u64>> {
    let v: Value = serde_json::from_slice(obj).with_context(|| {
        format!(
            "the server sent something that is not JSON: {:?}",
            String::from_utf8_lossy(obj)
        )
    })?;
    let Some(id) = v.get("id").and_then(Value::as_u64) else {
        return Ok(None);
    };
    if let Some(e) = v.get("error") {
        match id {
            CONNECT_ID => bail!("connect refused: {e}"),
            SUBSCRIBE_ID => bail!("subscribe to {channel} refused: {e}"),
            _ => bail!("reply {id} is an error: {e}"),
        }
    }
    Ok(Some(id))
}

/// Sends `connect` and `subscribe` to `channel` on a freshly opened client-protocol connection
/// and waits for both replies (answering pings meanwhile). Frames after the subscribe reply
/// stay in the connection's reader for whoever reads next.
pub async fn join(conn: &mut Conn, channel: &str, token: Option<&str>) -> Result<()> {
    conn.stream
        .write_all(&commands(channel, token))
        .await
        .context("sending connect and subscribe")?;
    let fut = async {
        let (mut connected, mut subscribed) = (false, false);
        let mut ctrl = Vec::new();
        loop {
            while !subscribed {
                let Some(f) = conn.reader.next_frame()? else {
                    break;
                };
                match f.opcode {
                    OP_CLOSE => bail!(
                        "server sent {} before the subscribe reply",
                        ws::describe_close(f.payload)
                    ),
                    OP_PING => ws::encode_frame(&mut ctrl, OP_PONG, f.payload),
                    OP_TEXT => {
                        for obj in f.payload.split(|&b| b == b'\n').filter(|o| !o.is_empty()) {
                            if obj == PONG {
                                ws::encode_frame(&mut ctrl, OP_TEXT, PONG);
                                continue;
                            }
                            match check_reply(obj, channel)? {
                                Some(CONNECT_ID) => connected = true,
                                Some(SUBSCRIBE_ID) => subscribed = true,
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            if !ctrl.is_empty() {
                conn.stream.write_all(&ctrl).await?;
                ctrl.clear();
            }
            if subscribed {
                if !connected {
                    bail!("the subscribe reply came before the connect reply");
                }
                return Ok(());
            }
            if conn.reader.read_from(&mut conn.stream).await? == 0 {
                bail!("server closed the connection before the subscribe reply");
            }
        }
    };
    tokio::time::timeout(JOIN_TIMEOUT, fut)
        .await
        .with_context(|| format!("no subscribe reply for {channel} within {JOIN_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_data_of_a_push() {
        let push = br#"{"push":{"channel":"chat:room-0","pub":{"data":"P0123.....","offset":7}}}"#;
        assert_eq!(classify(push), Msg::Data(b"P0123....."));
        let json = br#"{"push":{"channel":"c","pub":{"data": {"a":1},"offset":1}}}"#;
        assert_eq!(classify(json), Msg::Data(br#"{"a":1},"offset":1}}}"#));
        // A channel whose name holds the key is still read right (the quotes are escaped).
        let odd = br#"{"push":{"channel":"x\"data\":\"y","pub":{"data":"W"}}}"#;
        assert_eq!(classify(odd), Msg::Data(b"W"));
        // A JSON publication (`--payload-kind json`) is the data object itself, header first.
        let obj = br#"{"push":{"channel":"c","pub":{"data":{"id":"P01","text":"a"},"offset":2}}}"#;
        assert_eq!(
            classify(obj),
            Msg::Data(br#"{"id":"P01","text":"a"},"offset":2}}}"#)
        );
        assert_eq!(classify(b"{}"), Msg::Ping);
        assert_eq!(classify(br#"{"id":2,"subscribe":{}}"#), Msg::Other);
        assert_eq!(
            classify(br#"{"push":{"channel":"c","join":{"info":{"user":"","client":"x"}}}}"#),
            Msg::Push
        );
        assert_eq!(
            classify(br#"{"push":{"channel":"c","pub":{"data":"#),
            Msg::Other
        );
    }

    #[test]
    fn splits_batched_objects() {
        let frame = b"{}\n{\"push\":{\"channel\":\"c\",\"pub\":{\"data\":\"W\"}}}\n\n{\"id\":3}";
        let got: Vec<Msg<'_>> = messages(frame).collect();
        assert_eq!(got, vec![Msg::Ping, Msg::Data(b"W"), Msg::Other]);
    }

    #[test]
    fn replies_are_checked() {
        assert_eq!(
            check_reply(br#"{"id":1,"connect":{}}"#, "c").ok(),
            Some(Some(1))
        );
        assert_eq!(check_reply(b"{}", "c").ok(), Some(None));
        let refused = check_reply(
            br#"{"id":2,"error":{"code":103,"message":"permission denied"}}"#,
            "chat:x",
        )
        .map_err(|e| e.to_string());
        assert_eq!(
            refused,
            Err(
                r#"subscribe to chat:x refused: {"code":103,"message":"permission denied"}"#
                    .to_string()
            )
        );
        assert!(check_reply(b"nope", "c").is_err());
    }

    #[test]
    fn commands_are_two_text_frames() {
        let out = commands("chat:r", Some("a\"b"));
        let mut src = &out[..];
        // Client frames are masked; unmask by hand.
        let mut texts = Vec::new();
        while !src.is_empty() {
            let len = usize::from(src[1] & 0x7f);
            let mask = [src[2], src[3], src[4], src[5]];
            let body: Vec<u8> = src[6..6 + len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i & 3])
                .collect();
            texts.push(String::from_utf8(body).expect("utf-8"));
            src = &src[6 + len..];
        }
        assert_eq!(
            texts,
            vec![
                r#"{"id":1,"connect":{"token":"a\"b"}}"#.to_string(),
                r#"{"id":2,"subscribe":{"channel":"chat:r"}}"#.to_string()
            ]
        );
        let out = commands("c", None);
        assert_eq!(usize::from(out[1] & 0x7f), r#"{"id":1,"connect":{}}"#.len());
    }
}
