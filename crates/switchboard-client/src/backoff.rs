//! The reconnect schedule: exponential backoff with full jitter. The delay before attempt
//! `n` (0, 1, 2, ... since the last established connection) is drawn uniformly from
//! `[0, min(max_delay, min_delay * 2^n)]`. Full jitter spreads a crowd of clients that lost
//! the same server over the whole window instead of bringing them back in waves.
//!
//! [`Backoff::upper_bound`] is a pure function of the attempt; [`Backoff::delay`] takes the
//! random source as an argument, so a seeded [`fastrand::Rng`] makes the schedule
//! reproducible in tests.

use std::time::Duration;

/// Exponential backoff bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The upper bound of the first attempt's delay (default 100 ms).
    pub min_delay: Duration,
    /// The cap on every delay (default 20 s).
    pub max_delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(20),
        }
    }
}

impl Backoff {
    /// Bounds from `min_delay` to `max_delay`.
    pub fn new(min_delay: Duration, max_delay: Duration) -> Backoff {
        Backoff {
            min_delay,
            max_delay,
        }
    }

    /// The largest delay attempt `attempt` may wait: `min(max_delay, min_delay * 2^attempt)`,
    /// saturating instead of overflowing.
    pub fn upper_bound(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.min_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// A delay for attempt `attempt`, uniform in `[0, upper_bound(attempt)]` (both ends
    /// included, to the nanosecond), drawn from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let bound = self.upper_bound(attempt);
        let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.u64(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(20))
    }

    #[test]
    fn upper_bound_doubles_from_min_up_to_the_cap() {
        let b = backoff();
        assert_eq!(b.upper_bound(0), Duration::from_millis(100));
        for attempt in 1..8 {
            assert_eq!(b.upper_bound(attempt), b.upper_bound(attempt - 1) * 2);
        }
        // 100 ms * 2^8 = 25.6 s, over the cap.
        assert_eq!(b.upper_bound(7), Duration::from_millis(12_800));
        for attempt in 8..200 {
            assert_eq!(b.upper_bound(attempt), Duration::from_secs(20));
        }
        assert_eq!(b.upper_bound(u32::MAX), Duration::from_secs(20));
    }

    #[test]
    fn delays_never_exceed_their_bound_or_the_cap() {
        let b = backoff();
        let mut rng = fastrand::Rng::with_seed(7);
        for attempt in 0..64 {
            for _ in 0..200 {
                let delay = b.delay(attempt, &mut rng);
                assert!(delay <= b.upper_bound(attempt), "{attempt}: {delay:?}");
                assert!(delay <= b.max_delay);
            }
        }
    }

    #[test]
    fn delays_are_jittered() {
        let b = backoff();
        let mut rng = fastrand::Rng::with_seed(11);
        for attempt in [0, 3, 10] {
            let draws: Vec<Duration> = (0..50).map(|_| b.delay(attempt, &mut rng)).collect();
            let first = draws[0];
            assert!(draws.iter().any(|d| *d != first), "{attempt}: {draws:?}");
            // Full jitter: draws land in both halves of the window, not only near the bound.
            let half = b.upper_bound(attempt) / 2;
            assert!(draws.iter().any(|d| *d < half), "{attempt}: {draws:?}");
            assert!(draws.iter().any(|d| *d > half), "{attempt}: {draws:?}");
        }
    }

    #[test]
    fn delays_grow_with_the_attempt() {
        // The mean of many draws tracks half the bound, so it doubles until the cap.
        let b = backoff();
        let mut rng = fastrand::Rng::with_seed(3);
        let mean = |attempt: u32, rng: &mut fastrand::Rng| {
            let total: Duration = (0..2000).map(|_| b.delay(attempt, rng)).sum();
            total / 2000
        };
        let means: Vec<Duration> = (0..9).map(|a| mean(a, &mut rng)).collect();
        for pair in means.windows(2).take(7) {
            assert!(pair[1] > pair[0], "{means:?}");
        }
    }

    #[test]
    fn same_seed_same_schedule() {
        let b = backoff();
        let draw = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..10).map(|a| b.delay(a, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn zero_or_inverted_bounds_are_safe() {
        let zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(zero.delay(5, &mut rng), Duration::ZERO);
        let inverted = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(inverted.upper_bound(0), Duration::from_secs(1));
    }
}
