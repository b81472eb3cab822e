//! Who runs lead jobs (`leads.concurrency` at a time): [`LeadConsumer`] in
//! every worker (the `leads` group on `{prefix}lead.fetch`) and
//! [`LocalLeadSink`] in a direct-mode gateway, both the shared job runners
//! of [`crate::jobs`] driving a [`LeadFetcher`]. Pending leads whose jobs
//! died with a previous process are resumed at start (the `pending` rows
//! are the durable record).

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::fetch::{JobOutcome, LeadFetcher};
use super::LeadJob;
use crate::jobs::{JobConsumer, JobRunner, LocalJobSink};
use crate::store::StoreError;
use crate::streams::{LEAD_FETCH, LEAD_GROUP};

/// The queue-mode lead consumer of one worker.
pub type LeadConsumer = JobConsumer<LeadFetcher>;

/// Direct mode: runs the `lead.fetch` outbox entries in-process, at most
/// `leads.concurrency` at once, each lead once at a time.
pub type LocalLeadSink = LocalJobSink<LeadFetcher>;

impl JobRunner for LeadFetcher {
    type Job = LeadJob;
    type Key = (String, String);
    const STREAM: &'static str = LEAD_FETCH;
    const GROUP: &'static str = LEAD_GROUP;
    const WHAT: &'static str = "lead";

    fn parse<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<LeadJob> {
        LeadJob::from_fields(fields)
    }

    fn key(job: &LeadJob) -> (String, String) {
        (job.tenant.clone(), job.lead_id.clone())
    }

    fn run<'a>(
        &'a self,
        job: &'a LeadJob,
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move { Ok(self.run_job(job, shutdown).await? != JobOutcome::Interrupted) })
    }

    fn pending(&self, limit: i64) -> BoxFuture<'_, Result<Vec<LeadJob>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .store()
                .leads()
                .pending_leads(limit)
                .await?
                .into_iter()
                .map(|p| LeadJob {
                    lead_id: p.lead_id,
                    page_id: p.page_id,
                    tenant: p.tenant,
                })
                .collect())
        })
    }
}
