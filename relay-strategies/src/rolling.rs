//! Rolling: replace stable replicas with candidate replicas in batches, within
//! surge and unavailability limits.

use std::time::Duration;

use relay_core::{AnalysisSpec, Error, PlanContext, Result, Role, Routing, Step, Strategy};
use serde::{Deserialize, Serialize};

pub use crate::common::Amount;
use crate::common::{
    analysis_step, first_deployment, need_replicas, need_two_revisions, positive, promotion, routing_name,
};

/// Replaces replicas in batches: the candidate grows by at most `batch` per
/// round, total replicas stay within `desired + max_surge`, ready replicas
/// never fall below `desired - max_unavailable` (once the candidate's are
/// ready). On targets with traffic control, traffic follows the replica
/// share.
///
/// ```
/// # mod relay { pub use relay_core::*; pub mod strategies { pub use relay_strategies::*; } }
/// use relay::strategies::{Amount, RollingStrategy};
/// let r = RollingStrategy::new().batch(Amount::Count(2)).max_surge(Amount::Count(1));
/// assert!(r.validate().is_ok());
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RollingStrategy {
    /// Candidate replicas added per round.
    pub batch: Amount,
    /// Extra replicas allowed above the desired count (rounded up).
    pub max_surge: Amount,
    /// Replicas allowed to be missing below the desired count (rounded down).
    pub max_unavailable: Amount,
    /// Wait between rounds.
    pub pause_between: Option<Duration>,
    /// Analysis between rounds.
    pub analysis: Option<AnalysisSpec>,
}

impl Default for RollingStrategy {
    fn default() -> Self {
        RollingStrategy {
            batch: Amount::Percent(25),
            max_surge: Amount::Percent(25),
            max_unavailable: Amount::Count(0),
            pause_between: None,
            analysis: None,
        }
    }
}

impl RollingStrategy {
    /// Batches of 25%, surge 25%, nothing unavailable.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the batch size.
    pub fn batch(mut self, a: Amount) -> Self {
        self.batch = a;
        self
    }

    /// Set the surge.
    pub fn max_surge(mut self, a: Amount) -> Self {
        self.max_surge = a;
        self
    }

    /// Set the unavailability allowance.
    pub fn max_unavailable(mut self, a: Amount) -> Self {
        self.max_unavailable = a;
        self
    }

    /// Wait between rounds.
    pub fn pause_between(mut self, d: Duration) -> Self {
        self.pause_between = Some(d);
        self
    }

    /// Analyze between rounds.
    pub fn analysis(mut self, a: AnalysisSpec) -> Self {
        self.analysis = Some(a);
        self
    }

    /// Check the fields that need no target.
    pub fn validate(&self) -> Result<()> {
        self.batch.validate("strategy.batch")?;
        self.max_surge.validate("strategy.max_surge")?;
        self.max_unavailable.validate("strategy.max_unavailable")?;
        if matches!(self.batch, Amount::Count(0) | Amount::Percent(0)) {
            return Err(Error::invalid("strategy.batch", "must be at least 1 replica or 1%"));
        }
        if let Some(d) = self.pause_between {
            positive("strategy.pause_between", d)?;
        }
        if let Some(a) = &self.analysis {
            a.validate("strategy.analysis")?;
        }
        Ok(())
    }

    fn limits(&self, n: u32) -> Result<(u32, u32, u32)> {
        let batch = self.batch.resolve(n, true).max(1);
        let surge = self.max_surge.resolve(n, true);
        let unavailable = self.max_unavailable.resolve(n, false).min(n);
        if surge == 0 && unavailable == 0 {
            return Err(Error::invalid(
                "strategy.max_surge",
                format!("with {n} replicas, max_surge and max_unavailable both resolve to 0, so no replica can be replaced; allow at least one"),
            ));
        }
        Ok((batch, surge, unavailable))
    }
}

impl Strategy for RollingStrategy {
    fn name(&self) -> &str {
        "rolling"
    }

    fn plan(&self, ctx: &PlanContext) -> Result<Vec<Step>> {
        self.validate()?;
        need_replicas(ctx)?;
        let n = ctx.replicas;
        let (batch, surge, unavailable) = self.limits(n)?;
        let Some(stable) = &ctx.stable else {
            let checks = self.analysis.iter().map(|a| analysis_step(a, ctx));
            return Ok(first_deployment(ctx, checks));
        };
        need_two_revisions("rolling", ctx)?;
        // Replacing replicas batch by batch keeps capacity only if traffic
        // follows the replicas; behind a switch (or no traffic control) the
        // shrinking stable would keep it all until the end.
        if !matches!(ctx.capabilities.routing, Routing::Weighted | Routing::ReplicaRatio) {
            return Err(Error::unsupported(format!(
                "rolling needs weighted or replica-ratio routing; target {:?} has {} (use blue_green behind a switch, all_at_once where the platform replaces replicas itself)",
                ctx.target,
                routing_name(ctx.capabilities.routing)
            )));
        }
        let (mut c, mut s) = (0u32, stable.desired);
        let mut weight = 0u8;
        let mut steps = Vec::new();
        let mut staged = false;
        while c < n || s > 0 {
            let room = (n + surge).saturating_sub(c + s);
            let up = batch.min(n - c).min(room);
            if up > 0 {
                c += up;
                steps.push(if staged {
                    Step::Scale {
                        role: Role::Candidate,
                        replicas: c,
                    }
                } else {
                    Step::Stage { replicas: c }
                });
                staged = true;
            }
            let floor = n.saturating_sub(unavailable).saturating_sub(c);
            let down_to = s.min(floor);
            let went_down = down_to < s;
            if up == 0 && !went_down {
                // Unreachable with surge + unavailable >= 1; kept so a bug
                // cannot loop forever.
                return Err(Error::invalid(
                    "strategy",
                    "rolling plan cannot make progress with these limits",
                ));
            }
            // Traffic moves to the ready candidate replicas before stable
            // shrinks, in the proportion the replicas will have after it:
            // routing after the scale-down would leave fewer replicas
            // serving than max_unavailable allows, and none at all in the
            // last batch.
            if c > 0 {
                let w = if down_to == 0 {
                    100
                } else {
                    (u64::from(c) * 100 / u64::from(c + down_to)) as u8
                };
                if w > weight {
                    weight = w;
                    steps.push(Step::Route { candidate_weight: w });
                }
            }
            if went_down {
                s = down_to;
                steps.push(Step::Scale {
                    role: Role::Stable,
                    replicas: s,
                });
            }
            let done = c >= n && s == 0;
            if !done {
                if let Some(d) = self.pause_between {
                    steps.push(Step::Pause { duration: Some(d) });
                }
                if let Some(a) = &self.analysis {
                    steps.push(Step::Analyze { analysis: a.clone() });
                }
            }
        }
        if !staged {
            steps.insert(0, Step::Stage { replicas: c });
        }
        promotion(ctx, &mut steps);
        Ok(steps)
    }
}
