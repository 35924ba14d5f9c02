//! Canary: shift traffic to the candidate in steps, with pauses, analyses and
//! gates between them.

use std::time::Duration;

use relay_core::{AnalysisSpec, Error, PlanContext, Result, Role, Routing, Step, Strategy};
use serde::{Deserialize, Serialize};

use crate::common::{
    analysis_step, first_deployment, gate_name, need_replicas, need_two_revisions, positive, promotion, routing_name,
};

/// One step of a canary as the user writes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryStep {
    /// Send this percent of traffic to the candidate (1-100, increasing).
    SetWeight(u8),
    /// Wait this long; `None` waits for a resume.
    Pause(Option<Duration>),
    /// Judge health; failure rolls back.
    Analyze(AnalysisSpec),
    /// Wait for a registered gate.
    Gate(String),
}

/// Shifts traffic to the candidate in increasing weights.
///
/// On a first deployment (no stable revision) there is nothing to split
/// traffic with: the candidate starts at full size with all traffic, and
/// the analyses (each with the checks that need no stable revision; the
/// others shown as skipped), the gates and the pauses until resumed follow
/// in order before promotion; timed pauses are left out.
///
/// The candidate is scaled to its share of the desired replicas (at least
/// one) before each weight; on targets with exact weights stable keeps full
/// capacity until promotion, on replica-ratio targets stable shrinks by what
/// the candidate adds so the ratio approximates the weight. There the plan's
/// route steps state the weight the replicas actually make (with 2 replicas,
/// a 25% step is 1 beside 1: 50%), and a step that moves no replica routes
/// nothing new.
///
/// ```
/// # mod relay { pub use relay_core::*; pub mod strategies { pub use relay_strategies::*; } }
/// use std::time::Duration;
/// use relay::strategies::CanaryStrategy;
/// let canary = CanaryStrategy::new()
///     .set_weight(10)
///     .pause(Duration::from_secs(300))
///     .set_weight(50)
///     .pause(Duration::from_secs(300));
/// assert_eq!(canary.steps().len(), 4);
/// ```
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CanaryStrategy {
    steps: Vec<CanaryStep>,
}

impl CanaryStrategy {
    /// An empty canary; add steps with the builder methods.
    pub fn new() -> Self {
        Self::default()
    }

    /// "10% then 100% after `wait`".
    pub fn ten_percent_then_full(wait: Duration) -> Self {
        Self::new().set_weight(10).pause(wait)
    }

    /// "Linear `step`% every `every`": step, 2×step, ... below 100, each
    /// followed by a pause.
    pub fn linear(step: u8, every: Duration) -> Self {
        let mut c = Self::new();
        let mut w = u32::from(step.max(1));
        while w < 100 {
            c = c.set_weight(w as u8).pause(every);
            w += u32::from(step.max(1));
        }
        c
    }

    /// Add a weight step.
    pub fn set_weight(mut self, percent: u8) -> Self {
        self.steps.push(CanaryStep::SetWeight(percent));
        self
    }

    /// Add a timed pause.
    pub fn pause(mut self, d: Duration) -> Self {
        self.steps.push(CanaryStep::Pause(Some(d)));
        self
    }

    /// Add a pause that lasts until the rollout is resumed.
    pub fn pause_until_resumed(mut self) -> Self {
        self.steps.push(CanaryStep::Pause(None));
        self
    }

    /// Add an analysis.
    pub fn analyze(mut self, a: AnalysisSpec) -> Self {
        self.steps.push(CanaryStep::Analyze(a));
        self
    }

    /// Add a gate.
    pub fn gate(mut self, name: impl Into<String>) -> Self {
        self.steps.push(CanaryStep::Gate(name.into()));
        self
    }

    /// Insert `analysis` right after every weight step.
    pub fn analyze_each_step(self, analysis: AnalysisSpec) -> Self {
        let mut steps = Vec::with_capacity(self.steps.len() * 2);
        for s in self.steps {
            let is_weight = matches!(s, CanaryStep::SetWeight(_));
            steps.push(s);
            if is_weight {
                steps.push(CanaryStep::Analyze(analysis.clone()));
            }
        }
        CanaryStrategy { steps }
    }

    /// The steps as written.
    pub fn steps(&self) -> &[CanaryStep] {
        &self.steps
    }

    /// Check the steps without a target. Errors name `strategy.steps[i]`.
    pub fn validate(&self) -> Result<()> {
        let mut last = 0u8;
        let mut seen_weight = false;
        for (i, s) in self.steps.iter().enumerate() {
            // A field's name is made only where it is needed: a plan has
            // many weight steps.
            let field = |f: &str| format!("strategy.steps[{i}].{f}");
            match s {
                CanaryStep::SetWeight(w) => {
                    if *w == 0 || *w > 100 {
                        return Err(Error::invalid(
                            field("weight"),
                            format!("{w} must be between 1 and 100"),
                        ));
                    }
                    if *w <= last {
                        return Err(Error::invalid(
                            field("weight"),
                            format!("{w} must be greater than the previous weight {last}"),
                        ));
                    }
                    last = *w;
                    seen_weight = true;
                }
                CanaryStep::Pause(Some(d)) => positive(&field("pause"), *d)?,
                CanaryStep::Pause(None) => {}
                CanaryStep::Analyze(a) => {
                    if !seen_weight {
                        return Err(Error::invalid(field("analysis"), "an analysis before the first set_weight has no candidate to measure; move it after a weight"));
                    }
                    a.validate(&field("analysis"))?;
                }
                CanaryStep::Gate(g) => gate_name(&field("gate"), g)?,
            }
        }
        if !seen_weight {
            return Err(Error::invalid(
                "strategy.steps",
                "a canary needs at least one set_weight step",
            ));
        }
        Ok(())
    }
}

/// Candidate replicas for `weight` percent of `n`: rounded up, at least one.
fn share(n: u32, weight: u8) -> u32 {
    (u64::from(n) * u64::from(weight)).div_ceil(100).max(1) as u32
}

impl Strategy for CanaryStrategy {
    fn name(&self) -> &str {
        "canary"
    }

    fn plan(&self, ctx: &PlanContext) -> Result<Vec<Step>> {
        self.validate()?;
        need_replicas(ctx)?;
        let Some(stable) = &ctx.stable else {
            // Nothing to step through: the weights and the timed pauses
            // between them go; what judges or decides stays.
            let checks = self.steps.iter().filter_map(|s| match s {
                CanaryStep::SetWeight(_) | CanaryStep::Pause(Some(_)) => None,
                CanaryStep::Pause(None) => Some(Step::Pause { duration: None }),
                CanaryStep::Analyze(a) => Some(analysis_step(a, ctx)),
                CanaryStep::Gate(g) => Some(Step::Gate { name: g.clone() }),
            });
            return Ok(first_deployment(ctx, checks));
        };
        need_two_revisions("canary", ctx)?;
        let ratio = match ctx.capabilities.routing {
            Routing::Weighted => false,
            Routing::ReplicaRatio => true,
            other => {
                return Err(Error::unsupported(format!(
                    "canary needs weighted or replica-ratio routing; target {:?} has {}",
                    ctx.target,
                    routing_name(other)
                )))
            }
        };
        let n = ctx.replicas;
        let mut steps = Vec::new();
        let mut candidate = None::<u32>;
        let mut stable_now = stable.desired;
        let mut routed = 0u8;
        for s in &self.steps {
            match s {
                CanaryStep::SetWeight(w) => {
                    let want = share(n, *w).min(n);
                    match candidate {
                        None => steps.push(Step::Stage { replicas: want }),
                        Some(c) if want > c => steps.push(Step::Scale {
                            role: Role::Candidate,
                            replicas: want,
                        }),
                        Some(_) => {}
                    }
                    candidate = Some(want.max(candidate.unwrap_or(0)));
                    if ratio {
                        let s = stable.desired.min(n.saturating_sub(want));
                        if s < stable_now {
                            steps.push(Step::Scale {
                                role: Role::Stable,
                                replicas: s,
                            });
                            stable_now = s;
                        }
                    }
                    // On a replica-ratio target the split is what the replicas
                    // make it (1 candidate beside 1 stable is 50%, whatever
                    // was asked): the plan says so, and a step that moves no
                    // replica routes nothing new.
                    let weight = if ratio {
                        let c = candidate.unwrap_or(0);
                        (u64::from(c) * 100 / u64::from(c + stable_now).max(1)) as u8
                    } else {
                        *w
                    };
                    if weight > routed {
                        steps.push(Step::Route {
                            candidate_weight: weight,
                        });
                        routed = weight;
                    }
                }
                CanaryStep::Pause(d) => steps.push(Step::Pause { duration: *d }),
                CanaryStep::Analyze(a) => steps.push(Step::Analyze { analysis: a.clone() }),
                CanaryStep::Gate(g) => steps.push(Step::Gate { name: g.clone() }),
            }
        }
        if candidate.unwrap_or(0) < n {
            steps.push(Step::Scale {
                role: Role::Candidate,
                replicas: n,
            });
        }
        if ratio && stable_now > 0 {
            // On a replica-ratio target the candidate only has all traffic
            // once stable runs nothing.
            steps.push(Step::Scale {
                role: Role::Stable,
                replicas: 0,
            });
        }
        promotion(ctx, &mut steps);
        Ok(steps)
    }
}
