//! The task that owns one WebSocket's socket: the only reader and the only writer.
//!
//! It waits on three things only: its queue's wake-up, the socket becoming readable, and (when
//! a write would block) the socket becoming writable. No timer per connection: heartbeats,
//! idle and token deadlines are the sweep's (`sweep`), which asks for a close through the
//! shared [`Conn`]. Reading uses a stack buffer and keeps bytes between wake-ups only while a
//! frame is incomplete, so an idle connection holds no buffer. Writing takes everything queued
//! and hands it to one vectored write, so a burst costs one syscall.
//!
//! A panic while handling inbound bytes is caught here and closes this connection alone with
//! 1011; everything it held is released when its [`Session`] drops.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpStream;

use super::pusher::PusherSession;
use crate::conn::{Conn, IpPermit, MessageRate, NodeSlot};
use crate::error::CloseReason;
use crate::kind::Door;
use crate::node::PublishOrder;
use crate::protocol::ClientSession;
use crate::publication::Publication;
use crate::state::State;
use crate::ws::deflate::{self, Negotiated};
use crate::ws::frame::{self, Opcode};
use crate::ws::{Event, MessageReader};

/// How long a closing connection may take to flush its close frame and hear the client's.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Bytes read per `read` call into the stack buffer.
const READ_CHUNK: usize = 16 * 1024;
/// Frames handed to one vectored write.
const MAX_IOSLICES: usize = 64;

/// Everything a connection holds in the gateway; dropping it releases all of it.
pub(crate) struct Session {
    pub(crate) state: Arc<State>,
    pub(crate) conn: Arc<Conn>,
    /// The channel the door joined, if any.
    pub(crate) channel: Option<Box<str>>,
    pub(crate) ip: IpAddr,
    pub(crate) trace_id: Box<str>,
    /// The per-IP place and the node slot, given back when the session drops.
    pub(crate) _places: (Option<IpPermit>, NodeSlot),
    /// What of the upgrade request goes along with the client protocol's hook calls.
    pub(crate) forwarded: Option<Arc<crate::hooks::Forwarded>>,
}

impl Session {
    /// Registers the connection with the node and joins its channel.
    pub(crate) fn open(
        state: Arc<State>,
        conn: Arc<Conn>,
        channel: Option<Box<str>>,
        ip: IpAddr,
        trace_id: Box<str>,
        places: (Option<IpPermit>, NodeSlot),
    ) -> Self {
        state.node.conns.insert(Arc::clone(&conn));
        // Shutdown closes every registered connection with 1001 once, right after it begins.
        // One upgraded before that but registered after (its 101 was already sent) was not
        // among them: it closes itself the same way, rather than waiting out the drain.
        if state.draining() {
            conn.close(CloseReason::GoingAway);
        }
        if let Some(channel) = &channel {
            state.node.attach(channel, &conn);
        }
        let door = state.node.metrics.door(conn.door);
        door.connections.inc();
        door.accepted.inc();
        Session {
            state,
            conn,
            channel,
            ip,
            trace_id,
            _places: places,
            forwarded: None,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(channel) = &self.channel {
            self.state.node.detach(channel, self.conn.id);
        }
        self.state.node.conns.remove(self.conn.id);
        self.state
            .node
            .metrics
            .door(self.conn.door)
            .connections
            .dec();
    }
}

/// Per-connection counts for the disconnect log line.
#[derive(Default)]
struct Stats {
    messages_in: u64,
    bytes_in: u64,
    messages_out: u64,
    bytes_out: u64,
}

/// How a connection ended.
#[derive(Debug, Clone, Copy)]
enum End {
    /// Closed with a close frame (sent by us, or the client's echoed).
    Closed(CloseReason),
    /// The socket went away with no close handshake (1006 at the other end).
    Abnormal(&'static str),
}

/// Frames taken from the queue and not yet fully written.
#[derive(Default)]
struct Writer {
    frames: VecDeque<Bytes>,
    /// Bytes of the first frame already written.
    offset: usize,
}

impl Writer {
    /// Writes as much as the socket takes; `Ok(true)` when nothing is left.
    fn flush(&mut self, tcp: &TcpStream, conn: &Conn, stats: &mut Stats) -> io::Result<bool> {
        while !self.frames.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOSLICES];
            let mut count = 0;
            for (slot, frame) in slices.iter_mut().zip(self.frames.iter()) {
                let start = if count == 0 { self.offset } else { 0 };
                *slot = IoSlice::new(&frame[start..]);
                count += 1;
            }
            let n = match tcp.try_write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            stats.bytes_out += n as u64;
            let finished_before = stats.messages_out;
            let mut written = n;
            while written > 0 {
                let Some(front) = self.frames.front() else {
                    break;
                };
                let left = front.len() - self.offset;
                if written >= left {
                    written -= left;
                    self.offset = 0;
                    self.frames.pop_front();
                    stats.messages_out += 1;
                } else {
                    self.offset += written;
                    written = 0;
                }
            }
            conn.written(n, (stats.messages_out - finished_before) as usize);
        }
        if self.frames.capacity() > 256 {
            self.frames = VecDeque::new();
        }
        Ok(true)
    }

    /// Drops every frame not yet started (a partly written one must finish to keep framing).
    fn drop_unstarted(&mut self) {
        let keep = usize::from(self.offset > 0);
        self.frames.truncate(keep);
    }
}

/// The socket side of one connection.
struct Socket {
    tcp: TcpStream,
    reader: MessageReader,
    /// Bytes of an incomplete frame, kept between reads (empty, and unallocated, when idle).
    partial: Vec<u8>,
    writer: Writer,
    rate: Option<MessageRate>,
    stats: Stats,
    /// Set when the client's close frame arrived.
    client_closed: Option<u16>,
    /// The client protocol's state (client-protocol door only).
    /// Boxed: plain-door connections (most of them, idle) then carry one pointer, not the
    /// session's fields, in every connection task.
    protocol: Option<Box<ClientSession>>,
    /// The Pusher session (Pusher door only), boxed for the same reason.
    pusher: Option<Box<PusherSession>>,
    /// The echo door compresses its replies with this window when deflate was negotiated.
    echo_window: Option<u8>,
    /// A plain room member's publications, in order on their way to a remote broker.
    order: PublishOrder,
}

/// What woke the connection's task.
enum Turn {
    /// Its handle: frames queued, a close asked for, or server commands.
    Woken,
    /// The socket has bytes (or an error, or EOF) to read.
    Readable,
    /// The socket can take more of a pending write.
    Writable,
}

enum ReadOutcome {
    Open,
    Eof,
}

impl Socket {
    /// Reads what the socket has and handles every complete frame.
    ///
    /// Only a whole frame is a sign of life for the heartbeat deadline, not bytes: a client
    /// that trickles a frame a byte at a time (slowloris) is closed like a silent one.
    fn read_available(&mut self, session: &Session) -> Result<ReadOutcome, CloseReason> {
        let mut got_frame = false;
        let outcome = self.read_loop(session, &mut got_frame);
        if got_frame {
            session.conn.touch(session.state.clock_ms());
        }
        outcome
    }

    fn read_loop(
        &mut self,
        session: &Session,
        got_frame: &mut bool,
    ) -> Result<ReadOutcome, CloseReason> {
        // Bounded so one busy client cannot starve the others on this worker.
        for _ in 0..16 {
            if self.reader.is_closed() {
                return Ok(ReadOutcome::Open);
            }
            if self.partial.is_empty() {
                let mut buf = [0u8; READ_CHUNK];
                let n = match self.tcp.try_read(&mut buf) {
                    Ok(0) => return Ok(ReadOutcome::Eof),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(ReadOutcome::Open)
                    }
                    Err(_) => return Ok(ReadOutcome::Eof),
                };
                let used = self.feed(session, &mut buf[..n])?;
                *got_frame |= used > 0;
                if used < n {
                    self.partial.extend_from_slice(&buf[used..n]);
                }
                if n < READ_CHUNK {
                    return Ok(ReadOutcome::Open);
                }
            } else {
                let held = self.partial.len();
                let want = self
                    .reader
                    .frame_len_hint(&self.partial)
                    .unwrap_or(0)
                    .saturating_sub(held);
                self.partial
                    .resize(held + want.clamp(READ_CHUNK, 1 << 20), 0);
                let n = match self.tcp.try_read(&mut self.partial[held..]) {
                    Ok(0) => return Ok(ReadOutcome::Eof),
                    Ok(n) => n,
                    Err(e) => {
                        self.partial.truncate(held);
                        if e.kind() == io::ErrorKind::WouldBlock {
                            return Ok(ReadOutcome::Open);
                        }
                        return Ok(ReadOutcome::Eof);
                    }
                };
                self.partial.truncate(held + n);
                let mut partial = std::mem::take(&mut self.partial);
                let used = self.feed(session, &mut partial)?;
                *got_frame |= used > 0;
                partial.drain(..used);
                if !partial.is_empty() {
                    self.partial = partial;
                }
            }
        }
        Ok(ReadOutcome::Open)
    }

    /// Parses frames out of `buf` and acts on each; returns the bytes consumed.
    fn feed(&mut self, session: &Session, buf: &mut [u8]) -> Result<usize, CloseReason> {
        let Socket {
            reader,
            rate,
            stats,
            client_closed,
            protocol,
            pusher,
            order,
            echo_window,
            ..
        } = self;
        let conn = &session.conn;
        let mut inbound = Inbound {
            session,
            rate,
            stats,
            protocol,
            pusher,
            order,
            echo_window: *echo_window,
        };
        reader.feed(buf, &mut |event| match event {
            Event::Text(data) => inbound.message(Opcode::Text, data),
            Event::Binary(data) => inbound.message(Opcode::Binary, data),
            Event::Ping(payload) => {
                // Pings count against the message rate, and pongs against the queue bound.
                inbound.allow()?;
                conn.push_pong(&frame::encode(Opcode::Pong, payload));
                Ok(())
            }
            Event::Pong => Ok(()),
            Event::Close(code) => {
                *client_closed = Some(code.unwrap_or(1005));
                Ok(())
            }
        })
    }

    /// The main loop: until a close is asked for or the socket goes away.
    async fn serve(&mut self, session: &Session) -> Result<CloseReason, End> {
        let conn = &session.conn;
        loop {
            if let Some(reason) = conn.take_queued(&mut self.writer.frames) {
                return Ok(reason);
            }
            let door = session.state.node.metrics.door(conn.door);
            let before = (self.stats.messages_out, self.stats.bytes_out);
            let flushed = self.writer.flush(&self.tcp, conn, &mut self.stats);
            door.messages_out.inc_by(self.stats.messages_out - before.0);
            door.bytes_out.inc_by(self.stats.bytes_out - before.1);
            let all_written = flushed.map_err(|_| End::Abnormal("write failed"))?;
            match self.next_turn(conn, all_written).await? {
                Turn::Woken => {
                    if let Some(protocol) = self.protocol.as_mut() {
                        for command in conn.take_commands() {
                            protocol.handle_server_command(command);
                        }
                    }
                    if let Some(pusher) = self.pusher.as_mut() {
                        for command in conn.take_commands() {
                            pusher.handle_server_command(command);
                        }
                    }
                }
                Turn::Readable => {
                    let result = catch_unwind(AssertUnwindSafe(|| self.read_available(session)));
                    match result {
                        Ok(Ok(ReadOutcome::Open)) => {}
                        Ok(Ok(ReadOutcome::Eof)) => return Err(End::Abnormal("connection lost")),
                        Ok(Err(reason)) => conn.close(reason),
                        Err(_) => {
                            tracing::error!(event = "connection_panicked", conn_id = conn.id, trace_id = %session.trace_id, "connection handler panicked; closing this connection only");
                            conn.close(CloseReason::InternalError);
                        }
                    }
                    if let Some(code) = self.client_closed {
                        conn.close(CloseReason::ClientClosed(code));
                    }
                }
                Turn::Writable => {}
            }
        }
    }

    /// Waits for the next thing to do, in this order of preference: a wake from the
    /// connection's handle, then inbound bytes while everything was written, or room in the
    /// socket while a write is pending.
    ///
    /// Polled by hand rather than with `select!` over `notified()`/`readable()`/`writable()`:
    /// those futures join a waiter list on every turn and leave it under a lock when dropped,
    /// which was a few percent of the server's CPU in fan-out; the socket's own reader and
    /// writer waker slots and [`Conn`]'s wake flag need neither.
    async fn next_turn(&self, conn: &Conn, all_written: bool) -> Result<Turn, End> {
        std::future::poll_fn(|cx| {
            if conn.poll_wake(cx).is_ready() {
                return Poll::Ready(Ok(Turn::Woken));
            }
            // While the client does not take what is written to it, what it sends is not
            // read either: its requests would only queue more replies it does not read (the
            // kernel's buffers hold it back; the heartbeat sweep ends a client silent too long).
            if all_written {
                if let Poll::Ready(ready) = self.tcp.poll_read_ready(cx) {
                    return Poll::Ready(
                        ready
                            .map(|()| Turn::Readable)
                            .map_err(|_| End::Abnormal("read failed")),
                    );
                }
            } else if let Poll::Ready(ready) = self.tcp.poll_write_ready(cx) {
                return Poll::Ready(
                    ready
                        .map(|()| Turn::Writable)
                        .map_err(|_| End::Abnormal("write failed")),
                );
            }
            Poll::Pending
        })
        .await
    }

    /// Sends the close frame (after what is queued, unless the client is gone or too slow),
    /// then waits up to [`CLOSE_LINGER`] for the client's close frame before dropping the socket.
    async fn close(&mut self, session: &Session, reason: CloseReason) -> End {
        let close_frame = match reason {
            CloseReason::ClientClosed(1005) => frame::encode(Opcode::Close, &[]),
            other => {
                let (code, text) = other.wire(session.conn.door);
                frame::encode_close(code, text)
            }
        };
        if matches!(
            reason,
            CloseReason::SlowConsumer | CloseReason::ClientClosed(_)
        ) {
            self.writer.drop_unstarted();
        }
        // A Pusher client learns why from `pusher:error` before the close frame.
        if session.conn.door == Door::Pusher && !matches!(reason, CloseReason::ClientClosed(_)) {
            let (code, message) = reason.pusher();
            self.writer
                .frames
                .push_back(crate::pusher_wire::error_frame(code, message));
        }
        self.writer.frames.push_back(close_frame);
        let conn = Arc::clone(&session.conn);
        let handshake = async {
            loop {
                match self.writer.flush(&self.tcp, &conn, &mut self.stats) {
                    Ok(true) => break,
                    Ok(false) => self.tcp.writable().await.map_err(|_| ())?,
                    Err(_) => return Err(()),
                }
            }
            if self.client_closed.is_some() {
                return Ok(());
            }
            let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
            while self.client_closed.is_none() {
                self.tcp.readable().await.map_err(|_| ())?;
                let mut buf = [0u8; 4096];
                match self.tcp.try_read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        let client_closed = &mut self.client_closed;
                        let _ = self.reader.feed(&mut buf[..n], &mut |event| {
                            if let Event::Close(code) = event {
                                *client_closed = Some(code.unwrap_or(1005));
                            }
                            Ok(())
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Err(()),
                }
            }
            Ok(())
        };
        let _ = tokio::time::timeout(CLOSE_LINGER, handshake).await;
        End::Closed(reason)
    }
}

/// What handling one inbound message needs: the connection, and the socket's per-message state.
struct Inbound<'a> {
    session: &'a Session,
    rate: &'a mut Option<MessageRate>,
    stats: &'a mut Stats,
    protocol: &'a mut Option<Box<ClientSession>>,
    pusher: &'a mut Option<Box<PusherSession>>,
    order: &'a mut PublishOrder,
    echo_window: Option<u8>,
}

impl Inbound<'_> {
    fn message(&mut self, opcode: Opcode, data: &[u8]) -> Result<(), CloseReason> {
        on_message(self, opcode, data)
    }

    /// Counts one inbound frame against the connection's message rate.
    fn allow(&mut self) -> Result<(), CloseReason> {
        let allowed = match self.rate.as_mut() {
            Some(rate) => rate.allow(Instant::now()),
            None => true,
        };
        if allowed {
            Ok(())
        } else {
            Err(CloseReason::RateLimited)
        }
    }
}

fn on_message(inbound: &mut Inbound<'_>, opcode: Opcode, data: &[u8]) -> Result<(), CloseReason> {
    inbound.allow()?;
    let Inbound {
        session,
        rate,
        stats,
        protocol,
        pusher,
        order,
        echo_window,
    } = inbound;
    stats.messages_in += 1;
    stats.bytes_in += data.len() as u64;
    let state = &session.state;
    let door = state.node.metrics.door(session.conn.door);
    door.messages_in.inc();
    door.bytes_in.inc_by(data.len() as u64);
    #[cfg(feature = "test-hooks")]
    if data == super::TEST_PANIC_MESSAGE {
        panic!("test hook: panic requested by the client");
    }
    match session.conn.door {
        Door::Echo => {
            let reply = match echo_window {
                Some(window) => deflate::encode_compressed(opcode, data, *window),
                None => frame::encode(opcode, data),
            };
            session.conn.push(&reply);
        }
        Door::Chat => {
            if let Some(channel) = &session.channel {
                let mut publication = Publication::plain(opcode, Bytes::copy_from_slice(data));
                publication.trace = session.conn.trace();
                // The room's name was checked at the upgrade, and `chat` always has rules.
                match state.node.channels.rules(channel) {
                    Ok(rules) => {
                        state
                            .node
                            .publish_then(order, channel, rules, publication, |published| {
                                // A plain client has no reply to read; the log says why.
                                if let Err(error) = published {
                                    tracing::warn!(event = "publish_refused", %error, "a plain door's message was not published");
                                }
                            })
                    }
                    Err(error) => {
                        tracing::error!(event = "publish_failed", channel = %channel, %error)
                    }
                }
            }
        }
        // The notify door is receive-only; what a client sends there is counted and ignored.
        Door::Notify => {}
        Door::Protocol => {
            if let Some(protocol) = protocol.as_mut() {
                protocol.handle_frame(opcode, data, rate)?;
            }
        }
        Door::Pusher => {
            if let Some(pusher) = pusher.as_mut() {
                pusher.handle_frame(opcode, data)?;
            }
        }
    }
    Ok(())
}

/// Runs a connection from the upgraded socket to its end, then logs and counts how it ended.
pub(crate) async fn run(
    session: Session,
    tcp: TcpStream,
    leftover: Bytes,
    deflate: Option<Negotiated>,
    pusher: Option<Result<crate::config::PusherAppConfig, CloseReason>>,
) {
    let state = Arc::clone(&session.state);
    let limits = &state.config.limits;
    let started = Instant::now();
    let mut socket = Socket {
        tcp,
        reader: match &deflate {
            Some(negotiated) => {
                MessageReader::new(limits.max_message_bytes).with_inflater(negotiated.inflater())
            }
            None => MessageReader::new(limits.max_message_bytes),
        },
        echo_window: deflate.map(|n| n.server_window_bits()),
        partial: Vec::new(),
        writer: Writer::default(),
        // Client-protocol commands count one token each, and an SDK may send one command per
        // subscription in one message after a reconnect: its burst holds at least that many.
        rate: MessageRate::new(
            limits.client_message_rate,
            if session.conn.door == Door::Protocol {
                limits.client_message_burst.max(
                    u32::try_from(state.config.client.max_commands_per_message).unwrap_or(u32::MAX),
                )
            } else {
                limits.client_message_burst
            },
        ),
        stats: Stats::default(),
        client_closed: None,
        order: PublishOrder::default(),
        pusher: match pusher {
            Some(Ok(app)) => {
                match PusherSession::open(Arc::clone(&state), Arc::clone(&session.conn), app) {
                    Ok(pusher) => Some(Box::new(pusher)),
                    Err(refused) => {
                        session.conn.close(refused);
                        None
                    }
                }
            }
            Some(Err(refused)) => {
                session.conn.close(refused);
                None
            }
            None => None,
        },
        protocol: (session.conn.door == Door::Protocol).then(|| {
            Box::new(ClientSession::new(
                Arc::clone(&state),
                Arc::clone(&session.conn),
                session.forwarded.clone(),
            ))
        }),
    };
    if !leftover.is_empty() {
        let mut bytes = leftover.to_vec();
        match socket.feed(&session, &mut bytes) {
            Ok(used) => socket.partial = bytes.split_off(used),
            Err(reason) => session.conn.close(reason),
        }
    }
    // Even empty, the handle may share hyper's whole read buffer: never keep it past here.
    drop(leftover);
    let end = match socket.serve(&session).await {
        Ok(reason) => socket.close(&session, reason).await,
        Err(abnormal) => abnormal,
    };
    let (code, reason) = match end {
        End::Closed(reason) => (reason.wire(session.conn.door).0, reason.label()),
        End::Abnormal(why) => (1006, why),
    };
    if let End::Closed(CloseReason::SlowConsumer) = end {
        state.node.metrics.slow_consumers.inc();
        tracing::warn!(event = "slow_consumer", conn_id = session.conn.id, user = %session.conn.user(), ip = %session.ip, trace_id = %session.trace_id, door = session.conn.door.label(), channel = session.channel.as_deref().unwrap_or(""), max_queued_bytes = limits.max_queued_bytes, "outbound queue overflowed; closing");
    }
    if matches!(
        end,
        End::Closed(CloseReason::MessageTooBig | CloseReason::RateLimited)
    ) {
        tracing::warn!(event = "limit_exceeded", conn_id = session.conn.id, ip = %session.ip, trace_id = %session.trace_id, code, reason, "connection limit exceeded");
    }
    state.node.metrics.disconnected(code, reason);
    let stats = &socket.stats;
    tracing::info!(
        event = "disconnected",
        conn_id = session.conn.id,
        user = %session.conn.user(),
        ip = %session.ip,
        trace_id = %session.trace_id,
        door = session.conn.door.label(),
        channel = session.channel.as_deref().unwrap_or(""),
        code,
        reason,
        duration_ms = started.elapsed().as_millis() as u64,
        messages_in = stats.messages_in,
        bytes_in = stats.bytes_in,
        messages_out = stats.messages_out,
        bytes_out = stats.bytes_out,
    );
}
