//! Who runs lead jobs, with their own concurrency limit
//! (`leads.concurrency`):
//!
//! - [`LeadConsumer`] (queue mode, in every worker): reads
//!   `{prefix}lead.fetch` through the `leads` consumer group
//!   ([`GroupConsumer`]: own pending first, stalled entries reclaimed), runs
//!   a batch concurrently and acknowledges and deletes it once every
//!   outcome is recorded. A batch whose outcome could not be recorded stays
//!   pending and is read again; finished jobs then skip.
//! - [`LocalLeadSink`] (direct mode, in the gateway): the outbox relay
//!   hands it the `lead.fetch` entries; it runs them in-process. Pending
//!   leads whose jobs died with a previous process are resumed at start
//!   (the `pending` rows are the durable record).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::fetch::{JobOutcome, LeadFetcher};
use super::LeadJob;
use crate::backoff::{Backoff, Streak};
use crate::queue::{ConsumerConfig, GroupConsumer, RedisQueue, StreamEntry};
use crate::relay::{LocalSink, SinkError};
use crate::store::{OutboxEntry, StoreError};
use crate::streams::{LEAD_FETCH, LEAD_GROUP};

/// Jobs waiting in a direct-mode sink before the relay is told to hold
/// back (they stay in the outbox meanwhile).
const LOCAL_QUEUE: usize = 10_000;

fn job_of(entry: &StreamEntry) -> Option<LeadJob> {
    let texts: Vec<(String, String)> = entry
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    LeadJob::from_fields(texts.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// Runs one job, retrying while the store cannot record its outcome.
async fn run_until_recorded(
    fetcher: &LeadFetcher,
    job: &LeadJob,
    shutdown: &CancellationToken,
) -> Result<JobOutcome, StoreError> {
    let mut backoff = Backoff::infrastructure();
    loop {
        match fetcher.run_job(job, shutdown).await {
            Ok(outcome) => return Ok(outcome),
            Err(e) if e.is_transient() && !shutdown.is_cancelled() => {
                tracing::warn!(error = %e, lead_id = %job.lead_id, "lead outcome not recorded; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(e),
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The queue-mode lead consumer of one worker.
pub struct LeadConsumer {
    fetcher: Arc<LeadFetcher>,
    queue: RedisQueue,
    config: ConsumerConfig,
    concurrency: usize,
}

impl LeadConsumer {
    /// A consumer named `consumer` in the `leads` group, reading up to
    /// `leads.concurrency` jobs at a time.
    pub fn new(
        fetcher: Arc<LeadFetcher>,
        queue: RedisQueue,
        consumer: &str,
        concurrency: usize,
        block: Duration,
        claim_idle: Duration,
    ) -> Self {
        Self {
            fetcher,
            queue,
            config: ConsumerConfig {
                stream: LEAD_FETCH.into(),
                group: LEAD_GROUP.into(),
                consumer: consumer.to_string(),
                count: concurrency,
                block,
                claim_idle,
            },
            concurrency,
        }
    }

    /// Starts it on its own task.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    /// Consumes until `shutdown`; the batch in progress is finished (or
    /// left pending between retries).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut streak = Streak::new("lead jobs", Backoff::infrastructure());
        let mut consumer = loop {
            match GroupConsumer::connect(&self.queue, self.config.clone()).await {
                Ok(c) => break c,
                Err(e) => {
                    if !streak
                        .failed("creating the leads group", &e, &shutdown)
                        .await
                    {
                        return;
                    }
                }
            }
        };
        streak.recovered();
        tracing::info!(consumer = %self.config.consumer, "lead consumer running");
        while !shutdown.is_cancelled() {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                b = consumer.next_batch() => b,
            };
            let batch = match batch {
                Ok(b) => {
                    streak.recovered();
                    b
                }
                Err(e) => {
                    streak.failed("reading lead jobs", &e, &shutdown).await;
                    continue;
                }
            };
            if batch.is_empty() {
                continue;
            }
            let jobs: Vec<Option<LeadJob>> = batch.entries().iter().map(job_of).collect();
            let fetcher = &self.fetcher;
            let shutdown_ref = &shutdown;
            let results: Vec<Result<JobOutcome, StoreError>> = futures_util::stream::iter(jobs)
                .map(|job| async move {
                    match job {
                        Some(job) => run_until_recorded(fetcher, &job, shutdown_ref).await,
                        None => {
                            tracing::warn!("unreadable lead job dropped");
                            Ok(JobOutcome::Skipped)
                        }
                    }
                })
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
            let complete = results
                .iter()
                .all(|r| matches!(r, Ok(o) if *o != JobOutcome::Interrupted));
            if complete {
                if let Err(e) = batch.ack_delete().await {
                    tracing::warn!(error = %e, "acknowledging lead jobs failed; they will be read again");
                }
            }
            // Otherwise the batch is dropped unacknowledged: its entries
            // stay pending for this consumer and are read again first.
        }
        tracing::info!(consumer = %self.config.consumer, "lead consumer stopped");
    }
}

/// Direct mode: runs the `lead.fetch` outbox entries in-process, at most
/// `leads.concurrency` at once, each lead once at a time.
pub struct LocalLeadSink {
    tx: mpsc::Sender<LeadJob>,
}

impl LocalLeadSink {
    /// Starts the runner; with `resume`, first queues every lead still
    /// pending in the store (jobs a previous process held in memory).
    pub fn start(
        fetcher: Arc<LeadFetcher>,
        concurrency: usize,
        resume: bool,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(LOCAL_QUEUE);
        let sink = Arc::new(Self { tx: tx.clone() });
        tokio::spawn(run_local(
            fetcher.clone(),
            rx,
            concurrency,
            shutdown.clone(),
        ));
        if resume {
            tokio::spawn(resume_pending(fetcher, tx, shutdown));
        }
        sink
    }
}

async fn resume_pending(
    fetcher: Arc<LeadFetcher>,
    tx: mpsc::Sender<LeadJob>,
    shutdown: CancellationToken,
) {
    let mut streak = Streak::new("resuming lead jobs", Backoff::infrastructure());
    let pending = loop {
        match fetcher
            .store()
            .leads()
            .pending_leads(LOCAL_QUEUE as i64)
            .await
        {
            Ok(p) => break p,
            Err(e) => {
                if !streak.failed("reading pending leads", &e, &shutdown).await {
                    return;
                }
            }
        }
    };
    if !pending.is_empty() {
        tracing::info!(count = pending.len(), "resuming pending lead fetches");
    }
    for p in pending {
        let job = LeadJob {
            lead_id: p.lead_id,
            page_id: p.page_id,
            tenant: p.tenant,
        };
        if tx.send(job).await.is_err() {
            return;
        }
    }
}

async fn run_local(
    fetcher: Arc<LeadFetcher>,
    mut rx: mpsc::Receiver<LeadJob>,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    let in_flight: Arc<Mutex<HashSet<(String, String)>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let job = tokio::select! {
            _ = shutdown.cancelled() => break,
            j = rx.recv() => match j { Some(j) => j, None => break },
        };
        let key = (job.tenant.clone(), job.lead_id.clone());
        if !lock(&in_flight).insert(key.clone()) {
            continue; // the same lead is being fetched already
        }
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (fetcher, in_flight, shutdown) = (fetcher.clone(), in_flight.clone(), shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = run_until_recorded(&fetcher, &job, &shutdown).await {
                tracing::warn!(error = %e, lead_id = %job.lead_id, "lead job not recorded; it stays pending");
            }
            lock(&in_flight).remove(&key);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    // Fetches in flight finish (or stop between retries).
    while tasks.join_next().await.is_some() {}
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalSink for LocalLeadSink {
    fn stream(&self) -> &'static str {
        LEAD_FETCH
    }

    fn deliver(&self, entries: Vec<OutboxEntry>) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            for entry in entries {
                let Some(job) = LeadJob::from_fields(
                    entry.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                ) else {
                    tracing::warn!(outbox_id = entry.id, "unreadable lead job dropped");
                    continue;
                };
                // A full queue leaves the entries in the outbox for later;
                // jobs already handed over run once (in-flight and final
                // states skip repeats).
                self.tx
                    .try_send(job)
                    .map_err(|e| SinkError::new(format!("lead queue: {e}")))?;
            }
            Ok(())
        })
    }
}
