//! The Mann-Whitney U judge: is the candidate's metric shifted in the bad
//! direction compared with the baseline's, by more than a tolerance?

use relay_core::{analysis::InconclusiveReason, Judge, JudgeInput, Judgement, Result};
use serde::{Deserialize, Serialize};

use super::stats::{alpha_spent_at, hodges_lehmann, mann_whitney_greater, median, quantile};
use super::{check_confidence, check_tolerance, fmt_p, insufficient, usable};

/// Which direction of the metric is good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Latency, CPU: an increase is a regression.
    LowerIsBetter,
    /// Throughput, success rate: a decrease is a regression.
    HigherIsBetter,
}

/// Pairs above which the Hodges-Lehmann shift is estimated by the difference
/// of medians (the exact estimate sorts every pairwise difference).
const HL_MAX_PAIRS: usize = 250_000;

/// Fails when the candidate is worse than the baseline with statistical
/// significance (one-sided Mann-Whitney U test at the look's spent alpha)
/// *and* by more than `tolerance` (Hodges-Lehmann shift relative to the
/// baseline median), as Kayenta's judge does, so a significant but tiny
/// difference does not fail a release.
///
/// ```
/// # mod relay { pub use relay_core::*; pub mod strategies { pub use relay_strategies::*; } }
/// use relay::{JudgeInput, Judge, VerdictOutcome};
/// use relay::strategies::analysis::{Direction, MannWhitneyJudge};
/// let judge = MannWhitneyJudge::new(Direction::LowerIsBetter);
/// let baseline: Vec<f64> = (0..40).map(|i| 40.0 + (i % 7) as f64).collect();
/// let doubled: Vec<f64> = baseline.iter().map(|v| v * 2.0).collect();
/// assert_eq!(judge.evaluate(&JudgeInput::compare(&doubled, &baseline)).outcome, VerdictOutcome::Fail);
/// assert_eq!(judge.evaluate(&JudgeInput::compare(&baseline, &baseline)).outcome, VerdictOutcome::Pass);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MannWhitneyJudge {
    /// Which direction is good.
    pub direction: Direction,
    /// Confidence level of the whole analysis (0.99: at most 1% false alarms
    /// over all looks).
    pub confidence: f64,
    /// Relative shift tolerated (0.1 = the candidate may be 10% worse).
    pub tolerance: f64,
    /// Minimum usable values per arm.
    pub min_samples: usize,
}

impl MannWhitneyJudge {
    /// 99% confidence, 10% tolerance, 10 values per arm at least.
    pub fn new(direction: Direction) -> Self {
        MannWhitneyJudge {
            direction,
            confidence: 0.99,
            tolerance: 0.1,
            min_samples: 10,
        }
    }

    /// Set the confidence level.
    pub fn confidence(mut self, c: f64) -> Self {
        self.confidence = c;
        self
    }

    /// Set the tolerated relative shift.
    pub fn tolerance(mut self, t: f64) -> Self {
        self.tolerance = t;
        self
    }

    /// Set the minimum values per arm.
    pub fn min_samples(mut self, n: usize) -> Self {
        self.min_samples = n;
        self
    }
}

#[typetag::serde(name = "mann_whitney")]
impl Judge for MannWhitneyJudge {
    fn evaluate(&self, input: &JudgeInput<'_>) -> Judgement {
        let Some(baseline) = input.baseline else {
            return Judgement::inconclusive(
                InconclusiveReason::NoBaseline,
                "no baseline was measured to compare with",
                0,
            );
        };
        let (cand, dropped_c) = usable(input.values);
        let (base, dropped_b) = usable(baseline);
        let need = Judge::min_samples(self);
        if cand.len() < need {
            return insufficient("candidate values", cand.len(), dropped_c, need).with_baseline_samples(base.len());
        }
        if base.len() < need {
            return insufficient("baseline values", base.len(), dropped_b, need).with_baseline_samples(base.len());
        }
        // Orient so that "greater" means "worse".
        let sign = match self.direction {
            Direction::LowerIsBetter => 1.0,
            Direction::HigherIsBetter => -1.0,
        };
        let x: Vec<f64> = cand.iter().map(|v| v * sign).collect();
        let y: Vec<f64> = base.iter().map(|v| v * sign).collect();
        let test = mann_whitney_greater(&x, &y);
        let shift = hodges_lehmann(&x, &y, HL_MAX_PAIRS);
        let base_median = median(&base);
        let relative = if base_median.abs() > f64::EPSILON {
            shift / base_median.abs()
        } else if shift > 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
        let alpha = alpha_spent_at(1.0 - self.confidence, input.look, input.looks);
        let significant = test.p_value < alpha;
        let too_large = relative > self.tolerance;
        let worse = if sign > 0.0 { "higher" } else { "lower" };
        let reason = format!(
            "candidate median {:.4} vs baseline {:.4}: {:+.1}% shift ({} is worse, tolerance {:.1}%), U={}, p={} {} alpha={}{}",
            median(&cand),
            base_median,
            relative * 100.0,
            worse,
            self.tolerance * 100.0,
            test.u,
            fmt_p(test.p_value),
            if significant { "<" } else { ">=" },
            fmt_p(alpha),
            if test.exact { " (exact)" } else { "" },
        );
        Judgement::decide(!(significant && too_large), reason, cand.len())
            .compared(relative, self.tolerance)
            .tested("U", test.u, test.p_value, alpha, relative)
            .with_baseline_samples(base.len())
            .summarize("z", test.z)
            .summarize("candidate_median", median(&cand))
            .summarize("baseline_median", base_median)
            .summarize("candidate_p95", quantile(&cand, 0.95))
            .summarize("baseline_p95", quantile(&base, 0.95))
    }

    fn min_samples(&self) -> usize {
        self.min_samples.max(1)
    }

    fn describe(&self) -> String {
        let dir = match self.direction {
            Direction::LowerIsBetter => "not higher",
            Direction::HigherIsBetter => "not lower",
        };
        format!(
            "{dir} than baseline by > {:.0}% (Mann-Whitney, {:.0}% confidence)",
            self.tolerance * 100.0,
            self.confidence * 100.0
        )
    }

    fn needs_baseline(&self) -> bool {
        true
    }

    fn cumulative(&self) -> bool {
        true
    }

    fn validate(&self, path: &str) -> Result<()> {
        check_confidence(path, self.confidence)?;
        check_tolerance(path, self.tolerance)?;
        if self.min_samples == 0 {
            return Err(relay_core::Error::invalid(
                format!("{path}.min_samples"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
