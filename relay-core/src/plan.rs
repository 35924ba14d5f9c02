//! Plans are data: the steps a strategy produced, executed by the engine.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::analysis::AnalysisSpec;
use crate::artifact::ArtifactRef;
use crate::error::Result;
use crate::release::{RevisionId, RevisionSpec};
use crate::target::{Capabilities, RevisionState, Role};

/// One step of a plan. Every step is declarative ("set weight to 25", never
/// "add 25"), so re-running the step under the cursor after a crash is safe.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Create the candidate revision with `replicas` replicas and wait until
    /// they are ready.
    Stage {
        /// Replicas to start with.
        replicas: u32,
    },
    /// Set a revision's replicas and wait until they are ready.
    Scale {
        /// Which revision.
        role: Role,
        /// Replica count.
        replicas: u32,
    },
    /// Send `candidate_weight` percent of traffic to the candidate, the rest
    /// to stable.
    Route {
        /// Percent for the candidate.
        candidate_weight: u8,
    },
    /// Wait; `None` waits until [`crate::RolloutControl::resume`].
    Pause {
        /// How long.
        #[serde(with = "crate::serde_duration::option")]
        duration: Option<Duration>,
    },
    /// Run an analysis; failure rolls back.
    Analyze {
        /// The analysis.
        analysis: AnalysisSpec,
    },
    /// Watch the candidate at full traffic for `duration`, the previous
    /// revision kept beside it ([`crate::bake`]): `analysis`, when there is
    /// one, measured across the duration; a failure rolls back.
    Bake {
        /// How long.
        #[serde(with = "crate::serde_duration")]
        duration: Duration,
        /// What is measured meanwhile (its count spans the duration).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        analysis: Option<AnalysisSpec>,
    },
    /// Wait for the gate named `name` to pass; a rejection rolls back.
    Gate {
        /// The registered gate's name.
        name: String,
    },
    /// Make the candidate the target's stable revision.
    Promote,
    /// Remove a revision from the target.
    Retire {
        /// Which revision.
        role: Role,
    },
    /// Run a hook ([`crate::hook`]); one that fails rolls back unless its
    /// spec says to go on.
    Hook {
        /// The hook and how it runs.
        hook: crate::hook::HookSpec,
    },
    /// Remove a revision an earlier rollout left running (a rollback that
    /// did not finish): planned, after promotion, when the candidate is
    /// already the target's stable revision but the target has not settled
    /// on it.
    RetireLeftover {
        /// The revision left running.
        revision: RevisionId,
    },
}

impl Step {
    /// The step's short name (`stage`, `route`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Stage { .. } => "stage",
            Step::Scale { .. } => "scale",
            Step::Route { .. } => "route",
            Step::Pause { .. } => "pause",
            Step::Analyze { .. } => "analyze",
            Step::Gate { .. } => "gate",
            Step::Bake { .. } => "bake",
            Step::Hook { .. } => "hook",
            Step::Promote => "promote",
            Step::Retire { .. } | Step::RetireLeftover { .. } => "retire",
        }
    }

    /// Whether the step changes the target.
    pub fn is_mutation(&self) -> bool {
        matches!(
            self,
            Step::Stage { .. }
                | Step::Scale { .. }
                | Step::Route { .. }
                | Step::Promote
                | Step::Retire { .. }
                | Step::RetireLeftover { .. }
        )
    }
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_millis() != 0 || s == 0 {
        format!("{}ms", d.as_millis())
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// An analysis as a plan shows it: count x interval, then each check.
fn fmt_analysis(f: &mut fmt::Formatter<'_>, analysis: &AnalysisSpec) -> fmt::Result {
    let checks: Vec<String> = analysis
        .checks
        .iter()
        .map(|c| {
            format!(
                "{} {}{}",
                c.metric,
                c.judge.describe(),
                if c.dry_run { " (dry-run)" } else { "" }
            )
        })
        .collect();
    if checks.is_empty() {
        write!(f, "no check runs")?;
    } else {
        write!(
            f,
            "{} x {}: {}",
            analysis.count,
            fmt_duration(analysis.interval),
            checks.join("; ")
        )?;
    }
    for skipped in &analysis.skipped {
        write!(f, "; skipped: {} ({})", skipped.name, skipped.reason)?;
    }
    Ok(())
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Stage { replicas } => write!(f, "start candidate with {replicas} replica(s)"),
            Step::Scale { role, replicas } => write!(f, "scale {role} to {replicas} replica(s)"),
            Step::Route { candidate_weight } => {
                write!(
                    f,
                    "traffic: candidate {candidate_weight}%, stable {}%",
                    100 - u32::from(*candidate_weight)
                )
            }
            Step::Pause { duration: Some(d) } => write!(f, "wait {}", fmt_duration(*d)),
            Step::Pause { duration: None } => write!(f, "wait for resume"),
            Step::Bake {
                duration,
                analysis: None,
            } => {
                write!(
                    f,
                    "{} at full traffic, the previous revision kept",
                    fmt_duration(*duration)
                )
            }
            Step::Bake {
                duration,
                analysis: Some(analysis),
            } => {
                write!(f, "{} at full traffic: ", fmt_duration(*duration))?;
                fmt_analysis(f, analysis)
            }
            Step::Analyze { analysis } => fmt_analysis(f, analysis),
            Step::Gate { name } => write!(f, "gate {name:?}"),
            Step::Hook { hook } => write!(f, "hook {:?} ({})", hook.name, hook.at),
            Step::Promote => write!(f, "make candidate stable"),
            Step::Retire { role } => write!(f, "retire {role}"),
            Step::RetireLeftover { revision } => write!(f, "retire leftover revision {revision}"),
        }
    }
}

/// What a strategy needs to know to plan.
#[derive(Clone, Debug)]
pub struct PlanContext {
    /// The target's name.
    pub target: String,
    /// What the target can do.
    pub capabilities: Capabilities,
    /// Desired replicas of the release.
    pub replicas: u32,
    /// The current stable revision, if the target runs one other than the
    /// candidate.
    pub stable: Option<RevisionState>,
}

/// Turns a rollout into steps. Pure and synchronous: no I/O.
///
/// # Contract
/// - Refuses at plan time, with [`crate::Error::Unsupported`] or
///   [`crate::Error::InvalidSpec`] naming the field, anything the spec or the
///   target's capabilities make impossible.
/// - The plan ends with the candidate at 100% of traffic, promoted, and the
///   old stable retired.
pub trait Strategy: Send + Sync + fmt::Debug {
    /// The strategy's name (`canary`, `rolling`, ...).
    fn name(&self) -> &str;
    /// The steps for this context.
    fn plan(&self, ctx: &PlanContext) -> Result<Vec<Step>>;
}

/// A rollout's plan: the resolved revisions and the steps. `Display` renders a
/// readable table for dry-runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// The target's name.
    pub target: String,
    /// The strategy that produced the steps.
    pub strategy: String,
    /// The artifact reference as the user wrote it.
    pub requested: ArtifactRef,
    /// The candidate revision, fully resolved (digest, pinned secrets).
    pub candidate: RevisionSpec,
    /// Desired replicas of the candidate.
    pub replicas: u32,
    /// The stable revision the candidate replaces, if any. The candidate
    /// itself in a plan that settles a target on the stable revision it
    /// already runs (see [`Step::RetireLeftover`]): its rollback puts the
    /// same revision back at full strength and retires nothing.
    pub stable: Option<RevisionId>,
    /// Replicas of the stable revision before the rollout (restored on
    /// rollback).
    pub stable_replicas: u32,
    /// The steps.
    pub steps: Vec<Step>,
    /// Hooks to run after a rollback ([`crate::hook::HookPoint::PostRollback`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_rollback: Vec<crate::hook::HookSpec>,
}

impl Plan {
    /// The revision a role refers to in this plan.
    pub fn revision(&self, role: Role) -> Option<&RevisionId> {
        match role {
            Role::Candidate => Some(&self.candidate.id),
            Role::Stable => self.stable.as_ref(),
        }
    }

    /// Whether the candidate is already the target's stable revision,
    /// settled (the plan has nothing to do).
    pub fn is_noop(&self) -> bool {
        self.steps.is_empty()
    }

    /// Whether the plan settles the target on the stable revision it already
    /// runs (the candidate is the stable revision).
    pub fn is_repair(&self) -> bool {
        self.stable.as_ref() == Some(&self.candidate.id)
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plan: {} rollout on target {:?}", self.strategy, self.target)?;
        writeln!(
            f,
            "  candidate: {} = {}@{} ({} replicas)",
            self.candidate.id, self.candidate.artifact.repository, self.candidate.artifact.digest, self.replicas
        )?;
        match &self.stable {
            Some(_) if self.is_repair() => writeln!(
                f,
                "  stable:    the candidate itself: the target runs it, but not settled on it (full size, all traffic, nothing else)"
            )?,
            Some(s) => writeln!(f, "  stable:    {s} ({} replicas)", self.stable_replicas)?,
            None if self.steps.is_empty() => {}
            None => writeln!(f, "  stable:    none (first deployment)")?,
        }
        for (name, r) in &self.candidate.secrets {
            writeln!(f, "  secret:    {name} <- {r}")?;
        }
        if self.steps.is_empty() {
            return writeln!(f, "  nothing to do: the candidate is already stable");
        }
        writeln!(f, "  {:>3}  {:<8} detail", "#", "step")?;
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f, "  {:>3}  {:<8} {}", i + 1, s.kind(), s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_through_json() {
        let steps = vec![
            Step::Stage { replicas: 1 },
            Step::Route { candidate_weight: 10 },
            Step::Pause {
                duration: Some(Duration::from_secs(300)),
            },
            Step::Pause { duration: None },
            Step::Gate { name: "approve".into() },
            Step::Promote,
            Step::Retire { role: Role::Stable },
            Step::RetireLeftover {
                revision: RevisionId::from("app@v0"),
            },
        ];
        let json = serde_json::to_string(&steps).unwrap();
        let back: Vec<Step> = serde_json::from_str(&json).unwrap();
        assert_eq!(format!("{steps:?}"), format!("{back:?}"));
        assert_eq!(steps[2].to_string(), "wait 5m");
        assert_eq!(steps[1].to_string(), "traffic: candidate 10%, stable 90%");
    }
}
