//! The `inlet` command line: argument definitions and command handlers.
//!
//! Every command writes to the given writer (stdout in the binary, a buffer in
//! tests) and returns an exit code; `--json` switches to machine-readable
//! output. Configuration is the services' own (`config/default.toml`,
//! `INLET_CONFIG`, `INLET_*`), so the CLI sees the same Redis, store and data
//! directory as the gateway and worker. Commands that may write prepare the
//! data directory first ([`Settings::prepare`]); `status` and `audit` only
//! look and create nothing.
//!
//! # Layout
//! - this file: the argument tree, `sign`, `migrate`, `cache`, `dlq`,
//!   `messages`, `replay`.
//! - `events`: `inlet subscriptions` and `inlet events`.
//! - `ops`: `inlet status` and `inlet audit trace|tail`.
//! - `db`: `inlet db partitions|maintain` (time partitions, retention).
//! - `send`: `inlet send`, `inlet broadcasts`, `inlet outbound`.
//! - `drafts`: `inlet drafts`; `leads`: `inlet leads`.
//! - [`render`]: the terminal text of the status report, audit traces,
//!   audit lines and lead lines (the library gathers and judges, this formats).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Parser, Subcommand};
use inlet::audit::Audit;
use inlet::config::Settings;
use inlet::dlq::{Dlq, DlqId, DlqItem};
use inlet::envelope::{format_ts, Source};
use inlet::queue::RedisQueue;
use inlet::store::{RawFilter, Store};
use inlet::ExposeSecret;
use serde_json::json;

mod db;
mod drafts;
mod events;
mod leads;
mod ops;
pub mod render;
mod send;
mod sync;

pub use db::DbAction;
pub use drafts::DraftsAction;
pub use events::{EventsAction, SubscriptionsAction};
pub use leads::LeadsAction;
pub use ops::AuditAction;

/// Operate an Inlet deployment.
#[derive(Debug, Parser)]
#[command(name = "inlet", version, about, propagate_version = true)]
pub struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage outgoing-webhook subscriptions (signed POSTs of write events).
    Subscriptions {
        /// What to do.
        #[command(subcommand)]
        action: SubscriptionsAction,
    },
    /// Event statistics, failed events, and re-delivery of logged events.
    Events {
        /// What to do.
        #[command(subcommand)]
        action: EventsAction,
    },
    /// Print the X-Hub-Signature-256 value Meta would send for a payload file.
    ///
    /// Without --secret, uses the first secret of INLET_APP_SECRET, or the
    /// development secret the gateway generated in the data directory.
    Sign {
        /// App secret to sign with.
        #[arg(long, env = "INLET_SIGN_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Payload file (the exact bytes that will be POSTed).
        file: PathBuf,
    },
    /// Apply database migrations to the configured store.
    Migrate,
    /// The store's time partitions (Postgres) and the retention and
    /// partition job.
    Db {
        /// What to do.
        #[command(subcommand)]
        action: DbAction,
    },
    /// Health of the deployment: mode, Redis and store, stream lengths,
    /// consumer groups (consumers, pending entries, oldest pending age, lag),
    /// dead letters and the last event kept, with a verdict.
    ///
    /// A stall is an entry held by a consumer for more than twice
    /// worker.claim_idle, or a raw backlog with no consumer active for that
    /// long.
    ///
    /// Exit status: 0 ok or degraded (dead letters waiting, direct mode
    /// because Redis is down), 2 stalled (events accepted but not being
    /// processed), 3 down (nothing can keep events: the gateway answers 503),
    /// 1 the command itself failed.
    Status,
    /// Follow deliveries through the JSONL audit logs of every service.
    Audit {
        /// What to read.
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Rebuild the JSON cache (lists, analytics summary, conversation files)
    /// from the database.
    Cache {
        /// What to do with the cache.
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Inspect, replay and purge dead letters (Redis stream and store table).
    Dlq {
        /// What to do with the DLQ.
        #[command(subcommand)]
        action: DlqAction,
    },
    /// List stored messages, newest first (with their text: an operator's
    /// explicit request).
    Messages {
        /// Only this conversation.
        #[arg(long)]
        conversation: Option<i64>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Queue one message to send (a text, or a template by name).
    Send(send::SendArgs),
    /// Broadcasts: list, show, pause, resume.
    Broadcasts {
        /// What to do.
        #[command(subcommand)]
        action: send::BroadcastsAction,
    },
    /// AI drafts waiting for approval: list, show, approve, reject.
    Drafts {
        /// What to do.
        #[command(subcommand)]
        action: DraftsAction,
    },
    /// Lead Ads: the leads leadgen webhooks announced (list, show), and
    /// fetching one again (refetch).
    Leads {
        /// What to do.
        #[command(subcommand)]
        action: LeadsAction,
    },
    /// The send side: status (halts, queues), recent sends, one send.
    Outbound {
        /// What to do.
        #[command(subcommand)]
        action: send::OutboundAction,
    },
    /// The scheduled Graph sync: run one now (insights, conversation
    /// backfill), its state, the stored ad insights.
    Sync {
        /// What to do.
        #[command(subcommand)]
        action: sync::SyncAction,
    },
    /// Re-run kept raw events through the pipeline (idempotent: stored rows
    /// are not duplicated).
    Replay {
        /// Received at or after (YYYY-MM-DD or RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Received before (YYYY-MM-DD or RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Only this source (whatsapp, facebook, instagram).
        #[arg(long)]
        source: Option<String>,
        /// Only this trace id.
        #[arg(long)]
        trace: Option<uuid::Uuid>,
    },
}

/// `inlet dlq …`
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead letters, oldest first.
    List {
        /// At most this many from each place.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead letter.
    Show {
        /// Stream id (1700000000000-0), store id (db-12), outbound send (out-ID),
        /// media download (media-M-I) or lead fetch (lead-ID).
        id: String,
        /// Also print the body (it may contain message text).
        #[arg(long)]
        body: bool,
    },
    /// Send dead letters through processing again and remove them from the
    /// DLQ once that is durable.
    Replay {
        /// Stream id, db-N, out-ID, media-M-I or lead-ID.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Delete every dead letter.
    Purge {
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

/// Runs a parsed command with configuration from the environment.
pub async fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    if let Command::Sign {
        secret: Some(secret),
        file,
    } = &cli.command
    {
        return sign(secret, file, cli.json, out);
    }
    let mut settings = Settings::load().context("loading configuration")?;
    // Looking (status, audit) changes nothing on disk; every other command
    // may write, or sign with the development secret.
    if !matches!(cli.command, Command::Status | Command::Audit { .. }) {
        settings.prepare().context("preparing the data directory")?;
    }
    run_with(cli, settings, out).await
}

/// Runs a parsed command with explicit settings (tests use this).
pub async fn run_with(
    cli: Cli,
    settings: Settings,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let json = cli.json;
    match cli.command {
        Command::Sign { secret, file } => {
            let secret = match secret {
                Some(s) => s,
                None => {
                    let app = settings
                        .apps
                        .first()
                        .context("no app secret configured: pass --secret")?;
                    let secret = app
                        .secrets
                        .first()
                        .context("the default app has no secret")?;
                    secret.expose_secret().to_string()
                }
            };
            sign(&secret, &file, json, out)
        }
        Command::Migrate => {
            let store = open_store(&settings).await?;
            store.migrate().await.context("applying migrations")?;
            if json {
                writeln!(
                    out,
                    "{}",
                    json!({"migrated": true, "backend": store.backend()})
                )?;
            } else {
                writeln!(out, "migrations applied ({})", store.backend())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Db { action } => db::db(action, &settings, json, out).await,
        Command::Cache { action } => cache(action, &settings, json, out).await,
        Command::Dlq { action } => dlq(action, &settings, json, out).await,
        Command::Status => ops::status(&settings, json, out).await,
        Command::Audit { action } => ops::audit(action, &settings, json, out).await,
        Command::Subscriptions { action } => {
            events::subscriptions(action, &settings, json, out).await
        }
        Command::Events { action } => events::events(action, &settings, json, out).await,
        Command::Send(args) => send::send(args, &settings, json, out).await,
        Command::Broadcasts { action } => send::broadcasts(action, &settings, json, out).await,
        Command::Outbound { action } => send::outbound(action, &settings, json, out).await,
        Command::Drafts { action } => drafts::drafts(action, &settings, json, out).await,
        Command::Leads { action } => leads::leads(action, &settings, json, out).await,
        Command::Sync { action } => sync::sync(action, &settings, json, out).await,
        Command::Messages {
            conversation,
            limit,
        } => {
            let store = open_store(&settings).await?;
            let messages = store
                .messages(conversation, limit)
                .await
                .context("reading messages")?;
            if json {
                writeln!(out, "{}", serde_json::to_value(&messages)?)?;
            } else if messages.is_empty() {
                writeln!(out, "no messages stored yet")?;
            } else {
                for m in &messages {
                    writeln!(
                        out,
                        "{}  {:<9} {:<8} conv {:<4} {:<18} {:<26} {}{}",
                        format_ts(m.sent_at),
                        m.channel,
                        m.direction,
                        m.conversation_id,
                        m.contact_name.as_deref().unwrap_or(&m.contact_external_id),
                        m.message_type,
                        m.text.as_deref().unwrap_or("-"),
                        m.status
                            .as_deref()
                            .map(|s| format!("  [{s}]"))
                            .unwrap_or_default(),
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            from,
            to,
            source,
            trace,
        } => {
            let filter = RawFilter {
                from: from.as_deref().map(parse_time).transpose()?,
                to: to.as_deref().map(parse_time).transpose()?,
                source: source
                    .as_deref()
                    .map(|s| Source::parse(s).with_context(|| format!("unknown source {s:?}")))
                    .transpose()?,
                trace_id: trace,
            };
            let store = open_store(&settings).await?;
            let queue = connect_queue(&settings).await?;
            let n = inlet::dlq::replay_raw(queue.as_ref(), &store, &cli_audit(&settings)?, &filter)
                .await?;
            if json {
                writeln!(out, "{}", json!({"replayed": n}))?;
            } else {
                writeln!(out, "replayed {n} raw events")?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn sign(
    secret: &str,
    file: &std::path::Path,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let header = inlet::signature::sign(&body, secret.as_bytes());
    if json {
        writeln!(
            out,
            "{}",
            json!({"header": "X-Hub-Signature-256", "value": header, "bytes": body.len()})
        )?;
    } else {
        writeln!(out, "{header}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses `YYYY-MM-DD` (midnight UTC) or RFC 3339.
pub fn parse_time(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).context("midnight")?.and_utc());
    }
    Ok(DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("{s:?} is neither YYYY-MM-DD nor RFC 3339"))?
        .with_timezone(&Utc))
}

/// Opens the configured store. A SQLite store (the embedded default) is
/// migrated as the gateway would, so a command run before the gateway ever
/// started finds its tables; a Postgres schema is changed only by the
/// services or `inlet migrate`.
pub(crate) async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let store = inlet::store::from_settings(settings)
        .await
        .with_context(|| "opening the store".to_string())?;
    if !settings.uses_postgres() && settings.worker.migrate_on_start {
        store
            .migrate()
            .await
            .context("applying migrations to the SQLite store")?;
    }
    Ok(store)
}

/// Connects to the configured Redis, if any.
async fn connect_queue(settings: &Settings) -> anyhow::Result<Option<RedisQueue>> {
    RedisQueue::from_settings(settings)
        .await
        .context("connecting to Redis")
}

fn cli_audit(settings: &Settings) -> anyhow::Result<Audit> {
    Audit::new(settings.audit_dir(), "cli").context("opening the audit directory")
}

async fn dlq(
    action: DlqAction,
    settings: &Settings,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let queue = connect_queue(settings).await?;
    // The store is optional for the DLQ: a queue-only operator can still
    // work on the stream when the database is unreachable.
    let store = match open_store(settings).await {
        Ok(s) if s.ping().await.is_ok() => Some(s),
        _ => None,
    };
    let dlq = Dlq::new(queue, store, cli_audit(settings)?);
    match action {
        DlqAction::List { limit } => {
            let items = dlq.list(limit).await?;
            if json {
                let list: Vec<_> = items.iter().map(|i| item_json(i, false)).collect();
                writeln!(out, "{}", serde_json::Value::Array(list))?;
            } else if items.is_empty() {
                writeln!(out, "the DLQ is empty")?;
            } else {
                writeln!(
                    out,
                    "{:<22} {:<36} {:<10} {:<20} {:>3}  error",
                    "id", "trace_id", "source", "reason", "att"
                )?;
                for i in &items {
                    let l = &i.letter;
                    writeln!(
                        out,
                        "{:<22} {:<36} {:<10} {:<20} {:>3}  {}",
                        i.id.to_string(),
                        l.event.trace_id,
                        l.event.source.as_str(),
                        l.reason,
                        l.attempts,
                        l.error.chars().take(80).collect::<String>()
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Show { id, body } => {
            let id = DlqId::parse(&id)
                .with_context(|| format!("{id:?} is not a DLQ id ({})", DlqId::FORMS))?;
            let Some(item) = dlq.get(&id).await? else {
                bail!("no dead letter {id}");
            };
            let v = item_json(&item, body);
            if json {
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Replay { id, all } => {
            let items = if all {
                dlq.list(1_000_000).await?
            } else {
                let raw = id.unwrap_or_default();
                let id = DlqId::parse(&raw)
                    .with_context(|| format!("{raw:?} is not a DLQ id ({})", DlqId::FORMS))?;
                vec![dlq
                    .get(&id)
                    .await?
                    .with_context(|| format!("no dead letter {id}"))?]
            };
            let mut ok = 0;
            let mut failed = Vec::new();
            for item in &items {
                match dlq.replay(item).await {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            if json {
                writeln!(out, "{}", json!({"replayed": ok, "failed": failed}))?;
            } else {
                writeln!(out, "replayed {ok} of {}", items.len())?;
                for f in &failed {
                    writeln!(out, "  failed: {f}")?;
                }
            }
            Ok(if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        DlqAction::Purge { yes } => {
            if !yes {
                bail!("purge deletes every dead letter for good; repeat with --yes to confirm");
            }
            let n = dlq.purge().await?;
            if json {
                writeln!(out, "{}", json!({"purged": n}))?;
            } else {
                writeln!(out, "purged {n} dead letters")?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn item_json(item: &DlqItem, with_body: bool) -> serde_json::Value {
    let l = &item.letter;
    let mut v = json!({
        "id": item.id.to_string(),
        "trace_id": l.event.trace_id,
        "source": l.event.source.as_str(),
        "tenant": l.event.tenant,
        "received_at": format_ts(l.event.received_at),
        "failed_at": format_ts(l.failed_at),
        "reason": l.reason,
        "error": l.error,
        "attempts": l.attempts,
        "stage": l.stage,
        "body_bytes": l.event.body.len(),
    });
    if with_body {
        v["body"] = json!(String::from_utf8_lossy(&l.event.body));
    }
    v
}

/// `inlet cache …`
#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Rewrite every cache file from the database (the same as the worker's
    /// scheduled rebuild). Safe while the services run.
    Rebuild {
        /// Compute the analytics as of this time (YYYY-MM-DD or RFC 3339)
        /// instead of now.
        #[arg(long)]
        now: Option<String>,
    },
}

async fn cache(
    action: CacheAction,
    settings: &Settings,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    match action {
        CacheAction::Rebuild { now } => {
            let now = now
                .as_deref()
                .map(parse_time)
                .transpose()?
                .unwrap_or_else(Utc::now);
            let store = open_store(settings).await?;
            let cache = inlet::cache::Cache::new(settings.cache_dir(), store, &settings.cache);
            let report = cache
                .rebuild_all(now)
                .await
                .context("rebuilding the cache")?;
            if json {
                writeln!(
                    out,
                    "{}",
                    json!({"written": report.written, "removed": report.removed, "dir": settings.cache_dir()})
                )?;
            } else {
                writeln!(
                    out,
                    "cache rebuilt in {}: {} files written, {} removed",
                    settings.cache_dir().display(),
                    report.written,
                    report.removed
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
