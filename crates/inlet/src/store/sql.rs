//! The SQL implementation of [`EventStore`] for Postgres and SQLite.
//!
//! The statements are written once, in [`impl_sql_store!`], and instantiated
//! for both databases: each backend's `QueryBuilder` emits its own
//! placeholders, and the two spellings that differ (`GREATEST`/`MAX`,
//! `LEAST`/`MIN`) are macro parameters. Migrations are embedded in the binary
//! from `migrations/postgres` and `migrations/sqlite`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use super::{
    Activity, Counts, CurrentStatus, Delivery, EventStore, OutboxEntry, RawFilter, StoreError,
    StoredDeadLetter, StoredMessage, WriteReport,
};
use crate::dlq::letter::DeadLetter;
use crate::envelope::{RawEvent, Source};
use crate::events::{
    after_events, before_events, failed_events, Event, EventFilter, EventSink, WriteResults,
};
use crate::model::Channel;
use crate::plan::{errors_json, ContactKey, ConversationKey, OutboxRow, WritePlan};

/// Rows per multi-row statement (keeps bind counts far below both databases'
/// limits).
const CHUNK: usize = 400;

/// A pooled SQL store.
#[derive(Clone)]
pub struct SqlStore<DB: sqlx::Database> {
    pub(crate) pool: sqlx::Pool<DB>,
    filter: EventFilter,
    sink: Arc<OnceLock<Arc<dyn EventSink>>>,
}

impl SqlStore<Postgres> {
    /// A lazily connecting Postgres pool.
    pub fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(url)
            .map_err(|e| StoreError::Config(e.to_string()))?;
        Ok(Self::with_pool(pool))
    }
}

impl SqlStore<Sqlite> {
    /// Opens (creating if needed) a SQLite file in WAL mode with full fsync
    /// on commit: an acknowledged event survives a power cut.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .map(|p| p.split('?').next().unwrap_or(p))
        {
            if let Some(parent) = std::path::Path::new(path).parent() {
                if !parent.as_os_str().is_empty() {
                    let _ = std::fs::create_dir_all(parent);
                }
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.clamp(1, 8))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(classify)?;
        Ok(Self::with_pool(pool))
    }
}

impl<DB: sqlx::Database> std::fmt::Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &DB::NAME)
            .field("filter", &self.filter)
            .finish()
    }
}

impl<DB: sqlx::Database> SqlStore<DB> {
    fn with_pool(pool: sqlx::Pool<DB>) -> Self {
        Self {
            pool,
            filter: EventFilter::default(),
            sink: Arc::new(OnceLock::new()),
        }
    }

    /// Sets which write events are produced.
    pub fn with_filter(mut self, filter: EventFilter) -> Self {
        self.filter = filter;
        self
    }
}

/// Maps a driver error to transient (retry) or permanent.
pub fn classify(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match &e {
        E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::Tls(_) | E::WorkerCrashed => {
            StoreError::Unavailable(e.to_string())
        }
        E::Protocol(_) => StoreError::Unavailable(e.to_string()),
        E::Database(db) => {
            let code = db.code().unwrap_or_default();
            // Postgres: serialization failure, deadlock, connection and
            // availability classes. SQLite: BUSY (5) and LOCKED (6) and their
            // extended codes.
            let transient = matches!(code.as_ref(), "40001" | "40P01" | "53300" | "55P03")
                || code.starts_with("08")
                || code.starts_with("57P")
                || matches!(code.as_ref(), "5" | "6" | "261" | "262" | "517" | "773");
            if transient {
                StoreError::Unavailable(e.to_string())
            } else {
                StoreError::Rejected(e.to_string())
            }
        }
        _ => StoreError::Rejected(e.to_string()),
    }
}

#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

const PG_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "core",
        include_str!("../../../../migrations/postgres/0001_core.sql"),
    ),
    (
        2,
        "events",
        include_str!("../../../../migrations/postgres/0002_events.sql"),
    ),
    (
        3,
        "timeline indexes",
        include_str!("../../../../migrations/postgres/0003_timeline_indexes.sql"),
    ),
    (
        4,
        "event relay",
        include_str!("../../../../migrations/postgres/0004_event_relay.sql"),
    ),
];
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "core",
        include_str!("../../../../migrations/sqlite/0001_core.sql"),
    ),
    (
        2,
        "events",
        include_str!("../../../../migrations/sqlite/0002_events.sql"),
    ),
    (
        3,
        "timeline indexes",
        include_str!("../../../../migrations/sqlite/0003_timeline_indexes.sql"),
    ),
    (
        4,
        "event relay",
        include_str!("../../../../migrations/sqlite/0004_event_relay.sql"),
    ),
];

async fn migrator(
    list: &'static [(i64, &'static str, &'static str)],
) -> Result<Migrator, StoreError> {
    Migrator::new(Embedded(list))
        .await
        .map_err(|e| StoreError::Migrate(e.to_string()))
}

/// Outbox entries for the cache-sync consumer: one per touched conversation,
/// plus the lists and the analytics summary.
fn cache_jobs(report: &WriteReport) -> Vec<OutboxRow> {
    let job = |key: String| OutboxRow {
        stream: crate::streams::CACHE_SYNC.to_string(),
        fields: std::collections::BTreeMap::from([("key".to_string(), key)]),
    };
    let mut jobs: Vec<_> = report
        .conversation_ids
        .iter()
        .map(|id| job(format!("conversation:{id}")))
        .collect();
    jobs.push(job("conversations".into()));
    if !report.contact_ids.is_empty() {
        jobs.push(job("contacts".into()));
    }
    jobs.push(job("summary".into()));
    jobs
}

fn channel_of(s: &str) -> Channel {
    Channel::parse(s).unwrap_or(Channel::Messenger)
}

/// Outbox fields as stored: JSON text. The column is `text`, not `jsonb`:
/// the relay only passes the fields through, so Postgres need not parse them.
pub(crate) fn fields_text(entry_fields: &std::collections::BTreeMap<String, String>) -> String {
    serde_json::to_string(entry_fields).unwrap_or_else(|_| "{}".into())
}

/// Reads outbox fields back (see [`fields_text`]).
fn fields_from_text(text: &str) -> Vec<(String, String)> {
    serde_json::from_str::<std::collections::BTreeMap<String, String>>(text)
        .map(|m| m.into_iter().collect())
        .unwrap_or_default()
}

fn headers_json(event: &RawEvent) -> serde_json::Value {
    serde_json::Value::Object(
        event
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

fn headers_from_json(v: &serde_json::Value) -> Vec<(String, String)> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// SQL condition under which the incoming row (`excluded`) replaces the
/// current status (`message_status_current`): the same table as
/// [`crate::model::DeliveryStatus::supersedes`].
const SUPERSEDES: &str = "(excluded.status = 'read' AND message_status_current.status <> 'read') \
 OR (message_status_current.status <> 'read' AND ( \
   (excluded.status = 'failed' AND (message_status_current.status = 'sent' \
       OR (message_status_current.status = 'delivered' AND excluded.at >= message_status_current.at))) \
   OR (excluded.status = 'delivered' AND (message_status_current.status = 'sent' \
       OR (message_status_current.status = 'failed' AND excluded.at > message_status_current.at)))))";

const MESSAGE_COLUMNS: &str = "m.id, m.tenant, m.channel, m.conversation_id, c.external_id AS contact_external_id, \
 c.name AS contact_name, m.provider_message_id, m.direction, m.kind, m.message_type, m.text, m.media, \
 m.reply_to, m.forwarded, m.referral, m.details, m.sent_at, m.trace_id, s.status AS status";

const MESSAGE_FROM: &str = " FROM messages m JOIN contacts c ON c.id = m.contact_id \
 LEFT JOIN message_status_current s ON s.tenant = m.tenant AND s.channel = m.channel \
 AND s.provider_message_id = m.provider_message_id";

/// Outbox rows or event-log rows claimed inside an open transaction.
struct SqlClaim<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    /// The claim's open transaction (Postgres: it holds the row locks);
    /// `None` when completing opens a write transaction of its own (SQLite).
    tx: Option<sqlx::Transaction<'static, DB>>,
    entries: Vec<OutboxEntry>,
    done: Completion,
}

/// What completing a [`SqlClaim`] does, before it commits.
enum Completion {
    /// Deletes the claimed outbox rows.
    DeleteOutbox,
    /// Moves the relay cursor `name` past the last claimed log row.
    AdvanceCursor {
        name: &'static str,
        tx: String,
        seq: i64,
    },
    /// Nothing was claimed.
    Nothing,
}

/// The relay cursor of the event log.
pub(crate) const EVENTS_CURSOR: &str = "events";

/// Columns of `event_log` read back as events.
pub(crate) const EVENT_COLUMNS: &str =
    "seq, event_id, event_type, entity, phase, operation, tenant, \
 trace_id, correlation_id, actor, data, result, error, schema_version, occurred_at";

macro_rules! impl_sql_store {
    (
        $db:ty,
        $backend:literal,
        $migrations:expr,
        $greatest:literal,
        $least:literal,
        $skip_locked:literal,
        $tx_type:literal,
        $horizon:literal,
        $hold_claim:literal,
        $write_begin:literal
    ) => {
        impl super::OutboxClaim for SqlClaim<$db> {
            fn entries(&self) -> &[OutboxEntry] {
                &self.entries
            }

            fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>> {
                Box::pin(async move {
                    match self.tx {
                        Some(tx) => tx.rollback().await.map_err(classify),
                        None => Ok(()),
                    }
                })
            }

            fn complete(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>> {
                Box::pin(async move {
                    let SqlClaim { pool, tx, entries, done } = *self;
                    let mut tx = match tx {
                        Some(tx) => tx,
                        None => pool.begin_with($write_begin).await.map_err(classify)?,
                    };
                    match done {
                        Completion::DeleteOutbox if !entries.is_empty() => {
                            let mut qb = QueryBuilder::<$db>::new("DELETE FROM outbox WHERE id IN (");
                            let mut sep = qb.separated(", ");
                            for e in &entries {
                                sep.push_bind(e.id);
                            }
                            qb.push(")");
                            qb.build().execute(&mut *tx).await.map_err(classify)?;
                        }
                        Completion::AdvanceCursor { name, tx: last_tx, seq } => {
                            let mut qb = QueryBuilder::<$db>::new("UPDATE relay_cursors SET tx = CAST(");
                            qb.push_bind(last_tx)
                                .push(concat!(" AS ", $tx_type, "), seq = "))
                                .push_bind(seq)
                                .push(" WHERE name = ")
                                .push_bind(name);
                            qb.build().execute(&mut *tx).await.map_err(classify)?;
                        }
                        Completion::DeleteOutbox | Completion::Nothing => {}
                    }
                    tx.commit().await.map_err(classify)
                })
            }
        }

        impl SqlStore<$db> {
            /// Keeps a claim's read transaction open until it completes, or
            /// ends it now (see the note above the invocations).
            async fn hold(
                tx: sqlx::Transaction<'static, $db>,
            ) -> Result<Option<sqlx::Transaction<'static, $db>>, StoreError> {
                if $hold_claim {
                    Ok(Some(tx))
                } else {
                    tx.commit().await.map_err(classify)?;
                    Ok(None)
                }
            }

            async fn write_plan(&self, plan: &WritePlan) -> Result<WriteReport, StoreError> {
                let now = Utc::now();
                let mut report = WriteReport::default();
                let mut results = WriteResults::default();
                let mut tx = self.pool.begin().await.map_err(classify)?;

                if !plan.tenants.is_empty() {
                    let mut qb = QueryBuilder::<$db>::new("INSERT INTO tenants (name, created_at) ");
                    qb.push_values(&plan.tenants, |mut b, t| {
                        b.push_bind(t).push_bind(now);
                    });
                    qb.push(" ON CONFLICT (name) DO NOTHING");
                    qb.build().execute(&mut *tx).await.map_err(classify)?;
                }

                for chunk in plan.raw.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO raw_events (trace_id, tenant, source, received_at, headers, body, stored_at) ",
                    );
                    qb.push_values(chunk, |mut b, ev| {
                        b.push_bind(ev.trace_id.to_string())
                            .push_bind(&ev.tenant)
                            .push_bind(ev.source.as_str())
                            .push_bind(ev.received_at)
                            .push_bind(Json(headers_json(ev)))
                            .push_bind(ev.body.as_ref())
                            .push_bind(now);
                    });
                    qb.push(" ON CONFLICT (trace_id) DO NOTHING");
                    report.raw_new += qb.build().execute(&mut *tx).await.map_err(classify)?.rows_affected();
                }

                let mut contact_ids: HashMap<ContactKey, i64> = HashMap::new();
                for chunk in plan.contacts.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO contacts (tenant, channel, external_id, name, first_seen_at, last_seen_at) ",
                    );
                    qb.push_values(chunk, |mut b, c| {
                        b.push_bind(&c.key.0)
                            .push_bind(c.key.1.as_str())
                            .push_bind(&c.key.2)
                            .push_bind(&c.name)
                            .push_bind(c.first_seen)
                            .push_bind(c.last_seen);
                    });
                    qb.push(concat!(
                        " ON CONFLICT (tenant, channel, external_id) DO UPDATE SET",
                        " name = COALESCE(excluded.name, contacts.name),",
                        " first_seen_at = ", $least, "(contacts.first_seen_at, excluded.first_seen_at),",
                        " last_seen_at = ", $greatest, "(contacts.last_seen_at, excluded.last_seen_at)",
                        " RETURNING id, tenant, channel, external_id"
                    ));
                    for row in qb.build().fetch_all(&mut *tx).await.map_err(classify)? {
                        let key: ContactKey = (
                            row.try_get("tenant").map_err(classify)?,
                            channel_of(row.try_get::<&str, _>("channel").map_err(classify)?),
                            row.try_get("external_id").map_err(classify)?,
                        );
                        let id: i64 = row.try_get("id").map_err(classify)?;
                        results
                            .contacts
                            .insert((key.0.clone(), key.1.as_str().to_string(), key.2.clone()), id);
                        contact_ids.insert(key, id);
                    }
                }
                report.contact_ids = contact_ids.values().copied().collect();
                report.contact_ids.sort_unstable();

                let contact_id = |key: &ContactKey| -> Result<i64, StoreError> {
                    contact_ids
                        .get(key)
                        .copied()
                        .ok_or_else(|| StoreError::Rejected(format!("contact {key:?} missing after upsert")))
                };
                let mut conversation_ids: HashMap<ConversationKey, i64> = HashMap::new();
                for chunk in plan.conversations.chunks(CHUNK) {
                    let ids = chunk
                        .iter()
                        .map(|c| contact_id(&c.key.3))
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO conversations (tenant, channel, business_id, contact_id, started_at, last_message_at) ",
                    );
                    qb.push_values(chunk.iter().zip(&ids), |mut b, (c, id)| {
                        b.push_bind(&c.key.0)
                            .push_bind(c.key.1.as_str())
                            .push_bind(&c.key.2)
                            .push_bind(*id)
                            .push_bind(c.started)
                            .push_bind(c.last);
                    });
                    qb.push(concat!(
                        " ON CONFLICT (tenant, channel, business_id, contact_id) DO UPDATE SET",
                        " started_at = ", $least, "(conversations.started_at, excluded.started_at),",
                        " last_message_at = ", $greatest, "(conversations.last_message_at, excluded.last_message_at)",
                        " RETURNING id, contact_id, business_id"
                    ));
                    let rows = qb.build().fetch_all(&mut *tx).await.map_err(classify)?;
                    let by_contact: HashMap<(i64, String), i64> = rows
                        .iter()
                        .map(|r| {
                            Ok::<_, sqlx::Error>((
                                (r.try_get("contact_id")?, r.try_get("business_id")?),
                                r.try_get("id")?,
                            ))
                        })
                        .collect::<Result<_, _>>()
                        .map_err(classify)?;
                    for (c, cid) in chunk.iter().zip(&ids) {
                        if let Some(id) = by_contact.get(&(*cid, c.key.2.clone())) {
                            conversation_ids.insert(c.key.clone(), *id);
                            results.conversations.insert(
                                (c.key.0.clone(), c.key.1.as_str().to_string(), c.key.2.clone(), *cid),
                                *id,
                            );
                        }
                    }
                }
                report.conversation_ids = conversation_ids.values().copied().collect();
                report.conversation_ids.sort_unstable();

                for chunk in plan.messages.chunks(CHUNK) {
                    let ids = chunk
                        .iter()
                        .map(|m| {
                            let conv = conversation_ids.get(&m.conversation).copied().ok_or_else(|| {
                                StoreError::Rejected("conversation missing after upsert".into())
                            })?;
                            Ok((conv, contact_id(&m.conversation.3)?))
                        })
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO messages (tenant, channel, conversation_id, contact_id, provider_message_id, \
                         direction, kind, message_type, text, media, reply_to, forwarded, referral, details, \
                         sent_at, trace_id, stored_at) ",
                    );
                    qb.push_values(chunk.iter().zip(&ids), |mut b, (row, (conv, contact))| {
                        let m = &row.message;
                        b.push_bind(&row.tenant)
                            .push_bind(m.channel.as_str())
                            .push_bind(*conv)
                            .push_bind(*contact)
                            .push_bind(&m.provider_message_id)
                            .push_bind(m.direction.as_str())
                            .push_bind(&m.kind)
                            .push_bind(&m.message_type)
                            .push_bind(&m.text)
                            .push_bind(Json(&m.media))
                            .push_bind(&m.reply_to)
                            .push_bind(m.forwarded)
                            .push_bind(m.referral.as_ref().map(Json))
                            .push_bind(Json(&m.details))
                            .push_bind(m.sent_at)
                            .push_bind(row.trace_id.to_string())
                            .push_bind(now);
                    });
                    qb.push(" ON CONFLICT (tenant, channel, provider_message_id) DO NOTHING \
                              RETURNING tenant, channel, provider_message_id");
                    for row in qb.build().fetch_all(&mut *tx).await.map_err(classify)? {
                        report.messages_new += 1;
                        results.new_messages.insert((
                            row.try_get("tenant").map_err(classify)?,
                            row.try_get("channel").map_err(classify)?,
                            row.try_get("provider_message_id").map_err(classify)?,
                        ));
                    }
                }

                for chunk in plan.statuses.chunks(CHUNK).chain(plan.watermarks.chunks(CHUNK)) {
                    for key in self.insert_status_history(&mut tx, chunk, now).await? {
                        report.statuses_new += 1;
                        results.new_statuses.insert(key);
                    }
                }

                for chunk in plan.current.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO message_status_current (tenant, channel, provider_message_id, status, at, errors, updated_at) ",
                    );
                    qb.push_values(chunk, |mut b, c| {
                        b.push_bind(&c.tenant)
                            .push_bind(c.channel.as_str())
                            .push_bind(&c.provider_message_id)
                            .push_bind(c.status.as_str())
                            .push_bind(c.at)
                            .push_bind(Json(errors_json(&c.errors)))
                            .push_bind(now);
                    });
                    qb.push(" ON CONFLICT (tenant, channel, provider_message_id) DO UPDATE SET \
                              status = excluded.status, at = excluded.at, errors = excluded.errors, \
                              updated_at = excluded.updated_at WHERE ");
                    qb.push(SUPERSEDES);
                    qb.push(" RETURNING tenant, channel, provider_message_id, status");
                    for row in qb.build().fetch_all(&mut *tx).await.map_err(classify)? {
                        results.current_changed.insert(
                            (
                                row.try_get("tenant").map_err(classify)?,
                                row.try_get("channel").map_err(classify)?,
                                row.try_get("provider_message_id").map_err(classify)?,
                            ),
                            row.try_get("status").map_err(classify)?,
                        );
                    }
                }

                // Watermark receipts: every outbound message of that contact
                // on that business endpoint sent up to the watermark.
                for w in &plan.watermarks {
                    let s = &w.status;
                    let watermark = s.watermark.unwrap_or(s.at);
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO message_status_current (tenant, channel, provider_message_id, status, at, errors, updated_at) \
                         SELECT m.tenant, m.channel, m.provider_message_id, ",
                    );
                    qb.push_bind(s.status.as_str())
                        .push(", ")
                        .push_bind(s.at)
                        .push(", ")
                        .push_bind(Json(errors_json(&s.errors)))
                        .push(", ")
                        .push_bind(now)
                        .push(" FROM messages m JOIN contacts c ON c.id = m.contact_id \
                                JOIN conversations v ON v.id = m.conversation_id WHERE m.tenant = ")
                        .push_bind(&w.tenant)
                        .push(" AND m.channel = ")
                        .push_bind(s.channel.as_str())
                        .push(" AND c.external_id = ")
                        .push_bind(&s.contact.external_id)
                        .push(" AND v.business_id = ")
                        .push_bind(&s.business_id)
                        .push(" AND m.direction = 'outbound' AND m.sent_at <= ")
                        .push_bind(watermark)
                        .push(" ON CONFLICT (tenant, channel, provider_message_id) DO UPDATE SET \
                                status = excluded.status, at = excluded.at, errors = excluded.errors, \
                                updated_at = excluded.updated_at WHERE ")
                        .push(SUPERSEDES);
                    qb.build().execute(&mut *tx).await.map_err(classify)?;
                }

                for chunk in plan.changes.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO page_changes (tenant, channel, change_key, account_id, field, kind, verb, \
                         external_id, from_id, from_name, text, occurred_at, value, trace_id, stored_at) ",
                    );
                    qb.push_values(chunk, |mut b, row| {
                        let c = &row.change;
                        b.push_bind(&row.tenant)
                            .push_bind(c.channel.as_str())
                            .push_bind(&row.key)
                            .push_bind(&c.account_id)
                            .push_bind(&c.field)
                            .push_bind(&c.kind)
                            .push_bind(&c.verb)
                            .push_bind(&c.external_id)
                            .push_bind(c.from.as_ref().map(|f| f.external_id.clone()))
                            .push_bind(c.from.as_ref().and_then(|f| f.name.clone()))
                            .push_bind(&c.text)
                            .push_bind(c.occurred_at)
                            .push_bind(Json(&c.value))
                            .push_bind(row.trace_id.to_string())
                            .push_bind(now);
                    });
                    qb.push(" ON CONFLICT (tenant, change_key) DO NOTHING RETURNING tenant, change_key");
                    for row in qb.build().fetch_all(&mut *tx).await.map_err(classify)? {
                        report.changes_new += 1;
                        results.new_changes.insert((
                            row.try_get("tenant").map_err(classify)?,
                            row.try_get("change_key").map_err(classify)?,
                        ));
                    }
                }

                // Cache jobs name what changed; written with the data, so a
                // crash between commit and publish cannot lose them.
                let mut outbox = plan.outbox.clone();
                if !plan.raw.is_empty() {
                    outbox.extend(cache_jobs(&report));
                }
                // `after` events: appended to the log in this transaction; the
                // relay publishes them from the log by its cursor.
                let events = after_events(plan, &results, &self.filter);
                Self::log_events(&mut tx, &events).await?;
                for chunk in outbox.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new("INSERT INTO outbox (stream, fields, created_at) ");
                    qb.push_values(chunk, |mut b, o| {
                        b.push_bind(&o.stream)
                            .push_bind(fields_text(&o.fields))
                            .push_bind(now);
                    });
                    qb.build().execute(&mut *tx).await.map_err(classify)?;
                }

                tx.commit().await.map_err(classify)?;
                Ok(report)
            }

            async fn insert_status_history(
                &self,
                tx: &mut sqlx::Transaction<'_, $db>,
                rows: &[crate::plan::StatusRow],
                now: DateTime<Utc>,
            ) -> Result<Vec<(String, String)>, StoreError> {
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO message_statuses (tenant, channel, status_key, business_id, provider_message_id, \
                     contact_external_id, status, at, watermark, errors, conversation, pricing, trace_id, stored_at) ",
                );
                qb.push_values(rows, |mut b, row| {
                    let s = &row.status;
                    b.push_bind(&row.tenant)
                        .push_bind(s.channel.as_str())
                        .push_bind(&row.key)
                        .push_bind(&s.business_id)
                        .push_bind(&s.provider_message_id)
                        .push_bind(&s.contact.external_id)
                        .push_bind(s.status.as_str())
                        .push_bind(s.at)
                        .push_bind(s.watermark)
                        .push_bind(Json(errors_json(&s.errors)))
                        .push_bind(s.conversation.as_ref().map(Json))
                        .push_bind(s.pricing.as_ref().map(Json))
                        .push_bind(row.trace_id.to_string())
                        .push_bind(now);
                });
                qb.push(" ON CONFLICT (tenant, status_key) DO NOTHING RETURNING tenant, status_key");
                qb.build()
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(classify)?
                    .iter()
                    .map(|r| Ok((r.try_get("tenant")?, r.try_get("status_key")?)))
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(classify)
            }

            /// Appends events to `event_log` (ignoring ids already there).
            /// The relay publishes them from there (see `log_claim`).
            async fn log_events(
                tx: &mut sqlx::Transaction<'_, $db>,
                events: &[Event],
            ) -> Result<(), StoreError> {
                for chunk in events.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO event_log (event_id, event_type, entity, phase, operation, tenant, trace_id, \
                         correlation_id, actor, data, result, error, schema_version, occurred_at) ",
                    );
                    qb.push_values(chunk, |mut b, e| {
                        b.push_bind(e.id.to_string())
                            .push_bind(&e.event_type)
                            .push_bind(&e.entity)
                            .push_bind(&e.phase)
                            .push_bind(&e.operation)
                            .push_bind(&e.tenant_id)
                            .push_bind(&e.trace_id)
                            .push_bind(&e.correlation_id)
                            .push_bind(&e.actor)
                            .push_bind(Json(&e.data))
                            .push_bind(e.result.as_ref().map(Json))
                            .push_bind(&e.error)
                            .push_bind(e.schema_version)
                            .push_bind(e.timestamp);
                    });
                    qb.push(" ON CONFLICT (event_id) DO NOTHING");
                    qb.build().execute(&mut **tx).await.map_err(classify)?;
                }
                Ok(())
            }

            /// Logs events in a transaction of their own (failed writes,
            /// subscription changes); the relay publishes them from the log.
            pub async fn append_events(&self, events: &[Event]) -> Result<(), StoreError> {
                if events.is_empty() {
                    return Ok(());
                }
                let mut tx = self.pool.begin().await.map_err(classify)?;
                Self::log_events(&mut tx, events).await?;
                tx.commit().await.map_err(classify)
            }

            fn message_from_row(row: &<$db as sqlx::Database>::Row) -> Result<StoredMessage, sqlx::Error> {
                Ok(StoredMessage {
                    id: row.try_get("id")?,
                    tenant: row.try_get("tenant")?,
                    channel: row.try_get("channel")?,
                    conversation_id: row.try_get("conversation_id")?,
                    contact_external_id: row.try_get("contact_external_id")?,
                    contact_name: row.try_get("contact_name")?,
                    provider_message_id: row.try_get("provider_message_id")?,
                    direction: row.try_get("direction")?,
                    kind: row.try_get("kind")?,
                    message_type: row.try_get("message_type")?,
                    text: row.try_get("text")?,
                    media: row.try_get::<Json<serde_json::Value>, _>("media")?.0,
                    reply_to: row.try_get("reply_to")?,
                    forwarded: row.try_get("forwarded")?,
                    referral: row
                        .try_get::<Option<Json<serde_json::Value>>, _>("referral")?
                        .map(|j| j.0),
                    details: row.try_get::<Json<serde_json::Value>, _>("details")?.0,
                    sent_at: row.try_get("sent_at")?,
                    trace_id: row.try_get("trace_id")?,
                    status: row.try_get("status")?,
                })
            }

            fn dead_letter_from_row(row: &<$db as sqlx::Database>::Row) -> Result<StoredDeadLetter, sqlx::Error> {
                // dead_letters keeps the envelope under raw_events' column names.
                let attempts: i64 = row.try_get("attempts")?;
                Ok(StoredDeadLetter {
                    id: row.try_get("id")?,
                    letter: DeadLetter {
                        event: Self::raw_from_row(row)?,
                        reason: row.try_get("reason")?,
                        error: row.try_get("error")?,
                        attempts: u32::try_from(attempts).unwrap_or(0),
                        stage: row.try_get("stage")?,
                        failed_at: row.try_get("failed_at")?,
                    },
                })
            }

            fn raw_from_row(row: &<$db as sqlx::Database>::Row) -> Result<RawEvent, sqlx::Error> {
                let trace: String = row.try_get("trace_id")?;
                let source: String = row.try_get("source")?;
                let headers: Json<serde_json::Value> = row.try_get("headers")?;
                let body: Vec<u8> = row.try_get("body")?;
                Ok(RawEvent {
                    trace_id: Uuid::parse_str(&trace).unwrap_or_default(),
                    source: Source::parse(&source).unwrap_or(Source::Whatsapp),
                    tenant: row.try_get("tenant")?,
                    received_at: row.try_get("received_at")?,
                    headers: headers_from_json(&headers.0),
                    body: body.into(),
                })
            }
        }

        impl EventStore for SqlStore<$db> {
            fn backend(&self) -> &'static str {
                $backend
            }

            fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
                Box::pin(async move {
                    migrator($migrations)
                        .await?
                        .run(&self.pool)
                        .await
                        .map_err(|e| match e {
                            sqlx::migrate::MigrateError::Execute(inner) => match classify(inner) {
                                StoreError::Unavailable(m) => StoreError::Unavailable(m),
                                other => StoreError::Migrate(other.to_string()),
                            },
                            other => StoreError::Migrate(other.to_string()),
                        })
                })
            }

            fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
                Box::pin(async move {
                    sqlx::query("SELECT 1")
                        .execute(&self.pool)
                        .await
                        .map(|_| ())
                        .map_err(classify)
                })
            }

            fn write(&self, batch: &[Delivery]) -> BoxFuture<'_, Result<WriteReport, StoreError>> {
                let plan = WritePlan::build(batch);
                Box::pin(async move {
                    // The one place write events are emitted: before (in
                    // process), after (inside the transaction, see
                    // write_plan), failed (own transaction, else in process).
                    if let Some(sink) = self.sink.get() {
                        let before = before_events(&plan, &self.filter);
                        if !before.is_empty() {
                            sink.emit(before);
                        }
                    }
                    match self.write_plan(&plan).await {
                        Ok(report) => Ok(report),
                        Err(e) => {
                            let failed = failed_events(&plan, &self.filter, &e.to_string());
                            // An unreachable database cannot log them either:
                            // hand them to the in-process bus at once.
                            let logged = if e.is_transient() {
                                Err(StoreError::Unavailable("database unreachable".into()))
                            } else {
                                self.append_events(&failed).await
                            };
                            if let Err(log_err) = logged {
                                tracing::warn!(error = %log_err, "could not log failed events; delivering in process");
                                if let Some(sink) = self.sink.get() {
                                    sink.emit(failed);
                                }
                            }
                            Err(e)
                        }
                    }
                })
            }

            fn event_log(&self) -> &dyn super::events::EventLogStore {
                self
            }

            fn attach_events(&self, sink: Arc<dyn EventSink>) {
                let _ = self.sink.set(sink);
            }

            fn log_event<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), StoreError>> {
                Box::pin(async move {
                    if !self.filter.allows(&event.entity) {
                        return Ok(());
                    }
                    self.append_events(std::slice::from_ref(event)).await
                })
            }

            fn put_dead_letter(&self, letter: &DeadLetter) -> BoxFuture<'_, Result<i64, StoreError>> {
                let l = letter.clone();
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO dead_letters (trace_id, tenant, source, received_at, headers, body, reason, \
                         error, attempts, stage, failed_at) ",
                    );
                    qb.push_values([&l], |mut b, l| {
                        b.push_bind(l.event.trace_id.to_string())
                            .push_bind(&l.event.tenant)
                            .push_bind(l.event.source.as_str())
                            .push_bind(l.event.received_at)
                            .push_bind(Json(headers_json(&l.event)))
                            .push_bind(l.event.body.as_ref())
                            .push_bind(&l.reason)
                            .push_bind(&l.error)
                            .push_bind(i64::from(l.attempts))
                            .push_bind(&l.stage)
                            .push_bind(l.failed_at);
                    });
                    qb.push(" RETURNING id");
                    let row = qb.build().fetch_one(&self.pool).await.map_err(classify)?;
                    row.try_get("id").map_err(classify)
                })
            }

            fn dead_letters(&self, limit: i64) -> BoxFuture<'_, Result<Vec<StoredDeadLetter>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("SELECT * FROM dead_letters ORDER BY id LIMIT ");
                    qb.push_bind(limit);
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    rows.iter()
                        .map(Self::dead_letter_from_row)
                        .collect::<Result<_, _>>()
                        .map_err(classify)
                })
            }

            fn delete_dead_letters(&self, ids: &[i64]) -> BoxFuture<'_, Result<u64, StoreError>> {
                let ids = ids.to_vec();
                Box::pin(async move {
                    if ids.is_empty() {
                        return Ok(0);
                    }
                    let mut qb = QueryBuilder::<$db>::new("DELETE FROM dead_letters WHERE id IN (");
                    let mut sep = qb.separated(", ");
                    for id in &ids {
                        sep.push_bind(*id);
                    }
                    qb.push(")");
                    Ok(qb.build().execute(&self.pool).await.map_err(classify)?.rows_affected())
                })
            }

            fn outbox_pending<'a>(
                &'a self,
                stream: Option<&'a str>,
                limit: i64,
            ) -> BoxFuture<'a, Result<Vec<OutboxEntry>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("SELECT id, stream, fields FROM outbox");
                    if let Some(stream) = stream {
                        qb.push(" WHERE stream = ").push_bind(stream);
                    }
                    qb.push(" ORDER BY id LIMIT ").push_bind(limit);
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    rows.iter()
                        .map(|r| {
                            let fields: String = r.try_get("fields")?;
                            Ok(OutboxEntry {
                                id: r.try_get("id")?,
                                stream: r.try_get("stream")?,
                                fields: fields_from_text(&fields),
                            })
                        })
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(classify)
                })
            }

            fn outbox_claim<'a>(
                &'a self,
                stream: Option<&'a str>,
                limit: i64,
            ) -> BoxFuture<'a, Result<Box<dyn super::OutboxClaim>, StoreError>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await.map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new("SELECT id, stream, fields FROM outbox");
                    if let Some(stream) = stream {
                        qb.push(" WHERE stream = ").push_bind(stream);
                    }
                    qb.push(" ORDER BY id LIMIT ").push_bind(limit).push($skip_locked);
                    let rows = qb.build().fetch_all(&mut *tx).await.map_err(classify)?;
                    let entries = rows
                        .iter()
                        .map(|r| {
                            let fields: String = r.try_get("fields")?;
                            Ok(OutboxEntry {
                                id: r.try_get("id")?,
                                stream: r.try_get("stream")?,
                                fields: fields_from_text(&fields),
                            })
                        })
                        .collect::<Result<Vec<_>, sqlx::Error>>()
                        .map_err(classify)?;
                    Ok(Box::new(SqlClaim::<$db> {
                        pool: self.pool.clone(),
                        tx: Self::hold(tx).await?,
                        entries,
                        done: Completion::DeleteOutbox,
                    }) as Box<dyn super::OutboxClaim>)
                })
            }

            fn log_claim(
                &self,
                limit: i64,
            ) -> BoxFuture<'_, Result<Box<dyn super::OutboxClaim>, StoreError>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await.map_err(classify)?;
                    // Locked by another relay (Postgres): nothing to do now.
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT CAST(tx AS text) AS tx, seq FROM relay_cursors WHERE name = ",
                    );
                    qb.push_bind(EVENTS_CURSOR).push($skip_locked);
                    let cursor = qb.build().fetch_optional(&mut *tx).await.map_err(classify)?;
                    let Some(cursor) = cursor else {
                        return Ok(Box::new(SqlClaim::<$db> {
                            pool: self.pool.clone(),
                            tx: Self::hold(tx).await?,
                            entries: Vec::new(),
                            done: Completion::Nothing,
                        }) as Box<dyn super::OutboxClaim>);
                    };
                    let after_tx: String = cursor.try_get("tx").map_err(classify)?;
                    let after_seq: i64 = cursor.try_get("seq").map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new("SELECT CAST(tx AS text) AS tx_text, ");
                    qb.push(EVENT_COLUMNS)
                        .push(" FROM event_log WHERE (tx, seq) > (CAST(")
                        .push_bind(after_tx)
                        .push(concat!(" AS ", $tx_type, "), "))
                        .push_bind(after_seq)
                        .push(")")
                        .push($horizon)
                        .push(" ORDER BY tx, seq LIMIT ")
                        .push_bind(limit);
                    let rows = qb.build().fetch_all(&mut *tx).await.map_err(classify)?;
                    let mut entries = Vec::with_capacity(rows.len());
                    let mut last = None;
                    for row in &rows {
                        let (seq, event) = super::events::event_from_row(row).map_err(classify)?;
                        let tx_text: String = row.try_get("tx_text").map_err(classify)?;
                        let out = crate::events::outbox_row(&event);
                        entries.push(OutboxEntry {
                            id: seq,
                            stream: out.stream,
                            fields: out.fields.into_iter().collect(),
                        });
                        last = Some((tx_text, seq));
                    }
                    let done = match last {
                        Some((last_tx, seq)) => Completion::AdvanceCursor {
                            name: EVENTS_CURSOR,
                            tx: last_tx,
                            seq,
                        },
                        None => Completion::Nothing,
                    };
                    Ok(Box::new(SqlClaim::<$db> {
                        pool: self.pool.clone(),
                        tx: Self::hold(tx).await?,
                        entries,
                        done,
                    }) as Box<dyn super::OutboxClaim>)
                })
            }

            fn outbox_delete(&self, ids: &[i64]) -> BoxFuture<'_, Result<(), StoreError>> {
                let ids = ids.to_vec();
                Box::pin(async move {
                    if ids.is_empty() {
                        return Ok(());
                    }
                    let mut qb = QueryBuilder::<$db>::new("DELETE FROM outbox WHERE id IN (");
                    let mut sep = qb.separated(", ");
                    for id in &ids {
                        sep.push_bind(*id);
                    }
                    qb.push(")");
                    qb.build().execute(&self.pool).await.map_err(classify)?;
                    Ok(())
                })
            }

            fn raw_events(
                &self,
                filter: &RawFilter,
                after: Option<Uuid>,
                limit: i64,
            ) -> BoxFuture<'_, Result<Vec<RawEvent>, StoreError>> {
                let filter = filter.clone();
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT trace_id, tenant, source, received_at, headers, body FROM raw_events WHERE 1 = 1",
                    );
                    if let Some(from) = filter.from {
                        qb.push(" AND received_at >= ").push_bind(from);
                    }
                    if let Some(to) = filter.to {
                        qb.push(" AND received_at < ").push_bind(to);
                    }
                    if let Some(source) = filter.source {
                        qb.push(" AND source = ").push_bind(source.as_str());
                    }
                    if let Some(trace) = filter.trace_id {
                        qb.push(" AND trace_id = ").push_bind(trace.to_string());
                    }
                    // UUIDv7 trace ids sort by time, so they page in order.
                    if let Some(after) = after {
                        qb.push(" AND trace_id > ").push_bind(after.to_string());
                    }
                    qb.push(" ORDER BY trace_id LIMIT ").push_bind(limit);
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    rows.iter()
                        .map(Self::raw_from_row)
                        .collect::<Result<_, _>>()
                        .map_err(classify)
                })
            }

            fn messages(
                &self,
                conversation_id: Option<i64>,
                limit: i64,
            ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("SELECT ");
                    qb.push(MESSAGE_COLUMNS).push(MESSAGE_FROM);
                    if let Some(id) = conversation_id {
                        qb.push(" WHERE m.conversation_id = ").push_bind(id);
                    }
                    qb.push(" ORDER BY m.sent_at DESC, m.id DESC LIMIT ").push_bind(limit);
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    rows.iter()
                        .map(Self::message_from_row)
                        .collect::<Result<_, _>>()
                        .map_err(classify)
                })
            }

            fn message_by_provider_id<'a>(
                &'a self,
                provider_message_id: &'a str,
            ) -> BoxFuture<'a, Result<Option<StoredMessage>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("SELECT ");
                    qb.push(MESSAGE_COLUMNS)
                        .push(MESSAGE_FROM)
                        .push(" WHERE m.provider_message_id = ")
                        .push_bind(provider_message_id)
                        .push(" ORDER BY m.id LIMIT 1");
                    let row = qb.build().fetch_optional(&self.pool).await.map_err(classify)?;
                    row.as_ref()
                        .map(Self::message_from_row)
                        .transpose()
                        .map_err(classify)
                })
            }

            fn current_status<'a>(
                &'a self,
                tenant: &'a str,
                provider_message_id: &'a str,
            ) -> BoxFuture<'a, Result<Option<CurrentStatus>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT status, at, errors FROM message_status_current WHERE tenant = ",
                    );
                    qb.push_bind(tenant)
                        .push(" AND provider_message_id = ")
                        .push_bind(provider_message_id);
                    let row = qb.build().fetch_optional(&self.pool).await.map_err(classify)?;
                    row.map(|r| {
                        Ok(CurrentStatus {
                            status: r.try_get("status")?,
                            at: r.try_get("at")?,
                            errors: r.try_get::<Json<serde_json::Value>, _>("errors")?.0,
                        })
                    })
                    .transpose()
                    .map_err(|e: sqlx::Error| classify(e))
                })
            }

            fn traces_of_provider_id<'a>(
                &'a self,
                provider_message_id: &'a str,
            ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT trace_id FROM messages WHERE provider_message_id = ",
                    );
                    qb.push_bind(provider_message_id)
                        .push(" UNION SELECT trace_id FROM message_statuses WHERE provider_message_id = ")
                        .push_bind(provider_message_id);
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    rows.iter()
                        .map(|r| r.try_get::<String, _>("trace_id"))
                        .collect::<Result<_, _>>()
                        .map_err(classify)
                })
            }

            fn counts(&self) -> BoxFuture<'_, Result<Counts, StoreError>> {
                Box::pin(async move {
                    let row = sqlx::query(
                        "SELECT (SELECT count(*) FROM raw_events) AS raw_events, \
                         (SELECT count(*) FROM contacts) AS contacts, \
                         (SELECT count(*) FROM conversations) AS conversations, \
                         (SELECT count(*) FROM messages) AS messages, \
                         (SELECT count(*) FROM message_statuses) AS statuses, \
                         (SELECT count(*) FROM page_changes) AS page_changes, \
                         (SELECT count(*) FROM dead_letters) AS dead_letters, \
                         (SELECT count(*) FROM outbox) + (SELECT count(*) FROM event_log e \
                           JOIN relay_cursors r ON r.name = 'events' \
                           WHERE (e.tx, e.seq) > (r.tx, r.seq)) AS outbox",
                    )
                    .fetch_one(&self.pool)
                    .await
                    .map_err(classify)?;
                    let get = |name: &str| row.try_get::<i64, _>(name).map_err(classify);
                    Ok(Counts {
                        raw_events: get("raw_events")?,
                        contacts: get("contacts")?,
                        conversations: get("conversations")?,
                        messages: get("messages")?,
                        statuses: get("statuses")?,
                        page_changes: get("page_changes")?,
                        dead_letters: get("dead_letters")?,
                        outbox: get("outbox")?,
                    })
                })
            }

            fn activity(&self) -> BoxFuture<'_, Result<Activity, StoreError>> {
                Box::pin(async move {
                    // Index-backed newest row, not max() over a cast: both
                    // databases answer from raw_events_received_at.
                    let row = sqlx::query(
                        "SELECT (SELECT received_at FROM raw_events ORDER BY received_at DESC LIMIT 1) \
                         AS last_received_at, \
                         (SELECT count(*) FROM dead_letters) AS dead_letters, \
                         (SELECT count(*) FROM outbox) + (SELECT count(*) FROM event_log e \
                           JOIN relay_cursors r ON r.name = 'events' \
                           WHERE (e.tx, e.seq) > (r.tx, r.seq)) AS outbox",
                    )
                    .fetch_one(&self.pool)
                    .await
                    .map_err(classify)?;
                    Ok(Activity {
                        last_received_at: row.try_get("last_received_at").map_err(classify)?,
                        dead_letters: row.try_get("dead_letters").map_err(classify)?,
                        outbox: row.try_get("outbox").map_err(classify)?,
                    })
                })
            }

            fn prune(
                &self,
                raw_before: Option<DateTime<Utc>>,
                processed_before: Option<DateTime<Utc>>,
            ) -> BoxFuture<'_, Result<(u64, u64), StoreError>> {
                Box::pin(async move {
                    let mut raw = 0;
                    if let Some(before) = raw_before {
                        let mut qb = QueryBuilder::<$db>::new("DELETE FROM raw_events WHERE received_at < ");
                        qb.push_bind(before);
                        raw = qb.build().execute(&self.pool).await.map_err(classify)?.rows_affected();
                    }
                    let mut processed = 0;
                    if let Some(before) = processed_before {
                        let mut qb = QueryBuilder::<$db>::new("DELETE FROM processed_events WHERE processed_at < ");
                        qb.push_bind(before);
                        processed = qb.build().execute(&self.pool).await.map_err(classify)?.rows_affected();
                    }
                    Ok((raw, processed))
                })
            }

            fn mark_processed<'a>(
                &'a self,
                event_id: &'a str,
                handler: &'a str,
            ) -> BoxFuture<'a, Result<bool, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO processed_events (event_id, handler, processed_at) VALUES (",
                    );
                    qb.push_bind(event_id)
                        .push(", ")
                        .push_bind(handler)
                        .push(", ")
                        .push_bind(Utc::now())
                        .push(") ON CONFLICT (event_id, handler) DO NOTHING");
                    let n = qb.build().execute(&self.pool).await.map_err(classify)?.rows_affected();
                    Ok(n > 0)
                })
            }

            fn read_model(&self) -> &dyn super::read::ReadModel {
                self
            }
        }
    };
}

// Postgres relays in several workers claim disjoint rows; SQLite has a
// single writer, which serializes its (one-process) relay anyway.
//
// A claim reads, then deletes or moves a cursor when it completes. Postgres
// keeps the claim's transaction open (its row locks keep other relays off).
// SQLite ends the read at once and completes in a write transaction of its
// own (BEGIN IMMEDIATE): upgrading the read transaction fails at once
// (SQLITE_BUSY_SNAPSHOT) when a write committed meanwhile, which re-delivered
// the claimed entries, and holding the write lock during delivery stalled the
// group commits. SQLite has one relay (the embedded gateway's), so nothing
// else moves the cursor or deletes the rows in between.
//
// The event log is read past the relay cursor in (tx, seq) order. Postgres
// rows carry the writing transaction's id and only transactions older than
// the oldest one still running are read (no row can commit behind the
// cursor later); SQLite commits one writer at a time, in seq order.
impl_sql_store!(
    Postgres,
    "postgres",
    PG_MIGRATIONS,
    "GREATEST",
    "LEAST",
    " FOR UPDATE SKIP LOCKED",
    "xid8",
    " AND tx < pg_snapshot_xmin(pg_current_snapshot())",
    true,
    "BEGIN"
);
impl_sql_store!(
    Sqlite,
    "sqlite",
    SQLITE_MIGRATIONS,
    "MAX",
    "MIN",
    "",
    "INTEGER",
    "",
    false,
    "BEGIN IMMEDIATE"
);
