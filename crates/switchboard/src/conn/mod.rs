//! One WebSocket connection: its shared handle ([`Conn`]) with the bounded outbound queue, the
//! node-wide registry of handles ([`ConnRegistry`]), per-IP admission ([`IpLimits`]), the
//! node's slots and the connections not yet upgraded (`admission`), and the task that owns the
//! socket (`task`).
//!
//! Anyone may queue a frame or ask for a close through a [`Conn`]; only the connection's own
//! task writes to its socket. Queueing never waits: past `max_queued_bytes` the queue is
//! dropped and the connection is marked a slow consumer, which its task then closes. What the
//! server API asks of a connection waits in a bounded inbox (see [`Conn::request`]); a close is
//! a flag, so it is never refused or lost.
//!
//! Each queued frame is charged its length plus [`FRAME_SLOT_BYTES`]: a publication's bytes
//! are shared by every subscriber, but the slot that holds them in each queue is not, and a
//! queue of 3-byte frames would otherwise hold ten times its bound in slots.
//!
//! The registry finds a user's connections through a per-user index, so what the API asks of
//! one user costs the user's connections, not the node's.

mod admission;
mod rate;
mod wake;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use std::task::{Context, Poll};

use bytes::Bytes;

use crate::error::{ClientError, CloseReason};
use crate::kind::Door;
use crate::kind::Encoding;
use crate::trace::TraceParent;

pub use admission::{BusyFlag, NodeSlot, NodeSlots, PendingConns, PendingOutcome, PendingPermit};
pub use rate::MessageRate;
use wake::TaskWake;

/// What one queued frame costs beyond its bytes: the `Bytes` handle in the queue's slot.
/// Charged against `max_queued_bytes` with every frame, and given back when it is written.
pub const FRAME_SLOT_BYTES: usize = std::mem::size_of::<Bytes>();

/// What the server API asks of a client-protocol connection; its task carries it out, since
/// only the task owns the connection's subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCommand {
    /// Subscribe to a channel (server-side subscription).
    Subscribe(Box<str>),
    /// Unsubscribe from a channel.
    Unsubscribe(Box<str>),
    /// Extend the session to this Unix time (0: never expires).
    Refresh(u64),
    /// A subscribe that waited for the broker is over; `joined` says whether it joined. The
    /// session forgets the channel when it did not, and leaves it again when the client
    /// unsubscribed meanwhile (`generation` tells the subscription apart from a later one).
    Joined {
        /// The channel.
        channel: Box<str>,
        /// Which subscribe of this connection to this channel it was.
        generation: u64,
        /// Whether the connection joined the channel.
        joined: bool,
    },
    /// A backend hook the session called has answered (or failed); `seq` says which call.
    Hooked {
        /// The session's number for the call.
        seq: u64,
        /// What came back.
        answer: Result<crate::hooks::Answer, crate::hooks::HookError>,
    },
    /// The session's `expire_at` (from the connect hook) has come: call the refresh hook.
    RefreshDue,
    /// A subscription's `expire_at` (from the subscribe hook) has come: call sub_refresh.
    SubRefreshDue,
    /// Commands an HTTP-streaming or SSE client posted to the emulation endpoint, encoded as
    /// on a WebSocket; the stream's task handles them as a WebSocket's task handles a frame.
    Emulated(Bytes),
}

/// Emulation requests that may wait in one connection's inbox: each is one HTTP request the
/// client made, so only a client posting faster than its task runs fills it.
pub const MAX_EMULATED_WAITING: usize = 64;

/// The least time past `expire_at` a hook-renewed session or subscription is given for its
/// refresh hook to answer, whatever `client.expiry_grace` says.
pub(crate) const HOOK_GRACE_SECS: u64 = 10;

/// [`Conn::hook_flags`]: the session is refreshed by the refresh hook.
pub(crate) const REFRESH_BY_HOOK: u8 = 1;
/// [`Conn::hook_flags`]: a refresh hook call is under way (or asked for).
pub(crate) const REFRESH_IN_FLIGHT: u8 = 2;
/// [`Conn::hook_flags`]: the earliest subscription expiry is one sub_refresh renews.
pub(crate) const SUB_REFRESH_BY_HOOK: u8 = 4;
/// [`Conn::hook_flags`]: sub_refresh calls are under way (or asked for).
pub(crate) const SUB_REFRESH_IN_FLIGHT: u8 = 8;

/// The outbound side of a connection, shared between the hub and the connection's task.
#[derive(Default)]
struct Outbox {
    frames: VecDeque<Bytes>,
    /// Bytes queued here plus bytes taken by the writer and not yet written, each frame
    /// charged [`FRAME_SLOT_BYTES`] more.
    queued: usize,
    close: Option<CloseReason>,
    /// Made at the first request or subscription: plain-door connections (most of them,
    /// idle) carry one pointer for it, and the fan-out's fields stay packed.
    inbox: Option<Box<Inbox>>,
}

/// What the server API and the node ask of a client-protocol connection, waiting for its task.
#[derive(Default)]
struct Inbox {
    /// Subscribes and unsubscribes from the API (bounded), and the node's `Joined` (one per
    /// join in flight, never refused: a lost one would leave a subscription pending).
    commands: Vec<ServerCommand>,
    /// Subscribes and unsubscribes from the API in `commands`.
    requested: usize,
    /// Subscribes among them.
    subscribes: usize,
    /// The latest session expiry the API set: a newer one replaces it, so refreshes never
    /// fill the inbox.
    refresh: Option<u64>,
    /// Channels the session holds (joins in flight included), kept by the session so the API
    /// can refuse a subscribe past `max_subscriptions` at once.
    subscriptions: usize,
}

/// The shared handle of one connection.
pub struct Conn {
    /// Node-unique connection id.
    pub id: u64,
    /// The door it came through.
    pub door: Door,
    /// The client protocol's encoding (JSON unless the client asked for Protobuf).
    pub encoding: Encoding,
    /// permessage-deflate was negotiated: publications go out compressed (shared frames).
    pub deflate: bool,
    /// The token's subject; set once, at the upgrade or (client protocol) at `connect`.
    user: OnceLock<Box<str>>,
    /// The client protocol's client id, set at `connect` (empty before, and on plain doors).
    client_id: OnceLock<Box<str>>,
    /// Token expiry, Unix seconds (0 = never); a protocol client's `refresh` moves it.
    expires_at: AtomicU64,
    /// Earliest expiry of a subscription token of this connection, Unix seconds (0 = none).
    subscription_expires_at: AtomicU64,
    /// Whether the client-protocol `connect` succeeded (plain doors: from the start).
    connected: AtomicBool,
    /// Channels this connection may subscribe to (`client.max_subscriptions`); also the most
    /// subscribes and unsubscribes from the API its inbox holds. A `u32` sits in the padding
    /// after the one-byte fields: the handle does not grow for it.
    max_subscriptions: u32,
    /// The handshake span's context, when traces are on and it was sampled: what the
    /// connection publishes, and the hooks called for it, hang under it. Boxed: a pointer's
    /// worth per connection when traces are off.
    trace: Option<Box<TraceParent>>,

    /// Milliseconds since gateway start when the connection opened.
    opened_ms: u64,
    max_queued: usize,
    outbox: Mutex<Outbox>,
    wake: TaskWake,
    /// Milliseconds since gateway start of the last inbound frame.
    last_inbound_ms: AtomicU64,
    /// Milliseconds since gateway start of the last ping sent.
    last_ping_ms: AtomicU64,
    /// What the sweep asks of the hooks (`REFRESH_BY_HOOK`...).
    hook_flags: AtomicU8,
    /// Unix seconds before which the sweep does not ask for a hook refresh again (after a
    /// failed one).
    hook_retry_at: AtomicU64,
}

impl Conn {
    /// A handle with an empty queue.
    pub fn new(
        id: u64,
        door: Door,
        user: &str,
        expires_at: u64,
        max_queued: usize,
        now_ms: u64,
    ) -> Self {
        let user_cell = OnceLock::new();
        // The client protocol learns its user at `connect`, the Pusher door at `pusher:signin`.
        if door != Door::Protocol && door != Door::Pusher {
            let _ = user_cell.set(user.into());
        }
        Conn {
            id,
            door,
            encoding: Encoding::Json,
            deflate: false,
            user: user_cell,
            client_id: OnceLock::new(),
            expires_at: AtomicU64::new(expires_at),
            subscription_expires_at: AtomicU64::new(0),
            connected: AtomicBool::new(door != Door::Protocol),
            max_subscriptions: saturating_u32(
                crate::config::ClientConfig::default().max_subscriptions,
            ),
            trace: None,

            opened_ms: now_ms,
            max_queued,
            outbox: Mutex::new(Outbox::default()),
            wake: TaskWake::default(),
            last_inbound_ms: AtomicU64::new(now_ms),
            last_ping_ms: AtomicU64::new(now_ms),
            hook_flags: AtomicU8::new(0),
            hook_retry_at: AtomicU64::new(0),
        }
    }

    /// Sets the hook `flags` bits.
    pub(crate) fn set_hook_flags(&self, flags: u8) {
        self.hook_flags.fetch_or(flags, Ordering::AcqRel);
    }

    /// Clears the hook `flags` bits.
    pub(crate) fn clear_hook_flags(&self, flags: u8) {
        self.hook_flags.fetch_and(!flags, Ordering::AcqRel);
    }

    /// After a failed hook refresh: the sweep asks again no sooner than `at` (Unix seconds).
    pub(crate) fn retry_hooks_at(&self, at: u64) {
        self.hook_retry_at.store(at, Ordering::Relaxed);
    }

    /// The same handle under the trace context of its handshake span.
    pub fn with_trace(mut self, trace: Option<TraceParent>) -> Self {
        self.trace = trace.map(Box::new);
        self
    }

    /// The trace context of the connection's handshake (traces on and sampled only): the
    /// parent of the spans of what it publishes and of the hooks called for it.
    pub fn trace(&self) -> Option<TraceParent> {
        self.trace.as_deref().copied()
    }

    /// The same handle speaking the client protocol in `encoding`.
    pub fn with_encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// The same handle with permessage-deflate negotiated.
    pub fn with_deflate(mut self, deflate: bool) -> Self {
        self.deflate = deflate;
        self
    }

    /// The same handle with `client.max_subscriptions` (the default's otherwise).
    pub fn with_max_subscriptions(mut self, max_subscriptions: usize) -> Self {
        self.max_subscriptions = saturating_u32(max_subscriptions);
        self
    }

    /// Records how many channels the client-protocol session holds.
    pub(crate) fn set_subscription_count(&self, count: usize) {
        self.outbox()
            .inbox
            .get_or_insert_with(Box::default)
            .subscriptions = count;
    }

    /// The user (empty when anonymous, or before a protocol client's `connect`).
    pub fn user(&self) -> &str {
        self.user.get().map_or("", |user| user)
    }

    /// The client protocol's client id (empty before `connect`, and on plain doors).
    pub fn client_id(&self) -> &str {
        self.client_id.get().map_or("", |id| id)
    }

    /// Records a protocol client's `connect`: its client id, user and token expiry.
    pub(crate) fn set_connected(&self, client_id: &str, user: &str, expires_at: u64) {
        let _ = self.client_id.set(client_id.into());
        let _ = self.user.set(user.into());
        self.expires_at.store(expires_at, Ordering::Relaxed);
        self.connected.store(true, Ordering::Release);
    }

    /// The Pusher door's socket id, set once when its session opens (its client id: what
    /// the hub compares to leave a sender out of its own events).
    pub(crate) fn set_client_id(&self, id: &str) {
        let _ = self.client_id.set(id.into());
    }

    /// The Pusher door's user after `pusher:signin`; set once, returns whether it was.
    pub(crate) fn set_user(&self, user: &str) -> bool {
        self.user.set(user.into()).is_ok()
    }

    /// Whether the connection is past its `connect` (always, on plain doors).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Moves the session's expiry (Unix seconds, 0 = never).
    pub(crate) fn set_expires_at(&self, expires_at: u64) {
        self.expires_at.store(expires_at, Ordering::Relaxed);
    }

    /// Sets the earliest subscription-token expiry (Unix seconds, 0 = none).
    pub(crate) fn set_subscription_expires_at(&self, expires_at: u64) {
        self.subscription_expires_at
            .store(expires_at, Ordering::Relaxed);
    }

    /// Hands a server API request to the connection's task.
    ///
    /// The inbox holds at most `client.max_subscriptions` subscribes and unsubscribes (the
    /// task takes them all each time it runs, so only a burst faster than the task fills it). A
    /// refresh replaces the one waiting, and the node's `Joined` is always taken. Nothing is
    /// queued for a connection that is closing (it is going away; that is not an error).
    ///
    /// # Errors
    /// [`ClientError::LimitExceeded`] for a subscribe when the session's channels and the
    /// subscribes already waiting reach `client.max_subscriptions`;
    /// [`ClientError::TooManyRequests`] when the inbox is full (retry later: a subscribe or an
    /// unsubscribe carried out twice is carried out once).
    pub fn request(&self, command: ServerCommand) -> Result<(), ClientError> {
        let mut outbox = self.outbox();
        if outbox.close.is_some() {
            return Ok(());
        }
        let max = self.max_subscriptions as usize;
        let inbox = outbox.inbox.get_or_insert_with(Box::default);
        match command {
            ServerCommand::Refresh(expires_at) => inbox.refresh = Some(expires_at),
            ServerCommand::Joined { .. }
            | ServerCommand::Hooked { .. }
            | ServerCommand::RefreshDue
            | ServerCommand::SubRefreshDue => inbox.commands.push(command),
            ServerCommand::Emulated(_) => {
                let waiting = inbox
                    .commands
                    .iter()
                    .filter(|c| matches!(c, ServerCommand::Emulated(_)))
                    .count();
                if waiting >= MAX_EMULATED_WAITING {
                    return Err(ClientError::TooManyRequests);
                }
                inbox.commands.push(command);
            }
            ServerCommand::Subscribe(_) | ServerCommand::Unsubscribe(_) => {
                let subscribe = matches!(command, ServerCommand::Subscribe(_));
                if subscribe && inbox.subscriptions + inbox.subscribes >= max {
                    return Err(ClientError::LimitExceeded);
                }
                if inbox.requested >= max {
                    return Err(ClientError::TooManyRequests);
                }
                inbox.requested += 1;
                inbox.subscribes += usize::from(subscribe);
                inbox.commands.push(command);
            }
        }
        drop(outbox);
        self.wake.wake();
        Ok(())
    }

    /// Ready once something was queued, a close asked for or a request made since the last
    /// time it was ready (the connection's task waits on this).
    pub(crate) fn poll_wake(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.wake.poll(cx)
    }

    /// Takes the pending server API requests (a refresh last).
    pub(crate) fn take_commands(&self) -> Vec<ServerCommand> {
        let mut outbox = self.outbox();
        let Some(inbox) = outbox.inbox.as_mut() else {
            return Vec::new();
        };
        if inbox.commands.is_empty() && inbox.refresh.is_none() {
            return Vec::new();
        }
        inbox.requested = 0;
        inbox.subscribes = 0;
        let mut commands = std::mem::take(&mut inbox.commands);
        if let Some(expires_at) = inbox.refresh.take() {
            commands.push(ServerCommand::Refresh(expires_at));
        }
        commands
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        // A panic elsewhere while holding this lock leaves a consistent queue; keep going.
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame. Returns `false` when the connection is closing or has just been marked a
    /// slow consumer (its queue would pass `max_queued_bytes`).
    pub fn push(&self, frame: &Bytes) -> bool {
        let mut outbox = self.outbox();
        if outbox.close.is_some() {
            return false;
        }
        let cost = frame.len() + FRAME_SLOT_BYTES;
        if outbox.queued + cost > self.max_queued {
            outbox.close = Some(CloseReason::SlowConsumer);
            outbox.frames = VecDeque::new();
            drop(outbox);
            self.wake.wake();
            return false;
        }
        outbox.queued += cost;
        let was_empty = outbox.frames.is_empty();
        outbox.frames.push_back(frame.clone());
        drop(outbox);
        if was_empty {
            self.wake.wake();
        }
        true
    }

    /// Frames waiting in the queue (not yet taken by the writer).
    pub(crate) fn queued_frames(&self) -> usize {
        self.outbox().frames.len()
    }

    /// Queues `frame` at `index` of the queue, ahead of frames queued after that point (a
    /// reply that must precede publications queued while it was being built). Only the
    /// connection's own task calls this, so the writer has not taken those frames.
    pub(crate) fn insert_frame(&self, index: usize, frame: Bytes) {
        let mut outbox = self.outbox();
        if outbox.close.is_some() {
            return;
        }
        outbox.queued += frame.len() + FRAME_SLOT_BYTES;
        let index = index.min(outbox.frames.len());
        outbox.frames.insert(index, frame);
        drop(outbox);
        self.wake.wake();
    }

    /// Queues the pong for a client's ping. Pongs count against `max_queued_bytes` like
    /// everything the client is sent, so a client that pings and never reads is closed as a
    /// slow consumer instead of growing the queue (every ping is answered: conformance
    /// suites check it, though RFC 6455 §5.5.3 would allow answering the latest only).
    pub fn push_pong(&self, frame: &Bytes) {
        self.push(frame);
    }

    /// Queues a control frame (the server's ping, once per heartbeat) regardless of the byte
    /// limit.
    pub fn push_control(&self, frame: Bytes) {
        let mut outbox = self.outbox();
        if outbox.close.is_some() {
            return;
        }
        outbox.queued += frame.len() + FRAME_SLOT_BYTES;
        outbox.frames.push_back(frame);
        drop(outbox);
        self.wake.wake();
    }

    /// Asks the connection's task to close with `reason` (the first reason wins).
    pub fn close(&self, reason: CloseReason) {
        let mut outbox = self.outbox();
        if outbox.close.is_none() {
            outbox.close = Some(reason);
        }
        drop(outbox);
        self.wake.wake();
    }

    /// Moves every queued frame to the end of `into`; returns the close reason, if any.
    pub(crate) fn take_queued(&self, into: &mut VecDeque<Bytes>) -> Option<CloseReason> {
        let mut outbox = self.outbox();
        if into.is_empty() {
            std::mem::swap(into, &mut outbox.frames);
        } else {
            into.extend(outbox.frames.drain(..));
        }
        outbox.close
    }

    /// Records that the writer put `n` bytes on the wire and finished `frames` frames (which
    /// gives their slots back).
    pub(crate) fn written(&self, n: usize, frames: usize) {
        let mut outbox = self.outbox();
        outbox.queued = outbox.queued.saturating_sub(n + frames * FRAME_SLOT_BYTES);
    }

    /// The most bytes one reply may take now (a history reply, a subscribe reply carrying
    /// recovered publications): half the queue bound, leaving the other half to what is
    /// published while the client reads it, and never more than the room left. A reply cut
    /// to this is never what closes a connection as a slow consumer.
    pub(crate) fn reply_budget(&self) -> usize {
        let queued = self.outbox().queued;
        (self.max_queued / 2).min(self.max_queued.saturating_sub(queued))
    }

    /// Bytes waiting to be written, each frame counted [`FRAME_SLOT_BYTES`] more.
    pub fn queued_bytes(&self) -> usize {
        self.outbox().queued
    }

    /// Milliseconds since gateway start when the connection opened.
    pub fn opened_ms(&self) -> u64 {
        self.opened_ms
    }

    /// Channels a client-protocol session holds, joins in flight included (0 on plain
    /// doors, whose one room the hub knows).
    pub fn subscription_count(&self) -> usize {
        self.outbox()
            .inbox
            .as_ref()
            .map_or(0, |inbox| inbox.subscriptions)
    }

    /// Notes an inbound frame (for the heartbeat deadline).
    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_inbound_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The heartbeat sweep's look at this connection: queues a ping when one is due, and closes
    /// it when it has been silent for two intervals, its token has expired, or (client
    /// protocol) it sent no `connect` within `connect_timeout_ms`.
    pub(crate) fn sweep(&self, now_ms: u64, timing: &SweepTiming, now_unix: u64, ping: &Bytes) {
        let interval_ms = timing.heartbeat_ms;
        // Protocol clients refresh when their TTL runs out; give them the grace to do it.
        let grace = if self.door == Door::Protocol {
            timing.expiry_grace_secs
        } else {
            0
        };
        let expires_at = self.expires_at.load(Ordering::Relaxed);
        let subscription_expires_at = self.subscription_expires_at.load(Ordering::Relaxed);
        let flags = self.hook_flags.load(Ordering::Acquire);
        // A session or subscription the backend renews gets at least HOOK_GRACE_SECS for its
        // refresh hook to answer (and be retried) before it is closed.
        let grace_for = |by_hook: u8| {
            if flags & by_hook != 0 {
                grace.max(HOOK_GRACE_SECS)
            } else {
                grace
            }
        };
        let expired = |at: u64, grace: u64| at != 0 && now_unix >= at.saturating_add(grace);
        if flags != 0 {
            // Hook-made sessions and subscriptions are renewed by the backend when they reach
            // `expire_at`; the grace below still closes them if it never answers.
            let due =
                |at: u64| at != 0 && now_unix >= at.max(self.hook_retry_at.load(Ordering::Relaxed));
            for (by_hook, in_flight, at, command) in [
                (
                    REFRESH_BY_HOOK,
                    REFRESH_IN_FLIGHT,
                    expires_at,
                    ServerCommand::RefreshDue,
                ),
                (
                    SUB_REFRESH_BY_HOOK,
                    SUB_REFRESH_IN_FLIGHT,
                    subscription_expires_at,
                    ServerCommand::SubRefreshDue,
                ),
            ] {
                if flags & by_hook != 0 && flags & in_flight == 0 && due(at) {
                    self.set_hook_flags(in_flight);
                    let _ = self.request(command);
                }
            }
        }
        if expired(expires_at, grace_for(REFRESH_BY_HOOK)) {
            self.close(CloseReason::TokenExpired);
        } else if expired(subscription_expires_at, grace_for(SUB_REFRESH_BY_HOOK)) {
            self.close(CloseReason::SubscriptionExpired);
        } else if !self.is_connected()
            && now_ms.saturating_sub(self.opened_ms) >= timing.connect_timeout_ms
        {
            self.close(CloseReason::Stale);
        } else if now_ms.saturating_sub(self.last_inbound_ms.load(Ordering::Relaxed))
            >= 2 * interval_ms
        {
            self.close(CloseReason::HeartbeatTimeout);
        } else if self.is_connected()
            && now_ms.saturating_sub(self.last_ping_ms.load(Ordering::Relaxed)) >= interval_ms
        {
            self.last_ping_ms.store(now_ms, Ordering::Relaxed);
            self.push_control(ping.clone());
        }
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The sweep's deadlines, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SweepTiming {
    /// Ping interval; silent for two intervals closes.
    pub(crate) heartbeat_ms: u64,
    /// Time a protocol client has to send `connect`.
    pub(crate) connect_timeout_ms: u64,
    /// Seconds past a protocol client's token expiry before it is closed.
    pub(crate) expiry_grace_secs: u64,
}

const REGISTRY_SHARDS: usize = 16;

type RegistryShard = Mutex<HashMap<u64, Arc<Conn>>>;

/// A user's connections on this node (anonymous ones are not indexed: no API call names them).
type UserShard = Mutex<HashMap<Box<str>, Vec<Arc<Conn>>>>;

/// Every open connection of the node, by id, and by user.
pub struct ConnRegistry {
    shards: Box<[RegistryShard]>,
    users: Box<[UserShard]>,
    count: AtomicUsize,
    next_id: AtomicU64,
    /// HTTP-streaming and SSE connections by the session their emulation requests name.
    sessions: Mutex<HashMap<Box<str>, Arc<Conn>>>,
}

impl Default for ConnRegistry {
    fn default() -> Self {
        ConnRegistry {
            shards: (0..REGISTRY_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            users: (0..REGISTRY_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            count: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            sessions: Mutex::new(HashMap::new()),
        }
    }
}

impl ConnRegistry {
    /// A fresh connection id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn shard(&self, id: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.shards[(id as usize) % REGISTRY_SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn user_shard(
        &self,
        user: &str,
    ) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Vec<Arc<Conn>>>> {
        use std::hash::{Hash, Hasher};
        // The shard only spreads the lock; the maps inside are randomly keyed, so a chosen
        // user name can crowd a shard's lock but never a map's bucket.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut hasher);
        self.users[(hasher.finish() as usize) % REGISTRY_SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection (and indexes its user, when the door knew it at the upgrade).
    pub fn insert(&self, conn: Arc<Conn>) {
        self.index_user(&conn);
        self.shard(conn.id).insert(conn.id, conn);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Indexes a client-protocol connection under the user its `connect` named; call once,
    /// after [`Conn::set_connected`].
    pub(crate) fn connected(&self, conn: &Arc<Conn>) {
        self.index_user(conn);
    }

    fn index_user(&self, conn: &Arc<Conn>) {
        let user = conn.user();
        if !user.is_empty() {
            self.user_shard(user)
                .entry(user.into())
                .or_default()
                .push(Arc::clone(conn));
        }
    }

    /// Removes a connection.
    pub fn remove(&self, id: u64) {
        let Some(conn) = self.shard(id).remove(&id) else {
            return;
        };
        self.count.fetch_sub(1, Ordering::Relaxed);
        let user = conn.user();
        if user.is_empty() {
            return;
        }
        let mut users = self.user_shard(user);
        if let Some(conns) = users.get_mut(user) {
            if let Some(at) = conns.iter().position(|c| c.id == id) {
                conns.swap_remove(at);
            }
            if conns.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Makes `conn` reachable by emulation requests naming `session` (an unguessable id).
    pub(crate) fn insert_session(&self, session: &str, conn: &Arc<Conn>) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session.into(), Arc::clone(conn));
    }

    /// Forgets a session (its stream ended).
    pub(crate) fn remove_session(&self, session: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(session);
    }

    /// The connection of an HTTP-streaming or SSE session open on this node.
    pub fn session(&self, session: &str) -> Option<Arc<Conn>> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(session)
            .cloned()
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Distinct users with an open connection.
    pub fn users(&self) -> usize {
        self.users
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// The connection with this id, if it is open here.
    pub fn get(&self, id: u64) -> Option<Arc<Conn>> {
        self.shard(id).get(&id).cloned()
    }

    /// A page of the listing: the (at most) `limit` connections with an id above `after`
    /// that `keep` accepts, lowest id first (the next page starts after the last one), and how
    /// many connections `keep` accepts in all. One pass over the registry, one shard lock at a
    /// time; it holds `limit` handles, never a copy of the registry, so a node of a million
    /// connections answers a page of fifty with fifty.
    pub fn page(
        &self,
        after: u64,
        limit: usize,
        mut keep: impl FnMut(&Conn) -> bool,
    ) -> (Vec<Arc<Conn>>, usize) {
        use std::collections::BinaryHeap;
        // The heap's top is the highest id kept so far: the one a lower id pushes out.
        struct ById(Arc<Conn>);
        impl PartialEq for ById {
            fn eq(&self, other: &Self) -> bool {
                self.0.id == other.0.id
            }
        }
        impl Eq for ById {}
        impl PartialOrd for ById {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for ById {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.0.id.cmp(&other.0.id)
            }
        }
        let mut kept: BinaryHeap<ById> = BinaryHeap::with_capacity(limit.min(1024) + 1);
        let mut matching = 0;
        self.for_each(|conn| {
            if !keep(conn.as_ref()) {
                return;
            }
            matching += 1;
            if conn.id <= after || limit == 0 {
                return;
            }
            if kept.len() < limit {
                kept.push(ById(Arc::clone(conn)));
            } else if kept.peek().is_some_and(|top| conn.id < top.0.id) {
                kept.pop();
                kept.push(ById(Arc::clone(conn)));
            }
        });
        let page = kept.into_sorted_vec().into_iter().map(|c| c.0).collect();
        (page, matching)
    }

    /// Calls `f` on every connection, one shard at a time (never holding two locks).
    pub fn for_each(&self, mut f: impl FnMut(&Arc<Conn>)) {
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.values().for_each(&mut f);
        }
    }

    /// Calls `f` on every connection of `user`, under its shard's lock (`f` must not open or
    /// close connections; queueing on them is fine).
    pub fn for_user(&self, user: &str, f: impl FnMut(&Arc<Conn>)) {
        if let Some(conns) = self.user_shard(user).get(user) {
            conns.iter().for_each(f);
        }
    }

    /// Closes every connection of `user` with `reason`; returns how many.
    pub fn close_user(&self, user: &str, reason: CloseReason) -> usize {
        let mut closed = 0;
        self.for_user(user, |conn| {
            conn.close(reason);
            closed += 1;
        });
        closed
    }
}

/// Connections per client IP, for `max_connections_per_ip`.
#[derive(Default)]
pub struct IpLimits {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection of an IP; dropping it gives the place back.
pub struct IpPermit {
    limits: Arc<IpLimits>,
    ip: IpAddr,
}

impl IpLimits {
    /// Admits one more connection from `ip` unless it already holds `max` (0 = no limit).
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpPermit> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if max != 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(IpPermit {
            limits: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(max_queued: usize) -> Conn {
        Conn::new(1, Door::Chat, "", 0, max_queued, 0)
    }

    /// A waker that counts how often it was woken.
    struct CountingWaker(AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<CountingWaker>, std::task::Waker) {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        (Arc::clone(&counter), std::task::Waker::from(counter))
    }

    #[test]
    fn a_frame_queued_before_the_task_waits_is_seen_at_once() {
        let conn = conn(1024);
        conn.push(&Bytes::from_static(b"early"));
        let (_, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(conn.poll_wake(&mut cx).is_ready());
        assert!(conn.poll_wake(&mut cx).is_pending());
    }

    #[test]
    fn a_waiting_task_is_woken_once_for_several_wakes() {
        let conn = conn(1024);
        let (counter, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(conn.poll_wake(&mut cx).is_pending());
        conn.push_control(Bytes::from_static(b"ping"));
        conn.close(CloseReason::GoingAway);
        conn.request(ServerCommand::Refresh(0)).unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(conn.poll_wake(&mut cx).is_ready());
        assert!(conn.poll_wake(&mut cx).is_pending());
    }

    #[test]
    fn the_inbox_holds_max_subscriptions_requests_and_refreshes_replace_each_other() {
        let conn = Conn::new(1, Door::Protocol, "u", 0, 1024, 0).with_max_subscriptions(2);
        let unsubscribe = |channel: &str| ServerCommand::Unsubscribe(channel.into());
        assert_eq!(conn.request(unsubscribe("a")), Ok(()));
        assert_eq!(conn.request(unsubscribe("b")), Ok(()));
        assert_eq!(
            conn.request(unsubscribe("c")),
            Err(ClientError::TooManyRequests)
        );
        for expires_at in 0..1000 {
            assert_eq!(conn.request(ServerCommand::Refresh(expires_at)), Ok(()));
        }
        let joined = ServerCommand::Joined {
            channel: "j".into(),
            generation: 1,
            joined: true,
        };
        assert_eq!(conn.request(joined.clone()), Ok(()), "never refused");
        assert_eq!(
            conn.take_commands(),
            vec![
                unsubscribe("a"),
                unsubscribe("b"),
                joined,
                ServerCommand::Refresh(999)
            ]
        );
        assert_eq!(conn.request(unsubscribe("c")), Ok(()), "taken: room again");
    }

    #[test]
    fn a_subscribe_counts_the_sessions_channels_and_the_subscribes_waiting() {
        let conn = Conn::new(1, Door::Protocol, "u", 0, 1024, 0).with_max_subscriptions(2);
        conn.set_subscription_count(1);
        let subscribe = |channel: &str| ServerCommand::Subscribe(channel.into());
        assert_eq!(conn.request(subscribe("a")), Ok(()));
        assert_eq!(
            conn.request(subscribe("b")),
            Err(ClientError::LimitExceeded)
        );
        assert_eq!(
            conn.request(ServerCommand::Unsubscribe("x".into())),
            Ok(()),
            "an unsubscribe is not held to the channel limit"
        );
        conn.take_commands();
        conn.set_subscription_count(2);
        assert_eq!(
            conn.request(subscribe("b")),
            Err(ClientError::LimitExceeded)
        );
    }

    #[test]
    fn the_user_index_follows_connects_and_disconnects() {
        let registry = ConnRegistry::default();
        let conn = |id: u64, door: Door, user: &str| Arc::new(Conn::new(id, door, user, 0, 64, 0));
        registry.insert(conn(1, Door::Chat, "a"));
        registry.insert(conn(2, Door::Notify, "a"));
        registry.insert(conn(3, Door::Chat, ""));
        let protocol = conn(4, Door::Protocol, "");
        registry.insert(Arc::clone(&protocol));
        let ids = |user: &str| {
            let mut ids = Vec::new();
            registry.for_user(user, |c| ids.push(c.id));
            ids.sort_unstable();
            ids
        };
        assert_eq!((ids("a"), registry.users()), (vec![1, 2], 1));
        protocol.set_connected("client", "b", 0);
        registry.connected(&protocol);
        assert_eq!((ids("b"), registry.users()), (vec![4], 2));
        registry.remove(1);
        registry.remove(4);
        assert_eq!((ids("a"), ids("b"), registry.users()), (vec![2], vec![], 1));
        assert_eq!(
            registry.close_user("a", CloseReason::DisconnectedByServer),
            1
        );
        registry.remove(2);
        registry.remove(3);
        assert_eq!((registry.len(), registry.users()), (0, 0));
    }

    #[test]
    fn the_listing_pages_by_id_and_counts_every_match() {
        let registry = ConnRegistry::default();
        for id in 1..=50u64 {
            let user = if id % 2 == 0 { "even" } else { "odd" };
            registry.insert(Arc::new(Conn::new(id, Door::Chat, user, 0, 64, 0)));
        }
        let ids = |page: &[Arc<Conn>]| page.iter().map(|c| c.id).collect::<Vec<_>>();
        let (page, total) = registry.page(0, 5, |_| true);
        assert_eq!((ids(&page), total), (vec![1, 2, 3, 4, 5], 50));
        let (page, total) = registry.page(45, 10, |_| true);
        assert_eq!((ids(&page), total), (vec![46, 47, 48, 49, 50], 50));
        let (page, total) = registry.page(10, 3, |c| c.user() == "even");
        assert_eq!((ids(&page), total), (vec![12, 14, 16], 25));
        assert_eq!(registry.page(50, 10, |_| true).0.len(), 0);
        assert_eq!(registry.get(7).map(|c| c.id), Some(7));
        assert!(registry.get(99).is_none());
    }

    #[test]
    fn overflow_marks_a_slow_consumer_and_drops_the_queue() {
        let conn = conn(2 * FRAME_SLOT_BYTES + 10);
        let frame = Bytes::from_static(b"123456");
        assert!(conn.push(&frame));
        assert!(!conn.push(&frame));
        let mut taken = VecDeque::new();
        assert_eq!(
            conn.take_queued(&mut taken),
            Some(CloseReason::SlowConsumer)
        );
        assert!(taken.is_empty());
        assert!(
            !conn.push(&Bytes::from_static(b"1")),
            "nothing is queued once closing"
        );
    }

    #[test]
    fn pongs_count_against_the_queue_bound() {
        let each = 100 + FRAME_SLOT_BYTES;
        let conn = Conn::new(1, Door::Chat, "", 0, 10 * each + 99, 0);
        let pong = Bytes::from(vec![0u8; 100]);
        for _ in 0..10 {
            conn.push_pong(&pong);
        }
        assert_eq!(conn.queued_bytes(), 10 * each);
        conn.push_pong(&pong);
        let mut taken = VecDeque::new();
        assert_eq!(
            conn.take_queued(&mut taken),
            Some(CloseReason::SlowConsumer),
            "the 11th pong passes the bound"
        );
    }

    #[test]
    fn each_frame_is_charged_its_queue_slot() {
        // 3-byte frames (a 1-byte plain message): without the slot charge a 1 KiB bound would
        // hold 341 of them, whose slots alone take 11 KiB.
        let conn = conn(1024);
        let tiny = Bytes::from_static(b"\x81\x01a");
        let mut queued = 0;
        while conn.push(&tiny) {
            queued += 1;
        }
        assert_eq!(queued, 1024 / (3 + FRAME_SLOT_BYTES));
    }

    #[test]
    fn written_bytes_free_queue_space() {
        let conn = conn(FRAME_SLOT_BYTES + 10);
        let frame = Bytes::from_static(b"123456");
        assert!(conn.push(&frame));
        let mut taken = VecDeque::new();
        assert_eq!(conn.take_queued(&mut taken), None);
        assert_eq!(
            conn.queued_bytes(),
            6 + FRAME_SLOT_BYTES,
            "taken but unwritten bytes still count"
        );
        conn.written(6, 1);
        assert!(conn.push(&frame));
    }

    #[test]
    fn first_close_reason_wins() {
        let conn = conn(10);
        conn.close(CloseReason::GoingAway);
        conn.close(CloseReason::SlowConsumer);
        assert_eq!(
            conn.take_queued(&mut VecDeque::new()),
            Some(CloseReason::GoingAway)
        );
    }

    #[test]
    fn sweep_pings_then_times_out_and_expires() {
        let ping = Bytes::from_static(b"p");
        let timing = SweepTiming {
            heartbeat_ms: 1000,
            connect_timeout_ms: 500,
            expiry_grace_secs: 10,
        };
        let conn = conn(100);
        conn.sweep(1000, &timing, 0, &ping);
        assert_eq!(
            conn.queued_bytes(),
            1 + FRAME_SLOT_BYTES,
            "a ping is due after one interval"
        );
        conn.sweep(2000, &timing, 0, &ping);
        assert_eq!(
            conn.take_queued(&mut VecDeque::new()),
            Some(CloseReason::HeartbeatTimeout)
        );
        let expiring = Conn::new(2, Door::Chat, "u", 50, 100, 0);
        expiring.sweep(0, &timing, 50, &ping);
        assert_eq!(
            expiring.take_queued(&mut VecDeque::new()),
            Some(CloseReason::TokenExpired)
        );
        let silent = Conn::new(3, Door::Protocol, "", 0, 100, 0);
        silent.sweep(400, &timing, 0, &ping);
        assert_eq!(silent.take_queued(&mut VecDeque::new()), None);
        silent.sweep(500, &timing, 0, &ping);
        assert_eq!(
            silent.take_queued(&mut VecDeque::new()),
            Some(CloseReason::Stale),
            "a protocol client that never sends connect is closed"
        );
    }

    #[test]
    fn ip_permits_are_counted_and_returned() {
        let limits = Arc::new(IpLimits::default());
        let ip: IpAddr = [127, 0, 0, 1].into();
        let first = limits.acquire(ip, 2).unwrap();
        let _second = limits.acquire(ip, 2).unwrap();
        assert!(limits.acquire(ip, 2).is_none());
        drop(first);
        assert!(limits.acquire(ip, 2).is_some());
    }
}
