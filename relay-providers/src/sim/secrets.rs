//! An in-memory, versioned secret store.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use relay_core::{Error, Result, SecretRef, SecretStore, SecretValue};
use secrecy::{ExposeSecret, SecretString};

/// Versioned secrets in memory, keyed by `path` or `path#key` of a
/// [`SecretRef`] (any scheme). Versions are `1`, `2`, ... in write order.
/// `Debug` lists names and version counts, never values.
#[derive(Default)]
pub struct MemorySecretStore {
    secrets: Mutex<BTreeMap<String, Vec<SecretString>>>,
}

impl fmt::Debug for MemorySecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let names: BTreeMap<&String, usize> = g.iter().map(|(k, v)| (k, v.len())).collect();
        f.debug_struct("MemorySecretStore").field("versions", &names).finish()
    }
}

fn key_of(path: &str, key: Option<&str>) -> String {
    match key {
        Some(k) => format!("{path}#{k}"),
        None => path.to_owned(),
    }
}

impl MemorySecretStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Write a new version of `name` (`path` or `path#key`); returns its version.
    pub fn put(&self, name: &str, value: SecretString) -> String {
        let mut g = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let versions = g.entry(name.to_owned()).or_default();
        versions.push(value);
        versions.len().to_string()
    }
}

#[async_trait]
impl SecretStore for MemorySecretStore {
    async fn fetch(&self, reference: &SecretRef) -> Result<SecretValue> {
        let name = key_of(&reference.path, reference.key.as_deref());
        let g = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let versions = g.get(&name).ok_or_else(|| Error::NotFound {
            what: format!("secret {}://{name}", reference.scheme),
        })?;
        let index = match reference.version() {
            None => versions.len(),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=versions.len()).contains(n))
                .ok_or_else(|| Error::NotFound {
                    what: format!(
                        "secret {}://{name} version {v:?} (versions 1 to {})",
                        reference.scheme,
                        versions.len()
                    ),
                })?,
        };
        let value = SecretString::from(versions[index - 1].expose_secret().to_owned());
        Ok(SecretValue::new(value, index.to_string()))
    }
}
