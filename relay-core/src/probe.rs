//! Health probes: what they are asked and what they measure.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::release::RevisionId;

/// What a probe measures: one revision of the rollout, or the whole target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One revision.
    Revision(RevisionId),
    /// Everything the target serves.
    Target,
}

impl Scope {
    /// As displayed: the revision's id, or `target`.
    pub fn as_str(&self) -> &str {
        match self {
            Scope::Revision(r) => r.as_str(),
            Scope::Target => "target",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request for measurements.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeQuery {
    /// The metric's name (`error_rate`, `latency_ms`, a PromQL expression...).
    pub metric: String,
    /// What to measure.
    pub scope: Scope,
    /// How far back to look.
    #[serde(with = "crate::serde_duration")]
    pub window: Duration,
    /// The target the rollout runs on (a probe shared by several targets,
    /// one per region say, tells them apart by it).
    #[serde(default)]
    pub target: String,
    /// Where in a rollout the engine asks (`None` when asked outside one):
    /// what a [`crate::recording::RecordingProbe`] keeps beside each
    /// sample and a [`crate::recording::ReplayProbe`] answers by. A probe
    /// that measures a live system ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<QueryContext>,
}

/// Where in a rollout a [`ProbeQuery`] is asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryContext {
    /// The rollout.
    pub rollout: String,
    /// The plan step of the analysis (0-based).
    pub step: usize,
    /// Which measurement of the analysis (1-based).
    pub measurement: u32,
    /// The check asking.
    pub check: String,
    /// The revision's role: the candidate, or the stable one (a check of
    /// it, or the baseline a comparison asks for); `None` for the whole
    /// target.
    pub role: Option<crate::target::Role>,
    /// Time since the rollout was created (milliseconds, engine clock).
    pub elapsed_ms: u64,
    /// Time since the analysis step started (milliseconds).
    pub step_elapsed_ms: u64,
}

/// Measurements of one metric: one value per sample interval the probe saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The values, oldest first. May contain NaN; judges treat NaN as no data.
    pub values: Vec<f64>,
    /// Free-form description of where they came from (the query, the URL).
    pub source: String,
    /// Extra labels the probe attaches (region, pod...).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// For rate metrics, the event counts over the whole window, when the
    /// probe knows them (rate judges test counts, not averaged rates).
    ///
    /// A probe that leaves this `None` cannot feed the statistical
    /// `ProportionJudge` (relay-strategies), which compares the candidate's
    /// failures out of its events with the baseline's: its verdict is then
    /// inconclusive, saying the probe reported no event counts. The
    /// simulated and HTTP probes fill it; a Prometheus or CloudWatch query
    /// returns rates only, so judge those with a threshold or the
    /// `MannWhitneyJudge`.
    pub counts: Option<crate::analysis::Counts>,
}

/// Takes measurements of a target's health.
///
/// # Contract
/// - `sample` has no side effect on the target.
/// - No data is an empty [`Sample`], not an error: the judge decides that it
///   is inconclusive. Errors mean the probe itself failed (and count towards
///   the analysis's consecutive-error limit).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait HealthProbe: Send + Sync + fmt::Debug + 'static {
    /// Measure `query.metric` for `query.scope` over `query.window`.
    async fn sample(&self, query: &ProbeQuery) -> Result<Sample>;
}
