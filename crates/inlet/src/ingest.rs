//! Durable acceptance of verified deliveries, in queue or direct mode.
//!
//! [`Ingest::accept`] returns only once the event is durable: acknowledged by
//! Redis (`XADD` to `incoming.raw`, queue mode) or committed by the store
//! after running the pipeline in-process (direct mode). When Redis is not
//! configured or a Redis call fails, it falls back to direct mode; a
//! background probe switches back to queue mode when Redis answers again.
//! Mode changes are logged, counted, exposed as a gauge and audited. If
//! neither path can keep the event it goes to the local spool
//! ([`crate::spool`], fsynced before the answer) and is drained into Redis
//! or the store once one of them is back; with the spool off or full the
//! caller answers 503, so Meta retries.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use crate::audit::{Audit, AuditRecord};
use crate::dlq::letter::DeadLetter;
use crate::envelope::RawEvent;
use crate::queue::{QueueError, QueueOptions, RedisQueue};
use crate::spool::{Spool, SpoolStats};

/// Which path accepts events right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Gateway → Redis stream → worker.
    Queue,
    /// Gateway runs the pipeline in-process.
    Direct,
}

impl Mode {
    /// `queue` or `direct`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Queue => "queue",
            Mode::Direct => "direct",
        }
    }
}

/// Where an accepted event went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Appended to the raw stream under this id.
    Queued(String),
    /// Processed and committed in-process.
    Direct,
    /// Kept in the local spool (Redis and the store both failed).
    Spooled,
}

/// The event could not be made durable: answer 503.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// Redis failed and the in-process pipeline could not keep it.
    #[error("event not kept: {0}")]
    Direct(#[source] DirectError),
    /// Redis failed and there is no in-process pipeline.
    #[error("event not kept: redis unavailable and no direct-mode store")]
    NoStore,
    /// Redis and the store failed, and the spool could not keep it either.
    #[error("event not kept: {first}; spool: {spool}")]
    Spool {
        /// Why Redis and the store could not.
        first: String,
        /// Why the spool could not (off, full, I/O).
        spool: String,
    },
}

impl Unavailable {
    /// Why, without the "event not kept" prefix (audit reason).
    pub fn detail(&self) -> String {
        match self {
            Unavailable::Direct(e) => e.to_string(),
            Unavailable::NoStore => "redis unavailable and no direct-mode store".into(),
            Unavailable::Spool { first, spool } => format!("{first}; spool: {spool}"),
        }
    }
}

/// The in-process pipeline could not keep an event.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DirectError {
    /// Its committer task has stopped.
    #[error("direct pipeline stopped")]
    Stopped,
    /// Its committer task dropped the event without an answer.
    #[error("direct pipeline dropped the event")]
    Dropped,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// In-process handling used in direct mode: runs the whole pipeline and
/// resolves once the store transaction has committed (or dead-lettered the
/// event durably). An error means nothing was kept.
pub trait DirectHandler: Send + Sync + 'static {
    /// Processes one event to durability.
    fn handle(&self, event: RawEvent) -> BoxFuture<'_, Result<(), DirectError>>;
    /// Keeps a dead letter (the store's DLQ table).
    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), DirectError>>;
    /// Whether the store answers.
    fn ready(&self) -> BoxFuture<'_, bool>;
}

/// Accepts events durably; cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Option<QueueOptions>,
    queue: RwLock<Option<RedisQueue>>,
    redis_up: AtomicBool,
    direct: Option<Arc<dyn DirectHandler>>,
    spool: Option<Spool>,
    /// The store failed to keep an event and has not answered since: while
    /// Redis is down too, events go straight to the spool instead of each
    /// waiting for the store's connect timeout.
    store_down: AtomicBool,
    audit: Audit,
}

impl Ingest {
    /// Builds the acceptor. `redis_url = None` means direct mode only.
    /// Connects to Redis right away when configured (a failure is not fatal:
    /// the probe keeps trying).
    pub async fn new(
        settings: &crate::config::Settings,
        direct: Option<Arc<dyn DirectHandler>>,
        audit: Audit,
    ) -> Self {
        let redis = QueueOptions::from_settings(settings);
        let spool = if settings.spool.enabled {
            let dir = settings.data_dir.join("spool");
            match Spool::open(&dir, settings.spool.max_bytes) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "local spool unavailable: events Redis and the store cannot keep get 503");
                    audit.write(
                        AuditRecord::new("spool")
                            .outcome("unavailable")
                            .reason(e.to_string()),
                    );
                    None
                }
            }
        } else {
            None
        };
        let ingest = Self {
            inner: Arc::new(Inner {
                redis,
                queue: RwLock::new(None),
                redis_up: AtomicBool::new(false),
                direct,
                spool,
                store_down: AtomicBool::new(false),
                audit,
            }),
        };
        if ingest.inner.redis.is_some() {
            ingest.probe().await;
        }
        let mode = ingest.mode();
        metrics::gauge!("inlet_gateway_queue_mode").set(if mode == Mode::Queue {
            1.0
        } else {
            0.0
        });
        ingest.inner.audit.write(
            AuditRecord::new("mode")
                .with("mode", mode.as_str())
                .reason("startup"),
        );
        ingest
    }

    /// Current mode.
    pub fn mode(&self) -> Mode {
        if self.inner.redis_up.load(Ordering::Acquire) {
            Mode::Queue
        } else {
            Mode::Direct
        }
    }

    /// Whether Redis is configured at all.
    pub fn redis_configured(&self) -> bool {
        self.inner.redis.is_some()
    }

    /// Whether direct mode can run (a store is attached).
    pub fn direct_available(&self) -> bool {
        self.inner.direct.is_some()
    }

    /// Whether the direct-mode store answers.
    pub async fn store_ready(&self) -> Option<bool> {
        match &self.inner.direct {
            Some(d) => Some(d.ready().await),
            None => None,
        }
    }

    fn set_mode(&self, up: bool, reason: &str) {
        let was = self.inner.redis_up.swap(up, Ordering::AcqRel);
        if was == up {
            return;
        }
        let mode = if up { Mode::Queue } else { Mode::Direct };
        metrics::gauge!("inlet_gateway_queue_mode").set(if up { 1.0 } else { 0.0 });
        metrics::counter!("inlet_gateway_mode_switches_total", "to" => mode.as_str()).increment(1);
        if up {
            tracing::info!(reason, "redis reachable: queue mode");
        } else {
            tracing::warn!(reason, "redis unavailable: direct mode");
        }
        self.inner.audit.write(
            AuditRecord::new("mode")
                .with("mode", mode.as_str())
                .reason(reason.to_string()),
        );
    }

    /// Tries to (re)connect and ping Redis; updates the mode. Returns whether
    /// Redis is up.
    pub async fn probe(&self) -> bool {
        let Some(target) = &self.inner.redis else {
            return false;
        };
        let existing = self.inner.queue.read().await.clone();
        let ok = match existing {
            Some(q) => q.ping().await.is_ok(),
            None => match RedisQueue::open(target.clone()).await {
                Ok(q) => {
                    let ok = q.ping().await.is_ok();
                    *self.inner.queue.write().await = Some(q);
                    ok
                }
                Err(e) => {
                    tracing::debug!(error = %e, "redis probe failed");
                    false
                }
            },
        };
        self.set_mode(
            ok,
            if ok {
                "redis_probe_ok"
            } else {
                "redis_probe_failed"
            },
        );
        ok
    }

    /// Runs the probe every `interval` while Redis is down, until `shutdown`.
    pub fn spawn_probe(&self, interval: Duration, shutdown: CancellationToken) {
        if self.inner.redis.is_none() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(interval) => {}
                }
                if this.mode() == Mode::Direct {
                    this.probe().await;
                }
            }
        });
    }

    /// The Redis queue, when connected.
    pub async fn queue(&self) -> Option<RedisQueue> {
        self.inner.queue.read().await.clone()
    }

    /// Makes `event` durable: XADD in queue mode, else the in-process
    /// pipeline, else the local spool. Falls back from queue to direct on a
    /// Redis error.
    pub async fn accept(&self, mut event: RawEvent) -> Result<Accepted, Unavailable> {
        if let Some(id) = self.try_queue(&event).await {
            return Ok(Accepted::Queued(id));
        }
        let Some(spool) = &self.inner.spool else {
            return self.accept_direct(event).await;
        };
        let first = if self.inner.store_down.load(Ordering::Acquire) {
            // Both known down: straight to the spool, no connect timeout.
            None
        } else {
            // The spool needs a copy only if the store fails too.
            let copy = event.clone();
            match self.accept_direct(event).await {
                Ok(a) => return Ok(a),
                Err(e) => {
                    event = copy;
                    Some(e.detail())
                }
            }
        };
        match spool.append(&event).await {
            Ok(()) => {
                if let Some(first) = &first {
                    tracing::warn!(error = %first, "redis and the store failed: event kept in the local spool");
                }
                Ok(Accepted::Spooled)
            }
            Err(e) => {
                metrics::counter!("inlet_spool_events_total", "outcome" => "refused").increment(1);
                Err(Unavailable::Spool {
                    first: first.unwrap_or_else(|| "redis and the store unavailable".into()),
                    spool: e.to_string(),
                })
            }
        }
    }

    /// [`Ingest::accept`] without the spool: Redis, else the store.
    async fn accept_now(&self, event: RawEvent) -> Result<Accepted, Unavailable> {
        match self.try_queue(&event).await {
            Some(id) => Ok(Accepted::Queued(id)),
            None => self.accept_direct(event).await,
        }
    }

    /// XADD in queue mode; `None` when Redis is down or fails (the mode
    /// flips to direct).
    async fn try_queue(&self, event: &RawEvent) -> Option<String> {
        if self.mode() != Mode::Queue {
            return None;
        }
        let queue = self.queue().await?;
        match queue.enqueue_raw(event).await {
            Ok(id) => Some(id),
            Err(e) => {
                self.redis_failed(&e);
                None
            }
        }
    }

    /// The in-process pipeline (direct mode).
    async fn accept_direct(&self, event: RawEvent) -> Result<Accepted, Unavailable> {
        match &self.inner.direct {
            Some(direct) => match direct.handle(event).await {
                Ok(()) => {
                    self.inner.store_down.store(false, Ordering::Release);
                    Ok(Accepted::Direct)
                }
                Err(e) => {
                    if matches!(&e, DirectError::Store(s) if s.is_transient()) {
                        self.inner.store_down.store(true, Ordering::Release);
                    }
                    Err(Unavailable::Direct(e))
                }
            },
            None => Err(Unavailable::NoStore),
        }
    }

    /// What waits in the local spool (`None` when it is off).
    pub fn spool_stats(&self) -> Option<SpoolStats> {
        self.inner.spool.as_ref().map(Spool::stats)
    }

    /// Moves what waits in the spool into Redis or the store, in order,
    /// until one delivery fails; returns how many moved.
    pub async fn drain_spool(&self) -> u64 {
        let Some(spool) = &self.inner.spool else {
            return 0;
        };
        if self.inner.store_down.load(Ordering::Acquire) {
            if let Some(direct) = &self.inner.direct {
                if direct.ready().await {
                    self.inner.store_down.store(false, Ordering::Release);
                }
            }
        }
        if spool.stats().pending_events == 0 {
            return 0;
        }
        if self.mode() == Mode::Direct && self.inner.redis.is_some() {
            self.probe().await;
        }
        let result = spool
            .drain(|event| async move {
                let trace = event.trace_id;
                match self.accept_now(event).await {
                    Ok(accepted) => {
                        let stage = match accepted {
                            Accepted::Queued(_) => "enqueued",
                            _ => "direct",
                        };
                        let mut rec = AuditRecord::new(stage).trace(trace).outcome("drained");
                        rec = rec.with("from", "spool");
                        self.inner.audit.write(rec);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            })
            .await;
        match result {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(
                        drained = n,
                        left = spool.stats().pending_events,
                        "local spool drained"
                    );
                }
                n
            }
            Err(e) => {
                tracing::error!(error = %e, "local spool: drain failed");
                0
            }
        }
    }

    /// Drains the spool every `interval` while it holds events, until
    /// `shutdown`.
    pub fn spawn_drain(&self, interval: Duration, shutdown: CancellationToken) {
        if self.inner.spool.is_none() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.drain_spool().await;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
    }

    /// Keeps a dead letter: the DLQ stream in queue mode, else the store.
    pub async fn dead_letter(&self, letter: DeadLetter) -> Result<(), Unavailable> {
        if self.mode() == Mode::Queue {
            if let Some(queue) = self.queue().await {
                match queue.dead_letter(&letter).await {
                    Ok(_) => return Ok(()),
                    Err(e) => self.redis_failed(&e),
                }
            }
        }
        match &self.inner.direct {
            Some(direct) => direct
                .dead_letter(letter)
                .await
                .map_err(Unavailable::Direct),
            None => Err(Unavailable::NoStore),
        }
    }

    fn redis_failed(&self, e: &QueueError) {
        tracing::warn!(error = %e, "redis call failed");
        self.set_mode(false, "redis_error");
    }
}
