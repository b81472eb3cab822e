//! `X-Hub-Signature-256` verification cost: a 1 KB and a 64 KB body, checked
//! against 1 configured secret and against 3 (the matching one last, so all
//! three HMACs run — the worst case during a secret rotation).
//!
//! Run: `cargo bench -p inlet --bench signature`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use inlet::signature::{sign, verify, SigningKey};

/// A body of exactly `len` bytes cut from a real fixture, repeated.
fn body(len: usize) -> Vec<u8> {
    let fixture = include_bytes!("../../../tests/fixtures/meta/wa_text.json");
    fixture.iter().copied().cycle().take(len).collect()
}

fn bench_verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("signature/verify");
    for (label, len) in [("1KB", 1024), ("64KB", 64 * 1024)] {
        let body = body(len);
        group.throughput(Throughput::Bytes(len as u64));
        for secrets in [1usize, 3] {
            let names: Vec<String> = (0..secrets).map(|i| format!("app-secret-{i}")).collect();
            let keys: Vec<SigningKey> = names
                .iter()
                .map(|s| SigningKey::new(s.as_bytes()))
                .collect();
            let header = sign(&body, names.last().expect("one secret at least").as_bytes());
            group.bench_with_input(
                BenchmarkId::new(label, format!("{secrets}-secrets")),
                &body,
                |b, body| {
                    b.iter(|| {
                        let matched = verify(black_box(body), Some(header.as_bytes()), &keys);
                        assert_eq!(matched, Ok(secrets - 1));
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
