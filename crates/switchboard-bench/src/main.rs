//! `switchboard-bench`: a lean WebSocket load generator for servers with the "plain door"
//! contract (`/ws` echo, `/ws/chat/{room}` broadcast, `/healthz`); `fanout` and `slow` can also
//! subscribe through Switchboard's client protocol (`--door protocol`). This module owns the
//! command line and the runtime: one current-thread tokio runtime with a `LocalSet`, so the
//! generator costs one core at most and its shared state needs no atomics or locks.
//!
//! # Layout
//! - `net`: target URL (loopback only; a comma list is a cluster whose nodes take the
//!   connections round-robin), source addresses, socket set-up, handshake.
//! - `ws`: client-side RFC 6455 framing (masked sends, in-place parsing of server frames).
//! - `deflate`: permessage-deflate for the subscribers (`fanout --deflate`): the offer, the
//!   check of the server's answer, inflating compressed frames into a reused buffer.
//! - `payload`: the process clock and the timestamped payload layouts (`--payload-kind`).
//! - `stream`: the same client protocol over HTTP streaming and SSE (`fanout --door
//!   http-stream`, `--door sse`): the stream's request, its chunked body, pongs by `/emulation`;
//! - `protocol`: the client protocol's side of a subscriber (`fanout --door protocol`):
//!   connect and subscribe, pings, the `data` of a push found in place.
//! - `pusher`: the Pusher protocol's side (`--door pusher` of `fanout`, `idle`, `connect`):
//!   connect and subscribe on `/app/{key}`, `pusher:ping`, the `data` of an event found in
//!   place, and the signed `POST /apps/{id}/events` the publishers send instead of frames.
//! - `fanout`, `slow`, `echo`, `idle`, `connect`: the scenarios (`slow` is a fanout run with
//!   stalled subscribers; the stalled members themselves live in `fanout`).
//! - `api`: `api-publish`, keep-alive `POST /api/publish` requests (the server HTTP API).
//! - `hookbackend`: `hook-backend`, a minimal backend answering the gateway's connect hook, for
//!   `connect` runs through the hook against runs with a token (docs/benchmarks.md).
//! - `floor`: the kernel's floor, no server at all: a thread writing frames to loopback
//!   sockets and one draining them; the writer's CPU per delivery bounds every server's.
//! - `stats`: CPU (utime + stime) and RSS from `/proc` (of one pid, or summed over a comma
//!   list: the nodes of a cluster and its broker, each one's part reported too), latency
//!   histograms.
//! - `report`: the table, the JSON line, progress bars, duration parsing.
//!
//! # Examples
//! ```text
//! taskset -c 1 switchboard-bench fanout --url ws://127.0.0.1:8081 --rooms 1 --subscribers 1000 \
//!     --publishers 1 --duration 10s --max --server-pid "$PID"
//! taskset -c 1 switchboard-bench fanout --door protocol --url ws://127.0.0.1:8081 \
//!     --subscribers 1000 --duration 10s --max --server-pid "$PID"
//! taskset -c 1 switchboard-bench fanout --deflate --payload-kind json --size 1000 \
//!     --url ws://127.0.0.1:8081 --subscribers 1000 --duration 10s --max --server-pid "$PID"
//! # the Pusher door (Switchboard's or another server's): subscribers on /app/KEY, publications
//! # through the signed HTTP API
//! taskset -c 1 switchboard-bench fanout --door pusher --app-id app --app-key key \
//!     --app-secret "$SECRET" --url ws://127.0.0.1:8081 --subscribers 1000 --duration 10s --max \
//!     --server-pid "$PID"
//! taskset -c 1 switchboard-bench echo --url ws://127.0.0.1:8081 --connections 100 --in-flight 8
//! taskset -c 1 switchboard-bench idle --url ws://127.0.0.1:8081 --connections 19000 --server-pid "$PID"
//! taskset -c 1 switchboard-bench connect --url ws://127.0.0.1:8081 --connections 2000 \
//!     --concurrency 64 --server-pid "$PID"
//! taskset -c 1 switchboard-bench slow --url ws://127.0.0.1:8081 --subscribers 1000 \
//!     --stalled-percent 1 --rate 33 --duration 10s --baseline --server-pid "$PID"
//! # a cluster: subscribers spread over three nodes, the publisher on the first; CPU summed
//! # over the nodes and the broker
//! taskset -c 1 switchboard-bench fanout --url ws://127.0.0.1:8081,ws://127.0.0.1:8082,ws://127.0.0.1:8083 \
//!     --subscribers 1000 --duration 10s --rate 33 --server-pid "$N1,$N2,$N3,$REDIS"
//! taskset -c 1 switchboard-bench api-publish --url ws://127.0.0.1:8081 --connections 64 \
//!     --channel chat:api-bench --duration 10s --server-pid "$PID"
//! # handshakes through the connect hook (the gateway's [hooks.connect] url points at it,
//! # doors = ["chat"]), against the same run with --token
//! switchboard-bench hook-backend --listen 127.0.0.1:9100 --duration 60s &
//! taskset -c 1 switchboard-bench connect --url ws://127.0.0.1:8081 --connections 2000 \
//!     --concurrency 64 --server-pid "$PID"
//! switchboard-bench floor --sockets 1000 --rate 33 --writer-cpu 0 --reader-cpu 1
//! switchboard-bench floor --sockets 1000 --frames-per-write 4 --writer-cpu 0 --reader-cpu 1
//! ```
//! The last line of stdout is one JSON object with every parameter and figure; the exit code
//! is 0 for a complete run, 2 for a run that finished incomplete (lost connections, nothing
//! delivered, failed connects in `idle` or `connect`, healthy subscribers' loss in `slow`), 1 for
//! an error.

mod api;
#[cfg(test)]
mod closingproxy;
mod connect;
mod deflate;
#[cfg(test)]
mod e2e;
mod echo;
mod fanout;
mod floor;
#[cfg(test)]
mod gateway;
mod hookbackend;
mod idle;
mod net;
mod payload;
mod protocol;
mod pusher;
mod report;
mod slow;
mod stats;
mod stream;
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

/// Where the load goes.
#[derive(Args, Debug, Clone)]
struct Server {
    /// Server base URL, e.g. ws://127.0.0.1:8081 (loopback only; a path is used as a prefix).
    /// A comma list of base URLs is a cluster: connections are spread over them round-robin
    /// (fanout and slow: the subscribers; their publishers all connect to the first one).
    #[arg(long)]
    url: String,
    /// Appended to every plain-door request as ?token=T; client-protocol subscribers
    /// (--door protocol) send it in their connect command instead.
    #[arg(long)]
    token: Option<String>,
    /// Server process id, for its CPU time (/proc/PID/stat) and RSS (/proc/PID/status). A
    /// comma list (every node of a cluster and its broker) is summed, and each one's part of
    /// the CPU is reported too.
    #[arg(long, value_parser = stats::Pids::parse)]
    server_pid: Option<stats::Pids>,
    /// With --door pusher: the Pusher app's id (`POST /apps/{id}/events`).
    #[arg(long, default_value = "app")]
    app_id: String,
    /// With --door pusher: the Pusher app's key (`/app/{key}`, `auth_key`).
    #[arg(long, default_value = "key")]
    app_key: String,
    /// With --door pusher: the Pusher app's secret, which signs the HTTP API requests.
    #[arg(long, env = "BENCH_PUSHER_APP_SECRET", hide_env_values = true)]
    app_secret: Option<String>,
}

impl Server {
    /// The Pusher app when `door` is the Pusher door (its secret is then required).
    fn pusher(&self, door: fanout::Door) -> Result<Option<pusher::App>> {
        if door != fanout::Door::Pusher {
            return Ok(None);
        }
        let Some(secret) = self.app_secret.clone() else {
            anyhow::bail!("--door pusher needs --app-secret (the app's secret signs API requests)");
        };
        Ok(Some(pusher::App {
            id: self.app_id.clone(),
            key: self.app_key.clone(),
            secret,
            host: self.nodes()?.node_for(0).host().to_string(),
        }))
    }

    fn nodes(&self) -> Result<net::Nodes> {
        net::Nodes::parse(&self.url, self.token.as_deref())
    }

    fn pids(&self) -> &[u32] {
        self.server_pid.as_ref().map_or(&[], |p| &p.0)
    }
}

/// Options every scenario but `connect` takes.
#[derive(Args, Debug, Clone)]
struct Common {
    #[command(flatten)]
    server: Server,
    /// Handshakes in progress at once while connecting.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
}

/// The fanout run (`fanout`, and `slow` around it).
#[derive(Args, Debug, Clone)]
#[command(group(ArgGroup::new("pace").required(true).args(["max", "rate"])))]
struct FanoutArgs {
    /// Number of rooms (/ws/chat/room-N; channel chat:room-N on the client protocol).
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// The subscribers' door: plain (/ws/chat/room-N) or protocol (/connection/websocket, the
    /// JSON client protocol, subscribed to chat:room-N; --token goes in its connect command)
    /// or pusher (/app/KEY?protocol=7, subscribed to the public channel room-N), or http-stream
    /// and sse (the client protocol over /connection/http_stream and /connection/sse, pings
    /// answered through /emulation). Publishers use the plain door, but with pusher the signed
    /// HTTP API (POST /apps/ID/events, up to --window in flight per publisher: pipelined on one
    /// keep-alive connection, or one connection per request when the server closes after each
    /// answer; --app-id, --app-key, --app-secret).
    #[arg(long, value_enum, default_value_t = fanout::Door::Plain)]
    door: fanout::Door,
    /// Subscriber connections (room i % rooms).
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Publisher connections (room j % rooms; they are members too).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Publication payload size in bytes (at least 41; 96 with --payload-kind json).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// What publications look like: padded (the bench header padded with '.'; compresses
    /// hardly at all at 100 bytes) or json (a JSON chat message whose "id" is the header and
    /// whose text repeats lorem ipsum: realistic, compressible).
    #[arg(long, value_enum, default_value_t = payload::PayloadKind::Padded)]
    payload_kind: payload::PayloadKind,
    /// The subscribers offer permessage-deflate (RFC 7692) and inflate compressed frames; the
    /// run fails if the server does not agree. Publishers never compress.
    #[arg(long)]
    deflate: bool,
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
    /// Write `start` to this file right before the measured phase starts and `end` right
    /// after it ends, e.g. for a script reading a broker's counters over exactly the phase.
    #[arg(long)]
    phase_file: Option<std::path::PathBuf>,
    /// After each write of --phase-file, wait until the file is removed (the reader is done),
    /// at most this long, before going on (the connections stay open meanwhile).
    #[arg(long, default_value = "0s", value_parser = duration)]
    phase_hold: Duration,
}

impl FanoutArgs {
    /// The run's parameters, rooms named `{room_prefix}-N`, no stalled subscribers.
    fn params(&self, room_prefix: &str, pusher: Option<pusher::App>) -> fanout::Params {
        let mode = match self.rate {
            Some(r) => fanout::Mode::Rate(r),
            None => fanout::Mode::Max {
                window: self.window,
            },
        };
        fanout::Params {
            room_prefix: room_prefix.to_string(),
            rooms: self.rooms,
            subscribers: self.subscribers,
            publishers: self.publishers,
            size: self.size,
            payload: self.payload_kind,
            duration: self.duration,
            mode,
            drain: self.drain,
            stall_timeout: self.stall_timeout,
            join_timeout: self.join_timeout,
            stall: fanout::Stall::default(),
            door: self.door,
            deflate: self.deflate,
            phase_file: self.phase_file.clone(),
            phase_hold: self.phase_hold,
            pusher,
        }
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    report::parse_duration(s)
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Subscribers and publishers in chat rooms: deliveries/s, loss, latency, CPU per delivery.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        run: FanoutArgs,
    },
    /// A fanout run where a share of the subscribers stops reading: the healthy ones' figures,
    /// and how the server ended the stalled ones.
    Slow {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        run: FanoutArgs,
        /// Share of --subscribers that stop reading after joining, in percent (at least one
        /// subscriber when not 0).
        #[arg(long, default_value_t = 1.0)]
        stalled_percent: f64,
        /// SO_RCVBUF of the stalled subscribers' sockets, set before connect (0: the kernel's default).
        #[arg(long, default_value_t = 4096)]
        stalled_rcvbuf: usize,
        /// After the run: longest time spent reading what is left on the stalled sockets.
        #[arg(long, default_value = "5s", value_parser = duration)]
        stalled_read_timeout: Duration,
        /// First run the same fanout without stalled subscribers; report both p99s and their ratio.
        #[arg(long)]
        baseline: bool,
    },
    /// Handshakes per second: connections opened (at most --concurrency at a time), each closed
    /// right after its handshake.
    Connect {
        #[command(flatten)]
        server: Server,
        /// Handshakes to make (/ws/chat/connect-{i % 100}).
        #[arg(long, default_value_t = 2000)]
        connections: usize,
        /// plain, or pusher: /app/KEY?protocol=7, each complete at connection_established.
        #[arg(long, value_enum, default_value_t = fanout::Door::Plain)]
        door: fanout::Door,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// A backend for the connect hook: answers every POST with a fixed user, for --duration.
    HookBackend {
        /// Address to listen on (loopback).
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: std::net::SocketAddr,
        /// The user every connect-hook call is answered with.
        #[arg(long, default_value = "bench")]
        user: String,
        /// How long to serve.
        #[arg(long, default_value = "60s", value_parser = duration)]
        duration: Duration,
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
        /// plain, or pusher: /app/KEY?protocol=7, each subscribed to the public channel
        /// {prefix}-{i % rooms}.
        #[arg(long, value_enum, default_value_t = fanout::Door::Plain)]
        door: fanout::Door,
    },
    /// The kernel's floor, no server involved: one thread writes frames to N loopback TCP
    /// sockets, another drains them; the writer's CPU per delivery is the least any server
    /// can spend per delivery on this machine.
    Floor(floor::Params),
    /// Publications through the server HTTP API (`POST /api/publish`, keep-alive, one request
    /// in flight per connection): publishes/s, latency, CPU per publish.
    ApiPublish {
        #[command(flatten)]
        common: Common,
        /// Keep-alive connections, each with one request in flight (spread over the nodes).
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// The channel published to (with `--dev` every namespace keeps history, so each
        /// publish is given an offset; the report counts the answers that carry one).
        #[arg(long, default_value = "chat:api-bench")]
        channel: String,
        /// Approximate size of each publication's data in bytes.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Sent as X-API-Key (none: the server's API is open, as with `serve --dev`).
        #[arg(long, env = "SWITCHBOARD_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Measured phase.
        #[arg(long, default_value = "10s", value_parser = duration)]
        duration: Duration,
        /// Time allowed after the phase for the last responses.
        #[arg(long, default_value = "2s", value_parser = duration)]
        drain: Duration,
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
        Cmd::Floor(params) => floor::run(&params),
        Cmd::Fanout { common, run } => {
            let target = common.server.nodes()?;
            let p = run.params("room", common.server.pusher(run.door)?);
            fanout::run(
                &target,
                &p,
                common.server.pids(),
                common.connect_concurrency,
            )
            .await
        }
        Cmd::Slow {
            common,
            run,
            stalled_percent,
            stalled_rcvbuf,
            stalled_read_timeout,
            baseline,
        } => {
            let target = common.server.nodes()?;
            let p = slow::Params {
                fanout: run.params("slow", common.server.pusher(run.door)?),
                stalled_percent,
                stalled_rcvbuf: (stalled_rcvbuf > 0).then_some(stalled_rcvbuf),
                stalled_read_timeout,
                baseline,
            };
            slow::run(
                &target,
                &p,
                common.server.pids(),
                common.connect_concurrency,
            )
            .await
        }
        Cmd::Connect {
            server,
            connections,
            concurrency,
            door,
        } => {
            let target = server.nodes()?;
            if door == fanout::Door::Protocol {
                anyhow::bail!("connect takes --door plain or pusher");
            }
            let p = connect::Params {
                connections,
                concurrency,
                with_token: server.token.is_some(),
                pusher: server.pusher(door)?,
            };
            connect::run(&target, &p, server.pids()).await
        }
        Cmd::HookBackend {
            listen,
            user,
            duration,
        } => hookbackend::run(listen, &user, duration).await,
        Cmd::Idle {
            common,
            connections,
            room_prefix,
            rooms,
            hold,
            door,
        } => {
            let target = common.server.nodes()?;
            if door == fanout::Door::Protocol {
                anyhow::bail!("idle takes --door plain or pusher");
            }
            let p = idle::Params {
                connections,
                room_prefix,
                rooms,
                hold,
                pusher: common.server.pusher(door)?,
            };
            idle::run(
                &target,
                &p,
                common.server.pids(),
                common.connect_concurrency,
            )
            .await
        }
        Cmd::ApiPublish {
            common,
            connections,
            channel,
            size,
            api_key,
            duration,
            drain,
        } => {
            let nodes = common.server.nodes()?;
            let p = api::Params {
                connections,
                channel,
                size,
                api_key,
                duration,
                drain,
            };
            api::run(&nodes, &p, common.server.pids(), common.connect_concurrency).await
        }
        Cmd::Echo {
            common,
            connections,
            in_flight,
            size,
            duration,
            drain,
        } => {
            let target = common.server.nodes()?;
            let p = echo::Params {
                connections,
                in_flight,
                size,
                duration,
                drain,
            };
            echo::run(
                &target,
                &p,
                common.server.pids(),
                common.connect_concurrency,
            )
            .await
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
