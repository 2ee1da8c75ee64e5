//! The fanout run's shared state and its receive side: per-publisher window slots, the
//! counters, and one task per member that parses frames in place, records each delivery's
//! latency, completes window slots, answers pings and marks a member joined on its first
//! warm-up message. On the client protocol's door the bench message is the `data` of a push,
//! found in place ([`each_message`]), and the server's `{}` pings are answered with `{}`.
//! Compressed frames (permessage-deflate) come out of the frame reader already inflated; the
//! subscribers count them, the uncompressed ones and the bytes they read from the measured
//! phase on. Subscribers on an HTTP stream (`--door http-stream`, `sse`) have a loop of their
//! own ([`stream_member`]): the same messages, read from the stream's body, each JSON object
//! counted as a frame. Nothing here sends publications (that is `phases`, through an
//! [`Outlet`]; a Pusher publisher's HTTP API connections are `api_publisher`'s).

use super::Door;
use crate::payload::{self, now_ns, KIND_PUB, KIND_WARMUP};
use crate::protocol::{self, Msg};
use crate::stats::Hist;
use crate::ws::{self, Frame, FrameReader, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};
use anyhow::{bail, Result};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;

/// One in-flight publication of a `--max` publisher.
#[derive(Clone, Copy, Default)]
pub(super) struct Slot {
    pub(super) seq: u64,
    pub(super) remaining: u32,
    pub(super) busy: bool,
    pub(super) sent_at: u64,
}

pub(super) struct Publisher {
    pub(super) room: usize,
    /// Window slots, indexed by `seq % window` (empty in rate mode).
    pub(super) slots: RefCell<Vec<Slot>>,
    pub(super) freed: Notify,
    pub(super) sent: Cell<u64>,
    pub(super) stalled: Cell<u64>,
}

impl Publisher {
    fn delivered(&self, seq: u64) {
        let mut slots = self.slots.borrow_mut();
        let k = slots.len() as u64;
        if k == 0 {
            return;
        }
        let slot = &mut slots[(seq % k) as usize];
        if slot.busy && slot.seq == seq {
            slot.remaining = slot.remaining.saturating_sub(1);
            if slot.remaining == 0 {
                slot.busy = false;
                self.freed.notify_one();
            }
        }
    }
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) delivered: Cell<u64>,
    pub(super) delivered_in_window: Cell<u64>,
    pub(super) publisher_copies: Cell<u64>,
    pub(super) unknown: Cell<u64>,
    /// Client protocol pushes that carry no publication (join/leave), not counted otherwise.
    pub(super) other_pushes: Cell<u64>,
    pub(super) closed_early: Cell<u64>,
    /// The subscribers' data frames with RSV1 set, from the measured phase on.
    pub(super) frames_compressed: Cell<u64>,
    /// The subscribers' data frames without it, from the measured phase on.
    pub(super) frames_uncompressed: Cell<u64>,
    /// Bytes the subscribers read from their sockets, from the measured phase on.
    pub(super) wire_bytes: Cell<u64>,
    /// Payload bytes of the compressed frames on the wire.
    pub(super) compressed_bytes: Cell<u64>,
    /// What those payloads inflated to.
    pub(super) inflated_bytes: Cell<u64>,
    /// HTTP API connections the Pusher publishers opened after the first one each.
    pub(super) api_connections: Cell<u64>,
}

fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

impl Counters {
    /// Counts one data frame a subscriber received.
    #[inline]
    fn frame(&self, f: &Frame<'_>) {
        if f.compressed {
            add(&self.frames_compressed, 1);
            add(&self.compressed_bytes, f.wire_len as u64);
            add(&self.inflated_bytes, f.payload.len() as u64);
        } else {
            add(&self.frames_uncompressed, 1);
        }
    }
}

pub(super) struct Shared {
    pub(super) measuring: Cell<bool>,
    /// Set when the measured phase starts and left on: the frame and byte counts run.
    pub(super) counting: Cell<bool>,
    pub(super) stopping: Cell<bool>,
    pub(super) unjoined: Cell<usize>,
    pub(super) room_unjoined: RefCell<Vec<usize>>,
    pub(super) c: Counters,
    pub(super) first_error: RefCell<Option<String>>,
    pub(super) hist: RefCell<Hist>,
    /// With several nodes: the latency of the subscribers of each node (empty for one node).
    pub(super) node_hists: RefCell<Vec<Hist>>,
    pub(super) pubs: Vec<Publisher>,
    pub(super) subs_in_room: Vec<usize>,
}

impl Shared {
    /// Counts a member of `room` as joined (call once per member, on its first warm-up message).
    pub(super) fn mark_joined(&self, room: usize) {
        self.unjoined.set(self.unjoined.get().saturating_sub(1));
        if let Some(n) = self.room_unjoined.borrow_mut().get_mut(room) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The write side of a member, shared by its reader (pongs) and its publisher or warm-up sends.
pub(super) struct Writer(pub(super) tokio::sync::Mutex<OwnedWriteHalf>);

impl Writer {
    pub(super) async fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.lock().await.write_all(bytes).await
    }
}

/// Where a publisher's publications (and the warm-ups) go: a member's WebSocket, or a Pusher
/// publisher's HTTP API.
#[derive(Clone)]
pub(super) enum Outlet {
    Socket(Rc<Writer>),
    Api(Rc<super::api_publisher::ApiPublisher>),
}

impl Outlet {
    /// Sends one publication (a frame, or a whole signed HTTP request).
    pub(super) async fn send(&self, bytes: &[u8]) -> Result<()> {
        match self {
            Outlet::Socket(w) => Ok(w.send(bytes).await?),
            Outlet::Api(a) => a.send(bytes).await,
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum Role {
    /// A subscriber connected to node `.0` (its index in `--url`'s list).
    Sub(usize),
    Pub,
}

/// Calls `on` for what one text or binary frame received through `door` holds: on the plain
/// door the frame's payload is the bench message ([`Msg::Data`]); on the client protocol's
/// door each JSON object of the frame is classified ([`protocol::classify`]).
#[inline]
pub(super) fn each_message<'a>(door: Door, payload: &'a [u8], mut on: impl FnMut(Msg<'a>)) {
    match door {
        Door::Plain => on(Msg::Data(payload)),
        Door::Protocol | Door::HttpStream | Door::Sse => protocol::messages(payload).for_each(on),
        Door::Pusher => on(crate::pusher::classify(payload)),
    }
}

/// Handles one text/binary message received by a member of `room`.
#[inline]
fn on_message(sh: &Shared, role: Role, room: usize, joined: &mut bool, p: &[u8], now: u64) {
    let p = payload::bench_message(p);
    match (p.first().copied(), role) {
        (Some(KIND_PUB), Role::Sub(node)) => match payload::parse_pub(p) {
            Some(m) => {
                let c = &sh.c;
                c.delivered.set(c.delivered.get() + 1);
                if sh.measuring.get() {
                    c.delivered_in_window.set(c.delivered_in_window.get() + 1);
                }
                let took = now.saturating_sub(m.ts);
                sh.hist.borrow_mut().record(took);
                // Per node only for a cluster (empty for one node).
                if let Some(h) = sh.node_hists.borrow_mut().get_mut(node) {
                    h.record(took);
                }
                if let Some(p) = sh.pubs.get(m.publisher as usize) {
                    p.delivered(m.seq);
                }
            }
            None => sh.c.unknown.set(sh.c.unknown.get() + 1),
        },
        (Some(KIND_PUB), Role::Pub) => sh.c.publisher_copies.set(sh.c.publisher_copies.get() + 1),
        (Some(KIND_WARMUP), _) => {
            if !*joined {
                *joined = true;
                sh.mark_joined(room);
            }
        }
        _ => sh.c.unknown.set(sh.c.unknown.get() + 1),
    }
}

async fn member_loop(
    sh: &Shared,
    role: Role,
    door: Door,
    room: usize,
    mut rd: OwnedReadHalf,
    mut fr: FrameReader,
    wr: &Writer,
) -> Result<()> {
    let mut joined = false;
    let mut ctrl = Vec::new();
    let sub = matches!(role, Role::Sub(_));
    loop {
        let now = now_ns();
        let counting = sub && sh.counting.get();
        while let Some(f) = fr.next_frame()? {
            match f.opcode {
                OP_PING => ws::encode_frame(&mut ctrl, OP_PONG, f.payload),
                OP_CLOSE => bail!("server sent {}", ws::describe_close(f.payload)),
                OP_TEXT | ws::OP_BINARY => {
                    if counting {
                        sh.c.frame(&f);
                    }
                    each_message(door, f.payload, |m| match m {
                        Msg::Data(p) => on_message(sh, role, room, &mut joined, p, now),
                        Msg::Ping => ws::encode_frame(&mut ctrl, OP_TEXT, door.pong()),
                        Msg::Push => sh.c.other_pushes.set(sh.c.other_pushes.get() + 1),
                        Msg::Other => sh.c.unknown.set(sh.c.unknown.get() + 1),
                    })
                }
                // The bench header is in the first fragment; later ones carry only padding.
                OP_CONT => {}
                _ => {} // pongs
            }
        }
        if !ctrl.is_empty() {
            wr.send(&ctrl).await?;
            ctrl.clear();
        }
        let n = fr.read_from(&mut rd).await?;
        if n == 0 {
            bail!("server closed the connection");
        }
        if sub && sh.counting.get() {
            add(&sh.c.wire_bytes, n as u64);
        }
    }
}

pub(super) async fn member(
    sh: Rc<Shared>,
    role: Role,
    door: Door,
    room: usize,
    rd: OwnedReadHalf,
    fr: FrameReader,
    wr: Rc<Writer>,
) {
    if let Err(e) = member_loop(&sh, role, door, room, rd, fr, &wr).await {
        if !sh.stopping.get() {
            sh.c.closed_early.set(sh.c.closed_early.get() + 1);
            sh.first_error
                .borrow_mut()
                .get_or_insert_with(|| format!("{e:#}"));
        }
    }
}

async fn stream_loop(
    sh: &Shared,
    role: Role,
    transport: crate::stream::Transport,
    room: usize,
    mut rd: OwnedReadHalf,
    target: &crate::net::Target,
) -> Result<()> {
    let mut body = crate::stream::Body::new(transport);
    let mut joined = false;
    let mut pong: Option<Rc<Vec<u8>>> = None;
    loop {
        let n = body.read_from(&mut rd).await?;
        if n == 0 {
            bail!("server closed the stream");
        }
        let counting = sh.counting.get();
        if counting {
            add(&sh.c.wire_bytes, n as u64);
        }
        let now = now_ns();
        let (mut pings, mut failed) = (0, None);
        body.each_object(|object| {
            if counting {
                add(&sh.c.frames_uncompressed, 1);
            }
            match protocol::classify(object) {
                Msg::Data(p) => on_message(sh, role, room, &mut joined, p, now),
                Msg::Ping => pings += 1,
                Msg::Push => sh.c.other_pushes.set(sh.c.other_pushes.get() + 1),
                Msg::Other => match crate::stream::check_reply(object) {
                    Ok(Some((session, node))) => {
                        pong = Some(Rc::new(crate::stream::pong_request(
                            target, &session, &node,
                        )));
                    }
                    Ok(None) => {}
                    Err(e) => failed = Some(e),
                },
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        if pings > 0 {
            let Some(request) = pong.clone() else {
                bail!("a ping before the connect reply");
            };
            let target = target.clone();
            tokio::task::spawn_local(async move {
                // A lost pong shows as the server closing the stream (3012).
                let _ = crate::stream::post(&target, &request).await;
            });
        }
    }
}

/// One subscriber on an HTTP stream: reads the stream's body until the run stops it.
pub(super) async fn stream_member(
    sh: Rc<Shared>,
    role: Role,
    transport: crate::stream::Transport,
    room: usize,
    rd: OwnedReadHalf,
    target: Rc<crate::net::Target>,
) {
    if let Err(e) = stream_loop(&sh, role, transport, room, rd, &target).await {
        if !sh.stopping.get() {
            sh.c.closed_early.set(sh.c.closed_early.get() + 1);
            sh.first_error
                .borrow_mut()
                .get_or_insert_with(|| format!("{e:#}"));
        }
    }
}
