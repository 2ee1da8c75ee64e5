//! The Pusher channels protocol (version 7) and the Pusher HTTP API, client side, as far as the
//! bench needs them (`--door pusher`): any server with a Pusher door, Switchboard's or another.
//! A subscriber opens `/app/{key}?protocol=7&client=switchboard-bench&version=1`, waits for
//! `pusher:connection_established`, sends `pusher:subscribe` for a public channel and waits for
//! `pusher_internal:subscription_succeeded` ([`join`]). Every text frame is then one event,
//! classified in place by [`classify`] without allocating: `pusher:ping` (to be answered with
//! [`PONG`]), another `pusher:`/`pusher_internal:` event, or an event whose `data` string is the
//! bench message. Publications go through `POST /apps/{id}/events`, signed the way Pusher's
//! server SDKs sign ([`publish_request`]): the query `auth_key`, `auth_timestamp`,
//! `auth_version=1.0`, `body_md5` in sorted order, and `auth_signature`, the hex HMAC-SHA256
//! of `POST\n{path}\n{query}` under the app's secret. The answers are read with
//! [`crate::api::parse_response`].

use crate::net::{self, Conn, SocketOpts, Target};
use crate::protocol::{string_start, value_after, Msg};
use crate::ws::{self, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use anyhow::{bail, Context, Result};
use hmac::{Hmac, Mac};
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The event name of the bench's publications.
pub const EVENT: &str = "bench";
/// The answer to the server's `pusher:ping`.
pub const PONG: &[u8] = br#"{"event":"pusher:pong","data":{}}"#;
/// Time allowed from the handshake to `subscription_succeeded`.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

/// One Pusher app: what the connections and the signed API requests need.
#[derive(Debug, Clone)]
pub struct App {
    /// The app id (`/apps/{id}/events`).
    pub id: String,
    /// The public key (`/app/{key}`, `auth_key`).
    pub key: String,
    /// The secret that signs API requests.
    pub secret: String,
    /// The `Host` header of the API requests.
    pub host: String,
}

impl App {
    /// The WebSocket request path of this app's door.
    pub fn socket_path(&self) -> String {
        format!(
            "/app/{}?protocol=7&client=switchboard-bench&version=1",
            self.key
        )
    }
}

/// What the `data` of a Pusher event frame is, found in place.
#[inline]
pub fn classify(obj: &[u8]) -> Msg<'_> {
    let Some(event) = value_after(obj, b"\"event\":") else {
        return Msg::Other;
    };
    if event.starts_with(b"\"pusher:ping\"") {
        return Msg::Ping;
    }
    if event.starts_with(b"\"pusher:") || event.starts_with(b"\"pusher_internal:") {
        return Msg::Push;
    }
    let Some(data) = value_after(obj, b"\"data\":") else {
        return Msg::Other;
    };
    match data.first() {
        Some(b'"') => Msg::Data(string_start(data)),
        _ => Msg::Other,
    }
}

/// Whether the event frame `obj` is the event `name`.
fn is_event(obj: &[u8], name: &str) -> bool {
    value_after(obj, b"\"event\":").is_some_and(|e| {
        e.strip_prefix(b"\"")
            .and_then(|e| e.strip_prefix(name.as_bytes()))
            .is_some_and(|rest| rest.starts_with(b"\""))
    })
}

/// Waits on a freshly opened Pusher connection for `pusher:connection_established` (answering
/// pings meanwhile); a `pusher:error` fails with the server's message.
pub async fn established(conn: &mut Conn) -> Result<()> {
    read_until(
        conn,
        "pusher:connection_established",
        "connection_established",
    )
    .await
}

/// Waits for `connection_established`, subscribes to the public `channel` and waits for its
/// `pusher_internal:subscription_succeeded`. Frames after it stay in the reader.
pub async fn join(conn: &mut Conn, channel: &str) -> Result<()> {
    established(conn).await?;
    let subscribe = format!(
        r#"{{"event":"pusher:subscribe","data":{{"channel":{}}}}}"#,
        Value::from(channel)
    );
    let mut out = Vec::new();
    ws::encode_frame(&mut out, OP_TEXT, subscribe.as_bytes());
    conn.stream
        .write_all(&out)
        .await
        .context("sending pusher:subscribe")?;
    read_until(
        conn,
        "pusher_internal:subscription_succeeded",
        &format!("subscription_succeeded for {channel}"),
    )
    .await
}

async fn read_until(conn: &mut Conn, event: &str, what: &str) -> Result<()> {
    let fut = async {
        let mut ctrl = Vec::new();
        loop {
            let mut done = false;
            while !done {
                let Some(f) = conn.reader.next_frame()? else {
                    break;
                };
                match f.opcode {
                    OP_CLOSE => bail!(
                        "server sent {} before {what}",
                        ws::describe_close(f.payload)
                    ),
                    OP_PING => ws::encode_frame(&mut ctrl, OP_PONG, f.payload),
                    OP_TEXT => {
                        if is_event(f.payload, "pusher:error") {
                            bail!(
                                "server sent {} before {what}",
                                String::from_utf8_lossy(f.payload)
                            );
                        }
                        if is_event(f.payload, "pusher:ping") {
                            ws::encode_frame(&mut ctrl, OP_TEXT, PONG);
                        }
                        done = is_event(f.payload, event);
                    }
                    _ => {}
                }
            }
            if !ctrl.is_empty() {
                conn.stream.write_all(&ctrl).await?;
                ctrl.clear();
            }
            if done {
                return Ok(());
            }
            if conn.reader.read_from(&mut conn.stream).await? == 0 {
                bail!("server closed the connection before {what}");
            }
        }
    };
    tokio::time::timeout(JOIN_TIMEOUT, fut)
        .await
        .with_context(|| format!("no {what} within {JOIN_TIMEOUT:?}"))?
}

/// Opens a connection to `app`'s door on `target`, waits for `connection_established` and,
/// with a `channel`, subscribes to it.
pub async fn open(
    target: &Target,
    app: &App,
    channel: Option<&str>,
    source: Option<IpAddr>,
    opts: &SocketOpts,
) -> Result<Conn> {
    let path = target.request_path_without_token(&app.socket_path());
    let mut conn = net::open_request(target, &path, source, opts).await?;
    match channel {
        Some(c) => join(&mut conn, c).await,
        None => established(&mut conn).await,
    }
    .with_context(|| format!("Pusher door /app/{}", app.key))?;
    Ok(conn)
}

/// The hex HMAC-SHA256 of `message` under `secret`.
fn sign(secret: &str, message: &str) -> String {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = <Hmac<sha2::Sha256>>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Writes into `out` (cleared first) a signed keep-alive `POST /apps/{id}/events` that triggers
/// [`EVENT`] on `channel` with `data` (a JSON string), stamped `unix_s`.
pub fn publish_request(app: &App, channel: &str, data: &[u8], unix_s: u64, out: &mut Vec<u8>) {
    let body = format!(
        r#"{{"name":"{EVENT}","channel":{},"data":{}}}"#,
        Value::from(channel),
        Value::from(String::from_utf8_lossy(data).as_ref())
    );
    let md5 = {
        use md5::Digest;
        hex::encode(md5::Md5::digest(body.as_bytes()))
    };
    let path = format!("/apps/{}/events", app.id);
    let query = format!(
        "auth_key={}&auth_timestamp={unix_s}&auth_version=1.0&body_md5={md5}",
        app.key
    );
    let signature = sign(&app.secret, &format!("POST\n{path}\n{query}"));
    out.clear();
    out.extend_from_slice(
        format!(
            "POST {path}?{query}&auth_signature={signature} HTTP/1.1\r\nHost: {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            app.host,
            body.len()
        )
        .as_bytes(),
    );
}

/// Seconds since the Unix epoch (the `auth_timestamp`).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_classified() {
        let ev = br#"{"event":"bench","channel":"room-0","data":"P0123....."}"#;
        assert_eq!(classify(ev), Msg::Data(b"P0123....."));
        // Another server may put the keys in another order.
        let ev = br#"{"channel":"room-0","data":"W","event":"bench"}"#;
        assert_eq!(classify(ev), Msg::Data(b"W"));
        assert_eq!(classify(br#"{"event":"pusher:ping","data":{}}"#), Msg::Ping);
        assert_eq!(
            classify(br#"{"event":"pusher_internal:subscription_succeeded","channel":"c"}"#),
            Msg::Push
        );
        assert_eq!(classify(br#"{"event":"x","data":{"a":1}}"#), Msg::Other);
        assert_eq!(classify(b"nope"), Msg::Other);
    }

    #[test]
    fn requests_are_signed_like_the_sdks() {
        // HMAC-SHA256 test case 2 of RFC 4231.
        assert_eq!(
            sign("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let app = App {
            id: "app".into(),
            key: "key".into(),
            secret: "secret".into(),
            host: "127.0.0.1:1".into(),
        };
        let mut out = Vec::new();
        publish_request(&app, "room-0", b"P1", 1_700_000_000, &mut out);
        let text = String::from_utf8(out).expect("utf-8");
        let body = r#"{"name":"bench","channel":"room-0","data":"P1"}"#;
        let md5 = {
            use md5::Digest;
            hex::encode(md5::Md5::digest(body.as_bytes()))
        };
        let query =
            format!("auth_key=key&auth_timestamp=1700000000&auth_version=1.0&body_md5={md5}");
        let sig = sign("secret", &format!("POST\n/apps/app/events\n{query}"));
        assert!(text.starts_with(&format!(
            "POST /apps/app/events?{query}&auth_signature={sig} HTTP/1.1\r\n"
        )));
        assert!(text.ends_with(&format!("\r\n\r\n{body}")));
    }
}
