//! Gathering: reads Redis and the store of a configuration into a
//! [`StatusReport`], without changing either (a SQLite file that does not
//! exist yet is reported, not created).

use std::path::Path;
use std::time::Duration;

use chrono::Utc;

use super::judge::judge;
use super::report::{
    ConsumerStatus, DlqSize, GroupStatus, Health, HeldEntry, LeadsStatus, OutboundStatus,
    PartitionsStatus, QueueSnapshot, RedisStatus, SpoolStatus, StatusReport, StoreStatus,
    StreamStatus, Verdict,
};
use super::STREAMS;
use crate::config::Settings;
use crate::ingest::Mode;
use crate::queue::{id_age, QueueError, RedisQueue};
use crate::store::Store;
use crate::streams::{is_raw, DLQ, INCOMING_RAW};

impl QueueSnapshot {
    /// Reads lengths, groups, consumers and pending entries. `stall_after`
    /// decides which held entries are reported in
    /// [`GroupStatus::held_too_long`].
    pub async fn take(queue: &RedisQueue, stall_after: Duration) -> Result<Self, QueueError> {
        let mut snapshot = QueueSnapshot::default();
        // `incoming.raw` stands for every raw shard (one, or
        // `redis.raw_shards`, plus any a gateway registered).
        let raw = queue.known_raw_shards().await?;
        let names = STREAMS.iter().flat_map(|name| {
            if *name == INCOMING_RAW {
                raw.clone()
            } else {
                vec![name.to_string()]
            }
        });
        for name in names {
            let name = name.as_str();
            let length = queue.len(name).await?;
            let oldest_entry_age_seconds = if (is_raw(name) || name == DLQ) && length > 0 {
                queue
                    .range(name, "-", 1)
                    .await?
                    .first()
                    .and_then(|e| id_age(&e.id))
                    .map(|d| d.as_secs_f64())
            } else {
                None
            };
            snapshot.streams.push(StreamStatus {
                name: name.to_string(),
                length,
                oldest_entry_age_seconds,
            });
            for info in queue.groups(name).await? {
                let summary = queue.pending(name, &info.name).await?;
                let consumers = queue
                    .consumers(name, &info.name)
                    .await?
                    .into_iter()
                    .map(|c| ConsumerStatus {
                        name: c.name,
                        pending: c.pending,
                        idle_seconds: c.idle.as_secs_f64(),
                    })
                    .collect();
                let held_too_long = if summary.count > 0 {
                    queue
                        .pending_entries(name, &info.name, stall_after, 1)
                        .await?
                        .into_iter()
                        .next()
                        .map(|e| HeldEntry {
                            id: e.id,
                            consumer: e.consumer,
                            idle_seconds: e.idle.as_secs_f64(),
                            deliveries: e.deliveries,
                        })
                } else {
                    None
                };
                snapshot.groups.push(GroupStatus {
                    stream: name.to_string(),
                    group: info.name,
                    consumers,
                    pending: summary.count,
                    oldest_pending_age_seconds: summary.oldest_age.map(|d| d.as_secs_f64()),
                    held_too_long,
                    lag: info.lag,
                });
            }
        }
        Ok(snapshot)
    }
}

/// Twice the worker's `claim_idle`: live workers reclaim entries idle for
/// `claim_idle`, so anything idle for twice that is not being looked after.
pub fn stall_threshold(settings: &Settings) -> Duration {
    settings.worker.claim_idle * 2
}

/// Redis or the store could not be looked at.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Redis failed.
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The SQLite file is not there (and looking must not create it).
    #[error("{0} does not exist yet (the gateway creates it on its first start)")]
    NoDatabase(String),
}

/// Connects to the configured Redis and pings it; `Ok(None)` when no Redis
/// is configured.
pub async fn connect_queue(settings: &Settings) -> Result<Option<RedisQueue>, ProbeError> {
    let Some(queue) = RedisQueue::from_settings(settings).await? else {
        return Ok(None);
    };
    queue.ping().await?;
    Ok(Some(queue))
}

/// The file of a `sqlite:` URL, unless it is an in-memory database.
fn sqlite_file(url: &str) -> Option<&str> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && path != ":memory:" && !url.contains("mode=memory")).then_some(path)
}

/// Opens the configured store and pings it, without creating anything: a
/// SQLite file that does not exist yet is reported, not created (looking
/// must not change what is looked at).
pub async fn open_store(settings: &Settings) -> Result<Store, ProbeError> {
    if !settings.uses_postgres() {
        if let Some(path) = sqlite_file(&settings.database_url) {
            if !Path::new(path).exists() {
                return Err(ProbeError::NoDatabase(path.to_string()));
            }
        }
    }
    let store = crate::store::from_settings(settings).await?;
    store.ping().await?;
    Ok(store)
}

/// Takes a full report: connects to Redis and the store of `settings`,
/// reads them, and judges.
pub async fn gather(settings: &Settings) -> StatusReport {
    let stall_after = stall_threshold(settings);
    let mut redis = RedisStatus {
        configured: settings.redis_url.is_some(),
        reachable: false,
        prefix: settings.stream_prefix.clone(),
        error: None,
    };
    let mut snapshot = QueueSnapshot::default();
    let mut dlq = DlqSize::default();
    match connect_queue(settings).await {
        Ok(Some(queue)) => match QueueSnapshot::take(&queue, stall_after).await {
            Ok(s) => {
                redis.reachable = true;
                dlq.stream = s.stream(DLQ).map(|d| d.length);
                snapshot = s;
            }
            Err(e) => redis.error = Some(e.to_string()),
        },
        Ok(None) => {}
        Err(e) => redis.error = Some(e.to_string()),
    }
    let mut store = StoreStatus {
        backend: if settings.uses_postgres() {
            "postgres"
        } else {
            "sqlite"
        },
        reachable: false,
        error: None,
        last_event_at: None,
        outbox: None,
        bus_pending: None,
        partitions: None,
    };
    let mut outbound = None;
    let mut leads = None;
    match open_store(settings).await {
        Ok(s) => {
            store.reachable = true;
            match s.activity().await {
                Ok(a) => {
                    store.last_event_at = a.last_received_at;
                    store.outbox = Some(a.outbox);
                    store.bus_pending = Some(a.bus_pending);
                    dlq.store = Some(a.dead_letters);
                }
                Err(e) => store.error = Some(e.to_string()),
            }
            match s.partitions().await {
                Ok(parts) if !parts.is_empty() => {
                    store.partitions = Some(PartitionsStatus::from_list(&parts))
                }
                Ok(_) => {}
                Err(e) => store.error = Some(e.to_string()),
            }
            match s.outbound().outbound_stats().await {
                Ok(stats) => {
                    dlq.outbound = stats
                        .by_status
                        .get(crate::store::outbound::state::DEAD_LETTERED)
                        .copied()
                        .or(Some(0));
                    outbound = Some(OutboundStatus::from(stats));
                }
                Err(e) => store.error = Some(e.to_string()),
            }
            match s.media().dead_media(i64::MAX).await {
                Ok(dead) => dlq.media = Some(dead.len() as i64),
                Err(e) => store.error = Some(e.to_string()),
            }
            match s.leads().lead_stats().await {
                Ok(stats) => {
                    let status = LeadsStatus::from(stats);
                    dlq.leads = Some(status.dead_lettered);
                    leads = Some(status);
                }
                Err(e) => store.error = Some(e.to_string()),
            }
        }
        Err(e) => store.error = Some(e.to_string()),
    }
    let mut report = StatusReport {
        checked_at: Utc::now(),
        mode: if redis.reachable {
            Mode::Queue.as_str()
        } else {
            Mode::Direct.as_str()
        },
        redis,
        store,
        streams: snapshot.streams,
        groups: snapshot.groups,
        dlq,
        outbound,
        leads,
        spool: crate::spool::inspect(&settings.data_dir.join("spool"))
            .map(|s| SpoolStatus {
                pending_events: s.pending_events,
                pending_bytes: s.pending_bytes,
            })
            .unwrap_or_default(),
        stall_after_seconds: stall_after.as_secs_f64(),
        health: Health {
            verdict: Verdict::Ok,
            reasons: Vec::new(),
        },
    };
    report.health = judge(&report, stall_after);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_files_are_found_in_urls() {
        assert_eq!(sqlite_file("sqlite:///tmp/x.db"), Some("/tmp/x.db"));
        assert_eq!(
            sqlite_file("sqlite://data/x.db?mode=rwc"),
            Some("data/x.db")
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
    }
}
