//! Regression tests for the engine defects a line-by-line review found
//! (issue 26), one per defect, each named after it, through the public API
//! on the simulated providers in virtual time.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use relay::providers::sim::{SimProbe, SimTarget};
use relay::providers::{FaultKind, Faulty, Interceptor, Latency, Wrapped};
use relay::strategies::{CanaryStrategy, Statistic, ThresholdJudge};
use relay::{
    AnalysisSpec, Check, EventKind, HealthProbe, Outcome, ProbeQuery, RolloutSpec, Sample, Scope, StateStore, Target,
};

/// A probe that answers every query of a revision other than the target's
/// stable one (the candidate) with `candidate`, and every other with `other`.
#[derive(Debug)]
struct FixedProbe {
    target: Arc<SimTarget>,
    candidate: Vec<f64>,
    other: Vec<f64>,
}

#[async_trait]
impl HealthProbe for FixedProbe {
    async fn sample(&self, query: &ProbeQuery) -> relay::Result<Sample> {
        let stable = self.target.observe().await?.stable;
        let values = match &query.scope {
            Scope::Revision(r) if Some(r) != stable.as_ref() => self.candidate.clone(),
            _ => self.other.clone(),
        };
        Ok(Sample {
            values,
            source: "fixed".into(),
            ..Sample::default()
        })
    }
}

/// Defect 8: +Inf (Prometheus' `histogram_quantile` in the top bucket) was
/// treated as missing, so a `p99 < 0.5` check over `[0.1, +Inf, +Inf, +Inf]`
/// passed and a release slower than every bucket was promoted.
#[tokio::test(start_paused = true)]
async fn an_infinite_p99_fails_a_below_check_instead_of_counting_as_missing() {
    let w = World::new(8);
    let relay = w
        .builder()
        .probe(Arc::new(FixedProbe {
            target: w.target.clone(),
            candidate: vec![0.1, f64::INFINITY, f64::INFINITY, f64::INFINITY],
            other: vec![0.1, 0.1, 0.1, 0.1],
        }))
        .build()
        .unwrap();
    deploy_v1(&relay).await;
    let p99 = ThresholdJudge::below(0.5).statistic(Statistic::P99);
    let analysis = AnalysisSpec::new(vec![Check::new("p99", "latency_p99", p99)]).every(Duration::from_secs(60), 2);
    let spec = RolloutSpec::new(
        "web",
        release("v2"),
        CanaryStrategy::new().set_weight(25).analyze(analysis),
    );
    let plan = relay.plan(&spec).await.unwrap();
    let outcome = run(&relay, spec).await;
    match &outcome {
        Outcome::RolledBack { cause } => assert!(cause.contains("p99 inf >= 0.5"), "{cause}"),
        other => panic!("a candidate slower than every bucket must roll back, got {other}"),
    }
    let traffic = w.target.observe().await.unwrap().traffic;
    assert_eq!(traffic.weight(plan.stable.as_ref().unwrap()), 100);
}

/// Defect 9: a timed pause kept counting while an operator had paused the
/// rollout: paused at the start of a 600 s pause step and resumed at
/// 1,200 s, the next step ran at once. It must wait out the remaining 600 s.
#[tokio::test(start_paused = true)]
async fn a_timed_pause_stops_counting_while_an_operator_pauses_the_rollout() {
    let (_w, relay) = World::with_v1(9).await;
    let canary = CanaryStrategy::new()
        .set_weight(25)
        .pause(Duration::from_secs(600))
        .set_weight(50);
    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), canary))
        .await
        .unwrap();
    let mut events = handle.events();
    let pause = until(
        &mut events,
        |k| matches!(k, EventKind::StepStarted { kind, .. } if kind == "pause"),
    )
    .await;
    let EventKind::StepStarted { index, .. } = pause.kind else {
        unreachable!()
    };
    handle.pause("operator").unwrap();
    tokio::time::sleep(Duration::from_secs(1200)).await;
    handle.resume("operator").unwrap();
    let next = until(
        &mut events,
        |k| matches!(k, EventKind::StepStarted { index: i, .. } if *i == index + 1),
    )
    .await;
    let waited = next.at_ms - pause.at_ms;
    assert!(
        (1_800_000..1_801_000).contains(&waited),
        "the step after the pause ran {waited} ms after it began; 600 s of pause must remain after 1,200 s paused"
    );
    assert!(handle.wait().await.unwrap().is_success());
}

/// The index of the plan's `promote` step.
fn promote_index(plan: &relay::Plan) -> usize {
    plan.steps
        .iter()
        .position(|s| matches!(s, relay::Step::Promote))
        .unwrap()
}

/// Defect 1: an abort issued while the last step before promotion ran
/// (its provider calls read no commands) was dropped: the rollout ended
/// promoted, with no `rollout.aborted` entry.
#[tokio::test(start_paused = true)]
async fn an_abort_issued_while_the_last_step_runs_is_not_lost_before_promotion() {
    let w = World::new(1);
    // Every target call takes a second, so the abort lands inside one.
    let slow = Arc::new(Latency::new(w.target.clone(), Duration::from_secs(1)));
    let relay = w
        .stores()
        .target(slow)
        .probe(Arc::new(SimProbe::new(w.target.clone())))
        .build()
        .unwrap();
    deploy_v1(&relay).await;
    let spec = RolloutSpec::new("web", release("v2"), CanaryStrategy::new().set_weight(50));
    let plan = relay.plan(&spec).await.unwrap();
    let last = promote_index(&plan) - 1;
    assert!(!plan.steps[last].to_string().is_empty());
    let handle = relay.start(spec).await.unwrap();
    let id = handle.id().to_owned();
    let mut events = handle.events();
    until(
        &mut events,
        |k| matches!(k, EventKind::StepStarted { index, .. } if *index == last),
    )
    .await;
    handle.abort("operator", "stop it").unwrap();
    let outcome = handle.wait().await.unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { cause } if cause.contains("aborted by operator")),
        "{outcome}"
    );
    let actions = actions(&relay, &id).await;
    assert!(actions.iter().any(|a| a == "rollout.aborted"), "{actions:?}");
    let promoted = relay.audit().entries().await.unwrap().into_iter().any(|e| {
        e.event.rollout == id
            && e.event.action == "target.promote"
            && e.event.detail.to_value().get("rollback").is_none()
    });
    assert!(!promoted, "an aborted rollout must never promote: {actions:?}");
    assert_eq!(w.target.observe().await.unwrap().stable, plan.stable);
}

/// Defect 5: when retiring the old stable failed after the candidate was
/// promoted, the engine rolled the promoted, healthy release back.
#[tokio::test(start_paused = true)]
async fn a_retire_failure_after_promotion_keeps_the_promoted_release() {
    let w = World::new(5);
    let denied = Arc::new(
        Faulty::new(w.target.clone(), 5)
            .with_rate(FaultKind::PermissionDenied, 1.0)
            .only_operations(&["retire"]),
    );
    let relay = w
        .stores()
        .target(denied)
        .probe(Arc::new(SimProbe::new(w.target.clone())))
        .build()
        .unwrap();
    deploy_v1(&relay).await;
    let handle = relay
        .start(RolloutSpec::new(
            "web",
            release("v2"),
            CanaryStrategy::new().set_weight(50),
        ))
        .await
        .unwrap();
    let id = handle.id().to_owned();
    let mut events = handle.events();
    let outcome = handle.wait().await.unwrap();
    let candidate = relay.state().get(&id).await.unwrap().unwrap().plan.candidate.id.clone();
    assert_eq!(
        outcome,
        Outcome::Promoted {
            revision: candidate.to_string()
        }
    );
    let state = w.target.observe().await.unwrap();
    assert_eq!(
        state.stable.as_ref(),
        Some(&candidate),
        "the promoted release stays stable"
    );
    assert_eq!(state.traffic.weight(&candidate), 100);
    let actions = actions(&relay, &id).await;
    assert!(actions.iter().any(|a| a == "rollout.cleanup_failed"), "{actions:?}");
    assert!(!actions.iter().any(|a| a == "rollback.started"), "{actions:?}");
    let failed = until(&mut events, |k| matches!(k, EventKind::CleanupFailed { .. })).await;
    let EventKind::CleanupFailed { error, .. } = failed.kind else {
        unreachable!()
    };
    assert!(error.contains("retire"), "{error}");
}

/// An engine with a manual approval gate `release-manager`, v1 deployed.
async fn with_approval(seed: u64) -> (World, relay::Relay) {
    let w = World::new(seed);
    let relay = w.relay_with_approval("release-manager").await;
    (w, relay)
}

/// Defect 6: promote-now skipped the gates that must pass before
/// promotion: the release went to 100% and was promoted with nobody's
/// approval. Now it skips the analysis and pauses, but still waits at the
/// gate, even when promote-now is sent again while it waits there.
#[tokio::test(start_paused = true)]
async fn promote_now_still_waits_at_the_gates_before_promotion() {
    let (w, relay) = with_approval(6).await;
    let spec = RolloutSpec::new("web", release("v2"), canary()).gate_before_promotion("release-manager");
    let handle = relay.start(spec).await.unwrap();
    let mut events = handle.events();
    until(&mut events, |k| {
        matches!(k, EventKind::TrafficShifted { candidate_weight: 25 })
    })
    .await;
    handle.promote_now("impatient").unwrap();
    until(
        &mut events,
        |k| matches!(k, EventKind::GateWaiting { gate, .. } if gate == "release-manager"),
    )
    .await;
    handle.promote_now("impatient").unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let state = w.target.observe().await.unwrap();
    assert_ne!(
        state.stable.as_ref(),
        Some(&relay.state().get(handle.id()).await.unwrap().unwrap().plan.candidate.id),
        "promoted without the release manager's approval"
    );
    handle.approve("release-manager", "ana", "go").unwrap();
    let passed = until(&mut events, |k| matches!(k, EventKind::GatePassed { .. })).await;
    assert!(matches!(passed.kind, EventKind::GatePassed { ref by, .. } if by == "ana"));
    assert!(handle.wait().await.unwrap().is_success());
}

/// Defect 7: one approval opened every gate with the same name. A plan
/// that asks the release manager twice (at 25% and before promotion) must
/// wait for two decisions; the first binds to the first gate only.
#[tokio::test(start_paused = true)]
async fn one_approval_opens_one_gate_instance_not_every_gate_of_that_name() {
    let (_w, relay) = with_approval(7).await;
    let twice = CanaryStrategy::new()
        .set_weight(25)
        .gate("release-manager")
        .set_weight(50)
        .gate("release-manager");
    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), twice))
        .await
        .unwrap();
    let id = handle.id().to_owned();
    let mut events = handle.events();
    let gate_at = |e: &relay::RolloutEvent| e.at_ms;
    let first = until(&mut events, |k| matches!(k, EventKind::GateWaiting { .. })).await;
    handle.approve("release-manager", "ana", "25% looks fine").unwrap();
    until(&mut events, |k| matches!(k, EventKind::GatePassed { .. })).await;
    until(&mut events, |k| {
        matches!(k, EventKind::TrafficShifted { candidate_weight: 50 })
    })
    .await;
    let second = until(&mut events, |k| matches!(k, EventKind::GateWaiting { .. })).await;
    assert!(gate_at(&second) >= gate_at(&first));
    // Held: an hour later it still waits at the second gate.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let record = relay.state().get(&id).await.unwrap().unwrap();
    assert!(
        matches!(record.plan.steps[record.cursor], relay::Step::Gate { .. }),
        "the second gate passed on the first gate's approval (cursor {})",
        record.cursor
    );
    handle.approve("release-manager", "bo", "50% looks fine").unwrap();
    assert!(handle.wait().await.unwrap().is_success());
    let record = relay.state().get(&id).await.unwrap().unwrap();
    let steps: Vec<_> = record.approvals.iter().map(|a| (a.by.as_str(), a.step)).collect();
    let gates: Vec<_> = record
        .plan
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, relay::Step::Gate { .. }))
        .map(|(i, _)| Some(i))
        .collect();
    assert_eq!(steps, vec![("ana", gates[0]), ("bo", gates[1])]);
}

/// A probe that measures the simulated target, but whose calls for the
/// stable revision (the baseline) fail after the first `good` of them.
#[derive(Debug)]
struct BaselineFailsAfter {
    inner: SimProbe,
    target: Arc<SimTarget>,
    good: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl HealthProbe for BaselineFailsAfter {
    async fn sample(&self, query: &ProbeQuery) -> relay::Result<Sample> {
        let stable = self.target.observe().await?.stable;
        if matches!(&query.scope, Scope::Revision(r) if Some(r) == stable.as_ref()) {
            let left = self.good.load(std::sync::atomic::Ordering::SeqCst);
            if left == 0 {
                return Err(relay::Error::Unavailable {
                    provider: "metrics".into(),
                    reason: "the baseline's series is gone".into(),
                });
            }
            self.good.store(left - 1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.sample(query).await
    }
}

/// Defect 11: a failed probe call for the baseline vanished: the check went
/// on comparing the candidate's newer windows with an older baseline and
/// passed, with nothing in the audit log. It must count as a failed
/// measurement (audited, towards the consecutive error limit).
#[tokio::test(start_paused = true)]
async fn a_failed_baseline_probe_call_counts_as_a_failed_measurement() {
    let w = World::new(11);
    let probe = BaselineFailsAfter {
        inner: SimProbe::new(w.target.clone()),
        target: w.target.clone(),
        good: 1.into(),
    };
    let relay = w.relay_with_probe(Arc::new(probe)).await;
    let compare = relay::strategies::MannWhitneyJudge::new(relay::strategies::Direction::LowerIsBetter).min_samples(5);
    let analysis = AnalysisSpec::new(vec![Check::new(
        "latency",
        relay::providers::sim::metrics::LATENCY_MS,
        compare,
    )])
    .every(Duration::from_secs(60), 4)
    .consecutive_error_limit(2);
    let canary = CanaryStrategy::new().set_weight(25).analyze(analysis);
    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), canary))
        .await
        .unwrap();
    let id = handle.id().to_owned();
    let outcome = handle.wait().await.unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { cause } if cause.contains("3 consecutive probe errors (limit 2)") && cause.contains("baseline")),
        "{outcome}"
    );
    let errors: Vec<_> = relay
        .audit()
        .entries()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event.rollout == id && e.event.action == "analysis.probe_error")
        .map(|e| e.event.detail.to_value())
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors
            .iter()
            .all(|d| d["scope"].as_str().unwrap().starts_with("baseline")),
        "{errors:?}"
    );
}

/// An in-memory audit sink whose appends fail (terminally) while `failing`.
#[derive(Debug, Default)]
struct FlakyAudit {
    inner: relay::MemoryAuditSink,
    failing: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl relay::AuditSink for FlakyAudit {
    async fn append(&self, event: &relay::audit::AuditEvent) -> relay::Result<relay::audit::ChainHead> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(relay::Error::PermissionDenied {
                what: "audit log".into(),
            });
        }
        self.inner.append(event).await
    }
    async fn entries(&self) -> relay::Result<Vec<relay::audit::AuditEntry>> {
        self.inner.entries().await
    }
    async fn verify(&self) -> relay::Result<u64> {
        self.inner.verify().await
    }
}

/// The outcome each `rollout.finished` entry of `rollout` records.
async fn finished(relay: &relay::Relay, rollout: &str) -> Vec<serde_json::Value> {
    relay
        .audit()
        .entries()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event.rollout == rollout && e.event.action == "rollout.finished")
        .map(|e| e.event.detail.to_value()["outcome"]["outcome"].clone())
        .collect()
}

/// Defect 12: a rollout with nothing to do left no `rollout.finished`
/// entry; every rollout's trail must end with exactly one.
#[tokio::test(start_paused = true)]
async fn a_no_change_rollout_ends_with_one_rollout_finished_entry() {
    let (_w, relay) = World::with_v1(12).await;
    let handle = relay
        .start(RolloutSpec::new(
            "web",
            release("v1"),
            relay::strategies::AllAtOnceStrategy,
        ))
        .await
        .unwrap();
    let id = handle.id().to_owned();
    assert_eq!(handle.wait().await.unwrap(), Outcome::NoChange);
    assert_eq!(finished(&relay, &id).await, vec![serde_json::json!("no_change")]);
}

/// Defect 4: a start that failed after the record was written (its
/// `rollout.started` entry could not be appended) left the record running
/// and the target's lease held: an orphan another engine would drive
/// without an audit trail. A failed start now leaves nothing behind.
#[tokio::test(start_paused = true)]
async fn a_start_that_fails_to_audit_leaves_no_record_and_no_lease() {
    let w = World::new(4);
    let audit = Arc::new(FlakyAudit::default());
    let relay = w.builder().audit(audit.clone()).build().unwrap();
    deploy_v1(&relay).await;
    audit.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let spec = || RolloutSpec::new("web", release("v2"), CanaryStrategy::new().set_weight(50)).id("r-4");
    let refused = relay.start(spec()).await.unwrap_err();
    assert!(matches!(refused, relay::Error::PermissionDenied { .. }), "{refused}");
    assert!(
        relay.state().get("r-4").await.unwrap().is_none(),
        "a failed start left a record"
    );
    assert!(relay.state().list_active().await.unwrap().is_empty());
    // The lease is free at once: the next start proceeds.
    audit.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(relay.start(spec()).await.unwrap().wait().await.unwrap().is_success());
}

/// Defect 4, the other half: when the record cannot be written after the
/// start was audited, the trail says the rollout did not start, and the
/// lease is released.
#[tokio::test(start_paused = true)]
async fn a_start_whose_record_cannot_be_written_audits_that_it_did_not_start() {
    let w = World::new(41);
    let state = Arc::new(
        Faulty::new(relay::MemoryStateStore::new(), 41)
            .with_rate(FaultKind::PermissionDenied, 0.0)
            .only_operations(&["put"]),
    );
    let relay = w.builder().state(state.clone()).build().unwrap();
    deploy_v1(&relay).await;
    state.fail_next(1);
    let spec = || RolloutSpec::new("web", release("v2"), CanaryStrategy::new().set_weight(50)).id("r-41");
    assert!(relay.start(spec()).await.is_err());
    assert!(relay.state().get("r-41").await.unwrap().is_none());
    assert_eq!(finished(&relay, "r-41").await, vec![serde_json::json!("not_started")]);
    assert!(relay.start(spec()).await.unwrap().wait().await.unwrap().is_success());
}

/// Defect 10: a stable revision deleted behind relay's back was treated as
/// "not short", so the rollback skipped restoring it and routed all traffic
/// to a revision that was not there. It is now started again from what it
/// ran, and traffic goes to it only once its replicas are ready.
#[tokio::test(start_paused = true)]
async fn a_rollback_starts_a_deleted_stable_again_before_routing_traffic_to_it() {
    let (w, relay) = World::with_v1(10).await;
    let stable = w.target.observe().await.unwrap().stable.unwrap();
    let handle = relay
        .start(RolloutSpec::new("web", release("v3"), canary()))
        .await
        .unwrap();
    let id = handle.id().to_owned();
    let mut events = handle.events();
    until(&mut events, |k| {
        matches!(k, EventKind::TrafficShifted { candidate_weight: 25 })
    })
    .await;
    // Someone moves everything to the candidate and deletes the stable.
    let candidate = relay.state().get(&id).await.unwrap().unwrap().plan.candidate.id.clone();
    w.target.route(&relay::TrafficSplit::all(&candidate)).await.unwrap();
    w.target.retire(&stable).await.unwrap();
    assert!(w.target.observe().await.unwrap().revision(&stable).is_none());
    let outcome = handle.wait().await.unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
    let state = w.target.observe().await.unwrap();
    assert_eq!(state.stable.as_ref(), Some(&stable));
    assert_eq!(state.traffic.weight(&stable), 100);
    assert_eq!(state.revision(&stable).map(|r| (r.desired, r.ready)), Some((4, 4)));
    // Its replicas were ready before any traffic was routed to it.
    let rollback: Vec<_> = relay
        .audit()
        .entries()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event.rollout == id && e.event.detail.to_value()["rollback"] == true)
        .map(|e| e.event.action)
        .collect();
    assert_eq!(
        rollback.first().map(String::as_str),
        Some("target.stage"),
        "{rollback:?}"
    );
    let history = w.target.traffic_history();
    assert_eq!(history.last(), Some(&relay::TrafficSplit::all(&stable)));
}

/// The simulated target, but routing everything to `stable` (what a
/// rollback does) fails: with `Unavailable` for `outage` after the first
/// such call, and with `PermissionDenied` while `denied` is set.
#[derive(Debug)]
struct RollbackRouteFails {
    inner: Arc<SimTarget>,
    stable: relay::RevisionId,
    outage: Duration,
    began: std::sync::Mutex<Option<tokio::time::Instant>>,
    denied: std::sync::atomic::AtomicBool,
}

impl RollbackRouteFails {
    fn new(inner: Arc<SimTarget>, stable: relay::RevisionId, outage: Duration, denied: bool) -> Self {
        RollbackRouteFails {
            inner,
            stable,
            outage,
            began: std::sync::Mutex::new(None),
            denied: denied.into(),
        }
    }
}

#[async_trait]
impl Target for RollbackRouteFails {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> relay::Capabilities {
        self.inner.capabilities()
    }
    async fn observe(&self) -> relay::Result<relay::TargetState> {
        self.inner.observe().await
    }
    async fn stage(&self, revision: &relay::RevisionSpec, replicas: u32) -> relay::Result<()> {
        self.inner.stage(revision, replicas).await
    }
    async fn scale(&self, revision: &relay::RevisionId, replicas: u32) -> relay::Result<()> {
        self.inner.scale(revision, replicas).await
    }
    async fn route(&self, split: &relay::TrafficSplit) -> relay::Result<()> {
        if *split == relay::TrafficSplit::all(&self.stable) {
            if self.denied.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(relay::Error::PermissionDenied {
                    what: "elasticloadbalancing:ModifyListener".into(),
                });
            }
            let now = tokio::time::Instant::now();
            let began = *self.began.lock().unwrap().get_or_insert(now);
            if now < began + self.outage {
                return Err(relay::Error::Unavailable {
                    provider: "load balancer".into(),
                    reason: "503".into(),
                });
            }
        }
        self.inner.route(split).await
    }
    async fn promote(&self, revision: &relay::RevisionId) -> relay::Result<()> {
        self.inner.promote(revision).await
    }
    async fn retire(&self, revision: &relay::RevisionId) -> relay::Result<()> {
        self.inner.retire(revision).await
    }
}

/// A world running v1, and an engine over `wrap(the simulated target)`.
async fn v1_behind(
    seed: u64,
    wrap: impl FnOnce(Arc<SimTarget>, relay::RevisionId) -> Arc<dyn Target>,
) -> (World, relay::Relay, relay::RevisionId) {
    let (w, plain) = World::with_v1(seed).await;
    let stable = w.target.observe().await.unwrap().stable.unwrap();
    let relay = w
        .stores()
        .target(wrap(w.target.clone(), stable.clone()))
        .probe(Arc::new(SimProbe::new(w.target.clone())))
        .state(plain.state().clone())
        .audit(plain.audit().clone())
        .build()
        .unwrap();
    (w, relay, stable)
}

/// Defect 2, first half: a passing outage of the load balancer during the
/// rollback (90 s of 503s on the route back to stable) ended the rollout
/// `RollbackFailed`, which nothing could resume, with a quarter of the
/// traffic left on the bad candidate. The rollback now tries the action
/// again within its retry budget and completes.
#[tokio::test(start_paused = true)]
async fn a_passing_outage_during_rollback_is_retried_until_the_rollback_completes() {
    let (w, relay, stable) = v1_behind(2, |sim, stable| {
        Arc::new(RollbackRouteFails::new(sim, stable, Duration::from_secs(90), false))
    })
    .await;
    let handle = relay
        .start(RolloutSpec::new("web", release("v3"), canary()))
        .await
        .unwrap();
    let id = handle.id().to_owned();
    let outcome = handle.wait().await.unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
    let state = w.target.observe().await.unwrap();
    assert_eq!(state.traffic.weight(&stable), 100);
    assert_eq!(state.stable.as_ref(), Some(&stable));
    let actions = actions(&relay, &id).await;
    assert!(actions.iter().any(|a| a == "rollback.retrying"), "{actions:?}");
}

/// A world running v1 whose route back to stable was denied while a
/// canary of the bad v3 rolled back, so its rollback failed; then the
/// denial is lifted (a human fixed the permission). The world, the engine,
/// the stable revision and the failed rollout's id.
async fn failed_rollback(seed: u64) -> (World, relay::Relay, relay::RevisionId, String) {
    let target = std::sync::OnceLock::<Arc<RollbackRouteFails>>::new();
    let (w, relay, stable) = v1_behind(seed, |sim, stable| {
        let t = Arc::new(RollbackRouteFails::new(sim, stable, Duration::ZERO, true));
        target.set(t.clone()).unwrap();
        t
    })
    .await;
    let handle = relay
        .start(RolloutSpec::new("web", release("v3"), canary()))
        .await
        .unwrap();
    let id = handle.id().to_owned();
    let outcome = handle.wait().await.unwrap();
    assert!(matches!(outcome, Outcome::RollbackFailed { .. }), "{outcome}");
    assert_ne!(w.target.observe().await.unwrap().traffic.weight(&stable), 100);
    target
        .get()
        .unwrap()
        .denied
        .store(false, std::sync::atomic::Ordering::SeqCst);
    (w, relay, stable, id)
}

/// Defect 2, second half: a rollback that failed on something a human must
/// fix (a denied permission) ends `RollbackFailed` at once; once fixed,
/// `resume` finishes it from the action that failed.
#[tokio::test(start_paused = true)]
async fn a_failed_rollback_is_finished_by_resume_once_the_cause_is_fixed() {
    let (w, relay, stable, id) = failed_rollback(21).await;
    let outcome = relay.resume(&id).await.unwrap().wait().await.unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
    let state = w.target.observe().await.unwrap();
    assert_eq!(state.traffic.weight(&stable), 100);
    assert_eq!(state.revisions.len(), 1, "the candidate is retired: {state:?}");
}

/// Defect 2, the already-stable check: after a rollback failed with traffic
/// left on the candidate, deploying the stable release again answered "no
/// change", because only the revision was compared. It now settles the
/// target on it: full size, all traffic, the leftover retired. The failed
/// rollback can then no longer be resumed: the later rollout owns the
/// target.
#[tokio::test(start_paused = true)]
async fn deploying_the_stable_release_over_a_failed_rollback_settles_the_target() {
    let (w, relay, stable, failed) = failed_rollback(22).await;
    let spec = || RolloutSpec::new("web", release("v1"), relay::strategies::AllAtOnceStrategy);
    let plan = relay.plan(&spec()).await.unwrap();
    assert!(!plan.is_noop(), "not settled, yet planned as no change:\n{plan}");
    assert!(
        plan.steps
            .iter()
            .any(|s| matches!(s, relay::Step::RetireLeftover { .. })),
        "{plan}"
    );
    let outcome = run(&relay, spec()).await;
    assert_eq!(
        outcome,
        Outcome::Promoted {
            revision: stable.to_string()
        }
    );
    let state = w.target.observe().await.unwrap();
    assert_eq!(state.traffic.weight(&stable), 100);
    assert_eq!(state.revisions.len(), 1, "{state:?}");
    // Settled now: the same release again is no change.
    assert!(relay.plan(&spec()).await.unwrap().is_noop());
    // The failed rollback is superseded.
    let resumed = relay.resume(&failed).await;
    assert!(
        matches!(&resumed, Err(relay::Error::Conflict { what }) if what.contains("owns the target")),
        "{:?}",
        resumed.map(|h| h.id().to_owned())
    );
}

/// A rollout that waits at an indefinite pause until resumed.
fn held() -> CanaryStrategy {
    CanaryStrategy::new().set_weight(25).pause_until_resumed()
}

/// Defect 3, first half: `recover()` on an engine returned a second driver
/// for a rollout that engine was already driving (its own acquire counted
/// as a renewal).
#[tokio::test(start_paused = true)]
async fn recover_never_starts_a_second_driver_for_a_rollout_this_engine_drives() {
    let (_w, relay) = World::with_v1(3).await;
    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), held()))
        .await
        .unwrap();
    let mut events = handle.events();
    until(
        &mut events,
        |k| matches!(k, EventKind::StepStarted { kind, .. } if kind == "pause"),
    )
    .await;
    let (handles, skipped) = relay.recover().await.unwrap();
    assert!(handles.is_empty(), "a second driver of {}", handle.id());
    assert_eq!(skipped.len(), 1);
    assert!(
        matches!(skipped[0].1, relay::Error::Conflict { .. }),
        "{}",
        skipped[0].1
    );
    assert!(matches!(
        relay.resume(handle.id()).await,
        Err(relay::Error::Conflict { .. })
    ));
    handle.resume("operator").unwrap();
    assert!(handle.wait().await.unwrap().is_success());
}

/// Defect 3, second half: the holder id was the engine's name and the
/// rollout's, and the default name `relay-<pid>-<n>` is the same in every
/// container (PID 1): two hosts were one holder, and the second took over
/// a live rollout as a "renewal". Two engines given the same name, sharing
/// a state directory, now hold leases as two holders; their rollout ids
/// differ too.
#[tokio::test(start_paused = true)]
async fn two_engines_with_the_same_name_never_share_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(relay::FileStateStore::open(dir.path()).unwrap());
    let w = World::new(31);
    let engine = || w.builder().holder("relay-1-0").state(state.clone()).build().unwrap();
    let (a, b) = (engine(), engine());
    deploy_v1(&a).await;
    let handle = a.start(RolloutSpec::new("web", release("v2"), held())).await.unwrap();
    let mut events = handle.events();
    until(
        &mut events,
        |k| matches!(k, EventKind::StepStarted { kind, .. } if kind == "pause"),
    )
    .await;
    let taken = b.resume(handle.id()).await;
    assert!(
        matches!(taken, Err(relay::Error::TargetLocked { .. })),
        "another engine took a live lease: {:?}",
        taken.map(|h| h.id().to_owned())
    );
    let record = state.get(handle.id()).await.unwrap().unwrap();
    assert!(record.holder.starts_with("relay-1-0#"), "{}", record.holder);
    handle.resume("operator").unwrap();
    assert!(handle.wait().await.unwrap().is_success());
    // Rollouts started at the same instant by both get different ids (the
    // same id made the second start fail on the first's record).
    let again = || RolloutSpec::new("web", release("v2"), relay::strategies::AllAtOnceStrategy);
    let first = a.start(again()).await.unwrap();
    let first_id = first.id().to_owned();
    assert_eq!(first.wait().await.unwrap(), Outcome::NoChange);
    let second = b.start(again()).await.unwrap();
    assert_ne!(second.id(), first_id);
    assert_eq!(second.wait().await.unwrap(), Outcome::NoChange);
}

/// A layer that records when each mutating call of the target it wraps
/// was made.
#[derive(Debug, Default)]
struct Timed {
    calls: std::sync::Mutex<Vec<(&'static str, tokio::time::Instant)>>,
}

#[async_trait]
impl Interceptor for Timed {
    async fn before(&self, op: &'static str) -> relay::Result<()> {
        if op != "observe" && op != "describe" {
            self.calls.lock().unwrap().push((op, tokio::time::Instant::now()));
        }
        Ok(())
    }
}

/// Defect 13: target calls were not fenced. When the state store stopped
/// answering renewals, the engine kept changing the target long after its
/// lease expired (and another engine could have taken the target over).
/// Renewal now gives up before the lease expires, and no target call is
/// made after that.
#[tokio::test(start_paused = true)]
async fn no_target_call_is_made_once_the_lease_could_not_be_renewed() {
    let w = World::new(13);
    let timed = Arc::new(Wrapped::with(Timed::default(), w.target.clone()));
    // A store shared between processes (no in-process hold), whose
    // renewals fail from the start.
    let state = Arc::new(
        Faulty::new(relay::MemoryStateStore::new(), 13)
            .with_rate(FaultKind::Unavailable, 1.0)
            .only_operations(&["renew_lease"]),
    );
    let relay = w
        .stores()
        .target(timed.clone())
        .probe(Arc::new(SimProbe::new(w.target.clone())))
        .state(state.clone())
        .build()
        .unwrap();
    // v1 goes out in seconds, well within one lease.
    deploy_v1(&relay).await;
    let ttl = relay::EngineConfig::default().lease_ttl;
    let started = tokio::time::Instant::now();
    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), canary()))
        .await
        .unwrap();
    let id = handle.id().to_owned();
    let ended = handle.wait().await;
    assert!(
        matches!(ended, Err(relay::Error::LeaseLost { .. })),
        "the engine must stop on a lease it cannot renew: {ended:?}"
    );
    let calls = timed.interceptor().calls.lock().unwrap().clone();
    assert!(!calls.is_empty());
    let late: Vec<_> = calls.iter().filter(|(_, at)| *at >= started + ttl).collect();
    assert!(late.is_empty(), "target calls after the lease expired: {late:?}");
    // Left running for another engine to pick up.
    let record = relay.state().get(&id).await.unwrap().unwrap();
    assert_eq!(record.status, relay::RolloutStatus::Running);
}

/// What the next append's write does to the disk under the audit log.
#[derive(Clone, Copy, Debug, PartialEq)]
enum DiskFault {
    /// Writes half the line, then fails (a full disk).
    Torn,
    /// Writes the line, then the sync fails.
    Unsynced,
    /// Writes half the line and fails, and cutting it off fails too.
    TornForGood,
}

/// The log's file, failing as told.
#[derive(Debug)]
struct FailingDisk {
    file: std::fs::File,
    next: Arc<std::sync::Mutex<Option<DiskFault>>>,
    failed_write: Option<DiskFault>,
}

impl relay::audit::AuditFile for FailingDisk {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.failed_write = self.next.lock().unwrap().take();
        match self.failed_write {
            Some(DiskFault::Torn | DiskFault::TornForGood) => {
                self.file.write_all(&bytes[..bytes.len() / 2])?;
                Err(std::io::Error::other("no space left on device"))
            }
            _ => self.file.write_all(bytes),
        }
    }
    fn sync(&mut self) -> std::io::Result<()> {
        match self.failed_write {
            Some(DiskFault::Unsynced) => Err(std::io::Error::other("input/output error")),
            _ => self.file.sync_data(),
        }
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        match self.failed_write {
            Some(DiskFault::TornForGood) => Err(std::io::Error::other("read-only file system")),
            _ => self.file.set_len(len),
        }
    }
}

/// A JSONL sink at `path` over a disk that fails as the returned cell says,
/// at the next append.
fn sink_on_failing_disk(path: &std::path::Path) -> (relay::JsonlAuditSink, Arc<std::sync::Mutex<Option<DiskFault>>>) {
    let next = Arc::new(std::sync::Mutex::new(None));
    let disk = next.clone();
    let sink = relay::JsonlAuditSink::open_with(path, &relay::audit::ChainKey::none(), move |file| {
        Box::new(FailingDisk {
            file,
            next: disk,
            failed_write: None,
        })
    })
    .unwrap();
    (sink, next)
}

fn event(action: &str) -> relay::audit::AuditEvent {
    relay::audit::AuditEvent {
        at_ms: 1,
        actor: "test".into(),
        rollout: "r-14".into(),
        action: action.into(),
        detail: serde_json::json!({"n": action}).into(),
    }
}

/// Defect 14: when a write or sync of the audit log failed, the bytes
/// already written stayed and the head did not advance: the next append
/// wrote a whole line after a partial one (or repeated a sequence number),
/// and the log no longer opened. An append is now all or nothing.
#[tokio::test]
async fn a_failed_audit_append_leaves_no_torn_or_duplicate_line() {
    use relay::AuditSink;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (sink, next) = sink_on_failing_disk(&path);
    sink.append(&event("one")).await.unwrap();
    for fault in [DiskFault::Torn, DiskFault::Unsynced] {
        *next.lock().unwrap() = Some(fault);
        assert!(sink.append(&event("lost")).await.is_err(), "{fault:?}");
        sink.append(&event("kept")).await.unwrap();
    }
    let entries = sink.entries().await.unwrap();
    let seqs: Vec<_> = entries.iter().map(|e| (e.seq, e.event.action.as_str())).collect();
    assert_eq!(seqs, vec![(1, "one"), (2, "kept"), (3, "kept")]);
    assert_eq!(sink.verify().await.unwrap(), 3);
    drop(sink);
    assert_eq!(relay::JsonlAuditSink::open(&path).unwrap().verify().await.unwrap(), 3);
}

/// Defect 14, the other half: an interrupted line (a crash mid-write, or a
/// cut that failed too) made the log fail to open for good. Opening it now
/// cuts the partial line back to the last whole entry and records the
/// repair; a whole line that does not verify is still tampering.
#[tokio::test]
async fn an_interrupted_audit_line_is_cut_off_and_the_repair_recorded_on_open() {
    use relay::AuditSink;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (sink, next) = sink_on_failing_disk(&path);
    sink.append(&event("one")).await.unwrap();
    sink.append(&event("two")).await.unwrap();
    *next.lock().unwrap() = Some(DiskFault::TornForGood);
    assert!(sink.append(&event("torn")).await.is_err());
    // The cut failed: the sink refuses to write after a partial line.
    let refused = sink.append(&event("after")).await.unwrap_err();
    assert!(refused.to_string().contains("opened again"), "{refused}");
    drop(sink);
    let torn = std::fs::read(&path).unwrap();
    assert_ne!(torn.last(), Some(&b'\n'), "the test left a partial line");
    // A read-only check reports it, and leaves it.
    let reported = relay::JsonlAuditSink::verify_file(&path, &relay::audit::ChainKey::none()).unwrap_err();
    assert!(reported.to_string().contains("interrupted line"), "{reported}");
    assert_eq!(std::fs::read(&path).unwrap(), torn);

    let reopened = relay::JsonlAuditSink::open(&path).unwrap();
    let entries = reopened.entries().await.unwrap();
    let actions: Vec<_> = entries.iter().map(|e| e.event.action.as_str()).collect();
    assert_eq!(actions, vec!["one", "two", "audit.repaired"]);
    let cut = entries[2].event.detail.to_value()["cut_bytes"].as_u64().unwrap();
    assert!(cut > 0);
    assert_eq!(reopened.verify().await.unwrap(), 3);
    reopened.append(&event("three")).await.unwrap();
    assert_eq!(reopened.verify().await.unwrap(), 4);
    drop(reopened);

    // A whole line that was edited is not an interrupted write.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\"one\"", "\"uno\"", 1)).unwrap();
    assert!(matches!(
        relay::JsonlAuditSink::open(&path),
        Err(relay::Error::AuditTampered { .. })
    ));
}
