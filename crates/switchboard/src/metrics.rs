//! Prometheus metrics, served as text at `/metrics`.
//!
//! Each gateway owns its own registry (tests run several in one process). Hot-path counters are
//! bumped once per write batch, not once per delivery, and gauges that the hub already knows
//! (channels, subscriptions) are read at scrape time rather than kept twice.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::door::Door;

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
    /// Time from request to `101 Switching Protocols`.
    pub handshake_seconds: Histogram,
    /// Publications accepted (from clients and the API).
    pub publications: IntCounter,
    /// Server API calls by method and HTTP status.
    pub api_requests: IntCounterVec,
    /// Client-protocol subscribes that asked to recover, by outcome (`recovered` or
    /// `unrecovered`).
    pub recoveries: IntCounterVec,
    channels: IntGauge,
    subscriptions: IntGauge,
    uptime: IntGauge,
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
        Metrics {
            doors,
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
            channels: gauge(
                "switchboard_channels",
                "Channels with at least one subscriber",
            ),
            subscriptions: gauge(
                "switchboard_subscriptions",
                "Subscriptions across all channels",
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

    /// Counts one ended connection.
    pub fn disconnected(&self, code: u16, reason: &str) {
        self.disconnects
            .with_label_values(&[&code.to_string(), reason])
            .inc();
    }

    /// Renders the text exposition, after refreshing the gauges read from the hub.
    pub fn render(&self, channels: usize, subscriptions: usize, uptime_secs: u64) -> String {
        self.channels.set(channels as i64);
        self.subscriptions.set(subscriptions as i64);
        self.uptime.set(uptime_secs as i64);
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
