//! Cost of routing a delivery to its raw shard (`inlet::shard::shard_of`
//! with `redis.raw_shards = 3`): the partial parse of the body that the
//! gateway adds to every delivery when the raw stream is sharded.
//!
//! Run: `cargo bench -p inlet --bench shard`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use inlet::envelope::{RawEvent, Source};

const FIXTURES: [&str; 4] = [
    "wa_text.json",
    "wa_status_delivered.json",
    "wa_batch_multi.json",
    "fb_message_text.json",
];

fn bench_shard(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/meta");
    let mut group = c.benchmark_group("shard_of");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    for name in FIXTURES {
        let bytes = std::fs::read(dir.join(name)).expect("fixture is readable");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        let event = RawEvent::new(Source::Whatsapp, "default", bytes.into());
        group.bench_with_input(BenchmarkId::from_parameter(name), &event, |b, event| {
            b.iter(|| black_box(inlet::shard::shard_of(black_box(event), 3)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_shard);
criterion_main!(benches);
