//! The event bus: one [`EventBus`] trait, two implementations.
//!
//! - [`MemoryBus`] delivers in process (direct mode, `before` events, and
//!   `after` events while Redis is away, fed by the outbox relay).
//! - [`RedisBus`] delivers through `{prefix}events`: every handler has its
//!   own consumer group, so each event reaches each handler once across all
//!   worker processes, and a slow handler only delays itself.
//!
//! Handlers are isolated: each runs in its own task with a timeout and
//! retries with backoff; a handler that gives up records the event in
//! `event_failures` (the DLQ of events). `processed_events` makes every
//! handler idempotent per event id; replays carry a marker and a key of
//! their own, so dedup does not swallow them.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::audit::{Audit, AuditRecord};
use crate::backoff::{Backoff, Streak};
use crate::config::EventSettings;
use crate::events::{outbox_row, parse_event, Event, EventSink, Phase};
use crate::plan::OutboxRow;
use crate::queue::{ConsumerConfig, GroupConsumer, RedisQueue};
use crate::relay::{LocalSink, SinkError};
use crate::store::{OutboxEntry, Store};
use crate::streams::{bus_group, EVENTS};

/// Why a handler could not handle an event this time (it is retried, then
/// recorded in `event_failures` with this message).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct HandlerError(Box<dyn std::error::Error + Send + Sync>);

impl HandlerError {
    /// Wraps the cause (any error, or a message).
    pub fn new(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(cause.into())
    }
}

/// Publishing events failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The events stream could not be written.
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
}

/// A subscriber.
pub trait Handler: Send + Sync + 'static {
    /// Stable name: consumer group, idempotency key, failure records.
    fn name(&self) -> &str;
    /// Whether the handler wants this event at all.
    fn wants(&self, event: &Event) -> bool;
    /// Handles one event; an error is retried.
    fn handle<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), HandlerError>>;
    /// Whether deliveries are recorded in `processed_events` so the handler
    /// never sees an event twice. Cheap, harmless handlers (metrics, audit)
    /// opt out to spare two round trips per event.
    fn idempotent(&self) -> bool {
        true
    }
}

/// One interface, in-memory or Redis-backed.
pub trait EventBus: Send + Sync {
    /// Publishes events to every subscriber.
    fn publish(&self, events: Vec<Event>) -> BoxFuture<'_, Result<(), BusError>>;
    /// Adds a subscriber.
    fn subscribe(&self, handler: Arc<dyn Handler>);
}

/// Timeout, retries and failure recording shared by both buses.
#[derive(Clone)]
pub struct Dispatcher {
    store: Option<Store>,
    settings: EventSettings,
}

impl Dispatcher {
    /// Dispatches with the store for idempotency and failure records.
    pub fn new(store: Option<Store>, settings: EventSettings) -> Self {
        Self { store, settings }
    }

    /// Runs `handler` on `event` with isolation. Never fails: a final
    /// failure is recorded and counted.
    pub async fn run(&self, handler: &dyn Handler, event: &Event) {
        if !handler.wants(event) {
            return;
        }
        let key = match &event.replay {
            Some(r) => format!("{}#replay:{r}", event.id),
            None => event.id.to_string(),
        };
        let name = handler.name().to_string();
        let store = self.store.as_ref().filter(|_| handler.idempotent());
        if let Some(store) = store {
            if store
                .event_log()
                .is_processed(&key, &name)
                .await
                .unwrap_or(false)
            {
                return;
            }
        }
        // Handler retries stay within a minute however many are configured.
        let mut backoff = Backoff::new(self.settings.handler_backoff, Duration::from_secs(60));
        let max = self.settings.handler_max_attempts;
        let mut last_error = String::new();
        for attempt in 1..=max {
            match tokio::time::timeout(self.settings.handler_timeout, handler.handle(event)).await {
                Ok(Ok(())) => {
                    metrics::counter!("inlet_event_handler_total", "handler" => name.clone(), "outcome" => "ok")
                        .increment(1);
                    if let Some(store) = store {
                        if let Err(e) = store.mark_processed(&key, &name).await {
                            tracing::warn!(error = %e, handler = %name, "could not record processed event");
                        }
                    }
                    return;
                }
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => {
                    last_error = format!("timed out after {:?}", self.settings.handler_timeout)
                }
            }
            if attempt < max {
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
        metrics::counter!("inlet_event_handler_total", "handler" => name.clone(), "outcome" => "failed")
            .increment(1);
        tracing::warn!(handler = %name, event_type = %event.event_type, error = %last_error, "handler gave up on event");
        if let Some(store) = &self.store {
            let attempts = i32::try_from(max).unwrap_or(i32::MAX);
            if let Err(e) = store
                .event_log()
                .record_failure(event, &name, attempts, &last_error)
                .await
            {
                tracing::error!(error = %e, "could not record handler failure");
            }
        }
    }
}

/// In-process bus: one queue and task per handler.
pub struct MemoryBus {
    dispatcher: Dispatcher,
    handlers: RwLock<Vec<mpsc::UnboundedSender<Event>>>,
}

impl MemoryBus {
    /// A bus dispatching with `dispatcher`.
    pub fn new(dispatcher: Dispatcher) -> Arc<Self> {
        Arc::new(Self {
            dispatcher,
            handlers: RwLock::new(Vec::new()),
        })
    }

    fn send_all(&self, events: Vec<Event>) {
        let handlers = self.handlers.read().unwrap_or_else(|p| p.into_inner());
        for event in events {
            for h in handlers.iter() {
                let _ = h.send(event.clone());
            }
        }
    }
}

impl EventBus for MemoryBus {
    fn publish(&self, events: Vec<Event>) -> BoxFuture<'_, Result<(), BusError>> {
        self.send_all(events);
        Box::pin(async { Ok(()) })
    }

    fn subscribe(&self, handler: Arc<dyn Handler>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let dispatcher = self.dispatcher.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                dispatcher.run(handler.as_ref(), &event).await;
            }
        });
        self.handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
    }
}

impl EventSink for MemoryBus {
    fn emit(&self, events: Vec<Event>) {
        self.send_all(events);
    }
}

/// Feeds outbox entries of [`EVENTS`] to a memory bus while Redis is
/// not available.
pub struct MemoryBusSink(pub Arc<MemoryBus>);

impl LocalSink for MemoryBusSink {
    fn stream(&self) -> &'static str {
        EVENTS
    }

    fn deliver(&self, entries: Vec<OutboxEntry>) -> BoxFuture<'_, Result<(), SinkError>> {
        let events: Vec<Event> = entries
            .iter()
            .filter_map(|e| {
                e.fields
                    .iter()
                    .find(|(k, _)| k == "event")
                    .and_then(|(_, v)| parse_event(v))
            })
            .collect();
        self.0.send_all(events);
        Box::pin(async { Ok(()) })
    }
}

/// Redis Streams bus: publish with `XADD`, one consumer group per handler.
/// Entries a dead consumer left pending are reclaimed after `claim_idle`.
pub struct RedisBus {
    queue: RedisQueue,
    dispatcher: Dispatcher,
    consumer: String,
    claim_idle: Duration,
    shutdown: CancellationToken,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl RedisBus {
    /// A bus on `queue`; consumers are named `consumer` and reclaim what a
    /// dead consumer left pending for `claim_idle`.
    pub fn new(
        queue: RedisQueue,
        dispatcher: Dispatcher,
        consumer: &str,
        claim_idle: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            queue,
            dispatcher,
            consumer: consumer.to_string(),
            claim_idle,
            shutdown,
            tasks: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The consumer loops, to await on shutdown.
    pub fn take_tasks(&self) -> Vec<tokio::task::JoinHandle<()>> {
        std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl EventBus for RedisBus {
    fn publish(&self, events: Vec<Event>) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let rows: Vec<OutboxRow> = events.iter().map(outbox_row).collect();
            let entries: Vec<Vec<(&str, Vec<u8>)>> = rows
                .iter()
                .map(|r| {
                    r.fields
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.clone().into_bytes()))
                        .collect()
                })
                .collect();
            self.queue.publish_many(EVENTS, &entries).await?;
            Ok(())
        })
    }

    fn subscribe(&self, handler: Arc<dyn Handler>) {
        let queue = self.queue.clone();
        let dispatcher = self.dispatcher.clone();
        let consumer = self.consumer.clone();
        let claim_idle = self.claim_idle;
        let shutdown = self.shutdown.clone();
        let group = bus_group(handler.name());
        let task = tokio::spawn(async move {
            let config = ConsumerConfig {
                stream: EVENTS.into(),
                group: group.clone(),
                consumer,
                count: 100,
                block: Duration::from_millis(1000),
                claim_idle,
            };
            let mut streak = Streak::new("event bus", Backoff::infrastructure());
            let mut consumer = loop {
                match GroupConsumer::connect(&queue, config.clone()).await {
                    Ok(c) => break c,
                    Err(e) => {
                        if !streak.failed("connecting", &e, &shutdown).await {
                            return;
                        }
                    }
                }
            };
            streak.recovered();
            while !shutdown.is_cancelled() {
                let batch = match consumer.next_batch().await {
                    Ok(b) => {
                        streak.recovered();
                        b
                    }
                    Err(e) => {
                        streak.failed("reading events", &e, &shutdown).await;
                        continue;
                    }
                };
                if batch.is_empty() {
                    continue;
                }
                // The batch keeps its entries fresh while a slow receiver
                // works, so no other worker delivers them too.
                for entry in batch.entries() {
                    if let Some(event) = entry.text("event").as_deref().and_then(parse_event) {
                        dispatcher.run(handler.as_ref(), &event).await;
                    }
                }
                // Other groups still need the entries: acknowledge only.
                if let Err(e) = batch.ack().await {
                    tracing::warn!(error = %e, group, "event bus ack failed");
                }
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }
}

/// Built-in subscriber: one audit line per event (type, ids; no data).
pub struct AuditHandler(pub Audit);

impl Handler for AuditHandler {
    fn name(&self) -> &str {
        "audit"
    }

    fn wants(&self, event: &Event) -> bool {
        event.phase != Phase::Before
    }

    fn idempotent(&self) -> bool {
        false
    }

    fn handle<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), HandlerError>> {
        let mut rec = AuditRecord::new("event")
            .with("event_type", event.event_type.as_str())
            .with("event_id", event.id.to_string())
            .outcome(if event.phase == Phase::Failed {
                "error"
            } else {
                "ok"
            });
        rec.tenant = Some(event.tenant_id.clone());
        rec.trace_id = event
            .trace_id
            .as_deref()
            .and_then(|t| uuid::Uuid::parse_str(t).ok());
        if let Some(r) = &event.replay {
            rec = rec.with("replay", r.as_str());
        }
        self.0.write(rec);
        Box::pin(async { Ok(()) })
    }
}

/// Built-in subscriber: `inlet_events_total{type}`.
pub struct MetricsHandler;

impl Handler for MetricsHandler {
    fn name(&self) -> &str {
        "metrics"
    }

    fn wants(&self, _event: &Event) -> bool {
        true
    }

    fn idempotent(&self) -> bool {
        false
    }

    fn handle<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), HandlerError>> {
        metrics::counter!("inlet_events_total", "type" => event.event_type.clone()).increment(1);
        Box::pin(async { Ok(()) })
    }
}
