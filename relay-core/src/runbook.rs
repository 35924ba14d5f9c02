//! Runbooks: a plan written out for the operator paged at night — each
//! step, what it changes, how to check it, and how to undo it by hand, with
//! the commands the target gives ([`Target::manual`]) filled in with its
//! real names; then how to roll the whole release back by hand, and who to
//! call ([`Plan::runbook`], [`crate::Relay::runbook`], `relayctl plan
//! --runbook`).

use std::fmt::Write as _;

use crate::plan::{Plan, Step};
use crate::release::RevisionId;
use crate::target::{Capabilities, Role, Routing, Target};

/// One action on a target, as a person would take it by hand: what
/// [`Target::manual`] gives commands for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManualAction {
    /// Look at the target: its revisions, their ready replicas, the
    /// traffic.
    Observe,
    /// Set a revision's replicas.
    Scale {
        /// The revision.
        revision: RevisionId,
        /// Its role in the rollout.
        role: Role,
        /// Replicas.
        replicas: u32,
    },
    /// Send `candidate_weight` percent of requests to the candidate, the
    /// rest to the stable revision.
    Route {
        /// The stable revision, if any.
        stable: Option<RevisionId>,
        /// The candidate.
        candidate: RevisionId,
        /// Percent to the candidate.
        candidate_weight: u8,
        /// The release's replicas (a target whose traffic follows replica
        /// counts splits them).
        replicas: u32,
    },
    /// Make a revision the target's stable one.
    Promote {
        /// The revision.
        revision: RevisionId,
        /// Its role in the rollout (the stable role: put back the revision
        /// that was stable before the candidate's promotion).
        role: Role,
    },
    /// Remove a revision from the target.
    Retire {
        /// The revision.
        revision: RevisionId,
        /// Its role in the rollout.
        role: Role,
    },
}

/// What the target runs and serves after each step, as the runbook follows
/// the plan.
#[derive(Clone, Copy, Debug, Default)]
struct Shape {
    candidate: u32,
    stable: u32,
    weight: u8,
    promoted: bool,
}

impl Plan {
    /// The plan as a Markdown runbook for `target` (the target the plan is
    /// for: its [`Target::manual`] commands fill the runbook in), naming
    /// `contacts` (role, who) as whom to call.
    pub fn runbook(&self, target: &dyn Target, contacts: &[(String, String)]) -> String {
        let mut md = String::new();
        let cand = &self.candidate.id;
        let stable = self.stable.as_ref().filter(|_| !self.is_repair());
        let tag = self
            .candidate
            .artifact
            .tag
            .as_deref()
            .map(|t| format!(" (tag `{t}`)"))
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "# Runbook: {} rollout of `{cand}` on `{}`\n",
            self.strategy, self.target
        );
        let _ = writeln!(
            md,
            "- Candidate: `{cand}`, `{}`{tag}, {} replicas.",
            self.candidate.artifact.pinned_ref(),
            self.replicas
        );
        match stable {
            Some(s) => {
                let _ = writeln!(
                    md,
                    "- Stable: `{s}`, {} replicas, serving all traffic before step 1.",
                    self.stable_replicas
                );
            }
            None => {
                let _ = writeln!(md, "- Stable: none; this is the target's first release.");
            }
        }
        let _ = writeln!(md, "\n## Who to call\n");
        if contacts.is_empty() {
            let _ = writeln!(
                md,
                "The spec names no one (`RolloutSpec::contact`): call the service's owner.\n"
            );
        }
        for (role, who) in contacts {
            let _ = writeln!(md, "- {role}: {who}");
        }
        if !contacts.is_empty() {
            let _ = writeln!(md);
        }
        let _ = writeln!(md, "## Look at the target\n");
        commands(&mut md, target, &ManualAction::Observe);
        let _ = writeln!(
            md,
            "relay records each step as done; `relayctl status <rollout>` shows where the rollout is.\n"
        );
        let _ = writeln!(md, "## Steps\n");
        let caps = target.capabilities();
        let mut shape = Shape {
            stable: if stable.is_some() { self.stable_replicas } else { 0 },
            ..Shape::default()
        };
        for (i, step) in self.steps.iter().enumerate() {
            let _ = writeln!(md, "### {}. {step}\n", i + 1);
            let (changes, undo) = self.effect(step, &caps, &mut shape);
            let _ = writeln!(md, "**Changes:** {changes}\n");
            if step.is_mutation() {
                let _ = writeln!(md, "**Check:** {}\n", self.expect(&shape));
            }
            match undo {
                Undo::Nothing => {
                    let _ = writeln!(md, "**Undo:** nothing to undo; this step changes nothing.\n");
                }
                Undo::Actions(actions) => {
                    let _ = writeln!(md, "**Undo by hand:**\n");
                    for action in actions {
                        commands(&mut md, target, &action);
                    }
                }
                Undo::Text(text) => {
                    let _ = writeln!(md, "**Undo:** {text}\n");
                }
            }
        }
        let _ = writeln!(md, "## Roll the release back by hand\n");
        let _ = writeln!(
            md,
            "What relay's own rollback does, from any step before promotion (after it, undo the promotion \
             first, as its step says): the stable revision's replicas back, every request to it, the candidate \
             removed. Run each block in order; skip one that is already true.\n"
        );
        for action in self.rollback_actions(caps.max_revisions) {
            commands(&mut md, target, &action);
        }
        md
    }

    /// What the step changes, in words, and how to undo it; `shape`
    /// follows it.
    fn effect(&self, step: &Step, caps: &Capabilities, shape: &mut Shape) -> (String, Undo) {
        let cand = &self.candidate.id;
        let stable = self.stable.as_ref().filter(|_| !self.is_repair());
        // One revision at a time, traffic where it runs (a rolling
        // update): the candidate replaces the stable revision as it starts.
        let in_place = caps.max_revisions < 2 && caps.routing == Routing::None;
        match step {
            Step::Stage { replicas } if in_place => {
                shape.candidate = *replicas;
                shape.stable = 0;
                shape.weight = 100;
                (
                    format!("replaces the running revision with the candidate `{cand}`, {replicas} replicas; requests go where it runs."),
                    Undo::Actions(vec![ManualAction::Retire {
                        revision: cand.clone(),
                        role: Role::Candidate,
                    }]),
                )
            }
            Step::Route { .. } if caps.routing == Routing::None => (
                "nothing to set: on this target requests go where the revisions run.".to_owned(),
                Undo::Nothing,
            ),
            Step::Stage { replicas } => {
                shape.candidate = *replicas;
                (
                    format!("starts the candidate `{cand}` with {replicas} replicas; it takes no traffic yet."),
                    Undo::Actions(vec![ManualAction::Retire {
                        revision: cand.clone(),
                        role: Role::Candidate,
                    }]),
                )
            }
            Step::Scale { role, replicas } => {
                let Some(rev) = self.revision(*role) else {
                    return ("nothing: there is no stable revision.".to_owned(), Undo::Nothing);
                };
                let slot = match role {
                    Role::Candidate => &mut shape.candidate,
                    Role::Stable => &mut shape.stable,
                };
                let was = std::mem::replace(slot, *replicas);
                (
                    format!("sets the {role} `{rev}` to {replicas} replicas (from {was})."),
                    Undo::Actions(vec![ManualAction::Scale {
                        revision: rev.clone(),
                        role: *role,
                        replicas: was,
                    }]),
                )
            }
            Step::Route { candidate_weight } => {
                let was = std::mem::replace(&mut shape.weight, *candidate_weight);
                let rest = match stable {
                    Some(s) => format!(", {}% to the stable `{s}`", 100 - u32::from(*candidate_weight)),
                    None => String::new(),
                };
                (
                    format!("sends {candidate_weight}% of requests to the candidate `{cand}`{rest} (from {was}%)."),
                    Undo::Actions(vec![self.route(was)]),
                )
            }
            Step::Pause { .. } | Step::Analyze { .. } | Step::Gate { .. } | Step::Bake { .. } => {
                let what = match step {
                    Step::Analyze { .. } => "measures the candidate; a failing verdict makes relay roll back",
                    Step::Bake { analysis: Some(_), .. } => "measures the candidate at full traffic, the previous revision kept beside it; a failing verdict makes relay roll back to it",
                    Step::Bake { .. } => "waits with the candidate at full traffic, the previous revision kept beside it; an abort rolls back to it",
                    Step::Gate { .. } => "waits for the gate; a rejection makes relay roll back",
                    _ => "waits",
                };
                (format!("nothing on the target: relay {what}."), Undo::Nothing)
            }
            Step::Hook { hook } => (
                format!(
                    "nothing on the target: relay runs hook `{}` ({}); if it still fails after {} retries, {}.",
                    hook.name,
                    hook.at,
                    hook.retries,
                    match hook.on_failure {
                        crate::hook::HookFailure::RollBack if !shape.promoted => "relay rolls back",
                        crate::hook::HookFailure::RollBack => "relay records it and the release stays",
                        crate::hook::HookFailure::Continue => "relay records it and goes on",
                    }
                ),
                Undo::Text(format!(
                    "what hook `{}` did outside the target (a migration, say) is for its owner to undo; relay does not.",
                    hook.name
                )),
            ),
            Step::Promote => {
                shape.promoted = true;
                let undo = match stable {
                    Some(s) => Undo::Actions(vec![ManualAction::Promote {
                        revision: s.clone(),
                        role: Role::Stable,
                    }]),
                    None => Undo::Text(
                        "nothing was stable before: retire the candidate (see the rollback below) to remove the release."
                            .to_owned(),
                    ),
                };
                (
                    format!("makes the candidate `{cand}` the target's stable revision."),
                    undo,
                )
            }
            Step::Retire { role } => {
                let Some(rev) = self.revision(*role) else {
                    return ("nothing: there is no stable revision.".to_owned(), Undo::Nothing);
                };
                match role {
                    Role::Stable => shape.stable = 0,
                    Role::Candidate => shape.candidate = 0,
                }
                (
                    format!("removes the {role} `{rev}` from the target."),
                    Undo::Text(format!(
                        "`{rev}` is gone: to run it again, deploy it again (its digest is in `relayctl history {}`).",
                        self.target
                    )),
                )
            }
            Step::RetireLeftover { revision } => (
                format!("removes `{revision}`, which an earlier rollout left running."),
                Undo::Text("nothing to put back: it served no one.".to_owned()),
            ),
        }
    }

    fn route(&self, candidate_weight: u8) -> ManualAction {
        ManualAction::Route {
            stable: self.stable.clone().filter(|_| !self.is_repair()),
            candidate: self.candidate.id.clone(),
            candidate_weight,
            replicas: self.replicas,
        }
    }

    /// What the target should show after a step.
    fn expect(&self, shape: &Shape) -> String {
        let cand = &self.candidate.id;
        let mut parts = vec![format!("candidate `{cand}`: {} ready replicas", shape.candidate)];
        if let Some(s) = self.stable.as_ref().filter(|_| !self.is_repair() && !shape.promoted) {
            parts.push(format!("stable `{s}`: {} ready replicas", shape.stable));
            parts.push(format!("{}% of requests to the candidate", shape.weight));
        }
        if shape.promoted {
            parts.push(format!("`{cand}` is the stable revision"));
        }
        parts.join("; ") + "."
    }

    /// What relay's rollback does, as manual actions: on a target that
    /// runs one revision at a time (`max_revisions` 1), removing the
    /// candidate puts the stable revision back.
    fn rollback_actions(&self, max_revisions: u32) -> Vec<ManualAction> {
        let cand = &self.candidate.id;
        let mut actions = Vec::new();
        if let Some(s) = self.stable.as_ref().filter(|_| !self.is_repair() && max_revisions > 1) {
            actions.push(ManualAction::Scale {
                revision: s.clone(),
                role: Role::Stable,
                replicas: self.stable_replicas.max(1),
            });
            actions.push(self.route(0));
        }
        actions.push(ManualAction::Retire {
            revision: cand.clone(),
            role: Role::Candidate,
        });
        actions
    }
}

enum Undo {
    Nothing,
    Actions(Vec<ManualAction>),
    Text(String),
}

/// The action in words, then the target's commands for it in a shell block
/// (or a line saying the target gives none).
fn commands(md: &mut String, target: &dyn Target, action: &ManualAction) {
    let what = match action {
        ManualAction::Observe => "Look:".to_owned(),
        ManualAction::Scale {
            revision,
            role,
            replicas,
        } => format!("Set the {role} `{revision}` to {replicas} replicas:"),
        ManualAction::Route {
            candidate_weight,
            candidate,
            ..
        } => format!("Send {candidate_weight}% of requests to the candidate `{candidate}`, the rest to stable:"),
        ManualAction::Promote { revision, .. } => format!("Make `{revision}` the stable revision:"),
        ManualAction::Retire { revision, .. } => format!("Remove `{revision}`:"),
    };
    let _ = writeln!(md, "{what}\n");
    match target.manual(action) {
        Some(lines) if !lines.is_empty() => {
            let _ = writeln!(md, "```sh\n{}\n```\n", lines.join("\n"));
        }
        _ => {
            let _ = writeln!(
                md,
                "(target `{}` gives no command for this: do it with the platform's own console or CLI)\n",
                target.name()
            );
        }
    }
}
