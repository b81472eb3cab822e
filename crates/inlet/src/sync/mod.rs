//! The scheduled Graph sync: hourly ad insights and the conversation
//! backfill of Messenger/Instagram pages, each run under a lease in the
//! database so two workers never run the same sync at once, with its state
//! (last run, next run, rows, errors, resumable cursor) in `sync_state`.
//!
//! - [`parse`]: pure reading of Graph answers (exact money, history
//!   messages).
//! - [`Syncer`]: one run of a job for a target (`inlet sync run`, the
//!   scheduler); reads go through the shared [`GraphReader`] (usage pacing).
//! - [`spawn_scheduler`]: runs what is due, every `sync.tick`.
//!
//! Insights: `GET /act_…/insights?level=campaign&time_increment=1` for
//! `date_preset=yesterday` and `today` (Meta restates recent figures, so
//! both are fetched again each run), every page, upserted on (account,
//! campaign, date).
//!
//! Backfill: `GET /{page-id}/conversations?platform=…` page by page, and for
//! each conversation `GET /{conversation-id}/messages` until messages are
//! older than `since`; messages are stored with their original times as
//! history (idempotent on their ids). After each page of conversations the
//! cursor of the next one is kept, so an interrupted run resumes there.

pub mod parse;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Settings;
use crate::envelope::Source;
use crate::graph::{GraphReader, ReadError};
use crate::model::{Channel, NormalizedItem};
use crate::plan::WritePlan;
use crate::store::sync::{RunOutcome, SyncState};
use crate::store::{Store, StoreError};

/// Insight fields requested (numbers come back as strings).
pub const INSIGHT_FIELDS: &str =
    "campaign_id,campaign_name,spend,impressions,clicks,account_currency,date_start,date_stop";
/// Message fields requested by the backfill.
pub const MESSAGE_FIELDS: &str = "id,created_time,from,to,message";

/// A sync job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Ad insights of an account.
    Insights,
    /// Conversation backfill of a page.
    Conversations,
}

impl Job {
    /// The name in `sync_state.job` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Job::Insights => "insights",
            Job::Conversations => "conversations",
        }
    }
}

/// A run that could not complete.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A Graph read failed.
    #[error("{0}")]
    Graph(#[from] ReadError),
    /// The database failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// No access token is configured for the target.
    #[error("no access token configured for {0}")]
    NoToken(String),
    /// Another worker holds the lease of this sync.
    #[error("another worker is running this sync (lease held)")]
    Busy,
    /// The lease expired and another worker took it over.
    #[error("the lease was lost to another worker")]
    LeaseLost,
    /// An answer Meta documents differently.
    #[error("unexpected answer: {0}")]
    Answer(String),
    /// Stopped by shutdown (the cursor is kept).
    #[error("interrupted")]
    Interrupted,
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Rows written (insight rows; messages newly stored).
    pub rows: i64,
    /// Graph pages read.
    pub pages: u64,
    /// Conversations read (backfill).
    pub conversations: u64,
    /// Messages read (backfill), stored or already there.
    pub messages: u64,
}

/// Progress of a run, for a progress bar.
pub type Progress<'a> = &'a (dyn Fn(&RunReport) + Send + Sync);

/// Runs sync jobs.
#[derive(Clone)]
pub struct Syncer {
    settings: Arc<Settings>,
    store: Store,
    graph: GraphReader,
    owner: String,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Syncer {
    /// A syncer; `owner` names this process in leases.
    pub fn new(settings: Arc<Settings>, store: Store, owner: &str) -> Result<Self, reqwest::Error> {
        let graph = GraphReader::new(&settings.graph)?;
        Ok(Self {
            settings,
            store,
            graph,
            owner: format!("{owner}/{}", Uuid::now_v7()),
        })
    }

    /// The Graph client (its usage counters).
    pub fn graph(&self) -> &GraphReader {
        &self.graph
    }

    fn token(&self, target: &str) -> Result<SecretString, SyncError> {
        self.settings
            .sending_app(target)
            .and_then(|a| a.access_token.as_ref())
            .or(self.settings.graph.access_token.as_ref())
            .and_then(|t| t.current())
            .ok_or_else(|| SyncError::NoToken(target.to_string()))
    }

    fn interval(&self, job: Job) -> Duration {
        match job {
            Job::Insights => self.settings.sync.insights_interval,
            Job::Conversations => self.settings.sync.conversations_interval,
        }
    }

    fn lease_until(&self) -> i64 {
        now_ms() + self.settings.sync.lease.as_millis() as i64
    }

    /// Runs `job` for `target` now under its lease (`Busy` when another
    /// worker holds it) and records the outcome. `since` bounds a backfill
    /// (default: `sync.conversations_since` back); `platform` is the
    /// backfill's (`messenger` / `instagram`).
    pub async fn run(
        &self,
        job: Job,
        target: &str,
        platform: &str,
        since: Option<DateTime<Utc>>,
        progress: Progress<'_>,
        shutdown: &CancellationToken,
    ) -> Result<RunReport, SyncError> {
        let sync = self.store.sync();
        let taken = sync
            .take_lease(
                job.as_str(),
                target,
                &self.owner,
                now_ms(),
                self.lease_until(),
            )
            .await?;
        if !taken {
            return Err(SyncError::Busy);
        }
        let started = std::time::Instant::now();
        tracing::info!(job = job.as_str(), target, "sync run started");
        let cursor = sync
            .sync_states()
            .await?
            .into_iter()
            .find(|s| s.job == job.as_str() && s.target == target)
            .and_then(|s| s.cursor);
        let mut report = RunReport::default();
        let result = match job {
            Job::Insights => self.insights(target, &mut report, progress, shutdown).await,
            Job::Conversations => {
                let since = since.unwrap_or_else(|| {
                    Utc::now()
                        - chrono::Duration::from_std(self.settings.sync.conversations_since)
                            .unwrap_or_default()
                });
                self.conversations(
                    target,
                    platform,
                    since,
                    cursor,
                    &mut report,
                    progress,
                    shutdown,
                )
                .await
            }
        };
        let outcome = match &result {
            Ok(()) => RunOutcome {
                error: None,
                rows: report.rows,
                next_run_ms: now_ms() + self.interval(job).as_millis() as i64,
            },
            // A failed run keeps its cursor (the store does) and is retried
            // sooner.
            Err(e) => RunOutcome {
                error: Some(e.to_string()),
                rows: report.rows,
                next_run_ms: now_ms()
                    + self.interval(job).min(Duration::from_secs(300)).as_millis() as i64,
            },
        };
        if !matches!(result, Err(SyncError::LeaseLost)) {
            sync.finish_run(job.as_str(), target, &self.owner, now_ms(), &outcome)
                .await?;
        }
        let outcome_label = if result.is_ok() { "ok" } else { "failed" };
        metrics::counter!("inlet_sync_runs_total", "job" => job.as_str(), "outcome" => outcome_label)
            .increment(1);
        metrics::counter!("inlet_sync_rows_total", "job" => job.as_str())
            .increment(report.rows.max(0) as u64);
        metrics::histogram!("inlet_sync_run_seconds", "job" => job.as_str())
            .record(started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => tracing::info!(
                job = job.as_str(),
                target,
                rows = report.rows,
                "sync run finished"
            ),
            Err(e) => tracing::warn!(job = job.as_str(), target, error = %e, "sync run failed"),
        }
        result.map(|()| report)
    }

    /// Keeps the lease (and the cursor) after a page; stops on shutdown.
    async fn keep(
        &self,
        job: Job,
        target: &str,
        cursor: Option<&str>,
        shutdown: &CancellationToken,
    ) -> Result<(), SyncError> {
        let held = self
            .store
            .sync()
            .renew_lease(
                job.as_str(),
                target,
                &self.owner,
                self.lease_until(),
                cursor,
            )
            .await?;
        if !held {
            return Err(SyncError::LeaseLost);
        }
        if shutdown.is_cancelled() {
            return Err(SyncError::Interrupted);
        }
        Ok(())
    }

    async fn insights(
        &self,
        account: &str,
        report: &mut RunReport,
        progress: Progress<'_>,
        shutdown: &CancellationToken,
    ) -> Result<(), SyncError> {
        let token = self.token(account)?;
        let path = format!("/{account}/insights");
        for preset in ["yesterday", "today"] {
            let query = [
                ("level", "campaign".to_string()),
                ("fields", INSIGHT_FIELDS.to_string()),
                ("date_preset", preset.to_string()),
                ("time_increment", "1".to_string()),
                ("limit", "100".to_string()),
            ];
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .graph
                    .page(&path, &query, after.as_deref(), &token)
                    .await?;
                report.pages += 1;
                let rows = page
                    .data
                    .iter()
                    .map(|v| parse::insight_row(account, v))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| SyncError::Answer(e.to_string()))?;
                report.rows += self.store.sync().upsert_insights(&rows, now_ms()).await? as i64;
                progress(report);
                self.keep(Job::Insights, account, None, shutdown).await?;
                match page.after {
                    Some(a) => after = Some(a),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// The business id of a page's conversations: the Page itself
    /// (Messenger), or its Instagram professional account.
    async fn business_id(
        &self,
        page: &str,
        platform: &str,
        token: &SecretString,
    ) -> Result<String, SyncError> {
        if platform != "instagram" {
            return Ok(page.to_string());
        }
        let v = self
            .graph
            .get(
                &format!("/{page}"),
                &[("fields", "instagram_business_account".to_string())],
                token,
            )
            .await?;
        v.get("instagram_business_account")
            .and_then(|a| a.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                SyncError::Answer(format!(
                    "page {page} has no linked Instagram professional account"
                ))
            })
    }

    #[allow(clippy::too_many_arguments)]
    async fn conversations(
        &self,
        page: &str,
        platform: &str,
        since: DateTime<Utc>,
        resume: Option<String>,
        report: &mut RunReport,
        progress: Progress<'_>,
        shutdown: &CancellationToken,
    ) -> Result<(), SyncError> {
        let token = self.token(page)?;
        let business = self.business_id(page, platform, &token).await?;
        let (channel, source) = if platform == "instagram" {
            (Channel::Instagram, Source::Instagram)
        } else {
            (Channel::Messenger, Source::Facebook)
        };
        let tenant = self
            .settings
            .sending_app(page)
            .map(|a| a.tenant.clone())
            .unwrap_or_else(|| "default".into());
        let list_path = format!("/{page}/conversations");
        let list_query = [
            ("platform", platform.to_string()),
            ("fields", "id,updated_time".to_string()),
            ("limit", "25".to_string()),
        ];
        let mut after = resume;
        loop {
            let list = self
                .graph
                .page(&list_path, &list_query, after.as_deref(), &token)
                .await?;
            report.pages += 1;
            for conv in &list.data {
                let Some(id) = conv.get("id").and_then(Value::as_str) else {
                    return Err(SyncError::Answer("a conversation without id".into()));
                };
                // Conversations come most recent first: one untouched since
                // `since` ends the walk.
                let updated = conv
                    .get("updated_time")
                    .and_then(Value::as_str)
                    .and_then(parse::graph_time);
                if updated.is_some_and(|u| u < since) {
                    return Ok(());
                }
                self.conversation(
                    id, page, &business, channel, source, &tenant, since, report, &token,
                )
                .await?;
                report.conversations += 1;
                progress(report);
            }
            match list.after {
                Some(a) => {
                    // Resume from the next page after an interruption.
                    self.keep(Job::Conversations, page, Some(&a), shutdown)
                        .await?;
                    after = Some(a);
                }
                None => return Ok(()),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn conversation(
        &self,
        id: &str,
        page: &str,
        business: &str,
        channel: Channel,
        source: Source,
        tenant: &str,
        since: DateTime<Utc>,
        report: &mut RunReport,
        token: &SecretString,
    ) -> Result<(), SyncError> {
        let path = format!("/{id}/messages");
        let query = [
            ("fields", MESSAGE_FIELDS.to_string()),
            ("limit", "50".to_string()),
        ];
        let mut after: Option<String> = None;
        loop {
            let msgs = self
                .graph
                .page(&path, &query, after.as_deref(), token)
                .await?;
            report.pages += 1;
            let mut reached_since = false;
            let mut items = Vec::new();
            for v in &msgs.data {
                let Some(m) = parse::history_message(channel, page, business, v) else {
                    continue;
                };
                if m.sent_at < since {
                    reached_since = true;
                    continue;
                }
                items.push(NormalizedItem::Message(m));
            }
            report.messages += items.len() as u64;
            if !items.is_empty() {
                let plan = WritePlan::build_local(tenant, source, Uuid::now_v7(), items);
                let written = self.store.write_local(plan).await?;
                report.rows += written.messages_new as i64;
            }
            match msgs.after {
                Some(a) if !reached_since => after = Some(a),
                _ => return Ok(()),
            }
        }
    }

    /// Every configured sync: (job, target, platform).
    pub fn configured(&self) -> Vec<(Job, String, String)> {
        let s = &self.settings.sync;
        s.ad_accounts
            .iter()
            .map(|a| (Job::Insights, a.clone(), String::new()))
            .chain(
                s.conversation_pages
                    .iter()
                    .map(|p| (Job::Conversations, p.page_id.clone(), p.platform.clone())),
            )
            .collect()
    }

    /// Runs every configured sync that is due at `now_ms` and whose lease
    /// is free; returns how many ran.
    pub async fn run_due(&self, shutdown: &CancellationToken) -> Result<usize, StoreError> {
        let states: Vec<SyncState> = self.store.sync().sync_states().await?;
        let mut ran = 0;
        for (job, target, platform) in self.configured() {
            let due = states
                .iter()
                .find(|s| s.job == job.as_str() && s.target == target)
                .is_none_or(|s| s.next_run_ms <= now_ms());
            if !due || shutdown.is_cancelled() {
                continue;
            }
            match self
                .run(job, &target, &platform, None, &|_| {}, shutdown)
                .await
            {
                Ok(_) => ran += 1,
                Err(SyncError::Busy) => {}
                Err(SyncError::Store(e)) => return Err(e),
                Err(_) => ran += 1,
            }
        }
        Ok(ran)
    }
}

/// Runs the scheduler until `shutdown`: every `sync.tick`, each configured
/// sync that is due runs (under its lease). Nothing when `sync.enabled` is
/// off or nothing is configured.
pub fn spawn_scheduler(
    settings: Arc<Settings>,
    store: Store,
    owner: &str,
    shutdown: CancellationToken,
) -> Option<JoinHandle<()>> {
    if !settings.sync.enabled
        || (settings.sync.ad_accounts.is_empty() && settings.sync.conversation_pages.is_empty())
    {
        return None;
    }
    let syncer = match Syncer::new(settings.clone(), store, owner) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "sync scheduler not started: Graph client");
            return None;
        }
    };
    let tick = settings.sync.tick;
    Some(tokio::spawn(async move {
        let mut streak = crate::backoff::Streak::new(
            "sync scheduler",
            crate::backoff::Backoff::infrastructure(),
        );
        loop {
            match syncer.run_due(&shutdown).await {
                Ok(_) => streak.recovered(),
                Err(e) => {
                    if !streak.failed("reading sync state", &e, &shutdown).await {
                        break;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(tick) => {}
            }
        }
        tracing::info!("sync scheduler stopped");
    }))
}
