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
use serde_json::{json, Value};

use crate::door::json;
use crate::error::{error_body, ApiError, CloseReason};
use crate::gateway::{Response, State};
use crate::ws::frame::{self, Opcode};

/// Largest API request body.
const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    channel: String,
    data: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Broadcast {
    channels: Vec<String>,
    data: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Disconnect {
    user: String,
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
        Err(error) => (
            error.status(),
            error_body(error.code(), &error.to_string()),
            path_method,
        ),
    };
    let label = if matches!(
        method.as_str(),
        "publish" | "broadcast" | "disconnect" | "info" | "channels" | ""
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
            check_channel(&publish.channel)?;
            publish_to(state, &publish.channel, &plain_frame(&publish.data));
            Ok(json!({}))
        }
        "broadcast" => {
            let broadcast: Broadcast = params(value)?;
            for channel in &broadcast.channels {
                check_channel(channel)?;
            }
            let frame = plain_frame(&broadcast.data);
            let responses: Vec<Value> = broadcast
                .channels
                .iter()
                .map(|channel| {
                    publish_to(state, channel, &frame);
                    json!({ "result": {} })
                })
                .collect();
            Ok(json!({ "responses": responses }))
        }
        "disconnect" => {
            let disconnect: Disconnect = params(value)?;
            if disconnect.user.is_empty() {
                return Err(ApiError::BadRequest("user must not be empty".to_owned()));
            }
            let closed = state
                .conns
                .close_user(&disconnect.user, CloseReason::DisconnectedByServer);
            tracing::info!(event = "api_disconnect", user = %disconnect.user, connections = closed);
            Ok(json!({}))
        }
        "info" => {
            let mut users = std::collections::HashSet::new();
            state.conns.for_each(|conn| {
                if !conn.user.is_empty() {
                    users.insert(conn.user.to_string());
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

/// A channel name from the API: 1 to 255 bytes, no whitespace or control characters.
fn check_channel(channel: &str) -> Result<(), ApiError> {
    if channel.is_empty() {
        return Err(ApiError::BadChannel("empty channel"));
    }
    if channel.len() > 255 {
        return Err(ApiError::BadChannel("channel longer than 255 bytes"));
    }
    if channel.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::BadChannel(
            "channel may not hold whitespace or control characters",
        ));
    }
    Ok(())
}

fn publish_to(state: &State, channel: &str, frame: &Bytes) {
    state.metrics.publications.inc();
    state.hub.publish(channel, frame);
}

/// The text frame plain doors receive for `data`.
fn plain_frame(data: &Value) -> Bytes {
    match data {
        Value::String(text) => frame::encode(Opcode::Text, text.as_bytes()),
        other => frame::encode(Opcode::Text, other.to_string().as_bytes()),
    }
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
    fn strings_are_sent_as_is_and_other_values_serialized() {
        assert_eq!(&plain_frame(&json!("hi"))[2..], b"hi");
        assert_eq!(&plain_frame(&json!({"a": 1}))[2..], br#"{"a":1}"#);
    }

    #[test]
    fn channel_names_are_checked() {
        assert!(check_channel("chat:lobby").is_ok());
        assert!(check_channel("#42").is_ok());
        assert!(check_channel("").is_err());
        assert!(check_channel("a b").is_err());
    }

    #[test]
    fn key_comparison_needs_equal_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
