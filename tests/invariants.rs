//! The engine's invariants under random fault schedules (issue 8): over
//! seeds, strategies (canary, rolling, blue/green with and without
//! analysis), target kinds (weighted, replica-ratio and switch routing),
//! candidate behaviours (healthy, failing, crashing), aborts at random
//! instants, and `Faulty` schedules on the target (retryable faults, terminal
//! denials, hung calls) and the probe, every rollout must:
//!
//! 1. end in a documented terminal state, the same in its outcome and its
//!    record;
//! 2. never report success after a rollback began;
//! 3. once rolling back, never raise the candidate's weight again, and on a
//!    rollback that completed leave all traffic on stable;
//! 4. write exactly one `target.*` audit entry per mutating call that
//!    reached the target and succeeded;
//! 5. keep at least `replicas - max_unavailable` ready replicas serving
//!    traffic after every mutation (0 unavailable for canary and
//!    blue/green);
//! 6. change nothing when it is refused at planning.
//!
//! The number of rollouts is `RELAY_INVARIANT_CASES` (300 by default, so the
//! suite stays quick); RELIABILITY.md records a release-mode run of 100,000.
//! A violation fails with the (shrunk) case that broke it.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};
use relay::providers::sim::{metrics, MemoryArtifactStore, RevisionBehavior, SimProbe, SimTarget};
use relay::providers::{FaultKind, Faulty};
use relay::strategies::{Amount, BlueGreenStrategy, CanaryStrategy, RollingStrategy, ThresholdJudge};
use relay::{
    AnalysisSpec, Capabilities, Check, EventKind, Outcome, Relay, Release, RetryPolicy, RevisionId, RevisionSpec,
    RolloutSpec, RolloutStatus, Routing, RunningRevision, Strategy as RolloutStrategy, Target, TargetState,
    TrafficSplit,
};

/// One generated rollout.
#[derive(Clone, Debug)]
struct Case {
    seed: u64,
    routing: Routing,
    replicas: u32,
    strategy: StrategyCase,
    behavior: Behavior,
    /// Retryable faults on the target (kind, rate).
    retryable: (FaultKind, f64),
    /// Terminal denials on the target.
    denied: f64,
    /// Calls that never return.
    hung: f64,
    /// Probe errors.
    probe_errors: f64,
    /// Abort this long after the start.
    abort_after: Option<Duration>,
}

#[derive(Clone, Debug)]
enum StrategyCase {
    Canary {
        weights: Vec<u8>,
        analysis: bool,
    },
    Rolling {
        batch: u32,
        surge: u32,
        unavailable: u32,
        analysis: bool,
    },
    BlueGreen {
        analysis: bool,
    },
}

#[derive(Clone, Copy, Debug)]
enum Behavior {
    Healthy,
    Failing,
    Crashing,
}

fn case() -> impl Strategy<Value = Case> {
    // Mostly targets every strategy can use; a switch-only target now and
    // then, where canary and rolling must be refused before any change.
    let routing = prop_oneof![
        4 => Just(Routing::Weighted),
        4 => Just(Routing::ReplicaRatio),
        1 => Just(Routing::Switch)
    ];
    let strategy = prop_oneof![
        (proptest::collection::btree_set(1u8..=99, 0..4), any::<bool>()).prop_map(|(w, analysis)| {
            StrategyCase::Canary {
                weights: w.into_iter().collect(),
                analysis,
            }
        }),
        (1u32..4, 0u32..3, 0u32..3, any::<bool>()).prop_map(|(batch, surge, unavailable, analysis)| {
            StrategyCase::Rolling {
                batch,
                surge,
                unavailable,
                analysis,
            }
        }),
        any::<bool>().prop_map(|analysis| StrategyCase::BlueGreen { analysis }),
    ];
    let behavior = prop_oneof![
        3 => Just(Behavior::Healthy),
        2 => Just(Behavior::Failing),
        1 => Just(Behavior::Crashing)
    ];
    let retryable = (
        prop_oneof![
            Just(FaultKind::Unavailable),
            Just(FaultKind::RateLimited),
            Just(FaultKind::Timeout)
        ],
        prop_oneof![Just(0.0), 0.0..0.3],
    );
    (
        any::<u64>(),
        routing,
        1u32..7,
        strategy,
        behavior,
        retryable,
        prop_oneof![3 => Just(0.0), 1 => 0.0..0.03],
        prop_oneof![3 => Just(0.0), 1 => 0.0..0.02],
        prop_oneof![Just(0.0), 0.0..0.2],
        proptest::option::weighted(0.25, (1u64..1_800).prop_map(Duration::from_secs)),
    )
        .prop_map(
            |(seed, routing, replicas, strategy, behavior, retryable, denied, hung, probe_errors, abort_after)| Case {
                seed,
                routing,
                replicas,
                strategy,
                behavior,
                retryable,
                denied,
                hung,
                probe_errors,
                abort_after,
            },
        )
}

fn analysis() -> AnalysisSpec {
    AnalysisSpec::new(vec![Check::new(
        "errors",
        metrics::ERROR_RATE,
        ThresholdJudge::below(0.05).min_samples(10),
    )])
    .every(Duration::from_secs(60), 2)
}

impl Case {
    fn strategy(&self) -> (Arc<dyn RolloutStrategy>, u32) {
        match &self.strategy {
            StrategyCase::Canary { weights, analysis: a } => {
                let mut s = CanaryStrategy::new();
                for w in weights {
                    s = s.set_weight(*w);
                    if *a {
                        s = s.analyze(analysis());
                    }
                }
                (Arc::new(s), 0)
            }
            StrategyCase::Rolling {
                batch,
                surge,
                unavailable,
                analysis: a,
            } => {
                let mut s = RollingStrategy::new()
                    .batch(Amount::Count(*batch))
                    .max_surge(Amount::Count(*surge))
                    .max_unavailable(Amount::Count(*unavailable));
                if *a {
                    s.analysis = Some(analysis());
                }
                (Arc::new(s), (*unavailable).min(self.replicas))
            }
            StrategyCase::BlueGreen { analysis: a } => {
                let mut s = BlueGreenStrategy::new();
                if *a {
                    s.pre_promotion = Some(analysis());
                }
                (Arc::new(s), 0)
            }
        }
    }
}

/// What the target looked like right after one successful mutation.
#[derive(Clone, Debug)]
struct Snapshot {
    op: &'static str,
    /// Ready replicas of the revisions that receive traffic.
    serving: u32,
    traffic: TrafficSplit,
    stable: Option<RevisionId>,
}

/// Records the simulated target's state after every mutation that returned
/// successfully through the fault wrappers.
#[derive(Debug)]
struct Recorder {
    outer: Arc<dyn Target>,
    sim: Arc<SimTarget>,
    log: Mutex<Vec<Snapshot>>,
}

impl Recorder {
    async fn record(&self, op: &'static str) {
        let s = self.sim.observe().await.unwrap();
        let serving = s
            .revisions
            .iter()
            .filter(|r| s.traffic.weight(&r.id) > 0)
            .map(|r| r.ready)
            .sum();
        self.log.lock().unwrap().push(Snapshot {
            op,
            serving,
            traffic: s.traffic.clone(),
            stable: s.stable.clone(),
        });
    }
}

#[async_trait]
impl Target for Recorder {
    fn name(&self) -> &str {
        self.outer.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.outer.capabilities()
    }
    async fn observe(&self) -> relay::Result<TargetState> {
        self.outer.observe().await
    }
    async fn stage(&self, revision: &RevisionSpec, replicas: u32) -> relay::Result<()> {
        self.outer.stage(revision, replicas).await?;
        self.record("stage").await;
        Ok(())
    }
    async fn scale(&self, revision: &RevisionId, replicas: u32) -> relay::Result<()> {
        self.outer.scale(revision, replicas).await?;
        self.record("scale").await;
        Ok(())
    }
    async fn route(&self, split: &TrafficSplit) -> relay::Result<()> {
        self.outer.route(split).await?;
        self.record("route").await;
        Ok(())
    }
    async fn promote(&self, revision: &RevisionId) -> relay::Result<()> {
        self.outer.promote(revision).await?;
        self.record("promote").await;
        Ok(())
    }
    async fn retire(&self, revision: &RevisionId) -> relay::Result<()> {
        self.outer.retire(revision).await?;
        self.record("retire").await;
        Ok(())
    }
    async fn describe(&self, revision: &RevisionId) -> relay::Result<Option<RunningRevision>> {
        self.outer.describe(revision).await
    }
}

/// What a case did, for the checks and the tally.
struct Run {
    planned: Result<(), relay::Error>,
    outcome: Option<Outcome>,
    status: Option<RolloutStatus>,
    rollback_started: bool,
    /// Candidate weights from the traffic snapshots after the rollback began.
    weights_after_rollback: Vec<u8>,
    snapshots: Vec<Snapshot>,
    mutations: u64,
    audited_mutations: usize,
    stable_before: RevisionId,
    candidate: Option<RevisionId>,
    max_unavailable: u32,
}

fn run_case(case: &Case) -> Run {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(run_case_async(case))
}

async fn run_case_async(case: &Case) -> Run {
    let sim = Arc::new(
        SimTarget::new("web")
            .seed(case.seed)
            .routing(case.routing)
            .max_revisions(2),
    );
    let artifacts = Arc::new(MemoryArtifactStore::new());
    artifacts.push("shop/web", "v1", b"build 1", BTreeMap::new());
    let v2 = artifacts.push("shop/web", "v2", b"build 2", BTreeMap::new());
    sim.behavior(
        &v2.digest,
        match case.behavior {
            Behavior::Healthy => RevisionBehavior::healthy(),
            Behavior::Failing => RevisionBehavior::failing(0.25),
            Behavior::Crashing => RevisionBehavior::crashing(),
        },
    );
    let release = |tag: &str| Release::new(format!("shop/web:{tag}").parse().unwrap()).replicas(case.replicas);
    // v1 goes out without faults, so every case starts from a stable release.
    let plain = Relay::builder()
        .target(sim.clone())
        .artifacts(artifacts.clone())
        .build()
        .unwrap();
    let first = plain
        .start(RolloutSpec::new("web", release("v1"), relay::strategies::AllAtOnce))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(first.is_success(), "{first}");
    let stable_before = sim.observe().await.unwrap().stable.unwrap();

    let faulty: Arc<dyn Target> = Arc::new(
        Faulty::new(
            Faulty::new(
                Faulty::new(sim.clone(), case.seed ^ 1).with_rate(case.retryable.0, case.retryable.1),
                case.seed ^ 2,
            )
            .with_rate(FaultKind::PermissionDenied, case.denied),
            case.seed ^ 3,
        )
        .with_rate(FaultKind::Hang, case.hung),
    );
    let recorder = Arc::new(Recorder {
        outer: faulty,
        sim: sim.clone(),
        log: Mutex::new(Vec::new()),
    });
    let probe =
        Faulty::new(SimProbe::new(sim.clone()), case.seed ^ 4).with_rate(FaultKind::Unavailable, case.probe_errors);
    let relay = Relay::builder()
        .target(recorder.clone())
        .probe(Arc::new(probe))
        .artifacts(artifacts)
        .retry(RetryPolicy {
            attempt_timeout: Duration::from_secs(20),
            ..RetryPolicy::default()
        })
        .seed(case.seed)
        .build()
        .unwrap();
    let (strategy, max_unavailable) = case.strategy();
    let spec = RolloutSpec::with_strategy("web", release("v2"), strategy);
    let mutations_before = sim.mutations();
    let mut run = Run {
        planned: Ok(()),
        outcome: None,
        status: None,
        rollback_started: false,
        weights_after_rollback: Vec::new(),
        snapshots: Vec::new(),
        mutations: 0,
        audited_mutations: 0,
        stable_before,
        candidate: None,
        max_unavailable,
    };
    let handle = match relay.start(spec).await {
        Ok(h) => h,
        Err(e) => {
            run.planned = Err(e);
            run.mutations = sim.mutations() - mutations_before;
            return run;
        }
    };
    let id = handle.id().to_owned();
    let mut events = handle.events();
    if let Some(after) = case.abort_after {
        let control = handle.control();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = control.abort("invariants", "random abort");
        });
    }
    let outcome = handle.wait().await;
    let mut rollback_at = None;
    while let Some(e) = events.next().await {
        if let EventKind::RollbackStarted { .. } = e.kind {
            run.rollback_started = true;
            rollback_at = Some(e.at_ms);
        }
    }
    let record = relay.state().get(&id).await.unwrap().unwrap();
    run.candidate = Some(record.plan.candidate.id.clone());
    run.status = Some(record.status);
    run.outcome = Some(outcome.expect("the engine drives every rollout to an end (memory state store)"));
    run.snapshots = recorder.log.lock().unwrap().clone();
    if rollback_at.is_some() {
        // Snapshots are in call order; the rollback's are those after the
        // first mutation the rollback made, found from the audit log.
        let entries = relay.audit().entries().await.unwrap();
        let mutations: Vec<_> = entries
            .iter()
            .filter(|e| e.event.rollout == id && e.event.action.starts_with("target."))
            .collect();
        let first_rollback = mutations
            .iter()
            .position(|e| e.event.detail.to_value().get("rollback").and_then(|v| v.as_bool()) == Some(true))
            .unwrap_or(mutations.len());
        let candidate = run.candidate.clone().unwrap();
        run.weights_after_rollback = run
            .snapshots
            .iter()
            .skip(first_rollback)
            .filter(|s| s.op == "route")
            .map(|s| s.traffic.weight(&candidate))
            .collect();
    }
    run.mutations = sim.mutations() - mutations_before;
    run.audited_mutations = relay
        .audit()
        .entries()
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event.rollout == id && e.event.action.starts_with("target."))
        .count();
    run
}

fn check(case: &Case, run: &Run) -> Result<(), String> {
    if let Err(e) = &run.planned {
        // 6. A refusal at planning changes nothing.
        if run.mutations != 0 {
            return Err(format!("refused ({e}) but made {} mutations", run.mutations));
        }
        return Ok(());
    }
    let outcome = run.outcome.as_ref().unwrap();
    let status = run.status.as_ref().unwrap();
    // 1. A documented terminal state, the same in outcome and record.
    let agrees = matches!(
        (outcome, status),
        (Outcome::Promoted { .. }, RolloutStatus::Succeeded)
            | (Outcome::RolledBack { .. }, RolloutStatus::RolledBack { .. })
            | (Outcome::RollbackFailed { .. }, RolloutStatus::RollbackFailed { .. })
            | (Outcome::NoChange, RolloutStatus::NoChange)
    );
    if !agrees {
        return Err(format!("outcome {outcome} but record {status:?}"));
    }
    // 2. Never success after a rollback began.
    if run.rollback_started && outcome.is_success() {
        return Err(format!("rolled back, yet reports {outcome}"));
    }
    if !run.rollback_started && matches!(outcome, Outcome::RolledBack { .. }) {
        return Err("rolled back without a rollback event".into());
    }
    // 3. The candidate's weight never rises once rolling back; a completed
    // rollback leaves all traffic on stable.
    if run.weights_after_rollback.windows(2).any(|w| w[1] > w[0]) {
        return Err(format!(
            "candidate weight rose during rollback: {:?}",
            run.weights_after_rollback
        ));
    }
    if let Outcome::RolledBack { .. } = outcome {
        let last = run.snapshots.last();
        if let Some(s) = last {
            if s.traffic.weight(&run.stable_before) != 100 || s.stable.as_ref() != Some(&run.stable_before) {
                return Err(format!(
                    "rolled back but traffic is {} with stable {:?}",
                    s.traffic, s.stable
                ));
            }
        }
    }
    if let Outcome::Promoted { revision } = outcome {
        let s = run.snapshots.last().ok_or("promoted without a mutation")?;
        if s.stable.as_ref().map(RevisionId::as_str) != Some(revision.as_str()) {
            return Err(format!("promoted {revision} but the target's stable is {:?}", s.stable));
        }
    }
    // 4. One audit entry per successful mutating call.
    if run.audited_mutations != run.snapshots.len() {
        return Err(format!(
            "{} target.* audit entries for {} successful mutating calls",
            run.audited_mutations,
            run.snapshots.len()
        ));
    }
    // 5. Capacity after every mutation.
    let floor = case.replicas.saturating_sub(run.max_unavailable);
    if let Some(s) = run.snapshots.iter().find(|s| s.serving < floor) {
        return Err(format!(
            "only {} ready replicas serve after {} (floor {floor}); snapshots: {:?}",
            s.serving, s.op, run.snapshots
        ));
    }
    Ok(())
}

#[derive(Default, Debug)]
struct Tally {
    cases: u64,
    refused: u64,
    promoted: u64,
    rolled_back: u64,
    rollback_failed: u64,
    no_change: u64,
}

#[test]
fn invariants_hold_under_random_fault_schedules() {
    let cases: u32 = std::env::var("RELAY_INVARIANT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 2_000,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let tally = Mutex::new(Tally::default());
    let started = std::time::Instant::now();
    let result = runner.run(&case(), |case| {
        let run = run_case(&case);
        let verdict = check(&case, &run);
        let mut t = tally.lock().unwrap();
        t.cases += 1;
        match (&run.planned, &run.outcome) {
            (Err(_), _) => t.refused += 1,
            (_, Some(Outcome::Promoted { .. })) => t.promoted += 1,
            (_, Some(Outcome::RolledBack { .. })) => t.rolled_back += 1,
            (_, Some(Outcome::RollbackFailed { .. })) => t.rollback_failed += 1,
            (_, Some(Outcome::NoChange)) => t.no_change += 1,
            (_, None) => {}
        }
        verdict.map_err(TestCaseError::fail)
    });
    let t = tally.into_inner().unwrap();
    let violations = u64::from(matches!(result, Err(TestError::Fail(..))));
    eprintln!(
        "invariants: {} rollouts in {:.1} s ({} refused at planning, {} promoted, {} rolled back, {} rollback failed, {} no change); violations: {violations}",
        t.cases,
        started.elapsed().as_secs_f64(),
        t.refused,
        t.promoted,
        t.rolled_back,
        t.rollback_failed,
        t.no_change
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
