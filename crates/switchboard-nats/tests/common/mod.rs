//! A nats-server of the test's own: started with JetStream on a free loopback port and a
//! fresh store directory, stopped by its pid when dropped, plus the brokers that use it.
//!
//! A test skips (loudly) when `nats-server` is not installed and `CI` is unset; in CI a
//! missing server fails the test.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::config::{NatsConfig, Secret};
use switchboard_nats::{NatsBroker, NatsOptions};

/// How long a server has to start accepting connections.
const START: Duration = Duration::from_secs(10);

/// A running nats-server.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: PathBuf,
}

fn free_port() -> u16 {
    // Bound and released at once: the port is free unless someone takes it in between.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn binary() -> Option<PathBuf> {
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|path| path.exists())
}

impl NatsServer {
    /// A new server, or `None` (with a loud message) when nats-server is absent outside CI.
    pub fn start() -> Option<NatsServer> {
        let Some(_) = binary() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "nats-server is not installed, and CI must run the NATS tests"
            );
            eprintln!("SKIPPED: nats-server is not installed (CI is unset)");
            return None;
        };
        let store = std::env::temp_dir().join(format!("sb-nats-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&store).unwrap();
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store,
        };
        server.spawn();
        Some(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(binary().unwrap())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().to_string()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Freezes the process (it keeps its sockets but answers nothing).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen process go on.
    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // A paused server cannot die of SIGKILL any later than now, but make sure.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Options that make failures quick to see in tests.
pub fn quick() -> NatsOptions {
    NatsOptions {
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(5),
        ping_interval: Duration::from_secs(1),
        history_max_age: Duration::from_secs(3600),
    }
}

/// A broker of `server` under `prefix`.
pub fn broker(url: &str, prefix: &str) -> Arc<NatsBroker> {
    let config = NatsConfig {
        url: Secret(url.to_owned()),
        prefix: prefix.to_owned(),
    };
    Arc::new(NatsBroker::with_options(&config, quick()))
}
