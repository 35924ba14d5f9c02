//! relay-strategies: rollout strategies that turn a spec into a
//! [`relay_core::Plan`]'s steps, and the judges analyses use.
//!
//! Strategies are pure: no I/O, no clock. They refuse at plan time what the
//! spec or the target's [`relay_core::Capabilities`] make impossible.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod all_at_once;
mod bluegreen;
mod canary;
mod common;
mod rolling;

pub mod analysis;
#[cfg(feature = "spec")]
pub mod spec;

pub use all_at_once::AllAtOnceStrategy;
pub use analysis::{Comparison, Direction, MannWhitneyJudge, ProportionJudge, Statistic, ThresholdJudge};
pub use bluegreen::BlueGreenStrategy;
pub use canary::{CanaryStep, CanaryStrategy};
pub use rolling::{Amount, RollingStrategy};
