//! Redis Streams: the raw-event queue, the dead-letter stream and the derived
//! streams (normalized events, cache jobs), with consumer-group helpers.
//!
//! Every key carries the configured prefix. Commands run through a
//! [`ConnectionManager`] (reconnects by itself) with a response timeout, so a
//! dead Redis turns into a quick error, never a hung request. A missing
//! consumer group (`NOGROUP`, e.g. after a Redis restart without persistence)
//! is recreated on the spot with `MKSTREAM`.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{RedisError, Value};
use uuid::Uuid;

use crate::envelope::{format_ts, RawEvent};

/// Stream of verified raw deliveries.
pub const INCOMING_RAW: &str = "incoming.raw";
/// Stream of normalized items, for downstream consumers.
pub const INCOMING_NORMALIZED: &str = "incoming.normalized";
/// Dead-letter stream.
pub const DLQ: &str = "dlq";
/// Cache rewrite jobs.
pub const CACHE_SYNC: &str = "cache.sync";
/// Consumer group of the workers on [`INCOMING_RAW`].
pub const WORKER_GROUP: &str = "workers";
/// Longest `BLOCK` a read may use (longer requests are shortened).
pub const MAX_BLOCK: Duration = Duration::from_secs(10);

/// A queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis is unreachable, timed out, or answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// The reply had an unexpected shape.
    #[error("unexpected redis reply: {0}")]
    Reply(String),
}

impl QueueError {
    /// Whether this is a `NOGROUP` error (group or stream vanished).
    pub fn is_nogroup(&self) -> bool {
        matches!(self, QueueError::Redis(e) if e.code() == Some("NOGROUP"))
    }
}

/// One stream entry: id and raw field values.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEntry {
    /// Stream id (`1700000000000-0`).
    pub id: String,
    /// Fields in stream order.
    pub fields: Vec<(String, Vec<u8>)>,
}

impl StreamEntry {
    fn from_stream_id(sid: StreamId) -> Self {
        let mut fields: Vec<(String, Vec<u8>)> = sid
            .map
            .into_iter()
            .map(|(k, v)| (k, value_bytes(v)))
            .collect();
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        Self { id: sid.id, fields }
    }

    /// Value of a field.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Value of a field as text (lossy).
    pub fn text(&self, name: &str) -> Option<String> {
        self.field(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Fields as `(&str, &[u8])` pairs.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

fn value_bytes(v: Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        other => format!("{other:?}").into_bytes(),
    }
}

/// An event that could not be processed, with everything needed to replay it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The delivery as received.
    pub event: RawEvent,
    /// Short reason code: `not_json`, `not_meta_shape`, `malformed_entry`,
    /// `transient_exhausted`, `store_rejected`, …
    pub reason: String,
    /// Error text (never contains the body).
    pub error: String,
    /// Attempts made before giving up.
    pub attempts: u32,
    /// Stage that gave up (`gateway`, `worker`, `direct`).
    pub stage: String,
    /// When it was dead-lettered.
    pub failed_at: DateTime<Utc>,
}

impl DeadLetter {
    /// Stream fields: the envelope fields plus reason, error, attempts, stage
    /// and failed_at.
    pub fn to_fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut fields = self.event.to_fields();
        fields.push(("reason", self.reason.clone().into_bytes()));
        fields.push(("error", self.error.clone().into_bytes()));
        fields.push(("attempts", self.attempts.to_string().into_bytes()));
        fields.push(("stage", self.stage.clone().into_bytes()));
        fields.push(("failed_at", format_ts(self.failed_at).into_bytes()));
        fields
    }

    /// Reads a dead letter back from a stream entry. Entries written by an
    /// older layout without a valid envelope are still returned, with a
    /// placeholder trace id, so an operator can see and purge them.
    pub fn from_entry(entry: &StreamEntry) -> Result<Self, crate::envelope::EnvelopeError> {
        let event = RawEvent::from_fields(entry.pairs())?;
        let failed_at = entry
            .text("failed_at")
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(event.received_at);
        Ok(Self {
            event,
            reason: entry.text("reason").unwrap_or_default(),
            error: entry.text("error").unwrap_or_default(),
            attempts: entry
                .text("attempts")
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            stage: entry.text("stage").unwrap_or_default(),
            failed_at,
        })
    }
}

/// Summary of a consumer group's pending entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PendingSummary {
    /// Entries delivered but not acknowledged.
    pub count: u64,
    /// Age of the oldest pending entry (from its stream id time).
    pub oldest_age: Option<Duration>,
    /// Pending count per consumer.
    pub consumers: Vec<(String, u64)>,
}

/// Facts about a consumer group on a stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupInfo {
    /// Group name.
    pub name: String,
    /// Consumers in the group.
    pub consumers: u64,
    /// Pending entries.
    pub pending: u64,
    /// Entries not yet delivered to the group (Redis ≥ 7), when known.
    pub lag: Option<u64>,
}

/// One pending entry (extended `XPENDING`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PendingEntry {
    /// Stream id.
    pub id: String,
    /// Consumer holding it.
    pub consumer: String,
    /// Time since it was last delivered.
    pub idle: Duration,
    /// How often it was delivered.
    pub deliveries: u64,
}

/// One consumer of a group (`XINFO CONSUMERS`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumerInfo {
    /// Consumer name.
    pub name: String,
    /// Entries delivered to it and not acknowledged.
    pub pending: u64,
    /// Time since it last talked to Redis (a live worker reads at least
    /// every `block` interval).
    pub idle: Duration,
}

/// Redis stream client bound to a key prefix. Cheap to clone.
#[derive(Clone)]
pub struct RedisQueue {
    conn: ConnectionManager,
    /// Dedicated connection for blocking reads: a `BLOCK` on the shared
    /// multiplexed connection would stall every other command behind it.
    reader: ConnectionManager,
    client: redis::Client,
    timeout: Duration,
    prefix: String,
    derived_maxlen: usize,
}

fn manager_config(timeout: Duration, response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(response_timeout)
        .set_number_of_retries(1)
        .set_max_delay(200)
}

async fn connect_manager(
    client: &redis::Client,
    timeout: Duration,
    response_timeout: Duration,
) -> Result<ConnectionManager, QueueError> {
    tokio::time::timeout(
        timeout * 2,
        ConnectionManager::new_with_config(
            client.clone(),
            manager_config(timeout, response_timeout),
        ),
    )
    .await
    .map_err(|_| QueueError::Reply("connect timed out".into()))?
    .map_err(QueueError::from)
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisQueue {
    /// Connects (failing within `timeout` when Redis is down).
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
        derived_maxlen: usize,
    ) -> Result<Self, QueueError> {
        let client = redis::Client::open(url)?;
        let conn = connect_manager(&client, timeout, timeout).await?;
        let reader = connect_manager(&client, timeout, MAX_BLOCK + timeout).await?;
        Ok(Self {
            conn,
            reader,
            client,
            timeout,
            prefix: prefix.to_string(),
            derived_maxlen,
        })
    }

    /// The same queue with a blocking-read connection of its own. Every
    /// consumer loop takes one: blocking reads sharing a multiplexed
    /// connection would wait behind each other's `BLOCK`.
    pub async fn with_own_reader(&self) -> Result<Self, QueueError> {
        let reader = connect_manager(&self.client, self.timeout, MAX_BLOCK + self.timeout).await?;
        Ok(Self {
            reader,
            ..self.clone()
        })
    }

    /// Full key of a stream name.
    pub fn key(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    async fn xadd(
        &self,
        stream: &str,
        maxlen: Option<usize>,
        fields: &[(&str, Vec<u8>)],
    ) -> Result<String, QueueError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.key(stream));
        if let Some(n) = maxlen.filter(|n| *n > 0) {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(v.as_slice());
        }
        let mut conn = self.conn.clone();
        Ok(cmd.query_async(&mut conn).await?)
    }

    /// Appends a raw event to `incoming.raw`; returns the entry id once Redis
    /// acknowledged it. Never trimmed.
    pub async fn enqueue_raw(&self, event: &RawEvent) -> Result<String, QueueError> {
        self.xadd(INCOMING_RAW, None, &event.to_fields()).await
    }

    /// Appends a dead letter to `dlq`. Never trimmed.
    pub async fn dead_letter(&self, letter: &DeadLetter) -> Result<String, QueueError> {
        self.xadd(DLQ, None, &letter.to_fields()).await
    }

    /// Appends to a derived stream, trimmed approximately to the configured
    /// maximum length.
    pub async fn publish(
        &self,
        stream: &str,
        fields: &[(&str, Vec<u8>)],
    ) -> Result<String, QueueError> {
        self.xadd(stream, Some(self.derived_maxlen), fields).await
    }

    /// Appends several entries to a derived stream in one round trip.
    pub async fn publish_many(
        &self,
        stream: &str,
        entries: &[Vec<(&str, Vec<u8>)>],
    ) -> Result<(), QueueError> {
        if entries.is_empty() {
            return Ok(());
        }
        let key = self.key(stream);
        let mut pipe = redis::pipe();
        for fields in entries {
            let cmd = pipe.cmd("XADD").arg(&key);
            if self.derived_maxlen > 0 {
                cmd.arg("MAXLEN").arg("~").arg(self.derived_maxlen);
            }
            cmd.arg("*");
            for (k, v) in fields {
                cmd.arg(*k).arg(v.as_slice());
            }
            cmd.ignore();
        }
        let mut conn = self.conn.clone();
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    /// Creates `group` on `stream` (and the stream) if missing.
    pub async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let res: Result<String, RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.key(stream))
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// `XREADGROUP … >`: new entries for `consumer`, waiting up to `block`.
    /// A missing group is recreated and the read retried once.
    pub async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<StreamEntry>, QueueError> {
        match self
            .read_group_once(stream, group, consumer, count, block)
            .await
        {
            Err(e) if e.is_nogroup() => {
                tracing::warn!(stream, group, "consumer group missing; recreating it");
                self.ensure_group(stream, group).await?;
                self.read_group_once(stream, group, consumer, count, block)
                    .await
            }
            other => other,
        }
    }

    async fn read_group_once(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<StreamEntry>, QueueError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        let block = block.min(MAX_BLOCK);
        if !block.is_zero() {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(self.key(stream)).arg(">");
        let reply: Option<StreamReadReply> = if block.is_zero() {
            let mut conn = self.conn.clone();
            cmd.query_async(&mut conn).await?
        } else {
            let mut reader = self.reader.clone();
            cmd.query_async(&mut reader).await?
        };
        Ok(reply
            .map(|r| {
                r.keys
                    .into_iter()
                    .flat_map(|k| k.ids)
                    .map(StreamEntry::from_stream_id)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `XREADGROUP … 0`: entries already delivered to `consumer` and not yet
    /// acknowledged (its own in-flight work from before a restart).
    pub async fn read_pending_own(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, QueueError> {
        let mut conn = self.conn.clone();
        let reply: Result<Option<StreamReadReply>, RedisError> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(self.key(stream))
            .arg("0")
            .query_async(&mut conn)
            .await;
        let reply = match reply {
            Err(e) if e.code() == Some("NOGROUP") => {
                self.ensure_group(stream, group).await?;
                return Ok(Vec::new());
            }
            other => other?,
        };
        Ok(reply
            .map(|r| {
                r.keys
                    .into_iter()
                    .flat_map(|k| k.ids)
                    // Entries deleted meanwhile come back without fields.
                    .filter(|sid| !sid.map.is_empty())
                    .map(StreamEntry::from_stream_id)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `XAUTOCLAIM`: takes over entries pending longer than `min_idle` from
    /// any consumer (crashed workers). Returns the claimed entries.
    pub async fn autoclaim(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, QueueError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(self.key(stream))
            .arg(group)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count);
        let reply: Result<StreamAutoClaimReply, RedisError> = cmd.query_async(&mut conn).await;
        let reply = match reply {
            Err(e) if e.code() == Some("NOGROUP") => {
                self.ensure_group(stream, group).await?;
                return Ok(Vec::new());
            }
            other => other?,
        };
        Ok(reply
            .claimed
            .into_iter()
            .map(StreamEntry::from_stream_id)
            .collect())
    }

    /// Resets the idle time of entries this consumer is still working on
    /// (`XCLAIM … JUSTID`), so a batch that takes longer than the reclaim
    /// idle time (retries during an outage) is not taken over by another
    /// consumer meanwhile. Only entries idle for at least `min_idle` are
    /// touched: one another consumer has just claimed is left to it.
    pub async fn touch(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        ids: &[String],
    ) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(self.key(stream))
            .arg(group)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(ids)
            .arg("JUSTID");
        let _: redis::Value = cmd.query_async(&mut conn).await?;
        Ok(())
    }

    /// Runs `work` while keeping `ids` fresh with [`touch`](Self::touch)
    /// every third of `claim_idle`, so work that outlasts the reclaim idle
    /// time (retries during an outage, a slow receiver) is not taken over by
    /// another consumer and done twice.
    pub async fn while_touching<F: std::future::Future>(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        claim_idle: Duration,
        ids: &[String],
        work: F,
    ) -> F::Output {
        tokio::pin!(work);
        let beat = (claim_idle / 3).max(Duration::from_millis(1));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = heartbeat.tick() => {
                    if let Err(e) = self.touch(stream, group, consumer, beat / 2, ids).await {
                        tracing::debug!(error = %e, stream, group, "touching entries in progress failed");
                    }
                }
            }
        }
    }

    /// Acknowledges entries and deletes them from the stream, atomically, so
    /// the stream's length is the backlog still to process.
    pub async fn ack_delete(
        &self,
        stream: &str,
        group: &str,
        ids: &[String],
    ) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let key = self.key(stream);
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&key)
            .arg(group)
            .arg(ids)
            .ignore()
            .cmd("XDEL")
            .arg(&key)
            .arg(ids)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// `XACK` only (the entries stay for other consumer groups).
    pub async fn ack(&self, stream: &str, group: &str, ids: &[String]) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _: u64 = redis::cmd("XACK")
            .arg(self.key(stream))
            .arg(group)
            .arg(ids)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// `XLEN`.
    pub async fn len(&self, stream: &str) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("XLEN")
            .arg(self.key(stream))
            .query_async(&mut conn)
            .await?)
    }

    /// `XPENDING` summary of a group; empty when the group does not exist.
    pub async fn pending(&self, stream: &str, group: &str) -> Result<PendingSummary, QueueError> {
        let mut conn = self.conn.clone();
        let reply: Result<Value, RedisError> = redis::cmd("XPENDING")
            .arg(self.key(stream))
            .arg(group)
            .query_async(&mut conn)
            .await;
        let reply = match reply {
            Err(e) if e.code() == Some("NOGROUP") => return Ok(PendingSummary::default()),
            other => other?,
        };
        let Value::Array(parts) = reply else {
            return Err(QueueError::Reply(format!("XPENDING: {reply:?}")));
        };
        let mut summary = PendingSummary::default();
        if let Some(Value::Int(n)) = parts.first() {
            summary.count = u64::try_from(*n).unwrap_or(0);
        }
        if let Some(v @ Value::BulkString(_)) = parts.get(1) {
            let id = String::from_utf8_lossy(&value_bytes(v.clone())).into_owned();
            summary.oldest_age = id_age(&id);
        }
        if let Some(Value::Array(consumers)) = parts.get(3) {
            for c in consumers {
                if let Value::Array(pair) = c {
                    if let (Some(name), Some(count)) = (pair.first(), pair.get(1)) {
                        let name = String::from_utf8_lossy(&value_bytes(name.clone())).into_owned();
                        let count = String::from_utf8_lossy(&value_bytes(count.clone()))
                            .parse()
                            .unwrap_or(0);
                        summary.consumers.push((name, count));
                    }
                }
            }
        }
        Ok(summary)
    }

    /// `XINFO GROUPS`: every consumer group of a stream (empty if the stream
    /// does not exist).
    pub async fn groups(&self, stream: &str) -> Result<Vec<GroupInfo>, QueueError> {
        let mut conn = self.conn.clone();
        let reply: Result<Vec<HashMap<String, Value>>, RedisError> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(self.key(stream))
            .query_async(&mut conn)
            .await;
        let groups = match reply {
            Err(e) if e.to_string().contains("no such key") => return Ok(Vec::new()),
            other => other?,
        };
        Ok(groups
            .into_iter()
            .map(|g| GroupInfo {
                name: info_text(&g, "name"),
                consumers: info_int(&g, "consumers").unwrap_or(0),
                pending: info_int(&g, "pending").unwrap_or(0),
                lag: info_int(&g, "lag"),
            })
            .collect())
    }

    /// Extended `XPENDING … IDLE min_idle - + count`: pending entries held
    /// at least `min_idle` since their last delivery, lowest ids first
    /// (empty when the group does not exist).
    pub async fn pending_entries(
        &self,
        stream: &str,
        group: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<PendingEntry>, QueueError> {
        let mut conn = self.conn.clone();
        let reply: Result<Vec<(String, String, u64, u64)>, RedisError> = redis::cmd("XPENDING")
            .arg(self.key(stream))
            .arg(group)
            .arg("IDLE")
            .arg(min_idle.as_millis() as u64)
            .arg("-")
            .arg("+")
            .arg(count)
            .query_async(&mut conn)
            .await;
        let entries = match reply {
            Err(e) if e.code() == Some("NOGROUP") => return Ok(Vec::new()),
            other => other?,
        };
        Ok(entries
            .into_iter()
            .map(|(id, consumer, idle, deliveries)| PendingEntry {
                id,
                consumer,
                idle: Duration::from_millis(idle),
                deliveries,
            })
            .collect())
    }

    /// `XINFO CONSUMERS`: the consumers of a group (empty when the stream or
    /// the group does not exist).
    pub async fn consumers(
        &self,
        stream: &str,
        group: &str,
    ) -> Result<Vec<ConsumerInfo>, QueueError> {
        let mut conn = self.conn.clone();
        let reply: Result<Vec<HashMap<String, Value>>, RedisError> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(self.key(stream))
            .arg(group)
            .query_async(&mut conn)
            .await;
        let consumers = match reply {
            Err(e) if e.code() == Some("NOGROUP") || e.to_string().contains("no such key") => {
                return Ok(Vec::new())
            }
            other => other?,
        };
        Ok(consumers
            .into_iter()
            .map(|c| ConsumerInfo {
                name: info_text(&c, "name"),
                pending: info_int(&c, "pending").unwrap_or(0),
                idle: Duration::from_millis(info_int(&c, "idle").unwrap_or(0)),
            })
            .collect())
    }

    /// `XRANGE` from `start` (inclusive, `-` for the beginning), up to `count`.
    pub async fn range(
        &self,
        stream: &str,
        start: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, QueueError> {
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.key(stream))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(StreamEntry::from_stream_id)
            .collect())
    }

    /// One entry by id.
    pub async fn get(&self, stream: &str, id: &str) -> Result<Option<StreamEntry>, QueueError> {
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.key(stream))
            .arg(id)
            .arg(id)
            .query_async(&mut conn)
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .next()
            .map(StreamEntry::from_stream_id))
    }

    /// `XDEL` of entries; returns how many existed.
    pub async fn delete(&self, stream: &str, ids: &[String]) -> Result<u64, QueueError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        Ok(redis::cmd("XDEL")
            .arg(self.key(stream))
            .arg(ids)
            .query_async(&mut conn)
            .await?)
    }

    /// Deletes a whole stream key; returns whether it existed.
    pub async fn delete_stream(&self, stream: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let n: u64 = redis::cmd("DEL")
            .arg(self.key(stream))
            .query_async(&mut conn)
            .await?;
        Ok(n > 0)
    }
}

/// An integer field of an `XINFO` reply.
fn info_int(m: &HashMap<String, Value>, key: &str) -> Option<u64> {
    match m.get(key) {
        Some(Value::Int(n)) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// A text field of an `XINFO` reply (empty when absent).
fn info_text(m: &HashMap<String, Value>, key: &str) -> String {
    m.get(key)
        .map(|v| String::from_utf8_lossy(&value_bytes(v.clone())).into_owned())
        .unwrap_or_default()
}

/// Age of a stream id (its millisecond part) relative to now.
pub fn id_age(id: &str) -> Option<Duration> {
    let ms: i64 = id.split('-').next()?.parse().ok()?;
    let now = Utc::now().timestamp_millis();
    Some(Duration::from_millis(u64::try_from(now - ms).unwrap_or(0)))
}

/// A normalized-stream entry: deterministic event id, trace id, tenant, item.
pub fn normalized_fields(
    event_id: Uuid,
    trace_id: Uuid,
    tenant: &str,
    item: &crate::model::NormalizedItem,
) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("event_id", event_id.to_string().into_bytes()),
        ("trace_id", trace_id.to_string().into_bytes()),
        ("tenant", tenant.as_bytes().to_vec()),
        ("type", item.kind_name().as_bytes().to_vec()),
        (
            "data",
            serde_json::to_vec(item).unwrap_or_else(|_| b"null".to_vec()),
        ),
    ]
}

/// Body bytes of an entry as [`Bytes`].
pub fn entry_body(entry: &StreamEntry) -> Option<Bytes> {
    entry.field("body").map(Bytes::copy_from_slice)
}
