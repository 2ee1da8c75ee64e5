//! Admission before a WebSocket exists: the node-wide connection slots reserved at the
//! upgrade check ([`NodeSlots`]), and the HTTP connections that have not become WebSockets
//! ([`PendingConns`]), bounded per node and per client IP.
//!
//! A slot is taken atomically when the upgrade is checked, not counted after it completes,
//! so concurrent handshakes cannot all pass a limit that only one of them fits under; a
//! failed upgrade drops its slot. A pending connection is every accepted socket until it is
//! upgraded or closed (request in flight, idle keep-alive, or headers still arriving). Over
//! the per-IP bound a new socket is closed at once; over the node bound the oldest pending
//! connection that is between requests is closed to make room, so a flood of silent sockets
//! cannot lock out the API, the probes or clients that send their request promptly.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The node's WebSocket slots (`server.max_connections`).
#[derive(Default)]
pub struct NodeSlots {
    used: AtomicUsize,
}

/// One reserved slot; dropping it gives the slot back.
pub struct NodeSlot {
    slots: Arc<NodeSlots>,
}

impl NodeSlots {
    /// Reserves a slot unless `max` are taken (0 = no limit).
    pub fn reserve(self: &Arc<Self>, max: usize) -> Option<NodeSlot> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (max == 0 || used < max).then_some(used + 1)
            })
            .ok()?;
        Some(NodeSlot {
            slots: Arc::clone(self),
        })
    }

    /// Slots taken (open WebSockets and upgrades under way).
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for NodeSlot {
    fn drop(&mut self) {
        self.slots.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why an accepted socket was closed at once, or another one closed for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingOutcome {
    /// Its IP already holds `max_pending_handshakes_per_ip` pending connections.
    PerIpFull,
    /// The node holds `max_pending_handshakes` and every one of them is inside a request.
    NodeFull,
}

impl PendingOutcome {
    /// Label in `switchboard_pending_closed_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            PendingOutcome::PerIpFull => "per_ip",
            PendingOutcome::NodeFull => "node_full",
        }
    }
}

/// HTTP connections that are not WebSockets (yet).
pub struct PendingConns {
    max: usize,
    max_per_ip: usize,
    inner: Mutex<PendingInner>,
}

#[derive(Default)]
struct PendingInner {
    /// By accept order, so the oldest comes first.
    entries: BTreeMap<u64, Entry>,
    per_ip: HashMap<IpAddr, usize>,
    next: u64,
}

struct Entry {
    /// The key it counts under per IP; `None` for a trusted proxy.
    key: Option<IpAddr>,
    shared: Arc<Shared>,
}

/// What the registry and the connection's task both see (one allocation per connection).
#[derive(Default)]
struct Shared {
    /// Inside a request, or answered 101: never closed to make room.
    busy: AtomicBool,
    /// Told once when the connection is chosen to close; the permit is kept until it looks.
    evict: Notify,
}

/// One pending connection's place; dropping it (upgrade done, or socket closed) frees it.
pub struct PendingPermit {
    conns: Arc<PendingConns>,
    id: u64,
    shared: Arc<Shared>,
}

/// Marks one pending connection busy or idle, from inside its HTTP service.
#[derive(Clone)]
pub struct BusyFlag(Arc<Shared>, Arc<PendingConns>, u64);

impl BusyFlag {
    /// Inside a request (or upgrading): never closed to make room; or between requests again.
    pub fn set(&self, busy: bool) {
        self.0.busy.store(busy, Ordering::Release);
    }

    /// The connection became a client connection without leaving HTTP (an HTTP-streaming or
    /// SSE response): it gives its pending place back, as an upgraded one does, and is never
    /// chosen to make room (the node's connection limits count it from now on).
    pub fn leave(&self) {
        self.set(true);
        let mut inner = self.1.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.remove(self.2);
    }
}

impl PendingConns {
    /// Bounds of `max` per node and `max_per_ip` per client key (0 = no limit).
    pub fn new(max: usize, max_per_ip: usize) -> PendingConns {
        PendingConns {
            max,
            max_per_ip,
            inner: Mutex::new(PendingInner::default()),
        }
    }

    /// Admits a newly accepted socket counted under `key` (`None`: exempt from the per-IP
    /// bound, for a trusted proxy). At the node bound, the oldest pending connection that is
    /// not inside a request is told to close and gives its place; `Ok` carries whether one
    /// was.
    ///
    /// # Errors
    /// Which bound refused the socket; the caller closes it.
    pub fn admit(
        self: &Arc<Self>,
        key: Option<IpAddr>,
    ) -> Result<(PendingPermit, bool), PendingOutcome> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = key {
            let held = inner.per_ip.get(&key).copied().unwrap_or(0);
            if self.max_per_ip != 0 && held >= self.max_per_ip {
                return Err(PendingOutcome::PerIpFull);
            }
        }
        let mut evicted = false;
        if self.max != 0 && inner.entries.len() >= self.max {
            let oldest_idle = inner
                .entries
                .iter()
                .find(|(_, entry)| !entry.shared.busy.load(Ordering::Acquire))
                .map(|(id, _)| *id);
            let Some(id) = oldest_idle else {
                return Err(PendingOutcome::NodeFull);
            };
            if let Some(entry) = inner.remove(id) {
                entry.shared.evict.notify_one();
                evicted = true;
            }
        }
        let id = inner.next;
        inner.next += 1;
        if let Some(key) = key {
            *inner.per_ip.entry(key).or_insert(0) += 1;
        }
        let shared = Arc::new(Shared::default());
        inner.entries.insert(
            id,
            Entry {
                key,
                shared: Arc::clone(&shared),
            },
        );
        Ok((
            PendingPermit {
                conns: Arc::clone(self),
                id,
                shared,
            },
            evicted,
        ))
    }

    /// Connections pending now.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PendingInner {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if let Some(key) = entry.key {
            if let Some(count) = self.per_ip.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    self.per_ip.remove(&key);
                }
            }
        }
        Some(entry)
    }
}

impl PendingPermit {
    /// The flag its HTTP service sets while a request is answered.
    pub fn busy_flag(&self) -> BusyFlag {
        BusyFlag(Arc::clone(&self.shared), Arc::clone(&self.conns), self.id)
    }

    /// Completes when this connection was chosen to close to make room for a newer one.
    pub async fn evicted(&self) {
        self.shared.evict.notified().await
    }
}

impl Drop for PendingPermit {
    fn drop(&mut self) {
        let mut inner = self.conns.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Absent when it was evicted: its place was given away then.
        inner.remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures_util::FutureExt;

    fn was_evicted(permit: &PendingPermit) -> bool {
        permit.evicted().now_or_never().is_some()
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn node_slots_are_exact_and_given_back() {
        let slots = Arc::new(NodeSlots::default());
        let held: Vec<_> = (0..3).map(|_| slots.reserve(3).unwrap()).collect();
        assert!(slots.reserve(3).is_none());
        drop(held);
        assert_eq!(slots.used(), 0);
        assert!(slots.reserve(3).is_some());
        assert!(slots.reserve(0).is_some(), "0 means no limit");
    }

    #[test]
    fn an_ip_over_its_bound_is_refused_and_trusted_proxies_are_not_counted() {
        let conns = Arc::new(PendingConns::new(0, 2));
        let _a = conns.admit(ip(1)).unwrap();
        let b = conns.admit(ip(1)).unwrap();
        assert_eq!(conns.admit(ip(1)).err(), Some(PendingOutcome::PerIpFull));
        assert!(conns.admit(ip(2)).is_ok());
        let proxied: Vec<_> = (0..5).map(|_| conns.admit(None).unwrap()).collect();
        assert_eq!(proxied.len(), 5);
        drop(b);
        assert!(conns.admit(ip(1)).is_ok());
    }

    #[test]
    fn at_the_node_bound_the_oldest_idle_connection_makes_room() {
        let conns = Arc::new(PendingConns::new(2, 0));
        let (first, _) = conns.admit(ip(1)).unwrap();
        let (second, _) = conns.admit(ip(2)).unwrap();
        first.busy_flag().set(true);
        let (third, evicted) = conns.admit(ip(3)).unwrap();
        assert!(evicted);
        assert!(was_evicted(&second), "the oldest idle one goes");
        assert!(!was_evicted(&first), "one inside a request stays");
        assert_eq!(conns.len(), 2);
        drop(second);
        assert_eq!(conns.len(), 2, "an evicted permit frees nothing twice");
        third.busy_flag().set(true);
        assert_eq!(conns.admit(ip(4)).err(), Some(PendingOutcome::NodeFull));
        drop(first);
        assert!(conns.admit(ip(4)).is_ok());
    }
}
