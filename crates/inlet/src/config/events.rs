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
    /// `GET /api/events/stream`: how often the event log is read for new
    /// rows.
    pub stream_poll: Duration,
    /// Interval of the stream's heartbeat comment lines.
    pub stream_heartbeat: Duration,
    /// Events that may wait for one stream client.
    pub stream_buffer: usize,
    /// A stream client that takes none of its waiting events for this long
    /// is disconnected (it resumes with `Last-Event-ID`).
    pub stream_stall: Duration,
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
    stream_poll_ms: u64,
    stream_heartbeat_ms: u64,
    stream_buffer: usize,
    stream_stall_ms: u64,
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
            stream_poll: Duration::from_millis(positive(
                "events.stream_poll_ms",
                self.stream_poll_ms,
            )?),
            stream_heartbeat: Duration::from_millis(positive(
                "events.stream_heartbeat_ms",
                self.stream_heartbeat_ms,
            )?),
            stream_buffer: usize::try_from(positive(
                "events.stream_buffer",
                self.stream_buffer as u64,
            )?)
            .unwrap_or(usize::MAX),
            stream_stall: Duration::from_millis(positive(
                "events.stream_stall_ms",
                self.stream_stall_ms,
            )?),
        })
    }
}
