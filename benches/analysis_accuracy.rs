//! Accuracy of the analysis judges, by simulation: false-positive rate over
//! A/A comparisons and power against real regressions, per samples per arm,
//! for the comparative judges and a plain threshold judge.
//!
//! `cargo bench --bench analysis_accuracy` (prints a Markdown table; add
//! `-- --quick` for a tenth of the trials, or `-- --mw-100k` for the
//! single-look Mann-Whitney false-positive rate from 100,000 trials per size).
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use relay::providers::sim::{metrics, SimTarget};
use relay::strategies::analysis::accuracy::{rejection_rate, Arm, Setting};
use relay::strategies::{CanaryStrategy, Direction, MannWhitneyJudge, ProportionJudge, Statistic, ThresholdJudge};
use relay::{AnalysisSpec, Check, Judge, Outcome};

/// Equal releases through the whole engine: a 25% canary on a simulated
/// target at 200 rps, one analysis of five one-minute looks comparing with
/// the stable baseline; returns how many of `seeds` were rolled back.
fn end_to_end_rollbacks(check: impl Fn() -> Check, seeds: u64) -> u64 {
    let rt = common::virtual_time();
    rt.block_on(async {
        let mut rolled_back = 0;
        for seed in 0..seeds {
            let relay =
                common::relay_with_v1(SimTarget::new(common::TARGET).seed(seed).requests_per_second(200.0)).await;
            let analysis = AnalysisSpec::new(vec![check()]).every(Duration::from_secs(60), 5);
            let canary = CanaryStrategy::new().set_weight(25).analyze(analysis);
            let outcome = relay
                .start(common::spec("v2", canary))
                .await
                .unwrap()
                .wait()
                .await
                .unwrap();
            if !matches!(outcome, Outcome::Promoted { .. }) {
                rolled_back += 1;
            }
        }
        rolled_back
    })
}

const SIGMA: f64 = 0.6;

fn latency(median: f64) -> Arm {
    Arm::Latency { median, sigma: SIGMA }
}

/// 100,000 single-look A/A trials per size for the Mann-Whitney judge, to
/// pin its false-positive rate to ±0.03 points.
fn mann_whitney_single_look_precise() {
    let lat = latency(40.0);
    for n in [50usize, 200, 1_000] {
        let judge = MannWhitneyJudge::new(Direction::LowerIsBetter).tolerance(0.0);
        let setting = Setting {
            baseline: lat,
            candidate: lat,
            samples_per_arm: n,
            looks: 1,
        };
        let r = rejection_rate(&judge, setting, 100_000, 99 + n as u64);
        println!(
            "- Mann-Whitney, one look, tolerance 0, n = {n}: {:.3}% of 100,000 A/A trials",
            r * 100.0
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--mw-100k") {
        return mann_whitney_single_look_precise();
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let (aa_trials, power_trials) = if quick { (1_000, 200) } else { (10_000, 2_000) };
    let sizes = [50usize, 200, 1_000];
    let mw: Box<dyn Judge> = Box::new(MannWhitneyJudge::new(Direction::LowerIsBetter));
    let mw0: Box<dyn Judge> = Box::new(MannWhitneyJudge::new(Direction::LowerIsBetter).tolerance(0.0));
    let lat_threshold: Box<dyn Judge> = Box::new(ThresholdJudge::below(50.0).statistic(Statistic::Median));
    let prop: Box<dyn Judge> = Box::new(ProportionJudge::new().min_events(1));
    let prop0: Box<dyn Judge> = Box::new(ProportionJudge::new().tolerance(0.0).min_events(1));

    println!(
        "A/A false positives: {aa_trials} trials per cell; power: {power_trials} trials per cell; 99% confidence."
    );
    println!("Latency: log-normal per-sample values, median 40, sigma {SIGMA}. Threshold judge: median < 50 (1.25x the baseline).");
    println!();
    println!("| judge | looks | scenario | n = 50 | n = 200 | n = 1000 |");
    println!("|---|---|---|---|---|---|");
    let row = |name: &str,
               judge: &dyn Judge,
               looks: u32,
               scenario: &str,
               baseline: Arm,
               candidate: Arm,
               trials: usize,
               seed: u64| {
        let cells: Vec<String> = sizes
            .iter()
            .map(|&n| {
                let r = rejection_rate(
                    judge,
                    Setting {
                        baseline,
                        candidate,
                        samples_per_arm: n,
                        looks,
                    },
                    trials,
                    seed + n as u64,
                );
                format!("{:.2}%", r * 100.0)
            })
            .collect();
        println!("| {name} | {looks} | {scenario} | {} |", cells.join(" | "));
    };
    for (name, judge) in [
        ("Mann-Whitney, tolerance 10%", &mw),
        ("Mann-Whitney, tolerance 0", &mw0),
        ("threshold median < 50", &lat_threshold),
    ] {
        for looks in [1, 5] {
            if looks == 5 && !judge.cumulative() {
                continue;
            }
            row(
                name,
                judge.as_ref(),
                looks,
                "A/A (false positives)",
                latency(40.0),
                latency(40.0),
                aa_trials,
                1,
            );
            row(
                name,
                judge.as_ref(),
                looks,
                "1.5x latency (power)",
                latency(40.0),
                latency(60.0),
                power_trials,
                2,
            );
            row(
                name,
                judge.as_ref(),
                looks,
                "2x latency (power)",
                latency(40.0),
                latency(80.0),
                power_trials,
                3,
            );
        }
    }
    println!();
    println!("Errors: requests fail independently. n = requests per arm. Threshold judge: mean error rate < 1.5x the baseline rate.");
    println!();
    println!("| judge | looks | scenario | n = 50 | n = 200 | n = 1000 |");
    println!("|---|---|---|---|---|---|");
    for base in [0.01, 0.05] {
        let th: Box<dyn Judge> = Box::new(ThresholdJudge::below(base * 1.5));
        let th_name = format!("threshold rate < {:.3}", base * 1.5);
        for (name, judge) in [
            ("proportion, tolerance 20%", &prop),
            ("proportion, tolerance 0", &prop0),
            (th_name.as_str(), &th),
        ] {
            for looks in [1, 5] {
                if looks == 5 && !judge.cumulative() {
                    continue;
                }
                let b = Arm::Errors { rate: base };
                row(
                    name,
                    judge.as_ref(),
                    looks,
                    &format!("A/A at {}%", base * 100.0),
                    b,
                    b,
                    aa_trials,
                    4,
                );
                row(
                    name,
                    judge.as_ref(),
                    looks,
                    &format!("2x errors from {}% (power)", base * 100.0),
                    b,
                    Arm::Errors { rate: base * 2.0 },
                    power_trials,
                    5,
                );
            }
        }
    }

    println!();
    let seeds = if quick { 100 } else { 1_000 };
    println!("End to end through the engine, equal releases (A/A), {seeds} seeds, tolerance 0:");
    println!();
    let lat = end_to_end_rollbacks(
        || {
            Check::new(
                "latency",
                metrics::LATENCY_MS,
                MannWhitneyJudge::new(Direction::LowerIsBetter).tolerance(0.0),
            )
        },
        seeds,
    );
    println!(
        "- Mann-Whitney latency check: {lat} of {seeds} rolled back ({:.2}%)",
        lat as f64 * 100.0 / seeds as f64
    );
    let err = end_to_end_rollbacks(
        || Check::new("errors", metrics::ERROR_RATE, ProportionJudge::new().tolerance(0.0)),
        seeds,
    );
    println!(
        "- proportion error check: {err} of {seeds} rolled back ({:.2}%)",
        err as f64 * 100.0 / seeds as f64
    );
}
