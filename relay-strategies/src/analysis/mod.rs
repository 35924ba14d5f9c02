//! Analysis judges: turn measurements into explained verdicts.
//!
//! - [`ThresholdJudge`]: a statistic of the candidate's values against a
//!   fixed limit, window by window.
//! - [`MannWhitneyJudge`]: the candidate's values against the baseline's
//!   (stable, same windows) with the Mann-Whitney U test and a Hodges-Lehmann
//!   effect-size tolerance, for latency-like metrics.
//! - [`ProportionJudge`]: the candidate's failure count against the
//!   baseline's with a two-proportion z-test, or Fisher's exact test for
//!   small counts, and a tolerance on the relative increase, for error rates.
//!
//! The comparative judges see all data since the analysis began and test at
//! every look; they spend their false-alarm budget across the planned looks
//! with Lan-DeMets O'Brien-Fleming-type alpha spending (see
//! [`stats::alpha_spent_at`]), so evaluating every interval does not inflate
//! false alarms. Every judge declares a minimum sample size and answers
//! `Inconclusive(InsufficientData)` below it; NaN and infinite values are
//! dropped, and nothing usable is never a pass.

pub mod accuracy;
mod decimal;
mod mann_whitney;
mod proportion;
pub mod stats;
mod threshold;

pub use mann_whitney::{Direction, MannWhitneyJudge};
pub use proportion::ProportionJudge;
pub use threshold::{Comparison, Statistic, ThresholdJudge};

use relay_core::{analysis::InconclusiveReason, Error, Judgement, Result};

/// A probability for people: four decimals, or scientific notation when
/// smaller than 0.001.
pub(crate) fn fmt_p(p: f64) -> String {
    if p >= 0.001 || p == 0.0 {
        format!("{p:.4}")
    } else {
        format!("{p:.1e}")
    }
}

/// The finite values, and how many were dropped.
pub(crate) fn usable(values: &[f64]) -> (std::borrow::Cow<'_, [f64]>, usize) {
    // Usually every value is finite: then nothing is copied.
    if values.iter().all(|x| x.is_finite()) {
        return (std::borrow::Cow::Borrowed(values), 0);
    }
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let dropped = values.len() - v.len();
    (std::borrow::Cow::Owned(v), dropped)
}

/// The verdict for too little data.
pub(crate) fn insufficient(what: &str, have: usize, dropped: usize, need: usize) -> Judgement {
    Judgement::inconclusive(
        InconclusiveReason::InsufficientData,
        format!("insufficient data: {have} usable {what} ({dropped} NaN/infinite dropped), need {need}"),
        have,
    )
}

/// A confidence level must be strictly between 0.5 and 1.
pub(crate) fn check_confidence(path: &str, c: f64) -> Result<()> {
    if !(c > 0.5 && c < 1.0) {
        return Err(Error::invalid(
            format!("{path}.confidence"),
            format!("{c} must be between 0.5 and 1 (for example 0.99)"),
        ));
    }
    Ok(())
}

/// A tolerance must be a finite, non-negative fraction.
pub(crate) fn check_tolerance(path: &str, t: f64) -> Result<()> {
    if !(t.is_finite() && t >= 0.0) {
        return Err(Error::invalid(
            format!("{path}.tolerance"),
            format!("{t} must be a finite fraction >= 0 (0.1 = 10%)"),
        ));
    }
    Ok(())
}
