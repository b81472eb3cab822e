//! The health of a deployment as an operator sees it: what `inlet status`
//! reports, the verdict it exits with, and the background sampler that
//! exports the same figures as Prometheus gauges.
//!
//! This is the answer to "a worker stalls silently while the gateway keeps
//! answering 200": stream lengths, pending entries, consumer activity, lag
//! and the DLQ are read straight from Redis and the store, so a stall shows
//! within one sampling interval (5 s) in the metrics and at once in `inlet
//! status`, whichever process is wedged.
//!
//! - [`report`]: the report's types (plain data, serialized by `--json`).
//! - [`gather`](mod@gather): reading Redis and the store into a report.
//! - [`judge`](mod@judge): the verdict and its reasons.
//! - [`sampler`]: the gauges, refreshed every [`SAMPLE_INTERVAL`].
//!
//! The terminal rendering of a report lives in the CLI (`inlet-cli`).

pub mod gather;
pub mod judge;
pub mod report;
pub mod sampler;

pub use gather::{connect_queue, gather, open_store, stall_threshold, ProbeError};
pub use judge::judge;
pub use report::{
    ConsumerStatus, DlqSize, GroupStatus, HaltStatus, Health, HeldEntry, LeadsStatus,
    OutboundStatus, QueueSnapshot, RedisStatus, SpoolStatus, StatusReport, StoreStatus,
    StreamStatus, Verdict,
};
pub use sampler::{sample, spawn_sampler, SampleSource, SAMPLE_INTERVAL};

/// The streams reported, in this order.
pub use crate::streams::REPORTED as STREAMS;
