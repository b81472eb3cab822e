//! Operator access to dead letters and replays, wherever they are kept: the
//! `{prefix}dlq` stream (queue mode), the store's `dead_letters` table
//! (direct mode, Redis down), the outbound sends that ran out of retries
//! (`dead_lettered` rows, shown as `out-{id}`) and the media downloads that
//! did (shown as `media-{message id}-{index}`; a replay queues the download
//! again), and the Lead Ads leads whose fetch did (shown as
//! `lead-{leadgen id}`; a replay queues the fetch again).
//!
//! A replay re-runs processing on purpose: the event goes back through the
//! raw stream (or, without Redis, through the pipeline in-process). The store
//! stays idempotent, so rows already stored are not duplicated, but nothing
//! short-circuits the replay as "already seen". An outbound letter's replay
//! puts the send back in its queue with fresh attempts: it was never
//! accepted by Meta (a send whose answer was lost is `unknown`, never
//! dead-lettered), so sending it again cannot send it twice. A command the
//! intake of `{prefix}outgoing.command` could not read goes back on that
//! stream.

use std::fmt;

pub mod letter;

pub use letter::{DeadLetter, INTAKE_STAGE};

use crate::audit::{Audit, AuditRecord};
use crate::envelope::RawEvent;
use crate::pipeline::{OnExhausted, Pipeline, RetryPolicy};
use crate::queue::RedisQueue;
use crate::store::outbound::OutboundRecord;
use crate::store::{RawFilter, Store};
use crate::streams::{DLQ, OUTGOING_COMMAND};

/// Where a dead letter is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlqId {
    /// Stream entry id in `{prefix}dlq`.
    Stream(String),
    /// Row id in the store's `dead_letters` (shown as `db-N`).
    Store(i64),
    /// A dead-lettered outbound send (shown as `out-{outbound id}`).
    Outbound(String),
    /// A dead-lettered media download (shown as `media-{message id}-{index}`).
    Media(i64, i32),
    /// A dead-lettered lead fetch (shown as `lead-{leadgen id}`).
    Lead(String),
}

impl fmt::Display for DlqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DlqId::Stream(id) => f.write_str(id),
            DlqId::Store(id) => write!(f, "db-{id}"),
            DlqId::Outbound(id) => write!(f, "out-{id}"),
            DlqId::Media(m, i) => write!(f, "media-{m}-{i}"),
            DlqId::Lead(id) => write!(f, "lead-{id}"),
        }
    }
}

impl DlqId {
    /// The forms [`DlqId::parse`] takes, for error messages.
    pub const FORMS: &'static str = "1700000000000-0, db-N, out-ID, media-M-I or lead-ID";

    /// Parses `1700000000000-0`, `db-12` or `out-0190…`.
    pub fn parse(s: &str) -> Option<Self> {
        if let Some(n) = s.strip_prefix("db-") {
            return n.parse().ok().map(DlqId::Store);
        }
        if let Some(rest) = s.strip_prefix("media-") {
            let (m, i) = rest.split_once('-')?;
            return match (m.parse::<i64>(), i.parse::<i32>()) {
                (Ok(m), Ok(i)) if m > 0 && i >= 0 => Some(DlqId::Media(m, i)),
                _ => None,
            };
        }
        if let Some(id) = s.strip_prefix("lead-") {
            return crate::leads::is_graph_id(id).then(|| DlqId::Lead(id.to_string()));
        }
        if let Some(id) = s.strip_prefix("out-") {
            return crate::outbound::request::is_outbound_id(id)
                .then(|| DlqId::Outbound(id.to_string()));
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

/// Dead letters waiting, by place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DlqCounts {
    /// In the `{prefix}dlq` stream.
    pub stream: u64,
    /// In the store's `dead_letters` table.
    pub store: u64,
    /// Dead-lettered outbound sends.
    pub outbound: u64,
    /// Dead-lettered media downloads.
    pub media: u64,
    /// Dead-lettered lead fetches.
    pub leads: u64,
}

impl DlqCounts {
    /// All places together.
    pub fn total(&self) -> u64 {
        self.stream + self.store + self.outbound + self.media + self.leads
    }
}

/// A dead-lettered send as a letter: the body is the stored command (the
/// validated [`crate::outbound::SendSpec`] as JSON), the reason its error
/// class, the error the last Graph error.
pub fn outbound_letter(record: &OutboundRecord) -> DeadLetter {
    let source = match record.spec.channel {
        crate::model::Channel::Whatsapp => crate::envelope::Source::Whatsapp,
        crate::model::Channel::Messenger => crate::envelope::Source::Facebook,
        crate::model::Channel::Instagram => crate::envelope::Source::Instagram,
    };
    let body = serde_json::to_vec(&record.spec).unwrap_or_default();
    let mut event = RawEvent::new(source, record.tenant.clone(), body.into());
    event.trace_id = record.trace_id.parse().unwrap_or_default();
    event.received_at = ms_time(record.created_ms);
    DeadLetter {
        event,
        reason: record
            .error_class
            .clone()
            .unwrap_or_else(|| "dead_lettered".into()),
        error: record
            .error
            .as_ref()
            .map(|e| e.to_string())
            .unwrap_or_default(),
        attempts: u32::try_from(record.attempts).unwrap_or(0),
        stage: "sender".into(),
        failed_at: ms_time(record.updated_ms),
    }
}

/// A dead-lettered media download as a letter: no body (the webhook is in
/// `raw_events`), the reason and error of its last attempt.
pub fn media_letter(record: &crate::store::media::MediaRecord) -> DeadLetter {
    let mut event = RawEvent::new(
        crate::envelope::Source::Whatsapp,
        record.tenant.clone(),
        bytes::Bytes::new(),
    );
    event.received_at = ms_time(record.updated_ms);
    DeadLetter {
        event,
        reason: record
            .reason
            .clone()
            .unwrap_or_else(|| "dead_lettered".into()),
        error: record.error.clone().unwrap_or_default(),
        attempts: u32::try_from(record.attempts).unwrap_or(0),
        stage: "media".into(),
        failed_at: ms_time(record.updated_ms),
    }
}

/// A dead-lettered lead fetch as a letter: no body (the webhook is in
/// `raw_events`), the error class of the last attempt as the reason, the
/// Graph error as the error.
pub fn lead_letter(record: &crate::store::leads::LeadRecord) -> DeadLetter {
    let mut event = RawEvent::new(
        crate::envelope::Source::Facebook,
        record.tenant.clone(),
        bytes::Bytes::new(),
    );
    event.received_at = record.created_at;
    let error = record.error.as_ref();
    DeadLetter {
        event,
        reason: error
            .and_then(|e| e.get("class").or_else(|| e.get("reason")))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("dead_lettered")
            .to_string(),
        error: error.map(|e| e.to_string()).unwrap_or_default(),
        attempts: u32::try_from(record.attempts).unwrap_or(0),
        stage: "lead".into(),
        failed_at: record.updated_at,
    }
}

fn dead_leads_filter(limit: i64) -> crate::store::leads::LeadFilter {
    crate::store::leads::LeadFilter {
        status: Some(crate::store::leads::state::DEAD_LETTERED.into()),
        lead_id: None,
        limit,
    }
}

fn ms_time(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A dead letter as the HTTP API shows it (JSON). The body (the exact bytes
/// Meta signed, possibly a message text) is included only on request.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DlqView {
    /// `1700000000000-0` (stream entry), `db-N` (store row) or `out-ID`
    /// (outbound send).
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
    /// Stage that gave up (`gateway`, `worker`, `direct`, `sender`,
    /// `intake`).
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
    /// The outbound send is no longer dead-lettered (replayed or removed
    /// meanwhile).
    #[error("send {0} is no longer dead-lettered")]
    NotDead(String),
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
            for record in s.outbound().outbound_dead(limit as i64).await? {
                out.push(DlqItem {
                    letter: outbound_letter(&record),
                    id: DlqId::Outbound(record.id),
                });
            }
            for record in s.media().dead_media(limit as i64).await? {
                out.push(DlqItem {
                    letter: media_letter(&record),
                    id: DlqId::Media(record.message_id, record.index),
                });
            }
            let mut leads = s.leads().leads(&dead_leads_filter(limit as i64)).await?;
            leads.reverse(); // oldest first, as everywhere here
            for record in leads {
                out.push(DlqItem {
                    letter: lead_letter(&record),
                    id: DlqId::Lead(record.lead_id),
                });
            }
        }
        Ok(out)
    }

    /// Number of letters in each place.
    pub async fn len(&self) -> Result<DlqCounts, DlqError> {
        let mut counts = DlqCounts::default();
        if let Some(q) = &self.queue {
            counts.stream = q.len(DLQ).await?;
        }
        if let Some(s) = &self.store {
            counts.store = u64::try_from(s.counts().await?.dead_letters).unwrap_or(0);
            let stats = s.outbound().outbound_stats().await?;
            counts.outbound = stats
                .by_status
                .get(crate::store::outbound::state::DEAD_LETTERED)
                .map_or(0, |n| u64::try_from(*n).unwrap_or(0));
            counts.media = s.media().dead_media(i64::MAX).await?.len() as u64;
            counts.leads = s
                .leads()
                .lead_stats()
                .await?
                .by_status
                .get(crate::store::leads::state::DEAD_LETTERED)
                .map_or(0, |n| u64::try_from(*n).unwrap_or(0));
        }
        Ok(counts)
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
            DlqId::Outbound(oid) => {
                let Some(s) = &self.store else {
                    return Ok(None);
                };
                Ok(s.outbound()
                    .outbound(oid)
                    .await?
                    .filter(|(r, _)| r.status == crate::store::outbound::state::DEAD_LETTERED)
                    .map(|(r, _)| DlqItem {
                        id: id.clone(),
                        letter: outbound_letter(&r),
                    }))
            }
            DlqId::Media(m, i) => {
                let Some(s) = &self.store else {
                    return Ok(None);
                };
                Ok(s.media()
                    .media_record(*m, *i)
                    .await?
                    .filter(|r| r.state == crate::store::media::state::DEAD_LETTERED)
                    .map(|r| DlqItem {
                        id: id.clone(),
                        letter: media_letter(&r),
                    }))
            }
            DlqId::Lead(lead_id) => {
                let Some(s) = &self.store else {
                    return Ok(None);
                };
                let mut filter = dead_leads_filter(1);
                filter.lead_id = Some(lead_id.clone());
                Ok(s.leads().leads(&filter).await?.first().map(|r| DlqItem {
                    id: id.clone(),
                    letter: lead_letter(r),
                }))
            }
        }
    }

    /// Removes letters; returns how many existed. An outbound letter's send
    /// is kept as `failed` (error class `discarded`): its history stays.
    pub async fn remove(&self, ids: &[DlqId]) -> Result<u64, DlqError> {
        let mut stream = Vec::new();
        let mut rows = Vec::new();
        let mut sends = Vec::new();
        let mut media = Vec::new();
        let mut leads = Vec::new();
        for id in ids {
            match id {
                DlqId::Stream(s) => stream.push(s.clone()),
                DlqId::Store(n) => rows.push(*n),
                DlqId::Outbound(o) => sends.push(o.clone()),
                DlqId::Media(m, i) => media.push((*m, *i)),
                DlqId::Lead(l) => leads.push(l.clone()),
            }
        }
        let mut n = 0;
        if let (Some(q), false) = (&self.queue, stream.is_empty()) {
            n += q.delete(DLQ, &stream).await?;
        }
        if let Some(s) = &self.store {
            if !rows.is_empty() {
                n += s.delete_dead_letters(&rows).await?;
            }
            if !sends.is_empty() {
                let now = crate::store::outbound::now_ms();
                n += s.outbound().discard_dead(&sends, now).await?;
            }
            if !media.is_empty() {
                let now = crate::store::outbound::now_ms();
                n += s.media().discard_dead_media(&media, now).await?;
            }
            if !leads.is_empty() {
                n += s.leads().discard_dead_leads(&leads).await?;
            }
        }
        Ok(n)
    }

    /// Deletes every letter in every place (outbound letters are discarded,
    /// see [`Self::remove`]); returns how many.
    pub async fn purge(&self) -> Result<u64, DlqError> {
        let stream = self.len().await?.stream;
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
            let sends: Vec<String> = s
                .outbound()
                .outbound_dead(i64::MAX)
                .await?
                .into_iter()
                .map(|r| r.id)
                .collect();
            n += s
                .outbound()
                .discard_dead(&sends, crate::store::outbound::now_ms())
                .await?;
            let media: Vec<(i64, i32)> = s
                .media()
                .dead_media(i64::MAX)
                .await?
                .into_iter()
                .map(|r| (r.message_id, r.index))
                .collect();
            n += s
                .media()
                .discard_dead_media(&media, crate::store::outbound::now_ms())
                .await?;
            let leads: Vec<String> = s
                .leads()
                .leads(&dead_leads_filter(i64::MAX))
                .await?
                .into_iter()
                .map(|r| r.lead_id)
                .collect();
            n += s.leads().discard_dead_leads(&leads).await?;
        }
        self.audit
            .write(AuditRecord::new("dlq_purged").with("count", n));
        Ok(n)
    }

    /// Replays one letter and removes it from the DLQ once the replay is
    /// durable: an event goes back through processing, an outbound send
    /// back to its queue, an unreadable command back on
    /// `{prefix}outgoing.command`.
    pub async fn replay(&self, item: &DlqItem) -> Result<(), DlqError> {
        if let DlqId::Outbound(id) = &item.id {
            return self.replay_send(id, &item.letter).await;
        }
        if let DlqId::Media(m, i) = &item.id {
            return self.replay_media(*m, *i, item).await;
        }
        if let DlqId::Lead(lead_id) = &item.id {
            return self.replay_lead(lead_id, item).await;
        }
        if item.letter.stage == INTAKE_STAGE {
            return self.replay_command(item).await;
        }
        replay_event(
            self.queue.as_ref(),
            self.store.as_ref(),
            &self.audit,
            item.letter.event.clone(),
            "dlq",
        )
        .await
        .map_err(|e| DlqError::Replay(item.id.to_string(), e))?;
        metrics::counter!("inlet_dlq_replayed_total", "kind" => "event").increment(1);
        self.remove(std::slice::from_ref(&item.id)).await?;
        Ok(())
    }
}

impl Dlq {
    /// A dead-lettered lead back to `pending`, its fetch queued again (one
    /// transaction).
    async fn replay_lead(&self, lead_id: &str, item: &DlqItem) -> Result<(), DlqError> {
        let replay_err = |e: ReplayError| DlqError::Replay(item.id.to_string(), e);
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| replay_err(ReplayError::NotConfigured))?;
        let tenant = &item.letter.event.tenant;
        if !store.leads().requeue_lead(tenant, lead_id).await? {
            return Err(replay_err(ReplayError::NotDead(item.id.to_string())));
        }
        metrics::counter!("inlet_dlq_replayed_total", "kind" => "lead").increment(1);
        self.audit.write(
            AuditRecord::new("lead")
                .origin("facebook", tenant)
                .outcome("replayed")
                .with("lead_id", lead_id.to_string())
                .with("from", "dlq"),
        );
        Ok(())
    }

    /// A dead-lettered download back to `pending`, its job queued again
    /// (one transaction).
    async fn replay_media(
        &self,
        message_id: i64,
        index: i32,
        item: &DlqItem,
    ) -> Result<(), DlqError> {
        let replay_err = |e: ReplayError| DlqError::Replay(item.id.to_string(), e);
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| replay_err(ReplayError::NotConfigured))?;
        if !store
            .media()
            .requeue_media(message_id, index, crate::store::outbound::now_ms())
            .await?
        {
            return Err(replay_err(ReplayError::NotDead(item.id.to_string())));
        }
        metrics::counter!("inlet_dlq_replayed_total", "kind" => "media").increment(1);
        self.audit.write(
            AuditRecord::new("media")
                .origin("whatsapp", &item.letter.event.tenant)
                .outcome("replayed")
                .with("message_id", message_id)
                .with("index", index)
                .with("from", "dlq"),
        );
        Ok(())
    }

    async fn replay_send(&self, id: &str, letter: &DeadLetter) -> Result<(), DlqError> {
        let replay_err = |e: ReplayError| DlqError::Replay(format!("out-{id}"), e);
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| replay_err(ReplayError::NotConfigured))?;
        let revived = store
            .outbound()
            .revive_send(id, crate::store::outbound::now_ms())
            .await?;
        if !revived {
            return Err(replay_err(ReplayError::NotDead(id.to_string())));
        }
        metrics::counter!("inlet_dlq_replayed_total", "kind" => "outbound").increment(1);
        self.audit.write(
            AuditRecord::new("outbound")
                .trace(letter.event.trace_id)
                .origin(letter.event.source.as_str(), &letter.event.tenant)
                .outcome("replayed")
                .with("outbound_id", id)
                .with("from", "dlq"),
        );
        Ok(())
    }

    async fn replay_command(&self, item: &DlqItem) -> Result<(), DlqError> {
        let replay_err = |e: ReplayError| DlqError::Replay(item.id.to_string(), e);
        let queue = self
            .queue
            .as_ref()
            .ok_or_else(|| replay_err(ReplayError::NotConfigured))?;
        let l = &item.letter;
        let fields = [
            ("command", l.event.body.to_vec()),
            ("tenant", l.event.tenant.clone().into_bytes()),
            ("trace_id", l.event.trace_id.to_string().into_bytes()),
        ];
        queue
            .publish(OUTGOING_COMMAND, &fields)
            .await
            .map_err(|e| replay_err(e.into()))?;
        metrics::counter!("inlet_dlq_replayed_total", "kind" => "command").increment(1);
        self.audit.write(
            AuditRecord::new("replayed")
                .trace(l.event.trace_id)
                .origin(l.event.source.as_str(), &l.event.tenant)
                .with("from", "dlq")
                .with("via", "outgoing.command"),
        );
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
    fn ids_parse_every_form() {
        assert_eq!(DlqId::parse("db-12"), Some(DlqId::Store(12)));
        assert_eq!(
            DlqId::parse("out-0190a1b2-c3d4"),
            Some(DlqId::Outbound("0190a1b2-c3d4".into()))
        );
        assert_eq!(DlqId::Outbound("x1".into()).to_string(), "out-x1");
        assert_eq!(DlqId::parse("out-"), None);
        assert_eq!(DlqId::parse("out-a b"), None);
        assert_eq!(
            DlqId::parse("1700000000000-3"),
            Some(DlqId::Stream("1700000000000-3".into()))
        );
        assert_eq!(DlqId::parse("nope"), None);
        assert_eq!(DlqId::Store(4).to_string(), "db-4");
        assert_eq!(DlqId::parse("media-42-1"), Some(DlqId::Media(42, 1)));
        assert_eq!(DlqId::Media(42, 0).to_string(), "media-42-0");
        assert_eq!(DlqId::parse("media-0-1"), None);
        assert_eq!(DlqId::parse("media-42"), None);
        assert_eq!(DlqId::parse("media-42--1"), None);
        assert_eq!(
            DlqId::parse("lead-810000000000013"),
            Some(DlqId::Lead("810000000000013".into()))
        );
        assert_eq!(DlqId::Lead("81".into()).to_string(), "lead-81");
        assert_eq!(DlqId::parse("lead-../x"), None);
        assert_eq!(DlqId::parse("lead-"), None);
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
