//! The queue-mode consumer: reads the `incoming.raw` shards (one stream, or
//! `redis.raw_shards` of them) through the `workers` consumer group of each
//! in batches, runs the [`Pipeline`], dead-letters
//! what cannot be processed and acknowledges entries only after their fate is
//! durable (stored, or in the DLQ).
//!
//! Several workers share the group. Reading, reclaiming what a crashed
//! worker left pending, keeping a batch fresh and recreating a vanished group
//! are the shared protocol of [`crate::queue::consumer`]; Redis or store
//! outages back off ([`crate::backoff`]) instead of spinning.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditRecord;
use crate::backoff::{Backoff, Streak};
use crate::config::Settings;
use crate::dlq::letter::DeadLetter;
use crate::envelope::RawEvent;
use crate::pipeline::{OnExhausted, Pipeline, RetryPolicy};
use crate::queue::{Batch, ConsumerConfig, GroupConsumer, QueueError, RedisQueue};
use crate::store::StoreError;

/// A batch was not finished; its entries stay pending.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The store stayed unavailable through the batch's attempts.
    #[error("store unavailable: {0}")]
    StoreUnavailable(#[source] StoreError),
    /// Redis failed (DLQ write, ack).
    #[error(transparent)]
    Queue(#[from] QueueError),
}
use crate::streams::{INCOMING_RAW, WORKER_GROUP};

/// How often the worker looks for raw shards it does not consume yet.
pub const SHARD_REFRESH: Duration = Duration::from_secs(5);

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

/// A consumer of one raw shard stream.
pub struct Worker {
    queue: RedisQueue,
    stream: String,
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
            stream: INCOMING_RAW.to_string(),
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

    /// The same worker on another raw shard stream.
    pub fn on_stream(mut self, stream: String) -> Self {
        self.stream = stream;
        self
    }

    /// Consumer name in the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Consumes until `shutdown`; the batch in progress is finished and
    /// acknowledged before returning.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut streak = Streak::new("worker", Backoff::infrastructure());
        let config = ConsumerConfig {
            stream: self.stream.clone(),
            group: WORKER_GROUP.into(),
            consumer: self.consumer.clone(),
            count: self.batch_size,
            block: self.block,
            claim_idle: self.claim_idle,
        };
        let mut consumer = loop {
            if shutdown.is_cancelled() {
                return;
            }
            match GroupConsumer::connect(&self.queue, config.clone()).await {
                Ok(c) => break c,
                Err(e) => {
                    metrics::counter!("inlet_worker_queue_errors_total").increment(1);
                    streak
                        .failed("creating the consumer group", &e, &shutdown)
                        .await;
                }
            }
        };
        streak.recovered();
        while !shutdown.is_cancelled() {
            match consumer.next_batch().await {
                Ok(batch) if batch.is_empty() => streak.recovered(),
                Ok(batch) => {
                    if let Err(e) = self.handle(batch).await {
                        // Not acknowledged: the entries stay pending and are
                        // re-read (own pending) after the backoff.
                        match &e {
                            HandleError::StoreUnavailable(_) => {
                                metrics::counter!("inlet_worker_store_outages_total").increment(1)
                            }
                            HandleError::Queue(_) => {
                                metrics::counter!("inlet_worker_queue_errors_total").increment(1)
                            }
                        }
                        streak.failed("finishing a batch", &e, &shutdown).await;
                    } else {
                        streak.recovered();
                    }
                }
                Err(e) => {
                    metrics::counter!("inlet_worker_queue_errors_total").increment(1);
                    streak.failed("reading the stream", &e, &shutdown).await;
                }
            }
        }
        tracing::info!(consumer = %self.consumer, stream = %self.stream, "worker stopped");
    }

    /// Processes one batch of entries and acknowledges them (the batch
    /// keeps its entries fresh meanwhile: retries can outlast the reclaim
    /// idle time). Errors when the store stayed unavailable through the
    /// batch's attempts, or the outcome could not be made durable (DLQ write
    /// or ack failed); the entries then stay pending.
    pub async fn handle(&self, mut batch: Batch) -> Result<(), HandleError> {
        let started = Instant::now();
        let entries = batch.take_entries();
        let mut events = Vec::with_capacity(entries.len());
        let mut dead: Vec<DeadLetter> = Vec::new();
        let mut lines = Vec::with_capacity(entries.len());
        for entry in entries {
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
                    // Where it was: the raw shard and the entry id.
                    event
                        .headers
                        .push(("x-inlet-stream".into(), self.stream.clone()));
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
        let outcome = self
            .pipeline
            .process(events, &self.policy, OnExhausted::GiveBack)
            .await;
        if let Some((_, e)) = outcome.unavailable.first() {
            // The store is down, which says nothing about these events:
            // they stay pending in the stream (a durable buffer) and are
            // read again after the worker's backoff, never dead-lettered.
            // What this attempt stored is stored once again (idempotent);
            // its dead letters are decided again then.
            return Err(HandleError::StoreUnavailable(e.clone()));
        }
        dead.extend(outcome.dead);
        for letter in &dead {
            self.queue.dead_letter(letter).await?;
        }
        batch.ack_delete().await?;
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

/// What [`spawn_shards`] runs on each shard.
pub struct ShardWorkers {
    /// The settings (batch size, block, claim idle, concurrency).
    pub settings: Arc<Settings>,
    /// The queue (its own raw shards are consumed from the start).
    pub queue: RedisQueue,
    /// The pipeline every loop shares.
    pub pipeline: Pipeline,
    /// Woken after a batch stored something (the relay).
    pub committed: Arc<Notify>,
    /// The first loop's consumer name; the others are `name-2`, `name-3`, ….
    pub consumer: String,
}

/// Consumes every raw shard: `worker.concurrency` loops on each of this
/// process's own shards, and on every shard a gateway registered since
/// (looked up every [`SHARD_REFRESH`]), so that shards no gateway appends
/// to any more after `redis.raw_shards` changed are still drained. Returns
/// once every loop has finished its batch after `shutdown`.
pub fn spawn_shards(
    workers: ShardWorkers,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut running: std::collections::BTreeSet<String> = Default::default();
        let mut loops = tokio::task::JoinSet::new();
        loop {
            let shards = match workers.queue.known_raw_shards().await {
                Ok(shards) => shards,
                Err(e) => {
                    tracing::debug!(error = %e, "raw shard registry unavailable; consuming the configured shards");
                    workers.queue.raw_shards().to_vec()
                }
            };
            for shard in shards {
                if running.contains(&shard) {
                    continue;
                }
                if !running.is_empty() {
                    tracing::info!(stream = %shard, "consuming a raw shard registered by a gateway");
                }
                for i in 1..=workers.settings.worker.concurrency {
                    let name = if i == 1 {
                        workers.consumer.clone()
                    } else {
                        format!("{}-{i}", workers.consumer)
                    };
                    let worker = Worker::new(
                        &workers.settings,
                        workers.queue.clone(),
                        workers.pipeline.clone(),
                        workers.committed.clone(),
                    )
                    .named(name)
                    .on_stream(shard.clone());
                    loops.spawn(worker.run(shutdown.clone()));
                }
                running.insert(shard);
                metrics::gauge!("inlet_worker_raw_shards").set(running.len() as f64);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(SHARD_REFRESH) => {}
            }
        }
        while loops.join_next().await.is_some() {}
    })
}
