//! Kubernetes providers (feature `kubernetes`), built on `kube` and
//! `k8s-openapi` (API types of Kubernetes 1.33; the APIs relay uses —
//! core/v1, apps/v1, coordination.k8s.io/v1 — are stable, and the tests run
//! against a real 1.20 API server).
//!
//! - [`KubeSecretStore`]: one key of a `Secret`, pinned to its
//!   `resourceVersion`.
//! - [`KubeStateStore`]: rollout records in ConfigMaps and target leases in
//!   `coordination.k8s.io/v1` Leases, both with optimistic concurrency on
//!   `resourceVersion`, so replicas of a service coordinate in the cluster.
//! - [`DeploymentTarget`]: a `Deployment` in rolling, canary (a second
//!   `<name>-canary` Deployment, traffic by replica ratio), routed (the
//!   same, with exact weights from a [`TrafficRouter`] such as the Gateway
//!   API's [`HttpRouteRouter`]) or blue/green (Service selector switch)
//!   mode.
//! - [`PodReadinessProbe`]: ready and crash-looping pods per revision.
//! - [`RequestCounter`](crate::RequestCounter) is a client layer too, counting API requests by operation.
//!
//! Every API error is classified into relay's [`relay_core::Error`]: 404 not
//! found, 401/403 permission denied, 409 conflict, 400/422 invalid
//! (terminal); 429, 5xx, timeouts and connection failures retryable.

mod calls;
mod deployment;
mod error;
mod job_hook;
mod probe;
mod router;
mod secrets;
mod state;

pub use calls::Counted;
pub use deployment::{DeploymentTarget, DeploymentTargetBuilder};
pub use job_hook::{JobHook, HOOK_LABEL};
pub use probe::PodReadinessProbe;
pub use router::{HttpRouteRouter, TrafficRouter};
pub use secrets::KubeSecretStore;
pub use state::KubeStateStore;

/// The client crates these providers are built on, at the versions they use.
pub mod sdk {
    pub use k8s_openapi;
    pub use kube;
}
