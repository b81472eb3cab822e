//! Meta's usage headers and the pacing they call for (pure: no I/O, time
//! passed in).
//!
//! Every Graph answer may carry how much of a rate budget is used, in
//! percent of the limit (<https://developers.facebook.com/docs/graph-api/overview/rate-limiting/>):
//!
//! - `X-App-Usage`: `{"call_count", "total_cputime", "total_time"}`;
//! - `X-Business-Use-Case-Usage`: `{"<business id>": [{"type", "call_count",
//!   "total_cputime", "total_time", "estimated_time_to_regain_access"}]}`,
//!   the last one in minutes;
//! - `X-Ad-Account-Usage`: `{"acc_id_util_pct", "reset_time_duration"}`;
//! - the older `x-fb-ads-insights-throttle`: `{"app_id_util_pct",
//!   "acc_id_util_pct"}`.
//!
//! Any figure reaching 100 throttles (the answer is then HTTP 400 with code
//! 4, 17, 32, 613 or 80000–80014, and no `Retry-After`). [`UsageGate`] slows
//! the calls down as the highest figure passes `slow_at_pct`, stops them
//! until the announced time when a budget is spent, and an answer without
//! usage headers leaves it as it was (absence is not headroom).

use std::time::{Duration, Instant};

use serde_json::Value;

/// The usage one answer reported.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    /// The highest percentage of any budget the headers name.
    pub max_pct: f64,
    /// The longest "minutes until access returns" (0 when none).
    pub regain_minutes: u64,
}

/// The headers [`Usage::from_headers`] reads, lower case.
pub const HEADERS: [&str; 4] = [
    "x-app-usage",
    "x-business-use-case-usage",
    "x-ad-account-usage",
    "x-fb-ads-insights-throttle",
];

impl Usage {
    /// The usage of an answer, from a header lookup (`None` when the answer
    /// carried no usage header that could be read).
    pub fn from_headers<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<Usage> {
        let mut found = false;
        let mut usage = Usage::default();
        for name in HEADERS {
            let Some(v) = header(name).and_then(|s| serde_json::from_str::<Value>(s).ok()) else {
                continue;
            };
            found = true;
            let objects: Vec<&Value> = match (&v, name) {
                // Keyed by business id, each a list of use cases.
                (Value::Object(map), "x-business-use-case-usage") => map
                    .values()
                    .flat_map(|cases| cases.as_array().into_iter().flatten())
                    .collect(),
                (Value::Array(list), _) => list.iter().collect(),
                _ => vec![&v],
            };
            for o in objects {
                for key in [
                    "call_count",
                    "total_cputime",
                    "total_time",
                    "acc_id_util_pct",
                    "app_id_util_pct",
                ] {
                    if let Some(p) = number(o.get(key)) {
                        usage.max_pct = usage.max_pct.max(p);
                    }
                }
                if let Some(m) = number(o.get("estimated_time_to_regain_access")) {
                    usage.regain_minutes = usage.regain_minutes.max(m.max(0.0).ceil() as u64);
                }
            }
        }
        found.then_some(usage)
    }

    /// Whether a budget is spent.
    pub fn exhausted(&self) -> bool {
        self.max_pct >= 100.0 || self.regain_minutes > 0
    }
}

/// A number or a numeric string.
fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// How calls slow down with usage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacing {
    /// Usage (percent) from which calls are spaced out.
    pub slow_at_pct: f64,
    /// The pause between calls just below 100 %, and after a throttle that
    /// names no time.
    pub max_delay: Duration,
}

/// The pacing state shared by every call of one client.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageGate {
    pacing: Pacing,
    /// No call before this (a spent budget, a throttle).
    resume_at: Option<Instant>,
    /// Space between calls while usage is high.
    spacing: Duration,
    /// The last usage seen.
    last: Option<Usage>,
}

impl UsageGate {
    /// A gate with nothing used yet.
    pub fn new(pacing: Pacing) -> Self {
        Self {
            pacing,
            resume_at: None,
            spacing: Duration::ZERO,
            last: None,
        }
    }

    /// Takes in the usage of an answer received at `now`.
    pub fn observe(&mut self, usage: Usage, now: Instant) {
        self.last = Some(usage);
        if usage.exhausted() {
            let minutes = Duration::from_secs(usage.regain_minutes * 60);
            self.stop_until(now + minutes.max(self.pacing.max_delay));
            self.spacing = self.pacing.max_delay;
            return;
        }
        let slow = self.pacing.slow_at_pct;
        self.spacing = if usage.max_pct >= slow && slow < 100.0 {
            let share = ((usage.max_pct - slow) / (100.0 - slow)).clamp(0.0, 1.0);
            self.pacing.max_delay.mul_f64(share)
        } else {
            Duration::ZERO
        };
    }

    /// Takes in a throttle error at `now` (`regain`: what the answer said,
    /// if anything).
    pub fn throttled(&mut self, regain: Option<Duration>, now: Instant) {
        self.stop_until(now + regain.unwrap_or(self.pacing.max_delay));
        self.spacing = self.pacing.max_delay;
    }

    fn stop_until(&mut self, at: Instant) {
        self.resume_at = Some(self.resume_at.map_or(at, |r| r.max(at)));
    }

    /// How long the next call must wait at `now` (and forgets a stop that
    /// has passed).
    pub fn wait(&mut self, now: Instant) -> Duration {
        let stopped = match self.resume_at {
            Some(at) if at > now => at - now,
            _ => {
                self.resume_at = None;
                Duration::ZERO
            }
        };
        stopped.max(self.spacing)
    }

    /// The last usage an answer reported.
    pub fn last(&self) -> Option<Usage> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Option<Usage> {
        Usage::from_headers(|name| {
            pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        })
    }

    const PACING: Pacing = Pacing {
        slow_at_pct: 80.0,
        max_delay: Duration::from_secs(60),
    };

    #[test]
    fn app_usage_takes_the_highest_figure() {
        let u = parse(&[(
            "x-app-usage",
            r#"{"call_count":28,"total_time":25,"total_cputime":91}"#,
        )])
        .unwrap();
        assert_eq!(u.max_pct, 91.0);
        assert!(!u.exhausted());
    }

    #[test]
    fn business_use_case_usage_is_keyed_by_business_and_names_minutes() {
        let u = parse(&[(
            "X-Business-Use-Case-Usage",
            r#"{"112130216863063":[{"type":"ads_insights","call_count":12,"total_cputime":4,"total_time":9,"estimated_time_to_regain_access":0,"ads_api_access_tier":"standard_access"}],
                "998877":[{"type":"pages","call_count":100,"total_cputime":1,"total_time":1,"estimated_time_to_regain_access":17}]}"#,
        )])
        .unwrap();
        assert_eq!(u.max_pct, 100.0);
        assert_eq!(u.regain_minutes, 17);
        assert!(u.exhausted());
    }

    #[test]
    fn ad_account_and_insights_throttle_headers() {
        let u = parse(&[
            (
                "x-ad-account-usage",
                r#"{"acc_id_util_pct":"42.5","reset_time_duration":0}"#,
            ),
            (
                "x-fb-ads-insights-throttle",
                r#"{"app_id_util_pct":7,"acc_id_util_pct":61}"#,
            ),
        ])
        .unwrap();
        assert_eq!(u.max_pct, 61.0);
    }

    #[test]
    fn no_usage_header_is_not_zero_usage() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[("x-app-usage", "not json")]), None);
        let mut gate = UsageGate::new(PACING);
        let t = Instant::now();
        gate.observe(
            parse(&[("x-app-usage", r#"{"call_count":95}"#)]).unwrap(),
            t,
        );
        let before = gate.wait(t);
        // An answer without headers changes nothing.
        assert_eq!(gate.wait(t), before);
    }

    #[test]
    fn calls_slow_down_from_the_threshold_and_stop_when_spent() {
        let t = Instant::now();
        let mut gate = UsageGate::new(PACING);
        let usage = |pct: f64| Usage {
            max_pct: pct,
            regain_minutes: 0,
        };
        gate.observe(usage(50.0), t);
        assert_eq!(gate.wait(t), Duration::ZERO);
        gate.observe(usage(80.0), t);
        assert_eq!(gate.wait(t), Duration::ZERO);
        gate.observe(usage(90.0), t);
        assert_eq!(gate.wait(t), Duration::from_secs(30));
        gate.observe(usage(95.0), t);
        assert_eq!(gate.wait(t), Duration::from_secs(45));
        // Spent, with minutes named: no call before then.
        gate.observe(
            Usage {
                max_pct: 100.0,
                regain_minutes: 3,
            },
            t,
        );
        assert_eq!(gate.wait(t), Duration::from_secs(180));
        assert_eq!(
            gate.wait(t + Duration::from_secs(100)),
            Duration::from_secs(80)
        );
        // Usage falls again: the stop has passed, the spacing follows.
        let later = t + Duration::from_secs(200);
        gate.observe(usage(10.0), later);
        assert_eq!(gate.wait(later), Duration::ZERO);
    }

    #[test]
    fn a_throttle_without_a_time_waits_the_longest_delay() {
        let t = Instant::now();
        let mut gate = UsageGate::new(PACING);
        gate.throttled(None, t);
        assert_eq!(gate.wait(t), Duration::from_secs(60));
        gate.throttled(Some(Duration::from_secs(600)), t);
        assert_eq!(gate.wait(t), Duration::from_secs(600));
        // A shorter stop never shortens a longer one.
        gate.throttled(Some(Duration::from_secs(5)), t);
        assert_eq!(gate.wait(t), Duration::from_secs(600));
    }
}
