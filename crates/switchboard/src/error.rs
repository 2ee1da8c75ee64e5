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
    /// A backend hook answered `disconnect` with this code (3000–4999, docs/hooks.md).
    BackendDisconnect(u16),
    /// Pusher door: no app has the key in `/app/{key}` (`pusher:error` 4001).
    PusherUnknownApp,
    /// Pusher door: `?protocol=` is missing or not 7 (`pusher:error` 4007).
    PusherUnsupportedProtocol,
    /// Pusher door: the `Origin` is not in the app's `allowed_origins` (`pusher:error` 4009).
    PusherOriginNotAllowed,
    /// Pusher door: the app has `max_connections` connections on this node (`pusher:error`
    /// 4004).
    PusherOverQuota,
}

impl CloseReason {
    /// The close code and reason text sent to a client of `door`. The client protocol has its
    /// own codes, which its SDKs read as "reconnect" (3000–3499) or "stop" (3500–3999).
    pub fn wire(self, door: Door) -> (u16, &'static str) {
        if door == Door::Pusher {
            return self.pusher();
        }
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
            CloseReason::BackendDisconnect(code) => (code, "backend disconnect"),
            CloseReason::PusherUnknownApp
            | CloseReason::PusherUnsupportedProtocol
            | CloseReason::PusherOriginNotAllowed
            | CloseReason::PusherOverQuota => (self.code(), self.text()),
        }
    }

    /// The `pusher:error` code (also the close code) and message for a Pusher client. Pusher
    /// clients read 4000–4099 as "do not reconnect", 4100–4199 as "reconnect after a
    /// backoff", 4200–4299 as "reconnect at once".
    pub fn pusher(self) -> (u16, &'static str) {
        match self {
            CloseReason::ClientClosed(code) => (code, ""),
            CloseReason::PusherUnknownApp => (4001, "App key not in this server's configuration"),
            CloseReason::PusherUnsupportedProtocol => (
                4007,
                "Unsupported protocol version: only protocol 7 is served",
            ),
            CloseReason::ProtocolError | CloseReason::InvalidUtf8 | CloseReason::BadRequest => {
                (4000, "Invalid WebSocket data; not reconnecting")
            }
            CloseReason::MessageTooBig => (4000, "Message too big; not reconnecting"),
            CloseReason::DisconnectedByServer
            | CloseReason::InvalidToken
            | CloseReason::TokenExpired => (4009, "Connection is unauthorized"),
            CloseReason::PusherOriginNotAllowed => (4009, "Origin not allowed for this app"),
            CloseReason::PusherOverQuota => (4004, "Over connection quota"),
            // Hooks are not asked for Pusher connections; kept total for the match.
            CloseReason::BackendDisconnect(_) => (4009, "Disconnected by the backend"),
            CloseReason::SlowConsumer => (4100, "Over capacity: the client reads too slowly"),
            CloseReason::RateLimited => (4100, "Over capacity: too many messages"),
            CloseReason::GoingAway => (4200, "Server shutting down; reconnect"),
            CloseReason::InternalError
            | CloseReason::Stale
            | CloseReason::SubscriptionExpired
            | CloseReason::InsufficientState => (4200, "Generic reconnect immediately"),
            CloseReason::HeartbeatTimeout => (4201, "Pong reply not received"),
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
            CloseReason::BackendDisconnect(code) => code,
            CloseReason::PusherUnknownApp => 4001,
            CloseReason::PusherUnsupportedProtocol => 4007,
            CloseReason::PusherOriginNotAllowed => 4009,
            CloseReason::PusherOverQuota => 4004,
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
            CloseReason::BackendDisconnect(_) => "backend disconnect",
            CloseReason::PusherUnknownApp => "unknown app",
            CloseReason::PusherUnsupportedProtocol => "unsupported protocol",
            CloseReason::PusherOriginNotAllowed => "origin not allowed",
            CloseReason::PusherOverQuota => "over connection quota",
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
            // The client protocol's convention: 3000–3499 and 4000–4499 reconnect.
            CloseReason::BackendDisconnect(code) => {
                (3000..3500).contains(&code) || (4000..4500).contains(&code)
            }
            CloseReason::PusherUnknownApp
            | CloseReason::PusherUnsupportedProtocol
            | CloseReason::PusherOriginNotAllowed
            | CloseReason::PusherOverQuota => false,
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
            CloseReason::BackendDisconnect(_) => "backend_disconnect",
            CloseReason::PusherUnknownApp => "pusher_unknown_app",
            CloseReason::PusherUnsupportedProtocol => "pusher_unsupported_protocol",
            CloseReason::PusherOriginNotAllowed => "pusher_origin_not_allowed",
            CloseReason::PusherOverQuota => "pusher_over_quota",
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
    /// The connect hook could not be asked (its upstream's breaker is open, it timed out or
    /// failed): retry after this many seconds (`Retry-After`).
    #[error("backend unavailable; retry later")]
    BackendUnavailable(u64),
    /// The connect hook refused the connection (an `error` or a `disconnect` answer).
    #[error("refused by the backend")]
    BackendDenied,
    /// An HTTP-streaming or SSE connect request the stream cannot start from (a wrong method,
    /// no connect command).
    #[error("bad stream request: {0}")]
    BadStreamRequest(&'static str),
    /// An HTTP-streaming connect request whose body is over `limits.max_message_bytes`.
    #[error("request body too large")]
    BodyTooLarge,
}

impl Rejection {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadUpgrade(_) | Rejection::BadChannel(_) => StatusCode::BAD_REQUEST,
            Rejection::MissingToken | Rejection::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Rejection::WrongSubject | Rejection::OriginNotAllowed => StatusCode::FORBIDDEN,
            Rejection::TooManyConnectionsPerIp => StatusCode::TOO_MANY_REQUESTS,
            Rejection::NodeFull
            | Rejection::ShuttingDown
            | Rejection::ChannelLimit
            | Rejection::BackendUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::NotFound => StatusCode::NOT_FOUND,
            Rejection::BackendDenied => StatusCode::FORBIDDEN,
            Rejection::BadStreamRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
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
            Rejection::BackendUnavailable(_) => "backend_unavailable",
            Rejection::BackendDenied => "backend_denied",
            Rejection::BadStreamRequest(_) => "bad_stream_request",
            Rejection::BodyTooLarge => "body_too_large",
        }
    }

    /// The `Retry-After` seconds a refusal carries, if any.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Rejection::BackendUnavailable(secs) => Some(*secs),
            Rejection::BadUpgrade(_)
            | Rejection::BadChannel(_)
            | Rejection::MissingToken
            | Rejection::InvalidToken(_)
            | Rejection::WrongSubject
            | Rejection::OriginNotAllowed
            | Rejection::TooManyConnectionsPerIp
            | Rejection::NodeFull
            | Rejection::ShuttingDown
            | Rejection::ChannelLimit
            | Rejection::NotFound
            | Rejection::BackendDenied
            | Rejection::BadStreamRequest(_)
            | Rejection::BodyTooLarge => None,
        }
    }
}

/// Why the emulation endpoint refused a request (the commands of an HTTP-streaming or SSE
/// session). Answered as `{"error":{"code","message"}}` with the status below (the SDK does
/// not read the answer; a client of its own may). `UnknownSession` is never answered: the
/// endpoint accepts and drops a request for a session that is gone, as a forwarded one is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmulationError {
    /// The body is not an emulation request (not JSON or Protobuf of the right shape, no
    /// session, no commands).
    #[error("bad emulation request: {0}")]
    BadRequest(&'static str),
    /// The body is over `limits.max_message_bytes` (plus room for the envelope).
    #[error("request body too large")]
    BodyTooLarge,
    /// The `Origin` header is not in the allowlist.
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// No session of that id is open on the node named (it ended, or never was).
    #[error("unknown session")]
    UnknownSession,
    /// The node named is not this one and not a live node of the cluster.
    #[error("unknown node")]
    UnknownNode,
    /// The session has too many requests waiting for its task.
    #[error("too many requests")]
    Busy,
    /// The broker could not carry the request to the session's node.
    #[error("broker unavailable")]
    Unavailable,
}

impl EmulationError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            EmulationError::BadRequest(_) => StatusCode::BAD_REQUEST,
            EmulationError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            EmulationError::OriginNotAllowed => StatusCode::FORBIDDEN,
            EmulationError::UnknownSession | EmulationError::UnknownNode => StatusCode::NOT_FOUND,
            EmulationError::Busy => StatusCode::TOO_MANY_REQUESTS,
            EmulationError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable machine-readable code in the JSON error body (also a metric label).
    pub fn code(&self) -> &'static str {
        match self {
            EmulationError::BadRequest(_) => "bad_emulation_request",
            EmulationError::BodyTooLarge => "body_too_large",
            EmulationError::OriginNotAllowed => "origin_not_allowed",
            EmulationError::UnknownSession => "unknown_session",
            EmulationError::UnknownNode => "unknown_node",
            EmulationError::Busy => "too_many_requests",
            EmulationError::Unavailable => "broker_unavailable",
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

/// Why the admin UI refused a request (`/admin/...`). Its JSON endpoints answer
/// `{"error":{"code","message"}}` with a text code; an action the server API refused
/// carries the API's own error ([`AdminError::Api`]).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No session (no cookie, a forged or ended one) and no admin token.
    #[error("log in first")]
    Unauthorized,
    /// The password (or token) given at login is not the configured one.
    #[error("wrong password")]
    WrongPassword,
    /// More login attempts from this address than `admin.login_attempts_per_minute`.
    #[error("too many login attempts; retry in {retry_after_secs}s")]
    TooManyAttempts {
        /// Seconds until the address's minute is over.
        retry_after_secs: u64,
    },
    /// Every live-update stream of the node is taken.
    #[error("too many live-update streams open on this node")]
    TooManyStreams,
    /// The request is not what the endpoint takes (the message says what).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A POST whose body is not JSON (forms from another site cannot send JSON, so this
    /// is also the admin UI's cross-site request check).
    #[error("send application/json")]
    NotJson,
    /// The body is larger than the admin UI takes.
    #[error("request body too large")]
    BodyTooLarge,
    /// No such page or endpoint, or the wrong method for it.
    #[error("not found")]
    NotFound,
    /// No such connection on this node.
    #[error("no such connection on this node")]
    NoSuchConnection,
    /// A session could not be opened (the operating system's random generator failed).
    #[error("internal error")]
    Internal,
    /// The server API method behind the action refused it.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl AdminError {
    /// The HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::Unauthorized | AdminError::WrongPassword => StatusCode::UNAUTHORIZED,
            AdminError::TooManyAttempts { .. } | AdminError::TooManyStreams => {
                StatusCode::TOO_MANY_REQUESTS
            }
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AdminError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::NotFound | AdminError::NoSuchConnection => StatusCode::NOT_FOUND,
            AdminError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            // An error of what was asked is a 200 in the API; here the UI shows the message
            // either way, and a status that is not 2xx keeps a failed action from looking done.
            AdminError::Api(ApiError::Client(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            AdminError::Api(error) => error.status(),
        }
    }

    /// The code in the JSON error body.
    pub fn code(&self) -> String {
        match self {
            AdminError::Unauthorized => "unauthorized".to_owned(),
            AdminError::WrongPassword => "wrong_password".to_owned(),
            AdminError::TooManyAttempts { .. } => "too_many_attempts".to_owned(),
            AdminError::TooManyStreams => "too_many_streams".to_owned(),
            AdminError::BadRequest(_) => "bad_request".to_owned(),
            AdminError::NotJson => "not_json".to_owned(),
            AdminError::BodyTooLarge => "body_too_large".to_owned(),
            AdminError::NotFound => "not_found".to_owned(),
            AdminError::NoSuchConnection => "no_such_connection".to_owned(),
            AdminError::Internal => "internal".to_owned(),
            AdminError::Api(error) => format!("api_{}", error.code()),
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
    /// An `rpc` method with no hook URL (while others have one), or a command the server
    /// does not know.
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
    /// Presence or history asked of a namespace without it; `rpc` with no rpc hook; a
    /// subscription type or publish type this server does not have.
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
    /// A backend hook this command needs could not be asked (its breaker is open, it timed
    /// out or failed); retry later.
    #[error("backend unavailable")]
    BackendUnavailable,
    /// A subscribe or publish that names a kind this server does not have (a map or shared
    /// poll subscription, a map publish or removal, a tags filter): refused rather than
    /// carried out as a plain stream, which the client would misread.
    #[error("not available: {0} not supported")]
    NotSupported(&'static str),
    /// A map subscribe, keyed publish or removal to a channel whose namespace is not a map.
    #[error("not available: not a map channel")]
    NotAMap,
    /// A stream subscribe or a publication with no key to a map channel.
    #[error("not available: map channel (use a map subscription, a keyed publish)")]
    IsAMap,
    /// A map-clients subscription to a channel whose namespace is not a map-clients map.
    #[error("not available: not a map clients channel")]
    NotMapClients,
    /// A map subscription to a map-clients channel, which takes map-clients subscriptions.
    #[error("not available: map clients channel (use a map clients subscription)")]
    IsMapClients,
    /// A shared-poll subscribe, track or untrack to a channel whose namespace is not a shared
    /// poll.
    #[error("not available: not a shared-poll channel")]
    NotSharedPoll,
    /// A stream or map subscribe, or a publication, to a shared-poll channel (its items come
    /// from the backend only).
    #[error("not available: shared-poll channel (use a shared-poll subscription)")]
    IsSharedPoll,
    /// A track whose signature is malformed or does not match its user, channel and keys.
    #[error("permission denied: bad track signature")]
    BadTrackSignature,
}

impl ClientError {
    /// The numeric code.
    pub fn code(self) -> u32 {
        match self {
            ClientError::Internal => 100,
            ClientError::Unauthorized => 101,
            ClientError::UnknownChannel => 102,
            ClientError::PermissionDenied | ClientError::BadTrackSignature => 103,
            ClientError::MethodNotFound => 104,
            ClientError::AlreadySubscribed => 105,
            ClientError::LimitExceeded => 106,
            ClientError::BadRequest => 107,
            ClientError::NotAvailable
            | ClientError::NotSupported(_)
            | ClientError::NotAMap
            | ClientError::IsAMap
            | ClientError::NotMapClients
            | ClientError::IsMapClients
            | ClientError::NotSharedPoll
            | ClientError::IsSharedPoll => 108,
            ClientError::TokenExpired => 109,
            ClientError::Unrecoverable => 112,
            ClientError::Unavailable => 100,
            ClientError::BackendUnavailable => 100,
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
                | ClientError::BackendUnavailable
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
