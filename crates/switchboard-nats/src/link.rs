//! The one client connection a node keeps to NATS: connecting with backoff and jitter, the
//! client's connection events turned into `link_lost`/`link_restored`, and what `health()`
//! reports (state, last round trip, reconnections).
//!
//! async-nats reconnects by itself and sends every live subscription again on the new
//! connection. A restored link is reported only after a round trip on the new connection has
//! come back, so the server has processed those subscriptions by then, as the contract's
//! `link_restored` promises.
//!
//! # Round trips
//! async-nats's `flush` only empties the socket's write buffer; it says nothing about the
//! server. So the link keeps an [`Echo`]: a subscription to an inbox of its own, and a
//! [`Echo::round_trip`] publishes to it and waits for the message to come back. The server
//! handles one connection's messages in order, so once it is back every publish and
//! subscription sent before it has been processed. That is the receipt for core publishes,
//! subscribes and unsubscribes, and what `round_trip` in `health()` measures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, ServerAddr, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use switchboard::broker::{BrokerError, BrokerEvents, BrokerHealth};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::{protocol, unavailable};

/// The longest pause between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the link's tasks share with `health()`.
#[derive(Default)]
pub struct LinkState {
    /// Whether a loss was reported and no restoration since.
    lost: AtomicBool,
    /// The last measured round trip.
    round_trip: Mutex<Option<Duration>>,
}

/// Round trips through the server on the link's own inbox.
#[derive(Clone)]
pub struct Echo {
    client: Client,
    inbox: Arc<str>,
    next: Arc<AtomicU64>,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>,
}

/// Takes a round trip's waiter back out when the caller gives up (its deadline passed).
struct Waiting<'a> {
    echo: &'a Echo,
    token: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.echo.waiting).remove(&self.token);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one map or slot operation: a panic cannot leave it half done.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Echo {
    /// Subscribes the inbox that round trips come back on.
    async fn start(client: Client) -> Result<(Echo, Subscriber), BrokerError> {
        let inbox: Arc<str> = client.new_inbox().into();
        let subscriber = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| unavailable("subscribe the echo inbox", e))?;
        let echo = Echo {
            client,
            inbox,
            next: Arc::new(AtomicU64::new(0)),
            waiting: Arc::new(Mutex::new(HashMap::new())),
        };
        Ok((echo, subscriber))
    }

    /// Hands every message that came back to its waiter.
    async fn run(self, mut subscriber: Subscriber) {
        while let Some(message) = subscriber.next().await {
            let token = message
                .subject
                .rsplit('.')
                .next()
                .and_then(|token| token.parse::<u64>().ok());
            if let Some(waiter) = token.and_then(|token| lock(&self.waiting).remove(&token)) {
                let _ = waiter.send(());
            }
        }
    }

    /// Waits until the server has processed everything this connection sent before.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the connection failed; the caller's deadline bounds
    /// the wait.
    pub async fn round_trip(&self) -> Result<(), BrokerError> {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(token, tx);
        let _waiting = Waiting { echo: self, token };
        self.client
            .publish(format!("{}.{token}", self.inbox), Bytes::new())
            .await
            .map_err(|e| unavailable("round trip", e))?;
        self.client
            .flush()
            .await
            .map_err(|e| unavailable("round trip", e))?;
        rx.await
            .map_err(|_| BrokerError::Unavailable("nats: link closed".to_owned()))
    }
}

/// The connection and the tasks that watch it.
pub struct Link {
    /// The client (cheap to clone; every clone shares the one connection).
    pub client: Client,
    echo: Echo,
    state: Arc<LinkState>,
    tasks: Vec<JoinHandle<()>>,
}

/// Every server in `url`: one `nats://host:port`, or a comma list of them.
///
/// # Errors
/// [`BrokerError::Protocol`] naming the first address that does not parse.
pub fn servers(url: &str) -> Result<Vec<ServerAddr>, BrokerError> {
    url.split(',')
        .map(str::trim)
        .filter(|server| !server.is_empty())
        .map(|server| {
            server
                .parse::<ServerAddr>()
                .map_err(|e| protocol("server address", e))
        })
        .collect()
}

/// Exponential backoff from 50 ms to [`MAX_BACKOFF`], with up to half of it added at random
/// so that the nodes of a cluster do not reconnect in step.
fn backoff(attempts: usize) -> Duration {
    let exponent = u32::try_from(attempts.min(16)).unwrap_or(16);
    let base = Duration::from_millis(50)
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(MAX_BACKOFF);
    base + base.mul_f64(fastrand::f64() / 2.0)
}

impl Link {
    /// Connects to `servers` and starts reporting to `events`. Returns once connected, or
    /// after `connect_timeout` with the client still trying in the background.
    ///
    /// # Errors
    /// The outer error: options the client cannot use (no link). The inner one: the first
    /// connection did not come up in time; the link is returned all the same and keeps
    /// reconnecting.
    pub async fn connect(
        servers: Vec<ServerAddr>,
        events: Arc<dyn BrokerEvents>,
        connect_timeout: Duration,
        request_timeout: Duration,
        ping_interval: Duration,
    ) -> Result<(Link, Result<(), BrokerError>), BrokerError> {
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let options = ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(backoff)
            .connection_timeout(connect_timeout)
            // Our own deadline (crate::error::bounded) ends every call first; the client's is
            // a backstop.
            .request_timeout(Some(request_timeout.saturating_mul(2)))
            .ping_interval(ping_interval)
            .event_callback(move |event| {
                // The receiver lives as long as the link; after that nobody needs to know.
                let _ = event_tx.send(event);
                async {}
            });
        let state = Arc::new(LinkState::default());
        let (ready_tx, mut ready_rx) = watch::channel(false);
        // With retry_on_initial_connect the client comes back at once and connects in the
        // background, so this only fails on options it cannot use.
        let client = options
            .connect(servers)
            .await
            .map_err(|e| protocol("connect", e))?;
        let (echo, echoes) = Echo::start(client.clone()).await?;
        let tasks = vec![
            tokio::spawn(echo.clone().run(echoes)),
            tokio::spawn(watch_events(
                echo.clone(),
                event_rx,
                Arc::clone(&events),
                Arc::clone(&state),
                ready_tx,
                request_timeout,
            )),
            tokio::spawn(measure(
                echo.clone(),
                Arc::clone(&state),
                ping_interval,
                request_timeout,
            )),
        ];
        let first = tokio::time::timeout(connect_timeout, ready_rx.wait_for(|ready| *ready)).await;
        let result = match first {
            Ok(Ok(_)) => Ok(()),
            _ => {
                // Reported as lost now, so the first connection is reported as restored.
                state.lost.store(true, Ordering::SeqCst);
                events.link_lost();
                Err(BrokerError::Unavailable(
                    "nats: no connection yet (still trying)".to_owned(),
                ))
            }
        };
        Ok((
            Link {
                client,
                echo,
                state,
                tasks,
            },
            result,
        ))
    }

    /// Whether calls can reach the server now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// The link's state for `/readyz` and `/metrics`.
    pub fn health(&self) -> BrokerHealth {
        BrokerHealth {
            connected: self.connected(),
            round_trip: *lock(&self.state.round_trip),
            reconnects: self
                .client
                .statistics()
                .connects
                .load(Ordering::Relaxed)
                .saturating_sub(1),
        }
    }

    /// Fails fast while the connection is down, instead of queueing until the deadline.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when not connected.
    pub fn check(&self) -> Result<(), BrokerError> {
        if self.connected() {
            Ok(())
        } else {
            Err(BrokerError::Unavailable("nats: reconnecting".to_owned()))
        }
    }

    /// Waits until the server has processed everything sent so far (see [`Echo`]).
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the connection failed.
    pub async fn round_trip(&self) -> Result<(), BrokerError> {
        self.echo.round_trip().await
    }

    /// Stops the tasks and closes the connection (draining it for at most `limit`).
    pub async fn close(&self, limit: Duration) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = tokio::time::timeout(limit, self.client.drain()).await;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The tasks hold clones of the client: without this a link dropped without `close`
        // would keep its connection, and its reconnect loop, forever.
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn watch_events(
    echo: Echo,
    mut event_rx: mpsc::UnboundedReceiver<Event>,
    events: Arc<dyn BrokerEvents>,
    state: Arc<LinkState>,
    ready: watch::Sender<bool>,
    request_timeout: Duration,
) {
    while let Some(event) = event_rx.recv().await {
        match event {
            Event::Connected => {
                let _ = ready.send(true);
                if state.lost.load(Ordering::SeqCst) {
                    // The client has sent the subscriptions again; once this round trip is back
                    // the server has them all.
                    match tokio::time::timeout(request_timeout, echo.round_trip()).await {
                        Ok(Ok(())) => {
                            state.lost.store(false, Ordering::SeqCst);
                            tracing::info!("nats: link restored");
                            events.link_restored();
                        }
                        _ => {
                            tracing::warn!("nats: reconnected but the round trip did not come back")
                        }
                    }
                }
            }
            Event::Disconnected | Event::Closed => {
                if !state.lost.swap(true, Ordering::SeqCst) {
                    tracing::warn!("nats: link lost");
                    events.link_lost();
                }
            }
            Event::SlowConsumer(sid) => {
                // Messages were dropped for a subscription: the node finds the gap by offset.
                tracing::warn!(sid, "nats: slow consumer, messages dropped");
            }
            other => tracing::info!(event = %other, "nats"),
        }
    }
}

/// Measures the round trip every `every`, for `health()`.
async fn measure(echo: Echo, state: Arc<LinkState>, every: Duration, limit: Duration) {
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        if echo.client.connection_state() != State::Connected {
            continue;
        }
        let started = Instant::now();
        if let Ok(Ok(())) = tokio::time::timeout(limit, echo.round_trip()).await {
            *lock(&state.round_trip) = Some(started.elapsed());
        }
    }
}
