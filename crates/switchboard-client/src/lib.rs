//! A Rust client for Switchboard's client protocol, the door `/connection/websocket`
//! (docs/protocol.md): JSON commands, replies and pushes, as the Centrifugo SDKs speak them.
//!
//! The client reconnects by itself with exponential backoff and full jitter, resubscribes
//! after every reconnect and recovers the publications it missed, delivering them before any
//! live one, so a subscriber of a recoverable channel sees every publication once, in offset
//! order, or is told (`recovered: false`) that it must reload.
//!
//! ```no_run
//! use switchboard_client::{Client, Config, Event};
//!
//! # async fn example() -> Result<(), switchboard_client::Error> {
//! let config = Config::new("ws://127.0.0.1:8000/connection/websocket");
//! let (client, mut events) = Client::connect(config)?;
//! client.subscribe("news").await?;
//! client.publish("news", &serde_json::json!({"text": "hello"})).await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Publication { channel, offset, data, .. } => {
//!             println!("{channel} #{offset:?}: {data}");
//!         }
//!         Event::Subscribed { recovered: false, was_recovering: true, channel, .. } => {
//!             println!("{channel}: publications were lost; reload its state");
//!         }
//!         other => println!("{other:?}"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `client`: the cloneable [`Client`] handle; each call is a command sent to the task.
//! - `task`: the one task that owns the socket: reconnect loop, reads, replies by id, pushes.
//! - `subscription`: per-subscription recovery state and delivery order, no I/O.
//! - [`protocol`]: the wire format — command encoding and frame decoding, no I/O.
//! - [`backoff`]: the reconnect schedule, a pure function of the attempt and a random source.
//! - [`codes`]: every error and close code, and whether the client reconnects after it.
//! - [`event`]: the [`Event`]s the application receives.
//! - [`config`], [`error`].

pub mod backoff;
mod client;
pub mod codes;
pub mod config;
pub mod error;
pub mod event;
pub mod protocol;
mod subscription;
mod task;

pub use backoff::Backoff;
pub use client::Client;
pub use config::Config;
pub use error::{Error, ReplyError};
pub use event::{Event, Events};
pub use protocol::{
    ClientInfo, History, HistoryOptions, PresenceStats, Publication, StreamPosition,
};
