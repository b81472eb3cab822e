//! `database_url` and `[database]`: which store, its pool and retention.

use std::path::Path;

use serde::Deserialize;

use super::{invalid, non_empty, ConfigError};

#[derive(Debug, Deserialize)]
pub(super) struct RawDatabase {
    max_connections: u32,
    raw_events_retention_days: u32,
    processed_events_retention_days: u32,
}

/// The store's keys, validated (flattened into [`super::Settings`]).
pub(super) struct Database {
    pub(super) url: String,
    pub(super) max_connections: u32,
    pub(super) raw_events_retention_days: u32,
    pub(super) processed_events_retention_days: u32,
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
        Ok(Database {
            url,
            max_connections: self.max_connections.max(1),
            raw_events_retention_days: self.raw_events_retention_days,
            processed_events_retention_days: self.processed_events_retention_days,
        })
    }
}
