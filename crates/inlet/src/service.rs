//! Wiring of the long-running services: each `start_*` function takes
//! validated settings and a shutdown token, builds every component and
//! spawns it, and returns a handle that knows its address and can be awaited.
//! Binaries and tests use the same functions, so tests run the real thing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::bus::{
    AuditHandler, Dispatcher, EventBus, Handler, MemoryBus, MemoryBusSink, MetricsHandler, RedisBus,
};
use crate::config::Settings;
use crate::direct::DirectPipeline;
use crate::http::{AppState, Gateway};
use crate::ingest::{DirectHandler, Ingest};
use crate::pipeline::Pipeline;
use crate::queue::RedisQueue;
use crate::relay::LocalSink;
use crate::relay::{spawn_relay, RelayTarget};
use crate::store::{Store, StoreError};
use crate::webhooks::WebhookHandler;

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Filesystem or socket problem.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The store could not be opened or migrated.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Something required is not configured.
    #[error("configuration: {0}")]
    Config(String),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> StartError {
    move |source| StartError::Io { what, source }
}

/// Opens the configured store and applies migrations when configured to. A
/// database that is down is not fatal: migrations are retried in the
/// background until they succeed or `shutdown` fires.
pub async fn open_store(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> Result<Store, StartError> {
    let store = crate::store::from_settings(settings).await?;
    if settings.worker.migrate_on_start {
        match store.migrate().await {
            Ok(()) => {}
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "database unavailable; migrations will be retried");
                let store = store.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let mut delay = Duration::from_millis(500);
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        match store.migrate().await {
                            Ok(()) => {
                                tracing::info!("database reachable; migrations applied");
                                return;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "migrations still failing");
                                delay = (delay * 2).min(Duration::from_secs(10));
                            }
                        }
                    }
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(store)
}

/// The built-in subscribers: audit, metrics, outgoing webhooks. (Cache sync
/// is driven by the `cache.sync` jobs the store writes with the data.)
pub fn builtin_handlers(
    settings: &Settings,
    store: &Store,
    audit: &Audit,
) -> Vec<Arc<dyn Handler>> {
    vec![
        Arc::new(AuditHandler(audit.clone())),
        Arc::new(MetricsHandler),
        WebhookHandler::new(
            store.clone(),
            settings.events.webhook_retry_schedule.clone(),
            settings.events.webhook_disable_after,
        ),
    ]
}

/// An in-memory bus with the built-in handlers, attached to the store for
/// `before` events (and `failed` ones the database could not log).
fn memory_bus(settings: &Settings, store: &Store, handlers: &[Arc<dyn Handler>]) -> Arc<MemoryBus> {
    let bus = MemoryBus::new(Dispatcher::new(
        Some(store.clone()),
        settings.events.clone(),
    ));
    for h in handlers {
        bus.subscribe(h.clone());
    }
    store.attach_events(bus.clone());
    bus
}

/// A running gateway.
pub struct RunningGateway {
    /// Address it listens on.
    pub addr: SocketAddr,
    /// The acceptor (mode, queue handle).
    pub ingest: Ingest,
    /// The store used in direct mode.
    pub store: Store,
    /// The JSON cache the read API serves (written in-process in direct mode).
    pub cache: crate::cache::Cache,
    task: JoinHandle<std::io::Result<()>>,
    relay: JoinHandle<()>,
    sender: Option<JoinHandle<()>>,
}

impl RunningGateway {
    /// Current mode name.
    pub fn mode(&self) -> &'static str {
        self.ingest.mode().as_str()
    }

    /// Waits until the server has shut down (and the relay drained).
    pub async fn wait(self) -> std::io::Result<()> {
        let res = match self.task.await {
            Ok(res) => res,
            Err(e) => Err(std::io::Error::other(e)),
        };
        let _ = self.relay.await;
        if let Some(sender) = self.sender {
            let _ = sender.await;
        }
        res
    }
}

/// Starts the gateway: audit log, store and direct-mode pipeline, acceptor
/// (Redis when configured), outbox relay, router, listener.
pub async fn start_gateway(
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<RunningGateway, StartError> {
    if !settings.is_prepared() {
        return Err(StartError::Config(
            "the default app has no secret yet: call Settings::prepare after loading".into(),
        ));
    }
    let settings = Arc::new(settings);
    // Install the recorder before the first metric (the mode gauge is set
    // while the acceptor starts, long before the router exists).
    crate::telemetry::metrics_handle();
    if let Some(path) = &settings.generated_secret {
        tracing::warn!(
            path = %path.display(),
            "no app secret configured: generated a local development secret (sign test payloads with `inlet sign`)"
        );
    }
    let audit =
        Audit::new(settings.audit_dir(), "gateway").map_err(io("opening the audit directory"))?;
    let store = open_store(&settings, &shutdown).await?;
    let handlers = builtin_handlers(&settings, &store, &audit);
    let bus = memory_bus(&settings, &store, &handlers);
    let committed = Arc::new(Notify::new());
    let direct: Arc<dyn DirectHandler> = DirectPipeline::start(
        Pipeline::new(store.clone(), audit.clone(), "direct"),
        settings.worker.batch_size,
        committed.clone(),
    );
    let ingest = Ingest::new(&settings, Some(direct), audit.clone()).await;
    ingest.spawn_probe(settings.redis.probe_interval, shutdown.clone());
    ingest.spawn_drain(settings.spool.drain_interval, shutdown.clone());
    // Queue gauges while Redis is up, store gauges always; ends on shutdown.
    crate::status::spawn_sampler(
        crate::status::SampleSource::Ingest(ingest.clone()),
        Some(store.clone()),
        crate::status::stall_threshold(&settings),
        shutdown.clone(),
    );
    // Cache jobs: the worker's consumer in queue mode, this sink in direct
    // mode; without Redis at all the gateway also runs the full rebuild.
    let cache = crate::cache::Cache::new(settings.cache_dir(), store.clone(), &settings.cache);
    let cache_sink = crate::cache::sync::LocalCacheSink::start(
        cache.clone(),
        settings.cache.coalesce_window,
        settings.cache.summary_interval,
        shutdown.clone(),
    );
    if settings.redis_url.is_none() {
        crate::cache::sync::spawn_rebuild(
            cache.clone(),
            settings.cache.rebuild_interval,
            shutdown.clone(),
        );
    }
    let mut local: Vec<Arc<dyn LocalSink>> = vec![Arc::new(MemoryBusSink(bus)), cache_sink];
    // Media jobs: the workers' consumer in queue mode, this sink in direct
    // mode (without Redis at all it also resumes what a previous process
    // left pending).
    let media_storage = crate::media::storage::from_settings(&settings)
        .map_err(|e| StartError::Config(e.to_string()))?;
    if settings.media.enabled {
        let fetcher = media_fetcher(&settings, &store, &media_storage, &audit)?;
        local.push(crate::media::consumer::LocalMediaSink::start(
            fetcher,
            settings.media.concurrency,
            settings.redis_url.is_none(),
            shutdown.clone(),
        ));
    } else if settings.redis_url.is_none() {
        // Downloads off: the attachments stay `pending` in the store.
        local.push(Arc::new(crate::relay::DiscardSink(
            crate::streams::MEDIA_PROCESSING,
        )));
    }
    // Lead jobs: the same split (without Redis, leads left pending by a
    // previous process are resumed).
    if settings.leads.enabled {
        let fetcher = lead_fetcher(&settings, &store, &audit)?;
        local.push(crate::leads::consumer::LocalLeadSink::start(
            fetcher,
            settings.leads.concurrency,
            settings.redis_url.is_none(),
            shutdown.clone(),
        ));
    } else if settings.redis_url.is_none() {
        // Fetching off: the leads stay `pending` in the store.
        local.push(Arc::new(crate::relay::DiscardSink(
            crate::streams::LEAD_FETCH,
        )));
    }
    if settings.redis_url.is_none() {
        local.push(Arc::new(crate::relay::DiscardSink(
            crate::streams::INCOMING_NORMALIZED,
        )));
        // The command copy on `outgoing.command` is for Redis consumers; the
        // in-process sender reads the store.
        local.push(Arc::new(crate::relay::DiscardSink(
            crate::streams::OUTGOING_COMMAND,
        )));
    }
    let relay = spawn_relay(
        store.clone(),
        RelayTarget::Ingest(ingest.clone()),
        local,
        committed,
        shutdown.clone(),
    );
    // Without Redis there is no worker: the gateway runs retention and the
    // scheduled Graph sync itself.
    if settings.redis_url.is_none() {
        spawn_retention(&settings, Some(store.clone()), shutdown.clone());
        crate::sync::spawn_scheduler(settings.clone(), store.clone(), "gateway", shutdown.clone());
    }
    // Without Redis there is no worker: the gateway sends itself, paced by
    // an in-process limiter (one process).
    let sender = if settings.redis_url.is_none() && settings.outbound.enabled {
        let limiter = Arc::new(crate::sender::limiter::LocalLimiter::new(
            settings.outbound.limits,
        ));
        let owner = format!("gateway-{}", uuid::Uuid::now_v7().simple());
        let sender = crate::sender::Sender::new(
            store.clone(),
            limiter,
            settings.clone(),
            owner,
            Some(audit.clone()),
        )
        .map_err(|e| StartError::Config(e.to_string()))?;
        Some(sender.spawn(shutdown.clone()))
    } else {
        None
    };
    let feed = crate::feed::Feed::new(store.clone(), settings.events.stream_poll, shutdown.clone());
    let state = AppState::new(settings.clone(), ingest.clone(), audit)
        .with_cache(cache.clone())
        .with_feed(feed)
        .with_media(media_storage);
    let gateway = Gateway::bind(state, shutdown)
        .await
        .map_err(io("binding the listen address"))?;
    let addr = gateway
        .local_addr()
        .map_err(io("reading the bound address"))?;
    let task = tokio::spawn(gateway.run());
    Ok(RunningGateway {
        addr,
        ingest,
        store,
        cache,
        task,
        relay,
        sender,
    })
}

/// A running worker.
pub struct RunningWorker {
    /// Consumer name in the group.
    pub consumer: String,
    /// The store it writes to.
    pub store: Store,
    /// Address of its `/metrics` + `/healthz` listener, when configured.
    pub metrics_addr: Option<SocketAddr>,
    /// The JSON cache its cache-sync consumer writes.
    pub cache: crate::cache::Cache,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningWorker {
    /// Waits until the worker finished its last batch and the relay drained.
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Connects to Redis, retrying with backoff until it answers or `shutdown`.
pub async fn connect_queue(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> Result<RedisQueue, StartError> {
    let not_configured = || {
        StartError::Config(
            "redis_url: the worker needs INLET_REDIS_URL (without Redis the gateway processes events itself, in direct mode)".into(),
        )
    };
    if settings.redis_url.is_none() {
        return Err(not_configured());
    }
    let mut delay = Duration::from_millis(200);
    loop {
        match RedisQueue::from_settings(settings).await {
            Ok(Some(q)) => return Ok(q),
            Ok(None) => return Err(not_configured()),
            Err(e) => {
                tracing::warn!(error = %e, ?delay, "redis unavailable; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(StartError::Config("shut down before redis was reachable".into())),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Starts a worker: store (migrated), Redis, metrics listener and gauges
/// sampler (when `worker.metrics_listen` is set), outbox relay, audit
/// retention, and the consumer loop.
pub async fn start_worker(
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<RunningWorker, StartError> {
    let audit =
        Audit::new(settings.audit_dir(), "worker").map_err(io("opening the audit directory"))?;
    let store = open_store(&settings, &shutdown).await?;
    let queue = connect_queue(&settings, &shutdown).await?;
    // The worker has no other HTTP server: a small listener serves the
    // gauges of the stream sampler (and every worker counter).
    let mut metrics_tasks = Vec::new();
    let metrics_addr = match settings.worker.metrics_listen {
        Some(addr) => {
            let (bound, server) = crate::telemetry::serve_metrics(addr, shutdown.clone())
                .await
                .map_err(io(
                    "binding worker.metrics_listen (INLET_WORKER__METRICS_LISTEN; empty = off)",
                ))?;
            metrics_tasks.push(server);
            metrics_tasks.push(crate::status::spawn_sampler(
                crate::status::SampleSource::Queue(queue.clone()),
                Some(store.clone()),
                crate::status::stall_threshold(&settings),
                shutdown.clone(),
            ));
            Some(bound)
        }
        None => None,
    };
    let committed = Arc::new(Notify::new());
    let relay = spawn_relay(
        store.clone(),
        RelayTarget::Queue(queue.clone()),
        Vec::new(),
        committed.clone(),
        shutdown.clone(),
    );
    let retention = spawn_retention(&settings, Some(store.clone()), shutdown.clone());
    let consumer_name = settings
        .worker
        .consumer_name
        .clone()
        .unwrap_or_else(crate::worker::default_consumer_name);
    let cache = crate::cache::Cache::new(settings.cache_dir(), store.clone(), &settings.cache);
    let cache_tasks = [
        crate::cache::sync::spawn_consumer(
            &settings,
            cache.clone(),
            queue.clone(),
            &consumer_name,
            shutdown.clone(),
        ),
        crate::cache::sync::spawn_rebuild(
            cache.clone(),
            settings.cache.rebuild_interval,
            shutdown.clone(),
        ),
    ];
    let handlers = builtin_handlers(&settings, &store, &audit);
    memory_bus(&settings, &store, &handlers);
    let redis_bus = RedisBus::new(
        queue.clone(),
        Dispatcher::new(Some(store.clone()), settings.events.clone()),
        &consumer_name,
        settings.worker.claim_idle,
        shutdown.clone(),
    );
    for h in &handlers {
        redis_bus.subscribe(h.clone());
    }
    let pipeline = Pipeline::new(store.clone(), audit.clone(), "worker");
    let consumer = consumer_name.clone();
    let mut tasks = vec![relay, retention];
    // `worker.concurrency` consumer loops on every raw shard, each with one
    // batch in flight: the first under the consumer name, the others as
    // name-2, name-3, …
    tasks.push(crate::worker::spawn_shards(
        crate::worker::ShardWorkers {
            settings: Arc::new(settings.clone()),
            queue: queue.clone(),
            pipeline: pipeline.clone(),
            committed: committed.clone(),
            consumer: consumer.clone(),
        },
        shutdown.clone(),
    ));
    if settings.outbound.enabled {
        let limiter = Arc::new(crate::sender::limiter::RedisLimiter::new(
            queue.connection(),
            &settings.stream_prefix,
            settings.outbound.limits,
        ));
        let owner = format!("{consumer_name}-{}", uuid::Uuid::now_v7().simple());
        let sender = crate::sender::Sender::new(
            store.clone(),
            limiter,
            Arc::new(settings.clone()),
            owner,
            Some(audit.clone()),
        )
        .map_err(|e| StartError::Config(e.to_string()))?;
        tasks.push(sender.spawn(shutdown.clone()));
        let intake = crate::sender::intake::CommandIntake::new(
            queue.clone(),
            store.clone(),
            audit.clone(),
            Arc::new(settings.clone()),
            format!("{consumer_name}-intake"),
        );
        tasks.push(intake.spawn(shutdown.clone()));
    }
    if settings.media.enabled {
        let settings = Arc::new(settings.clone());
        let storage = crate::media::storage::from_settings(&settings)
            .map_err(|e| StartError::Config(e.to_string()))?;
        let fetcher = media_fetcher(&settings, &store, &storage, &audit)?;
        let media = crate::media::consumer::MediaConsumer::new(
            fetcher,
            queue.clone(),
            &format!("{consumer_name}-media"),
            settings.media.concurrency,
            settings.worker.block,
            settings.worker.claim_idle,
        );
        tasks.push(media.spawn(shutdown.clone()));
    }
    if settings.leads.enabled {
        let settings = Arc::new(settings.clone());
        let fetcher = lead_fetcher(&settings, &store, &audit)?;
        let leads = crate::leads::consumer::LeadConsumer::new(
            fetcher,
            queue.clone(),
            &format!("{consumer_name}-leads"),
            settings.leads.concurrency,
            settings.worker.block,
            settings.worker.claim_idle,
        );
        tasks.push(leads.spawn(shutdown.clone()));
    }
    tasks.extend(crate::sync::spawn_scheduler(
        Arc::new(settings.clone()),
        store.clone(),
        &consumer_name,
        shutdown.clone(),
    ));
    tasks.extend(redis_bus.take_tasks());
    tasks.extend(metrics_tasks);
    tasks.extend(cache_tasks);
    Ok(RunningWorker {
        consumer,
        store,
        metrics_addr,
        cache,
        tasks,
    })
}

/// The media job runner of a service.
fn media_fetcher(
    settings: &Arc<Settings>,
    store: &Store,
    storage: &crate::media::storage::Storage,
    audit: &Audit,
) -> Result<Arc<crate::media::fetch::MediaFetcher>, StartError> {
    crate::media::fetch::MediaFetcher::new(
        store.clone(),
        storage.clone(),
        settings.clone(),
        Some(audit.clone()),
    )
    .map(Arc::new)
    .map_err(|e| StartError::Config(e.to_string()))
}

/// The lead job runner of a service.
fn lead_fetcher(
    settings: &Arc<Settings>,
    store: &Store,
    audit: &Audit,
) -> Result<Arc<crate::leads::fetch::LeadFetcher>, StartError> {
    crate::leads::fetch::LeadFetcher::new(store.clone(), settings.clone(), Some(audit.clone()))
        .map(Arc::new)
        .map_err(|e| StartError::Config(e.to_string()))
}

/// The daily housekeeping job, also run at start: audit files past
/// `audit.retention_days`, and (with a store) the retention and partition
/// job ([`crate::store::EventStore::maintain`]: partitions created ahead,
/// expired ones dropped, old idempotency records deleted). A failed store
/// run is tried again after [`MAINTENANCE_RETRY`], not a day later.
fn spawn_retention(
    settings: &Settings,
    store: Option<Store>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let dir = settings.audit_dir();
    let days = settings.audit.retention_days;
    let settings = settings.clone();
    tokio::spawn(async move {
        loop {
            match crate::audit::prune(&dir, days) {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "old audit files removed"),
                Err(e) => tracing::warn!(error = %e, "audit retention failed"),
            }
            let mut wait = Duration::from_secs(24 * 3600);
            if let Some(store) = &store {
                let job = crate::store::partitions::Maintenance::from_settings(
                    &settings,
                    chrono::Utc::now(),
                );
                match store.maintain(&job).await {
                    Ok(report) => record_maintenance(&report),
                    Err(e) => {
                        metrics::counter!("inlet_partition_runs_total", "outcome" => "failed")
                            .increment(1);
                        tracing::warn!(error = %e, "database retention and partition job failed");
                        wait = MAINTENANCE_RETRY;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    })
}

/// How soon a failed retention and partition run is tried again (a lock
/// it could not get within its timeout, the database down).
const MAINTENANCE_RETRY: Duration = Duration::from_secs(15 * 60);

/// Logs and counts what one run of the retention and partition job did.
fn record_maintenance(report: &crate::store::partitions::MaintenanceReport) {
    metrics::counter!("inlet_partition_runs_total", "outcome" => "ok").increment(1);
    for change in &report.created {
        metrics::counter!("inlet_partitions_created_total", "table" => change.table.clone())
            .increment(1);
        tracing::info!(
            table = %change.table,
            partition = %change.partition,
            from = %change.range.from,
            to = %change.range.to,
            "partition created"
        );
    }
    for change in &report.dropped {
        metrics::counter!("inlet_partitions_dropped_total", "table" => change.table.clone())
            .increment(1);
        tracing::info!(
            table = %change.table,
            partition = %change.partition,
            to = %change.range.to,
            "expired partition dropped"
        );
    }
    for (table, rows) in &report.default_rows {
        metrics::gauge!("inlet_partition_default_rows", "table" => table.clone()).set(*rows as f64);
        if *rows > 0 {
            tracing::warn!(
                table = %table,
                rows,
                "rows in the default partition: their times are outside every partition"
            );
        }
    }
    if !report.is_quiet() {
        tracing::info!(
            raw_events = report.raw_events_deleted,
            processed = report.processed_events_deleted,
            event_keys = report.event_keys_deleted,
            moved_from_default = report.moved_from_default,
            kept_unrelayed = report.kept_unrelayed.len(),
            "database retention and partition job done"
        );
    }
}
