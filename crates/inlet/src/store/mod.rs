//! Durable storage of deliveries and their normalized data.
//!
//! [`EventStore`] is the storage trait; [`sql::SqlStore`] implements it for
//! Postgres (production) and SQLite (the embedded default) from one body of
//! SQL, chosen by the database URL in [`open`]. A batch is written in one
//! transaction from a pure [`crate::plan::WritePlan`]: raw events, contacts and
//! conversations (atomic upserts on unique keys, so concurrent deliveries
//! converge), messages and receipts (insert-or-ignore on provider ids: the
//! same message is stored once), the forward-only current status, page
//! changes and outbox entries. On Postgres the growing tables are
//! partitioned by time; [`partitions`] decides what the retention and
//! partition job ([`EventStore::maintain`]) creates and drops.

pub mod drafts;
pub mod events;
pub mod leads;
pub mod media;
pub mod outbound;
pub mod partitions;
pub mod read;
pub mod sql;
pub mod sync;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::Serialize;
use uuid::Uuid;

use crate::dlq::letter::DeadLetter;
use crate::envelope::{RawEvent, Source};
use crate::plan::Delivery;

/// A store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable or asked for a retry (connection refused,
    /// pool timeout, serialization failure, deadlock, SQLite busy). Retrying
    /// later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The database refused the data itself; retrying will not help.
    #[error("store rejected the write: {0}")]
    Rejected(String),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(String),
    /// The URL or options are invalid.
    #[error("store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// What a batch write did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WriteReport {
    /// Raw events newly kept.
    pub raw_new: u64,
    /// Messages newly stored (the rest were already there).
    pub messages_new: u64,
    /// Receipts newly stored.
    pub statuses_new: u64,
    /// Page changes newly stored.
    pub changes_new: u64,
    /// Conversations touched (for cache invalidation).
    pub conversation_ids: Vec<i64>,
    /// Contacts touched.
    pub contact_ids: Vec<i64>,
}

/// A kept dead letter with its store id.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeadLetter {
    /// Row id.
    pub id: i64,
    /// The letter.
    pub letter: DeadLetter,
}

/// A pending outbox entry.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Row id.
    pub id: i64,
    /// Stream name (without prefix).
    pub stream: String,
    /// Fields.
    pub fields: Vec<(String, String)>,
}

/// Outbox entries claimed by one relay (see [`EventStore::outbox_claim`]).
pub trait OutboxClaim: Send {
    /// The claimed entries, oldest first.
    fn entries(&self) -> &[OutboxEntry];
    /// Deletes the entries and releases the claim.
    fn complete(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>>;
    /// Gives the claim up, leaving the entries pending, and waits until
    /// other relays can claim them (dropping a claim does the same, but its
    /// locks may linger until the connection is used again).
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>>;
}

/// A stored message, as read back (tests, CLI, read API).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredMessage {
    /// Row id.
    pub id: i64,
    /// Tenant.
    pub tenant: String,
    /// Channel.
    pub channel: String,
    /// Conversation row id.
    pub conversation_id: i64,
    /// Contact's channel id.
    pub contact_external_id: String,
    /// Contact's name.
    pub contact_name: Option<String>,
    /// Provider id.
    pub provider_message_id: String,
    /// inbound / outbound.
    pub direction: String,
    /// Coarse kind.
    pub kind: String,
    /// Fine type.
    pub message_type: String,
    /// Text.
    pub text: Option<String>,
    /// Media refs.
    pub media: serde_json::Value,
    /// Replied-to id.
    pub reply_to: Option<String>,
    /// Forwarded flag.
    pub forwarded: bool,
    /// Referral.
    pub referral: Option<serde_json::Value>,
    /// Details.
    pub details: serde_json::Value,
    /// Sent at.
    pub sent_at: DateTime<Utc>,
    /// Trace id of the delivery that stored it.
    pub trace_id: String,
    /// Current delivery status, when receipts exist.
    pub status: Option<String>,
}

/// The current status of a provider message id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurrentStatus {
    /// Status name.
    pub status: String,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Errors (failed).
    pub errors: serde_json::Value,
}

/// Row counts of the main tables.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    /// raw_events.
    pub raw_events: i64,
    /// contacts.
    pub contacts: i64,
    /// conversations.
    pub conversations: i64,
    /// messages.
    pub messages: i64,
    /// message_statuses.
    pub statuses: i64,
    /// page_changes.
    pub page_changes: i64,
    /// dead_letters.
    pub dead_letters: i64,
    /// outbox.
    pub outbox: i64,
}

/// Recent activity of the store, cheap enough to sample every few seconds
/// (`inlet status`, the metrics sampler).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Activity {
    /// Newest `raw_events.received_at`: when the last event was kept.
    pub last_received_at: Option<DateTime<Utc>>,
    /// Rows in `dead_letters`.
    pub dead_letters: i64,
    /// Entries not yet relayed to Redis: outbox rows plus event-log rows
    /// past the relay cursor.
    pub outbox: i64,
    /// Events handed to in-process handlers and not handled yet
    /// (`bus_pending`, direct mode).
    pub bus_pending: i64,
}

/// Filter of a raw-event replay.
#[derive(Debug, Clone, Default)]
pub struct RawFilter {
    /// Received at or after.
    pub from: Option<DateTime<Utc>>,
    /// Received before.
    pub to: Option<DateTime<Utc>>,
    /// Only this source.
    pub source: Option<Source>,
    /// Only this trace.
    pub trace_id: Option<Uuid>,
}

/// The storage trait. Every method is one round trip or one transaction.
pub trait EventStore: Send + Sync + 'static {
    /// `postgres` or `sqlite`.
    fn backend(&self) -> &'static str;
    /// Applies pending migrations.
    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Cheap liveness query.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Writes a batch of deliveries in one transaction.
    fn write(&self, batch: &[Delivery]) -> BoxFuture<'_, Result<WriteReport, StoreError>>;
    /// Writes a plan of items Inlet produced itself (no raw event: e.g.
    /// messages a backfill read from the Graph API), in one transaction,
    /// with its events and cache jobs.
    fn write_local(
        &self,
        plan: crate::plan::WritePlan,
    ) -> BoxFuture<'_, Result<WriteReport, StoreError>>;
    /// Keeps a dead letter.
    fn put_dead_letter(&self, letter: &DeadLetter) -> BoxFuture<'_, Result<i64, StoreError>>;
    /// Oldest dead letters first.
    fn dead_letters(&self, limit: i64) -> BoxFuture<'_, Result<Vec<StoredDeadLetter>, StoreError>>;
    /// Removes dead letters by id; returns how many existed.
    fn delete_dead_letters(&self, ids: &[i64]) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Oldest pending outbox entries (of one stream, when given).
    fn outbox_pending<'a>(
        &'a self,
        stream: Option<&'a str>,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<OutboxEntry>, StoreError>>;
    /// Claims pending outbox entries (of one stream, when given) for
    /// publishing: other relays skip them until the claim completes (they
    /// are deleted) or is dropped (they stay pending).
    fn outbox_claim<'a>(
        &'a self,
        stream: Option<&'a str>,
        limit: i64,
    ) -> BoxFuture<'a, Result<Box<dyn OutboxClaim>, StoreError>>;
    /// Claims the next events of the event log past the relay cursor, as
    /// entries of the `events` stream: completing the claim moves the cursor
    /// past them (other relays find the cursor locked meanwhile and claim
    /// nothing). Only rows no earlier transaction can still join are read.
    fn log_claim(&self, limit: i64) -> BoxFuture<'_, Result<Box<dyn OutboxClaim>, StoreError>>;
    /// Deletes published outbox entries.
    fn outbox_delete(&self, ids: &[i64]) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Kept raw events matching the filter, oldest first, after `after`
    /// (exclusive, by trace id) for paging.
    fn raw_events(
        &self,
        filter: &RawFilter,
        after: Option<Uuid>,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<RawEvent>, StoreError>>;
    /// Messages, newest first (optionally of one conversation).
    fn messages(
        &self,
        conversation_id: Option<i64>,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>>;
    /// One message by provider id (any tenant/channel).
    fn message_by_provider_id<'a>(
        &'a self,
        provider_message_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredMessage>, StoreError>>;
    /// Current status of a provider message id.
    fn current_status<'a>(
        &'a self,
        tenant: &'a str,
        provider_message_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<CurrentStatus>, StoreError>>;
    /// Trace ids that stored a provider message id or receipt.
    fn traces_of_provider_id<'a>(
        &'a self,
        provider_message_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
    /// Row counts.
    fn counts(&self) -> BoxFuture<'_, Result<Counts, StoreError>>;
    /// The event-bus side of the store (subscriptions, stats, failures).
    fn event_log(&self) -> &dyn events::EventLogStore;
    /// Attaches the in-process sink of `before` events (and of `failed`
    /// events the database could not log). Once; later calls are ignored.
    fn attach_events(&self, sink: Arc<dyn crate::events::EventSink>);
    /// Appends one event (e.g. a subscription change) to the log and queues
    /// it for delivery, honouring the event filter.
    fn log_event<'a>(
        &'a self,
        event: &'a crate::events::Event,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Last event time and the small tables' sizes (no full-table counts).
    fn activity(&self) -> BoxFuture<'_, Result<Activity, StoreError>>;
    /// The retention and partition job (daily, and at start): on Postgres
    /// creates the partitions ahead and drops expired ones whole (raw
    /// events, event log), on SQLite deletes expired raw events row by
    /// row; both delete old handler idempotency records. Safe to run from
    /// several processes at once. See [`partitions`].
    fn maintain<'a>(
        &'a self,
        job: &'a partitions::Maintenance,
    ) -> BoxFuture<'a, Result<partitions::MaintenanceReport, StoreError>>;
    /// The partitions of the partitioned tables (none on SQLite).
    fn partitions(&self) -> BoxFuture<'_, Result<Vec<partitions::PartitionInfo>, StoreError>>;
    /// Records that `handler` processed `event_id`; false if it already had.
    fn mark_processed<'a>(
        &'a self,
        event_id: &'a str,
        handler: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// The queries of the read side (cache files, read API).
    fn read_model(&self) -> &dyn read::ReadModel;
    /// The outbound side: sends, broadcasts, halts.
    fn outbound(&self) -> &dyn outbound::OutboundStore;
    /// The media side: download state per attachment, upload cache.
    fn media(&self) -> &dyn media::MediaStore;
    /// AI drafts waiting for approval.
    fn drafts(&self) -> &dyn drafts::DraftStore;
    /// Lead Ads: one row per lead.
    fn leads(&self) -> &dyn leads::LeadStore;
    /// Scheduled Graph sync: leases, cursors, runs, ad insights.
    fn sync(&self) -> &dyn sync::SyncStore;
}

/// Shared store handle.
pub type Store = Arc<dyn EventStore>;

/// Opens the store named by `url` (`postgres://…` or `sqlite://…`). Postgres
/// connects lazily, so a database that is down at startup is reported by
/// `ping` and retried, not fatal.
pub async fn open(url: &str, max_connections: u32) -> Result<Store, StoreError> {
    open_with(url, max_connections, crate::events::EventFilter::default()).await
}

/// Opens the store `settings` name: `database_url`, with
/// `database_max_connections` and the configured event filter
/// (`events.enabled`, `events.disabled_entities`). The one way the services,
/// `inlet status` and the CLI open it; migrating or pinging is the caller's
/// policy.
pub async fn from_settings(settings: &crate::config::Settings) -> Result<Store, StoreError> {
    open_with(
        &settings.database_url,
        settings.database_max_connections,
        settings.events.filter.clone(),
    )
    .await
}

/// [`open`] with an event filter.
pub async fn open_with(
    url: &str,
    max_connections: u32,
    filter: crate::events::EventFilter,
) -> Result<Store, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            sql::SqlStore::<sqlx::Postgres>::connect(url, max_connections)?.with_filter(filter),
        ))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(
            sql::SqlStore::<sqlx::Sqlite>::connect(url, max_connections)
                .await?
                .with_filter(filter),
        ))
    } else {
        Err(StoreError::Config(
            "database URL must start with postgres:// or sqlite:".into(),
        ))
    }
}
