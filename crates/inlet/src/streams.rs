//! Every Redis stream and consumer-group name Inlet uses, in one place.
//!
//! Names are without the configured key prefix (`stream_prefix`, default
//! `inlet:`); [`crate::queue::RedisQueue::key`] adds it. The stream *format*
//! of each lives with the type it carries (raw envelope, dead letter, event,
//! cache job).

/// Verified raw deliveries, written by the gateway, read by the workers.
/// With `redis.raw_shards` > 1 this is shard 0 and the others are
/// `incoming.raw.1` … (see [`raw_shard_names`]).
pub const INCOMING_RAW: &str = "incoming.raw";
/// A set of every raw shard stream a gateway appends to, so that workers
/// also drain shards their own `redis.raw_shards` does not name (after N
/// changed).
pub const RAW_SHARDS: &str = "incoming.raw.shards";
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

/// Whether a stream is a shard of `incoming.raw`.
pub fn is_raw(name: &str) -> bool {
    name == INCOMING_RAW
        || (name != RAW_SHARDS
            && name
                .strip_prefix(INCOMING_RAW)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit())))
}

/// Number of Redis Cluster hash slots.
pub const CLUSTER_SLOTS: u16 = 16384;

/// The Redis Cluster hash slot of a hash tag (CRC-16/XMODEM modulo 16384,
/// as Redis computes it).
pub fn cluster_slot(tag: &str) -> u16 {
    const CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);
    CRC.checksum(tag.as_bytes()) % CLUSTER_SLOTS
}

/// The stream names of `n` raw shards, shard 0 first.
///
/// Single Redis: `incoming.raw`, `incoming.raw.1`, …, so that raising N
/// keeps the existing stream as shard 0. Redis Cluster (where each name is
/// the key's hash tag): shard `i` of `n` is `incoming.raw.{i}` (shard 0 of
/// one: `incoming.raw`), or, when that name's slot lies outside the `i`-th
/// of `n` equal slot ranges, the first `incoming.raw.{i}.{k}` inside it. A
/// cluster whose masters own equal slot ranges (what `redis-cli --cluster
/// create` makes) thus holds one shard per master when N equals the number
/// of masters, instead of leaving the spread to chance.
pub fn raw_shard_names(n: usize, cluster: bool) -> Vec<String> {
    let n = n.max(1);
    (0..n)
        .map(|i| {
            let base = if i == 0 {
                INCOMING_RAW.to_string()
            } else {
                format!("{INCOMING_RAW}.{i}")
            };
            if !cluster || n == 1 {
                return base;
            }
            let band =
                |name: &str| usize::from(cluster_slot(name)) * n / usize::from(CLUSTER_SLOTS);
            if band(&base) == i {
                return base;
            }
            (1u32..)
                .map(|k| format!("{INCOMING_RAW}.{i}.{k}"))
                .find(|name| band(name) == i)
                .expect("a name in every slot band")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` of Redis 7.
        assert_eq!(cluster_slot("foo"), 12182);
        assert_eq!(cluster_slot("123456789"), 12739);
        assert_eq!(cluster_slot(""), 0);
    }

    #[test]
    fn single_redis_names_keep_shard_zero() {
        assert_eq!(raw_shard_names(1, false), vec!["incoming.raw"]);
        assert_eq!(raw_shard_names(0, true), vec!["incoming.raw"]);
        assert_eq!(
            raw_shard_names(3, false),
            vec!["incoming.raw", "incoming.raw.1", "incoming.raw.2"]
        );
    }

    #[test]
    fn cluster_names_fall_in_their_own_slot_band() {
        for n in [2usize, 3, 4, 6, 16] {
            let names = raw_shard_names(n, true);
            assert_eq!(names.len(), n);
            for (i, name) in names.iter().enumerate() {
                let band = usize::from(cluster_slot(name)) * n / 16384;
                assert_eq!(band, i, "{name} of {n}");
                assert!(is_raw(name), "{name}");
            }
        }
    }

    #[test]
    fn raw_streams_are_recognised() {
        assert!(is_raw("incoming.raw"));
        assert!(is_raw("incoming.raw.2"));
        assert!(is_raw("incoming.raw.2.7"));
        assert!(!is_raw(RAW_SHARDS));
        assert!(!is_raw("incoming.rawx"));
        assert!(!is_raw("incoming.normalized"));
    }
}
