//! The server HTTP API under `/api`: what backends call to publish, broadcast, disconnect and
//! look at the node.
//!
//! `POST /api/{method}` with the method's JSON body, or `POST /api` with
//! `{"method": ..., "params": {...}}` (the older Centrifugo shape). The key goes in
//! `X-API-Key` or `Authorization: apikey KEY`. Replies are `{"result": {...}}` or
//! `{"error": {"code", "message"}}`. Plain doors receive `data` as a text frame: a JSON string's
//! content as-is, any other JSON value serialized; it is encoded once per publication.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::error::{ApiError, ClientError};
use crate::kind::Encoding;
use crate::node::UserCommand;
use crate::protocol::{history_range, history_result, presence_result, presence_stats_result};
use crate::publication::Publication;
use crate::respond::{json, Response};
use crate::state::State;
use crate::trace::{Span, TraceParent};

/// Largest API request body.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Most commands in one `batch`.
const MAX_BATCH: usize = 1000;
/// Most channels in one `broadcast`.
const MAX_BROADCAST: usize = 1000;

/// A field Centrifugo's server SDKs may send that Switchboard accepts and does not act on
/// (docs/api.md lists them), so an SDK call with it still works and a misspelt field is still
/// an error.
type Ignored = Option<IgnoredAny>;

/// A publish (`channel`) or broadcast (`channels`): JSON `data` kept as the exact bytes given,
/// or bytes as base64 `b64data`.
// The `Ignored` fields are read only to accept them (see `Ignored`).
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    b64data: Option<String>,
    /// Publish without keeping it in history (no offset).
    #[serde(default)]
    skip_history: bool,
    /// Tags the publication carries: subscribers' tag filters select on them.
    #[serde(default)]
    tags: Option<crate::filter::Tags>,
    /// A publish repeating a key seen in the last 5 minutes is applied once: the retry gets
    /// the first one's result.
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    delta: Ignored,
}

impl Publish {
    fn publication(&self) -> Result<Publication, ApiError> {
        match (&self.data, &self.b64data) {
            (Some(data), None) => Ok(Publication::json(Bytes::copy_from_slice(
                data.get().as_bytes(),
            ))),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(|bytes| Publication::bytes(Bytes::from(bytes)))
                .map_err(|e| ApiError::BadRequest(format!("b64data: {e}"))),
            _ => Err(ApiError::BadRequest(
                "exactly one of data and b64data is required".to_owned(),
            )),
        }
    }
}

/// A `map_publish` (sets `key` to `data`) or `map_remove` (no data) to a map channel.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MapPublish {
    channel: String,
    key: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    b64data: Option<String>,
    /// Tags the entry carries: subscribers' tag filters select on them.
    #[serde(default)]
    tags: Option<crate::filter::Tags>,
    /// As `publish`'s: a retry within 5 minutes is applied once.
    #[serde(default)]
    idempotency_key: Option<String>,
}

impl MapPublish {
    /// The keyed publication (`removed`: the key's removal, which takes no data).
    fn publication(&self, removed: bool) -> Result<Publication, ApiError> {
        crate::keyed::check_key(&self.key).map_err(|e| ApiError::BadRequest(e.to_owned()))?;
        if removed {
            if self.data.is_some() || self.b64data.is_some() || self.tags.is_some() {
                return Err(ApiError::BadRequest(
                    "map_remove takes channel and key only".to_owned(),
                ));
            }
            return Ok(Publication::removal(&self.key));
        }
        let as_publish = Publish {
            channel: None,
            channels: None,
            data: self.data.clone(),
            b64data: self.b64data.clone(),
            skip_history: false,
            tags: None,
            idempotency_key: None,
            delta: None,
        };
        let mut publication = as_publish.publication()?.keyed(&self.key);
        if let Some(tags) = self.tags.as_ref().filter(|tags| !tags.is_empty()) {
            publication.tags = Some(Arc::new(tags.clone()));
        }
        Ok(publication)
    }
}

// The `Ignored` fields are read only to accept them (see `Ignored`).
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    user: String,
    #[serde(default)]
    client: Ignored,
    #[serde(default)]
    session: Ignored,
    #[serde(default)]
    whitelist: Ignored,
    #[serde(default)]
    disconnect: Ignored,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Channel {
    channel: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Channels {
    /// Only channels matching this pattern (`*` any run of characters, `?` one).
    #[serde(default)]
    pattern: Option<String>,
}

// The `Ignored` fields are read only to accept them (see `Ignored`).
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserChannel {
    user: String,
    channel: String,
    #[serde(default)]
    client: Ignored,
    #[serde(default)]
    session: Ignored,
    #[serde(default)]
    info: Ignored,
    #[serde(default)]
    b64info: Ignored,
    #[serde(default)]
    data: Ignored,
    #[serde(default)]
    b64data: Ignored,
    #[serde(default)]
    recover_since: Ignored,
    #[serde(rename = "override", default)]
    override_options: Ignored,
}

// The `Ignored` fields are read only to accept them (see `Ignored`).
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Refresh {
    user: String,
    /// Unix seconds when the session ends (absent: never).
    #[serde(default)]
    expire_at: Option<u64>,
    /// End the session now (close 3005 / 4002).
    #[serde(default)]
    expired: bool,
    #[serde(default)]
    client: Ignored,
    #[serde(default)]
    session: Ignored,
    #[serde(default)]
    info: Ignored,
    #[serde(default)]
    b64info: Ignored,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    commands: Vec<HashMap<String, Box<RawValue>>>,
    /// Accepted for compatibility; commands always run in order here.
    #[serde(default)]
    #[allow(dead_code)]
    parallel: bool,
}

#[derive(Deserialize)]
struct Envelope {
    method: String,
    #[serde(default)]
    params: Option<Box<RawValue>>,
}

/// Handles one API request under `span` (the request's server span, named here by method).
pub(crate) async fn handle(
    state: &Arc<State>,
    req: Request<Incoming>,
    span: &mut Span,
) -> Response {
    let path_method = req
        .uri()
        .path()
        .strip_prefix("/api")
        .unwrap_or("")
        .trim_start_matches('/')
        .to_owned();
    let result = call(state, req, &path_method, span.context()).await;
    let (status, body, method) = match result {
        // Centrifugo answers a batch with its replies at the top level; its SDKs expect that.
        Ok((method, value)) if method == "batch" => (StatusCode::OK, value.to_string(), method),
        Ok((method, value)) => (
            StatusCode::OK,
            json!({ "result": value }).to_string(),
            method,
        ),
        Err(error) => (error.status(), error_json(&error).to_string(), path_method),
    };
    let label = if matches!(
        method.as_str(),
        "publish"
            | "map_publish"
            | "map_remove"
            | "broadcast"
            | "disconnect"
            | "subscribe"
            | "unsubscribe"
            | "refresh"
            | "presence"
            | "presence_stats"
            | "history"
            | "history_remove"
            | "batch"
            | "info"
            | "channels"
            | ""
    ) {
        method.as_str()
    } else {
        "other"
    };
    state
        .node
        .metrics
        .api_requests
        .with_label_values(&[label, status.as_str()])
        .inc();
    // Named by the metric's label: a made-up method must not make a new span name each time.
    if span.context().is_some() && !label.is_empty() {
        span.rename(&format!("api {label}"));
    }
    json(status, body)
}

async fn call(
    state: &Arc<State>,
    req: Request<Incoming>,
    path_method: &str,
    trace: Option<TraceParent>,
) -> Result<(String, Value), ApiError> {
    if req.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    authorize(state, &req)?;
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| ApiError::BodyTooLarge)?
        .to_bytes();
    // Parameters stay raw JSON until each method parses its own, so `data` reaches subscribers
    // as the exact bytes the backend sent.
    let (method, params): (String, Box<RawValue>) = if path_method.is_empty() {
        let envelope: Envelope = parse(&body)?;
        (
            envelope.method,
            envelope.params.unwrap_or_else(empty_object),
        )
    } else {
        let params = if body.is_empty() {
            empty_object()
        } else {
            parse(&body)?
        };
        (path_method.to_owned(), params)
    };
    let value = dispatch(state, &method, &params, trace).await?;
    Ok((method, value))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn params<T: serde::de::DeserializeOwned>(value: &RawValue) -> Result<T, ApiError> {
    serde_json::from_str(value.get()).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| Box::<RawValue>::default())
}

/// Calls one API method with `params` as a backend's request would (the same parsing,
/// checks and node calls), for the admin UI, which has checked its own session instead of a
/// key. Not counted in `switchboard_api_requests_total`: that counts backends' calls.
///
/// # Errors
/// The [`ApiError`] the API would answer with.
pub(crate) async fn invoke(
    state: &State,
    method: &str,
    params: &RawValue,
) -> Result<Value, ApiError> {
    dispatch(state, method, params, None).await
}

/// Calls one method under the call's trace context. Boxed because `batch` calls it again for
/// each of its commands.
fn dispatch<'a>(
    state: &'a State,
    method: &'a str,
    value: &'a RawValue,
    trace: Option<TraceParent>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, ApiError>> + Send + 'a>> {
    Box::pin(dispatch_one(state, method, value, trace))
}

async fn dispatch_one(
    state: &State,
    method: &str,
    value: &RawValue,
    trace: Option<TraceParent>,
) -> Result<Value, ApiError> {
    match method {
        "publish" => {
            let publish: Publish = params(value)?;
            let channel = match (&publish.channel, &publish.channels) {
                (Some(channel), None) => channel,
                _ => return Err(ApiError::BadRequest("publish takes `channel`".to_owned())),
            };
            let mut publication = publish.publication()?;
            publication.trace = trace;
            publish_to(state, channel, &publish, publication).await
        }
        "map_publish" | "map_remove" => {
            let request: MapPublish = params(value)?;
            let mut publication = request.publication(method == "map_remove")?;
            publication.trace = trace;
            let rules = state
                .channels()
                .rules(&request.channel)
                .map_err(ClientError::from)?
                .clone();
            let key = request.idempotency_key.as_deref().map(Box::<str>::from);
            let position = state
                .node
                .publish(&request.channel, &rules, publication, key)
                .await
                .map_err(unavailable)?;
            Ok(match position {
                Some(position) => json!({ "offset": position.offset, "epoch": &*position.epoch }),
                None => json!({}),
            })
        }
        "broadcast" => {
            let broadcast: Publish = params(value)?;
            let channels = match (&broadcast.channel, &broadcast.channels) {
                (None, Some(channels)) => channels,
                _ => {
                    return Err(ApiError::BadRequest(
                        "broadcast takes `channels`".to_owned(),
                    ))
                }
            };
            if channels.len() > MAX_BROADCAST {
                return Err(ApiError::BadRequest(format!(
                    "broadcast takes at most {MAX_BROADCAST} channels"
                )));
            }
            // Decode the payload once, before anything is published; each channel's
            // publication shares its bytes.
            let payload = broadcast.publication()?;
            let (kind, bytes) = payload.payload();
            let mut responses: Vec<Value> = Vec::with_capacity(channels.len());
            for channel in channels {
                let mut publication = Publication::from_payload(kind, bytes.clone());
                publication.trace = trace;
                let published = publish_to(state, channel, &broadcast, publication).await;
                responses.push(match published {
                    Ok(result) => json!({ "result": result }),
                    Err(error) => error_json(&error),
                });
            }
            Ok(json!({ "responses": responses }))
        }
        "disconnect" => {
            let user: User = params(value)?;
            check_user(&user.user)?;
            tracing::info!(event = "api_disconnect", user = %user.user);
            for_user(state, UserCommand::Disconnect { user: user.user }).await
        }
        "subscribe" | "unsubscribe" => {
            let request: UserChannel = params(value)?;
            check_user(&request.user)?;
            state
                .channels()
                .rules(&request.channel)
                .map_err(ClientError::from)?;
            let (user, channel) = (request.user, request.channel);
            let command = if method == "subscribe" {
                UserCommand::Subscribe { user, channel }
            } else {
                UserCommand::Unsubscribe { user, channel }
            };
            for_user(state, command).await
        }
        "refresh" => {
            let refresh: Refresh = params(value)?;
            check_user(&refresh.user)?;
            let command = UserCommand::Refresh {
                user: refresh.user,
                expire_at: refresh.expire_at.unwrap_or(0),
                expired: refresh.expired,
            };
            for_user(state, command).await
        }
        "presence" | "presence_stats" => {
            let request: Channel = params(value)?;
            let rules = state
                .channels()
                .rules(&request.channel)
                .map_err(ClientError::from)?;
            if !rules.presence {
                return Err(ClientError::NotAvailable.into());
            }
            if method == "presence" {
                let present = state
                    .node
                    .presence(&request.channel)
                    .await
                    .map_err(unavailable)?;
                to_json(&presence_result(&present))
            } else {
                let counts = state
                    .node
                    .presence_stats(&request.channel)
                    .await
                    .map_err(unavailable)?;
                to_json(&presence_stats_result(counts))
            }
        }
        "history" => {
            let request: crate::wire::HistoryRequest = params(value)?;
            let rules = state
                .channels()
                .rules(&request.channel)
                .map_err(ClientError::from)?;
            if !rules.keeps_history() {
                return Err(ClientError::NotAvailable.into());
            }
            let (range, since_epoch) = history_range(&request);
            let page = state
                .node
                .history(&request.channel, &range)
                .await
                .map_err(unavailable)?;
            // An HTTP reply has no queue bound to respect.
            to_json(&history_result(
                page,
                &since_epoch,
                Encoding::Json,
                usize::MAX,
            )?)
        }
        "history_remove" => {
            let request: Channel = params(value)?;
            state
                .channels()
                .rules(&request.channel)
                .map_err(ClientError::from)?;
            state
                .node
                .remove_history(&request.channel)
                .await
                .map_err(unavailable)?;
            Ok(json!({}))
        }
        "batch" => {
            let batch: Batch = params(value)?;
            if batch.commands.len() > MAX_BATCH {
                return Err(ApiError::BadRequest(format!(
                    "batch takes at most {MAX_BATCH} commands"
                )));
            }
            let mut replies: Vec<Value> = Vec::with_capacity(batch.commands.len());
            for command in batch.commands {
                let mut entries = command.into_iter();
                replies.push(match (entries.next(), entries.next()) {
                    (Some((method, params)), None) if method != "batch" => {
                        match dispatch(state, &method, &params, trace).await {
                            Ok(result) => json!({ method: result }),
                            Err(error) => error_json(&error),
                        }
                    }
                    _ => error_json(&ApiError::BadRequest(
                        "each batch command is an object with exactly one method".to_owned(),
                    )),
                });
            }
            Ok(json!({ "replies": replies }))
        }
        "info" => Ok(json!({ "nodes": state.node.nodes() })),
        "channels" => {
            let request: Channels = params(value)?;
            let channels: serde_json::Map<String, Value> = state
                .node
                .channels()
                .await
                .into_iter()
                .filter(|(name, _)| request.pattern.as_deref().is_none_or(|p| glob(p, name)))
                .map(|(name, count)| (name, json!({ "num_clients": count })))
                .collect();
            Ok(json!({ "channels": channels }))
        }
        _ => Err(ApiError::UnknownMethod),
    }
}

/// A protocol result as the API's JSON.
fn to_json<T: serde::Serialize>(result: &T) -> Result<Value, ApiError> {
    serde_json::to_value(result).map_err(|_| ApiError::Client(ClientError::Internal))
}

/// `{"error":{"code","message"}}` for one entry of a batch or broadcast.
fn error_json(error: &ApiError) -> Value {
    json!({ "error": { "code": error.code(), "message": error.to_string() } })
}

fn check_user(user: &str) -> Result<(), ApiError> {
    if user.is_empty() {
        return Err(ApiError::BadRequest("user must not be empty".to_owned()));
    }
    Ok(())
}

/// Carries `command` out on the user's connections on every node.
async fn for_user(state: &State, command: UserCommand) -> Result<Value, ApiError> {
    state.node.for_user(command).await.map_err(unavailable)?;
    Ok(json!({}))
}

/// A node error as the API's: the broker being away is a 503, anything else what it says.
fn unavailable(error: ClientError) -> ApiError {
    match error {
        ClientError::Unavailable => ApiError::Unavailable("the broker did not answer".to_owned()),
        other => ApiError::Client(other),
    }
}

/// Whether `name` matches `pattern` (`*` any run of characters, `?` exactly one).
fn glob(pattern: &str, name: &str) -> bool {
    let (pattern, name): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer wildcard match with backtracking to the last `*`.
    let (mut p, mut n, mut star, mut mark) = (0, 0, None, 0);
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            mark = n;
            p += 1;
        } else if let Some(at) = star {
            p = at + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// Publishes and answers `{}` or, for a channel that keeps history, `{"offset","epoch"}`.
async fn publish_to(
    state: &State,
    channel: &str,
    payload: &Publish,
    mut publication: Publication,
) -> Result<Value, ApiError> {
    if let Some(tags) = payload.tags.as_ref().filter(|tags| !tags.is_empty()) {
        publication.tags = Some(Arc::new(tags.clone()));
    }
    let mut rules = state
        .channels()
        .rules(channel)
        .map_err(ClientError::from)?
        .clone();
    if payload.skip_history {
        rules.history_size = 0;
    }
    let key = payload.idempotency_key.as_deref().map(Box::<str>::from);
    let position = state
        .node
        .publish(channel, &rules, publication, key)
        .await
        .map_err(unavailable)?;
    Ok(match position {
        Some(position) => json!({ "offset": position.offset, "epoch": &*position.epoch }),
        None => json!({}),
    })
}

fn authorize<B>(state: &State, req: &Request<B>) -> Result<(), ApiError> {
    if state.resolved.open_api {
        return Ok(());
    }
    let expected = state.config.api.key.0.as_bytes();
    if expected.is_empty() {
        return Err(ApiError::Unauthorized);
    }
    let given = req
        .headers()
        .get("x-api-key")
        .map(|v| v.as_bytes())
        .or_else(|| {
            req.headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"apikey "))
        })
        .ok_or(ApiError::Unauthorized)?;
    // No early exit: response time does not leak how much of the key matched.
    if crate::login::constant_time_eq(given, expected) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_patterns_match_with_star_and_question_mark() {
        assert!(glob("room:*", "room:1"));
        assert!(glob("*", "anything"));
        assert!(glob("a?c", "abc"));
        assert!(glob("*:lobby", "chat:lobby"));
        assert!(!glob("room:*", "chat:1"));
        assert!(!glob("a?c", "ac"));
    }
}
