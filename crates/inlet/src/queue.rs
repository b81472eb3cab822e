//! Redis Streams: the connection, appends to the raw, dead-letter and derived
//! streams, and the stream entry type.
//!
//! - [`consumer`]: the consumer-group protocol ([`GroupConsumer`], [`Batch`]).
//! - [`admin`]: introspection (lengths, groups, pending entries, ranges).
//! - Stream names live in [`crate::streams`].
//!
//! Every key carries the configured prefix. Commands run through a
//! [`ConnectionManager`] (reconnects by itself) with a response timeout, so a
//! dead Redis turns into a quick error, never a hung request. A missing
//! consumer group (`NOGROUP`, e.g. after a Redis restart without persistence)
//! is recreated on the spot with `MKSTREAM`.

use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamId;
use redis::{RedisError, Value};

use crate::dlq::letter::DeadLetter;
use crate::envelope::RawEvent;
use crate::streams::{DLQ, INCOMING_RAW};

mod admin;
pub mod consumer;

pub use admin::{id_age, ConsumerInfo, GroupInfo, PendingEntry, PendingSummary};
pub use consumer::{Batch, BatchOrigin, ConsumerConfig, GroupConsumer};

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
    pub(crate) fn from_stream_id(sid: StreamId) -> Self {
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
    /// Connects to the Redis `settings` name (`redis_url`, with the
    /// configured prefix, timeout and derived-stream length); `Ok(None)` when
    /// no Redis is configured. The one way the services, `inlet status` and
    /// the CLI connect; retrying or pinging is the caller's policy.
    pub async fn from_settings(
        settings: &crate::config::Settings,
    ) -> Result<Option<Self>, QueueError> {
        let Some(url) = settings.redis_url.as_deref() else {
            return Ok(None);
        };
        Self::connect(
            url,
            &settings.stream_prefix,
            settings.redis.timeout,
            settings.redis.derived_stream_maxlen,
        )
        .await
        .map(Some)
    }

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

    /// The shared (multiplexed, self-reconnecting) connection, for
    /// components that run their own commands (the sender's limiter).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
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
    /// maximum length (except `outgoing.command`: commands wait to be stored
    /// and are never trimmed away).
    pub async fn publish(
        &self,
        stream: &str,
        fields: &[(&str, Vec<u8>)],
    ) -> Result<String, QueueError> {
        self.xadd(stream, self.maxlen_of(stream), fields).await
    }

    /// The trim length of a stream: none for the ones whose entries are
    /// work, not notifications.
    fn maxlen_of(&self, stream: &str) -> Option<usize> {
        // Work queues are never trimmed: a trimmed command or media job
        // would be work lost.
        let work = [
            crate::streams::OUTGOING_COMMAND,
            crate::streams::MEDIA_PROCESSING,
        ];
        (!work.contains(&stream) && self.derived_maxlen > 0).then_some(self.derived_maxlen)
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
        let maxlen = self.maxlen_of(stream);
        let mut pipe = redis::pipe();
        for fields in entries {
            let cmd = pipe.cmd("XADD").arg(&key);
            if let Some(n) = maxlen {
                cmd.arg("MAXLEN").arg("~").arg(n);
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
}

/// Body bytes of an entry as [`Bytes`].
pub fn entry_body(entry: &StreamEntry) -> Option<Bytes> {
    entry.field("body").map(Bytes::copy_from_slice)
}
