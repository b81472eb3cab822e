//! Introspection and operator access to streams: lengths, consumer groups,
//! pending entries, ranges and deletion (`inlet status`, `inlet dlq`, the
//! gauges sampler). Nothing here consumes a stream: that is
//! [`super::consumer`].

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use redis::{RedisError, Value};

use super::{value_bytes, QueueError, RedisQueue, StreamEntry};

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

impl RedisQueue {
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
