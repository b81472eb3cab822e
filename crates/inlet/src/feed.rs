//! Live readers of the event log (`GET /api/events/stream`): one shared
//! tail per process and one small task per reader.
//!
//! The log is read in the relay's order ([`LogCursor`]: writing transaction,
//! then sequence, only rows no running transaction can commit behind), so
//! it works the same in queue and direct mode and a cursor never skips a
//! row that commits late. The shared tail polls the log every
//! `events.stream_poll_ms` and broadcasts each batch to the readers; it
//! never waits for one.
//!
//! A reader subscribes to the tail, then catches up from the store from its
//! own cursor (the `Last-Event-ID` it resumes from, or the head), then
//! follows the tail, skipping what it already has: every row is delivered
//! once, in order, with no gap between the backlog and the live part. A
//! reader that falls behind the tail's ring of batches catches up from the
//! store again. Between a reader and its client sits a buffer of
//! `events.stream_buffer` events; a client that takes none of them for
//! `events.stream_stall_ms` is disconnected (it reconnects with
//! `Last-Event-ID`), so a slow client holds a bounded buffer and slows
//! nobody.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, OnceCell};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::events::{type_matches, Event};
use crate::store::events::LogCursor;
use crate::store::{Store, StoreError};

/// Rows read per store round trip.
const PAGE: i64 = 500;
/// Batches the shared tail keeps for readers that are momentarily busy.
const RING: usize = 64;

/// One event of the log with its position.
pub type Item = (LogCursor, Event);
type Batch = Arc<Vec<Item>>;

/// Which events a reader wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamFilter {
    /// Event type patterns (any matches; empty: every type), as for
    /// subscriptions: `*` one segment, a trailing `*` or `**` the rest.
    pub types: Vec<String>,
    /// Only events of this conversation.
    pub conversation_id: Option<i64>,
}

/// A filter parameter that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{param}`: {detail}")]
pub struct BadFilter {
    /// The query parameter.
    pub param: &'static str,
    /// What is wrong.
    pub detail: String,
}

impl StreamFilter {
    /// Reads `type` (comma-separated patterns) and `conversation_id`.
    pub fn parse(types: Option<&str>, conversation_id: Option<&str>) -> Result<Self, BadFilter> {
        let types: Vec<String> = types
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        if let Some(bad) = types.iter().find(|p| {
            p.len() > 200
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'*' | b'_'))
        }) {
            return Err(BadFilter {
                param: "type",
                detail: format!(
                    "{bad:?} is not an event type pattern (letters, digits, `_`, `.`, `*`)"
                ),
            });
        }
        let conversation_id = conversation_id
            .map(|c| {
                c.trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|id| *id > 0)
                    .ok_or(BadFilter {
                        param: "conversation_id",
                        detail: format!("{c:?} is not a conversation id"),
                    })
            })
            .transpose()?;
        Ok(Self {
            types,
            conversation_id,
        })
    }

    /// Whether `event` passes: its type matches a pattern, and it belongs
    /// to the conversation (its data's `conversation_id`, or, for a
    /// conversation event, its own id).
    pub fn matches(&self, event: &Event) -> bool {
        if !self.types.is_empty()
            && !self
                .types
                .iter()
                .any(|p| type_matches(&event.event_type, p))
        {
            return false;
        }
        match self.conversation_id {
            None => true,
            Some(id) => {
                let of = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_i64);
                of(event.data.get("conversation_id")) == Some(id)
                    || (event.entity == "conversation"
                        && of(event.result.as_ref().and_then(|r| r.get("id"))) == Some(id))
            }
        }
    }
}

/// Reads a `Last-Event-ID` (the event log sequence of the last event the
/// client got).
pub fn parse_last_event_id(value: &str) -> Option<i64> {
    value.trim().parse::<i64>().ok().filter(|s| *s >= 0)
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// With the next event written.
    Head,
    /// After the event with this sequence (`Last-Event-ID`).
    After(i64),
}

/// Why a reader could not start.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The resume point is not an event of the log.
    #[error("no event {0} in the event log")]
    UnknownEvent(i64),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a reader and its client are connected.
#[derive(Debug, Clone, Copy)]
pub struct ReaderLimits {
    /// Events that may wait for the client.
    pub buffer: usize,
    /// Longest the client may take no event while some wait.
    pub stall: Duration,
}

/// A reader's end: the events for its client, in order. Dropping it stops
/// the reader.
pub struct Reader {
    /// The events.
    pub events: mpsc::Receiver<Item>,
    /// Set when the reader gave up on a client too slow to take events: the
    /// response should end at once rather than drain.
    pub too_slow: Arc<AtomicBool>,
}

/// The shared tail of the event log, and the readers' factory.
#[derive(Clone)]
pub struct Feed(Arc<Inner>);

struct Inner {
    store: Store,
    poll: Duration,
    shutdown: CancellationToken,
    batches: broadcast::Sender<Batch>,
    started: OnceCell<()>,
}

impl Feed {
    /// A feed over `store`'s event log, polled every `poll`; its tail
    /// starts with the first reader and every reader ends on `shutdown`.
    pub fn new(store: Store, poll: Duration, shutdown: CancellationToken) -> Feed {
        let (batches, _) = broadcast::channel(RING);
        Feed(Arc::new(Inner {
            store,
            poll,
            shutdown,
            batches,
            started: OnceCell::new(),
        }))
    }

    /// Starts the shared tail at the log's head, once.
    async fn ensure_tail(&self) -> Result<(), StoreError> {
        self.0
            .started
            .get_or_try_init(|| async {
                let head = self.0.store.event_log().log_head().await?;
                tokio::spawn(tail(self.0.clone(), head));
                Ok::<_, StoreError>(())
            })
            .await?;
        Ok(())
    }

    /// A new reader from `start` with `filter`. Once this returns, every
    /// event after the start point reaches the reader.
    pub async fn reader(
        &self,
        start: Start,
        filter: StreamFilter,
        limits: ReaderLimits,
    ) -> Result<Reader, FeedError> {
        self.ensure_tail().await?;
        // Subscribe first: whatever the tail broadcasts from now on is
        // received; the catch-up from the store covers what came before.
        let live = self.0.batches.subscribe();
        let log = self.0.store.event_log();
        let cursor = match start {
            Start::Head => log.log_head().await?,
            Start::After(0) => LogCursor::default(),
            Start::After(seq) => log
                .log_position(seq)
                .await?
                .ok_or(FeedError::UnknownEvent(seq))?,
        };
        let (tx, events) = mpsc::channel(limits.buffer.max(1));
        let too_slow = Arc::new(AtomicBool::new(false));
        let reader = ReaderTask {
            inner: self.0.clone(),
            cursor,
            filter,
            out: tx,
            stall: limits.stall,
            too_slow: too_slow.clone(),
        };
        tokio::spawn(reader.run(live));
        Ok(Reader { events, too_slow })
    }
}

/// The shared tail: reads the log after `cursor` and broadcasts each batch.
async fn tail(inner: Arc<Inner>, mut cursor: LogCursor) {
    let mut backoff = Backoff::new(inner.poll, Duration::from_secs(10));
    loop {
        let wait = match inner.store.event_log().log_after(cursor, PAGE).await {
            Ok(rows) => {
                backoff.reset();
                let full = rows.len() as i64 == PAGE;
                if let Some((last, _)) = rows.last() {
                    cursor = *last;
                    // No reader listening is fine: they catch up from the
                    // store when they come.
                    let _ = inner.batches.send(Arc::new(rows));
                }
                if full {
                    Duration::ZERO
                } else {
                    inner.poll
                }
            }
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "event stream: reading the event log failed");
                wait
            }
        };
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Why a reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The client went away.
    Closed,
    /// The client took no event for the stall time.
    Slow,
    /// The service is shutting down.
    Shutdown,
}

impl Stop {
    fn as_str(self) -> &'static str {
        match self {
            Stop::Closed => "closed",
            Stop::Slow => "slow",
            Stop::Shutdown => "shutdown",
        }
    }
}

struct ReaderTask {
    inner: Arc<Inner>,
    cursor: LogCursor,
    filter: StreamFilter,
    out: mpsc::Sender<Item>,
    stall: Duration,
    too_slow: Arc<AtomicBool>,
}

impl ReaderTask {
    async fn run(mut self, mut live: broadcast::Receiver<Batch>) {
        metrics::gauge!("inlet_event_stream_clients").increment(1.0);
        let stop = self.follow(&mut live).await;
        if stop == Stop::Slow {
            self.too_slow.store(true, Ordering::Release);
        }
        metrics::gauge!("inlet_event_stream_clients").decrement(1.0);
        metrics::counter!("inlet_event_stream_disconnects_total", "reason" => stop.as_str())
            .increment(1);
    }

    async fn follow(&mut self, live: &mut broadcast::Receiver<Batch>) -> Stop {
        let mut catch_up = true;
        loop {
            if catch_up {
                if let Err(stop) = self.catch_up().await {
                    return stop;
                }
                catch_up = false;
            }
            let received = tokio::select! {
                _ = self.inner.shutdown.cancelled() => return Stop::Shutdown,
                _ = self.out.closed() => return Stop::Closed,
                r = live.recv() => r,
            };
            match received {
                Ok(batch) => {
                    for (cursor, event) in batch.iter() {
                        if let Err(stop) = self.offer(*cursor, event).await {
                            return stop;
                        }
                    }
                }
                // Fell behind the ring: the store has everything.
                Err(broadcast::error::RecvError::Lagged(_)) => catch_up = true,
                Err(broadcast::error::RecvError::Closed) => return Stop::Shutdown,
            }
        }
    }

    /// Reads the store from the cursor until it has nothing newer.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let rows = match self
                .inner
                .store
                .event_log()
                .log_after(self.cursor, PAGE)
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, "event stream: catching up from the event log failed");
                    tokio::select! {
                        _ = self.inner.shutdown.cancelled() => return Err(Stop::Shutdown),
                        _ = self.out.closed() => return Err(Stop::Closed),
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            let done = (rows.len() as i64) < PAGE;
            for (cursor, event) in &rows {
                self.offer(*cursor, event).await?;
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Moves the cursor past `cursor` and hands the event to the client if
    /// it is new and wanted, waiting at most the stall time for room.
    async fn offer(&mut self, cursor: LogCursor, event: &Event) -> Result<(), Stop> {
        if cursor <= self.cursor {
            return Ok(());
        }
        self.cursor = cursor;
        if !self.filter.matches(event) {
            return Ok(());
        }
        let permit = tokio::select! {
            _ = self.inner.shutdown.cancelled() => return Err(Stop::Shutdown),
            r = tokio::time::timeout(self.stall, self.out.reserve()) => match r {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err(Stop::Closed),
                Err(_) => return Err(Stop::Slow),
            },
        };
        permit.send((cursor, event.clone()));
        metrics::counter!("inlet_event_stream_events_total").increment(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(event_type: &str, data: serde_json::Value) -> Event {
        let mut parts = event_type.split('.');
        let (entity, phase, op) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        Event::new(
            entity,
            phase.parse().unwrap(),
            op.parse().unwrap(),
            "k",
            "t",
            None,
            "test",
            data,
        )
    }

    #[test]
    fn filters_take_type_globs_and_a_conversation() {
        let f = StreamFilter::parse(Some("draft.*"), Some("7")).unwrap();
        assert_eq!(f.types, ["draft.*"]);
        assert!(f.matches(&event("draft.after.create", json!({"conversation_id": 7}))));
        assert!(!f.matches(&event("draft.after.create", json!({"conversation_id": 8}))));
        assert!(!f.matches(&event(
            "message.after.create",
            json!({"conversation_id": 7})
        )));
        let mut conv = event("conversation.after.upsert", json!({}));
        conv.result = Some(json!({"id": 7}));
        let f = StreamFilter::parse(Some("draft.*, conversation.after.*"), Some("7")).unwrap();
        assert!(f.matches(&conv));
        let all = StreamFilter::parse(None, None).unwrap();
        assert!(all.matches(&event("message.after.create", json!({}))));
        assert_eq!(
            StreamFilter::parse(Some("draft.*;drop"), None)
                .unwrap_err()
                .param,
            "type"
        );
        assert_eq!(
            StreamFilter::parse(None, Some("x")).unwrap_err().param,
            "conversation_id"
        );
        assert_eq!(
            StreamFilter::parse(None, Some("0")).unwrap_err().param,
            "conversation_id"
        );
    }

    #[test]
    fn last_event_ids_are_sequences() {
        assert_eq!(parse_last_event_id("42"), Some(42));
        assert_eq!(parse_last_event_id(" 0 "), Some(0));
        assert_eq!(parse_last_event_id("-1"), None);
        assert_eq!(parse_last_event_id("abc"), None);
    }

    #[tokio::test]
    async fn a_client_that_takes_nothing_is_cut_off_and_others_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/feed.db", dir.path().display());
        let store = crate::store::open(&url, 2).await.unwrap();
        store.migrate().await.unwrap();
        let shutdown = CancellationToken::new();
        let feed = Feed::new(store.clone(), Duration::from_millis(20), shutdown.clone());
        let all = StreamFilter::default();
        let slow = feed
            .reader(
                Start::Head,
                all.clone(),
                ReaderLimits {
                    buffer: 2,
                    stall: Duration::from_millis(100),
                },
            )
            .await
            .unwrap();
        let mut fast = feed
            .reader(
                Start::Head,
                all,
                ReaderLimits {
                    buffer: 2,
                    stall: Duration::from_secs(60),
                },
            )
            .await
            .unwrap();
        for i in 0..6 {
            let e = Event::new(
                "subscription",
                crate::events::Phase::After,
                crate::events::Operation::Create,
                &format!("k{i}"),
                "t",
                None,
                "test",
                json!({"i": i}),
            );
            store.log_event(&e).await.unwrap();
        }
        // A client that reads gets every event, in order, through a buffer
        // of two.
        let mut seqs = Vec::new();
        for i in 0..6 {
            let (cursor, e) = tokio::time::timeout(Duration::from_secs(30), fast.events.recv())
                .await
                .expect("an event")
                .expect("the reader runs");
            assert_eq!(e.data["i"], i);
            seqs.push(cursor.seq);
        }
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        // The one that reads nothing holds two events and is cut off.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !slow.too_slow.load(Ordering::Acquire) {
            assert!(tokio::time::Instant::now() < deadline, "never cut off");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut slow = slow;
        let mut held = Vec::new();
        while let Some((_, e)) = slow.events.recv().await {
            held.push(e.data["i"].as_i64().unwrap());
        }
        assert_eq!(held, [0, 1], "a bounded buffer, then the end");

        // Resuming after the second event starts with the third.
        let mut resumed = feed
            .reader(
                Start::After(seqs[1]),
                StreamFilter::default(),
                ReaderLimits {
                    buffer: 8,
                    stall: Duration::from_secs(60),
                },
            )
            .await
            .unwrap();
        let (_, e) = resumed.events.recv().await.unwrap();
        assert_eq!(e.data["i"], 2);
        assert!(matches!(
            feed.reader(
                Start::After(424242),
                StreamFilter::default(),
                ReaderLimits {
                    buffer: 1,
                    stall: Duration::from_secs(1)
                }
            )
            .await,
            Err(FeedError::UnknownEvent(424242))
        ));
        shutdown.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(30), async {
            while resumed.events.recv().await.is_some() {}
        })
        .await;
        assert!(drained.is_ok(), "readers end on shutdown");
    }

    #[test]
    fn cursors_order_by_transaction_then_sequence() {
        // A row of an older transaction with a later sequence comes first:
        // the order rows become readable in.
        let a = LogCursor { tx: 5, seq: 20 };
        let b = LogCursor { tx: 6, seq: 10 };
        assert!(a < b);
        assert!(LogCursor { tx: 5, seq: 21 } > a);
        assert!(LogCursor::default() < a);
    }
}
