//! relay-providers: implementations of relay's seams, one module per provider
//! family behind a cargo feature.
//!
//! - `sim` (default): a simulated target and probe, memory stores, and the
//!   fault and latency wrappers that work around any provider.
//!
//! Always: [`CommandHook`], a hook that runs a local program.
//!
//! - `aws`: the ECS service target (rolling, and task sets weighted at an
//!   ALB listener), the CloudWatch probe, the Secrets Manager secret store
//!   and the ECR artifact store.
//!
//! - `kubernetes`: the Deployment target (rolling, canary and blue/green
//!   modes), the pod readiness probe, the Secret store and the state store
//!   (ConfigMaps and Leases).
//!
//! - `vault`: the KV v2 secret store for Vault and OpenBao (token or
//!   AppRole).
//!
//! - `http`: an HTTP health-endpoint probe and a Prometheus probe.
//!
//! - `postgres`: the state store (records, leases with fencing, commands)
//!   and the audit sink on PostgreSQL, for engines in many processes.

#![cfg_attr(test, allow(clippy::unwrap_used))]

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "vault")]
pub mod vault;

mod command;
mod counts;
pub mod wrappers;

pub use command::CommandHook;
pub use counts::RequestCounter;
pub use wrappers::{Delay, FaultInjector, FaultKind, Faulty, Interceptor, Latency, RateLimited, RateLimiter, Wrapped};
