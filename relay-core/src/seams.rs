//! The small seams: artifact stores, secret stores and health probes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::artifact::{Artifact, ArtifactPolicy, ArtifactRef};
use crate::error::Result;
use crate::release::{RevisionId, SecretRef};

/// Resolves artifact references to immutable, digest-pinned artifacts.
///
/// # Contract
/// - `resolve` of a reference with a digest returns that digest or fails; it
///   never silently substitutes another. A tag resolves to the digest it
///   points at now.
/// - A reference that cannot be pinned is [`crate::Error::NotFound`] or
///   [`crate::Error::InvalidSpec`], never an artifact without a digest.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ArtifactStore: Send + Sync + fmt::Debug + 'static {
    /// Resolve `reference` to a pinned artifact.
    async fn resolve(&self, reference: &ArtifactRef) -> Result<Artifact>;

    /// Verify `artifact` against `policy`. The default applies
    /// [`ArtifactPolicy::check`]; stores that can check signatures or
    /// provenance themselves extend it.
    async fn verify(&self, reference: &ArtifactRef, artifact: &Artifact, policy: &ArtifactPolicy) -> Result<()> {
        policy.check(reference, artifact)
    }
}

/// A secret value with the version it was read at.
///
/// `Debug` shows the version and `[REDACTED]`, never the value.
pub struct SecretValue {
    /// The value. Read it with `secrecy::ExposeSecret` only where a provider
    /// needs it.
    pub value: SecretString,
    /// The store's version of this value, used to pin the reference.
    pub version: String,
    /// The secret's full name where the store knows it better than the
    /// reference said it (Secrets Manager's full ARN, with the suffix it
    /// adds to every name): the engine pins the reference to it, so a
    /// target that hands the reference on (ECS `valueFrom`) names exactly
    /// the secret that was read. `None` keeps the reference's path.
    pub path: Option<String>,
}

impl SecretValue {
    /// `value` at `version`, under the reference's own path.
    pub fn new(value: SecretString, version: impl Into<String>) -> Self {
        SecretValue {
            value,
            version: version.into(),
            path: None,
        }
    }

    /// The same value, known under the full name `path` (see
    /// [`SecretValue::path`]).
    #[must_use]
    pub fn at(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretValue")
            .field("value", &"[REDACTED]")
            .field("version", &self.version)
            .field("path", &self.path)
            .finish()
    }
}

/// Fetches secrets by reference.
///
/// # Contract
/// - A reference with a `version` parameter returns exactly that version, or
///   [`crate::Error::NotFound`]; without one, the current version, and
///   [`SecretValue::version`] says which it was so the engine can pin it.
/// - The value never appears in an error, a log line or `Debug` output.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait SecretStore: Send + Sync + fmt::Debug + 'static {
    /// Fetch the secret `reference` points at.
    async fn fetch(&self, reference: &SecretRef) -> Result<SecretValue>;
}

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
