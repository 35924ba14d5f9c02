//! Blue/green: run the candidate at full size beside stable, analyze it,
//! switch all traffic at once, analyze again, then retire stable after a
//! delay.

use std::time::Duration;

use relay_core::{AnalysisSpec, Error, PlanContext, Result, Role, Routing, Step, Strategy};
use serde::{Deserialize, Serialize};

use crate::common::{analysis_step, gate_name, need_replicas, need_two_revisions, positive, routing_name};

/// Blue/green with optional pre- and post-promotion analysis and a manual
/// approval before the switch.
///
/// ```
/// # mod relay { pub use relay_core::*; pub mod strategies { pub use relay_strategies::*; } }
/// use std::time::Duration;
/// use relay::strategies::BlueGreenStrategy;
/// let bg = BlueGreenStrategy::new().manual_promotion("promote").scale_down_delay(Duration::from_secs(60));
/// assert!(bg.validate().is_ok());
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlueGreenStrategy {
    /// Analysis of the candidate before it gets traffic.
    pub pre_promotion: Option<AnalysisSpec>,
    /// Analysis after the switch; failure switches back.
    pub post_promotion: Option<AnalysisSpec>,
    /// `Some(gate)`: wait for this gate before switching.
    pub approval_gate: Option<String>,
    /// How long stable keeps running after the switch (fast rollback window).
    pub scale_down_delay: Duration,
}

impl Default for BlueGreenStrategy {
    fn default() -> Self {
        BlueGreenStrategy {
            pre_promotion: None,
            post_promotion: None,
            approval_gate: None,
            scale_down_delay: Duration::from_secs(30),
        }
    }
}

impl BlueGreenStrategy {
    /// Auto-promoting blue/green with a 30 s scale-down delay.
    pub fn new() -> Self {
        Self::default()
    }

    /// Analyze the candidate before the switch.
    pub fn pre_promotion(mut self, a: AnalysisSpec) -> Self {
        self.pre_promotion = Some(a);
        self
    }

    /// Analyze after the switch.
    pub fn post_promotion(mut self, a: AnalysisSpec) -> Self {
        self.post_promotion = Some(a);
        self
    }

    /// Wait for the gate `name` (for example a `ManualApproval`) before the switch.
    pub fn manual_promotion(mut self, gate: impl Into<String>) -> Self {
        self.approval_gate = Some(gate.into());
        self
    }

    /// Keep stable this long after the switch (zero: retire at once).
    pub fn scale_down_delay(mut self, d: Duration) -> Self {
        self.scale_down_delay = d;
        self
    }

    /// Check the fields that need no target.
    pub fn validate(&self) -> Result<()> {
        if let Some(a) = &self.pre_promotion {
            a.validate("strategy.pre_promotion")?;
        }
        if let Some(a) = &self.post_promotion {
            a.validate("strategy.post_promotion")?;
        }
        if let Some(g) = &self.approval_gate {
            gate_name("strategy.approval_gate", g)?;
        }
        if !self.scale_down_delay.is_zero() {
            positive("strategy.scale_down_delay", self.scale_down_delay)?;
        }
        Ok(())
    }
}

impl Strategy for BlueGreenStrategy {
    fn name(&self) -> &str {
        "blue-green"
    }

    fn plan(&self, ctx: &PlanContext) -> Result<Vec<Step>> {
        self.validate()?;
        need_replicas(ctx)?;
        if ctx.stable.is_some() {
            need_two_revisions("blue-green", ctx)?;
            if !matches!(ctx.capabilities.routing, Routing::Switch | Routing::Weighted) {
                return Err(Error::unsupported(format!(
                    "blue-green needs a traffic switch or weighted routing; target {:?} has {}",
                    ctx.target,
                    routing_name(ctx.capabilities.routing)
                )));
            }
        }
        let mut steps = vec![Step::Stage { replicas: ctx.replicas }];
        steps.extend(self.pre_promotion.as_ref().map(|a| analysis_step(a, ctx)));
        if let Some(g) = &self.approval_gate {
            steps.push(Step::Gate { name: g.clone() });
        }
        steps.push(Step::Route { candidate_weight: 100 });
        steps.extend(self.post_promotion.as_ref().map(|a| analysis_step(a, ctx)));
        steps.push(Step::Promote);
        if ctx.stable.is_some() {
            if !self.scale_down_delay.is_zero() {
                steps.push(Step::Pause {
                    duration: Some(self.scale_down_delay),
                });
            }
            steps.push(Step::Retire { role: Role::Stable });
        }
        Ok(steps)
    }
}
