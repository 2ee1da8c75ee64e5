//! What every task of one gateway shares: the configuration as resolved, the node (hub,
//! connections, broker), and the checks made at the door (tokens, origins, trusted proxies,
//! node and per-IP limits), and the admin UI's logins.
//! The doors and the API read it; it imports nothing above the node.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenVerifier;
use crate::config::{Config, Resolved};
use crate::conn::{IpLimits, NodeSlots, PendingConns};
use crate::hooks::Hooks;
use crate::login::Logins;
use crate::node::Node;
use crate::origin::OriginPolicy;
use crate::peer::TrustedProxies;
use crate::poll::SharedPolls;

/// State shared by every task of one gateway.
pub(crate) struct State {
    pub(crate) config: Config,
    pub(crate) resolved: Resolved,
    pub(crate) node: Arc<Node>,
    pub(crate) ip_limits: Arc<IpLimits>,
    /// WebSocket slots, reserved at the upgrade check (`server.max_connections`).
    pub(crate) slots: Arc<NodeSlots>,
    /// Accepted sockets that are not WebSockets (`server.max_pending_handshakes*`).
    pub(crate) pending: Arc<PendingConns>,
    pub(crate) proxies: TrustedProxies,
    pub(crate) verifier: TokenVerifier,
    pub(crate) origins: OriginPolicy,
    /// The admin UI's sessions and login bound (unused while `admin.enabled` is off).
    pub(crate) logins: Logins,
    /// The backend hooks (and shared-poll backends), when any is configured.
    pub(crate) hooks: Option<Arc<Hooks>>,
    /// Shared-poll channels this node's connections track keys of.
    pub(crate) polls: Arc<SharedPolls>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) started: Instant,
}

impl State {
    /// Milliseconds since the gateway started (the sweep's clock).
    pub(crate) fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Channel rules.
    pub(crate) fn channels(&self) -> &crate::channels::Namespaces {
        &self.node.channels
    }

    /// The key a client address is counted under for per-IP limits.
    pub(crate) fn limit_key(&self, ip: std::net::IpAddr) -> std::net::IpAddr {
        crate::peer::limit_key(ip, self.config.server.ipv6_prefix)
    }

    /// Whether shutdown has begun.
    pub(crate) fn draining(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Whether the node can serve: not draining, and its broker reachable.
    pub(crate) fn ready(&self) -> bool {
        !self.draining() && self.node.broker_health().connected
    }
}
