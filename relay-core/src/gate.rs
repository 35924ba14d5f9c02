//! Gates: decisions taken before a step may proceed.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;
use crate::error::Result;
use crate::release::RevisionId;

/// A human decision on a gate, recorded in the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The gate it answers.
    pub gate: String,
    /// Who decided.
    pub by: String,
    /// Why, as they wrote it.
    pub comment: String,
    /// Whether they approved (`false`: rejected).
    pub approved: bool,
    /// When (unix milliseconds).
    pub at_ms: UnixMillis,
}

/// What a gate sees.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GateContext {
    /// The rollout.
    pub rollout: String,
    /// The target's name.
    pub target: String,
    /// The candidate revision.
    pub candidate: RevisionId,
    /// The candidate's artifact digest.
    pub digest: String,
    /// The step index the gate guards (0-based).
    pub step: usize,
    /// Human decisions received so far in this rollout.
    pub approvals: Vec<Approval>,
    /// Now (unix milliseconds, from the engine's clock).
    pub now_ms: UnixMillis,
}

/// A gate's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum GateDecision {
    /// Proceed.
    Pass {
        /// Who or what allowed it.
        by: String,
    },
    /// Not yet; ask again later (or when a human decides).
    Wait {
        /// What the gate is waiting for.
        reason: String,
    },
    /// Refuse: the rollout rolls back.
    Fail {
        /// Why.
        reason: String,
    },
}

/// Decides whether a rollout may pass a point in its plan.
///
/// # Contract
/// - `check` has no side effect and may be called repeatedly: the engine asks
///   again every poll interval and whenever a human decision arrives while the
///   answer is `Wait`.
/// - An error counts as `Wait` until the retry policy gives up, then fails the
///   rollout.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Gate: Send + Sync + fmt::Debug + 'static {
    /// The gate's name, as plans refer to it.
    fn name(&self) -> &str;
    /// Decide.
    async fn check(&self, ctx: &GateContext) -> Result<GateDecision>;
}

/// A gate that waits for a person: it passes once
/// [`crate::RolloutHandle::approve`] names it and fails once
/// [`crate::RolloutHandle::reject`] does.
#[derive(Clone, Debug)]
pub struct ManualApproval {
    name: String,
}

impl ManualApproval {
    /// A manual approval gate called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        ManualApproval { name: name.into() }
    }
}

#[async_trait]
impl Gate for ManualApproval {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self, ctx: &GateContext) -> Result<GateDecision> {
        // The latest decision on this gate wins.
        Ok(match ctx.approvals.iter().rev().find(|a| a.gate == self.name) {
            Some(a) if a.approved => GateDecision::Pass { by: a.by.clone() },
            Some(a) => GateDecision::Fail {
                reason: format!("rejected by {}: {}", a.by, a.comment),
            },
            None => GateDecision::Wait {
                reason: format!("waiting for approval of {:?}", self.name),
            },
        })
    }
}
