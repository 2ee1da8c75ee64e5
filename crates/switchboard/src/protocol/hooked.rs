//! The client protocol's side of the backend hooks (docs/hooks.md): which command asks which
//! hook, the request body it sends, and what each answer does to the session.
//!
//! The session is synchronous, so a hook call runs in a task of its own (tracked by the
//! gateway, bounded by the hook's timeout and retries) and its answer comes back through the
//! connection's inbox as `ServerCommand::Hooked`, like a join that waited for the broker. The
//! command it answers is kept meanwhile in [`Pending`], by call number. A connection has at
//! most [`MAX_PENDING`] calls under way. A hook that gives no answer (breaker open, timeout,
//! failure) is a temporary error to the client (code 100), never a wait.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{ClientSession, Granted, UNSUBSCRIBE_BY_SERVER};
use crate::auth::{unix_now, Claims};
use crate::conn::{ServerCommand, REFRESH_BY_HOOK, REFRESH_IN_FLIGHT, SUB_REFRESH_IN_FLIGHT};
use crate::error::{ClientError, CloseReason};
use crate::hooks::{Answer, Endpoint, HookError};
use crate::wire::{self, Encoding, ErrorBody, Reply, RpcResult, SubscribeRequest};

/// Most hook calls one connection may have under way; past it, error 111.
const MAX_PENDING: usize = 64;

/// The command a hook call answers.
pub(super) enum Pending {
    Connect {
        id: u32,
        request: wire::ConnectRequest,
    },
    Subscribe {
        id: u32,
        request: SubscribeRequest,
    },
    Publish {
        id: u32,
        channel: String,
        data: Bytes,
    },
    Rpc {
        id: u32,
    },
    Refresh,
    SubRefresh {
        channel: Box<str>,
        generation: u64,
    },
}

/// The connect hook's `result`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ConnectResult {
    user: String,
    expire_at: u64,
    info: Option<Value>,
    data: Option<Value>,
    b64data: Option<String>,
    channels: Vec<String>,
}

/// The refresh and sub_refresh hooks' `result`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RefreshResult {
    expired: bool,
    expire_at: u64,
}

/// The subscribe hook's `result`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct SubscribeResult {
    info: Option<Value>,
    expire_at: u64,
}

/// The publish and rpc hooks' `result`: new data, as JSON or base64.
#[derive(Deserialize, Default)]
#[serde(default)]
struct DataResult {
    data: Option<Value>,
    b64data: Option<String>,
}

/// A `result` as the typed shape, or a bad reply (error 100 to the client).
fn read<T: for<'de> Deserialize<'de>>(result: Value) -> Result<T, ClientError> {
    serde_json::from_value(result).map_err(|error| {
        tracing::warn!(event = "hook_bad_result", %error, "a hook's result is not the expected JSON");
        ClientError::Internal
    })
}

/// The data of a result in the connection's encoding: JSON text, or bytes (`b64data` first).
fn data_of(encoding: Encoding, data: Option<Value>, b64data: Option<String>) -> Option<Bytes> {
    if encoding == Encoding::Protobuf {
        if let Some(bytes) =
            b64data.and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        {
            return Some(Bytes::from(bytes));
        }
    }
    data.filter(|d| !d.is_null())
        .and_then(|d| serde_json::to_vec(&d).ok())
        .map(Bytes::from)
}

/// A backend's own error, as the client gets it.
fn custom_error(id: u32, code: u32, message: String, temporary: bool) -> Reply {
    Reply {
        id,
        error: Some(ErrorBody {
            code,
            message,
            temporary,
        }),
        ..Reply::default()
    }
}

impl ClientSession {
    /// The fields every hook request carries.
    fn hook_body(&self) -> Map<String, Value> {
        let mut body = Map::new();
        body.insert("client".into(), Value::from(&*self.client_id));
        body.insert("transport".into(), Value::from(self.transport));
        let (protocol, encoding) = match self.encoding() {
            Encoding::Json => ("json", "json"),
            Encoding::Protobuf => ("protobuf", "binary"),
        };
        body.insert("protocol".into(), Value::from(protocol));
        body.insert("encoding".into(), Value::from(encoding));
        if self.connected {
            body.insert("user".into(), Value::from(self.conn.user()));
        }
        body
    }

    /// Adds a client's data: JSON as `data`, bytes (Protobuf) as `b64data`.
    fn put_data(&self, body: &mut Map<String, Value>, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match self.encoding() {
            Encoding::Json => {
                if let Ok(value) = serde_json::from_slice::<Value>(data) {
                    if !value.is_null() {
                        body.insert("data".into(), value);
                    }
                }
            }
            Encoding::Protobuf => {
                let text = base64::engine::general_purpose::STANDARD.encode(data);
                body.insert("b64data".into(), Value::from(text));
            }
        }
    }

    /// Starts a hook call whose answer comes back as `ServerCommand::Hooked`.
    fn call_hook(
        &mut self,
        endpoint: Arc<Endpoint>,
        body: Map<String, Value>,
        then: Pending,
    ) -> Result<(), ClientError> {
        if self.hook_calls.len() >= MAX_PENDING {
            return Err(ClientError::TooManyRequests);
        }
        let Some(hooks) = self.state.hooks.clone() else {
            return Err(ClientError::Internal);
        };
        self.hook_seq += 1;
        let seq = self.hook_seq;
        self.hook_calls.insert(seq, then);
        let conn = Arc::clone(&self.conn);
        let forwarded = self.forwarded.clone();
        self.state.tracker.spawn(async move {
            let body = Value::Object(body);
            let answer = hooks.call(&endpoint, &body, forwarded.as_deref()).await;
            // A closing connection takes no more commands; its session is going away.
            let _ = conn.request(ServerCommand::Hooked { seq, answer });
        });
        Ok(())
    }

    /// `connect` without a token: asks the connect hook who this is.
    pub(super) fn connect_hook(
        &mut self,
        id: u32,
        request: wire::ConnectRequest,
        endpoint: Arc<Endpoint>,
    ) {
        let mut body = self.hook_body();
        self.put_data(&mut body, &request.data);
        if !request.name.is_empty() {
            body.insert("name".into(), Value::from(request.name.as_str()));
        }
        if !request.version.is_empty() {
            body.insert("version".into(), Value::from(request.version.as_str()));
        }
        match self.call_hook(endpoint, body, Pending::Connect { id, request }) {
            Ok(()) => self.connecting = true,
            Err(error) => self.reply_error(id, error),
        }
    }

    /// `subscribe` without a token in a namespace with a subscribe hook.
    pub(super) fn subscribe_hook(
        &mut self,
        id: u32,
        request: SubscribeRequest,
        endpoint: Arc<Endpoint>,
    ) {
        let mut body = self.hook_body();
        body.insert("channel".into(), Value::from(request.channel.as_str()));
        let channel: Box<str> = request.channel.as_str().into();
        match self.call_hook(endpoint, body, Pending::Subscribe { id, request }) {
            Ok(()) => {
                self.hook_subscribing.insert(channel);
            }
            Err(error) => self.reply_error(id, error),
        }
    }

    /// `publish` in a namespace with a publish hook.
    pub(super) fn publish_hook(
        &mut self,
        id: u32,
        request: wire::PublishRequest,
        endpoint: Arc<Endpoint>,
    ) -> Result<(), ClientError> {
        let mut body = self.hook_body();
        body.insert("channel".into(), Value::from(request.channel.as_str()));
        self.put_data(&mut body, &request.data);
        let then = Pending::Publish {
            id,
            channel: request.channel,
            data: request.data,
        };
        self.call_hook(endpoint, body, then)
    }

    /// `rpc`: the hook of its method answers, or error 104 when there is none.
    pub(super) fn rpc(&mut self, id: u32, request: wire::RpcRequest) {
        let hooks = self.state.hooks.as_ref().filter(|h| h.has_rpc());
        // No rpc hook at all: the server has no rpc (108, as the SDKs expect of a server
        // without an rpc handler); rpc hooks but none for this method: 104.
        let Some(hooks) = hooks else {
            return self.reply_error(id, ClientError::NotAvailable);
        };
        let Some(endpoint) = hooks.rpc(&request.method).map(Arc::clone) else {
            return self.reply_error(id, ClientError::MethodNotFound);
        };
        let mut body = self.hook_body();
        body.insert("method".into(), Value::from(request.method.as_str()));
        self.put_data(&mut body, &request.data);
        if let Err(error) = self.call_hook(endpoint, body, Pending::Rpc { id }) {
            self.reply_error(id, error);
        }
    }

    /// The sweep saw the session reach its `expire_at`: asks the refresh hook to extend it.
    pub(super) fn refresh_due(&mut self) {
        let hook = self.state.hooks.as_ref().and_then(|h| h.refresh());
        let Some(endpoint) = hook.map(Arc::clone) else {
            self.conn
                .clear_hook_flags(REFRESH_BY_HOOK | REFRESH_IN_FLIGHT);
            return;
        };
        let body = self.hook_body();
        if self.call_hook(endpoint, body, Pending::Refresh).is_err() {
            self.refresh_failed();
        }
    }

    /// The sweep saw a subscription reach its `expire_at`: asks sub_refresh for each due one.
    pub(super) fn sub_refresh_due(&mut self) {
        let now = unix_now();
        let due: Vec<(Box<str>, u64)> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.by_hook && s.expires_at != 0 && s.expires_at <= now)
            .map(|(channel, s)| (channel.clone(), s.generation))
            .collect();
        for (channel, generation) in due {
            let hook = self
                .state
                .hooks
                .as_ref()
                .and_then(|h| h.sub_refresh(&channel));
            let Some(endpoint) = hook.map(Arc::clone) else {
                continue;
            };
            let mut body = self.hook_body();
            body.insert("channel".into(), Value::from(&*channel));
            let then = Pending::SubRefresh {
                channel,
                generation,
            };
            if self.call_hook(endpoint, body, then).is_ok() {
                self.sub_refreshing += 1;
            }
        }
        if self.sub_refreshing == 0 {
            self.conn.retry_hooks_at(unix_now() + 1);
            self.conn.clear_hook_flags(SUB_REFRESH_IN_FLIGHT);
        }
    }

    fn refresh_failed(&self) {
        // The sweep asks again in a second; past `client.expiry_grace` it closes with 3005.
        self.conn.retry_hooks_at(unix_now() + 1);
        self.conn.clear_hook_flags(REFRESH_IN_FLIGHT);
    }

    /// A hook call's answer: carries out the command it was for.
    pub(super) fn hooked(&mut self, seq: u64, answer: Result<Answer, HookError>) {
        let Some(then) = self.hook_calls.remove(&seq) else {
            return;
        };
        // A disconnect answer ends the connection, whatever the command was.
        if let Ok(Answer::Disconnect { code, reason }) = &answer {
            tracing::info!(event = "hook_disconnect", conn_id = self.conn.id, user = %self.conn.user(), code, reason = %reason, "a backend hook disconnected the client");
            self.conn.close(CloseReason::BackendDisconnect(*code));
            return;
        }
        match then {
            Pending::Connect { id, request } => {
                self.connecting = false;
                self.connect_answered(id, &request, answer);
            }
            Pending::Subscribe { id, request } => {
                self.hook_subscribing.remove(request.channel.as_str());
                self.subscribe_answered(id, request, answer);
            }
            Pending::Publish { id, channel, data } => {
                let published = self.answered(id, answer).and_then(|result| {
                    let rewritten: DataResult = read(result).map_err(Some)?;
                    let data =
                        data_of(self.encoding(), rewritten.data, rewritten.b64data).unwrap_or(data);
                    self.publish_data(id, &channel, data).map_err(Some)
                });
                if let Err(Some(error)) = published {
                    self.reply_error(id, error);
                }
            }
            Pending::Rpc { id } => match self
                .answered(id, answer)
                .and_then(|result| read::<DataResult>(result).map_err(Some))
            {
                Ok(result) => {
                    let data = data_of(self.encoding(), result.data, result.b64data);
                    self.send(&Reply {
                        id,
                        rpc: Some(RpcResult {
                            data: data.unwrap_or_default(),
                        }),
                        ..Reply::default()
                    });
                }
                Err(Some(error)) => self.reply_error(id, error),
                Err(None) => {}
            },
            Pending::Refresh => self.refresh_answered(answer),
            Pending::SubRefresh {
                channel,
                generation,
            } => {
                self.sub_refreshing = self.sub_refreshing.saturating_sub(1);
                self.sub_refresh_answered(&channel, generation, answer);
                if self.sub_refreshing == 0 {
                    self.conn.clear_hook_flags(SUB_REFRESH_IN_FLIGHT);
                }
            }
        }
    }

    /// The `result` of an answer. A backend's own error is replied here and comes back as
    /// `Err(None)` (nothing more to send); `Err(Some)` is an error still to reply.
    fn answered(
        &self,
        id: u32,
        answer: Result<Answer, HookError>,
    ) -> Result<Value, Option<ClientError>> {
        match answer {
            Ok(Answer::Result(result)) => Ok(result),
            Ok(Answer::Error {
                code,
                message,
                temporary,
            }) => {
                if id != 0 {
                    self.send(&custom_error(id, code, message, temporary));
                }
                Err(None)
            }
            // Handled before (the connection is closing).
            Ok(Answer::Disconnect { .. }) => Err(None),
            Err(_) => Err(Some(ClientError::BackendUnavailable)),
        }
    }

    fn connect_answered(
        &mut self,
        id: u32,
        request: &wire::ConnectRequest,
        answer: Result<Answer, HookError>,
    ) {
        let answered = self
            .answered(id, answer)
            .and_then(|result| read::<ConnectResult>(result).map_err(Some));
        let result = match answered {
            Ok(result) => result,
            Err(Some(error)) => return self.reply_error(id, error),
            Err(None) => return,
        };
        let data = data_of(self.encoding(), result.data, result.b64data).unwrap_or_default();
        let claims = Claims {
            sub: result.user,
            exp: (result.expire_at != 0).then_some(result.expire_at),
            channels: result.channels,
            info: result.info,
            channel: None,
        };
        if let Err(reason) = self.finish_connect(id, claims, request, data, true) {
            self.conn.close(reason);
        }
    }

    fn subscribe_answered(
        &mut self,
        id: u32,
        request: SubscribeRequest,
        answer: Result<Answer, HookError>,
    ) {
        let granted = self.answered(id, answer).and_then(|result| {
            let result = read::<SubscribeResult>(result).map_err(Some)?;
            let channel = request.channel.as_str();
            let rules = self
                .state
                .channels()
                .rules(channel)
                .map_err(|e| Some(e.into()))?
                .clone();
            // Checked again: the client may have subscribed meanwhile (with a token).
            if self.subscriptions.contains_key(channel) {
                return Err(Some(ClientError::AlreadySubscribed));
            }
            if self.subscriptions.len() >= self.state.config.client.max_subscriptions {
                return Err(Some(ClientError::LimitExceeded));
            }
            let granted = Granted {
                chan_info: result.info,
                expires_at: result.expire_at,
                renewed_by_hook: false,
            };
            Ok((rules, granted))
        });
        match granted {
            Ok((rules, granted)) => self.subscribe_granted(id, request, rules, granted, true),
            Err(Some(error)) => self.reply_error(id, error),
            Err(None) => {}
        }
    }

    fn refresh_answered(&mut self, answer: Result<Answer, HookError>) {
        let result = match answer {
            Ok(Answer::Result(result)) => read::<RefreshResult>(result),
            Ok(Answer::Error { .. } | Answer::Disconnect { .. }) | Err(_) => {
                Err(ClientError::BackendUnavailable)
            }
        };
        match result {
            Ok(result) if result.expired => self.conn.close(CloseReason::TokenExpired),
            Ok(result) => {
                self.conn.set_expires_at(result.expire_at);
                if result.expire_at == 0 {
                    self.conn.clear_hook_flags(REFRESH_BY_HOOK);
                }
                self.conn.clear_hook_flags(REFRESH_IN_FLIGHT);
                tracing::debug!(
                    event = "hook_refreshed",
                    conn_id = self.conn.id,
                    expire_at = result.expire_at
                );
            }
            Err(_) => self.refresh_failed(),
        }
    }

    fn sub_refresh_answered(
        &mut self,
        channel: &str,
        generation: u64,
        answer: Result<Answer, HookError>,
    ) {
        let current = self
            .subscriptions
            .get(channel)
            .is_some_and(|s| s.generation == generation);
        if !current {
            return;
        }
        let result = match answer {
            Ok(Answer::Result(result)) => read::<RefreshResult>(result),
            Ok(Answer::Error { .. } | Answer::Disconnect { .. }) | Err(_) => {
                Err(ClientError::BackendUnavailable)
            }
        };
        match result {
            Ok(result) if result.expired => {
                self.unsubscribe(channel, Some(UNSUBSCRIBE_BY_SERVER));
            }
            Ok(result) => {
                if let Some(subscription) = self.subscriptions.get_mut(channel) {
                    subscription.expires_at = result.expire_at;
                }
                self.track_subscription_expiry();
            }
            Err(_) => self.conn.retry_hooks_at(unix_now() + 1),
        }
    }
}
