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
    /// Redis Cluster: `redis_url` lists seed nodes, keys carry hash tags.
    pub cluster: bool,
    /// Number of `incoming.raw` shards (at least 1).
    pub raw_shards: usize,
}

/// Most raw shards: each is a consumer loop per worker loop and a stream to
/// watch; more than a cluster has masters brings nothing.
pub const MAX_RAW_SHARDS: usize = 1024;

#[derive(Debug, Deserialize)]
pub(super) struct RawRedis {
    timeout_ms: u64,
    probe_interval_ms: u64,
    derived_stream_maxlen: usize,
    cluster: bool,
    raw_shards: usize,
}

/// `redis_url`: unset or empty means no Redis (direct mode). With
/// `redis.cluster`, one or more comma-separated seed node URLs.
pub(super) fn redis_url(raw: Option<String>, cluster: bool) -> Result<Option<String>, ConfigError> {
    let url = non_empty(raw);
    if let Some(url) = &url {
        let urls: Vec<&str> = url.split(',').map(str::trim).collect();
        if urls.len() > 1 && !cluster {
            return Err(invalid(
                "redis_url",
                "lists several URLs: set redis.cluster = true (INLET_REDIS__CLUSTER=true) for a Redis Cluster",
            ));
        }
        if urls
            .iter()
            .any(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
        {
            return Err(invalid(
                "redis_url",
                "must start with redis:// or rediss:// (each seed node URL, with redis.cluster)",
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
    /// `redis.cluster`, which `redis_url`'s validation depends on.
    pub(super) fn cluster(&self) -> bool {
        self.cluster
    }

    pub(super) fn validate(self) -> Result<RedisSettings, ConfigError> {
        Ok(RedisSettings {
            timeout: Duration::from_millis(positive("redis.timeout_ms", self.timeout_ms)?),
            probe_interval: Duration::from_millis(positive(
                "redis.probe_interval_ms",
                self.probe_interval_ms,
            )?),
            derived_stream_maxlen: self.derived_stream_maxlen,
            cluster: self.cluster,
            raw_shards: if (1..=MAX_RAW_SHARDS).contains(&self.raw_shards) {
                self.raw_shards
            } else {
                return Err(invalid(
                    "redis.raw_shards",
                    format!("must be between 1 and {MAX_RAW_SHARDS}"),
                ));
            },
        })
    }
}
