//! Store side of the event bus: handler idempotency, handler failures,
//! outgoing-webhook subscriptions, and reads of the immutable `event_log`
//! (stats, failed events, replay). Same one-body-two-databases pattern as
//! [`super::sql`], differences from the backend's dialect.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row};

use super::sql::{classify, for_each_backend, Backend, SqlStore};
use super::StoreError;
use crate::events::{Event, Operation, Phase};

/// An outgoing-webhook subscription.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subscription {
    /// Row id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Endpoint URL.
    pub url: String,
    /// Comma-separated event type patterns (`message.after.*`).
    pub event_types: String,
    /// Signing secret (`whsec_…`); never printed by the CLI.
    #[serde(skip)]
    pub secret: String,
    /// `standard` (Standard Webhooks JSON) or `slack`.
    pub format: String,
    /// Receives events.
    pub active: bool,
    /// Events in a row that could not be delivered.
    pub consecutive_failures: i32,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
}

impl Subscription {
    /// Whether the subscription wants this event.
    pub fn wants(&self, event: &Event) -> bool {
        self.event_types
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .any(|p| event.matches(p))
    }
}

/// A handler that gave up on an event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HandlerFailure {
    /// Event id.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Handler name.
    pub handler: String,
    /// Attempts made.
    pub attempts: i32,
    /// Last error.
    pub error: String,
    /// When it gave up.
    pub failed_at: DateTime<Utc>,
}

/// Count of one event type on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventStat {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Event type.
    pub event_type: String,
    /// How many.
    pub count: i64,
}

/// A position in the event log, in the order rows become readable: the
/// writing transaction, then the sequence (`event_log.tx`, `seq`; SQLite
/// commits one writer at a time, so its `tx` is always 0). Only rows no
/// still-running transaction can commit behind are read (the relay's
/// horizon), so a reader that moves a cursor through the log in this order
/// never skips a row that commits late. Within one transaction `seq`
/// orders the rows, so the sequence alone names a row (an SSE event id).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct LogCursor {
    /// Id of the transaction that wrote the row (`xid8`; 0 on SQLite).
    pub tx: u64,
    /// `event_log.seq`.
    pub seq: i64,
}

/// The event-bus side of the store.
pub trait EventLogStore: Send + Sync {
    /// The newest readable position (the start of a live tail); the zero
    /// cursor when the log is empty.
    fn log_head(&self) -> BoxFuture<'_, Result<LogCursor, StoreError>>;
    /// The position of the row with sequence `seq` (a resume point), if it
    /// exists.
    fn log_position(&self, seq: i64) -> BoxFuture<'_, Result<Option<LogCursor>, StoreError>>;
    /// Readable rows after `after`, in cursor order, at most `limit`.
    fn log_after(
        &self,
        after: LogCursor,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<(LogCursor, Event)>, StoreError>>;
    /// Whether `handler` already processed `key`.
    fn is_processed<'a>(
        &'a self,
        key: &'a str,
        handler: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Records a handler's final failure on an event.
    fn record_failure<'a>(
        &'a self,
        event: &'a Event,
        handler: &'a str,
        attempts: i32,
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Latest handler failures.
    fn handler_failures(
        &self,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<HandlerFailure>, StoreError>>;
    /// Counts per type per day since `since`.
    fn event_stats(
        &self,
        since: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<Vec<EventStat>, StoreError>>;
    /// Logged events in order, after sequence `after_seq`, within
    /// [from, to), optionally of one type pattern. Returns (seq, event).
    fn logged_events<'a>(
        &'a self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        phase: Option<Phase>,
        after_seq: i64,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<(i64, Event)>, StoreError>>;
    /// Queues events for delivery without logging them again (replays).
    fn enqueue_events<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Adds a subscription (and logs `subscription.after.create`).
    fn add_subscription<'a>(
        &'a self,
        name: &'a str,
        url: &'a str,
        event_types: &'a str,
        secret: &'a str,
        format: &'a str,
    ) -> BoxFuture<'a, Result<Subscription, StoreError>>;
    /// Every subscription.
    fn subscriptions(&self) -> BoxFuture<'_, Result<Vec<Subscription>, StoreError>>;
    /// Activates or deactivates (logs `subscription.after.activate|deactivate`).
    fn set_subscription_active<'a>(
        &'a self,
        name: &'a str,
        active: bool,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Records a delivery outcome; after `disable_after` consecutive failed
    /// events the subscription is deactivated. Returns true when it was.
    fn record_delivery<'a>(
        &'a self,
        id: i64,
        ok: bool,
        disable_after: i32,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Hands events to in-process handlers durably (direct mode): one
    /// `bus_pending` row per handler and event, leased to `owner` until
    /// `lease_until`; a hand-over repeated after a crash adds nothing.
    fn bus_enqueue<'a>(
        &'a self,
        rows: &'a [BusPending],
        owner: &'a str,
        lease_until: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Takes `handler`'s oldest pending event that is `owner`'s or whose
    /// lease ran out, leasing it to `owner` until `lease_until`: (row id,
    /// event JSON). Two processes never take the same row at once.
    fn bus_claim<'a>(
        &'a self,
        handler: &'a str,
        owner: &'a str,
        lease_until: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Option<(i64, String)>, StoreError>>;
    /// Removes the rows of handled events.
    fn bus_done<'a>(&'a self, ids: &'a [i64]) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// One event waiting for one in-process handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusPending {
    /// Handler name.
    pub handler: String,
    /// The handler's idempotency key of the event (id, or id#replay:…).
    pub event_key: String,
    /// The event as JSON (the `event` field of an `events` stream entry).
    pub event: String,
}

pub(super) fn event_from_row<R: Row>(row: &R) -> Result<(i64, Event), sqlx::Error>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Json<serde_json::Value>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<Json<serde_json::Value>>:
        sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    let id: String = row.try_get("event_id")?;
    Ok((
        row.try_get("seq")?,
        Event {
            id: uuid::Uuid::parse_str(&id).unwrap_or_default(),
            event_type: row.try_get("event_type")?,
            entity: row.try_get("entity")?,
            phase: word(row.try_get("phase")?)?,
            operation: word(row.try_get("operation")?)?,
            data: row.try_get::<Json<serde_json::Value>, _>("data")?.0,
            result: row
                .try_get::<Option<Json<serde_json::Value>>, _>("result")?
                .map(|j| j.0),
            error: row.try_get("error")?,
            actor: row.try_get("actor")?,
            tenant_id: row.try_get("tenant")?,
            trace_id: row.try_get("trace_id")?,
            correlation_id: row.try_get("correlation_id")?,
            timestamp: row.try_get("occurred_at")?,
            schema_version: row.try_get("schema_version")?,
            replay: None,
        },
    ))
}

/// A phase or operation read from the event log.
fn word<T: std::str::FromStr<Err = crate::events::UnknownWord>>(
    value: String,
) -> Result<T, sqlx::Error> {
    value.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn subscription_from_row<R: Row>(row: &R) -> Result<Subscription, sqlx::Error>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    Ok(Subscription {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        url: row.try_get("url")?,
        event_types: row.try_get("event_types")?,
        secret: row.try_get("secret")?,
        format: row.try_get("format")?,
        active: row.try_get("active")?,
        consecutive_failures: row.try_get("consecutive_failures")?,
        disabled_reason: row.try_get("disabled_reason")?,
    })
}

fn subscription_event(sub: &Subscription, op: Operation, actor: &str) -> Event {
    Event::new(
        "subscription",
        Phase::After,
        op,
        &format!(
            "{}/{}/{}",
            sub.id,
            op,
            crate::envelope::now().timestamp_micros()
        ),
        "system",
        None,
        actor,
        serde_json::json!({
            "id": sub.id,
            "name": sub.name,
            "url": sub.url,
            "event_types": sub.event_types,
            "format": sub.format,
            "active": sub.active,
            "disabled_reason": sub.disabled_reason,
        }),
    )
}

/// A cursor read back: `CAST(tx AS text)` and `seq`.
fn cursor_from_row<R: Row>(row: &R) -> Result<LogCursor, StoreError>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    let tx: String = row.try_get("tx_text").map_err(classify)?;
    Ok(LogCursor {
        tx: tx
            .trim()
            .parse()
            .map_err(|e| StoreError::Rejected(format!("unreadable event_log.tx {tx:?}: {e}")))?,
        seq: row.try_get("seq").map_err(classify)?,
    })
}

macro_rules! impl_event_log {
    ($db:ty) => {
        impl EventLogStore for SqlStore<$db> {
            fn log_head(&self) -> BoxFuture<'_, Result<LogCursor, StoreError>> {
                Box::pin(async move {
                    let d = <$db as Backend>::DIALECT;
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT CAST(tx AS text) AS tx_text, seq FROM event_log WHERE 1 = 1",
                    );
                    qb.push(d.horizon).push(" ORDER BY tx DESC, seq DESC LIMIT 1");
                    match qb.build().fetch_optional(&self.pool).await.map_err(classify)? {
                        Some(row) => cursor_from_row(&row),
                        None => Ok(LogCursor::default()),
                    }
                })
            }

            fn log_position(&self, seq: i64) -> BoxFuture<'_, Result<Option<LogCursor>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT CAST(tx AS text) AS tx_text, seq FROM event_log WHERE seq = ",
                    );
                    qb.push_bind(seq);
                    qb.build()
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(classify)?
                        .map(|row| cursor_from_row(&row))
                        .transpose()
                })
            }

            fn log_after(
                &self,
                after: LogCursor,
                limit: i64,
            ) -> BoxFuture<'_, Result<Vec<(LogCursor, Event)>, StoreError>> {
                Box::pin(async move {
                    let d = <$db as Backend>::DIALECT;
                    let mut qb = QueryBuilder::<$db>::new("SELECT CAST(tx AS text) AS tx_text, ");
                    qb.push(super::sql::EVENT_COLUMNS)
                        .push(" FROM event_log WHERE (tx, seq) > (CAST(")
                        .push_bind(after.tx.to_string())
                        .push(" AS ")
                        .push(d.tx_type)
                        .push("), ")
                        .push_bind(after.seq)
                        .push(")")
                        .push(d.horizon)
                        .push(" ORDER BY tx, seq LIMIT ")
                        .push_bind(limit);
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    rows.iter()
                        .map(|row| {
                            let cursor = cursor_from_row(row)?;
                            let (_, event) = event_from_row(row).map_err(classify)?;
                            Ok((cursor, event))
                        })
                        .collect()
                })
            }

            fn is_processed<'a>(&'a self, key: &'a str, handler: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("SELECT 1 AS one FROM processed_events WHERE event_id = ");
                    qb.push_bind(key).push(" AND handler = ").push_bind(handler);
                    Ok(qb.build().fetch_optional(&self.pool).await.map_err(classify)?.is_some())
                })
            }

            fn record_failure<'a>(
                &'a self,
                event: &'a Event,
                handler: &'a str,
                attempts: i32,
                error: &'a str,
            ) -> BoxFuture<'a, Result<(), StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO event_failures (event_id, event_type, handler, attempts, error, failed_at) ",
                    );
                    qb.push_values([event], |mut b, e| {
                        b.push_bind(e.id.to_string())
                            .push_bind(&e.event_type)
                            .push_bind(handler)
                            .push_bind(attempts)
                            .push_bind(error)
                            .push_bind(Utc::now());
                    });
                    qb.build().execute(&self.pool).await.map_err(classify)?;
                    Ok(())
                })
            }

            fn handler_failures(&self, limit: i64) -> BoxFuture<'_, Result<Vec<HandlerFailure>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT event_id, event_type, handler, attempts, error, failed_at FROM event_failures \
                         ORDER BY id DESC LIMIT ",
                    );
                    qb.push_bind(limit);
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    rows.iter()
                        .map(|r| {
                            Ok(HandlerFailure {
                                event_id: r.try_get("event_id")?,
                                event_type: r.try_get("event_type")?,
                                handler: r.try_get("handler")?,
                                attempts: r.try_get("attempts")?,
                                error: r.try_get("error")?,
                                failed_at: r.try_get("failed_at")?,
                            })
                        })
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(classify)
                })
            }

            fn event_stats(&self, since: DateTime<Utc>) -> BoxFuture<'_, Result<Vec<EventStat>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(format!(
                        "SELECT {} AS day, event_type, count(*) AS n FROM event_log WHERE occurred_at >= ",
                        <$db as Backend>::DIALECT.day("occurred_at")
                    ));
                    qb.push_bind(since)
                        .push(" GROUP BY day, event_type ORDER BY day DESC, event_type");
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    rows.iter()
                        .map(|r| {
                            Ok(EventStat {
                                day: r.try_get("day")?,
                                event_type: r.try_get("event_type")?,
                                count: r.try_get("n")?,
                            })
                        })
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(classify)
                })
            }

            fn logged_events<'a>(
                &'a self,
                from: Option<DateTime<Utc>>,
                to: Option<DateTime<Utc>>,
                phase: Option<Phase>,
                after_seq: i64,
                limit: i64,
            ) -> BoxFuture<'a, Result<Vec<(i64, Event)>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("SELECT ");
                    qb.push(super::sql::EVENT_COLUMNS).push(" FROM event_log WHERE seq > ");
                    qb.push_bind(after_seq);
                    if let Some(from) = from {
                        qb.push(" AND occurred_at >= ").push_bind(from);
                    }
                    if let Some(to) = to {
                        qb.push(" AND occurred_at < ").push_bind(to);
                    }
                    if let Some(phase) = phase {
                        qb.push(" AND phase = ").push_bind(phase.as_str());
                    }
                    qb.push(" ORDER BY seq LIMIT ").push_bind(limit);
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    rows.iter()
                        .map(event_from_row)
                        .collect::<Result<_, _>>()
                        .map_err(classify)
                })
            }

            fn enqueue_events<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), StoreError>> {
                Box::pin(async move {
                    for chunk in events.chunks(400) {
                        let mut qb = QueryBuilder::<$db>::new("INSERT INTO outbox (stream, fields, created_at) ");
                        qb.push_values(chunk, |mut b, e| {
                            let row = crate::events::outbox_row(e);
                            b.push_bind(row.stream)
                                .push_bind(super::sql::fields_text(&row.fields))
                                .push_bind(Utc::now());
                        });
                        qb.build().execute(&self.pool).await.map_err(classify)?;
                    }
                    Ok(())
                })
            }

            fn add_subscription<'a>(
                &'a self,
                name: &'a str,
                url: &'a str,
                event_types: &'a str,
                secret: &'a str,
                format: &'a str,
            ) -> BoxFuture<'a, Result<Subscription, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO event_subscriptions (name, url, event_types, secret, format, active, \
                         consecutive_failures, created_at, updated_at) ",
                    );
                    let now = Utc::now();
                    qb.push_values([()], |mut b, ()| {
                        b.push_bind(name)
                            .push_bind(url)
                            .push_bind(event_types)
                            .push_bind(secret)
                            .push_bind(format)
                            .push_bind(true)
                            .push_bind(0i32)
                            .push_bind(now)
                            .push_bind(now);
                    });
                    qb.push(" RETURNING *");
                    let row = qb.build().fetch_one(&self.pool).await.map_err(classify)?;
                    let sub = subscription_from_row(&row).map_err(classify)?;
                    self.append_events(&[subscription_event(&sub, Operation::Create, "cli")]).await?;
                    Ok(sub)
                })
            }

            fn subscriptions(&self) -> BoxFuture<'_, Result<Vec<Subscription>, StoreError>> {
                Box::pin(async move {
                    let rows = sqlx::query("SELECT * FROM event_subscriptions ORDER BY id")
                        .fetch_all(&self.pool)
                        .await
                        .map_err(classify)?;
                    rows.iter()
                        .map(subscription_from_row)
                        .collect::<Result<_, _>>()
                        .map_err(classify)
                })
            }

            fn set_subscription_active<'a>(
                &'a self,
                name: &'a str,
                active: bool,
                reason: Option<&'a str>,
            ) -> BoxFuture<'a, Result<bool, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("UPDATE event_subscriptions SET active = ");
                    qb.push_bind(active)
                        .push(", disabled_reason = ")
                        .push_bind(if active { None } else { reason })
                        .push(", consecutive_failures = 0, updated_at = ")
                        .push_bind(Utc::now())
                        .push(" WHERE name = ")
                        .push_bind(name)
                        .push(" RETURNING *");
                    let Some(row) = qb.build().fetch_optional(&self.pool).await.map_err(classify)? else {
                        return Ok(false);
                    };
                    let sub = subscription_from_row(&row).map_err(classify)?;
                    let op = if active {
                        Operation::Activate
                    } else {
                        Operation::Deactivate
                    };
                    self.append_events(&[subscription_event(&sub, op, "cli")]).await?;
                    Ok(true)
                })
            }

            fn record_delivery<'a>(
                &'a self,
                id: i64,
                ok: bool,
                disable_after: i32,
            ) -> BoxFuture<'a, Result<bool, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("UPDATE event_subscriptions SET consecutive_failures = ");
                    if ok {
                        qb.push("0");
                    } else {
                        qb.push("consecutive_failures + 1");
                    }
                    qb.push(", updated_at = ")
                        .push_bind(Utc::now())
                        .push(" WHERE id = ")
                        .push_bind(id)
                        .push(" RETURNING *");
                    let Some(row) = qb.build().fetch_optional(&self.pool).await.map_err(classify)? else {
                        return Ok(false);
                    };
                    let sub = subscription_from_row(&row).map_err(classify)?;
                    if !ok && sub.active && sub.consecutive_failures >= disable_after {
                        let reason = format!("{} consecutive events failed", sub.consecutive_failures);
                        let mut qb = QueryBuilder::<$db>::new("UPDATE event_subscriptions SET active = ");
                        qb.push_bind(false)
                            .push(", disabled_reason = ")
                            .push_bind(&reason)
                            .push(" WHERE id = ")
                            .push_bind(id);
                        qb.build().execute(&self.pool).await.map_err(classify)?;
                        let mut sub = sub;
                        sub.active = false;
                        sub.disabled_reason = Some(reason);
                        self.append_events(&[subscription_event(&sub, Operation::Deactivate, "webhooks")]).await?;
                        return Ok(true);
                    }
                    Ok(false)
                })
            }

            fn bus_enqueue<'a>(
                &'a self,
                rows: &'a [BusPending],
                owner: &'a str,
                lease_until: DateTime<Utc>,
            ) -> BoxFuture<'a, Result<(), StoreError>> {
                Box::pin(async move {
                    for chunk in rows.chunks(1000) {
                        let mut qb = QueryBuilder::<$db>::new(
                            "INSERT INTO bus_pending (handler, event_key, event, owner, lease_until) ",
                        );
                        qb.push_values(chunk, |mut b, r| {
                            b.push_bind(&r.handler)
                                .push_bind(&r.event_key)
                                .push_bind(&r.event)
                                .push_bind(owner)
                                .push_bind(lease_until);
                        });
                        qb.push(" ON CONFLICT (handler, event_key) DO NOTHING");
                        qb.build().execute(&self.pool).await.map_err(classify)?;
                    }
                    Ok(())
                })
            }

            fn bus_claim<'a>(
                &'a self,
                handler: &'a str,
                owner: &'a str,
                lease_until: DateTime<Utc>,
            ) -> BoxFuture<'a, Result<Option<(i64, String)>, StoreError>> {
                Box::pin(async move {
                    let d = <$db as Backend>::DIALECT;
                    let mut qb = QueryBuilder::<$db>::new("UPDATE bus_pending SET owner = ");
                    qb.push_bind(owner)
                        .push(", lease_until = ")
                        .push_bind(lease_until)
                        .push(" WHERE id = (SELECT id FROM bus_pending WHERE handler = ")
                        .push_bind(handler)
                        .push(" AND (owner = ")
                        .push_bind(owner)
                        .push(" OR lease_until < ")
                        .push_bind(Utc::now())
                        .push(") ORDER BY id LIMIT 1")
                        .push(d.skip_locked)
                        .push(") RETURNING id, event");
                    let row = qb.build().fetch_optional(&self.pool).await.map_err(classify)?;
                    row.map(|r| Ok((r.try_get("id")?, r.try_get("event")?)))
                        .transpose()
                        .map_err(classify)
                })
            }

            fn bus_done<'a>(&'a self, ids: &'a [i64]) -> BoxFuture<'a, Result<(), StoreError>> {
                Box::pin(async move {
                    if ids.is_empty() {
                        return Ok(());
                    }
                    let mut qb = QueryBuilder::<$db>::new("DELETE FROM bus_pending WHERE id IN (");
                    let mut sep = qb.separated(", ");
                    for id in ids {
                        sep.push_bind(*id);
                    }
                    qb.push(")");
                    qb.build().execute(&self.pool).await.map_err(classify)?;
                    Ok(())
                })
            }
        }
    };
}

for_each_backend!(impl_event_log);
