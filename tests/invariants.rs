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
//! 6. change nothing when it is refused at planning;
//! 7. never be promoted once an abort was accepted (`rollout.aborted`);
//! 8. never raise the candidate's weight after an accepted abort or a
//!    failed analysis (from the `rollout.aborted` or `rollback.started`
//!    entry on);
//! 9. never be reverted once promoted (a failed cleanup after promotion,
//!    such as a denied retire, leaves it promoted);
//! 10. end with exactly one `rollout.finished` entry, naming the outcome.
//!
//! Operators act at random instants: pause, resume, abort, promote-now and
//! approve a manual gate held before promotion (which otherwise decides on
//! its timeout). A rollback may meet an outage of the route back to stable
//! (every such call failing for up to ten minutes), on top of the random
//! faults.
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
    clock::TokioClock, gate::OnTimeout, AnalysisSpec, Capabilities, Check, Clock, EngineConfig, EventKind,
    ManualApproval, Outcome, Relay, Release, RetryPolicy, RevisionId, RevisionSpec, RolloutSpec, RolloutStatus,
    Routing, RunningRevision, Strategy as RolloutStrategy, Target, TargetState, TrafficSplit,
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
    /// Operator commands, each this long after the start.
    commands: Vec<(Duration, Command)>,
    /// A manual gate before promotion, decided on its timeout with this
    /// outcome unless approved.
    gate: Option<OnTimeout>,
    /// How long the route back to stable fails once a rollback first
    /// tries it.
    rollback_outage: Duration,
}

/// An operator's command.
#[derive(Clone, Copy, Debug)]
enum Command {
    Pause,
    Resume,
    Abort,
    PromoteNow,
    Approve,
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
        proptest::collection::vec((instant(), command()), 0..4),
        proptest::option::weighted(0.3, prop_oneof![Just(OnTimeout::Approve), Just(OnTimeout::Reject)]),
        prop_oneof![3 => Just(Duration::ZERO), 1 => (1u64..600).prop_map(Duration::from_secs)],
    )
        .prop_map(
            |(
                seed,
                routing,
                replicas,
                strategy,
                behavior,
                retryable,
                denied,
                hung,
                probe_errors,
                commands,
                gate,
                rollback_outage,
            )| Case {
                seed,
                routing,
                replicas,
                strategy,
                behavior,
                retryable,
                denied,
                hung,
                probe_errors,
                commands,
                gate,
                rollback_outage,
            },
        )
}

/// When an operator acts: mostly early, while most rollouts still run
/// (one without analysis lasts seconds, one with it minutes).
fn instant() -> impl Strategy<Value = Duration> {
    prop_oneof![
        2 => (0u64..20_000).prop_map(Duration::from_millis),
        2 => (0u64..300).prop_map(Duration::from_secs),
        1 => (0u64..1_800).prop_map(Duration::from_secs),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Pause),
        Just(Command::Resume),
        Just(Command::Abort),
        Just(Command::PromoteNow),
        Just(Command::Approve),
    ]
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
    /// What the call asked of the candidate (any revision but the stable
    /// one before the rollout): the weight a route gave it, the replicas a
    /// stage or scale gave it.
    asked: Option<u32>,
}

/// Records the simulated target's state after every mutation that returned
/// successfully through the fault wrappers.
#[derive(Debug)]
struct Recorder {
    outer: Arc<dyn Target>,
    sim: Arc<SimTarget>,
    log: Mutex<Vec<Snapshot>>,
    /// Routing everything to this revision (a rollback's route) fails for
    /// `outage` from the first such call.
    stable: RevisionId,
    outage: Duration,
    outage_began: Mutex<Option<tokio::time::Instant>>,
}

impl Recorder {
    async fn record(&self, op: &'static str, asked: Option<u32>) {
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
            asked,
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
        self.record("stage", (revision.id != self.stable).then_some(replicas))
            .await;
        Ok(())
    }
    async fn scale(&self, revision: &RevisionId, replicas: u32) -> relay::Result<()> {
        self.outer.scale(revision, replicas).await?;
        self.record("scale", (*revision != self.stable).then_some(replicas))
            .await;
        Ok(())
    }
    async fn route(&self, split: &TrafficSplit) -> relay::Result<()> {
        if !self.outage.is_zero() && *split == TrafficSplit::all(&self.stable) {
            let now = tokio::time::Instant::now();
            let began = *self.outage_began.lock().unwrap().get_or_insert(now);
            if now < began + self.outage {
                return Err(relay::Error::Unavailable {
                    provider: "invariants".into(),
                    reason: "the route back to stable is out".into(),
                });
            }
        }
        self.outer.route(split).await?;
        let candidate = split
            .weights()
            .iter()
            .filter(|(id, _)| **id != self.stable)
            .map(|(_, w)| u32::from(*w))
            .sum();
        self.record("route", Some(candidate)).await;
        Ok(())
    }
    async fn promote(&self, revision: &RevisionId) -> relay::Result<()> {
        self.outer.promote(revision).await?;
        self.record("promote", None).await;
        Ok(())
    }
    async fn retire(&self, revision: &RevisionId) -> relay::Result<()> {
        self.outer.retire(revision).await?;
        self.record("retire", None).await;
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
    /// From an accepted abort or the rollback's start on, what the engine
    /// asked of the candidate: the weight of the last route before, then
    /// of every later route; the replicas of the last stage or scale
    /// before, then of every later one.
    asked_after_stop: [Vec<u32>; 2],
    /// The rollout's audit entries: action, and the rollback flag of a
    /// target change.
    entries: Vec<(String, bool)>,
    /// When the first abort reached the rollout's controls, and when its
    /// promote step started (engine clock).
    first_abort_sent: Option<i64>,
    promote_started: Option<i64>,
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
        .start(RolloutSpec::new(
            "web",
            release("v1"),
            relay::strategies::AllAtOnceStrategy,
        ))
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
        stable: stable_before.clone(),
        outage: case.rollback_outage,
        outage_began: Mutex::new(None),
    });
    let probe =
        Faulty::new(SimProbe::new(sim.clone()), case.seed ^ 4).with_rate(FaultKind::Unavailable, case.probe_errors);
    let clock = Arc::new(TokioClock::new());
    let mut builder = Relay::builder().target(recorder.clone()).probe(Arc::new(probe));
    if let Some(outcome) = case.gate {
        builder = builder.gate(Arc::new(
            ManualApproval::new("qa").timeout(Duration::from_secs(1_200), outcome),
        ));
    }
    let relay = builder
        .artifacts(artifacts)
        .retry(RetryPolicy {
            attempt_timeout: Duration::from_secs(20),
            ..RetryPolicy::default()
        })
        // Every event is kept for the checks, read once the rollout ends.
        .config(EngineConfig {
            event_buffer: 1 << 16,
            ..EngineConfig::default()
        })
        .clock(clock.clone())
        .seed(case.seed)
        .build()
        .unwrap();
    let (strategy, max_unavailable) = case.strategy();
    let mut spec = RolloutSpec::with_strategy("web", release("v2"), strategy);
    if case.gate.is_some() {
        spec = spec.gate_before_promotion("qa");
    }
    let mutations_before = sim.mutations();
    let mut run = Run {
        planned: Ok(()),
        outcome: None,
        status: None,
        rollback_started: false,
        weights_after_rollback: Vec::new(),
        asked_after_stop: [Vec::new(), Vec::new()],
        first_abort_sent: None,
        promote_started: None,
        entries: Vec::new(),
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
    let control = handle.control();
    let mut commands = case.commands.clone();
    commands.sort_by_key(|(at, _)| *at);
    let aborts_sent = Arc::new(Mutex::new(Vec::new()));
    let sent = aborts_sent.clone();
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        for (at, command) in commands {
            tokio::time::sleep_until(start + at).await;
            let _ = match command {
                Command::Pause => control.pause("operator"),
                Command::Resume => control.resume("operator"),
                Command::Abort => control
                    .abort("operator", "random abort")
                    .map(|()| sent.lock().unwrap().push(clock.now_ms())),
                Command::PromoteNow => control.promote_now("operator"),
                Command::Approve => control.approve("qa", "operator", "looks fine"),
            };
        }
        // Whatever was paused goes on in the end.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(3_600)).await;
            if control.resume("operator").is_err() {
                return;
            }
        }
    });
    let outcome = handle.wait().await;
    let mut rollback_at = None;
    while let Some(e) = events.next().await {
        match e.kind {
            EventKind::RollbackStarted { .. } => {
                run.rollback_started = true;
                rollback_at = Some(e.at_ms);
            }
            EventKind::StepStarted { ref kind, .. } if kind == "promote" => run.promote_started = Some(e.at_ms),
            _ => {}
        }
    }
    run.first_abort_sent = aborts_sent.lock().unwrap().first().copied();
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
    run.entries = relay
        .audit()
        .entries()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event.rollout == id)
        .map(|e| {
            let rollback = e.event.detail.to_value().get("rollback").and_then(|v| v.as_bool()) == Some(true);
            (e.event.action, rollback)
        })
        .collect();
    run.audited_mutations = run.entries.iter().filter(|(a, _)| a.starts_with("target.")).count();
    // From an accepted abort or the rollback's start: what was asked of
    // the candidate then (the last ask before), and at every later call.
    let stop = run
        .entries
        .iter()
        .position(|(a, _)| a == "rollout.aborted" || a == "rollback.started");
    if let Some(stop) = stop {
        let before = run.entries[..stop]
            .iter()
            .filter(|(a, _)| a.starts_with("target."))
            .count();
        for (i, ops) in [["route", "route"], ["stage", "scale"]].iter().enumerate() {
            let asks = |snapshots: &[Snapshot]| -> Vec<u32> {
                snapshots
                    .iter()
                    .filter(|s| ops.contains(&s.op))
                    .filter_map(|s| s.asked)
                    .collect()
            };
            let then = asks(&run.snapshots[..before]).last().copied().unwrap_or(0);
            run.asked_after_stop[i] = std::iter::once(then).chain(asks(&run.snapshots[before..])).collect();
        }
    }
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
    if status.outcome() != Some(outcome) {
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
    // 7. An abort sent before promotion began is not lost: no promote
    // step starts after it. And never promoted once an abort was accepted.
    if let (Some(sent), Some(promote)) = (run.first_abort_sent, run.promote_started) {
        if promote > sent {
            return Err(format!(
                "an abort sent at {sent} ms was lost: the promote step started at {promote} ms"
            ));
        }
    }
    let aborted = run.entries.iter().position(|(a, _)| a == "rollout.aborted");
    if let Some(at) = aborted {
        if outcome.is_success() {
            return Err(format!("aborted, yet {outcome}"));
        }
        if run.entries[at..]
            .iter()
            .any(|(a, rollback)| a == "target.promote" && !rollback)
        {
            return Err("the candidate was promoted after an accepted abort".into());
        }
    }
    // 8. The candidate's weight never rises after an abort or a failed
    // analysis.
    let [weights, replicas] = &run.asked_after_stop;
    if weights.windows(2).any(|w| w[1] > w[0]) {
        return Err(format!(
            "candidate weight rose after the rollout was stopped: {weights:?}"
        ));
    }
    if replicas.iter().skip(1).any(|r| *r > replicas[0]) {
        return Err(format!(
            "candidate replicas rose after the rollout was stopped: {replicas:?}"
        ));
    }
    // 9. Once promoted, never reverted.
    let promoted = run
        .entries
        .iter()
        .position(|(a, rollback)| a == "target.promote" && !rollback);
    if let Some(at) = promoted {
        if run.entries[at..].iter().any(|(a, _)| a == "rollback.started") {
            return Err(format!("rolled back after promotion: {:?}", run.entries));
        }
        if !matches!(outcome, Outcome::Promoted { .. }) {
            return Err(format!("promoted, then ended {outcome}"));
        }
    }
    // 10. Exactly one terminal entry.
    let finished = run.entries.iter().filter(|(a, _)| a == "rollout.finished").count();
    if finished != 1 {
        return Err(format!("{finished} rollout.finished entries: {:?}", run.entries));
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
    /// Rollouts in which these entries were written, by action: what the
    /// operators' commands and the faults during rollback exercised.
    actions: BTreeMap<&'static str, u64>,
}

/// The entries whose rollouts the tally counts.
const TALLIED: [&str; 9] = [
    "rollout.paused",
    "rollout.aborted",
    "rollout.abort_refused",
    "rollout.promote_now",
    "gate.approved",
    "gate.failed",
    "gate.decision_ignored",
    "rollout.cleanup_failed",
    "rollback.retrying",
];

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
        for action in TALLIED {
            if run.entries.iter().any(|(a, _)| a == action) {
                *t.actions.entry(action).or_default() += 1;
            }
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
    eprintln!("invariants: rollouts with {:?}", t.actions);
    if let Err(e) = result {
        panic!("{e}");
    }
}
