//! `inlet-bench load`: signed webhook POSTs against one URL.
//!
//! - **Closed loop** (no `--rate`): each of the N connections sends its next
//!   request as soon as the previous answer arrives. This finds the maximum
//!   throughput; latency is timed from the actual send.
//! - **Open loop** (`--rate R`): request `i` is scheduled at `t0 + i/R`,
//!   whatever the server does. The next free connection takes the next slot;
//!   when every connection is busy, slots fall behind and their latency is
//!   timed from the *scheduled* instant, so waiting caused by a slow server is
//!   charged to it (no coordinated omission). A connection that was idle and
//!   asleep until its slot is timed from its actual wake-up instead, so the
//!   ~1 ms granularity of the timer is not charged to the server.
//!
//! An open-loop run stops sending 1 s after its time is up, even if slots are
//! still waiting (reported as `missed`: scheduled but never sent), so an
//! overloaded server cannot make the run last longer than `--warmup` +
//! `--duration` + 1 s + one request timeout. The second of grace lets the
//! last slots of a healthy run go out when their connection frees up just
//! after the end.
//!
//! Requests that start during `--warmup` are sent but not recorded. The
//! throughput is wall-clock: successful answers arriving within the measured
//! window divided by `--duration`. Each
//! connection makes its own bodies (fixture with a fresh message id,
//! serialized and signed: a few µs), so nothing is pre-generated.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use crate::body::BodyFactory;
use crate::http::{self, Outcome};
use crate::stats::{round3, Recorder};

/// How long after the end an open-loop run still sends late slots.
const LATE_SEND_GRACE: Duration = Duration::from_secs(1);

/// What to run.
pub struct LoadConfig {
    pub url: Url,
    pub factory: BodyFactory,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Requests per second for an open-loop run; `None` = closed loop.
    pub rate: Option<f64>,
    pub timeout: Duration,
}

/// What a run measured.
pub struct LoadReport {
    pub recorder: Recorder,
    /// Successful answers that arrived within the measured window.
    pub ok_in_window: u64,
    /// The measured window (`--duration`).
    pub window: Duration,
    /// From the end of the warmup to the last recorded answer.
    pub elapsed: Duration,
    /// Open loop: slots of the measured window never sent because every
    /// connection was still busy 1 s after the end (server too slow).
    pub missed: Option<u64>,
}

impl LoadReport {
    /// Successful answers per second of wall-clock time: those that arrived
    /// within the measured window, divided by its length.
    pub fn rps(&self) -> f64 {
        self.ok_in_window as f64 / self.window.as_secs_f64().max(1e-9)
    }
}

/// Runs the load and returns the merged figures of every connection.
pub async fn run(cfg: &LoadConfig) -> anyhow::Result<LoadReport> {
    let next = Arc::new(AtomicU64::new(0));
    // A short head start so every task is spawned before the clock starts.
    let t0 = Instant::now() + Duration::from_millis(50);
    let measure_from = t0 + cfg.warmup;
    let end = measure_from + cfg.duration;
    let interval = cfg.rate.map(|r| Duration::from_secs_f64(1.0 / r));

    let mut tasks = JoinSet::new();
    for _ in 0..cfg.connections.max(1) {
        let client = http::client(cfg.timeout, 1)?;
        let url = cfg.url.clone();
        let mut factory = cfg.factory.clone();
        let next = Arc::clone(&next);
        tasks.spawn(async move {
            let mut rec = Recorder::default();
            let mut ok_in_window = 0u64;
            let mut last_done = measure_from;
            sleep_until(t0).await;
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                let (start, outcome) = match interval {
                    None => {
                        let body = factory.next(seq);
                        let start = Instant::now();
                        if start >= end {
                            break;
                        }
                        (start, http::post(&client, &url, body).await)
                    }
                    Some(interval) => {
                        let scheduled = t0 + interval.mul_f64(seq as f64);
                        if scheduled >= end || Instant::now() >= end + LATE_SEND_GRACE {
                            break;
                        }
                        let body = factory.next(seq);
                        let start = if Instant::now() < scheduled {
                            sleep_until(scheduled).await;
                            Instant::now()
                        } else {
                            scheduled
                        };
                        (start, http::post(&client, &url, body).await)
                    }
                };
                let done = Instant::now();
                if matches!(outcome, Outcome::Ok) && done >= measure_from && done < end {
                    ok_in_window += 1;
                }
                if start < measure_from {
                    continue;
                }
                match outcome {
                    Outcome::Ok => rec.ok(done - start),
                    Outcome::Failed(kind) => rec.error(kind),
                }
                last_done = last_done.max(done);
            }
            (rec, ok_in_window, last_done)
        });
    }

    let mut recorder = Recorder::default();
    let mut ok_in_window = 0;
    let mut last_done = measure_from;
    while let Some(joined) = tasks.join_next().await {
        let (rec, ok, done) = joined?;
        recorder.merge(&rec);
        ok_in_window += ok;
        last_done = last_done.max(done);
    }
    let missed = cfg.rate.map(|rate| {
        let slots = |d: Duration| (d.as_secs_f64() * rate).ceil() as u64;
        let scheduled = slots(cfg.warmup + cfg.duration) - slots(cfg.warmup);
        scheduled.saturating_sub(recorder.ok_count() + recorder.error_count())
    });
    Ok(LoadReport {
        recorder,
        ok_in_window,
        window: cfg.duration,
        elapsed: last_done.saturating_duration_since(measure_from),
        missed,
    })
}

/// The report as one JSON object (read by `bench/compare.sh`).
pub fn to_json(cfg: &LoadConfig, report: &LoadReport) -> Value {
    json!({
        "mode": if cfg.rate.is_some() { "open" } else { "closed" },
        "url": cfg.url.as_str(),
        "connections": cfg.connections,
        "duration_s": cfg.duration.as_secs_f64(),
        "warmup_s": cfg.warmup.as_secs_f64(),
        "target_rate": cfg.rate,
        "ok": report.recorder.ok_count(),
        "failed": report.recorder.error_count(),
        "missed": report.missed.unwrap_or(0),
        "elapsed_s": round3(report.elapsed.as_secs_f64()),
        "rps": round3(report.rps()),
        "latency_ms": report.recorder.latency().to_json(),
        "errors": report.recorder.errors_json(),
    })
}

/// The report as text.
pub fn to_text(cfg: &LoadConfig, report: &LoadReport) -> String {
    let mode = match cfg.rate {
        None => "closed loop".to_string(),
        Some(r) => format!("open loop at {r:.0} req/s"),
    };
    let missed = match report.missed {
        Some(n) if n > 0 => format!(", {n} scheduled but never sent (all connections busy)"),
        _ => String::new(),
    };
    let rec = &report.recorder;
    format!(
        "inlet-bench load → {url}\n\
         \x20 mode        {mode}, {conns} connections, {dur:.1} s measured after {warm:.1} s warmup\n\
         \x20 requests    {ok} ok, {failed} failed{missed}\n\
         \x20 throughput  {rps:.1} req/s\n\
         \x20 latency     {lat}\n\
         \x20 errors      {errors}",
        url = cfg.url,
        conns = cfg.connections,
        dur = cfg.duration.as_secs_f64(),
        warm = cfg.warmup.as_secs_f64(),
        ok = rec.ok_count(),
        failed = rec.error_count(),
        rps = report.rps(),
        lat = rec.latency().to_text(),
        errors = rec.errors_text(),
    )
}
