//! The retention and partition job against the database
//! ([`crate::store::EventStore::maintain`]) and the partition listing.
//! What to create and what to drop is decided in
//! [`crate::store::partitions`]; this file executes it.
//!
//! Postgres, per partitioned table: missing partitions ahead are created as
//! plain tables and attached (`ATTACH PARTITION` takes a SHARE UPDATE
//! EXCLUSIVE lock on the parent, so writes go on; `CREATE TABLE … PARTITION
//! OF` would take an exclusive one); rows the DEFAULT partition holds for a
//! new range are moved into it in the same transaction. Expired partitions
//! are detached and dropped, one transaction each; an event-log partition
//! that still holds events past the relay cursor is kept for a later run.
//! Every step holds a transaction-scoped advisory lock, so two processes
//! running the job at once take turns, and a `lock_timeout`, so the job
//! gives up (and retries later) rather than queue writes behind a long
//! query. SQLite's tables are plain: retention deletes rows.

use sqlx::{Postgres, Row, Sqlite};

use super::{classify, SqlStore};
use crate::store::partitions::{
    self as plan, Bound, Maintenance, MaintenanceReport, PartitionChange, PartitionInfo,
    PartitionedTable, Range, TABLES,
};
use crate::store::StoreError;

/// Advisory lock of the job (`inletpar`): one process at a time per
/// database.
const LOCK_KEY: i64 = 0x696e_6c65_7470_6172;

/// Longest the job waits for a table lock before giving up until its next
/// run (writes queue behind a waiting exclusive lock).
const LOCK_TIMEOUT: &str = "3s";

/// Dedup keys deleted per statement.
const KEY_BATCH: i64 = 10_000;

/// The relay cursor an event-log partition must be behind to be dropped.
const CURSOR: &str = super::outbox::EVENTS_CURSOR;

/// `name` as a quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A time as a SQL literal.
fn literal(t: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "'{}'",
        t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    )
}

type PgTx = sqlx::Transaction<'static, Postgres>;

/// Runs one statement built at run time (DDL: not kept as a prepared
/// statement); returns the rows it affected.
async fn exec(tx: &mut PgTx, sql: &str) -> Result<u64, StoreError> {
    Ok(sqlx::query(sql)
        .persistent(false)
        .execute(&mut **tx)
        .await
        .map_err(classify)?
        .rows_affected())
}

/// What became of an expired partition.
enum Dropped {
    Yes,
    /// An event-log partition with events past the relay cursor: kept.
    RelayBehind,
    /// Another process dropped it first.
    AlreadyGone,
}

impl SqlStore<Postgres> {
    /// One run of the job; see the module documentation.
    pub(super) async fn maintain_store(
        &self,
        m: &Maintenance,
    ) -> Result<MaintenanceReport, StoreError> {
        let mut report = MaintenanceReport::default();
        for table in TABLES {
            self.prepare_table(table, m, &mut report).await?;
        }
        for table in TABLES {
            if let Some(cutoff) = plan::cutoff(m.now, m.retention_days(table.name)) {
                self.expire_table(table, cutoff, &mut report).await?;
            }
        }
        if m.event_log_retention_days > 0 {
            report.event_keys_deleted = self.delete_dropped_event_keys().await?;
        }
        let processed = plan::cutoff(m.now, m.processed_events_retention_days);
        report.processed_events_deleted = self.delete_older(None, processed).await?.1;
        report.default_rows = self.default_rows().await?;
        Ok(report)
    }

    /// Every partition of the partitioned tables, in table and time order.
    pub(super) async fn list_partitions(&self) -> Result<Vec<PartitionInfo>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query("SET LOCAL TimeZone = 'UTC'")
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        let mut out = Vec::new();
        for table in TABLES {
            let rows = sqlx::query(
                "SELECT c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound, \
                 GREATEST(c.reltuples, 0)::bigint AS estimate, pg_total_relation_size(c.oid) AS bytes \
                 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = to_regclass($1)",
            )
            .bind(table.name)
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
            let mut parts = Vec::with_capacity(rows.len());
            for row in rows {
                let bound: String = row.try_get("bound").map_err(classify)?;
                let range = match plan::parse_bound(&bound) {
                    Some(Bound::Range(range)) => Some(range),
                    Some(Bound::Default) | None => None,
                };
                let partition: String = row.try_get("name").map_err(classify)?;
                // The DEFAULT partition is counted exactly: it is normally
                // empty (the estimate would hide a few stray rows), and small.
                let rows_estimate = if range.is_none() {
                    let sql = format!("SELECT count(*) AS n FROM {}", ident(&partition));
                    sqlx::query(&sql)
                        .persistent(false)
                        .fetch_one(&mut *tx)
                        .await
                        .and_then(|row| row.try_get("n"))
                        .map_err(classify)?
                } else {
                    row.try_get("estimate").map_err(classify)?
                };
                parts.push(PartitionInfo {
                    table: table.name.to_string(),
                    partition,
                    range,
                    rows_estimate,
                    bytes: row.try_get("bytes").map_err(classify)?,
                });
            }
            // Ranges in time order, the DEFAULT partition last.
            parts.sort_by_key(|p| (p.range.is_none(), p.range));
            out.extend(parts);
        }
        tx.commit().await.map_err(classify)?;
        Ok(out)
    }

    /// A transaction holding the job's lock, with its lock timeout and
    /// partition bounds printed in UTC.
    async fn begin_locked(&self) -> Result<PgTx, StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        exec(
            &mut tx,
            &format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"),
        )
        .await?;
        exec(&mut tx, "SET LOCAL TimeZone = 'UTC'").await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        Ok(tx)
    }

    /// `table`'s partitions and their bounds; empty when the table is not
    /// partitioned (not migrated yet).
    async fn partitions_of(tx: &mut PgTx, table: &str) -> Result<Vec<(String, Bound)>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_class p ON p.oid = i.inhparent \
             WHERE p.oid = to_regclass($1) AND p.relkind = 'p'",
        )
        .bind(table)
        .fetch_all(&mut **tx)
        .await
        .map_err(classify)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("name").map_err(classify)?;
            let bound: String = row.try_get("bound").map_err(classify)?;
            match plan::parse_bound(&bound) {
                Some(b) => out.push((name, b)),
                None => {
                    tracing::warn!(table, partition = %name, bound = %bound, "partition bound not understood; left alone")
                }
            }
        }
        Ok(out)
    }

    /// Whether `table` is partitioned (migration 0015 ran).
    async fn is_partitioned(tx: &mut PgTx, table: &str) -> Result<bool, StoreError> {
        let row =
            sqlx::query("SELECT relkind::text AS kind FROM pg_class WHERE oid = to_regclass($1)")
                .bind(table)
                .fetch_optional(&mut **tx)
                .await
                .map_err(classify)?;
        let kind: Option<String> = row
            .map(|r| r.try_get("kind"))
            .transpose()
            .map_err(classify)?;
        Ok(kind.as_deref() == Some("p"))
    }

    /// Creates `table`'s missing partitions ahead (one transaction).
    async fn prepare_table(
        &self,
        table: &PartitionedTable,
        m: &Maintenance,
        report: &mut MaintenanceReport,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_locked().await?;
        if !Self::is_partitioned(&mut tx, table.name).await? {
            return Ok(());
        }
        let parts = Self::partitions_of(&mut tx, table.name).await?;
        let ranges: Vec<Range> = parts
            .iter()
            .filter_map(|(_, b)| match b {
                Bound::Range(r) => Some(*r),
                Bound::Default => None,
            })
            .collect();
        let default = parts
            .iter()
            .find(|(_, b)| *b == Bound::Default)
            .map(|(name, _)| name.clone());
        let mut created = Vec::new();
        for range in plan::missing(m.partitions, m.now, &ranges) {
            let name = plan::partition_name(table.name, range.from);
            let moved = match &default {
                Some(default) => Self::take_from_default(&mut tx, table, default, range).await?,
                None => 0,
            };
            let (part, parent) = (ident(&name), ident(table.name));
            let mut ddl = vec![
                format!("CREATE TABLE {part} (LIKE {parent} INCLUDING DEFAULTS)"),
                format!(
                    "ALTER TABLE {parent} ATTACH PARTITION {part} FOR VALUES FROM ({}) TO ({})",
                    literal(range.from),
                    literal(range.to),
                ),
            ];
            if table.name == "event_log" {
                // Row triggers are cloned by ATTACH, statement triggers
                // are not (see migration 0015).
                ddl.push(format!(
                    "CREATE TRIGGER event_log_no_truncate BEFORE TRUNCATE ON {part} \
                     FOR EACH STATEMENT EXECUTE FUNCTION event_log_is_append_only()"
                ));
            }
            if moved > 0 {
                ddl.push(format!("INSERT INTO {parent} SELECT * FROM inlet_moved"));
                ddl.push("DROP TABLE inlet_moved".to_string());
            }
            for statement in &ddl {
                exec(&mut tx, statement).await?;
            }
            report.moved_from_default += moved;
            created.push(PartitionChange {
                table: table.name.to_string(),
                partition: name,
                range,
            });
        }
        tx.commit().await.map_err(classify)?;
        report.created.extend(created);
        Ok(())
    }

    /// Moves the rows `default` holds for `range` into a temporary table
    /// `inlet_moved` (a partition for `range` cannot be attached while the
    /// DEFAULT partition holds such rows); returns how many.
    async fn take_from_default(
        tx: &mut PgTx,
        table: &PartitionedTable,
        default: &str,
        range: Range,
    ) -> Result<u64, StoreError> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE {key} >= $1 AND {key} < $2) AS any",
            ident(default),
            key = ident(table.key)
        );
        let any: bool = sqlx::query(&sql)
            .persistent(false)
            .bind(range.from)
            .bind(range.to)
            .fetch_one(&mut **tx)
            .await
            .and_then(|row| row.try_get("any"))
            .map_err(classify)?;
        if !any {
            return Ok(0);
        }
        exec(
            tx,
            &format!(
                "CREATE TEMP TABLE inlet_moved (LIKE {}) ON COMMIT DROP",
                ident(table.name)
            ),
        )
        .await?;
        let moved = Self::delete_from_default(
            tx,
            table,
            default,
            &format!(
                "{key} >= {} AND {key} < {}",
                literal(range.from),
                literal(range.to),
                key = ident(table.key)
            ),
            true,
        )
        .await?;
        tracing::warn!(
            table = table.name,
            rows = moved,
            from = %range.from,
            "rows of the default partition moved into the partition created for them"
        );
        Ok(moved)
    }

    /// Deletes the rows of `default` matching `condition` (kept in
    /// `inlet_moved` when `keep`). The event log's append-only trigger is
    /// off for this statement only, inside the transaction.
    async fn delete_from_default(
        tx: &mut PgTx,
        table: &PartitionedTable,
        default: &str,
        condition: &str,
        keep: bool,
    ) -> Result<u64, StoreError> {
        let guarded = table.name == "event_log";
        if guarded {
            exec(
                tx,
                &format!(
                    "ALTER TABLE {} DISABLE TRIGGER event_log_no_update",
                    ident(default)
                ),
            )
            .await?;
        }
        let delete = format!("DELETE FROM {} WHERE {condition}", ident(default));
        let sql = if keep {
            format!(
                "WITH gone AS ({delete} RETURNING *) INSERT INTO inlet_moved SELECT * FROM gone"
            )
        } else {
            delete
        };
        let n = exec(tx, &sql).await?;
        if guarded {
            exec(
                tx,
                &format!(
                    "ALTER TABLE {} ENABLE TRIGGER event_log_no_update",
                    ident(default)
                ),
            )
            .await?;
        }
        Ok(n)
    }

    /// Drops `table`'s partitions wholly older than `cutoff` (one
    /// transaction each), and deletes the DEFAULT partition's rows older
    /// than it.
    async fn expire_table(
        &self,
        table: &PartitionedTable,
        cutoff: chrono::DateTime<chrono::Utc>,
        report: &mut MaintenanceReport,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_locked().await?;
        let parts = Self::partitions_of(&mut tx, table.name).await?;
        tx.commit().await.map_err(classify)?;
        let ranges: Vec<(String, Range)> = parts
            .iter()
            .filter_map(|(name, b)| match b {
                Bound::Range(r) => Some((name.clone(), *r)),
                Bound::Default => None,
            })
            .collect();
        for name in plan::expired(&ranges, cutoff) {
            let range = ranges
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, r)| *r)
                .expect("expired names come from the list");
            let change = PartitionChange {
                table: table.name.to_string(),
                partition: name,
                range,
            };
            match self.drop_partition(table, &change).await? {
                Dropped::Yes => report.dropped.push(change),
                Dropped::RelayBehind => report.kept_unrelayed.push(change),
                Dropped::AlreadyGone => {}
            }
        }
        let default = parts
            .iter()
            .find(|(_, b)| *b == Bound::Default)
            .map(|(name, _)| name.clone());
        if let Some(default) = default {
            let mut tx = self.begin_locked().await?;
            let mut condition = format!("{} < {}", ident(table.key), literal(cutoff));
            if table.name == "event_log" {
                condition.push_str(&format!(
                    " AND (tx, seq) <= (SELECT tx, seq FROM relay_cursors WHERE name = '{CURSOR}')"
                ));
            }
            let n = Self::delete_from_default(&mut tx, table, &default, &condition, false).await?;
            tx.commit().await.map_err(classify)?;
            if table.name == "raw_events" {
                report.raw_events_deleted += n;
            }
        }
        Ok(())
    }

    /// Detaches and drops one expired partition, unless it is an event-log
    /// partition holding events the relay has not passed, or another
    /// process dropped it first.
    async fn drop_partition(
        &self,
        table: &PartitionedTable,
        change: &PartitionChange,
    ) -> Result<Dropped, StoreError> {
        let mut tx = self.begin_locked().await?;
        let attached: bool = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM pg_inherits \
             WHERE inhrelid = to_regclass($1) AND inhparent = to_regclass($2)) AS attached",
        )
        .bind(&change.partition)
        .bind(table.name)
        .fetch_one(&mut *tx)
        .await
        .and_then(|row| row.try_get("attached"))
        .map_err(classify)?;
        if !attached {
            return Ok(Dropped::AlreadyGone);
        }
        let part = ident(&change.partition);
        exec(
            &mut tx,
            &format!("ALTER TABLE {} DETACH PARTITION {part}", ident(table.name)),
        )
        .await?;
        if table.name == "event_log" {
            // Detached, no transaction can add a row to it any more.
            let sql = format!(
                "SELECT NOT EXISTS (SELECT 1 FROM relay_cursors WHERE name = $1) \
                 OR EXISTS (SELECT 1 FROM {part} e, relay_cursors c \
                            WHERE c.name = $1 AND (e.tx, e.seq) > (c.tx, c.seq)) AS behind"
            );
            let behind: bool = sqlx::query(&sql)
                .persistent(false)
                .bind(CURSOR)
                .fetch_one(&mut *tx)
                .await
                .and_then(|row| row.try_get("behind"))
                .map_err(classify)?;
            if behind {
                tx.rollback().await.map_err(classify)?;
                tracing::warn!(
                    partition = %change.partition,
                    "expired event-log partition kept: it holds events the relay has not passed"
                );
                return Ok(Dropped::RelayBehind);
            }
        }
        exec(&mut tx, &format!("DROP TABLE {part}")).await?;
        tx.commit().await.map_err(classify)?;
        Ok(Dropped::Yes)
    }

    /// Deletes the dedup keys of events whose partitions were dropped: keys
    /// older than the oldest event-log partition left, unless the DEFAULT
    /// partition still holds their event. In batches, outside the lock.
    async fn delete_dropped_event_keys(&self) -> Result<u64, StoreError> {
        let mut tx = self.begin_locked().await?;
        let parts = Self::partitions_of(&mut tx, "event_log").await?;
        tx.commit().await.map_err(classify)?;
        let Some(oldest) = parts
            .iter()
            .filter_map(|(_, b)| match b {
                Bound::Range(r) => Some(r.from),
                Bound::Default => None,
            })
            .min()
        else {
            return Ok(0);
        };
        let unless_default = parts
            .iter()
            .find(|(_, b)| *b == Bound::Default)
            .map(|(name, _)| {
                format!(
                    " AND NOT EXISTS (SELECT 1 FROM {} d WHERE d.event_id = k.event_id)",
                    ident(name)
                )
            })
            .unwrap_or_default();
        let sql = format!(
            "DELETE FROM event_keys WHERE event_id IN (SELECT k.event_id FROM event_keys k \
             WHERE k.occurred_at < $1{unless_default} LIMIT $2)"
        );
        let mut total = 0;
        loop {
            let n = sqlx::query(&sql)
                .bind(oldest)
                .bind(KEY_BATCH)
                .execute(&self.pool)
                .await
                .map_err(classify)?
                .rows_affected();
            total += n;
            if n < KEY_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Rows in each partitioned table's DEFAULT partition.
    async fn default_rows(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut out = Vec::new();
        for table in TABLES {
            let default = sqlx::query(
                "SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = to_regclass($1) AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'",
            )
            .bind(table.name)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
            if let Some(row) = default {
                let name: String = row.try_get("name").map_err(classify)?;
                let sql = format!("SELECT count(*) AS n FROM {}", ident(&name));
                let n: i64 = sqlx::query(&sql)
                    .persistent(false)
                    .fetch_one(&self.pool)
                    .await
                    .and_then(|row| row.try_get("n"))
                    .map_err(classify)?;
                out.push((table.name.to_string(), n));
            }
        }
        Ok(out)
    }
}

impl SqlStore<Sqlite> {
    /// One run of the job on SQLite: plain tables, rows deleted.
    pub(super) async fn maintain_store(
        &self,
        m: &Maintenance,
    ) -> Result<MaintenanceReport, StoreError> {
        if m.event_log_retention_days > 0 {
            tracing::warn!(
                "database.event_log_retention_days applies to Postgres only; SQLite keeps its event log"
            );
        }
        let (raw, processed) = self
            .delete_older(
                plan::cutoff(m.now, m.raw_events_retention_days),
                plan::cutoff(m.now, m.processed_events_retention_days),
            )
            .await?;
        Ok(MaintenanceReport {
            raw_events_deleted: raw,
            processed_events_deleted: processed,
            ..MaintenanceReport::default()
        })
    }

    /// SQLite has no partitions.
    pub(super) async fn list_partitions(&self) -> Result<Vec<PartitionInfo>, StoreError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_times_are_utc_literals() {
        assert_eq!(ident("messages_p20261101"), "\"messages_p20261101\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-01T05:30:00+05:30")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(literal(t), "'2026-11-01T00:00:00.000000Z'");
    }
}
