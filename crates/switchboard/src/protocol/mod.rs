//! The client protocol of `/connection/websocket`, one connection's side: the commands it
//! sends, its subscriptions, and what the server API asks of it, in either encoding (JSON or
//! Protobuf, chosen at the upgrade; see `wire`).
//!
//! A [`ClientSession`] lives in the connection's task and is driven synchronously from the
//! socket reader (one frame may hold several commands) and from the task's wake-up
//! (server-side subscribe, unsubscribe, refresh). Replies and pushes go through the
//! connection's bounded queue like everything else. A subscribe reply is queued before the
//! connection joins the channel (under the channel's stream lock, see `broker`), so a client
//! always reads its subscribe reply, with any recovered publications, before the first live
//! publication. Dropping the session leaves every channel and presence it joined.

pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use crate::auth::{Claims, TokenError};
use crate::broker::{Joining, StreamState};
use crate::channels::{user_limited, ChannelRules};
use crate::config::{PublishRule, SubscribeRule};
use crate::conn::{Conn, ServerCommand};
use crate::error::{ClientError, CloseReason};
use crate::gateway::State;
use crate::history::HistoryQuery;
use crate::publication::{ClientInfo, Publication};
use crate::ws::frame::{self, Opcode};
use wire::{
    Command, ConnectResult, Empty, Encoding, ExpiryResult, HistoryResult, PresenceResult,
    PresenceStatsResult, Push, RefreshResult, Reply, SubscribeRequest, SubscribeResult,
};

/// Unsubscribe push code for a server-side unsubscribe (below 2500: the SDK does not
/// resubscribe).
const UNSUBSCRIBE_BY_SERVER: u32 = 2000;

/// The server's version string, as the SDKs show it.
const VERSION: &str = concat!("switchboard ", env!("CARGO_PKG_VERSION"));

/// One subscription of this connection.
struct Subscription {
    rules: ChannelRules,
    /// How this connection appears in the channel's presence and join/leave.
    info: Arc<ClientInfo>,
    /// When its subscription token expires, Unix seconds (0 = never).
    expires_at: u64,
}

/// What a subscribe permission check granted.
#[derive(Default)]
struct Granted {
    /// The subscription token's `info` (others see it as `chan_info`).
    chan_info: Option<Value>,
    /// The subscription token's expiry, Unix seconds (0 = never).
    expires_at: u64,
}

/// The protocol state of one client-protocol connection.
pub(crate) struct ClientSession {
    state: Arc<State>,
    conn: Arc<Conn>,
    client_id: Box<str>,
    connected: bool,
    /// The connection token's `info` claim (others see it as `conn_info`).
    conn_info: Option<Value>,
    subscriptions: HashMap<Box<str>, Subscription>,
}

/// What handling a command needs done to the connection.
type Outcome = Result<(), CloseReason>;

/// A client id in the usual 8-4-4-4-12 hex form.
fn new_client_id() -> Box<str> {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
    .into()
}

/// Seconds from now until `exp` (Unix seconds), at least 1.
fn ttl_of(exp: u64) -> u32 {
    let ttl = exp.saturating_sub(crate::auth::unix_now()).max(1);
    u32::try_from(ttl).unwrap_or(u32::MAX)
}

/// `expires`/`ttl` for an expiry in Unix seconds (0 = never).
fn expiry(expires_at: u64) -> ExpiryResult {
    ExpiryResult {
        expires: expires_at != 0,
        ttl: if expires_at != 0 {
            ttl_of(expires_at)
        } else {
            0
        },
    }
}

/// The frame that carries `reply` in `encoding`.
fn encode_frame(reply: &Reply, encoding: Encoding) -> Bytes {
    let opcode = match encoding {
        Encoding::Json => Opcode::Text,
        Encoding::Protobuf => Opcode::Binary,
    };
    frame::encode(opcode, &reply.encode_as(encoding))
}

impl ClientSession {
    /// The protocol state of a new connection (not connected yet).
    pub(crate) fn new(state: Arc<State>, conn: Arc<Conn>) -> Self {
        ClientSession {
            state,
            conn,
            client_id: new_client_id(),
            connected: false,
            conn_info: None,
            subscriptions: HashMap::new(),
        }
    }

    fn encoding(&self) -> Encoding {
        self.conn.encoding
    }

    fn send(&self, reply: &Reply) {
        self.conn.push(&encode_frame(reply, self.encoding()));
    }

    fn reply_error(&self, id: u32, error: ClientError) {
        if id != 0 {
            self.send(&Reply::error(id, error));
        }
    }

    /// Handles one data frame: one or more commands (newline-separated JSON in a text frame,
    /// length-delimited Protobuf in a binary frame).
    pub(crate) fn handle_frame(&mut self, opcode: Opcode, data: &[u8]) -> Outcome {
        let expected = match self.encoding() {
            Encoding::Json => Opcode::Text,
            Encoding::Protobuf => Opcode::Binary,
        };
        if opcode != expected {
            return Err(CloseReason::BadRequest);
        }
        let commands =
            wire::decode_commands(self.encoding(), data).map_err(|_| CloseReason::BadRequest)?;
        for command in commands {
            self.handle(command)?;
        }
        Ok(())
    }

    fn handle(&mut self, command: Command) -> Outcome {
        let id = command.id;
        if command.is_empty() {
            // `{}` answers the server's ping; a command with an id and no known method is one
            // this server does not have.
            if id != 0 {
                self.reply_error(id, ClientError::MethodNotFound);
            }
            return Ok(());
        }
        if let Some(connect) = command.connect {
            return self.connect(id, connect);
        }
        if !self.connected {
            self.reply_error(id, ClientError::Unauthorized);
            return Ok(());
        }
        let mut reply = Reply {
            id,
            ..Reply::default()
        };
        let outcome = if let Some(request) = command.subscribe {
            self.subscribe(id, request);
            return Ok(());
        } else if let Some(request) = command.refresh {
            return self.refresh(id, &request.token);
        } else if let Some(request) = command.unsubscribe {
            self.unsubscribe(&request.channel, None);
            reply.unsubscribe = Some(Empty {});
            Ok(())
        } else if let Some(request) = command.publish {
            self.publish(request)
                .map(|()| reply.publish = Some(Empty {}))
        } else if let Some(request) = command.presence {
            self.presence(&request.channel)
                .map(|result| reply.presence = Some(result))
        } else if let Some(request) = command.presence_stats {
            self.presence_stats(&request.channel)
                .map(|result| reply.presence_stats = Some(result))
        } else if let Some(request) = command.history {
            self.history(&request)
                .map(|result| reply.history = Some(result))
        } else if let Some(request) = command.sub_refresh {
            self.sub_refresh(&request.channel, &request.token)
                .map(|result| reply.sub_refresh = Some(result))
        } else if command.ping.is_some() {
            reply.ping = Some(Empty {});
            Ok(())
        } else if command.send.is_some() {
            // Asynchronous messages have no handler on this server; nothing to answer.
            return Ok(());
        } else {
            Err(ClientError::MethodNotFound)
        };
        match outcome {
            Ok(()) if id != 0 => self.send(&reply),
            Ok(()) => {}
            Err(error) => self.reply_error(id, error),
        }
        Ok(())
    }

    fn connect(&mut self, id: u32, request: wire::ConnectRequest) -> Outcome {
        if self.connected {
            return Err(CloseReason::BadRequest);
        }
        let claims = if request.token.is_empty() {
            if !self.state.resolved.allow_anonymous {
                self.reply_error(id, ClientError::Unauthorized);
                return Ok(());
            }
            Claims::default()
        } else {
            match self.state.verifier.verify(&request.token) {
                Ok(claims) => claims,
                Err(TokenError::Expired) => {
                    self.reply_error(id, ClientError::TokenExpired);
                    return Ok(());
                }
                Err(TokenError::Invalid(why)) => {
                    self.state.metrics.auth_failures.inc();
                    tracing::warn!(event = "auth_failed", conn_id = self.conn.id, door = "protocol", reason = %why, "connect refused: invalid token");
                    return Err(CloseReason::InvalidToken);
                }
            }
        };
        let expires_at = claims.exp.unwrap_or(0);
        self.conn.set_connected(&claims.sub, expires_at);
        self.connected = true;
        self.conn_info = claims.info.clone();
        tracing::info!(event = "client_connected", conn_id = self.conn.id, client = %self.client_id, user = %claims.sub, server_subs = claims.channels.len());

        // Server-side subscriptions join first; their publications queue behind the connect
        // reply, which is put in front of them once it is complete.
        let queued_before = self.conn.queued_frames();
        let mut subs = Vec::new();
        for channel in &claims.channels {
            let Ok(rules) = self.state.channels.rules(channel).cloned() else {
                tracing::warn!(event = "server_subscription_skipped", conn_id = self.conn.id, channel = %channel, "token names a channel in an unknown namespace");
                continue;
            };
            if self.subscriptions.contains_key(channel.as_str()) {
                continue;
            }
            let recover = request.subs.get(channel.as_str());
            let result = self.join(channel, rules, Granted::default(), recover, |_| true);
            if let Some(result) = result {
                subs.push(wire::SubscriptionEntry {
                    channel: channel.clone(),
                    result: Some(result),
                });
            }
        }
        let heartbeat = self.state.config.server.heartbeat_interval.as_secs().max(1);
        let expires = expiry(expires_at);
        let reply = Reply {
            id,
            connect: Some(ConnectResult {
                client: self.client_id.to_string(),
                version: VERSION.to_owned(),
                expires: expires.expires,
                ttl: expires.ttl,
                subs,
                ping: u32::try_from(heartbeat).unwrap_or(u32::MAX),
                pong: true,
                node: self.state.node_uid().to_owned(),
            }),
            ..Reply::default()
        };
        self.conn
            .insert_frame(queued_before, encode_frame(&reply, self.encoding()));
        Ok(())
    }

    /// Checks a client's subscribe request; returns the subscription's channel info.
    fn may_subscribe(
        &self,
        channel: &str,
        rules: &ChannelRules,
        token: &str,
    ) -> Result<Granted, ClientError> {
        let user = self.conn.user();
        if !token.is_empty() {
            let claims = match self.state.verifier.verify(token) {
                Ok(claims) => claims,
                Err(TokenError::Expired) => return Err(ClientError::TokenExpired),
                Err(TokenError::Invalid(_)) => return Err(ClientError::PermissionDenied),
            };
            if claims.channel.as_deref() != Some(channel) || claims.sub != user {
                return Err(ClientError::PermissionDenied);
            }
            return Ok(Granted {
                chan_info: claims.info,
                expires_at: claims.exp.unwrap_or(0),
            });
        }
        if let Some(allowed) = user_limited(channel, user) {
            return if allowed {
                Ok(Granted::default())
            } else {
                Err(ClientError::PermissionDenied)
            };
        }
        match rules.subscribe {
            SubscribeRule::Anonymous => Ok(Granted::default()),
            SubscribeRule::Authenticated if !user.is_empty() => Ok(Granted::default()),
            SubscribeRule::Authenticated | SubscribeRule::Token => {
                Err(ClientError::PermissionDenied)
            }
        }
    }

    fn subscribe(&mut self, id: u32, request: SubscribeRequest) {
        let channel = request.channel.as_str();
        let checked = self
            .state
            .channels
            .rules(channel)
            .map_err(ClientError::from)
            .and_then(|rules| {
                if self.subscriptions.contains_key(channel) {
                    return Err(ClientError::AlreadySubscribed);
                }
                if self.subscriptions.len() >= self.state.config.client.max_subscriptions {
                    return Err(ClientError::LimitExceeded);
                }
                let granted = self.may_subscribe(channel, rules, &request.token)?;
                Ok((rules.clone(), granted))
            });
        let (rules, granted) = match checked {
            Ok(checked) => checked,
            Err(error) => return self.reply_error(id, error),
        };
        let reject_unrecovered = request.flag & wire::FLAG_REJECT_UNRECOVERED != 0;
        let conn = Arc::clone(&self.conn);
        let encoding = self.encoding();
        self.join(
            channel,
            rules,
            granted,
            Some(&request),
            |result: &SubscribeResult| {
                let refused = reject_unrecovered && result.was_recovering && !result.recovered;
                let reply = if refused {
                    Reply::error(id, ClientError::Unrecoverable)
                } else {
                    Reply {
                        id,
                        subscribe: Some(result.clone()),
                        ..Reply::default()
                    }
                };
                conn.push(&encode_frame(&reply, encoding));
                !refused
            },
        );
    }

    /// Joins `channel` (presence, join push) and builds its subscribe result. `queue` runs
    /// under the channel's lock with the result and returns whether to join (not, for a
    /// refused recovery with `rejectUnrecovered`). Returns the result when joined.
    fn join(
        &mut self,
        channel: &str,
        rules: ChannelRules,
        granted: Granted,
        recover: Option<&SubscribeRequest>,
        queue: impl FnOnce(&SubscribeResult) -> bool,
    ) -> Option<SubscribeResult> {
        let recover_from = recover
            .filter(|r| r.recover && rules.recover)
            .map(|r| (r.offset, r.epoch.as_str()));
        let recoverable = rules.recover && rules.keeps_history();
        let encoding = self.encoding();
        let mut joined = None;
        let now_ms = self.state.clock_ms();
        let joining = Joining {
            channel,
            rules: &rules,
            conn: &self.conn,
            recover_from,
        };
        self.state
            .broker
            .subscribe(&self.state.hub, joining, now_ms, |found: StreamState| {
                let mut result = subscribe_result(found, recoverable, encoding);
                if granted.expires_at != 0 {
                    result.expires = true;
                    result.ttl = ttl_of(granted.expires_at);
                }
                let go = queue(&result);
                if go {
                    joined = Some(result);
                }
                go
            });
        let result = joined?;
        let info = Arc::new(ClientInfo::new(
            &self.client_id,
            self.conn.user(),
            self.conn_info.as_ref(),
            granted.chan_info.as_ref(),
        ));
        if rules.presence {
            self.state.broker.join(channel, Arc::clone(&info));
        }
        if rules.join_leave {
            self.push_presence(channel, &info, true);
        }
        if result.was_recovering {
            let outcome = if result.recovered {
                "recovered"
            } else {
                "unrecovered"
            };
            self.state
                .metrics
                .recoveries
                .with_label_values(&[outcome])
                .inc();
        }
        self.subscriptions.insert(
            channel.into(),
            Subscription {
                rules,
                info,
                expires_at: granted.expires_at,
            },
        );
        self.track_subscription_expiry();
        Some(result)
    }

    /// Tells the channel's other protocol subscribers that `info` joined (or left).
    fn push_presence(&self, channel: &str, info: &ClientInfo, joined: bool) {
        let presence = Some(wire::Presence {
            info: Some(info.body()),
        });
        let mut push = Push {
            channel: channel.to_owned(),
            ..Push::default()
        };
        if joined {
            push.join = presence;
        } else {
            push.leave = presence;
        }
        let reply = Reply::push(push);
        self.state.hub.push_to_protocol(
            channel,
            &encode_frame(&reply, Encoding::Json),
            &encode_frame(&reply, Encoding::Protobuf),
            self.conn.id,
        );
    }

    /// Leaves `channel`; with `push_code`, tells the client it was unsubscribed by the server.
    fn unsubscribe(&mut self, channel: &str, push_code: Option<u32>) {
        let Some(subscription) = self.subscriptions.remove(channel) else {
            return;
        };
        self.track_subscription_expiry();
        self.leave(channel, &subscription);
        if let Some(code) = push_code {
            self.send(&Reply::push(Push {
                channel: channel.to_owned(),
                unsubscribe: Some(wire::Unsubscribed {
                    code,
                    reason: "server unsubscribe".to_owned(),
                }),
                ..Push::default()
            }));
        }
    }

    fn leave(&self, channel: &str, subscription: &Subscription) {
        self.state.hub.unsubscribe(channel, self.conn.id);
        if subscription.rules.presence {
            self.state.broker.leave(channel, &subscription.info.client);
        }
        if subscription.rules.join_leave {
            self.push_presence(channel, &subscription.info, false);
        }
    }

    fn publish(&mut self, request: wire::PublishRequest) -> Result<(), ClientError> {
        let channel = request.channel.as_str();
        let rules = self.state.channels.rules(channel)?.clone();
        let user = self.conn.user();
        let allowed = match rules.publish {
            PublishRule::None => false,
            PublishRule::Subscribers => self.subscriptions.contains_key(channel),
            PublishRule::Authenticated => !user.is_empty(),
            PublishRule::Anonymous => true,
        };
        if !allowed {
            return Err(ClientError::PermissionDenied);
        }
        let info = match self.subscriptions.get(channel) {
            Some(subscription) => Arc::clone(&subscription.info),
            None => Arc::new(ClientInfo::new(
                &self.client_id,
                user,
                self.conn_info.as_ref(),
                None,
            )),
        };
        let mut publication = match self.encoding() {
            Encoding::Json => Publication::json(request.data),
            Encoding::Protobuf => Publication::bytes(request.data),
        };
        publication.info = Some(info);
        self.state.publish_with(channel, &rules, publication);
        Ok(())
    }

    /// Presence and history may be read by subscribers, and by whoever may subscribe.
    fn may_read(&self, channel: &str) -> Result<&ChannelRules, ClientError> {
        let rules = self.state.channels.rules(channel)?;
        if !self.subscriptions.contains_key(channel) {
            self.may_subscribe(channel, rules, "")?;
        }
        Ok(rules)
    }

    fn presence(&self, channel: &str) -> Result<PresenceResult, ClientError> {
        if !self.may_read(channel)?.presence {
            return Err(ClientError::NotAvailable);
        }
        Ok(presence_result(&self.state, channel))
    }

    fn presence_stats(&self, channel: &str) -> Result<PresenceStatsResult, ClientError> {
        if !self.may_read(channel)?.presence {
            return Err(ClientError::NotAvailable);
        }
        Ok(presence_stats_result(&self.state, channel))
    }

    fn history(&self, request: &wire::HistoryRequest) -> Result<HistoryResult, ClientError> {
        if !self.may_read(&request.channel)?.keeps_history() {
            return Err(ClientError::NotAvailable);
        }
        history_result(&self.state, request, self.encoding())
    }

    fn refresh(&mut self, id: u32, token: &str) -> Outcome {
        let claims = match self.state.verifier.verify(token) {
            Ok(claims) => claims,
            Err(TokenError::Expired) => {
                self.reply_error(id, ClientError::TokenExpired);
                return Ok(());
            }
            Err(TokenError::Invalid(_)) => return Err(CloseReason::InvalidToken),
        };
        if claims.sub != self.conn.user() {
            return Err(CloseReason::InvalidToken);
        }
        let expires_at = claims.exp.unwrap_or(0);
        self.conn.set_expires_at(expires_at);
        let expires = expiry(expires_at);
        self.send(&Reply {
            id,
            refresh: Some(RefreshResult {
                client: self.client_id.to_string(),
                version: VERSION.to_owned(),
                expires: expires.expires,
                ttl: expires.ttl,
            }),
            ..Reply::default()
        });
        Ok(())
    }

    /// Tells the sweep the earliest subscription-token expiry (it closes with 3006 then).
    fn track_subscription_expiry(&self) {
        let earliest = self
            .subscriptions
            .values()
            .map(|s| s.expires_at)
            .filter(|exp| *exp != 0)
            .min()
            .unwrap_or(0);
        self.conn.set_subscription_expires_at(earliest);
    }

    fn sub_refresh(&mut self, channel: &str, token: &str) -> Result<ExpiryResult, ClientError> {
        if !self.subscriptions.contains_key(channel) {
            return Err(ClientError::PermissionDenied);
        }
        let claims = match self.state.verifier.verify(token) {
            Ok(claims) => claims,
            Err(TokenError::Expired) => return Err(ClientError::TokenExpired),
            Err(TokenError::Invalid(_)) => return Err(ClientError::PermissionDenied),
        };
        if claims.channel.as_deref() != Some(channel) || claims.sub != self.conn.user() {
            return Err(ClientError::PermissionDenied);
        }
        if let Some(subscription) = self.subscriptions.get_mut(channel) {
            subscription.expires_at = claims.exp.unwrap_or(0);
        }
        self.track_subscription_expiry();
        Ok(expiry(claims.exp.unwrap_or(0)))
    }

    /// Carries out what the server API asked of this connection.
    pub(crate) fn handle_server_command(&mut self, command: ServerCommand) {
        if !self.connected {
            return;
        }
        match command {
            ServerCommand::Subscribe(channel) => {
                if self.subscriptions.contains_key(&*channel) {
                    return;
                }
                let Ok(rules) = self.state.channels.rules(&channel).cloned() else {
                    return;
                };
                let conn = Arc::clone(&self.conn);
                let encoding = self.encoding();
                let target = channel.to_string();
                self.join(&channel, rules, Granted::default(), None, move |result| {
                    let reply = Reply::push(Push {
                        channel: target,
                        subscribe: Some(result.clone()),
                        ..Push::default()
                    });
                    conn.push(&encode_frame(&reply, encoding));
                    true
                });
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

impl Drop for ClientSession {
    fn drop(&mut self) {
        for (channel, subscription) in std::mem::take(&mut self.subscriptions) {
            self.leave(&channel, &subscription);
        }
    }
}

fn publication_bodies(
    publications: &[Arc<Publication>],
    encoding: Encoding,
) -> Vec<wire::PublicationBody> {
    publications.iter().map(|p| p.body(encoding)).collect()
}

/// The subscribe result for what the stream held (and, when asked, what recovery found).
fn subscribe_result(found: StreamState, recoverable: bool, encoding: Encoding) -> SubscribeResult {
    let mut result = SubscribeResult::default();
    let Some(position) = found.position else {
        // No history: nothing to position or recover.
        return result;
    };
    result.recoverable = recoverable;
    result.positioned = recoverable;
    result.offset = position.offset;
    result.epoch = position.epoch.to_string();
    if let Some(recovery) = found.recovery {
        result.was_recovering = true;
        if let Ok(publications) = recovery {
            result.recovered = true;
            result.publications = publication_bodies(&publications, encoding);
        }
    }
    result
}

/// Who is present in a channel (shared with the server API).
pub(crate) fn presence_result(state: &State, channel: &str) -> PresenceResult {
    PresenceResult {
        presence: state
            .broker
            .presence(channel)
            .iter()
            .map(|info| (info.client.to_string(), info.body()))
            .collect(),
    }
}

/// How many are present in a channel (shared with the server API).
pub(crate) fn presence_stats_result(state: &State, channel: &str) -> PresenceStatsResult {
    let (clients, users) = state.broker.presence_stats(channel);
    PresenceStatsResult {
        num_clients: u32::try_from(clients).unwrap_or(u32::MAX),
        num_users: u32::try_from(users).unwrap_or(u32::MAX),
    }
}

/// A channel's history as asked (shared with the server API).
pub(crate) fn history_result(
    state: &State,
    request: &wire::HistoryRequest,
    encoding: Encoding,
) -> Result<HistoryResult, ClientError> {
    let query = HistoryQuery {
        limit: usize::try_from(request.limit).ok(),
        since: request
            .since
            .as_ref()
            .map(|since| (since.offset, since.epoch.clone())),
        reverse: request.reverse,
    };
    let (publications, position) = state
        .broker
        .history(&request.channel, &query, state.clock_ms())
        .map_err(|_| ClientError::Unrecoverable)?;
    Ok(HistoryResult {
        publications: publication_bodies(&publications, encoding),
        epoch: position.epoch.to_string(),
        offset: position.offset,
    })
}
