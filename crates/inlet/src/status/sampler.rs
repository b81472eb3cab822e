//! The background sampler: the report's figures as Prometheus gauges, so a
//! stall shows within one sampling interval in the metrics, whichever
//! process is wedged.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::report::QueueSnapshot;
use crate::ingest::{Ingest, Mode};
use crate::queue::RedisQueue;
use crate::store::Store;
use crate::streams::{is_raw, DLQ};

/// How often the background sampler refreshes the gauges.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Where the sampler finds Redis.
#[derive(Clone)]
pub enum SampleSource {
    /// A worker's own connection.
    Queue(RedisQueue),
    /// The gateway's acceptor: sampled only while in queue mode.
    Ingest(Ingest),
    /// No Redis: only the store is sampled.
    None,
}

impl SampleSource {
    async fn queue(&self) -> Option<RedisQueue> {
        match self {
            SampleSource::Queue(q) => Some(q.clone()),
            SampleSource::Ingest(ingest) if ingest.mode() == Mode::Queue => ingest.queue().await,
            _ => None,
        }
    }
}

/// Reads Redis (when given) and the store (when given) once and sets the
/// gauges:
///
/// - `inlet_stream_length{stream}`
/// - `inlet_stream_oldest_entry_age_seconds{stream}` (incoming.raw, dlq)
/// - `inlet_consumer_group_consumers{stream,group}`
/// - `inlet_consumer_pending{stream,group}`
/// - `inlet_consumer_oldest_pending_seconds{stream,group}`
/// - `inlet_consumer_lag{stream,group}` (when Redis reports it)
/// - `inlet_dlq_size{where="stream"|"store"}` (`where="outbound"` is set by
///   the sender)
/// - `inlet_outbox_pending`
/// - `inlet_bus_pending`
/// - `inlet_last_event_timestamp_seconds`
/// - `inlet_leads{status}` (pending, fetched, failed, dead_lettered)
///
/// A failed read counts `inlet_status_sample_errors_total{dependency}`.
pub async fn sample(queue: Option<&RedisQueue>, store: Option<&Store>, stall_after: Duration) {
    if let Some(queue) = queue {
        match QueueSnapshot::take(queue, stall_after).await {
            Ok(snapshot) => export(&snapshot),
            Err(e) => {
                metrics::counter!("inlet_status_sample_errors_total", "dependency" => "redis")
                    .increment(1);
                tracing::debug!(error = %e, "sampling redis failed");
            }
        }
    }
    if let Some(store) = store {
        match store.activity().await {
            Ok(a) => {
                metrics::gauge!("inlet_dlq_size", "where" => "store").set(a.dead_letters as f64);
                metrics::gauge!("inlet_outbox_pending").set(a.outbox as f64);
                metrics::gauge!("inlet_bus_pending").set(a.bus_pending as f64);
                if let Some(t) = a.last_received_at {
                    metrics::gauge!("inlet_last_event_timestamp_seconds")
                        .set(t.timestamp_micros() as f64 / 1e6);
                }
            }
            Err(e) => {
                metrics::counter!("inlet_status_sample_errors_total", "dependency" => "store")
                    .increment(1);
                tracing::debug!(error = %e, "sampling the store failed");
            }
        }
        if let Ok(stats) = store.leads().lead_stats().await {
            for status in crate::store::leads::state::ALL {
                let n = stats.by_status.get(status).copied().unwrap_or(0);
                metrics::gauge!("inlet_leads", "status" => status).set(n as f64);
            }
        }
    }
}

fn export(snapshot: &QueueSnapshot) {
    for s in &snapshot.streams {
        metrics::gauge!("inlet_stream_length", "stream" => s.name.clone()).set(s.length as f64);
        if is_raw(&s.name) || s.name == DLQ {
            metrics::gauge!("inlet_stream_oldest_entry_age_seconds", "stream" => s.name.clone())
                .set(s.oldest_entry_age_seconds.unwrap_or(0.0));
        }
        if s.name == DLQ {
            metrics::gauge!("inlet_dlq_size", "where" => "stream").set(s.length as f64);
        }
    }
    for g in &snapshot.groups {
        let labels = [("stream", g.stream.clone()), ("group", g.group.clone())];
        metrics::gauge!("inlet_consumer_group_consumers", &labels).set(g.consumers.len() as f64);
        metrics::gauge!("inlet_consumer_pending", &labels).set(g.pending as f64);
        metrics::gauge!("inlet_consumer_oldest_pending_seconds", &labels)
            .set(g.oldest_pending_age_seconds.unwrap_or(0.0));
        if let Some(lag) = g.lag {
            metrics::gauge!("inlet_consumer_lag", &labels).set(lag as f64);
        }
    }
}

/// Samples at once and then every [`SAMPLE_INTERVAL`] until `shutdown`.
pub fn spawn_sampler(
    source: SampleSource,
    store: Option<Store>,
    stall_after: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let queue = source.queue().await;
            sample(queue.as_ref(), store.as_ref(), stall_after).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SAMPLE_INTERVAL) => {}
            }
        }
    })
}
