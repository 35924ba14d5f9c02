//! # relay
//!
//! Move a built artifact into production safely, as a library: resolve and
//! pin the artifact and its secrets, drive a rolling, canary or blue/green
//! rollout against a deployment target, judge health with analysis, stop at
//! gates, roll back automatically, and record every decision in a
//! tamper-evident audit log.
//!
//! One import path: the engine and types from `relay-core` at the top level,
//! strategies under [`strategies`], providers under [`providers`].
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use relay::providers::sim::{MemoryArtifactStore, SimProbe, SimTarget};
//! use relay::strategies::{CanaryStrategy, ThresholdJudge};
//! use relay::{AnalysisSpec, Check, Release, Relay, RolloutSpec};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> relay::Result<()> {
//! let target = Arc::new(SimTarget::new("web").seed(1));
//! let artifacts = Arc::new(MemoryArtifactStore::new());
//! artifacts.push("shop/web", "v1", b"build 1", Default::default());
//! let relay = Relay::builder()
//!     .target(target.clone())
//!     .artifacts(artifacts)
//!     .probe(Arc::new(SimProbe::new(target.clone())))
//!     .build()?;
//!
//! let analysis = AnalysisSpec::new(vec![Check::new("errors", "error_rate", ThresholdJudge::below(0.05))])
//!     .every(Duration::from_secs(60), 2);
//! let canary = CanaryStrategy::new().set_weight(20).analyze(analysis).set_weight(50);
//! let release = Release::new("shop/web:v1".parse()?).replicas(4);
//! let outcome = relay.start(RolloutSpec::new("web", release, canary)).await?.wait().await?;
//! assert!(outcome.is_success());
//! # Ok(()) }
//! ```

pub use relay_core::*;

/// Rollout strategies and analysis judges.
pub mod strategies {
    pub use relay_strategies::*;
}

/// Provider implementations (`sim` by default; cloud families behind features).
pub mod providers {
    pub use relay_providers::*;
}

/// Backtests of an analysis on recorded metrics (feature `backtest`): see
/// [`relay_providers::sim::backtest`].
#[cfg(feature = "backtest")]
pub use relay_providers::sim::backtest::{backtest, sweep, BacktestReport, BacktestRun, BacktestVerdict, SweepReport};

/// The README's example compiles as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
