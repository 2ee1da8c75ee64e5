//! Every close code and every error code Switchboard sends, in one place.
//!
//! A WebSocket that Switchboard ends gets a [`CloseReason`], which maps to exactly one close code
//! and says whether the client should reconnect. A request refused before the upgrade gets a
//! [`Rejection`], which maps to one HTTP status and one JSON error body. Both enums are matched
//! exhaustively, so a new variant does not compile until it has a code. docs/close-codes.md is
//! the user-facing copy of these tables; keep the two in step.

use http::StatusCode;

/// Why Switchboard ended a WebSocket connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the connection; the code is echoed back (RFC 6455 §5.5.1).
    ClientClosed(u16),
    /// The server is shutting down; reconnect (to another node).
    GoingAway,
    /// A frame broke RFC 6455 (bad opcode, unmasked frame, reserved bits, bad fragment order).
    ProtocolError,
    /// A text message (or close reason) was not valid UTF-8.
    InvalidUtf8,
    /// A message was larger than `limits.max_message_bytes`.
    MessageTooBig,
    /// The connection's handler failed (a panic); the connection alone is ended.
    InternalError,
    /// The outbound queue overflowed `limits.max_queued_bytes`: the client reads too slowly.
    SlowConsumer,
    /// No inbound frame (data, ping or pong) for two heartbeat intervals.
    HeartbeatTimeout,
    /// The connection's token expired.
    TokenExpired,
    /// The backend disconnected this user through the server API.
    DisconnectedByServer,
    /// The client sent more messages than `limits.client_message_rate` allows.
    RateLimited,
}

impl CloseReason {
    /// The WebSocket close code sent in the close frame.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::ClientClosed(code) => code,
            CloseReason::GoingAway => 1001,
            CloseReason::ProtocolError => 1002,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::MessageTooBig => 1009,
            CloseReason::InternalError => 1011,
            CloseReason::SlowConsumer => 4000,
            CloseReason::HeartbeatTimeout => 4001,
            CloseReason::TokenExpired => 4002,
            CloseReason::DisconnectedByServer => 4003,
            CloseReason::RateLimited => 4004,
        }
    }

    /// The short reason text sent in the close frame and logged.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::ClientClosed(_) => "",
            CloseReason::GoingAway => "server shutting down",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::InvalidUtf8 => "invalid utf-8",
            CloseReason::MessageTooBig => "message too big",
            CloseReason::InternalError => "internal error",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::HeartbeatTimeout => "heartbeat timeout",
            CloseReason::TokenExpired => "token expired",
            CloseReason::DisconnectedByServer => "disconnected by server",
            CloseReason::RateLimited => "message rate exceeded",
        }
    }

    /// Whether a well-behaved client should reconnect after this close.
    pub fn should_reconnect(self) -> bool {
        match self {
            CloseReason::ClientClosed(_) => false,
            CloseReason::GoingAway => true,
            CloseReason::ProtocolError => false,
            CloseReason::InvalidUtf8 => false,
            CloseReason::MessageTooBig => false,
            CloseReason::InternalError => true,
            CloseReason::SlowConsumer => true,
            CloseReason::HeartbeatTimeout => true,
            CloseReason::TokenExpired => true,
            CloseReason::DisconnectedByServer => false,
            CloseReason::RateLimited => true,
        }
    }

    /// Label used in logs and in the `switchboard_disconnects_total{reason}` metric.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientClosed(_) => "client_closed",
            CloseReason::GoingAway => "going_away",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::MessageTooBig => "message_too_big",
            CloseReason::InternalError => "internal_error",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::DisconnectedByServer => "disconnected_by_server",
            CloseReason::RateLimited => "rate_limited",
        }
    }
}

/// Why an upgrade request was refused before it became a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The request is not a valid WebSocket upgrade (RFC 6455 §4.2.1).
    #[error("bad upgrade request: {0}")]
    BadUpgrade(&'static str),
    /// The path names a room or user that is not allowed (empty, too long, bad characters).
    #[error("bad channel name: {0}")]
    BadChannel(&'static str),
    /// A token is required and none was given.
    #[error("a token is required")]
    MissingToken,
    /// The token failed verification (signature, algorithm, expiry, claims).
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The token is valid but its subject may not use this door.
    #[error("token subject does not match the requested user")]
    WrongSubject,
    /// The `Origin` header is not in the allowlist.
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// The client IP already holds `max_connections_per_ip` connections.
    #[error("too many connections from this address")]
    TooManyConnectionsPerIp,
    /// The node already holds `max_connections` connections.
    #[error("node connection limit reached")]
    NodeFull,
    /// The node is draining for shutdown.
    #[error("server shutting down")]
    ShuttingDown,
    /// The door is switched off in configuration, or the path is unknown.
    #[error("not found")]
    NotFound,
}

impl Rejection {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadUpgrade(_) | Rejection::BadChannel(_) => StatusCode::BAD_REQUEST,
            Rejection::MissingToken | Rejection::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Rejection::WrongSubject | Rejection::OriginNotAllowed => StatusCode::FORBIDDEN,
            Rejection::TooManyConnectionsPerIp => StatusCode::TOO_MANY_REQUESTS,
            Rejection::NodeFull | Rejection::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::NotFound => StatusCode::NOT_FOUND,
        }
    }

    /// The stable machine-readable code in the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::BadUpgrade(_) => "bad_upgrade",
            Rejection::BadChannel(_) => "bad_channel",
            Rejection::MissingToken => "token_required",
            Rejection::InvalidToken(_) => "invalid_token",
            Rejection::WrongSubject => "wrong_subject",
            Rejection::OriginNotAllowed => "origin_not_allowed",
            Rejection::TooManyConnectionsPerIp => "too_many_connections_per_ip",
            Rejection::NodeFull => "node_full",
            Rejection::ShuttingDown => "shutting_down",
            Rejection::NotFound => "not_found",
        }
    }
}

/// An error answered by the server HTTP API, as `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Missing or wrong API key.
    #[error("missing or invalid API key")]
    Unauthorized,
    /// The body is not the JSON the method expects.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No such API method.
    #[error("unknown method")]
    UnknownMethod,
    /// The API takes POST only.
    #[error("method not allowed: use POST")]
    MethodNotAllowed,
    /// The body is larger than the API accepts.
    #[error("request body too large")]
    BodyTooLarge,
    /// The channel name is not valid.
    #[error("bad channel name: {0}")]
    BadChannel(&'static str),
}

impl ApiError {
    /// The HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) | ApiError::BadChannel(_) => StatusCode::BAD_REQUEST,
            ApiError::UnknownMethod => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// The stable machine-readable code in the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::UnknownMethod => "unknown_method",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::BodyTooLarge => "body_too_large",
            ApiError::BadChannel(_) => "bad_channel",
        }
    }
}

/// The JSON body `{"error":{"code":..,"message":..}}` shared by rejections and API errors.
pub(crate) fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({ "error": { "code": code, "message": message } }).to_string()
}
