//! The one retry delay of Inlet: exponential growth, capped, with full
//! jitter, reset on success.
//!
//! Every retry loop (queue reads, store retries, relay, handlers, outgoing
//! calls) takes its delays from a [`Backoff`], so no two loops drift apart
//! and no fleet of workers retries in lock-step after a shared outage (full
//! jitter: each delay is drawn uniformly from `[0, ceiling]`, AWS
//! architecture blog "Exponential Backoff And Jitter").
//!
//! [`Backoff`] is pure arithmetic plus one `sleep` helper; the failure-streak
//! logging that most loops want sits beside it in [`Streak`].

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    factor: f64,
    failures: u32,
    jitter: bool,
}

impl Backoff {
    /// Delays growing from `base` by a factor of 2 per failure, never above
    /// `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            factor: 2.0,
            failures: 0,
            jitter: true,
        }
    }

    /// The backoff of loops that wait on infrastructure (Redis, the
    /// database): 100 ms doubling up to 5 s.
    pub fn infrastructure() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// Another growth factor (values below 1 are taken as 1).
    pub fn with_factor(mut self, factor: f64) -> Self {
        self.factor = if factor.is_finite() {
            factor.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Without jitter: every delay is its ceiling (tests, or schedules that
    /// are already spread out).
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The largest delay after `failures` consecutive failures (1-based:
    /// the first failure waits at most `base`).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exp = i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.base.as_secs_f64() * self.factor.powi(exp);
        if !secs.is_finite() || secs >= self.cap.as_secs_f64() {
            self.cap
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// Records a failure and returns how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ceiling = self.ceiling(self.failures);
        if self.jitter {
            ceiling.mul_f64(fastrand::f64())
        } else {
            ceiling
        }
    }

    /// Consecutive failures since the last [`reset`](Self::reset).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Records a failure and sleeps its delay; returns `false` (at once)
    /// when `shutdown` is cancelled meanwhile.
    pub async fn sleep(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

/// A failure streak: logs the first failure as an error, later ones at
/// debug level, and the recovery once, with a [`Backoff`] for the waits.
#[derive(Debug)]
pub struct Streak {
    /// What is being retried, for the log lines ("reading the stream").
    what: &'static str,
    backoff: Backoff,
    since: Option<Instant>,
}

impl Streak {
    /// A streak over `backoff`, logging as `what`.
    pub fn new(what: &'static str, backoff: Backoff) -> Self {
        Self {
            what,
            backoff,
            since: None,
        }
    }

    /// Logs a failure of `step` and sleeps the next delay; `false` when
    /// `shutdown` was cancelled meanwhile.
    pub async fn failed(
        &mut self,
        step: &str,
        error: &(dyn std::fmt::Display + Sync),
        shutdown: &CancellationToken,
    ) -> bool {
        if self.since.is_none() {
            tracing::error!(error = %error, "{}: {step} failed; backing off", self.what);
            self.since = Some(Instant::now());
        } else {
            tracing::debug!(error = %error, failures = self.backoff.failures(), "{}: {step} still failing", self.what);
        }
        self.backoff.sleep(shutdown).await
    }

    /// Ends the streak (logs the recovery if there was one).
    pub fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(after = ?since.elapsed(), "{} recovered", self.what);
        }
        self.backoff.reset();
    }

    /// Whether the last attempt failed.
    pub fn failing(&self) -> bool {
        self.since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_by_the_factor_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).with_factor(3.0);
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(300));
        assert_eq!(b.ceiling(3), Duration::from_millis(900));
        assert_eq!(b.ceiling(4), Duration::from_secs(1));
        assert_eq!(b.ceiling(400), Duration::from_secs(1));
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5 {
            b.reset();
            for n in 1..=6 {
                let d = b.next_delay();
                assert!(d <= b.ceiling(n), "{d:?} above ceiling {n}");
                seen.insert(d);
            }
        }
        // Full jitter: 30 draws are not all the same value.
        assert!(seen.len() > 10, "delays look fixed: {seen:?}");
    }

    #[test]
    fn reset_starts_over() {
        let mut b =
            Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).without_jitter();
        assert_eq!(b.next_delay(), Duration::from_millis(10));
        assert_eq!(b.next_delay(), Duration::from_millis(20));
        assert_eq!(b.failures(), 2);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next_delay(), Duration::from_millis(10));
    }

    #[test]
    fn odd_factors_are_tamed() {
        let b =
            Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).with_factor(f64::NAN);
        assert_eq!(b.ceiling(5), Duration::from_millis(10));
        let b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).with_factor(1e300);
        assert_eq!(b.ceiling(3), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn sleep_stops_at_shutdown() {
        let mut b =
            Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600)).without_jitter();
        let token = CancellationToken::new();
        token.cancel();
        assert!(!b.sleep(&token).await);
    }
}
