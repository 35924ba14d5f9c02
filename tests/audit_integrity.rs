//! Audit integrity (issue 8): every modification, deletion, insertion and
//! reordering of a real rollout's audit chain, at every position, is
//! detected. The test prints how many tamperings it tried and detected.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use relay::{verify_chain, AuditEntry, AuditSink, RolloutSpec};

/// Ways to change one entry's content.
fn modifications(e: &AuditEntry) -> Vec<(&'static str, AuditEntry)> {
    let with = |f: &dyn Fn(&mut AuditEntry)| {
        let mut c = e.clone();
        f(&mut c);
        c
    };
    vec![
        ("actor", with(&|c| c.event.actor.push('x'))),
        ("action", with(&|c| c.event.action.push_str(".forged"))),
        ("time", with(&|c| c.event.at_ms += 1)),
        ("rollout", with(&|c| c.event.rollout.push('x'))),
        (
            "detail",
            with(&|c| c.event.detail = serde_json::json!({"approved_by": "mallory"}).into()),
        ),
        ("seq", with(&|c| c.seq += 1)),
        ("hash", with(&|c| c.hash = "f".repeat(64))),
        ("prev_hash", with(&|c| c.prev_hash = "f".repeat(64))),
    ]
}

#[tokio::test(start_paused = true)]
async fn every_tampering_at_every_position_is_detected() {
    let (_w, relay) = World::with_v1(401).await;
    run(&relay, RolloutSpec::new("web", release("v3"), canary())).await;
    let entries = relay.audit().entries().await.unwrap();
    let n = entries.len();
    assert!(n > 10, "{n}");
    let head = verify_chain(&entries, None).unwrap();

    let mut tried = 0;
    let mut detected = 0;
    let mut check = |what: String, chain: Vec<AuditEntry>| {
        tried += 1;
        // Deleting the last entries is only visible against the head the
        // sink keeps; everything else breaks the chain itself.
        if verify_chain(&chain, Some(&head)).is_err() {
            detected += 1;
        } else {
            panic!("not detected: {what}");
        }
    };
    for i in 0..n {
        for (field, changed) in modifications(&entries[i]) {
            let mut c = entries.clone();
            c[i] = changed;
            check(format!("{field} of entry {i} modified"), c);
        }
        let mut c = entries.clone();
        c.remove(i);
        check(format!("entry {i} deleted"), c);
        let mut c = entries.clone();
        c.insert(i, entries[(i + 1) % n].clone());
        check(format!("a copy of entry {} inserted at {i}", (i + 1) % n), c);
        if i + 1 < n {
            let mut c = entries.clone();
            c.swap(i, i + 1);
            check(format!("entries {i} and {} swapped", i + 1), c);
        }
    }
    eprintln!("audit integrity: {detected}/{tried} tamperings of a {n}-entry chain detected");
    assert_eq!(detected, tried);
}
