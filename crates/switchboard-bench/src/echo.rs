//! The echo scenario: N connections to `/ws`, each keeping `--in-flight` timestamped text
//! messages outstanding for the measured phase (a reply is answered with a new message in the
//! same write as the other replies of that read), then draining. Reports messages/s,
//! round-trip percentiles and CPU per message. One task per connection owns its whole stream.

use crate::net::{self, Conn, Nodes};
use crate::payload::{self, now_ns};
use crate::report::{self, Report};
use crate::stats::{CpuMeter, Hist};
use crate::ws::{self, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use anyhow::{bail, Result};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Parameters of an echo run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Connections.
    pub connections: usize,
    /// Messages outstanding per connection.
    pub in_flight: usize,
    /// Message payload size.
    pub size: usize,
    /// Measured phase.
    pub duration: Duration,
    /// Time allowed after the phase for outstanding replies.
    pub drain: Duration,
}

#[derive(Default)]
struct Shared {
    /// End of the measured phase in [`now_ns`] time (`u64::MAX` until known).
    end_ns: Cell<u64>,
    sent: Cell<u64>,
    received: Cell<u64>,
    received_in_window: Cell<u64>,
    unknown: Cell<u64>,
    closed_early: Cell<u64>,
    stopping: Cell<bool>,
    first_error: RefCell<Option<String>>,
}

async fn conn_loop(
    sh: &Shared,
    hist: &RefCell<Hist>,
    conn: Conn,
    in_flight: usize,
    size: usize,
) -> Result<()> {
    let Conn {
        mut stream,
        mut reader,
        ..
    } = conn;
    let mut body = Vec::with_capacity(size);
    let mut out = Vec::with_capacity((size + 14) * in_flight.max(1));
    let mut outstanding = 0usize;
    for _ in 0..in_flight {
        payload::write_echo(&mut body, size, now_ns());
        ws::encode_frame(&mut out, OP_TEXT, &body);
        outstanding += 1;
    }
    sh.sent.set(sh.sent.get() + in_flight as u64);
    stream.write_all(&out).await?;
    out.clear();
    loop {
        let now = now_ns();
        let end = sh.end_ns.get();
        let (mut got, mut got_in_window, mut new) = (0u64, 0u64, 0u64);
        {
            let mut h = hist.borrow_mut();
            while let Some(f) = reader.next_frame()? {
                match f.opcode {
                    OP_TEXT | OP_BINARY => match payload::parse_echo(f.payload) {
                        Some(ts) => {
                            h.record(now.saturating_sub(ts));
                            got += 1;
                            if now <= end {
                                got_in_window += 1;
                            }
                            outstanding = outstanding.saturating_sub(1);
                            if now < end {
                                payload::write_echo(&mut body, size, now);
                                ws::encode_frame(&mut out, OP_TEXT, &body);
                                outstanding += 1;
                                new += 1;
                            }
                        }
                        None => sh.unknown.set(sh.unknown.get() + 1),
                    },
                    OP_PING => ws::encode_frame(&mut out, OP_PONG, f.payload),
                    OP_CLOSE => bail!("server sent {}", ws::describe_close(f.payload)),
                    _ => {}
                }
            }
        }
        sh.received.set(sh.received.get() + got);
        sh.received_in_window
            .set(sh.received_in_window.get() + got_in_window);
        sh.sent.set(sh.sent.get() + new);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if now >= end && outstanding == 0 {
            return Ok(());
        }
        if reader.read_from(&mut stream).await? == 0 {
            bail!("server closed the connection");
        }
    }
}

async fn conn_task(
    sh: Rc<Shared>,
    hist: Rc<RefCell<Hist>>,
    conn: Conn,
    in_flight: usize,
    size: usize,
) {
    if let Err(e) = conn_loop(&sh, &hist, conn, in_flight, size).await {
        if !sh.stopping.get() {
            sh.closed_early.set(sh.closed_early.get() + 1);
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
    if p.connections == 0 || p.in_flight == 0 {
        bail!("--connections and --in-flight must be at least 1");
    }
    if p.size < payload::ECHO_MIN {
        bail!(
            "--size must be at least {} (the timestamp is in the payload)",
            payload::ECHO_MIN
        );
    }
    if let Some(limit) = crate::stats::open_files_limit() {
        if p.connections as u64 + 64 > limit {
            bail!("{} connections need more open files than this process may have ({limit}): raise ulimit -n", p.connections);
        }
    }
    let paths = vec!["/ws".to_string(); p.connections];
    let pb = report::bar(p.connections as u64, "connect");
    let t_connect = Instant::now();
    let opened = net::open_many(
        nodes,
        &paths,
        concurrency,
        &net::SocketOpts::new(16 * 1024, p.size.max(1 << 16)),
        &pb,
    )
    .await;
    pb.finish_and_clear();
    if let Some(e) = opened.first_error {
        bail!(
            "{} of {} connections failed; first: {e:#}",
            opened.failed,
            p.connections
        );
    }
    let connect_s = t_connect.elapsed().as_secs_f64();

    let sh = Rc::new(Shared {
        end_ns: Cell::new(u64::MAX),
        ..Default::default()
    });
    let hist = Rc::new(RefCell::new(Hist::new()?));
    let cpu = CpuMeter::start(server_pids)?;
    let t0 = Instant::now();
    let end = t0 + p.duration;
    sh.end_ns.set(now_ns() + p.duration.as_nanos() as u64);
    let mut tasks = Vec::with_capacity(p.connections);
    for c in opened.conns.into_iter().flatten() {
        tasks.push(tokio::task::spawn_local(conn_task(
            sh.clone(),
            hist.clone(),
            c,
            p.in_flight,
            p.size,
        )));
    }
    report::measure_phase(p.duration, t0, end, "msgs", || sh.received_in_window.get()).await;
    let used = cpu.stop()?;
    let wall = (Instant::now() - t0).as_secs_f64().max(1e-9);

    let drain_end = tokio::time::Instant::now() + p.drain;
    let mut unfinished = 0;
    for t in &mut tasks {
        if tokio::time::timeout_at(drain_end, t).await.is_err() {
            unfinished += 1;
        }
    }
    sh.stopping.set(true);
    for t in &tasks {
        t.abort();
    }

    let (sent, received, in_window) = (
        sh.sent.get(),
        sh.received.get(),
        sh.received_in_window.get(),
    );
    let mut r = Report::new("echo");
    r.param("url", nodes.describe());
    r.param("connections", p.connections);
    r.param("in_flight", p.in_flight);
    r.param("size", p.size);
    r.param("duration_s", p.duration.as_secs_f64());
    r.param("server_pid", crate::stats::Pids::param(server_pids));
    r.num("connect_s", "connect time (s)", connect_s);
    r.num(
        "msgs_per_s",
        "messages/s (round trips)",
        in_window as f64 / wall,
    );
    r.int("sent", "messages sent", sent);
    r.int("received", "replies received (after drain)", received);
    r.int("received_in_window", "replies in measured phase", in_window);
    r.int(
        "loss",
        "loss (sent - received)",
        sent.saturating_sub(received),
    );
    r.int(
        "closed_early",
        "connections closed by the server",
        sh.closed_early.get(),
    );
    r.int(
        "unfinished",
        "connections still waiting after drain",
        unfinished,
    );
    r.int(
        "unknown_messages",
        "unrecognised messages",
        sh.unknown.get(),
    );
    r.latency("rtt", "round trip", &hist.borrow());
    r.cpu("", &used, Some((in_window, "message")));
    if let Some(e) = sh.first_error.borrow().as_ref() {
        r.fail(format!(
            "{} connection(s) lost during the run; first: {e}",
            sh.closed_early.get()
        ));
    }
    if in_window == 0 {
        r.fail("no reply during the measured phase");
    }
    if used.generator_s > 0.9 * used.wall_s {
        r.note("the generator used >90% of a core: the result may be bounded by the generator");
    }
    Ok(r)
}
