//! Artifact verifiers: checks on the resolved artifact itself (a trusted
//! checksum list, a signature over its digest), run when a rollout is
//! planned.

use std::collections::BTreeSet;
use std::fmt;

use async_trait::async_trait;

use crate::artifact::{Artifact, Digest};
use crate::error::{Error, Result};

const FIELD: &str = "release.artifact";

/// The ed25519 crate signatures are checked with (keys, signing for tests
/// and pipelines).
#[cfg(feature = "signing")]
pub use ed25519_dalek as ed25519;

/// Verifies an artifact before it may be planned; a refusal is
/// [`Error::InvalidSpec`] at `release.artifact` saying what is wrong.
/// Register verifiers with [`crate::RelayBuilder::verifier`]; every one must
/// accept.
#[async_trait]
pub trait ArtifactVerifier: Send + Sync + fmt::Debug + 'static {
    /// A short name for errors and audit (`checksums`, `signature`).
    fn name(&self) -> &str;
    /// Accept or refuse `artifact`.
    async fn verify(&self, artifact: &Artifact) -> Result<()>;
}

/// Accepts only artifacts whose digest is in a trusted list, such as the
/// `SHA256SUMS` manifest a build publishes.
#[derive(Clone, Debug, Default)]
pub struct ChecksumVerifier {
    trusted: BTreeSet<Digest>,
}

impl ChecksumVerifier {
    /// Trust exactly `digests`.
    pub fn new(digests: impl IntoIterator<Item = Digest>) -> Self {
        ChecksumVerifier {
            trusted: digests.into_iter().collect(),
        }
    }

    /// Trust the checksums of a `sha256sum` manifest (`<64 hex>  <name>`
    /// per line; blank lines and `#` comments skipped).
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] at `checksums.line[N]` for a malformed line.
    pub fn from_sha256sums(manifest: &str) -> Result<Self> {
        let mut trusted = BTreeSet::new();
        for (i, line) in manifest.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let hex = line.split_whitespace().next().unwrap_or_default();
            trusted.insert(Digest::parse_at(
                &format!("checksums.line[{}]", i + 1),
                &format!("sha256:{hex}"),
            )?);
        }
        Ok(ChecksumVerifier { trusted })
    }
}

#[async_trait]
impl ArtifactVerifier for ChecksumVerifier {
    fn name(&self) -> &str {
        "checksums"
    }

    async fn verify(&self, artifact: &Artifact) -> Result<()> {
        if self.trusted.contains(&artifact.digest) {
            return Ok(());
        }
        Err(Error::invalid(
            FIELD,
            format!(
                "{}@{} is not in the trusted checksum list ({} entries)",
                artifact.repository,
                artifact.digest,
                self.trusted.len()
            ),
        ))
    }
}

/// Accepts artifacts carrying an ed25519 signature over their digest (the
/// UTF-8 bytes of `sha256:<hex>`, as minisign-style detached signatures
/// sign a file's hash) by one of the trusted keys. The signature is the
/// artifact metadata `signature`, hex; keys are 32 bytes, hex.
#[cfg(feature = "signing")]
#[derive(Clone)]
pub struct SignatureVerifier {
    keys: Vec<(String, ed25519_dalek::VerifyingKey)>,
}

#[cfg(feature = "signing")]
impl fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureVerifier")
            .field("keys", &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>())
            .finish()
    }
}

/// The metadata key holding an artifact's signature.
pub const SIGNATURE_METADATA: &str = "signature";

#[cfg(feature = "signing")]
impl SignatureVerifier {
    /// Trust the public keys `(id, 64 hex characters)`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] at `signing.keys.<id>` for a malformed key.
    pub fn new<'a>(keys: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut out = Vec::new();
        for (id, hex_key) in keys {
            let field = format!("signing.keys.{id}");
            let bytes: [u8; 32] = hex::decode(hex_key.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Error::invalid(&field, "an ed25519 public key is 64 hex characters"))?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .map_err(|e| Error::invalid(&field, format!("not an ed25519 public key: {e}")))?;
            out.push((id.to_owned(), key));
        }
        if out.is_empty() {
            return Err(Error::invalid("signing.keys", "trust at least one key"));
        }
        Ok(SignatureVerifier { keys: out })
    }

    /// The signature of `digest` with `key` (hex), for build pipelines and
    /// tests that sign.
    pub fn sign(key: &ed25519_dalek::SigningKey, digest: &Digest) -> String {
        use ed25519_dalek::Signer as _;
        hex::encode(key.sign(digest.as_str().as_bytes()).to_bytes())
    }
}

#[cfg(feature = "signing")]
#[async_trait]
impl ArtifactVerifier for SignatureVerifier {
    fn name(&self) -> &str {
        "signature"
    }

    async fn verify(&self, artifact: &Artifact) -> Result<()> {
        let what = format!("{}@{}", artifact.repository, artifact.digest);
        let sig = artifact.metadata.get(SIGNATURE_METADATA).ok_or_else(|| {
            Error::invalid(
                FIELD,
                format!("{what} is unsigned: it has no `{SIGNATURE_METADATA}` metadata"),
            )
        })?;
        let bytes: [u8; 64] = hex::decode(sig.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::invalid(FIELD, format!("{what}: the signature is not 128 hex characters")))?;
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        let signed = self
            .keys
            .iter()
            .find(|(_, k)| k.verify_strict(artifact.digest.as_str().as_bytes(), &signature).is_ok());
        match signed {
            Some((id, _)) => {
                tracing::debug!(key = %id, artifact = %what, "signature verified");
                Ok(())
            }
            None => Err(Error::invalid(
                FIELD,
                format!(
                    "{what}: the signature does not verify with any trusted key ({}): tampered, or signed by a key not trusted here",
                    self.keys.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(content: &[u8]) -> Artifact {
        Artifact {
            repository: "reg/app".into(),
            tag: None,
            digest: Digest::of(content),
            metadata: Default::default(),
        }
    }

    #[tokio::test]
    async fn checksums_come_from_a_sha256sums_manifest() {
        let a = artifact(b"build 1");
        let manifest = format!("# release 1\n{}  app.tar\n\n", &a.digest.as_str()[7..]);
        let v = ChecksumVerifier::from_sha256sums(&manifest).unwrap();
        v.verify(&a).await.unwrap();
        let e = v.verify(&artifact(b"build 2")).await.unwrap_err();
        assert!(e.to_string().contains("not in the trusted checksum list"), "{e}");
        let e = ChecksumVerifier::from_sha256sums("xyz  app.tar").unwrap_err();
        assert!(e.to_string().contains("checksums.line[1]"), "{e}");
    }

    #[cfg(feature = "signing")]
    #[tokio::test]
    async fn signatures_must_verify_with_a_trusted_key() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
        let public = hex::encode(key.verifying_key().to_bytes());
        let v = SignatureVerifier::new([("release", public.as_str())]).unwrap();
        let mut a = artifact(b"build 1");
        let e = v.verify(&a).await.unwrap_err();
        assert!(e.to_string().contains("unsigned"), "{e}");
        a.metadata
            .insert(SIGNATURE_METADATA.into(), SignatureVerifier::sign(&key, &a.digest));
        v.verify(&a).await.unwrap();
        // The same signature on other content: tampered.
        let mut tampered = artifact(b"build 1 with a backdoor");
        tampered.metadata = a.metadata.clone();
        let e = v.verify(&tampered).await.unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        a.metadata
            .insert(SIGNATURE_METADATA.into(), SignatureVerifier::sign(&other, &a.digest));
        assert!(v.verify(&a).await.is_err(), "a key that is not trusted");
        let e = SignatureVerifier::new([("bad", "00")]).unwrap_err();
        assert!(e.to_string().contains("signing.keys.bad"), "{e}");
    }
}
