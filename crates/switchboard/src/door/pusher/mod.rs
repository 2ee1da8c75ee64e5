//! The Pusher protocol door: `GET /app/{key}?protocol=7` opens a WebSocket that speaks the
//! Pusher channels protocol (pusher-js, Laravel Echo), and [`api`] serves Pusher's signed HTTP
//! API under `/apps/{id}/…`.
//!
//! This module owns one Pusher connection's session: its socket id, its subscriptions (public,
//! `private-`, `private-encrypted-`, `presence-`) with their signature checks, its user after
//! `pusher:signin`, and its client events. Every channel is the hub channel `app_id:name`
//! (`pusher_wire`), joined and published through the node, so a publication from any door,
//! the API or another node reaches Pusher subscribers in the Pusher format, encoded once per
//! publication. Presence goes through the node's presence (kept by the broker, so members on
//! every node are listed); member_added/member_removed go out once per user, and the
//! occupancy and member webhooks are decided, by the node (`node/pusher.rs`); client events
//! are handed to the webhooks here. The app's limits (connections, client event rate, payload
//! size) are checked here too.

pub(crate) mod api;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::channels::ChannelRules;
use crate::config::{PublishRule, PusherAppConfig, SubscribeRule};
use crate::conn::{Conn, MessageRate, ServerCommand};
use crate::error::CloseReason;
use crate::node::{AppSlot, JoinRequest, JoinTicket, PublishOrder, TicketState};
use crate::publication::{ClientInfo, Publication};
use crate::pusher_wire::{self, ChannelData, ChannelKind, ClientMessage, Subscribe, Unsubscribe};
use crate::state::State;
use crate::webhooks::WebhookKind;
use crate::ws::frame::Opcode;

/// The only protocol version served.
const PROTOCOL_VERSION: &str = "7";

/// The app of the key in `path` (`/app/{key}`), a supported `protocol` in `query` and an
/// `origin` the app allows, or why
/// the connection will be refused once it is open (Pusher refuses with `pusher:error` on the
/// socket, not with an HTTP status, so its clients see the code).
pub(crate) fn start(
    state: &State,
    path: &str,
    query: Option<&str>,
    origin: Option<&str>,
) -> Result<PusherAppConfig, CloseReason> {
    let key = path.strip_prefix("/app/").unwrap_or_default();
    let app = state
        .config
        .pusher
        .apps
        .iter()
        .find(|app| app.key == key)
        .ok_or(CloseReason::PusherUnknownApp)?;
    let protocol = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("protocol="));
    if protocol != Some(PROTOCOL_VERSION) {
        return Err(CloseReason::PusherUnsupportedProtocol);
    }
    // A client with no `Origin` is not a browser; the app's list, like the node's, is about
    // which web pages may connect.
    if let Some(origin) = origin {
        if !app.allowed_origins.is_empty() && !app.allowed_origins.iter().any(|o| o == origin) {
            return Err(CloseReason::PusherOriginNotAllowed);
        }
    }
    Ok(app.clone())
}

/// The rules a Pusher channel joins the node with: no history (Pusher keeps none); presence
/// for `presence-` channels, whose members the node announces once per user
/// (`Node::pusher_subscribed`), not once per connection as `join_leave` would.
fn rules(kind: ChannelKind) -> ChannelRules {
    let presence = kind == ChannelKind::Presence;
    ChannelRules {
        subscribe: SubscribeRule::Anonymous,
        publish: PublishRule::Subscribers,
        presence,
        join_leave: false,
        history_size: 0,
        history_ttl: std::time::Duration::ZERO,
        recover: false,
        map: false,
        map_key_ttl: std::time::Duration::ZERO,
        map_client_key: crate::config::MapClientKey::Sent,
        map_clients: false,
        map_clients_presence_prefix: None,
        shared_poll: None,
    }
}

/// One subscription.
struct Subscription {
    hub: Box<str>,
    kind: ChannelKind,
    /// Presence channels: the member, and the join (which may wait for a remote broker).
    member: Option<Member>,
}

struct Member {
    info: Arc<ClientInfo>,
    ticket: Arc<JoinTicket>,
    generation: u64,
    /// Still waiting for the broker's answer.
    pending: bool,
    /// Counted by the node as a member (joined, `subscription_succeeded` sent).
    counted: bool,
}

/// The Pusher state of one connection; dropping it leaves every channel.
pub(crate) struct PusherSession {
    state: Arc<State>,
    conn: Arc<Conn>,
    app: PusherAppConfig,
    socket_id: Box<str>,
    /// The user of `pusher:signin`, once signed in.
    user: Option<Box<str>>,
    subscriptions: HashMap<Box<str>, Subscription>,
    order: PublishOrder,
    generation: u64,
    /// The app's `max_client_events_per_second`.
    client_event_rate: Option<MessageRate>,
    /// This connection's place in the app's `max_connections`.
    _slot: AppSlot,
}

impl PusherSession {
    /// Opens the session: gives the connection its socket id and sends
    /// `pusher:connection_established`.
    ///
    /// # Errors
    /// [`CloseReason::PusherOverQuota`] when the app has `max_connections` here already.
    pub(crate) fn open(
        state: Arc<State>,
        conn: Arc<Conn>,
        app: PusherAppConfig,
    ) -> Result<Self, CloseReason> {
        let slot = state
            .node
            .pusher_app_slot(&app.id, app.max_connections)
            .ok_or(CloseReason::PusherOverQuota)?;
        // Pusher's socket ids are two numbers joined by a dot; the connection id makes it
        // unique on this node, the random part across nodes.
        let socket_id: Box<str> = format!("{}.{}", fastrand::u32(1..1_000_000_000), conn.id).into();
        let established = pusher_wire::event_frame_stringified(
            "pusher:connection_established",
            None,
            &json!({
                "socket_id": &*socket_id,
                "activity_timeout": state.config.pusher.activity_timeout.as_secs(),
            }),
        );
        conn.set_client_id(&socket_id);
        conn.push(&established);
        let client_event_rate = MessageRate::new(app.max_client_events_per_second, 0);
        Ok(PusherSession {
            state,
            conn,
            app,
            socket_id,
            user: None,
            subscriptions: HashMap::new(),
            order: PublishOrder::default(),
            generation: 0,
            client_event_rate,
            _slot: slot,
        })
    }

    fn send_error(&self, message: &str) {
        // Pusher sends recoverable errors with a null code; the connection stays open.
        let data = json!({ "code": Value::Null, "message": message }).to_string();
        self.conn
            .push(&pusher_wire::event_frame("pusher:error", None, &data));
    }

    fn subscription_error(&self, channel: &str, status: u16, kind: &str, error: &str) {
        let data = json!({ "type": kind, "error": error, "status": status }).to_string();
        self.conn.push(&pusher_wire::event_frame(
            "pusher:subscription_error",
            Some(channel),
            &data,
        ));
    }

    /// Handles one message from the client.
    pub(crate) fn handle_frame(&mut self, opcode: Opcode, data: &[u8]) -> Result<(), CloseReason> {
        if opcode != Opcode::Text {
            return Err(CloseReason::BadRequest);
        }
        let message: ClientMessage<'_> = match serde_json::from_slice(data) {
            Ok(message) => message,
            Err(_) => {
                self.send_error("Invalid JSON: expected {\"event\":…,\"data\":…}");
                return Ok(());
            }
        };
        match &*message.event {
            "pusher:ping" => self
                .conn
                .push(&pusher_wire::event_frame("pusher:pong", None, "{}")),
            "pusher:pong" => true,
            "pusher:subscribe" => {
                match message.data.map(parse_data::<Subscribe>) {
                    Some(Ok(subscribe)) => self.subscribe(subscribe),
                    _ => self.send_error("pusher:subscribe needs data {\"channel\":…}"),
                }
                true
            }
            "pusher:unsubscribe" => {
                match message.data.map(parse_data::<Unsubscribe>) {
                    Some(Ok(unsubscribe)) => self.unsubscribe(&unsubscribe.channel),
                    _ => self.send_error("pusher:unsubscribe needs data {\"channel\":…}"),
                }
                true
            }
            "pusher:signin" => {
                self.signin(message.data);
                true
            }
            event if event.starts_with("client-") => {
                self.client_event(event, message.channel.as_deref(), message.data);
                true
            }
            other => {
                self.send_error(&format!("Unsupported event {other:?}"));
                true
            }
        };
        Ok(())
    }

    /// The auth value `key:signature` checks out for `message`.
    fn authorized(&self, auth: Option<&str>, message: &str) -> bool {
        let Some((key, signature)) = auth.and_then(|a| a.split_once(':')) else {
            return false;
        };
        key == self.app.key && pusher_wire::verify(&self.app.secret, message, signature)
    }

    fn subscribe(&mut self, request: Subscribe) {
        let name = request.channel.as_str();
        if let Err(why) = pusher_wire::check_channel(name) {
            return self.subscription_error(name, 400, "BadChannelName", why);
        }
        if self.subscriptions.contains_key(name) {
            return;
        }
        let kind = ChannelKind::of(name);
        if let Some(user) = name.strip_prefix(pusher_wire::USER_CHANNEL_PREFIX) {
            // A user's own channel: what `sendToUser` publishes; only that user may join it.
            if self.user.as_deref() != Some(user) {
                return self.subscription_error(
                    name,
                    403,
                    "AuthError",
                    "only the signed-in user joins its own channel",
                );
            }
        } else if kind.needs_auth() {
            let signed = match (kind, &request.channel_data) {
                (ChannelKind::Presence, Some(data)) => format!("{}:{name}:{data}", self.socket_id),
                (ChannelKind::Presence, None) => {
                    return self.subscription_error(
                        name,
                        400,
                        "AuthError",
                        "presence channels need channel_data",
                    )
                }
                _ => format!("{}:{name}", self.socket_id),
            };
            if !self.authorized(request.auth.as_deref(), &signed) {
                return self.subscription_error(name, 401, "AuthError", "Invalid signature");
            }
        }
        if self.subscriptions.len() >= self.state.config.client.max_subscriptions {
            return self.subscription_error(
                name,
                429,
                "LimitReached",
                "too many subscriptions on this connection",
            );
        }
        let hub: Box<str> = pusher_wire::hub_channel(&self.app.id, name).into();
        if self.state.node.admit_channel(&hub).is_err() {
            return self.subscription_error(
                name,
                503,
                "LimitReached",
                "this node holds too many channels",
            );
        }
        if kind != ChannelKind::Presence {
            // Told first, joined next: no publication reaches the client before it.
            self.conn.push(&pusher_wire::event_frame(
                "pusher_internal:subscription_succeeded",
                Some(name),
                "\"{}\"",
            ));
            self.state.node.attach(&hub, &self.conn);
            self.state.node.pusher_subscribed(&hub, None);
            self.subscriptions.insert(
                name.into(),
                Subscription {
                    hub,
                    kind,
                    member: None,
                },
            );
            return;
        }
        let member = request
            .channel_data
            .as_deref()
            .and_then(|text| serde_json::from_str::<ChannelData>(text).ok())
            .and_then(|data| Some((data.user_id()?, data.user_info)));
        let Some((user_id, user_info)) = member else {
            return self.subscription_error(name, 400, "AuthError", "channel_data needs a user_id");
        };
        let info = Arc::new(ClientInfo::new(
            &self.socket_id,
            &user_id,
            None,
            Some(&user_info.unwrap_or(Value::Null)),
        ));
        self.generation += 1;
        let ticket = Arc::new(JoinTicket::default());
        let request = JoinRequest {
            channel: hub.clone(),
            rules: rules(kind),
            conn: Arc::clone(&self.conn),
            info: Arc::clone(&info),
            recover_from: None,
            generation: self.generation,
            ticket: Arc::clone(&ticket),
            filter: None,
            delta: false,
        };
        let (conn, channel) = (Arc::clone(&self.conn), Box::<str>::from(name));
        let reply = Box::new(move |result: Result<_, _>| match result {
            Ok(_) => true,
            Err(error) => {
                let data =
                    json!({ "type": "LimitReached", "error": format!("{error}"), "status": 503 });
                conn.push(&pusher_wire::event_frame(
                    "pusher:subscription_error",
                    Some(&channel),
                    &data.to_string(),
                ));
                false
            }
        });
        self.subscriptions.insert(
            name.into(),
            Subscription {
                hub: hub.clone(),
                kind,
                member: Some(Member {
                    info,
                    ticket,
                    generation: self.generation,
                    pending: true,
                    counted: false,
                }),
            },
        );
        match self.state.node.join(request, reply) {
            Some(true) => self.joined(name),
            Some(false) => {
                self.subscriptions.remove(name);
            }
            None => {}
        }
    }

    /// A presence join is done: sends `subscription_succeeded` with the members.
    fn joined(&mut self, name: &str) {
        let Some(subscription) = self.subscriptions.get_mut(name) else {
            return;
        };
        let Some(member) = subscription.member.as_mut() else {
            return;
        };
        if member.counted {
            return;
        }
        member.pending = false;
        member.counted = true;
        let own = Arc::clone(&member.info);
        self.state
            .node
            .pusher_subscribed(&subscription.hub, Some(&own));
        let (conn, channel) = (Arc::clone(&self.conn), Box::<str>::from(name));
        self.state
            .node
            .presence_then(&subscription.hub, move |present| {
                let mut present = present.unwrap_or_default();
                // On a remote broker the member's own entry is written after the join, and
                // may not be read back yet; the client must find itself in the list.
                if !present.iter().any(|info| info.user == own.user) {
                    present.push(own);
                }
                let mut ids: Vec<&str> = Vec::new();
                let mut hash = serde_json::Map::new();
                for info in &present {
                    if !hash.contains_key(&*info.user) {
                        ids.push(&info.user);
                        let user_info =
                            serde_json::from_slice(info.chan_info()).unwrap_or(Value::Null);
                        hash.insert(info.user.to_string(), user_info);
                    }
                }
                let data = json!({
                    "presence": { "ids": ids, "hash": hash, "count": ids.len() }
                });
                conn.push(&pusher_wire::event_frame_stringified(
                    "pusher_internal:subscription_succeeded",
                    Some(&channel),
                    &data,
                ));
            });
    }

    fn unsubscribe(&mut self, name: &str) {
        let Some(subscription) = self.subscriptions.remove(name) else {
            return;
        };
        self.leave(subscription);
    }

    fn leave(&self, subscription: Subscription) {
        let node = &self.state.node;
        match subscription.member {
            None => {
                node.detach(&subscription.hub, self.conn.id);
                node.pusher_unsubscribed(&subscription.hub, None);
            }
            Some(member) => {
                // A join still waiting for the broker is called off; one that got through
                // meanwhile is left like any other.
                if member.pending && member.ticket.abandon() != TicketState::Joined {
                    return;
                }
                node.leave(
                    &subscription.hub,
                    self.conn.id,
                    &rules(subscription.kind),
                    &member.info,
                );
                if member.counted {
                    node.pusher_unsubscribed(&subscription.hub, Some(&member.info));
                }
            }
        }
    }

    /// Handles what the node asked of the connection: the end of a join that waited for a
    /// remote broker (the API's subscribe commands are for the client protocol only).
    pub(crate) fn handle_server_command(&mut self, command: ServerCommand) {
        let ServerCommand::Joined {
            channel,
            generation,
            joined,
        } = command
        else {
            return;
        };
        let name = pusher_wire::pusher_name(&channel).to_owned();
        let current = self
            .subscriptions
            .get(name.as_str())
            .and_then(|s| s.member.as_ref())
            .is_some_and(|m| m.generation == generation);
        if !current {
            return;
        }
        if joined {
            self.joined(&name);
        } else {
            self.subscriptions.remove(name.as_str());
        }
    }

    fn signin(&mut self, data: Option<&RawValue>) {
        #[derive(serde::Deserialize)]
        struct Signin {
            auth: String,
            user_data: String,
        }
        let Some(Ok(signin)) = data.map(parse_data::<Signin>) else {
            return self.send_error("pusher:signin needs data {\"auth\":…,\"user_data\":…}");
        };
        let message = format!("{}::user::{}", self.socket_id, signin.user_data);
        let id = serde_json::from_str::<Value>(&signin.user_data)
            .ok()
            .and_then(|v| match v.get("id") {
                Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            });
        let Some(id) = id else {
            return self.send_error("user_data needs an id");
        };
        if self.user.is_some() || !self.authorized(Some(&signin.auth), &message) {
            return self.send_error("Invalid signin: bad signature, or signed in already");
        }
        // Indexed under `app:user`, so the API of one app reaches its own users only.
        let user = format!("{}:{id}", self.app.id);
        if !self.conn.set_user(&user) {
            return self.send_error("Signed in already");
        }
        self.state.node.conns.connected(&self.conn);
        self.user = Some(id.into());
        let reply = json!({ "user_data": signin.user_data }).to_string();
        self.conn.push(&pusher_wire::event_frame(
            "pusher:signin_success",
            None,
            &reply,
        ));
    }

    fn client_event(&mut self, event: &str, channel: Option<&str>, data: Option<&RawValue>) {
        if !self.app.client_events {
            return self.send_error("Client events are not enabled for this app");
        }
        let Some(name) = channel else {
            return self.send_error("A client event needs a channel");
        };
        if event.len() > pusher_wire::MAX_EVENT_NAME {
            return self.send_error("Event names are at most 200 characters long");
        }
        let Some(subscription) = self.subscriptions.get(name) else {
            return self.send_error("Client event rejected: not subscribed to the channel");
        };
        if subscription.kind == ChannelKind::Public {
            return self.send_error(
                "Client event rejected: only supported on private and presence channels",
            );
        }
        let null = RawValue::from_string("null".to_owned()).ok();
        let Some(data) = data.or(null.as_deref()) else {
            return;
        };
        if data.get().len() > self.app.max_event_bytes {
            return self.send_error(&format!(
                "Client event rejected: data larger than {} bytes",
                self.app.max_event_bytes
            ));
        }
        if let Some(rate) = self.client_event_rate.as_mut() {
            if !rate.allow(std::time::Instant::now()) {
                let error = pusher_wire::error_frame(
                    4301,
                    "Client event rejected due to rate limit (max_client_events_per_second)",
                );
                self.conn.push(&error);
                return;
            }
        }
        let user_id = subscription.member.as_ref().map(|m| &*m.info.user);
        let webhooks = &self.state.node.webhooks;
        if webhooks.wants(&self.app.id, WebhookKind::ClientEvent) {
            // Pusher's webhook carries the data as a string: a client's string as it is,
            // anything else as its JSON text.
            let text = serde_json::from_str::<String>(data.get())
                .unwrap_or_else(|_| data.get().to_owned());
            let mut fields = vec![
                ("event", Value::from(event)),
                ("data", Value::from(text)),
                ("socket_id", Value::from(&*self.socket_id)),
            ];
            if let Some(user) = user_id {
                fields.push(("user_id", Value::from(user)));
            }
            webhooks.emit(&subscription.hub, WebhookKind::ClientEvent, &fields);
        }
        let payload = pusher_wire::envelope(event, data, user_id);
        let sender = Arc::new(ClientInfo::new(
            &self.socket_id,
            self.user.as_deref().unwrap_or_default(),
            None,
            None,
        ));
        let publication = Publication::json(payload).positioned(0, Some(sender));
        let hub = subscription.hub.clone();
        let conn = Arc::clone(&self.conn);
        self.state.node.publish_then(
            &mut self.order,
            &hub,
            &rules(subscription.kind),
            publication,
            move |published| {
                if let Err(error) = published {
                    let data = json!({ "code": Value::Null, "message": format!("Client event not sent: {error}") });
                    conn.push(&pusher_wire::event_frame("pusher:error", None, &data.to_string()));
                }
            },
        );
    }
}

impl Drop for PusherSession {
    fn drop(&mut self) {
        for (_, subscription) in std::mem::take(&mut self.subscriptions) {
            self.leave(subscription);
        }
    }
}

/// Pusher clients send `data` as an object, some as a JSON string holding one: both read.
fn parse_data<T: serde::de::DeserializeOwned>(raw: &RawValue) -> Result<T, serde_json::Error> {
    match serde_json::from_str::<T>(raw.get()) {
        Ok(value) => Ok(value),
        Err(error) => match serde_json::from_str::<String>(raw.get()) {
            Ok(text) => serde_json::from_str(&text),
            Err(_) => Err(error),
        },
    }
}
