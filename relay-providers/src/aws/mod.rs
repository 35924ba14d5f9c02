//! AWS providers (feature `aws`), built on the official aws-sdk-rust crates.
//!
//! - [`SecretsManagerStore`]: secrets from AWS Secrets Manager, pinned to a
//!   `VersionId` or a stage.
//! - [`EcrArtifactStore`]: container images in Amazon ECR, resolved from a
//!   tag to their digest.
//!
//! Every store is built from an `aws_config::SdkConfig`, so the caller
//! chooses credentials, region and endpoint (for example a local emulator).
//! Every SDK error is classified into relay's [`relay_core::Error`]:
//! throttling, 5xx and timeouts are retryable; not found, access denied and
//! validation errors are terminal. No credential or secret value appears in
//! `Debug` output or errors.
//!
//! The ECS target, the CloudWatch probe and ELBv2 routing are not built yet.

mod ecr;
mod error;
mod secrets;

pub use ecr::EcrArtifactStore;
pub use secrets::SecretsManagerStore;

/// The SDK crates these providers are built on, at the versions they use, so
/// callers can build an `SdkConfig` or a customized client without adding
/// (and matching) the crates themselves.
pub mod sdk {
    pub use aws_config as config;
    pub use aws_sdk_ecr as ecr;
    pub use aws_sdk_secretsmanager as secretsmanager;
}
