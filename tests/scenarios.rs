//! End-to-end rollouts on the simulated providers, in virtual time.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use relay::providers::sim::{RevisionBehavior, SimTarget};
use relay::providers::{FaultKind, Faulty};
use relay::strategies::{Amount, BlueGreenStrategy, CanaryStrategy, RollingStrategy};
use relay::{Error, EventKind, Outcome, RetryPolicy, Role, RolloutSpec, RolloutStatus, Routing, Target, TrafficSplit};

#[tokio::test(start_paused = true)]
async fn healthy_canary_is_promoted_with_one_audit_entry_per_mutation() {
    let (w, relay) = World::with_v1(1).await;
    let mutations_before = w.target.mutations();
    let audit_before = relay.audit().entries().await.unwrap().len();

    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), canary()))
        .await
        .unwrap();
    let id = handle.id().to_string();
    let events = handle.events();
    let outcome = handle.wait().await.unwrap();
    let events = drain(events).await;

    let Outcome::Promoted { revision } = &outcome else {
        panic!("{outcome}")
    };
    let state = w.target.observe().await.unwrap();
    assert_eq!(state.stable.as_ref().map(|r| r.as_str()), Some(revision.as_str()));
    assert_eq!(
        state.traffic.weights().len(),
        1,
        "all traffic on the candidate: {}",
        state.traffic
    );
    assert_eq!(state.revisions.len(), 1, "old stable retired");
    assert_eq!(state.revisions[0].ready, 4);
    let weights: Vec<u8> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::TrafficShifted { candidate_weight } => Some(candidate_weight),
            _ => None,
        })
        .collect();
    assert_eq!(weights, [25, 50, 100]);
    let verdicts = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Verdict { .. }))
        .count();
    assert_eq!(verdicts, 4, "two analyses of two measurements");

    let entries = relay.audit().entries().await.unwrap();
    let mutation_entries = entries[audit_before..]
        .iter()
        .filter(|e| e.event.action.starts_with("target."))
        .count() as u64;
    assert_eq!(
        mutation_entries,
        w.target.mutations() - mutations_before,
        "exactly one audit entry per target mutation"
    );
    assert!(entries
        .iter()
        .any(|e| e.event.rollout == id && e.event.action == "rollout.finished"));
    relay.audit().verify().await.unwrap();
    let record = relay.state().get(&id).await.unwrap().unwrap();
    assert_eq!(record.status, RolloutStatus::Finished(outcome));
}

#[tokio::test(start_paused = true)]
async fn every_traffic_step_routes_and_audits_its_own_split() {
    let (w, relay) = World::with_v1(1).await;
    let v1 = w.target.observe().await.unwrap().stable.unwrap();
    // Traffic steps one after another (10 and 20 need the same one of four
    // replicas: the engine re-weighs one split in place), and steps after a
    // pause and after scaling (where it lets the split go).
    let strategy = CanaryStrategy::new()
        .set_weight(10)
        .set_weight(20)
        .pause(Duration::from_secs(60))
        .set_weight(60);
    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), strategy))
        .await
        .unwrap();
    let id = handle.id().to_string();
    let Outcome::Promoted { revision } = handle.wait().await.unwrap() else {
        panic!("not promoted")
    };
    let v2 = relay::RevisionId::from(revision.as_str());
    let splits: Vec<TrafficSplit> = [10, 20, 60, 100]
        .map(|w| TrafficSplit::canary(&v1, &v2, w).unwrap())
        .into();
    let routed: Vec<serde_json::Value> = relay
        .audit()
        .entries()
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event.rollout == id && e.event.action == "target.route")
        .map(|e| e.event.detail.to_value()["weights"].clone())
        .collect();
    let expected: Vec<serde_json::Value> = splits.iter().map(|s| serde_json::to_value(s).unwrap()).collect();
    assert_eq!(routed, expected, "audited");
    let history = w.target.traffic_history();
    assert!(
        history.windows(4).any(|h| h == splits.as_slice()),
        "the target got 10, 20, 60 and 100 in turn: {history:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn failing_analysis_rolls_back_and_never_reports_success() {
    let (w, relay) = World::with_v1(2).await;
    let stable = w.target.observe().await.unwrap().stable.unwrap();

    let (outcome, events) = run_with_events(&relay, RolloutSpec::new("web", release("v3"), canary())).await;

    let Outcome::RolledBack { cause } = &outcome else {
        panic!("expected a rollback, got {outcome}")
    };
    assert!(
        cause.contains("analysis failed") && cause.contains("error_rate"),
        "{cause}"
    );
    assert!(!outcome.is_success());
    let state = w.target.observe().await.unwrap();
    assert_eq!(state.traffic, TrafficSplit::all(&stable), "stable back at 100%");
    assert_eq!(state.stable.as_ref(), Some(&stable));
    assert_eq!(state.revisions.len(), 1, "candidate retired");
    assert_eq!(state.revisions[0].ready, 4, "stable capacity intact");
    // The failing verdict carries its numbers.
    let fail = events.iter().find_map(|e| match &e.kind {
        EventKind::Verdict { verdict } if verdict.judgement.outcome == relay::VerdictOutcome::Fail => {
            Some(verdict.clone())
        }
        _ => None,
    });
    let fail = fail.expect("a failing verdict event");
    assert!(fail.judgement.observed.unwrap() > 0.05 && fail.judgement.threshold == Some(0.05));
    // Detection to rollback: the first rollback mutation is at the verdict's instant.
    let verdict_at = events.iter().find(|e| matches!(&e.kind, EventKind::Verdict { verdict } if verdict.judgement.outcome == relay::VerdictOutcome::Fail)).unwrap().at_ms;
    let rollback_at = events
        .iter()
        .find(|e| matches!(e.kind, EventKind::RollbackStarted { .. }))
        .unwrap()
        .at_ms;
    assert_eq!(verdict_at, rollback_at);
    relay.audit().verify().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn abort_mid_canary_restores_stable_and_weight_never_rises_again() {
    let (w, relay) = World::with_v1(3).await;
    let stable = w.target.observe().await.unwrap().stable.unwrap();
    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), canary()))
        .await
        .unwrap();
    let mut events = handle.events();
    until(&mut events, |k| {
        matches!(k, EventKind::TrafficShifted { candidate_weight: 50 })
    })
    .await;
    let history_at_abort = w.target.traffic_history().len();
    handle.abort("bob", "saw a spike").unwrap();
    let outcome = handle.wait().await.unwrap();
    let Outcome::RolledBack { cause } = outcome else {
        panic!()
    };
    assert!(cause.contains("aborted by bob: saw a spike"), "{cause}");
    let history = w.target.traffic_history();
    let after: Vec<&TrafficSplit> = history[history_at_abort..].iter().collect();
    assert_eq!(
        after,
        [&TrafficSplit::all(&stable)],
        "only the move back to stable after the abort"
    );
    assert_eq!(w.target.observe().await.unwrap().revisions.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn pause_holds_the_rollout_until_resumed() {
    let (w, relay) = World::with_v1(4).await;
    let strategy = CanaryStrategy::new()
        .set_weight(25)
        .pause(Duration::from_secs(60))
        .set_weight(50)
        .pause_until_resumed();
    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), strategy))
        .await
        .unwrap();
    let mut events = handle.events();
    until(&mut events, |k| {
        matches!(k, EventKind::TrafficShifted { candidate_weight: 25 })
    })
    .await;
    handle.pause("carol").unwrap();
    until(&mut events, |k| matches!(k, EventKind::Paused { .. })).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let record = relay.state().get(handle.id()).await.unwrap().unwrap();
    assert!(record.paused);
    assert_eq!(
        w.target
            .traffic_history()
            .last()
            .map(|t| t.weights().values().copied().min()),
        Some(Some(25)),
        "held at 25% while paused"
    );
    handle.resume("carol").unwrap();
    until(&mut events, |k| {
        matches!(k, EventKind::TrafficShifted { candidate_weight: 50 })
    })
    .await;
    // The indefinite pause step waits for a resume.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        w.target.observe().await.unwrap().revisions.len(),
        2,
        "still waiting at the open-ended pause"
    );
    handle.resume("carol").unwrap();
    assert!(handle.wait().await.unwrap().is_success());
}

#[tokio::test(start_paused = true)]
async fn manual_approval_gates_promotion_and_records_the_approver() {
    let w = World::new(5);
    let relay = w.relay_with_approval("promote").await;
    let strategy = BlueGreenStrategy::new()
        .manual_promotion("promote")
        .scale_down_delay(Duration::from_secs(30));
    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), strategy))
        .await
        .unwrap();
    let mut events = handle.events();
    until(&mut events, |k| matches!(k, EventKind::GateWaiting { .. })).await;
    tokio::time::sleep(Duration::from_secs(7200)).await;
    assert_eq!(
        w.target.traffic_history().len(),
        1,
        "no traffic moved while waiting for approval"
    );
    handle.approve("promote", "alice", "looks good").unwrap();
    let passed = until(&mut events, |k| matches!(k, EventKind::GatePassed { .. })).await;
    assert!(matches!(passed.kind, EventKind::GatePassed { ref by, .. } if by == "alice"));
    assert!(handle.wait().await.unwrap().is_success());
    let approvals: Vec<_> = relay
        .audit()
        .entries()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event.action == "gate.approved")
        .collect();
    assert_eq!(approvals.len(), 1);
    assert_eq!(approvals[0].event.detail.to_value()["by"], "alice");
    assert_eq!(approvals[0].event.detail.to_value()["comment"], "looks good");
}

#[tokio::test(start_paused = true)]
async fn rejection_at_a_gate_rolls_back() {
    let w = World::new(6);
    let relay = w.relay_with_approval("promote").await;
    let strategy = CanaryStrategy::new().set_weight(10).gate("promote");
    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), strategy))
        .await
        .unwrap();
    let mut events = handle.events();
    until(&mut events, |k| matches!(k, EventKind::GateWaiting { .. })).await;
    handle.reject("promote", "dave", "not today").unwrap();
    match handle.wait().await.unwrap() {
        Outcome::RolledBack { cause } => assert!(cause.contains("rejected by dave: not today"), "{cause}"),
        other => panic!("{other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn promote_now_skips_the_remaining_steps() {
    let (w, relay) = World::with_v1(7).await;
    let strategy = CanaryStrategy::new()
        .set_weight(10)
        .pause(Duration::from_secs(86_400))
        .set_weight(50)
        .pause(Duration::from_secs(86_400));
    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), strategy))
        .await
        .unwrap();
    let mut events = handle.events();
    until(
        &mut events,
        |k| matches!(k, EventKind::StepStarted { kind, .. } if kind == "pause"),
    )
    .await;
    let start = tokio::time::Instant::now();
    handle.promote_now("erin").unwrap();
    assert!(handle.wait().await.unwrap().is_success());
    assert!(
        start.elapsed() < Duration::from_secs(3600),
        "did not sit out the day-long pauses"
    );
    let weights: Vec<u8> = w
        .target
        .traffic_history()
        .iter()
        .filter_map(|t| t.weights().values().copied().max())
        .collect();
    assert_eq!(w.target.observe().await.unwrap().revisions.len(), 1);
    assert!(!weights.is_empty());
}

#[tokio::test(start_paused = true)]
async fn crashing_candidate_is_rolled_back() {
    let (w, relay) = World::with_v1(8).await;
    let v2 = w
        .artifacts
        .push("shop/web", "v2-crash", b"crashing build", Default::default());
    w.target.behavior(&v2.digest, RevisionBehavior::crashing());
    let release = common::release("v2-crash");
    match run(&relay, RolloutSpec::new("web", release, canary())).await {
        Outcome::RolledBack { cause } => assert!(
            cause.contains("failed to start: simulated replicas crash on start"),
            "{cause}"
        ),
        other => panic!("{other}"),
    }
    assert_eq!(w.target.observe().await.unwrap().revisions.len(), 1);
}

/// A target that runs one revision and replaces it in place: how an ECS
/// service on the ECS deployment controller behaves, whose deployments the
/// AWS emulator does not progress (`tests/aws_moto/ecs.rs` checks the ECS
/// calls themselves). All at once replaces and promotes; a crashing release
/// is rolled back by running the stable revision again at its size; plans
/// that need weights or two revisions are refused before anything changes.
#[tokio::test(start_paused = true)]
async fn an_in_place_target_replaces_and_rolls_back_like_an_ecs_rolling_service() {
    let w = World::with_target(SimTarget::new("web").replace_in_place());
    let relay = w.relay();
    let all_at_once = |tag: &str| {
        RolloutSpec::new(
            "web",
            common::release(tag).replicas(3),
            relay::strategies::AllAtOnceStrategy,
        )
    };
    assert!(run(&relay, all_at_once("v1")).await.is_success());
    assert!(run(&relay, all_at_once("v2")).await.is_success());
    let s = w.target.observe().await.unwrap();
    let v2 = s.stable.clone().unwrap();
    assert_eq!(s.revisions.len(), 1, "the old revision was replaced: {s:?}");
    assert_eq!((s.revisions[0].id.clone(), s.revisions[0].ready), (v2.clone(), 3));

    let crash = w
        .artifacts
        .push("shop/web", "v3-crash", b"crashing build", Default::default());
    w.target.behavior(&crash.digest, RevisionBehavior::crashing());
    match run(&relay, all_at_once("v3-crash")).await {
        Outcome::RolledBack { cause } => assert!(cause.contains("failed to start"), "{cause}"),
        other => panic!("{other}"),
    }
    let s = w.target.observe().await.unwrap();
    assert_eq!(s.stable.as_ref(), Some(&v2));
    assert_eq!(s.traffic, TrafficSplit::all(&v2));
    assert_eq!(
        (s.revisions.len(), s.revisions[0].ready),
        (1, 3),
        "stable runs again at its size"
    );

    for refused in [
        RolloutSpec::new("web", common::release("v3"), canary()),
        RolloutSpec::new("web", common::release("v3"), RollingStrategy::new()),
    ] {
        let e = relay.plan(&refused).await.unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    }
}

/// A simulated target named `web` whose `op` calls fail with `kind` when
/// told to (`fail_next`).
fn faulty_target(seed: u64, kind: FaultKind, op: &'static str) -> Arc<Faulty<SimTarget>> {
    Arc::new(
        Faulty::new(SimTarget::new("web").seed(seed), seed)
            .with_rate(kind, 0.0)
            .only_operations(&[op]),
    )
}

#[tokio::test(start_paused = true)]
async fn retryable_faults_are_retried_and_terminal_ones_roll_back() {
    // Two transient failures of `route`: retried, the rollout succeeds.
    let faulty = faulty_target(9, FaultKind::Unavailable, "route");
    let w = World::new(9);
    let relay = w.builder().target(faulty.clone()).build();
    assert!(
        matches!(relay, Err(Error::InvalidSpec { .. })),
        "two targets named web are refused"
    );
    let relay = w.stores().target(faulty.clone()).build().unwrap();
    deploy_v1(&relay).await;
    faulty.fail_next(2);
    let handle = relay
        .start(RolloutSpec::new(
            "web",
            release("v2"),
            CanaryStrategy::new().set_weight(50),
        ))
        .await
        .unwrap();
    let events = handle.events();
    assert!(handle.wait().await.unwrap().is_success());
    let retries = drain(events)
        .await
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::Retrying { .. }))
        .count();
    assert_eq!(retries, 2);
    assert_eq!(faulty.injected(), 2);

    // A terminal failure of `route` (and of the rollback's route): rollback fails loudly.
    let denied = faulty_target(9, FaultKind::PermissionDenied, "route");
    let relay = w.stores().target(denied.clone()).build().unwrap();
    deploy_v1(&relay).await;
    denied.fail_next(2);
    match run(
        &relay,
        RolloutSpec::new("web", release("v2"), CanaryStrategy::new().set_weight(50)),
    )
    .await
    {
        Outcome::RollbackFailed { cause, error } => {
            assert!(cause.contains("permission denied"), "{cause}");
            assert!(error.contains("permission denied"), "{error}");
        }
        other => panic!("{other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn hung_provider_calls_time_out_and_roll_back_in_bounded_time() {
    let hang = faulty_target(10, FaultKind::Hang, "scale");
    let w = World::new(10);
    let policy = RetryPolicy {
        attempt_timeout: Duration::from_secs(5),
        max_attempts: 3,
        ..RetryPolicy::default()
    };
    let relay = w.stores().target(hang.clone()).retry(policy).build().unwrap();
    deploy_v1(&relay).await;
    hang.fail_next(3);
    let start = tokio::time::Instant::now();
    let outcome = run(
        &relay,
        RolloutSpec::new(
            "web",
            release("v2"),
            CanaryStrategy::new().set_weight(25).set_weight(50),
        ),
    )
    .await;
    assert!(
        matches!(&outcome, Outcome::RolledBack { cause } if cause.contains("gave up after 3 attempts")),
        "{outcome}"
    );
    assert!(start.elapsed() < Duration::from_secs(120), "took {:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn rolling_on_a_replica_ratio_target_keeps_capacity() {
    let w = World::with_target(SimTarget::new("web").seed(11).routing(Routing::ReplicaRatio));
    let relay = w.relay();
    deploy_v1(&relay).await;
    let strategy = RollingStrategy::new()
        .batch(Amount::Count(1))
        .max_surge(Amount::Count(1))
        .max_unavailable(Amount::Count(0));
    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), strategy))
        .await
        .unwrap();
    let mut events = handle.events();
    // Sample readiness at every step start: ready replicas never drop below 4.
    loop {
        let Some(e) = events.next().await else { break };
        if matches!(e.kind, EventKind::StepStarted { .. }) {
            assert!(w.target.observe().await.unwrap().ready_total() >= 4);
        }
        if matches!(e.kind, EventKind::Finished { .. }) {
            break;
        }
    }
    assert!(handle.wait().await.unwrap().is_success());
}

#[tokio::test(start_paused = true)]
async fn blue_green_switches_on_a_switch_only_target_and_rolls_back_after_a_bad_switch() {
    let w = World::with_target(SimTarget::new("web").seed(12).routing(Routing::Switch));
    let relay = w.relay();
    deploy_v1(&relay).await;
    let stable = w.target.observe().await.unwrap().stable.unwrap();
    let bg = BlueGreenStrategy::new()
        .post_promotion(error_analysis())
        .scale_down_delay(Duration::from_secs(60));
    assert!(run(&relay, RolloutSpec::new("web", release("v2"), bg.clone()))
        .await
        .is_success());
    let v2 = w.target.observe().await.unwrap().stable.unwrap();
    assert_ne!(v2, stable);
    // v3 fails after the switch: traffic goes back to v2, which is stable again.
    let outcome = run(&relay, RolloutSpec::new("web", release("v3"), bg)).await;
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
    let state = w.target.observe().await.unwrap();
    assert_eq!(state.stable.as_ref(), Some(&v2));
    assert_eq!(state.traffic, TrafficSplit::all(&v2));
    assert_eq!(state.revision(&v2).unwrap().ready, 4);
}

#[tokio::test(start_paused = true)]
async fn plan_is_a_dry_run_and_redeploying_the_stable_release_is_no_change() {
    let (w, relay) = World::with_v1(13).await;
    let (m, a) = (w.target.mutations(), relay.audit().entries().await.unwrap().len());
    let plan = relay
        .plan(&RolloutSpec::new("web", release("v2"), canary()))
        .await
        .unwrap();
    assert_eq!(
        (w.target.mutations(), relay.audit().entries().await.unwrap().len()),
        (m, a),
        "plan changed something"
    );
    let table = plan.to_string();
    assert!(
        table.contains("traffic: candidate 25%, stable 75%")
            && table.contains("DB_PASSWORD <- mem://web/db#password?version=1"),
        "{table}"
    );
    assert!(!table.contains(PLANTED_SECRET));
    assert_eq!(
        plan.candidate.secrets["DB_PASSWORD"].version(),
        Some("1"),
        "secret pinned at plan time"
    );
    let again = run(&relay, RolloutSpec::new("web", release("v1"), canary())).await;
    assert_eq!(again, Outcome::NoChange);
    assert_eq!(w.target.mutations(), m);
}

#[tokio::test(start_paused = true)]
async fn bad_specs_are_refused_before_anything_changes() {
    let w = World::new(14);
    let relay = w.relay();
    let path = |e: Error| match e {
        Error::InvalidSpec { path, .. } => path,
        other => panic!("expected InvalidSpec, got {other:?}"),
    };
    let unknown_scheme = release("v1").secret("TOKEN", "vault://kv/app#token".parse().unwrap());
    assert_eq!(
        path(
            relay
                .plan(&RolloutSpec::new("web", unknown_scheme, canary()))
                .await
                .unwrap_err()
        ),
        "release.secrets.TOKEN"
    );
    assert_eq!(
        path(
            relay
                .plan(&RolloutSpec::new("nope", release("v1"), canary()))
                .await
                .unwrap_err()
        ),
        "spec.target"
    );
    assert_eq!(
        path(
            relay
                .plan(&RolloutSpec::new("web", release("v1").replicas(0), canary()))
                .await
                .unwrap_err()
        ),
        "release.replicas"
    );
    assert_eq!(
        path(
            relay
                .plan(&RolloutSpec::new("web", release("v1"), canary()).id("has space"))
                .await
                .unwrap_err()
        ),
        "spec.id"
    );
    deploy_v1(&relay).await;
    let gated = CanaryStrategy::new().set_weight(10).gate("cab-approval");
    assert_eq!(
        path(
            relay
                .plan(&RolloutSpec::new("web", release("v2"), gated))
                .await
                .unwrap_err()
        ),
        "plan.steps[2].gate"
    );
    let policy = relay::ArtifactPolicy {
        require_digest: true,
        ..Default::default()
    };
    assert_eq!(
        path(
            relay
                .plan(&RolloutSpec::new("web", release("v2"), canary()).policy(policy))
                .await
                .unwrap_err()
        ),
        "release.artifact"
    );
    assert!(matches!(
        relay.plan(&RolloutSpec::new("web", release("v9"), canary())).await,
        Err(Error::NotFound { .. })
    ));
    let no_probe = w.stores().target(w.target.clone()).build().unwrap();
    assert_eq!(
        path(
            no_probe
                .plan(&RolloutSpec::new("web", release("v2"), canary()))
                .await
                .unwrap_err()
        ),
        "plan.steps[2].analysis"
    );
    let _ = Role::Stable;
}

fn one_check(check: relay::Check, count: u32) -> CanaryStrategy {
    let analysis = relay::AnalysisSpec::new(vec![check]).every(Duration::from_secs(60), count);
    CanaryStrategy::new().set_weight(25).analyze(analysis)
}

#[tokio::test(start_paused = true)]
async fn analysis_without_enough_data_is_inconclusive_and_rolls_back_past_the_limit() {
    let (_w, relay) = World::with_v1(15).await;
    // 60 values per minute can never reach 1000 samples: every verdict is inconclusive.
    let check = relay::Check::new(
        "errors",
        "error_rate",
        relay::strategies::ThresholdJudge::below(0.05).min_samples(1000),
    );
    let (outcome, events) = run_with_events(&relay, RolloutSpec::new("web", release("v2"), one_check(check, 5))).await;
    assert!(
        matches!(&outcome, Outcome::RolledBack { cause } if cause.contains("inconclusive 3 times (limit 2)")),
        "{outcome}"
    );
    let inconclusive = events.into_iter().filter(|e| matches!(&e.kind, EventKind::Verdict { verdict } if verdict.judgement.outcome == relay::VerdictOutcome::Inconclusive)).count();
    assert_eq!(inconclusive, 3);
}

#[tokio::test(start_paused = true)]
async fn probe_errors_past_the_consecutive_limit_roll_back() {
    let (_w, relay) = World::with_v1(16).await;
    let check = relay::Check::new("ghost", "no_such_metric", relay::strategies::ThresholdJudge::below(1.0));
    let outcome = run(&relay, RolloutSpec::new("web", release("v2"), one_check(check, 10))).await;
    assert!(
        matches!(&outcome, Outcome::RolledBack { cause } if cause.contains("5 consecutive probe errors (limit 4)")),
        "{outcome}"
    );
    let errors = relay
        .audit()
        .entries()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event.action == "analysis.probe_error")
        .count();
    assert_eq!(errors, 5);
}

#[tokio::test(start_paused = true)]
async fn dry_run_checks_are_recorded_but_never_fail_the_rollout() {
    let (_w, relay) = World::with_v1(17).await;
    // Any error rate is above 0: this check fails every time, in dry-run.
    let check = relay::Check::new("strict", "error_rate", relay::strategies::ThresholdJudge::below(0.0)).dry_run();
    let outcome = run(&relay, RolloutSpec::new("web", release("v2"), one_check(check, 3))).await;
    assert!(outcome.is_success(), "{outcome}");
    let failed_dry: Vec<_> = relay
        .audit()
        .entries()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| {
            e.event.action == "analysis.verdict"
                && e.event.detail.to_value()["dry_run"] == true
                && e.event.detail.to_value()["outcome"] == "fail"
        })
        .collect();
    assert_eq!(failed_dry.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_refused_start_releases_the_lease() {
    let (_w, relay) = World::with_v1(18).await;
    assert!(relay
        .start(RolloutSpec::new("web", release("v2").replicas(0), canary()))
        .await
        .is_err());
    assert!(run(&relay, RolloutSpec::new("web", release("v2"), canary()))
        .await
        .is_success());
}

/// A clock that counts its readings: an event is stamped when it is made.
#[derive(Debug, Default)]
struct CountingClock {
    clock: relay::clock::TokioClock,
    reads: std::sync::atomic::AtomicU64,
}

impl relay::Clock for CountingClock {
    fn now_ms(&self) -> relay::clock::UnixMillis {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.clock.now_ms()
    }
}

/// How a rollout's outcome is awaited in `a_rollout_nobody_watches_makes_no_events`.
enum Awaited {
    /// `wait().await` at once.
    Waited,
    /// Its events taken, then `wait().await`.
    Watched,
    /// `wait()` called at once, its future awaited after the rollout ended.
    WaitedLater,
}

/// Events are made only for a subscriber: a rollout whose outcome is
/// awaited with `wait` and whose events nobody asked for makes none (the
/// subscription a handle takes at the start, for its first `events()`,
/// ends at `wait`, even when its future is awaited only after the rollout
/// ended). The same rollout watched makes one per event seen.
#[tokio::test(start_paused = true)]
async fn a_rollout_nobody_watches_makes_no_events() {
    let mut reads = Vec::new();
    let mut seen = 0;
    for awaited in [Awaited::Waited, Awaited::Watched, Awaited::WaitedLater] {
        let w = World::new(7);
        let clock = Arc::new(CountingClock::default());
        let relay = w.builder().clock(clock.clone()).build().unwrap();
        deploy_v1(&relay).await;
        let before = clock.reads.load(std::sync::atomic::Ordering::Relaxed);
        let spec = RolloutSpec::new("web", release("v2"), canary());
        let outcome = match awaited {
            Awaited::Waited => run(&relay, spec).await,
            Awaited::Watched => {
                let (outcome, events) = run_with_events(&relay, spec).await;
                seen = events.len() as u64;
                outcome
            }
            Awaited::WaitedLater => {
                let waiting = relay.start(spec).await.unwrap().wait();
                // A day of virtual time: the canary ends long before.
                tokio::time::sleep(Duration::from_secs(86_400)).await;
                waiting.await.unwrap()
            }
        };
        assert!(outcome.is_success(), "{outcome}");
        reads.push(clock.reads.load(std::sync::atomic::Ordering::Relaxed) - before);
    }
    assert!(seen > 10, "the watched rollout's events: {seen}");
    for (awaited, unwatched) in [("at once", reads[0]), ("later", reads[2])] {
        assert!(
            reads[1] >= unwatched + seen,
            "clock readings unwatched (awaited {awaited}) {unwatched} vs watched {} with {seen} events: the unwatched rollout made events",
            reads[1],
        );
    }
}

/// A canary on a target with nothing stable yet (the README's own
/// embedding example, first run): the candidate takes all traffic, and
/// every check that needs no stable revision still judges it; the checks
/// that compare with one are shown in the plan and audited as skipped.
/// A bad first release is rolled back and reported so.
#[tokio::test(start_paused = true)]
async fn a_first_release_is_judged_by_its_absolute_checks_and_a_bad_one_rolled_back() {
    use relay::providers::sim::metrics;
    use relay::strategies::{Direction, MannWhitneyJudge};
    let checks = || {
        relay::AnalysisSpec::new(vec![
            relay::Check::new(
                "errors",
                metrics::ERROR_RATE,
                relay::strategies::ThresholdJudge::below(0.05).min_samples(10),
            ),
            relay::Check::new(
                "latency",
                metrics::LATENCY_MS,
                MannWhitneyJudge::new(Direction::LowerIsBetter),
            ),
        ])
        .every(Duration::from_secs(60), 2)
    };
    let canary = || {
        CanaryStrategy::new()
            .set_weight(25)
            .analyze(checks())
            .set_weight(50)
            .analyze(checks())
    };

    // A healthy first release: judged, then promoted.
    let w = World::new(40);
    let relay = w.relay();
    let plan = relay
        .plan(&RolloutSpec::new("web", release("v2"), canary()))
        .await
        .unwrap();
    let table = plan.to_string();
    assert!(table.contains("error_rate mean < 0.05"), "{table}");
    assert!(
        table.contains("skipped: latency (compares with the stable revision"),
        "{table}"
    );
    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), canary()))
        .await
        .unwrap();
    let id = handle.id().to_owned();
    let (outcome, events) = {
        let events = handle.events();
        (handle.wait().await.unwrap(), drain(events).await)
    };
    assert!(outcome.is_success(), "{outcome}");
    let verdicts = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Verdict { .. }))
        .count();
    assert_eq!(verdicts, 4, "two analyses of two measurements of the errors check");
    let skipped = relay
        .audit()
        .entries()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event.rollout == id && e.event.action == "analysis.skipped")
        .count();
    assert_eq!(skipped, 2);

    // A bad first release (20% errors): rolled back, candidate removed.
    let w = World::new(41);
    let relay = w.relay();
    let outcome = run(&relay, RolloutSpec::new("web", release("v3"), canary())).await;
    assert!(
        matches!(&outcome, Outcome::RolledBack { cause } if cause.contains("analysis failed")),
        "{outcome}"
    );
    let state = w.target.observe().await.unwrap();
    assert!(
        state.revisions.is_empty() && state.traffic.is_empty(),
        "the bad first release is removed with its traffic: {state:?}"
    );

    // A blue/green first release whose only check compares with the
    // stable revision: the check is skipped (shown and audited), and the
    // release goes out.
    let w = World::new(43);
    let relay = w.relay();
    let compare = relay::AnalysisSpec::new(vec![relay::Check::new(
        "latency",
        metrics::LATENCY_MS,
        MannWhitneyJudge::new(Direction::LowerIsBetter),
    )]);
    let bg = BlueGreenStrategy::new().pre_promotion(compare);
    let plan = relay
        .plan(&RolloutSpec::new("web", release("v2"), bg.clone()))
        .await
        .unwrap();
    assert!(plan.to_string().contains("no check runs; skipped: latency"), "{plan}");
    assert!(run(&relay, RolloutSpec::new("web", release("v2"), bg))
        .await
        .is_success());

    // Rolling judges its first release the same way.
    let w = World::new(42);
    let relay = w.relay();
    let mut rolling = RollingStrategy::new();
    rolling.analysis = Some(checks());
    let outcome = run(&relay, RolloutSpec::new("web", release("v3"), rolling)).await;
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
}

/// Unbounded input is refused, before anything changes, with the step, the
/// value and the limit named: a pause of a hundred million days, an
/// analysis of 4,294,967,295 measurements (which wrote 8 MB of audit in
/// 20 s of virtual time), a plan that would run for months; names with
/// control characters (they would reach terminals as escape sequences);
/// and a huge value is never echoed whole in an error.
#[tokio::test(start_paused = true)]
async fn unbounded_input_is_refused_with_a_clear_error() {
    let (w, relay) = World::with_v1(44).await;
    let before = w.target.mutations();
    let day = Duration::from_secs(86_400);
    let refused = |spec: RolloutSpec| {
        let relay = relay.clone();
        async move { relay.start(spec).await.map(|h| h.id().to_owned()).unwrap_err() }
    };
    let long_pause = CanaryStrategy::new().set_weight(10).pause(day * 100_000_000);
    let err = refused(RolloutSpec::new("web", release("v2"), long_pause)).await;
    assert!(
        matches!(&err, Error::InvalidSpec { path, reason } if path == "plan.steps[2].pause" && reason.contains("max_pause")),
        "{err}"
    );
    let endless = common::error_analysis().every(Duration::from_secs(60), u32::MAX);
    let err = refused(RolloutSpec::new(
        "web",
        release("v2"),
        CanaryStrategy::new().set_weight(10).analyze(endless),
    ))
    .await;
    assert!(
        matches!(&err, Error::InvalidSpec { path, .. } if path == "plan.steps[2].analysis.count"),
        "{err}"
    );
    let mut months = CanaryStrategy::new().set_weight(10);
    for _ in 0..31 {
        months = months.pause(day);
    }
    let err = refused(RolloutSpec::new("web", release("v2"), months)).await;
    assert!(
        matches!(&err, Error::InvalidSpec { path, reason } if path == "plan" && reason.contains("max_duration")),
        "{err}"
    );
    assert_eq!(w.target.mutations(), before, "a refused plan changed nothing");

    // Names and text a person gives.
    let escape = SimTarget::new("web\u{1b}[31m");
    let err = relay::Relay::builder()
        .target(Arc::new(escape))
        .artifacts(w.artifacts.clone())
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidSpec { path, .. } if path == "relay.targets[0]"),
        "{err}"
    );
    let relay = w.relay_with_approval("qa").await;
    let handle = relay
        .start(RolloutSpec::new(
            "web",
            release("v2"),
            CanaryStrategy::new().set_weight(10).gate("qa"),
        ))
        .await
        .unwrap();
    let err = handle.approve("qa", "mallory\u{1b}[2J", "ok").unwrap_err();
    assert!(
        matches!(&err, Error::InvalidSpec { path, .. } if path == "command.by"),
        "{err}"
    );
    let huge = "x".repeat(10 << 20);
    let err = handle.approve("qa", "ana", huge.as_str()).unwrap_err();
    assert!(
        err.to_string().len() < 2048,
        "an error echoed {} bytes",
        err.to_string().len()
    );
    handle.approve("qa", "ana", "ok").unwrap();
    assert!(handle.wait().await.unwrap().is_success());
}

/// An autoscaler sizes the stable revision (as a HorizontalPodAutoscaler
/// sizes a Deployment): relay never judges it by the count a plan saw. The
/// autoscaler moves v1 from 6 replicas to 3 during a canary of the bad v3:
/// the rollback routes back to the 3 at once (it used to wait for 6 that
/// would never come and end `RollbackFailed`); the same release again is no
/// change and the autoscaler's count is not drift; a good release is
/// promoted into the autoscaler's count.
#[tokio::test(start_paused = true)]
async fn an_autoscaled_stable_is_judged_by_its_autoscalers_count() {
    let (w, relay) = World::with_v1(31).await;
    let v1 = w.target.observe().await.unwrap().stable.unwrap();
    w.target.autoscale(Some(6));
    let spec = RolloutSpec::new("web", release("v3"), canary());
    assert_eq!(relay.plan(&spec).await.unwrap().stable_replicas, 6);
    let handle = relay.start(spec).await.unwrap();
    w.target.autoscale(Some(3));
    let outcome = handle.wait().await.unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
    let state = w.target.observe().await.unwrap();
    assert_eq!(state.traffic.weight(&v1), 100);
    let stable = state.revision(&v1).unwrap();
    assert!(
        stable.autoscaled && stable.desired == 3 && stable.ready == 3,
        "{stable:?}"
    );

    let again = run(&relay, RolloutSpec::new("web", release("v1"), canary())).await;
    assert_eq!(again, Outcome::NoChange);
    let drift = relay.drift("web").await.unwrap();
    assert!(drift.differences.is_empty(), "{drift:?}");

    let outcome = run(&relay, RolloutSpec::new("web", release("v2"), canary())).await;
    assert!(outcome.is_success(), "{outcome}");
    let state = w.target.observe().await.unwrap();
    let v2 = state.stable.clone().unwrap();
    assert_ne!(v2, v1);
    assert_eq!(state.traffic.weight(&v2), 100);
    let v2 = state.revision(&v2).unwrap();
    assert!(v2.autoscaled && v2.desired == 3, "{v2:?}");
    assert!(state.revision(&v1).is_none(), "v1 retired: {state:?}");
}

/// A tag the artifact store lacks and a secret the store lacks are refused
/// naming the field of the release that named them, and the fix.
#[tokio::test(start_paused = true)]
async fn a_missing_tag_or_secret_names_the_release_field() {
    let (_w, relay) = World::with_v1(32).await;
    let e = relay
        .plan(&RolloutSpec::new("web", release("v9"), canary()))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what } if what.contains("release.artifact") && what.contains("fix the tag")),
        "{e}"
    );
    let missing = release("v2").secret("API_KEY", "mem://web/api#key".parse().unwrap());
    let e = relay
        .plan(&RolloutSpec::new("web", missing, canary()))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what } if what.contains("release.secrets.API_KEY") && what.contains("create the secret")),
        "{e}"
    );
}
