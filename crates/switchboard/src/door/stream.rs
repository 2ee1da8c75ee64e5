//! The client protocol over HTTP streaming (`/connection/http_stream`) and Server-Sent Events
//! (`/connection/sse`), for networks that block WebSocket: one long-lived HTTP response
//! carries what the server sends, and the client's commands after `connect` arrive as separate
//! requests to the emulation endpoint (`door/emulation`), addressed to the session named in the
//! connect reply.
//!
//! A stream is a client-protocol connection like a WebSocket one: the same admission checks
//! (draining, origin, node and per-IP limits), the same [`Conn`] with its bounded queue, the
//! same [`ClientSession`] (token in `connect`, subscriptions, recovery, limits, rate), the
//! same heartbeat sweep, registered in the same registry. Only the framing differs: the queue's
//! WebSocket frames are unwrapped and written as JSON lines (`application/json`), as the
//! length-delimited Protobuf they already hold (`application/octet-stream`), or as SSE
//! `data:` events; where a WebSocket gets a close code, a stream gets a `disconnect` push and
//! then its end. The connect command travels in the request: the POST body (HTTP streaming)
//! or the `cf_connect` query parameter (SSE, whose `EventSource` can only GET).
//!
//! The stream's task owns the session: it takes the queue's frames, the node's and the API's
//! requests, and the emulated commands from the connection's inbox, so everything a session
//! does still happens on one task.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::task::Session;
use crate::conn::{Conn, MessageRate, ServerCommand};
use crate::error::{CloseReason, Rejection};
use crate::kind::{Door, Encoding};
use crate::protocol::ClientSession;
use crate::respond::{rejection, streamed, Response};
use crate::state::State;
use crate::wire::{Disconnected, Push, Reply};
use crate::ws::frame::{self, Opcode};

/// Chunks handed to hyper and not yet written: small, so a client that does not read leaves
/// its frames in the connection's queue, where `max_queued_bytes` bounds them.
const CHUNKS_IN_FLIGHT: usize = 2;

/// The HTTP transports of the client protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// `/connection/http_stream`: a POST whose response is a stream of replies.
    HttpStream,
    /// `/connection/sse`: an `EventSource` GET whose response is a stream of events.
    Sse,
}

impl Transport {
    /// The transport behind `path`, if it is one.
    pub(crate) fn of_path(path: &str) -> Option<Transport> {
        match path {
            "/connection/http_stream" => Some(Transport::HttpStream),
            "/connection/sse" => Some(Transport::Sse),
            _ => None,
        }
    }

    /// The name the SDKs and the metrics use.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Transport::HttpStream => "http_stream",
            Transport::Sse => "sse",
        }
    }
}

/// How the queue's frames are written on the stream.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// One JSON reply per line.
    JsonLines,
    /// Length-delimited Protobuf replies, as the frames hold them.
    Protobuf,
    /// One SSE event per frame, a `data:` line per JSON reply.
    Sse,
}

impl Framing {
    fn content_type(self) -> &'static str {
        match self {
            Framing::JsonLines => "application/json",
            Framing::Protobuf => "application/octet-stream",
            Framing::Sse => "text/event-stream",
        }
    }

    /// Appends the payload of one queued frame (control frames carry nothing here).
    fn append(self, out: &mut BytesMut, queued: &[u8]) {
        let Some((opcode, payload)) = frame::server_frame_payload(queued) else {
            return;
        };
        if !matches!(opcode, Opcode::Text | Opcode::Binary) || payload.is_empty() {
            return;
        }
        match self {
            Framing::JsonLines => {
                out.put_slice(payload);
                out.put_u8(b'\n');
            }
            Framing::Protobuf => out.put_slice(payload),
            Framing::Sse => {
                for line in payload.split(|b| *b == b'\n') {
                    out.put_slice(b"data: ");
                    out.put_slice(line);
                    out.put_u8(b'\n');
                }
                out.put_u8(b'\n');
            }
        }
    }
}

/// Opens a stream: checks the request like a WebSocket upgrade, starts the session with the
/// connect command the request carries, and answers with the stream.
pub(crate) async fn open(
    state: &Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
    trace_id: &str,
) -> Response {
    let client = state.proxies.client_ip(peer.ip(), req.headers());
    let path = req.uri().path().to_owned();
    let admitted = match Transport::of_path(&path) {
        Some(transport) => admit(state, client, req, transport, trace_id)
            .await
            .map(|admitted| (admitted, transport)),
        None => Err(Rejection::NotFound),
    };
    match admitted {
        Ok((admitted, transport)) => start(state, client, admitted, transport, trace_id),
        Err(refused) => {
            state
                .node
                .metrics
                .rejections
                .with_label_values(&[refused.code()])
                .inc();
            super::upgrade::refused_log(&refused, client, trace_id, &path);
            let mut response = rejection(&refused);
            super::emulation::allow_origin(state, response.headers_mut(), None);
            response
        }
    }
}

/// What passed the checks.
struct Admitted {
    encoding: Encoding,
    connect: Bytes,
    origin: Option<HeaderValue>,
    forwarded: Option<Arc<crate::hooks::Forwarded>>,
    places: (Option<crate::conn::IpPermit>, crate::conn::NodeSlot),
}

async fn admit(
    state: &Arc<State>,
    client: std::net::IpAddr,
    req: Request<Incoming>,
    transport: Transport,
    trace_id: &str,
) -> Result<Admitted, Rejection> {
    if state.draining() {
        return Err(Rejection::ShuttingDown);
    }
    if !state.config.client.enabled || !state.config.client.stream_transports {
        return Err(Rejection::NotFound);
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let origin_text = match &origin {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| Rejection::OriginNotAllowed)?),
    };
    if !state.origins.allows(origin_text) {
        return Err(Rejection::OriginNotAllowed);
    }
    let encoding = match transport {
        Transport::Sse => Encoding::Json,
        Transport::HttpStream => {
            let binary = |name| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("application/octet-stream"))
            };
            if binary(header::CONTENT_TYPE) || binary(header::ACCEPT) {
                Encoding::Protobuf
            } else {
                Encoding::Json
            }
        }
    };
    // With hooks, what of this request goes along with the session's hook calls, as for a
    // WebSocket's upgrade request.
    let forwarded = state
        .hooks
        .as_ref()
        .map(|hooks| Arc::new(hooks.forwarded(req.headers(), trace_id, None)));
    let max = state.config.limits.max_message_bytes;
    let connect = match (transport, req.method()) {
        (Transport::Sse, &Method::GET) => req
            .uri()
            .query()
            .and_then(|q| {
                q.split('&')
                    .find_map(|pair| pair.strip_prefix("cf_connect="))
            })
            .map(percent_decode)
            .unwrap_or_default(),
        (_, &Method::POST) => Limited::new(req.into_body(), max)
            .collect()
            .await
            .map_err(|_| Rejection::BodyTooLarge)?
            .to_bytes(),
        _ => return Err(Rejection::BadStreamRequest("method not allowed")),
    };
    if connect.len() > max {
        return Err(Rejection::BodyTooLarge);
    }
    if connect.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::BadStreamRequest("no connect command"));
    }
    // Reserved only once the request is whole, so a slow body holds no place.
    let slot = state
        .slots
        .reserve(state.config.server.max_connections)
        .ok_or(Rejection::NodeFull)?;
    let permit = state
        .ip_limits
        .acquire(
            state.limit_key(client),
            state.config.server.max_connections_per_ip,
        )
        .ok_or(Rejection::TooManyConnectionsPerIp)?;
    Ok(Admitted {
        encoding,
        connect,
        origin,
        forwarded,
        places: (Some(permit), slot),
    })
}

/// Starts the session and its task; answers with the stream.
fn start(
    state: &Arc<State>,
    client: std::net::IpAddr,
    admitted: Admitted,
    transport: Transport,
    trace_id: &str,
) -> Response {
    let Admitted {
        encoding,
        connect,
        origin,
        forwarded,
        places,
    } = admitted;
    let conn = Arc::new(
        Conn::new(
            state.node.conns.next_id(),
            Door::Protocol,
            "",
            0,
            state.config.limits.max_queued_bytes,
            state.clock_ms(),
        )
        .with_encoding(encoding)
        .with_max_subscriptions(state.config.client.max_subscriptions),
    );
    let session_id = new_session_id();
    tracing::info!(event = "connected", conn_id = conn.id, ip = %client, trace_id, door = Door::Protocol.label(), transport = transport.label());
    let session = Session::open(
        Arc::clone(state),
        Arc::clone(&conn),
        None,
        client,
        trace_id.into(),
        places,
    );
    state.node.conns.insert_session(&session_id, &conn);
    state
        .node
        .metrics
        .stream_connections
        .with_label_values(&[transport.label()])
        .inc();
    let protocol = ClientSession::new(Arc::clone(state), Arc::clone(&conn), forwarded)
        .with_emulation_session(&session_id, transport.label());
    let limits = &state.config.limits;
    let rate = MessageRate::new(
        limits.client_message_rate,
        limits
            .client_message_burst
            .max(u32::try_from(state.config.client.max_commands_per_message).unwrap_or(u32::MAX)),
    );
    let framing = match (transport, encoding) {
        (Transport::Sse, _) => Framing::Sse,
        (Transport::HttpStream, Encoding::Json) => Framing::JsonLines,
        (Transport::HttpStream, Encoding::Protobuf) => Framing::Protobuf,
    };
    let mut stream = Stream {
        protocol: Box::new(protocol),
        session,
        session_id,
        rate,
        transport,
        stats: Stats::default(),
    };
    stream.inbound(&connect);
    let (sender, mut receiver) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    state.tracker.spawn(stream.run(sender, framing));
    let body = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx));
    let mut response = http::Response::new(streamed(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(framing.content_type()),
    );
    // Proxies and browsers must pass each chunk on as it comes.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    super::emulation::allow_origin(state, headers, origin.as_ref());
    response
        .extensions_mut()
        .insert(crate::respond::ClientStream);
    response
}

/// Per-stream counts for the disconnect log line.
#[derive(Default)]
struct Stats {
    messages_in: u64,
    bytes_in: u64,
    messages_out: u64,
    bytes_out: u64,
}

/// One stream's session, owned by its task.
///
/// The protocol session is dropped before the [`Session`] (fields drop in order), as on a
/// WebSocket: it leaves its channels while the connection is still registered.
struct Stream {
    protocol: Box<ClientSession>,
    session: Session,
    session_id: Box<str>,
    rate: Option<MessageRate>,
    transport: Transport,
    stats: Stats,
}

impl Stream {
    /// Handles commands the client sent (the connect in the request, or an emulation
    /// request's), as a WebSocket's task handles one data frame.
    fn inbound(&mut self, data: &[u8]) {
        let conn = Arc::clone(&self.session.conn);
        let allowed = match self.rate.as_mut() {
            Some(rate) => rate.allow(Instant::now()),
            None => true,
        };
        if !allowed {
            conn.close(CloseReason::RateLimited);
            return;
        }
        conn.touch(self.session.state.clock_ms());
        self.stats.messages_in += 1;
        self.stats.bytes_in += data.len() as u64;
        let door = self.session.state.node.metrics.door(Door::Protocol);
        door.messages_in.inc();
        door.bytes_in.inc_by(data.len() as u64);
        let opcode = match conn.encoding {
            Encoding::Json => Opcode::Text,
            Encoding::Protobuf => Opcode::Binary,
        };
        let (protocol, rate) = (&mut self.protocol, &mut self.rate);
        match catch_unwind(AssertUnwindSafe(|| {
            protocol.handle_frame(opcode, data, rate)
        })) {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => conn.close(reason),
            Err(_) => {
                tracing::error!(event = "connection_panicked", conn_id = conn.id, trace_id = %self.session.trace_id, "connection handler panicked; closing this connection only");
                conn.close(CloseReason::InternalError);
            }
        }
    }

    /// Writes what the session queues until it closes or the client goes away.
    async fn run(mut self, sender: mpsc::Sender<Bytes>, framing: Framing) {
        let started = Instant::now();
        let conn = Arc::clone(&self.session.conn);
        let state = Arc::clone(&self.session.state);
        let door = state.node.metrics.door(Door::Protocol);
        let mut frames = VecDeque::new();
        let end: Result<CloseReason, &'static str> = loop {
            for command in conn.take_commands() {
                match command {
                    ServerCommand::Emulated(data) => self.inbound(&data),
                    other => self.protocol.handle_server_command(other),
                }
            }
            let close = conn.take_queued(&mut frames);
            if !frames.is_empty() {
                let mut chunk = BytesMut::new();
                let queued: usize = frames.iter().map(Bytes::len).sum();
                let count = frames.len();
                for queued in frames.drain(..) {
                    framing.append(&mut chunk, &queued);
                }
                conn.written(queued, count);
                self.stats.messages_out += count as u64;
                self.stats.bytes_out += chunk.len() as u64;
                door.messages_out.inc_by(count as u64);
                door.bytes_out.inc_by(chunk.len() as u64);
                if !chunk.is_empty() && sender.send(chunk.freeze()).await.is_err() {
                    break Err("connection lost");
                }
            }
            if let Some(reason) = close {
                break Ok(reason);
            }
            tokio::select! {
                () = sender.closed() => break Err("connection lost"),
                () = std::future::poll_fn(|cx| conn.poll_wake(cx)) => {}
            }
        };
        let (code, reason) = match end {
            Ok(reason) => {
                let (code, text) = reason.wire(Door::Protocol);
                // A close code has no place on an HTTP response: the client reads why in a
                // `disconnect` push, the last thing on the stream.
                let push = Reply {
                    push: Some(Push {
                        disconnect: Some(Disconnected {
                            code: u32::from(code),
                            reason: text.to_owned(),
                            reconnect: !(3500..4000).contains(&code)
                                && !(4500..5000).contains(&code),
                        }),
                        ..Push::default()
                    }),
                    ..Reply::default()
                };
                let mut chunk = BytesMut::new();
                let opcode = match conn.encoding {
                    Encoding::Json => Opcode::Text,
                    Encoding::Protobuf => Opcode::Binary,
                };
                framing.append(
                    &mut chunk,
                    &frame::encode(opcode, &push.encode_as(conn.encoding)),
                );
                let _ = sender.send(chunk.freeze()).await;
                (code, reason.label())
            }
            Err(why) => (1006, why),
        };
        if let Ok(CloseReason::SlowConsumer) = end {
            state.node.metrics.slow_consumers.inc();
            tracing::warn!(event = "slow_consumer", conn_id = conn.id, user = %conn.user(), ip = %self.session.ip, trace_id = %self.session.trace_id, transport = self.transport.label(), max_queued_bytes = state.config.limits.max_queued_bytes, "outbound queue overflowed; closing");
        }
        state.node.metrics.disconnected(code, reason);
        state.node.conns.remove_session(&self.session_id);
        state
            .node
            .metrics
            .stream_connections
            .with_label_values(&[self.transport.label()])
            .dec();
        tracing::info!(
            event = "disconnected",
            conn_id = conn.id,
            user = %conn.user(),
            ip = %self.session.ip,
            trace_id = %self.session.trace_id,
            door = Door::Protocol.label(),
            transport = self.transport.label(),
            code,
            reason,
            duration_ms = started.elapsed().as_millis() as u64,
            messages_in = self.stats.messages_in,
            bytes_in = self.stats.bytes_in,
            messages_out = self.stats.messages_out,
            bytes_out = self.stats.bytes_out,
        );
    }
}

/// 128 random bits in hex: whoever knows a session may send commands as its client.
fn new_session_id() -> Box<str> {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)).into()
}

/// Decodes a URL query value (`%XX` escapes, `+` for a space); a bad escape is kept as is.
fn percent_decode(value: &str) -> Bytes {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(byte) = hex {
                    out.push(byte);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            &percent_decode("%7B%22id%22%3A1%7D+x%zz")[..],
            b"{\"id\":1} x%zz"
        );
    }

    #[test]
    fn frames_are_unwrapped_per_framing() {
        let reply = frame::encode(Opcode::Text, b"{\"id\":1}\n{\"id\":2}");
        let mut lines = BytesMut::new();
        Framing::JsonLines.append(&mut lines, &reply);
        assert_eq!(&lines[..], b"{\"id\":1}\n{\"id\":2}\n");
        let mut events = BytesMut::new();
        Framing::Sse.append(&mut events, &reply);
        assert_eq!(&events[..], b"data: {\"id\":1}\ndata: {\"id\":2}\n\n");
        let mut none = BytesMut::new();
        Framing::Protobuf.append(&mut none, &frame::encode(Opcode::Ping, b""));
        assert!(none.is_empty(), "control frames carry nothing on a stream");
        let big = vec![b'x'; 70_000];
        let mut out = BytesMut::new();
        Framing::Protobuf.append(&mut out, &frame::encode(Opcode::Binary, &big));
        assert_eq!(out.len(), big.len());
    }
}
