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
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::audit::{Audit, AuditRecord};
use crate::backoff::{Backoff, Streak};
use crate::config::EventSettings;
use crate::events::{outbox_row, parse_event, Event, EventSink, Phase};
use crate::plan::OutboxRow;
use crate::queue::{ConsumerConfig, GroupConsumer, RedisQueue};
use crate::relay::{LocalSink, SinkError};
use crate::store::events::BusPending;
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

    /// The end of a lease on a pending in-process delivery taken now: longer
    /// than [`Dispatcher::run`] can take on one event (every attempt timing
    /// out, with the backoff between them).
    fn lease_until(&self) -> chrono::DateTime<chrono::Utc> {
        let attempts = self.settings.handler_max_attempts.max(1);
        // Each backoff is at most its ceiling: base doubling, capped at a
        // minute (see `run`).
        let mut backoff =
            Backoff::new(self.settings.handler_backoff, Duration::from_secs(60)).without_jitter();
        let waits: Duration = (1..attempts).map(|_| backoff.next_delay()).sum();
        let run = self.settings.handler_timeout * attempts + waits;
        // Twice that: a busy runtime may start the handler late.
        chrono::Utc::now() + chrono::Duration::from_std(run * 2).unwrap_or(chrono::Duration::MAX)
    }

    /// Runs `handler` on `event` with isolation. Never fails: a final
    /// failure is recorded and counted.
    pub async fn run(&self, handler: &dyn Handler, event: &Event) {
        if !handler.wants(event) {
            return;
        }
        let key = delivery_key(event);
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

/// In-process bus: one task per handler.
///
/// Logged events (`after`, `failed`) reach it through the relay
/// ([`MemoryBusSink`]), which hands them over durably: one `bus_pending` row
/// per handler that wants the event, written before the relay's cursor moves
/// past them. Each handler's task works through its own rows and deletes
/// them once handled (or given up on and recorded), so a crash in between
/// loses nothing — the next process delivers them — and a slow handler only
/// delays itself. `before` events, which are not logged, and events
/// published directly stay in memory.
pub struct MemoryBus {
    dispatcher: Dispatcher,
    handlers: RwLock<Vec<Subscriber>>,
    /// This process' name on the `bus_pending` rows it holds.
    owner: Arc<str>,
}

/// One handler's ends: its in-memory queue and the wake-up of its pending
/// rows.
struct Subscriber {
    handler: Arc<dyn Handler>,
    queue: mpsc::UnboundedSender<Event>,
    pending: Arc<Notify>,
}

/// How often a handler task looks for pending rows without a wake-up (rows
/// left by a previous process, or a failed read).
const PENDING_POLL: Duration = Duration::from_secs(1);

impl MemoryBus {
    /// A bus dispatching with `dispatcher`.
    pub fn new(dispatcher: Dispatcher) -> Arc<Self> {
        Arc::new(Self {
            dispatcher,
            handlers: RwLock::new(Vec::new()),
            owner: format!("bus-{}", uuid::Uuid::now_v7().simple()).into(),
        })
    }

    fn send_all(&self, events: Vec<Event>) {
        let handlers = self.handlers.read().unwrap_or_else(|p| p.into_inner());
        for event in events {
            for h in handlers.iter() {
                let _ = h.queue.send(event.clone());
            }
        }
    }

    /// Hands events over durably (see [`MemoryBus`]): returns once every
    /// handler's rows are stored. Without a store, in memory.
    async fn hand_over(&self, events: Vec<(Event, String)>) -> Result<(), SinkError> {
        let Some(store) = self.dispatcher.store.clone() else {
            self.send_all(events.into_iter().map(|(e, _)| e).collect());
            return Ok(());
        };
        let (rows, wake) = {
            let handlers = self.handlers.read().unwrap_or_else(|p| p.into_inner());
            let mut rows = Vec::new();
            for (event, json) in &events {
                for h in handlers.iter().filter(|h| h.handler.wants(event)) {
                    rows.push(BusPending {
                        handler: h.handler.name().to_string(),
                        event_key: delivery_key(event),
                        event: json.clone(),
                    });
                }
            }
            let wake: Vec<Arc<Notify>> = handlers.iter().map(|h| h.pending.clone()).collect();
            (rows, wake)
        };
        store
            .event_log()
            .bus_enqueue(&rows, &self.owner, self.dispatcher.lease_until())
            .await
            .map_err(SinkError::new)?;
        for w in wake {
            w.notify_one();
        }
        Ok(())
    }
}

/// The key a handler's idempotency record and pending row use for an event:
/// its id, or for a replay, the id and the replay marker.
fn delivery_key(event: &Event) -> String {
    match &event.replay {
        Some(r) => format!("{}#replay:{r}", event.id),
        None => event.id.to_string(),
    }
}

/// Delivers `handler`'s pending rows, one at a time, until none is left
/// that is this process' or unleased; a row is deleted once its event was
/// handled (or given up on and recorded), so after a crash at most the
/// event in hand is delivered again.
async fn drain_pending(dispatcher: &Dispatcher, store: &Store, owner: &str, handler: &dyn Handler) {
    let log = store.event_log();
    loop {
        let (id, json) = match log
            .bus_claim(handler.name(), owner, dispatcher.lease_until())
            .await
        {
            Ok(Some(row)) => row,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, handler = handler.name(), "could not read pending events");
                return;
            }
        };
        match parse_event(&json) {
            Some(event) => dispatcher.run(handler, &event).await,
            None => tracing::warn!(
                handler = handler.name(),
                row = id,
                "unreadable pending event dropped"
            ),
        }
        if let Err(e) = log.bus_done(&[id]).await {
            tracing::warn!(error = %e, handler = handler.name(), "could not acknowledge a pending event");
            return;
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
        let pending = Arc::new(Notify::new());
        let dispatcher = self.dispatcher.clone();
        let task_handler = handler.clone();
        let wake = pending.clone();
        let owner = self.owner.clone();
        tokio::spawn(async move {
            let handler = task_handler;
            let store = dispatcher.store.clone();
            // Also picks up rows a previous process left behind (the first
            // tick is immediate).
            let mut poll = tokio::time::interval(PENDING_POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let drain = tokio::select! {
                    // In-memory events first: `before` events gate writes.
                    biased;
                    event = rx.recv() => match event {
                        Some(event) => {
                            dispatcher.run(handler.as_ref(), &event).await;
                            false
                        }
                        // The bus is gone.
                        None => break,
                    },
                    _ = wake.notified() => true,
                    _ = poll.tick() => true,
                };
                if let (true, Some(store)) = (drain, &store) {
                    drain_pending(&dispatcher, store, &owner, handler.as_ref()).await;
                }
            }
        });
        self.handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Subscriber {
                handler,
                queue: tx,
                pending,
            });
    }
}

impl EventSink for MemoryBus {
    fn emit(&self, events: Vec<Event>) {
        self.send_all(events);
    }
}

/// Feeds outbox entries of [`EVENTS`] and new event-log rows to a memory bus
/// while Redis is not available; the relay moves past them only once they
/// are handed over durably.
pub struct MemoryBusSink(pub Arc<MemoryBus>);

impl LocalSink for MemoryBusSink {
    fn stream(&self) -> &'static str {
        EVENTS
    }

    fn deliver(&self, entries: Vec<OutboxEntry>) -> BoxFuture<'_, Result<(), SinkError>> {
        let events: Vec<(Event, String)> = entries
            .into_iter()
            .filter_map(|e| {
                let json = e.fields.into_iter().find(|(k, _)| k == "event")?.1;
                Some((parse_event(&json)?, json))
            })
            .collect();
        Box::pin(self.0.hand_over(events))
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
