//! Test-only: the real gateway (the `switchboard` library, as the workspace's other end-to-end
//! tests run it) on 127.0.0.1:0, on a multi-threaded runtime of its own in its own thread, so
//! the bench under test keeps its current-thread runtime and `LocalSet` as on the command line.
//! The test server in `testserver` is a stand-in for the plain doors; the client protocol needs
//! this one. Dropping a [`Gateway`] cancels it and waits for its thread.

use std::net::SocketAddr;
use std::time::Duration;
use switchboard::config::Secret;
use switchboard::{CancellationToken, Config};

/// HS256 secret of the test gateways.
pub const SECRET: &str = "bench-test-secret-0123456789-abcdef";

/// A running gateway.
pub struct Gateway {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A configuration for the tests: `dev` (anonymous clients allowed) or tokens required (HS256
/// with [`SECRET`]), no inbound rate limit (as `scripts/compare` runs it), and a 100 ms
/// heartbeat, so a client that does not answer pings is closed (3012) within a run.
pub fn config(dev: bool) -> Config {
    let mut config = Config::default();
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.dev = dev;
    config.server.heartbeat_interval = Duration::from_millis(100);
    config.server.shutdown_drain = Duration::from_secs(1);
    config.token.hmac_secret = Secret(SECRET.into());
    config.limits.client_message_rate = 0;
    config
}

/// Starts a gateway with `config`.
pub fn start(config: Config) -> Gateway {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("gateway runtime");
        rt.block_on(async move {
            let gateway = switchboard::Gateway::bind(config)
                .await
                .expect("gateway binds");
            let addr = gateway.local_addr().expect("gateway address");
            let shutdown = CancellationToken::new();
            tx.send((addr, shutdown.clone())).expect("test waits");
            gateway.run(shutdown).await;
        });
    });
    let (addr, shutdown) = rx.recv().expect("gateway started");
    Gateway {
        addr,
        shutdown,
        thread: Some(thread),
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
