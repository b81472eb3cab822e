//! `inlet-bench worker` and `inlet-bench wait-rows`: worker throughput.
//!
//! `worker` preloads N raw events into `{prefix}incoming.raw` exactly as the
//! gateway writes them ([`RawEvent::to_fields`], `XADD` pipelined in batches
//! of 1000), optionally starts `inlet-worker`, and waits until
//! `SELECT count(*) FROM messages` has grown by N.
//!
//! `wait-rows` is the waiting half alone, for any table: `bench/compare.sh`
//! uses it to time the Node/BullMQ peer's worker the same way.
//!
//! Throughput is timed from the first poll that sees new rows to the poll that
//! sees all of them, so process start-up and migrations are not counted. The
//! poll interval is 10 ms.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use inlet::envelope::RawEvent;
use serde_json::{json, Value};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::process::{Child, Command};
use tokio::time::{sleep, Instant};

use crate::body::BodyFactory;
use crate::stats::round3;

/// Entries per `XADD` pipeline.
const BATCH: u64 = 1000;
/// How often the row count is read.
const POLL: Duration = Duration::from_millis(10);

/// What `inlet-bench worker` runs.
pub struct WorkerConfig {
    pub redis_url: String,
    pub prefix: String,
    pub count: u64,
    pub factory: BodyFactory,
    pub tenant: String,
    pub database_url: String,
    pub spawn_worker: Option<PathBuf>,
    /// `INLET_APP_SECRET` given to a spawned worker.
    pub app_secret: String,
    pub timeout: Duration,
}

/// How fast rows appeared.
#[derive(Debug, Clone)]
pub struct Drain {
    /// Rows the table had before.
    pub baseline: i64,
    /// Rows added in all.
    pub rows: i64,
    /// From the start of waiting until the last row was seen.
    pub wall: Duration,
    /// From the start of waiting until the first new row was seen (start-up).
    pub first_after: Duration,
    /// Rows per second between the first and the last poll that saw rows.
    pub rows_per_sec: f64,
}

impl Drain {
    /// `{"rows": …, "wall_s": …, "events_per_sec": …}`.
    pub fn to_json(&self) -> Value {
        json!({
            "rows": self.rows,
            "baseline": self.baseline,
            "wall_s": round3(self.wall.as_secs_f64()),
            "first_row_after_s": round3(self.first_after.as_secs_f64()),
            "events_per_sec": round3(self.rows_per_sec),
        })
    }
}

/// Whether a database error is "relation does not exist" (42P01).
pub fn is_undefined_table(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01"))
}

/// Connects to Postgres with a small pool.
pub async fn connect(database_url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(database_url)
        .await
        .context("connecting to Postgres")
}

/// `SELECT count(*)` of `table`; 0 while the table does not exist yet (the
/// worker creates it on start).
pub async fn count_rows(pool: &PgPool, table: &str) -> anyhow::Result<i64> {
    if table.is_empty()
        || !table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        bail!("invalid table name {table:?}");
    }
    match sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
    {
        Ok(n) => Ok(n),
        Err(e) if is_undefined_table(&e) => Ok(0),
        Err(e) => Err(e).with_context(|| format!("counting rows of {table}")),
    }
}

/// Polls `table` until it holds `baseline + rows` rows, at most `timeout`.
/// Fails early if `child` (the worker under test) exits.
pub async fn wait_rows(
    pool: &PgPool,
    table: &str,
    baseline: i64,
    rows: i64,
    timeout: Duration,
    mut child: Option<&mut Child>,
) -> anyhow::Result<Drain> {
    let start = Instant::now();
    let target = baseline + rows;
    let mut first: Option<(Instant, i64)> = None;
    loop {
        let n = count_rows(pool, table).await?;
        let now = Instant::now();
        if n > baseline && first.is_none() {
            first = Some((now, n));
        }
        if n >= target {
            let rows_per_sec = match first {
                Some((t, n0)) if now > t && n0 < n => (n - n0) as f64 / (now - t).as_secs_f64(),
                _ => (n - baseline) as f64 / (now - start).as_secs_f64().max(1e-9),
            };
            return Ok(Drain {
                baseline,
                rows: n - baseline,
                wall: now - start,
                first_after: first.map_or(now, |(t, _)| t) - start,
                rows_per_sec,
            });
        }
        if now - start >= timeout {
            bail!(
                "timed out after {:.0} s with {} of {rows} rows in {table}",
                timeout.as_secs_f64(),
                n - baseline
            );
        }
        if let Some(child) = child.as_deref_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the worker exited early ({status}) with {} of {rows} rows",
                    n - baseline
                );
            }
        }
        sleep(POLL).await;
    }
}

/// Appends `count` raw events to `{prefix}incoming.raw`; returns the time taken.
async fn preload(cfg: &WorkerConfig) -> anyhow::Result<Duration> {
    let client = redis::Client::open(cfg.redis_url.as_str()).context("invalid Redis URL")?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let key = format!("{}{}", cfg.prefix, inlet::streams::INCOMING_RAW);
    let existing: u64 = redis::cmd("XLEN").arg(&key).query_async(&mut conn).await?;
    if existing > 0 {
        eprintln!("inlet-bench: warning: {key} already holds {existing} entries");
    }
    let mut factory = cfg.factory.clone();
    let source = factory.source();
    let start = Instant::now();
    let mut seq = 0;
    while seq < cfg.count {
        let mut pipe = redis::pipe();
        for _ in 0..BATCH.min(cfg.count - seq) {
            let signed = factory.next(seq);
            seq += 1;
            let mut event = RawEvent::new(source, cfg.tenant.clone(), Bytes::from(signed.body));
            event.headers = vec![
                ("content-type".into(), "application/json".into()),
                ("user-agent".into(), "facebookexternalua".into()),
                ("x-hub-signature-256".into(), signed.signature),
            ];
            let cmd = pipe.cmd("XADD").arg(&key).arg("*");
            for (name, value) in event.to_fields() {
                cmd.arg(name).arg(value);
            }
            cmd.ignore();
        }
        let () = pipe
            .query_async(&mut conn)
            .await
            .with_context(|| format!("XADD to {key}"))?;
    }
    Ok(start.elapsed())
}

/// Starts `inlet-worker` on the benchmark's Redis prefix and database.
fn spawn(cfg: &WorkerConfig, path: &PathBuf, data_dir: &PathBuf) -> anyhow::Result<Child> {
    Command::new(path)
        .env("INLET_REDIS_URL", &cfg.redis_url)
        .env("INLET_DATABASE_URL", &cfg.database_url)
        .env("INLET_STREAM_PREFIX", &cfg.prefix)
        .env("INLET_APP_SECRET", &cfg.app_secret)
        .env("INLET_DATA_DIR", data_dir)
        .env("INLET_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", path.display()))
}

/// Preloads, optionally spawns the worker, waits for the rows.
pub async fn run(cfg: &WorkerConfig) -> anyhow::Result<(Duration, Drain)> {
    if !cfg.factory.has_unique_ids() {
        bail!("the fixture has no message id: every event would be the same message row");
    }
    let pool = connect(&cfg.database_url).await?;
    let baseline = count_rows(&pool, "messages").await?;
    if baseline > 0 {
        eprintln!(
            "inlet-bench: messages already holds {baseline} rows; waiting for {baseline} + {}",
            cfg.count
        );
    }
    let preload_time = preload(cfg).await?;

    let data_dir =
        std::env::temp_dir().join(format!("inlet-bench-worker-{}", uuid::Uuid::new_v4()));
    let mut child = match &cfg.spawn_worker {
        Some(path) => {
            std::fs::create_dir_all(&data_dir).context("creating the worker's data dir")?;
            Some(spawn(cfg, path, &data_dir)?)
        }
        None => None,
    };
    let rows = i64::try_from(cfg.count).context("count too large")?;
    let drained = wait_rows(
        &pool,
        "messages",
        baseline,
        rows,
        cfg.timeout,
        child.as_mut(),
    )
    .await;
    if let Some(mut child) = child {
        let _ = child.start_kill();
        let _ = child.wait().await;
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    pool.close().await;
    Ok((preload_time, drained?))
}
