//! Gates in virtual time: manual approval timeouts, freeze windows before
//! start and before promotion (and their audited override).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use relay::strategies::CanaryStrategy;
use relay::{
    AuditSink, Error, EventKind, FreezeGate, FreezeWindow, ManualApproval, OnTimeout, Outcome, Relay, RolloutSpec,
    TokioClock,
};

/// Milliseconds of an RFC 3339 instant.
fn at(s: &str) -> i64 {
    relay::parse_rfc3339("test", s).unwrap()
}

/// The world's engine on a clock starting at `start`, with `v1` deployed
/// and the gates given.
async fn engine(w: &World, start: &str, gates: Vec<Arc<dyn relay::Gate>>) -> Relay {
    let mut b = w.builder().clock(Arc::new(TokioClock::starting_at(at(start))));
    for g in gates {
        b = b.gate(g);
    }
    let relay = b.build().unwrap();
    deploy_v1(&relay).await;
    relay
}

fn weekend() -> Arc<dyn relay::Gate> {
    Arc::new(FreezeGate::new(
        "freeze",
        vec![FreezeWindow::weekly(
            "weekend",
            "Europe/Berlin",
            (relay::Weekday::Friday, 16, 0),
            (relay::Weekday::Monday, 8, 0),
        )
        .unwrap()],
    ))
}

#[tokio::test(start_paused = true)]
async fn an_approval_nobody_gives_times_out_to_the_configured_outcome() {
    for (outcome, promoted) in [(OnTimeout::Reject, false), (OnTimeout::Approve, true)] {
        let w = World::new(21);
        let gate = ManualApproval::new("promote").timeout(Duration::from_secs(3600), outcome);
        let relay = engine(&w, "2026-11-24T10:00:00Z", vec![Arc::new(gate)]).await;
        let strategy = CanaryStrategy::new().set_weight(10).gate("promote");
        let handle = relay
            .start(RolloutSpec::new("web", release("v2"), strategy))
            .await
            .unwrap();
        let mut events = handle.events();
        let waiting = until(&mut events, |k| matches!(k, EventKind::GateWaiting { .. })).await;
        let decided = until(&mut events, |k| {
            matches!(k, EventKind::GatePassed { .. } | EventKind::RollbackStarted { .. })
        })
        .await;
        assert!(
            decided.at_ms - waiting.at_ms >= 3_600_000,
            "decided after the hour, not before: {} ms",
            decided.at_ms - waiting.at_ms
        );
        match handle.wait().await.unwrap() {
            Outcome::Promoted { .. } => assert!(promoted),
            Outcome::RolledBack { cause } => {
                assert!(
                    !promoted && cause.contains("no decision on \"promote\" within 3600s"),
                    "{cause}"
                )
            }
            other => panic!("{other}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_freeze_window_refuses_a_start_and_an_override_is_audited() {
    let w = World::new(22);
    // Saturday noon in Berlin.
    let relay = engine(&w, "2026-11-28T11:00:00Z", vec![weekend()]).await;
    let spec =
        || RolloutSpec::new("web", release("v2"), CanaryStrategy::new().set_weight(50)).gate_before_start("freeze");
    let e = relay.plan(&spec()).await.unwrap_err();
    match &e {
        Error::GateRejected { gate, reason } => {
            assert_eq!(gate, "freeze");
            assert!(
                reason.contains("weekend") && reason.contains("2026-11-30T08:00:00+01:00"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    let mutations = w.target.mutations();
    assert!(matches!(relay.start(spec()).await, Err(Error::GateRejected { .. })));
    assert_eq!(w.target.mutations(), mutations, "nothing changed");

    // An emergency override, by a named person.
    let handle = relay
        .start(spec().approve("freeze", "alice", "INC-42 hotfix"))
        .await
        .unwrap();
    let id = handle.id().to_string();
    assert!(handle.wait().await.unwrap().is_success());
    let entries: Vec<_> = relay
        .audit()
        .entries()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event.rollout == id)
        .collect();
    let approved = entries.iter().find(|e| e.event.action == "gate.approved").unwrap();
    assert_eq!(approved.event.detail["by"], "alice");
    assert_eq!(approved.event.detail["comment"], "INC-42 hotfix");
    let passed = entries.iter().find(|e| e.event.action == "gate.passed").unwrap();
    let by = passed.event.detail["by"].as_str().unwrap();
    assert!(
        by.contains("emergency override") && by.contains("alice") && by.contains("weekend"),
        "{by}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_freeze_that_begins_during_a_rollout_stops_its_promotion() {
    let w = World::new(23);
    // Friday 15:30 in Berlin; the canary pauses 45 minutes, past 16:00.
    let relay = engine(&w, "2026-11-27T14:30:00Z", vec![weekend()]).await;
    let strategy = CanaryStrategy::new().set_weight(25).pause(Duration::from_secs(45 * 60));
    let spec = RolloutSpec::new("web", release("v2"), strategy)
        .gate_before_start("freeze")
        .gate_before_promotion("freeze");
    let plan = relay.plan(&spec).await.unwrap();
    let kinds: Vec<&str> = plan.steps.iter().map(|s| s.kind()).collect();
    assert_eq!(kinds.first(), Some(&"gate"), "{kinds:?}");
    let promote = kinds.iter().position(|k| *k == "promote").unwrap();
    assert_eq!(kinds[promote - 1], "gate", "{kinds:?}");
    match relay.start(spec).await.unwrap().wait().await.unwrap() {
        Outcome::RolledBack { cause } => assert!(cause.contains("freeze window weekend"), "{cause}"),
        other => panic!("{other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_unregistered_spec_gate_is_named() {
    let w = World::new(24);
    let relay = engine(&w, "2026-11-24T10:00:00Z", vec![]).await;
    let spec =
        RolloutSpec::new("web", release("v2"), CanaryStrategy::new().set_weight(50)).gate_before_promotion("nope");
    let e = relay.plan(&spec).await.unwrap_err();
    assert!(e.to_string().contains("spec.gates_before_promotion[0]"), "{e}");
}
