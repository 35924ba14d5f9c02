//! Gates: decisions taken before a step may proceed.

use std::fmt;
use std::time::Duration;

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
    /// The plan step of the gate instance it answers. A decision sent to a
    /// running rollout binds to one instance: the gate step it is waiting
    /// at, or else the next step of that gate ahead of it, so approving a
    /// gate the plan holds twice opens it once. `None` (a decision given in
    /// the [`crate::RolloutSpec`] before the rollout starts, such as an
    /// emergency override of a freeze window) answers every instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
}

impl Approval {
    /// Whether this decision answers the gate instance at plan step `step`.
    pub fn applies_to(&self, step: usize) -> bool {
        self.step.is_none_or(|s| s == step)
    }
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
    /// Human decisions that answer this gate instance: those bound to its
    /// step, and those given for the whole rollout (see [`Approval::step`]).
    pub approvals: Vec<Approval>,
    /// Now (unix milliseconds, from the engine's clock).
    pub now_ms: UnixMillis,
    /// When the engine began asking this gate (unix milliseconds); after a
    /// resume, when it began asking again.
    #[serde(default)]
    pub waiting_since_ms: UnixMillis,
    /// Who started the rollout, when its spec said
    /// ([`crate::RolloutSpec::started_by`]).
    #[serde(default)]
    pub started_by: Option<String>,
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

/// What a [`ManualApproval`] decides when nobody did in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// Refuse: the rollout rolls back.
    Reject,
    /// Proceed, as if approved by "timeout".
    Approve,
}

/// A gate that waits for a person: it passes once
/// [`crate::RolloutControl::approve`] names it and fails once
/// [`crate::RolloutControl::reject`] does (the latest decision wins; the
/// engine audits who decided, when, and their comment). With
/// [`ManualApproval::timeout`], a gate nobody decided within the time takes
/// the configured outcome.
///
/// Who may decide can be restricted: [`ManualApproval::approvers`] (only
/// their decisions count), [`ManualApproval::requires`] (N distinct
/// approvers), [`ManualApproval::separate_duties`] (the identity that
/// started the rollout cannot decide). Under any of these, each person's
/// latest decision counts, and a rejection by anyone who may decide fails
/// the gate; decisions that do not count are named in the gate's wait
/// reason (and every decision is in the audit log).
#[derive(Clone, Debug)]
pub struct ManualApproval {
    name: String,
    timeout: Option<(Duration, OnTimeout)>,
    approvers: Option<std::collections::BTreeSet<String>>,
    required: usize,
    separate_duties: bool,
}

impl ManualApproval {
    /// A manual approval gate called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        ManualApproval {
            name: name.into(),
            timeout: None,
            approvers: None,
            required: 1,
            separate_duties: false,
        }
    }

    /// Decide `outcome` when nobody decided within `after`.
    pub fn timeout(mut self, after: Duration, outcome: OnTimeout) -> Self {
        self.timeout = Some((after, outcome));
        self
    }

    /// Count only decisions of `identities`.
    pub fn approvers<I: Into<String>>(mut self, identities: impl IntoIterator<Item = I>) -> Self {
        self.approvers = Some(identities.into_iter().map(Into::into).collect());
        self
    }

    /// Pass only once `n` distinct people who may decide approved (N of M).
    pub fn requires(mut self, n: usize) -> Self {
        self.required = n.max(1);
        self
    }

    /// Do not count the decision of the identity that started the rollout
    /// ([`crate::RolloutSpec::started_by`]): nobody approves their own
    /// release.
    pub fn separate_duties(mut self) -> Self {
        self.separate_duties = true;
        self
    }

    /// Why `by` may not decide, if they may not.
    fn not_counted(&self, by: &str, ctx: &GateContext) -> Option<&'static str> {
        if self.approvers.as_ref().is_some_and(|a| !a.contains(by)) {
            return Some("not an approver");
        }
        if self.separate_duties && ctx.started_by.as_deref() == Some(by) {
            return Some("started the rollout");
        }
        None
    }

    /// The decision under restrictions: each person's latest decision, of
    /// those who may decide; a rejection fails, `required` approvals pass.
    fn decide_restricted(&self, decisions: &[&Approval], ctx: &GateContext) -> Option<GateDecision> {
        let mut latest: std::collections::BTreeMap<&str, &Approval> = std::collections::BTreeMap::new();
        for a in decisions {
            latest.insert(a.by.as_str(), a);
        }
        let mut approved = Vec::new();
        for (by, a) in &latest {
            if self.not_counted(by, ctx).is_some() {
                continue;
            }
            if !a.approved {
                return Some(GateDecision::Fail {
                    reason: format!("rejected by {by}: {}", a.comment),
                });
            }
            approved.push(*by);
        }
        (approved.len() >= self.required).then(|| GateDecision::Pass {
            by: approved.join(", "),
        })
    }

    /// What the gate waits for, and which decisions did not count.
    fn waiting(&self, decisions: &[&Approval], ctx: &GateContext) -> String {
        let mut reason = format!("waiting for approval of {:?}", self.name);
        if self.required > 1 {
            let counted = decisions
                .iter()
                .filter(|a| a.approved && self.not_counted(&a.by, ctx).is_none())
                .map(|a| a.by.as_str())
                .collect::<std::collections::BTreeSet<_>>();
            reason.push_str(&format!(" ({} of {} so far)", counted.len(), self.required));
        }
        let ignored: std::collections::BTreeSet<String> = decisions
            .iter()
            .filter_map(|a| self.not_counted(&a.by, ctx).map(|why| format!("{} ({why})", a.by)))
            .collect();
        if !ignored.is_empty() {
            reason.push_str(&format!(
                "; not counted: {}",
                ignored.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        reason
    }
}

#[async_trait]
impl Gate for ManualApproval {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self, ctx: &GateContext) -> Result<GateDecision> {
        let decisions: Vec<&Approval> = ctx.approvals.iter().filter(|a| a.gate == self.name).collect();
        let restricted = self.approvers.is_some() || self.required > 1 || self.separate_duties;
        if restricted {
            if let Some(decision) = self.decide_restricted(&decisions, ctx) {
                return Ok(decision);
            }
        } else if let Some(a) = decisions.last() {
            // The latest decision on this gate wins.
            return Ok(if a.approved {
                GateDecision::Pass { by: a.by.clone() }
            } else {
                GateDecision::Fail {
                    reason: format!("rejected by {}: {}", a.by, a.comment),
                }
            });
        }
        if let Some((after, outcome)) = self.timeout {
            let waited = ctx.now_ms.saturating_sub(ctx.waiting_since_ms);
            if waited >= i64::try_from(after.as_millis()).unwrap_or(i64::MAX) {
                return Ok(match outcome {
                    OnTimeout::Approve => GateDecision::Pass {
                        by: format!("timeout: no decision within {after:?}"),
                    },
                    OnTimeout::Reject => GateDecision::Fail {
                        reason: format!("no decision on {:?} within {after:?}", self.name),
                    },
                });
            }
        }
        Ok(GateDecision::Wait {
            reason: self.waiting(&decisions, ctx),
        })
    }
}

/// The signature header value for a webhook `body` sent with `key`:
/// `sha256=<hex HMAC-SHA256(key, body)>`. Senders put it in
/// `X-Relay-Signature-256`; receivers recompute it and compare with
/// [`verify_webhook_signature`].
pub fn webhook_signature(key: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(crate::hmac::hmac_sha256(key, &[body])))
}

/// Whether `header` is the signature of `body` under `key`, compared in
/// constant time.
pub fn verify_webhook_signature(key: &[u8], body: &[u8], header: &str) -> bool {
    let expected = webhook_signature(key, body);
    expected.len() == header.len()
        && expected
            .bytes()
            .zip(header.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_signatures_verify_only_with_the_key_and_body() {
        let sig = webhook_signature(b"k", b"body");
        assert!(verify_webhook_signature(b"k", b"body", &sig));
        assert!(!verify_webhook_signature(b"k", b"bodY", &sig));
        assert!(!verify_webhook_signature(b"other", b"body", &sig));
    }
}
