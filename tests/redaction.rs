//! A planted secret value never appears in logs (TRACE), events, audit,
//! plans, records, `Debug` output or errors.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shared/planted.rs"]
mod planted;

use std::sync::Arc;

use common::*;
use relay::{Error, RolloutSpec, SecretStore};

#[tokio::test(start_paused = true)]
async fn the_secret_value_never_leaks() {
    let (logs, _guard) = planted::Capture::trace();

    let w = World::new(400);
    let dir = tempfile::tempdir().unwrap();
    let audit = Arc::new(relay::JsonlAuditSink::open(dir.path().join("audit.jsonl")).unwrap());
    let state = Arc::new(relay::FileStateStore::open(dir.path().join("state")).unwrap());
    let relay = w.builder().audit(audit).state(state).build().unwrap();
    let mut seen = String::new();
    deploy_v1(&relay).await;
    for tag in ["v2", "v3"] {
        let spec = RolloutSpec::new("web", release(tag), canary());
        let plan = relay.plan(&spec).await.unwrap();
        seen += &format!("{plan}\n{plan:?}\n{}", serde_json::to_string(&plan).unwrap());
        let handle = relay.start(spec).await.unwrap();
        let events = handle.events();
        let outcome = handle.wait().await.unwrap();
        seen += &format!("{outcome:?}");
        for e in drain(events).await {
            seen += &format!("{e:?}{}", serde_json::to_string(&e).unwrap());
        }
    }
    // Errors about the secret name the reference, not the value.
    let missing: Error = w
        .secrets
        .fetch(&"mem://web/db#password?version=9".parse().unwrap())
        .await
        .unwrap_err();
    seen += &format!("{missing} {missing:?}");
    let value = w
        .secrets
        .fetch(&"mem://web/db#password".parse().unwrap())
        .await
        .unwrap();
    seen += &format!("{value:?} {:?} {relay:?}", w.secrets);
    for entry in std::fs::read_dir(dir.path().join("state/records")).unwrap() {
        seen += &std::fs::read_to_string(entry.unwrap().path()).unwrap();
    }
    seen += &std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let logs = logs.text();

    assert!(
        logs.contains("rolling back") && logs.contains("verdict"),
        "TRACE capture must hold the rollout's logs"
    );
    assert!(
        seen.contains("mem://web/db#password"),
        "the reference itself is visible"
    );
    assert!(!logs.contains(PLANTED_SECRET), "secret in logs");
    assert!(
        !seen.contains(PLANTED_SECRET),
        "secret in events, audit, plans, records, Debug or errors"
    );
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(&value.value),
        PLANTED_SECRET,
        "the store does hold it"
    );
}
