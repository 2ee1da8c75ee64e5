//! A private Redis Cluster per test: three masters (no replicas) on free loopback ports whose
//! cluster-bus ports (+10000) are free too, in a scratch directory, joined by
//! `redis-cli --cluster create`, and ready once every node says `cluster_state:ok`. A master
//! can be killed and restarted on its port (it keeps its node id and slots from its
//! `nodes-<port>.conf`, not its data). Every process is stopped by pid on drop; never 6379.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the cluster may take to form or to heal.
const FORMING: Duration = Duration::from_secs(30);
/// How long a node may take to declare a silent peer failed.
pub const NODE_TIMEOUT_MS: u64 = 1000;

struct Node {
    port: u16,
    child: Option<Child>,
}

/// A Redis Cluster this test owns.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

/// A free loopback port whose cluster-bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
        let port = listener.local_addr().expect("local addr").port();
        if port == 6379 || port > 55_000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn installed() -> bool {
    let has = |tool: &str| Command::new(tool).arg("--version").output().is_ok();
    has("redis-server") && has("redis-cli")
}

impl RedisCluster {
    /// A formed three-master cluster, or `None` (after a loud message) when Redis is missing
    /// and `CI` is unset.
    ///
    /// # Panics
    /// When the cluster does not form in time, or Redis is missing under CI.
    pub fn start() -> Option<RedisCluster> {
        if !installed() {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server and redis-cli are required under CI"
            );
            eprintln!(
                "!!! SKIPPED: redis-server is not installed; Redis Cluster tests did not run !!!"
            );
            return None;
        }
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let port = free_cluster_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let dir = std::env::temp_dir().join(format!(
            "switchboard-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir).expect("create the cluster's scratch dir");
        let mut cluster = RedisCluster {
            nodes: ports
                .into_iter()
                .map(|port| Node { port, child: None })
                .collect(),
            dir,
        };
        for index in 0..cluster.nodes.len() {
            cluster.spawn(index);
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let mut create = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .arg("--cluster-yes")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-cli --cluster create");
        let deadline = Instant::now() + FORMING;
        loop {
            if let Some(status) = create.try_wait().expect("wait for redis-cli") {
                assert!(status.success(), "redis-cli --cluster create failed");
                break;
            }
            if Instant::now() > deadline {
                let _ = create.kill();
                let _ = create.wait();
                panic!("redis-cli --cluster create did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster.wait_ok();
        Some(cluster)
    }

    fn spawn(&mut self, index: usize) {
        let port = self.nodes[index].port;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.nodes[index].child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_command(index, &["PING"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every node says `cluster_state:ok`.
    ///
    /// # Panics
    /// When the cluster is not ok in time.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + FORMING;
        loop {
            let ok = (0..self.nodes.len()).all(|index| {
                matches!(self.try_command(index, &["CLUSTER", "INFO"]),
                    Ok(redis::Value::BulkString(info))
                        if String::from_utf8_lossy(&info).contains("cluster_state:ok"))
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    fn try_command(&self, index: usize, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let url = format!("redis://127.0.0.1:{}/", self.nodes[index].port);
        let client = redis::Client::open(url)?;
        let mut connection = client.get_connection_with_timeout(Duration::from_secs(1))?;
        connection.set_read_timeout(Some(Duration::from_secs(2)))?;
        connection.set_write_timeout(Some(Duration::from_secs(2)))?;
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query(&mut connection)
    }

    /// Runs one command on node `index` only (bounded).
    ///
    /// # Panics
    /// When the command fails.
    pub fn command(&self, index: usize, args: &[&str]) -> redis::Value {
        self.try_command(index, args)
            .unwrap_or_else(|e| panic!("node {index}: {args:?}: {e}"))
    }

    /// The names node `index` holds that match `pattern`.
    pub fn keys(&self, index: usize, pattern: &str) -> Vec<String> {
        match self.command(index, &["KEYS", pattern]) {
            redis::Value::Array(keys) => keys
                .into_iter()
                .filter_map(|key| match key {
                    redis::Value::BulkString(key) => String::from_utf8(key).ok(),
                    _ => None,
                })
                .collect(),
            other => panic!("KEYS: {other:?}"),
        }
    }

    /// The node (index) that owns `key`'s slot.
    pub fn owner(&self, key: &str) -> usize {
        let slot = match self.command(0, &["CLUSTER", "KEYSLOT", key]) {
            redis::Value::Int(slot) => slot,
            other => panic!("CLUSTER KEYSLOT: {other:?}"),
        };
        // Any other node answers MOVED for a key of a slot it does not own.
        let counted = (0..self.nodes.len()).find(|&index| {
            matches!(
                self.try_command(index, &["EXISTS", key]),
                Ok(redis::Value::Int(_))
            )
        });
        counted.unwrap_or_else(|| panic!("no node owns slot {slot}"))
    }

    fn text(&self, index: usize, args: &[&str]) -> String {
        match self.command(index, args) {
            redis::Value::BulkString(text) => String::from_utf8_lossy(&text).into_owned(),
            redis::Value::SimpleString(text) => text,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    /// Moves `key`'s slot, with its keys, from its owner to node `to` (what a resharding does
    /// slot by slot: importing/migrating, MIGRATE, then the new owner announced everywhere).
    pub fn move_slot(&self, key: &str, to: usize) {
        let from = self.owner(key);
        assert_ne!(from, to, "{key} is on node {to} already");
        let slot = match self.command(from, &["CLUSTER", "KEYSLOT", key]) {
            redis::Value::Int(slot) => slot.to_string(),
            other => panic!("CLUSTER KEYSLOT: {other:?}"),
        };
        let (from_id, to_id) = (
            self.text(from, &["CLUSTER", "MYID"]),
            self.text(to, &["CLUSTER", "MYID"]),
        );
        self.command(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        self.command(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        let keys = match self.command(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]) {
            redis::Value::Array(keys) => keys,
            other => panic!("GETKEYSINSLOT: {other:?}"),
        };
        let port = self.nodes[to].port.to_string();
        for key in keys {
            let redis::Value::BulkString(key) = key else {
                panic!("a key: {key:?}");
            };
            let key = String::from_utf8_lossy(&key).into_owned();
            self.command(from, &["MIGRATE", "127.0.0.1", &port, &key, "0", "5000"]);
        }
        for index in [to, from] {
            self.command(index, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        }
        for index in 0..self.nodes.len() {
            if index != to && index != from {
                self.command(index, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
            }
        }
        self.wait_ok();
    }

    /// Kills node `index` (its data is gone: no persistence).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `index` again on its port; it rejoins with its node id and slots.
    pub fn restart(&mut self, index: usize) {
        self.kill(index);
        self.spawn(index);
        self.wait_ok();
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
