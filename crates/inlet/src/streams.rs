//! Every Redis stream and consumer-group name Inlet uses, in one place.
//!
//! Names are without the configured key prefix (`stream_prefix`, default
//! `inlet:`); [`crate::queue::RedisQueue::key`] adds it. The stream *format*
//! of each lives with the type it carries (raw envelope, dead letter, event,
//! cache job).

/// Verified raw deliveries, written by the gateway, read by the workers.
pub const INCOMING_RAW: &str = "incoming.raw";
/// Normalized items, for downstream consumers (relayed from the outbox).
pub const INCOMING_NORMALIZED: &str = "incoming.normalized";
/// Dead letters of the ingest pipeline.
pub const DLQ: &str = "dlq";
/// Cache rewrite jobs.
pub const CACHE_SYNC: &str = "cache.sync";
/// Committed write events (the event bus across processes).
pub const EVENTS: &str = "events";
/// Outbound send commands: every command stored through the API (relayed
/// from the outbox), and commands other systems append directly; read by
/// the sender's intake, which stores the new ones. Never trimmed.
pub const OUTGOING_COMMAND: &str = "outgoing.command";
/// Media jobs: one per attachment of a newly stored inbound message
/// (relayed from the outbox); read by the media consumers, which download,
/// verify and store the file.
pub const MEDIA_PROCESSING: &str = "media.processing";
/// Lead jobs: one per newly stored `leadgen` page change (relayed from the
/// outbox, or queued by `inlet leads refetch`); read by the lead consumers,
/// which fetch the lead from Graph and store it.
pub const LEAD_FETCH: &str = "lead.fetch";

/// Consumer group of the workers on [`INCOMING_RAW`].
pub const WORKER_GROUP: &str = "workers";
/// Consumer group of the cache-sync consumers on [`CACHE_SYNC`].
pub const CACHE_GROUP: &str = "cache-sync";
/// Consumer group of the sender's intake on [`OUTGOING_COMMAND`].
pub const OUTGOING_GROUP: &str = "sender-intake";
/// Consumer group of the media consumers on [`MEDIA_PROCESSING`].
pub const MEDIA_GROUP: &str = "media";
/// Consumer group of the lead consumers on [`LEAD_FETCH`].
pub const LEAD_GROUP: &str = "leads";
/// Prefix of the consumer group of each event-bus handler on [`EVENTS`]
/// (`bus.{handler}`).
pub const BUS_GROUP_PREFIX: &str = "bus.";

/// The consumer group of an event-bus handler.
pub fn bus_group(handler: &str) -> String {
    format!("{BUS_GROUP_PREFIX}{handler}")
}

/// The streams `inlet status` reports, in this order.
pub const REPORTED: [&str; 8] = [
    INCOMING_RAW,
    INCOMING_NORMALIZED,
    CACHE_SYNC,
    EVENTS,
    OUTGOING_COMMAND,
    MEDIA_PROCESSING,
    LEAD_FETCH,
    DLQ,
];
