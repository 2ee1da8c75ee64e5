//! How failures of the NATS client become the contract's [`BrokerError`]: one place that
//! decides what is "unavailable" (the link), what is a "timeout" (our deadline), and what is a
//! "protocol" error (an answer we cannot use).

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use switchboard::broker::BrokerError;

/// `err` from the NATS client while doing `what`: the link or the server failed us.
pub fn unavailable(what: &str, err: impl Display) -> BrokerError {
    BrokerError::Unavailable(format!("nats {what}: {err}"))
}

/// An answer that is not what this engine stores (a foreign writer on our subjects).
pub fn protocol(what: &str, err: impl Display) -> BrokerError {
    BrokerError::Protocol(format!("nats {what}: {err}"))
}

/// Runs `call` for at most `limit`. Every broker call goes through here: a server that stops
/// answering (a paused process, a dead peer the OS has not noticed yet) would otherwise keep a
/// caller waiting for as long as the client's own deadlines, or forever.
///
/// # Errors
/// [`BrokerError::Timeout`] when `limit` passes first; otherwise what `call` returned.
pub async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(BrokerError::Timeout))
}
