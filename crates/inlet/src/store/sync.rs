//! The scheduled Graph sync's side of the store: one state row per (job,
//! target) — the lease that keeps two workers from running the same sync,
//! the cursor an interrupted run resumes from, the last run's outcome and
//! the next run's time — and the daily ad-insights figures.
//!
//! A lease is taken by one conditional update (free, expired, or already
//! ours), so it holds across processes on Postgres and SQLite alike.

use futures_util::future::BoxFuture;
use serde::Serialize;

use super::StoreError;

/// The state of one sync (job and target).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncState {
    /// `insights`, `conversations`, `leads`.
    pub job: String,
    /// The ad account (`act_…`) or page id.
    pub target: String,
    /// Who holds the lease, while it is held.
    pub lease_owner: Option<String>,
    /// Until when (epoch ms).
    pub lease_until_ms: i64,
    /// Where an interrupted run resumes.
    pub cursor: Option<String>,
    /// Last run's start and end (epoch ms).
    pub last_started_ms: Option<i64>,
    /// End of the last finished run.
    pub last_finished_ms: Option<i64>,
    /// `ok` or `failed`.
    pub last_status: Option<String>,
    /// The last failure.
    pub last_error: Option<String>,
    /// Rows the last run wrote.
    pub last_rows: i64,
    /// Rows written by every run.
    pub rows_total: i64,
    /// Finished runs.
    pub runs: i64,
    /// When the next scheduled run is due (epoch ms).
    pub next_run_ms: i64,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// `None`: success; otherwise the failure.
    pub error: Option<String>,
    /// Rows written.
    pub rows: i64,
    /// When the next scheduled run is due.
    pub next_run_ms: i64,
}

/// One campaign's figures for one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InsightRow {
    /// `act_…`.
    pub account_id: String,
    /// Campaign id.
    pub campaign_id: String,
    /// `YYYY-MM-DD` in the account's time zone.
    pub date: String,
    /// Campaign name.
    pub campaign_name: Option<String>,
    /// Account currency (ISO 4217).
    pub currency: Option<String>,
    /// Spend in micro-units of the currency (exact).
    pub spend_micros: i64,
    /// Impressions.
    pub impressions: i64,
    /// Clicks.
    pub clicks: i64,
}

/// Sync state and ad insights.
pub trait SyncStore: Send + Sync {
    /// Takes the lease of `(job, target)` for `owner` until `until_ms`, if
    /// it is free, expired (at `now_ms`) or already `owner`'s. True when
    /// taken; the run start is recorded.
    fn take_lease<'a>(
        &'a self,
        job: &'a str,
        target: &'a str,
        owner: &'a str,
        now_ms: i64,
        until_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Extends a held lease and keeps the cursor reached so far; false when
    /// the lease is no longer `owner`'s (the run must stop).
    fn renew_lease<'a>(
        &'a self,
        job: &'a str,
        target: &'a str,
        owner: &'a str,
        until_ms: i64,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Records how a run ended and releases the lease; a run that completed
    /// clears the cursor, a failed one keeps it for the next.
    fn finish_run<'a>(
        &'a self,
        job: &'a str,
        target: &'a str,
        owner: &'a str,
        now_ms: i64,
        outcome: &'a RunOutcome,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Every sync's state, by job and target.
    fn sync_states(&self) -> BoxFuture<'_, Result<Vec<SyncState>, StoreError>>;
    /// Upserts insight rows on (account, campaign, date); returns the rows
    /// written.
    fn upsert_insights<'a>(
        &'a self,
        rows: &'a [InsightRow],
        now_ms: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
    /// The rows of an account (every account: `None`) from `since` on.
    fn insights<'a>(
        &'a self,
        account: Option<&'a str>,
        since: &'a str,
    ) -> BoxFuture<'a, Result<Vec<InsightRow>, StoreError>>;
}

/// A decimal amount (`"5339.5"`, `"12"`, `"0.07"`) in micro-units, exactly;
/// `None` for anything else (a sign, an exponent, more than six decimals
/// that are not zeros, an overflow).
pub fn money_micros(text: &str) -> Option<i64> {
    let t = text.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    if !whole.bytes().all(|c| c.is_ascii_digit()) || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let kept = frac.trim_end_matches('0');
    if kept.len() > 6 {
        return None;
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut micros_frac: i64 = 0;
    for (i, d) in kept.bytes().enumerate() {
        micros_frac += i64::from(d - b'0') * 10_i64.pow(5 - i as u32);
    }
    whole.checked_mul(1_000_000)?.checked_add(micros_frac)
}

/// Micro-units as a decimal string without trailing zeros (`5339500000` →
/// `"5339.5"`).
pub fn micros_text(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    let (whole, frac) = (m / 1_000_000, m % 1_000_000);
    if frac == 0 {
        format!("{sign}{whole}")
    } else {
        let f = format!("{frac:06}");
        format!("{sign}{whole}.{}", f.trim_end_matches('0'))
    }
}
