//! `redis_url`, `stream_prefix` and `[redis]`: whether there is a Redis, the
//! prefix of every key, and how the client behaves.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, non_empty, positive, ConfigError};

/// Redis client behaviour.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Connect timeout and per-command response timeout.
    pub timeout: Duration,
    /// How often the gateway probes Redis while in direct mode.
    pub probe_interval: Duration,
    /// Approximate cap on derived streams (normalized, cache jobs) so they
    /// cannot grow without bound. The raw stream and the DLQ are never capped.
    pub derived_stream_maxlen: usize,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawRedis {
    timeout_ms: u64,
    probe_interval_ms: u64,
    derived_stream_maxlen: usize,
}

/// `redis_url`: unset or empty means no Redis (direct mode).
pub(super) fn redis_url(raw: Option<String>) -> Result<Option<String>, ConfigError> {
    let url = non_empty(raw);
    if let Some(url) = &url {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(invalid(
                "redis_url",
                "must start with redis:// or rediss://",
            ));
        }
    }
    Ok(url)
}

/// `stream_prefix`: non-empty, no spaces.
pub(super) fn stream_prefix(raw: String) -> Result<String, ConfigError> {
    if raw.is_empty() || raw.contains(char::is_whitespace) {
        return Err(invalid(
            "stream_prefix",
            "must be non-empty and contain no spaces",
        ));
    }
    Ok(raw)
}

impl RawRedis {
    pub(super) fn validate(self) -> Result<RedisSettings, ConfigError> {
        Ok(RedisSettings {
            timeout: Duration::from_millis(positive("redis.timeout_ms", self.timeout_ms)?),
            probe_interval: Duration::from_millis(positive(
                "redis.probe_interval_ms",
                self.probe_interval_ms,
            )?),
            derived_stream_maxlen: self.derived_stream_maxlen,
        })
    }
}
