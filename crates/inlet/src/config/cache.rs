//! `[cache]`: the JSON cache files and the analytics summary.

use std::time::Duration;

use serde::Deserialize;

/// Cache and analytics behaviour.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Conversations kept in `conversations.json`.
    pub conversations_limit: usize,
    /// Messages kept per `conversations/{id}.json`.
    pub messages_limit: usize,
    /// Window in which cache jobs for the same key are coalesced.
    pub coalesce_window: Duration,
    /// A cache file older than this is served and refreshed in background.
    pub ttl: Duration,
    /// Interval of the full rebuild (0 = never).
    pub rebuild_interval: Duration,
    /// Least time between two rewrites of `analytics/summary.json` by the
    /// cache-sync consumers (its queries scan the last 30 days, so during a
    /// backlog it is not recomputed every coalescing window); 0 = no limit.
    pub summary_interval: Duration,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawCache {
    conversations_limit: usize,
    messages_limit: usize,
    coalesce_window_ms: u64,
    ttl_ms: u64,
    rebuild_interval_s: u64,
    summary_interval_ms: u64,
}

impl RawCache {
    /// Every value is valid (0 switches a limit or interval off).
    pub(super) fn validate(self) -> CacheSettings {
        CacheSettings {
            conversations_limit: self.conversations_limit,
            messages_limit: self.messages_limit,
            coalesce_window: Duration::from_millis(self.coalesce_window_ms),
            ttl: Duration::from_millis(self.ttl_ms),
            rebuild_interval: Duration::from_secs(self.rebuild_interval_s),
            summary_interval: Duration::from_millis(self.summary_interval_ms),
        }
    }
}
