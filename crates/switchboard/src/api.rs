//! The server HTTP API under `/api`: what backends call to publish, broadcast, disconnect and
//! look at the node.
//!
//! `POST /api/{method}` with the method's JSON body, or `POST /api` with
//! `{"method": ..., "params": {...}}` (the older Centrifugo shape). The key goes in
//! `X-API-Key` or `Authorization: apikey KEY`. Replies are `{"result": {...}}` or
//! `{"error": {"code", "message"}}`. Plain doors receive `data` as a text frame: a JSON string's
//! content as-is, any other JSON value serialized; it is encoded once per publication.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::conn::{Conn, ServerCommand};
use crate::door::{json, Door};
use crate::error::{ApiError, ClientError, CloseReason};
use crate::gateway::{Response, State};
use crate::publication::Publication;

/// Largest API request body.
const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    channel: String,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Broadcast {
    channels: Vec<String>,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    user: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Channel {
    channel: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserChannel {
    user: String,
    channel: String,
}

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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    commands: Vec<serde_json::Map<String, Value>>,
    /// Accepted for compatibility; commands always run in order here.
    #[serde(default)]
    #[allow(dead_code)]
    parallel: bool,
}

#[derive(Deserialize)]
struct Envelope {
    method: String,
    #[serde(default)]
    params: Value,
}

/// Handles one API request.
pub(crate) async fn handle(state: &Arc<State>, req: Request<Incoming>) -> Response {
    let path_method = req
        .uri()
        .path()
        .strip_prefix("/api")
        .unwrap_or("")
        .trim_start_matches('/')
        .to_owned();
    let result = call(state, req, &path_method).await;
    let (status, body, method) = match result {
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
        .metrics
        .api_requests
        .with_label_values(&[label, status.as_str()])
        .inc();
    json(status, body)
}

async fn call(
    state: &Arc<State>,
    req: Request<Incoming>,
    path_method: &str,
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
    let (method, params) = if path_method.is_empty() {
        let envelope: Envelope = parse(&body)?;
        (envelope.method, envelope.params)
    } else {
        let params = if body.is_empty() {
            json!({})
        } else {
            parse(&body)?
        };
        (path_method.to_owned(), params)
    };
    let value = dispatch(state, &method, params)?;
    Ok((method, value))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn params<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn dispatch(state: &State, method: &str, value: Value) -> Result<Value, ApiError> {
    match method {
        "publish" => {
            let publish: Publish = params(value)?;
            let data = Bytes::copy_from_slice(publish.data.get().as_bytes());
            publish_to(state, &publish.channel, Publication::json(data))
        }
        "broadcast" => {
            let broadcast: Broadcast = params(value)?;
            let data = Bytes::copy_from_slice(broadcast.data.get().as_bytes());
            let responses: Vec<Value> = broadcast
                .channels
                .iter()
                .map(
                    |channel| match publish_to(state, channel, Publication::json(data.clone())) {
                        Ok(result) => json!({ "result": result }),
                        Err(error) => error_json(&error),
                    },
                )
                .collect();
            Ok(json!({ "responses": responses }))
        }
        "disconnect" => {
            let user: User = params(value)?;
            check_user(&user.user)?;
            let closed = state
                .conns
                .close_user(&user.user, CloseReason::DisconnectedByServer);
            tracing::info!(event = "api_disconnect", user = %user.user, connections = closed);
            Ok(json!({}))
        }
        "subscribe" | "unsubscribe" => {
            let request: UserChannel = params(value)?;
            check_user(&request.user)?;
            state
                .channels
                .rules(&request.channel)
                .map_err(ClientError::from)?;
            let channel: Box<str> = request.channel.into();
            let command = if method == "subscribe" {
                ServerCommand::Subscribe(channel)
            } else {
                ServerCommand::Unsubscribe(channel)
            };
            for_protocol_conns(state, &request.user, |conn| conn.request(command.clone()));
            Ok(json!({}))
        }
        "refresh" => {
            let refresh: Refresh = params(value)?;
            check_user(&refresh.user)?;
            if refresh.expired {
                state
                    .conns
                    .close_user(&refresh.user, CloseReason::TokenExpired);
            } else {
                let expire_at = refresh.expire_at.unwrap_or(0);
                for_protocol_conns(state, &refresh.user, |conn| {
                    conn.request(ServerCommand::Refresh(expire_at))
                });
            }
            Ok(json!({}))
        }
        "presence" | "presence_stats" => {
            let request: Channel = params(value)?;
            let rules = state
                .channels
                .rules(&request.channel)
                .map_err(ClientError::from)?;
            if !rules.presence {
                return Err(ClientError::NotAvailable.into());
            }
            if method == "presence" {
                Ok(crate::protocol::presence_json(state, &request.channel))
            } else {
                let (clients, users) = state.broker.presence_stats(&request.channel);
                Ok(json!({ "num_clients": clients, "num_users": users }))
            }
        }
        "history" => {
            let request: crate::protocol::wire::HistoryRequest = params(value)?;
            let rules = state
                .channels
                .rules(&request.channel)
                .map_err(ClientError::from)?;
            if !rules.keeps_history() {
                return Err(ClientError::NotAvailable.into());
            }
            Ok(crate::protocol::history_json(state, &request)?)
        }
        "history_remove" => {
            let request: Channel = params(value)?;
            state
                .channels
                .rules(&request.channel)
                .map_err(ClientError::from)?;
            state.broker.remove_history(&request.channel);
            Ok(json!({}))
        }
        "batch" => {
            let batch: Batch = params(value)?;
            let replies: Vec<Value> = batch
                .commands
                .into_iter()
                .map(|command| {
                    let mut entries = command.into_iter();
                    match (entries.next(), entries.next()) {
                        (Some((method, params)), None) if method != "batch" => {
                            match dispatch(state, &method, params) {
                                Ok(result) => json!({ method: result }),
                                Err(error) => error_json(&error),
                            }
                        }
                        _ => error_json(&ApiError::BadRequest(
                            "each batch command is an object with exactly one method".to_owned(),
                        )),
                    }
                })
                .collect();
            Ok(json!({ "replies": replies }))
        }
        "info" => {
            let mut users = std::collections::HashSet::new();
            state.conns.for_each(|conn| {
                if !conn.user().is_empty() {
                    users.insert(conn.user().to_owned());
                }
            });
            Ok(json!({ "nodes": [{
                "uid": state.node_uid(),
                "name": state.node_name(),
                "version": env!("CARGO_PKG_VERSION"),
                "num_clients": state.conns.len(),
                "num_users": users.len(),
                "num_channels": state.hub.channel_count(),
                "num_subs": state.hub.subscription_count(),
                "uptime": state.uptime_secs(),
            }]}))
        }
        "channels" => {
            let channels: serde_json::Map<String, Value> = state
                .hub
                .channels()
                .into_iter()
                .map(|(name, count)| (name, json!({ "num_clients": count })))
                .collect();
            Ok(json!({ "channels": channels }))
        }
        _ => Err(ApiError::UnknownMethod),
    }
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

/// Calls `f` on every client-protocol connection of `user` (plain doors have no
/// subscriptions to change).
fn for_protocol_conns(state: &State, user: &str, mut f: impl FnMut(&Conn)) {
    state.conns.for_each(|conn| {
        if conn.door == Door::Protocol && conn.user() == user {
            f(conn);
        }
    });
}

/// Publishes and answers `{}` or, for a channel that keeps history, `{"offset","epoch"}`.
fn publish_to(state: &State, channel: &str, publication: Publication) -> Result<Value, ApiError> {
    let published = state
        .publish(channel, publication)
        .map_err(ClientError::from)?;
    Ok(match published.position {
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
    if constant_time_eq(given, expected) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Compares without an early exit, so response time does not leak how much of the key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_comparison_needs_equal_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
