//! The proportion judge: is the candidate's failure rate higher than the
//! baseline's, significantly and by more than a tolerance?

use relay_core::{analysis::InconclusiveReason, Counts, Error, Judge, JudgeInput, Judgement, Result};
use serde::{Deserialize, Serialize};

use super::stats::{alpha_spent_at, fisher_greater, small_counts, two_proportion_greater};
use super::{check_confidence, check_tolerance, fmt_p};

/// Fails when the candidate's failure rate (failures / events) exceeds the
/// baseline's with significance at the look's spent alpha — a pooled
/// two-proportion z-test, or Fisher's exact test when an expected cell count
/// is below 5 — *and* the relative increase exceeds `tolerance`.
///
/// It reads event counts ([`relay_core::Sample::counts`]), not averaged
/// rates: a rate of 0.5 from 2 requests is no evidence, one from 2,000 is.
///
/// ```
/// # mod relay { pub use relay_core::*; pub mod strategies { pub use relay_strategies::*; } }
/// use relay::{Counts, JudgeInput, Judge, VerdictOutcome};
/// use relay::strategies::analysis::ProportionJudge;
/// let judge = ProportionJudge::new();
/// let base = Counts { failures: 50, total: 1000 };
/// let tripled = Counts { failures: 150, total: 1000 };
/// assert_eq!(judge.evaluate(&JudgeInput::compare_counts(tripled, base)).outcome, VerdictOutcome::Fail);
/// assert_eq!(judge.evaluate(&JudgeInput::compare_counts(base, base)).outcome, VerdictOutcome::Pass);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProportionJudge {
    /// Confidence level of the whole analysis.
    pub confidence: f64,
    /// Relative increase tolerated (0.2: up to 20% more failures).
    pub tolerance: f64,
    /// Minimum events per arm.
    pub min_events: u64,
}

impl Default for ProportionJudge {
    fn default() -> Self {
        ProportionJudge {
            confidence: 0.99,
            tolerance: 0.2,
            min_events: 100,
        }
    }
}

impl ProportionJudge {
    /// 99% confidence, 20% tolerance, 100 events per arm at least.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the confidence level.
    pub fn confidence(mut self, c: f64) -> Self {
        self.confidence = c;
        self
    }

    /// Set the tolerated relative increase.
    pub fn tolerance(mut self, t: f64) -> Self {
        self.tolerance = t;
        self
    }

    /// Set the minimum events per arm.
    pub fn min_events(mut self, n: u64) -> Self {
        self.min_events = n;
        self
    }
}

#[typetag::serde(name = "proportion")]
impl Judge for ProportionJudge {
    fn evaluate(&self, input: &JudgeInput<'_>) -> Judgement {
        let Some(Counts {
            failures: f0,
            total: n0,
        }) = input.baseline_counts
        else {
            return Judgement::inconclusive(
                InconclusiveReason::NoBaseline,
                "no baseline event counts were measured to compare with",
                0,
            );
        };
        let Some(Counts {
            failures: f1,
            total: n1,
        }) = input.counts
        else {
            return Judgement::inconclusive(
                InconclusiveReason::InsufficientData,
                "the probe reported no event counts for the candidate",
                0,
            );
        };
        let need = self.min_events.max(1);
        if n1 < need || n0 < need || f1 > n1 || f0 > n0 {
            let reason = if f1 > n1 || f0 > n0 {
                format!("invalid counts: {f1}/{n1} vs {f0}/{n0}")
            } else {
                format!("insufficient data: {n1} candidate and {n0} baseline events, need {need} each")
            };
            return Judgement::inconclusive(InconclusiveReason::InsufficientData, reason, n1 as usize)
                .with_baseline_samples(n0 as usize);
        }
        let (p1, p0) = (f1 as f64 / n1 as f64, f0 as f64 / n0 as f64);
        let (test, statistic, p_value) = if small_counts(f1, n1, f0, n0) {
            ("Fisher", f1 as f64, fisher_greater(f1, n1, f0, n0))
        } else {
            let (z, p) = two_proportion_greater(f1, n1, f0, n0);
            ("z", z, p)
        };
        let relative = if p0 > 0.0 {
            (p1 - p0) / p0
        } else if p1 > 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
        let alpha = alpha_spent_at(1.0 - self.confidence, input.look, input.looks);
        let significant = p_value < alpha;
        let too_large = relative > self.tolerance;
        let reason = format!(
            "candidate {f1}/{n1} = {:.4}% vs baseline {f0}/{n0} = {:.4}%: {:+.1}% (tolerance {:.1}%), {test} p={} {} alpha={}",
            p1 * 100.0,
            p0 * 100.0,
            relative * 100.0,
            self.tolerance * 100.0,
            fmt_p(p_value),
            if significant { "<" } else { ">=" },
            fmt_p(alpha),
        );
        Judgement::decide(!(significant && too_large), reason, n1 as usize)
            .compared(relative, self.tolerance)
            .tested(test, statistic, p_value, alpha, relative)
            .with_baseline_samples(n0 as usize)
            .summarize("candidate_rate", p1)
            .summarize("baseline_rate", p0)
            .summarize("candidate_failures", f1 as f64)
            .summarize("baseline_failures", f0 as f64)
    }

    fn min_samples(&self) -> usize {
        self.min_events.max(1) as usize
    }

    fn describe(&self) -> String {
        format!(
            "failure rate not above baseline by > {:.0}% ({:.0}% confidence)",
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
        if self.min_events == 0 {
            return Err(Error::invalid(format!("{path}.min_events"), "must be at least 1"));
        }
        Ok(())
    }
}
