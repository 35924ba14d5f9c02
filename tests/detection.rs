//! Detection to rollback (issue 9): a candidate that turns bad at a known
//! virtual instant is judged failing at the next measurement, and the
//! rollback's first change to the target happens in the same tick as the
//! failing verdict. Flagger rolls back after `threshold` failed checks made
//! `interval` apart; relay's `failure_limit` is that threshold minus one.

#![allow(clippy::unwrap_used)]

#[path = "shared/calls.rs"]
mod calls;

use std::sync::Arc;
use std::time::Duration;

use relay::providers::sim::{metrics, MemoryArtifactStore, RevisionBehavior, SimProbe, SimTarget};
use relay::providers::Wrapped;
use relay::strategies::{AllAtOnceStrategy, CanaryStrategy, ThresholdJudge};
use relay::{AnalysisSpec, Check, EventKind, Outcome, Relay, Release, RolloutSpec, VerdictOutcome};
use tokio::time::Instant;

use calls::Calls;

const INTERVAL: Duration = Duration::from_secs(60);

struct Detection {
    /// Failing verdicts before the rollback.
    failing_verdicts: usize,
    /// From the injected failure to the verdict that rolled back.
    to_verdict: Duration,
    /// From that verdict to the first change of the rollback.
    verdict_to_change: Duration,
}

/// A canary at 50% analysed every minute; `after` into the analysis, the
/// candidate starts failing 20% of requests.
async fn detect(failure_limit: u32, after: Duration) -> Detection {
    let artifacts = Arc::new(MemoryArtifactStore::new());
    artifacts.push("app", "v1", b"1", Default::default());
    let v2 = artifacts.push("app", "v2", b"2", Default::default());
    let sim = Arc::new(SimTarget::new("web").seed(3));
    let changes = Calls::default();
    let relay = Relay::builder()
        .artifacts(artifacts)
        .target(Arc::new(Wrapped::with(changes.clone(), sim.clone())))
        .probe(Arc::new(SimProbe::new(sim.clone())))
        .build()
        .unwrap();
    let release = |tag: &str| Release::new(format!("app:{tag}").parse().unwrap()).replicas(4);
    let v1 = relay
        .start(RolloutSpec::new("web", release("v1"), AllAtOnceStrategy))
        .await
        .unwrap();
    assert!(v1.wait().await.unwrap().is_success());

    let check = Check::new("errors", metrics::ERROR_RATE, ThresholdJudge::below(0.05));
    let analysis = AnalysisSpec::new(vec![check])
        .every(INTERVAL, 30)
        .failure_limit(failure_limit);
    let canary = CanaryStrategy::new().set_weight(50).analyze(analysis).set_weight(100);
    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), canary))
        .await
        .unwrap();
    let mut events = handle.events();
    let (mut injected, mut failing, mut verdict_at) = (None, 0, None);
    let mut rollback_started = None;
    let mut ticker = None;
    loop {
        tokio::select! {
            e = events.next() => {
                let Some(e) = e else { break };
                match e.kind {
                    EventKind::StepStarted { kind, .. } if kind == "analyze" => {
                        ticker = Some(Box::pin(tokio::time::sleep(after)));
                    }
                    EventKind::Verdict { verdict } if verdict.judgement.outcome == VerdictOutcome::Fail => {
                        failing += 1;
                        verdict_at = Some(Instant::now());
                    }
                    EventKind::RollbackStarted { .. } => rollback_started = Some(Instant::now()),
                    _ => {}
                }
            }
            () = async { ticker.as_mut().unwrap().await }, if ticker.is_some() => {
                ticker = None;
                sim.behavior(&v2.digest, RevisionBehavior::failing(0.2));
                injected = Some(Instant::now());
            }
        }
    }
    let outcome = handle.wait().await.unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
    let (injected, verdict_at) = (injected.unwrap(), verdict_at.unwrap());
    assert_eq!(
        rollback_started,
        Some(verdict_at),
        "the rollback starts with the verdict"
    );
    let first_change = changes
        .times(Calls::is_change)
        .into_iter()
        .find(|t| *t >= verdict_at)
        .unwrap();
    Detection {
        failing_verdicts: failing,
        to_verdict: verdict_at - injected,
        verdict_to_change: first_change - verdict_at,
    }
}

#[tokio::test(start_paused = true)]
async fn a_failure_injected_mid_interval_rolls_back_at_the_next_measurement_in_the_same_tick() {
    // Injected 2.5 intervals into the analysis: the third measurement, half
    // an interval later, fails.
    let d = detect(0, INTERVAL * 5 / 2).await;
    assert_eq!(d.failing_verdicts, 1);
    assert_eq!(d.to_verdict, INTERVAL / 2);
    assert_eq!(d.verdict_to_change, Duration::ZERO, "same tick as the verdict");
}

#[tokio::test(start_paused = true)]
async fn a_failure_limit_waits_that_many_more_intervals_like_flaggers_threshold() {
    for limit in [1, 4] {
        let d = detect(limit, INTERVAL * 5 / 2).await;
        assert_eq!(d.failing_verdicts, limit as usize + 1);
        assert_eq!(d.to_verdict, INTERVAL / 2 + INTERVAL * limit);
        assert_eq!(d.verdict_to_change, Duration::ZERO);
        eprintln!(
            "failure_limit {limit} (Flagger threshold {}): {} failing verdicts, {:?} from failure to verdict, {:?} to the first rollback change",
            limit + 1,
            d.failing_verdicts,
            d.to_verdict,
            d.verdict_to_change
        );
    }
}
