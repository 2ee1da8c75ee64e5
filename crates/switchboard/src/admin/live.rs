//! The admin UI's live updates: `GET /admin/api/events`, a server-sent event stream that
//! carries the nodes and their counters (the same body as `/admin/api/nodes`) once a second.
//!
//! The stream is bounded three ways: at most `login::MAX_STREAMS` at once on a node, it
//! ends when the gateway starts shutting down (so the drain does not wait for it), and it
//! ends with an `expired` event when its session ends (logout or expiry), which the page
//! takes as "log in again". A browser that goes away drops the stream with its connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};

use super::Auth;
use crate::error::AdminError;
use crate::login::StreamPlace;
use crate::respond::{streamed, Response};
use crate::state::State;

/// How often the counters are sent.
const INTERVAL: Duration = Duration::from_secs(1);

/// What one stream carries along between its events.
struct Stream {
    state: Arc<State>,
    /// The session it belongs to (`None`: the admin token, which does not end).
    session: Option<String>,
    ticker: tokio::time::Interval,
    /// Sent the `expired` event: end at the next turn.
    ended: bool,
    /// Held for the stream's life.
    _place: StreamPlace,
}

/// Starts a stream for `auth`.
pub(super) fn events(state: &Arc<State>, auth: &Auth) -> Result<Response, AdminError> {
    let place = state.logins.stream().ok_or(AdminError::TooManyStreams)?;
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = Stream {
        state: Arc::clone(state),
        session: match auth {
            Auth::Session { id, .. } => Some(id.clone()),
            Auth::Token => None,
        },
        ticker,
        ended: false,
        _place: place,
    };
    // `retry` tells the browser how long to wait before it reconnects a dropped stream.
    let opening = futures_util::stream::once(async { Bytes::from_static(b"retry: 2000\n\n") });
    let body =
        futures_util::StreamExt::chain(opening, futures_util::stream::unfold(stream, next_event));
    let mut response = http::Response::new(streamed(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    // A proxy that buffers responses (nginx by default) would hold the events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The next event, once a second; `None` ends the stream.
async fn next_event(mut stream: Stream) -> Option<(Bytes, Stream)> {
    if stream.ended {
        return None;
    }
    tokio::select! {
        biased;
        _ = stream.state.shutdown.cancelled() => return None,
        _ = stream.ticker.tick() => {}
    }
    if let Some(id) = &stream.session {
        if stream.state.logins.check(id, Instant::now()).is_none() {
            stream.ended = true;
            return Some((Bytes::from_static(b"event: expired\ndata: {}\n\n"), stream));
        }
    }
    let nodes = super::views::nodes(&stream.state);
    let event = Bytes::from(format!("event: nodes\ndata: {nodes}\n\n"));
    Some((event, stream))
}
