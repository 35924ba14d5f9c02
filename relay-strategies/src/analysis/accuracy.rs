//! Measure a judge's accuracy by simulation: how often it fails a release
//! that is as good as the baseline (false positives, from A/A comparisons)
//! and how often it catches a real regression (power).
//!
//! Data is drawn from a seeded generator: latency-like values from a
//! log-normal distribution, failures from a binomial one. The judge sees the
//! data as the engine would show it: cumulative over `looks` equal looks for
//! judges that accumulate, the last look's share otherwise; a trial rejects
//! when any look fails.

use relay_core::{rng::SeededRng, Counts, Judge, JudgeInput, VerdictOutcome};

/// How one arm behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arm {
    /// Per-sample values from a log-normal distribution.
    Latency {
        /// Median value.
        median: f64,
        /// Spread (sigma of the log).
        sigma: f64,
    },
    /// Requests failing with probability `rate`.
    Errors {
        /// Failure probability.
        rate: f64,
    },
}

/// One simulated comparison setting.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// The baseline arm.
    pub baseline: Arm,
    /// The candidate arm.
    pub candidate: Arm,
    /// Values (latency) or requests (errors) per arm, over all looks.
    pub samples_per_arm: usize,
    /// Looks at the data.
    pub looks: u32,
}

/// `n` values of an arm; for errors, per-request outcomes (1.0 = failed), so
/// a threshold judge can average them and a rate judge can count them.
fn draw(rng: &SeededRng, arm: Arm, n: usize) -> Vec<f64> {
    match arm {
        Arm::Latency { median, sigma } => (0..n).map(|_| median * (sigma * rng.next_normal()).exp()).collect(),
        Arm::Errors { rate } => (0..n).map(|_| if rng.next_f64() < rate { 1.0 } else { 0.0 }).collect(),
    }
}

fn counts_of(values: &[f64]) -> Counts {
    Counts {
        failures: values.iter().filter(|v| **v > 0.0).count() as u64,
        total: values.len() as u64,
    }
}

/// The fraction of `trials` in which `judge` fails the candidate.
pub fn rejection_rate(judge: &dyn Judge, setting: Setting, trials: usize, seed: u64) -> f64 {
    let rng = SeededRng::new(seed);
    let looks = setting.looks.max(1);
    let mut rejected = 0usize;
    for _ in 0..trials {
        let c = draw(&rng, setting.candidate, setting.samples_per_arm);
        let b = draw(&rng, setting.baseline, setting.samples_per_arm);
        let per_look = setting.samples_per_arm / looks as usize;
        let errors = matches!(setting.candidate, Arm::Errors { .. });
        let failed = (1..=looks).any(|look| {
            let end = if look == looks {
                setting.samples_per_arm
            } else {
                per_look * look as usize
            };
            let start = if judge.cumulative() {
                0
            } else {
                per_look * (look as usize - 1)
            };
            let (cv, bv) = (&c[start..end], &b[start..end]);
            let input = JudgeInput {
                values: cv,
                baseline: Some(bv),
                counts: errors.then(|| counts_of(cv)),
                baseline_counts: errors.then(|| counts_of(bv)),
                look,
                looks,
            };
            judge.evaluate(&input).outcome == VerdictOutcome::Fail
        });
        if failed {
            rejected += 1;
        }
    }
    rejected as f64 / trials as f64
}
