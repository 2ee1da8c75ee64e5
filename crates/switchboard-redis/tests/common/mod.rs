//! A private `redis-server` per test: started on a free loopback port with no persistence,
//! stopped (by pid) when dropped, and able to be killed, restarted on the same port, paused
//! (SIGSTOP) and resumed. Never touches port 6379.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::broker::conformance::{Event, Recorder};
use switchboard::broker::{Broker, BrokerEvents};
use switchboard_redis::{RedisBroker, RedisSettings};

/// A `redis-server` this test owns.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    paused: bool,
    /// Arguments before the common ones (a Sentinel's config file and `--sentinel`).
    leading: Vec<String>,
    /// A file to remove on drop (a Sentinel's config).
    scratch: Option<std::path::PathBuf>,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    let port = listener.local_addr().expect("local addr").port();
    assert_ne!(port, 6379);
    port
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

impl RedisServer {
    /// A started server, or `None` (after a loud message) when `redis-server` is missing and
    /// `CI` is unset.
    ///
    /// # Panics
    /// When the server does not start, or is missing under CI.
    pub fn start() -> Option<RedisServer> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is required under CI"
            );
            eprintln!("!!! SKIPPED: redis-server is not installed; Redis tests did not run !!!");
            return None;
        }
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            paused: false,
            leading: Vec::new(),
            scratch: None,
        };
        server.spawn();
        Some(server)
    }

    /// A Sentinel watching `master` under the name `name`.
    ///
    /// # Panics
    /// When it does not start.
    pub fn sentinel(master: &RedisServer, name: &str) -> RedisServer {
        let port = free_port();
        // Sentinel rewrites its config file, so it gets its own.
        let path = std::env::temp_dir().join(format!("switchboard-sentinel-{port}.conf"));
        let config = format!("sentinel monitor {name} 127.0.0.1 {} 1\n", master.port);
        std::fs::write(&path, config).expect("write the sentinel config");
        let mut server = RedisServer {
            child: None,
            port,
            paused: false,
            leading: vec![path.display().to_string(), "--sentinel".to_owned()],
            scratch: Some(path),
        };
        server.spawn();
        server
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.leading)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !answers_ping(self.port) {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (its data is gone: no persistence).
    pub fn kill(&mut self) {
        self.resume();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts an empty one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {signal}");
        }
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing.
    pub fn pause(&mut self) {
        self.signal("-STOP");
        self.paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        if self.paused {
            self.signal("-CONT");
            self.paused = false;
        }
    }

    /// Runs one command on a fresh connection (bounded).
    pub async fn command(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url()).expect("url");
        let run = async {
            let mut connection = client.get_multiplexed_async_connection().await?;
            let mut command = redis::cmd(args[0]);
            for arg in &args[1..] {
                command.arg(*arg);
            }
            command.query_async::<redis::Value>(&mut connection).await
        };
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .unwrap_or_else(|_| panic!("{args:?} timed out"))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// How many keys the server holds.
    pub async fn dbsize(&self) -> i64 {
        match self.command(&["DBSIZE"]).await {
            redis::Value::Int(n) => n,
            other => panic!("DBSIZE: {other:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(path) = self.scratch.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Settings with short bounds, so faults show within a second or two.
pub fn quick_settings(url: &str, prefix: &str) -> RedisSettings {
    let mut settings = RedisSettings::from_url(url, prefix).expect("settings");
    settings.pubsub_connections = 2;
    settings.call_timeout = Duration::from_millis(500);
    settings.connect_timeout = Duration::from_millis(500);
    settings.probe_interval = Duration::from_millis(200);
    settings.probe_timeout = Duration::from_millis(600);
    settings.backoff_min = Duration::from_millis(20);
    settings.backoff_max = Duration::from_millis(300);
    settings
}

/// A started broker with its recorder.
pub async fn started(url: &str, prefix: &str) -> (RedisBroker, Arc<Recorder>) {
    let broker = RedisBroker::new(quick_settings(url, prefix)).expect("broker");
    let events = Recorder::new();
    broker
        .start(Arc::clone(&events) as Arc<dyn BrokerEvents>)
        .await
        .expect("start");
    (broker, events)
}

/// Runs `attempt` every 50 ms until it succeeds, up to `within`.
///
/// # Panics
/// When it never succeeds in time.
pub async fn until_ok<T, E: std::fmt::Debug, F, Fut>(what: &str, within: Duration, attempt: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what}: still failing: {error:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How many times `event` was recorded.
pub fn count(events: &Recorder, event: &Event) -> usize {
    events.count(event)
}
