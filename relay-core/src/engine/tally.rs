//! What an analysis step has seen of each check and what follows from it:
//! the pure half of an analysis, apart from the probe calls, waits and
//! audit entries the driver makes.

use std::fmt::Display;

use crate::analysis::{AnalysisSpec, Counts, JudgeInput, VerdictOutcome};
use crate::probe::Sample;

/// What an analysis has seen of one check.
#[derive(Debug, Default)]
pub(super) struct CheckTally {
    values: Vec<f64>,
    baseline: Vec<f64>,
    has_baseline: bool,
    counts: Option<Counts>,
    baseline_counts: Option<Counts>,
    fails: u32,
    inconclusive: u32,
    /// Probe errors since the last measurement that succeeded.
    errors: u32,
    /// Measurements the check was taken at (it has a scope to measure).
    measured: u32,
    passes: u32,
}

/// What the analysis does after a verdict or a probe error.
#[derive(Debug, PartialEq)]
pub(super) enum Next {
    /// Go on measuring.
    Continue,
    /// Roll back, for this reason.
    RollBack(String),
    /// Past the inconclusive limit: what the spec's `on_inconclusive` says,
    /// for this reason.
    Inconclusive(String),
}

fn merge(into: &mut Vec<f64>, counts: &mut Option<Counts>, values: Vec<f64>, new: Option<Counts>, cumulative: bool) {
    if cumulative {
        into.extend(values);
        *counts = match (*counts, new) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => b.or(a),
        };
    } else {
        *into = values;
        *counts = new;
    }
}

impl CheckTally {
    /// A measurement is being taken.
    pub(super) fn measuring(&mut self) {
        self.measured += 1;
    }

    /// The measurement's samples arrived: the candidate's and, for a judge
    /// that compares, the baseline's from the same window. A cumulative
    /// judge keeps every value since the analysis began; a window-by-window
    /// one sees this window's only (and a baseline only from it).
    pub(super) fn sampled(&mut self, sample: Sample, baseline: Option<Sample>, cumulative: bool) {
        self.errors = 0;
        merge(
            &mut self.values,
            &mut self.counts,
            sample.values,
            sample.counts,
            cumulative,
        );
        if !cumulative {
            self.has_baseline = false;
            self.baseline.clear();
            self.baseline_counts = None;
        }
        if let Some(b) = baseline {
            merge(
                &mut self.baseline,
                &mut self.baseline_counts,
                b.values,
                b.counts,
                cumulative,
            );
            self.has_baseline = true;
        }
    }

    /// What the judge reads at look `look` of `looks`.
    pub(super) fn input(&self, look: u32, looks: u32) -> JudgeInput<'_> {
        JudgeInput {
            values: &self.values,
            baseline: self.has_baseline.then_some(self.baseline.as_slice()),
            counts: self.counts,
            baseline_counts: self.baseline_counts,
            look,
            looks,
        }
    }

    /// The check (not a dry run) reached `outcome` in `verdict`: counted
    /// against the spec's limits.
    pub(super) fn judged(&mut self, outcome: VerdictOutcome, spec: &AnalysisSpec, verdict: impl Display) -> Next {
        match outcome {
            VerdictOutcome::Pass => self.passes += 1,
            VerdictOutcome::Fail => {
                self.fails += 1;
                if self.fails > spec.failure_limit {
                    return Next::RollBack(format!("analysis failed: {verdict}"));
                }
            }
            VerdictOutcome::Inconclusive => {
                self.inconclusive += 1;
                if self.inconclusive > spec.inconclusive_limit {
                    return Next::Inconclusive(format!(
                        "analysis inconclusive {} times (limit {}): {verdict}",
                        self.inconclusive, spec.inconclusive_limit
                    ));
                }
            }
        }
        Next::Continue
    }

    /// A probe call of the check `name` (of `scope`) failed with `error`:
    /// one more consecutive error. Past the spec's limit a check that is
    /// not a dry run rolls the rollout back. Returns the consecutive count
    /// with what follows.
    pub(super) fn probe_failed(
        &mut self,
        spec: &AnalysisSpec,
        name: &str,
        dry_run: bool,
        scope: &str,
        error: impl Display,
    ) -> (u32, Next) {
        self.errors += 1;
        if !dry_run && self.errors > spec.consecutive_error_limit {
            let why = format!(
                "analysis check {name:?}: {} consecutive probe errors (limit {}), the last of {scope}: {error}",
                self.errors, spec.consecutive_error_limit
            );
            return (self.errors, Next::RollBack(why));
        }
        (self.errors, Next::Continue)
    }
}

/// After the last measurement: tolerated failing or inconclusive verdicts
/// and probe errors are not evidence of health, so a check (not a dry run)
/// that was measured but never passed leaves the analysis inconclusive,
/// whatever its limits.
pub(super) fn unproven(spec: &AnalysisSpec, tallies: &[CheckTally]) -> Option<String> {
    let (check, t) = spec
        .checks
        .iter()
        .zip(tallies)
        .find(|(c, t)| !c.dry_run && t.measured > 0 && t.passes == 0)?;
    Some(format!(
        "analysis check {:?} never passed in {} measurement(s): {} failing (tolerated), {} inconclusive, {} probe errors",
        check.name,
        t.measured,
        t.fails,
        t.inconclusive,
        t.measured.saturating_sub(t.inconclusive + t.fails)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{Check, Judge, Judgement};

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Any;

    #[typetag::serde(name = "tally_test_any")]
    impl Judge for Any {
        fn evaluate(&self, _: &JudgeInput<'_>) -> Judgement {
            unreachable!("the tally never judges")
        }
        fn describe(&self) -> String {
            "any".into()
        }
    }

    fn spec(failure_limit: u32, inconclusive_limit: u32, consecutive_error_limit: u32) -> AnalysisSpec {
        let mut spec = AnalysisSpec::new(vec![Check::new("errors", "error_rate", Any)]);
        spec.failure_limit = failure_limit;
        spec.inconclusive_limit = inconclusive_limit;
        spec.consecutive_error_limit = consecutive_error_limit;
        spec
    }

    fn sample(values: &[f64], counts: Option<Counts>) -> Sample {
        Sample {
            values: values.to_vec(),
            counts,
            ..Sample::default()
        }
    }

    #[test]
    fn failures_past_the_limit_roll_back_and_passes_do_not_reset_them() {
        let spec = spec(1, 0, 0);
        let mut t = CheckTally::default();
        assert_eq!(t.judged(VerdictOutcome::Fail, &spec, "v1"), Next::Continue);
        assert_eq!(t.judged(VerdictOutcome::Pass, &spec, "v2"), Next::Continue);
        assert_eq!(
            t.judged(VerdictOutcome::Fail, &spec, "v3"),
            Next::RollBack("analysis failed: v3".into())
        );
    }

    #[test]
    fn inconclusive_verdicts_past_their_limit_say_how_many() {
        let spec = spec(0, 1, 0);
        let mut t = CheckTally::default();
        assert_eq!(t.judged(VerdictOutcome::Inconclusive, &spec, "a"), Next::Continue);
        assert_eq!(
            t.judged(VerdictOutcome::Inconclusive, &spec, "b"),
            Next::Inconclusive("analysis inconclusive 2 times (limit 1): b".into())
        );
    }

    #[test]
    fn consecutive_probe_errors_count_until_a_sample_arrives() {
        let spec = spec(0, 0, 1);
        let mut t = CheckTally::default();
        assert_eq!(
            t.probe_failed(&spec, "errors", false, "rev-2", "503"),
            (1, Next::Continue)
        );
        t.sampled(sample(&[0.1], None), None, false);
        assert_eq!(
            t.probe_failed(&spec, "errors", false, "rev-2", "503"),
            (1, Next::Continue)
        );
        let (n, next) = t.probe_failed(&spec, "errors", false, "rev-2", "503");
        assert_eq!(n, 2);
        assert!(
            matches!(next, Next::RollBack(why) if why.contains("2 consecutive probe errors (limit 1), the last of rev-2: 503"))
        );
        // A dry run never rolls back.
        assert_eq!(
            t.probe_failed(&spec, "errors", true, "rev-2", "503"),
            (3, Next::Continue)
        );
    }

    #[test]
    fn a_cumulative_judge_sees_every_window_and_a_windowed_one_the_last() {
        let counts = |failures, total| Some(Counts { failures, total });
        let mut cumulative = CheckTally::default();
        let mut windowed = CheckTally::default();
        for (values, base) in [([1.0, 2.0], [5.0]), ([3.0, 4.0], [6.0])] {
            for (t, c) in [(&mut cumulative, true), (&mut windowed, false)] {
                t.sampled(sample(&values, counts(1, 10)), Some(sample(&base, counts(0, 10))), c);
            }
        }
        let all = cumulative.input(2, 3);
        assert_eq!(all.values, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(all.baseline, Some(&[5.0, 6.0][..]));
        assert_eq!(all.counts, counts(2, 20));
        assert_eq!((all.look, all.looks), (2, 3));
        let last = windowed.input(2, 3);
        assert_eq!(last.values, [3.0, 4.0]);
        assert_eq!(last.baseline, Some(&[6.0][..]));
        assert_eq!(last.baseline_counts, counts(0, 10));
        // A window without a baseline sample has no baseline.
        windowed.sampled(sample(&[7.0], None), None, false);
        assert_eq!(windowed.input(3, 3).baseline, None);
    }

    #[test]
    fn a_check_measured_but_never_passed_leaves_the_analysis_unproven() {
        let spec = spec(5, 5, 5);
        let mut tallies = vec![CheckTally::default()];
        assert_eq!(unproven(&spec, &tallies), None, "never measured: nothing to prove");
        let t = &mut tallies[0];
        t.measuring();
        t.judged(VerdictOutcome::Fail, &spec, "v");
        t.measuring();
        t.judged(VerdictOutcome::Inconclusive, &spec, "v");
        t.measuring();
        t.probe_failed(&spec, "errors", false, "rev-2", "503");
        assert_eq!(
            unproven(&spec, &tallies).as_deref(),
            Some("analysis check \"errors\" never passed in 3 measurement(s): 1 failing (tolerated), 1 inconclusive, 1 probe errors")
        );
        tallies[0].measuring();
        tallies[0].judged(VerdictOutcome::Pass, &spec, "v");
        assert_eq!(unproven(&spec, &tallies), None);
    }
}
