//! The judges' measured accuracy stays where BENCHMARKS.md says it is:
//! few false alarms on A/A comparisons, high power against regressions.
//! (The full tables come from `cargo bench --bench analysis_accuracy`.)

use relay_strategies::analysis::accuracy::{rejection_rate, Arm, Setting};
use relay_strategies::analysis::{Direction, MannWhitneyJudge, ProportionJudge};

const LAT: Arm = Arm::Latency {
    median: 40.0,
    sigma: 0.6,
};

fn setting(baseline: Arm, candidate: Arm, n: usize, looks: u32) -> Setting {
    Setting {
        baseline,
        candidate,
        samples_per_arm: n,
        looks,
    }
}

#[test]
fn mann_whitney_false_positives_and_power() {
    let judge = MannWhitneyJudge::new(Direction::LowerIsBetter).tolerance(0.0);
    for looks in [1, 5] {
        let fp = rejection_rate(&judge, setting(LAT, LAT, 200, looks), 3_000, 11);
        assert!(fp <= 0.013, "A/A false positives {fp} at {looks} look(s)");
    }
    let slower = Arm::Latency {
        median: 80.0,
        sigma: 0.6,
    };
    let power = rejection_rate(&judge, setting(LAT, slower, 50, 5), 500, 12);
    assert!(power >= 0.95, "power against 2x latency at 50 per arm: {power}");
}

#[test]
fn proportion_false_positives_and_power() {
    let judge = ProportionJudge::new();
    let base = Arm::Errors { rate: 0.05 };
    for looks in [1, 5] {
        let fp = rejection_rate(&judge, setting(base, base, 1_000, looks), 3_000, 13);
        assert!(fp <= 0.013, "A/A false positives {fp} at {looks} look(s)");
    }
    let doubled = Arm::Errors { rate: 0.10 };
    let power = rejection_rate(&judge, setting(base, doubled, 1_000, 1), 500, 14);
    assert!(
        power >= 0.95,
        "power against 2x errors at 1,000 requests per arm: {power}"
    );
}
