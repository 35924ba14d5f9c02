//! Control from anywhere: commands go through the state store to whichever
//! engine drives a rollout, applied in order, once, and audited; a lost
//! handle is regained with `Relay::control`; commands sent while a rollout
//! was orphaned are applied when it is recovered.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use relay::strategies::CanaryStrategy;
use relay::{
    clock::TokioClock, Error, EventKind, FileStateStore, ManualApproval, Outcome, Relay, RolloutCommand, RolloutSpec,
    StateStore,
};

/// A canary held at a manual gate `qa` before promotion.
fn held(tag: &str) -> RolloutSpec {
    RolloutSpec::new("web", release(tag), CanaryStrategy::new().set_weight(25)).gate_before_promotion("qa")
}

fn approve(by: &str) -> RolloutCommand {
    RolloutCommand::Decide {
        gate: "qa".into(),
        by: by.into(),
        comment: "from elsewhere".into(),
        approved: true,
    }
}

/// Engines `a` and `b` of world `w` on one state store and one audit log,
/// `a` with v1 deployed.
async fn two_engines(w: &World, state: Arc<dyn StateStore>) -> (Relay, Relay) {
    let audit: Arc<dyn relay::AuditSink> = Arc::new(relay::MemoryAuditSink::new());
    let engine = |name: &str| {
        w.builder()
            .state(state.clone())
            .audit(audit.clone())
            .gate(Arc::new(ManualApproval::new("qa")))
            .clock(Arc::new(TokioClock::starting_at(1_000_000)))
            .holder(name)
            .build()
            .unwrap()
    };
    let (a, b) = (engine("a"), engine("b"));
    deploy_v1(&a).await;
    (a, b)
}

/// Engine `b` does not drive the rollout, and has no handle: its command
/// goes through the state store (a memory store wakes the driver; a file
/// store is polled), and engine `a` applies and audits it. A lost handle
/// is regained from the engine that drives it.
#[tokio::test(start_paused = true)]
async fn a_command_from_another_engine_reaches_the_driver_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let stores: [(&str, Arc<dyn StateStore>); 2] = [
        ("memory", Arc::new(relay::MemoryStateStore::new())),
        ("file", Arc::new(FileStateStore::open(dir.path()).unwrap())),
    ];
    for (kind, state) in stores {
        let w = World::new(601);
        let (a, b) = two_engines(&w, state).await;
        let handle = a.start(held("v2")).await.unwrap();
        let id = handle.id().to_owned();
        let mut events = handle.events();
        until(&mut events, |k| matches!(k, EventKind::GateWaiting { .. })).await;
        // The handle is lost; the engine that drives the rollout gives its
        // controls again, the other does not drive it.
        let outcome = handle.wait();
        assert!(a.control(&id).is_ok(), "{kind}");
        assert!(matches!(b.control(&id), Err(Error::NotFound { .. })), "{kind}");
        b.command(&id, approve("ana")).await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(30), outcome)
            .await
            .unwrap_or_else(|_| panic!("{kind}: the approval never reached the driver"))
            .unwrap();
        assert!(outcome.is_success(), "{kind}: {outcome}");
        let trail = actions(&a, &id).await;
        assert_eq!(
            trail.iter().filter(|a| *a == "gate.approved").count(),
            1,
            "{kind}: {trail:?}"
        );
        // A finished rollout takes no more commands.
        assert!(
            matches!(b.command(&id, approve("ana")).await, Err(Error::NotRunning { .. })),
            "{kind}"
        );
    }
}

/// Commands queued in the store are applied in order, each once: a pause,
/// a resume and an approval sent together hold, release and pass the
/// rollout, with one entry each.
#[tokio::test(start_paused = true)]
async fn stored_commands_are_applied_in_order_and_once() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(602);
    let (a, b) = two_engines(&w, Arc::new(FileStateStore::open(dir.path()).unwrap())).await;
    let handle = a.start(held("v2")).await.unwrap();
    let id = handle.id().to_owned();
    let mut events = handle.events();
    until(&mut events, |k| matches!(k, EventKind::GateWaiting { .. })).await;
    for c in [
        RolloutCommand::Pause { by: "bo".into() },
        RolloutCommand::Resume { by: "bo".into() },
        approve("ana"),
    ] {
        b.command(&id, c).await.unwrap();
    }
    assert!(handle.wait().await.unwrap().is_success());
    let trail = actions(&a, &id).await;
    let commands: Vec<&str> = trail
        .iter()
        .map(String::as_str)
        .filter(|a| ["rollout.paused", "rollout.unpaused", "gate.approved"].contains(a))
        .collect();
    assert_eq!(commands, ["rollout.paused", "rollout.unpaused", "gate.approved"]);
    let record = a.state().get(&id).await.unwrap().unwrap();
    assert_eq!(record.commands_applied, 3);
}

/// An abort sent while the rollout was orphaned (its engine gone) waits in
/// the store, and the engine that recovers the rollout applies it.
#[tokio::test(start_paused = true)]
async fn a_command_sent_to_an_orphan_is_applied_when_it_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(603);
    let (a, b) = two_engines(&w, Arc::new(FileStateStore::open(dir.path()).unwrap())).await;
    let handle = a.start(held("v2")).await.unwrap();
    let id = handle.id().to_owned();
    let mut events = handle.events();
    until(&mut events, |k| matches!(k, EventKind::GateWaiting { .. })).await;
    handle.halt();
    drop(a);
    b.command(
        &id,
        RolloutCommand::Abort {
            by: "oncall".into(),
            reason: "its engine died; take it back".into(),
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(31)).await;
    let outcome = b.resume(&id).await.unwrap().wait().await.unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { cause } if cause.contains("aborted by oncall")),
        "{outcome}"
    );
}

/// `Relay::shutdown` stops driving every rollout of the engine at once,
/// leaves each running (their handles report `ShutDown`), lets the leases
/// go — another engine on the same directory resumes them at once, with no
/// wait for expiry — and the engine starts nothing more.
#[tokio::test(start_paused = true)]
async fn shutdown_leaves_every_rollout_resumable_and_releases_the_leases() {
    let dir = tempfile::tempdir().unwrap();
    let state: Arc<dyn StateStore> = Arc::new(FileStateStore::open(dir.path()).unwrap());
    let w = World::new(604);
    let (a, b) = two_engines(&w, state).await;
    let handle = a.start(held("v2")).await.unwrap();
    let id = handle.id().to_owned();
    let mut events = handle.events();
    until(&mut events, |k| matches!(k, EventKind::GateWaiting { .. })).await;
    let stopped = a.shutdown().await;
    assert_eq!(stopped, vec![id.clone()]);
    assert!(
        matches!(handle.wait().await, Err(Error::ShutDown { rollout: Some(r) }) if r == id),
        "the handle reports the shutdown"
    );
    assert_eq!(
        b.state().get(&id).await.unwrap().unwrap().status,
        relay::RolloutStatus::Running,
        "left as it was"
    );
    assert!(matches!(
        a.start(held("v3")).await.map(|h| h.id().to_owned()),
        Err(Error::ShutDown { .. })
    ));
    // No wait for the lease to expire.
    let resumed = b.resume(&id).await.unwrap();
    b.command(&id, approve("ana")).await.unwrap();
    assert!(resumed.wait().await.unwrap().is_success());
}
