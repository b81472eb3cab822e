//! The SQL implementation of [`EventStore`] for Postgres and SQLite.
//!
//! One body of SQL serves both databases; what differs between them is one
//! value per backend, its [`Dialect`]. By responsibility:
//!
//! - this file: the pool (connecting, error classification), migrations, and
//!   the [`EventStore`] table of methods;
//! - [`dialect`]: the [`Dialect`] type, each backend's value, the embedded
//!   migrations (`migrations/postgres`, `migrations/sqlite`);
//! - `write`: the batch write (one transaction from a write plan, write
//!   events), dead letters, idempotency records, pruning;
//! - `outbox`: the relay's claims of outbox entries and event-log rows;
//! - `query`: reads of raw events, messages, statuses and counts;
//! - `sends`: the outbound tables (sends, history, broadcasts, halts);
//! - `media`: download state per attachment, the upload cache;
//! - `leads`: Lead Ads (pending rows queued with their page change,
//!   outcomes, `lead.after.create`);
//! - `drafts`: AI drafts, and the hooks that make them stale (write path)
//!   and follow their sends (sender bookkeeping);
//! - `partitions`: the retention and partition job (Postgres: partitions
//!   created ahead, expired ones dropped; SQLite: rows deleted).
//!
//! sqlx's bounds for "a database that encodes and decodes all of these
//! types" would have to be repeated on every generic function, so each file
//! writes its methods once in a macro and [`for_each_backend!`] instantiates
//! it for the two concrete databases. The macros take only the database
//! type; every difference is read from `<$db as Backend>::DIALECT`.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Postgres, Sqlite};
use uuid::Uuid;

use super::{
    Activity, Counts, CurrentStatus, EventStore, OutboxClaim, OutboxEntry, RawFilter, StoreError,
    StoredDeadLetter, StoredMessage, WriteReport,
};
use crate::dlq::letter::DeadLetter;
use crate::envelope::RawEvent;
use crate::events::{Event, EventFilter, EventSink};
use crate::plan::{Delivery, WritePlan};

pub mod dialect;
mod drafts;
mod leads;
mod media;
mod outbox;
mod partitions;
mod query;
mod sends;
mod sync;
mod write;

pub use dialect::{Backend, Dialect};
pub(crate) use outbox::{fields_text, EVENT_COLUMNS};

/// Instantiates a macro of SQL methods (`impl_…!($db)`) for both databases.
macro_rules! for_each_backend {
    ($impl:ident) => {
        $impl!(sqlx::Postgres);
        $impl!(sqlx::Sqlite);
    };
}
pub(crate) use for_each_backend;

/// Rows per multi-row statement (keeps bind counts far below both databases'
/// limits).
pub(crate) const CHUNK: usize = 400;

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
            // A foreign-key violation (23503) is transient too: the write
            // path only references rows it has just upserted, so it means a
            // concurrent merge of two contacts of one person removed one;
            // the retry resolves the person again and finds the survivor.
            let transient = matches!(
                code.as_ref(),
                "40001" | "40P01" | "53300" | "55P03" | "23503"
            ) || code.starts_with("08")
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
struct Embedded(dialect::Migrations);

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

/// Applies the dialect's pending migrations.
async fn migrate<DB: Backend>(pool: &sqlx::Pool<DB>) -> Result<(), StoreError>
where
    DB::Connection: sqlx::migrate::Migrate,
{
    Migrator::new(Embedded(DB::DIALECT.migrations))
        .await
        .map_err(|e| StoreError::Migrate(e.to_string()))?
        .run(pool)
        .await
        .map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(inner) => match classify(inner) {
                StoreError::Unavailable(m) => StoreError::Unavailable(m),
                other => StoreError::Migrate(other.to_string()),
            },
            other => StoreError::Migrate(other.to_string()),
        })
}

/// The [`EventStore`] methods, each answered by the file that owns it.
macro_rules! impl_event_store {
    ($db:ty) => {
        impl EventStore for SqlStore<$db> {
            fn backend(&self) -> &'static str {
                <$db as Backend>::DIALECT.name
            }

            fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
                Box::pin(migrate(&self.pool))
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
                Box::pin(async move { self.write_batch(&plan).await })
            }

            fn write_local(
                &self,
                plan: WritePlan,
            ) -> BoxFuture<'_, Result<WriteReport, StoreError>> {
                Box::pin(async move { self.write_batch(&plan).await })
            }

            fn event_log(&self) -> &dyn super::events::EventLogStore {
                self
            }

            fn attach_events(&self, sink: Arc<dyn EventSink>) {
                let _ = self.sink.set(sink);
            }

            fn log_event<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), StoreError>> {
                Box::pin(self.log_one(event))
            }

            fn put_dead_letter(
                &self,
                letter: &DeadLetter,
            ) -> BoxFuture<'_, Result<i64, StoreError>> {
                let letter = letter.clone();
                Box::pin(async move { self.insert_dead_letter(&letter).await })
            }

            fn dead_letters(
                &self,
                limit: i64,
            ) -> BoxFuture<'_, Result<Vec<StoredDeadLetter>, StoreError>> {
                Box::pin(self.select_dead_letters(limit))
            }

            fn delete_dead_letters(&self, ids: &[i64]) -> BoxFuture<'_, Result<u64, StoreError>> {
                let ids = ids.to_vec();
                Box::pin(async move { self.remove_dead_letters(&ids).await })
            }

            fn outbox_pending<'a>(
                &'a self,
                stream: Option<&'a str>,
                limit: i64,
            ) -> BoxFuture<'a, Result<Vec<OutboxEntry>, StoreError>> {
                Box::pin(self.pending_outbox(stream, limit))
            }

            fn outbox_claim<'a>(
                &'a self,
                stream: Option<&'a str>,
                limit: i64,
            ) -> BoxFuture<'a, Result<Box<dyn OutboxClaim>, StoreError>> {
                Box::pin(self.claim_outbox(stream, limit))
            }

            fn log_claim(
                &self,
                limit: i64,
            ) -> BoxFuture<'_, Result<Box<dyn OutboxClaim>, StoreError>> {
                Box::pin(self.claim_log(limit))
            }

            fn outbox_delete(&self, ids: &[i64]) -> BoxFuture<'_, Result<(), StoreError>> {
                let ids = ids.to_vec();
                Box::pin(async move { self.delete_outbox(&ids).await })
            }

            fn raw_events(
                &self,
                filter: &RawFilter,
                after: Option<Uuid>,
                limit: i64,
            ) -> BoxFuture<'_, Result<Vec<RawEvent>, StoreError>> {
                let filter = filter.clone();
                Box::pin(async move { self.select_raw_events(&filter, after, limit).await })
            }

            fn messages(
                &self,
                conversation_id: Option<i64>,
                limit: i64,
            ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>> {
                Box::pin(self.select_messages(conversation_id, limit))
            }

            fn message_by_provider_id<'a>(
                &'a self,
                provider_message_id: &'a str,
            ) -> BoxFuture<'a, Result<Option<StoredMessage>, StoreError>> {
                Box::pin(self.select_message_by_provider_id(provider_message_id))
            }

            fn current_status<'a>(
                &'a self,
                tenant: &'a str,
                provider_message_id: &'a str,
            ) -> BoxFuture<'a, Result<Option<CurrentStatus>, StoreError>> {
                Box::pin(self.select_current_status(tenant, provider_message_id))
            }

            fn traces_of_provider_id<'a>(
                &'a self,
                provider_message_id: &'a str,
            ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
                Box::pin(self.select_traces_of_provider_id(provider_message_id))
            }

            fn counts(&self) -> BoxFuture<'_, Result<Counts, StoreError>> {
                Box::pin(self.select_counts())
            }

            fn activity(&self) -> BoxFuture<'_, Result<Activity, StoreError>> {
                Box::pin(self.select_activity())
            }

            fn maintain<'a>(
                &'a self,
                job: &'a super::partitions::Maintenance,
            ) -> BoxFuture<'a, Result<super::partitions::MaintenanceReport, StoreError>> {
                Box::pin(self.maintain_store(job))
            }

            fn partitions(
                &self,
            ) -> BoxFuture<'_, Result<Vec<super::partitions::PartitionInfo>, StoreError>> {
                Box::pin(self.list_partitions())
            }

            fn mark_processed<'a>(
                &'a self,
                event_id: &'a str,
                handler: &'a str,
            ) -> BoxFuture<'a, Result<bool, StoreError>> {
                Box::pin(self.insert_processed(event_id, handler))
            }

            fn read_model(&self) -> &dyn super::read::ReadModel {
                self
            }

            fn outbound(&self) -> &dyn super::outbound::OutboundStore {
                self
            }

            fn media(&self) -> &dyn super::media::MediaStore {
                self
            }

            fn drafts(&self) -> &dyn super::drafts::DraftStore {
                self
            }

            fn leads(&self) -> &dyn super::leads::LeadStore {
                self
            }

            fn sync(&self) -> &dyn super::sync::SyncStore {
                self
            }
        }
    };
}

for_each_backend!(impl_event_store);

/// The write plan of fixture files (`tests/fixtures/meta/{name}`), each one
/// delivery from `source`: what the store tests write.
#[cfg(test)]
pub(super) fn fixture_plan(source: crate::envelope::Source, names: &[&str]) -> WritePlan {
    let deliveries: Vec<Delivery> = names
        .iter()
        .map(|name| {
            let path = format!(
                "{}/../../tests/fixtures/meta/{name}",
                env!("CARGO_MANIFEST_DIR")
            );
            let body = std::fs::read(path).unwrap();
            Delivery {
                items: crate::normalize::normalize(&body).unwrap(),
                event: RawEvent::new(source, "t", bytes::Bytes::from(body)),
            }
        })
        .collect();
    WritePlan::build(&deliveries)
}
