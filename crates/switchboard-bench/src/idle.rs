//! The idle scenario: what an idle member costs the server. Reads the server's VmRSS, opens N
//! connections to `/ws/chat/{prefix}-{i % rooms}` from source addresses spread over
//! 127.0.0.2..=127.0.0.255, holds them (answering pings) for `--hold`, reads VmRSS again and
//! reports (after − before) / N in KiB, plus the connect rate and the server CPU per connection.
//! With `--door pusher` the connections go to the Pusher door `/app/{key}?protocol=7`, each
//! subscribed to the public channel `{prefix}-{i % rooms}`, answering `pusher:ping` too.

use crate::net::{self, Nodes};
use crate::report::{self, Report};
use crate::stats::{self, CpuMeter};
use crate::ws::{self, FrameReader, OP_CLOSE, OP_PING, OP_PONG};
use anyhow::{bail, Result};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Parameters of an idle run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Connections to open.
    pub connections: usize,
    /// Room name prefix.
    pub room_prefix: String,
    /// Number of rooms the connections are spread over.
    pub rooms: usize,
    /// How long all connections are held before the second RSS reading.
    pub hold: Duration,
    /// With an app: the Pusher door, each connection subscribed to the public channel
    /// `{room_prefix}-{i % rooms}` (see `crate::pusher`); without: the plain door.
    pub pusher: Option<crate::pusher::App>,
}

#[derive(Default)]
struct Shared {
    closed_early: Cell<u64>,
    stopping: Cell<bool>,
    first_error: std::cell::RefCell<Option<String>>,
}

/// Keeps a connection open: answers pings, returns when the server closes it.
async fn hold_loop(mut stream: TcpStream, mut fr: FrameReader) -> Result<()> {
    let mut ctrl = Vec::new();
    loop {
        while let Some(f) = fr.next_frame()? {
            match f.opcode {
                OP_PING => ws::encode_frame(&mut ctrl, OP_PONG, f.payload),
                OP_CLOSE => bail!("server sent {}", ws::describe_close(f.payload)),
                // A Pusher server's own heartbeat (the plain door sends no text to idle members).
                ws::OP_TEXT if crate::pusher::classify(f.payload) == crate::protocol::Msg::Ping => {
                    ws::encode_frame(&mut ctrl, ws::OP_TEXT, crate::pusher::PONG)
                }
                _ => {}
            }
        }
        if !ctrl.is_empty() {
            stream.write_all(&ctrl).await?;
            ctrl.clear();
        }
        if fr.read_from(&mut stream).await? == 0 {
            bail!("server closed the connection");
        }
    }
}

async fn holder(sh: Rc<Shared>, stream: TcpStream, fr: FrameReader) {
    let res = hold_loop(stream, fr).await;
    if !sh.stopping.get() {
        sh.closed_early.set(sh.closed_early.get() + 1);
        if let Err(e) = res {
            sh.first_error
                .borrow_mut()
                .get_or_insert_with(|| format!("{e:#}"));
        }
    }
}

/// Runs the scenario against `nodes` (connections spread round-robin) and returns its report.
pub async fn run(
    nodes: &Nodes,
    p: &Params,
    server_pids: &[u32],
    concurrency: usize,
) -> Result<Report> {
    if p.connections == 0 || p.rooms == 0 {
        bail!("--connections and --rooms must be at least 1");
    }
    if let Some(limit) = stats::open_files_limit() {
        if p.connections as u64 + 64 > limit {
            bail!(
                "{} connections need more open files than this process may have ({limit}): raise ulimit -n",
                p.connections
            );
        }
    }
    let rss_before = stats::rss_kib_sum(server_pids)?;
    let paths: Vec<String> = (0..p.connections)
        .map(|i| format!("/ws/chat/{}-{}", p.room_prefix, i % p.rooms))
        .collect();

    let connect_cpu = CpuMeter::start(server_pids)?;
    let pb = report::bar(p.connections as u64, "connect");
    let opts = net::SocketOpts::new(512, 1 << 24);
    let opened = match &p.pusher {
        None => net::open_many(nodes, &paths, concurrency, &opts, &pb).await,
        Some(app) => {
            let shared = Rc::new((nodes.clone(), app.clone()));
            net::open_many_with(p.connections, concurrency, &pb, |i| {
                let (s, channel) = (shared.clone(), format!("{}-{}", p.room_prefix, i % p.rooms));
                async move {
                    let t = s.0.node_for(i);
                    crate::pusher::open(t, &s.1, Some(&channel), t.source_for(i), &opts).await
                }
            })
            .await
        }
    };
    pb.finish_and_clear();
    let connect_use = connect_cpu.stop()?;
    let established = p.connections - opened.failed;

    let sh = Rc::new(Shared::default());
    let mut tasks = Vec::with_capacity(established);
    for c in opened.conns.into_iter().flatten() {
        tasks.push(tokio::task::spawn_local(holder(
            sh.clone(),
            c.stream,
            c.reader,
        )));
    }

    let hold_cpu = CpuMeter::start(server_pids)?;
    let pb = report::bar(p.hold.as_millis() as u64, "hold");
    let t0 = Instant::now();
    let end = t0 + p.hold;
    while Instant::now() < end {
        let tick = (Instant::now() + Duration::from_millis(250)).min(end);
        tokio::time::sleep_until(tick.into()).await;
        pb.set_position(t0.elapsed().as_millis() as u64);
    }
    pb.finish_and_clear();
    let hold_use = hold_cpu.stop()?;
    let rss_after = stats::rss_kib_sum(server_pids)?;
    let alive = established as u64 - sh.closed_early.get();

    sh.stopping.set(true);
    for t in &tasks {
        t.abort();
    }

    let mut r = Report::new("idle");
    r.param("url", nodes.describe());
    r.param("connections", p.connections);
    r.param("room_prefix", p.room_prefix.clone());
    r.param("rooms", p.rooms);
    r.param(
        "door",
        if p.pusher.is_some() {
            "pusher"
        } else {
            "plain"
        },
    );
    r.param("hold_s", p.hold.as_secs_f64());
    r.param("server_pid", crate::stats::Pids::param(server_pids));
    r.int("established", "connections established", established as u64);
    r.int("failed", "connections failed", opened.failed as u64);
    r.int("alive_after_hold", "connections alive after hold", alive);
    r.num(
        "connects_per_s",
        "connections/s",
        established as f64 / connect_use.wall_s.max(1e-9),
    );
    r.cpu(
        "connect",
        &connect_use,
        Some((established as u64, "connection")),
    );
    r.cpu("hold", &hold_use, None);
    r.opt(
        "server_rss_before_kib",
        "server RSS before (KiB)",
        rss_before.map(|v| v as f64),
    );
    r.opt(
        "server_rss_after_kib",
        "server RSS after (KiB)",
        rss_after.map(|v| v as f64),
    );
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if alive > 0 => Some((a as f64 - b as f64) / alive as f64),
        _ => None,
    };
    r.opt(
        "kib_per_connection",
        "server RSS per connection (KiB)",
        per_conn,
    );
    if server_pids.is_empty() {
        r.note("no --server-pid: no RSS or server CPU figures");
    }
    if let Some(e) = opened.first_error {
        r.fail(format!(
            "{} connections failed; first: {e:#}",
            opened.failed
        ));
    }
    if alive < established as u64 {
        let first = sh.first_error.borrow().clone().unwrap_or_default();
        r.fail(format!(
            "{} connections were closed by the server during the hold; first: {first}",
            established as u64 - alive
        ));
    }
    Ok(r)
}
