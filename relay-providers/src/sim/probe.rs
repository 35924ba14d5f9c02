//! The simulated health probe.

use std::sync::Arc;

use async_trait::async_trait;
use relay_core::{HealthProbe, ProbeQuery, Result, Sample};

use super::SimTarget;

/// Reads the synthetic traffic of a [`SimTarget`]; see
/// [`super::metrics`] for the metric names.
#[derive(Debug, Clone)]
pub struct SimProbe {
    target: Arc<SimTarget>,
}

impl SimProbe {
    /// A probe of `target`.
    pub fn new(target: Arc<SimTarget>) -> Self {
        SimProbe { target }
    }
}

#[async_trait]
impl HealthProbe for SimProbe {
    async fn sample(&self, query: &ProbeQuery) -> Result<Sample> {
        self.target.measure(&query.metric, &query.scope, query.window)
    }
}
