//! Releases (what a user asks to deploy), secret references and revisions
//! (what a target runs).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::artifact::{Artifact, ArtifactRef};
use crate::error::{Error, Result};

/// A reference to a secret held by a [`crate::SecretStore`]:
/// `<scheme>://<path>[#<key>][?version=<v>&...]`, for example
/// `vault://secret/app/db#password?version=3`, `aws-sm://prod/db?stage=AWSCURRENT`
/// or `mem://db#password`.
///
/// The scheme selects the store registered under that name. A reference holds
/// no secret value and is safe to log.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretRef {
    /// Store scheme (`vault`, `aws-sm`, `mem`, ...).
    pub scheme: String,
    /// Path of the secret inside the store.
    pub path: String,
    /// Key inside the secret, if the secret holds several.
    pub key: Option<String>,
    /// Extra parameters (`version`, `stage`, ...), sorted.
    pub params: BTreeMap<String, String>,
}

impl SecretRef {
    /// Parse a reference, naming `path` in errors.
    pub fn parse_at(field: &str, s: &str) -> Result<Self> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| {
            Error::invalid(
                field,
                format!("secret reference {s:?} must look like scheme://path[#key][?version=N]"),
            )
        })?;
        if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(Error::invalid(
                field,
                format!("secret reference {s:?} has an invalid scheme {scheme:?}"),
            ));
        }
        let cut = rest.find(['#', '?']).unwrap_or(rest.len());
        let path = &rest[..cut];
        if path.is_empty() {
            return Err(Error::invalid(
                field,
                format!("secret reference {s:?} has an empty path"),
            ));
        }
        let mut key = None;
        let mut params = BTreeMap::new();
        let mut tail = &rest[cut..];
        while !tail.is_empty() {
            let marker = tail.as_bytes()[0];
            let body = &tail[1..];
            let end = body.find(['#', '?']).unwrap_or(body.len());
            let part = &body[..end];
            if marker == b'#' {
                if part.is_empty() || key.is_some() {
                    return Err(Error::invalid(
                        field,
                        format!("secret reference {s:?} needs exactly one non-empty #key"),
                    ));
                }
                key = Some(part.to_owned());
            } else {
                for kv in part.split('&') {
                    let (k, v) = kv.split_once('=').ok_or_else(|| {
                        Error::invalid(
                            field,
                            format!("secret reference {s:?}: parameter {kv:?} must be name=value"),
                        )
                    })?;
                    if k.is_empty() || v.is_empty() {
                        return Err(Error::invalid(
                            field,
                            format!("secret reference {s:?}: parameter {kv:?} must be name=value"),
                        ));
                    }
                    params.insert(k.to_owned(), v.to_owned());
                }
            }
            tail = &body[end..];
        }
        Ok(SecretRef {
            scheme: scheme.to_owned(),
            path: path.to_owned(),
            key,
            params,
        })
    }

    /// The pinned version, if the reference names one.
    pub fn version(&self) -> Option<&str> {
        self.params.get("version").map(String::as_str)
    }

    /// This reference pinned to `version`.
    pub fn pinned(&self, version: impl Into<String>) -> SecretRef {
        let mut r = self.clone();
        r.params.insert("version".into(), version.into());
        r
    }
}

impl FromStr for SecretRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        SecretRef::parse_at("secret", s)
    }
}

impl TryFrom<String> for SecretRef {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<SecretRef> for String {
    fn from(r: SecretRef) -> String {
        r.to_string()
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.path)?;
        if let Some(k) = &self.key {
            write!(f, "#{k}")?;
        }
        for (i, (k, v)) in self.params.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

/// What a user asks to deploy: an artifact, its configuration, the secrets it
/// needs (by reference) and how many replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The artifact to deploy (tag or digest).
    pub artifact: ArtifactRef,
    /// Plain configuration (environment variables).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Secrets by the name the application sees them under.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretRef>,
    /// Desired replicas at full rollout.
    pub replicas: u32,
}

impl Release {
    /// A release of `artifact` with one replica and no config or secrets.
    pub fn new(artifact: ArtifactRef) -> Self {
        Release {
            artifact,
            config: BTreeMap::new(),
            secrets: BTreeMap::new(),
            replicas: 1,
        }
    }

    /// Set the desired replica count.
    pub fn replicas(mut self, n: u32) -> Self {
        self.replicas = n;
        self
    }

    /// Add a configuration value.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// Add a secret reference under `name`.
    pub fn secret(mut self, name: impl Into<String>, reference: SecretRef) -> Self {
        self.secrets.insert(name.into(), reference);
        self
    }

    /// Check the parts that need no provider; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if self.replicas == 0 {
            return Err(Error::invalid("release.replicas", "must be at least 1"));
        }
        if self.replicas > 10_000 {
            return Err(Error::invalid(
                "release.replicas",
                format!("{} is above the limit of 10000", self.replicas),
            ));
        }
        let named = |field: &'static str| move |k: &String| (field, k.clone());
        let keys = (self.config.keys().map(named("config"))).chain(self.secrets.keys().map(named("secrets")));
        for (field, k) in keys {
            if k.is_empty()
                || k.len() > 253
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
            {
                // The key is the path, so a bad one is excerpted there.
                return Err(Error::invalid(
                    format!("release.{field}.{}", crate::error::excerpt(&k).trim_matches('"')),
                    "names must be 1 to 253 letters, digits, '_', '.' or '-' (an environment variable name such as DB_PASSWORD)",
                ));
            }
        }
        if let Some(dup) = self.config.keys().find(|k| self.secrets.contains_key(*k)) {
            return Err(Error::invalid(
                format!("release.secrets.{dup}"),
                "also defined in release.config; use one",
            ));
        }
        Ok(())
    }
}

/// The identity of one revision on a target: derived from the artifact
/// digest, the configuration and the pinned secret versions, so the same
/// release always gets the same id and any change gets a new one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RevisionId(pub String);

impl RevisionId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RevisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for RevisionId {
    fn from(s: &str) -> Self {
        RevisionId(s.to_owned())
    }
}

/// A fully resolved revision, as handed to a [`crate::Target`]: the artifact
/// pinned by digest, the config, and secret *references* pinned to the version
/// seen at plan time. It never holds a secret value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionSpec {
    /// The revision's id.
    pub id: RevisionId,
    /// The pinned artifact.
    pub artifact: Artifact,
    /// Plain configuration.
    pub config: BTreeMap<String, String>,
    /// Secret references pinned to a version.
    pub secrets: BTreeMap<String, SecretRef>,
}

impl RevisionSpec {
    /// Build a revision and derive its id from its content.
    pub fn new(artifact: Artifact, config: BTreeMap<String, String>, secrets: BTreeMap<String, SecretRef>) -> Self {
        use sha2::Digest as _;
        let canonical = serde_json::json!({
            "digest": artifact.digest,
            "config": config,
            "secrets": secrets,
        });
        let hash = sha2::Sha256::digest(canonical.to_string().as_bytes());
        let id = RevisionId(format!("rev-{}", &hex::encode(hash)[..10]));
        RevisionSpec {
            id,
            artifact,
            config,
            secrets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_name_is_reported_under_the_field_that_holds_it() {
        let release = Release::new("shop/web:v2".parse().unwrap()).replicas(1);
        let e = release
            .clone()
            .secret("DB PASSWORD", "mem://db#password".parse().unwrap())
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("release.secrets.DB PASSWORD"), "{e}");
        let e = release.clone().config("MODE!", "x").validate().unwrap_err();
        assert!(e.to_string().contains("release.config.MODE!"), "{e}");
        let e = release.config("x".repeat(1_000_000), "x").validate().unwrap_err();
        assert!(e.to_string().len() < 400, "a long name is excerpted");
    }

    #[test]
    fn secret_ref_round_trip() {
        let r: SecretRef = "vault://secret/app/db#password?version=3".parse().unwrap();
        assert_eq!(r.scheme, "vault");
        assert_eq!(r.path, "secret/app/db");
        assert_eq!(r.key.as_deref(), Some("password"));
        assert_eq!(r.version(), Some("3"));
        assert_eq!(r.to_string(), "vault://secret/app/db#password?version=3");
        let r: SecretRef = "aws-sm://prod/db?stage=AWSCURRENT".parse().unwrap();
        assert_eq!(r.params["stage"], "AWSCURRENT");
        assert_eq!(r.pinned("v9").version(), Some("v9"));
        let r2: SecretRef = r.to_string().parse().unwrap();
        assert_eq!(r, r2);
    }

    #[test]
    fn bad_secret_refs_name_the_field() {
        for bad in [
            "",
            "nourl",
            "://x",
            "v@ult://x",
            "mem://",
            "mem://a#",
            "mem://a?version",
            "mem://a#k#j",
            "mem://a?=1",
        ] {
            let e = SecretRef::parse_at("release.secrets.DB", bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid release.secrets.DB"), "{bad}: {e}");
        }
    }

    #[test]
    fn release_validation() {
        let r = Release::new("app:v1".parse().unwrap());
        assert!(r.validate().is_ok());
        assert!(r
            .clone()
            .replicas(0)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("release.replicas"));
        let e = r.clone().config("", "x").validate().unwrap_err();
        assert!(matches!(e, Error::InvalidSpec { .. }));
        let e = r
            .config("DB", "x")
            .secret("DB", "mem://db".parse().unwrap())
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("release.secrets.DB"));
    }

    #[test]
    fn revision_id_is_content_derived() {
        let d = crate::Digest::of(b"a");
        let art = Artifact {
            repository: "app".into(),
            tag: None,
            digest: d,
            metadata: Default::default(),
        };
        let a = RevisionSpec::new(art.clone(), BTreeMap::new(), BTreeMap::new());
        let b = RevisionSpec::new(art.clone(), BTreeMap::new(), BTreeMap::new());
        let mut cfg = BTreeMap::new();
        cfg.insert("K".to_string(), "V".to_string());
        let c = RevisionSpec::new(art, cfg, BTreeMap::new());
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert!(a.id.as_str().starts_with("rev-"));
    }
}
