//! Rate arithmetic of the sender, shared by the in-process limiter and the
//! Redis one (`sender::limiter`, whose Lua script is the same arithmetic,
//! line for line, so N workers together never exceed the rate; a test in
//! `tests/outbound.rs` checks that both answer a long sequence alike).
//!
//! - [`Bucket`]: a token bucket per sending number / page (`rate` tokens per
//!   second, at most `burst` stored): in any window of `t` seconds at most
//!   `burst + rate·t` sends leave, so in any one second at most
//!   `rate + burst`.
//! - [`Pacer`]: one message per `interval` to the same recipient, with a
//!   small burst (GCRA: a theoretical arrival time that advances by
//!   `interval` per message and may run `(burst − 1)·interval` ahead of now).
//!   Meta's pair limit is one message per 6 s with bursts borrowed from the
//!   future (Cloud API overview, via dualhook).
//! - [`Slowdown`]: a throttle answer (130429, 80007, …) pauses the sender
//!   briefly, halves its rate and lets it recover linearly.
//!
//! Times are milliseconds on one clock (Redis `TIME` for the shared limiter).

use serde::{Deserialize, Serialize};

/// Rates of one sender.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Sends per second per sender.
    pub rate: f64,
    /// Largest burst (bucket capacity).
    pub burst: f64,
    /// Media sends per second per sender (its own, lower bucket).
    pub media_rate: f64,
    /// Media burst.
    pub media_burst: f64,
    /// Least time between two sends to the same recipient (ms).
    pub pair_interval_ms: i64,
    /// Sends to one recipient that may leave back to back.
    pub pair_burst: i64,
    /// How long a throttle answer pauses the sender (ms).
    pub throttle_pause_ms: i64,
    /// How long the rate takes to recover from a halving (ms).
    pub recovery_ms: i64,
    /// The rate never drops below this fraction.
    pub min_factor: f64,
}

/// A token bucket's stored state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Tokens at `at_ms`.
    pub tokens: f64,
    /// When `tokens` was computed.
    pub at_ms: i64,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn full(burst: f64, now: i64) -> Self {
        Self {
            tokens: burst,
            at_ms: now,
        }
    }

    /// Tokens available at `now` refilling at `rate` per second.
    pub fn available(&self, now: i64, rate: f64, burst: f64) -> f64 {
        let elapsed = (now - self.at_ms).max(0) as f64;
        (self.tokens + elapsed * rate / 1000.0).min(burst)
    }

    /// Milliseconds until one token is available (0 when one is).
    pub fn wait_ms(&self, now: i64, rate: f64, burst: f64) -> i64 {
        let have = self.available(now, rate, burst);
        if have >= 1.0 {
            0
        } else if rate <= 0.0 {
            i64::MAX
        } else {
            ((1.0 - have) * 1000.0 / rate).ceil() as i64
        }
    }

    /// The bucket after taking one token at `now` (call only when
    /// [`wait_ms`](Self::wait_ms) is 0).
    pub fn take(&self, now: i64, rate: f64, burst: f64) -> Bucket {
        Bucket {
            tokens: self.available(now, rate, burst) - 1.0,
            at_ms: now.max(self.at_ms),
        }
    }
}

/// A per-recipient pacer (GCRA), stored as its theoretical arrival time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pacer {
    /// Theoretical arrival time of the next message (ms).
    pub tat_ms: i64,
}

impl Pacer {
    /// Milliseconds until the next message may leave (0 = now).
    pub fn wait_ms(&self, now: i64, interval: i64, burst: i64) -> i64 {
        let tau = interval * (burst.max(1) - 1);
        let tat = self.tat_ms.max(now);
        (tat - tau - now).max(0)
    }

    /// The pacer after one message at `now`.
    pub fn take(&self, now: i64, interval: i64) -> Pacer {
        Pacer {
            tat_ms: self.tat_ms.max(now) + interval,
        }
    }

    /// After a pair-throttle answer: the next message waits `backoff_ms`.
    pub fn push_back(&self, now: i64, backoff_ms: i64) -> Pacer {
        Pacer {
            tat_ms: self.tat_ms.max(now + backoff_ms),
        }
    }
}

/// A sender's throttle state: a pause and a reduced rate factor that
/// recovers linearly.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Slowdown {
    /// Rate factor right after the last throttle.
    pub factor: f64,
    /// When the last throttle happened.
    pub since_ms: i64,
    /// Nothing leaves before this time.
    pub paused_until_ms: i64,
}

impl Slowdown {
    /// No slowdown.
    pub const NONE: Slowdown = Slowdown {
        factor: 1.0,
        since_ms: 0,
        paused_until_ms: 0,
    };

    /// The rate factor at `now` (1 = full rate).
    pub fn factor_at(&self, now: i64, recovery_ms: i64) -> f64 {
        if self.factor >= 1.0 || recovery_ms <= 0 {
            return 1.0;
        }
        let elapsed = (now - self.since_ms).max(0) as f64;
        (self.factor + (1.0 - self.factor) * elapsed / recovery_ms as f64).min(1.0)
    }

    /// After a throttle answer at `now`: pause for `pause_ms`, halve the
    /// current factor (not below `min_factor`).
    pub fn throttled(&self, now: i64, pause_ms: i64, limits: &Limits) -> Slowdown {
        Slowdown {
            factor: (self.factor_at(now, limits.recovery_ms) / 2.0).max(limits.min_factor),
            since_ms: now,
            paused_until_ms: self.paused_until_ms.max(now + pause_ms),
        }
    }
}

/// Everything one acquisition reads and writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimiterState {
    /// The sender's bucket.
    pub bucket: Bucket,
    /// The sender's media bucket.
    pub media: Bucket,
    /// The recipient's pacer.
    pub pacer: Pacer,
    /// The sender's throttle state.
    pub slowdown: Slowdown,
}

impl LimiterState {
    /// Fresh state at `now`: full buckets, nothing paced or throttled.
    pub fn fresh(limits: &Limits, now: i64) -> Self {
        Self {
            bucket: Bucket::full(limits.burst, now),
            media: Bucket::full(limits.media_burst, now),
            pacer: Pacer { tat_ms: 0 },
            slowdown: Slowdown::NONE,
        }
    }
}

/// The answer of one acquisition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Send now; the tokens are taken.
    Now,
    /// The sender is paused or out of tokens: try again after this long.
    SenderWait(i64),
    /// The recipient's pacer says wait this long (other recipients may go).
    PairWait(i64),
}

/// One all-or-nothing acquisition: a token of the sender's bucket (and of
/// its media bucket for media), and a pacer slot of the recipient. Nothing
/// is taken unless everything is available.
pub fn acquire(
    state: &LimiterState,
    limits: &Limits,
    media: bool,
    now: i64,
) -> (LimiterState, Grant) {
    let factor = state.slowdown.factor_at(now, limits.recovery_ms);
    let rate = limits.rate * factor;
    let media_rate = limits.media_rate * factor;
    let paused = (state.slowdown.paused_until_ms - now).max(0);
    let mut sender_wait = paused.max(state.bucket.wait_ms(now, rate, limits.burst));
    if media {
        sender_wait = sender_wait.max(state.media.wait_ms(now, media_rate, limits.media_burst));
    }
    if sender_wait > 0 {
        return (*state, Grant::SenderWait(sender_wait));
    }
    let pair_wait = state
        .pacer
        .wait_ms(now, limits.pair_interval_ms, limits.pair_burst);
    if pair_wait > 0 {
        return (*state, Grant::PairWait(pair_wait));
    }
    let mut next = *state;
    next.bucket = state.bucket.take(now, rate, limits.burst);
    if media {
        next.media = state.media.take(now, media_rate, limits.media_burst);
    }
    next.pacer = state.pacer.take(now, limits.pair_interval_ms);
    (next, Grant::Now)
}

/// After a sender throttle at `now`: pause, slow down, and drain the bucket
/// so no stored burst fires the moment the pause ends.
pub fn on_throttle(state: &LimiterState, limits: &Limits, pause_ms: i64, now: i64) -> LimiterState {
    let mut next = *state;
    next.slowdown = state.slowdown.throttled(now, pause_ms, limits);
    next.bucket = Bucket {
        tokens: 0.0,
        at_ms: next.slowdown.paused_until_ms,
    };
    next
}

/// The pair-throttle backoff after the `n`-th consecutive 131056 to one
/// recipient: 4^(n−1) seconds scaled to `base_ms` (1, 4, 16, 64, 256 s at
/// a 1 s base; research notes §1.5), capped at 256 base units.
pub fn pair_backoff_ms(base_ms: i64, n: u32) -> i64 {
    let exp = n.saturating_sub(1).min(4);
    base_ms.saturating_mul(4_i64.pow(exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: f64, burst: f64) -> Limits {
        Limits {
            rate,
            burst,
            media_rate: rate / 4.0,
            media_burst: (burst / 4.0).max(1.0),
            pair_interval_ms: 6000,
            pair_burst: 3,
            throttle_pause_ms: 1000,
            recovery_ms: 30_000,
            min_factor: 0.1,
        }
    }

    /// Drives `acquire` for many distinct recipients as fast as it allows
    /// and returns the grant times.
    fn run(limits: &Limits, until: i64, step: i64) -> Vec<i64> {
        let mut s = LimiterState::fresh(limits, 0);
        let mut out = Vec::new();
        let mut t = 0;
        while t < until {
            s.pacer = Pacer { tat_ms: 0 }; // a new recipient each time
            let (next, g) = acquire(&s, limits, false, t);
            s = next;
            match g {
                Grant::Now => out.push(t),
                _ => t += step,
            }
        }
        out
    }

    #[test]
    fn no_one_second_window_holds_more_than_rate_plus_burst() {
        let l = limits(50.0, 50.0);
        let grants = run(&l, 10_000, 1);
        // Burst up front, then the rate.
        assert!(grants.len() >= 50 + 50 * 9, "{}", grants.len());
        for (i, &start) in grants.iter().enumerate() {
            let in_window = grants[i..]
                .iter()
                .take_while(|&&t| t < start + 1000)
                .count();
            assert!(
                in_window <= 100,
                "{in_window} sends in the second from {start}"
            );
        }
        // Long-run rate is the configured one.
        let last_5s = grants.iter().filter(|&&t| t >= 5000).count();
        assert!((245..=255).contains(&last_5s), "{last_5s}");
    }

    #[test]
    fn the_pacer_spaces_one_recipient_and_allows_a_small_burst() {
        let l = limits(1000.0, 1000.0);
        let mut s = LimiterState::fresh(&l, 0);
        let mut grants = Vec::new();
        let mut t = 0;
        while t <= 30_000 {
            let (next, g) = acquire(&s, &l, false, t);
            s = next;
            match g {
                Grant::Now => grants.push(t),
                Grant::PairWait(w) => t += w,
                Grant::SenderWait(_) => panic!("the sender is idle"),
            }
        }
        assert_eq!(&grants[..3], &[0, 0, 0], "burst of 3");
        assert_eq!(grants[3], 6000);
        assert_eq!(grants[4], 12_000);
    }

    #[test]
    fn a_throttle_pauses_halves_and_recovers() {
        let l = limits(100.0, 100.0);
        let s = LimiterState::fresh(&l, 0);
        let s = on_throttle(&s, &l, 1000, 0);
        assert_eq!(acquire(&s, &l, false, 500).1, Grant::SenderWait(500));
        assert!((s.slowdown.factor_at(0, l.recovery_ms) - 0.5).abs() < 1e-9);
        assert!((s.slowdown.factor_at(15_000, l.recovery_ms) - 0.75).abs() < 1e-9);
        assert_eq!(s.slowdown.factor_at(60_000, l.recovery_ms), 1.0);
        // Tokens were drained: nothing fires at the end of the pause.
        assert!(matches!(
            acquire(&s, &l, false, 1000).1,
            Grant::SenderWait(_)
        ));
        // Repeated throttles never go below the floor.
        let mut s = s;
        for _ in 0..20 {
            s = on_throttle(&s, &l, 1000, 0);
        }
        assert!((s.slowdown.factor - 0.1).abs() < 1e-9);
    }

    #[test]
    fn media_takes_from_both_buckets_and_nothing_on_refusal() {
        let l = limits(100.0, 4.0);
        let mut s = LimiterState::fresh(&l, 0);
        for _ in 0..1 {
            s.pacer = Pacer { tat_ms: 0 };
            let (n, g) = acquire(&s, &l, true, 0);
            assert_eq!(g, Grant::Now);
            s = n;
        }
        s.pacer = Pacer { tat_ms: 0 };
        let (n, g) = acquire(&s, &l, true, 0);
        assert!(matches!(g, Grant::SenderWait(_)), "media burst is 1");
        assert_eq!(n, s, "a refusal takes nothing");
        // Text still goes.
        assert_eq!(acquire(&s, &l, false, 0).1, Grant::Now);
    }

    #[test]
    fn pair_backoff_is_powers_of_four() {
        assert_eq!(
            (1..=6)
                .map(|n| pair_backoff_ms(1000, n))
                .collect::<Vec<_>>(),
            vec![1000, 4000, 16_000, 64_000, 256_000, 256_000]
        );
    }
}
