//! AWS providers (feature `aws`), built on the official aws-sdk-rust crates.
//!
//! - [`EcsServiceTarget`]: an ECS service; rolling through the ECS
//!   deployment controller, or canary and blue/green through task sets and
//!   an ALB listener's weighted target groups (the `EXTERNAL` controller).
//! - [`CloudWatchProbe`]: CloudWatch metric statistics per revision (target
//!   group or custom dimensions) and alarm state.
//! - [`SecretsManagerStore`]: secrets from AWS Secrets Manager, pinned to a
//!   `VersionId` or a stage.
//! - [`EcrArtifactStore`]: container images in Amazon ECR, resolved from a
//!   tag to their digest.
//! - [`DynamoDbStateStore`] and [`DynamoDbAuditSink`]: rollout records,
//!   leases with fencing, commands and the audit chain in one DynamoDB
//!   table, for engines in many processes.
//! - [`RequestCounter`](crate::RequestCounter) is an SDK interceptor too, counting requests per operation.
//!
//! Every store is built from an `aws_config::SdkConfig`, so the caller
//! chooses credentials, region and endpoint (for example a local emulator).
//! Every SDK error is classified into relay's [`relay_core::Error`]:
//! throttling, 5xx and timeouts are retryable; not found, access denied and
//! validation errors are terminal. No credential or secret value appears in
//! `Debug` output or errors. Targets and probes take a shared
//! [`RateLimiter`](crate::RateLimiter) that every request waits for.
//!
//! `aws-sdk-cloudwatch` is pinned to 1.99: later versions speak a wire
//! protocol that moto 5.2.5, the emulator relay is tested against, does not
//! route, while CloudWatch itself still serves the query protocol 1.99 uses.

mod calls;
mod cloudwatch;
mod dynamodb;
mod ecr;
mod ecs;
mod error;
mod secrets;
mod task_hook;

pub use cloudwatch::{CloudWatchMetric, CloudWatchProbe, DimensionValue, ALARM_PREFIX};
pub use dynamodb::{DynamoDbAuditSink, DynamoDbStateStore};
pub use ecr::EcrArtifactStore;
pub use ecs::{EcsServiceTarget, EcsServiceTargetBuilder};
pub use secrets::SecretsManagerStore;
pub use task_hook::EcsTaskHook;

/// The SDK crates these providers are built on, at the versions they use, so
/// callers can build an `SdkConfig` or a customized client without adding
/// (and matching) the crates themselves.
pub mod sdk {
    pub use aws_config as config;
    pub use aws_sdk_cloudwatch as cloudwatch;
    pub use aws_sdk_dynamodb as dynamodb;
    pub use aws_sdk_ecr as ecr;
    pub use aws_sdk_ecs as ecs;
    pub use aws_sdk_elasticloadbalancingv2 as elbv2;
    pub use aws_sdk_secretsmanager as secretsmanager;
}
