//! The outbox relay: publishes entries the store wrote in the same
//! transaction as the data (normalized events, cache jobs, replayed bus
//! events) to their Redis streams, then deletes them; and publishes new rows
//! of the event log (`after`/`failed` events) to `{prefix}events`, moving a
//! cursor past them (see `EventStore::log_claim`).
//!
//! Delivery is at least once; entries carry deterministic ids so consumers
//! deduplicate. While Redis is down (direct mode), entries of streams that
//! have a [`LocalSink`] (cache jobs, bus events) are handed to it in-process;
//! the others wait in the store and are published when Redis returns, so
//! nothing downstream is lost when the mode flips back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::ingest::{Ingest, Mode};
use crate::queue::{QueueError, RedisQueue};
use crate::store::{OutboxClaim, OutboxEntry, Store, StoreError};
use crate::streams::EVENTS;

/// Where the relay gets its Redis connection.
#[derive(Clone)]
pub enum RelayTarget {
    /// A fixed queue (the worker).
    Queue(RedisQueue),
    /// Whatever the gateway's acceptor has, only in queue mode.
    Ingest(Ingest),
}

impl RelayTarget {
    async fn queue(&self) -> Option<RedisQueue> {
        match self {
            RelayTarget::Queue(q) => Some(q.clone()),
            RelayTarget::Ingest(i) if i.mode() == Mode::Queue => i.queue().await,
            RelayTarget::Ingest(_) => None,
        }
    }
}

/// A local sink could not take entries (they stay in the outbox).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SinkError(Box<dyn std::error::Error + Send + Sync>);

impl SinkError {
    /// Wraps the cause (any error, or a message).
    pub fn new(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(cause.into())
    }
}

/// A relay pass failed; the entries stay pending for the next one.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Claiming or completing entries failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Publishing to Redis failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A local sink refused the entries.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// An in-process consumer of one outbox stream, used when Redis is not
/// available.
pub trait LocalSink: Send + Sync + 'static {
    /// The stream it consumes (without prefix).
    fn stream(&self) -> &'static str;
    /// Handles entries; an error leaves them in the outbox for a retry.
    fn deliver(&self, entries: Vec<OutboxEntry>) -> BoxFuture<'_, Result<(), SinkError>>;
}

/// A local "consumer" that drops what it is handed: with no Redis configured
/// at all (the embedded default) the normalized stream has no consumer and
/// never will, so its outbox entries are counted and removed instead of
/// piling up in the store. Not used when Redis is configured but down: then
/// the entries wait for it.
pub struct DiscardSink(pub &'static str);

impl LocalSink for DiscardSink {
    fn stream(&self) -> &'static str {
        self.0
    }

    fn deliver(&self, entries: Vec<OutboxEntry>) -> BoxFuture<'_, Result<(), SinkError>> {
        metrics::counter!("inlet_outbox_discarded_total", "stream" => self.0)
            .increment(entries.len() as u64);
        Box::pin(async { Ok(()) })
    }
}

const BATCH: i64 = 500;

/// Stream entries as field lists, ready for `XADD`.
type Fields<'a> = Vec<(&'a str, Vec<u8>)>;

/// Publishes one batch of pending outbox entries and one batch of new
/// event-log rows; returns the larger of the two counts (a full batch means
/// there may be more).
pub async fn relay_once(store: &Store, queue: &RedisQueue) -> Result<usize, RelayError> {
    let outbox = store.outbox_claim(None, BATCH).await?;
    let from_outbox = publish_claim(outbox, queue).await?;
    let log = store.log_claim(BATCH).await?;
    let from_log = publish_claim(log, queue).await?;
    Ok(from_outbox.max(from_log))
}

/// Publishes a claim's entries to their streams, then completes it (or
/// releases it when publishing failed).
async fn publish_claim(
    claim: Box<dyn OutboxClaim>,
    queue: &RedisQueue,
) -> Result<usize, RelayError> {
    let n = claim.entries().len();
    if n == 0 {
        claim.release().await?;
        return Ok(0);
    }
    let published = {
        let mut by_stream: BTreeMap<&str, Vec<Fields<'_>>> = BTreeMap::new();
        for entry in claim.entries() {
            by_stream.entry(entry.stream.as_str()).or_default().push(
                entry
                    .fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.clone().into_bytes()))
                    .collect(),
            );
        }
        let mut result = Ok(());
        for (stream, entries) in &by_stream {
            if let Err(e) = queue.publish_many(stream, entries).await {
                result = Err(e);
                break;
            }
        }
        result
    };
    if let Err(e) = published {
        let _ = claim.release().await;
        return Err(e.into());
    }
    claim.complete().await?;
    metrics::counter!("inlet_outbox_published_total").increment(n as u64);
    Ok(n)
}

/// Hands pending entries of each local sink's stream to it once (for the
/// events sink, new event-log rows too); returns the largest batch
/// delivered.
pub async fn deliver_local_once(
    store: &Store,
    sinks: &[Arc<dyn LocalSink>],
) -> Result<usize, RelayError> {
    let mut n = 0;
    for sink in sinks {
        let outbox = store.outbox_claim(Some(sink.stream()), BATCH).await?;
        n = n.max(deliver_claim(outbox, sink.as_ref()).await?);
        if sink.stream() == EVENTS {
            let log = store.log_claim(BATCH).await?;
            n = n.max(deliver_claim(log, sink.as_ref()).await?);
        }
    }
    Ok(n)
}

/// Hands a claim's entries to a local sink, then completes it (or releases
/// it when the sink failed).
async fn deliver_claim(
    claim: Box<dyn OutboxClaim>,
    sink: &dyn LocalSink,
) -> Result<usize, RelayError> {
    let count = claim.entries().len();
    if count == 0 {
        claim.release().await?;
        return Ok(0);
    }
    if let Err(e) = sink.deliver(claim.entries().to_vec()).await {
        let _ = claim.release().await;
        return Err(e.into());
    }
    claim.complete().await?;
    Ok(count)
}

/// Runs the relay until shutdown: wakes on `notify` (after each commit) or
/// every second, drains the outbox to Redis (or to the local sinks while
/// Redis is unavailable), backs off while Redis or the store fail.
pub fn spawn_relay(
    store: Store,
    target: RelayTarget,
    local: Vec<Arc<dyn LocalSink>>,
    notify: Arc<Notify>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Backoff::infrastructure();
        loop {
            let result = drain(&store, &target, &local).await;
            let failed = result.is_err();
            if let Err(e) = result {
                tracing::debug!(error = %e, "outbox relay failed; will retry");
            }
            let wait = if failed {
                backoff.next_delay()
            } else {
                backoff.reset();
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = notify.notified(), if !failed => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // Final drain so a clean shutdown leaves nothing behind.
        let _ = drain(&store, &target, &local).await;
    })
}

async fn drain(
    store: &Store,
    target: &RelayTarget,
    local: &[Arc<dyn LocalSink>],
) -> Result<(), RelayError> {
    match target.queue().await {
        Some(queue) => loop {
            if relay_once(store, &queue).await? < BATCH as usize {
                return Ok(());
            }
        },
        None => loop {
            if deliver_local_once(store, local).await? < BATCH as usize {
                return Ok(());
            }
        },
    }
}
