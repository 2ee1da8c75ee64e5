//! The errors this crate returns: [`Error`] for calls on a [`Client`](crate::Client),
//! [`ReplyError`] for an error the server put in a reply, and [`DecodeError`] for a frame
//! from the server that is not protocol JSON.

use std::time::Duration;

use serde::Deserialize;

/// An error the server returned in a reply: `{"error":{"code":103,"message":"..."}}`.
///
/// The codes are listed in [`codes::error`](crate::codes::error).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, thiserror::Error)]
#[error("server error {code}: {message}")]
pub struct ReplyError {
    /// The error code (100 and up).
    #[serde(default)]
    pub code: u32,
    /// A short message.
    #[serde(default)]
    pub message: String,
    /// The server says a retry may succeed.
    #[serde(default)]
    pub temporary: bool,
}

/// The error of a call on a [`Client`](crate::Client).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error.
    #[error(transparent)]
    Reply(#[from] ReplyError),
    /// No reply came within the request timeout (the call may still take effect).
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The connection was lost after the command was sent and before its reply came; the call
    /// may or may not have taken effect, so it is not retried.
    #[error("the connection was lost before the reply came")]
    Disconnected,
    /// The client is closed: [`Client::close`](crate::Client::close) was called, or the
    /// server told it to stop (see the last [`Event::Disconnected`](crate::Event::Disconnected)).
    #[error("the client is closed")]
    Closed,
    /// The data to publish cannot be turned into JSON.
    #[error("the data cannot be encoded as JSON")]
    Encode(#[source] serde_json::Error),
    /// The server's reply did not carry the result the method has.
    #[error("the reply to {method} carries no {method} result")]
    UnexpectedReply {
        /// The method called.
        method: &'static str,
    },
    /// [`Client::subscribe`](crate::Client::subscribe) to a channel already subscribed.
    #[error("already subscribed to {channel:?}")]
    AlreadySubscribed {
        /// The channel.
        channel: String,
    },
    /// [`Client::unsubscribe`](crate::Client::unsubscribe) from a channel not subscribed.
    #[error("not subscribed to {channel:?}")]
    NotSubscribed {
        /// The channel.
        channel: String,
    },
    /// The configured URL is not a WebSocket URL.
    #[error("invalid WebSocket URL {url:?}")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// Why it is invalid.
        #[source]
        source: tokio_tungstenite::tungstenite::Error,
    },
}

/// A frame from the server that is not a sequence of protocol JSON objects.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Invalid JSON, or JSON of the wrong shape.
    #[error("invalid protocol JSON from the server")]
    Json(#[from] serde_json::Error),
}
