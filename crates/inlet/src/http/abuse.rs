//! The budget of failed webhook signatures per client address: a token
//! bucket per address, in process memory, bounded in the number of
//! addresses it remembers.
//!
//! Only failures spend the budget, so an address that signs correctly is
//! never slowed down, and an address that exhausted it (someone probing
//! secrets, or a sender with a wrong one) gets 429 on every delivery until
//! the budget refills — which Meta would retry, so nothing is lost even if
//! the limited address is Meta's. Other addresses are unaffected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whether a delivery from an address may proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the budget.
    Allowed,
    /// Over the budget: answer 429.
    Refused {
        /// When the budget has room for one more failure again.
        retry_after: Duration,
        /// The first refusal since the address was last allowed (worth one
        /// audit line; the ones after it only count).
        first: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures still allowed (fractional while refilling).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
    /// Refused since it was last allowed.
    refusing: bool,
}

/// Failed-signature budgets keyed by client address.
#[derive(Debug)]
pub struct FailureLimiter {
    /// Failures per minute (the bucket size and its refill rate).
    per_minute: f64,
    /// Most addresses remembered.
    max_addresses: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl FailureLimiter {
    /// A limiter allowing `per_minute` failures per address per minute,
    /// remembering at most `max_addresses` addresses; `None` when
    /// `per_minute` is 0 (no limit).
    pub fn new(per_minute: u32, max_addresses: usize) -> Option<Self> {
        (per_minute > 0).then(|| Self {
            per_minute: f64::from(per_minute),
            max_addresses: max_addresses.max(1),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `ip` may deliver now.
    pub fn check(&self, ip: IpAddr) -> Verdict {
        self.check_at(ip, Instant::now())
    }

    /// Spends one failure of `ip`'s budget.
    pub fn failed(&self, ip: IpAddr) {
        self.failed_at(ip, Instant::now());
    }

    /// Addresses currently remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Bucket>> {
        // A panic while holding the lock leaves consistent buckets behind.
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_minute / 60.0).min(self.per_minute);
        bucket.updated = now;
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Verdict {
        let mut buckets = self.lock();
        let Some(bucket) = buckets.get_mut(&ip) else {
            return Verdict::Allowed;
        };
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.refusing = false;
            return Verdict::Allowed;
        }
        let first = !bucket.refusing;
        bucket.refusing = true;
        let missing = 1.0 - bucket.tokens;
        Verdict::Refused {
            retry_after: Duration::from_secs_f64(missing * 60.0 / self.per_minute),
            first,
        }
    }

    fn failed_at(&self, ip: IpAddr, now: Instant) {
        let mut buckets = self.lock();
        if !buckets.contains_key(&ip) && buckets.len() >= self.max_addresses {
            self.make_room(&mut buckets, now);
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: self.per_minute,
            updated: now,
            refusing: false,
        });
        self.refill(bucket, now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }

    /// Forgets every address whose budget refilled (it would start full
    /// anyway) and, if that freed nothing, the one with the most budget
    /// left: the nearest to being forgotten, the farthest from refused.
    fn make_room(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        buckets.retain(|_, b| {
            self.refill(b, now);
            b.tokens < self.per_minute
        });
        if buckets.len() >= self.max_addresses {
            let fullest = buckets
                .iter()
                .max_by(|a, b| a.1.tokens.total_cmp(&b.1.tokens))
                .map(|(ip, _)| *ip);
            if let Some(ip) = fullest {
                buckets.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn zero_means_no_limiter() {
        assert!(FailureLimiter::new(0, 10).is_none());
    }

    #[test]
    fn an_address_is_refused_after_its_budget_and_others_are_not() {
        let l = FailureLimiter::new(3, 100).unwrap();
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check_at(ip(1), t), Verdict::Allowed);
            l.failed_at(ip(1), t);
        }
        let Verdict::Refused { retry_after, first } = l.check_at(ip(1), t) else {
            panic!("the fourth delivery is refused");
        };
        assert!(first);
        assert_eq!(retry_after, Duration::from_secs(20));
        assert!(matches!(
            l.check_at(ip(1), t),
            Verdict::Refused { first: false, .. }
        ));
        assert_eq!(l.check_at(ip(2), t), Verdict::Allowed);
    }

    #[test]
    fn the_budget_refills_over_the_minute() {
        let l = FailureLimiter::new(6, 100).unwrap();
        let t = Instant::now();
        for _ in 0..6 {
            l.failed_at(ip(1), t);
        }
        assert!(matches!(l.check_at(ip(1), t), Verdict::Refused { .. }));
        // One failure's worth comes back every 10 s.
        assert_eq!(
            l.check_at(ip(1), t + Duration::from_secs(10)),
            Verdict::Allowed
        );
        l.failed_at(ip(1), t + Duration::from_secs(10));
        assert!(matches!(
            l.check_at(ip(1), t + Duration::from_secs(11)),
            Verdict::Refused { first: true, .. }
        ));
    }

    #[test]
    fn memory_is_bounded_and_the_refused_are_kept_longest() {
        let l = FailureLimiter::new(2, 4).unwrap();
        let t = Instant::now();
        // Address 1 is over its budget; 2..=200 fail once each.
        l.failed_at(ip(1), t);
        l.failed_at(ip(1), t);
        for n in 2..=200 {
            l.failed_at(ip(n), t);
            assert!(l.len() <= 4);
        }
        assert!(matches!(l.check_at(ip(1), t), Verdict::Refused { .. }));
        // Refilled budgets are forgotten first.
        let later = t + Duration::from_secs(120);
        l.failed_at(ip(250), later);
        assert_eq!(l.len(), 1);
    }
}
