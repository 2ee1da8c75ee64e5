//! The gateway: the accept loop, the heartbeat sweep and graceful shutdown.
//!
//! The accept loop only accepts: the socket inherits TCP_NODELAY and keepalive from the
//! listener, takes a pending place (or is closed at once over the bounds, see
//! `conn::PendingConns`), and its HTTP connection is spawned on the [`TaskTracker`]; the
//! handshake and its timeout run inside that task.
//! Upgraded WebSockets are spawned on the same tracker (hyper does not track them), so
//! shutdown can wait for every socket. One sweep task serves every connection's heartbeat and
//! token deadline, instead of a timer per connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{KeyError, TokenVerifier};
use crate::broker::Broker;
use crate::channels::Namespaces;
use crate::config::{Config, ConfigError};
use crate::conn::{IpLimits, NodeSlots, PendingConns, PendingPermit, SweepTiming};
use crate::error::CloseReason;
use crate::ingest::LogSource;
use crate::kind::{Door, Encoding};
use crate::login::Logins;
use crate::node::{Node, NodeSettings};
use crate::origin::OriginPolicy;
use crate::peer::TrustedProxies;
use crate::state::State;
use crate::trace::{TraceError, Tracer};
use crate::ws::frame::{self, Opcode};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The token key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Traces are enabled and their exporter could not start.
    #[error(transparent)]
    Traces(#[from] TraceError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A bound gateway, ready to [`run`](Gateway::run).
pub struct Gateway {
    state: Arc<State>,
    listener: TcpListener,
    ingest: Option<Arc<dyn LogSource>>,
}

impl Gateway {
    /// Validates `config`, loads keys and binds the listener, with the memory broker (one
    /// node).
    ///
    /// # Errors
    /// [`StartError`] naming the key, file or address at fault.
    pub async fn bind(config: Config) -> Result<Gateway, StartError> {
        Gateway::bind_with_broker(config, None).await
    }

    /// [`Gateway::bind`] on `broker` (`None`: the memory broker). The broker is connected
    /// when the gateway runs.
    ///
    /// # Errors
    /// [`StartError`] naming the key, file or address at fault.
    pub async fn bind_with_broker(
        config: Config,
        broker: Option<Arc<dyn Broker>>,
    ) -> Result<Gateway, StartError> {
        config.validate()?;
        let verifier = TokenVerifier::from_config(&config.token)?;
        let resolved = config.resolve();
        let addr = config.server.listen;
        let send_buffer = config.limits.socket_send_buffer_bytes;
        let listener =
            bind_listener(addr, send_buffer).map_err(|source| StartError::Bind { addr, source })?;
        let origins = OriginPolicy::new(&config.origins.allowed, resolved.localhost_origins);
        let server = &config.server;
        let proxies = TrustedProxies::new(&server.trusted_proxies, server.client_ip_header)
            .map_err(|message| ConfigError::Invalid {
                key: "server.trusted_proxies".to_owned(),
                message,
            })?;
        let pending = PendingConns::new(
            server.max_pending_handshakes,
            server.max_pending_handshakes_per_ip,
        );
        let channels = Namespaces::from_config(&config, &resolved);
        let name = config
            .node
            .name
            .clone()
            .unwrap_or_else(Gateway::default_node_name);
        let tracer = Tracer::from_config(&config.traces, &name)?;
        let settings = NodeSettings {
            name,
            presence_ttl: config.node.presence_ttl,
            announce_interval: config.node.announce_interval,
            position_check_interval: config.node.position_check_interval,
            broker_timeout: config.node.broker_timeout,
            delivery_batch_delay: config.node.delivery_batch_delay,
            history_meta_ttl: config.client.history_meta_ttl,
            max_channels: config.limits.max_channels,
            max_history_streams: config.limits.max_history_streams,
            history_unused_ttl: config.client.history_unused_ttl,
            max_presence_entries: config.limits.max_presence_entries,
            max_frame_bytes: config.limits.max_queued_bytes,
            tracer,
            pusher: config.pusher.clone(),
        };
        let node = Node::new(broker, channels, settings);
        let polls: Vec<(String, Arc<str>)> = config
            .channels
            .namespaces
            .iter()
            .filter(|(_, ns)| ns.shared_poll == Some(true))
            .filter_map(|(name, ns)| Some((name.clone(), ns.shared_poll_url.as_deref()?.into())))
            .collect();
        let hooks =
            crate::hooks::Hooks::from_config_with_polls(&config.hooks, &polls, &node.metrics.hooks)
                .map(|hooks| Arc::new(hooks.with_tracer(node.tracer().clone())));
        let polls = Arc::new(crate::poll::SharedPolls::new(
            &config.shared_poll.hmac_secret.0,
        ));
        let state = State {
            resolved,
            node,
            hooks,
            polls,
            ip_limits: Arc::new(IpLimits::default()),
            slots: Arc::new(NodeSlots::default()),
            pending: Arc::new(pending),
            proxies,
            verifier,
            origins,
            logins: Logins::new(
                config.admin.session_ttl,
                config.admin.login_attempts_per_minute,
            ),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            started: Instant::now(),
            config,
        };
        Ok(Gateway {
            state: Arc::new(state),
            listener,
            ingest: None,
        })
    }

    /// Also publishes what a backend appends to `source` (see [`crate::ingest`]).
    pub fn with_ingest(mut self, source: Arc<dyn LogSource>) -> Gateway {
        self.ingest = Some(source);
        self
    }

    /// The address actually bound (useful with port 0).
    ///
    /// # Errors
    /// When the OS cannot say (not expected for a bound listener).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then drains: stops accepting, closes every
    /// WebSocket with 1001, and waits up to `server.shutdown_drain` for them to finish.
    pub async fn run(self, shutdown: CancellationToken) {
        let Gateway {
            state,
            listener,
            ingest,
        } = self;
        announce(&state);
        let background = CancellationToken::new();
        state.node.start(background.clone()).await;
        if let Some(source) = ingest {
            let node = Arc::clone(&state.node);
            tokio::spawn(crate::ingest::run(node, source, background.clone()));
        }
        let sweep = tokio::spawn(sweep(Arc::clone(&state)));
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = accept_loop(&state, &listener) => {}
        }
        state.shutdown.cancel();
        tracing::info!(
            event = "shutdown",
            phase = "draining",
            connections = state.node.conns.len(),
            "shutdown: refusing new WebSockets, /readyz is 503; closing clients with 1001"
        );
        state
            .node
            .conns
            .for_each(|conn| conn.close(CloseReason::GoingAway));
        state.tracker.close();
        let drain = state.config.server.shutdown_drain;
        // The listener stays open while draining so health checks get 503, not a refusal.
        let drained = tokio::select! {
            _ = state.tracker.wait() => true,
            _ = tokio::time::sleep(drain) => false,
            _ = accept_loop(&state, &listener) => false,
        };
        if drained {
            tracing::info!(
                event = "shutdown",
                phase = "drained",
                "shutdown: every connection closed"
            );
        } else {
            tracing::warn!(
                event = "shutdown",
                phase = "drain_timeout",
                remaining = state.node.conns.len(),
                drain_ms = drain.as_millis() as u64,
                "shutdown: drain time over; exiting with connections open"
            );
        }
        sweep.abort();
        background.cancel();
        state.node.stop().await;
        // Last: the spans of the drain itself are in the final batch.
        state.node.tracer().shutdown().await;
    }
}

impl Gateway {
    /// The name a node gets when `node.name` is not set: the host name and a random
    /// suffix, so two nodes on one host differ.
    pub fn default_node_name() -> String {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "switchboard".to_owned());
        format!("{host}-{:04x}", fastrand::u16(..))
    }
}

/// Accepts connections until the listener fails for good (it does not, in practice). A socket
/// over the pending bounds is closed at once, before it costs a task or a buffer; no line is
/// logged for it (a flood would become a flood of log lines), the metric counts it.
async fn accept_loop(state: &Arc<State>, listener: &TcpListener) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                // Before the request is read only the TCP peer is known: a trusted proxy
                // carries many clients, so it is held to the node bound only.
                let ip = peer.ip();
                let key = (!state.proxies.trusts(ip)).then(|| state.limit_key(ip));
                match state.pending.admit(key) {
                    Ok((permit, evicted)) => {
                        if evicted {
                            state
                                .node
                                .metrics
                                .pending_closed
                                .with_label_values(&["evicted"])
                                .inc();
                        }
                        state
                            .tracker
                            .spawn(serve_http(Arc::clone(state), tcp, peer, permit));
                    }
                    Err(refused) => {
                        state
                            .node
                            .metrics
                            .pending_closed
                            .with_label_values(&[refused.label()])
                            .inc();
                        drop(tcp);
                    }
                }
            }
            Err(error) => accept_error(error).await,
        }
    }
}

/// Binds the listener with the options every accepted socket needs already set on it: TCP_NODELAY
/// (frames are batched by the writer), keepalive (idle 60 s, a probe every 10 s, 3 probes) so
/// dead peers are found even without heartbeats, and a bounded send buffer so a stalled client's
/// backlog shows in its queue rather than in the kernel. Linux clones an accepted socket from
/// its listener, options included, which saves six `setsockopt` calls per connection
/// (`accepted_sockets_inherit_the_listener_options` checks it).
fn bind_listener(addr: SocketAddr, send_buffer: usize) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    socket2::SockRef::from(&socket).set_tcp_keepalive(&keepalive)?;
    if send_buffer > 0 {
        socket.set_send_buffer_size(u32::try_from(send_buffer).unwrap_or(u32::MAX))?;
    }
    socket.bind(addr)?;
    socket.listen(4096)
}

fn announce(state: &State) {
    let config = &state.config;
    if config.server.dev {
        tracing::warn!(event = "dev_mode", "DEVELOPMENT MODE: anonymous clients, /ws echo, any localhost origin{}. Never use --dev in production.", if state.resolved.open_api { ", and an open server API (no api.key set)" } else { "" });
    }
    if !state.verifier.has_key() {
        tracing::warn!(event = "no_token_key", "no token key configured (token.hmac_secret or token.public_key_file): every token is refused");
    }
    if config.admin.enabled {
        tracing::info!(
            event = "admin_enabled",
            session_ttl_secs = config.admin.session_ttl.as_secs(),
            password = !config.admin.password.is_empty(),
            token = !config.admin.token.is_empty(),
            "admin UI at /admin"
        );
    }
    if config.api.key.is_empty() && !state.resolved.open_api {
        tracing::warn!(
            event = "no_api_key",
            "no api.key configured: the server API refuses every call"
        );
    }
    // Logged resolved: `--dev` decides the settings left unset, and an unset `None` in the
    // log would not say what applies.
    tracing::info!(event = "config", config = ?config.with_resolved(), "configuration (resolved, secrets masked)");
    tracing::info!(
        event = "node",
        name = state.node.name(),
        uid = state.node.uid(),
        broker = state.node.broker_name(),
        "node starting"
    );
    if state.node.tracer().is_enabled() {
        let traces = &config.traces;
        tracing::info!(event = "traces", endpoint = %traces.endpoint, protocol = ?traces.protocol, sampling_ratio = traces.sampling_ratio, "exporting traces over OTLP/HTTP");
    }
}

/// Per-connection accept errors are ignored; running out of file descriptors backs off so the
/// loop does not spin.
async fn accept_error(error: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(event = "accept_error", error = %error, "accept failed; backing off");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves HTTP/1.1 on one TCP connection. The header read timeout is the handshake timeout; it
/// never applies after an upgrade, because the upgraded socket leaves hyper. `permit` holds
/// the connection's pending place until it returns (upgraded or closed); while a request is
/// being answered the connection is busy, and is never closed to make room for another.
async fn serve_http(state: Arc<State>, tcp: TcpStream, peer: SocketAddr, permit: PendingPermit) {
    let io = TokioIo::new(tcp);
    let state2 = Arc::clone(&state);
    let busy = permit.busy_flag();
    let service = service_fn(move |req: http::Request<Incoming>| {
        let state = Arc::clone(&state2);
        let busy = busy.clone();
        busy.set(true);
        async move {
            let response = crate::door::handle(state, peer, req).await;
            // A 101 stays busy: the socket is leaving for its WebSocket task. A stream (HTTP
            // streaming, SSE) is a client connection from now on, counted as one.
            if response
                .extensions()
                .get::<crate::respond::ClientStream>()
                .is_some()
            {
                busy.leave();
            } else if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                busy.set(false);
            }
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.server.handshake_timeout)
        // Answered 431 past it; hyper's own bound (its ~400 KB read buffer) is far larger.
        .max_header_size(state.config.server.max_header_bytes)
        // While draining, answer one request (a health check) and close.
        .keep_alive(!state.draining());
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        // Closed to make room for a newer connection: dropping it closes the socket.
        _ = permit.evicted() => {}
        _ = state.shutdown.cancelled(), if !state.draining() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Pings, heartbeat deadlines, token expiry and connect deadlines for every connection, in
/// one task.
async fn sweep(state: Arc<State>) {
    let interval = state.config.server.heartbeat_interval;
    let tick = (interval / 4).clamp(Duration::from_millis(25), Duration::from_secs(1));
    // Plain doors get a WebSocket ping; protocol clients the protocol's own `{}` (browsers
    // cannot see WebSocket pings), which they answer with `{}`.
    let ping = frame::encode(Opcode::Ping, &[]);
    let protocol_ping = frame::encode(Opcode::Text, b"{}");
    // An empty Reply, length-delimited: one zero byte.
    let protobuf_ping = frame::encode(Opcode::Binary, &[0]);
    let timing = SweepTiming {
        heartbeat_ms: interval.as_millis() as u64,
        connect_timeout_ms: state.config.client.connect_timeout.as_millis() as u64,
        expiry_grace_secs: state.config.client.expiry_grace.as_secs(),
    };
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now_ms = state.clock_ms();
        let now_unix = crate::auth::unix_now();
        state.node.conns.for_each(|conn| {
            let ping = match (conn.door, conn.encoding) {
                (Door::Protocol, Encoding::Json) => &protocol_ping,
                (Door::Protocol, Encoding::Protobuf) => &protobuf_ping,
                _ => &ping,
            };
            conn.sweep(now_ms, &timing, now_unix, ping)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_inherit_the_listener_options() {
        let listener = bind_listener("127.0.0.1:0".parse().unwrap(), 64 * 1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let socket = socket2::SockRef::from(&accepted);
        assert!(accepted.nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(
            socket.keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(socket.keepalive_retries().unwrap(), 3);
        // Linux doubles the value it is given.
        assert_eq!(socket.send_buffer_size().unwrap(), 128 * 1024);
    }
}
