//! Keeping the cache in step with the store.
//!
//! - [`CacheConsumer`] (queue mode, in the worker): reads `{prefix}cache.sync`
//!   through the `cache-sync` consumer group. After the first job arrives it
//!   keeps reading for `cache.coalesce_window`, then rewrites each named file
//!   once and acknowledges the jobs. A failed rewrite keeps its jobs
//!   unacknowledged and is retried with backoff; jobs left pending by a dead
//!   consumer are reclaimed.
//! - [`LocalCacheSink`] (direct mode, in the gateway): the outbox relay hands
//!   it the `cache.sync` entries; it coalesces them the same way in-process.
//! - [`spawn_rebuild`]: the full rebuild at start and every
//!   `cache.rebuild_interval` (0 = never).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Cache, CacheKey};
use crate::config::Settings;
use crate::queue::{QueueError, RedisQueue, StreamEntry, CACHE_SYNC};
use crate::relay::LocalSink;
use crate::store::OutboxEntry;

/// Consumer group of the cache-sync consumers on [`CACHE_SYNC`].
pub const CACHE_GROUP: &str = "cache-sync";
/// Jobs read per `XREADGROUP`.
const READ_COUNT: usize = 1_000;
/// Most jobs gathered into one coalesced batch.
const MAX_BATCH: usize = 20_000;

/// The cache keys named by stream entries (unknown keys are ignored).
pub fn keys_of(entries: &[StreamEntry]) -> BTreeSet<CacheKey> {
    entries
        .iter()
        .filter_map(|e| e.text("key"))
        .filter_map(|k| CacheKey::parse(&k))
        .collect()
}

/// The queue-mode cache-sync consumer.
pub struct CacheConsumer {
    cache: Cache,
    queue: RedisQueue,
    consumer: String,
    window: Duration,
    block: Duration,
    claim_idle: Duration,
}

impl CacheConsumer {
    /// A consumer named `consumer` in the `cache-sync` group.
    pub fn new(settings: &Settings, cache: Cache, queue: RedisQueue, consumer: &str) -> Self {
        Self {
            cache,
            queue,
            consumer: consumer.to_string(),
            window: settings.cache.coalesce_window,
            block: settings.worker.block,
            claim_idle: settings.worker.claim_idle,
        }
    }

    /// Consumes until `shutdown`. The batch in progress is finished first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            // A blocking-read connection of its own (see RedisQueue::with_own_reader).
            let ready = match self.queue.with_own_reader().await {
                Ok(q) => {
                    self.queue = q;
                    self.queue.ensure_group(CACHE_SYNC, CACHE_GROUP).await
                }
                Err(e) => Err(e),
            };
            match ready {
                Ok(()) => break,
                Err(e) => {
                    backoff
                        .failed("creating the cache-sync group", &e, &shutdown)
                        .await
                }
            }
        }
        let mut own_pending = true;
        let mut last_claim = Instant::now();
        // Work not yet done: its keys and the ids to acknowledge after.
        let mut keys: BTreeSet<CacheKey> = BTreeSet::new();
        let mut ids: Vec<String> = Vec::new();
        while !shutdown.is_cancelled() {
            let first = if own_pending {
                own_pending = false;
                self.queue
                    .read_pending_own(CACHE_SYNC, CACHE_GROUP, &self.consumer, READ_COUNT)
                    .await
            } else if last_claim.elapsed() >= self.claim_idle / 2 {
                last_claim = Instant::now();
                match self
                    .queue
                    .autoclaim(
                        CACHE_SYNC,
                        CACHE_GROUP,
                        &self.consumer,
                        self.claim_idle,
                        READ_COUNT,
                    )
                    .await
                {
                    Ok(e) if e.is_empty() => self.read(self.first_block(&ids)).await,
                    other => other,
                }
            } else {
                self.read(self.first_block(&ids)).await
            };
            match first {
                Ok(entries) => {
                    ids.extend(entries.iter().map(|e| e.id.clone()));
                    keys.extend(keys_of(&entries));
                }
                Err(e) => {
                    if ids.is_empty() {
                        backoff.failed("reading cache jobs", &e, &shutdown).await;
                        continue;
                    }
                }
            }
            if ids.is_empty() {
                continue;
            }
            // Coalesce: whatever else arrives within the window joins.
            let deadline = Instant::now() + self.window;
            while ids.len() < MAX_BATCH && !shutdown.is_cancelled() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match self.read(left.max(Duration::from_millis(1))).await {
                    Ok(entries) => {
                        ids.extend(entries.iter().map(|e| e.id.clone()));
                        keys.extend(keys_of(&entries));
                    }
                    Err(_) => break,
                }
            }
            metrics::counter!("inlet_cache_jobs_total").increment(ids.len() as u64);
            match self.cache.apply(&keys).await {
                Ok(files) => {
                    tracing::debug!(jobs = ids.len(), files, "cache files rewritten");
                    if let Err(e) = self.queue.ack_delete(CACHE_SYNC, CACHE_GROUP, &ids).await {
                        // Re-read as own pending later: rewriting twice is
                        // harmless.
                        tracing::warn!(error = %e, "acknowledging cache jobs failed");
                        own_pending = true;
                    }
                    ids.clear();
                    keys.clear();
                    backoff.recovered();
                }
                Err(e) => {
                    // Keep the failed keys (and every id: acknowledged only
                    // once all is done); retry after the backoff.
                    keys = e.failed.clone();
                    backoff.failed("rewriting cache files", &e, &shutdown).await;
                }
            }
        }
        tracing::info!(consumer = %self.consumer, "cache-sync consumer stopped");
    }

    /// How long the first read of a cycle may wait: not at all when work is
    /// waiting for a retry.
    fn first_block(&self, carried: &[String]) -> Duration {
        if carried.is_empty() {
            self.block
        } else {
            Duration::ZERO
        }
    }

    async fn read(&self, block: Duration) -> Result<Vec<StreamEntry>, QueueError> {
        self.queue
            .read_group(CACHE_SYNC, CACHE_GROUP, &self.consumer, READ_COUNT, block)
            .await
    }
}

/// Starts a [`CacheConsumer`].
pub fn spawn_consumer(
    settings: &Settings,
    cache: Cache,
    queue: RedisQueue,
    consumer: &str,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let consumer = CacheConsumer::new(settings, cache, queue, consumer);
    tokio::spawn(consumer.run(shutdown))
}

/// Direct mode: the in-process consumer of `cache.sync` outbox entries. The
/// relay hands it entries; it gathers their keys and rewrites each file once
/// per coalescing window, retrying failures with backoff. Jobs that are
/// still in memory when the process dies are covered by the rebuild at the
/// next start (and by the read API's TTL refresh).
pub struct LocalCacheSink {
    pending: Arc<std::sync::Mutex<BTreeSet<CacheKey>>>,
    wake: Arc<Notify>,
}

impl LocalCacheSink {
    /// Starts the flushing task; it stops (after a last flush) at `shutdown`.
    pub fn start(cache: Cache, window: Duration, shutdown: CancellationToken) -> Arc<Self> {
        let pending: Arc<std::sync::Mutex<BTreeSet<CacheKey>>> = Arc::default();
        let wake = Arc::new(Notify::new());
        let sink = Arc::new(Self {
            pending: pending.clone(),
            wake: wake.clone(),
        });
        tokio::spawn(async move {
            let mut backoff = Backoff::default();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = wake.notified() => {}
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(window) => {}
                }
                let keys = std::mem::take(&mut *lock(&pending));
                if keys.is_empty() {
                    continue;
                }
                if let Err(e) = cache.apply(&keys).await {
                    lock(&pending).extend(e.failed.iter().cloned());
                    backoff.failed("rewriting cache files", &e, &shutdown).await;
                    wake.notify_one();
                } else {
                    backoff.recovered();
                }
            }
            let keys = std::mem::take(&mut *lock(&pending));
            if !keys.is_empty() {
                if let Err(e) = cache.apply(&keys).await {
                    tracing::debug!(error = %e, "last cache flush failed");
                }
            }
        });
        sink
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalSink for LocalCacheSink {
    fn stream(&self) -> &'static str {
        CACHE_SYNC
    }

    fn deliver(&self, entries: Vec<OutboxEntry>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            metrics::counter!("inlet_cache_jobs_total").increment(entries.len() as u64);
            let keys = entries.iter().flat_map(|e| {
                e.fields
                    .iter()
                    .filter(|(k, _)| k == "key")
                    .filter_map(|(_, v)| CacheKey::parse(v))
            });
            lock(&self.pending).extend(keys);
            self.wake.notify_one();
            Ok(())
        })
    }
}

/// Rebuilds the whole cache now and then every `interval` (nothing when it
/// is zero). A failed rebuild is retried sooner, with backoff.
pub fn spawn_rebuild(
    cache: Cache,
    interval: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if interval.is_zero() {
            return;
        }
        let mut retry = Duration::from_secs(1);
        loop {
            // Stopping mid-rebuild is safe: every file is replaced atomically.
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = cache.rebuild_all(chrono::Utc::now()) => r,
            };
            let wait = match result {
                Ok(report) => {
                    tracing::info!(
                        written = report.written,
                        removed = report.removed,
                        "cache rebuilt"
                    );
                    retry = Duration::from_secs(1);
                    interval
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?retry, "cache rebuild failed; will retry");
                    let wait = retry.min(interval);
                    retry = (retry * 2).min(Duration::from_secs(60));
                    wait
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    })
}

/// Exponential backoff that logs once per failure streak.
#[derive(Default)]
struct Backoff {
    delay: Option<Duration>,
}

impl Backoff {
    async fn failed(
        &mut self,
        what: &str,
        e: &(dyn std::fmt::Display + Sync),
        shutdown: &CancellationToken,
    ) {
        let delay = match self.delay {
            None => {
                tracing::warn!(error = %e, "{what} failed; backing off");
                Duration::from_millis(100)
            }
            Some(d) => {
                tracing::debug!(error = %e, delay = ?d, "{what} still failing");
                (d * 2).min(Duration::from_secs(5))
            }
        };
        self.delay = Some(delay);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }

    fn recovered(&mut self) {
        if self.delay.take().is_some() {
            tracing::info!("cache sync recovered");
        }
    }
}
