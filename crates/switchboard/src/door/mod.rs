//! HTTP routing: the WebSocket doors, the server API and the operations endpoints.
//!
//! Every response carries `X-Trace-ID` (taken from the request's `X-Trace-ID` or
//! `traceparent`, or generated) so a client's report can be matched to the log lines.

pub(crate) mod task;
pub(crate) mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;

use crate::error::Rejection;
pub use crate::kind::Door;
use crate::respond::{rejection, text, Response};
use crate::state::State;

/// With the `test-hooks` feature, a client message of exactly these bytes makes its
/// connection's handler panic, so tests can show that a panic ends that connection only.
#[cfg(feature = "test-hooks")]
pub const TEST_PANIC_MESSAGE: &[u8] = b"__switchboard_test_panic__";

/// Routes one HTTP request.
pub(crate) async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response {
    let trace_id = trace_id(&req);
    let path = req.uri().path().to_owned();
    let mut response = match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") if state.draining() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining")
        }
        (&Method::GET, "/readyz") if !state.ready() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "broker unavailable")
        }
        (&Method::GET, "/readyz") => text(StatusCode::OK, "ready"),
        (&Method::GET, "/metrics") => {
            let body = state.node.metrics.render(&state.node.snapshot());
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        (_, api) if api == "/api" || api.starts_with("/api/") => {
            crate::api::handle(&state, req).await
        }
        (_, ws) if ws == "/ws" || ws.starts_with("/ws/") || ws == "/connection/websocket" => {
            upgrade::upgrade(&state, peer, req, &trace_id)
        }
        _ => rejection(&Rejection::NotFound),
    };
    if let Ok(value) = HeaderValue::from_str(&trace_id) {
        response.headers_mut().insert("x-trace-id", value);
    }
    response
}

/// The request's trace id: `X-Trace-ID` if sane, else the trace-id field of a W3C
/// `traceparent`, else 32 random hex digits.
fn trace_id<B>(req: &Request<B>) -> String {
    let sane = |id: &str| {
        !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if let Some(id) = req
        .headers()
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
    {
        if sane(id) {
            return id.to_owned();
        }
    }
    if let Some(parent) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        let parts: Vec<&str> = parent.split('-').collect();
        if parts.len() == 4
            && parts[1].len() == 32
            && parts[1].bytes().all(|b| b.is_ascii_hexdigit())
        {
            return parts[1].to_owned();
        }
    }
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder();
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn trace_id_prefers_the_header_then_traceparent_then_generates() {
        assert_eq!(trace_id(&request(&[("x-trace-id", "abc-123")])), "abc-123");
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id(&request(&[("traceparent", parent)])),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let generated = trace_id(&request(&[("x-trace-id", "bad value with spaces")]));
        assert_eq!(generated.len(), 32);
    }
}
