//! `[worker]`: the consumer of the raw stream.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, non_empty, positive, ConfigError};

/// Worker behaviour.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Entries per `XREADGROUP`.
    pub batch_size: usize,
    /// Consumer loops in one worker process, each with a batch in flight, so
    /// one batch is read and normalized while another commits.
    pub concurrency: usize,
    /// How long one `XREADGROUP` blocks waiting for entries.
    pub block: Duration,
    /// Pending entries idle this long are reclaimed from dead consumers.
    pub claim_idle: Duration,
    /// Attempts before an event is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Multiplier between retry delays.
    pub backoff_factor: f64,
    /// Consumer name; defaults to host name + process id.
    pub consumer_name: Option<String>,
    /// Apply migrations when the worker starts.
    pub migrate_on_start: bool,
    /// Address of the worker's `/metrics` + `/healthz` listener; `None` =
    /// no listener (and no stream sampler in the worker).
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawWorker {
    batch_size: usize,
    concurrency: usize,
    block_ms: u64,
    claim_idle_ms: u64,
    max_attempts: u32,
    backoff_base_ms: u64,
    backoff_factor: f64,
    #[serde(default)]
    consumer_name: Option<String>,
    migrate_on_start: bool,
    #[serde(default)]
    metrics_listen: Option<String>,
}

impl RawWorker {
    pub(super) fn validate(self) -> Result<WorkerSettings, ConfigError> {
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err(invalid("worker.batch_size", "must be between 1 and 10000"));
        }
        if self.concurrency == 0 || self.concurrency > 64 {
            return Err(invalid("worker.concurrency", "must be between 1 and 64"));
        }
        if self.max_attempts == 0 {
            return Err(invalid("worker.max_attempts", "must be at least 1"));
        }
        if !(self.backoff_factor >= 1.0 && self.backoff_factor.is_finite()) {
            return Err(invalid("worker.backoff_factor", "must be a number >= 1"));
        }
        let metrics_listen = non_empty(self.metrics_listen)
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|e| {
                    invalid(
                        "worker.metrics_listen",
                        format!("{a:?} is not a host:port address (empty = off): {e}"),
                    )
                })
            })
            .transpose()?;
        Ok(WorkerSettings {
            batch_size: self.batch_size,
            concurrency: self.concurrency,
            block: Duration::from_millis(self.block_ms),
            claim_idle: Duration::from_millis(positive(
                "worker.claim_idle_ms",
                self.claim_idle_ms,
            )?),
            max_attempts: self.max_attempts,
            backoff_base: Duration::from_millis(self.backoff_base_ms),
            backoff_factor: self.backoff_factor,
            consumer_name: non_empty(self.consumer_name),
            migrate_on_start: self.migrate_on_start,
            metrics_listen,
        })
    }
}
