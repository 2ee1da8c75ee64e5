//! Prometheus metrics, served as text at `/metrics`.
//!
//! Each gateway owns its own registry (tests run several in one process). Hot-path counters are
//! bumped once per write batch, not once per delivery, and gauges that the hub already knows
//! (channels, subscriptions) are read at scrape time rather than kept twice. The two latency
//! histograms are observed once per publication on each node, never once per delivery, so the
//! fan-out's cost does not grow with them.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::kind::Door;

/// Counters for one door, resolved once so the hot path does no label lookup.
#[derive(Clone)]
pub struct DoorMetrics {
    /// Open connections.
    pub connections: IntGauge,
    /// Connections accepted since start.
    pub accepted: IntCounter,
    /// Messages received from clients.
    pub messages_in: IntCounter,
    /// Bytes of messages received from clients.
    pub bytes_in: IntCounter,
    /// Frames written to clients.
    pub messages_out: IntCounter,
    /// Bytes written to clients.
    pub bytes_out: IntCounter,
}

/// The backend hooks' metrics (docs/hooks.md); the hooks keep clones of these handles.
#[derive(Clone)]
pub struct HookMetrics {
    /// `switchboard_hook_duration_seconds{hook}`: one hook call, retries included.
    pub duration: HistogramVec,
    /// `switchboard_hook_calls_total{hook,result}`: result is `ok`, `error`, `timeout`,
    /// `denied` or `breaker_open`.
    pub calls: IntCounterVec,
    /// `switchboard_hook_breaker_state{upstream}`: 0 closed, 1 half-open, 2 open.
    pub breaker_state: IntGaugeVec,
    /// `switchboard_hook_breaker_transitions_total{upstream,to}`.
    pub breaker_transitions: IntCounterVec,
}

/// The Pusher webhooks' metrics (docs/pusher.md); the delivery tasks keep clones.
#[derive(Clone)]
pub struct WebhookMetrics {
    /// `switchboard_pusher_webhook_events_total{outcome}`: events `sent` (a 2xx answered),
    /// `failed` (every try failed) or `dropped` (the queue was full).
    pub events: IntCounterVec,
    /// `switchboard_pusher_webhook_requests_total{result}`: tries, `ok` or `error`.
    pub requests: IntCounterVec,
}

/// Every metric of one gateway.
pub struct Metrics {
    registry: Registry,
    doors: Vec<DoorMetrics>,
    disconnects: IntCounterVec,
    /// Connections closed because their outbound queue overflowed.
    pub slow_consumers: IntCounter,
    /// Upgrade requests refused, by error code.
    pub rejections: IntCounterVec,
    /// Upgrade requests refused for a missing or invalid token.
    pub auth_failures: IntCounter,
    /// Accepted sockets closed before a request was answered, by reason (`per_ip`,
    /// `node_full`: closed at once; `evicted`: the oldest idle one, to make room).
    pub pending_closed: IntCounterVec,
    /// Time from request to `101 Switching Protocols`.
    pub handshake_seconds: Histogram,
    /// Publications accepted (from clients and the API).
    pub publications: IntCounter,
    /// A publish call's time on this node: from taking the publication to the broker having
    /// it (on the memory broker that includes the local fan-out).
    pub publish_seconds: Histogram,
    /// From a publication reaching this node (taken by the memory broker, or handed over by a
    /// remote broker's link) to every local subscriber's queue holding it.
    pub delivery_seconds: Histogram,
    /// Server API calls by method and HTTP status.
    pub api_requests: IntCounterVec,
    /// Client-protocol subscribes that asked to recover, by outcome (`recovered` or
    /// `unrecovered`).
    pub recoveries: IntCounterVec,
    /// Broker calls that failed, by kind (`unavailable`, `timeout`, `protocol`).
    pub broker_errors: IntCounterVec,
    /// Channels whose subscribers were made to recover (close 3010), by cause (`gap`,
    /// `epoch`, `position_check`, `overflow`).
    pub broker_gaps: IntCounterVec,
    /// Requests refused by a node-wide bound, by limit (`channels`, `history_streams`,
    /// `presence`, `publication_size`).
    pub node_limits: IntCounterVec,
    /// Publications from the broker dropped because the node's delivery queue was full.
    pub broker_dropped: IntCounter,
    /// Log entries published (ingestion from a Redis Stream or JetStream).
    pub ingested: IntCounter,
    /// Log entries that could never be published, acknowledged and skipped.
    pub ingest_dropped: IntCounter,
    /// The backend hooks.
    pub hooks: HookMetrics,
    /// The Pusher webhooks.
    pub webhooks: WebhookMetrics,
    /// Open client-protocol connections over HTTP streaming or SSE, by transport (they are
    /// also counted under `door="protocol"` with WebSocket's).
    pub stream_connections: IntGaugeVec,
    /// Emulation requests (an HTTP-streaming or SSE client's commands), by result (`local`,
    /// `forwarded`, or the error code).
    pub emulation_requests: IntCounterVec,
    channels: IntGauge,
    subscriptions: IntGauge,
    history_streams: IntGauge,
    presence_entries: IntGauge,
    shared_poll_channels: IntGauge,
    shared_poll_keys: IntGauge,
    uptime: IntGauge,
    broker_connected: IntGauge,
    broker_round_trip: prometheus::Gauge,
    broker_reconnects: IntGauge,
    cluster_nodes: IntGauge,
    ready: IntGauge,
    connections_limit: IntGauge,
}

/// What `/metrics` reads from the node at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Channels with at least one local subscriber.
    pub channels: usize,
    /// Local subscriptions.
    pub subscriptions: usize,
    /// Channel streams the memory broker keeps (0 on a remote broker).
    pub history_streams: usize,
    /// Presence entries of this node's clients.
    pub presence_entries: usize,
    /// Shared-poll channels this node is polling (a refresh loop running).
    pub shared_poll_channels: usize,
    /// Keys this node's connections track across its shared-poll channels.
    pub shared_poll_keys: usize,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Whether the broker is reachable.
    pub broker_connected: bool,
    /// The broker's last round trip, in seconds.
    pub broker_round_trip_secs: f64,
    /// Broker reconnections since start.
    pub broker_reconnects: u64,
    /// Live nodes in the cluster, this one included.
    pub cluster_nodes: usize,
    /// What `/readyz` answers: 1 ready, 0 draining or broker unreachable.
    pub ready: bool,
    /// `server.max_connections` (0: none).
    pub connections_limit: usize,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are static and unique, so registration cannot collide.
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Panics
    /// Never with the static names used here (the prometheus constructors only fail on
    /// invalid names).
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let r = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let counter = |name: &str, help: &str| {
            register(&r, IntCounter::new(name, help).expect("valid metric"))
        };
        let gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid metric"));

        let connections = gauge_vec(
            "switchboard_connections",
            "Open WebSocket connections by door",
            &["door"],
        );
        let accepted = counter_vec(
            "switchboard_connections_accepted_total",
            "WebSocket connections accepted by door",
            &["door"],
        );
        let messages_in = counter_vec(
            "switchboard_messages_in_total",
            "Messages received from clients by door",
            &["door"],
        );
        let bytes_in = counter_vec(
            "switchboard_bytes_in_total",
            "Message bytes received from clients by door",
            &["door"],
        );
        let messages_out = counter_vec(
            "switchboard_messages_out_total",
            "Frames written to clients by door",
            &["door"],
        );
        let bytes_out = counter_vec(
            "switchboard_bytes_out_total",
            "Bytes written to clients by door",
            &["door"],
        );
        let doors = Door::ALL
            .iter()
            .map(|door| {
                let label = [door.label()];
                DoorMetrics {
                    connections: connections.with_label_values(&label),
                    accepted: accepted.with_label_values(&label),
                    messages_in: messages_in.with_label_values(&label),
                    bytes_in: bytes_in.with_label_values(&label),
                    messages_out: messages_out.with_label_values(&label),
                    bytes_out: bytes_out.with_label_values(&label),
                }
            })
            .collect();
        let handshake_seconds = register(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "switchboard_handshake_seconds",
                    "Time from upgrade request to 101 response",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ]),
            )
            .expect("valid metric"),
        );
        let webhooks = WebhookMetrics {
            events: counter_vec(
                "switchboard_pusher_webhook_events_total",
                "Pusher webhook events by outcome: sent, failed (every try failed), dropped (queue full)",
                &["outcome"],
            ),
            requests: counter_vec(
                "switchboard_pusher_webhook_requests_total",
                "Pusher webhook requests tried, by result (ok, error)",
                &["result"],
            ),
        };
        let hooks = HookMetrics {
            duration: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "switchboard_hook_duration_seconds",
                        "Time of one backend hook call, retries included, by hook",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0,
                    ]),
                    &["hook"],
                )
                .expect("valid metric"),
            ),
            calls: counter_vec(
                "switchboard_hook_calls_total",
                "Backend hook calls by hook and result (ok, error, timeout, denied, breaker_open)",
                &["hook", "result"],
            ),
            breaker_state: gauge_vec(
                "switchboard_hook_breaker_state",
                "Circuit breaker of a hook upstream: 0 closed, 1 half-open, 2 open",
                &["upstream"],
            ),
            breaker_transitions: counter_vec(
                "switchboard_hook_breaker_transitions_total",
                "Circuit breaker transitions by upstream and the state entered",
                &["upstream", "to"],
            ),
        };
        let latency = |name: &str, help: &str| {
            register(
                &r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5,
                ]))
                .expect("valid metric"),
            )
        };
        Metrics {
            hooks,
            webhooks,
            doors,
            publish_seconds: latency(
                "switchboard_publish_seconds",
                "Publish calls on this node, from taking the publication to the broker having it",
            ),
            delivery_seconds: latency(
                "switchboard_delivery_seconds",
                "From a publication reaching this node to every local subscriber's queue holding it",
            ),
            ready: gauge(
                "switchboard_ready",
                "1 when /readyz answers ready, 0 while draining or without the broker",
            ),
            connections_limit: gauge(
                "switchboard_connections_limit",
                "WebSockets this node accepts (server.max_connections; 0: no limit)",
            ),
            disconnects: counter_vec(
                "switchboard_disconnects_total",
                "Connections ended, by close code and reason",
                &["code", "reason"],
            ),
            slow_consumers: counter(
                "switchboard_slow_consumer_drops_total",
                "Connections closed because their outbound queue overflowed",
            ),
            rejections: counter_vec(
                "switchboard_handshake_rejections_total",
                "Upgrade requests refused, by error code",
                &["code"],
            ),
            auth_failures: counter(
                "switchboard_auth_failures_total",
                "Upgrade requests refused for a missing or invalid token",
            ),
            pending_closed: counter_vec(
                "switchboard_pending_closed_total",
                "HTTP connections closed before becoming WebSockets to stay within the pending bounds, by reason",
                &["reason"],
            ),
            handshake_seconds,
            publications: counter(
                "switchboard_publications_total",
                "Publications accepted from clients and the API",
            ),
            api_requests: counter_vec(
                "switchboard_api_requests_total",
                "Server API calls by method and status",
                &["method", "status"],
            ),
            recoveries: counter_vec(
                "switchboard_recoveries_total",
                "Client-protocol subscribes that asked to recover, by outcome",
                &["outcome"],
            ),
            broker_errors: counter_vec(
                "switchboard_broker_errors_total",
                "Broker calls that failed, by kind",
                &["kind"],
            ),
            broker_gaps: counter_vec(
                "switchboard_broker_gaps_total",
                "Channels whose subscribers were made to recover (close 3010), by cause",
                &["cause"],
            ),
            stream_connections: gauge_vec(
                "switchboard_stream_connections",
                "Open client-protocol connections over HTTP streaming or SSE, by transport",
                &["transport"],
            ),
            emulation_requests: counter_vec(
                "switchboard_emulation_requests_total",
                "Commands of HTTP-streaming and SSE clients posted to the emulation endpoint, by result",
                &["result"],
            ),
            node_limits: counter_vec(
                "switchboard_node_limit_refusals_total",
                "Subscribes, doors and publishes refused by a node-wide bound, by limit",
                &["limit"],
            ),
            broker_dropped: counter(
                "switchboard_broker_dropped_total",
                "Publications from the broker dropped because the delivery queue was full",
            ),
            ingested: counter(
                "switchboard_ingested_total",
                "Log entries published (ingestion from a log)",
            ),
            ingest_dropped: counter(
                "switchboard_ingest_dropped_total",
                "Log entries that could never be published, acknowledged and skipped",
            ),
            broker_connected: gauge(
                "switchboard_broker_connected",
                "1 when the broker is reachable, else 0",
            ),
            broker_round_trip: register(
                &r,
                prometheus::Gauge::new(
                    "switchboard_broker_round_trip_seconds",
                    "The broker's last measured round trip",
                )
                .expect("static metric options are valid"),
            ),
            broker_reconnects: gauge(
                "switchboard_broker_reconnects",
                "Broker reconnections since start",
            ),
            cluster_nodes: gauge(
                "switchboard_cluster_nodes",
                "Live nodes in the cluster, this one included",
            ),
            channels: gauge(
                "switchboard_channels",
                "Channels with at least one subscriber",
            ),
            subscriptions: gauge(
                "switchboard_subscriptions",
                "Subscriptions across all channels",
            ),
            history_streams: gauge(
                "switchboard_history_streams",
                "Channel streams kept by the memory broker (bound: limits.max_history_streams)",
            ),
            presence_entries: gauge(
                "switchboard_presence_entries",
                "Presence entries of this node's clients (bound: limits.max_presence_entries)",
            ),
            shared_poll_channels: gauge(
                "switchboard_shared_poll_channels",
                "Shared-poll channels this node is polling (one refresh loop each)",
            ),
            shared_poll_keys: gauge(
                "switchboard_shared_poll_keys",
                "Keys this node's connections track across its shared-poll channels",
            ),
            uptime: gauge(
                "switchboard_uptime_seconds",
                "Seconds since the gateway started",
            ),
            registry: r,
        }
    }

    /// The counters of one door.
    pub fn door(&self, door: Door) -> &DoorMetrics {
        &self.doors[door as usize]
    }

    /// Counts one ended connection. A code the client chose (reason `client_closed`) is
    /// counted as its class (`1xxx`, `3xxx`, `4xxx`) when it is not one of RFC 6455's, so a
    /// client cannot create thousands of label values.
    pub fn disconnected(&self, code: u16, reason: &str) {
        let standard = matches!(code, 1000..=1003 | 1005..=1015);
        let label = if reason == "client_closed" && !standard {
            match code {
                3000..=3999 => "3xxx".to_owned(),
                4000..=4999 => "4xxx".to_owned(),
                _ => "other".to_owned(),
            }
        } else {
            code.to_string()
        };
        self.disconnects.with_label_values(&[&label, reason]).inc();
    }

    /// Renders the text exposition, after refreshing the gauges read from the hub.
    pub fn render(&self, now: &Snapshot) -> String {
        self.channels.set(now.channels as i64);
        self.subscriptions.set(now.subscriptions as i64);
        self.history_streams.set(now.history_streams as i64);
        self.presence_entries.set(now.presence_entries as i64);
        self.shared_poll_channels
            .set(now.shared_poll_channels as i64);
        self.shared_poll_keys.set(now.shared_poll_keys as i64);
        self.uptime.set(now.uptime_secs as i64);
        self.broker_connected.set(i64::from(now.broker_connected));
        self.broker_round_trip.set(now.broker_round_trip_secs);
        self.broker_reconnects.set(now.broker_reconnects as i64);
        self.cluster_nodes.set(now.cluster_nodes as i64);
        self.ready.set(i64::from(now.ready));
        self.connections_limit.set(now.connections_limit as i64);
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_chosen_close_codes_do_not_make_new_series() {
        let metrics = Metrics::new();
        for code in 3000..3100 {
            metrics.disconnected(code, "client_closed");
        }
        metrics.disconnected(1000, "client_closed");
        metrics.disconnected(4000, "slow_consumer");
        let text = metrics.render(&Snapshot::default());
        let series = text
            .lines()
            .filter(|line| line.starts_with("switchboard_disconnects_total{"))
            .count();
        assert_eq!(series, 3, "{text}");
        assert!(text.contains("code=\"3xxx\""));
    }
}
