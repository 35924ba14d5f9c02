//! Secrets from Kubernetes `Secret` objects.

use std::fmt;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use relay_core::{Error, Result, SecretRef, SecretStore, SecretValue};
use secrecy::SecretString;

use super::error::classify;

/// Reads one key of a Kubernetes `Secret` for references like
/// `k8s://shop/db#password` (namespace `shop`, Secret `db`; register the
/// store under the `k8s` scheme) or `k8s://db#password` (the store's
/// namespace).
///
/// - The key is required: a Secret holds several.
/// - The version is the Secret's `resourceVersion`. The engine pins it at
///   plan time; Kubernetes keeps no older versions, so a reference pinned to
///   a version the Secret has moved past is [`Error::NotFound`] saying so
///   (re-plan to take the new value), never the newer value.
/// - Values must be UTF-8; binary values are refused.
///
/// `Debug` shows the namespace only: no token, no value.
#[derive(Clone)]
pub struct KubeSecretStore {
    client: Client,
    namespace: String,
}

impl fmt::Debug for KubeSecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeSecretStore")
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl KubeSecretStore {
    /// A store reading Secrets with `client`, in `namespace` unless a
    /// reference names its own.
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        KubeSecretStore {
            client,
            namespace: namespace.into(),
        }
    }
}

#[async_trait]
impl SecretStore for KubeSecretStore {
    #[tracing::instrument(skip_all, fields(secret = %reference.path))]
    async fn fetch(&self, reference: &SecretRef) -> Result<SecretValue> {
        let (namespace, name) = match reference.path.split_once('/') {
            Some((ns, name)) => (ns, name),
            None => (self.namespace.as_str(), reference.path.as_str()),
        };
        if name.is_empty() || namespace.is_empty() || name.contains('/') {
            return Err(Error::invalid(
                "release.secrets",
                format!("{reference}: the path must be <namespace>/<name> or <name>"),
            ));
        }
        let Some(key) = reference.key.as_deref() else {
            return Err(Error::invalid(
                "release.secrets",
                format!("{reference}: name the key of the Secret to read with #<key>"),
            ));
        };
        let what = format!("get Secret {namespace}/{name}");
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = api
            .get_opt(name)
            .await
            .map_err(|e| classify(&what, e))?
            .ok_or_else(|| Error::NotFound {
                what: format!("Secret {namespace}/{name}"),
            })?;
        let version = secret.metadata.resource_version.clone().unwrap_or_default();
        if let Some(pinned) = reference.version() {
            if pinned != version {
                return Err(Error::NotFound {
                    what: format!(
                        "Secret {namespace}/{name} at resourceVersion {pinned}: it has changed since (now {version}) \
                         and Kubernetes keeps no older versions; plan again to use the new value"
                    ),
                });
            }
        }
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|s| s.clone().into_bytes())
            })
            .ok_or_else(|| Error::NotFound {
                what: format!("key {key:?} in Secret {namespace}/{name}"),
            })?;
        let value = String::from_utf8(bytes).map_err(|_| {
            Error::invalid(
                "release.secrets",
                format!("{reference}: the value is binary; relay reads UTF-8 values only"),
            )
        })?;
        Ok(SecretValue::new(SecretString::from(value), version))
    }
}
