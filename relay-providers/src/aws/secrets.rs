//! Secrets from AWS Secrets Manager.

use std::fmt;

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use relay_core::{Error, Result, SecretRef, SecretStore, SecretValue};
use secrecy::SecretString;

use super::error::classify;

const PROVIDER: &str = "secretsmanager";

/// Reads secrets from AWS Secrets Manager for references like
/// `aws-sm://prod/db#password?stage=AWSCURRENT` (register it under the
/// `aws-sm` scheme).
///
/// - The path is the secret's name or ARN.
/// - `version=<VersionId>` pins an exact version (the engine adds it at plan
///   time); `stage=<VersionStage>` selects a stage (`AWSCURRENT`,
///   `AWSPREVIOUS`, custom). Without either, the stage `AWSCURRENT` is passed
///   explicitly.
/// - `#key` reads one string field of a JSON secret; without it the whole
///   secret string is the value. Binary secrets are refused.
///
/// `Debug` shows the region only: no credential, no value.
#[derive(Clone)]
pub struct SecretsManagerStore {
    client: Client,
}

impl fmt::Debug for SecretsManagerStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsManagerStore")
            .field("region", &self.client.config().region())
            .finish()
    }
}

impl SecretsManagerStore {
    /// A store using `config`'s credentials, region and endpoint.
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        SecretsManagerStore {
            client: Client::new(config),
        }
    }

    /// A store around a client configured by the caller (interceptors,
    /// retry or timeout settings).
    pub fn from_client(client: Client) -> Self {
        SecretsManagerStore { client }
    }
}

#[async_trait]
impl SecretStore for SecretsManagerStore {
    #[tracing::instrument(skip_all, fields(secret = %reference.path))]
    async fn fetch(&self, reference: &SecretRef) -> Result<SecretValue> {
        let mut req = self.client.get_secret_value().secret_id(&reference.path);
        match (reference.version(), reference.params.get("stage")) {
            (Some(v), stage) => {
                req = req.version_id(v);
                if let Some(s) = stage {
                    req = req.version_stage(s);
                }
            }
            (None, Some(s)) => req = req.version_stage(s),
            (None, None) => req = req.version_stage("AWSCURRENT"),
        }
        let what = format!("GetSecretValue {reference}");
        let out = req.send().await.map_err(|e| classify(PROVIDER, &what, e))?;
        let version = out
            .version_id()
            .ok_or_else(|| Error::provider(PROVIDER, false, format!("{what}: the answer has no VersionId")))?
            .to_owned();
        let Some(text) = out.secret_string() else {
            return Err(Error::invalid(
                "release.secrets",
                format!("{reference} is a binary secret; relay reads string secrets only"),
            ));
        };
        let value = match &reference.key {
            None => text.to_owned(),
            Some(key) => {
                // Parse errors and field types are reported without any part
                // of the secret's text.
                let json: serde_json::Value = serde_json::from_str(text).map_err(|_| {
                    Error::invalid(
                        "release.secrets",
                        format!("{reference}: the secret is not a JSON object, so #{key} cannot be read"),
                    )
                })?;
                match json.get(key) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(_) => {
                        return Err(Error::invalid(
                            "release.secrets",
                            format!("{reference}: field {key:?} is not a string"),
                        ))
                    }
                    None => {
                        return Err(Error::NotFound {
                            what: format!("field {key:?} in secret {}", reference.path),
                        })
                    }
                }
            }
        };
        let read = SecretValue::new(SecretString::from(value), version);
        // The full ARN (the name with the suffix Secrets Manager adds): what
        // the reference is pinned to, so ECS reads this very secret.
        Ok(match out.arn() {
            Some(arn) if arn != reference.path => read.at(arn),
            _ => read,
        })
    }
}
