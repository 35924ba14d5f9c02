//! All at once: start the candidate at full size and switch.

use relay_core::{PlanContext, Result, Step, Strategy};
use serde::{Deserialize, Serialize};

use crate::common::{need_replicas, promotion};

/// Starts the candidate at full size, sends it all traffic, promotes it and
/// retires stable. Works on any target; there is no gradual exposure.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct AllAtOnceStrategy;

impl Strategy for AllAtOnceStrategy {
    fn name(&self) -> &str {
        "all-at-once"
    }

    fn plan(&self, ctx: &PlanContext) -> Result<Vec<Step>> {
        need_replicas(ctx)?;
        let mut steps = vec![Step::Stage { replicas: ctx.replicas }];
        promotion(ctx, &mut steps);
        Ok(steps)
    }
}
