//! Release notes: what changed between two releases of a target, read from
//! the state store's history and the audit log ([`release_diff`],
//! [`crate::Relay::diff`], `relayctl diff`).
//!
//! A release is named by its rollout's id, or by its revision id (the last
//! rollout of that revision on the target). The notes say what the later
//! release changed against the earlier one — the artifact, each
//! configuration key, each secret reference, the strategy — and what
//! happened from one to the other: every rollout on the target after the
//! first up to the second (with rolled-back attempts), the decisions at
//! their gates, and how each check of the second's analysis ended.
//! Secrets appear as their references (store, path, pinned version), never
//! their values, which relay never holds in its records.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::audit::AuditSink;
use crate::clock::UnixMillis;
use crate::error::{Error, Result};
use crate::state::{RolloutRecord, RolloutStatus, StateStore};

/// One release of the target: a rollout and what it deployed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReleaseInfo {
    /// The rollout.
    pub rollout: String,
    /// The revision it deployed.
    pub revision: String,
    /// The artifact, pinned (`repository@digest`).
    pub artifact: String,
    /// The tag it was resolved from, if any.
    pub tag: Option<String>,
    /// The strategy.
    pub strategy: String,
    /// How it ended (`promoted`, `rolled_back`, …) or `running`,
    /// `rolling_back`.
    pub outcome: String,
    /// Who started it, when its spec said.
    pub started_by: Option<String>,
    /// When it started (unix milliseconds).
    pub created_ms: UnixMillis,
}

impl ReleaseInfo {
    fn of(r: &RolloutRecord) -> Self {
        let candidate = &r.plan.candidate;
        ReleaseInfo {
            rollout: r.id.clone(),
            revision: candidate.id.to_string(),
            artifact: candidate.artifact.pinned_ref().to_string(),
            tag: candidate.artifact.tag.clone(),
            strategy: r.plan.strategy.clone(),
            outcome: match &r.status {
                RolloutStatus::Running => "running".to_owned(),
                RolloutStatus::RollingBack { .. } => "rolling_back".to_owned(),
                RolloutStatus::Finished(outcome) => outcome.name().to_owned(),
            },
            started_by: r.started_by.clone(),
            created_ms: r.created_ms,
        }
    }
}

/// A value on each side; `None` where the side has none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The configuration key or secret name.
    pub name: String,
    /// The earlier release's.
    pub from: Option<String>,
    /// The later release's.
    pub to: Option<String>,
}

/// A decision at a gate of a rollout between the two releases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The rollout.
    pub rollout: String,
    /// The gate.
    pub gate: String,
    /// Who decided.
    pub by: String,
    /// Approved (`false`: rejected).
    pub approved: bool,
    /// Their comment.
    pub comment: String,
    /// When (unix milliseconds).
    pub at_ms: UnixMillis,
}

/// How one check of the later release's analysis ended: its last verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckResult {
    /// The check.
    pub check: String,
    /// The metric.
    pub metric: String,
    /// `pass`, `fail` or `inconclusive`.
    pub outcome: String,
    /// The verdict's reason (`mean error_rate 0.004 < 0.05`).
    pub reason: String,
    /// Measurements judged, in every analysis of the rollout.
    pub measurements: u32,
    /// A dry-run check, which could not fail the rollout.
    pub dry_run: bool,
}

/// What changed between two releases of a target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReleaseDiff {
    /// The target.
    pub target: String,
    /// The earlier release.
    pub from: ReleaseInfo,
    /// The later release.
    pub to: ReleaseInfo,
    /// Whether the artifact's digest differs.
    pub artifact_changed: bool,
    /// Configuration keys added, removed or changed, by key.
    pub config: Vec<Change>,
    /// Secret references added, removed or re-pinned (another version), by
    /// name.
    pub secrets: Vec<Change>,
    /// Every rollout on the target after the earlier release, up to the
    /// later one, oldest first (attempts that were rolled back included).
    pub rollouts: Vec<ReleaseInfo>,
    /// Gate decisions in those rollouts, in order.
    pub decisions: Vec<Decision>,
    /// How each check of the later release's analysis ended (none without
    /// an audit log, or when it ran none).
    pub checks: Vec<CheckResult>,
}

/// What changed from release `from` to release `to` of `target` (each a
/// rollout id, or a revision id: its last rollout on the target), from the
/// records in `state` and, when given, the verdicts in `audit`.
///
/// # Errors
/// [`Error::InvalidSpec`] naming `from` or `to` when no rollout of the
/// target answers to it, or when `to` started before `from`; store errors.
pub async fn release_diff(
    state: &dyn StateStore,
    audit: Option<&dyn AuditSink>,
    target: &str,
    from: &str,
    to: &str,
) -> Result<ReleaseDiff> {
    let history = state.list_target(target).await?;
    let find = |field: &str, name: &str| -> Result<usize> {
        history
            .iter()
            .rposition(|r| r.id == name)
            .or_else(|| history.iter().rposition(|r| r.plan.candidate.id.as_str() == name))
            .ok_or_else(|| {
                Error::invalid(
                    field,
                    format!(
                        "no rollout on target {target:?} has the id or revision {name:?}; {} rollouts there",
                        history.len()
                    ),
                )
            })
    };
    let (a, b) = (find("from", from)?, find("to", to)?);
    if b < a {
        return Err(Error::invalid(
            "to",
            format!("{to:?} started before {from:?}: name the earlier release first"),
        ));
    }
    let (old, new) = (&history[a].plan.candidate, &history[b].plan.candidate);
    let config = changes(
        old.config.iter().map(|(k, v)| (k, v.clone())),
        new.config.iter().map(|(k, v)| (k, v.clone())),
    );
    let secrets = changes(
        old.secrets.iter().map(|(k, v)| (k, v.to_string())),
        new.secrets.iter().map(|(k, v)| (k, v.to_string())),
    );
    let between = &history[a + 1..=b.max(a)];
    let decisions = between
        .iter()
        .flat_map(|r| {
            r.approvals.iter().map(|d| Decision {
                rollout: r.id.clone(),
                gate: d.gate.clone(),
                by: d.by.clone(),
                approved: d.approved,
                comment: d.comment.clone(),
                at_ms: d.at_ms,
            })
        })
        .collect();
    let checks = match audit {
        Some(audit) => checks_of(audit, &history[b].id).await?,
        None => Vec::new(),
    };
    Ok(ReleaseDiff {
        target: target.to_owned(),
        from: ReleaseInfo::of(&history[a]),
        to: ReleaseInfo::of(&history[b]),
        artifact_changed: old.artifact.digest != new.artifact.digest,
        config,
        secrets,
        rollouts: between.iter().map(ReleaseInfo::of).collect(),
        decisions,
        checks,
    })
}

/// Keys whose value differs between `old` and `new`, in key order.
fn changes<'a>(
    old: impl Iterator<Item = (&'a String, String)>,
    new: impl Iterator<Item = (&'a String, String)>,
) -> Vec<Change> {
    let mut both: BTreeMap<&String, (Option<String>, Option<String>)> = BTreeMap::new();
    for (k, v) in old {
        both.entry(k).or_default().0 = Some(v);
    }
    for (k, v) in new {
        both.entry(k).or_default().1 = Some(v);
    }
    both.into_iter()
        .filter(|(_, (a, b))| a != b)
        .map(|(k, (from, to))| Change {
            name: k.clone(),
            from,
            to,
        })
        .collect()
}

/// The last verdict of each check `rollout` audited, by check name.
async fn checks_of(audit: &dyn AuditSink, rollout: &str) -> Result<Vec<CheckResult>> {
    let mut last: BTreeMap<String, CheckResult> = BTreeMap::new();
    for entry in audit.entries().await? {
        let e = &entry.event;
        if e.rollout != rollout || e.action != "analysis.verdict" {
            continue;
        }
        let d = e.detail.to_value();
        let text = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let check = text("check");
        let measurements = last.get(&check).map_or(0, |c| c.measurements) + 1;
        let result = CheckResult {
            metric: text("metric"),
            outcome: text("outcome"),
            reason: text("reason"),
            measurements,
            dry_run: d.get("dry_run").and_then(serde_json::Value::as_bool).unwrap_or(false),
            check: check.clone(),
        };
        last.insert(check, result);
    }
    Ok(last.into_values().collect())
}

impl ReleaseDiff {
    /// The notes as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let (from, to) = (&self.from, &self.to);
        let _ = writeln!(md, "# {}: {} → {}\n", self.target, label(from), label(to));
        let _ = writeln!(md, "| | from | to |\n|---|---|---|");
        let _ = writeln!(md, "| rollout | `{}` | `{}` |", from.rollout, to.rollout);
        let _ = writeln!(md, "| revision | `{}` | `{}` |", from.revision, to.revision);
        let _ = writeln!(md, "| artifact | `{}` | `{}` |", from.artifact, to.artifact);
        let _ = writeln!(md, "| strategy | {} | {} |", from.strategy, to.strategy);
        let _ = writeln!(md, "| outcome | {} | {} |", from.outcome, to.outcome);
        let by = |r: &ReleaseInfo| r.started_by.clone().unwrap_or_else(|| "—".to_owned());
        let _ = writeln!(md, "| started by | {} | {} |", by(from), by(to));
        let _ = writeln!(md);
        if !self.artifact_changed {
            let _ = writeln!(md, "Same artifact on both sides.\n");
        }
        section(&mut md, "Configuration", &self.config, "No configuration key changed.");
        section(
            &mut md,
            "Secrets (references and versions, never values)",
            &self.secrets,
            "No secret reference changed.",
        );
        let _ = writeln!(md, "## Rollouts since `{}`\n", from.rollout);
        for r in &self.rollouts {
            let _ = writeln!(md, "- `{}`: `{}` ({}), {}", r.rollout, r.revision, label(r), r.outcome);
        }
        if self.rollouts.is_empty() {
            let _ = writeln!(md, "None: both sides are the same rollout.");
        }
        let _ = writeln!(md);
        if !self.decisions.is_empty() {
            let _ = writeln!(md, "## Gate decisions\n");
            for d in &self.decisions {
                let verb = if d.approved { "approved" } else { "rejected" };
                let comment = if d.comment.is_empty() {
                    String::new()
                } else {
                    format!(": {}", d.comment)
                };
                let _ = writeln!(md, "- `{}` gate `{}`: {verb} by {}{comment}", d.rollout, d.gate, d.by);
            }
            let _ = writeln!(md);
        }
        if !self.checks.is_empty() {
            let _ = writeln!(md, "## Analysis of `{}`\n", to.rollout);
            let _ = writeln!(
                md,
                "| check | metric | verdict | measurements | last reason |\n|---|---|---|---|---|"
            );
            for c in &self.checks {
                let dry = if c.dry_run { " (dry run)" } else { "" };
                let _ = writeln!(
                    md,
                    "| {} | {} | {}{dry} | {} | {} |",
                    c.check, c.metric, c.outcome, c.measurements, c.reason
                );
            }
            let _ = writeln!(md);
        }
        md
    }
}

/// A release as a reader knows it: its tag, else its revision.
fn label(r: &ReleaseInfo) -> String {
    r.tag.clone().unwrap_or_else(|| r.revision.clone())
}

fn section(md: &mut String, title: &str, changes: &[Change], none: &str) {
    let _ = writeln!(md, "## {title}\n");
    if changes.is_empty() {
        let _ = writeln!(md, "{none}\n");
        return;
    }
    let _ = writeln!(md, "| name | from | to |\n|---|---|---|");
    let cell = |v: &Option<String>| v.as_ref().map_or_else(|| "(none)".to_owned(), |v| format!("`{v}`"));
    for c in changes {
        let _ = writeln!(md, "| {} | {} | {} |", c.name, cell(&c.from), cell(&c.to));
    }
    let _ = writeln!(md);
}
