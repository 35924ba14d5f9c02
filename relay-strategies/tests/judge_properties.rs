//! Property tests of the judges: order does not matter, swapping the arms
//! flips the direction, identical arms never fail, bad data is never a pass.

use proptest::prelude::*;
use relay_core::{Counts, Judge, JudgeInput, VerdictOutcome};
use relay_strategies::analysis::stats::{hodges_lehmann, mann_whitney_greater};
use relay_strategies::analysis::{Direction, MannWhitneyJudge, ProportionJudge, ThresholdJudge};

fn arm() -> impl Strategy<Value = Vec<f64>> {
    proptest::collection::vec(1.0f64..500.0, 10..80)
}

/// A deterministic permutation of `v` driven by `seed`.
fn shuffled(v: &[f64], seed: u64) -> Vec<f64> {
    let mut out = v.to_vec();
    let mut s = seed | 1;
    for i in (1..out.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.swap(i, (s % (i as u64 + 1)) as usize);
    }
    out
}

proptest! {
    #[test]
    fn mann_whitney_ignores_order(x in arm(), y in arm(), seed in any::<u64>()) {
        let judge = MannWhitneyJudge::new(Direction::LowerIsBetter);
        let a = judge.evaluate(&JudgeInput::compare(&x, &y));
        let b = judge.evaluate(&JudgeInput::compare(&shuffled(&x, seed), &shuffled(&y, seed ^ 0xdead)));
        prop_assert_eq!(a.outcome, b.outcome);
        prop_assert_eq!(a.p_value, b.p_value);
        prop_assert_eq!(a.statistic, b.statistic);
        prop_assert_eq!(a.effect_size, b.effect_size);
    }

    #[test]
    fn swapping_the_arms_flips_the_direction(x in arm(), y in arm()) {
        let u_xy = mann_whitney_greater(&x, &y).u;
        let u_yx = mann_whitney_greater(&y, &x).u;
        prop_assert!((u_xy + u_yx - (x.len() * y.len()) as f64).abs() < 1e-9);
        let d = hodges_lehmann(&x, &y, usize::MAX);
        prop_assert!((d + hodges_lehmann(&y, &x, usize::MAX)).abs() < 1e-9);
        // A clear regression (every value above every baseline value, by more
        // than twice the baseline's largest) fails one way and never the other.
        let top = y.iter().copied().fold(f64::MIN, f64::max);
        let worse: Vec<f64> = y.iter().map(|v| v + 2.0 * top).collect();
        let lower = MannWhitneyJudge::new(Direction::LowerIsBetter);
        prop_assert_eq!(lower.evaluate(&JudgeInput::compare(&worse, &y)).outcome, VerdictOutcome::Fail);
        prop_assert_eq!(lower.evaluate(&JudgeInput::compare(&y, &worse)).outcome, VerdictOutcome::Pass);
        let higher = MannWhitneyJudge::new(Direction::HigherIsBetter);
        prop_assert_eq!(higher.evaluate(&JudgeInput::compare(&y, &worse)).outcome, VerdictOutcome::Fail);
        prop_assert_eq!(higher.evaluate(&JudgeInput::compare(&worse, &y)).outcome, VerdictOutcome::Pass);
    }

    #[test]
    fn identical_arms_never_fail(x in arm(), look in 1u32..10, extra in 0u32..5) {
        let looks = look + extra;
        for dir in [Direction::LowerIsBetter, Direction::HigherIsBetter] {
            let j = MannWhitneyJudge::new(dir).tolerance(0.0);
            prop_assert_ne!(j.evaluate(&JudgeInput::compare(&x, &x).at_look(look, looks)).outcome, VerdictOutcome::Fail);
        }
    }

    #[test]
    fn proportion_judge_direction_and_identity(f1 in 0u64..300, f0 in 0u64..300, n in 300u64..5000) {
        let j = ProportionJudge::new().tolerance(0.0);
        let a = Counts { failures: f1, total: n };
        let b = Counts { failures: f0, total: n };
        prop_assert_ne!(j.evaluate(&JudgeInput::compare_counts(a, a)).outcome, VerdictOutcome::Fail);
        let ab = j.evaluate(&JudgeInput::compare_counts(a, b)).outcome;
        let ba = j.evaluate(&JudgeInput::compare_counts(b, a)).outcome;
        prop_assert!(!(ab == VerdictOutcome::Fail && ba == VerdictOutcome::Fail), "both directions failed");
        if f1 <= f0 {
            prop_assert_ne!(ab, VerdictOutcome::Fail, "fewer failures never fail");
        }
    }

    #[test]
    fn bad_data_is_never_a_pass(n in 0usize..5, nan in 0usize..20) {
        let mut v = vec![f64::NAN; nan];
        v.extend(std::iter::repeat_n(1.0, n));
        let base = vec![1.0; 40];
        let mw = MannWhitneyJudge::new(Direction::LowerIsBetter);
        prop_assert_eq!(mw.evaluate(&JudgeInput::compare(&v, &base)).outcome, VerdictOutcome::Inconclusive);
        prop_assert_eq!(mw.evaluate(&JudgeInput::values(&base)).outcome, VerdictOutcome::Inconclusive, "no baseline");
        let th = ThresholdJudge::below(10.0).min_samples(5);
        prop_assert_eq!(th.evaluate(&JudgeInput::values(&v)).outcome, VerdictOutcome::Inconclusive);
        let p = ProportionJudge::new();
        let few = Counts { failures: 0, total: n as u64 };
        prop_assert_eq!(p.evaluate(&JudgeInput::compare_counts(few, few)).outcome, VerdictOutcome::Inconclusive);
    }
}

#[test]
fn verdicts_explain_themselves() {
    let base: Vec<f64> = (0..60).map(|i| 40.0 + (i % 10) as f64).collect();
    let cand: Vec<f64> = base.iter().map(|v| v * 2.0).collect();
    let j = MannWhitneyJudge::new(Direction::LowerIsBetter).evaluate(&JudgeInput::compare(&cand, &base));
    assert_eq!(j.outcome, VerdictOutcome::Fail);
    assert_eq!((j.samples, j.baseline_samples), (60, Some(60)));
    assert_eq!(j.statistic_name.as_deref(), Some("U"));
    assert!(j.p_value.unwrap() < 1e-10, "{:?}", j.p_value);
    assert!((j.alpha.unwrap() - 0.01).abs() < 1e-12);
    assert!(
        (j.effect_size.unwrap() - 1.0).abs() < 0.05,
        "about +100%: {:?}",
        j.effect_size
    );
    for key in ["candidate_median", "baseline_median", "candidate_p95", "baseline_p95"] {
        assert!(j.summary.contains_key(key), "{key}");
    }
    assert!(j.reason.contains("shift") && j.reason.contains("p="), "{}", j.reason);

    let p = ProportionJudge::new().evaluate(&JudgeInput::compare_counts(
        Counts {
            failures: 150,
            total: 1000,
        },
        Counts {
            failures: 50,
            total: 1000,
        },
    ));
    assert_eq!(p.outcome, VerdictOutcome::Fail);
    assert_eq!(p.statistic_name.as_deref(), Some("z"));
    assert_eq!(p.summary["candidate_rate"], 0.15);
    assert!((p.effect_size.unwrap() - 2.0).abs() < 1e-12);
    // Small counts switch to Fisher's exact test.
    let small = ProportionJudge::new()
        .min_events(10)
        .evaluate(&JudgeInput::compare_counts(
            Counts { failures: 3, total: 20 },
            Counts { failures: 0, total: 20 },
        ));
    assert_eq!(small.statistic_name.as_deref(), Some("Fisher"));
}

#[test]
fn a_significant_but_tiny_shift_passes() {
    // 2% slower, very consistently: significant, but inside the 10% tolerance.
    let base: Vec<f64> = (0..500).map(|i| 100.0 + (i % 5) as f64 * 0.1).collect();
    let cand: Vec<f64> = base.iter().map(|v| v * 1.02).collect();
    let j = MannWhitneyJudge::new(Direction::LowerIsBetter).evaluate(&JudgeInput::compare(&cand, &base));
    assert!(j.p_value.unwrap() < 1e-6, "significant");
    assert_eq!(j.outcome, VerdictOutcome::Pass, "{}", j.reason);
    // The same shift fails with a 1% tolerance.
    let strict = MannWhitneyJudge::new(Direction::LowerIsBetter).tolerance(0.01);
    assert_eq!(
        strict.evaluate(&JudgeInput::compare(&cand, &base)).outcome,
        VerdictOutcome::Fail
    );
}

#[test]
fn early_looks_need_stronger_evidence_than_the_last() {
    // A moderate regression: not enough at look 1 of 10, enough at the last.
    let base: Vec<f64> = (0..40).map(|i| 50.0 + (i % 13) as f64).collect();
    let cand: Vec<f64> = base.iter().map(|v| v * 1.25).collect();
    let j = MannWhitneyJudge::new(Direction::LowerIsBetter);
    let early = j.evaluate(&JudgeInput::compare(&cand, &base).at_look(1, 10));
    let last = j.evaluate(&JudgeInput::compare(&cand, &base).at_look(10, 10));
    assert!(early.alpha.unwrap() < last.alpha.unwrap());
    assert_eq!(early.outcome, VerdictOutcome::Pass, "{}", early.reason);
    assert_eq!(last.outcome, VerdictOutcome::Fail, "{}", last.reason);
}
