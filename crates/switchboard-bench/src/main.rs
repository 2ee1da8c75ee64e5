//! `switchboard-bench`: a lean WebSocket load generator for servers with the "plain door"
//! contract (`/ws` echo, `/ws/chat/{room}` broadcast, `/healthz`). This module owns the
//! command line and the runtime: one current-thread tokio runtime with a `LocalSet`, so the
//! generator costs one core at most and its shared state needs no atomics or locks.
//!
//! # Layout
//! - `net`: target URL (loopback only), source addresses, socket set-up, handshake.
//! - `ws`: client-side RFC 6455 framing (masked sends, in-place parsing of server frames).
//! - `payload`: the process clock and the timestamped payload layouts.
//! - `fanout`, `echo`, `idle`: the scenarios.
//! - `stats`: CPU (utime + stime) and RSS from `/proc`, latency histograms.
//! - `report`: the table, the JSON line, progress bars, duration parsing.
//!
//! # Examples
//! ```text
//! taskset -c 1 switchboard-bench fanout --url ws://127.0.0.1:8081 --rooms 1 --subscribers 1000 \
//!     --publishers 1 --duration 10s --max --server-pid "$PID"
//! taskset -c 1 switchboard-bench echo --url ws://127.0.0.1:8081 --connections 100 --in-flight 8
//! taskset -c 1 switchboard-bench idle --url ws://127.0.0.1:8081 --connections 19000 --server-pid "$PID"
//! ```
//! The last line of stdout is one JSON object with every parameter and figure; the exit code
//! is 0 for a complete run, 2 for a run that finished incomplete (lost connections, nothing
//! delivered, failed connects in `idle`), 1 for an error.

mod echo;
mod fanout;
mod idle;
mod net;
mod payload;
mod report;
mod stats;
#[cfg(test)]
mod testserver;
mod ws;

use anyhow::{Context, Result};
use clap::{ArgGroup, Args, Parser, Subcommand};
use std::time::Duration;

/// Lean WebSocket load generator (loopback targets only).
#[derive(Parser, Debug)]
#[command(name = "switchboard-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options every scenario takes.
#[derive(Args, Debug, Clone)]
struct Common {
    /// Server base URL, e.g. ws://127.0.0.1:8081 (loopback only; a path is used as a prefix).
    #[arg(long)]
    url: String,
    /// Appended to every request as ?token=T.
    #[arg(long)]
    token: Option<String>,
    /// Server process id, for its CPU time (/proc/PID/stat) and RSS (/proc/PID/status).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Handshakes in progress at once while connecting.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
}

fn duration(s: &str) -> Result<Duration, String> {
    report::parse_duration(s)
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Subscribers and publishers in chat rooms: deliveries/s, loss, latency, CPU per delivery.
    #[command(group(ArgGroup::new("pace").required(true).args(["max", "rate"])))]
    Fanout {
        #[command(flatten)]
        common: Common,
        /// Number of rooms (/ws/chat/room-N).
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Subscriber connections (room i % rooms).
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Publisher connections (room j % rooms; they are members too).
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Publication payload size in bytes (at least 41).
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Measured phase.
        #[arg(long, default_value = "10s", value_parser = duration)]
        duration: Duration,
        /// Publish as fast as deliveries allow (closed loop with --window).
        #[arg(long)]
        max: bool,
        /// Publications per second in total (open loop).
        #[arg(long)]
        rate: Option<f64>,
        /// With --max: publications in flight per publisher.
        #[arg(long, default_value_t = 4)]
        window: usize,
        /// Time allowed after the phase for outstanding deliveries.
        #[arg(long, default_value = "2s", value_parser = duration)]
        drain: Duration,
        /// With --max: give up a publication still incomplete after this long.
        #[arg(long, default_value = "2s", value_parser = duration)]
        stall_timeout: Duration,
        /// Time allowed for every member to join its room.
        #[arg(long, default_value = "30s", value_parser = duration)]
        join_timeout: Duration,
    },
    /// Many idle room members: server RSS per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Connections to open (each needs an open file here; the limit is ulimit -n).
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Rooms are /ws/chat/{prefix}-{i % rooms}.
        #[arg(long, default_value = "idle")]
        room_prefix: String,
        /// Number of rooms.
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        /// How long all connections are held before the second RSS reading.
        #[arg(long, default_value = "5s", value_parser = duration)]
        hold: Duration,
    },
    /// Echo round trips on /ws: messages/s and round-trip percentiles.
    Echo {
        #[command(flatten)]
        common: Common,
        /// Connections.
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Messages outstanding per connection.
        #[arg(long, default_value_t = 8)]
        in_flight: usize,
        /// Message payload size in bytes (at least 17).
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Measured phase.
        #[arg(long, default_value = "10s", value_parser = duration)]
        duration: Duration,
        /// Time allowed after the phase for outstanding replies.
        #[arg(long, default_value = "2s", value_parser = duration)]
        drain: Duration,
    },
}

async fn run(cmd: Cmd) -> Result<report::Report> {
    match cmd {
        Cmd::Fanout {
            common,
            rooms,
            subscribers,
            publishers,
            size,
            duration,
            max: _,
            rate,
            window,
            drain,
            stall_timeout,
            join_timeout,
        } => {
            let target = net::Target::parse(&common.url, common.token.as_deref())?;
            let mode = match rate {
                Some(r) => fanout::Mode::Rate(r),
                None => fanout::Mode::Max { window },
            };
            let p = fanout::Params {
                rooms,
                subscribers,
                publishers,
                size,
                duration,
                mode,
                drain,
                stall_timeout,
                join_timeout,
            };
            fanout::run(&target, &p, common.server_pid, common.connect_concurrency).await
        }
        Cmd::Idle {
            common,
            connections,
            room_prefix,
            rooms,
            hold,
        } => {
            let target = net::Target::parse(&common.url, common.token.as_deref())?;
            let p = idle::Params {
                connections,
                room_prefix,
                rooms,
                hold,
            };
            idle::run(&target, &p, common.server_pid, common.connect_concurrency).await
        }
        Cmd::Echo {
            common,
            connections,
            in_flight,
            size,
            duration,
            drain,
        } => {
            let target = net::Target::parse(&common.url, common.token.as_deref())?;
            let p = echo::Params {
                connections,
                in_flight,
                size,
                duration,
                drain,
            };
            echo::run(&target, &p, common.server_pid, common.connect_concurrency).await
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    payload::now_ns(); // start the process clock before anything is timed
    match run_cli(cli) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        // The run finished but did not complete (reasons are in the report).
        Ok(false) => std::process::ExitCode::from(2),
        Err(e) => {
            // `{:#}` gives the whole context chain on one line, without anyhow's backtrace.
            eprintln!("switchboard-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the chosen scenario on a current-thread runtime, prints its report and returns
/// whether the run completed.
fn run_cli(cli: Cli) -> Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&rt, run(cli.cmd))?;
    let complete = report.complete;
    report.print();
    Ok(complete)
}

#[cfg(test)]
mod tests {
    //! End-to-end runs of every scenario against the in-process test server.
    use super::*;

    fn local<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    fn num(r: &report::Report, k: &str) -> f64 {
        r.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN)
    }

    #[test]
    fn echo_end_to_end() {
        local(async {
            let (addr, _) = testserver::start(false).await;
            let t = net::Target::parse(&format!("ws://{addr}"), Some("tok")).expect("target");
            let p = echo::Params {
                connections: 3,
                in_flight: 2,
                size: 40,
                duration: Duration::from_millis(300),
                drain: Duration::from_secs(2),
            };
            let r = echo::run(&t, &p, Some(std::process::id()), 8)
                .await
                .expect("run");
            assert!(r.complete);
            assert_eq!(num(&r, "loss"), 0.0);
            assert!(num(&r, "received_in_window") > 0.0);
            assert!(num(&r, "server_cpu_s") >= 0.0);
        });
    }

    #[test]
    fn fanout_max_end_to_end() {
        local(async {
            let (addr, _) = testserver::start(false).await;
            let t = net::Target::parse(&format!("ws://{addr}"), None).expect("target");
            let p = fanout::Params {
                rooms: 2,
                subscribers: 6,
                publishers: 2,
                size: 64,
                duration: Duration::from_millis(300),
                mode: fanout::Mode::Max { window: 3 },
                drain: Duration::from_secs(2),
                stall_timeout: Duration::from_secs(2),
                join_timeout: Duration::from_secs(5),
            };
            let r = fanout::run(&t, &p, None, 8).await.expect("run");
            assert!(r.complete);
            assert_eq!(num(&r, "loss"), 0.0);
            assert_eq!(num(&r, "stalled_publications"), 0.0);
            assert!(num(&r, "deliveries") > 0.0);
            // Every publication reaches the 3 subscribers of its room.
            assert_eq!(
                num(&r, "expected_deliveries"),
                3.0 * num(&r, "publications")
            );
        });
    }

    #[test]
    fn fanout_rate_end_to_end() {
        local(async {
            let (addr, _) = testserver::start(false).await;
            let t = net::Target::parse(&format!("ws://{addr}"), None).expect("target");
            let p = fanout::Params {
                rooms: 1,
                subscribers: 4,
                publishers: 1,
                size: 100,
                duration: Duration::from_millis(500),
                mode: fanout::Mode::Rate(20.0),
                drain: Duration::from_secs(2),
                stall_timeout: Duration::from_secs(2),
                join_timeout: Duration::from_secs(5),
            };
            let r = fanout::run(&t, &p, None, 8).await.expect("run");
            assert!(r.complete);
            assert_eq!(num(&r, "loss"), 0.0);
            let pubs = num(&r, "publications");
            assert!(
                (9.0..=11.0).contains(&pubs),
                "{pubs} publications at 20/s for 0.5 s"
            );
        });
    }

    #[test]
    fn idle_answers_pings() {
        local(async {
            let (addr, seen) = testserver::start(true).await;
            let t = net::Target::parse(&format!("ws://{addr}"), None).expect("target");
            let p = idle::Params {
                connections: 5,
                room_prefix: "idle".into(),
                rooms: 2,
                hold: Duration::from_millis(300),
            };
            let r = idle::run(&t, &p, Some(std::process::id()), 8)
                .await
                .expect("run");
            assert!(r.complete);
            assert_eq!(num(&r, "established"), 5.0);
            assert!(num(&r, "kib_per_connection").is_finite());
            let pongs = seen.pongs.lock().expect("lock").clone();
            assert_eq!(pongs.len(), 5);
            assert!(pongs.iter().all(|p| p == b"are you there"));
        });
    }
}
