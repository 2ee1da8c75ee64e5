//! Every error and close code of the protocol (docs/protocol.md), and what the client does
//! after each: [`after_close`] for a closed connection, [`after_connect_error`] for a refused
//! `connect` command. The decisions match on code ranges with no catch-all arm, so the ranges
//! read as the documentation's table.

use crate::error::ReplyError;

/// Error codes in replies (`{"error":{"code":...}}`).
pub mod error {
    /// A bug on the server's side; temporary.
    pub const INTERNAL: u32 = 100;
    /// No token and anonymous connections refused, or a command before `connect`.
    pub const UNAUTHORIZED: u32 = 101;
    /// The channel's namespace is not configured, or the name is invalid.
    pub const UNKNOWN_CHANNEL: u32 = 102;
    /// The namespace's rules refuse the command.
    pub const PERMISSION_DENIED: u32 = 103;
    /// `rpc`, or a method the server does not know.
    pub const METHOD_NOT_FOUND: u32 = 104;
    /// Subscribed twice on one connection.
    pub const ALREADY_SUBSCRIBED: u32 = 105;
    /// Too many subscriptions on one connection.
    pub const LIMIT_EXCEEDED: u32 = 106;
    /// Missing or wrong fields.
    pub const BAD_REQUEST: u32 = 107;
    /// Presence or history in a namespace without them.
    pub const NOT_AVAILABLE: u32 = 108;
    /// The token expired; get a new one and retry.
    pub const TOKEN_EXPIRED: u32 = 109;
    /// Recovery impossible and `rejectUnrecovered` was asked.
    pub const UNRECOVERABLE_POSITION: u32 = 112;
}

/// Close codes (and the `disconnect` push that precedes them).
pub mod close {
    /// The client closed the connection ([`Client::close`](crate::Client::close)).
    pub const NORMAL: u16 = 1000;
    /// A close frame with no code.
    pub const NO_STATUS: u16 = 1005;
    /// The connection ended with no close frame: a transport failure, or no ping from the
    /// server in time. Never on the wire; reported by this client.
    pub const ABNORMAL: u16 = 1006;
    /// A frame over the server's message size limit; the client stops.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The node is shutting down or restarting.
    pub const SHUTDOWN: u16 = 3001;
    /// A handler panicked on the server.
    pub const INTERNAL: u16 = 3004;
    /// The token expired with no refresh.
    pub const EXPIRED: u16 = 3005;
    /// A subscription token expired with no `sub_refresh`.
    pub const SUBSCRIPTION_EXPIRED: u16 = 3006;
    /// The client read too slowly.
    pub const SLOW: u16 = 3008;
    /// The client sent nothing for two heartbeat intervals.
    pub const NO_PONG: u16 = 3012;
    /// Too many messages per second.
    pub const TOO_MANY_REQUESTS: u16 = 3013;
    /// The connect token is malformed or badly signed.
    pub const INVALID_TOKEN: u16 = 3500;
    /// A frame that is not valid protocol JSON, or a second connect.
    pub const BAD_REQUEST: u16 = 3501;
    /// No connect command in time.
    pub const STALE: u16 = 3502;
    /// The server API's `disconnect`.
    pub const FORCE_DISCONNECT: u16 = 3503;
}

/// What the client does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reconnect after a backoff delay, then resubscribe and recover.
    Reconnect,
    /// Stop for good: the client closes and every later call fails with
    /// [`Error::Closed`](crate::Error::Closed).
    Stop,
}

/// What to do after the connection closed with `code`.
///
/// 3000–3499 and 4000–4499 reconnect; 3500–3999 and 4500–4999 stop; 1009 (message too big)
/// stops; any other code below 3000 is a transport failure and reconnects. Codes from 5000
/// on are not valid close codes; they are treated as transport failures too.
pub fn after_close(code: u16) -> Action {
    match code {
        close::MESSAGE_TOO_BIG => Action::Stop,
        0..=1008 | 1010..=2999 => Action::Reconnect,
        3000..=3499 => Action::Reconnect,
        3500..=3999 => Action::Stop,
        4000..=4499 => Action::Reconnect,
        4500..=4999 => Action::Stop,
        5000..=u16::MAX => Action::Reconnect,
    }
}

/// What to do after the server refused the `connect` command with `error`.
///
/// A temporary error (code 100, or `temporary: true`) and an expired token (109, which a new
/// token set with [`Client::set_token`](crate::Client::set_token) can fix) reconnect; every
/// other error stops.
pub fn after_connect_error(error: &ReplyError) -> Action {
    if error.temporary || error.code == error::INTERNAL || error.code == error::TOKEN_EXPIRED {
        Action::Reconnect
    } else {
        Action::Stop
    }
}

/// Whether a failed `subscribe` is worth retrying on the same connection.
pub(crate) fn subscribe_error_is_temporary(error: &ReplyError) -> bool {
    error.temporary || error.code == error::INTERNAL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_follow_the_documented_ranges() {
        for code in [
            1000, 1001, 1002, 1006, 1011, 3000, 3001, 3008, 3012, 3499, 4000, 4499,
        ] {
            assert_eq!(after_close(code), Action::Reconnect, "{code}");
        }
        for code in [1009, 3500, 3501, 3503, 3999, 4500, 4999] {
            assert_eq!(after_close(code), Action::Stop, "{code}");
        }
    }

    #[test]
    fn connect_errors_stop_unless_temporary_or_expired() {
        let error = |code, temporary| ReplyError {
            code,
            message: String::new(),
            temporary,
        };
        assert_eq!(after_connect_error(&error(109, false)), Action::Reconnect);
        assert_eq!(after_connect_error(&error(100, false)), Action::Reconnect);
        assert_eq!(after_connect_error(&error(107, true)), Action::Reconnect);
        assert_eq!(after_connect_error(&error(101, false)), Action::Stop);
        assert_eq!(after_connect_error(&error(103, false)), Action::Stop);
    }
}
