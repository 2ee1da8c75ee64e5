//! The inbound message rate limit of one connection: a token bucket refilled continuously.
//!
//! It lives in the connection's task (no sharing, no lock) and costs one clock read per
//! message.

use std::time::Instant;

/// A token bucket: `rate` messages per second, `burst` at most at once.
#[derive(Debug)]
pub struct MessageRate {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl MessageRate {
    /// `rate` per second (0 = unlimited), `burst` tokens (0 = one second's worth).
    pub fn new(rate: u32, burst: u32) -> Option<Self> {
        if rate == 0 {
            return None;
        }
        let burst = if burst == 0 { rate } else { burst };
        Some(MessageRate {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: Instant::now(),
        })
    }

    /// Takes one token; `false` when the bucket is empty.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let mut bucket = MessageRate::new(10, 3).unwrap();
        let start = Instant::now();
        assert!((0..3).all(|_| bucket.allow(start)));
        assert!(!bucket.allow(start));
        assert!(
            bucket.allow(start + Duration::from_millis(100)),
            "one token after 1/rate seconds"
        );
        assert!(!bucket.allow(start + Duration::from_millis(100)));
    }

    #[test]
    fn zero_rate_means_no_limit() {
        assert!(MessageRate::new(0, 5).is_none());
    }
}
