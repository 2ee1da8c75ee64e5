//! The emulation endpoint (`POST /emulation`): the commands of an HTTP-streaming or SSE client
//! (`door/stream`), each request addressed to a session by the `session` and `node` its
//! connect reply named.
//!
//! The body is an emulation request: JSON `{"session","node","data"}` with the commands as a
//! string in `data` (the SDK's JSON and SSE form), or the Protobuf `EmulationRequest` when the
//! request's `Content-Type` is `application/octet-stream`. A session on this node gets the
//! commands in its inbox, and its stream's task handles them; one on another node gets them
//! through the broker's control channel (`node::emulate`), so a load balancer needs no sticky
//! sessions. The answer is `200` once the commands are on their way (their replies come on
//! the stream), or an error (`EmulationError`) for a request that is wrong in itself or names
//! a node that is not in the cluster.
//!
//! A session that has ended (or never was) is answered `200` too, the commands dropped, on
//! this node as for a request forwarded to another: the node that forwards cannot know
//! whether the session is still there without a round trip, and the two paths must not
//! answer differently. It is what Centrifugo answers (the emulation survey's "no session"
//! result is not reported to the client), and what the SDK needs: it does not read the answer
//! at all; it learns that its session ended from its stream, and reconnects.
//!
//! Browsers send these requests with CORS (`mode: "cors"`), so this module also answers the
//! preflight and sets `Access-Control-Allow-Origin` for an allowed origin, here and on the
//! streams.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use prost::Message;

use crate::error::{error_body, EmulationError};
use crate::respond::{json, text, Response};
use crate::state::State;
use crate::wire::EmulationRequest;

/// Room for the envelope around the commands (session, node, JSON string escapes).
const ENVELOPE_BYTES: usize = 4096;

/// Handles one request to `/emulation` (or a CORS preflight to a stream endpoint).
pub(crate) async fn handle(state: &Arc<State>, req: Request<Incoming>) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    if req.method() == Method::OPTIONS {
        return preflight(state, origin.as_ref());
    }
    let mut response = match emulate(state, req).await {
        Ok(delivery) => {
            state
                .node
                .metrics
                .emulation_requests
                .with_label_values(&[delivery.label()])
                .inc();
            text(StatusCode::OK, "")
        }
        Err(error) => {
            state
                .node
                .metrics
                .emulation_requests
                .with_label_values(&[error.code()])
                .inc();
            tracing::info!(event = "emulation_refused", code = error.code(), %error);
            json(error.status(), error_body(error.code(), &error.to_string()))
        }
    };
    allow_origin(state, response.headers_mut(), origin.as_ref());
    response
}

/// What became of an accepted emulation request (the label of its metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Handed to the session, on this node.
    Local,
    /// Handed to the broker for the session's node.
    Forwarded,
    /// No such session on this node (it ended, or never was): dropped, as the node that holds
    /// a forwarded request's session drops it (and logs it) when the session is gone.
    UnknownSession,
}

impl Delivery {
    fn label(self) -> &'static str {
        match self {
            Delivery::Local => "local",
            Delivery::Forwarded => "forwarded",
            Delivery::UnknownSession => "unknown_session",
        }
    }
}

/// Reads, checks and delivers one emulation request.
async fn emulate(state: &Arc<State>, req: Request<Incoming>) -> Result<Delivery, EmulationError> {
    if req.method() != Method::POST {
        return Err(EmulationError::BadRequest("POST expected"));
    }
    let origin = match req.headers().get(header::ORIGIN) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| EmulationError::OriginNotAllowed)?,
        ),
    };
    if !state.origins.allows(origin) {
        return Err(EmulationError::OriginNotAllowed);
    }
    let protobuf = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/octet-stream"));
    let max = state.config.limits.max_message_bytes;
    let body = Limited::new(req.into_body(), max.saturating_add(ENVELOPE_BYTES))
        .collect()
        .await
        .map_err(|_| EmulationError::BodyTooLarge)?
        .to_bytes();
    let request = decode(&body, protobuf)?;
    if request.data.len() > max {
        return Err(EmulationError::BodyTooLarge);
    }
    if request.session.is_empty() {
        return Err(EmulationError::BadRequest("no session"));
    }
    if request.data.iter().all(u8::is_ascii_whitespace) {
        return Err(EmulationError::BadRequest("no commands"));
    }
    let forwarded = !request.node.is_empty() && request.node != state.node.uid();
    match state
        .node
        .emulate(&request.node, &request.session, request.data)
        .await
    {
        Ok(()) if forwarded => Ok(Delivery::Forwarded),
        Ok(()) => Ok(Delivery::Local),
        Err(EmulationError::UnknownSession) => {
            tracing::info!(
                event = "emulation_unknown_session",
                "an emulation request for a session that is not open here was dropped"
            );
            Ok(Delivery::UnknownSession)
        }
        Err(error) => Err(error),
    }
}

/// An emulation request from its JSON or Protobuf body.
fn decode(body: &Bytes, protobuf: bool) -> Result<EmulationRequest, EmulationError> {
    if protobuf {
        EmulationRequest::decode(body.clone())
            .map_err(|_| EmulationError::BadRequest("not a Protobuf EmulationRequest"))
    } else {
        serde_json::from_slice(body).map_err(|_| {
            EmulationError::BadRequest(
                "not JSON {\"session\":…,\"node\":…,\"data\":\"<commands>\"}",
            )
        })
    }
}

/// The answer to a CORS preflight: the methods and headers the SDK's requests use, for an
/// allowed origin (a refused origin gets no `Access-Control-Allow-Origin`, so the browser
/// refuses the request itself).
pub(crate) fn preflight(state: &State, origin: Option<&HeaderValue>) -> Response {
    let mut response = text(StatusCode::NO_CONTENT, "");
    let headers = response.headers_mut();
    allow_origin(state, headers, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type, authorization, x-trace-id, traceparent"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}

/// Lets the page of `origin` read the response, when the origin is allowed.
pub(crate) fn allow_origin(state: &State, headers: &mut HeaderMap, origin: Option<&HeaderValue>) {
    let Some(origin) = origin else {
        return;
    };
    let Ok(text) = origin.to_str() else {
        return;
    };
    if state.origins.allows(Some(text)) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_protobuf_requests_decode_alike() {
        let json = Bytes::from_static(br#"{"session":"s1","node":"n1","data":"{\"id\":2}"}"#);
        let from_json = decode(&json, false).unwrap();
        assert_eq!(
            (
                from_json.session.as_str(),
                from_json.node.as_str(),
                &from_json.data[..]
            ),
            ("s1", "n1", &b"{\"id\":2}"[..])
        );
        let proto = Bytes::from(from_json.encode_to_vec());
        assert_eq!(decode(&proto, true).unwrap(), from_json);
        assert!(matches!(
            decode(&Bytes::from_static(b"{\"data\":5}"), false),
            Err(EmulationError::BadRequest(_))
        ));
    }
}
