//! Admin logins: the sessions the admin UI's cookie names, the per-IP bound on login
//! attempts, the count of live-update streams, and the constant-time comparison every
//! credential check uses. Pure bookkeeping on `Instant`s: no HTTP, no cookies (the `admin`
//! module speaks those), nothing of the node.
//!
//! A session is 32 random bytes from the operating system's generator, kept here with its
//! end; the cookie carries only that id, so a session ends (logout, expiry) on the server,
//! whatever the browser keeps. Both maps are bounded: a flood of logins or of addresses
//! cannot grow them past [`MAX_SESSIONS`] and [`MAX_TRACKED_IPS`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most sessions kept at once; at the bound a login ends the session closest to its end.
pub const MAX_SESSIONS: usize = 1024;
/// Most client addresses whose login attempts are counted at once; past it (addresses still
/// inside their minute) every login is refused until a minute ends, rather than forgetting
/// someone's count.
pub const MAX_TRACKED_IPS: usize = 16 * 1024;
/// Most live-update streams open at once on a node.
pub const MAX_STREAMS: usize = 32;
/// The window login attempts are counted over.
const WINDOW: Duration = Duration::from_secs(60);

/// Compares two byte strings in time that depends on `given`'s length only: neither where
/// they first differ nor the expected value's length shows in how long it takes.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, byte) in given.iter().enumerate() {
        let other = if expected.is_empty() {
            0
        } else {
            expected[i % expected.len()]
        };
        diff |= usize::from(byte ^ other);
    }
    diff == 0
}

/// Whether `given` is `expected`, where an unset (empty) `expected` matches nothing.
pub fn matches_secret(given: &[u8], expected: &str) -> bool {
    // Compared even when unset, so an unset credential takes as long as a set one.
    let equal = constant_time_eq(given, expected.as_bytes());
    equal && !expected.is_empty()
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random generator failed: {0}")]
pub struct RandomError(String);

/// A login refused by the attempt bound: try again in this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyAttempts {
    /// Until the client's minute is over.
    pub retry_after: Duration,
}

/// Attempts of one address in its current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    attempts: u32,
}

/// The admin UI's sessions and login bound, shared by every request of one gateway.
pub struct Logins {
    ttl: Duration,
    per_minute: u32,
    sessions: Mutex<HashMap<String, Instant>>,
    attempts: Mutex<HashMap<IpAddr, Window>>,
    streams: Arc<AtomicUsize>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section leaves its map consistent, even if a caller panicked.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Logins {
    /// Sessions that last `ttl`; `per_minute` login attempts per address.
    pub fn new(ttl: Duration, per_minute: u32) -> Logins {
        Logins {
            ttl,
            per_minute,
            sessions: Mutex::new(HashMap::new()),
            attempts: Mutex::new(HashMap::new()),
            streams: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Counts one login attempt from `ip` (right or wrong: counting only failures would let
    /// a guesser interleave its own right password to reset the count).
    ///
    /// # Errors
    /// [`TooManyAttempts`] past `per_minute` in the address's current minute, or when
    /// [`MAX_TRACKED_IPS`] addresses are inside theirs.
    pub fn attempt(&self, ip: IpAddr, now: Instant) -> Result<(), TooManyAttempts> {
        let mut attempts = lock(&self.attempts);
        if attempts.len() >= MAX_TRACKED_IPS && !attempts.contains_key(&ip) {
            attempts.retain(|_, w| now.saturating_duration_since(w.started) < WINDOW);
            if attempts.len() >= MAX_TRACKED_IPS {
                let soonest = attempts.values().map(|w| w.started).min().unwrap_or(now);
                return Err(TooManyAttempts {
                    retry_after: WINDOW.saturating_sub(now.saturating_duration_since(soonest)),
                });
            }
        }
        let window = attempts.entry(ip).or_insert(Window {
            started: now,
            attempts: 0,
        });
        if now.saturating_duration_since(window.started) >= WINDOW {
            *window = Window {
                started: now,
                attempts: 0,
            };
        }
        if window.attempts >= self.per_minute {
            return Err(TooManyAttempts {
                retry_after: WINDOW.saturating_sub(now.saturating_duration_since(window.started)),
            });
        }
        window.attempts += 1;
        Ok(())
    }

    /// Opens a session; returns its id (64 hex digits).
    ///
    /// # Errors
    /// [`RandomError`] when the operating system gives no random bytes.
    pub fn open(&self, now: Instant) -> Result<String, RandomError> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|e| RandomError(e.to_string()))?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, end| *end > now);
        }
        if sessions.len() >= MAX_SESSIONS {
            let soonest = sessions
                .iter()
                .min_by_key(|(_, end)| **end)
                .map(|(id, _)| id.clone());
            if let Some(soonest) = soonest {
                sessions.remove(&soonest);
            }
        }
        sessions.insert(id.clone(), now + self.ttl);
        Ok(id)
    }

    /// How long the session `id` has left, or `None` when there is no such session or it
    /// has ended (it is then forgotten).
    pub fn check(&self, id: &str, now: Instant) -> Option<Duration> {
        let mut sessions = lock(&self.sessions);
        let end = *sessions.get(id)?;
        if end <= now {
            sessions.remove(id);
            return None;
        }
        Some(end - now)
    }

    /// Ends the session `id` (logout); returns whether there was one.
    pub fn close(&self, id: &str) -> bool {
        lock(&self.sessions).remove(id).is_some()
    }

    /// Sessions kept (some may have ended and not been noticed yet).
    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes one of the [`MAX_STREAMS`] live-update streams; `None` when all are taken. The
    /// place is given back when the returned guard is dropped.
    pub fn stream(&self) -> Option<StreamPlace> {
        let taken = self
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            });
        taken.ok().map(|_| StreamPlace(Arc::clone(&self.streams)))
    }
}

/// One live-update stream's place; dropping it gives the place back.
pub struct StreamPlace(Arc<AtomicUsize>);

impl Drop for StreamPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_needs_equal_bytes_of_equal_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcabc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!matches_secret(b"", ""), "an unset secret matches nothing");
        assert!(matches_secret(b"s3cret", "s3cret"));
    }

    #[test]
    fn attempts_are_bounded_per_address_and_minute() {
        let logins = Logins::new(Duration::from_secs(60), 3);
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(logins.attempt(a, now), Ok(()));
        }
        let refused = logins
            .attempt(a, now + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(50));
        assert_eq!(
            logins.attempt(b, now),
            Ok(()),
            "another address is not held"
        );
        assert_eq!(logins.attempt(a, now + WINDOW), Ok(()), "a new minute");
    }

    #[test]
    fn sessions_end_on_time_on_logout_and_at_the_bound() {
        let logins = Logins::new(Duration::from_secs(60), 3);
        let now = Instant::now();
        let id = logins.open(now).unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(logins.check(&id, now), Some(Duration::from_secs(60)));
        assert_eq!(logins.check("forged", now), None);
        assert_eq!(logins.check(&id, now + Duration::from_secs(60)), None);
        assert!(logins.is_empty(), "an ended session is forgotten");
        let id = logins.open(now).unwrap();
        assert!(logins.close(&id));
        assert_eq!(logins.check(&id, now), None);
        let first = logins.open(now).unwrap();
        for i in 1..MAX_SESSIONS as u64 + 5 {
            logins.open(now + Duration::from_millis(i)).unwrap();
        }
        assert_eq!(logins.len(), MAX_SESSIONS);
        assert_eq!(logins.check(&first, now), None, "the oldest made room");
    }

    #[test]
    fn streams_are_bounded_and_given_back() {
        let logins = Logins::new(Duration::from_secs(60), 3);
        let places: Vec<StreamPlace> = (0..MAX_STREAMS).filter_map(|_| logins.stream()).collect();
        assert_eq!(places.len(), MAX_STREAMS);
        assert!(logins.stream().is_none());
        drop(places);
        assert!(logins.stream().is_some());
    }
}
