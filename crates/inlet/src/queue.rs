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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::streams::StreamId;
use redis::{RedisError, Value};

use crate::dlq::letter::DeadLetter;
use crate::envelope::RawEvent;
use crate::streams::DLQ;

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

/// A Redis connection: one server through a self-reconnecting
/// [`ConnectionManager`], or a Redis Cluster through redis-rs's cluster
/// client, which routes every command to the master of its key's slot and
/// follows `MOVED`/`ASK` redirections and failovers. Every command of
/// Inlet works on both: each touches one key, or keys of one hash slot.
#[derive(Clone)]
pub enum RedisConn {
    /// One Redis server.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where connections come from: one server, or a cluster's seed nodes.
#[derive(Clone)]
enum Endpoint {
    Single(redis::Client),
    Cluster(Vec<String>),
}

impl Endpoint {
    /// A new connection whose commands time out after `response_timeout`
    /// (connecting fails within `timeout`).
    async fn connect(
        &self,
        timeout: Duration,
        response_timeout: Duration,
    ) -> Result<RedisConn, QueueError> {
        let connecting = async {
            match self {
                Endpoint::Single(client) => ConnectionManager::new_with_config(
                    client.clone(),
                    manager_config(timeout, response_timeout),
                )
                .await
                .map(RedisConn::Single),
                Endpoint::Cluster(seeds) => {
                    ClusterClientBuilder::new(seeds.clone())
                        .connection_timeout(timeout)
                        .response_timeout(response_timeout)
                        // A failover takes seconds: a few retries with
                        // backoff ride out redirections and a moved slot;
                        // longer outages are the caller's backoff.
                        .retries(4)
                        .min_retry_wait(50)
                        .max_retry_wait(1_000)
                        .build()?
                        .get_async_connection()
                        .await
                        .map(RedisConn::Cluster)
                }
            }
        };
        tokio::time::timeout(timeout * 2, connecting)
            .await
            .map_err(|_| QueueError::Reply("connect timed out".into()))?
            .map_err(QueueError::from)
    }
}

/// Redis stream client bound to a key prefix. Cheap to clone.
#[derive(Clone)]
pub struct RedisQueue {
    conn: RedisConn,
    /// Dedicated connection for blocking reads: a `BLOCK` on the shared
    /// multiplexed connection would stall every other command behind it.
    reader: RedisConn,
    endpoint: Endpoint,
    timeout: Duration,
    prefix: String,
    derived_maxlen: usize,
    /// The raw shard streams this process appends to (`redis.raw_shards`).
    raw_shards: Arc<[String]>,
    /// Whether [`crate::streams::RAW_SHARDS`] is known to list them (reset
    /// when an append fails: Redis may have restarted empty).
    shards_registered: Arc<AtomicBool>,
}

fn manager_config(timeout: Duration, response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(response_timeout)
        .set_number_of_retries(1)
        .set_max_delay(200)
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("prefix", &self.prefix)
            .field("cluster", &self.is_cluster())
            .field("raw_shards", &self.raw_shards.len())
            .finish()
    }
}

/// How to reach Redis and lay out its keys: the part of the settings a
/// [`RedisQueue`] needs.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// One URL, or (cluster) one or more comma-separated seed node URLs.
    pub url: String,
    /// Prefix of every key.
    pub prefix: String,
    /// Connect and response timeout.
    pub timeout: Duration,
    /// Approximate cap of derived streams (0: none).
    pub derived_maxlen: usize,
    /// Redis Cluster (`redis.cluster`).
    pub cluster: bool,
    /// Raw shards (`redis.raw_shards`).
    pub raw_shards: usize,
}

impl QueueOptions {
    /// What `settings` name (`redis_url`, `stream_prefix`, `[redis]`);
    /// `None` when no Redis is configured.
    pub fn from_settings(settings: &crate::config::Settings) -> Option<Self> {
        settings.redis_url.as_ref().map(|url| Self {
            url: url.clone(),
            prefix: settings.stream_prefix.clone(),
            timeout: settings.redis.timeout,
            derived_maxlen: settings.redis.derived_stream_maxlen,
            cluster: settings.redis.cluster,
            raw_shards: settings.redis.raw_shards,
        })
    }

    /// Single Redis, one raw shard.
    pub fn single(url: &str, prefix: &str, timeout: Duration, derived_maxlen: usize) -> Self {
        Self {
            url: url.to_string(),
            prefix: prefix.to_string(),
            timeout,
            derived_maxlen,
            cluster: false,
            raw_shards: 1,
        }
    }
}

impl RedisQueue {
    /// Connects to the Redis `settings` name (`redis_url`, `redis.cluster`,
    /// `redis.raw_shards`, with the configured prefix, timeout and
    /// derived-stream length); `Ok(None)` when no Redis is configured. The
    /// one way the services, `inlet status` and the CLI connect; retrying or
    /// pinging is the caller's policy.
    pub async fn from_settings(
        settings: &crate::config::Settings,
    ) -> Result<Option<Self>, QueueError> {
        match QueueOptions::from_settings(settings) {
            Some(options) => Self::open(options).await.map(Some),
            None => Ok(None),
        }
    }

    /// Connects to one Redis server with one raw shard (failing within
    /// `timeout` when Redis is down).
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
        derived_maxlen: usize,
    ) -> Result<Self, QueueError> {
        Self::open(QueueOptions::single(url, prefix, timeout, derived_maxlen)).await
    }

    /// Connects as `options` say (failing within the timeout when Redis, or
    /// every seed node, is down).
    pub async fn open(options: QueueOptions) -> Result<Self, QueueError> {
        let endpoint = if options.cluster {
            Endpoint::Cluster(
                options
                    .url
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            )
        } else {
            Endpoint::Single(redis::Client::open(options.url.as_str())?)
        };
        let timeout = options.timeout;
        let conn = endpoint.connect(timeout, timeout).await?;
        let reader = endpoint.connect(timeout, MAX_BLOCK + timeout).await?;
        Ok(Self {
            conn,
            reader,
            endpoint,
            timeout,
            prefix: options.prefix,
            derived_maxlen: options.derived_maxlen,
            raw_shards: crate::streams::raw_shard_names(options.raw_shards, options.cluster).into(),
            shards_registered: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The same queue with a blocking-read connection of its own. Every
    /// consumer loop takes one: blocking reads sharing a multiplexed
    /// connection would wait behind each other's `BLOCK`.
    pub async fn with_own_reader(&self) -> Result<Self, QueueError> {
        let reader = self
            .endpoint
            .connect(self.timeout, MAX_BLOCK + self.timeout)
            .await?;
        Ok(Self {
            reader,
            ..self.clone()
        })
    }

    /// Whether this is a Redis Cluster client.
    pub fn is_cluster(&self) -> bool {
        matches!(self.endpoint, Endpoint::Cluster(_))
    }

    /// Full key of a stream name. On a cluster the name is the key's hash
    /// tag (`inlet:{incoming.raw.1}`): a stream, its consumer groups and
    /// anything named after it live in one slot, whatever the prefix.
    pub fn key(&self, name: &str) -> String {
        if self.is_cluster() {
            format!("{}{{{}}}", self.prefix, name)
        } else {
            format!("{}{}", self.prefix, name)
        }
    }

    /// The shared (multiplexed, self-reconnecting) connection, for
    /// components that run their own commands (the sender's limiter).
    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The raw shard streams this process appends to, shard 0 first.
    pub fn raw_shards(&self) -> &[String] {
        &self.raw_shards
    }

    /// Every raw shard stream to consume or report: this process's own and
    /// any other a gateway registered (one with another `redis.raw_shards`,
    /// or from before N changed), sorted, without duplicates.
    pub async fn known_raw_shards(&self) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        let registered: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key(crate::streams::RAW_SHARDS))
            .query_async(&mut conn)
            .await?;
        let mut all: Vec<String> = self
            .raw_shards
            .iter()
            .cloned()
            .chain(registered.into_iter().filter(|s| crate::streams::is_raw(s)))
            .collect();
        all.sort();
        all.dedup();
        Ok(all)
    }

    /// Adds this process's raw shards to the registry: once, and again
    /// after a failed append (Redis may have restarted empty).
    async fn register_raw_shards(&self) -> Result<(), QueueError> {
        if self.shards_registered.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _: u64 = redis::cmd("SADD")
            .arg(self.key(crate::streams::RAW_SHARDS))
            .arg(self.raw_shards.as_ref())
            .query_async(&mut conn)
            .await?;
        self.shards_registered.store(true, Ordering::Release);
        Ok(())
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

    /// Appends a raw event to its `incoming.raw` shard (see
    /// [`crate::shard`]); returns the entry id once Redis acknowledged it.
    /// Never trimmed.
    pub async fn enqueue_raw(&self, event: &RawEvent) -> Result<String, QueueError> {
        let shard = crate::shard::shard_of(event, self.raw_shards.len());
        let result = async {
            self.register_raw_shards().await?;
            self.xadd(&self.raw_shards[shard], None, &event.to_fields())
                .await
        }
        .await;
        if result.is_err() {
            self.shards_registered.store(false, Ordering::Release);
        }
        result
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
