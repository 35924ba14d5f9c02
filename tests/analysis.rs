//! Statistical analysis end to end, in virtual time: regressions against the
//! baseline are rolled back, an equal release is promoted, and a release
//! without traffic is never promoted silently.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use relay::providers::sim::{metrics, RevisionBehavior, SimTarget};
use relay::strategies::{CanaryStrategy, Direction, MannWhitneyJudge, ProportionJudge};
use relay::{
    analysis::InconclusivePolicy, AnalysisSpec, Check, EventKind, Outcome, RolloutSpec, Target, VerdictOutcome,
};

/// Latency (Mann-Whitney) and errors (proportions) against the stable
/// baseline, five looks a minute apart.
fn comparative(policy: InconclusivePolicy) -> CanaryStrategy {
    let analysis = AnalysisSpec::new(vec![
        Check::new(
            "latency",
            metrics::LATENCY_MS,
            MannWhitneyJudge::new(Direction::LowerIsBetter).tolerance(0.2),
        ),
        Check::new("errors", metrics::ERROR_RATE, ProportionJudge::new().tolerance(0.5)),
    ])
    .every(Duration::from_secs(60), 5)
    .on_inconclusive(policy);
    CanaryStrategy::new()
        .set_weight(25)
        .analyze(analysis.clone())
        .set_weight(50)
        .analyze(analysis)
}

fn base() -> RevisionBehavior {
    RevisionBehavior {
        error_rate: 0.01,
        latency_ms: 40.0,
        ..RevisionBehavior::default()
    }
}

/// A world whose target runs v1 (1% errors, 40 ms) and has `candidate` as
/// the behaviour of build `v2`.
async fn world(seed: u64, rps: f64, candidate: RevisionBehavior) -> (World, relay::Relay) {
    let w = World::with_target(
        SimTarget::new("web")
            .seed(seed)
            .requests_per_second(rps)
            .default_behavior(base()),
    );
    let v2 = w.artifacts.push("shop/web", "v2x", b"build 2x", Default::default());
    w.target.behavior(&v2.digest, candidate);
    let relay = w.relay();
    deploy_v1(&relay).await;
    (w, relay)
}

fn failing_check(events: &[relay::RolloutEvent]) -> Option<relay::Verdict> {
    events.iter().find_map(|e| match &e.kind {
        EventKind::Verdict { verdict } if verdict.judgement.outcome == VerdictOutcome::Fail => {
            Some((**verdict).clone())
        }
        _ => None,
    })
}

#[tokio::test(start_paused = true)]
async fn a_doubled_latency_is_rolled_back() {
    let (w, relay) = world(
        31,
        200.0,
        RevisionBehavior {
            latency_ms: 80.0,
            ..base()
        },
    )
    .await;
    let (outcome, events) = run_with_events(
        &relay,
        RolloutSpec::new("web", release("v2x"), comparative(InconclusivePolicy::RollBack)),
    )
    .await;
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
    let v = failing_check(&events).expect("a failing verdict");
    assert_eq!(v.check, "latency");
    let j = &v.judgement;
    assert!(j.p_value.unwrap() < j.alpha.unwrap(), "significant");
    assert!(j.effect_size.unwrap() > 0.8, "about +100%: {:?}", j.effect_size);
    assert!(j.baseline_samples.unwrap() >= 60 && j.samples >= 60);
    assert!(j.summary["candidate_median"] > 1.6 * j.summary["baseline_median"]);
    assert_eq!(w.target.observe().await.unwrap().revisions.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_tripled_error_rate_is_rolled_back() {
    let (_w, relay) = world(
        32,
        200.0,
        RevisionBehavior {
            error_rate: 0.03,
            ..base()
        },
    )
    .await;
    let (outcome, events) = run_with_events(
        &relay,
        RolloutSpec::new("web", release("v2x"), comparative(InconclusivePolicy::RollBack)),
    )
    .await;
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
    let v = failing_check(&events).expect("a failing verdict");
    assert_eq!(v.check, "errors");
    assert!(v.judgement.summary["candidate_rate"] > 2.0 * v.judgement.summary["baseline_rate"]);
    // The audit holds the same explanation.
    let audited = relay
        .audit()
        .entries()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.event.action == "analysis.verdict" && e.event.detail.to_value()["outcome"] == "fail")
        .unwrap();
    let detail = audited.event.detail.to_value();
    assert!(detail["p_value"].as_f64().unwrap() < detail["alpha"].as_f64().unwrap());
    assert_eq!(detail["statistic_name"], "z");
}

#[tokio::test(start_paused = true)]
async fn an_equal_release_is_promoted() {
    for seed in [33, 34, 35] {
        let (_w, relay) = world(seed, 200.0, base()).await;
        let (outcome, events) = run_with_events(
            &relay,
            RolloutSpec::new("web", release("v2x"), comparative(InconclusivePolicy::RollBack)),
        )
        .await;
        assert!(outcome.is_success(), "seed {seed}: {outcome}");
        let verdicts = events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Verdict { .. }))
            .count();
        assert_eq!(verdicts, 20, "2 checks x 5 looks x 2 analyses");
    }
}

#[tokio::test(start_paused = true)]
async fn no_traffic_is_inconclusive_and_rolled_back_by_default() {
    let (_w, relay) = world(36, 0.0, base()).await;
    let (outcome, events) = run_with_events(
        &relay,
        RolloutSpec::new("web", release("v2x"), comparative(InconclusivePolicy::RollBack)),
    )
    .await;
    match &outcome {
        Outcome::RolledBack { cause } => assert!(
            cause.contains("inconclusive 3 times") && cause.contains("insufficient data"),
            "{cause}"
        ),
        other => panic!("{other}"),
    }
    assert!(events.iter().all(
        |e| !matches!(&e.kind, EventKind::Verdict { verdict } if verdict.judgement.outcome == VerdictOutcome::Pass)
    ));
}

#[tokio::test(start_paused = true)]
async fn no_traffic_can_pause_for_a_human_instead() {
    let (w, relay) = world(37, 0.0, base()).await;
    let handle = relay
        .start(RolloutSpec::new(
            "web",
            release("v2x"),
            comparative(InconclusivePolicy::Pause),
        ))
        .await
        .unwrap();
    let mut events = handle.events();
    let paused = until(&mut events, |k| matches!(k, EventKind::Paused { .. })).await;
    assert!(matches!(&paused.kind, EventKind::Paused { by } if by.contains("inconclusive")));
    tokio::time::sleep(Duration::from_secs(6 * 3600)).await;
    let state = w.target.observe().await.unwrap();
    assert_eq!(
        state.revisions.len(),
        2,
        "held: neither promoted nor rolled back while waiting"
    );
    assert!(relay.state().get(handle.id()).await.unwrap().unwrap().paused);
    handle.abort("oncall", "no traffic to judge").unwrap();
    assert!(matches!(handle.wait().await.unwrap(), Outcome::RolledBack { .. }));
}

/// Tolerating inconclusive verdicts is not evidence of health: with a limit
/// as high as the number of looks, a release without traffic was promoted
/// before this check (found by the CloudWatch test on the AWS emulator,
/// whose first window held no datapoint).
#[tokio::test(start_paused = true)]
async fn a_check_that_never_passed_does_not_promote_even_within_its_limits() {
    let (_w, relay) = world(38, 0.0, base()).await;
    let analysis = AnalysisSpec::new(vec![Check::new(
        "errors",
        metrics::ERROR_RATE,
        ProportionJudge::new().tolerance(0.5),
    )])
    .every(Duration::from_secs(60), 3)
    .inconclusive_limit(3);
    let strategy = CanaryStrategy::new().set_weight(25).analyze(analysis);
    let outcome = run(&relay, RolloutSpec::new("web", release("v2x"), strategy)).await;
    match &outcome {
        Outcome::RolledBack { cause } => assert!(
            cause.contains("\"errors\" never passed in 3 measurement(s)") && cause.contains("3 inconclusive"),
            "{cause}"
        ),
        other => panic!("{other}"),
    }
}
