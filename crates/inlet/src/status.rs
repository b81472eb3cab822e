//! The health of a deployment as an operator sees it: what `inlet status`
//! reports, the verdict it exits with, and the background sampler that
//! exports the same figures as Prometheus gauges.
//!
//! This is the answer to "a worker stalls silently while the gateway keeps
//! answering 200": stream lengths, pending entries, consumer activity, lag
//! and the DLQ are read straight from Redis and the store, so a stall shows
//! within one sampling interval (5 s) in the metrics and at once in `inlet
//! status`, whichever process is wedged.
//!
//! A stall is judged against the worker's `claim_idle`: live workers reclaim
//! entries idle that long, so an entry held for more than twice that time, or
//! a backlog with no consumer active for that long, means nobody is making
//! progress.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::audit::query::format_us;
use crate::config::Settings;
use crate::envelope::format_ts;
use crate::ingest::{Ingest, Mode};
use crate::queue::{id_age, QueueError, RedisQueue};
use crate::store::Store;
use crate::streams::{DLQ, INCOMING_RAW, WORKER_GROUP};

/// The streams reported, in this order.
pub use crate::streams::REPORTED as STREAMS;

/// How often the background sampler refreshes the gauges.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

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
    /// Every stream of [`STREAMS`].
    pub streams: Vec<StreamStatus>,
    /// Every group of those streams.
    pub groups: Vec<GroupStatus>,
}

impl QueueSnapshot {
    /// Reads lengths, groups, consumers and pending entries. `stall_after`
    /// decides which held entries are reported in
    /// [`GroupStatus::held_too_long`].
    pub async fn take(queue: &RedisQueue, stall_after: Duration) -> Result<Self, QueueError> {
        let mut snapshot = QueueSnapshot::default();
        for name in STREAMS {
            let length = queue.len(name).await?;
            let oldest_entry_age_seconds = if (name == INCOMING_RAW || name == DLQ) && length > 0 {
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
}

impl DlqSize {
    /// Every place together.
    pub fn total(&self) -> u64 {
        let n = |v: Option<i64>| v.map_or(0, |n| u64::try_from(n).unwrap_or(0));
        self.stream.unwrap_or(0) + n(self.store) + n(self.outbound) + n(self.media)
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
    /// Stall threshold used: twice the worker's `claim_idle`.
    pub stall_after_seconds: f64,
    /// The verdict.
    pub health: Health,
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
    };
    let mut outbound = None;
    match open_store(settings).await {
        Ok(s) => {
            store.reachable = true;
            match s.activity().await {
                Ok(a) => {
                    store.last_event_at = a.last_received_at;
                    store.outbox = Some(a.outbox);
                    dlq.store = Some(a.dead_letters);
                }
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
        stall_after_seconds: stall_after.as_secs_f64(),
        health: Health {
            verdict: Verdict::Ok,
            reasons: Vec::new(),
        },
    };
    report.health = judge(&report, stall_after);
    report
}

/// Judges a report (its `health` field is ignored).
pub fn judge(report: &StatusReport, stall_after: Duration) -> Health {
    let mut findings: Vec<(Verdict, String)> = Vec::new();
    let threshold = stall_after.as_secs_f64();
    let store_ok = report.store.reachable && report.store.error.is_none();
    let redis = &report.redis;
    if redis.configured && !redis.reachable {
        if store_ok {
            findings.push((
                Verdict::Degraded,
                "redis is unreachable: the gateway runs in direct mode and keeps events in the store"
                    .into(),
            ));
        } else {
            findings.push((
                Verdict::Down,
                "neither redis nor the store is reachable: the gateway answers 503 (Meta retries)"
                    .into(),
            ));
        }
    } else if !store_ok {
        if redis.configured {
            findings.push((
                Verdict::Stalled,
                "the store is unusable: the gateway still queues events in redis, but workers cannot store them (they retry, then dead-letter)".into(),
            ));
        } else {
            findings.push((
                Verdict::Down,
                "the store is unusable and no redis is configured: the gateway answers 503 (Meta retries)".into(),
            ));
        }
    }
    if redis.reachable {
        let backlog = report
            .streams
            .iter()
            .find(|s| s.name == INCOMING_RAW)
            .map_or(0, |s| s.length);
        let workers = report
            .groups
            .iter()
            .find(|g| g.stream == INCOMING_RAW && g.group == WORKER_GROUP);
        match workers {
            Some(g) => {
                if let Some(held) = &g.held_too_long {
                    findings.push((
                        Verdict::Stalled,
                        format!(
                            "{INCOMING_RAW} entry {} has been held by consumer {} for {} (more than 2 × claim_idle = {}) without being acknowledged or reclaimed",
                            held.id,
                            held.consumer,
                            seconds(held.idle_seconds),
                            seconds(threshold)
                        ),
                    ));
                }
                let active = g
                    .consumers
                    .iter()
                    .filter(|c| c.idle_seconds <= threshold)
                    .count();
                if backlog > 0 && active == 0 {
                    findings.push((
                        Verdict::Stalled,
                        format!(
                            "{backlog} entries wait in {INCOMING_RAW} and no consumer of group {WORKER_GROUP} has been active in the last {}: is inlet-worker running?",
                            seconds(threshold)
                        ),
                    ));
                }
            }
            None if backlog > 0 => findings.push((
                Verdict::Stalled,
                format!(
                    "{backlog} entries wait in {INCOMING_RAW} and no worker has ever joined group {WORKER_GROUP}: start inlet-worker"
                ),
            )),
            None => {}
        }
        for g in &report.groups {
            if g.stream == INCOMING_RAW && g.group == WORKER_GROUP {
                continue;
            }
            if let Some(held) = &g.held_too_long {
                findings.push((
                    Verdict::Degraded,
                    format!(
                        "consumer group {} on {} has entry {} held by {} for {}",
                        g.group,
                        g.stream,
                        held.id,
                        held.consumer,
                        seconds(held.idle_seconds)
                    ),
                ));
            }
        }
    }
    let dead = report.dlq.total();
    if dead > 0 {
        findings.push((
            Verdict::Degraded,
            format!(
                "{dead} dead letters wait (stream {}, store {}, outbound {}, media {}): inspect with `inlet dlq list`, replay with `inlet dlq replay`",
                report.dlq.stream.unwrap_or(0),
                report.dlq.store.unwrap_or(0),
                report.dlq.outbound.unwrap_or(0),
                report.dlq.media.unwrap_or(0)
            ),
        ));
    }
    if let Some(out) = &report.outbound {
        for halt in &out.halted {
            findings.push((
                Verdict::Degraded,
                format!(
                    "sending for tenant {} is halted since {} ({}{}): {} sends wait; configure a new access token and sending resumes",
                    halt.tenant,
                    format_ts(halt.since),
                    halt.error_class,
                    halt.code.map(|c| format!(", Graph code {c}")).unwrap_or_default(),
                    out.waiting()
                ),
            ));
        }
        if let Some(n) = out.broadcasts.get("paused").filter(|n| **n > 0) {
            findings.push((
                Verdict::Degraded,
                format!("{n} broadcasts are paused: see `inlet broadcasts list`, resume with `inlet broadcasts resume ID`"),
            ));
        }
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.0));
    Health {
        verdict: findings.first().map_or(Verdict::Ok, |f| f.0),
        reasons: findings.into_iter().map(|f| f.1).collect(),
    }
}

fn seconds(s: f64) -> String {
    format_us((s.max(0.0) * 1_000_000.0) as u64)
}

impl StatusReport {
    /// Text rendering for a terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "inlet status at {}: {}",
            format_ts(self.checked_at),
            self.health.verdict.as_str().to_uppercase()
        );
        let redis = &self.redis;
        let redis_text = if !redis.configured {
            "redis not configured".to_string()
        } else if redis.reachable {
            format!("redis reachable, prefix {:?}", redis.prefix)
        } else {
            format!(
                "redis unreachable: {}",
                redis.error.as_deref().unwrap_or("no answer")
            )
        };
        let _ = writeln!(out, "  mode     {} ({redis_text})", self.mode);
        let store = &self.store;
        let mut store_text = format!(
            "{}, {}",
            store.backend,
            if store.reachable {
                "reachable"
            } else {
                "unreachable"
            }
        );
        if let Some(e) = &store.error {
            let _ = write!(store_text, ": {e}");
        }
        if store.reachable && store.error.is_none() {
            match store.last_event_at {
                Some(t) => {
                    let ago = (self.checked_at - t).to_std().unwrap_or_default();
                    let _ = write!(
                        store_text,
                        "; last event {} ({} ago)",
                        format_ts(t),
                        seconds(ago.as_secs_f64())
                    );
                }
                None => store_text.push_str("; no event kept yet"),
            }
            if let Some(n) = store.outbox {
                let _ = write!(store_text, "; outbox {n}");
            }
        }
        let _ = writeln!(out, "  store    {store_text}");
        if !self.streams.is_empty() {
            for (i, s) in self.streams.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "  {:<8} {:<20} {:>8}{}",
                    if i == 0 { "streams" } else { "" },
                    s.name,
                    s.length,
                    s.oldest_entry_age_seconds
                        .map(|a| format!("  oldest {}", seconds(a)))
                        .unwrap_or_default()
                );
            }
        }
        if redis.reachable {
            if self.groups.is_empty() {
                let _ = writeln!(out, "  groups   none (no worker has started yet)");
            }
            for (i, g) in self.groups.iter().enumerate() {
                let mut line = format!(
                    "{} / {}: {} consumers, {} pending",
                    g.stream,
                    g.group,
                    g.consumers.len(),
                    g.pending
                );
                if let Some(age) = g.oldest_pending_age_seconds {
                    let _ = write!(line, ", oldest pending {}", seconds(age));
                }
                if let Some(lag) = g.lag {
                    let _ = write!(line, ", lag {lag}");
                }
                let _ = writeln!(out, "  {:<8} {line}", if i == 0 { "groups" } else { "" });
                for c in &g.consumers {
                    let _ = writeln!(
                        out,
                        "             {:<28} {} pending, idle {}",
                        c.name,
                        c.pending,
                        seconds(c.idle_seconds)
                    );
                }
            }
        }
        if let Some(o) = &self.outbound {
            let states = if o.by_status.is_empty() {
                "no sends yet".to_string()
            } else {
                o.by_status
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(out, "  outbound {states}; {} waiting", o.waiting());
            if !o.broadcasts.is_empty() {
                let b = o
                    .broadcasts
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = writeln!(out, "           broadcasts {b}");
            }
            for h in &o.halted {
                let _ = writeln!(
                    out,
                    "           HALTED tenant {} since {} ({}{})",
                    h.tenant,
                    format_ts(h.since),
                    h.error_class,
                    h.code.map(|c| format!(", code {c}")).unwrap_or_default()
                );
            }
        }
        let dash = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |n| n.to_string());
        let _ = writeln!(
            out,
            "  dlq      {} in the stream, {} in the store, {} outbound, {} media",
            self.dlq
                .stream
                .map_or_else(|| "-".to_string(), |n| n.to_string()),
            dash(self.dlq.store),
            dash(self.dlq.outbound),
            dash(self.dlq.media)
        );
        let _ = writeln!(out, "  health   {}", self.health.verdict.as_str());
        for r in &self.health.reasons {
            let _ = writeln!(out, "           - {r}");
        }
        out
    }
}

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
/// - `inlet_last_event_timestamp_seconds`
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
    }
}

fn export(snapshot: &QueueSnapshot) {
    for s in &snapshot.streams {
        metrics::gauge!("inlet_stream_length", "stream" => s.name.clone()).set(s.length as f64);
        if s.name == INCOMING_RAW || s.name == DLQ {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatusReport {
        StatusReport {
            checked_at: Utc::now(),
            mode: "queue",
            redis: RedisStatus {
                configured: true,
                reachable: true,
                prefix: "inlet:".into(),
                error: None,
            },
            store: StoreStatus {
                backend: "postgres",
                reachable: true,
                error: None,
                last_event_at: None,
                outbox: Some(0),
            },
            streams: STREAMS
                .iter()
                .map(|s| StreamStatus {
                    name: s.to_string(),
                    length: 0,
                    oldest_entry_age_seconds: None,
                })
                .collect(),
            groups: vec![GroupStatus {
                stream: INCOMING_RAW.into(),
                group: WORKER_GROUP.into(),
                consumers: vec![ConsumerStatus {
                    name: "w1".into(),
                    pending: 0,
                    idle_seconds: 0.5,
                }],
                pending: 0,
                oldest_pending_age_seconds: None,
                held_too_long: None,
                lag: Some(0),
            }],
            dlq: DlqSize {
                stream: Some(0),
                store: Some(0),
                outbound: Some(0),
                media: Some(0),
            },
            outbound: Some(OutboundStatus::default()),
            stall_after_seconds: 60.0,
            health: Health {
                verdict: Verdict::Ok,
                reasons: Vec::new(),
            },
        }
    }

    const STALL: Duration = Duration::from_secs(60);

    #[test]
    fn a_halted_sender_and_outbound_letters_degrade_and_are_shown() {
        let mut r = report();
        let mut out = OutboundStatus::default();
        out.queued_by_sender.insert("106540352242922".into(), 7);
        out.by_status.insert("queued".into(), 7);
        out.by_status.insert("dead_lettered".into(), 2);
        out.broadcasts.insert("paused".into(), 1);
        out.halted.push(HaltStatus {
            tenant: "acme".into(),
            error_class: "auth_halt".into(),
            code: Some(190),
            since: Utc::now(),
        });
        r.outbound = Some(out);
        r.dlq.outbound = Some(2);
        let h = judge(&r, STALL);
        assert_eq!(h.verdict, Verdict::Degraded, "{:?}", h.reasons);
        let all = h.reasons.join("\n");
        assert!(
            all.contains("sending for tenant acme is halted") && all.contains("Graph code 190"),
            "{all}"
        );
        assert!(all.contains("7 sends wait"), "{all}");
        assert!(all.contains("1 broadcasts are paused"), "{all}");
        assert!(all.contains("outbound 2"), "{all}");
        r.health = h;
        let text = r.render();
        assert!(text.contains("HALTED tenant acme"), "{text}");
        assert!(
            text.contains("dead_lettered 2, queued 7; 7 waiting"),
            "{text}"
        );
        assert!(text.contains("2 outbound"), "{text}");
    }

    #[test]
    fn a_flowing_deployment_is_ok() {
        let h = judge(&report(), STALL);
        assert_eq!(h.verdict, Verdict::Ok, "{:?}", h.reasons);
        assert!(h.reasons.is_empty());
    }

    #[test]
    fn an_entry_held_past_twice_claim_idle_is_a_stall() {
        let mut r = report();
        r.groups[0].pending = 1;
        r.groups[0].held_too_long = Some(HeldEntry {
            id: "1-0".into(),
            consumer: "w1".into(),
            idle_seconds: 61.0,
            deliveries: 1,
        });
        let h = judge(&r, STALL);
        assert_eq!(h.verdict, Verdict::Stalled);
        assert!(
            h.reasons[0].contains("held by consumer w1"),
            "{:?}",
            h.reasons
        );
        assert_eq!(h.verdict.exit_code(), 2);
    }

    #[test]
    fn a_backlog_without_active_consumers_is_a_stall() {
        let mut r = report();
        r.streams[0].length = 5;
        assert_eq!(judge(&r, STALL).verdict, Verdict::Ok, "an active worker");
        r.groups[0].consumers[0].idle_seconds = 600.0;
        assert_eq!(judge(&r, STALL).verdict, Verdict::Stalled);
        r.groups.clear();
        let h = judge(&r, STALL);
        assert_eq!(h.verdict, Verdict::Stalled);
        assert!(h.reasons[0].contains("start inlet-worker"));
    }

    #[test]
    fn dead_letters_and_direct_mode_degrade() {
        let mut r = report();
        r.dlq.stream = Some(1);
        assert_eq!(judge(&r, STALL).verdict, Verdict::Degraded);
        let mut r = report();
        r.redis.reachable = false;
        r.streams.clear();
        r.groups.clear();
        let h = judge(&r, STALL);
        assert_eq!(h.verdict, Verdict::Degraded);
        assert_eq!(h.verdict.exit_code(), 0);
    }

    #[test]
    fn nothing_to_keep_events_is_down() {
        let mut r = report();
        r.redis.reachable = false;
        r.store.reachable = false;
        assert_eq!(judge(&r, STALL).verdict, Verdict::Down);
        let mut r = report();
        r.redis.configured = false;
        r.redis.reachable = false;
        r.store.error = Some("no such table".into());
        let h = judge(&r, STALL);
        assert_eq!(h.verdict, Verdict::Down);
        assert_eq!(h.verdict.exit_code(), 3);
        // Redis up, store down: accepted but not processed.
        let mut r = report();
        r.store.reachable = false;
        assert_eq!(judge(&r, STALL).verdict, Verdict::Stalled);
    }

    #[test]
    fn render_names_every_part() {
        let mut r = report();
        r.dlq.stream = Some(1);
        r.health = judge(&r, STALL);
        let text = r.render();
        for part in [
            "incoming.raw",
            "incoming.normalized",
            "cache.sync",
            "dlq",
            "workers",
            "w1",
            "degraded",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
    }

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
