//! `inlet-bench e2e`: time from the POST to the message row being visible in
//! Postgres (gateway → Redis → worker → database).
//!
//! Messages are sent open-loop at `--rate` (all bodies are made before the
//! clock starts). After each 200 the message id is polled with
//! `SELECT 1 FROM messages WHERE provider_message_id = $1` every
//! `--poll-interval` until it appears or `--timeout` passes. The reported
//! latency therefore includes up to one poll interval plus one query.

use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::Url;
use serde_json::{json, Value};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};

use crate::body::{BodyFactory, SignedBody};
use crate::http::{self, Outcome};
use crate::stats::Recorder;

/// What to run.
pub struct E2eConfig {
    pub url: Url,
    pub factory: BodyFactory,
    pub database_url: String,
    pub count: u64,
    pub rate: f64,
    pub timeout: Duration,
    pub poll: Duration,
    pub http_timeout: Duration,
}

/// Latency to the 200 and to the visible row, per message.
pub struct E2eReport {
    pub post: Recorder,
    pub visible: Recorder,
}

/// Connects to Postgres, checking that the `messages` table exists.
async fn connect(database_url: &str) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(database_url)
        .await
        .context("connecting to Postgres")?;
    if let Err(e) = sqlx::query("SELECT 1 FROM messages LIMIT 1")
        .fetch_optional(&pool)
        .await
    {
        if crate::worker::is_undefined_table(&e) {
            bail!("table `messages` does not exist: start inlet-worker (it runs the migrations) on this database first");
        }
        return Err(e).context("querying `messages`");
    }
    Ok(pool)
}

/// Sends `count` messages and waits for each to show up.
pub async fn run(cfg: &E2eConfig) -> anyhow::Result<E2eReport> {
    let mut factory = cfg.factory.clone();
    if !factory.has_unique_ids() {
        bail!(
            "the fixture has no message id (messages[0].id or messaging[0].message.mid) to look up"
        );
    }
    let pool = connect(&cfg.database_url).await?;
    let bodies: Vec<SignedBody> = (0..cfg.count).map(|i| factory.next(i)).collect();
    let client = http::client(cfg.http_timeout, 64)?;
    let interval = Duration::from_secs_f64(1.0 / cfg.rate);

    let t0 = Instant::now() + Duration::from_millis(50);
    let mut tasks = JoinSet::new();
    for (i, body) in bodies.into_iter().enumerate() {
        sleep_until(t0 + interval.mul_f64(i as f64)).await;
        let (client, url, pool) = (client.clone(), cfg.url.clone(), pool.clone());
        let (timeout, poll) = (cfg.timeout, cfg.poll);
        tasks.spawn(async move { one(&client, &url, &pool, body, timeout, poll).await });
    }

    let mut report = E2eReport {
        post: Recorder::default(),
        visible: Recorder::default(),
    };
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok((post, visible)) => {
                report.post.ok(post);
                report.visible.ok(visible);
            }
            Err(kind) => report.visible.error(kind),
        }
    }
    pool.close().await;
    Ok(report)
}

/// One message: POST, then poll until its row is visible.
async fn one(
    client: &reqwest::Client,
    url: &Url,
    pool: &PgPool,
    body: SignedBody,
    timeout: Duration,
    poll: Duration,
) -> Result<(Duration, Duration), String> {
    let id = body.message_id.clone().unwrap_or_default();
    let start = Instant::now();
    if let Outcome::Failed(kind) = http::post(client, url, body).await {
        return Err(kind);
    }
    let posted = start.elapsed();
    let deadline = start + timeout;
    loop {
        let row = sqlx::query("SELECT 1 FROM messages WHERE provider_message_id = $1")
            .bind(&id)
            .fetch_optional(pool)
            .await
            .map_err(|_| "db".to_string())?;
        if row.is_some() {
            return Ok((posted, start.elapsed()));
        }
        if Instant::now() >= deadline {
            return Err("not-visible".into());
        }
        sleep(poll).await;
    }
}

/// The report as one JSON object.
pub fn to_json(cfg: &E2eConfig, report: &E2eReport) -> Value {
    json!({
        "url": cfg.url.as_str(),
        "count": cfg.count,
        "rate": cfg.rate,
        "visible": report.visible.ok_count(),
        "failed": report.visible.error_count(),
        "errors": report.visible.errors_json(),
        "post_latency_ms": report.post.latency().to_json(),
        "e2e_latency_ms": report.visible.latency().to_json(),
    })
}

/// The report as text.
pub fn to_text(cfg: &E2eConfig, report: &E2eReport) -> String {
    format!(
        "inlet-bench e2e → {url} ({count} messages at {rate:.0}/s)\n\
         \x20 visible     {ok} of {count}, {failed} failed\n\
         \x20 POST → 200  {post}\n\
         \x20 POST → row  {e2e}\n\
         \x20 errors      {errors}",
        url = cfg.url,
        count = cfg.count,
        rate = cfg.rate,
        ok = report.visible.ok_count(),
        failed = report.visible.error_count(),
        post = report.post.latency().to_text(),
        e2e = report.visible.latency().to_text(),
        errors = report.visible.errors_text(),
    )
}
