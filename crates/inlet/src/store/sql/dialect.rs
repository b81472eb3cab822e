//! What differs between Postgres and SQLite, as one value per backend.
//!
//! Placeholders differ too (`$1` / `?`), but sqlx's `QueryBuilder` emits each
//! backend's own; upserts (`ON CONFLICT … DO UPDATE`, `excluded`) and
//! `RETURNING` are spelled the same by both. Everything else the SQL of
//! [`super`] needs to tell the two apart is a field of [`Dialect`].

use sqlx::{Postgres, Sqlite};

/// Embedded migrations: version, description, SQL.
pub type Migrations = &'static [(i64, &'static str, &'static str)];

/// The spellings and behaviours that differ between the two databases.
#[derive(Debug)]
pub struct Dialect {
    /// `postgres` or `sqlite` (what [`crate::store::EventStore::backend`]
    /// reports).
    pub name: &'static str,
    /// The schema, embedded from `migrations/{name}`.
    pub migrations: Migrations,
    /// Larger of two values: `GREATEST(a, b)` / SQLite's scalar `MAX(a, b)`.
    pub greatest: &'static str,
    /// Smaller of two values: `LEAST(a, b)` / `MIN(a, b)`.
    pub least: &'static str,
    /// Appended to a claim's `SELECT` so concurrent relays take disjoint rows
    /// (empty where one writer serializes them anyway).
    pub skip_locked: &'static str,
    /// Appended to a `SELECT` that must lock its rows until the transaction
    /// ends (empty where one writer serializes transactions anyway).
    pub for_update: &'static str,
    /// SQL type of `event_log.tx` and `relay_cursors.tx`.
    pub tx_type: &'static str,
    /// Condition (starting with ` AND`) that limits event-log reads to rows
    /// no still-running transaction can commit behind.
    pub horizon: &'static str,
    /// Whether a claim keeps its read transaction open until it completes
    /// (row locks), or ends it at once and completes in a write transaction
    /// of its own.
    pub hold_claim: bool,
    /// Statement that opens a write transaction.
    pub write_begin: &'static str,
    /// Statement that makes a read transaction see one snapshot (empty when
    /// a transaction already does).
    pub snapshot: &'static str,
    /// A timestamp below every stored one.
    pub min_timestamp: &'static str,
    /// Text before a timestamp column in the expression of its UTC day
    /// (`YYYY-MM-DD`); see [`Dialect::day`].
    day_open: &'static str,
    /// Text after the column in that expression.
    day_close: &'static str,
}

impl Dialect {
    /// The UTC day (`YYYY-MM-DD`) of a timestamp column.
    pub fn day(&self, column: &str) -> String {
        format!("{}{column}{}", self.day_open, self.day_close)
    }
}

/// A database with a [`Dialect`]: the two the store runs on.
pub trait Backend: sqlx::Database {
    /// Its dialect.
    const DIALECT: &'static Dialect;
}

impl Backend for Postgres {
    const DIALECT: &'static Dialect = &POSTGRES;
}

impl Backend for Sqlite {
    const DIALECT: &'static Dialect = &SQLITE;
}

// Claims. Postgres relays in several workers claim disjoint rows (`SKIP
// LOCKED`); SQLite has a single writer, which serializes its (one-process)
// relay anyway. A claim reads, then deletes or moves a cursor when it
// completes. Postgres keeps the claim's transaction open (its row locks keep
// other relays off). SQLite ends the read at once and completes in a write
// transaction of its own (BEGIN IMMEDIATE): upgrading the read transaction
// fails at once (SQLITE_BUSY_SNAPSHOT) when a write committed meanwhile,
// which re-delivered the claimed entries, and holding the write lock during
// delivery stalled the group commits. SQLite has one relay (the embedded
// gateway's), so nothing else moves the cursor or deletes the rows in
// between.
//
// The event log is read past the relay cursor in (tx, seq) order. Postgres
// rows carry the writing transaction's id and only transactions older than
// the oldest one still running are read (no row can commit behind the cursor
// later); SQLite commits one writer at a time, in seq order.

/// Postgres (production).
pub const POSTGRES: Dialect = Dialect {
    name: "postgres",
    migrations: PG_MIGRATIONS,
    greatest: "GREATEST",
    least: "LEAST",
    skip_locked: " FOR UPDATE SKIP LOCKED",
    for_update: " FOR UPDATE",
    tx_type: "xid8",
    horizon: " AND tx < pg_snapshot_xmin(pg_current_snapshot())",
    hold_claim: true,
    write_begin: "BEGIN",
    snapshot: "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    min_timestamp: "'-infinity'::timestamptz",
    day_open: "to_char(",
    day_close: " AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
};

/// SQLite (the embedded default). A read transaction sees one snapshot from
/// its first read on. Timestamps are stored as RFC 3339 text: `''` sorts
/// before all of them, and the day is the first ten characters.
pub const SQLITE: Dialect = Dialect {
    name: "sqlite",
    migrations: SQLITE_MIGRATIONS,
    greatest: "MAX",
    least: "MIN",
    skip_locked: "",
    for_update: "",
    tx_type: "INTEGER",
    horizon: "",
    hold_claim: false,
    write_begin: "BEGIN IMMEDIATE",
    snapshot: "",
    min_timestamp: "''",
    day_open: "substr(",
    day_close: ", 1, 10)",
};

const PG_MIGRATIONS: Migrations = &[
    (
        1,
        "core",
        include_str!("../../../../../migrations/postgres/0001_core.sql"),
    ),
    (
        2,
        "events",
        include_str!("../../../../../migrations/postgres/0002_events.sql"),
    ),
    (
        3,
        "timeline indexes",
        include_str!("../../../../../migrations/postgres/0003_timeline_indexes.sql"),
    ),
    (
        4,
        "event relay",
        include_str!("../../../../../migrations/postgres/0004_event_relay.sql"),
    ),
    (
        5,
        "outbound",
        include_str!("../../../../../migrations/postgres/0005_outbound.sql"),
    ),
    (
        6,
        "contact identities",
        include_str!("../../../../../migrations/postgres/0006_contact_identities.sql"),
    ),
    (
        7,
        "groups history",
        include_str!("../../../../../migrations/postgres/0007_groups_history.sql"),
    ),
    (
        8,
        "drafts",
        include_str!("../../../../../migrations/postgres/0008_drafts.sql"),
    ),
    (
        9,
        "media",
        include_str!("../../../../../migrations/postgres/0009_media.sql"),
    ),
    (
        10,
        "outbound delivered",
        include_str!("../../../../../migrations/postgres/0010_outbound_delivered.sql"),
    ),
    (
        11,
        "conversations by contact",
        include_str!("../../../../../migrations/postgres/0011_conversations_by_contact.sql"),
    ),
    (
        12,
        "leads",
        include_str!("../../../../../migrations/postgres/0012_leads.sql"),
    ),
    (
        13,
        "bus pending",
        include_str!("../../../../../migrations/postgres/0013_bus_pending.sql"),
    ),
    (
        14,
        "graph sync",
        include_str!("../../../../../migrations/postgres/0014_graph_sync.sql"),
    ),
    (
        15,
        "partitions",
        include_str!("../../../../../migrations/postgres/0015_partitions.sql"),
    ),
];

const SQLITE_MIGRATIONS: Migrations = &[
    (
        1,
        "core",
        include_str!("../../../../../migrations/sqlite/0001_core.sql"),
    ),
    (
        2,
        "events",
        include_str!("../../../../../migrations/sqlite/0002_events.sql"),
    ),
    (
        3,
        "timeline indexes",
        include_str!("../../../../../migrations/sqlite/0003_timeline_indexes.sql"),
    ),
    (
        4,
        "event relay",
        include_str!("../../../../../migrations/sqlite/0004_event_relay.sql"),
    ),
    (
        5,
        "outbound",
        include_str!("../../../../../migrations/sqlite/0005_outbound.sql"),
    ),
    (
        6,
        "contact identities",
        include_str!("../../../../../migrations/sqlite/0006_contact_identities.sql"),
    ),
    (
        7,
        "groups history",
        include_str!("../../../../../migrations/sqlite/0007_groups_history.sql"),
    ),
    (
        8,
        "drafts",
        include_str!("../../../../../migrations/sqlite/0008_drafts.sql"),
    ),
    (
        9,
        "media",
        include_str!("../../../../../migrations/sqlite/0009_media.sql"),
    ),
    (
        10,
        "outbound delivered",
        include_str!("../../../../../migrations/sqlite/0010_outbound_delivered.sql"),
    ),
    (
        11,
        "conversations by contact",
        include_str!("../../../../../migrations/sqlite/0011_conversations_by_contact.sql"),
    ),
    (
        12,
        "leads",
        include_str!("../../../../../migrations/sqlite/0012_leads.sql"),
    ),
    (
        13,
        "bus pending",
        include_str!("../../../../../migrations/sqlite/0013_bus_pending.sql"),
    ),
    (
        14,
        "graph sync",
        include_str!("../../../../../migrations/sqlite/0014_graph_sync.sql"),
    ),
    (
        15,
        "partitions",
        include_str!("../../../../../migrations/sqlite/0015_partitions.sql"),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_expressions_of_the_column() {
        assert_eq!(SQLITE.day("sent_at"), "substr(sent_at, 1, 10)");
        assert_eq!(
            POSTGRES.day("sent_at"),
            "to_char(sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        );
    }

    #[test]
    fn both_backends_have_the_same_migration_versions() {
        let versions = |m: Migrations| m.iter().map(|(v, d, _)| (*v, *d)).collect::<Vec<_>>();
        assert_eq!(versions(POSTGRES.migrations), versions(SQLITE.migrations));
    }
}
