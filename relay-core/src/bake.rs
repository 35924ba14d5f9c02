//! Bake: watch a release at full traffic for a while, with the previous
//! revision kept running beside it, before it is made stable for good.
//!
//! A regression that shows ten minutes after a release took all traffic
//! should not need a new rollout to undo. With a [`Bake`] on the rollout
//! ([`crate::RolloutSpec::bake`]), [`crate::Relay::plan`] puts, right
//! before the candidate is made stable ([`Step::Promote`]):
//!
//! 1. when the bake keeps fewer replicas of the previous revision than it
//!    runs, a [`Step::Scale`] of it to [`Bake::keep_replicas`] (it takes no
//!    traffic: the candidate has all of it);
//! 2. a [`Step::Bake`]: the bake's analysis measured over its whole
//!    duration (or a plain wait, without one).
//!
//! A failing verdict — or an operator's abort — during the bake rolls back
//! as before promotion: the previous revision is brought back to its size
//! (at once, when the bake kept all of it), takes all traffic again, and the
//! candidate is retired. Once the bake passes, the candidate is made stable,
//! the previous revision retired, and a migration's contract half runs
//! ([`crate::hook::Migration`]): never before the bake passed.
//!
//! The candidate is made stable *after* the bake, not before it, because
//! on some targets making a revision stable replaces the previous one (a
//! Kubernetes Deployment takes the candidate's template): the previous
//! revision could not stay warm beside it. What a user calls promotion —
//! the candidate has all traffic — comes first, as in the rest of relay
//! (a blue/green's post-promotion analysis also runs before that step).
//!
//! The previous revision can only stay warm without traffic on a target
//! that routes ([`Routing::Weighted`] or [`Routing::Switch`]) and runs two
//! revisions: elsewhere its replicas would take requests (replica-ratio
//! routing) or it is replaced in place, so the bake keeps none and a
//! rollback starts it again.

use std::time::Duration;

use crate::analysis::{AnalysisSpec, CheckScope};
use crate::error::{Error, Result};
use crate::plan::{PlanContext, Step};
use crate::target::{Role, Routing};

/// A bake after the candidate takes all traffic (see the module).
#[derive(Clone, Debug)]
pub struct Bake {
    /// How long the release is watched.
    pub duration: Duration,
    /// What is measured meanwhile, every `analysis.interval` across the
    /// whole duration (its `count` is set from the duration); `None` waits
    /// the duration out, for a human or an alarm to abort.
    pub analysis: Option<AnalysisSpec>,
    /// Replicas of the previous revision kept running, with no traffic,
    /// until the bake passed; `None` keeps all it runs (the fastest
    /// rollback: traffic moves back at once). Fewer cost less, and a
    /// rollback first scales it back up, then moves traffic.
    pub keep_replicas: Option<u32>,
}

impl Bake {
    /// Bake for `duration`, keeping the previous revision at full size.
    pub fn new(duration: Duration) -> Self {
        Bake {
            duration,
            analysis: None,
            keep_replicas: None,
        }
    }

    /// Measure `analysis` across the bake.
    pub fn analysis(mut self, analysis: AnalysisSpec) -> Self {
        self.analysis = Some(analysis);
        self
    }

    /// Keep `n` replicas of the previous revision during the bake.
    pub fn keep_replicas(mut self, n: u32) -> Self {
        self.keep_replicas = Some(n);
        self
    }

    /// Put the bake's steps into `steps` (a strategy's plan with its hooks
    /// and gates placed) right before the candidate is made stable.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `spec.bake.…`: a zero duration, an
    /// analysis whose interval is longer than the bake, a check that
    /// measures or compares with the previous revision (it takes no traffic
    /// during the bake), more replicas kept than the previous revision runs,
    /// or replicas kept on a target where they would take traffic.
    pub(crate) fn place(&self, ctx: &PlanContext, steps: &mut Vec<Step>) -> Result<()> {
        if self.duration.is_zero() {
            return Err(Error::invalid("spec.bake.duration", "must be above zero"));
        }
        let analysis = match &self.analysis {
            None => None,
            Some(a) => Some(self.measured(a)?),
        };
        let Some(at) = steps.iter().position(|s| matches!(s, Step::Promote)) else {
            return Ok(());
        };
        let caps = &ctx.capabilities;
        let warm = matches!(caps.routing, Routing::Weighted | Routing::Switch) && caps.max_revisions >= 2;
        let runs = ctx.stable.as_ref().map_or(0, |s| s.desired);
        let keep = match self.keep_replicas {
            None if warm => runs,
            None => 0,
            Some(0) => 0,
            Some(_) if !warm => {
                return Err(Error::invalid(
                    "spec.bake.keep_replicas",
                    format!(
                        "target {:?} routes by {:?} with up to {} revision(s): replicas of the previous revision kept there would take requests or be replaced; remove keep_replicas (or set it to 0), and a rollback during the bake starts the previous revision again",
                        ctx.target, caps.routing, caps.max_revisions
                    ),
                ))
            }
            Some(n) if n > runs => {
                return Err(Error::invalid(
                    "spec.bake.keep_replicas",
                    format!("{n} is more than the previous revision runs ({runs}); keep at most {runs}"),
                ))
            }
            Some(n) => n,
        };
        let mut bake = Vec::with_capacity(2);
        if ctx.stable.is_some() && keep < runs && warm {
            bake.push(Step::Scale {
                role: Role::Stable,
                replicas: keep,
            });
        }
        bake.push(Step::Bake {
            duration: self.duration,
            analysis,
        });
        steps.splice(at..at, bake);
        Ok(())
    }

    /// `a` measured across the bake: its count set from the duration, and
    /// only checks of the candidate or the whole target.
    fn measured(&self, a: &AnalysisSpec) -> Result<AnalysisSpec> {
        if a.interval.is_zero() || a.interval > self.duration {
            return Err(Error::invalid(
                "spec.bake.analysis.interval",
                format!(
                    "{:?} must be above zero and at most the bake's duration ({:?})",
                    a.interval, self.duration
                ),
            ));
        }
        for (i, check) in a.checks.iter().enumerate() {
            let previous = check.scope == CheckScope::Role(Role::Stable) || check.judge.needs_baseline();
            if previous {
                return Err(Error::invalid(
                    format!("spec.bake.analysis.checks[{i}]"),
                    format!(
                        "check {:?} measures or compares with the previous revision, which takes no traffic during the bake; judge the candidate on its own (a threshold)",
                        check.name
                    ),
                ));
            }
        }
        let mut a = a.clone();
        a.count = u32::try_from(self.duration.as_millis() / a.interval.as_millis()).unwrap_or(u32::MAX);
        a.validate("spec.bake.analysis")?;
        Ok(a)
    }
}
