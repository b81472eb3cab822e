//! Inlet: fast, lossless ingest of Meta webhooks (WhatsApp Cloud API,
//! Messenger, Instagram).
//!
//! # Layout
//! - [`config`]: layered settings (`config/default.toml`, `INLET_CONFIG`,
//!   `INLET_*`), one file per section; loading only validates,
//!   [`config::Settings::prepare`] does the side effects (data directory,
//!   development secret).
//! - [`signature`]: `X-Hub-Signature-256` verification over the raw bytes.
//! - [`envelope`]: the raw delivery as it travels and is kept.
//! - [`model`]: the normalized domain types every other module speaks.
//! - [`normalize`]: pure functions turning a webhook body into model items.
//! - [`plan`]: the pure write plan of a batch (rows, dedup, status folding).
//! - [`backoff`]: the one retry delay (exponential, capped, full jitter).
//! - [`streams`]: every Redis stream and consumer-group name.
//! - [`queue`]: Redis Streams: connection and appends, the shared
//!   consumer-group protocol (`queue::consumer`), introspection.
//! - [`ingest`]: durable acceptance in queue or direct mode.
//! - [`pipeline`]: normalize + store + dead-letter, shared by both modes.
//! - [`worker`]: the queue-mode consumer of the raw stream.
//! - [`direct`]: the in-process, group-committing pipeline of direct mode.
//! - [`dlq`]: the dead letter and its wire format ([`dlq::letter`]);
//!   dead-letter inspection and replay (stream and store).
//! - [`events`]: write events (`{entity}.{phase}.{operation}`, phase and
//!   operation as enums), derived purely, and their wire format on the
//!   events stream.
//! - [`bus`]: the event bus (in-memory and Redis Streams) and built-in handlers.
//! - [`webhooks`]: outgoing signed webhooks and the Slack formatter.
//! - [`relay`]: the outbox relay to the derived Redis streams.
//! - [`cache`]: JSON cache files, cache-sync consumer, precomputed analytics.
//! - [`jobs`]: the shared runners of background jobs (queue-mode consumer,
//!   direct-mode sink) that media downloads and lead fetches plug into.
//! - [`media`]: the media pipeline (download, verify, content-addressed
//!   storage local or S3, outbound uploads).
//! - [`leads`]: Lead Ads (`GET /{leadgen_id}` for every stored `leadgen`
//!   change, queue and direct mode).
//! - [`audit`]: JSONL audit lines, daily files per service; reading them
//!   back ([`audit::query`]: merge, filter, trace, follow).
//! - [`http`]: the gateway's router, handlers and server.
//! - [`service`]: wiring of the gateway and worker services.
//! - [`store`]: the storage trait and its Postgres/SQLite implementation.
//! - [`telemetry`]: tracing, Prometheus recorder, shutdown signal.
//! - [`status`]: deployment health (`inlet status`): the report's types
//!   ([`status::report`]), gathering ([`status::gather`](mod@status::gather)),
//!   the verdict ([`status::judge`](mod@status::judge)) and the gauges
//!   sampler ([`status::sampler`]). Rendering for a terminal is the CLI's.
//! - [`sender`]: the outbound sender (Graph client, shared limiter, the
//!   claim → pace → send → record loop).
//! - [`drafts`]: AI drafts with human approval (create, approve, reject),
//!   shared by the API and the CLI.
//! - [`feed`]: live readers of the event log (`GET /api/events/stream`).
//! - [`sync`]: the scheduled Graph sync (hourly ad insights, conversation
//!   backfill) under leases, with its state.
//! - [`spool`]: the gateway's local spool (group-committed, fsynced
//!   appends; ordered, resumable drain) for when Redis and the store fail.
//! - [`graph`]: the Graph read client (JSON GETs, paging, usage pacing)
//!   of the lead fetcher and the scheduled sync.

pub mod audit;
pub mod backoff;
pub mod bus;
pub mod cache;
pub mod config;
pub mod direct;
pub mod dlq;
pub mod drafts;
pub mod envelope;
pub mod events;
pub mod feed;
pub mod graph;
pub mod http;
pub mod ingest;
pub mod jobs;
#[cfg(test)]
mod layers;
pub mod leads;
pub mod media;
pub mod model;
pub mod normalize;
pub mod outbound;
pub mod pipeline;
pub mod plan;
pub mod queue;
pub mod relay;
pub mod sender;
pub mod service;
pub mod shard;
pub mod signature;
pub mod spool;
pub mod status;
pub mod store;
pub mod streams;
pub mod sync;
pub mod telemetry;
pub mod webhooks;
pub mod worker;

pub use secrecy::{ExposeSecret, SecretString};
