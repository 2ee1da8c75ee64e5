//! Test support: the real gateway in-process on 127.0.0.1 (port 0 or a given port), its HTTP
//! API, a TCP proxy that can cut its connections, and an event watcher with bounded waits.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use switchboard::config::Secret;
use switchboard::{CancellationToken, Config, Gateway};
use switchboard_client::{Backoff, Client, Event, Events};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const SECRET: &str = "client-test-secret-0123456789-abcdef";
pub const API_KEY: &str = "client-test-api-key";
/// The longest any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<()>,
}

/// `--dev` rules (anonymous connect, subscribe, publish, presence; history 100 / 5 min with
/// recovery in the default namespace), with a token secret and an API key.
pub fn dev_config(listen: SocketAddr) -> Config {
    let mut config = Config::default();
    config.server.listen = listen;
    config.server.dev = true;
    config.token.hmac_secret = Secret(SECRET.into());
    config.api.key = Secret(API_KEY.into());
    config
}

pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub async fn start(config: Config) -> TestServer {
    let gateway = Gateway::bind(config).await.expect("gateway binds");
    let addr = gateway.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(gateway.run(shutdown.clone()));
    TestServer {
        addr,
        shutdown,
        handle,
    }
}

impl TestServer {
    pub fn client_url(&self) -> String {
        client_url(self.addr)
    }

    /// `POST /api/publish`; returns the HTTP status and body.
    pub async fn publish(&self, channel: &str, data: Value) -> (u16, Value) {
        api(
            self.addr,
            "publish",
            serde_json::json!({"channel": channel, "data": data}),
        )
        .await
    }

    /// Cancels the gateway and waits until it has stopped (its port is free again).
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("gateway stops in time")
            .unwrap();
    }
}

pub fn client_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/connection/websocket")
}

/// Short delays so reconnect tests do not wait long.
pub fn quick_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(10), Duration::from_millis(200))
}

/// Calls a server API method with the key; returns status and JSON body.
pub async fn api(addr: SocketAddr, method: &str, body: Value) -> (u16, Value) {
    let body = body.to_string();
    let request = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nX-API-Key: {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("API answers in time");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A client's events, with every publication seen kept in order.
pub struct Watch {
    events: Events,
    /// `(channel, offset, data)` of every `Event::Publication`, in delivery order.
    pub publications: Vec<(String, Option<u64>, Value)>,
    /// Every event, in order.
    pub log: Vec<Event>,
}

impl Watch {
    pub fn new(events: Events) -> Watch {
        Watch {
            events,
            publications: Vec::new(),
            log: Vec::new(),
        }
    }

    /// The next event (recorded), failing the test after [`WAIT`].
    pub async fn next(&mut self, what: &str) -> Event {
        let event = tokio::time::timeout(WAIT, self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; events: {:#?}", self.log))
            .unwrap_or_else(|| panic!("events ended waiting for {what}; events: {:#?}", self.log));
        if let Event::Publication {
            channel,
            offset,
            data,
            ..
        } = &event
        {
            self.publications
                .push((channel.clone(), *offset, data.clone()));
        }
        self.log.push(event.clone());
        event
    }

    /// Reads events until one matches; returns it.
    pub async fn until(&mut self, what: &str, mut matches: impl FnMut(&Event) -> bool) -> Event {
        loop {
            let event = self.next(what).await;
            if matches(&event) {
                return event;
            }
        }
    }

    /// Reads events until `count` publications have been seen.
    pub async fn until_publications(&mut self, count: usize) {
        while self.publications.len() < count {
            self.next(&format!("publication #{}", self.publications.len() + 1))
                .await;
        }
    }

    /// Reads events until the stream ends (the client stopped for good).
    pub async fn until_end(&mut self) {
        loop {
            match tokio::time::timeout(WAIT, self.events.recv()).await {
                Ok(Some(event)) => self.log.push(event),
                Ok(None) => return,
                Err(_) => panic!("events did not end; events: {:#?}", self.log),
            }
        }
    }
}

/// Waits for `Connected`; returns the client id.
pub async fn connected(watch: &mut Watch) -> String {
    match watch
        .until("Connected", |e| matches!(e, Event::Connected { .. }))
        .await
    {
        Event::Connected { client, .. } => client,
        _ => unreachable!(),
    }
}

/// Waits for `Subscribed` on `channel`; returns `(recovered, was_recovering, recoverable)`.
pub async fn subscribed(watch: &mut Watch, channel: &str) -> (bool, bool, bool) {
    let event = watch
        .until(
            &format!("Subscribed to {channel}"),
            |e| matches!(e, Event::Subscribed { channel: c, .. } if c == channel),
        )
        .await;
    match event {
        Event::Subscribed {
            recovered,
            was_recovering,
            recoverable,
            ..
        } => (recovered, was_recovering, recoverable),
        _ => unreachable!(),
    }
}

/// Closes the client and waits for its event stream to end.
pub async fn close(client: Client, mut watch: Watch) {
    tokio::time::timeout(WAIT, client.close())
        .await
        .expect("client closes in time")
        .unwrap();
    watch.until_end().await;
}

/// A TCP proxy in front of one address that can cut every connection it carries and refuse
/// new ones (accept, then drop) until unblocked.
pub struct Proxy {
    pub addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let blocked = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let blocked = Arc::clone(&blocked);
            let links = Arc::clone(&links);
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if blocked.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let link = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    let mut links = links.lock().unwrap();
                    links.retain(|l| !l.is_finished());
                    links.push(link);
                }
            }
        });
        Proxy {
            addr,
            blocked,
            links,
            accept,
        }
    }

    /// Drops every carried connection (both sides see the TCP connection end with no
    /// WebSocket close) and refuses new ones until [`Proxy::unblock`].
    pub fn cut_and_block(&self) {
        self.blocked.store(true, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    /// Drops every carried connection; new ones go through at once.
    pub fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    pub fn unblock(&self) {
        self.blocked.store(false, Ordering::SeqCst);
    }

    pub fn stop(self) {
        self.accept.abort();
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}
