//! One upstream's circuit breaker: closed → open when the share of failed calls over a
//! sliding window passes `failure_ratio` (with at least `min_calls` in it) → half-open after
//! `cooldown`, where `half_open_calls` trial calls decide → closed, or open again.
//!
//! While open no call is made: [`Breaker::admit`] refuses at once with how long to wait, so a
//! client is answered "try later" instead of waiting on a backend that is known to fail.
//! For `cooldown` after closing, calls are admitted at `recovery_rate` per second, so the
//! clients that were refused meanwhile do not all land on a backend that just came back.
//! Each transition sets the state gauge, counts in the transitions counter, and is logged
//! once with the upstream and the reason.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGauge};

use crate::config::BreakerConfig;

/// Buckets of the sliding window.
const BUCKETS: usize = 10;

/// The state of a breaker, as the gauge shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// A few trial calls go through.
    HalfOpen,
    /// No call goes through.
    Open,
}

impl BreakerState {
    /// The gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }

    /// The `to` label of the transitions counter.
    pub fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

/// What [`Breaker::admit`] granted: a call counted in the window, or one of the trials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// A call while closed.
    Normal,
    /// A trial call while half-open.
    Trial,
}

/// Calls and failures of one slice of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slice (time since the window's start / slice width) it holds.
    slice: u64,
    calls: u32,
    failures: u32,
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { started: u32, succeeded: u32 },
}

struct Inner {
    phase: Phase,
    buckets: [Bucket; BUCKETS],
    /// Until when the recovery rate applies, and its token bucket.
    recovering_until: Option<Instant>,
    tokens: f64,
    refilled: Instant,
}

/// One upstream's breaker.
pub struct Breaker {
    upstream: Box<str>,
    config: BreakerConfig,
    origin: Instant,
    slice: Duration,
    inner: Mutex<Inner>,
    state_gauge: IntGauge,
    transitions: IntCounterVec,
}

impl Breaker {
    /// A closed breaker for `upstream`.
    pub fn new(
        upstream: &str,
        config: &BreakerConfig,
        state_gauge: IntGauge,
        transitions: IntCounterVec,
    ) -> Breaker {
        let now = Instant::now();
        state_gauge.set(BreakerState::Closed.gauge());
        Breaker {
            upstream: upstream.into(),
            config: config.clone(),
            origin: now,
            slice: (config.window / BUCKETS as u32).max(Duration::from_millis(1)),
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                buckets: [Bucket::default(); BUCKETS],
                recovering_until: None,
                tokens: 0.0,
                refilled: now,
            }),
            state_gauge,
            transitions,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding this lock leaves consistent counts; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match self.lock().phase {
            Phase::Closed => BreakerState::Closed,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
            Phase::Open { .. } => BreakerState::Open,
        }
    }

    /// Whether a call may be made now; `Err` holds how long to wait before asking again.
    pub fn admit(&self, now: Instant) -> Result<Permit, Duration> {
        let mut inner = self.lock();
        if let Phase::Open { until } = inner.phase {
            if now < until {
                return Err(until - now);
            }
            inner.phase = Phase::HalfOpen {
                started: 0,
                succeeded: 0,
            };
            self.entered(BreakerState::HalfOpen, "cooldown over: trial calls");
        }
        if let Phase::HalfOpen { started, .. } = &mut inner.phase {
            if *started < self.config.half_open_calls {
                *started += 1;
                return Ok(Permit::Trial);
            }
            // The trials are under way; the others wait for their verdict.
            return Err(Duration::from_secs(1));
        }
        if let Some(until) = inner.recovering_until {
            if now >= until || self.config.recovery_rate == 0 {
                inner.recovering_until = None;
            } else {
                let rate = f64::from(self.config.recovery_rate);
                let elapsed = now.saturating_duration_since(inner.refilled).as_secs_f64();
                inner.tokens = (inner.tokens + elapsed * rate).min(rate);
                inner.refilled = now;
                if inner.tokens < 1.0 {
                    return Err(Duration::from_secs(1));
                }
                inner.tokens -= 1.0;
            }
        }
        Ok(Permit::Normal)
    }

    /// Records how an admitted call ended (`failed`: an error, a timeout, a bad reply).
    pub fn record(&self, permit: Permit, failed: bool, now: Instant) {
        let mut inner = self.lock();
        match permit {
            Permit::Trial => {
                let Phase::HalfOpen { succeeded, .. } = &mut inner.phase else {
                    return;
                };
                if failed {
                    inner.phase = Phase::Open {
                        until: now + self.config.cooldown,
                    };
                    self.entered(BreakerState::Open, "a trial call failed");
                    return;
                }
                *succeeded += 1;
                if *succeeded >= self.config.half_open_calls {
                    inner.phase = Phase::Closed;
                    inner.buckets = [Bucket::default(); BUCKETS];
                    inner.recovering_until = Some(now + self.config.cooldown);
                    inner.tokens = 0.0;
                    inner.refilled = now;
                    self.entered(BreakerState::Closed, "every trial call succeeded");
                }
            }
            Permit::Normal => {
                if !matches!(inner.phase, Phase::Closed) {
                    // A call admitted before the breaker opened: its outcome is old news.
                    return;
                }
                let slice = now.saturating_duration_since(self.origin).as_nanos()
                    / self.slice.as_nanos().max(1);
                let slice = u64::try_from(slice).unwrap_or(u64::MAX);
                let bucket = &mut inner.buckets[(slice % BUCKETS as u64) as usize];
                if bucket.slice != slice {
                    *bucket = Bucket {
                        slice,
                        calls: 0,
                        failures: 0,
                    };
                }
                bucket.calls += 1;
                bucket.failures += u32::from(failed);
                if !failed {
                    return;
                }
                let oldest = slice.saturating_sub(BUCKETS as u64 - 1);
                let (calls, failures) = inner
                    .buckets
                    .iter()
                    .filter(|b| b.slice >= oldest && b.slice <= slice)
                    .fold((0u32, 0u32), |(c, f), b| (c + b.calls, f + b.failures));
                if calls >= self.config.min_calls
                    && f64::from(failures) >= self.config.failure_ratio * f64::from(calls)
                {
                    inner.phase = Phase::Open {
                        until: now + self.config.cooldown,
                    };
                    let reason = format!(
                        "{failures} of {calls} calls failed within {}",
                        humantime::format_duration(self.config.window)
                    );
                    self.entered(BreakerState::Open, &reason);
                }
            }
        }
    }

    /// Gauge, counter and one log line for a transition.
    fn entered(&self, to: BreakerState, reason: &str) {
        self.state_gauge.set(to.gauge());
        self.transitions
            .with_label_values(&[self.upstream.as_ref(), to.label()])
            .inc();
        match to {
            BreakerState::Open => {
                tracing::warn!(event = "hook_breaker", upstream = %self.upstream, to = to.label(), reason, cooldown_ms = self.config.cooldown.as_millis() as u64, "hook upstream circuit breaker opened: calls refused until the cooldown is over");
            }
            BreakerState::HalfOpen | BreakerState::Closed => {
                tracing::info!(event = "hook_breaker", upstream = %self.upstream, to = to.label(), reason, "hook upstream circuit breaker changed state");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(config: BreakerConfig) -> Breaker {
        let metrics = crate::metrics::Metrics::new();
        Breaker::new(
            "http://up:1",
            &config,
            metrics
                .hooks
                .breaker_state
                .with_label_values(&["http://up:1"]),
            metrics.hooks.breaker_transitions.clone(),
        )
    }

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_calls: 4,
            failure_ratio: 0.5,
            cooldown: Duration::from_secs(5),
            half_open_calls: 2,
            recovery_rate: 0,
        }
    }

    #[test]
    fn opens_at_the_ratio_then_half_opens_and_closes() {
        let b = breaker(config());
        let t = Instant::now();
        for failed in [false, true, false] {
            let permit = b.admit(t).unwrap();
            b.record(permit, failed, t);
        }
        assert_eq!(b.state(), BreakerState::Closed, "3 calls < min_calls");
        let permit = b.admit(t).unwrap();
        b.record(permit, true, t);
        assert_eq!(b.state(), BreakerState::Open, "2 of 4 failed");
        assert!(b.admit(t + Duration::from_secs(4)).is_err());
        let later = t + Duration::from_secs(5);
        let trial = b.admit(later).unwrap();
        assert_eq!(trial, Permit::Trial);
        let second = b.admit(later).unwrap();
        assert!(b.admit(later).is_err(), "only half_open_calls trials");
        b.record(trial, false, later);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(second, false, later);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(later).unwrap(), Permit::Normal);
    }

    /// Four failed calls at `t`: enough to open the breaker of `config()`.
    fn fail_four(b: &Breaker, t: Instant) {
        for _ in 0..4 {
            let permit = b.admit(t).unwrap();
            b.record(permit, true, t);
        }
    }

    #[test]
    fn a_failed_trial_opens_again_and_old_failures_slide_out() {
        let b = breaker(config());
        let t = Instant::now();
        fail_four(&b, t);
        let later = t + Duration::from_secs(5);
        let trial = b.admit(later).unwrap();
        b.record(trial, true, later);
        assert_eq!(b.state(), BreakerState::Open);

        let b = breaker(config());
        for _ in 0..3 {
            let permit = b.admit(t).unwrap();
            b.record(permit, true, t);
        }
        // Eleven seconds on, those three are out of the window: one more failure among
        // fresh successes does not open it.
        let t2 = t + Duration::from_secs(11);
        for failed in [false, false, false, true] {
            let permit = b.admit(t2).unwrap();
            b.record(permit, failed, t2);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn recovery_rate_limits_calls_after_closing() {
        let b = breaker(BreakerConfig {
            recovery_rate: 2,
            half_open_calls: 1,
            ..config()
        });
        let t = Instant::now();
        fail_four(&b, t);
        let later = t + Duration::from_secs(5);
        let trial = b.admit(later).unwrap();
        b.record(trial, false, later);
        assert_eq!(b.state(), BreakerState::Closed);
        let one_second = later + Duration::from_secs(1);
        assert!(b.admit(one_second).is_ok());
        assert!(b.admit(one_second).is_ok());
        assert!(
            b.admit(one_second).is_err(),
            "2 per second while recovering"
        );
        assert!(b.admit(later + Duration::from_secs(6)).is_ok());
    }
}
