//! Simulated providers: a target that models replicas, readiness, crashes,
//! traffic weights and per-revision error rates and latency; a probe that
//! reads its synthetic traffic; memory secret and artifact stores. All
//! randomness comes from seeds and all time from `tokio::time`, so a whole
//! rollout runs reproducibly in virtual time.

mod artifacts;
#[cfg(feature = "backtest")]
pub mod backtest;
mod probe;
mod secrets;
mod target;

pub use artifacts::MemoryArtifactStore;
pub use probe::SimProbe;
pub use secrets::MemorySecretStore;
pub use target::{RevisionBehavior, SimTarget};

/// Metric names the simulated probe understands.
pub mod metrics {
    /// Fraction of failed requests per sample interval (0.0 to 1.0).
    pub const ERROR_RATE: &str = "error_rate";
    /// Median request latency per sample interval, in milliseconds.
    pub const LATENCY_MS: &str = "latency_ms";
    /// Requests served per sample interval.
    pub const REQUESTS: &str = "requests";
}
