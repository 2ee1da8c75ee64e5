//! The fanout scenario: S subscribers and P publishers spread over C chat rooms
//! (`/ws/chat/room-N`). It connects everyone, waits until every member has provably joined
//! (it received a warm-up message published to its room), then publishes timestamped
//! publications for the measured phase, either closed-loop (`--max`: each publisher keeps at
//! most `--window` publications in flight, one completes when every subscriber of its room
//! has it) or open-loop (`--rate`: paced), drains, and reports deliveries/s, loss, latency and
//! CPU. Everything runs on one thread: shared state is `Rc` + `Cell`, no locks on the hot path.
//!
//! This module owns the parameters, connection set-up and the report; `members` the shared
//! state and the receive tasks; `phases` the warm-up, the publishers and the drain.

use crate::net::{self, Target};
use crate::payload;
use crate::report::{self, Report};
use crate::stats::Hist;
use anyhow::{bail, Result};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
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

/// Parameters of a fanout run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Number of rooms.
    pub rooms: usize,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Publisher connections.
    pub publishers: usize,
    /// Publication payload size in bytes.
    pub size: usize,
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
}

mod members;
mod phases;

use members::{member, Counters, Publisher, Role, Shared, Slot, Writer};
use phases::measure;

fn validate(p: &Params) -> Result<()> {
    if p.rooms == 0 || p.publishers == 0 {
        bail!("--rooms and --publishers must be at least 1");
    }
    if p.subscribers < p.rooms {
        bail!(
            "--subscribers ({}) must be at least --rooms ({}) so every room has one",
            p.subscribers,
            p.rooms
        );
    }
    if p.size < payload::PUB_MIN {
        bail!(
            "--size must be at least {} (timestamp, publisher and sequence are in the payload)",
            payload::PUB_MIN
        );
    }
    match p.mode {
        Mode::Max { window: 0 } => bail!("--window must be at least 1"),
        Mode::Rate(r) if !(r > 0.0 && r.is_finite()) => bail!("--rate must be positive"),
        _ => Ok(()),
    }
}

/// Runs the scenario against `target` and returns its report.
pub async fn run(
    target: &Target,
    p: &Params,
    server_pid: Option<u32>,
    concurrency: usize,
) -> Result<Report> {
    validate(p)?;
    let members = p.subscribers + p.publishers;
    if let Some(limit) = crate::stats::open_files_limit() {
        if members as u64 + 64 > limit {
            bail!("{members} connections need more open files than this process may have ({limit}): raise ulimit -n");
        }
    }
    // Connections 0..S are subscribers (room i % C), then the publishers (room j % C).
    let room_of = |i: usize| {
        if i < p.subscribers {
            i % p.rooms
        } else {
            (i - p.subscribers) % p.rooms
        }
    };
    let paths: Vec<String> = (0..members)
        .map(|i| format!("/ws/chat/room-{}", room_of(i)))
        .collect();
    let pb = report::bar(members as u64, "connect");
    let t_connect = Instant::now();
    let opened = net::open_many(
        target,
        &paths,
        concurrency,
        16 * 1024,
        p.size.max(1 << 16),
        &pb,
    )
    .await;
    pb.finish_and_clear();
    if let Some(e) = opened.first_error {
        bail!(
            "{} of {members} connections failed; first: {e:#}",
            opened.failed
        );
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
        stopping: Cell::new(false),
        unjoined: Cell::new(members),
        room_unjoined: RefCell::new(room_unjoined),
        c: Counters::default(),
        first_error: RefCell::new(None),
        hist: RefCell::new(Hist::new()?),
        pubs,
        subs_in_room,
    });

    let mut readers: Vec<JoinHandle<()>> = Vec::with_capacity(members);
    let mut writers: Vec<Rc<Writer>> = Vec::with_capacity(members);
    for (i, c) in opened.conns.into_iter().enumerate() {
        let Some(c) = c else {
            bail!("connection {i} missing")
        };
        let (rd, wr) = c.stream.into_split();
        let wr = Rc::new(Writer(tokio::sync::Mutex::new(wr)));
        let role = if i < p.subscribers {
            Role::Sub
        } else {
            Role::Pub
        };
        readers.push(tokio::task::spawn_local(member(
            sh.clone(),
            role,
            room_of(i),
            rd,
            c.reader,
            wr.clone(),
        )));
        writers.push(wr);
    }

    let outcome = measure(&sh, p, &writers, &room_of, server_pid).await;
    sh.stopping.set(true);
    for r in &readers {
        r.abort();
    }
    drop(writers);
    let (cpu, wall_end, pub_problems) = outcome?;

    let sent: u64 = sh.pubs.iter().map(|x| x.sent.get()).sum();
    let stalled: u64 = sh.pubs.iter().map(|x| x.stalled.get()).sum();
    let expected: u64 = sh
        .pubs
        .iter()
        .map(|x| x.sent.get() * sh.subs_in_room[x.room] as u64)
        .sum();
    let delivered = sh.c.delivered.get();
    let in_window = sh.c.delivered_in_window.get();
    let wall = wall_end.max(1e-9);

    let mut r = Report::new("fanout");
    r.param("url", target.addr.to_string());
    r.param("rooms", p.rooms);
    r.param("subscribers", p.subscribers);
    r.param("publishers", p.publishers);
    r.param("size", p.size);
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
    r.param("server_pid", server_pid);
    r.num("connect_s", "connect time (s)", connect_s);
    r.num("deliveries_per_s", "deliveries/s", in_window as f64 / wall);
    r.num("publications_per_s", "publications/s", sent as f64 / wall);
    r.int("publications", "publications sent", sent);
    r.int("expected_deliveries", "expected deliveries", expected);
    r.int("deliveries", "deliveries received (after drain)", delivered);
    r.int(
        "deliveries_in_window",
        "deliveries in measured phase",
        in_window,
    );
    r.int(
        "loss",
        "loss (expected - received)",
        expected.saturating_sub(delivered),
    );
    r.num(
        "loss_pct",
        "loss (%)",
        if expected == 0 {
            0.0
        } else {
            100.0 * expected.saturating_sub(delivered) as f64 / expected as f64
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
        stalled,
    );
    r.int(
        "closed_early",
        "connections closed by the server",
        sh.c.closed_early.get(),
    );
    r.int(
        "publisher_copies",
        "publisher self-copies (not counted)",
        sh.c.publisher_copies.get(),
    );
    r.int(
        "unknown_messages",
        "unrecognised messages",
        sh.c.unknown.get(),
    );
    r.latency("latency", "publish→delivery", &sh.hist.borrow());
    r.cpu("", &cpu, Some((in_window, "delivery")));
    if let Some(e) = sh.first_error.borrow().as_ref() {
        r.fail(format!(
            "{} connection(s) lost during the run; first: {e}",
            sh.c.closed_early.get()
        ));
    }
    for problem in pub_problems {
        r.fail(problem);
    }
    if in_window == 0 {
        r.fail("no delivery during the measured phase");
    }
    if cpu.generator_s > 0.9 * cpu.wall_s {
        r.note("the generator used >90% of a core: the result may be bounded by the generator");
    }
    Ok(r)
}
