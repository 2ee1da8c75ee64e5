//! What is asked of a client-protocol session from outside its socket: the server API's
//! subscribe, unsubscribe and refresh, the node's answer to a join that waited for the broker,
//! a backend hook's answer, and the sweep's hook refreshes, all taken from the connection's
//! inbox when its task wakes.

use std::sync::Arc;

use super::{expiry, push_subscribed, ClientSession, Granted, UNSUBSCRIBE_BY_SERVER};
use crate::conn::ServerCommand;
use crate::error::ClientError;
use crate::wire::{Push, Reply};

impl ClientSession {
    /// Carries out what the server API asked of this connection.
    pub(crate) fn handle_server_command(&mut self, command: ServerCommand) {
        if let ServerCommand::Hooked { seq, answer } = command {
            // The connect hook answers before the session is connected.
            self.hooked(seq, answer);
            return;
        }
        if !self.connected {
            return;
        }
        match command {
            // The stream's task hands these to `handle_frame` itself (it holds the rate).
            ServerCommand::Hooked { .. } | ServerCommand::Emulated(_) => {}
            ServerCommand::RefreshDue => self.refresh_due(),
            ServerCommand::SubRefreshDue => self.sub_refresh_due(),
            ServerCommand::Subscribe(channel) => {
                if self.subscriptions.contains_key(&*channel) {
                    return;
                }
                // The API checked the limit when it queued this, but the client may have
                // subscribed meanwhile.
                if self.subscriptions.len() >= self.state.config.client.max_subscriptions {
                    tracing::warn!(event = "server_command_refused", conn_id = self.conn.id, user = %self.conn.user(), channel = %channel, code = ClientError::LimitExceeded.code(), "server-side subscribe past client.max_subscriptions");
                    return;
                }
                let Ok(rules) = self.state.channels().rules(&channel).cloned() else {
                    return;
                };
                if rules.shared_poll.is_some() {
                    // Its client tracks keys by itself, with signatures; a server-side
                    // subscription would track none.
                    tracing::warn!(event = "server_command_refused", conn_id = self.conn.id, user = %self.conn.user(), channel = %channel, code = ClientError::IsSharedPoll.code(), "server-side subscribe to a shared-poll channel");
                    return;
                }
                if rules.map {
                    // A server-side subscription is a stream subscription, which a map
                    // channel does not take (its client syncs a map by itself).
                    tracing::warn!(event = "server_command_refused", conn_id = self.conn.id, user = %self.conn.user(), channel = %channel, code = ClientError::IsAMap.code(), "server-side subscribe to a map channel");
                    return;
                }
                let conn = Arc::clone(&self.conn);
                let encoding = self.encoding();
                let target = channel.to_string();
                self.join(&channel, rules, Granted::default(), None, move |result| {
                    push_subscribed(&conn, encoding, target, result);
                    true
                });
            }
            ServerCommand::Joined {
                channel,
                generation,
                joined,
            } => {
                let current = self
                    .subscriptions
                    .get(&*channel)
                    .is_some_and(|s| s.generation == generation);
                if !current {
                    // Unsubscribed meanwhile: its ticket told the worker, nothing to do.
                    return;
                }
                if joined {
                    if let Some(subscription) = self.subscriptions.get_mut(&*channel) {
                        subscription.pending = None;
                    }
                } else {
                    self.subscriptions.remove(&*channel);
                    self.conn.set_subscription_count(self.subscriptions.len());
                }
                self.track_subscription_expiry();
            }
            ServerCommand::Unsubscribe(channel) => {
                self.unsubscribe(&channel, Some(UNSUBSCRIBE_BY_SERVER));
            }
            ServerCommand::Refresh(expires_at) => {
                self.conn.set_expires_at(expires_at);
                self.send(&Reply::push(Push {
                    refresh: Some(expiry(expires_at)),
                    ..Push::default()
                }));
            }
        }
    }
}
