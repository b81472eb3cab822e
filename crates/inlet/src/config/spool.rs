//! `[spool]`: the gateway's local spool, the last place an event is kept
//! when neither Redis nor the store can take it.

use std::time::Duration;

use serde::Deserialize;

use super::{positive, ConfigError};

/// The local spool (`[spool]`).
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// Keep events in the spool when Redis and the store both fail (else
    /// 503).
    pub enabled: bool,
    /// Bytes waiting in the spool at most; past it the gateway answers 503.
    pub max_bytes: u64,
    /// How often the gateway tries to drain a non-empty spool.
    pub drain_interval: Duration,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawSpool {
    enabled: bool,
    max_bytes: u64,
    drain_interval_ms: u64,
}

impl RawSpool {
    pub(super) fn validate(self) -> Result<SpoolSettings, ConfigError> {
        Ok(SpoolSettings {
            enabled: self.enabled,
            max_bytes: positive("spool.max_bytes", self.max_bytes)?,
            drain_interval: Duration::from_millis(positive(
                "spool.drain_interval_ms",
                self.drain_interval_ms,
            )?),
        })
    }
}
