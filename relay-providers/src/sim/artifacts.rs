//! An in-memory artifact registry.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use relay_core::{Artifact, ArtifactRef, ArtifactStore, Digest, Error, Result};

#[derive(Debug, Default)]
struct Registry {
    /// (repository, digest) -> artifact
    artifacts: BTreeMap<(String, Digest), Artifact>,
    /// (repository, tag) -> digest
    tags: BTreeMap<(String, String), Digest>,
    /// (digest, kind) -> document
    attachments: BTreeMap<(Digest, String), Vec<u8>>,
}

/// Artifacts in memory: push content under a tag, resolve tags to digests.
#[derive(Debug, Default)]
pub struct MemoryArtifactStore {
    registry: Mutex<Registry>,
}

impl MemoryArtifactStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Store `content` in `repository`, point `tag` at it, and return the
    /// pinned artifact (digest = sha256 of the content).
    pub fn push(&self, repository: &str, tag: &str, content: &[u8], metadata: BTreeMap<String, String>) -> Artifact {
        let digest = Digest::of(content);
        let artifact = Artifact {
            repository: repository.to_owned(),
            tag: Some(tag.to_owned()),
            digest: digest.clone(),
            metadata,
        };
        let mut r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        r.artifacts
            .insert((repository.to_owned(), digest.clone()), artifact.clone());
        r.tags.insert((repository.to_owned(), tag.to_owned()), digest);
        artifact
    }

    /// Keep `document` beside the artifact `digest` as its `kind`
    /// (`vulnerabilities`, `sbom`), replacing one attached before: what
    /// [`ArtifactStore::attachment`] returns, for the supply-chain gates.
    pub fn attach(&self, digest: &Digest, kind: &str, document: impl Into<Vec<u8>>) {
        let mut r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        r.attachments.insert((digest.clone(), kind.to_owned()), document.into());
    }
}

#[async_trait]
impl ArtifactStore for MemoryArtifactStore {
    async fn attachment(&self, digest: &Digest, kind: &str) -> Result<Option<Vec<u8>>> {
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        Ok(r.attachments.get(&(digest.clone(), kind.to_owned())).cloned())
    }

    async fn resolve(&self, reference: &ArtifactRef) -> Result<Artifact> {
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let repo = reference.repository.clone();
        let digest = match (&reference.digest, &reference.tag) {
            (Some(d), _) => d.clone(),
            (None, Some(t)) => r
                .tags
                .get(&(repo.clone(), t.clone()))
                .cloned()
                .ok_or_else(|| Error::NotFound {
                    what: format!("tag {reference} in the memory registry"),
                })?,
            (None, None) => {
                return Err(Error::invalid(
                    "release.artifact",
                    "reference has neither tag nor digest",
                ))
            }
        };
        let mut artifact = r
            .artifacts
            .get(&(repo, digest))
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: format!("artifact {reference} in the memory registry"),
            })?;
        artifact.tag = reference.tag.clone();
        Ok(artifact)
    }
}
