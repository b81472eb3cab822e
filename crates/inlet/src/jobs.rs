//! Who runs background jobs of one kind (media downloads, lead fetches),
//! each kind with its own concurrency limit so slow jobs never hold up the
//! text pipeline. A kind is a [`JobRunner`]: its stream and group, how a
//! job is read from its fields, and how one runs and records its outcome.
//!
//! - [`JobConsumer`] (queue mode, in every worker): reads the kind's stream
//!   through its consumer group ([`GroupConsumer`]: own pending first,
//!   stalled entries reclaimed, a heartbeat while jobs run), runs a batch
//!   concurrently and acknowledges and deletes it once every outcome is
//!   recorded (the stream's length is the backlog). A batch whose outcome
//!   could not be recorded stays pending and is read again; finished jobs
//!   then skip.
//! - [`LocalJobSink`] (direct mode, in the gateway): the outbox relay hands
//!   it the kind's entries; it runs them in-process, each job once at a
//!   time. Jobs that died with a previous process are resumed at start
//!   (the store's pending rows are the durable record).

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, Streak};
use crate::queue::{ConsumerConfig, GroupConsumer, RedisQueue, StreamEntry};
use crate::relay::{LocalSink, SinkError};
use crate::store::{OutboxEntry, StoreError};

/// Jobs waiting in a direct-mode sink before the relay is told to hold
/// back (they stay in the outbox meanwhile).
pub const LOCAL_QUEUE: usize = 10_000;

/// One kind of job.
pub trait JobRunner: Send + Sync + 'static {
    /// A job, as read from its stream or outbox fields.
    type Job: Send + Sync + 'static;
    /// What makes two jobs the same (run once at a time in direct mode).
    type Key: Eq + Hash + Clone + Debug + Send + Sync + 'static;
    /// The stream (queue mode) and outbox stream (direct mode).
    const STREAM: &'static str;
    /// The consumer group.
    const GROUP: &'static str;
    /// What the jobs are, for logs (`media`, `lead`).
    const WHAT: &'static str;
    /// Reads a job from its fields; `None` when unreadable.
    fn parse<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Self::Job>;
    /// The job's identity.
    fn key(job: &Self::Job) -> Self::Key;
    /// Runs one job to a recorded outcome: `Ok(true)` when final, `Ok(false)`
    /// when interrupted by shutdown (the job stays pending).
    fn run<'a>(
        &'a self,
        job: &'a Self::Job,
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Jobs still pending in the store (direct mode resumes them).
    fn pending(&self, limit: i64) -> BoxFuture<'_, Result<Vec<Self::Job>, StoreError>>;
}

fn job_of<R: JobRunner>(entry: &StreamEntry) -> Option<R::Job> {
    let texts: Vec<(String, String)> = entry
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    R::parse(texts.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// Runs one job, retrying while the store cannot record its outcome.
async fn run_until_recorded<R: JobRunner>(
    runner: &R,
    job: &R::Job,
    shutdown: &CancellationToken,
) -> Result<bool, StoreError> {
    let mut backoff = Backoff::infrastructure();
    loop {
        match runner.run(job, shutdown).await {
            Ok(done) => return Ok(done),
            Err(e) if e.is_transient() && !shutdown.is_cancelled() => {
                tracing::warn!(error = %e, job = ?R::key(job), "{} outcome not recorded; retrying", R::WHAT);
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(e),
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The queue-mode consumer of one kind of job in one worker.
pub struct JobConsumer<R: JobRunner> {
    runner: Arc<R>,
    queue: RedisQueue,
    config: ConsumerConfig,
    concurrency: usize,
}

impl<R: JobRunner> JobConsumer<R> {
    /// A consumer named `consumer` in the kind's group, reading up to
    /// `concurrency` jobs at a time.
    pub fn new(
        runner: Arc<R>,
        queue: RedisQueue,
        consumer: &str,
        concurrency: usize,
        block: Duration,
        claim_idle: Duration,
    ) -> Self {
        Self {
            runner,
            queue,
            config: ConsumerConfig {
                stream: R::STREAM.into(),
                group: R::GROUP.into(),
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
        let mut streak = Streak::new(R::WHAT, Backoff::infrastructure());
        let mut consumer = loop {
            match GroupConsumer::connect(&self.queue, self.config.clone()).await {
                Ok(c) => break c,
                Err(e) => {
                    if !streak
                        .failed("creating the consumer group", &e, &shutdown)
                        .await
                    {
                        return;
                    }
                }
            }
        };
        streak.recovered();
        tracing::info!(consumer = %self.config.consumer, "{} consumer running", R::WHAT);
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
                    streak.failed("reading jobs", &e, &shutdown).await;
                    continue;
                }
            };
            if batch.is_empty() {
                continue;
            }
            let jobs: Vec<Option<R::Job>> = batch.entries().iter().map(job_of::<R>).collect();
            let runner = &*self.runner;
            let shutdown_ref = &shutdown;
            let results: Vec<Result<bool, StoreError>> = futures_util::stream::iter(jobs)
                .map(|job| async move {
                    match job {
                        Some(job) => run_until_recorded(runner, &job, shutdown_ref).await,
                        None => {
                            tracing::warn!("unreadable {} job dropped", R::WHAT);
                            Ok(true)
                        }
                    }
                })
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
            if results.iter().all(|r| matches!(r, Ok(true))) {
                if let Err(e) = batch.ack_delete().await {
                    tracing::warn!(error = %e, "acknowledging {} jobs failed; they will be read again", R::WHAT);
                }
            }
            // Otherwise the batch is dropped unacknowledged: its entries
            // stay pending for this consumer and are read again first.
        }
        tracing::info!(consumer = %self.config.consumer, "{} consumer stopped", R::WHAT);
    }
}

/// Direct mode: runs the kind's outbox entries in-process, at most
/// `concurrency` at once, each job once at a time.
pub struct LocalJobSink<R: JobRunner> {
    tx: mpsc::Sender<R::Job>,
}

impl<R: JobRunner> LocalJobSink<R> {
    /// Starts the runner; with `resume`, first queues every job still
    /// pending in the store (jobs a previous process held in memory).
    pub fn start(
        runner: Arc<R>,
        concurrency: usize,
        resume: bool,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(LOCAL_QUEUE);
        let sink = Arc::new(Self { tx: tx.clone() });
        tokio::spawn(run_local(runner.clone(), rx, concurrency, shutdown.clone()));
        if resume {
            tokio::spawn(resume_pending(runner, tx, shutdown));
        }
        sink
    }
}

async fn resume_pending<R: JobRunner>(
    runner: Arc<R>,
    tx: mpsc::Sender<R::Job>,
    shutdown: CancellationToken,
) {
    let mut streak = Streak::new(R::WHAT, Backoff::infrastructure());
    let pending = loop {
        match runner.pending(LOCAL_QUEUE as i64).await {
            Ok(p) => break p,
            Err(e) => {
                if !streak.failed("reading pending jobs", &e, &shutdown).await {
                    return;
                }
            }
        }
    };
    if !pending.is_empty() {
        tracing::info!(count = pending.len(), "resuming pending {} jobs", R::WHAT);
    }
    for job in pending {
        if tx.send(job).await.is_err() {
            return;
        }
    }
}

async fn run_local<R: JobRunner>(
    runner: Arc<R>,
    mut rx: mpsc::Receiver<R::Job>,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    let in_flight: Arc<Mutex<HashSet<R::Key>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let job = tokio::select! {
            _ = shutdown.cancelled() => break,
            j = rx.recv() => match j { Some(j) => j, None => break },
        };
        let key = R::key(&job);
        if !lock(&in_flight).insert(key.clone()) {
            continue; // the same job runs already
        }
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (runner, in_flight, shutdown) = (runner.clone(), in_flight.clone(), shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = run_until_recorded(&*runner, &job, &shutdown).await {
                tracing::warn!(error = %e, job = ?key, "{} job not recorded; it stays pending", R::WHAT);
            }
            lock(&in_flight).remove(&key);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    // Jobs in flight finish (or stop between retries).
    while tasks.join_next().await.is_some() {}
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<R: JobRunner> LocalSink for LocalJobSink<R> {
    fn stream(&self) -> &'static str {
        R::STREAM
    }

    fn deliver(&self, entries: Vec<OutboxEntry>) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            for entry in entries {
                let Some(job) =
                    R::parse(entry.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                else {
                    tracing::warn!(outbox_id = entry.id, "unreadable {} job dropped", R::WHAT);
                    continue;
                };
                // A full queue leaves the entries in the outbox for later;
                // jobs already handed over run once (in-flight and final
                // states skip repeats).
                self.tx
                    .try_send(job)
                    .map_err(|e| SinkError::new(format!("{} queue: {e}", R::WHAT)))?;
            }
            Ok(())
        })
    }
}
