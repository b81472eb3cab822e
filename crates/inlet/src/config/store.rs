//! `database_url` and `[database]`: which store, its pool, retention and
//! the time partitions of Postgres' growing tables.

use std::path::Path;

use serde::Deserialize;

use super::{invalid, non_empty, ConfigError};

/// Most partitions `database.partitions_ahead` may ask for (a year of days).
const MAX_PARTITIONS_AHEAD: u32 = 366;

#[derive(Debug, Deserialize)]
pub(super) struct RawDatabase {
    max_connections: u32,
    raw_events_retention_days: u32,
    processed_events_retention_days: u32,
    event_log_retention_days: u32,
    partition_interval: String,
    partitions_ahead: u32,
}

/// The store's keys, validated (flattened into [`super::Settings`]).
pub(super) struct Database {
    pub(super) url: String,
    pub(super) max_connections: u32,
    pub(super) raw_events_retention_days: u32,
    pub(super) processed_events_retention_days: u32,
    pub(super) event_log_retention_days: u32,
    pub(super) partitions: PartitionSettings,
}

/// The range one partition of a time-partitioned table covers (Postgres:
/// `raw_events`, `messages`, `message_statuses`, `event_log`), in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionInterval {
    /// One UTC day.
    Day,
    /// One ISO week, Monday to Monday.
    Week,
    /// One calendar month (the default).
    Month,
}

impl PartitionInterval {
    fn parse(key: &str, s: &str) -> Result<Self, ConfigError> {
        match s.trim() {
            "day" => Ok(PartitionInterval::Day),
            "week" => Ok(PartitionInterval::Week),
            "month" => Ok(PartitionInterval::Month),
            other => Err(invalid(key, format!("{other:?} is not day, week or month"))),
        }
    }

    /// Configured / displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionInterval::Day => "day",
            PartitionInterval::Week => "week",
            PartitionInterval::Month => "month",
        }
    }
}

/// How Postgres' time-partitioned tables are laid out
/// (`database.partition_interval`, `database.partitions_ahead`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSettings {
    /// The range of one partition.
    pub interval: PartitionInterval,
    /// Partitions the daily job keeps ready past the current one.
    pub ahead: u32,
}

impl RawDatabase {
    /// `url` is `database_url`; unset, it is a SQLite file in `data_dir`.
    pub(super) fn validate(
        self,
        url: Option<String>,
        data_dir: &Path,
    ) -> Result<Database, ConfigError> {
        let url = match non_empty(url) {
            Some(url) => {
                let ok = ["postgres://", "postgresql://", "sqlite:"]
                    .iter()
                    .any(|p| url.starts_with(p));
                if !ok {
                    return Err(invalid(
                        "database_url",
                        "must start with postgres://, postgresql:// or sqlite:",
                    ));
                }
                url
            }
            None => format!("sqlite://{}", data_dir.join("inlet.db").display()),
        };
        if !(1..=MAX_PARTITIONS_AHEAD).contains(&self.partitions_ahead) {
            return Err(invalid(
                "database.partitions_ahead",
                format!(
                    "must be between 1 and {MAX_PARTITIONS_AHEAD} (partitions past the current one)"
                ),
            ));
        }
        Ok(Database {
            url,
            max_connections: self.max_connections.max(1),
            raw_events_retention_days: self.raw_events_retention_days,
            processed_events_retention_days: self.processed_events_retention_days,
            event_log_retention_days: self.event_log_retention_days,
            partitions: PartitionSettings {
                interval: PartitionInterval::parse(
                    "database.partition_interval",
                    &self.partition_interval,
                )?,
                ahead: self.partitions_ahead,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_for_test;

    #[test]
    fn partitions_default_to_three_months_ahead_and_keeping_the_event_log() {
        let s = load_for_test(&[]).unwrap();
        assert_eq!(
            s.partitions,
            PartitionSettings {
                interval: PartitionInterval::Month,
                ahead: 3
            }
        );
        assert_eq!(s.event_log_retention_days, 0);
        assert_eq!(s.raw_events_retention_days, 30);
    }

    #[test]
    fn partition_keys_are_read_from_the_environment() {
        let s = load_for_test(&[
            ("INLET_DATABASE__PARTITION_INTERVAL", "day"),
            ("INLET_DATABASE__PARTITIONS_AHEAD", "14"),
            ("INLET_DATABASE__EVENT_LOG_RETENTION_DAYS", "90"),
        ])
        .unwrap();
        assert_eq!(s.partitions.interval, PartitionInterval::Day);
        assert_eq!(s.partitions.ahead, 14);
        assert_eq!(s.event_log_retention_days, 90);
    }

    #[test]
    fn bad_partition_keys_are_named() {
        for (var, value, key) in [
            (
                "INLET_DATABASE__PARTITION_INTERVAL",
                "year",
                "database.partition_interval",
            ),
            (
                "INLET_DATABASE__PARTITIONS_AHEAD",
                "0",
                "database.partitions_ahead",
            ),
            (
                "INLET_DATABASE__PARTITIONS_AHEAD",
                "1000",
                "database.partitions_ahead",
            ),
        ] {
            match load_for_test(&[(var, value)]) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{var}={value}"),
                other => panic!("{var}={value}: {other:?}"),
            }
        }
    }
}
