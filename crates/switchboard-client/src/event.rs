//! [`Event`]: everything the client tells the application, in the order it happened —
//! connection state changes, subscription state changes, and what arrives in channels.

use std::time::Duration;

use serde_json::Value;

use crate::error::ReplyError;
use crate::protocol::{ClientInfo, StreamPosition};

/// The receiving end of a client's events. It ends (`recv` returns `None`) after the client
/// stopped for good.
///
/// It is unbounded on purpose: a bounded queue would make the connection task wait for the
/// application, and an application that awaits a call while the queue is full would then
/// deadlock with it. Read it promptly.
pub type Events = tokio::sync::mpsc::UnboundedReceiver<Event>;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The client is about to try to connect, after waiting `delay`.
    ///
    /// `attempt` counts the tries since the last established connection, from 0; `delay` is
    /// drawn from [`Backoff::delay`](crate::Backoff::delay) for that attempt, except before
    /// the client's very first try, which does not wait.
    Connecting {
        /// Tries since the last established connection (0 for the first).
        attempt: u32,
        /// The wait before this try.
        delay: Duration,
    },
    /// The server accepted the `connect` command.
    Connected {
        /// The id the server gave this connection.
        client: String,
        /// The server's version.
        version: String,
    },
    /// The connection closed, or the client gave up connecting.
    ///
    /// `code` is the close code (see [`codes::close`](crate::codes::close); 1006 when the
    /// transport failed with no close frame), or, when the server refused the `connect`
    /// command, the reply's error code (see [`codes::error`](crate::codes::error)).
    Disconnected {
        /// Close code or connect error code.
        code: u32,
        /// Why.
        reason: String,
        /// The client will reconnect; when false it has stopped for good.
        reconnect: bool,
    },
    /// A subscription made with [`Client::subscribe`](crate::Client::subscribe) is active,
    /// first or again after a reconnect. Recovered publications follow as
    /// [`Event::Publication`]s, before any live one.
    Subscribed {
        /// The channel.
        channel: String,
        /// Every publication missed while disconnected was recovered.
        recovered: bool,
        /// The client asked for recovery. `was_recovering && !recovered` means publications
        /// were lost (new epoch, or history too short): reload the channel's state.
        was_recovering: bool,
        /// The channel supports recovery.
        recoverable: bool,
        /// The subscription's position after the subscribe reply (with `recoverable`).
        position: Option<StreamPosition>,
    },
    /// The server refused a subscription for good; it is removed.
    SubscriptionFailed {
        /// The channel.
        channel: String,
        /// The server's error.
        error: ReplyError,
    },
    /// A subscription ended: [`Client::unsubscribe`](crate::Client::unsubscribe) (code 0) or
    /// the server unsubscribed this connection (its code).
    Unsubscribed {
        /// The channel.
        channel: String,
        /// 0 when the application unsubscribed; otherwise the server's code.
        code: u32,
        /// Why.
        reason: String,
    },
    /// The server subscribed this connection to a channel (server-side subscription); its
    /// publications arrive as [`Event::Publication`] with no client-side subscription.
    ServerSubscribed {
        /// The channel.
        channel: String,
    },
    /// A publication in a channel.
    Publication {
        /// The channel.
        channel: String,
        /// Its offset in the channel's history, when the channel keeps history.
        offset: Option<u64>,
        /// The payload.
        data: Value,
        /// The publisher, when a client published it.
        info: Option<ClientInfo>,
    },
    /// Someone subscribed to a channel (namespaces with join/leave on).
    Join {
        /// The channel.
        channel: String,
        /// Who.
        info: ClientInfo,
    },
    /// Someone unsubscribed from a channel (namespaces with join/leave on).
    Leave {
        /// The channel.
        channel: String,
        /// Who.
        info: ClientInfo,
    },
    /// An asynchronous message from the server to this connection.
    Message {
        /// The payload.
        data: Value,
    },
}
