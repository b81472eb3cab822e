//! The consumer-group protocol every stream consumer of Inlet shares: the
//! raw-event worker, the event-bus handlers, the cache-sync consumer and the
//! outbound consumers all read through a [`GroupConsumer`].
//!
//! One [`GroupConsumer::next_batch`] call, in this order:
//! 1. the consumer's **own pending** entries (`XREADGROUP … 0`): work it had
//!    in flight before a restart, or a batch it dropped unacknowledged;
//! 2. every `claim_idle / 2`, entries **stalled** on another consumer for at
//!    least `claim_idle` (`XAUTOCLAIM`): a crashed worker's batch;
//! 3. **new** entries (`XREADGROUP … >`), blocking up to `block`.
//!
//! A vanished group (`NOGROUP`: Redis restarted without persistence, the
//! stream deleted) is recreated on the spot with `MKSTREAM`, so no consumer
//! loops on the error. The returned [`Batch`] is a guard: while it lives, a
//! background heartbeat keeps its entries fresh (`XCLAIM … JUSTID` every
//! `claim_idle / 3`) so slow work (retries during an outage, a slow webhook
//! receiver) is never reclaimed and done twice; it is then acknowledged
//! ([`Batch::ack`], or [`Batch::ack_delete`] when no other group reads the
//! stream) or dropped, which leaves its entries pending for this consumer to
//! re-read first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use redis::RedisError;

use super::{QueueError, RedisQueue, StreamEntry, MAX_BLOCK};

/// What a [`GroupConsumer`] reads and how.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Stream name (without prefix).
    pub stream: String,
    /// Consumer group.
    pub group: String,
    /// This consumer's name in the group (unique per process and loop).
    pub consumer: String,
    /// Entries per read.
    pub count: usize,
    /// Longest wait for new entries in one read (capped at [`MAX_BLOCK`]).
    pub block: Duration,
    /// Entries pending this long on another consumer are taken over; also
    /// the basis of the heartbeat (a third of it). Zero disables both.
    pub claim_idle: Duration,
}

/// Where the entries of a batch came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOrigin {
    /// This consumer's own pending entries.
    OwnPending,
    /// Taken over from a stalled consumer.
    Reclaimed,
    /// Newly delivered.
    New,
}

/// A consumer of one stream through one consumer group.
#[derive(Debug)]
pub struct GroupConsumer {
    queue: RedisQueue,
    config: ConsumerConfig,
    /// Set when this consumer's own pending entries must be read first
    /// (at start, and after a batch was dropped unacknowledged).
    own_pending: Arc<AtomicBool>,
    last_claim: Option<Instant>,
}

impl GroupConsumer {
    /// A consumer with a blocking-read connection of its own (blocking reads
    /// sharing one multiplexed connection would wait behind each other's
    /// `BLOCK`); creates the group (and stream) if missing.
    pub async fn connect(queue: &RedisQueue, config: ConsumerConfig) -> Result<Self, QueueError> {
        let queue = queue.with_own_reader().await?;
        queue.ensure_group(&config.stream, &config.group).await?;
        Ok(Self {
            queue,
            config,
            own_pending: Arc::new(AtomicBool::new(true)),
            last_claim: None,
        })
    }

    /// The consumer's name in its group.
    pub fn consumer(&self) -> &str {
        &self.config.consumer
    }

    /// The configuration it reads with.
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// The queue it reads from (for writes such as dead letters).
    pub fn queue(&self) -> &RedisQueue {
        &self.queue
    }

    /// The next batch: own pending entries, else stalled ones, else new ones
    /// (waiting up to the configured `block`). May be empty.
    pub async fn next_batch(&mut self) -> Result<Batch, QueueError> {
        let block = self.config.block;
        self.next_batch_within(block).await
    }

    /// [`next_batch`](Self::next_batch) waiting at most `block` for new
    /// entries (zero: do not wait).
    pub async fn next_batch_within(&mut self, block: Duration) -> Result<Batch, QueueError> {
        if self.own_pending.load(Ordering::Acquire) {
            let entries = self.read(ReadFrom::OwnPending, Duration::ZERO).await?;
            // Fewer than a full read: nothing more of our own is pending.
            if entries.len() < self.config.count {
                self.own_pending.store(false, Ordering::Release);
            }
            if !entries.is_empty() {
                return Ok(self.batch(entries, BatchOrigin::OwnPending));
            }
        }
        let claim_due = !self.config.claim_idle.is_zero()
            && match self.last_claim {
                None => true,
                Some(t) => t.elapsed() >= self.config.claim_idle / 2,
            };
        if claim_due {
            self.last_claim = Some(Instant::now());
            let entries = self.autoclaim().await?;
            if !entries.is_empty() {
                tracing::info!(
                    stream = %self.config.stream,
                    group = %self.config.group,
                    count = entries.len(),
                    "reclaimed entries of a stalled consumer"
                );
                metrics::counter!("inlet_stream_reclaimed_total", "group" => self.config.group.clone())
                    .increment(entries.len() as u64);
                return Ok(self.batch(entries, BatchOrigin::Reclaimed));
            }
        }
        let entries = self.read(ReadFrom::New, block).await?;
        Ok(self.batch(entries, BatchOrigin::New))
    }

    fn batch(&self, entries: Vec<StreamEntry>, origin: BatchOrigin) -> Batch {
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let mut batch = Batch {
            queue: self.queue.clone(),
            stream: self.config.stream.clone(),
            group: self.config.group.clone(),
            consumer: self.config.consumer.clone(),
            claim_idle: self.config.claim_idle,
            entries,
            ids,
            origin,
            heartbeat: None,
            own_pending: self.own_pending.clone(),
            done: false,
        };
        batch.restart_heartbeat();
        batch
    }

    /// `XREADGROUP` (the only place Inlet issues it), recreating a vanished
    /// group and retrying once.
    async fn read(&self, from: ReadFrom, block: Duration) -> Result<Vec<StreamEntry>, QueueError> {
        match self.xreadgroup(from, block).await {
            Err(e) if e.is_nogroup() => {
                tracing::warn!(stream = %self.config.stream, group = %self.config.group, "consumer group missing; recreating it");
                self.queue
                    .ensure_group(&self.config.stream, &self.config.group)
                    .await?;
                metrics::counter!("inlet_stream_group_recreated_total", "group" => self.config.group.clone())
                    .increment(1);
                match from {
                    // A new group has no pending entries.
                    ReadFrom::OwnPending => Ok(Vec::new()),
                    ReadFrom::New => self.xreadgroup(from, block).await,
                }
            }
            other => other,
        }
    }

    async fn xreadgroup(
        &self,
        from: ReadFrom,
        block: Duration,
    ) -> Result<Vec<StreamEntry>, QueueError> {
        let c = &self.config;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&c.group)
            .arg(&c.consumer)
            .arg("COUNT")
            .arg(c.count);
        let block = block.min(MAX_BLOCK);
        let blocking = from == ReadFrom::New && !block.is_zero();
        if blocking {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS")
            .arg(self.queue.key(&c.stream))
            .arg(match from {
                ReadFrom::OwnPending => "0",
                ReadFrom::New => ">",
            });
        let reply: Option<StreamReadReply> = if blocking {
            let mut reader = self.queue.reader.clone();
            cmd.query_async(&mut reader).await?
        } else {
            let mut conn = self.queue.conn.clone();
            cmd.query_async(&mut conn).await?
        };
        Ok(reply
            .map(|r| {
                r.keys
                    .into_iter()
                    .flat_map(|k| k.ids)
                    // Own pending entries deleted meanwhile come back
                    // without fields: nothing left to do for them.
                    .filter(|sid| !sid.map.is_empty())
                    .map(StreamEntry::from_stream_id)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `XAUTOCLAIM` from the start of the stream.
    async fn autoclaim(&self) -> Result<Vec<StreamEntry>, QueueError> {
        let c = &self.config;
        let mut conn = self.queue.conn.clone();
        let reply: Result<StreamAutoClaimReply, RedisError> = redis::cmd("XAUTOCLAIM")
            .arg(self.queue.key(&c.stream))
            .arg(&c.group)
            .arg(&c.consumer)
            .arg(c.claim_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(c.count)
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(reply) => Ok(reply
                .claimed
                .into_iter()
                .filter(|sid| !sid.map.is_empty())
                .map(StreamEntry::from_stream_id)
                .collect()),
            Err(e) if e.code() == Some("NOGROUP") => {
                self.queue.ensure_group(&c.stream, &c.group).await?;
                Ok(Vec::new())
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadFrom {
    OwnPending,
    New,
}

/// Entries read by a [`GroupConsumer`], kept fresh while the guard lives.
///
/// Acknowledge with [`ack`](Self::ack) / [`ack_delete`](Self::ack_delete);
/// dropping it unacknowledged leaves the entries pending, and the consumer
/// reads its own pending entries first on the next call.
#[derive(Debug)]
pub struct Batch {
    queue: RedisQueue,
    stream: String,
    group: String,
    consumer: String,
    claim_idle: Duration,
    entries: Vec<StreamEntry>,
    ids: Vec<String>,
    origin: BatchOrigin,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    own_pending: Arc<AtomicBool>,
    done: bool,
}

impl Batch {
    /// The entries, in stream order.
    pub fn entries(&self) -> &[StreamEntry] {
        &self.entries
    }

    /// Takes the entries out (the guard keeps their ids and stays
    /// responsible for acknowledging them).
    pub fn take_entries(&mut self) -> Vec<StreamEntry> {
        std::mem::take(&mut self.entries)
    }

    /// The entry ids.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the batch holds no entry.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Where the entries came from (of the first batch, after
    /// [`absorb`](Self::absorb)).
    pub fn origin(&self) -> BatchOrigin {
        self.origin
    }

    /// Adds another batch of the same consumer to this one (coalescing
    /// consumers gather several reads before they act).
    pub fn absorb(&mut self, mut other: Batch) {
        other.done = true;
        other.stop_heartbeat();
        if self.ids.is_empty() {
            self.origin = other.origin;
        }
        self.entries.append(&mut other.entries);
        self.ids.append(&mut other.ids);
        self.restart_heartbeat();
    }

    /// Acknowledges every entry (`XACK`); they stay in the stream for other
    /// consumer groups.
    pub async fn ack(mut self) -> Result<(), QueueError> {
        self.stop_heartbeat();
        let result = self.queue.ack(&self.stream, &self.group, &self.ids).await;
        self.settle(result)
    }

    /// Acknowledges and deletes every entry atomically, so the stream's
    /// length is the backlog still to process (streams with one group).
    pub async fn ack_delete(mut self) -> Result<(), QueueError> {
        self.stop_heartbeat();
        let result = self
            .queue
            .ack_delete(&self.stream, &self.group, &self.ids)
            .await;
        self.settle(result)
    }

    fn settle(&mut self, result: Result<(), QueueError>) -> Result<(), QueueError> {
        // A failed ack leaves the entries pending: re-read them first
        // (processing them again is the at-least-once contract).
        self.done = result.is_ok();
        result
    }

    fn stop_heartbeat(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }

    fn restart_heartbeat(&mut self) {
        self.stop_heartbeat();
        if self.ids.is_empty() || self.claim_idle.is_zero() {
            return;
        }
        let beat = (self.claim_idle / 3).max(Duration::from_millis(1));
        let queue = self.queue.clone();
        let (stream, group, consumer) = (
            self.stream.clone(),
            self.group.clone(),
            self.consumer.clone(),
        );
        let ids = self.ids.clone();
        self.heartbeat = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
            loop {
                tick.tick().await;
                // Only entries idle for half a beat are touched: one another
                // consumer has just claimed is left to it.
                if let Err(e) = queue
                    .touch(&stream, &group, &consumer, beat / 2, &ids)
                    .await
                {
                    tracing::debug!(error = %e, stream, group, "keeping entries in progress fresh failed");
                }
            }
        }));
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.stop_heartbeat();
        if !self.done && !self.ids.is_empty() {
            self.own_pending.store(true, Ordering::Release);
        }
    }
}

impl RedisQueue {
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

    /// Resets the idle time of entries this consumer is still working on
    /// (`XCLAIM … JUSTID`). Only entries idle for at least `min_idle` are
    /// touched.
    async fn touch(
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
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(self.key(stream))
            .arg(group)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(ids)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Acknowledges entries and deletes them from the stream, atomically.
    async fn ack_delete(
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
    async fn ack(&self, stream: &str, group: &str, ids: &[String]) -> Result<(), QueueError> {
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
}
