//! [`Client`]: the cloneable handle. Each call sends a `Command` over a bounded channel to
//! the one task that owns the socket (`task.rs`) and, for calls with a reply, awaits a
//! oneshot answer under the request timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::config::Config;
use crate::error::Error;
use crate::event::Events;
use crate::protocol::{ClientInfo, History, HistoryOptions, PresenceStats, ReplyBody, Request};
use crate::task::Task;

/// How many commands may wait for the connection task before callers wait too.
const COMMAND_QUEUE: usize = 64;

/// What a handle asks of the connection task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Add a subscription; answered once it is registered (not once the server replied).
    Subscribe {
        channel: String,
        done: oneshot::Sender<Result<(), Error>>,
    },
    /// Remove a subscription.
    Unsubscribe {
        channel: String,
        done: oneshot::Sender<Result<(), Error>>,
    },
    /// A command with a reply; queued until connected.
    Call {
        request: Request,
        reply: oneshot::Sender<Result<ReplyBody, Error>>,
    },
    /// Replace the token used by later connects.
    SetToken(Option<String>),
    /// Close and stop; answered when the task has finished.
    Close { done: oneshot::Sender<()> },
}

/// A handle on one client connection, cheap to clone.
///
/// The connection (and its reconnects) lives in a task spawned by [`Client::connect`]; it
/// ends after [`Client::close`], after a close code that says stop, or when every handle is
/// dropped.
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    request_timeout: Duration,
}

impl Client {
    /// Starts connecting to `config.url` in a new task and returns the handle and the event
    /// stream. It returns at once: watch for [`Event::Connected`](crate::Event::Connected).
    /// Calls made before the connection is up wait for it (within the request timeout).
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] when `config.url` is not a `ws://` or `wss://` URL.
    ///
    /// # Panics
    /// When called outside a Tokio runtime.
    pub fn connect(config: Config) -> Result<(Client, Events), Error> {
        if let Err(source) = config.url.as_str().into_client_request() {
            return Err(Error::InvalidUrl {
                url: config.url,
                source,
            });
        }
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let request_timeout = config.request_timeout;
        tokio::spawn(Task::new(config, commands_rx, events_tx).run());
        Ok((
            Client {
                commands: commands_tx,
                request_timeout,
            },
            events_rx,
        ))
    }

    /// Subscribes to `channel`, now or as soon as the client is connected, and again after
    /// every reconnect, recovering missed publications when the channel allows it. The
    /// outcome arrives as [`Event::Subscribed`](crate::Event::Subscribed) or
    /// [`Event::SubscriptionFailed`](crate::Event::SubscriptionFailed).
    ///
    /// # Errors
    /// [`Error::AlreadySubscribed`], or [`Error::Closed`].
    pub async fn subscribe(&self, channel: impl Into<String>) -> Result<(), Error> {
        let (done, answer) = oneshot::channel();
        self.send(Command::Subscribe {
            channel: channel.into(),
            done,
        })
        .await?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Unsubscribes from `channel`; an [`Event::Unsubscribed`](crate::Event::Unsubscribed)
    /// with code 0 follows.
    ///
    /// # Errors
    /// [`Error::NotSubscribed`], or [`Error::Closed`].
    pub async fn unsubscribe(&self, channel: impl Into<String>) -> Result<(), Error> {
        let (done, answer) = oneshot::channel();
        self.send(Command::Unsubscribe {
            channel: channel.into(),
            done,
        })
        .await?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Publishes `data` (anything that serializes to JSON) to `channel`.
    ///
    /// # Errors
    /// [`Error::Encode`] when `data` does not serialize; [`Error::Reply`] when the server
    /// refuses (e.g. 103 permission denied); [`Error::Timeout`], [`Error::Disconnected`] or
    /// [`Error::Closed`] when no reply came.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel: impl Into<String>,
        data: &T,
    ) -> Result<(), Error> {
        let data = serde_json::to_value(data).map_err(Error::Encode)?;
        self.call(Request::Publish {
            channel: channel.into(),
            data,
        })
        .await
        .map(|_| ())
    }

    /// Who is subscribed to `channel`: client id → client info.
    ///
    /// # Errors
    /// As [`Client::publish`]; 108 (not available) when the namespace has no presence.
    pub async fn presence(
        &self,
        channel: impl Into<String>,
    ) -> Result<BTreeMap<String, ClientInfo>, Error> {
        let body = self
            .call(Request::Presence {
                channel: channel.into(),
            })
            .await?;
        body.presence
            .map(|result| result.presence)
            .ok_or(Error::UnexpectedReply { method: "presence" })
    }

    /// How many clients and users are subscribed to `channel`.
    ///
    /// # Errors
    /// As [`Client::presence`].
    pub async fn presence_stats(&self, channel: impl Into<String>) -> Result<PresenceStats, Error> {
        let body = self
            .call(Request::PresenceStats {
                channel: channel.into(),
            })
            .await?;
        body.presence_stats.ok_or(Error::UnexpectedReply {
            method: "presence_stats",
        })
    }

    /// The last publications kept in `channel`, and its current position.
    ///
    /// # Errors
    /// As [`Client::publish`]; 108 (not available) when the namespace keeps no history.
    pub async fn history(
        &self,
        channel: impl Into<String>,
        options: HistoryOptions,
    ) -> Result<History, Error> {
        let body = self
            .call(Request::History {
                channel: channel.into(),
                options,
            })
            .await?;
        body.history
            .ok_or(Error::UnexpectedReply { method: "history" })
    }

    /// Replaces the token for every later connect (after a 109 token-expired or a 3005
    /// connection-expired, the client reconnects with it).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn set_token(&self, token: Option<String>) -> Result<(), Error> {
        self.send(Command::SetToken(token)).await
    }

    /// Closes the connection (close code 1000), stops reconnecting and waits for the task to
    /// end. Pending calls fail with [`Error::Closed`] or [`Error::Disconnected`].
    ///
    /// # Errors
    /// [`Error::Closed`] when the client had already stopped.
    pub async fn close(&self) -> Result<(), Error> {
        let (done, finished) = oneshot::channel();
        self.send(Command::Close { done }).await?;
        // The task drops `done` as it ends, so either outcome means it has finished.
        let _ = finished.await;
        Ok(())
    }

    async fn call(&self, request: Request) -> Result<ReplyBody, Error> {
        let (reply, answer) = oneshot::channel();
        let timeout = self.request_timeout;
        let wait = async {
            self.send(Command::Call { request, reply }).await?;
            answer.await.map_err(|_| Error::Closed)?
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }

    async fn send(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).await.map_err(|_| Error::Closed)
    }
}
