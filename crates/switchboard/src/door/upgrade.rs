//! The upgrade of every WebSocket door: the plain doors `/ws` (echo), `/ws/chat/{room}` and
//! `/ws/notify/user/{id}`, the client-protocol door `/connection/websocket`, and the Pusher
//! door `/app/{key}`.
//!
//! Every check happens before the upgrade, in this order: draining (503), a valid upgrade
//! request (400), the channel name (400), the origin (403), the token (401, or 403 for the
//! wrong subject), then the node and per-IP connection limits (503, 429). The node slot and the
//! per-IP place are taken at that check, atomically, and given back if the upgrade fails, so a
//! limit holds exactly under concurrent handshakes. The client's address is the TCP peer's, or
//! what a trusted proxy forwarded (`peer`). Only then is `101` sent and the connection task
//! spawned on the gateway's tracker. The client-protocol door takes its token in the `connect`
//! command instead (see `protocol`), so it skips the token check here.
//!
//! When the connect hook is configured for a plain door (`hooks.connect.doors`), a handshake
//! without a token asks it who the client is, with the allowlisted headers and cookies, after
//! the limits are taken (so the hook is never asked for a connection that would be refused
//! anyway) and before the `101`: a refusal is `403 backend_denied`, a hook that cannot be
//! asked is `503 backend_unavailable` with `Retry-After`, within the hook's timeout.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::task::{self, Session};
use crate::auth::Claims;
use crate::conn::Conn;
use crate::error::Rejection;
use crate::hooks::{Answer, Endpoint, Forwarded};
use crate::kind::Door;
use crate::kind::Encoding;
use crate::respond::{rejection, Response};
use crate::state::State;
use crate::trace::TraceParent;
use crate::ws::deflate::{self, Negotiated};
use crate::ws::handshake;

/// The subprotocol the SDKs' protobuf builds offer on WebSocket; choosing it answers in
/// Protobuf.
const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

/// The subprotocols this server selects when offered: the name browsers pair with a token
/// (`new WebSocket(url, ["switchboard", token])`), and the client protocol's encodings.
const KNOWN_SUBPROTOCOLS: [&str; 3] = ["switchboard", PROTOBUF_SUBPROTOCOL, "centrifuge-json"];

/// Longest room or user id in a path.
const MAX_NAME_LEN: usize = 128;

/// Checks a room or user id from a path: 1 to 128 of `A-Z a-z 0-9 _ - . : @ =`.
pub(crate) fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("name longer than 128 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-.:@=".contains(&b))
    {
        return Err("name may only hold A-Z a-z 0-9 _ - . : @ =");
    }
    Ok(())
}

/// Which door a path opens, and the channel it joins.
fn route(state: &State, path: &str) -> Result<(Door, Option<String>), Rejection> {
    if path == "/connection/websocket" {
        return if state.config.client.enabled {
            Ok((Door::Protocol, None))
        } else {
            Err(Rejection::NotFound)
        };
    }
    if path.starts_with("/app/") && !state.config.pusher.apps.is_empty() {
        // The key and the protocol version are checked after the upgrade: Pusher clients
        // read a refusal as `pusher:error` on the socket (see `door/pusher`).
        return Ok((Door::Pusher, None));
    }
    if path == "/ws" {
        return if state.resolved.echo {
            Ok((Door::Echo, None))
        } else {
            Err(Rejection::NotFound)
        };
    }
    if let Some(room) = path.strip_prefix("/ws/chat/") {
        if !state.config.doors.chat {
            return Err(Rejection::NotFound);
        }
        check_name(room).map_err(Rejection::BadChannel)?;
        return Ok((Door::Chat, Some(format!("chat:{room}"))));
    }
    if let Some(user) = path.strip_prefix("/ws/notify/user/") {
        if !state.config.doors.notify {
            return Err(Rejection::NotFound);
        }
        check_name(user).map_err(Rejection::BadChannel)?;
        return Ok((Door::Notify, Some(format!("#{user}"))));
    }
    Err(Rejection::NotFound)
}

/// Where the token came from, and the subprotocol to answer with.
struct TokenSource<'a> {
    token: Option<&'a str>,
    protocol: Option<&'a str>,
}

/// Finds the token: `?token=`, then `Authorization: Bearer`, then a `Sec-WebSocket-Protocol`
/// value that looks like a JWT. A browser sends `new WebSocket(url, ["switchboard", token])`;
/// the server answers with the first non-token protocol offered (or the token's own, when it
/// was the only one), since a browser fails the handshake if none is selected.
fn find_token<B>(req: &Request<B>) -> TokenSource<'_> {
    let offered = handshake::offered_protocols(req.headers());
    let looks_like_jwt = |value: &&str| value.bytes().filter(|b| *b == b'.').count() == 2;
    let protocol_token = offered.iter().copied().find(looks_like_jwt);
    // Only a subprotocol this server speaks is selected; a token offered as one is read, and
    // never echoed back in the 101 (where proxies and logs would keep it).
    let protocol = offered
        .iter()
        .copied()
        .find(|p| KNOWN_SUBPROTOCOLS.contains(p));
    let query_token = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")))
        .filter(|t| !t.is_empty());
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    TokenSource {
        token: query_token.or(bearer).or(protocol_token),
        protocol,
    }
}

/// Runs every check and either refuses the request or answers 101 and spawns the connection.
pub(crate) async fn upgrade(
    state: &Arc<State>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    trace_id: &str,
    span: Option<TraceParent>,
) -> Response {
    let started = Instant::now();
    let client = state.proxies.client_ip(peer.ip(), req.headers());
    let mut checked = check(state, client, &req);
    if let Ok(admitted) = &mut checked {
        if let Some(hooks) = &state.hooks {
            if admitted.door == Door::Protocol {
                admitted.forwarded = Some(Arc::new(hooks.forwarded(req.headers(), trace_id, span)));
            }
        }
    }
    let asking = match &checked {
        Ok(admitted) => admitted.hook.as_ref().map(|endpoint| {
            (
                Arc::clone(endpoint),
                admitted.door,
                admitted.channel.clone(),
            )
        }),
        Err(_) => None,
    };
    if let Some((endpoint, door, channel)) = asking {
        let forwarded = state
            .hooks
            .as_ref()
            .map(|hooks| hooks.forwarded(req.headers(), trace_id, span));
        let asked = ask_connect_hook(
            state,
            &endpoint,
            forwarded.as_ref(),
            door,
            channel.as_deref(),
        )
        .await;
        checked = match (checked, asked) {
            (Ok(mut admitted), Ok(claims)) => {
                admitted.hook = None;
                admitted.claims = claims;
                Ok(admitted)
            }
            (_, Err(refused)) | (Err(refused), _) => Err(refused),
        };
    }
    match checked {
        Err(refused) => {
            state
                .node
                .metrics
                .rejections
                .with_label_values(&[refused.code()])
                .inc();
            if matches!(
                refused,
                Rejection::MissingToken | Rejection::InvalidToken(_) | Rejection::WrongSubject
            ) {
                state.node.metrics.auth_failures.inc();
            }
            refused_log(&refused, client, trace_id, req.uri().path());
            rejection(&refused)
        }
        Ok(admitted) => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            let mut response = http::Response::new(crate::respond::empty());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            if let Ok(value) = HeaderValue::from_str(&admitted.accept) {
                headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
            }
            if let Some(value) = admitted
                .protocol
                .as_deref()
                .and_then(|p| HeaderValue::from_str(p).ok())
            {
                headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
            }
            if let Some(value) = admitted
                .deflate
                .and_then(|n| HeaderValue::from_str(&n.response_header()).ok())
            {
                headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
            }
            let state2 = Arc::clone(state);
            let trace: Box<str> = trace_id.into();
            let handshake_timeout = state.config.server.handshake_timeout;
            state.tracker.spawn(async move {
                let upgraded = match tokio::time::timeout(handshake_timeout, on_upgrade).await {
                    Ok(Ok(upgraded)) => upgraded,
                    _ => return,
                };
                let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
                    tracing::error!(event = "upgrade_failed", "upgraded connection is not a TCP stream");
                    return;
                };
                let Admitted { door, channel, claims, permit, slot, encoding: admitted_encoding, deflate, forwarded, pusher, .. } = admitted;
                let conn = Arc::new(Conn::new(
                    state2.node.conns.next_id(),
                    door,
                    &claims.sub,
                    claims.exp.unwrap_or(0),
                    state2.config.limits.max_queued_bytes,
                    state2.clock_ms(),
                )
                .with_encoding(admitted_encoding)
                .with_max_subscriptions(state2.config.client.max_subscriptions)
                // Shared compressed frames are made with the full window; a client that asked
                // for a smaller one gets publications uncompressed (always allowed).
                .with_deflate(deflate.is_some_and(|n| n.server_window_bits() == 15))
                .with_trace(span));
                tracing::info!(event = "connected", conn_id = conn.id, user = %conn.user(), ip = %client, trace_id = %trace, door = door.label(), channel = channel.as_deref().unwrap_or(""));
                let mut session = Session::open(Arc::clone(&state2), conn, channel.map(Into::into), client, trace, (permit, slot));
                session.forwarded = forwarded;
                task::run(session, parts.io.into_inner(), parts.read_buf, deflate, pusher).await;
            });
            state
                .node
                .metrics
                .handshake_seconds
                .observe(started.elapsed().as_secs_f64());
            response
        }
    }
}

/// What passed the checks.
struct Admitted {
    door: Door,
    channel: Option<String>,
    claims: Claims,
    accept: String,
    protocol: Option<String>,
    permit: Option<crate::conn::IpPermit>,
    /// The node slot, reserved at the check: the upgrade holds it until its connection ends.
    slot: crate::conn::NodeSlot,
    /// The client protocol's encoding: Protobuf when asked with `?cf_protocol=protobuf`, as
    /// the SDKs' protobuf builds do.
    encoding: Encoding,
    /// The Pusher door's app, or the refusal its client reads once the socket is open.
    pusher: Option<Result<crate::config::PusherAppConfig, crate::error::CloseReason>>,
    /// permessage-deflate as agreed, when enabled and offered. The server always asks for no
    /// context takeover both ways: one compressed frame then serves every subscriber, and an
    /// idle connection keeps no compression state.
    deflate: Option<Negotiated>,
    /// A plain door whose connect hook must say who the client is (no token was given).
    hook: Option<Arc<Endpoint>>,
    /// Client protocol with hooks: what of this request goes along with its hook calls.
    forwarded: Option<Arc<Forwarded>>,
}

/// The connect hook's `result` at a plain door.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct DoorConnectResult {
    user: String,
    expire_at: u64,
}

/// Asks the connect hook who the client of a plain door is: the claims it grants, or the
/// refusal to answer with.
async fn ask_connect_hook(
    state: &State,
    endpoint: &Endpoint,
    forwarded: Option<&Forwarded>,
    door: Door,
    channel: Option<&str>,
) -> Result<Claims, Rejection> {
    let Some(hooks) = &state.hooks else {
        return Err(Rejection::NotFound);
    };
    let body = serde_json::json!({
        "client": &*crate::protocol::new_client_id(),
        "transport": "websocket",
        "protocol": "plain",
        "encoding": "json",
        "door": door.label(),
        "channel": channel.unwrap_or(""),
    });
    let result = match hooks.call(endpoint, &body, forwarded).await {
        Ok(Answer::Result(result)) => result,
        Ok(Answer::Error {
            temporary: true, ..
        }) => return Err(Rejection::BackendUnavailable(1)),
        Ok(Answer::Error { .. } | Answer::Disconnect { .. }) => {
            return Err(Rejection::BackendDenied)
        }
        Err(error) => return Err(Rejection::BackendUnavailable(error.retry_after_secs())),
    };
    let result: DoorConnectResult = serde_json::from_value(result).map_err(|error| {
        tracing::warn!(event = "hook_bad_result", hook = "connect", %error, "the connect hook's result is not the expected JSON");
        Rejection::BackendUnavailable(1)
    })?;
    if door == Door::Notify {
        let wanted = channel.and_then(|c| c.strip_prefix('#'));
        if result.user.is_empty() || wanted != Some(result.user.as_str()) {
            return Err(Rejection::WrongSubject);
        }
    }
    Ok(Claims {
        sub: result.user,
        exp: (result.expire_at != 0).then_some(result.expire_at),
        ..Claims::default()
    })
}

fn check<B>(state: &Arc<State>, client: IpAddr, req: &Request<B>) -> Result<Admitted, Rejection> {
    if state.draining() {
        return Err(Rejection::ShuttingDown);
    }
    let (door, channel) = route(state, req.uri().path())?;
    let accept = handshake::accept_key(req.method(), req.version(), req.headers())?;

    // An `Origin` that is not visible ASCII is no origin any allowlist names: refused, not
    // treated as absent (which would let it pass as a non-browser client).
    let origin = match req.headers().get(header::ORIGIN) {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| Rejection::OriginNotAllowed)?),
    };
    if !state.origins.allows(origin) {
        return Err(Rejection::OriginNotAllowed);
    }
    let source = find_token(req);
    let hook = match (&state.hooks, source.token) {
        (Some(hooks), None) => hooks.connect_at_door(door).cloned(),
        _ => None,
    };
    let claims = match source.token {
        // The client protocol authenticates with its `connect` command.
        // The client protocol authenticates with its `connect` command; Pusher clients sign
        // their private channels and sign in instead.
        _ if door == Door::Protocol || door == Door::Pusher => Claims::default(),
        // The connect hook says who it is, once the limits below have admitted it.
        None if hook.is_some() => Claims::default(),
        Some(token) => state
            .verifier
            .verify_connection(token)
            .map_err(|e| Rejection::InvalidToken(e.to_string()))?,
        None if door == Door::Notify || !state.resolved.allow_anonymous => {
            return Err(Rejection::MissingToken)
        }
        None => Claims::default(),
    };
    if door == Door::Notify && hook.is_none() {
        let wanted = channel.as_deref().and_then(|c| c.strip_prefix('#'));
        if claims.sub.is_empty() || wanted != Some(claims.sub.as_str()) {
            return Err(Rejection::WrongSubject);
        }
    }
    // Reserved here, not counted once the upgrade is done: otherwise every handshake under
    // way would pass a check that only some of them fit under.
    let slot = state
        .slots
        .reserve(state.config.server.max_connections)
        .ok_or(Rejection::NodeFull)?;
    // Refused before the upgrade, so a plain client sees an HTTP status, not a closed socket.
    if let Some(channel) = &channel {
        if state.node.admit_channel(channel).is_err() {
            return Err(Rejection::ChannelLimit);
        }
    }
    let permit = state
        .ip_limits
        .acquire(
            state.limit_key(client),
            state.config.server.max_connections_per_ip,
        )
        .ok_or(Rejection::TooManyConnectionsPerIp)?;
    let pusher = (door == Door::Pusher)
        .then(|| super::pusher::start(state, req.uri().path(), req.uri().query(), origin));
    Ok(Admitted {
        door,
        channel,
        pusher,
        claims,
        accept,
        protocol: source.protocol.map(str::to_owned),
        permit: Some(permit),
        slot,
        hook,
        forwarded: None,
        deflate: state
            .config
            .server
            .permessage_deflate
            .then(|| deflate::negotiate(req.headers()))
            .flatten()
            .map(Negotiated::with_client_no_context_takeover),
        encoding: if source.protocol == Some(PROTOBUF_SUBPROTOCOL)
            || req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|pair| pair == "cf_protocol=protobuf"))
        {
            Encoding::Protobuf
        } else {
            Encoding::Json
        },
    })
}

pub(crate) fn refused_log(refused: &Rejection, client: IpAddr, trace_id: &str, path: &str) {
    let code = refused.code();
    match refused {
        Rejection::MissingToken | Rejection::InvalidToken(_) | Rejection::WrongSubject => {
            tracing::warn!(event = "auth_failed", ip = %client, trace_id, path, code, reason = %refused, "upgrade refused: authentication");
        }
        Rejection::OriginNotAllowed => {
            tracing::warn!(event = "origin_rejected", ip = %client, trace_id, path, code, "upgrade refused: origin not allowed");
        }
        Rejection::TooManyConnectionsPerIp | Rejection::NodeFull | Rejection::ChannelLimit => {
            tracing::warn!(event = "limit_exceeded", ip = %client, trace_id, path, code, reason = %refused, "upgrade refused: connection limit");
        }
        Rejection::BackendUnavailable(_) | Rejection::BackendDenied => {
            tracing::warn!(event = "hook_refused", ip = %client, trace_id, path, code, reason = %refused, "upgrade refused by the connect hook");
        }
        Rejection::BadUpgrade(_)
        | Rejection::BadChannel(_)
        | Rejection::ShuttingDown
        | Rejection::NotFound
        | Rejection::BadStreamRequest(_)
        | Rejection::BodyTooLarge => {
            tracing::info!(event = "upgrade_refused", ip = %client, trace_id, path, code, reason = %refused);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("lobby-1_a.b:c@d=e").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("a%20b").is_err());
        assert!(check_name(&"x".repeat(129)).is_err());
    }

    #[test]
    fn token_is_found_in_query_then_header_then_protocol() {
        let req = Request::builder()
            .uri("/ws/chat/a?x=1&token=q.q.q")
            .header("authorization", "Bearer h.h.h")
            .body(())
            .unwrap();
        assert_eq!(find_token(&req).token, Some("q.q.q"));
        let req = Request::builder()
            .uri("/ws/chat/a")
            .header("authorization", "Bearer h.h.h")
            .body(())
            .unwrap();
        assert_eq!(find_token(&req).token, Some("h.h.h"));
        let req = Request::builder()
            .uri("/ws/chat/a")
            .header("sec-websocket-protocol", "switchboard, p.p.p")
            .body(())
            .unwrap();
        let source = find_token(&req);
        assert_eq!(
            (source.token, source.protocol),
            (Some("p.p.p"), Some("switchboard"))
        );
        let req = Request::builder()
            .uri("/ws/chat/a")
            .header("sec-websocket-protocol", "p.p.p, made-up")
            .body(())
            .unwrap();
        let source = find_token(&req);
        assert_eq!(
            (source.token, source.protocol),
            (Some("p.p.p"), None),
            "a token or an unknown name is never selected"
        );
    }
}
