//! The report `inlet status` prints: streams, groups, Redis, the store,
//! dead letters and the outbound side, and the verdict. Plain data; taken by
//! [`gather`](fn@super::gather), judged by [`judge`](fn@super::judge),
//! rendered by the CLI.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// One stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamStatus {
    /// Name without the prefix (`incoming.raw`).
    pub name: String,
    /// `XLEN`. Workers delete what they acknowledge, so for `incoming.raw`
    /// this is the backlog still to process.
    pub length: u64,
    /// Age of the oldest entry (raw stream and DLQ only): how far behind
    /// the workers are, how long the oldest dead letter has waited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_entry_age_seconds: Option<f64>,
}

/// One consumer of a group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsumerStatus {
    /// Consumer name (worker: host name and pid, or the configured name).
    pub name: String,
    /// Entries it holds without having acknowledged them.
    pub pending: u64,
    /// Time since it last talked to Redis.
    pub idle_seconds: f64,
}

/// A pending entry held longer than the stall threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldEntry {
    /// Stream id.
    pub id: String,
    /// Consumer holding it.
    pub consumer: String,
    /// Time since its last delivery.
    pub idle_seconds: f64,
    /// Deliveries so far.
    pub deliveries: u64,
}

/// One consumer group of a stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupStatus {
    /// Stream name without the prefix.
    pub stream: String,
    /// Group name.
    pub group: String,
    /// Its consumers.
    pub consumers: Vec<ConsumerStatus>,
    /// Entries delivered and not acknowledged (`XPENDING` summary).
    pub pending: u64,
    /// Age of the oldest pending entry since it was added to the stream.
    pub oldest_pending_age_seconds: Option<f64>,
    /// The oldest entry held since its last delivery for longer than the
    /// stall threshold, if any.
    pub held_too_long: Option<HeldEntry>,
    /// Entries not yet delivered to the group, when Redis can tell (≥ 7,
    /// and not after deletions inside the range).
    pub lag: Option<u64>,
}

/// Streams and groups, as read from Redis in one go.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueSnapshot {
    /// Every stream of [`STREAMS`](super::STREAMS).
    pub streams: Vec<StreamStatus>,
    /// Every group of those streams.
    pub groups: Vec<GroupStatus>,
}

impl QueueSnapshot {
    /// A stream by name.
    pub fn stream(&self, name: &str) -> Option<&StreamStatus> {
        self.streams.iter().find(|s| s.name == name)
    }

    /// A group by stream and name.
    pub fn group(&self, stream: &str, group: &str) -> Option<&GroupStatus> {
        self.groups
            .iter()
            .find(|g| g.stream == stream && g.group == group)
    }
}

/// Redis as the gateway would see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RedisStatus {
    /// `INLET_REDIS_URL` is set.
    pub configured: bool,
    /// It answered.
    pub reachable: bool,
    /// Key prefix.
    pub prefix: String,
    /// Why it is not reachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreStatus {
    /// `postgres` or `sqlite`.
    pub backend: &'static str,
    /// It answered.
    pub reachable: bool,
    /// Why it is not usable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Newest `raw_events.received_at`.
    pub last_event_at: Option<DateTime<Utc>>,
    /// Outbox entries not yet relayed to Redis.
    pub outbox: Option<i64>,
    /// Events handed to in-process handlers (direct mode) and not handled
    /// yet.
    #[serde(default)]
    pub bus_pending: Option<i64>,
    /// The time partitions of `raw_events`, `messages`, `message_statuses`
    /// and `event_log` (Postgres; `None` on SQLite).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<PartitionsStatus>,
}

/// The time partitions of the partitioned tables (Postgres).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PartitionsStatus {
    /// Partitions in all, DEFAULT ones included.
    pub count: usize,
    /// Rows in the DEFAULT partitions: times outside every partition
    /// (normally 0; the partition job moves them).
    pub default_rows: i64,
    /// Until when every partitioned table has a partition ready: the
    /// earliest of each table's newest range end.
    pub ready_until: Option<DateTime<Utc>>,
}

impl PartitionsStatus {
    /// Sums up a partition listing.
    pub fn from_list(parts: &[crate::store::partitions::PartitionInfo]) -> Self {
        let mut newest: std::collections::BTreeMap<&str, DateTime<Utc>> = Default::default();
        let mut default_rows = 0;
        for p in parts {
            match &p.range {
                Some(r) => {
                    let e = newest.entry(p.table.as_str()).or_insert(r.to);
                    *e = (*e).max(r.to);
                }
                None => default_rows += p.rows_estimate,
            }
        }
        Self {
            count: parts.len(),
            default_rows,
            ready_until: newest.values().min().copied(),
        }
    }
}

/// Dead letters in each place.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DlqSize {
    /// Entries in the `dlq` stream (queue mode).
    pub stream: Option<u64>,
    /// Rows in the store's `dead_letters` (direct mode).
    pub store: Option<i64>,
    /// Dead-lettered outbound sends.
    pub outbound: Option<i64>,
    /// Dead-lettered media downloads.
    pub media: Option<i64>,
    /// Dead-lettered lead fetches.
    pub leads: Option<i64>,
}

impl DlqSize {
    /// Every place together.
    pub fn total(&self) -> u64 {
        let n = |v: Option<i64>| v.map_or(0, |n| u64::try_from(n).unwrap_or(0));
        self.stream.unwrap_or(0) + n(self.store) + n(self.outbound) + n(self.media) + n(self.leads)
    }
}

/// The outbound side as the store sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutboundStatus {
    /// Sends per stored state.
    pub by_status: std::collections::BTreeMap<String, i64>,
    /// Sends waiting (queued or claimed) per sender.
    pub queued_by_sender: std::collections::BTreeMap<String, i64>,
    /// Broadcasts per state (`running`, `paused`, `finished`).
    pub broadcasts: std::collections::BTreeMap<String, i64>,
    /// Apps whose sending stopped on an auth or account error.
    pub halted: Vec<HaltStatus>,
}

impl OutboundStatus {
    /// Sends waiting to be sent (queued or claimed).
    pub fn waiting(&self) -> i64 {
        self.queued_by_sender.values().sum()
    }
}

/// A halted app.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HaltStatus {
    /// Tenant of the app.
    pub tenant: String,
    /// `auth_halt` or `account_halt`.
    pub error_class: String,
    /// The Graph error code (190, 368, …), when Meta gave one.
    pub code: Option<i64>,
    /// Since when.
    pub since: DateTime<Utc>,
}

impl From<crate::store::outbound::OutboundStats> for OutboundStatus {
    fn from(stats: crate::store::outbound::OutboundStats) -> Self {
        Self {
            halted: stats
                .halts
                .iter()
                .map(|h| HaltStatus {
                    tenant: h.tenant.clone(),
                    error_class: h.error_class.clone(),
                    code: h.error.get("code").and_then(serde_json::Value::as_i64),
                    since: DateTime::from_timestamp_millis(h.halted_ms).unwrap_or_default(),
                })
                .collect(),
            by_status: stats.by_status,
            queued_by_sender: stats.queued_by_sender,
            broadcasts: stats.broadcasts,
        }
    }
}

/// Lead Ads as the store sees them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LeadsStatus {
    /// Leads fetched and stored.
    pub fetched: i64,
    /// Leads waiting to be fetched (also between retries).
    pub pending: i64,
    /// Leads refused for good (permission, token, unknown lead).
    pub failed: i64,
    /// Leads whose transient errors outlasted the retries.
    pub dead_lettered: i64,
    /// The most recent failure, with the Graph error.
    pub last_error: Option<crate::store::leads::LeadError>,
}

impl From<crate::store::leads::LeadStats> for LeadsStatus {
    fn from(stats: crate::store::leads::LeadStats) -> Self {
        use crate::store::leads::state;
        let n = |s: &str| stats.by_status.get(s).copied().unwrap_or(0);
        Self {
            fetched: n(state::FETCHED),
            pending: n(state::PENDING),
            failed: n(state::FAILED),
            dead_lettered: n(state::DEAD_LETTERED),
            last_error: stats.last_error,
        }
    }
}

/// Overall judgement, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Everything flows.
    Ok,
    /// Events are kept and processed, but something needs a look (direct
    /// mode because Redis is down, dead letters waiting, a side consumer
    /// behind).
    Degraded,
    /// Events are accepted but not processed: held entries, a backlog with
    /// no active worker, or a store the workers cannot write to.
    Stalled,
    /// Nothing can keep events: the gateway answers 503.
    Down,
}

impl Verdict {
    /// `ok`, `degraded`, `stalled`, `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Degraded => "degraded",
            Verdict::Stalled => "stalled",
            Verdict::Down => "down",
        }
    }

    /// Process exit status of `inlet status`: 0 for ok and degraded, 2 for
    /// stalled, 3 for down (1 is left to "the command itself failed").
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Ok | Verdict::Degraded => 0,
            Verdict::Stalled => 2,
            Verdict::Down => 3,
        }
    }
}

/// The verdict and every reason for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// The worst finding.
    pub verdict: Verdict,
    /// One sentence per finding, worst first.
    pub reasons: Vec<String>,
}

/// What waits in the gateway's local spool (events kept while Redis and the
/// store were both down, drained when one is back).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SpoolStatus {
    /// Events waiting.
    pub pending_events: u64,
    /// Their bytes.
    pub pending_bytes: u64,
}

/// Everything `inlet status` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    /// When it was taken.
    pub checked_at: DateTime<Utc>,
    /// `queue` when Redis is configured and answers, else `direct`: the
    /// mode a gateway would be in now.
    pub mode: &'static str,
    /// Redis.
    pub redis: RedisStatus,
    /// The store.
    pub store: StoreStatus,
    /// Stream lengths (empty without Redis).
    pub streams: Vec<StreamStatus>,
    /// Consumer groups (empty without Redis).
    pub groups: Vec<GroupStatus>,
    /// Dead letters.
    pub dlq: DlqSize,
    /// Sends, broadcasts and halts (absent when the store could not be
    /// read).
    pub outbound: Option<OutboundStatus>,
    /// Lead Ads: counts and the last failure (absent when the store could
    /// not be read).
    pub leads: Option<LeadsStatus>,
    /// The local spool of the gateway on this data directory.
    pub spool: SpoolStatus,
    /// Stall threshold used: twice the worker's `claim_idle`.
    pub stall_after_seconds: f64,
    /// The verdict.
    pub health: Health,
}
