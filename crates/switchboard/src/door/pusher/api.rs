//! Pusher's HTTP API under `/apps/{id}/…`, what the `pusher` server SDKs call: trigger
//! events (one, or a batch), list channels, one channel's state, a presence channel's users,
//! and ending a signed-in user's connections.
//!
//! Every request is signed the Pusher way: the query carries `auth_key`, `auth_timestamp`,
//! `auth_version=1.0`, `body_md5` (hex MD5 of a non-empty body) and `auth_signature`, the hex
//! HMAC-SHA256 under the app's secret of `METHOD\nPATH\nQUERY`, where QUERY is every other
//! parameter, keys lowercased and sorted, as `key=value` joined by `&` (values not
//! URL-encoded). A request outside `pusher.timestamp_window` of this server's clock, or
//! with any part wrong, is refused with 401 before its body is looked at.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::config::PusherAppConfig;
use crate::error::ClientError;
use crate::node::UserCommand;
use crate::publication::{ClientInfo, Publication};
use crate::pusher_wire::{self, ChannelKind};
use crate::respond::{json, Response};
use crate::state::State;

/// Most events in one batch (Pusher's own limit).
const MAX_BATCH: usize = 10;

/// Why a request was refused, with its status.
#[derive(Debug, thiserror::Error)]
enum PusherApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("no such app or path")]
    NotFound,
    #[error("request body larger than pusher.max_body_bytes")]
    TooLarge,
    #[error("event data larger than the app's max_event_bytes ({0})")]
    EventTooLarge(usize),
    #[error("{0}")]
    Node(ClientError),
}

impl PusherApiError {
    fn status(&self) -> StatusCode {
        match self {
            PusherApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            PusherApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PusherApiError::NotFound => StatusCode::NOT_FOUND,
            PusherApiError::TooLarge | PusherApiError::EventTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            PusherApiError::Node(ClientError::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
            PusherApiError::Node(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

fn bad(message: impl Into<String>) -> PusherApiError {
    PusherApiError::BadRequest(message.into())
}

fn unauthorized(message: impl Into<String>) -> PusherApiError {
    PusherApiError::Unauthorized(message.into())
}

/// Serves one request under `/apps/`.
pub(crate) async fn handle(state: &Arc<State>, req: Request<Incoming>) -> Response {
    let (status, body) = match serve(state, req).await {
        Ok(value) => (StatusCode::OK, value.to_string()),
        Err(error) => {
            let status = error.status();
            if status == StatusCode::UNAUTHORIZED {
                state.node.metrics.auth_failures.inc();
            }
            (status, json!({ "error": error.to_string() }).to_string())
        }
    };
    json(status, body)
}

/// Decodes `%XX` escapes and `+` (a space in a query); a bad escape stays as it is.
fn percent_decode(text: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&high), Some(&low)) => hex(high).zip(hex(low)),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some((high, low)), _) => {
                // Two hex digits: at most 255.
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, other) => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query's parameters, keys lowercased (a repeated key: the last one).
fn query_params(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key).to_lowercase(), percent_decode(value))
        })
        .collect()
}

/// Checks a request's signature; see the module's header for what is signed.
fn check_signature(
    state: &State,
    app: &PusherAppConfig,
    method: &Method,
    path: &str,
    params: &BTreeMap<String, String>,
    body: &[u8],
) -> Result<(), PusherApiError> {
    let get = |key: &str| params.get(key).map(String::as_str);
    if get("auth_key") != Some(app.key.as_str()) {
        return Err(unauthorized("auth_key is missing or not this app's key"));
    }
    if get("auth_version") != Some("1.0") {
        return Err(unauthorized("auth_version must be 1.0"));
    }
    let timestamp: u64 = get("auth_timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| unauthorized("auth_timestamp is missing"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if now.abs_diff(timestamp) > state.config.pusher.timestamp_window.as_secs() {
        return Err(unauthorized(format!(
            "auth_timestamp {timestamp} is more than {}s from the server's time {now}",
            state.config.pusher.timestamp_window.as_secs()
        )));
    }
    if !body.is_empty() && get("body_md5") != Some(pusher_wire::md5_hex(body).as_str()) {
        return Err(unauthorized("body_md5 does not match the body"));
    }
    let signature =
        get("auth_signature").ok_or_else(|| unauthorized("auth_signature is missing"))?;
    let query: Vec<String> = params
        .iter()
        .filter(|(key, _)| key.as_str() != "auth_signature")
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let signed = format!("{}\n{path}\n{}", method.as_str(), query.join("&"));
    if !pusher_wire::verify(&app.secret, &signed, signature) {
        return Err(unauthorized("Invalid signature"));
    }
    Ok(())
}

async fn serve(state: &Arc<State>, req: Request<Incoming>) -> Result<Value, PusherApiError> {
    let path = req.uri().path().to_owned();
    let params = query_params(req.uri().query());
    let method = req.method().clone();
    let rest = path
        .strip_prefix("/apps/")
        .ok_or(PusherApiError::NotFound)?;
    let (app_id, route) = rest.split_once('/').ok_or(PusherApiError::NotFound)?;
    let app = state
        .config
        .pusher
        .apps
        .iter()
        .find(|app| app.id == app_id)
        .ok_or(PusherApiError::NotFound)?
        .clone();
    let limit = state.config.pusher.max_body_bytes;
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(PusherApiError::TooLarge),
    };
    check_signature(state, &app, &method, &path, &params, &body)?;
    let segments: Vec<&str> = route.split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::POST, ["events"]) => {
            let event: Event = parse(&body)?;
            let info = Info::parse(event.info.as_deref());
            let names: Vec<String> = event.channel_names().map(str::to_owned).collect();
            trigger(state, &app, event).await?;
            if info.is_empty() {
                return Ok(json!({}));
            }
            let channels: serde_json::Map<String, Value> =
                channel_attributes(state, &app, &names, info)
                    .await?
                    .into_iter()
                    .map(|(name, of)| (name, Value::Object(of)))
                    .collect();
            Ok(json!({ "channels": channels }))
        }
        (&Method::POST, ["batch_events"]) => {
            let batch: Batch = parse(&body)?;
            if batch.batch.len() > MAX_BATCH {
                return Err(bad(format!("at most {MAX_BATCH} events per batch")));
            }
            for event in &batch.batch {
                check_event(&app, event)?;
            }
            // Each event's attributes are read once every event is published.
            let asked: Vec<(Info, Vec<String>)> = batch
                .batch
                .iter()
                .map(|event| {
                    let info = Info::parse(event.info.as_deref());
                    (info, event.channel_names().map(str::to_owned).collect())
                })
                .collect();
            for event in batch.batch {
                trigger(state, &app, event).await?;
            }
            if asked.iter().all(|(info, _)| info.is_empty()) {
                return Ok(json!({ "batch": [] }));
            }
            let wanted: Vec<String> = asked
                .iter()
                .filter(|(info, _)| !info.is_empty())
                .flat_map(|(_, names)| names.iter().cloned())
                .collect();
            let all = Info {
                subscription_count: asked.iter().any(|(i, _)| i.subscription_count),
                user_count: asked.iter().any(|(i, _)| i.user_count),
            };
            let attributes = channel_attributes(state, &app, &wanted, all).await?;
            let batch: Vec<Value> = asked
                .iter()
                .map(|(info, names)| {
                    // An event of a batch has one channel.
                    let mut of = names
                        .first()
                        .and_then(|name| attributes.get(name))
                        .cloned()
                        .unwrap_or_default();
                    if !info.subscription_count {
                        of.remove("subscription_count");
                    }
                    if !info.user_count {
                        of.remove("user_count");
                    }
                    Value::Object(of)
                })
                .collect();
            Ok(json!({ "batch": batch }))
        }
        (&Method::GET, ["channels"]) => channels(state, &app, &params).await,
        (&Method::GET, ["channels", name]) => channel(state, &app, name, &params).await,
        (&Method::GET, ["channels", name, "users"]) => users(state, &app, name).await,
        (&Method::POST, ["users", user, "terminate_connections"]) => {
            if user.is_empty() {
                return Err(bad("empty user id"));
            }
            let user = format!("{}:{}", app.id, percent_decode(user));
            tracing::info!(event = "pusher_terminate_connections", app = %app.id, %user);
            state
                .node
                .for_user(UserCommand::Disconnect { user })
                .await
                .map_err(PusherApiError::Node)?;
            Ok(json!({}))
        }
        _ => Err(PusherApiError::NotFound),
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, PusherApiError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// One event to trigger: `channels` (or one `channel`), `name`, `data`, and the `socket_id`
/// to leave out.
#[derive(Debug, Deserialize)]
struct Event {
    name: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    /// The attributes to answer with for each channel (`subscription_count`, `user_count`).
    #[serde(default)]
    info: Option<String>,
}

impl Event {
    /// The channels it goes to.
    fn channel_names(&self) -> impl Iterator<Item = &str> {
        self.channels
            .iter()
            .chain(self.channel.iter())
            .map(String::as_str)
    }
}

/// The attributes a trigger asks for in its `info` (a comma-separated list; other names are
/// ignored, as in the channel queries).
#[derive(Debug, Clone, Copy, Default)]
struct Info {
    subscription_count: bool,
    /// Presence channels only: other channels answer without it.
    user_count: bool,
}

impl Info {
    fn parse(info: Option<&str>) -> Self {
        let has = |attribute: &str| {
            info.unwrap_or_default()
                .split(',')
                .any(|a| a.trim() == attribute)
        };
        Info {
            subscription_count: has("subscription_count"),
            user_count: has("user_count"),
        }
    }

    fn is_empty(self) -> bool {
        !self.subscription_count && !self.user_count
    }
}

/// The attributes `info` asks for of each channel in `names`, read after the publication (on
/// every node): `subscription_count` (every subscriber of the hub channel), and for
/// `presence-` channels `user_count` (distinct users).
async fn channel_attributes(
    state: &State,
    app: &PusherAppConfig,
    names: &[String],
    info: Info,
) -> Result<BTreeMap<String, serde_json::Map<String, Value>>, PusherApiError> {
    let counts: BTreeMap<String, usize> = if info.subscription_count {
        occupied(state, app).await.into_iter().collect()
    } else {
        BTreeMap::new()
    };
    let mut out = BTreeMap::new();
    for name in names {
        if out.contains_key(name) {
            continue;
        }
        let mut attributes = serde_json::Map::new();
        if info.subscription_count {
            let count = counts.get(name).copied().unwrap_or(0);
            attributes.insert("subscription_count".into(), count.into());
        }
        if info.user_count && ChannelKind::of(name) == ChannelKind::Presence {
            let hub = pusher_wire::hub_channel(&app.id, name);
            let users = user_ids(state, &hub).await?.len();
            attributes.insert("user_count".into(), users.into());
        }
        out.insert(name.clone(), attributes);
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
struct Batch {
    batch: Vec<Event>,
}

fn check_event(app: &PusherAppConfig, event: &Event) -> Result<(), PusherApiError> {
    if event.name.is_empty() || event.name.len() > pusher_wire::MAX_EVENT_NAME {
        return Err(bad("event names are 1 to 200 characters long"));
    }
    let count = event.channels.len() + usize::from(event.channel.is_some());
    if count == 0 || count > app.max_channels_per_event {
        return Err(bad(format!(
            "an event goes to 1 to {} channels (max_channels_per_event)",
            app.max_channels_per_event
        )));
    }
    if event
        .data
        .as_ref()
        .is_some_and(|data| data.get().len() > app.max_event_bytes)
    {
        return Err(PusherApiError::EventTooLarge(app.max_event_bytes));
    }
    for name in event.channel_names() {
        pusher_wire::check_channel(name).map_err(|why| bad(format!("channel {name:?}: {why}")))?;
    }
    if let Some(socket_id) = &event.socket_id {
        let valid = socket_id.split_once('.').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        });
        if !valid {
            return Err(bad("socket_id must look like 123.456"));
        }
    }
    Ok(())
}

/// Publishes `event` to each of its channels through the node (every node's subscribers).
async fn trigger(state: &State, app: &PusherAppConfig, event: Event) -> Result<(), PusherApiError> {
    check_event(app, &event)?;
    let null = RawValue::from_string("null".to_owned()).map_err(|e| bad(e.to_string()))?;
    let data = event.data.as_deref().unwrap_or(&null);
    let payload = pusher_wire::envelope(&event.name, data, None);
    // The socket to leave out travels as the publication's client (the hub compares it).
    let sender = event
        .socket_id
        .as_deref()
        .map(|id| Arc::new(ClientInfo::new(id, "", None, None)));
    let rules = super::rules(ChannelKind::Public);
    for name in event.channel_names() {
        let hub = pusher_wire::hub_channel(&app.id, name);
        let publication = Publication::json(payload.clone()).positioned(0, sender.clone());
        state
            .node
            .publish(&hub, &rules, publication, None)
            .await
            .map_err(PusherApiError::Node)?;
    }
    Ok(())
}

/// The app's occupied channels (on every node), `name → count` as Pusher names them.
async fn occupied(state: &State, app: &PusherAppConfig) -> Vec<(String, usize)> {
    let prefix = format!("{}:", app.id);
    state
        .node
        .channels()
        .await
        .into_iter()
        .filter_map(|(hub, count)| {
            let name = hub.strip_prefix(&prefix)?;
            pusher_wire::check_channel(name).ok()?;
            Some((name.to_owned(), count))
        })
        .collect()
}

/// Distinct users of a presence channel.
async fn user_ids(state: &State, hub: &str) -> Result<Vec<String>, PusherApiError> {
    let present = state
        .node
        .presence(hub)
        .await
        .map_err(PusherApiError::Node)?;
    let mut ids: Vec<String> = present.iter().map(|info| info.user.to_string()).collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

fn wants(params: &std::collections::BTreeMap<String, String>, attribute: &str) -> bool {
    params
        .get("info")
        .is_some_and(|info| info.split(',').any(|a| a.trim() == attribute))
}

async fn channels(
    state: &State,
    app: &PusherAppConfig,
    params: &BTreeMap<String, String>,
) -> Result<Value, PusherApiError> {
    let prefix = params
        .get("filter_by_prefix")
        .map(String::as_str)
        .unwrap_or("");
    let user_count = wants(params, "user_count");
    if user_count && !prefix.starts_with("presence-") {
        return Err(bad("info=user_count needs filter_by_prefix=presence-"));
    }
    let mut out = serde_json::Map::new();
    for (name, _) in occupied(state, app).await {
        if !name.starts_with(prefix) {
            continue;
        }
        let mut attributes = serde_json::Map::new();
        if user_count {
            let hub = pusher_wire::hub_channel(&app.id, &name);
            attributes.insert(
                "user_count".into(),
                user_ids(state, &hub).await?.len().into(),
            );
        }
        out.insert(name, Value::Object(attributes));
    }
    Ok(json!({ "channels": out }))
}

async fn channel(
    state: &State,
    app: &PusherAppConfig,
    name: &str,
    params: &BTreeMap<String, String>,
) -> Result<Value, PusherApiError> {
    let name = percent_decode(name);
    pusher_wire::check_channel(&name).map_err(bad)?;
    let count = occupied(state, app)
        .await
        .into_iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, count)| count);
    let mut out = serde_json::Map::new();
    out.insert("occupied".into(), (count > 0).into());
    if wants(params, "subscription_count") {
        out.insert("subscription_count".into(), count.into());
    }
    if wants(params, "user_count") {
        if ChannelKind::of(&name) != ChannelKind::Presence {
            return Err(bad("user_count is for presence channels"));
        }
        let hub = pusher_wire::hub_channel(&app.id, &name);
        out.insert(
            "user_count".into(),
            user_ids(state, &hub).await?.len().into(),
        );
    }
    Ok(Value::Object(out))
}

async fn users(state: &State, app: &PusherAppConfig, name: &str) -> Result<Value, PusherApiError> {
    let name = percent_decode(name);
    pusher_wire::check_channel(&name).map_err(bad)?;
    if ChannelKind::of(&name) != ChannelKind::Presence {
        return Err(bad("users are listed for presence channels only"));
    }
    let hub = pusher_wire::hub_channel(&app.id, &name);
    let users: Vec<Value> = user_ids(state, &hub)
        .await?
        .into_iter()
        .map(|id| json!({ "id": id }))
        .collect();
    Ok(json!({ "users": users }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode() {
        let params = query_params(Some("B=1&a=x%2Cy&info=user_count%2csubscription_count&c"));
        assert_eq!(params.get("b").map(String::as_str), Some("1"));
        assert_eq!(params.get("a").map(String::as_str), Some("x,y"));
        assert_eq!(
            params.get("info").map(String::as_str),
            Some("user_count,subscription_count")
        );
        assert_eq!(params.get("c").map(String::as_str), Some(""));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
