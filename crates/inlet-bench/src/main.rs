//! `inlet-bench`: benchmarks for Inlet, run side by side with the Node/BullMQ
//! baseline by `bench/compare.sh` (see `BENCHMARKS.md`).
//!
//! - `load`: signed webhook POSTs, closed loop (max throughput) or open loop
//!   at a fixed rate (latency without coordinated omission).
//! - `e2e`: POST → message row visible in Postgres.
//! - `worker`: preload raw events into Redis, time the worker draining them.
//! - `wait-rows`: time any worker filling a table (used for the peer).
//! - `sender`: sender accuracy (achieved vs configured rate) and CPU per
//!   send, against a mock Graph API on loopback.
//! - `media`: peak RSS of an inlet-gateway downloading one large inbound
//!   video from a mock Graph API on loopback (bounded memory).
//!
//! Every run is bounded in time; `load` and `e2e` refuse non-loopback targets
//! unless `--allow-remote` is given.

mod body;
mod e2e;
mod http;
mod load;
mod media;
mod sender;
mod stats;
mod worker;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};

use crate::body::BodyFactory;

#[derive(Parser)]
#[command(
    name = "inlet-bench",
    version,
    about = "Inlet benchmarks: load, end-to-end latency, worker throughput"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Signed webhook load against one URL: closed loop, or open loop with --rate.
    Load(LoadArgs),
    /// End-to-end latency: POST until the message row is visible in Postgres.
    E2e(E2eArgs),
    /// Worker throughput: preload N raw events, wait for N rows in `messages`.
    Worker(WorkerArgs),
    /// Wait until a table has grown by N rows and report rows/s.
    WaitRows(WaitRowsArgs),
    /// Sender accuracy and CPU per send: a broadcast through inlet-worker to a mock Graph API.
    Sender(SenderArgs),
    /// Peak memory of inlet-gateway downloading one large inbound video from a mock Graph API.
    Media(MediaArgs),
}

#[derive(Args)]
struct MediaArgs {
    /// The `inlet-gateway` binary to run.
    #[arg(long, default_value = "target/release/inlet-gateway")]
    gateway_bin: PathBuf,
    /// Size of the video, MiB.
    #[arg(long, default_value_t = 50)]
    size_mib: usize,
    /// The WhatsApp video webhook (its digest is replaced by the file's).
    #[arg(long, default_value = "tests/fixtures/meta/wa_video.json")]
    fixture: PathBuf,
    /// Give up after this long.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SenderArgs {
    /// The `inlet-worker` binary to run (release build).
    #[arg(long, default_value = "target/release/inlet-worker")]
    worker_bin: PathBuf,
    /// Postgres the worker keeps the sends in.
    #[arg(long, env = "INLET_DATABASE_URL")]
    database_url: String,
    /// Redis the worker's limiter uses.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// `outbound.rate_per_second` (burst = rate).
    #[arg(long, default_value_t = 80)]
    rate: u32,
    /// Broadcast recipients (sends).
    #[arg(long, default_value_t = 800)]
    count: usize,
    /// Give up after this long.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Where to send and what.
#[derive(Args)]
struct Target {
    /// Webhook URL (loopback only unless --allow-remote).
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/whatsapp")]
    url: String,
    /// App secret to sign with.
    #[arg(long, env = "INLET_BENCH_SECRET")]
    secret: String,
    /// Meta webhook body; its message id is made unique per request.
    #[arg(long, default_value = "tests/fixtures/meta/wa_text.json")]
    fixture: PathBuf,
    /// Allow a target that is not a loopback address.
    #[arg(long)]
    allow_remote: bool,
    /// Spread the load over this many conversations (WhatsApp fixtures: the
    /// sender's number rotates over N made-up numbers), as real traffic
    /// does; 1 keeps the fixture's own contact. Sharded ingest
    /// (`redis.raw_shards`) spreads by conversation, so it needs N > 1.
    #[arg(long, default_value_t = 1)]
    contacts: u64,
}

#[derive(Args)]
struct LoadArgs {
    #[command(flatten)]
    target: Target,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured time (`10s`, `500ms`, `1m`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Open loop: requests per second, scheduled at fixed intervals.
    #[arg(long)]
    rate: Option<f64>,
    /// Unrecorded time before the measurement.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct E2eArgs {
    #[command(flatten)]
    target: Target,
    /// Postgres the worker writes to (table `messages`).
    #[arg(long, env = "INLET_DATABASE_URL")]
    database_url: String,
    /// Messages to send.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Messages per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Give up on a message not visible after this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Pause between two lookups of the same message.
    #[arg(long, default_value = "2ms", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct WorkerArgs {
    /// Redis holding the stream.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Stream prefix (`INLET_STREAM_PREFIX` of the worker), e.g. `bench:42:`.
    #[arg(long)]
    prefix: String,
    /// Events to preload.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Meta webhook body with one message; its id is made unique per event.
    #[arg(long, default_value = "tests/fixtures/meta/wa_text.json")]
    fixture: PathBuf,
    /// Postgres the worker writes to (table `messages`).
    #[arg(long, env = "INLET_DATABASE_URL")]
    database_url: String,
    /// Start this `inlet-worker` binary on the prefix and database.
    #[arg(long)]
    spawn_worker: Option<PathBuf>,
    /// Secret the events are signed with (and `INLET_APP_SECRET` of a spawned worker).
    #[arg(long, default_value = "x")]
    secret: String,
    /// Tenant written into the envelopes.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Give up after this long.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct WaitRowsArgs {
    /// Postgres database.
    #[arg(long)]
    database_url: String,
    /// Table to count.
    #[arg(long)]
    table: String,
    /// Rows to wait for, on top of those already there.
    #[arg(long)]
    count: u64,
    /// Give up after this long.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// `10s`, `1.5s`, `250ms`, `2m`; a bare number is seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {s:?}"))
}

/// Reads the fixture and checks the target.
fn prepare(target: &Target) -> anyhow::Result<(reqwest::Url, BodyFactory)> {
    let url = http::target(&target.url, target.allow_remote)?;
    let factory =
        BodyFactory::from_file(&target.fixture, &target.secret)?.with_contacts(target.contacts)?;
    if !factory.has_unique_ids() {
        eprintln!(
            "inlet-bench: warning: {} has no messages[0].id / messaging[0].message.mid; every body is identical",
            target.fixture.display()
        );
    }
    Ok((url, factory))
}

// One thread: on a small machine the generator must leave the other cores to
// the server under test, and a single-threaded runtime spends far less CPU
// per request than a work-stealing one (no cross-thread wake-ups).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Load(args) => {
            let (url, factory) = prepare(&args.target)?;
            if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                bail!("--rate must be a positive number");
            }
            let cfg = load::LoadConfig {
                url,
                factory,
                connections: args.connections,
                duration: args.duration,
                warmup: args.warmup,
                rate: args.rate,
                timeout: args.timeout,
            };
            let report = load::run(&cfg).await?;
            if args.json {
                println!("{}", load::to_json(&cfg, &report));
            } else {
                println!("{}", load::to_text(&cfg, &report));
            }
        }
        Command::E2e(args) => {
            let (url, factory) = prepare(&args.target)?;
            if !(args.rate > 0.0 && args.rate.is_finite()) {
                bail!("--rate must be a positive number");
            }
            let cfg = e2e::E2eConfig {
                url,
                factory,
                database_url: args.database_url,
                count: args.count,
                rate: args.rate,
                timeout: args.timeout,
                poll: args.poll_interval,
                http_timeout: Duration::from_secs(10),
            };
            let report = e2e::run(&cfg).await?;
            if args.json {
                println!("{}", e2e::to_json(&cfg, &report));
            } else {
                println!("{}", e2e::to_text(&cfg, &report));
            }
        }
        Command::Worker(args) => {
            let cfg = worker::WorkerConfig {
                redis_url: args.redis_url,
                prefix: args.prefix,
                count: args.count,
                factory: BodyFactory::from_file(&args.fixture, &args.secret)?,
                tenant: args.tenant,
                database_url: args.database_url,
                spawn_worker: args.spawn_worker,
                app_secret: args.secret,
                timeout: args.timeout,
            };
            let (preload, drain) = worker::run(&cfg).await?;
            if args.json {
                let mut out = drain.to_json();
                out["preload_s"] = stats::round3(preload.as_secs_f64()).into();
                println!("{out}");
            } else {
                println!(
                    "inlet-bench worker: {} events preloaded into {}{} in {:.2} s\n\
                     \x20 drained     {} rows in {:.2} s (first after {:.2} s: start-up)\n\
                     \x20 throughput  {:.0} events/s",
                    cfg.count,
                    cfg.prefix,
                    inlet::streams::INCOMING_RAW,
                    preload.as_secs_f64(),
                    drain.rows,
                    drain.wall.as_secs_f64(),
                    drain.first_after.as_secs_f64(),
                    drain.rows_per_sec
                );
            }
        }
        Command::Sender(args) => {
            if args.rate == 0 || args.count < 2 {
                bail!("--rate must be positive and --count at least 2");
            }
            let cfg = sender::SenderConfig {
                worker_bin: args.worker_bin,
                database_url: args.database_url,
                redis_url: args.redis_url,
                rate: args.rate,
                count: args.count,
                timeout: args.timeout,
            };
            let report = sender::run(&cfg).await?;
            if args.json {
                println!("{}", report.to_json(&cfg));
            } else {
                println!("{}", report.to_text(&cfg));
            }
        }
        Command::Media(args) => {
            if args.size_mib == 0 {
                bail!("--size-mib must be positive");
            }
            let cfg = media::MediaConfig {
                gateway_bin: args.gateway_bin,
                size: args.size_mib * 1024 * 1024,
                fixture: args.fixture,
                timeout: args.timeout,
            };
            let report = media::run(&cfg).await?;
            if args.json {
                println!("{}", report.to_json());
            } else {
                println!("{}", report.to_text());
            }
        }
        Command::WaitRows(args) => {
            let pool = worker::connect(&args.database_url).await?;
            let baseline = worker::count_rows(&pool, &args.table).await?;
            let rows = i64::try_from(args.count)?;
            let drain =
                worker::wait_rows(&pool, &args.table, baseline, rows, args.timeout, None).await?;
            pool.close().await;
            if args.json {
                println!("{}", drain.to_json());
            } else {
                println!(
                    "inlet-bench wait-rows: {} rows in {} after {:.2} s, {:.0} rows/s",
                    drain.rows,
                    args.table,
                    drain.wall.as_secs_f64(),
                    drain.rows_per_sec
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
