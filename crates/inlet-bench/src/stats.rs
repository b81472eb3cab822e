//! Latency recording (HDR histograms in microseconds), error counts and the
//! summaries every subcommand prints, as text or as one JSON object.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Highest latency the histograms hold (longer ones are clamped): 10 minutes.
const MAX_MICROS: u64 = 600_000_000;

/// Latencies and outcomes of one task; merged across tasks at the end.
#[derive(Clone)]
pub struct Recorder {
    hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, MAX_MICROS, 3)
                .expect("static histogram bounds are valid"),
            errors: BTreeMap::new(),
        }
    }
}

impl Recorder {
    /// A successful request that took `latency`.
    pub fn ok(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.hist.saturating_record(micros.max(1));
    }

    /// A failed request, keyed by HTTP status code or transport error kind.
    pub fn error(&mut self, key: impl Into<String>) {
        *self.errors.entry(key.into()).or_default() += 1;
    }

    /// Adds another task's figures.
    pub fn merge(&mut self, other: &Recorder) {
        self.hist
            .add(&other.hist)
            .expect("histograms share their bounds");
        for (k, n) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += n;
        }
    }

    /// Successful requests recorded.
    pub fn ok_count(&self) -> u64 {
        self.hist.len()
    }

    /// Failed requests recorded.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Percentiles in milliseconds.
    pub fn latency(&self) -> Latency {
        let q = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: self.hist.max() as f64 / 1000.0,
            mean: self.hist.mean() / 1000.0,
        }
    }

    /// Error counts as a JSON object (`{"503": 12, "timeout": 1}`).
    pub fn errors_json(&self) -> Value {
        json!(self.errors)
    }

    /// Error counts as text (`503 ×12, timeout ×1`), or `none`.
    pub fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            return "none".into();
        }
        self.errors
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// `{"p50": …, "p90": …, "p99": …, "p999": …, "max": …, "mean": …}`.
    pub fn to_json(self) -> Value {
        json!({
            "p50": round3(self.p50),
            "p90": round3(self.p90),
            "p99": round3(self.p99),
            "p999": round3(self.p999),
            "max": round3(self.max),
            "mean": round3(self.mean),
        })
    }

    /// One text line.
    pub fn to_text(self) -> String {
        format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3}) ms",
            self.p50, self.p90, self.p99, self.p999, self.max, self.mean
        )
    }
}

/// Rounds to three decimals for readable JSON.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_counts_and_errors() {
        let mut a = Recorder::default();
        a.ok(Duration::from_millis(2));
        a.error("503");
        let mut b = Recorder::default();
        b.ok(Duration::from_millis(4));
        b.error("503");
        b.error("timeout");
        a.merge(&b);
        assert_eq!(a.ok_count(), 2);
        assert_eq!(a.error_count(), 3);
        assert_eq!(a.errors_text(), "503 ×2, timeout ×1");
        assert_eq!(a.errors_json(), json!({"503": 2, "timeout": 1}));
        let l = a.latency();
        assert!(l.p50 <= l.p99 && l.p99 <= l.max);
    }
}
