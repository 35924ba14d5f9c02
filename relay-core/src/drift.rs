//! Drift: how a target differs from the release relay last applied to it.

use std::fmt;

use serde::Serialize;

use crate::release::RevisionId;

/// One difference between a target and the release relay last applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "drift", rename_all = "snake_case")]
pub enum Drift {
    /// The target's stable revision is not the one relay promoted.
    Revision {
        /// What relay promoted.
        applied: RevisionId,
        /// What the target calls stable now (`None`: nothing).
        running: Option<RevisionId>,
    },
    /// The image differs.
    Image {
        /// What relay deployed (`repository@digest`).
        applied: String,
        /// What runs.
        running: String,
    },
    /// A configuration value differs or is gone.
    Config {
        /// The variable.
        key: String,
        /// What relay set.
        applied: String,
        /// What is set now (`None`: removed).
        running: Option<String>,
    },
    /// A secret reference differs or is gone (values are never compared or
    /// shown).
    Secret {
        /// The name the application sees.
        name: String,
        /// The reference relay set, pinned.
        applied: String,
        /// The reference now (`None`: removed).
        running: Option<String>,
    },
    /// The replica count differs.
    Replicas {
        /// What relay asked for.
        applied: u32,
        /// What the target asks for now.
        running: u32,
    },
    /// A revision relay did not leave running.
    ExtraRevision {
        /// The revision.
        revision: RevisionId,
        /// Its desired replicas.
        replicas: u32,
    },
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::Revision { applied, running } => match running {
                Some(r) => write!(f, "stable revision is {r}, relay promoted {applied}"),
                None => write!(f, "no stable revision; relay promoted {applied}"),
            },
            Drift::Image { applied, running } => write!(f, "image is {running}, relay deployed {applied}"),
            Drift::Config { key, applied, running } => match running {
                Some(v) => write!(f, "config {key} is {v:?}, relay set {applied:?}"),
                None => write!(f, "config {key} was removed (relay set {applied:?})"),
            },
            Drift::Secret { name, applied, running } => match running {
                Some(r) => write!(f, "secret {name} refers to {r}, relay set {applied}"),
                None => write!(f, "secret {name} was removed (relay set {applied})"),
            },
            Drift::Replicas { applied, running } => write!(f, "{running} replicas, relay set {applied}"),
            Drift::ExtraRevision { revision, replicas } => {
                write!(f, "revision {revision} runs {replicas} replicas relay did not leave")
            }
        }
    }
}

/// A target's drift report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DriftReport {
    /// The target.
    pub target: String,
    /// The rollout whose release is the reference (`None`: relay never
    /// promoted anything here, so there is nothing to compare).
    pub applied_by: Option<String>,
    /// The differences; empty when the target runs what relay applied.
    pub differences: Vec<Drift>,
    /// Whether the target could describe what it runs (image, config,
    /// secrets); without it only revisions and replicas are compared.
    pub described: bool,
}

impl DriftReport {
    /// Whether the target runs what relay applied.
    pub fn in_sync(&self) -> bool {
        self.differences.is_empty()
    }
}
