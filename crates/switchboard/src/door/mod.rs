//! HTTP routing: the WebSocket doors (the Pusher door's `/app/{key}` among them), the server
//! API, the Pusher HTTP API (`/apps/{id}/…`), the admin UI and the operations endpoints.
//!
//! Every response carries `X-Trace-ID` (taken from the request's `X-Trace-ID` or
//! `traceparent`, or generated) so a client's report can be matched to the log lines. With
//! traces on, an API call and a WebSocket handshake each get a server span whose trace id is
//! that same id whenever it can be one (see `server_span`).

pub(crate) mod emulation;
pub(crate) mod pusher;
pub(crate) mod stream;
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
use crate::trace::Span;

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
            let mut now = state.node.snapshot();
            now.ready = state.ready();
            now.connections_limit = state.config.server.max_connections;
            (now.shared_poll_channels, now.shared_poll_keys) = state.polls.load();
            let body = state.node.metrics.render(&now);
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        (_, api) if api == "/api" || api.starts_with("/api/") => {
            let mut span = server_span(&state, &req, "api", &trace_id);
            let response = crate::api::handle(&state, req, &mut span).await;
            finish(span, &response);
            response
        }
        (_, admin) if admin == "/admin" || admin.starts_with("/admin/") => {
            crate::admin::handle(&state, peer, req).await
        }
        (_, apps) if apps.starts_with("/apps/") && !state.config.pusher.apps.is_empty() => {
            pusher::api::handle(&state, req).await
        }
        (_, "/emulation")
            if state.config.client.enabled && state.config.client.stream_transports =>
        {
            emulation::handle(&state, req).await
        }
        (&Method::OPTIONS, path)
            if stream::Transport::of_path(path).is_some()
                && state.config.client.stream_transports =>
        {
            emulation::preflight(&state, req.headers().get(header::ORIGIN))
        }
        (_, path) if stream::Transport::of_path(path).is_some() => {
            let span = server_span(&state, &req, "stream", &trace_id);
            let response = stream::open(&state, peer, req, &trace_id).await;
            finish(span, &response);
            response
        }
        (_, ws)
            if ws == "/ws"
                || ws.starts_with("/ws/")
                || ws == "/connection/websocket"
                || (ws.starts_with("/app/") && !state.config.pusher.apps.is_empty()) =>
        {
            let span = server_span(&state, &req, "handshake", &trace_id);
            let response = upgrade::upgrade(&state, peer, req, &trace_id, span.context()).await;
            finish(span, &response);
            response
        }
        _ => rejection(&Rejection::NotFound),
    };
    if let Ok(value) = HeaderValue::from_str(&trace_id) {
        response.headers_mut().insert("x-trace-id", value);
    }
    response
}

/// The server span of a request (none when traces are off). It continues the request's
/// `traceparent`, or starts a trace whose id is the request's log trace id when that is 32
/// hex digits (always so when the node generated it). When the two still differ (a free-form
/// `X-Trace-ID`, or one that disagrees with `traceparent`), the log's id is kept on the span
/// as `switchboard.trace_id`, so either finds the other.
fn server_span<B>(state: &State, req: &Request<B>, name: &str, trace_id: &str) -> Span {
    let tracer = state.node.tracer();
    if !tracer.is_enabled() {
        return Span::none();
    }
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    let mut span = tracer.server_span(name, traceparent, trace_id);
    if span
        .context()
        .is_some_and(|context| context.trace_id_hex() != trace_id)
    {
        span.set_str("switchboard.trace_id", trace_id);
    }
    span.set_str("http.request.method", req.method().as_str());
    span.set_str("url.path", req.uri().path());
    span
}

/// Records the response's status on its span and ends it.
fn finish(mut span: Span, response: &Response) {
    let status = response.status();
    span.set_int("http.response.status_code", i64::from(status.as_u16()));
    if status.is_client_error() || status.is_server_error() {
        span.fail(status.canonical_reason().unwrap_or("error"));
    }
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
