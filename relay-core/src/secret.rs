//! Secret stores and the values they return.

use std::fmt;

use async_trait::async_trait;
use secrecy::SecretString;

use crate::error::Result;
use crate::release::SecretRef;

/// A secret value with the version it was read at.
///
/// `Debug` shows the version and `[REDACTED]`, never the value.
pub struct SecretValue {
    /// The value. Read it with `secrecy::ExposeSecret` only where a provider
    /// needs it.
    pub value: SecretString,
    /// The store's version of this value, used to pin the reference.
    pub version: String,
    /// The secret's full name where the store knows it better than the
    /// reference said it (Secrets Manager's full ARN, with the suffix it
    /// adds to every name): the engine pins the reference to it, so a
    /// target that hands the reference on (ECS `valueFrom`) names exactly
    /// the secret that was read. `None` keeps the reference's path.
    pub path: Option<String>,
}

impl SecretValue {
    /// `value` at `version`, under the reference's own path.
    pub fn new(value: SecretString, version: impl Into<String>) -> Self {
        SecretValue {
            value,
            version: version.into(),
            path: None,
        }
    }

    /// The same value, known under the full name `path` (see
    /// [`SecretValue::path`]).
    #[must_use]
    pub fn at(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretValue")
            .field("value", &"[REDACTED]")
            .field("version", &self.version)
            .field("path", &self.path)
            .finish()
    }
}

/// Fetches secrets by reference.
///
/// # Contract
/// - A reference with a `version` parameter returns exactly that version, or
///   [`crate::Error::NotFound`]; without one, the current version, and
///   [`SecretValue::version`] says which it was so the engine can pin it.
/// - The value never appears in an error, a log line or `Debug` output.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait SecretStore: Send + Sync + fmt::Debug + 'static {
    /// Fetch the secret `reference` points at.
    async fn fetch(&self, reference: &SecretRef) -> Result<SecretValue>;
}
