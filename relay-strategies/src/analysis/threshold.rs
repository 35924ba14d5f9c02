//! The threshold judge: a statistic of the values compared with a limit.

use relay_core::{analysis::InconclusiveReason, Error, Judge, JudgeInput, Judgement, Result};

use super::decimal::{push_fixed4, push_shortest};
use super::insufficient;
use serde::{Deserialize, Serialize};

/// The values but NaN (missing), and how many were dropped. Infinities
/// stay: they are measurements beyond every bucket, not missing ones.
fn not_nan(values: &[f64]) -> (std::borrow::Cow<'_, [f64]>, usize) {
    if !values.iter().any(|x| x.is_nan()) {
        return (std::borrow::Cow::Borrowed(values), 0);
    }
    let v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    let dropped = values.len() - v.len();
    (std::borrow::Cow::Owned(v), dropped)
}

/// Which number summarizes the values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    /// Arithmetic mean.
    Mean,
    /// Median.
    Median,
    /// 95th percentile (nearest rank).
    P95,
    /// 99th percentile (nearest rank).
    P99,
    /// Largest value.
    Max,
    /// Smallest value.
    Min,
}

impl Statistic {
    fn name(self) -> &'static str {
        match self {
            Statistic::Mean => "mean",
            Statistic::Median => "median",
            Statistic::P95 => "p95",
            Statistic::P99 => "p99",
            Statistic::Max => "max",
            Statistic::Min => "min",
        }
    }

    /// Compute the statistic over non-empty `values` without NaN (infinite
    /// values take part: the mean or a percentile that reaches one is
    /// infinite).
    pub fn compute(self, values: &[f64]) -> f64 {
        match self {
            Statistic::Mean => values.iter().sum::<f64>() / values.len() as f64,
            Statistic::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Statistic::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
            Statistic::Median | Statistic::P95 | Statistic::P99 => {
                let mut v = values.to_vec();
                v.sort_unstable_by(f64::total_cmp);
                let n = v.len();
                let rank = |q: f64| v[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
                match self {
                    Statistic::Median if n % 2 == 1 => v[n / 2],
                    Statistic::Median => (v[n / 2 - 1] + v[n / 2]) / 2.0,
                    Statistic::P95 => rank(0.95),
                    _ => rank(0.99),
                }
            }
        }
    }
}

/// Which side of the limit is healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// Healthy when the statistic is strictly below the limit.
    Below,
    /// Healthy when the statistic is strictly above the limit.
    Above,
}

/// Passes when a statistic of the values is on the healthy side of a limit.
///
/// NaN values count as missing; with fewer than `min_samples` usable values
/// the verdict is inconclusive, never a pass. Infinite values count as the
/// values they are: Prometheus' `histogram_quantile` answers `+Inf` when the
/// quantile lies in the top bucket (a latency beyond every bucket), so a
/// `p99 < 0.5` check over `[0.1, +Inf, +Inf, +Inf]` fails. A statistic that
/// comes out NaN (the mean of `+Inf` and `-Inf`) is inconclusive.
///
/// ```
/// # mod relay { pub use relay_core::*; pub mod strategies { pub use relay_strategies::*; } }
/// use relay::{Judge, JudgeInput, VerdictOutcome};
/// use relay::strategies::analysis::ThresholdJudge;
/// let j = ThresholdJudge::below(0.05);
/// assert_eq!(j.evaluate(&JudgeInput::values(&[0.01, 0.02])).outcome, VerdictOutcome::Pass);
/// assert_eq!(j.evaluate(&JudgeInput::values(&[f64::NAN])).outcome, VerdictOutcome::Inconclusive);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThresholdJudge {
    /// The statistic.
    pub statistic: Statistic,
    /// Healthy side.
    pub comparison: Comparison,
    /// The limit.
    pub limit: f64,
    /// Fewer usable values than this is inconclusive.
    pub min_samples: usize,
}

impl ThresholdJudge {
    /// Healthy when the mean is below `limit`.
    pub fn below(limit: f64) -> Self {
        ThresholdJudge {
            statistic: Statistic::Mean,
            comparison: Comparison::Below,
            limit,
            min_samples: 1,
        }
    }

    /// Healthy when the mean is above `limit`.
    pub fn above(limit: f64) -> Self {
        ThresholdJudge {
            comparison: Comparison::Above,
            ..Self::below(limit)
        }
    }

    /// Judge this statistic instead of the mean.
    pub fn statistic(mut self, s: Statistic) -> Self {
        self.statistic = s;
        self
    }

    /// Require at least `n` usable values.
    pub fn min_samples(mut self, n: usize) -> Self {
        self.min_samples = n;
        self
    }
}

#[typetag::serde(name = "threshold")]
impl Judge for ThresholdJudge {
    fn evaluate(&self, input: &JudgeInput<'_>) -> Judgement {
        if !self.limit.is_finite() {
            return Judgement::inconclusive(
                InconclusiveReason::InvalidConfig,
                format!("limit {} is not a finite number", self.limit),
                0,
            );
        }
        let (usable, dropped) = not_nan(input.values);
        let need = Judge::min_samples(self);
        if usable.len() < need {
            return insufficient("values", usable.len(), dropped, need);
        }
        let value = self.statistic.compute(&usable);
        if value.is_nan() {
            return Judgement::inconclusive(
                InconclusiveReason::InsufficientData,
                format!(
                    "the {} of the values is not a number (they hold both +Inf and -Inf)",
                    self.statistic.name()
                ),
                usable.len(),
            );
        }
        let healthy = match self.comparison {
            Comparison::Below => value < self.limit,
            Comparison::Above => value > self.limit,
        };
        let op = match (self.comparison, healthy) {
            (Comparison::Below, true) => "<",
            (Comparison::Below, false) => ">=",
            (Comparison::Above, true) => ">",
            (Comparison::Above, false) => "<=",
        };
        // As `format!("{} {value:.4} {op} {}", name, limit)` writes it, in
        // about a quarter of the instructions (one reason a measurement).
        let mut reason = String::with_capacity(40);
        reason.push_str(self.statistic.name());
        reason.push(' ');
        push_fixed4(&mut reason, value);
        reason.push(' ');
        reason.push_str(op);
        reason.push(' ');
        push_shortest(&mut reason, self.limit);
        Judgement::decide(healthy, reason, usable.len()).compared(value, self.limit)
    }

    fn min_samples(&self) -> usize {
        self.min_samples.max(1)
    }

    fn describe(&self) -> String {
        let op = match self.comparison {
            Comparison::Below => "<",
            Comparison::Above => ">",
        };
        format!("{} {op} {}", self.statistic.name(), self.limit)
    }

    fn validate(&self, path: &str) -> Result<()> {
        if !self.limit.is_finite() {
            return Err(Error::invalid(
                format!("{path}.limit"),
                format!("{} is not a finite number", self.limit),
            ));
        }
        if self.min_samples == 0 {
            return Err(Error::invalid(format!("{path}.min_samples"), "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::VerdictOutcome;
    use std::sync::Arc;

    fn judge(j: &ThresholdJudge, v: &[f64]) -> Judgement {
        j.evaluate(&JudgeInput::values(v))
    }

    #[test]
    fn pass_fail_and_the_numbers_behind_them() {
        let j = ThresholdJudge::below(0.05);
        let ok = judge(&j, &[0.01, 0.03]);
        assert_eq!(ok.outcome, VerdictOutcome::Pass);
        assert_eq!(ok.observed, Some(0.02));
        let bad = judge(&j, &[0.04, 0.08]);
        assert_eq!(bad.outcome, VerdictOutcome::Fail);
        assert_eq!(bad.reason, "mean 0.0600 >= 0.05");
        assert_eq!(
            judge(&j, &[0.05]).outcome,
            VerdictOutcome::Fail,
            "the limit itself is not healthy"
        );
        let up = ThresholdJudge::above(0.9);
        assert_eq!(judge(&up, &[0.95]).outcome, VerdictOutcome::Pass);
        assert_eq!(judge(&up, &[0.5]).outcome, VerdictOutcome::Fail);
    }

    #[test]
    fn no_data_is_never_a_pass() {
        let j = ThresholdJudge::below(1.0).min_samples(3);
        assert_eq!(judge(&j, &[]).outcome, VerdictOutcome::Inconclusive);
        assert_eq!(
            judge(&j, &[f64::NAN, f64::NAN, f64::NAN]).outcome,
            VerdictOutcome::Inconclusive
        );
        assert_eq!(judge(&j, &[0.1, f64::NAN, 0.2, 0.3]).outcome, VerdictOutcome::Pass);
        // Both infinities: the mean is no number, so nothing is decided.
        assert_eq!(
            judge(&j, &[f64::NEG_INFINITY, 0.1, f64::INFINITY]).outcome,
            VerdictOutcome::Inconclusive
        );
        assert_eq!(
            judge(&ThresholdJudge::below(f64::NAN), &[0.1]).outcome,
            VerdictOutcome::Inconclusive
        );
        assert!(ThresholdJudge::below(f64::NAN).validate("j").is_err());
        assert!(ThresholdJudge::below(1.0).min_samples(0).validate("j").is_err());
    }

    #[test]
    fn infinity_is_a_value_beyond_every_bucket_not_a_missing_one() {
        // histogram_quantile's answer when the quantile is in the top bucket.
        let p99 = ThresholdJudge::below(0.5).statistic(Statistic::P99);
        let v = [0.1, f64::INFINITY, f64::INFINITY, f64::INFINITY];
        let verdict = judge(&p99, &v);
        assert_eq!(verdict.outcome, VerdictOutcome::Fail, "{}", verdict.reason);
        assert_eq!(verdict.reason, "p99 inf >= 0.5");
        assert_eq!(verdict.samples, 4);
        let mean = ThresholdJudge::below(0.5).min_samples(3);
        assert_eq!(judge(&mean, &[0.1, f64::INFINITY, 0.2]).outcome, VerdictOutcome::Fail);
        // A robust statistic is not moved by one.
        let median = ThresholdJudge::below(0.5).statistic(Statistic::Median);
        assert_eq!(
            judge(&median, &[0.1, 0.1, 0.1, f64::INFINITY]).outcome,
            VerdictOutcome::Pass
        );
        // Where higher is healthy, -Inf fails and +Inf passes.
        let up = ThresholdJudge::above(0.9).statistic(Statistic::Min);
        assert_eq!(judge(&up, &[0.95, f64::NEG_INFINITY]).outcome, VerdictOutcome::Fail);
        assert_eq!(judge(&up, &[0.95, f64::INFINITY]).outcome, VerdictOutcome::Pass);
        // NaN is still missing.
        assert_eq!(
            judge(&p99.min_samples(2), &[0.1, f64::NAN]).outcome,
            VerdictOutcome::Inconclusive
        );
    }

    #[test]
    fn statistics() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(Statistic::P95.compute(&v), 95.0);
        assert_eq!(Statistic::P99.compute(&v), 99.0);
        assert_eq!(Statistic::Median.compute(&v), 50.5);
        assert_eq!(Statistic::Max.compute(&v), 100.0);
        assert_eq!(Statistic::Min.compute(&[3.0, 1.0]), 1.0);
    }

    #[test]
    fn survives_serialization_as_a_trait_object() {
        let j: Arc<dyn Judge> = Arc::new(ThresholdJudge::below(0.05).statistic(Statistic::P95));
        let s = serde_json::to_string(&j).unwrap();
        assert!(s.contains("\"judge\":\"threshold\""), "{s}");
        let back: Arc<dyn Judge> = serde_json::from_str(&s).unwrap();
        assert_eq!(back.describe(), "p95 < 0.05");
    }
}
