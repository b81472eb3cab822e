//! `inlet sync run|conversations|status|insights`: the scheduled Graph sync
//! from the terminal. A run here takes the same lease as the workers'
//! scheduler, so it never runs beside a scheduled run of the same sync;
//! Ctrl-C stops a backfill after its current page and keeps its cursor, so
//! the next run resumes there.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use inlet::config::Settings;
use inlet::sync::parse::micros_text;
use inlet::sync::{Job, RunReport, SyncError, Syncer};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{open_store, parse_time};

/// A job to run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunJob {
    /// Ad insights of every configured account (or --target).
    Insights,
    /// Conversation backfill of every configured page (or --target).
    Conversations,
    /// Fetch again every lead whose fetch failed or was dead-lettered
    /// (after a token or permission fix): each is requeued once.
    Leads,
}

/// `inlet sync …`
#[derive(Debug, Subcommand)]
pub enum SyncAction {
    /// Run a sync now, under its lease (every configured target, or one).
    Run {
        /// What to sync.
        job: RunJob,
        /// One ad account (act_…) or page id instead of the configured ones.
        #[arg(long)]
        target: Option<String>,
        /// With --target, a page's platform (messenger, instagram).
        #[arg(long, default_value = "messenger")]
        platform: String,
    },
    /// Backfill one page's Messenger or Instagram conversations now
    /// (resumes from the cursor an interrupted run kept).
    Conversations {
        /// Page id (for Instagram: the Page linked to the account).
        #[arg(long)]
        page: String,
        /// Messages from this day on (YYYY-MM-DD or RFC 3339; default
        /// sync.conversations_since back).
        #[arg(long)]
        since: Option<String>,
        /// messenger or instagram.
        #[arg(long, default_value = "messenger")]
        platform: String,
    },
    /// Every sync's state: last run, next run, rows, errors, lease.
    Status,
    /// Stored ad insights (daily, per campaign).
    Insights {
        /// Only this account (act_…).
        #[arg(long)]
        account: Option<String>,
        /// From this day on (YYYY-MM-DD; default: the last 7 days).
        #[arg(long)]
        since: Option<String>,
    },
}

/// Runs `inlet sync …`.
pub async fn sync(
    action: SyncAction,
    settings: &Settings,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let store = open_store(settings).await?;
    match action {
        SyncAction::Status => status(&store, json, out).await,
        SyncAction::Insights { account, since } => {
            let since = match since {
                Some(s) => parse_time(&s)?.format("%Y-%m-%d").to_string(),
                None => (chrono::Utc::now() - chrono::Duration::days(7))
                    .format("%Y-%m-%d")
                    .to_string(),
            };
            let rows = store
                .sync()
                .insights(account.as_deref(), &since)
                .await
                .context("reading ad insights")?;
            if json {
                let list: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        json!({"account_id": r.account_id, "campaign_id": r.campaign_id, "date": r.date,
                            "campaign_name": r.campaign_name, "currency": r.currency,
                            "spend": micros_text(r.spend_micros), "impressions": r.impressions, "clicks": r.clicks})
                    })
                    .collect();
                writeln!(out, "{}", json!({"insights": list}))?;
            } else if rows.is_empty() {
                writeln!(out, "no ad insights since {since}")?;
            } else {
                writeln!(
                    out,
                    "{:<10}  {:<16}  {:<20}  {:>14}  {:>12}  {:>8}",
                    "date", "account", "campaign", "spend", "impressions", "clicks"
                )?;
                for r in rows {
                    let spend = format!(
                        "{} {}",
                        micros_text(r.spend_micros),
                        r.currency.as_deref().unwrap_or("")
                    );
                    writeln!(
                        out,
                        "{:<10}  {:<16}  {:<20}  {:>14}  {:>12}  {:>8}",
                        r.date,
                        r.account_id,
                        r.campaign_name.as_deref().unwrap_or(&r.campaign_id),
                        spend.trim(),
                        r.impressions,
                        r.clicks
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SyncAction::Run {
            job: RunJob::Leads, ..
        } => requeue_leads(&store, json, out).await,
        SyncAction::Run {
            job,
            target,
            platform,
        } => {
            let syncer = Syncer::new(Arc::new(settings.clone()), store, "cli")
                .context("building the Graph client")?;
            let job = match job {
                RunJob::Insights => Job::Insights,
                _ => Job::Conversations,
            };
            let targets: Vec<(String, String)> = match target {
                Some(t) => vec![(t, platform)],
                None => syncer
                    .configured()
                    .into_iter()
                    .filter(|(j, _, _)| *j == job)
                    .map(|(_, t, p)| (t, p))
                    .collect(),
            };
            if targets.is_empty() {
                anyhow::bail!(
                    "nothing to sync: configure sync.{} or pass --target",
                    if job == Job::Insights {
                        "ad_accounts"
                    } else {
                        "conversation_pages"
                    }
                );
            }
            let mut failed = false;
            for (target, platform) in targets {
                failed |= !run_one(&syncer, job, &target, &platform, None, json, out).await?;
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        SyncAction::Conversations {
            page,
            since,
            platform,
        } => {
            if !matches!(platform.as_str(), "messenger" | "instagram") {
                anyhow::bail!("--platform must be messenger or instagram, not {platform:?}");
            }
            let since = since.as_deref().map(parse_time).transpose()?;
            let syncer = Syncer::new(Arc::new(settings.clone()), store, "cli")
                .context("building the Graph client")?;
            let ok = run_one(
                &syncer,
                Job::Conversations,
                &page,
                &platform,
                since,
                json,
                out,
            )
            .await?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Requeues every failed or dead-lettered lead (a new `lead.fetch` job
/// each, in the transaction that resets it).
async fn requeue_leads(
    store: &inlet::store::Store,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let mut requeued = Vec::new();
    for status in ["failed", "dead_lettered"] {
        let filter = inlet::store::leads::LeadFilter {
            status: Some(status.into()),
            lead_id: None,
            limit: 100_000,
        };
        for lead in store
            .leads()
            .leads(&filter)
            .await
            .context("reading leads")?
        {
            if store
                .leads()
                .requeue_lead(&lead.tenant, &lead.lead_id)
                .await
                .context("requeueing a lead")?
            {
                requeued.push(lead.lead_id);
            }
        }
    }
    if json {
        writeln!(
            out,
            "{}",
            json!({"job": "leads", "requeued": requeued.len(), "lead_ids": requeued})
        )?;
    } else {
        writeln!(
            out,
            "leads: {} requeued (failed or dead-lettered fetches; workers fetch them again)",
            requeued.len()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One run with a progress line on a terminal; false when it failed.
async fn run_one(
    syncer: &Syncer,
    job: Job,
    target: &str,
    platform: &str,
    since: Option<chrono::DateTime<chrono::Utc>>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping after the current page (the cursor is kept)");
            stop.cancel();
        }
    });
    let tty = std::io::stderr().is_terminal() && !json;
    let progress = move |r: &RunReport| {
        if tty {
            eprint!(
                "\r{} {target}: {} pages, {} conversations, {} messages, {} rows   ",
                job.as_str(),
                r.pages,
                r.conversations,
                r.messages,
                r.rows
            );
        }
    };
    let result = syncer
        .run(job, target, platform, since, &progress, &shutdown)
        .await;
    ctrl_c.abort();
    if tty {
        eprintln!();
    }
    let ok = result.is_ok();
    if json {
        let v = match &result {
            Ok(r) => json!({"job": job.as_str(), "target": target, "ok": true, "rows": r.rows,
                "pages": r.pages, "conversations": r.conversations, "messages": r.messages}),
            Err(e) => {
                json!({"job": job.as_str(), "target": target, "ok": false, "error": e.to_string()})
            }
        };
        writeln!(out, "{v}")?;
    } else {
        match &result {
            Ok(r) => writeln!(
                out,
                "{} {target}: done, {} rows written ({} pages, {} conversations, {} messages read)",
                job.as_str(),
                r.rows,
                r.pages,
                r.conversations,
                r.messages
            )?,
            Err(SyncError::Busy) => writeln!(
                out,
                "{} {target}: another worker is running it now (lease held); try later",
                job.as_str()
            )?,
            Err(e) => writeln!(out, "{} {target}: failed: {e}", job.as_str())?,
        }
    }
    Ok(ok)
}

async fn status(
    store: &inlet::store::Store,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let states = store
        .sync()
        .sync_states()
        .await
        .context("reading sync state")?;
    let time = |ms: Option<i64>| {
        ms.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    };
    if json {
        let list: Vec<_> = states
            .iter()
            .map(|s| {
                json!({"job": s.job, "target": s.target, "last_started": time(s.last_started_ms),
                    "last_finished": time(s.last_finished_ms), "last_status": s.last_status,
                    "last_error": s.last_error, "last_rows": s.last_rows, "rows_total": s.rows_total,
                    "runs": s.runs, "next_run": time(Some(s.next_run_ms).filter(|m| *m > 0)),
                    "running": s.lease_owner.is_some() && s.lease_until_ms > chrono::Utc::now().timestamp_millis(),
                    "resumable": s.cursor.is_some()})
            })
            .collect();
        writeln!(out, "{}", json!({"syncs": list}))?;
        return Ok(ExitCode::SUCCESS);
    }
    if states.is_empty() {
        writeln!(out, "no sync has run yet")?;
        return Ok(ExitCode::SUCCESS);
    }
    for s in &states {
        let last = match (&s.last_status, time(s.last_finished_ms)) {
            (Some(st), Some(at)) => format!("{st} at {at}, {} rows", s.last_rows),
            _ => "never finished".into(),
        };
        writeln!(
            out,
            "{:<13} {:<20} last: {last}; next: {}; {} runs, {} rows in all{}",
            s.job,
            s.target,
            time(Some(s.next_run_ms).filter(|m| *m > 0)).unwrap_or_else(|| "now".into()),
            s.runs,
            s.rows_total,
            if s.cursor.is_some() {
                " (resumes from a kept cursor)"
            } else {
                ""
            }
        )?;
        if let Some(e) = &s.last_error {
            writeln!(out, "{:<13} error: {e}", "")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
