//! Container images in Amazon ECR.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use aws_sdk_ecr::types::ImageIdentifier;
use aws_sdk_ecr::Client;
use relay_core::{Artifact, ArtifactRef, ArtifactStore, Digest, Error, Result};

use super::error::classify;

const PROVIDER: &str = "ecr";

/// Resolves image references in Amazon ECR to their digest.
///
/// The repository may be written with its registry host
/// (`123456789012.dkr.ecr.eu-west-1.amazonaws.com/shop/web:v2`, the account
/// then comes from the host) or without (`shop/web:v2`, the caller's
/// account). A tag resolves to the digest it points at now; a reference with
/// a digest must exist as written; a reference that cannot be pinned is
/// refused.
///
/// The artifact's repository is always the repository's URI as ECR gives
/// it (`<registry host>/<name>`), however it was written, so what a target
/// runs (`<registry host>/<name>@sha256:…`) is pulled from ECR — a
/// `shop/web@sha256:…` would be pulled from Docker Hub.
#[derive(Clone)]
pub struct EcrArtifactStore {
    client: Client,
}

impl fmt::Debug for EcrArtifactStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcrArtifactStore")
            .field("region", &self.client.config().region())
            .finish()
    }
}

impl EcrArtifactStore {
    /// A store using `config`'s credentials, region and endpoint.
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        EcrArtifactStore {
            client: Client::new(config),
        }
    }

    /// A store around a client configured by the caller.
    pub fn from_client(client: Client) -> Self {
        EcrArtifactStore { client }
    }

    /// The URI of `repository` (in account `registry`, or the caller's), as
    /// ECR gives it: `<registry host>/<name>`, no scheme.
    async fn repository_uri(&self, registry: Option<String>, repository: &str) -> Result<String> {
        let what = format!("DescribeRepositories {repository}");
        let out = self
            .client
            .describe_repositories()
            .set_registry_id(registry)
            .repository_names(repository)
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &what, e))?;
        let uri = out
            .repositories()
            .first()
            .and_then(|r| r.repository_uri())
            .ok_or_else(|| Error::NotFound {
                what: format!("repository {repository} in ECR"),
            })?;
        Ok(uri
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_owned())
    }
}

/// The registry account (from an ECR host) and the repository name.
fn split_repository(reference: &ArtifactRef) -> (Option<String>, String) {
    match (reference.registry(), reference.repository.split_once('/')) {
        (Some(host), Some((_, name))) => {
            let account = host
                .split('.')
                .next()
                .filter(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()));
            (account.map(str::to_owned), name.to_owned())
        }
        _ => (None, reference.repository.clone()),
    }
}

#[async_trait]
impl ArtifactStore for EcrArtifactStore {
    #[tracing::instrument(skip_all, fields(reference = %reference))]
    async fn resolve(&self, reference: &ArtifactRef) -> Result<Artifact> {
        let (registry, repository) = split_repository(reference);
        let id = match (&reference.digest, &reference.tag) {
            (Some(d), _) => ImageIdentifier::builder().image_digest(d.as_str()).build(),
            (None, Some(t)) => ImageIdentifier::builder().image_tag(t).build(),
            (None, None) => {
                return Err(Error::invalid(
                    "release.artifact",
                    "the reference has neither tag nor digest",
                ))
            }
        };
        let what = format!("DescribeImages {reference}");
        let out = self
            .client
            .describe_images()
            .set_registry_id(registry.clone())
            .repository_name(&repository)
            .image_ids(id)
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &what, e))?;
        let detail = out.image_details().first().ok_or_else(|| Error::NotFound {
            what: format!("image {reference} in ECR"),
        })?;
        let digest = detail.image_digest().ok_or_else(|| {
            Error::invalid(
                "release.artifact",
                format!("ECR reports no digest for {reference}, so it cannot be pinned"),
            )
        })?;
        let digest = Digest::parse_at("release.artifact", digest)?;
        if let Some(want) = &reference.digest {
            if want != &digest {
                return Err(Error::invalid(
                    "release.artifact",
                    format!("ECR resolved {reference} to {digest}"),
                ));
            }
        }
        let uri = self.repository_uri(registry, &repository).await?;
        let mut metadata = BTreeMap::new();
        if let Some(at) = detail.image_pushed_at() {
            metadata.insert("pushed_at".to_owned(), at.secs().to_string());
        }
        if let Some(size) = detail.image_size_in_bytes() {
            metadata.insert("size_bytes".to_owned(), size.to_string());
        }
        if let Some(tags) = detail.image_tags().first() {
            metadata.insert("tag".to_owned(), tags.clone());
        }
        Ok(Artifact {
            repository: uri,
            tag: reference.tag.clone(),
            digest,
            metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_with_and_without_the_registry_host() {
        let r: ArtifactRef = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/shop/web:v2"
            .parse()
            .unwrap();
        assert_eq!(split_repository(&r), (Some("123456789012".into()), "shop/web".into()));
        let r: ArtifactRef = "shop/web:v2".parse().unwrap();
        assert_eq!(split_repository(&r), (None, "shop/web".into()));
        let r: ArtifactRef = "localhost:5000/web:v2".parse().unwrap();
        assert_eq!(split_repository(&r), (None, "web".into()));
    }
}
