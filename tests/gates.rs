//! Gates and artifact checks in virtual time: manual approval timeouts,
//! freeze windows before start and before promotion (and their audited
//! override), signature and checksum verifiers, and a rolled-back digest
//! refused again.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use relay::strategies::CanaryStrategy;
use relay::{
    clock::TokioClock, gate::OnTimeout, AuditSink, Error, EventKind, FreezeGate, FreezeWindow, ManualApproval, Outcome,
    Relay, RolloutSpec,
};

/// Milliseconds of an RFC 3339 instant.
fn at(s: &str) -> i64 {
    relay::clock::parse_rfc3339("test", s).unwrap()
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
            (relay::freeze::Weekday::Friday, 16, 0),
            (relay::freeze::Weekday::Monday, 8, 0),
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
    assert_eq!(approved.event.detail.to_value()["by"], "alice");
    assert_eq!(approved.event.detail.to_value()["comment"], "INC-42 hotfix");
    let passed = entries.iter().find(|e| e.event.action == "gate.passed").unwrap();
    let detail = passed.event.detail.to_value();
    let by = detail["by"].as_str().unwrap();
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

/// A world whose v2 carries `signature` metadata signed with `key`.
#[cfg(feature = "signing")]
fn signed_world(key: &relay::verify::ed25519::SigningKey) -> World {
    let w = World::new(25);
    let digest = relay::Digest::of(b"build 2 signed");
    let signature = relay::SignatureVerifier::sign(key, &digest);
    w.artifacts.push(
        "shop/web",
        "v2-signed",
        b"build 2 signed",
        [(relay::verify::SIGNATURE_METADATA.to_owned(), signature.clone())].into(),
    );
    // The same signature copied onto other content: tampered.
    w.artifacts.push(
        "shop/web",
        "v2-tampered",
        b"build 2 with a backdoor",
        [(relay::verify::SIGNATURE_METADATA.to_owned(), signature)].into(),
    );
    w
}

#[cfg(feature = "signing")]
#[tokio::test(start_paused = true)]
async fn unsigned_and_tampered_artifacts_are_refused_before_anything_changes() {
    use relay::verify::ed25519::SigningKey;
    let key = SigningKey::from_bytes(&[42; 32]);
    let w = signed_world(&key);
    let public = relay::verify::ed25519::VerifyingKey::from(&key);
    let verifier = relay::SignatureVerifier::new([("release-key", hex(&public.to_bytes()).as_str())]).unwrap();
    let relay = w.builder().verifier(Arc::new(verifier)).build().unwrap();
    let spec = |tag: &str| RolloutSpec::new("web", release(tag), CanaryStrategy::new().set_weight(50));
    for (tag, says) in [
        ("v1", "unsigned"),
        ("v2-tampered", "does not verify with any trusted key (release-key)"),
    ] {
        match relay.plan(&spec(tag)).await {
            Err(Error::InvalidSpec { path, reason }) => {
                assert_eq!(path, "release.artifact");
                assert!(reason.contains(says), "{tag}: {reason}");
            }
            other => panic!("{tag}: {other:?}"),
        }
    }
    assert_eq!(w.target.mutations(), 0, "nothing changed");
    assert!(relay
        .start(spec("v2-signed"))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap()
        .is_success());
}

#[cfg(feature = "signing")]
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(start_paused = true)]
async fn only_checksummed_artifacts_pass_and_a_rolled_back_digest_is_refused_again() {
    let w = World::new(26);
    let v1 = relay::Digest::of(b"build 1");
    let v3 = w.v3.digest.clone();
    let manifest = format!("{}  web-v1.tar\n{}  web-v3.tar\n", &v1.as_str()[7..], &v3.as_str()[7..]);
    let relay = w
        .builder()
        .verifier(Arc::new(relay::ChecksumVerifier::from_sha256sums(&manifest).unwrap()))
        .build()
        .unwrap();
    deploy_v1(&relay).await;
    let e = relay
        .plan(&RolloutSpec::new("web", release("v2"), canary()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not in the trusted checksum list"), "{e}");

    // v3 fails its analysis and is rolled back; the policy then refuses it.
    let policy = relay::ArtifactPolicy {
        refuse_rolled_back: true,
        ..Default::default()
    };
    let spec = || RolloutSpec::new("web", release("v3"), canary()).policy(policy.clone());
    let handle = relay.start(spec()).await.unwrap();
    let id = handle.id().to_string();
    assert!(matches!(handle.wait().await.unwrap(), Outcome::RolledBack { .. }));
    match relay.plan(&spec()).await {
        Err(Error::InvalidSpec { path, reason }) => {
            assert_eq!(path, "release.artifact");
            assert!(
                reason.contains(&id) && reason.contains("refuses to deploy it again"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    let without = RolloutSpec::new("web", release("v3"), canary());
    assert!(relay.plan(&without).await.is_ok(), "only the policy refuses it");
}

/// Anyone could abort, approve or promote as anyone. With a policy, a
/// command from an identity it does not allow has no effect, and is
/// audited with the identity and the reason; an allowed one works.
#[tokio::test(start_paused = true)]
async fn a_policy_refuses_commands_from_identities_it_does_not_allow() {
    let w = World::new(501);
    let policy = relay::PolicyAuthorizer::new()
        .allow("web", &[relay::authorize::CommandKind::Abort], &["lead"])
        .allow(
            "*",
            &[
                relay::authorize::CommandKind::Pause,
                relay::authorize::CommandKind::Resume,
            ],
            &["oncall"],
        );
    let relay = w.builder().authorizer(Arc::new(policy)).build().unwrap();
    deploy_v1(&relay).await;
    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), canary()))
        .await
        .unwrap();
    let id = handle.id().to_owned();
    let mut events = handle.events();
    until(&mut events, |k| matches!(k, EventKind::TrafficShifted { .. })).await;
    handle.abort("dev", "I want it gone").unwrap();
    let refused = until(&mut events, |k| matches!(k, EventKind::CommandRefused { .. })).await;
    assert!(
        matches!(&refused.kind, EventKind::CommandRefused { command, by, reason } if command == "abort" && by == "dev" && reason.contains("may not abort")),
        "{refused:?}"
    );
    assert!(
        handle.wait().await.unwrap().is_success(),
        "a refused abort has no effect"
    );
    let trail = trail(&relay, &id).await;
    let entry = trail.iter().find(|(a, _)| a == "command.refused").unwrap();
    assert_eq!(entry.1["by"], "dev");
    assert!(!trail.iter().any(|(a, _)| a == "rollout.aborted"));

    let handle = relay
        .start(RolloutSpec::new("web", release("v3"), canary()))
        .await
        .unwrap();
    let mut events = handle.events();
    until(&mut events, |k| matches!(k, EventKind::TrafficShifted { .. })).await;
    handle.abort("lead", "bad build").unwrap();
    assert!(matches!(handle.wait().await.unwrap(), Outcome::RolledBack { .. }));
}

/// One approval from anyone opened a manual gate. A gate can require N
/// distinct approvers from a list, and refuse the approval of whoever
/// started the rollout; decisions that do not count are named while it
/// waits, and a rejection by an approver fails it.
#[tokio::test(start_paused = true)]
async fn an_approval_gate_counts_only_its_approvers_n_of_m_and_never_the_starter() {
    let w = World::new(502);
    let cab = ManualApproval::new("cab")
        .approvers(["ana", "bo", "cy"])
        .requires(2)
        .separate_duties();
    let relay = w.builder().gate(Arc::new(cab)).build().unwrap();
    deploy_v1(&relay).await;
    let spec = |tag: &str| {
        RolloutSpec::new("web", release(tag), CanaryStrategy::new().set_weight(25))
            .gate_before_promotion("cab")
            .started_by("ana")
    };
    let handle = relay.start(spec("v2")).await.unwrap();
    let mut events = handle.events();
    until(&mut events, |k| matches!(k, EventKind::GateWaiting { .. })).await;
    handle.approve("cab", "ana", "my own release").unwrap();
    handle.approve("cab", "mallory", "lgtm").unwrap();
    handle.approve("cab", "bo", "lgtm").unwrap();
    let waiting = until(
        &mut events,
        |k| matches!(k, EventKind::GateWaiting { reason, .. } if reason.contains("1 of 2")),
    )
    .await;
    let EventKind::GateWaiting { reason, .. } = &waiting.kind else {
        unreachable!()
    };
    assert!(
        reason.contains("ana (started the rollout)") && reason.contains("mallory (not an approver)"),
        "{reason}"
    );
    tokio::time::sleep(Duration::from_secs(3600)).await;
    handle.approve("cab", "cy", "lgtm").unwrap();
    let passed = until(&mut events, |k| matches!(k, EventKind::GatePassed { .. })).await;
    assert!(
        matches!(&passed.kind, EventKind::GatePassed { by, .. } if by == "bo, cy"),
        "{passed:?}"
    );
    assert!(handle.wait().await.unwrap().is_success());

    // An approver's rejection fails the gate.
    let handle = relay.start(spec("v1")).await.unwrap();
    let mut events = handle.events();
    until(&mut events, |k| matches!(k, EventKind::GateWaiting { .. })).await;
    handle.approve("cab", "bo", "lgtm").unwrap();
    handle.reject("cab", "cy", "not tonight").unwrap();
    let outcome = handle.wait().await.unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { cause } if cause.contains("rejected by cy")),
        "{outcome}"
    );
}
