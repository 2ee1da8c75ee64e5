//! The fanout scenario: S subscribers and P publishers spread over C chat rooms
//! (`/ws/chat/room-N`). With `--door protocol` the subscribers connect through the client
//! protocol instead (`/connection/websocket`, subscribed to the same room's channel
//! `chat:room-N`; see `crate::protocol`) while the publishers stay on the plain door, so the
//! same publications reach them as JSON pushes. It connects everyone, waits until every member
//! has provably joined (it received a warm-up message published to its room), then publishes
//! timestamped publications for the measured phase, either closed-loop (`--max`: each
//! publisher keeps at most `--window` publications in flight, one completes when every
//! subscriber of its room has it) or open-loop (`--rate`: paced), drains, and reports
//! deliveries/s, loss, latency and CPU. Everything runs on one thread: shared state is `Rc` +
//! `Cell`, no locks on the hot path.
//!
//! With `--deflate` the subscribers (stalled ones included, publishers never) offer
//! permessage-deflate, the run fails unless the server agrees, and their readers inflate
//! compressed frames before the usual parse. Every run counts the data frames the subscribers
//! received compressed and uncompressed and the bytes they read, from the measured phase on,
//! so the bandwidth compression saves shows (`--payload-kind json` gives it something to
//! compress).
//!
//! The `slow` scenario runs the same thing with stalled subscribers added ([`Stall`]): they
//! join like everyone else, then stop reading; they count in no delivery figure, and how the
//! server ended them is read out after the drain.
//!
//! This module owns the parameters, connection set-up and the report; `members` the shared
//! state and the receive tasks; `phases` the warm-up, the publishers and the drain; `stalled`
//! the subscribers that stop reading; `api_publisher` a Pusher publisher's HTTP API
//! connections.

use crate::net::{self, Conn, Nodes, SocketOpts, Target};
use crate::payload::PayloadKind;
use crate::protocol;
use crate::report::{self, Report};
use crate::stats::{CpuUse, Hist};
use anyhow::{bail, Context, Result};
use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// How publications are paced.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Closed loop: as fast as deliveries allow, `window` publications in flight per publisher.
    Max {
        /// Publications in flight per publisher.
        window: usize,
    },
    /// Open loop: this many publications per second in total.
    Rate(f64),
}

/// The door the subscribers (stalled ones included) connect through; publishers always use
/// the plain door.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Door {
    /// `/ws/chat/{room}`: every message is a frame of its own.
    #[default]
    Plain,
    /// `/connection/websocket`: the JSON client protocol, subscribed to `chat:{room}`;
    /// publications arrive as pushes and the server's `{}` pings are answered.
    Protocol,
    /// `/app/{key}?protocol=7`: the Pusher protocol, subscribed to the public channel `{room}`
    /// (see `crate::pusher`); the publishers publish through the signed Pusher HTTP API
    /// (`POST /apps/{id}/events`, pipelined up to `--window` on one kept-alive connection, or
    /// one request per connection when the server closes after each answer; see
    /// `api_publisher`) instead of a WebSocket.
    Pusher,
    /// `/connection/http_stream`: the same JSON client protocol over HTTP streaming, subscribed
    /// to `chat:{room}` by the commands in the request (see `crate::stream`); pings answered
    /// through `/emulation`.
    HttpStream,
    /// `/connection/sse`: the same over Server-Sent Events.
    Sse,
}

impl Door {
    /// The HTTP transport of a stream door.
    pub fn stream_transport(self) -> Option<crate::stream::Transport> {
        match self {
            Door::HttpStream => Some(crate::stream::Transport::HttpStream),
            Door::Sse => Some(crate::stream::Transport::Sse),
            Door::Plain | Door::Protocol | Door::Pusher => None,
        }
    }

    /// The name shown in the report.
    pub fn label(self) -> &'static str {
        match self {
            Door::Plain => "plain",
            Door::Protocol => "protocol",
            Door::Pusher => "pusher",
            Door::HttpStream => "http_stream",
            Door::Sse => "sse",
        }
    }

    /// The text frame answering the server's application-level ping on this door.
    pub fn pong(self) -> &'static [u8] {
        match self {
            Door::Pusher => crate::pusher::PONG,
            Door::Plain | Door::Protocol | Door::HttpStream | Door::Sse => protocol::PONG,
        }
    }
}

/// Subscribers that stop reading once joined (the `slow` scenario; none for `fanout`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stall {
    /// How many, on top of the (healthy) subscribers; stalled one k joins room k % rooms.
    pub count: usize,
    /// SO_RCVBUF of their sockets, set before connect (`None`: the kernel's default).
    pub rcvbuf: Option<usize>,
    /// After the drain: the longest time spent reading what is left on their sockets.
    pub read_timeout: Duration,
}

/// Parameters of a fanout run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Rooms are `/ws/chat/{room_prefix}-N`.
    pub room_prefix: String,
    /// Number of rooms.
    pub rooms: usize,
    /// Subscriber connections that read everything (the deliveries are theirs).
    pub subscribers: usize,
    /// Publisher connections.
    pub publishers: usize,
    /// Publication payload size in bytes.
    pub size: usize,
    /// What the publications look like.
    pub payload: PayloadKind,
    /// Measured phase.
    pub duration: Duration,
    /// Pacing.
    pub mode: Mode,
    /// Time allowed after the phase for the last deliveries.
    pub drain: Duration,
    /// A `--max` publication still incomplete after this long is given up (frees its slot).
    pub stall_timeout: Duration,
    /// Time allowed for every member to join.
    pub join_timeout: Duration,
    /// Stalled subscribers.
    pub stall: Stall,
    /// The subscribers' door.
    pub door: Door,
    /// The subscribers offer permessage-deflate (and require it).
    pub deflate: bool,
    /// Written `start` right before the measured phase starts and `end` right after it ends
    /// (so a script can read a broker's counters over exactly the measured phase).
    pub phase_file: Option<std::path::PathBuf>,
    /// After writing the phase file: wait until it is removed (the reader is done), at most
    /// this long (zero: do not wait).
    pub phase_hold: Duration,
    /// The app of `--door pusher` (its API requests are signed with its secret).
    pub pusher: Option<crate::pusher::App>,
}

impl Params {
    /// The name of room `room` (a plain room; a Pusher channel).
    pub fn room_name(&self, room: usize) -> String {
        format!("{}-{room}", self.room_prefix)
    }

    /// Writes into `out` (cleared first) what a publisher sends to publish `body` to `room`:
    /// a text frame, or with `--door pusher` a signed HTTP API request.
    pub fn encode_publication(&self, room: usize, body: &[u8], out: &mut Vec<u8>) {
        out.clear();
        match (&self.pusher, self.door) {
            (Some(app), Door::Pusher) => crate::pusher::publish_request(
                app,
                &self.room_name(room),
                body,
                crate::pusher::unix_now(),
                out,
            ),
            _ => crate::ws::encode_frame(out, crate::ws::OP_TEXT, body),
        }
    }
}

mod api_publisher;
mod members;
mod phases;
mod stalled;

use members::{member, Counters, Outlet, Publisher, Role, Shared, Slot, Writer};
use phases::measure;
pub use stalled::{tally, End, How};

/// What one run measured; the report is written from it ([`Outcome::figures`],
/// [`Outcome::judge`]).
pub struct Outcome {
    connect_s: f64,
    cpu: CpuUse,
    wall: f64,
    sent: u64,
    given_up: u64,
    expected: u64,
    delivered: u64,
    in_window: u64,
    closed_early: u64,
    publisher_copies: u64,
    unknown: u64,
    other_pushes: u64,
    api_connections: u64,
    deflate: bool,
    frames_compressed: u64,
    frames_uncompressed: u64,
    wire_bytes: u64,
    compressed_bytes: u64,
    inflated_bytes: u64,
    /// Publish→delivery latency of the (healthy) subscribers.
    pub hist: Hist,
    /// With several nodes: the same per node (empty for one node).
    by_node: Vec<NodeLatency>,
    first_error: Option<String>,
    problems: Vec<String>,
    /// How each stalled subscriber ended (empty without any).
    pub stalled: Vec<End>,
}

/// The latency of the subscribers of one node of a cluster.
struct NodeLatency {
    addr: String,
    subscribers: usize,
    hist: Hist,
}

fn validate(p: &Params) -> Result<()> {
    if p.rooms == 0 || p.publishers == 0 {
        bail!("--rooms and --publishers must be at least 1");
    }
    if p.subscribers < p.rooms {
        bail!(
            "{} subscribers (stalled ones not counted) for {} rooms: every room needs one",
            p.subscribers,
            p.rooms
        );
    }
    if p.size < p.payload.min_size() {
        bail!(
            "--size must be at least {} with --payload-kind {} (timestamp, publisher and \
             sequence are in the payload)",
            p.payload.min_size(),
            p.payload.label()
        );
    }
    if p.door.stream_transport().is_some() && (p.deflate || p.stall.count > 0) {
        bail!(
            "--door {} runs fanout without --deflate or stalled subscribers",
            p.door.label()
        );
    }
    if p.door == Door::Pusher {
        if p.pusher.is_none() {
            bail!("--door pusher needs the app (--app-id, --app-key, --app-secret)");
        }
        if p.payload != PayloadKind::Padded || p.deflate || p.stall.count > 0 {
            bail!("--door pusher runs fanout with --payload-kind padded, without --deflate or stalled subscribers");
        }
    }
    match p.mode {
        Mode::Max { window: 0 } => bail!("--window must be at least 1"),
        Mode::Rate(r) if !(r > 0.0 && r.is_finite()) => bail!("--rate must be positive"),
        _ => Ok(()),
    }
}

/// Runs the scenario against `nodes` and returns its report.
pub async fn run(
    nodes: &Nodes,
    p: &Params,
    server_pids: &[u32],
    concurrency: usize,
) -> Result<Report> {
    let o = execute(nodes, p, server_pids, concurrency).await?;
    let mut r = Report::new("fanout");
    r.param("url", nodes.describe());
    write_params(&mut r, p);
    r.param("server_pid", crate::stats::Pids::param(server_pids));
    o.figures(&mut r);
    o.judge(&mut r, "");
    Ok(r)
}

/// The parameter rows shared by `fanout` and `slow` (`subscribers` counts stalled ones too).
pub fn write_params(r: &mut Report, p: &Params) {
    r.param("door", p.door.label());
    r.param("rooms", p.rooms);
    r.param("subscribers", p.subscribers + p.stall.count);
    r.param("publishers", p.publishers);
    r.param("size", p.size);
    r.param("payload_kind", p.payload.label());
    r.param("deflate", p.deflate);
    r.param("duration_s", p.duration.as_secs_f64());
    match p.mode {
        Mode::Max { window } => {
            r.param("mode", "max");
            r.param("window", window);
        }
        Mode::Rate(rate) => {
            r.param("mode", "rate");
            r.param("rate", rate);
        }
    }
}

/// Opens one member's connection to `room`: the plain door, or the client protocol's door
/// followed by its `connect` and `subscribe` (so a refused token or channel fails the connect
/// phase with the server's error), or the Pusher door followed by its `pusher:subscribe`; a
/// Pusher publisher (`door` is [`Door::Pusher`] for a publisher only then) opens a keep-alive
/// TCP connection for the HTTP API.
async fn open_member(
    target: Rc<Target>,
    room: String,
    door: Door,
    publisher: bool,
    app: Option<crate::pusher::App>,
    source: Option<IpAddr>,
    opts: SocketOpts,
) -> Result<Conn> {
    match door {
        Door::Pusher if publisher => {
            let socket = net::client_socket(&target, source, None)?;
            let started = Instant::now();
            let stream = socket
                .connect(target.addr)
                .await
                .with_context(|| format!("connecting to {} for the HTTP API", target.addr))?;
            Ok(Conn {
                stream,
                reader: crate::ws::FrameReader::new(opts.read_buf, opts.max_payload),
                handshake: started.elapsed(),
            })
        }
        Door::Pusher => {
            let app = app.context("--door pusher without an app")?;
            crate::pusher::open(&target, &app, Some(&room), source, &opts).await
        }
        Door::Plain => net::open(&target, &format!("/ws/chat/{room}"), source, &opts).await,
        Door::HttpStream | Door::Sse => {
            let transport = door.stream_transport().context("a stream door")?;
            let channel = protocol::channel(&room);
            crate::stream::open(&target, transport, &channel, source, &opts)
                .await
                .with_context(|| format!("{} ({channel})", door.label()))
        }
        Door::Protocol => {
            let path = target.request_path_without_token(protocol::PATH);
            let mut conn = net::open_request(&target, &path, source, &opts).await?;
            let channel = protocol::channel(&room);
            protocol::join(&mut conn, &channel, target.token())
                .await
                .with_context(|| format!("client protocol ({}, {channel})", protocol::PATH))?;
            Ok(conn)
        }
    }
}

/// The node (index in `--url`'s list) of member `i` of a run with `subscribers` subscribers
/// and `live` subscribers and publishers (stalled members come after): the subscribers are
/// spread round-robin, publishers all connect to the first node, stalled subscribers are
/// spread round-robin too.
pub fn node_of(nodes: &Nodes, i: usize, subscribers: usize, live: usize) -> usize {
    if i < subscribers {
        nodes.index_for(i)
    } else if i < live {
        0
    } else {
        nodes.index_for(i - live)
    }
}

/// Connects everyone, runs the phases, reads out the stalled subscribers; the figures.
pub async fn execute(
    nodes: &Nodes,
    p: &Params,
    server_pids: &[u32],
    concurrency: usize,
) -> Result<Outcome> {
    validate(p)?;
    let live = p.subscribers + p.publishers;
    let members = live + p.stall.count;
    if let Some(limit) = crate::stats::open_files_limit() {
        if members as u64 + 64 > limit {
            bail!("{members} connections need more open files than this process may have ({limit}): raise ulimit -n");
        }
    }
    // Connections 0..S are subscribers (room i % C), then the publishers (room j % C), then
    // the stalled subscribers (room k % C).
    let room_of = |i: usize| {
        if i < p.subscribers {
            i % p.rooms
        } else if i < live {
            (i - p.subscribers) % p.rooms
        } else {
            (i - live) % p.rooms
        }
    };
    // Publishers use the plain door whatever the subscribers' door, but for the Pusher door,
    // whose publishers use the HTTP API.
    let is_pub = |i: usize| (p.subscribers..live).contains(&i);
    let door_of = |i: usize| {
        if is_pub(i) && p.door != Door::Pusher {
            Door::Plain
        } else {
            p.door
        }
    };
    let room = |i: usize| format!("{}-{}", p.room_prefix, room_of(i));
    let pb = report::bar(members as u64, "connect");
    let t_connect = Instant::now();
    // Room for the client protocol's push around the payload, too. Only subscribers offer
    // permessage-deflate.
    let pub_opts = SocketOpts::new(16 * 1024, (p.size + 4096).max(1 << 16));
    let sub_opts = SocketOpts {
        deflate: p.deflate,
        ..pub_opts
    };
    let opts_of = |i: usize| {
        if (p.subscribers..live).contains(&i) {
            pub_opts
        } else {
            sub_opts
        }
    };
    // Subscribers spread over the nodes; publishers on the first one.
    let ts: Vec<Rc<Target>> = (0..nodes.count())
        .map(|j| Rc::new(nodes.node_for(j).clone()))
        .collect();
    let node = |i: usize| node_of(nodes, i, p.subscribers, live);
    let opened = net::open_many_with(live, concurrency, &pb, |i| {
        let t = &ts[node(i)];
        open_member(
            t.clone(),
            room(i),
            door_of(i),
            is_pub(i),
            p.pusher.clone(),
            t.source_for(i),
            opts_of(i),
        )
    })
    .await;
    let stalled_opts = SocketOpts {
        rcvbuf: p.stall.rcvbuf,
        ..sub_opts
    };
    let opened_stalled = net::open_many_with(p.stall.count, concurrency, &pb, |k| {
        let t = &ts[node(live + k)];
        open_member(
            t.clone(),
            room(live + k),
            door_of(live + k),
            false,
            p.pusher.clone(),
            t.source_for(k),
            stalled_opts,
        )
    })
    .await;
    pb.finish_and_clear();
    for (o, n) in [(&opened, live), (&opened_stalled, p.stall.count)] {
        if let Some(e) = &o.first_error {
            bail!("{} of {n} connections failed; first: {e:#}", o.failed);
        }
    }
    let connect_s = t_connect.elapsed().as_secs_f64();

    let mut subs_in_room = vec![0usize; p.rooms];
    for i in 0..p.subscribers {
        subs_in_room[i % p.rooms] += 1;
    }
    let window = match p.mode {
        Mode::Max { window } => window,
        Mode::Rate(_) => 0,
    };
    let pubs = (0..p.publishers)
        .map(|j| Publisher {
            room: j % p.rooms,
            slots: RefCell::new(vec![Slot::default(); window]),
            freed: Notify::new(),
            sent: Cell::new(0),
            stalled: Cell::new(0),
        })
        .collect();
    let mut room_unjoined = vec![0usize; p.rooms];
    for i in 0..members {
        room_unjoined[room_of(i)] += 1;
    }
    let sh = Rc::new(Shared {
        measuring: Cell::new(false),
        counting: Cell::new(false),
        stopping: Cell::new(false),
        unjoined: Cell::new(members),
        room_unjoined: RefCell::new(room_unjoined),
        c: Counters::default(),
        first_error: RefCell::new(None),
        hist: RefCell::new(Hist::new()?),
        node_hists: RefCell::new(if nodes.count() > 1 {
            (0..nodes.count())
                .map(|_| Hist::new())
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        }),
        pubs,
        subs_in_room,
    });

    let mut readers: Vec<JoinHandle<()>> = Vec::with_capacity(live);
    let mut writers: Vec<Outlet> = Vec::with_capacity(live);
    for (i, c) in opened.conns.into_iter().enumerate() {
        let Some(c) = c else {
            bail!("connection {i} missing")
        };
        let role = if i < p.subscribers {
            Role::Sub(node(i))
        } else {
            Role::Pub
        };
        if matches!(role, Role::Pub) && p.door == Door::Pusher {
            // An HTTP API connection: it receives no warm-up, it reads the API's answers.
            sh.mark_joined(room_of(i));
            let t = &ts[node(i)];
            writers.push(Outlet::Api(Rc::new(api_publisher::ApiPublisher::new(
                sh.clone(),
                t.clone(),
                t.source_for(i),
                c.stream,
            ))));
            continue;
        }
        let (rd, wr) = c.stream.into_split();
        let wr = Rc::new(Writer(tokio::sync::Mutex::new(wr)));
        if let (Some(transport), Role::Sub(_)) = (door_of(i).stream_transport(), role) {
            readers.push(tokio::task::spawn_local(members::stream_member(
                sh.clone(),
                role,
                transport,
                room_of(i),
                rd,
                ts[node(i)].clone(),
            )));
            writers.push(Outlet::Socket(wr));
            continue;
        }
        readers.push(tokio::task::spawn_local(member(
            sh.clone(),
            role,
            door_of(i),
            room_of(i),
            rd,
            c.reader,
            wr.clone(),
        )));
        writers.push(Outlet::Socket(wr));
    }
    let (resume, resume_rx) = watch::channel(None);
    let mut stalled_tasks: Vec<JoinHandle<End>> = Vec::with_capacity(p.stall.count);
    for (k, c) in opened_stalled.conns.into_iter().enumerate() {
        let Some(c) = c else {
            bail!("stalled connection {k} missing")
        };
        let (rd, wr) = c.stream.into_split();
        let wr = Rc::new(Writer(tokio::sync::Mutex::new(wr)));
        stalled_tasks.push(tokio::task::spawn_local(stalled::member(
            sh.clone(),
            door_of(live + k),
            room_of(live + k),
            rd,
            c.reader,
            wr,
            resume_rx.clone(),
        )));
    }

    let outcome = measure(&sh, p, &writers, &room_of, server_pids).await;
    let stalled_ends = match &outcome {
        Ok(_) if !stalled_tasks.is_empty() => {
            stalled::collect(&resume, &mut stalled_tasks, p.stall.read_timeout).await
        }
        _ => Vec::new(),
    };
    sh.stopping.set(true);
    for r in &readers {
        r.abort();
    }
    for t in &stalled_tasks {
        t.abort();
    }
    drop(writers);
    let (cpu, wall_end, problems) = outcome?;

    let expected: u64 = sh
        .pubs
        .iter()
        .map(|x| x.sent.get() * sh.subs_in_room[x.room] as u64)
        .sum();
    let first_error = sh.first_error.borrow().clone();
    let hist = sh.hist.replace(Hist::new()?);
    let node_hists = sh.node_hists.replace(Vec::new());
    let by_node = node_hists
        .into_iter()
        .enumerate()
        .map(|(j, hist)| NodeLatency {
            addr: nodes.node_for(j).addr.to_string(),
            subscribers: (0..p.subscribers)
                .filter(|&i| nodes.index_for(i) == j)
                .count(),
            hist,
        })
        .collect();
    Ok(Outcome {
        connect_s,
        cpu,
        wall: wall_end.max(1e-9),
        sent: sh.pubs.iter().map(|x| x.sent.get()).sum(),
        given_up: sh.pubs.iter().map(|x| x.stalled.get()).sum(),
        expected,
        delivered: sh.c.delivered.get(),
        in_window: sh.c.delivered_in_window.get(),
        closed_early: sh.c.closed_early.get(),
        publisher_copies: sh.c.publisher_copies.get(),
        unknown: sh.c.unknown.get(),
        other_pushes: sh.c.other_pushes.get(),
        api_connections: sh.c.api_connections.get(),
        deflate: p.deflate,
        frames_compressed: sh.c.frames_compressed.get(),
        frames_uncompressed: sh.c.frames_uncompressed.get(),
        wire_bytes: sh.c.wire_bytes.get(),
        compressed_bytes: sh.c.compressed_bytes.get(),
        inflated_bytes: sh.c.inflated_bytes.get(),
        hist,
        by_node,
        first_error,
        problems,
        stalled: stalled_ends,
    })
}

impl Outcome {
    /// Deliveries the subscribers did not get (after the drain).
    pub fn loss(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }

    /// Deliveries per second in the measured phase.
    pub fn deliveries_per_s(&self) -> f64 {
        self.in_window as f64 / self.wall
    }

    /// CPU use of the measured phase.
    pub fn cpu(&self) -> &CpuUse {
        &self.cpu
    }

    /// Deliveries counted in the measured phase.
    pub fn in_window(&self) -> u64 {
        self.in_window
    }

    /// Writes every figure of the run (the `fanout` keys).
    pub fn figures(&self, r: &mut Report) {
        let (expected, delivered, in_window) = (self.expected, self.delivered, self.in_window);
        r.num("connect_s", "connect time (s)", self.connect_s);
        r.num("deliveries_per_s", "deliveries/s", self.deliveries_per_s());
        r.num(
            "publications_per_s",
            "publications/s",
            self.sent as f64 / self.wall,
        );
        r.int("publications", "publications sent", self.sent);
        r.int("expected_deliveries", "expected deliveries", expected);
        r.int("deliveries", "deliveries received (after drain)", delivered);
        r.int(
            "deliveries_in_window",
            "deliveries in measured phase",
            in_window,
        );
        r.int("loss", "loss (expected - received)", self.loss());
        r.num(
            "loss_pct",
            "loss (%)",
            if expected == 0 {
                0.0
            } else {
                100.0 * self.loss() as f64 / expected as f64
            },
        );
        r.int(
            "extra_deliveries",
            "unexpected extra deliveries",
            delivered.saturating_sub(expected),
        );
        r.int(
            "stalled_publications",
            "publications given up (stall timeout)",
            self.given_up,
        );
        r.int(
            "closed_early",
            "connections closed by the server",
            self.closed_early,
        );
        r.int(
            "publisher_copies",
            "publisher self-copies (not counted)",
            self.publisher_copies,
        );
        r.int("unknown_messages", "unrecognised messages", self.unknown);
        r.int(
            "other_pushes",
            "client protocol pushes without a publication (join/leave; not counted)",
            self.other_pushes,
        );
        r.int(
            "api_connections",
            "HTTP API connections opened after the first (Pusher publishers; one per \
             publication when the server closes after each answer)",
            self.api_connections,
        );
        r.int(
            "frames_compressed",
            "subscribers' data frames received compressed (RSV1)",
            self.frames_compressed,
        );
        r.int(
            "frames_uncompressed",
            "subscribers' data frames received uncompressed",
            self.frames_uncompressed,
        );
        r.int(
            "wire_bytes",
            "bytes the subscribers read (from the measured phase on)",
            self.wire_bytes,
        );
        r.opt(
            "wire_bytes_per_delivery",
            "bytes read per delivery",
            (delivered > 0).then(|| self.wire_bytes as f64 / delivered as f64),
        );
        r.opt(
            "deflate_saved_pct",
            "compressed frames: payload bytes saved (%)",
            (self.inflated_bytes > 0)
                .then(|| 100.0 * (1.0 - self.compressed_bytes as f64 / self.inflated_bytes as f64)),
        );
        r.latency("latency", "publish→delivery", &self.hist);
        if self.by_node.len() > 1 {
            // The publishers are on node 0: the other nodes' subscribers get every
            // publication through the broker (cross-node).
            r.param("nodes", self.by_node.len());
            let mut remote = Hist::new().ok();
            for (j, n) in self.by_node.iter().enumerate() {
                r.int(
                    &format!("node{j}_subscribers"),
                    &format!("node {j} ({}) subscribers", n.addr),
                    n.subscribers as u64,
                );
                r.latency(
                    &format!("node{j}_latency"),
                    &format!("node {j} publish→delivery"),
                    &n.hist,
                );
                if j > 0 {
                    if let Some(h) = remote.as_mut() {
                        h.add(&n.hist);
                    }
                }
            }
            if let Some(h) = &remote {
                r.latency(
                    "remote_latency",
                    "other nodes than the publishers' (cross-node) publish→delivery",
                    h,
                );
            }
        }
        r.cpu("", &self.cpu, Some((in_window, "delivery")));
    }

    /// Marks the report incomplete for what went wrong (`what` prefixes the reasons).
    pub fn judge(&self, r: &mut Report, what: &str) {
        if let Some(e) = &self.first_error {
            r.fail(format!(
                "{what}{} connection(s) lost during the run; first: {e}",
                self.closed_early
            ));
        }
        for problem in &self.problems {
            r.fail(format!("{what}{problem}"));
        }
        if self.in_window == 0 {
            r.fail(format!("{what}no delivery during the measured phase"));
        }
        if self.deflate && self.delivered > 0 && self.frames_compressed == 0 {
            r.note(format!(
                "{what}permessage-deflate was agreed but no frame came compressed (the server \
                 sends a message uncompressed when compressing does not shrink it; try \
                 --payload-kind json)"
            ));
        }
        if self.cpu.generator_s > 0.9 * self.cpu.wall_s {
            r.note(format!(
                "{what}the generator used >90% of a core: the result may be bounded by the generator"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_are_spread_and_publishers_are_on_the_first_node() {
        let nodes = Nodes::parse("ws://127.0.0.1:1,ws://127.0.0.1:2,ws://127.0.0.1:3", None)
            .expect("nodes");
        // 7 subscribers, 2 publishers (live = 9), then 4 stalled subscribers.
        let placed: Vec<usize> = (0..13).map(|i| node_of(&nodes, i, 7, 9)).collect();
        assert_eq!(placed, [0, 1, 2, 0, 1, 2, 0, 0, 0, 0, 1, 2, 0]);
        // 1000 subscribers over 3 nodes: 334, 333, 333.
        let mut per = [0usize; 3];
        for i in 0..1000 {
            per[node_of(&nodes, i, 1000, 1001)] += 1;
        }
        assert_eq!(per, [334, 333, 333]);
        // One node: everyone on it.
        let one = Nodes::parse("ws://127.0.0.1:1", None).expect("nodes");
        assert!((0..13).all(|i| node_of(&one, i, 7, 9) == 0));
    }
}
