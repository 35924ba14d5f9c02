//! Task definition revisions for relay revisions: the service's template with
//! the release's image (pinned by digest), environment and secret references.

use aws_sdk_ecs::types::{ContainerDefinition, KeyValuePair, Secret, Tag, TaskDefinition, TaskDefinitionField};
use relay_core::{Error, Result, RevisionId, RevisionSpec, SecretRef};

use super::{EcsServiceTarget, PROVIDER};
use crate::aws::error::classify;

/// The task definition tag that carries the relay revision id.
pub(super) const REVISION_TAG: &str = "relay:revision";

/// Partition, region and account of the service, read from its ARN, to
/// build the ARNs of secrets named by path.
#[derive(Clone, Debug)]
pub(super) struct ArnParts {
    pub partition: String,
    pub region: String,
    pub account: String,
}

impl ArnParts {
    /// Parse `arn:<partition>:ecs:<region>:<account>:service/...`.
    pub fn of_service(arn: &str) -> Option<ArnParts> {
        let mut parts = arn.split(':');
        let (_, partition, _, region, account) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        Some(ArnParts {
            partition: partition.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
        })
    }
}

/// The `valueFrom` ECS reads a secret from: the secret's full Secrets
/// Manager ARN with the JSON key and the pinned version, so the task gets
/// exactly the version relay planned with. The value itself never enters
/// the task definition.
pub(super) fn value_from(name: &str, secret: &SecretRef, arn: &ArnParts) -> Result<String> {
    if secret.scheme != "aws-sm" {
        return Err(Error::invalid(
            format!("release.secrets.{name}"),
            format!(
                "ECS reads secrets by reference (valueFrom), which relay can build for aws-sm:// \
                 (Secrets Manager) references only; {secret} uses the {:?} scheme",
                secret.scheme
            ),
        ));
    }
    // A name (or an ARN built from one) lacks the suffix Secrets Manager
    // adds to every secret's ARN; ECS cannot tell `db` from `db-prod`
    // by it when a key or version follows. The engine pins references
    // read through `SecretsManagerStore` to the full ARN.
    let full = secret.path.starts_with("arn:")
        && secret
            .path
            .rsplit_once(":secret:")
            .is_some_and(|(_, name)| name.rsplit_once('-').is_some_and(|(_, suffix)| suffix.len() == 6));
    if !full {
        return Err(Error::invalid(
            format!("release.secrets.{name}"),
            format!(
                "ECS needs the secret's full ARN (arn:{}:secretsmanager:{}:{}:secret:<name>-<6 characters>), \
                 and {secret} does not give it: register SecretsManagerStore for aws-sm:// so the engine \
                 pins the full ARN, or write the full ARN in the reference",
                arn.partition, arn.region, arn.account
            ),
        ));
    }
    let base = secret.path.clone();
    let key = secret.key.as_deref().unwrap_or("");
    // ECS takes a stage or a version id; the pinned version wins.
    let (stage, version) = match secret.version() {
        Some(v) => ("", v),
        None => (secret.params.get("stage").map_or("", String::as_str), ""),
    };
    if key.is_empty() && stage.is_empty() && version.is_empty() {
        return Ok(base);
    }
    Ok(format!("{base}:{key}:{stage}:{version}"))
}

/// The template's container relay deploys into: the one named `container`,
/// or the only one.
fn container_index(template: &TaskDefinition, container: Option<&str>) -> Result<usize> {
    let containers = template.container_definitions();
    match container {
        Some(name) => containers.iter().position(|c| c.name() == Some(name)).ok_or_else(|| {
            Error::invalid(
                "ecs.container",
                format!(
                    "task definition {} has no container named {name:?}",
                    template.family().unwrap_or("?")
                ),
            )
        }),
        None if containers.len() == 1 => Ok(0),
        None => Err(Error::invalid(
            "ecs.container",
            format!(
                "task definition {} has {} containers; name the one relay deploys with .container(..)",
                template.family().unwrap_or("?"),
                containers.len()
            ),
        )),
    }
}

/// `container` with the revision's image, environment and secrets; the
/// template's other variables and secrets are kept.
fn revision_container(
    mut container: ContainerDefinition,
    spec: &RevisionSpec,
    arn: &ArnParts,
) -> Result<ContainerDefinition> {
    let ours = |n: Option<&str>| n.is_some_and(|n| spec.config.contains_key(n) || spec.secrets.contains_key(n));
    let mut environment: Vec<KeyValuePair> = container
        .environment
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|kv| !ours(kv.name()))
        .collect();
    environment.extend(
        spec.config
            .iter()
            .map(|(k, v)| KeyValuePair::builder().name(k).value(v).build()),
    );
    let mut secrets: Vec<Secret> = container
        .secrets
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| !ours(Some(s.name())))
        .collect();
    for (name, reference) in &spec.secrets {
        let from = value_from(name, reference, arn)?;
        secrets.push(
            Secret::builder()
                .name(name)
                .value_from(from)
                .build()
                .map_err(|e| Error::invalid(format!("release.secrets.{name}"), e.to_string()))?,
        );
    }
    container.image = Some(spec.artifact.pinned_ref().to_string());
    container.environment = Some(environment);
    container.secrets = Some(secrets);
    Ok(container)
}

impl EcsServiceTarget {
    /// The task definition `arn_or_family` names, with its tags.
    pub(super) async fn describe_task_definition(&self, arn_or_family: &str) -> Result<(TaskDefinition, Vec<Tag>)> {
        self.limit().await;
        let out = self
            .inner
            .ecs
            .describe_task_definition()
            .task_definition(arn_or_family)
            .include(TaskDefinitionField::Tags)
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &format!("DescribeTaskDefinition {arn_or_family}"), e))?;
        let tags = out.tags().to_vec();
        let td = out.task_definition.ok_or_else(|| Error::NotFound {
            what: format!("task definition {arn_or_family}"),
        })?;
        Ok((td, tags))
    }

    /// The relay revision a task definition runs: its `relay:revision` tag,
    /// or `family:revision` for one registered outside relay. Task
    /// definitions are immutable, so answers are cached.
    pub(super) async fn revision_of(&self, arn: &str) -> Result<RevisionId> {
        if let Some(id) = self.cached_revision(arn) {
            return Ok(id);
        }
        let (td, tags) = self.describe_task_definition(arn).await?;
        let id = tags
            .iter()
            .find(|t| t.key() == Some(REVISION_TAG))
            .and_then(|t| t.value())
            .map(RevisionId::from)
            .unwrap_or_else(|| RevisionId(format!("{}:{}", td.family().unwrap_or("task"), td.revision())));
        self.remember(arn, &id);
        Ok(id)
    }

    /// Register a task definition revision for `spec`, derived from the
    /// template (`template_family`, else `current`, the task definition the
    /// service runs now).
    pub(super) async fn register(&self, spec: &RevisionSpec, current: Option<&str>) -> Result<String> {
        let source = match (&self.inner.template_family, current) {
            (Some(family), _) => family.as_str(),
            (None, Some(arn)) => arn,
            (None, None) => {
                return Err(Error::invalid(
                    "ecs.template_family",
                    format!(
                        "service {} runs no task definition yet; set template_family to the family relay derives revisions from",
                        self.inner.service
                    ),
                ))
            }
        };
        let (template, template_tags) = self.describe_task_definition(source).await?;
        let index = container_index(&template, self.inner.container.as_deref())?;
        let mut containers = template.container_definitions().to_vec();
        let container = containers.remove(index);
        containers.insert(index, revision_container(container, spec, &self.inner.arn)?);
        let mut tags: Vec<Tag> = template_tags
            .into_iter()
            .filter(|t| t.key() != Some(REVISION_TAG))
            .collect();
        tags.push(Tag::builder().key(REVISION_TAG).value(spec.id.as_str()).build());
        let family = template.family().unwrap_or(&self.inner.service).to_owned();
        self.limit().await;
        let out = self
            .inner
            .ecs
            .register_task_definition()
            .family(&family)
            .set_task_role_arn(template.task_role_arn().map(str::to_owned))
            .set_execution_role_arn(template.execution_role_arn().map(str::to_owned))
            .set_network_mode(template.network_mode().cloned())
            .set_container_definitions(Some(containers))
            .set_volumes(Some(template.volumes().to_vec()))
            .set_placement_constraints(Some(template.placement_constraints().to_vec()))
            .set_requires_compatibilities(Some(template.requires_compatibilities().to_vec()))
            .set_cpu(template.cpu().map(str::to_owned))
            .set_memory(template.memory().map(str::to_owned))
            .set_pid_mode(template.pid_mode().cloned())
            .set_ipc_mode(template.ipc_mode().cloned())
            .set_proxy_configuration(template.proxy_configuration().cloned())
            .set_ephemeral_storage(template.ephemeral_storage().cloned())
            .set_runtime_platform(template.runtime_platform().cloned())
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &format!("RegisterTaskDefinition {family} for {}", spec.id), e))?;
        let arn = out
            .task_definition()
            .and_then(|t| t.task_definition_arn())
            .ok_or_else(|| Error::provider(PROVIDER, false, "RegisterTaskDefinition answered without an ARN"))?
            .to_owned();
        self.remember(&arn, &spec.id);
        Ok(arn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> ArnParts {
        ArnParts::of_service("arn:aws:ecs:eu-west-1:123456789012:service/prod/web").unwrap()
    }

    #[test]
    fn value_from_pins_the_full_arn_key_and_version() {
        const ARN: &str = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf";
        let r: SecretRef = format!("aws-sm://{ARN}#password?version=v-1").parse().unwrap();
        assert_eq!(value_from("DB", &r, &parts()).unwrap(), format!("{ARN}:password::v-1"));
        let staged: SecretRef = format!("aws-sm://{ARN}?stage=AWSPREVIOUS").parse().unwrap();
        assert_eq!(
            value_from("DB", &staged, &parts()).unwrap(),
            format!("{ARN}::AWSPREVIOUS:")
        );
        let plain: SecretRef = format!("aws-sm://{ARN}").parse().unwrap();
        assert_eq!(value_from("DB", &plain, &parts()).unwrap(), ARN);
    }

    #[test]
    fn a_name_or_partial_arn_is_refused_with_the_fix() {
        for partial in [
            "aws-sm://prod/db#password?version=v-1",
            "aws-sm://arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db#password",
        ] {
            let r: SecretRef = partial.parse().unwrap();
            let e = value_from("DB", &r, &parts()).unwrap_err().to_string();
            assert!(
                e.contains("release.secrets.DB") && e.contains("full ARN") && e.contains("SecretsManagerStore"),
                "{e}"
            );
        }
    }

    #[test]
    fn other_schemes_are_refused_naming_the_secret() {
        let r: SecretRef = "vault://kv/db#password".parse().unwrap();
        let e = value_from("DB", &r, &parts()).unwrap_err();
        assert!(e.to_string().contains("release.secrets.DB"), "{e}");
    }
}
