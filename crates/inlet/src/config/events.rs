//! `[events]`: which write events are produced, the handlers' limits and
//! the outgoing webhooks' retries.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, positive, ConfigError, StringList};

/// Event bus behaviour (`[events]`).
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// Which write events are produced.
    pub filter: crate::events::EventFilter,
    /// Longest a handler may take per event.
    pub handler_timeout: Duration,
    /// Attempts per handler and event before it is recorded as failed.
    pub handler_max_attempts: u32,
    /// First retry delay of a handler (doubles each attempt).
    pub handler_backoff: Duration,
    /// Delays between outgoing-webhook attempts (its length + 1 attempts).
    pub webhook_retry_schedule: Vec<Duration>,
    /// Consecutive failed events after which a subscription is disabled.
    pub webhook_disable_after: u32,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawEvents {
    enabled: bool,
    #[serde(default)]
    disabled_entities: StringList,
    handler_timeout_ms: u64,
    handler_max_attempts: u32,
    handler_backoff_ms: u64,
    #[serde(default)]
    webhook_retry_schedule_ms: StringList,
    webhook_disable_after: u32,
}

impl RawEvents {
    pub(super) fn validate(self) -> Result<EventSettings, ConfigError> {
        Ok(EventSettings {
            filter: crate::events::EventFilter {
                enabled: self.enabled,
                disabled_entities: self.disabled_entities.into_vec().into_iter().collect(),
            },
            handler_timeout: Duration::from_millis(positive(
                "events.handler_timeout_ms",
                self.handler_timeout_ms,
            )?),
            handler_max_attempts: self.handler_max_attempts.max(1),
            handler_backoff: Duration::from_millis(self.handler_backoff_ms),
            webhook_retry_schedule: self
                .webhook_retry_schedule_ms
                .into_vec()
                .iter()
                .map(|v| {
                    v.parse::<u64>().map(Duration::from_millis).map_err(|_| {
                        invalid(
                            "events.webhook_retry_schedule_ms",
                            format!("{v:?} is not a number of milliseconds"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            webhook_disable_after: self.webhook_disable_after.max(1),
        })
    }
}
