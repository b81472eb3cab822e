//! One lead job from start to end ([`LeadFetcher::run_job`]):
//!
//! 1. the lead's row: already `fetched`, `failed` or `dead_lettered` → nothing
//!    to do (a redelivered job never fetches twice);
//! 2. the Page's token (`settings.sending_app(page_id)`);
//! 3. `GET /{leadgen_id}?fields=…` through the shared read client
//!    ([`GraphReader`]: usage pacing, classified errors);
//! 4. the answer read ([`super::parse_lead`]) and recorded `fetched`, with
//!    the contact link and `lead.after.create` in the same transaction.
//!
//! A permission, token or request error (Graph codes 10, 190, 200–299, 100,
//! …: not transient) is recorded `failed` with the Graph error as JSON,
//! which `inlet status` and `inlet leads show` print. Transient errors
//! (network, Graph 5xx, throttles) are retried with full-jitter backoff up to
//! `leads.max_attempts`, then recorded `dead_lettered`; `inlet leads
//! refetch` queues it again. Logs and audit lines carry ids and error codes,
//! never the lead's answers.

use std::sync::Arc;
use std::time::Instant;

use secrecy::SecretString;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{is_graph_id, parse_lead, LeadJob, FIELDS};
use crate::audit::{Audit, AuditRecord};
use crate::backoff::Backoff;
use crate::config::Settings;
use crate::graph::{GraphReader, ReadError};
use crate::store::leads::{state, FetchedLead, LeadOutcome};
use crate::store::{Store, StoreError};

/// Why one attempt did not fetch the lead.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The Graph call failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// No access token is configured for the Page.
    #[error("no access token configured for page {0}")]
    NoToken(String),
}

impl AttemptError {
    /// Whether a later attempt may succeed (a token may be configured
    /// meanwhile: a missing one is retried, as for media).
    pub fn is_transient(&self) -> bool {
        match self {
            AttemptError::Read(e) => e.is_transient(),
            AttemptError::NoToken(_) => true,
        }
    }

    /// Short reason (audit, metrics): the Graph error class, or what failed.
    pub fn reason(&self) -> String {
        match self {
            AttemptError::Read(ReadError::Graph(g)) => g.class().as_str().to_string(),
            AttemptError::Read(ReadError::Transport(_)) => "transport".into(),
            AttemptError::Read(ReadError::Answer(_)) => "unreadable_answer".into(),
            AttemptError::NoToken(_) => "no_access_token".into(),
        }
    }

    /// The error as stored on the lead: the Graph error's fields
    /// (`http_status`, `code`, `subcode`, `message`, `error_type`,
    /// `fbtrace_id`) and its `class`, or a reason and message.
    pub fn to_json(&self) -> Value {
        match self {
            AttemptError::Read(ReadError::Graph(g)) => {
                let mut v = serde_json::to_value(g.as_ref()).unwrap_or_else(|_| json!({}));
                if let Some(o) = v.as_object_mut() {
                    o.insert("class".into(), json!(g.class().as_str()));
                    o.insert("reason".into(), json!(self.reason()));
                }
                v
            }
            other => json!({"reason": other.reason(), "message": other.to_string()}),
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// Fetched and recorded.
    Fetched,
    /// Already final (redelivery) or no such lead: nothing done.
    Skipped,
    /// Recorded as failed (the Graph error on the row).
    Failed,
    /// Retries used up: recorded as dead-lettered.
    DeadLettered,
    /// Shut down between retries: the job stays pending (redelivered).
    Interrupted,
}

impl JobOutcome {
    /// Metric label and audit outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Fetched => "fetched",
            JobOutcome::Skipped => "skipped",
            JobOutcome::Failed => "failed",
            JobOutcome::DeadLettered => "dead_lettered",
            JobOutcome::Interrupted => "interrupted",
        }
    }
}

/// Runs lead jobs: Graph, read, record.
pub struct LeadFetcher {
    store: Store,
    reader: GraphReader,
    settings: Arc<Settings>,
    audit: Option<Audit>,
}

/// The Graph client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("lead client: {0}")]
pub struct FetcherError(#[from] reqwest::Error);

impl LeadFetcher {
    /// A fetcher recording in `store`.
    pub fn new(
        store: Store,
        settings: Arc<Settings>,
        audit: Option<Audit>,
    ) -> Result<Self, FetcherError> {
        Ok(Self {
            reader: GraphReader::new(&settings.graph)?,
            store,
            settings,
            audit,
        })
    }

    /// The store it records in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn token_for(&self, page_id: &str) -> Option<SecretString> {
        self.settings
            .sending_app(page_id)
            .and_then(|app| app.access_token.as_ref())
            .and_then(|t| t.current())
    }

    /// Runs one job to its end (see the module doc). An error is the
    /// store's: the outcome could not be recorded, the job must be retried.
    pub async fn run_job(
        &self,
        job: &LeadJob,
        shutdown: &CancellationToken,
    ) -> Result<JobOutcome, StoreError> {
        let leads = self.store.leads();
        let Some(lead) = leads.lead(&job.tenant, &job.lead_id).await? else {
            tracing::warn!(lead_id = %job.lead_id, "lead job for an unknown lead");
            return Ok(self.finish(job, JobOutcome::Skipped, None));
        };
        if state::FINAL.contains(&lead.status.as_str()) {
            return Ok(self.finish(job, JobOutcome::Skipped, None));
        }
        if !is_graph_id(&lead.lead_id) {
            let error = json!({"reason": "not_a_graph_id", "message": "the leadgen webhook carried no leadgen_id"});
            let changed = leads
                .record_lead(&job.tenant, &job.lead_id, LeadOutcome::Failed(error))
                .await?;
            let outcome = if changed {
                JobOutcome::Failed
            } else {
                JobOutcome::Skipped
            };
            return Ok(self.finish(job, outcome, Some("not_a_graph_id".into())));
        }
        let cfg = &self.settings.leads;
        let mut backoff = Backoff::new(cfg.backoff_base, cfg.backoff_cap);
        let mut attempts = u32::try_from(lead.attempts).unwrap_or(0);
        loop {
            let started = Instant::now();
            let result = self.attempt(&lead.lead_id, &lead.page_id).await;
            metrics::histogram!("inlet_lead_fetch_seconds").record(started.elapsed().as_secs_f64());
            attempts += 1;
            let (outcome, record, reason) = match result {
                Ok(fetched) => (
                    JobOutcome::Fetched,
                    LeadOutcome::Fetched(Box::new(fetched)),
                    None,
                ),
                Err(e) if !e.is_transient() => (
                    JobOutcome::Failed,
                    LeadOutcome::Failed(e.to_json()),
                    Some(e.reason()),
                ),
                Err(e) if attempts >= cfg.max_attempts => (
                    JobOutcome::DeadLettered,
                    LeadOutcome::DeadLettered(e.to_json()),
                    Some(e.reason()),
                ),
                Err(e) => {
                    metrics::counter!("inlet_lead_jobs_total", "outcome" => "retried").increment(1);
                    tracing::info!(lead_id = %job.lead_id, attempts, reason = %e.reason(), "lead fetch failed; retrying");
                    leads
                        .record_lead(
                            &job.tenant,
                            &job.lead_id,
                            LeadOutcome::Retrying(e.to_json()),
                        )
                        .await?;
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            return Ok(self.finish(job, JobOutcome::Interrupted, None));
                        }
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                    continue;
                }
            };
            let changed = leads.record_lead(&job.tenant, &job.lead_id, record).await?;
            let outcome = if changed {
                outcome
            } else {
                JobOutcome::Skipped
            };
            return Ok(self.finish(job, outcome, reason));
        }
    }

    fn finish(&self, job: &LeadJob, outcome: JobOutcome, reason: Option<String>) -> JobOutcome {
        metrics::counter!("inlet_lead_jobs_total", "outcome" => outcome.as_str()).increment(1);
        if let Some(audit) = &self.audit {
            // Ids and the error class only: never the lead's answers.
            let mut record = AuditRecord::new("lead")
                .origin("facebook", &job.tenant)
                .outcome(outcome.as_str())
                .with("lead_id", job.lead_id.clone())
                .with("page_id", job.page_id.clone());
            if let Some(r) = reason {
                record = record.reason(r);
            }
            audit.write(record);
        }
        outcome
    }

    /// One attempt: token, `GET /{leadgen_id}`, read.
    async fn attempt(&self, lead_id: &str, page_id: &str) -> Result<FetchedLead, AttemptError> {
        let token = self
            .token_for(page_id)
            .ok_or_else(|| AttemptError::NoToken(page_id.to_string()))?;
        let answer = self
            .reader
            .get(
                &format!("/{lead_id}"),
                &[("fields", FIELDS.to_string())],
                &token,
            )
            .await?;
        Ok(parse_lead(&answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::GraphError;

    #[test]
    fn permission_errors_are_stored_with_their_class_and_not_retried() {
        let e = AttemptError::Read(ReadError::Graph(Box::new(GraphError::from_body(
            403,
            br#"{"error":{"message":"(#200) Requires leads_retrieval permission","type":"OAuthException","code":200,"fbtrace_id":"Axyz"}}"#,
        ))));
        assert!(!e.is_transient());
        let v = e.to_json();
        assert_eq!(v["code"], 200);
        assert_eq!(v["http_status"], 403);
        assert_eq!(v["class"], "auth_halt");
        assert_eq!(v["error_type"], "OAuthException");
        assert_eq!(v["fbtrace_id"], "Axyz");
        let server = AttemptError::Read(ReadError::Graph(Box::new(GraphError::from_body(
            500,
            br#"{"error":{"message":"An unknown error occurred","code":1}}"#,
        ))));
        assert!(server.is_transient());
        assert_eq!(server.reason(), "transient");
        let none = AttemptError::NoToken("3".into());
        assert!(none.is_transient());
        assert_eq!(none.to_json()["reason"], "no_access_token");
    }
}
