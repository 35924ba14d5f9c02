//! Property tests: for random valid specs every strategy's plan keeps the
//! invariants users rely on; invalid specs are refused naming the field.

use std::time::Duration;

use proptest::prelude::*;
use relay_core::{Capabilities, Error, PlanContext, RevisionId, RevisionState, Role, Routing, Step, Strategy as _};
use relay_strategies::{AllAtOnceStrategy, Amount, BlueGreenStrategy, CanaryStrategy, RollingStrategy};

fn ctx(replicas: u32, routing: Routing) -> PlanContext {
    PlanContext {
        target: "t".into(),
        capabilities: Capabilities::new(routing, 2),
        replicas,
        stable: Some(RevisionState::new(RevisionId::from("old"), replicas, replicas)),
    }
}

/// Walk the plan as if every scale became ready at once, and check the
/// invariants; `max_unavailable` and `max_surge` bound capacity.
fn check_invariants(steps: &[Step], n: u32, max_unavailable: u32, max_surge: Option<u32>) -> Result<(), String> {
    let (mut c, mut s, mut weight) = (0u32, n, 0u8);
    let mut promoted = false;
    let mut retired = false;
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Stage { replicas } => c = *replicas,
            Step::Scale {
                role: Role::Candidate,
                replicas,
            } => c = *replicas,
            Step::Scale {
                role: Role::Stable,
                replicas,
            } => s = *replicas,
            Step::Route { candidate_weight } => {
                if promoted {
                    return Err(format!("step {i}: route after promote"));
                }
                if *candidate_weight < weight {
                    return Err(format!("step {i}: weight decreased {weight} -> {candidate_weight}"));
                }
                weight = *candidate_weight;
            }
            Step::Promote => {
                if weight != 100 {
                    return Err(format!("step {i}: promote with candidate at {weight}%"));
                }
                promoted = true;
            }
            Step::Retire { role: Role::Stable } => {
                if !promoted {
                    return Err(format!("step {i}: stable retired before promotion"));
                }
                s = 0;
                retired = true;
            }
            _ => {}
        }
        if !retired && c + s < n.saturating_sub(max_unavailable) {
            return Err(format!("step {i}: capacity {c}+{s} below {n}-{max_unavailable}"));
        }
        if let Some(surge) = max_surge {
            if c + s > n + surge {
                return Err(format!("step {i}: {c}+{s} replicas exceed {n}+{surge}"));
            }
        }
    }
    if !promoted || !retired || weight != 100 || c != n {
        return Err(format!("plan does not end promoted at full size: promoted={promoted} retired={retired} weight={weight} candidate={c}"));
    }
    Ok(())
}

fn weights() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::btree_set(1u8..=100, 1..8).prop_map(|s| s.into_iter().collect())
}

proptest! {
    #[test]
    fn canary_plans_keep_invariants(ws in weights(), n in 1u32..50, ratio in any::<bool>(), pause_s in 1u64..3600) {
        let mut c = CanaryStrategy::new();
        for w in &ws {
            c = c.set_weight(*w).pause(Duration::from_secs(pause_s));
        }
        let routing = if ratio { Routing::ReplicaRatio } else { Routing::Weighted };
        let steps = c.plan(&ctx(n, routing)).unwrap();
        // A replica-ratio canary trades stable replicas for candidate ones, one for one.
        let unavailable = 0;
        check_invariants(&steps, n, unavailable, None).map_err(TestCaseError::fail)?;
        if ratio {
            // Every weight the plan states is the one its replicas make.
            let (mut c, mut s) = (0u32, n);
            for step in &steps {
                match step {
                    Step::Stage { replicas } | Step::Scale { role: Role::Candidate, replicas } => c = *replicas,
                    Step::Scale { role: Role::Stable, replicas } => s = *replicas,
                    Step::Route { candidate_weight } => {
                        prop_assert_eq!(u32::from(*candidate_weight), c * 100 / (c + s), "{} candidate, {} stable", c, s);
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn rolling_plans_keep_invariants(n in 1u32..60, batch in 1u32..20, surge in 0u32..10, unavail in 0u32..10, weighted in any::<bool>()) {
        prop_assume!(surge + unavail.min(n) > 0);
        let r = RollingStrategy::new().batch(Amount::Count(batch)).max_surge(Amount::Count(surge)).max_unavailable(Amount::Count(unavail));
        let routing = if weighted { Routing::Weighted } else { Routing::ReplicaRatio };
        let steps = r.plan(&ctx(n, routing)).unwrap();
        check_invariants(&steps, n, unavail.min(n), Some(surge)).map_err(TestCaseError::fail)?;
        // Traffic reaches the candidate's replicas before stable shrinks:
        // every stable scale-down with candidate replicas up follows a route
        // that already counts it.
        let (mut c, mut w) = (0u32, 0u32);
        for step in &steps {
            match step {
                Step::Stage { replicas } | Step::Scale { role: Role::Candidate, replicas } => c = *replicas,
                Step::Route { candidate_weight } => w = u32::from(*candidate_weight),
                Step::Scale { role: Role::Stable, replicas } if c > 0 => {
                    let s = *replicas;
                    let want = if s == 0 { 100 } else { c * 100 / (c + s) };
                    prop_assert!(w >= want, "stable down to {} with the candidate ({}) at {}%: {:?}", s, c, w, steps);
                }
                _ => {}
            }
        }
        // Behind a switch, or without traffic control, rolling is refused.
        for routing in [Routing::Switch, Routing::None] {
            let refused = matches!(r.plan(&ctx(n, routing)), Err(relay_core::Error::Unsupported { .. }));
            prop_assert!(refused, "rolling on {:?} must be refused", routing);
        }
    }

    #[test]
    fn blue_green_and_all_at_once_keep_invariants(n in 1u32..100, delay in 0u64..600) {
        let bg = BlueGreenStrategy::new().scale_down_delay(Duration::from_secs(delay));
        check_invariants(&bg.plan(&ctx(n, Routing::Switch)).unwrap(), n, 0, None).map_err(TestCaseError::fail)?;
        check_invariants(&AllAtOnceStrategy.plan(&ctx(n, Routing::None)).unwrap(), n, 0, None).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn decreasing_or_oversized_weights_are_refused(a in 1u8..=100, b in 1u8..=255) {
        prop_assume!(b <= a || b > 100);
        let c = CanaryStrategy::new().set_weight(a).set_weight(b);
        match c.plan(&ctx(4, Routing::Weighted)) {
            Err(Error::InvalidSpec { path, .. }) => prop_assert_eq!(path, "strategy.steps[1].weight"),
            other => prop_assert!(false, "expected InvalidSpec, got {:?}", other),
        }
    }
}

fn invalid_path(r: relay_core::Result<Vec<Step>>) -> String {
    match r {
        Err(Error::InvalidSpec { path, .. }) => path,
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
}

#[test]
fn invalid_specs_name_the_field() {
    let c = ctx(4, Routing::Weighted);
    assert_eq!(invalid_path(CanaryStrategy::new().plan(&c)), "strategy.steps");
    assert_eq!(
        invalid_path(CanaryStrategy::new().set_weight(0).plan(&c)),
        "strategy.steps[0].weight"
    );
    assert_eq!(
        invalid_path(CanaryStrategy::new().set_weight(10).pause(Duration::ZERO).plan(&c)),
        "strategy.steps[1].pause"
    );
    assert_eq!(
        invalid_path(CanaryStrategy::new().set_weight(10).gate(" ").plan(&c)),
        "strategy.steps[1].gate"
    );
    let no_room = RollingStrategy::new()
        .max_surge(Amount::Count(0))
        .max_unavailable(Amount::Count(0));
    assert_eq!(invalid_path(no_room.plan(&c)), "strategy.max_surge");
    assert_eq!(
        invalid_path(RollingStrategy::new().batch(Amount::Percent(101)).plan(&c)),
        "strategy.batch"
    );
    assert_eq!(
        invalid_path(RollingStrategy::new().batch(Amount::Count(0)).plan(&c)),
        "strategy.batch"
    );
}

#[test]
fn zero_replicas_are_refused_by_every_strategy() {
    let c = ctx(0, Routing::Weighted);
    let canary = CanaryStrategy::ten_percent_then_full(Duration::from_secs(1));
    let strategies: [&dyn relay_core::Strategy; 4] = [
        &canary,
        &RollingStrategy::new(),
        &BlueGreenStrategy::new(),
        &AllAtOnceStrategy,
    ];
    for s in strategies {
        assert_eq!(invalid_path(s.plan(&c)), "release.replicas", "{}", s.name());
    }
}

#[test]
fn capabilities_are_checked_at_plan_time() {
    let canary = CanaryStrategy::ten_percent_then_full(Duration::from_secs(300));
    for routing in [Routing::None, Routing::Switch] {
        assert!(
            matches!(canary.plan(&ctx(4, routing)), Err(Error::Unsupported { .. })),
            "{routing:?}"
        );
    }
    assert!(matches!(
        BlueGreenStrategy::new().plan(&ctx(4, Routing::ReplicaRatio)),
        Err(Error::Unsupported { .. })
    ));
    let mut single = ctx(4, Routing::Weighted);
    single.capabilities.max_revisions = 1;
    assert!(matches!(canary.plan(&single), Err(Error::Unsupported { .. })));
    assert!(matches!(
        RollingStrategy::new().plan(&single),
        Err(Error::Unsupported { .. })
    ));
}

#[test]
fn presets_expand_as_documented() {
    let c = ctx(10, Routing::Weighted);
    let steps = CanaryStrategy::ten_percent_then_full(Duration::from_secs(300))
        .plan(&c)
        .unwrap();
    let kinds: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        kinds,
        [
            "start candidate with 1 replica(s)",
            "traffic: candidate 10%, stable 90%",
            "wait 5m",
            "scale candidate to 10 replica(s)",
            "traffic: candidate 100%, stable 0%",
            "make candidate stable",
            "retire stable",
        ]
    );
    let linear = CanaryStrategy::linear(10, Duration::from_secs(60));
    assert_eq!(linear.steps().len(), 18, "10..=90 each with a pause");
}

#[test]
fn first_deployment_is_a_straight_start() {
    let mut c = ctx(3, Routing::Weighted);
    c.stable = None;
    let steps = CanaryStrategy::ten_percent_then_full(Duration::from_secs(1))
        .plan(&c)
        .unwrap();
    let kinds: Vec<&str> = steps.iter().map(Step::kind).collect();
    assert_eq!(kinds, ["stage", "route", "promote"]);
}

#[test]
fn a_first_blue_green_deployment_keeps_only_absolute_checks() {
    use relay_core::{AnalysisSpec, Check};
    use relay_strategies::{Direction, MannWhitneyJudge, ThresholdJudge};
    let mut first = ctx(3, Routing::Switch);
    first.stable = None;
    let comparative = AnalysisSpec::new(vec![Check::new(
        "lat",
        "latency_ms",
        MannWhitneyJudge::new(Direction::LowerIsBetter),
    )]);
    let mixed = AnalysisSpec::new(vec![
        Check::new("lat", "latency_ms", MannWhitneyJudge::new(Direction::LowerIsBetter)),
        Check::new("err", "error_rate", ThresholdJudge::below(0.05)),
    ]);
    let bg = BlueGreenStrategy::new()
        .pre_promotion(comparative.clone())
        .post_promotion(mixed.clone());
    let steps = bg.plan(&first).unwrap();
    assert_eq!(
        run_and_skipped(&steps),
        vec![(vec![], vec!["lat"]), (vec!["err"], vec!["lat"])],
        "nothing to compare with on a first deployment: shown as skipped"
    );
    // With a stable revision both analyses stay whole.
    let with_stable = bg.plan(&ctx(3, Routing::Switch)).unwrap();
    assert_eq!(
        with_stable.iter().filter(|s| matches!(s, Step::Analyze { .. })).count(),
        2
    );
}

/// Each analysis step's checks that run and checks skipped, by name.
fn run_and_skipped(steps: &[Step]) -> Vec<(Vec<&str>, Vec<&str>)> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Analyze { analysis } => Some((
                analysis.checks.iter().map(|c| c.name.as_str()).collect(),
                analysis.skipped.iter().map(|c| c.name.as_str()).collect(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn a_first_canary_or_rolling_deployment_keeps_its_absolute_checks_and_gates() {
    use relay_core::{AnalysisSpec, Check};
    use relay_strategies::{Direction, MannWhitneyJudge, ThresholdJudge};
    let mut first = ctx(4, Routing::Weighted);
    first.stable = None;
    let mixed = AnalysisSpec::new(vec![
        Check::new("lat", "latency_ms", MannWhitneyJudge::new(Direction::LowerIsBetter)),
        Check::new("err", "error_rate", ThresholdJudge::below(0.05)),
    ]);
    let canary = CanaryStrategy::new()
        .set_weight(10)
        .analyze(mixed.clone())
        .pause(Duration::from_secs(60))
        .set_weight(50)
        .gate("qa");
    let steps = canary.plan(&first).unwrap();
    let kinds: Vec<_> = steps.iter().map(Step::kind).collect();
    assert_eq!(
        kinds,
        ["stage", "route", "analyze", "gate", "promote"],
        "timed pauses go"
    );
    assert!(matches!(steps[0], Step::Stage { replicas: 4 }));
    assert!(matches!(steps[1], Step::Route { candidate_weight: 100 }));
    assert_eq!(run_and_skipped(&steps), vec![(vec!["err"], vec!["lat"])]);
    let mut rolling = RollingStrategy::new();
    rolling.analysis = Some(mixed);
    let steps = rolling.plan(&first).unwrap();
    let kinds: Vec<_> = steps.iter().map(Step::kind).collect();
    assert_eq!(kinds, ["stage", "route", "analyze", "promote"]);
    assert_eq!(run_and_skipped(&steps), vec![(vec!["err"], vec!["lat"])]);
}
