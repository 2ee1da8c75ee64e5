//! The client protocol of `/connection/websocket`, one connection's side: the commands it
//! sends, its subscriptions, and what the server API asks of it, in either encoding (JSON or
//! Protobuf, chosen at the upgrade; see `wire`).
//!
//! A [`ClientSession`] lives in the connection's task and is driven synchronously from the
//! socket reader (one frame may hold several commands) and from the task's wake-up
//! (server-side subscribe, unsubscribe, refresh, and joins that waited for the broker).
//! Replies and pushes go through the connection's bounded queue like everything else. What
//! needs the broker goes through the node, which answers at once (memory broker) or later
//! (remote): the reply is queued whenever the answer comes, and replies carry their command's
//! id. A subscribe reply is queued before the connection joins the channel (see `node`), so a
//! client always reads its subscribe reply, with any recovered publications, before the first
//! live publication. Dropping the session leaves every channel and presence it joined.

mod commands;
mod hooked;
mod map;
mod results;
mod shared_poll;
pub use crate::wire;

pub(crate) use results::{history_range, history_result, presence_result, presence_stats_result};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use serde_json::Value;

use crate::auth::{Claims, TokenError};
use crate::broker::memory::StreamState;
use crate::broker::HistoryPage;
use crate::channels::{user_limited, ChannelRules};
use crate::config::{PublishRule, SubscribeRule};
use crate::conn::{Conn, MessageRate};
use crate::error::{ClientError, CloseReason};
use crate::filter::Filter;
use crate::hooks::Forwarded;
use crate::node::{encode_frame, JoinRequest, JoinTicket, PublishOrder, TicketState};
use crate::publication::{ClientInfo, Publication};
use crate::state::State;
use crate::ws::frame::Opcode;
use results::subscribe_result;
use wire::{
    Command, ConnectResult, Empty, Encoding, ExpiryResult, Push, RefreshResult, Reply,
    SubscribeRequest, SubscribeResult,
};

/// Unsubscribe push code for a server-side unsubscribe (below 2500: the SDK does not
/// resubscribe).
const UNSUBSCRIBE_BY_SERVER: u32 = 2000;

/// Unsubscribe push code for a server-side subscription that could not be made (the broker
/// was unreachable); 2500 and above: the SDK may subscribe again.
const UNSUBSCRIBE_TEMPORARY: u32 = 2500;

/// The one delta kind a subscribe may ask for.
const DELTA_FOSSIL: &str = "fossil";

/// The server's version string, as the SDKs show it.
const VERSION: &str = concat!("switchboard ", env!("CARGO_PKG_VERSION"));

/// One subscription of this connection.
struct Subscription {
    rules: ChannelRules,
    /// How this connection appears in the channel's presence and join/leave.
    info: Arc<ClientInfo>,
    /// When its subscription token expires, Unix seconds (0 = never).
    expires_at: u64,
    /// Which subscribe to this channel it was (joins that wait for the broker say which).
    generation: u64,
    /// A join still waiting for the broker (remote broker), or `None` once joined.
    pending: Option<Arc<JoinTicket>>,
    /// Granted by the subscribe hook with an `expire_at` that the sub_refresh hook renews.
    by_hook: bool,
    /// A shared-poll subscription: registered with the node's polls, not joined to the hub.
    shared_poll: bool,
}

/// What a subscribe permission check granted.
#[derive(Default)]
struct Granted {
    /// The subscription token's `info` (others see it as `chan_info`).
    chan_info: Option<Value>,
    /// The subscription token's expiry, Unix seconds (0 = never).
    expires_at: u64,
    /// The sub_refresh hook renews it at `expires_at`: the client is not told it expires.
    renewed_by_hook: bool,
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
    /// This connection's publications, in order on their way to a remote broker.
    order: PublishOrder,
    /// Subscribes and unsubscribes (`client.subscribe_rate`): each may push a join or a
    /// leave to every member of the channel.
    subscribe_rate: Option<MessageRate>,
    /// Counts subscribes, to tell a subscription from an earlier one to the same channel.
    generations: u64,
    /// What of the upgrade request goes along with hook calls (when hooks are configured).
    forwarded: Option<Arc<Forwarded>>,
    /// Hook calls under way, by number (`hooked`).
    hook_calls: HashMap<u64, hooked::Pending>,
    /// The number of the next hook call.
    hook_seq: u64,
    /// The connect hook was asked and has not answered yet.
    connecting: bool,
    /// Channels whose subscribe hook has not answered yet.
    hook_subscribing: HashSet<Box<str>>,
    /// sub_refresh calls under way.
    sub_refreshing: usize,
    /// The session an HTTP-streaming or SSE client names in its emulation requests (empty on
    /// a WebSocket): sent in the connect reply.
    emulation_session: Box<str>,
    /// The transport, as hook requests name it (`websocket`, `http_stream`, `sse`).
    transport: &'static str,
}

/// What handling a command needs done to the connection.
type Outcome = Result<(), CloseReason>;

/// A client id in the usual 8-4-4-4-12 hex form.
pub(crate) fn new_client_id() -> Box<str> {
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
        items: Vec::new(),
    }
}

impl ClientSession {
    /// The protocol state of a new connection (not connected yet).
    pub(crate) fn new(
        state: Arc<State>,
        conn: Arc<Conn>,
        forwarded: Option<Arc<Forwarded>>,
    ) -> Self {
        let client = &state.config.client;
        let subscribe_rate = MessageRate::new(
            client.subscribe_rate,
            u32::try_from(client.max_subscriptions).unwrap_or(u32::MAX),
        );
        ClientSession {
            state,
            conn,
            client_id: new_client_id(),
            connected: false,
            conn_info: None,
            subscriptions: HashMap::new(),
            order: PublishOrder::default(),
            subscribe_rate,
            generations: 0,
            forwarded,
            hook_calls: HashMap::new(),
            hook_seq: 0,
            connecting: false,
            hook_subscribing: HashSet::new(),
            sub_refreshing: 0,
            emulation_session: Box::default(),
            transport: "websocket",
        }
    }

    /// A session of an HTTP-streaming or SSE connection (`transport`), whose connect reply
    /// names `session`.
    pub(crate) fn with_emulation_session(mut self, session: &str, transport: &'static str) -> Self {
        self.emulation_session = session.into();
        self.transport = transport;
        self
    }

    /// What to do with a result that may come later: queue the reply with id `id` that
    /// `fill` makes of it, or the error.
    fn reply_later<T: 'static>(
        &self,
        id: u32,
        fill: impl FnOnce(&mut Reply, T) + Send + 'static,
    ) -> impl FnOnce(Result<T, ClientError>) + Send + 'static {
        let (conn, encoding) = (Arc::clone(&self.conn), self.encoding());
        move |result| {
            if id == 0 {
                return;
            }
            let reply = match result {
                Ok(value) => {
                    let mut reply = Reply {
                        id,
                        ..Reply::default()
                    };
                    fill(&mut reply, value);
                    reply
                }
                Err(error) => Reply::error(id, error),
            };
            conn.push(&encode_frame(&reply, encoding));
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
    /// length-delimited Protobuf in a binary frame). Each command after the first takes one
    /// more token of the connection's message `rate`; more than
    /// `client.max_commands_per_message` closes with 3501.
    pub(crate) fn handle_frame(
        &mut self,
        opcode: Opcode,
        data: &[u8],
        rate: &mut Option<MessageRate>,
    ) -> Outcome {
        let expected = match self.encoding() {
            Encoding::Json => Opcode::Text,
            Encoding::Protobuf => Opcode::Binary,
        };
        if opcode != expected {
            return Err(CloseReason::BadRequest);
        }
        let commands =
            wire::decode_commands(self.encoding(), data).map_err(|_| CloseReason::BadRequest)?;
        if commands.len() > self.state.config.client.max_commands_per_message {
            return Err(CloseReason::BadRequest);
        }
        for (n, command) in commands.into_iter().enumerate() {
            // The frame itself took the first command's token.
            if n > 0 {
                if let Some(rate) = rate.as_mut() {
                    if !rate.allow(std::time::Instant::now()) {
                        return Err(CloseReason::RateLimited);
                    }
                }
            }
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
        // The commands that wait for the broker queue their own replies.
        let replied = command.publish.is_some()
            || command.presence.is_some()
            || command.presence_stats.is_some()
            || command.history.is_some();
        let churn = command.subscribe.is_some() || command.unsubscribe.is_some();
        if churn {
            if let Some(rate) = self.subscribe_rate.as_mut() {
                if !rate.allow(std::time::Instant::now()) {
                    self.reply_error(id, ClientError::TooManyRequests);
                    return Ok(());
                }
            }
        }
        if let Some(request) = command
            .sub_refresh
            .as_ref()
            .filter(|r| r.kind != wire::SUB_REFRESH_TOKEN)
        {
            self.shared_poll_refresh(id, request.clone());
            return Ok(());
        }
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
            self.publish(id, request)
        } else if let Some(request) = command.presence {
            self.presence(id, &request.channel)
        } else if let Some(request) = command.presence_stats {
            self.presence_stats(id, &request.channel)
        } else if let Some(request) = command.history {
            self.history(id, request)
        } else if let Some(request) = command.sub_refresh {
            self.sub_refresh(&request.channel, &request.token)
                .map(|result| reply.sub_refresh = Some(result))
        } else if command.ping.is_some() {
            reply.ping = Some(Empty {});
            Ok(())
        } else if let Some(request) = command.rpc {
            self.rpc(id, request);
            return Ok(());
        } else if command.send.is_some() {
            // Asynchronous messages have no handler on this server; nothing to answer.
            return Ok(());
        } else {
            Err(ClientError::MethodNotFound)
        };
        match outcome {
            Ok(()) if replied => {}
            Ok(()) if id != 0 => self.send(&reply),
            Ok(()) => {}
            Err(error) => self.reply_error(id, error),
        }
        Ok(())
    }

    fn connect(&mut self, id: u32, request: wire::ConnectRequest) -> Outcome {
        if self.connected || self.connecting {
            return Err(CloseReason::BadRequest);
        }
        if request.token.is_empty() {
            if let Some(endpoint) = self.state.hooks.as_ref().and_then(|h| h.connect()) {
                let endpoint = Arc::clone(endpoint);
                self.connect_hook(id, request, endpoint);
                return Ok(());
            }
        }
        let claims = if request.token.is_empty() {
            if !self.state.resolved.allow_anonymous {
                self.reply_error(id, ClientError::Unauthorized);
                return Ok(());
            }
            Claims::default()
        } else {
            match self.state.verifier.verify_connection(&request.token) {
                Ok(claims) => claims,
                Err(TokenError::Expired) => {
                    self.reply_error(id, ClientError::TokenExpired);
                    return Ok(());
                }
                Err(TokenError::Invalid(why)) => {
                    self.state.node.metrics.auth_failures.inc();
                    tracing::warn!(event = "auth_failed", conn_id = self.conn.id, door = "protocol", reason = %why, "connect refused: invalid token");
                    return Err(CloseReason::InvalidToken);
                }
            }
        };
        self.finish_connect(id, claims, &request, Bytes::new(), false)
    }

    /// Connects with `claims` (from a token, or the connect hook when `by_hook`), subscribes
    /// the server-side channels, and queues the connect reply carrying `data`.
    fn finish_connect(
        &mut self,
        id: u32,
        claims: Claims,
        request: &wire::ConnectRequest,
        data: Bytes,
        by_hook: bool,
    ) -> Outcome {
        // The token's channels count against `client.max_subscriptions` like any other: a
        // token naming more is refused whole (error 106, the connection stays unconnected)
        // rather than subscribed to an arbitrary part of them.
        let max_subscriptions = self.state.config.client.max_subscriptions;
        let named: std::collections::HashSet<&str> = claims
            .channels
            .iter()
            .map(String::as_str)
            .filter(|channel| self.state.channels().rules(channel).is_ok())
            .collect();
        if named.len() > max_subscriptions {
            tracing::warn!(event = "connect_refused", conn_id = self.conn.id, user = %claims.sub, server_subs = named.len(), max_subscriptions, "the token names more channels than client.max_subscriptions");
            self.reply_error(id, ClientError::LimitExceeded);
            return Ok(());
        }
        let expires_at = claims.exp.unwrap_or(0);
        // A session the connect hook made is extended by the refresh hook, server-side: the
        // client is not told it expires (it has no token to refresh with).
        let refreshed_by_hook = by_hook
            && expires_at != 0
            && self
                .state
                .hooks
                .as_ref()
                .is_some_and(|h| h.refresh().is_some());
        if refreshed_by_hook {
            self.conn.set_hook_flags(crate::conn::REFRESH_BY_HOOK);
        }
        self.conn
            .set_connected(&self.client_id, &claims.sub, expires_at);
        self.state.node.conns.connected(&self.conn);
        self.connected = true;
        self.conn_info = claims.info.clone();
        tracing::info!(event = "client_connected", conn_id = self.conn.id, client = %self.client_id, user = %claims.sub, server_subs = claims.channels.len());

        // Server-side subscriptions join first; their publications queue behind the connect
        // reply, which is put in front of them once it is complete.
        let queued_before = self.conn.queued_frames();
        let mut subs = Vec::new();
        for channel in &claims.channels {
            let Ok(rules) = self.state.channels().rules(channel).cloned() else {
                tracing::warn!(event = "server_subscription_skipped", conn_id = self.conn.id, channel = %channel, "token names a channel in an unknown namespace");
                continue;
            };
            if self.subscriptions.contains_key(channel.as_str()) {
                continue;
            }
            let recover = request.subs.get(channel.as_str());
            // On the memory broker the join is done at once and its result goes in the
            // connect reply. On a remote broker it completes later, after the connect reply
            // has gone, and its result is pushed like a server-side subscribe from the API.
            let at_once = self.state.node.is_local();
            let found = Arc::new(std::sync::Mutex::new(None));
            let slot = Arc::clone(&found);
            let (conn, encoding, target) =
                (Arc::clone(&self.conn), self.encoding(), channel.clone());
            self.join(channel, rules, Granted::default(), recover, move |result| {
                match result {
                    Ok(result) if at_once => {
                        if let Ok(mut slot) = slot.lock() {
                            *slot = Some(result.clone());
                        }
                    }
                    result => push_subscribed(&conn, encoding, target, result),
                }
                true
            });
            if let Some(result) = found.lock().ok().and_then(|mut slot| slot.take()) {
                subs.push(wire::SubscriptionEntry {
                    channel: channel.clone(),
                    result: Some(result),
                });
            }
        }
        let heartbeat = self.state.config.server.heartbeat_interval.as_secs().max(1);
        let expires = expiry(if refreshed_by_hook { 0 } else { expires_at });
        let reply = Reply {
            id,
            connect: Some(ConnectResult {
                client: self.client_id.to_string(),
                version: VERSION.to_owned(),
                expires: expires.expires,
                ttl: expires.ttl,
                data,
                subs,
                ping: u32::try_from(heartbeat).unwrap_or(u32::MAX),
                pong: true,
                session: self.emulation_session.to_string(),
                node: self.state.node.uid().to_owned(),
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
            let claims = match self.state.verifier.verify_subscription(token) {
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
                renewed_by_hook: false,
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
        if let Some(what) = request.unsupported() {
            tracing::info!(event = "subscribe_refused", conn_id = self.conn.id, channel = %request.channel, unsupported = what, "subscribe names something this server does not have");
            return self.reply_error(id, ClientError::NotSupported(what));
        }
        if !request.delta.is_empty() && request.delta != DELTA_FOSSIL {
            return self.reply_error(id, ClientError::BadRequest);
        }
        if let Some(Err(error)) = request.tf.as_ref().map(Filter::from_node) {
            tracing::info!(event = "subscribe_refused", conn_id = self.conn.id, channel = %request.channel, %error, "bad tags filter");
            return self.reply_error(id, ClientError::BadRequest);
        }
        let channel = request.channel.as_str();
        let checked = self
            .state
            .channels()
            .rules(channel)
            .map_err(ClientError::from)
            .and_then(|rules| {
                shared_poll::kind_fits(rules, request.kind)?;
                map::kind_fits(rules, request.kind)?;
                if self.subscriptions.contains_key(channel)
                    || self.hook_subscribing.contains(channel)
                {
                    return Err(ClientError::AlreadySubscribed);
                }
                if self.subscriptions.len() + self.hook_subscribing.len()
                    >= self.state.config.client.max_subscriptions
                {
                    return Err(ClientError::LimitExceeded);
                }
                Ok(rules.clone())
            });
        let rules = match checked {
            Ok(rules) => rules,
            Err(error) => return self.reply_error(id, error),
        };
        // Without a subscription token, the namespace's subscribe hook decides (a user's
        // own channel `name#user` is decided here, as always).
        if request.token.is_empty() && user_limited(channel, "").is_none() {
            let hook = self.state.hooks.as_ref().and_then(|h| h.subscribe(channel));
            if let Some(endpoint) = hook.map(Arc::clone) {
                return self.subscribe_hook(id, request, endpoint);
            }
        }
        match self.may_subscribe(channel, &rules, &request.token) {
            Ok(granted) => self.subscribe_granted(id, request, rules, granted, false),
            Err(error) => self.reply_error(id, error),
        }
    }

    /// Joins a subscribe that was granted (by a token, the rules, or the subscribe hook when
    /// `by_hook`).
    fn subscribe_granted(
        &mut self,
        id: u32,
        request: SubscribeRequest,
        rules: ChannelRules,
        granted: Granted,
        by_hook: bool,
    ) {
        let channel = request.channel.as_str();
        let mut granted = granted;
        // A sub_refresh hook renews a map (each of its phases is granted afresh) as any other.
        granted.renewed_by_hook = by_hook
            && granted.expires_at != 0
            && self
                .state
                .hooks
                .as_ref()
                .is_some_and(|h| h.sub_refresh(channel).is_some());
        if request.kind == wire::SUBSCRIPTION_MAP || request.kind == wire::SUBSCRIPTION_MAP_CLIENTS
        {
            return self.map_subscribe(id, request, rules, granted);
        }
        if request.kind == wire::SUBSCRIPTION_SHARED_POLL {
            return self.shared_poll_subscribe(id, request, rules, granted);
        }
        let reject_unrecovered = request.flag & wire::FLAG_REJECT_UNRECOVERED != 0;
        let conn = Arc::clone(&self.conn);
        let encoding = self.encoding();
        self.join(
            channel,
            rules,
            granted,
            Some(&request),
            move |result: Result<&SubscribeResult, ClientError>| {
                let (reply, go) = match result {
                    Ok(result)
                        if reject_unrecovered && result.was_recovering && !result.recovered =>
                    {
                        (Reply::error(id, ClientError::Unrecoverable), false)
                    }
                    Ok(result) => (
                        Reply {
                            id,
                            subscribe: Some(result.clone()),
                            ..Reply::default()
                        },
                        true,
                    ),
                    Err(error) => (Reply::error(id, error), false),
                };
                conn.push(&encode_frame(&reply, encoding));
                go
            },
        );
    }

    /// Joins `channel` through the node (which records presence and sends the join push).
    /// `queue` gets the subscribe result when the stream has been read, queues the reply and
    /// returns whether to join (not, for a refused recovery with `rejectUnrecovered`); it runs
    /// at once (memory broker) or later (remote). Returns whether it joined when that was
    /// decided at once, `None` when the answer comes with `ServerCommand::Joined`.
    fn join(
        &mut self,
        channel: &str,
        rules: ChannelRules,
        granted: Granted,
        recover: Option<&SubscribeRequest>,
        queue: impl FnOnce(Result<&SubscribeResult, ClientError>) -> bool + Send + 'static,
    ) -> Option<bool> {
        // A map subscriber always catches up from the position it names: from where its
        // state pages were read, or (recovering) from what it last saw.
        let recover_from = recover
            .filter(|r| {
                if rules.map {
                    !r.epoch.is_empty()
                } else {
                    r.recover && rules.recover
                }
            })
            .map(|r| (r.offset, Box::<str>::from(r.epoch.as_str())));
        let recoverable = rules.recover && rules.keeps_history();
        // Checked in `subscribe` (a bad one is error 107 there).
        let filter = recover
            .and_then(|r| r.tf.as_ref())
            .and_then(|tf| Filter::from_node(tf).ok())
            .map(Arc::new);
        let replay_filter = filter.clone();
        let asked_recovery = recover.is_some_and(|r| r.recover);
        // In a map deltas run per key, against the value the subscriber holds under it: with
        // a tags filter it may hold none or an old one, so a filtered map subscription gets
        // whole values (`delta: false` tells the SDK so).
        let delta =
            recover.is_some_and(|r| r.delta == DELTA_FOSSIL && !(rules.map && r.tf.is_some()));
        let encoding = self.encoding();
        let expires_at = granted.expires_at;
        let told_expires_at = if granted.renewed_by_hook {
            0
        } else {
            expires_at
        };
        let info = Arc::new(ClientInfo::new(
            &self.client_id,
            self.conn.user(),
            self.conn_info.as_ref(),
            granted.chan_info.as_ref(),
        ));
        self.generations += 1;
        let generation = self.generations;
        let ticket = Arc::new(JoinTicket::default());
        let metrics_node = Arc::clone(&self.state.node);
        let reply_conn = Arc::clone(&self.conn);
        let (conn_id, error_channel) = (self.conn.id, channel.to_owned());
        let reply = Box::new(move |found: Result<StreamState, ClientError>| {
            let mut found = match found {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(event = "subscribe_failed", conn_id, channel = %error_channel, %error, "subscribe refused or the broker could not be reached");
                    return queue(Err(error));
                }
            };
            // A filtered subscription recovers only what its filter passes, as it would
            // have received live.
            if let (Some(filter), Some(Ok(missed))) = (&replay_filter, &mut found.recovery) {
                missed.retain(|p| filter.matches(p.tags.as_deref()));
            }
            let budget = reply_conn.reply_budget();
            let mut result = subscribe_result(found, recoverable, encoding, budget, delta);
            if told_expires_at != 0 {
                result.expires = true;
                result.ttl = ttl_of(told_expires_at);
            }
            // A map subscriber's catch-up after its state pages is no recovery; its
            // reconnect (`recover` asked) is.
            if result.was_recovering && asked_recovery {
                let outcome = if result.recovered {
                    "recovered"
                } else {
                    "unrecovered"
                };
                metrics_node
                    .metrics
                    .recoveries
                    .with_label_values(&[outcome])
                    .inc();
            }
            queue(Ok(&result))
        });
        // Recorded before the node decides, so a second subscribe is refused meanwhile.
        self.subscriptions.insert(
            channel.into(),
            Subscription {
                rules: rules.clone(),
                info: Arc::clone(&info),
                expires_at,
                generation,
                pending: Some(Arc::clone(&ticket)),
                by_hook: granted.renewed_by_hook,
                shared_poll: false,
            },
        );
        self.conn.set_subscription_count(self.subscriptions.len());
        let request = JoinRequest {
            channel: channel.into(),
            rules,
            conn: Arc::clone(&self.conn),
            info,
            recover_from,
            generation,
            ticket,
            filter,
            delta,
        };
        let joined = self.state.node.join(request, reply);
        match joined {
            Some(true) => {
                if let Some(subscription) = self.subscriptions.get_mut(channel) {
                    subscription.pending = None;
                }
                self.track_subscription_expiry();
            }
            Some(false) => {
                self.subscriptions.remove(channel);
                self.conn.set_subscription_count(self.subscriptions.len());
            }
            None => {}
        }
        joined
    }

    /// Leaves `channel`; with `push_code`, tells the client it was unsubscribed by the server.
    fn unsubscribe(&mut self, channel: &str, push_code: Option<u32>) {
        let Some(subscription) = self.subscriptions.remove(channel) else {
            return;
        };
        self.conn.set_subscription_count(self.subscriptions.len());
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
        if subscription.shared_poll {
            self.state.polls.leave(channel, self.conn.id);
            return;
        }
        if let Some(ticket) = &subscription.pending {
            if ticket.abandon() != TicketState::Joined {
                // Still waiting: the worker undoes its side. Failed: nothing to undo.
                return;
            }
        }
        self.state.node.leave(
            channel,
            self.conn.id,
            &subscription.rules,
            &subscription.info,
        );
        if let Some(prefix) = &subscription.rules.map_clients_presence_prefix {
            self.list_in_presence(&format!("{prefix}{channel}"), &subscription.info, false);
        }
    }

    /// Whether this connection may publish to `channel` under `rules`.
    fn may_publish(&self, channel: &str, rules: &ChannelRules) -> bool {
        match rules.publish {
            PublishRule::None => false,
            PublishRule::Subscribers => self.subscriptions.contains_key(channel),
            PublishRule::Authenticated => !self.conn.user().is_empty(),
            PublishRule::Anonymous => true,
        }
    }

    fn publish(&mut self, id: u32, request: wire::PublishRequest) -> Result<(), ClientError> {
        // A map's keyed publish or removal goes to map channels only; a stream publication
        // to a map would be a value with no key, which its subscribers cannot place.
        let keyed = request.kind != 0 || !request.key.is_empty() || request.removed;
        let channel = request.channel.as_str();
        let rules = self.state.channels().rules(channel)?.clone();
        if rules.shared_poll.is_some() {
            return Err(ClientError::IsSharedPoll);
        }
        match (rules.map, keyed) {
            (true, false) => return Err(ClientError::IsAMap),
            (false, true) => return Err(ClientError::NotAMap),
            (true, true) => self.state.node.serves_maps()?,
            (false, false) => {}
        }
        // JSON `data` is a JSON value; absent, there is nothing to publish (a removal
        // carries none).
        if self.encoding() == Encoding::Json && request.data.is_empty() && !request.removed {
            return Err(ClientError::BadRequest);
        }
        // A user-limited channel (`name#42`) is a user's inbox: only the backend writes there.
        if user_limited(channel, "").is_some() {
            return Err(ClientError::PermissionDenied);
        }
        // The namespace's publish hook decides instead of its `publish` rule.
        let hook = self.state.hooks.as_ref().and_then(|h| h.publish(channel));
        if let Some(endpoint) = hook.map(Arc::clone) {
            if keyed {
                // The hook's request has no key to show it: it cannot decide this one.
                return Err(ClientError::NotSupported(
                    "map publication with a publish hook",
                ));
            }
            return self.publish_hook(id, request, endpoint);
        }
        if !self.may_publish(channel, &rules) {
            return Err(ClientError::PermissionDenied);
        }
        if keyed {
            return self.map_publish(id, request, &rules);
        }
        self.publish_data(id, channel, request.data)
    }

    /// Publishes `data` (as the client sent it, or as the publish hook rewrote it).
    fn publish_data(&mut self, id: u32, channel: &str, data: Bytes) -> Result<(), ClientError> {
        let rules = self.state.channels().rules(channel)?;
        let info = match self.subscriptions.get(channel) {
            Some(subscription) => Arc::clone(&subscription.info),
            None => Arc::new(ClientInfo::new(
                &self.client_id,
                self.conn.user(),
                self.conn_info.as_ref(),
                None,
            )),
        };
        let mut publication = match self.encoding() {
            Encoding::Json => Publication::json(data),
            Encoding::Protobuf => Publication::bytes(data),
        };
        publication.info = Some(info);
        publication.trace = self.conn.trace();
        let done = self.reply_later(id, |reply, _| reply.publish = Some(Empty {}));
        self.state
            .node
            .publish_then(&mut self.order, channel, rules, publication, done);
        Ok(())
    }

    /// Presence and history may be read by subscribers, and by whoever may subscribe.
    fn may_read(&self, channel: &str) -> Result<&ChannelRules, ClientError> {
        let rules = self.state.channels().rules(channel)?;
        if !self.subscriptions.contains_key(channel) {
            self.may_subscribe(channel, rules, "")?;
        }
        Ok(rules)
    }

    fn presence(&self, id: u32, channel: &str) -> Result<(), ClientError> {
        if !self.may_read(channel)?.presence {
            return Err(ClientError::NotAvailable);
        }
        let done = self.reply_later(id, |reply, present: Vec<Arc<ClientInfo>>| {
            reply.presence = Some(presence_result(&present));
        });
        self.state.node.presence_then(channel, done);
        Ok(())
    }

    fn presence_stats(&self, id: u32, channel: &str) -> Result<(), ClientError> {
        if !self.may_read(channel)?.presence {
            return Err(ClientError::NotAvailable);
        }
        let done = self.reply_later(id, |reply, counts: (usize, usize)| {
            reply.presence_stats = Some(presence_stats_result(counts));
        });
        self.state.node.presence_stats_then(channel, done);
        Ok(())
    }

    fn history(&self, id: u32, request: wire::HistoryRequest) -> Result<(), ClientError> {
        if !self.may_read(&request.channel)?.keeps_history() {
            return Err(ClientError::NotAvailable);
        }
        let encoding = self.encoding();
        let (range, since_epoch) = history_range(&request);
        let (conn, channel) = (Arc::clone(&self.conn), request.channel);
        self.state.node.history_then(
            &channel,
            range,
            move |found: Result<HistoryPage, ClientError>| {
                let result = found.and_then(|page| {
                    history_result(page, &since_epoch, encoding, conn.reply_budget())
                });
                let reply = match result {
                    Ok(history) => Reply {
                        id,
                        history: Some(history),
                        ..Reply::default()
                    },
                    Err(error) => Reply::error(id, error),
                };
                if id != 0 {
                    conn.push(&encode_frame(&reply, encoding));
                }
            },
        );
        Ok(())
    }

    fn refresh(&mut self, id: u32, token: &str) -> Outcome {
        let claims = match self.state.verifier.verify_connection(token) {
            Ok(claims) => claims,
            Err(TokenError::Expired) => {
                self.reply_error(id, ClientError::TokenExpired);
                return Ok(());
            }
            Err(TokenError::Invalid(_)) => return Err(CloseReason::InvalidToken),
        };
        // A refresh extends a session; a token without `exp` would make it endless.
        if claims.sub != self.conn.user() || claims.exp.is_none() {
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
    /// When the earliest one is renewed by the sub_refresh hook, the sweep asks for that at
    /// its expiry instead.
    fn track_subscription_expiry(&self) {
        let earliest = self
            .subscriptions
            .values()
            .filter(|s| s.expires_at != 0)
            .min_by_key(|s| s.expires_at);
        self.conn
            .set_subscription_expires_at(earliest.map_or(0, |s| s.expires_at));
        if earliest.is_some_and(|s| s.by_hook) {
            self.conn.set_hook_flags(crate::conn::SUB_REFRESH_BY_HOOK);
        } else {
            self.conn.clear_hook_flags(crate::conn::SUB_REFRESH_BY_HOOK);
        }
    }

    fn sub_refresh(&mut self, channel: &str, token: &str) -> Result<ExpiryResult, ClientError> {
        if !self.subscriptions.contains_key(channel) {
            return Err(ClientError::PermissionDenied);
        }
        let claims = match self.state.verifier.verify_subscription(token) {
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
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        for (channel, subscription) in std::mem::take(&mut self.subscriptions) {
            self.leave(&channel, &subscription);
        }
    }
}

/// Pushes a server-side subscription's result (or, on failure, an unsubscribe the SDK may
/// retry) to `conn`.
fn push_subscribed(
    conn: &Conn,
    encoding: Encoding,
    channel: String,
    result: Result<&SubscribeResult, ClientError>,
) {
    let push = match result {
        Ok(result) => Push {
            channel,
            subscribe: Some(result.clone()),
            ..Push::default()
        },
        Err(_) => Push {
            channel,
            unsubscribe: Some(wire::Unsubscribed {
                code: UNSUBSCRIBE_TEMPORARY,
                reason: "broker unavailable".to_owned(),
            }),
            ..Push::default()
        },
    };
    conn.push(&encode_frame(&Reply::push(push), encoding));
}
