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
//!
//! Both consumers hold the analytics summary back to one rewrite per
//! `cache.summary_interval` ([`SummaryThrottle`]): its queries scan the last
//! 30 days, and during a backlog every window would otherwise recompute it.
//! A rewrite owed meanwhile is done when it is due, jobs or not.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Cache, CacheKey};
use crate::backoff::{Backoff, Streak};
use crate::config::Settings;
use crate::queue::{Batch, ConsumerConfig, GroupConsumer, RedisQueue, StreamEntry};
use crate::relay::{LocalSink, SinkError};
use crate::store::OutboxEntry;
use crate::streams::{CACHE_GROUP, CACHE_SYNC};

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
    throttle: SummaryThrottle,
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
            throttle: SummaryThrottle::new(settings.cache.summary_interval),
        }
    }

    /// Consumes until `shutdown`. The batch in progress is finished first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut streak = Streak::new("cache sync", Backoff::infrastructure());
        let config = ConsumerConfig {
            stream: CACHE_SYNC.into(),
            group: CACHE_GROUP.into(),
            consumer: self.consumer.clone(),
            count: READ_COUNT,
            block: self.block,
            claim_idle: self.claim_idle,
        };
        let mut consumer = loop {
            match GroupConsumer::connect(&self.queue, config.clone()).await {
                Ok(c) => break c,
                Err(e) => {
                    if !streak
                        .failed("creating the cache-sync group", &e, &shutdown)
                        .await
                    {
                        return;
                    }
                }
            }
        };
        streak.recovered();
        // Work not yet done: its keys, and its jobs to acknowledge after.
        let mut keys: BTreeSet<CacheKey> = BTreeSet::new();
        let mut pending: Option<Batch> = None;
        while !shutdown.is_cancelled() {
            let carried = pending.as_ref().is_some_and(|b| !b.is_empty());
            match consumer.next_batch_within(self.first_block(carried)).await {
                Ok(batch) => {
                    keys.extend(keys_of(batch.entries()));
                    absorb(&mut pending, batch);
                }
                Err(e) => {
                    if !carried {
                        streak.failed("reading cache jobs", &e, &shutdown).await;
                        continue;
                    }
                }
            }
            let jobs = pending.as_ref().map_or(0, Batch::len);
            if jobs == 0 && !self.throttle.due(Instant::now()) {
                continue;
            }
            // Coalesce: whatever else arrives within the window joins.
            let deadline = Instant::now() + self.window;
            while pending
                .as_ref()
                .is_some_and(|b| !b.is_empty() && b.len() < MAX_BATCH)
                && !shutdown.is_cancelled()
            {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match consumer
                    .next_batch_within(left.max(Duration::from_millis(1)))
                    .await
                {
                    Ok(batch) => {
                        keys.extend(keys_of(batch.entries()));
                        absorb(&mut pending, batch);
                    }
                    Err(_) => break,
                }
            }
            let jobs = pending.as_ref().map_or(0, Batch::len);
            metrics::counter!("inlet_cache_jobs_total").increment(jobs as u64);
            self.throttle.hold_back(&mut keys, Instant::now());
            match self.cache.apply(&keys).await {
                Ok(files) => {
                    self.throttle.applied(&keys, Instant::now());
                    tracing::debug!(jobs, files, "cache files rewritten");
                    if let Some(batch) = pending.take() {
                        if let Err(e) = batch.ack_delete().await {
                            // Re-read as own pending later: rewriting twice
                            // is harmless.
                            tracing::warn!(error = %e, "acknowledging cache jobs failed");
                        }
                    }
                    keys.clear();
                    streak.recovered();
                }
                Err(e) => {
                    // Keep the failed keys (and every job: acknowledged only
                    // once all is done); retry after the backoff.
                    keys = e.failed.clone();
                    streak.failed("rewriting cache files", &e, &shutdown).await;
                }
            }
        }
        tracing::info!(consumer = %self.consumer, "cache-sync consumer stopped");
    }

    /// How long the first read of a cycle may wait: not at all when work is
    /// waiting for a retry, at most until an owed summary is due.
    fn first_block(&self, carried: bool) -> Duration {
        if !carried {
            self.throttle
                .due_in(Instant::now())
                .map_or(self.block, |d| {
                    d.clamp(Duration::from_millis(1), self.block)
                })
        } else {
            Duration::ZERO
        }
    }
}

/// Adds a batch to the work carried so far.
fn absorb(pending: &mut Option<Batch>, batch: Batch) {
    match pending {
        Some(p) => p.absorb(batch),
        None => *pending = Some(batch),
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
    pub fn start(
        cache: Cache,
        window: Duration,
        summary_interval: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let pending: Arc<std::sync::Mutex<BTreeSet<CacheKey>>> = Arc::default();
        let wake = Arc::new(Notify::new());
        let sink = Arc::new(Self {
            pending: pending.clone(),
            wake: wake.clone(),
        });
        tokio::spawn(async move {
            let mut streak = Streak::new("cache sync", Backoff::infrastructure());
            let mut throttle = SummaryThrottle::new(summary_interval);
            loop {
                let owed = throttle.due_in(Instant::now());
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(owed.unwrap_or_default()), if owed.is_some() => {}
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(window) => {}
                }
                let mut keys = std::mem::take(&mut *lock(&pending));
                throttle.hold_back(&mut keys, Instant::now());
                if keys.is_empty() {
                    continue;
                }
                if let Err(e) = cache.apply(&keys).await {
                    lock(&pending).extend(e.failed.iter().cloned());
                    streak.failed("rewriting cache files", &e, &shutdown).await;
                    wake.notify_one();
                } else {
                    throttle.applied(&keys, Instant::now());
                    streak.recovered();
                }
            }
            // Last flush: an owed summary too.
            let mut keys = std::mem::take(&mut *lock(&pending));
            if throttle.due_in(Instant::now()).is_some() {
                keys.insert(CacheKey::Summary);
            }
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

    fn deliver(&self, entries: Vec<OutboxEntry>) -> BoxFuture<'_, Result<(), SinkError>> {
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
        let mut retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
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
                    retry.reset();
                    interval
                }
                Err(e) => {
                    let wait = retry.next_delay().min(interval);
                    tracing::warn!(error = %e, ?wait, "cache rebuild failed; will retry");
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

/// Holds rewrites of the analytics summary back to one per `interval`.
///
/// [`hold_back`](Self::hold_back) takes the summary out of a set of keys
/// while the last rewrite is recent and remembers that one is owed;
/// [`due_in`](Self::due_in) says when the owed rewrite may run, and
/// `hold_back` puts it back into the keys from then on.
#[derive(Debug)]
pub struct SummaryThrottle {
    interval: Duration,
    last: Option<Instant>,
    owed: bool,
}

impl SummaryThrottle {
    /// A throttle of one summary rewrite per `interval` (zero: no limit).
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            owed: false,
        }
    }

    /// Removes the summary from `keys` when it was rewritten less than the
    /// interval ago (it is owed from then on); adds it when it is owed and
    /// due.
    pub fn hold_back(&mut self, keys: &mut BTreeSet<CacheKey>, now: Instant) {
        let wanted = keys.remove(&CacheKey::Summary) || self.owed;
        if !wanted {
            return;
        }
        if self.last.is_none_or(|t| now >= t + self.interval) {
            keys.insert(CacheKey::Summary);
        } else {
            self.owed = true;
        }
    }

    /// Records a successful rewrite of `keys`.
    pub fn applied(&mut self, keys: &BTreeSet<CacheKey>, now: Instant) {
        if keys.contains(&CacheKey::Summary) {
            self.last = Some(now);
            self.owed = false;
        }
    }

    /// When an owed rewrite may run (zero when it is due now); `None` when
    /// nothing is owed.
    pub fn due_in(&self, now: Instant) -> Option<Duration> {
        if !self.owed {
            return None;
        }
        Some(self.last.map_or(Duration::ZERO, |t| {
            (t + self.interval).saturating_duration_since(now)
        }))
    }

    /// Whether an owed rewrite is due now.
    pub fn due(&self, now: Instant) -> bool {
        self.due_in(now) == Some(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[CacheKey]) -> BTreeSet<CacheKey> {
        list.iter().cloned().collect()
    }

    #[test]
    fn the_summary_is_rewritten_at_most_once_per_interval_and_never_dropped() {
        let t0 = Instant::now();
        let mut th = SummaryThrottle::new(Duration::from_secs(5));
        // The first rewrite goes through at once.
        let mut k = keys(&[CacheKey::Summary, CacheKey::Conversations]);
        th.hold_back(&mut k, t0);
        assert!(k.contains(&CacheKey::Summary));
        th.applied(&k, t0);
        assert_eq!(th.due_in(t0), None, "nothing owed");
        // One second later it is held back and owed.
        let t1 = t0 + Duration::from_secs(1);
        let mut k = keys(&[CacheKey::Summary, CacheKey::Conversation(7)]);
        th.hold_back(&mut k, t1);
        assert_eq!(k, keys(&[CacheKey::Conversation(7)]));
        th.applied(&k, t1);
        assert_eq!(th.due_in(t1), Some(Duration::from_secs(4)));
        assert!(!th.due(t1));
        // Jobs without the summary do not pay the debt early...
        let t2 = t0 + Duration::from_secs(2);
        let mut k = keys(&[CacheKey::Contacts]);
        th.hold_back(&mut k, t2);
        assert_eq!(k, keys(&[CacheKey::Contacts]));
        // ...but once due, the owed rewrite joins any set, even an empty one.
        let t5 = t0 + Duration::from_secs(5);
        assert!(th.due(t5));
        let mut k = BTreeSet::new();
        th.hold_back(&mut k, t5);
        assert_eq!(k, keys(&[CacheKey::Summary]));
        th.applied(&k, t5);
        assert_eq!(th.due_in(t5), None);
    }

    #[test]
    fn a_zero_interval_never_holds_back() {
        let t0 = Instant::now();
        let mut th = SummaryThrottle::new(Duration::ZERO);
        for _ in 0..3 {
            let mut k = keys(&[CacheKey::Summary]);
            th.hold_back(&mut k, t0);
            assert!(k.contains(&CacheKey::Summary));
            th.applied(&k, t0);
        }
    }

    #[test]
    fn a_failed_rewrite_stays_owed() {
        let t0 = Instant::now();
        let mut th = SummaryThrottle::new(Duration::from_secs(5));
        let mut k = keys(&[CacheKey::Summary]);
        th.hold_back(&mut k, t0);
        th.applied(&k, t0);
        let t1 = t0 + Duration::from_secs(1);
        let mut k = keys(&[CacheKey::Summary]);
        th.hold_back(&mut k, t1);
        assert!(k.is_empty());
        // Due, put back, but the rewrite fails (applied is not called).
        let t6 = t0 + Duration::from_secs(6);
        let mut k = BTreeSet::new();
        th.hold_back(&mut k, t6);
        assert_eq!(k, keys(&[CacheKey::Summary]));
        assert!(th.due(t6), "still owed until a rewrite succeeds");
    }
}
