//! The analysis model: checks, judges and verdicts.
//!
//! Judges live in `relay-strategies`; the engine only needs this trait. A
//! judge is serializable (through `typetag`) so a persisted plan can be
//! resumed after a crash with the same judges.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::target::Role;

/// The data a judge sees.
#[derive(Clone, Debug, Default)]
pub struct JudgeInput<'a> {
    /// The measured values of the scope under test.
    pub values: &'a [f64],
    /// Values of the baseline (stable) in the same window, when the judge
    /// asked for them.
    pub baseline: Option<&'a [f64]>,
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
    /// One line saying why (`mean error_rate 0.084 >= 0.05`).
    pub reason: String,
    /// The statistic the judge computed (mean, p95, ...), when it computed one.
    pub observed: Option<f64>,
    /// The threshold it compared against.
    pub threshold: Option<f64>,
    /// How many usable values it saw.
    pub samples: usize,
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
        }
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

    /// Total time the analysis takes when it passes.
    pub fn duration(&self) -> Duration {
        self.interval * self.count
    }

    /// Check the spec; `path` prefixes field names in errors.
    pub fn validate(&self, path: &str) -> Result<()> {
        if self.checks.is_empty() {
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
/// events and the audit log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{} on {}] #{}: {} ({}; n={})",
            self.check,
            self.metric,
            self.scope,
            self.measurement,
            self.judgement.outcome,
            self.judgement.reason,
            self.judgement.samples
        )?;
        if self.dry_run {
            f.write_str(" [dry-run]")?;
        }
        Ok(())
    }
}
