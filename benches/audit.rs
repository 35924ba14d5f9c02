//! Audit chain verification at scale.
//!
//! - `verify_chain_100k`: check the hash chain of 100,000 entries in memory.
//! - `jsonl_open_100k`: open a 100,000-entry JSONL log from disk, which
//!   reads, parses and verifies every line.
//!
//! `cargo bench --bench audit`
#![allow(missing_docs, clippy::unwrap_used)]

use std::io::Write;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use relay::audit::ChainHead;
use relay::{
    audit::{verify_chain, AuditEntry, AuditEvent},
    JsonlAuditSink,
};

const N: u64 = 100_000;

fn chain() -> Vec<AuditEntry> {
    let mut head = ChainHead::default();
    (0..N)
        .map(|i| {
            head.seal(AuditEvent {
                at_ms: 1_700_000_000_000 + i as i64,
                actor: "relay-bench".into(),
                rollout: format!("web-{}", i / 20),
                action: "target.route".into(),
                detail: serde_json::json!({"weights": {"rev-a": 75, "rev-b": 25}, "step": i % 20}).into(),
            })
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let entries = chain();
    let mut g = c.benchmark_group("audit");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N));
    g.bench_function("verify_chain_100k", |b| {
        b.iter(|| verify_chain(&entries, None).unwrap());
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for e in &entries {
        serde_json::to_writer(&mut f, e).unwrap();
        f.write_all(b"\n").unwrap();
    }
    f.flush().unwrap();
    drop(f);
    g.bench_function("jsonl_open_100k", |b| {
        b.iter(|| JsonlAuditSink::open(&path).unwrap());
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
