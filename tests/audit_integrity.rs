//! Audit integrity (issue 8): every modification, deletion, insertion and
//! reordering of a real rollout's audit chain, at every position, is
//! detected. The test prints how many tamperings it tried and detected.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use relay::{
    audit::{verify_chain, AuditEntry},
    AuditSink, RolloutSpec,
};

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

/// `entries` with entry `i` changed by `edit` and every entry from it on
/// hashed again with `key` (`None`: unkeyed): what a forger who can write
/// the log does to make a change verify.
fn rechained(
    entries: &[AuditEntry],
    i: usize,
    key: &relay::audit::ChainKey,
    edit: impl Fn(&mut relay::audit::AuditEvent),
) -> Vec<AuditEntry> {
    let mut head = relay::audit::ChainHead {
        seq: entries[i].seq - 1,
        hash: entries[i].prev_hash.clone(),
    };
    let mut out = entries[..i].to_vec();
    for (j, e) in entries.iter().enumerate().skip(i) {
        let mut event = e.event.clone();
        if j == i {
            edit(&mut event);
        }
        let mut line = Vec::new();
        head = head.write_next_line_with(key, &event, &mut line);
        out.push(serde_json::from_slice(&line).unwrap());
    }
    out
}

/// An unkeyed chain detects any edit, but not a forger who recomputes every
/// later hash (SHA-256 needs no secret): that is what the keyed chain is
/// for. Under an HMAC key, every forgery — an edit re-chained without the
/// key or under a guessed one, or an entry appended with a hash the forger
/// computed — is detected; verifying needs the key, and the key shows in
/// no `Debug` or error.
#[tokio::test(start_paused = true)]
async fn forged_rechaining_is_detected_under_a_key() {
    let secret = "audit-key-for-the-test-5f1c9e2a7b".to_owned();
    let key = relay::audit::ChainKey::hmac(&secret.clone().into()).unwrap();
    let w = World::new(402);
    let sink = std::sync::Arc::new(relay::MemoryAuditSink::keyed(key.clone()));
    let relay = w.builder().audit(sink.clone()).build().unwrap();
    deploy_v1(&relay).await;
    run(&relay, RolloutSpec::new("web", release("v3"), canary())).await;
    let entries = sink.entries().await.unwrap();
    let n = entries.len();
    let head = key.verify_chain(&entries, None).unwrap();
    assert_eq!(sink.verify().await.unwrap(), n as u64);
    // Without the key the genuine log does not verify either.
    assert!(verify_chain(&entries, None).is_err());

    let guessed = relay::audit::ChainKey::hmac(&"a-guess-at-the-key-0000".to_owned().into()).unwrap();
    let none = relay::audit::ChainKey::none();
    let forge = |e: &mut relay::audit::AuditEvent| e.detail = serde_json::json!({"approved_by": "mallory"}).into();
    let unkeyed = rechained(&entries, 0, &none, |_| {});
    verify_chain(&unkeyed, None).unwrap();
    let (mut tried, mut detected, mut unkeyed_passed) = (0, 0, 0);
    for i in 0..n {
        for forger in [&none, &guessed] {
            let forged = rechained(&entries, i, forger, forge);
            tried += 1;
            if key.verify_chain(&forged, None).is_err() {
                detected += 1;
            } else {
                panic!("a forgery re-chained from entry {i} verified under the key");
            }
        }
        // The same forgery of the same log kept unkeyed verifies: the reason
        // for keys.
        if verify_chain(&rechained(&unkeyed, i, &none, forge), None).is_ok() {
            unkeyed_passed += 1;
        }
    }
    // An entry appended after the head, hashed by the forger.
    for forger in [&none, &guessed] {
        let mut line = Vec::new();
        head.write_next_line_with(forger, &entries[n - 1].event, &mut line);
        let mut forged = entries.clone();
        forged.push(serde_json::from_slice(&line).unwrap());
        tried += 1;
        assert!(key.verify_chain(&forged, None).is_err(), "an appended forgery verified");
        detected += 1;
    }
    assert_eq!(unkeyed_passed, n, "an unkeyed chain cannot tell a re-chained forgery");
    let shown = format!("{key:?} {sink:?} {relay:?}");
    assert!(!shown.contains(&secret), "the key shows: {shown}");
    eprintln!(
        "audit forgery: {detected}/{tried} forgeries of a {n}-entry keyed chain detected; \
         the {n} forgeries re-chained with SHA-256 all verify on an unkeyed chain"
    );
}

/// The worked example of docs/audit-format.md: its lines verify as the
/// document says (unkeyed, and keyed under the example key), so the
/// document cannot drift from what relay writes.
#[test]
fn the_audit_format_documents_example_verifies() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/audit-format.md")).unwrap();
    let block = |name: &str| -> String {
        let start = doc
            .find(&format!("```jsonl {name}\n"))
            .unwrap_or_else(|| panic!("no {name} example"));
        let body = &doc[start..];
        let body = &body[body.find('\n').unwrap() + 1..];
        body[..body.find("```").unwrap()].to_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, key) in [
        ("unkeyed", relay::audit::ChainKey::none()),
        (
            "keyed",
            relay::audit::ChainKey::hmac(&"example-key-do-not-use-0001".to_owned().into()).unwrap(),
        ),
    ] {
        let path = dir.path().join(format!("{name}.jsonl"));
        std::fs::write(&path, block(name)).unwrap();
        let head = relay::JsonlAuditSink::verify_file(&path, &key).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(head.seq, 2, "{name}");
    }
}
