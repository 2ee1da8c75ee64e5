//! HTTP responses: the response type every handler returns, and the few shapes they take
//! (plain text, JSON, a refused upgrade's JSON error). Imports only the error codes.

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::Full;

use crate::error::{error_body, Rejection};

/// A response with a body, for the door and API handlers.
pub(crate) type Response = http::Response<Full<Bytes>>;

/// A plain-text response with `status`.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut response = http::Response::new(Full::new(body.into()));
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
    json(
        rejection.status(),
        error_body(rejection.code(), &rejection.to_string()),
    )
}
