//! Plan fragments and checks every strategy shares.

use std::time::Duration;

use relay_core::{AnalysisSpec, Error, PlanContext, Result, Role, Routing, Step};

/// The end of every plan: full traffic to the candidate, promote it, retire
/// the old stable.
pub(crate) fn promotion(ctx: &PlanContext, steps: &mut Vec<Step>) {
    if !matches!(
        steps.iter().rev().find(|s| matches!(s, Step::Route { .. })),
        Some(Step::Route { candidate_weight: 100 })
    ) {
        steps.push(Step::Route { candidate_weight: 100 });
    }
    steps.push(Step::Promote);
    if ctx.stable.is_some() {
        steps.push(Step::Retire { role: Role::Stable });
    }
}

/// The step for `analysis`. Without a stable revision there is no baseline,
/// so checks that compare with one (or measure it) are skipped, and shown
/// in the plan as skipped with the reason: a first deployment is judged by
/// its absolute checks.
pub(crate) fn analysis_step(analysis: &AnalysisSpec, ctx: &PlanContext) -> Step {
    Step::Analyze {
        analysis: match ctx.stable {
            Some(_) => analysis.clone(),
            None => analysis.without_a_stable_revision(),
        },
    }
}

/// A target with nothing stable gets the candidate at full size with all
/// traffic (there is nothing to split it with), then `checks` — the
/// strategy's analyses, pauses and gates, in order, each analysis with the
/// checks that need no stable revision — then promotion. A first release
/// that fails an absolute check is rolled back like any other.
pub(crate) fn first_deployment(ctx: &PlanContext, checks: impl IntoIterator<Item = Step>) -> Vec<Step> {
    let mut steps = vec![
        Step::Stage { replicas: ctx.replicas },
        Step::Route { candidate_weight: 100 },
    ];
    steps.extend(checks);
    promotion(ctx, &mut steps);
    steps
}

/// Every strategy refuses a release without replicas.
pub(crate) fn need_replicas(ctx: &PlanContext) -> Result<()> {
    if ctx.replicas == 0 {
        return Err(Error::invalid("release.replicas", "must be at least 1"));
    }
    Ok(())
}

pub(crate) fn need_two_revisions(strategy: &str, ctx: &PlanContext) -> Result<()> {
    if ctx.capabilities.max_revisions < 2 {
        return Err(Error::unsupported(format!(
            "{strategy} needs two revisions side by side; target {:?} runs at most {}",
            ctx.target, ctx.capabilities.max_revisions
        )));
    }
    Ok(())
}

pub(crate) fn routing_name(r: Routing) -> &'static str {
    match r {
        Routing::None => "no traffic control",
        Routing::Switch => "an all-or-nothing switch",
        Routing::ReplicaRatio => "replica-ratio routing",
        Routing::Weighted => "weighted routing",
    }
}

pub(crate) fn positive(path: &str, d: Duration) -> Result<()> {
    if d.is_zero() {
        return Err(Error::invalid(path, "duration must be greater than zero"));
    }
    Ok(())
}

pub(crate) fn gate_name(path: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::invalid(path, "gate name must not be empty"));
    }
    Ok(())
}

/// A whole number of replicas or a percentage of the desired count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Amount {
    /// This many replicas.
    Count(u32),
    /// This percent of the desired replicas.
    Percent(u8),
}

impl Amount {
    /// Resolve against `of` replicas, rounding up or down.
    pub fn resolve(self, of: u32, round_up: bool) -> u32 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => {
                let x = u64::from(of) * u64::from(p);
                let r = if round_up { x.div_ceil(100) } else { x / 100 };
                r as u32
            }
        }
    }

    pub(crate) fn validate(self, path: &str) -> Result<()> {
        match self {
            Amount::Percent(p) if p > 100 => Err(Error::invalid(path, format!("{p}% is above 100%"))),
            _ => Ok(()),
        }
    }
}
