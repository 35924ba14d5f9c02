//! Artifacts: what gets deployed, pinned by digest.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{excerpt, Error, Result};

/// A content digest, always `sha256:` followed by 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parse and validate a digest. The error names `path` so callers can say
    /// which field held it.
    pub fn parse_at(path: &str, s: &str) -> Result<Self> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| Error::invalid(path, format!("digest {} must start with \"sha256:\"", excerpt(s))))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(Error::invalid(
                path,
                format!(
                    "digest {} must be \"sha256:\" followed by 64 lowercase hex digits",
                    excerpt(s)
                ),
            ));
        }
        Ok(Digest(s.to_owned()))
    }

    /// The digest of `bytes` (sha256).
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Digest(format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes))))
    }

    /// The full `sha256:...` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for display.
    pub fn short(&self) -> &str {
        &self.0[7..19]
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Digest::parse_at("digest", s)
    }
}

impl TryFrom<String> for Digest {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reference to an artifact as a user writes it: `repo:tag`, `repo@digest`
/// or `repo:tag@digest`. Only a digest pins content; a tag is resolved by an
/// [`crate::ArtifactStore`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ArtifactRef {
    /// Repository, including registry host if any (`registry.local:5000/team/app`).
    pub repository: String,
    /// Tag, if given.
    pub tag: Option<String>,
    /// Digest, if given.
    pub digest: Option<Digest>,
}

impl ArtifactRef {
    /// Parse a reference, naming `path` in errors.
    pub fn parse_at(path: &str, s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(Error::invalid(
                path,
                "artifact reference is empty; write repo:tag or repo@sha256:<hex>",
            ));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse_at(path, d)?)),
            None => (s, None),
        };
        // A ':' after the last '/' separates the tag; one before it is a registry port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match rest[last_slash..].find(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if repository.is_empty() || repository.starts_with('/') || repository.ends_with('/') {
            return Err(Error::invalid(
                path,
                format!("artifact reference {} has no repository name", excerpt(s)),
            ));
        }
        check_repository(path, repository)?;
        if let Some(t) = tag {
            let mut chars = t.chars();
            let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if !first_ok || t.len() > 128 || !chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                return Err(Error::invalid(
                    path,
                    format!(
                        "tag {} must be 1-128 characters of letters, digits, '.', '_' or '-', not starting with '.' or '-'",
                        excerpt(t)
                    ),
                ));
            }
        }
        if tag.is_none() && digest.is_none() {
            return Err(Error::invalid(
                path,
                format!(
                    "artifact reference {} needs a tag (repo:tag) or a digest (repo@sha256:<hex>)",
                    excerpt(s)
                ),
            ));
        }
        Ok(ArtifactRef {
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// The registry host, when the repository names one (a first segment with
    /// a '.' or ':' or equal to `localhost`).
    pub fn registry(&self) -> Option<&str> {
        let (first, _) = self.repository.split_once('/')?;
        (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
    }
}

/// Check a repository name against the OCI distribution reference grammar:
/// an optional registry host (with a port) and path components of
/// lowercase letters and digits joined by `.`, `_`, `__` or dashes, at most
/// 255 characters. A URL (`https://…`) or a space is refused, naming the
/// form to write instead.
fn check_repository(path: &str, repository: &str) -> Result<()> {
    const FORM: &str = "write [registry[:port]/]path/name, such as registry.example:5000/team/app, \
                        with lowercase letters, digits and '.', '_' or '-' inside each component";
    if repository.len() > 255 {
        return Err(Error::invalid(
            path,
            format!("repository {} is longer than 255 characters", excerpt(repository)),
        ));
    }
    if repository.contains("://") {
        return Err(Error::invalid(
            path,
            format!("repository {} is a URL; {FORM} (no scheme)", excerpt(repository)),
        ));
    }
    let mut components: Vec<&str> = repository.split('/').collect();
    let first = components[0];
    let has_registry = components.len() > 1 && (first.contains(['.', ':']) || first == "localhost");
    if has_registry {
        let (host, port) = match first.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (first, None),
        };
        let host_ok = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
        if !host_ok || !port_ok {
            return Err(Error::invalid(
                path,
                format!(
                    "registry {} of repository {} is not a host[:port]; {FORM}",
                    excerpt(first),
                    excerpt(repository)
                ),
            ));
        }
        components.remove(0);
    }
    for component in components {
        if !path_component(component) {
            return Err(Error::invalid(
                path,
                format!(
                    "repository {} has an invalid component {}; {FORM}",
                    excerpt(repository),
                    excerpt(component)
                ),
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or one or more `-`.
fn path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
}

impl FromStr for ArtifactRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ArtifactRef::parse_at("artifact", s)
    }
}

impl TryFrom<String> for ArtifactRef {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<ArtifactRef> for String {
    fn from(r: ArtifactRef) -> String {
        r.to_string()
    }
}

impl fmt::Display for ArtifactRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// An immutable artifact, resolved and pinned by digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Repository it lives in.
    pub repository: String,
    /// The tag it was resolved from, if any (informational only).
    pub tag: Option<String>,
    /// The content digest that pins it.
    pub digest: Digest,
    /// Provenance and signature metadata (`provenance.builder`, `signature`, ...).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Artifact {
    /// The reference that pins exactly this artifact: `repo@digest`.
    pub fn pinned_ref(&self) -> ArtifactRef {
        ArtifactRef {
            repository: self.repository.clone(),
            tag: None,
            digest: Some(self.digest.clone()),
        }
    }
}

/// What an artifact must satisfy before it may be deployed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactPolicy {
    /// The release must name a digest, not only a tag.
    pub require_digest: bool,
    /// Registries the artifact may come from; empty means any.
    pub allowed_registries: Vec<String>,
    /// Metadata keys that must be present (for example `provenance`, `signature`).
    pub required_metadata: Vec<String>,
    /// Digests that must never be deployed (for example releases that were rolled back).
    pub rejected_digests: Vec<Digest>,
    /// Refuse a digest that a rollout on the same target rolled back, so
    /// automation does not deploy it again (the state store's history is
    /// the list).
    #[serde(default)]
    pub refuse_rolled_back: bool,
}

impl ArtifactPolicy {
    /// Check `artifact`, resolved from `reference`, against this policy. The
    /// error is an [`Error::InvalidSpec`] at `release.artifact` saying which
    /// rule failed.
    pub fn check(&self, reference: &ArtifactRef, artifact: &Artifact) -> Result<()> {
        const PATH: &str = "release.artifact";
        if self.require_digest && reference.digest.is_none() {
            return Err(Error::invalid(
                PATH,
                format!("policy requires a pinned digest; use {}", artifact.pinned_ref()),
            ));
        }
        if let Some(d) = &reference.digest {
            if d != &artifact.digest {
                return Err(Error::invalid(
                    PATH,
                    format!(
                        "store resolved {} to {}, not the requested digest",
                        reference, artifact.digest
                    ),
                ));
            }
        }
        if !self.allowed_registries.is_empty() {
            let reg = reference.registry().unwrap_or("");
            if !self.allowed_registries.iter().any(|a| a == reg) {
                return Err(Error::invalid(
                    PATH,
                    format!(
                        "registry {reg:?} is not in the allowed list {:?}",
                        self.allowed_registries
                    ),
                ));
            }
        }
        for key in &self.required_metadata {
            if !artifact.metadata.contains_key(key) {
                return Err(Error::invalid(
                    PATH,
                    format!("artifact {} lacks required metadata {key:?}", artifact.digest),
                ));
            }
        }
        if self.rejected_digests.contains(&artifact.digest) {
            return Err(Error::invalid(
                PATH,
                format!("artifact {} is on the rejected list", artifact.digest),
            ));
        }
        Ok(())
    }
}

/// An [`crate::ArtifactStore`] for pipelines that hand over images already
/// pinned by digest (`repo@sha256:…`), with no registry to ask: it resolves a
/// reference to the digest it carries and refuses a reference with only a
/// tag, since resolving a tag needs a registry.
#[derive(Clone, Copy, Debug, Default)]
pub struct PinnedArtifactStore;

#[async_trait::async_trait]
impl crate::ArtifactStore for PinnedArtifactStore {
    async fn resolve(&self, reference: &ArtifactRef) -> Result<Artifact> {
        let digest = reference.digest.clone().ok_or_else(|| {
            Error::invalid(
                "release.artifact",
                format!(
                    "{reference} names no digest, and without a registry a tag cannot be resolved; \
                     name the image by digest ({}@sha256:…) or use a registry-backed artifact store",
                    reference.repository
                ),
            )
        })?;
        Ok(Artifact {
            repository: reference.repository.clone(),
            tag: reference.tag.clone(),
            digest,
            metadata: BTreeMap::new(),
        })
    }
}

/// Resolves artifact references to immutable, digest-pinned artifacts.
///
/// # Contract
/// - `resolve` of a reference with a digest returns that digest or fails; it
///   never silently substitutes another. A tag resolves to the digest it
///   points at now.
/// - A reference that cannot be pinned is [`crate::Error::NotFound`] or
///   [`crate::Error::InvalidSpec`], never an artifact without a digest.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ArtifactStore: Send + Sync + fmt::Debug + 'static {
    /// Resolve `reference` to a pinned artifact.
    async fn resolve(&self, reference: &ArtifactRef) -> Result<Artifact>;

    /// Verify `artifact` against `policy`. The default applies
    /// [`ArtifactPolicy::check`]; stores that can check signatures or
    /// provenance themselves extend it.
    async fn verify(&self, reference: &ArtifactRef, artifact: &Artifact, policy: &ArtifactPolicy) -> Result<()> {
        policy.check(reference, artifact)
    }

    /// The document of `kind` (`vulnerabilities`, `sbom`) the store keeps
    /// beside the artifact `digest`, for the supply-chain gates
    /// ([`crate::scan`]); `None` when there is none. The default keeps
    /// none.
    async fn attachment(&self, digest: &Digest, kind: &str) -> Result<Option<Vec<u8>>> {
        let _ = (digest, kind);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digest_validation() {
        assert!(Digest::parse_at("x", D).is_ok());
        for bad in [
            "",
            "sha256:",
            "md5:00",
            &D.to_uppercase(),
            &D[..70],
            "sha256:zz23456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            let e = Digest::parse_at("release.artifact", bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid release.artifact:"), "{e}");
        }
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[tokio::test]
    async fn the_pinned_store_takes_digests_and_refuses_bare_tags() {
        use crate::ArtifactStore as _;
        let pinned: ArtifactRef = format!("reg.test/app@{D}").parse().unwrap();
        let a = PinnedArtifactStore.resolve(&pinned).await.unwrap();
        assert_eq!((a.repository.as_str(), a.digest.as_str()), ("reg.test/app", D));
        let e = PinnedArtifactStore
            .resolve(&"reg.test/app:v1".parse().unwrap())
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("release.artifact") && e.to_string().contains("by digest"),
            "{e}"
        );
    }

    #[test]
    fn reference_forms() {
        let r: ArtifactRef = "registry.local:5000/team/app:v1".parse().unwrap();
        assert_eq!(r.repository, "registry.local:5000/team/app");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.registry(), Some("registry.local:5000"));
        let r: ArtifactRef = format!("app@{D}").parse().unwrap();
        assert_eq!(r.digest.as_ref().map(Digest::as_str), Some(D));
        assert_eq!(r.registry(), None);
        let r: ArtifactRef = format!("app:v2@{D}").parse().unwrap();
        assert_eq!(r.to_string(), format!("app:v2@{D}"));
        for good in [
            "localhost/app:v1",
            "localhost:5000/app:v1",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/shop/web:v2",
            "my-org/my_app__x/a.b--c:1.0_rc-1",
        ] {
            assert!(good.parse::<ArtifactRef>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "app",
            ":v1",
            "app:",
            "app@sha256:12",
            "app:bad tag",
            "shop web:v2",
            "http://x/y:z",
            "Shop/web:v2",
            "shop//web:v2",
            "shop/-web:v2",
            "shop/web.:v2",
            "shop/web...x:v2",
            "reg_istry.io:5000/app:v1",
            "registry.io:port/app:v1",
            "app:.v1",
        ] {
            assert!(
                matches!(bad.parse::<ArtifactRef>(), Err(Error::InvalidSpec { .. })),
                "{bad}"
            );
        }
        let e = "https://registry.example/shop/web:v2"
            .parse::<ArtifactRef>()
            .unwrap_err();
        assert!(
            e.to_string().contains("is a URL") && e.to_string().contains("no scheme"),
            "{e}"
        );
        let e = "shop web:v2".parse::<ArtifactRef>().unwrap_err();
        assert!(e.to_string().contains("invalid component \"shop web\""), "{e}");
        let long = format!("shop/{}:v1", "a".repeat(10_000_000));
        let e = long.parse::<ArtifactRef>().unwrap_err().to_string();
        assert!(e.len() < 400 && e.contains("bytes)"), "{}", &e[..e.len().min(400)]);
    }

    #[test]
    fn policy_rules() {
        let art = Artifact {
            repository: "reg.io/app".into(),
            tag: Some("v1".into()),
            digest: D.parse().unwrap(),
            metadata: BTreeMap::new(),
        };
        let by_tag: ArtifactRef = "reg.io/app:v1".parse().unwrap();
        assert!(ArtifactPolicy::default().check(&by_tag, &art).is_ok());
        let p = ArtifactPolicy {
            require_digest: true,
            ..Default::default()
        };
        assert!(p
            .check(&by_tag, &art)
            .unwrap_err()
            .to_string()
            .contains("pinned digest"));
        let p = ArtifactPolicy {
            allowed_registries: vec!["other.io".into()],
            ..Default::default()
        };
        assert!(p.check(&by_tag, &art).unwrap_err().to_string().contains("allowed"));
        let p = ArtifactPolicy {
            required_metadata: vec!["signature".into()],
            ..Default::default()
        };
        assert!(p.check(&by_tag, &art).unwrap_err().to_string().contains("signature"));
        let p = ArtifactPolicy {
            rejected_digests: vec![art.digest.clone()],
            ..Default::default()
        };
        assert!(p.check(&by_tag, &art).unwrap_err().to_string().contains("rejected"));
    }
}
