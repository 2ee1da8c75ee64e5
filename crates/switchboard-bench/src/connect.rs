//! The connect scenario: handshakes per second. Opens `--connections` connections to
//! `/ws/chat/connect-{i % 100}` (source addresses spread over 127.0.0.2..=127.0.0.255 as
//! everywhere), at most `--concurrency` handshakes in flight, and times each one from the
//! start of its TCP connect to the complete, checked `101` response head. Each connection is
//! closed right after its handshake: the bench sends a close frame (1000) and drops the socket
//! without waiting for the server's close frame, so at most `--concurrency` sockets are open
//! at any time (the server's reply then meets a closed socket). Reports handshakes/s,
//! connect latency percentiles, failures, and the CPU of the whole phase per handshake, for
//! the server (its upgrade, room join and leave, close and logging) and for the generator.
//! Any failed handshake makes the run incomplete. With `--door pusher` each connection goes to
//! the Pusher door `/app/{key}?protocol=7` instead and its handshake is complete when
//! `pusher:connection_established` has arrived (timed to then).

use crate::net::{self, Nodes, SocketOpts};
use crate::report::{self, Report};
use crate::stats::{self, CpuMeter, Hist};
use crate::ws::{self, OP_CLOSE};
use anyhow::{bail, Result};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Connection i joins room `connect-{i % ROOMS}`.
const ROOMS: usize = 100;

/// Parameters of a connect run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Handshakes to make.
    pub connections: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Whether a token goes with every request (for the report only).
    pub with_token: bool,
    /// With an app: each handshake is the Pusher door's, complete once
    /// `pusher:connection_established` has arrived.
    pub pusher: Option<crate::pusher::App>,
}

/// What one connection gave: its handshake time, and whether the close frame went out.
type Attempt = Result<(Duration, bool)>;

async fn attempt(nodes: Rc<Nodes>, app: Option<crate::pusher::App>, i: usize) -> Attempt {
    let path = format!("/ws/chat/connect-{}", i % ROOMS);
    let opts = SocketOpts::new(512, 1 << 16);
    let target = nodes.node_for(i);
    let mut conn = match &app {
        None => net::open(target, &path, target.source_for(i), &opts).await?,
        Some(app) => {
            let started = std::time::Instant::now();
            let mut c = crate::pusher::open(target, app, None, target.source_for(i), &opts).await?;
            c.handshake = started.elapsed();
            c
        }
    };
    let mut close = Vec::with_capacity(8);
    ws::encode_frame(&mut close, OP_CLOSE, &1000u16.to_be_bytes());
    let sent = conn.stream.write_all(&close).await.is_ok();
    Ok((conn.handshake, sent))
}

/// Runs the scenario against `target` and returns its report.
pub async fn run(nodes: &Nodes, p: &Params, server_pids: &[u32]) -> Result<Report> {
    if p.connections == 0 || p.concurrency == 0 {
        bail!("--connections and --concurrency must be at least 1");
    }
    if let Some(limit) = stats::open_files_limit() {
        if p.concurrency as u64 + 64 > limit {
            bail!(
                "{} handshakes in flight need more open files than this process may have ({limit}): raise ulimit -n",
                p.concurrency
            );
        }
    }
    let shared = Rc::new(nodes.clone());
    let mut hist = Hist::new()?;
    let (mut ok, mut failed, mut close_unsent) = (0u64, 0u64, 0u64);
    let mut first_error: Option<String> = None;
    let pb = report::bar(p.connections as u64, "connect");
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0;
    let cpu = CpuMeter::start(server_pids)?;
    while next < p.connections || !set.is_empty() {
        while next < p.connections && set.len() < p.concurrency {
            set.spawn_local(attempt(shared.clone(), p.pusher.clone(), next));
            next += 1;
        }
        let Some(res) = set.join_next().await else {
            break;
        };
        match res {
            Ok(Ok((took, sent))) => {
                ok += 1;
                hist.record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
                close_unsent += u64::from(!sent);
            }
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("connect task failed: {e}"));
            }
        }
        pb.inc(1);
    }
    let used = cpu.stop()?;
    pb.finish_and_clear();

    let mut r = Report::new("connect");
    r.param("url", nodes.describe());
    r.param("connections", p.connections);
    r.param("concurrency", p.concurrency);
    r.param("rooms", ROOMS);
    r.param("token", p.with_token);
    r.param(
        "door",
        if p.pusher.is_some() {
            "pusher"
        } else {
            "plain"
        },
    );
    r.param("server_pid", crate::stats::Pids::param(server_pids));
    r.num(
        "handshakes_per_s",
        "handshakes/s",
        ok as f64 / used.wall_s.max(1e-9),
    );
    r.int("handshakes", "handshakes completed", ok);
    r.int("failed", "handshakes failed", failed);
    r.int(
        "close_unsent",
        "close frames that could not be sent",
        close_unsent,
    );
    r.latency("connect", "connect→101", &hist);
    r.cpu("", &used, Some((ok, "handshake")));
    if server_pids.is_empty() {
        r.note("no --server-pid: no server CPU figures");
    } else if ok > 0 && used.wall_s < 2.0 {
        // CPU times come in clock ticks: one tick spread over the handshakes.
        let tick_us = 1e6 / stats::clk_tck() as f64 / ok as f64;
        r.note(format!(
            "the phase took {:.2} s and CPU times are counted in 1/{} s ticks: CPU per handshake is ±{tick_us:.1} µs",
            used.wall_s,
            stats::clk_tck()
        ));
    }
    if let Some(e) = first_error {
        r.fail(format!("{failed} handshakes failed; first: {e}"));
    }
    if close_unsent > 0 {
        r.note(format!(
            "{close_unsent} connections were gone before their close frame could be sent"
        ));
    }
    if used.generator_s > 0.9 * used.wall_s {
        r.note("the generator used >90% of a core: the result may be bounded by the generator");
    }
    Ok(r)
}
