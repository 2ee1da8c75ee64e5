//! The client protocol of `/connection/websocket`, one connection's side: the commands it
//! sends, its subscriptions, and what the server API asks of it.
//!
//! A [`ClientSession`] lives in the connection's task and is driven synchronously from the
//! socket reader (one text frame may hold several newline-separated commands) and from the
//! task's wake-up (server-side subscribe, unsubscribe, refresh). Replies and pushes go through
//! the connection's bounded queue like everything else. A reply is queued before the
//! connection joins a channel (under the channel's stream lock, see `broker`), so a client
//! always reads its subscribe reply, with any recovered publications, before the first live
//! publication. Dropping the session leaves every channel and presence it joined.

pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::auth::{Claims, TokenError};
use crate::broker::{Joining, StreamState};
use crate::channels::{user_limited, ChannelRules};
use crate::config::{PublishRule, SubscribeRule};
use crate::conn::{Conn, ServerCommand};
use crate::error::{ClientError, CloseReason};
use crate::gateway::State;
use crate::history::{HistoryQuery, Position};
use crate::publication::{ClientInfo, Publication};
use crate::ws::frame::{self, Opcode};
use wire::{Command, RecoverFrom};

/// Unsubscribe push code for a server-side unsubscribe (below 2500: the SDK does not
/// resubscribe).
const UNSUBSCRIBE_BY_SERVER: u32 = 2000;

/// One subscription of this connection.
struct Subscription {
    rules: ChannelRules,
    /// How this connection appears in the channel's presence and join/leave.
    info: Arc<ClientInfo>,
    /// When its subscription token expires, Unix seconds (0 = never).
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

/// What a subscribe permission check granted.
#[derive(Default)]
struct Granted {
    /// The subscription token's `info` (others see it as `chan_info`).
    chan_info: Option<Value>,
    /// The subscription token's expiry, Unix seconds (0 = never).
    expires_at: u64,
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

fn position_fields(result: &mut Value, position: &Position) {
    result["offset"] = Value::from(position.offset);
    result["epoch"] = Value::from(&*position.epoch);
}

fn publications_json(publications: &[Arc<Publication>]) -> Value {
    Value::Array(
        publications
            .iter()
            .map(|p| wire::raw(p.object_json()))
            .collect(),
    )
}

/// Seconds from now until `exp` (Unix seconds), at least 1.
fn ttl_of(exp: u64) -> u64 {
    exp.saturating_sub(crate::auth::unix_now()).max(1)
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

    fn send(&self, text: String) {
        self.conn
            .push(&frame::encode(Opcode::Text, text.as_bytes()));
    }

    fn reply_error(&self, id: u64, error: ClientError) {
        if id != 0 {
            self.send(wire::error_reply(id, error));
        }
    }

    /// Handles one text frame: one or more newline-separated commands.
    pub(crate) fn handle_frame(&mut self, data: &[u8]) -> Outcome {
        for line in data.split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let command: Command =
                serde_json::from_slice(line).map_err(|_| CloseReason::BadRequest)?;
            self.handle(command)?;
        }
        Ok(())
    }

    fn handle(&mut self, command: Command) -> Outcome {
        let id = command.id;
        if let Some(connect) = command.connect {
            return self.connect(id, connect);
        }
        let is_pong = command.subscribe.is_none()
            && command.unsubscribe.is_none()
            && command.publish.is_none()
            && command.presence.is_none()
            && command.presence_stats.is_none()
            && command.history.is_none()
            && command.refresh.is_none()
            && command.sub_refresh.is_none()
            && command.send.is_none()
            && command.rpc.is_none();
        if is_pong {
            // `{}` answers the server's ping; a command with an id and no known method is one
            // this server does not have.
            if id != 0 {
                self.reply_error(id, ClientError::MethodNotFound);
            }
            return Ok(());
        }
        if !self.connected {
            self.reply_error(id, ClientError::Unauthorized);
            return Ok(());
        }
        let result = if let Some(request) = command.subscribe {
            self.subscribe(id, request);
            return Ok(());
        } else if let Some(request) = command.unsubscribe {
            self.unsubscribe(&request.channel, None);
            Ok(("unsubscribe", json!({})))
        } else if let Some(request) = command.publish {
            self.publish(request).map(|()| ("publish", json!({})))
        } else if let Some(request) = command.presence {
            self.presence(&request.channel)
                .map(|result| ("presence", result))
        } else if let Some(request) = command.presence_stats {
            self.presence_stats(&request.channel)
                .map(|result| ("presence_stats", result))
        } else if let Some(request) = command.history {
            self.history(request).map(|result| ("history", result))
        } else if let Some(request) = command.refresh {
            return self.refresh(id, &request.token);
        } else if let Some(request) = command.sub_refresh {
            self.sub_refresh(&request.channel, &request.token)
                .map(|result| ("sub_refresh", result))
        } else if command.send.is_some() {
            // Asynchronous messages have no handler on this server; nothing to answer.
            return Ok(());
        } else {
            Err(ClientError::MethodNotFound)
        };
        match result {
            Ok((method, value)) => {
                if id != 0 {
                    self.send(wire::reply(id, method, value));
                }
            }
            Err(error) => self.reply_error(id, error),
        }
        Ok(())
    }

    fn connect(&mut self, id: u64, request: wire::ConnectRequest) -> Outcome {
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
        let mut subs = serde_json::Map::new();
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
                subs.insert(channel.clone(), result);
            }
        }
        let mut result = json!({
            "client": &*self.client_id,
            "version": concat!("switchboard ", env!("CARGO_PKG_VERSION")),
            "ping": self.state.config.server.heartbeat_interval.as_secs().max(1),
            "pong": true,
            "node": self.state.node_uid(),
        });
        if expires_at != 0 {
            result["expires"] = Value::Bool(true);
            result["ttl"] = Value::from(ttl_of(expires_at));
        }
        if !subs.is_empty() {
            result["subs"] = Value::Object(subs);
        }
        let reply = wire::reply(id, "connect", result);
        self.conn
            .insert_frame(queued_before, frame::encode(Opcode::Text, reply.as_bytes()));
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

    fn subscribe(&mut self, id: u64, request: wire::SubscribeRequest) {
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
        let recover = RecoverFrom {
            recover: request.recover,
            offset: request.offset,
            epoch: request.epoch.clone(),
        };
        let reject_unrecovered = request.flag & wire::FLAG_REJECT_UNRECOVERED != 0;
        let conn = Arc::clone(&self.conn);
        self.join(
            channel,
            rules,
            granted,
            Some(&recover),
            |result: &Result<Value, ClientError>| {
                let unrecovered = result
                    .as_ref()
                    .is_ok_and(|value| value.get("recovered") == Some(&Value::Bool(false)));
                let text = match result {
                    Ok(_) if unrecovered && reject_unrecovered => {
                        wire::error_reply(id, ClientError::Unrecoverable)
                    }
                    Ok(value) => wire::reply(id, "subscribe", value.clone()),
                    Err(error) => wire::error_reply(id, *error),
                };
                conn.push(&frame::encode(Opcode::Text, text.as_bytes()));
                result.is_ok() && !(unrecovered && reject_unrecovered)
            },
        );
    }

    /// Joins `channel` (presence, join push) and builds its subscribe result. `queue` runs
    /// under the channel's lock with the result (an `Err` for a refused recovery with
    /// `rejectUnrecovered`) and returns whether to join. Returns the result when joined.
    fn join(
        &mut self,
        channel: &str,
        rules: ChannelRules,
        granted: Granted,
        recover: Option<&RecoverFrom>,
        queue: impl FnOnce(&Result<Value, ClientError>) -> bool,
    ) -> Option<Value> {
        let recover_from = recover
            .filter(|r| r.recover && rules.recover)
            .map(|r| (r.offset, r.epoch.as_str()));
        let recoverable = rules.recover && rules.keeps_history();
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
                let mut result = subscribe_result(found, recoverable);
                if let (Ok(value), true) = (result.as_mut(), granted.expires_at != 0) {
                    value["expires"] = Value::Bool(true);
                    value["ttl"] = Value::from(ttl_of(granted.expires_at));
                }
                let go = queue(&result);
                if go {
                    joined = result.ok();
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
            let push = wire::push(
                channel,
                "join",
                json!({ "info": wire::raw(info.json().as_bytes()) }),
            );
            self.state.hub.push_to_protocol(
                channel,
                &frame::encode(Opcode::Text, push.as_bytes()),
                self.conn.id,
            );
        }
        match result.get("recovered") {
            Some(Value::Bool(true)) => self
                .state
                .metrics
                .recoveries
                .with_label_values(&["recovered"])
                .inc(),
            Some(_) => self
                .state
                .metrics
                .recoveries
                .with_label_values(&["unrecovered"])
                .inc(),
            None => {}
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

    /// Leaves `channel`; with `push_code`, tells the client it was unsubscribed by the server.
    fn unsubscribe(&mut self, channel: &str, push_code: Option<u32>) {
        let Some(subscription) = self.subscriptions.remove(channel) else {
            return;
        };
        self.track_subscription_expiry();
        self.leave(channel, &subscription);
        if let Some(code) = push_code {
            let push = wire::push(
                channel,
                "unsubscribe",
                json!({ "code": code, "reason": "server unsubscribe" }),
            );
            self.send(push);
        }
    }

    fn leave(&self, channel: &str, subscription: &Subscription) {
        self.state.hub.unsubscribe(channel, self.conn.id);
        if subscription.rules.presence {
            self.state.broker.leave(channel, &subscription.info.client);
        }
        if subscription.rules.join_leave {
            let push = wire::push(
                channel,
                "leave",
                json!({ "info": wire::raw(subscription.info.json().as_bytes()) }),
            );
            self.state.hub.push_to_protocol(
                channel,
                &frame::encode(Opcode::Text, push.as_bytes()),
                self.conn.id,
            );
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
        let mut publication =
            Publication::json(Bytes::copy_from_slice(request.data.get().as_bytes()));
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

    fn presence(&self, channel: &str) -> Result<Value, ClientError> {
        if !self.may_read(channel)?.presence {
            return Err(ClientError::NotAvailable);
        }
        Ok(presence_json(&self.state, channel))
    }

    fn presence_stats(&self, channel: &str) -> Result<Value, ClientError> {
        if !self.may_read(channel)?.presence {
            return Err(ClientError::NotAvailable);
        }
        let (clients, users) = self.state.broker.presence_stats(channel);
        Ok(json!({ "num_clients": clients, "num_users": users }))
    }

    fn history(&self, request: wire::HistoryRequest) -> Result<Value, ClientError> {
        if !self.may_read(&request.channel)?.keeps_history() {
            return Err(ClientError::NotAvailable);
        }
        history_json(&self.state, &request)
    }

    fn refresh(&mut self, id: u64, token: &str) -> Outcome {
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
        let mut result = json!({
            "client": &*self.client_id,
            "version": concat!("switchboard ", env!("CARGO_PKG_VERSION")),
        });
        if expires_at != 0 {
            result["expires"] = Value::Bool(true);
            result["ttl"] = Value::from(ttl_of(expires_at));
        }
        self.send(wire::reply(id, "refresh", result));
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

    fn sub_refresh(&mut self, channel: &str, token: &str) -> Result<Value, ClientError> {
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
        Ok(match claims.exp {
            Some(exp) => json!({ "expires": true, "ttl": ttl_of(exp) }),
            None => json!({}),
        })
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
                let target = channel.clone();
                self.join(&channel, rules, Granted::default(), None, move |result| {
                    if let Ok(value) = result {
                        let push = wire::push(&target, "subscribe", value.clone());
                        conn.push(&frame::encode(Opcode::Text, push.as_bytes()));
                    }
                    result.is_ok()
                });
            }
            ServerCommand::Unsubscribe(channel) => {
                self.unsubscribe(&channel, Some(UNSUBSCRIBE_BY_SERVER));
            }
            ServerCommand::Refresh(expires_at) => {
                self.conn.set_expires_at(expires_at);
                let body = if expires_at == 0 {
                    json!({ "expires": false })
                } else {
                    json!({ "expires": true, "ttl": ttl_of(expires_at) })
                };
                let push = json!({ "push": { "refresh": body } }).to_string();
                self.send(push);
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

/// The subscribe result for what the stream held (and, when asked, what recovery found).
fn subscribe_result(found: StreamState, recoverable: bool) -> Result<Value, ClientError> {
    let mut result = json!({});
    let Some(position) = found.position else {
        // No history: nothing to position or recover.
        return Ok(result);
    };
    if recoverable {
        result["recoverable"] = Value::Bool(true);
        result["positioned"] = Value::Bool(true);
    }
    position_fields(&mut result, &position);
    if let Some(recovery) = found.recovery {
        result["was_recovering"] = Value::Bool(true);
        match recovery {
            Ok(publications) => {
                result["recovered"] = Value::Bool(true);
                if !publications.is_empty() {
                    result["publications"] = publications_json(&publications);
                }
            }
            Err(_) => result["recovered"] = Value::Bool(false),
        }
    }
    Ok(result)
}

/// `{"presence": {client id: info}}` of a channel (shared with the server API).
pub(crate) fn presence_json(state: &State, channel: &str) -> Value {
    let presence: serde_json::Map<String, Value> = state
        .broker
        .presence(channel)
        .iter()
        .map(|info| (info.client.to_string(), wire::raw(info.json().as_bytes())))
        .collect();
    json!({ "presence": presence })
}

/// The history result of a channel (shared with the server API).
pub(crate) fn history_json(
    state: &State,
    request: &wire::HistoryRequest,
) -> Result<Value, ClientError> {
    let query = HistoryQuery {
        limit: if request.limit < 0 {
            None
        } else {
            Some(request.limit as usize)
        },
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
    let mut result = json!({ "publications": publications_json(&publications) });
    position_fields(&mut result, &position);
    Ok(result)
}
