//! `inlet-bench sender`: sender accuracy and overhead against a mock Graph
//! API on loopback.
//!
//! Starts the mock (answers every send 200 with a message id, the shape of
//! `tests/fixtures/meta/outbound/send_ok.json`, and records when each
//! request arrived), starts an `inlet-worker` binary pointed at it with
//! `outbound.rate_per_second = R`, stores a broadcast of N recipients
//! straight into the worker's database, and waits until the mock has seen N
//! requests. Reports the achieved rate (all requests, and over the second half of
//! the run: the steady state, the initial burst long spent), the most requests in any one-second
//! window (the limit is R + burst), and the worker's CPU time per send from
//! `/proc/{pid}/stat`, minus its idle CPU measured for two seconds before.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::State;
use axum::routing::post;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::{sleep, Instant};

use crate::stats::round3;

/// What `inlet-bench sender` runs.
pub struct SenderConfig {
    pub worker_bin: PathBuf,
    pub database_url: String,
    pub redis_url: String,
    pub rate: u32,
    pub count: usize,
    pub timeout: Duration,
}

/// The measurement.
pub struct SenderReport {
    pub requests: usize,
    pub wall: Duration,
    pub achieved: f64,
    pub steady: f64,
    pub max_window: usize,
    pub cpu_us_per_send: f64,
    pub idle_cpu_pct: f64,
}

type Arrivals = Arc<Mutex<Vec<Instant>>>;

async fn mock_send(State(arrivals): State<Arrivals>, body: axum::body::Bytes) -> axum::Json<Value> {
    let n = {
        let mut a = arrivals.lock().expect("arrivals lock");
        a.push(Instant::now());
        a.len()
    };
    let to = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b.get("to").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    axum::Json(json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": to, "wa_id": to}],
        "messages": [{"id": format!("wamid.BENCH{n:012}"), "message_status": "accepted"}]
    }))
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32, ticks: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').context("unreadable /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).context("no utime")?.parse()?;
    let stime: f64 = f.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / ticks)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Most arrivals within any one second.
fn max_window(times: &[Instant]) -> usize {
    let mut best = 0;
    let mut j = 0;
    for i in 0..times.len() {
        while j < times.len() && times[j].duration_since(times[i]) < Duration::from_secs(1) {
            j += 1;
        }
        best = best.max(j - i);
    }
    best
}

/// Runs one measurement.
pub async fn run(cfg: &SenderConfig) -> anyhow::Result<SenderReport> {
    let arrivals: Arrivals = Arc::new(Mutex::new(Vec::with_capacity(cfg.count)));
    let app = axum::Router::new()
        .route("/{version}/{sender}/messages", post(mock_send))
        .with_state(arrivals.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let data_dir = std::env::temp_dir().join(format!("inlet-bench-sender-{}", std::process::id()));
    std::fs::create_dir_all(&data_dir)?;
    let prefix = format!("bench:sender:{}:", uuid::Uuid::now_v7().simple());
    let env: Vec<(String, String)> = [
        ("INLET_REDIS_URL", cfg.redis_url.clone()),
        ("INLET_DATABASE_URL", cfg.database_url.clone()),
        ("INLET_STREAM_PREFIX", prefix),
        ("INLET_APP_SECRET", "bench".into()),
        ("INLET_DATA_DIR", data_dir.to_string_lossy().into_owned()),
        ("INLET_GRAPH__BASE_URL", format!("http://{addr}")),
        ("INLET_GRAPH__ACCESS_TOKEN", "bench-token".into()),
        ("INLET_OUTBOUND__RATE_PER_SECOND", cfg.rate.to_string()),
        ("INLET_OUTBOUND__POLL_MS", "20".into()),
        ("INLET_WORKER__METRICS_LISTEN", "127.0.0.1:0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut child = Command::new(&cfg.worker_bin)
        .envs(env.iter().cloned())
        .env("INLET_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", cfg.worker_bin.display()))?;
    let pid = child.id().context("worker pid")?;
    let mut lines = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("inlet-worker running") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if !ready {
        bail!("inlet-worker did not report running within 60 s");
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let ticks = clock_ticks();
    let idle_start = cpu_seconds(pid, ticks)?;
    sleep(Duration::from_secs(2)).await;
    let idle_per_s = (cpu_seconds(pid, ticks)? - idle_start) / 2.0;

    let settings = inlet::config::Settings::load_from(None, env)?;
    let store = inlet::store::from_settings(&settings).await?;
    let recipients: Vec<String> = (0..cfg.count).map(|i| format!("1999{i:08}")).collect();
    let body = json!({
        "channel": "whatsapp", "from": "106540352242922",
        "template": {"name": "bench", "language": {"code": "en_US"}},
        "recipients": recipients,
    });
    let spec = inlet::outbound::BroadcastSpec::parse(body.to_string().as_bytes())
        .map_err(|e| anyhow::anyhow!("{}", e.detail))?;
    let (broadcast, sends) = inlet::store::outbound::NewBroadcast::plan(
        spec,
        "default",
        &uuid::Uuid::now_v7().to_string(),
    );
    let cpu_start = cpu_seconds(pid, ticks)?;
    let started = Instant::now();
    store
        .outbound()
        .create_broadcast(&broadcast, &sends)
        .await?;
    loop {
        let n = arrivals.lock().expect("arrivals lock").len();
        if n >= cfg.count {
            break;
        }
        if started.elapsed() > cfg.timeout {
            bail!(
                "only {n} of {} sends arrived within {:?}",
                cfg.count,
                cfg.timeout
            );
        }
        sleep(Duration::from_millis(5)).await;
    }
    // Let the worker record the last outcomes before reading its CPU.
    sleep(Duration::from_millis(300)).await;
    let cpu = cpu_seconds(pid, ticks)? - cpu_start;
    let elapsed = started.elapsed().as_secs_f64();
    let _ = child.start_kill();
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&data_dir);

    let times = arrivals.lock().expect("arrivals lock").clone();
    let first = times[0];
    let last = *times.last().expect("at least one arrival");
    let wall = last.duration_since(first);
    // Steady state: the second half of the run, long after the initial
    // bucket (burst) was spent.
    let half = times.len() / 2;
    let steady = (times.len() - 1 - half) as f64 / last.duration_since(times[half]).as_secs_f64();
    let busy = (cpu - idle_per_s * elapsed).max(0.0);
    Ok(SenderReport {
        requests: times.len(),
        wall,
        achieved: (times.len() - 1) as f64 / wall.as_secs_f64(),
        steady,
        max_window: max_window(&times),
        cpu_us_per_send: busy * 1e6 / times.len() as f64,
        idle_cpu_pct: idle_per_s * 100.0,
    })
}

impl SenderReport {
    /// One JSON object.
    pub fn to_json(&self, cfg: &SenderConfig) -> Value {
        json!({
            "rate": cfg.rate,
            "burst": cfg.rate,
            "requests": self.requests,
            "wall_s": round3(self.wall.as_secs_f64()),
            "achieved_per_s": round3(self.achieved),
            "steady_per_s": round3(self.steady),
            "max_in_one_second": self.max_window,
            "cpu_us_per_send": round3(self.cpu_us_per_send),
            "idle_cpu_pct": round3(self.idle_cpu_pct),
        })
    }

    /// Text for a terminal.
    pub fn to_text(&self, cfg: &SenderConfig) -> String {
        format!(
            "inlet-bench sender: {} sends at rate {}/s (burst {})\n\
             \x20 wall          {:.2} s (first to last request)\n\
             \x20 achieved      {:.1}/s overall, {:.1}/s steady, second half ({:.1}% of the rate)\n\
             \x20 max in 1 s    {} (limit rate + burst = {})\n\
             \x20 worker CPU    {:.0} µs per send (idle {:.1}% subtracted)",
            self.requests,
            cfg.rate,
            cfg.rate,
            self.wall.as_secs_f64(),
            self.achieved,
            self.steady,
            self.steady * 100.0 / f64::from(cfg.rate),
            self.max_window,
            2 * cfg.rate,
            self.cpu_us_per_send,
            self.idle_cpu_pct
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_counts_arrivals_within_one_second() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(
            max_window(&[at(0), at(100), at(999), at(1000), at(1500)]),
            3
        );
        assert_eq!(max_window(&[at(0)]), 1);
        assert_eq!(max_window(&[]), 0);
    }
}
