//! Time partitions of the growing tables and the retention job, as decided
//! without I/O: which tables are partitioned and by what, partition names,
//! the ranges an interval makes, which ranges are missing ahead, which
//! partitions a retention cutoff drops, and how Postgres prints a
//! partition's bound. `store::sql` executes what this module decides
//! (Postgres: `CREATE`/`ATTACH`, `DETACH`/`DROP`; SQLite, whose tables are
//! plain, deletes rows).
//!
//! On Postgres `raw_events`, `messages`, `message_statuses` and `event_log`
//! are partitioned by range of an insert time (migration 0015), so the
//! partitions created ahead always take new rows; a DEFAULT partition takes
//! whatever no range does (reported, and moved into its partition once that
//! is created).

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::Serialize;

use crate::config::{PartitionInterval, PartitionSettings, Settings};

/// A time-partitioned table and the column it is partitioned by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionedTable {
    /// Table name.
    pub name: &'static str,
    /// Partition key: an insert time, never one a row brings along (a
    /// backfill stores past messages with old `sent_at`).
    pub key: &'static str,
}

/// The partitioned tables (Postgres), with their keys.
pub const TABLES: &[PartitionedTable] = &[
    PartitionedTable {
        name: "raw_events",
        key: "received_at",
    },
    PartitionedTable {
        name: "messages",
        key: "stored_at",
    },
    PartitionedTable {
        name: "message_statuses",
        key: "stored_at",
    },
    PartitionedTable {
        name: "event_log",
        key: "occurred_at",
    },
];

/// A half-open time range `[from, to)`: what one partition holds.
/// `MINVALUE`/`MAXVALUE` bounds are the smallest and largest times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Range {
    /// First instant inside.
    pub from: DateTime<Utc>,
    /// First instant past it.
    pub to: DateTime<Utc>,
}

impl Range {
    fn overlaps(&self, other: &Range) -> bool {
        self.from < other.to && other.from < self.to
    }
}

/// A partition's bound, as Postgres stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The DEFAULT partition: rows no range takes.
    Default,
    /// `FOR VALUES FROM (…) TO (…)`.
    Range(Range),
}

/// Start of the interval holding `t`: midnight UTC, Monday midnight, the
/// first of the month.
pub fn floor(interval: PartitionInterval, t: DateTime<Utc>) -> DateTime<Utc> {
    let day = t.date_naive();
    let start = match interval {
        PartitionInterval::Day => day,
        PartitionInterval::Week => {
            day - Duration::days(i64::from(day.weekday().num_days_from_monday()))
        }
        PartitionInterval::Month => NaiveDate::from_ymd_opt(day.year(), day.month(), 1)
            .expect("the first of a month exists"),
    };
    Utc.from_utc_datetime(&start.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

/// Start of the interval after the one holding `t`.
pub fn next(interval: PartitionInterval, t: DateTime<Utc>) -> DateTime<Utc> {
    let start = floor(interval, t);
    match interval {
        PartitionInterval::Day => start + Duration::days(1),
        PartitionInterval::Week => start + Duration::days(7),
        PartitionInterval::Month => start
            .checked_add_months(chrono::Months::new(1))
            .expect("a month after a stored time exists"),
    }
}

/// Name of `table`'s partition starting at `from`: `{table}_pYYYYMMDD`
/// (`…tHHMMSS` appended when it does not start at midnight, which only a
/// range cut short by an existing partition does).
pub fn partition_name(table: &str, from: DateTime<Utc>) -> String {
    if from.time() == chrono::NaiveTime::MIN {
        format!("{table}_p{}", from.format("%Y%m%d"))
    } else {
        format!("{table}_p{}", from.format("%Y%m%dt%H%M%S"))
    }
}

/// Name of `table`'s DEFAULT partition.
pub fn default_name(table: &str) -> String {
    format!("{table}_default")
}

/// Reads `pg_get_expr(relpartbound, oid)` of a partition printed with
/// `TimeZone = UTC` (`FOR VALUES FROM ('2026-11-01 00:00:00+00') TO (…)`,
/// `DEFAULT`). `None` for anything else (not a time range).
pub fn parse_bound(expr: &str) -> Option<Bound> {
    let expr = expr.trim();
    if expr == "DEFAULT" {
        return Some(Bound::Default);
    }
    let rest = expr.strip_prefix("FOR VALUES FROM (")?;
    let (from, rest) = rest.split_once(") TO (")?;
    let to = rest.strip_suffix(')')?;
    Some(Bound::Range(Range {
        from: parse_limit(from)?,
        to: parse_limit(to)?,
    }))
}

/// One side of a range bound: `'2026-11-01 00:00:00+00'`, `MINVALUE`,
/// `MAXVALUE`, `'-infinity'`, `'infinity'`.
fn parse_limit(s: &str) -> Option<DateTime<Utc>> {
    match s.trim() {
        "MINVALUE" | "'-infinity'" => return Some(DateTime::<Utc>::MIN_UTC),
        "MAXVALUE" | "'infinity'" => return Some(DateTime::<Utc>::MAX_UTC),
        _ => {}
    }
    let text = s.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Some(t.with_timezone(&Utc));
    }
    // A `timestamp` (without time zone) key prints no offset.
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| Utc.from_utc_datetime(&t))
}

/// The ranges to create so that the current interval and `ahead` more are
/// covered: each interval's range minus what `existing` partitions already
/// cover (whatever their layout: a change of interval leaves the old
/// partitions in place and fills only the gaps), in time order.
pub fn missing(settings: PartitionSettings, now: DateTime<Utc>, existing: &[Range]) -> Vec<Range> {
    let mut out = Vec::new();
    let mut start = floor(settings.interval, now);
    for _ in 0..=settings.ahead {
        let end = next(settings.interval, start);
        out.extend(subtract(
            Range {
                from: start,
                to: end,
            },
            existing,
        ));
        start = end;
    }
    out
}

/// `range` minus every range of `taken`, as the pieces left, in order.
fn subtract(range: Range, taken: &[Range]) -> Vec<Range> {
    let mut covering: Vec<&Range> = taken.iter().filter(|t| t.overlaps(&range)).collect();
    covering.sort();
    let mut pieces = Vec::new();
    let mut cursor = range.from;
    for t in covering {
        if t.from > cursor {
            pieces.push(Range {
                from: cursor,
                to: t.from.min(range.to),
            });
        }
        cursor = cursor.max(t.to);
        if cursor >= range.to {
            return pieces;
        }
    }
    if cursor < range.to {
        pieces.push(Range {
            from: cursor,
            to: range.to,
        });
    }
    pieces
}

/// The partitions retention drops for `cutoff`: those whose whole range is
/// older (every row they can hold is older than the cutoff), oldest first.
pub fn expired(partitions: &[(String, Range)], cutoff: DateTime<Utc>) -> Vec<String> {
    let mut old: Vec<&(String, Range)> = partitions
        .iter()
        .filter(|(_, range)| range.to <= cutoff)
        .collect();
    old.sort_by_key(|(_, range)| *range);
    old.into_iter().map(|(name, _)| name.clone()).collect()
}

/// `now` minus `days`; `None` for 0 (kept forever).
pub fn cutoff(now: DateTime<Utc>, days: u32) -> Option<DateTime<Utc>> {
    (days > 0).then(|| now - Duration::days(i64::from(days)))
}

/// One run of the retention and partition job: what to keep and what to
/// prepare, as of `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Maintenance {
    /// The time the run acts at (tests move it).
    pub now: DateTime<Utc>,
    /// `database.raw_events_retention_days` (0 = keep).
    pub raw_events_retention_days: u32,
    /// `database.processed_events_retention_days` (0 = keep).
    pub processed_events_retention_days: u32,
    /// `database.event_log_retention_days` (0 = keep; Postgres only).
    pub event_log_retention_days: u32,
    /// Partition interval and how many to keep ready.
    pub partitions: PartitionSettings,
}

impl Maintenance {
    /// The configured job, run at `now`.
    pub fn from_settings(settings: &Settings, now: DateTime<Utc>) -> Self {
        Self {
            now,
            raw_events_retention_days: settings.raw_events_retention_days,
            processed_events_retention_days: settings.processed_events_retention_days,
            event_log_retention_days: settings.event_log_retention_days,
            partitions: settings.partitions,
        }
    }

    /// Retention days of a partitioned table (0 = keep): messages and
    /// receipts are the record, kept.
    pub fn retention_days(&self, table: &str) -> u32 {
        match table {
            "raw_events" => self.raw_events_retention_days,
            "event_log" => self.event_log_retention_days,
            _ => 0,
        }
    }
}

/// A partition created or dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionChange {
    /// The partitioned table.
    pub table: String,
    /// The partition.
    pub partition: String,
    /// Its range.
    pub range: Range,
}

/// What one run of [`crate::store::EventStore::maintain`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MaintenanceReport {
    /// Partitions created ahead.
    pub created: Vec<PartitionChange>,
    /// Partitions retention dropped.
    pub dropped: Vec<PartitionChange>,
    /// Expired event-log partitions kept because they hold events the
    /// relay has not passed yet (dropped by a later run).
    pub kept_unrelayed: Vec<PartitionChange>,
    /// Rows in each table's DEFAULT partition after the run: rows no range
    /// took (a clock far off). 0 is the normal state.
    pub default_rows: Vec<(String, i64)>,
    /// Rows moved from a DEFAULT partition into a partition created for
    /// them.
    pub moved_from_default: u64,
    /// Raw events past retention deleted row by row (SQLite; on Postgres
    /// only those in a DEFAULT partition, the others go with their
    /// partitions).
    pub raw_events_deleted: u64,
    /// Handler idempotency records deleted.
    pub processed_events_deleted: u64,
    /// Dedup keys of dropped events deleted (Postgres `event_keys`).
    pub event_keys_deleted: u64,
}

impl MaintenanceReport {
    /// Whether the run changed anything worth a log line.
    pub fn is_quiet(&self) -> bool {
        self.created.is_empty()
            && self.dropped.is_empty()
            && self.kept_unrelayed.is_empty()
            && self.default_rows.iter().all(|(_, n)| *n == 0)
            && self.moved_from_default == 0
            && self.raw_events_deleted == 0
            && self.processed_events_deleted == 0
            && self.event_keys_deleted == 0
    }
}

/// One partition as listed (`inlet db partitions`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionInfo {
    /// The partitioned table.
    pub table: String,
    /// The partition.
    pub partition: String,
    /// Its range; `None` for the DEFAULT partition.
    pub range: Option<Range>,
    /// Rows, as estimated by the planner's statistics (0 before the first
    /// ANALYZE); counted exactly for the DEFAULT partition.
    pub rows_estimate: i64,
    /// Bytes on disk, indexes included.
    pub bytes: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn r(from: &str, to: &str) -> Range {
        Range {
            from: t(from),
            to: t(to),
        }
    }

    fn settings(interval: PartitionInterval, ahead: u32) -> PartitionSettings {
        PartitionSettings { interval, ahead }
    }

    #[test]
    fn intervals_start_at_utc_midnight_monday_and_the_first() {
        let now = t("2026-12-31T23:59:59.999Z");
        assert_eq!(
            floor(PartitionInterval::Day, now),
            t("2026-12-31T00:00:00Z")
        );
        // 2026-12-31 is a Thursday.
        assert_eq!(
            floor(PartitionInterval::Week, now),
            t("2026-12-28T00:00:00Z")
        );
        assert_eq!(
            floor(PartitionInterval::Month, now),
            t("2026-12-01T00:00:00Z")
        );
        assert_eq!(next(PartitionInterval::Day, now), t("2027-01-01T00:00:00Z"));
        assert_eq!(
            next(PartitionInterval::Week, now),
            t("2027-01-04T00:00:00Z")
        );
        assert_eq!(
            next(PartitionInterval::Month, now),
            t("2027-01-01T00:00:00Z")
        );
        // Month lengths: January to February, February of a leap year.
        assert_eq!(
            next(PartitionInterval::Month, t("2028-01-31T12:00:00Z")),
            t("2028-02-01T00:00:00Z")
        );
        assert_eq!(
            next(PartitionInterval::Month, t("2028-02-29T12:00:00Z")),
            t("2028-03-01T00:00:00Z")
        );
        // A start is its own floor.
        let start = t("2026-11-01T00:00:00Z");
        assert_eq!(floor(PartitionInterval::Month, start), start);
    }

    #[test]
    fn names_carry_the_start_day_and_a_time_only_when_not_midnight() {
        assert_eq!(
            partition_name("messages", t("2026-11-01T00:00:00Z")),
            "messages_p20261101"
        );
        assert_eq!(
            partition_name("event_log", t("2026-11-15T06:30:00Z")),
            "event_log_p20261115t063000"
        );
        assert_eq!(default_name("raw_events"), "raw_events_default");
        // Postgres truncates identifiers past 63 bytes.
        let longest = TABLES.iter().map(|t| t.name.len()).max().unwrap();
        assert!(longest + "_p20261115t063000".len() <= 63);
    }

    #[test]
    fn bounds_are_read_as_postgres_prints_them_in_utc() {
        assert_eq!(parse_bound("DEFAULT"), Some(Bound::Default));
        assert_eq!(
            parse_bound("FOR VALUES FROM ('2026-11-01 00:00:00+00') TO ('2026-12-01 00:00:00+00')"),
            Some(Bound::Range(r(
                "2026-11-01T00:00:00Z",
                "2026-12-01T00:00:00Z"
            )))
        );
        assert_eq!(
            parse_bound("FOR VALUES FROM ('2026-11-01 05:30:00.25+05:30') TO (MAXVALUE)"),
            Some(Bound::Range(Range {
                from: t("2026-11-01T00:00:00.25Z"),
                to: DateTime::<Utc>::MAX_UTC
            }))
        );
        assert_eq!(
            parse_bound("FOR VALUES FROM (MINVALUE) TO ('2026-12-01 00:00:00')"),
            Some(Bound::Range(Range {
                from: DateTime::<Utc>::MIN_UTC,
                to: t("2026-12-01T00:00:00Z")
            }))
        );
        assert_eq!(parse_bound("FOR VALUES IN ('a')"), None);
        assert_eq!(parse_bound("FOR VALUES FROM ('soon') TO ('later')"), None);
    }

    #[test]
    fn an_empty_table_gets_the_current_interval_and_the_ones_ahead() {
        let now = t("2026-11-20T09:00:00Z");
        assert_eq!(
            missing(settings(PartitionInterval::Month, 2), now, &[]),
            vec![
                r("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
                r("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
                r("2027-01-01T00:00:00Z", "2027-02-01T00:00:00Z"),
            ]
        );
    }

    #[test]
    fn existing_partitions_are_not_created_again() {
        let now = t("2026-11-20T09:00:00Z");
        let existing = [
            r("2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z"),
            r("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
            r("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
        ];
        assert_eq!(
            missing(settings(PartitionInterval::Month, 3), now, &existing),
            vec![
                r("2027-01-01T00:00:00Z", "2027-02-01T00:00:00Z"),
                r("2027-02-01T00:00:00Z", "2027-03-01T00:00:00Z"),
            ]
        );
        let all = missing(settings(PartitionInterval::Month, 1), now, &existing);
        assert!(all.is_empty(), "{all:?}");
    }

    #[test]
    fn a_new_interval_fills_only_the_gaps_the_old_partitions_leave() {
        // Monthly partitions up to December; daily from then on.
        let now = t("2026-11-29T09:00:00Z");
        let existing = [
            r("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
            r("2026-12-01T00:00:00Z", "2026-12-01T12:00:00Z"),
        ];
        assert_eq!(
            missing(settings(PartitionInterval::Day, 3), now, &existing),
            vec![
                r("2026-12-01T12:00:00Z", "2026-12-02T00:00:00Z"),
                r("2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z"),
            ]
        );
        // Back to months: the rest of December, then January.
        let existing = [
            r("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
            r("2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z"),
            r("2026-12-05T00:00:00Z", "2026-12-06T00:00:00Z"),
        ];
        assert_eq!(
            missing(settings(PartitionInterval::Month, 2), now, &existing),
            vec![
                r("2026-12-02T00:00:00Z", "2026-12-05T00:00:00Z"),
                r("2026-12-06T00:00:00Z", "2027-01-01T00:00:00Z"),
                r("2027-01-01T00:00:00Z", "2027-02-01T00:00:00Z"),
            ]
        );
        // A partition open to the future covers everything ahead.
        let open = [Range {
            from: t("2026-01-01T00:00:00Z"),
            to: DateTime::<Utc>::MAX_UTC,
        }];
        assert!(missing(settings(PartitionInterval::Week, 4), now, &open).is_empty());
    }

    #[test]
    fn retention_drops_only_partitions_wholly_older_than_the_cutoff() {
        let parts = vec![
            (
                "p11".to_string(),
                r("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
            ),
            (
                "p09".to_string(),
                r("2026-09-01T00:00:00Z", "2026-10-01T00:00:00Z"),
            ),
            (
                "p10".to_string(),
                r("2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z"),
            ),
        ];
        // 30 days before 2026-11-20 is 2026-10-21: October still holds
        // rows younger than that.
        let cut = cutoff(t("2026-11-20T09:00:00Z"), 30).unwrap();
        assert_eq!(expired(&parts, cut), vec!["p09"]);
        // A range ending exactly at the cutoff holds only older rows.
        assert_eq!(
            expired(&parts, t("2026-11-01T00:00:00Z")),
            vec!["p09", "p10"]
        );
        assert!(expired(&parts, t("2026-09-30T00:00:00Z")).is_empty());
        assert_eq!(cutoff(t("2026-11-20T09:00:00Z"), 0), None);
    }

    #[test]
    fn messages_and_receipts_are_kept_whatever_the_raw_retention() {
        let m = Maintenance {
            now: t("2026-11-20T09:00:00Z"),
            raw_events_retention_days: 30,
            processed_events_retention_days: 7,
            event_log_retention_days: 90,
            partitions: settings(PartitionInterval::Month, 3),
        };
        assert_eq!(m.retention_days("raw_events"), 30);
        assert_eq!(m.retention_days("event_log"), 90);
        assert_eq!(m.retention_days("messages"), 0);
        assert_eq!(m.retention_days("message_statuses"), 0);
    }
}
