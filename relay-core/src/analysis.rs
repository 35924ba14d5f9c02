//! The analysis model: checks, judges and verdicts.
//!
//! Judges live in `relay-strategies`; the engine only needs this trait. A
//! judge is serializable (through `typetag`) so a persisted plan can be
//! resumed after a crash with the same judges.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audit::{AuditDetail, CanonicalObject};
use crate::error::{Error, Result};
use crate::target::Role;

/// Event counts behind a rate: how many of `total` events failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Failed events (errors).
    pub failures: u64,
    /// All events (requests).
    pub total: u64,
}

impl std::ops::Add for Counts {
    type Output = Counts;

    /// Counts of two windows together.
    fn add(self, other: Counts) -> Counts {
        Counts {
            failures: self.failures + other.failures,
            total: self.total + other.total,
        }
    }
}

impl Counts {
    /// failures / total (NaN when total is 0).
    pub fn rate(self) -> f64 {
        if self.total == 0 {
            f64::NAN
        } else {
            self.failures as f64 / self.total as f64
        }
    }
}

/// The data a judge sees.
#[derive(Clone, Debug)]
pub struct JudgeInput<'a> {
    /// The measured values of the scope under test. For a
    /// [`Judge::cumulative`] judge, every value since the analysis began.
    pub values: &'a [f64],
    /// Values of the baseline (stable) in the same windows, when the judge
    /// asked for them.
    pub baseline: Option<&'a [f64]>,
    /// Event counts behind `values`, when the probe reports them.
    pub counts: Option<Counts>,
    /// Event counts of the baseline.
    pub baseline_counts: Option<Counts>,
    /// Which look at the data this is (1-based) ...
    pub look: u32,
    /// ... of how many planned looks; judges that test repeatedly spend
    /// their false-alarm budget across them.
    pub looks: u32,
}

impl<'a> JudgeInput<'a> {
    /// A single look at `values` with no baseline.
    pub fn values(values: &'a [f64]) -> Self {
        JudgeInput {
            values,
            baseline: None,
            counts: None,
            baseline_counts: None,
            look: 1,
            looks: 1,
        }
    }

    /// A single look comparing `values` with `baseline`.
    pub fn compare(values: &'a [f64], baseline: &'a [f64]) -> Self {
        JudgeInput {
            baseline: Some(baseline),
            ..Self::values(values)
        }
    }

    /// A single look comparing event counts.
    pub fn compare_counts(candidate: Counts, baseline: Counts) -> Self {
        JudgeInput {
            counts: Some(candidate),
            baseline_counts: Some(baseline),
            ..Self::values(&[])
        }
    }

    /// The same data seen at look `look` of `looks`.
    pub fn at_look(mut self, look: u32, looks: u32) -> Self {
        self.look = look;
        self.looks = looks;
        self
    }
}

/// Why a verdict is inconclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InconclusiveReason {
    /// Fewer usable samples than the judge's declared minimum.
    InsufficientData,
    /// The judge needs a baseline and none was measured.
    NoBaseline,
    /// The judge's own configuration cannot be evaluated.
    InvalidConfig,
}

/// How a single evaluation came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictOutcome {
    /// Healthy.
    Pass,
    /// Unhealthy.
    Fail,
    /// Not enough trustworthy data to say (never treated as a pass).
    Inconclusive,
}

impl fmt::Display for VerdictOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VerdictOutcome::Pass => "pass",
            VerdictOutcome::Fail => "FAIL",
            VerdictOutcome::Inconclusive => "inconclusive",
        })
    }
}

/// What a judge concluded and why, in numbers a human can check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// The outcome.
    pub outcome: VerdictOutcome,
    /// Why it is inconclusive, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconclusive: Option<InconclusiveReason>,
    /// One line saying why (`mean error_rate 0.084 >= 0.05`).
    pub reason: String,
    /// The value compared with the threshold (a mean, a p95, a relative
    /// shift...), when there is one.
    pub observed: Option<f64>,
    /// The threshold or tolerance it was compared with.
    pub threshold: Option<f64>,
    /// Usable samples of the scope under test (values, or events for rates).
    pub samples: usize,
    /// Usable samples of the baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_samples: Option<usize>,
    /// The test statistic's name (`U`, `z`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic_name: Option<String>,
    /// The test statistic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<f64>,
    /// The p-value of the test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    /// The significance level this look used (after correction for
    /// repeated looks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// The effect size (relative shift or relative increase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect_size: Option<f64>,
    /// Summary values of both arms (`candidate_median`, `baseline_p95`,
    /// `candidate_rate`, ...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub summary: std::collections::BTreeMap<String, f64>,
}

impl Judgement {
    fn new(outcome: VerdictOutcome, reason: String, samples: usize) -> Self {
        Judgement {
            outcome,
            inconclusive: None,
            reason,
            observed: None,
            threshold: None,
            samples,
            baseline_samples: None,
            statistic_name: None,
            statistic: None,
            p_value: None,
            alpha: None,
            effect_size: None,
            summary: Default::default(),
        }
    }

    /// A pass.
    pub fn pass(reason: impl Into<String>, samples: usize) -> Self {
        Self::new(VerdictOutcome::Pass, reason.into(), samples)
    }

    /// A failure.
    pub fn fail(reason: impl Into<String>, samples: usize) -> Self {
        Self::new(VerdictOutcome::Fail, reason.into(), samples)
    }

    /// An inconclusive verdict for `why`.
    pub fn inconclusive(why: InconclusiveReason, reason: impl Into<String>, samples: usize) -> Self {
        let mut j = Self::new(VerdictOutcome::Inconclusive, reason.into(), samples);
        j.inconclusive = Some(why);
        j
    }

    /// Pass or fail.
    pub fn decide(healthy: bool, reason: impl Into<String>, samples: usize) -> Self {
        if healthy {
            Self::pass(reason, samples)
        } else {
            Self::fail(reason, samples)
        }
    }

    /// Record the compared value and threshold.
    pub fn compared(mut self, observed: f64, threshold: f64) -> Self {
        self.observed = Some(observed);
        self.threshold = Some(threshold);
        self
    }

    /// Record the test: statistic, p-value, level and effect size.
    pub fn tested(mut self, name: &str, statistic: f64, p_value: f64, alpha: f64, effect_size: f64) -> Self {
        self.statistic_name = Some(name.to_owned());
        self.statistic = Some(statistic);
        self.p_value = Some(p_value);
        self.alpha = Some(alpha);
        self.effect_size = Some(effect_size);
        self
    }

    /// Record a summary value.
    pub fn summarize(mut self, key: &str, value: f64) -> Self {
        self.summary.insert(key.to_owned(), value);
        self
    }

    /// Record the baseline's sample size.
    pub fn with_baseline_samples(mut self, n: usize) -> Self {
        self.baseline_samples = Some(n);
        self
    }
}

/// Turns measurements into a [`Judgement`]. Implementations must be pure and
/// must never return `Pass` for empty, NaN or infinite data.
#[typetag::serde(tag = "judge")]
pub trait Judge: Send + Sync + fmt::Debug {
    /// Judge the measurements.
    fn evaluate(&self, input: &JudgeInput<'_>) -> Judgement;
    /// A short description for plans (`mean < 0.05`).
    fn describe(&self) -> String;
    /// Whether the engine should also measure the stable revision as a
    /// baseline in the same window.
    fn needs_baseline(&self) -> bool {
        false
    }
    /// The fewest usable samples (values, or events for rate judges) per
    /// arm below which this judge answers
    /// `Inconclusive(InsufficientData)`.
    fn min_samples(&self) -> usize {
        1
    }
    /// Whether the engine should hand this judge every value (and count)
    /// since the analysis began, rather than only the last window's. Judges
    /// that test repeatedly with an error budget across looks want this.
    fn cumulative(&self) -> bool {
        false
    }
    /// Check the judge's own parameters; `path` names the judge in errors.
    fn validate(&self, path: &str) -> Result<()> {
        let _ = path;
        Ok(())
    }
}

/// What a check measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckScope {
    /// One role's revision.
    Role(Role),
    /// The whole target.
    Target,
}

/// One metric judged by one judge.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Check {
    /// Name used in verdicts and events.
    pub name: String,
    /// Metric the probe measures.
    pub metric: String,
    /// What to measure.
    pub scope: CheckScope,
    /// The judge.
    pub judge: Arc<dyn Judge>,
    /// Evaluated and recorded, but never fails the rollout.
    #[serde(default)]
    pub dry_run: bool,
}

impl Check {
    /// A check of `metric` on the candidate.
    pub fn new(name: impl Into<String>, metric: impl Into<String>, judge: impl Judge + 'static) -> Self {
        Check {
            name: name.into(),
            metric: metric.into(),
            scope: CheckScope::Role(Role::Candidate),
            judge: Arc::new(judge),
            dry_run: false,
        }
    }

    /// Measure `scope` instead of the candidate.
    pub fn scope(mut self, scope: CheckScope) -> Self {
        self.scope = scope;
        self
    }

    /// Record but never fail.
    pub fn dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }
}

/// An analysis run: `count` measurements, one every `interval`, of every check.
///
/// The analysis fails as soon as a check has more than `failure_limit`
/// failing verdicts, more than `inconclusive_limit` inconclusive ones, or the
/// probe errored more than `consecutive_error_limit` times in a row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AnalysisSpec {
    /// The checks.
    pub checks: Vec<Check>,
    /// Time between measurements, and the window each one looks at.
    #[serde(with = "crate::serde_duration")]
    pub interval: Duration,
    /// Number of measurements.
    pub count: u32,
    /// Failing verdicts tolerated per check.
    pub failure_limit: u32,
    /// Inconclusive verdicts tolerated per check.
    pub inconclusive_limit: u32,
    /// Consecutive probe errors tolerated per check.
    pub consecutive_error_limit: u32,
    /// What happens past the inconclusive limit.
    #[serde(default)]
    pub on_inconclusive: InconclusivePolicy,
    /// Checks of the spec as written that this step does not run, with
    /// why: a first deployment has no stable revision, so a check that
    /// compares with it (or measures it) cannot run. Shown in the plan and
    /// audited when the step runs (`analysis.skipped`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedCheck>,
}

/// A check an analysis step does not run, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedCheck {
    /// The check's name.
    pub name: String,
    /// Why it does not run.
    pub reason: String,
}

/// What an analysis does when its checks stay inconclusive past the limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InconclusivePolicy {
    /// Roll back (the default: no evidence is not evidence of health).
    #[default]
    RollBack,
    /// Pause the rollout for a human: `resume` accepts the analysis and
    /// continues, `abort` rolls back.
    Pause,
}

impl AnalysisSpec {
    /// An analysis of `checks` with 5 measurements a minute apart, no failure
    /// tolerated, 2 inconclusive and 4 consecutive probe errors tolerated.
    pub fn new(checks: Vec<Check>) -> Self {
        AnalysisSpec {
            checks,
            interval: Duration::from_secs(60),
            count: 5,
            failure_limit: 0,
            inconclusive_limit: 2,
            consecutive_error_limit: 4,
            on_inconclusive: InconclusivePolicy::RollBack,
            skipped: Vec::new(),
        }
    }

    /// This analysis for a first deployment, where no stable revision runs:
    /// the checks that compare with the stable revision, or measure it,
    /// move to [`AnalysisSpec::skipped`] with the reason; the absolute
    /// ones (a threshold on the candidate, say) still judge the release.
    pub fn without_a_stable_revision(&self) -> AnalysisSpec {
        let mut a = self.clone();
        let (run, skip): (Vec<Check>, Vec<Check>) = std::mem::take(&mut a.checks)
            .into_iter()
            .partition(|c| !c.judge.needs_baseline() && c.scope != CheckScope::Role(Role::Stable));
        a.checks = run;
        a.skipped.extend(skip.into_iter().map(|c| SkippedCheck {
            reason: if c.judge.needs_baseline() {
                "compares with the stable revision, and this first deployment has none".to_owned()
            } else {
                "measures the stable revision, and this first deployment has none".to_owned()
            },
            name: c.name,
        }));
        a
    }

    /// Set interval and count.
    pub fn every(mut self, interval: Duration, count: u32) -> Self {
        self.interval = interval;
        self.count = count;
        self
    }

    /// Set the failure limit.
    pub fn failure_limit(mut self, n: u32) -> Self {
        self.failure_limit = n;
        self
    }

    /// Set the inconclusive limit.
    pub fn inconclusive_limit(mut self, n: u32) -> Self {
        self.inconclusive_limit = n;
        self
    }

    /// Set the consecutive probe-error limit.
    pub fn consecutive_error_limit(mut self, n: u32) -> Self {
        self.consecutive_error_limit = n;
        self
    }

    /// Choose what happens past the inconclusive limit.
    pub fn on_inconclusive(mut self, policy: InconclusivePolicy) -> Self {
        self.on_inconclusive = policy;
        self
    }

    /// Total time the analysis takes when it passes.
    pub fn duration(&self) -> Duration {
        self.interval * self.count
    }

    /// Check the spec; `path` prefixes field names in errors.
    pub fn validate(&self, path: &str) -> Result<()> {
        // A first deployment may skip every check (each needs the stable
        // revision); the step stays, to show them skipped.
        if self.checks.is_empty() && self.skipped.is_empty() {
            return Err(Error::invalid(
                format!("{path}.checks"),
                "an analysis needs at least one check",
            ));
        }
        if self.interval.is_zero() {
            return Err(Error::invalid(format!("{path}.interval"), "must be greater than zero"));
        }
        if self.count == 0 {
            return Err(Error::invalid(format!("{path}.count"), "must be at least 1"));
        }
        for (i, c) in self.checks.iter().enumerate() {
            if c.name.is_empty() {
                return Err(Error::invalid(format!("{path}.checks[{i}].name"), "must not be empty"));
            }
            crate::error::check_name(&format!("{path}.checks[{i}].name"), &c.name)?;
            if c.metric.is_empty() {
                return Err(Error::invalid(
                    format!("{path}.checks[{i}].metric"),
                    "must not be empty",
                ));
            }
            c.judge.validate(&format!("{path}.checks[{i}].judge"))?;
        }
        Ok(())
    }
}

/// A judgement of one check at one measurement, with its context. Goes into
/// events and the audit log. It serializes as one object, the judgement's
/// fields beside its own, keys in sorted order.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Verdict {
    /// The check's name.
    pub check: String,
    /// The metric.
    pub metric: String,
    /// What was measured (a revision id or `target`).
    pub scope: String,
    /// Where the values came from (the probe's query).
    pub source: String,
    /// Which measurement of the analysis (1-based).
    pub measurement: u32,
    /// Whether it can fail the rollout.
    pub dry_run: bool,
    /// The judge's conclusion.
    #[serde(flatten)]
    pub judgement: Judgement,
}

/// A verdict's field as its two writers take it: its `Serialize`, and the
/// canonical text of its audit entry (`VerdictView::audit_detail`).
enum Field<'a> {
    Str(&'a str),
    Bool(bool),
    Count(u64),
    /// `null` when absent or not a number, as serde_json writes an `f64`.
    Number(Option<f64>),
    Numbers(&'a std::collections::BTreeMap<String, f64>),
    Outcome(VerdictOutcome),
    Inconclusive(InconclusiveReason),
}

/// A verdict with its fields borrowed: what the engine audits, logs and
/// explains at every measurement, without copying the check's name, metric
/// and scope into a [`Verdict`] of their own; one is made only for whoever
/// watches the rollout's events.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VerdictView<'a> {
    pub(crate) check: &'a str,
    pub(crate) metric: &'a str,
    pub(crate) scope: &'a str,
    pub(crate) source: &'a str,
    pub(crate) measurement: u32,
    pub(crate) dry_run: bool,
    pub(crate) judgement: &'a Judgement,
}

impl Verdict {
    /// This verdict, borrowed. (A field added to `Verdict` does not
    /// compile until `VerdictView::to_verdict` fills it, from the view.)
    pub(crate) fn view(&self) -> VerdictView<'_> {
        VerdictView {
            check: &self.check,
            metric: &self.metric,
            scope: &self.scope,
            source: &self.source,
            measurement: self.measurement,
            dry_run: self.dry_run,
            judgement: &self.judgement,
        }
    }
}

impl VerdictView<'_> {
    /// The verdict, owned.
    pub(crate) fn to_verdict(self) -> Verdict {
        Verdict {
            check: self.check.to_owned(),
            metric: self.metric.to_owned(),
            scope: self.scope.to_owned(),
            source: self.source.to_owned(),
            measurement: self.measurement,
            dry_run: self.dry_run,
            judgement: self.judgement.clone(),
        }
    }

    /// Visit every field in sorted key order, the judgement's among the
    /// verdict's (as `flatten` would put them, but sorted), optional ones
    /// left out when absent (as `skip_serializing_if`): the one list both
    /// writers follow.
    fn fields<E>(
        &self,
        mut visit: impl FnMut(&'static str, Field<'_>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        // Every field by name: a new one does not compile until it is
        // visited here.
        let VerdictView {
            check,
            metric,
            scope,
            source,
            measurement,
            dry_run,
            judgement,
        } = *self;
        let Judgement {
            outcome,
            inconclusive,
            reason,
            observed,
            threshold,
            samples,
            baseline_samples,
            statistic_name,
            statistic,
            p_value,
            alpha,
            effect_size,
            summary,
        } = judgement;
        let count = |n: usize| Field::Count(n as u64);
        let number = |x: &Option<f64>| x.map(|x| Field::Number(Some(x)));
        let present = [
            ("alpha", number(alpha)),
            ("baseline_samples", baseline_samples.map(count)),
            ("check", Some(Field::Str(check))),
            ("dry_run", Some(Field::Bool(dry_run))),
            ("effect_size", number(effect_size)),
            ("inconclusive", inconclusive.map(Field::Inconclusive)),
            ("measurement", Some(Field::Count(u64::from(measurement)))),
            ("metric", Some(Field::Str(metric))),
            ("observed", Some(Field::Number(*observed))),
            ("outcome", Some(Field::Outcome(*outcome))),
            ("p_value", number(p_value)),
            ("reason", Some(Field::Str(reason))),
            ("samples", Some(count(*samples))),
            ("scope", Some(Field::Str(scope))),
            ("source", Some(Field::Str(source))),
            ("statistic", number(statistic)),
            ("statistic_name", statistic_name.as_deref().map(Field::Str)),
            ("summary", (!summary.is_empty()).then_some(Field::Numbers(summary))),
            ("threshold", Some(Field::Number(*threshold))),
        ];
        for (key, field) in present {
            if let Some(field) = field {
                visit(key, field)?;
            }
        }
        Ok(())
    }

    /// The canonical text of this verdict as an audit detail, written over
    /// `detail` in its buffer (the engine writes each verdict of a rollout
    /// over the last entry's detail) by the canonical writer: the same text
    /// as the verdict's serialization, without a value tree in between.
    pub(crate) fn write_audit_detail(&self, detail: &mut AuditDetail) {
        let mut out = detail.take_buffer();
        let mut o = CanonicalObject::begin(&mut out);
        let written: std::result::Result<(), std::convert::Infallible> = self.fields(|key, field| {
            match field {
                Field::Str(s) => o.str(key, s),
                Field::Bool(b) => o.bool(key, b),
                Field::Count(n) => o.value(key, &n),
                Field::Number(x) => o.value(key, &x),
                Field::Numbers(map) => {
                    let mut numbers = o.object(key);
                    for (name, x) in map {
                        numbers.entry(name, x);
                    }
                    numbers.end();
                }
                Field::Outcome(v) => o.value(key, &v),
                Field::Inconclusive(r) => o.value(key, &r),
            }
            Ok(())
        });
        let () = written.unwrap_or_else(|never| match never {});
        o.end();
        let text = String::from_utf8(out).unwrap_or_default();
        debug_assert_eq!(
            text,
            serde_json::to_value(self.to_verdict()).unwrap_or_default().to_string(),
            "the audit detail and the serialization of a verdict differ"
        );
        *detail = AuditDetail::from_canonical(text);
    }
}

/// One object, keys in sorted order, the judgement's fields among the
/// verdict's: the same text as the verdict's audit detail.
impl Serialize for Verdict {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        self.view().fields(|key, field| match field {
            Field::Str(v) => m.serialize_entry(key, v),
            Field::Bool(v) => m.serialize_entry(key, &v),
            Field::Count(v) => m.serialize_entry(key, &v),
            Field::Number(v) => m.serialize_entry(key, &v),
            Field::Numbers(v) => m.serialize_entry(key, v),
            Field::Outcome(v) => m.serialize_entry(key, &v),
            Field::Inconclusive(v) => m.serialize_entry(key, &v),
        })?;
        m.end()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.view().fmt(f)
    }
}

impl fmt::Display for VerdictView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let j = self.judgement;
        write!(
            f,
            "{} [{} on {}] #{}: {} ({}",
            self.check, self.metric, self.scope, self.measurement, j.outcome, j.reason
        )?;
        match j.baseline_samples {
            Some(b) => write!(f, "; n={} vs baseline n={b})", j.samples)?,
            None => write!(f, "; n={})", j.samples)?,
        }
        if self.dry_run {
            f.write_str(" [dry-run]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(judgement: Judgement) -> Verdict {
        Verdict {
            check: "errors \"5xx\"".into(),
            metric: "error_rate".into(),
            scope: "rev-a".into(),
            source: "sim:t/error_rate{rev-a}".into(),
            measurement: 3,
            dry_run: false,
            judgement,
        }
    }

    #[test]
    fn a_verdict_serializes_as_its_sorted_value_tree_and_reads_back() {
        let bare = Judgement {
            threshold: Some(0.05),
            ..Judgement::pass("mean 0.01 < 0.05", 60)
        };
        let full = Judgement {
            outcome: VerdictOutcome::Inconclusive,
            inconclusive: Some(InconclusiveReason::InsufficientData),
            observed: Some(0.125),
            baseline_samples: Some(600),
            statistic_name: Some("z".into()),
            statistic: Some(-1.5e-7),
            p_value: Some(0.5),
            alpha: Some(0.01),
            effect_size: Some(2.0),
            summary: [
                ("candidate_rate".to_owned(), 0.1),
                ("baseline_rate".to_owned(), 0.05),
                ("p95 \"µs\"".to_owned(), 250.0),
            ]
            .into(),
            ..bare.clone()
        };
        // Not a number is written as `null`, as a value tree writes it; with
        // `bare` and `full`, every outcome is written.
        let nan = Judgement {
            outcome: VerdictOutcome::Fail,
            observed: Some(f64::NAN),
            ..bare.clone()
        };
        // One detail written over and over, as the engine writes a
        // rollout's verdicts: a shorter one leaves nothing of the last.
        let mut detail = AuditDetail::from(serde_json::json!({"earlier": "a longer detail ".repeat(40)}));
        for v in [verdict(full.clone()), verdict(bare), verdict(nan)] {
            let text = serde_json::to_string(&v).unwrap();
            // A value tree sorts its keys: the same text means sorted keys,
            // the same fields and the same numbers; the audit detail,
            // written without serde_json's serializer, is that text too.
            let tree = serde_json::to_value(&v).unwrap().to_string();
            assert_eq!(text, tree);
            v.view().write_audit_detail(&mut detail);
            assert_eq!(detail.as_str(), tree);
        }
        // Every field reads back, so none was left out.
        let v = verdict(full);
        let back: Verdict = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(back, v);
    }
}
