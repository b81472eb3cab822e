//! The queue-mode consumer: reads `{prefix}incoming.raw` through the
//! `workers` consumer group in batches, runs the [`Pipeline`], dead-letters
//! what cannot be processed and acknowledges entries only after their fate is
//! durable (stored, or in the DLQ).
//!
//! Several workers share the group. Entries left pending by a crashed worker
//! are reclaimed with `XAUTOCLAIM` once idle for `claim_idle`; on start a
//! worker first re-reads its own pending entries. Redis or store outages back
//! off exponentially instead of spinning, and a vanished group is recreated
//! (see [`crate::queue`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditRecord;
use crate::config::Settings;
use crate::envelope::RawEvent;
use crate::pipeline::{OnExhausted, Pipeline, RetryPolicy};
use crate::queue::{DeadLetter, QueueError, RedisQueue, StreamEntry, INCOMING_RAW, WORKER_GROUP};

/// The default consumer name: host name and process id.
pub fn default_consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// A consumer of the raw stream.
pub struct Worker {
    queue: RedisQueue,
    pipeline: Pipeline,
    policy: RetryPolicy,
    consumer: String,
    batch_size: usize,
    block: Duration,
    claim_idle: Duration,
    committed: Arc<Notify>,
}

impl Worker {
    /// A worker over `queue` and `pipeline` configured by `settings`.
    pub fn new(
        settings: &Settings,
        queue: RedisQueue,
        pipeline: Pipeline,
        committed: Arc<Notify>,
    ) -> Self {
        Self {
            queue,
            pipeline,
            policy: RetryPolicy::from_settings(&settings.worker),
            consumer: settings
                .worker
                .consumer_name
                .clone()
                .unwrap_or_else(default_consumer_name),
            batch_size: settings.worker.batch_size,
            block: settings.worker.block,
            claim_idle: settings.worker.claim_idle,
            committed,
        }
    }

    /// The same worker under another consumer name (the extra consumer
    /// loops of one process, see `worker.concurrency`).
    pub fn named(mut self, consumer: String) -> Self {
        self.consumer = consumer;
        self
    }

    /// Consumer name in the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Consumes until `shutdown`; the batch in progress is finished and
    /// acknowledged before returning.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new();
        while !shutdown.is_cancelled() {
            let ready = match self.queue.with_own_reader().await {
                Ok(q) => {
                    self.queue = q;
                    self.queue.ensure_group(INCOMING_RAW, WORKER_GROUP).await
                }
                Err(e) => Err(e),
            };
            match ready {
                Ok(()) => break,
                Err(e) => {
                    backoff.failed("creating the consumer group", &e);
                    backoff.sleep(&shutdown).await;
                }
            }
        }
        // Entries this consumer name had in flight before a restart.
        let mut own_pending = true;
        let mut last_claim = Instant::now() - self.claim_idle;
        while !shutdown.is_cancelled() {
            let read = if own_pending {
                self.read_own_pending().await
            } else if last_claim.elapsed() >= self.claim_idle / 2 {
                last_claim = Instant::now();
                match self
                    .queue
                    .autoclaim(
                        INCOMING_RAW,
                        WORKER_GROUP,
                        &self.consumer,
                        self.claim_idle,
                        self.batch_size,
                    )
                    .await
                {
                    Ok(entries) if !entries.is_empty() => {
                        tracing::info!(
                            count = entries.len(),
                            "reclaimed entries of a stalled consumer"
                        );
                        metrics::counter!("inlet_worker_reclaimed_total")
                            .increment(entries.len() as u64);
                        Ok(entries)
                    }
                    Ok(_) => self.read_new().await,
                    Err(e) => Err(e),
                }
            } else {
                self.read_new().await
            };
            match read {
                Ok(entries) => {
                    backoff.recovered();
                    if own_pending && entries.len() < self.batch_size {
                        own_pending = false;
                    }
                    if entries.is_empty() {
                        continue;
                    }
                    if let Err(e) = self.handle(entries).await {
                        // Not acknowledged: the entries stay pending and are
                        // re-read (own pending) after the backoff.
                        backoff.failed("finishing a batch", &e);
                        own_pending = true;
                        backoff.sleep(&shutdown).await;
                    }
                }
                Err(e) => {
                    backoff.failed("reading the stream", &e);
                    backoff.sleep(&shutdown).await;
                }
            }
        }
        tracing::info!(consumer = %self.consumer, "worker stopped");
    }

    async fn read_new(&self) -> Result<Vec<StreamEntry>, QueueError> {
        self.queue
            .read_group(
                INCOMING_RAW,
                WORKER_GROUP,
                &self.consumer,
                self.batch_size,
                self.block,
            )
            .await
    }

    async fn read_own_pending(&self) -> Result<Vec<StreamEntry>, QueueError> {
        self.queue
            .read_pending_own(INCOMING_RAW, WORKER_GROUP, &self.consumer, self.batch_size)
            .await
    }

    /// Processes one batch of entries and acknowledges them. Errors only
    /// when the outcome could not be made durable (DLQ write or ack failed).
    pub async fn handle(&self, entries: Vec<StreamEntry>) -> Result<(), QueueError> {
        let started = Instant::now();
        let mut ids = Vec::with_capacity(entries.len());
        let mut events = Vec::with_capacity(entries.len());
        let mut dead: Vec<DeadLetter> = Vec::new();
        let mut lines = Vec::with_capacity(entries.len());
        for entry in entries {
            ids.push(entry.id.clone());
            match RawEvent::from_fields(entry.pairs()) {
                Ok(event) => {
                    lines.push(
                        AuditRecord::new("dequeued")
                            .trace(event.trace_id)
                            .origin(event.source.as_str(), &event.tenant)
                            .with("stream_id", entry.id.as_str())
                            .with("consumer", self.consumer.as_str())
                            .with(
                                "queue_ms",
                                (chrono::Utc::now() - event.received_at).num_milliseconds(),
                            ),
                    );
                    events.push(event);
                }
                Err(e) => {
                    // An entry not written by a gateway: keep what it has.
                    let mut event = RawEvent::new(
                        crate::envelope::Source::Whatsapp,
                        entry.text("tenant").unwrap_or_else(|| "unknown".into()),
                        crate::queue::entry_body(&entry).unwrap_or_default(),
                    );
                    event
                        .headers
                        .push(("x-inlet-stream-id".into(), entry.id.clone()));
                    dead.push(
                        self.pipeline
                            .letter(event, "malformed_entry", e.to_string(), 1),
                    );
                }
            }
        }
        self.pipeline.audit().write_all(lines);
        let count = events.len();
        // Retries can outlast the reclaim idle time: the batch's entries are
        // kept fresh meanwhile so no other consumer takes them over.
        let outcome = self
            .queue
            .while_touching(
                INCOMING_RAW,
                WORKER_GROUP,
                &self.consumer,
                self.claim_idle,
                &ids,
                self.pipeline
                    .process(events, &self.policy, OnExhausted::DeadLetter),
            )
            .await;
        dead.extend(outcome.dead);
        for letter in &dead {
            self.queue.dead_letter(letter).await?;
        }
        self.queue
            .ack_delete(INCOMING_RAW, WORKER_GROUP, &ids)
            .await?;
        if !outcome.stored.is_empty() {
            self.committed.notify_one();
        }
        metrics::counter!("inlet_worker_events_total", "outcome" => "stored")
            .increment(outcome.stored.len() as u64);
        metrics::counter!("inlet_worker_events_total", "outcome" => "dead_lettered")
            .increment(dead.len() as u64);
        metrics::histogram!("inlet_worker_batch_seconds").record(started.elapsed().as_secs_f64());
        tracing::debug!(
            count,
            stored = outcome.stored.len(),
            dead = dead.len(),
            "batch done"
        );
        Ok(())
    }
}

/// Exponential backoff for queue errors, logging once per failure streak.
struct Backoff {
    delay: Duration,
    failing_since: Option<Instant>,
}

impl Backoff {
    fn new() -> Self {
        Self {
            delay: Duration::from_millis(100),
            failing_since: None,
        }
    }

    fn failed(&mut self, what: &str, e: &dyn std::fmt::Display) {
        metrics::counter!("inlet_worker_queue_errors_total").increment(1);
        if self.failing_since.is_none() {
            tracing::error!(error = %e, "{what} failed; backing off");
            self.failing_since = Some(Instant::now());
        } else {
            tracing::debug!(error = %e, delay = ?self.delay, "{what} still failing");
        }
    }

    fn recovered(&mut self) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(after = ?since.elapsed(), "queue recovered");
        }
        self.delay = Duration::from_millis(100);
    }

    async fn sleep(&mut self, shutdown: &CancellationToken) {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(self.delay) => {}
        }
        self.delay = (self.delay * 2).min(Duration::from_secs(5));
    }
}
