//! Every close code and every error code Switchboard sends, in one place.
//!
//! A WebSocket that Switchboard ends gets a [`CloseReason`], which maps to exactly one close code
//! and says whether the client should reconnect. A request refused before the upgrade gets a
//! [`Rejection`], which maps to one HTTP status and one JSON error body. Both enums are matched
//! exhaustively, so a new variant does not compile until it has a code. docs/close-codes.md is
//! the user-facing copy of these tables; keep the two in step.

use http::StatusCode;

use crate::kind::Door;

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
    /// Client protocol: no `connect` command within `client.connect_timeout`.
    Stale,
    /// Client protocol: a subscription token expired without a `sub_refresh`.
    SubscriptionExpired,
    /// Client protocol: the connect token is malformed or badly signed.
    InvalidToken,
    /// Client protocol: a frame that is not valid protocol JSON, or a second `connect`.
    BadRequest,
    /// Client protocol: this node missed publications of a channel the client subscribes to
    /// with recovery (a broker gap, an epoch change); reconnect and recover from history.
    InsufficientState,
}

impl CloseReason {
    /// The close code and reason text sent to a client of `door`. The client protocol has its
    /// own codes, which its SDKs read as "reconnect" (3000–3499) or "stop" (3500–3999).
    pub fn wire(self, door: Door) -> (u16, &'static str) {
        if door != Door::Protocol {
            return (self.code(), self.text());
        }
        match self {
            CloseReason::ClientClosed(code) => (code, ""),
            CloseReason::GoingAway => (3001, "shutdown"),
            CloseReason::ProtocolError => (1002, "protocol error"),
            CloseReason::InvalidUtf8 => (1007, "invalid utf-8"),
            CloseReason::MessageTooBig => (1009, "message too big"),
            CloseReason::InternalError => (3004, "internal server error"),
            CloseReason::TokenExpired => (3005, "connection expired"),
            CloseReason::SubscriptionExpired => (3006, "subscription expired"),
            CloseReason::SlowConsumer => (3008, "slow"),
            CloseReason::HeartbeatTimeout => (3012, "no pong"),
            CloseReason::RateLimited => (3013, "too many requests"),
            CloseReason::InvalidToken => (3500, "invalid token"),
            CloseReason::BadRequest => (3501, "bad request"),
            CloseReason::Stale => (3502, "stale"),
            CloseReason::DisconnectedByServer => (3503, "force disconnect"),
            CloseReason::InsufficientState => (3010, "insufficient state"),
        }
    }

    /// The WebSocket close code sent in the close frame on the plain doors.
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
            CloseReason::InsufficientState => 4005,
            // Only the client protocol ends a connection for these; its codes are in `wire`.
            CloseReason::Stale
            | CloseReason::SubscriptionExpired
            | CloseReason::InvalidToken
            | CloseReason::BadRequest => 1008,
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
            CloseReason::Stale => "stale",
            CloseReason::SubscriptionExpired => "subscription expired",
            CloseReason::InvalidToken => "invalid token",
            CloseReason::BadRequest => "bad request",
            CloseReason::InsufficientState => "insufficient state",
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
            CloseReason::SubscriptionExpired => true,
            CloseReason::InsufficientState => true,
            CloseReason::Stale | CloseReason::InvalidToken | CloseReason::BadRequest => false,
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
            CloseReason::Stale => "stale",
            CloseReason::SubscriptionExpired => "subscription_expired",
            CloseReason::InvalidToken => "invalid_token",
            CloseReason::BadRequest => "bad_request",
            CloseReason::InsufficientState => "insufficient_state",
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
    /// A plain door would open a channel beyond `limits.max_channels` on this node.
    #[error("node channel limit reached")]
    ChannelLimit,
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
            Rejection::NodeFull | Rejection::ShuttingDown | Rejection::ChannelLimit => {
                StatusCode::SERVICE_UNAVAILABLE
            }
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
            Rejection::ChannelLimit => "channel_limit",
            Rejection::NotFound => "not_found",
        }
    }
}

/// An error answered by the server HTTP API, as `{"error":{"code","message"}}` with a numeric
/// code. Errors of the request itself (key, method, body) have an HTTP status of their own;
/// errors of what was asked (a channel, a feature) are answered with 200 and the same codes as
/// the client protocol, as Centrifugo's server SDKs (the Python `cent`) expect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Missing or wrong API key.
    #[error("missing or invalid API key")]
    Unauthorized,
    /// The body is not the JSON the method expects.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No such API method.
    #[error("method not found")]
    UnknownMethod,
    /// The API takes POST only.
    #[error("method not allowed: use POST")]
    MethodNotAllowed,
    /// The body is larger than the API accepts.
    #[error("request body too large")]
    BodyTooLarge,
    /// What was asked cannot be done (unknown channel, not available, unrecoverable).
    #[error("{0}")]
    Client(#[from] ClientError),
    /// The broker cannot be reached or did not answer in time: nothing was done, or (publish)
    /// it may have been; retry, with the same idempotency key for a publish.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

impl ApiError {
    /// The HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnknownMethod => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Client(_) => StatusCode::OK,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The numeric code in the JSON error body.
    pub fn code(&self) -> u32 {
        match self {
            ApiError::Unauthorized => ClientError::Unauthorized.code(),
            ApiError::BadRequest(_) | ApiError::MethodNotAllowed => ClientError::BadRequest.code(),
            ApiError::UnknownMethod => ClientError::MethodNotFound.code(),
            ApiError::BodyTooLarge => ClientError::LimitExceeded.code(),
            ApiError::Client(error) => error.code(),
            ApiError::Unavailable(_) => ClientError::Unavailable.code(),
        }
    }
}

/// The JSON body `{"error":{"code":..,"message":..}}` shared by rejections and API errors.
pub(crate) fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({ "error": { "code": code, "message": message } }).to_string()
}

/// An error in a client-protocol reply, `{"id":N,"error":{"code","message"}}`. The codes are
/// the ones the protocol's SDKs act on (109: fetch a new token; temporary: retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A bug on our side.
    #[error("internal server error")]
    Internal,
    /// No token where one is required, or a command before `connect`.
    #[error("unauthorized")]
    Unauthorized,
    /// A bad channel name, or a namespace that is not configured.
    #[error("unknown channel")]
    UnknownChannel,
    /// The channel's rules refuse this connection.
    #[error("permission denied")]
    PermissionDenied,
    /// `rpc`, or a method the server does not know.
    #[error("method not found")]
    MethodNotFound,
    /// The connection is already subscribed to the channel.
    #[error("already subscribed")]
    AlreadySubscribed,
    /// More subscriptions than `client.max_subscriptions`.
    #[error("limit exceeded")]
    LimitExceeded,
    /// Missing or wrong fields.
    #[error("bad request")]
    BadRequest,
    /// Presence or history asked of a namespace without it.
    #[error("not available")]
    NotAvailable,
    /// The token has expired.
    #[error("token expired")]
    TokenExpired,
    /// The stream no longer holds the asked range (or another epoch was named).
    #[error("unrecoverable position")]
    Unrecoverable,
    /// The broker cannot be reached right now; retry later.
    #[error("broker unavailable")]
    Unavailable,
    /// More subscribes and unsubscribes than `client.subscribe_rate` allows; retry later.
    #[error("too many requests")]
    TooManyRequests,
    /// A node-wide bound (`limits.max_channels`, `max_history_streams`,
    /// `max_presence_entries`) would be passed; retry later, when others have left.
    #[error("node limit exceeded")]
    NodeLimit,
    /// A publication whose frame could never be queued for a subscriber (over
    /// `limits.max_queued_bytes`); nothing was published.
    #[error("publication too large")]
    TooLarge,
}

impl ClientError {
    /// The numeric code.
    pub fn code(self) -> u32 {
        match self {
            ClientError::Internal => 100,
            ClientError::Unauthorized => 101,
            ClientError::UnknownChannel => 102,
            ClientError::PermissionDenied => 103,
            ClientError::MethodNotFound => 104,
            ClientError::AlreadySubscribed => 105,
            ClientError::LimitExceeded => 106,
            ClientError::BadRequest => 107,
            ClientError::NotAvailable => 108,
            ClientError::TokenExpired => 109,
            ClientError::Unrecoverable => 112,
            ClientError::Unavailable => 100,
            ClientError::TooManyRequests => 111,
            // 106 is the code the protocol's SDKs know for a limit; the message tells which.
            ClientError::NodeLimit | ClientError::TooLarge => 106,
        }
    }

    /// Whether the client should retry the same command later.
    pub fn temporary(self) -> bool {
        matches!(
            self,
            ClientError::Internal
                | ClientError::Unavailable
                | ClientError::TooManyRequests
                | ClientError::NodeLimit
        )
    }
}

impl From<crate::channels::ChannelError> for ClientError {
    fn from(_: crate::channels::ChannelError) -> Self {
        ClientError::UnknownChannel
    }
}
