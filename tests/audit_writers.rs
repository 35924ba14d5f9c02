//! Many writers, one chain: real OS processes append to one JSONL audit log
//! at the same time (as one `relayctl` per CI job does on a shared state
//! directory), and the log must come out as one intact chain holding every
//! entry each of them appended, in each writer's order.
//!
//! A test binary of its own (no libtest harness): run with no environment
//! it is the parent, which starts `RELAY_AUDIT_WRITERS` copies of itself
//! (4 by default) as writers of `RELAY_AUDIT_ENTRIES` entries each (250),
//! releases them at once, then checks the log. It prints what it found.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use relay::{audit::AuditEvent, AuditSink, JsonlAuditSink};

/// Set in a writer's environment: `<log path>|<writer number>|<entries>`.
const WRITER: &str = "RELAY_AUDIT_WRITER";

fn main() {
    match std::env::var(WRITER) {
        Ok(spec) => write(&spec),
        Err(_) => check(),
    }
}

fn count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A writer: wait for the start file, then append its entries one by one.
fn write(spec: &str) {
    let mut parts = spec.split('|');
    let (path, writer, entries) = (
        PathBuf::from(parts.next().unwrap()),
        parts.next().unwrap().parse::<usize>().unwrap(),
        parts.next().unwrap().parse::<usize>().unwrap(),
    );
    let go = path.with_extension("go");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !go.exists() {
        assert!(Instant::now() < deadline, "never released");
        std::thread::sleep(Duration::from_millis(1));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sink = JsonlAuditSink::open(&path).unwrap();
        for i in 0..entries {
            let event = AuditEvent {
                at_ms: i as i64,
                actor: format!("writer-{writer}"),
                rollout: format!("r-{writer}"),
                action: "test.append".into(),
                detail: serde_json::json!({"writer": writer, "i": i}).into(),
            };
            sink.append(&event).await.unwrap();
        }
    });
}

/// The parent: start the writers, release them together, check the log.
fn check() {
    let (writers, entries) = (count("RELAY_AUDIT_WRITERS", 4), count("RELAY_AUDIT_ENTRIES", 250));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let started = Instant::now();
    let children: Vec<_> = (0..writers)
        .map(|w| {
            Command::new(std::env::current_exe().unwrap())
                .env(WRITER, format!("{}|{w}|{entries}", path.display()))
                .spawn()
                .unwrap()
        })
        .collect();
    std::fs::write(path.with_extension("go"), b"").unwrap();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a writer failed");
    }
    let took = started.elapsed();
    let (seen, switches) = read_back(&path, writers, entries);
    println!(
        "audit writers: {writers} processes x {entries} entries in {took:.1?}: {seen} entries in one chain, 0 lost, \
         the writer changed {switches} times along the chain"
    );
    // Released together, fsyncing each entry, they take turns.
    assert!(
        switches > writers,
        "the writers did not run at once ({switches} changes)"
    );
}

/// Open and verify the log; every writer's entries must be there once, in
/// its order. Returns the number of entries and how often the writer
/// changed from one entry to the next.
fn read_back(path: &Path, writers: usize, entries: usize) -> (u64, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sink = JsonlAuditSink::open(path).unwrap();
        let n = sink.verify().await.unwrap();
        assert_eq!(n, (writers * entries) as u64, "entries lost or duplicated");
        let mut next: BTreeMap<u64, u64> = BTreeMap::new();
        let mut switches = 0;
        let mut last = None;
        for e in sink.entries().await.unwrap() {
            let d = e.event.detail.to_value();
            let (w, i) = (d["writer"].as_u64().unwrap(), d["i"].as_u64().unwrap());
            let expected = next.entry(w).or_default();
            assert_eq!(i, *expected, "writer {w}'s entries out of order at seq {}", e.seq);
            *expected += 1;
            if last.is_some_and(|l| l != w) {
                switches += 1;
            }
            last = Some(w);
        }
        assert!(next.values().all(|n| *n == entries as u64), "{next:?}");
        (n, switches)
    })
}
