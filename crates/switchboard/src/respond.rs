//! HTTP responses: the response type every handler returns, and the few shapes they take
//! (plain text, JSON, a refused upgrade's JSON error, a stream). Imports only the error codes.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::Frame;

use crate::error::{error_body, Rejection};

/// A response body: whole (every response but one), or a stream (the admin UI's live
/// updates). The whole one is not boxed, so the common response costs no more for the other.
pub(crate) type Body = Either<Full<Bytes>, UnsyncBoxBody<Bytes, Infallible>>;

/// A response with a body, for the door and API handlers.
pub(crate) type Response = http::Response<Body>;

/// Marks a response whose body is a client connection's stream (HTTP streaming, SSE): its
/// HTTP connection is no longer a pending one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientStream;

/// An empty body.
pub(crate) fn empty() -> Body {
    Either::Left(Full::default())
}

/// A body sent as `chunks` come, ending when they end.
pub(crate) fn streamed<S>(chunks: S) -> Body
where
    S: futures_util::Stream<Item = Bytes> + Send + 'static,
{
    use futures_util::StreamExt;
    let frames = chunks.map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
    Either::Right(StreamBody::new(frames).boxed_unsync())
}

/// A plain-text response with `status`.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut response = http::Response::new(Either::Left(Full::new(body.into())));
    *response.status_mut() = status;
    response
}

/// A JSON response with `status`.
pub(crate) fn json(status: StatusCode, body: String) -> Response {
    let mut response = text(status, body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The JSON error response for a refused upgrade.
pub(crate) fn rejection(rejection: &Rejection) -> Response {
    let mut response = json(
        rejection.status(),
        error_body(rejection.code(), &rejection.to_string()),
    );
    if let Some(secs) = rejection.retry_after() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}
