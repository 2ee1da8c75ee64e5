//! [`Config`]: where to connect, with which token, and the client's timeouts and reconnect
//! schedule.

use std::time::Duration;

use crate::backoff::Backoff;

/// How a [`Client`](crate::Client) connects. Build it with [`Config::new`] and set fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// `ws://HOST:PORT/connection/websocket`.
    pub url: String,
    /// The connection token (a JWT); `None` connects anonymously.
    pub token: Option<String>,
    /// Client name sent with `connect` (default `switchboard-client-rust`).
    pub name: String,
    /// Client version sent with `connect` (default: this crate's version).
    pub version: String,
    /// Reconnect delays (default 100 ms to 20 s).
    pub backoff: Backoff,
    /// Seed for the backoff's random source; `None` seeds from the OS. Set it to make the
    /// reconnect schedule reproducible.
    pub backoff_seed: Option<u64>,
    /// Time for the WebSocket handshake, and again for the `connect` reply (default 10 s).
    pub connect_timeout: Duration,
    /// Time a call waits for its reply, including any wait for a connection (default 10 s).
    pub request_timeout: Duration,
    /// How late the server's ping may be, past its announced interval, before the client
    /// gives the connection up as dead and reconnects (default 10 s).
    pub max_ping_delay: Duration,
}

impl Config {
    /// A configuration for `url` with every default: no token, 100 ms–20 s backoff,
    /// 10 s timeouts.
    pub fn new(url: impl Into<String>) -> Config {
        Config {
            url: url.into(),
            token: None,
            name: "switchboard-client-rust".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            backoff: Backoff::default(),
            backoff_seed: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_ping_delay: Duration::from_secs(10),
        }
    }

    /// Sets the connection token.
    pub fn with_token(mut self, token: impl Into<String>) -> Config {
        self.token = Some(token.into());
        self
    }

    /// Sets the reconnect delays.
    pub fn with_backoff(mut self, backoff: Backoff) -> Config {
        self.backoff = backoff;
        self
    }
}
