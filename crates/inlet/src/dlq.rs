//! Operator access to dead letters and replays, wherever they are kept: the
//! `{prefix}dlq` stream (queue mode) and the store's `dead_letters` table
//! (direct mode, Redis down).
//!
//! A replay re-runs processing on purpose: the event goes back through the
//! raw stream (or, without Redis, through the pipeline in-process). The store
//! stays idempotent, so rows already stored are not duplicated, but nothing
//! short-circuits the replay as "already seen".

use std::fmt;

pub mod letter;

pub use letter::DeadLetter;

use crate::audit::{Audit, AuditRecord};
use crate::envelope::RawEvent;
use crate::pipeline::{OnExhausted, Pipeline, RetryPolicy};
use crate::queue::RedisQueue;
use crate::store::{RawFilter, Store};
use crate::streams::DLQ;

/// Where a dead letter is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlqId {
    /// Stream entry id in `{prefix}dlq`.
    Stream(String),
    /// Row id in the store's `dead_letters` (shown as `db-N`).
    Store(i64),
}

impl fmt::Display for DlqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DlqId::Stream(id) => f.write_str(id),
            DlqId::Store(id) => write!(f, "db-{id}"),
        }
    }
}

impl DlqId {
    /// Parses `1700000000000-0` or `db-12`.
    pub fn parse(s: &str) -> Option<Self> {
        if let Some(n) = s.strip_prefix("db-") {
            return n.parse().ok().map(DlqId::Store);
        }
        let (ms, seq) = s.split_once('-')?;
        (ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok())
            .then(|| DlqId::Stream(s.to_string()))
    }
}

/// A dead letter and where it is.
#[derive(Debug, Clone)]
pub struct DlqItem {
    /// Location.
    pub id: DlqId,
    /// The letter.
    pub letter: DeadLetter,
}

/// A dead letter as the HTTP API shows it (JSON). The body (the exact bytes
/// Meta signed, possibly a message text) is included only on request.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DlqView {
    /// `1700000000000-0` (stream entry) or `db-N` (store row).
    pub id: String,
    /// Trace id of the delivery.
    pub trace_id: uuid::Uuid,
    /// `whatsapp`, `messenger` or `instagram`.
    pub source: String,
    /// Tenant of the app whose secret verified it.
    pub tenant: String,
    /// Receipt time at the gateway (RFC 3339).
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// When it was dead-lettered (RFC 3339).
    pub failed_at: chrono::DateTime<chrono::Utc>,
    /// Short reason code (`not_json`, `transient_exhausted`, …).
    pub reason: String,
    /// Error text (never the body).
    pub error: String,
    /// Attempts made before giving up.
    pub attempts: u32,
    /// Stage that gave up (`gateway`, `worker`, `direct`).
    pub stage: String,
    /// Size of the body in bytes.
    pub body_bytes: usize,
    /// The body (lossy UTF-8), only when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

impl DlqItem {
    /// The API view; `with_body` adds the raw body.
    pub fn view(&self, with_body: bool) -> DlqView {
        let l = &self.letter;
        DlqView {
            id: self.id.to_string(),
            trace_id: l.event.trace_id,
            source: l.event.source.as_str().to_string(),
            tenant: l.event.tenant.clone(),
            received_at: l.event.received_at,
            failed_at: l.failed_at,
            reason: l.reason.clone(),
            error: l.error.clone(),
            attempts: l.attempts,
            stage: l.stage.clone(),
            body_bytes: l.event.body.len(),
            body: with_body.then(|| String::from_utf8_lossy(&l.event.body).into_owned()),
        }
    }
}

/// A DLQ operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// Redis failed.
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The replayed event could not be processed.
    #[error("replay of {0} failed: {1}")]
    Replay(String, #[source] ReplayError),
}

/// Why an event could not be sent through processing again.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Appending to the raw stream failed.
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    /// The store was unavailable (direct processing).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Processing dead-lettered the event again.
    #[error("{reason}: {error}")]
    Dead {
        /// Dead-letter reason.
        reason: String,
        /// The error.
        error: String,
    },
    /// There is nowhere to send it.
    #[error("neither Redis nor a store is configured")]
    NotConfigured,
}

/// Dead letters in both places, plus replay.
pub struct Dlq {
    queue: Option<RedisQueue>,
    store: Option<Store>,
    audit: Audit,
}

impl Dlq {
    /// Over whatever is available.
    pub fn new(queue: Option<RedisQueue>, store: Option<Store>, audit: Audit) -> Self {
        Self {
            queue,
            store,
            audit,
        }
    }

    /// Up to `limit` letters from each place, oldest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<DlqItem>, DlqError> {
        let mut out = Vec::new();
        if let Some(q) = &self.queue {
            for entry in q.range(DLQ, "-", limit).await? {
                let letter = match DeadLetter::from_fields(entry.pairs()) {
                    Ok(l) => l,
                    Err(e) => DeadLetter {
                        event: RawEvent::new(
                            crate::envelope::Source::Whatsapp,
                            entry.text("tenant").unwrap_or_default(),
                            crate::queue::entry_body(&entry).unwrap_or_default(),
                        ),
                        reason: "unreadable_entry".into(),
                        error: e.to_string(),
                        attempts: 0,
                        stage: entry.text("stage").unwrap_or_default(),
                        failed_at: chrono::Utc::now(),
                    },
                };
                out.push(DlqItem {
                    id: DlqId::Stream(entry.id),
                    letter,
                });
            }
        }
        if let Some(s) = &self.store {
            for stored in s.dead_letters(limit as i64).await? {
                out.push(DlqItem {
                    id: DlqId::Store(stored.id),
                    letter: stored.letter,
                });
            }
        }
        Ok(out)
    }

    /// Number of letters: (stream, store).
    pub async fn len(&self) -> Result<(u64, u64), DlqError> {
        let stream = match &self.queue {
            Some(q) => q.len(DLQ).await?,
            None => 0,
        };
        let store = match &self.store {
            Some(s) => u64::try_from(s.counts().await?.dead_letters).unwrap_or(0),
            None => 0,
        };
        Ok((stream, store))
    }

    /// One letter.
    pub async fn get(&self, id: &DlqId) -> Result<Option<DlqItem>, DlqError> {
        match id {
            DlqId::Stream(sid) => {
                let Some(q) = &self.queue else {
                    return Ok(None);
                };
                Ok(q.get(DLQ, sid).await?.and_then(|entry| {
                    DeadLetter::from_fields(entry.pairs())
                        .ok()
                        .map(|letter| DlqItem {
                            id: id.clone(),
                            letter,
                        })
                }))
            }
            DlqId::Store(n) => {
                let Some(s) = &self.store else {
                    return Ok(None);
                };
                // Dead letters are few; a scan keeps the trait small.
                Ok(s.dead_letters(100_000)
                    .await?
                    .into_iter()
                    .find(|d| d.id == *n)
                    .map(|d| DlqItem {
                        id: id.clone(),
                        letter: d.letter,
                    }))
            }
        }
    }

    /// Removes letters; returns how many existed.
    pub async fn remove(&self, ids: &[DlqId]) -> Result<u64, DlqError> {
        let stream: Vec<String> = ids
            .iter()
            .filter_map(|i| match i {
                DlqId::Stream(s) => Some(s.clone()),
                DlqId::Store(_) => None,
            })
            .collect();
        let rows: Vec<i64> = ids
            .iter()
            .filter_map(|i| match i {
                DlqId::Store(n) => Some(*n),
                DlqId::Stream(_) => None,
            })
            .collect();
        let mut n = 0;
        if let (Some(q), false) = (&self.queue, stream.is_empty()) {
            n += q.delete(DLQ, &stream).await?;
        }
        if let (Some(s), false) = (&self.store, rows.is_empty()) {
            n += s.delete_dead_letters(&rows).await?;
        }
        Ok(n)
    }

    /// Deletes every letter in both places; returns how many.
    pub async fn purge(&self) -> Result<u64, DlqError> {
        let (stream, _) = self.len().await?;
        if let Some(q) = &self.queue {
            q.delete_stream(DLQ).await?;
        }
        let mut n = stream;
        if let Some(s) = &self.store {
            let ids: Vec<i64> = s
                .dead_letters(i64::MAX)
                .await?
                .into_iter()
                .map(|d| d.id)
                .collect();
            n += s.delete_dead_letters(&ids).await?;
        }
        self.audit
            .write(AuditRecord::new("dlq_purged").with("count", n));
        Ok(n)
    }

    /// Replays one letter and removes it from the DLQ once the replay is
    /// durable.
    pub async fn replay(&self, item: &DlqItem) -> Result<(), DlqError> {
        replay_event(
            self.queue.as_ref(),
            self.store.as_ref(),
            &self.audit,
            item.letter.event.clone(),
            "dlq",
        )
        .await
        .map_err(|e| DlqError::Replay(item.id.to_string(), e))?;
        self.remove(std::slice::from_ref(&item.id)).await?;
        Ok(())
    }
}

/// Sends one event through processing again: into the raw stream when Redis
/// is configured, else through the pipeline in-process against the store.
pub async fn replay_event(
    queue: Option<&RedisQueue>,
    store: Option<&Store>,
    audit: &Audit,
    event: RawEvent,
    origin: &str,
) -> Result<(), ReplayError> {
    let trace_id = event.trace_id;
    let (source, tenant) = (event.source.as_str(), event.tenant.clone());
    let via = if let Some(q) = queue {
        q.enqueue_raw(&event).await?;
        "queue"
    } else if let Some(s) = store {
        let pipeline = Pipeline::new(s.clone(), audit.clone(), "replay");
        let policy = RetryPolicy {
            max_attempts: 3,
            base: std::time::Duration::from_millis(200),
            factor: 2.0,
        };
        let outcome = pipeline
            .process(vec![event], &policy, OnExhausted::GiveBack)
            .await;
        if let Some((_, e)) = outcome.unavailable.into_iter().next() {
            return Err(e.into());
        }
        if let Some(d) = outcome.dead.into_iter().next() {
            return Err(ReplayError::Dead {
                reason: d.reason,
                error: d.error,
            });
        }
        "direct"
    } else {
        return Err(ReplayError::NotConfigured);
    };
    audit.write(
        AuditRecord::new("replayed")
            .trace(trace_id)
            .origin(source, &tenant)
            .with("from", origin)
            .with("via", via),
    );
    Ok(())
}

/// Replays kept raw events matching `filter`; returns how many.
pub async fn replay_raw(
    queue: Option<&RedisQueue>,
    store: &Store,
    audit: &Audit,
    filter: &RawFilter,
) -> Result<u64, DlqError> {
    let mut after = None;
    let mut n = 0;
    loop {
        let page = store.raw_events(filter, after, 500).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.trace_id);
        for event in page {
            let id = event.trace_id.to_string();
            replay_event(queue, Some(store), audit, event, "raw_events")
                .await
                .map_err(|e| DlqError::Replay(id, e))?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_both_forms() {
        assert_eq!(DlqId::parse("db-12"), Some(DlqId::Store(12)));
        assert_eq!(
            DlqId::parse("1700000000000-3"),
            Some(DlqId::Stream("1700000000000-3".into()))
        );
        assert_eq!(DlqId::parse("nope"), None);
        assert_eq!(DlqId::Store(4).to_string(), "db-4");
    }

    #[test]
    fn replay_errors_keep_their_cause() {
        use std::error::Error as _;
        let e = DlqError::Replay(
            "db-1".into(),
            ReplayError::Store(crate::store::StoreError::Unavailable(
                "pool timed out".into(),
            )),
        );
        assert_eq!(
            e.to_string(),
            "replay of db-1 failed: store unavailable: pool timed out"
        );
        let cause = e.source().expect("the replay error is the source");
        assert_eq!(cause.to_string(), "store unavailable: pool timed out");
    }
}
