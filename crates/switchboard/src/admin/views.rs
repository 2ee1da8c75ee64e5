//! The admin UI's JSON endpoints under `/admin/api/`, each behind a session (checked by the
//! caller): what the pages show (nodes, connections, channels, one channel, the
//! configuration) and the two actions (publish, disconnect).
//!
//! Reading goes to the node's own views (its registry, hub and cluster list) or, where the
//! server API already answers the question (channels, presence, history), to the API's
//! method; acting always goes to the API's method. Every list is paged and bounded.

use std::collections::HashMap;
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{json_body, Auth};
use crate::conn::Conn;
use crate::error::{AdminError, CloseReason};
use crate::respond::{json, Response};
use crate::state::State;

/// Rows per page unless asked otherwise, and the most a page may hold.
const PAGE: usize = 50;
const MAX_PAGE: usize = 200;
/// Subscribers listed on a channel's page (the count is always whole).
const MAX_SUBSCRIBERS: usize = 100;
/// Publications of history a channel's page shows, newest first.
const HISTORY: u32 = 20;
/// Longest search text and channel name taken.
const MAX_QUERY: usize = 256;

/// Answers one request under `/admin/api/`.
pub(super) async fn handle(
    state: &Arc<State>,
    req: Request<Incoming>,
    auth: Auth,
) -> Result<Response, AdminError> {
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let value = match (req.method(), path.as_str()) {
        (&Method::GET, "/admin/api/session") => session(state, &auth),
        (&Method::GET, "/admin/api/nodes") => nodes(state),
        (&Method::GET, "/admin/api/connections") => connections(state, &query)?,
        (&Method::GET, "/admin/api/channels") => channels(state, &query).await?,
        (&Method::GET, "/admin/api/channel") => channel(state, &query).await?,
        (&Method::GET, "/admin/api/config") => config(state),
        (&Method::GET, "/admin/api/events") => return super::live::events(state, &auth),
        (&Method::POST, "/admin/api/publish") => publish(state, req).await?,
        (&Method::POST, "/admin/api/disconnect") => disconnect(state, req).await?,
        _ => return Err(AdminError::NotFound),
    };
    Ok(json(StatusCode::OK, value.to_string()))
}

/// Who is logged in, for how long more, on which node.
fn session(state: &State, auth: &Auth) -> Value {
    let expires_in = match auth {
        Auth::Session { left, .. } => Some(left.as_secs()),
        Auth::Token => None,
    };
    json!({
        "expires_in": expires_in,
        "node": state.node.name(),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

/// Every live node with its counters (the API's `info`), and this node's broker link. The
/// pages turn the totals into rates: differences over each node's `uptime`.
pub(super) fn nodes(state: &State) -> Value {
    let health = state.node.broker_health();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    json!({
        "this": state.node.uid(),
        "broker": state.node.broker_name(),
        "broker_connected": health.connected,
        "time_ms": now_ms,
        "nodes": state.node.nodes(),
    })
}

/// One connection as the pages show it.
fn summary(state: &State, conn: &Conn) -> Value {
    json!({
        "id": conn.id,
        "door": conn.door.label(),
        "user": conn.user(),
        "client": conn.client_id(),
        "connected": conn.is_connected(),
        "age_secs": state.clock_ms().saturating_sub(conn.opened_ms()) / 1000,
        "queued_bytes": conn.queued_bytes(),
        "subscriptions": conn.subscription_count(),
    })
}

/// `?q=&after=&limit=`: this node's connections whose id, user or client id holds `q`, a
/// page after connection id `after`.
fn connections(state: &State, query: &HashMap<String, String>) -> Result<Value, AdminError> {
    let q = text_param(query, "q")?;
    let after = number(query, "after", 0)?;
    let limit = number(query, "limit", PAGE as u64)?.min(MAX_PAGE as u64) as usize;
    let (page, total) = state.node.conns.page(after, limit, |conn| {
        q.is_empty()
            || conn.user().contains(q.as_str())
            || conn.client_id().contains(q.as_str())
            || conn.id.to_string() == q
    });
    let next = (page.len() == limit)
        .then(|| page.last().map(|c| c.id))
        .flatten();
    let rows: Vec<Value> = page.iter().map(|conn| summary(state, conn)).collect();
    Ok(json!({ "total": total, "connections": rows, "next_after": next }))
}

/// `?q=&offset=&limit=`: channels with a subscriber on any node (the API's `channels`),
/// those whose name holds `q`, a page from `offset`.
async fn channels(state: &State, query: &HashMap<String, String>) -> Result<Value, AdminError> {
    let q = text_param(query, "q")?;
    let offset = number(query, "offset", 0)? as usize;
    let limit = number(query, "limit", PAGE as u64)?.min(MAX_PAGE as u64) as usize;
    let all = invoke(state, "channels", &json!({})).await?;
    let matching: Vec<(&String, &Value)> = all["channels"]
        .as_object()
        .map(|map| {
            map.iter()
                .filter(|(name, _)| name.contains(q.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let total = matching.len();
    let rows: Vec<Value> = matching
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(name, info)| json!({ "channel": name, "num_clients": info["num_clients"] }))
        .collect();
    Ok(json!({ "total": total, "offset": offset, "channels": rows }))
}

/// `?name=`: a channel's subscribers on this node, its presence and its latest history
/// (each an `{"error"}` where the channel's namespace does not keep it).
async fn channel(state: &State, query: &HashMap<String, String>) -> Result<Value, AdminError> {
    let name = text_param(query, "name")?;
    if name.is_empty() {
        return Err(AdminError::BadRequest("name is required".to_owned()));
    }
    let mut count = 0;
    let mut listed: Vec<Arc<Conn>> = Vec::new();
    state.node.hub.for_each_subscriber(&name, |conn| {
        count += 1;
        if listed.len() < MAX_SUBSCRIBERS {
            listed.push(Arc::clone(conn));
        }
    });
    listed.sort_by_key(|conn| conn.id);
    let subscribers: Vec<Value> = listed.iter().map(|conn| summary(state, conn)).collect();
    let or_error = |result: Result<Value, AdminError>| {
        result.unwrap_or_else(|error| json!({ "error": error.to_string() }))
    };
    let presence = or_error(invoke(state, "presence", &json!({ "channel": name })).await);
    let history = or_error(
        invoke(
            state,
            "history",
            &json!({ "channel": name, "limit": HISTORY, "reverse": true }),
        )
        .await,
    );
    Ok(json!({
        "channel": name,
        "subscribers": { "count": count, "list": subscribers },
        "presence": presence,
        "history": history,
    }))
}

/// The configuration as it applies, secrets masked: what the `config` log line at start
/// shows.
fn config(state: &State) -> Value {
    json!({ "text": format!("{:#?}", state.config.with_resolved()) })
}

/// `POST {"channel", "data"}` (or `b64data`): the API's `publish`, with the same checks.
async fn publish(state: &State, req: Request<Incoming>) -> Result<Value, AdminError> {
    let body = json_body(req).await?;
    let params: Box<RawValue> =
        serde_json::from_slice(&body).map_err(|e| AdminError::BadRequest(e.to_string()))?;
    let channel = serde_json::from_str::<Value>(params.get())
        .ok()
        .and_then(|v| v["channel"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let result = crate::api::invoke(state, "publish", &params).await;
    match &result {
        Ok(_) => tracing::info!(event = "admin_publish", %channel, "admin published"),
        Err(error) => {
            tracing::warn!(event = "admin_publish", %channel, error = %error, "admin publish refused")
        }
    }
    Ok(result?)
}

/// `POST {"user"}`: the API's `disconnect` (every connection of the user, on every node);
/// `POST {"conn": id}`: one connection of this node (an anonymous one has no user to name).
async fn disconnect(state: &State, req: Request<Incoming>) -> Result<Value, AdminError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Target {
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        conn: Option<u64>,
    }
    let body = json_body(req).await?;
    let target: Target =
        serde_json::from_slice(&body).map_err(|e| AdminError::BadRequest(e.to_string()))?;
    match (target.user, target.conn) {
        (Some(user), None) => {
            tracing::info!(event = "admin_disconnect", %user, "admin disconnected a user");
            invoke(state, "disconnect", &json!({ "user": user })).await
        }
        (None, Some(id)) => {
            let conn = state
                .node
                .conns
                .get(id)
                .ok_or(AdminError::NoSuchConnection)?;
            tracing::info!(event = "admin_disconnect", conn_id = id, user = %conn.user(), "admin disconnected a connection");
            conn.close(CloseReason::DisconnectedByServer);
            Ok(json!({}))
        }
        _ => Err(AdminError::BadRequest(
            "give exactly one of user and conn".to_owned(),
        )),
    }
}

/// Calls a server API method with `params`.
async fn invoke(state: &State, method: &str, params: &Value) -> Result<Value, AdminError> {
    let raw = RawValue::from_string(params.to_string())
        .map_err(|e| AdminError::BadRequest(e.to_string()))?;
    Ok(crate::api::invoke(state, method, &raw).await?)
}

fn text_param(query: &HashMap<String, String>, key: &str) -> Result<String, AdminError> {
    let value = query.get(key).cloned().unwrap_or_default();
    if value.len() > MAX_QUERY {
        return Err(AdminError::BadRequest(format!(
            "{key} is longer than {MAX_QUERY} bytes"
        )));
    }
    Ok(value)
}

fn number(query: &HashMap<String, String>, key: &str, default: u64) -> Result<u64, AdminError> {
    match query.get(key).map(String::as_str) {
        None | Some("") => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| AdminError::BadRequest(format!("{key} must be a whole number"))),
    }
}

/// A query string's `key=value` pairs, decoded (`%XX` and `+` for a space); the first of a
/// repeated key wins, and a pair that does not decode to UTF-8 is skipped.
fn parse_query(query: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if let (Some(key), Some(value)) = (decode(key), decode(value)) {
            out.entry(key).or_insert(value);
        }
    }
    out
}

fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded() {
        let query = parse_query("q=chat%3Aroom+1&after=5&q=second&bad=%zz&x");
        assert_eq!(query["q"], "chat:room 1");
        assert_eq!(query["after"], "5");
        assert_eq!(query["x"], "");
        assert!(!query.contains_key("bad"));
        assert_eq!(decode("%C3%A9"), Some("é".to_owned()));
        assert_eq!(decode("%ff"), None);
    }
}
