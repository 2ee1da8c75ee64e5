//! Switchboard: a real-time WebSocket gateway.
//!
//! Clients hold a WebSocket each; backends publish to channels and users through the server
//! HTTP API; the hub fans every publication out to the channel's subscribers. Embed it with
//! [`Gateway::bind`] and [`Gateway::run`], or run the `switchboard` binary.
//!
//! # Layout
//!
//! - [`config`]: typed configuration, layered defaults → file → env → flags, validated.
//! - [`error`]: every close code and error code, with reconnect advice.
//! - [`ws`]: the WebSocket wire protocol (handshake, frames, reassembly), no I/O.
//! - `conn`: one connection's shared handle with its bounded queue, the registry, per-IP
//!   admission.
//! - [`hub`]: channel → subscribers, sharded; fan-out of encoded frames.
//! - [`pusher_wire`]: the Pusher protocol's signatures, channel kinds, hub mapping and
//!   events, no I/O.
//! - [`publication`]: one publication and its encoding per door format, made once each.
//! - [`filter`]: tag filters, which publications of a channel a subscriber wants.
//! - [`delta`]: fossil deltas of publications for subscribers that ask for them.
//! - [`channels`]: channel names, namespaces and their rules.
//! - [`history`]: one channel's kept publications, offsets, epoch; recovery.
//! - [`hooks`]: backend hooks (connect, refresh, subscribe, publish, sub_refresh, rpc) over
//!   HTTP, with timeouts, retries, a circuit breaker per upstream and an answer cache.
//! - `webhooks`: the Pusher apps' webhooks (batched, signed, retried, never awaited).
//! - [`kind`]: leaf types (door, encoding, frame format); imports nothing of the crate.
//! - [`broker`]: the broker contract (streams, presence, delivery between nodes), its codec,
//!   and the memory broker; Redis and NATS engines live in their own crates.
//! - `node`: this process's place in the cluster: hub, connections, the broker behind them,
//!   channel workers (gap detection, recovery merge), control messages between nodes.
//! - [`poll`]: shared polls: the node's registry of tracked keys per shared-poll channel, the
//!   refresh loop that polls the backend for them, and track signatures.
//! - [`ingest`]: publications read from a log (Redis Stream, JetStream) through one consumer
//!   group, acknowledged after the publish; the [`ingest::LogSource`] trait engines implement.
//! - `state`: what every task of a gateway shares (configuration, node, door checks).
//! - `protocol`: the client protocol of `/connection/websocket` (commands, subscriptions).
//! - `door`: HTTP routing, the upgrade of every WebSocket door with every pre-upgrade check,
//!   and the task that owns each socket (single reader, single writer, vectored writes).
//! - `api`: the server HTTP API.
//! - `admin`: the admin web UI at `/admin` (pages embedded in the binary, JSON endpoints,
//!   live updates over server-sent events), acting through the API's methods.
//! - `door/pusher`: the Pusher protocol door `/app/{key}` and its HTTP API `/apps/{id}/…`.
//! - [`auth`]: token verification (algorithm pinned by configuration).
//! - [`login`]: the admin UI's sessions, its login bound, constant-time comparison.
//! - [`origin`]: the `Origin` allowlist.
//! - [`peer`]: who a client is for limits and logs (trusted proxies, forwarded headers, the
//!   IPv6 prefix it is counted under).
//! - [`metrics`]: Prometheus metrics.
//! - [`trace`]: OpenTelemetry spans over OTLP/HTTP (the `otel` feature), and the W3C trace
//!   context a publication carries between nodes.
//! - `gateway`: accept loop, heartbeat sweep, graceful shutdown.

mod admin;
mod api;
pub mod auth;
pub mod broker;
pub mod channels;
pub mod config;
pub mod conn;
pub mod delta;
pub mod door;
pub mod error;
pub mod filter;
mod gateway;
pub mod history;
pub mod hooks;
pub mod hub;
pub mod ingest;
pub mod keyed;
pub mod kind;
pub mod login;
pub mod metrics;
mod node;
pub mod origin;
pub mod peer;
pub mod poll;
pub mod protocol;
pub mod publication;
pub mod pusher_wire;
mod respond;
mod state;
pub mod trace;
pub(crate) mod webhooks;
pub mod wire;
pub mod ws;

pub use broker::Broker;
pub use config::Config;
pub use gateway::{Gateway, StartError};
pub use tokio_util::sync::CancellationToken;

/// With the `test-hooks` feature, a client message of exactly these bytes makes its
/// connection's handler panic, so tests can show that a panic ends that connection only.
#[cfg(feature = "test-hooks")]
pub use door::TEST_PANIC_MESSAGE;
