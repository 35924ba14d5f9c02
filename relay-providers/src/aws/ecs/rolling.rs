//! Rolling mode: the ECS deployment controller replaces the tasks.

use std::collections::BTreeMap;

use aws_sdk_ecs::types::{
    Deployment, DeploymentCircuitBreaker, DeploymentConfiguration, DeploymentRolloutState, Service, Tag,
};
use relay_core::{Error, Result, RevisionId, RevisionSpec, RevisionState, TargetState, TrafficSplit};

use super::{count, replicas, EcsServiceTarget, RollingLimits, PROVIDER};
use crate::aws::error::classify;

/// The service tag that holds the stable revision's task definition ARN.
pub(super) const STABLE_TAG: &str = "relay:stable";

fn stable_arn(service: &Service) -> Option<&str> {
    service
        .tags()
        .iter()
        .find(|t| t.key() == Some(STABLE_TAG))
        .and_then(|t| t.value())
}

/// The revisions of a service's deployments. Several deployments may run one
/// task definition (a rollback while the old deployment still drains): their
/// counts add up. A deployment the circuit breaker marked `FAILED` counts all
/// its tasks as failed, so the engine rolls back.
fn deployment_states(deployments: &[Deployment], ids: &BTreeMap<String, RevisionId>) -> Vec<RevisionState> {
    let mut revisions: BTreeMap<RevisionId, RevisionState> = BTreeMap::new();
    for d in deployments {
        let Some(id) = d.task_definition().and_then(|arn| ids.get(arn)) else {
            continue;
        };
        let failed = if d.rollout_state() == Some(&DeploymentRolloutState::Failed) {
            replicas(d.desired_count()).max(1)
        } else {
            0
        };
        let r = revisions
            .entry(id.clone())
            .or_insert(RevisionState::new(id.clone(), 0, 0));
        r.desired += replicas(d.desired_count());
        r.ready += replicas(d.running_count());
        r.failed += failed;
    }
    revisions.into_values().collect()
}

impl EcsServiceTarget {
    pub(super) async fn rolling_observe(&self) -> Result<TargetState> {
        let service = self.describe_service().await?;
        let mut ids = BTreeMap::new();
        for arn in service.deployments().iter().filter_map(|d| d.task_definition()) {
            ids.insert(arn.to_owned(), self.revision_of(arn).await?);
        }
        let revisions = deployment_states(service.deployments(), &ids);
        let current = match service.task_definition() {
            Some(arn) => Some(self.revision_of(arn).await?),
            None => None,
        };
        let stable = match stable_arn(&service) {
            Some(arn) => Some(self.revision_of(arn).await?),
            // A service deployed outside relay: what it runs is stable.
            None => current.clone(),
        };
        Ok(TargetState {
            stable,
            revisions,
            traffic: current.as_ref().map(TrafficSplit::all).unwrap_or_default(),
        })
    }

    pub(super) async fn update_service(
        &self,
        task_definition: Option<&str>,
        desired: Option<i32>,
        limits: Option<RollingLimits>,
    ) -> Result<()> {
        let mut req = self
            .inner
            .ecs
            .update_service()
            .cluster(&self.inner.cluster)
            .service(&self.inner.service)
            .set_task_definition(task_definition.map(str::to_owned))
            .set_desired_count(desired);
        if let Some(l) = limits {
            let breaker = DeploymentCircuitBreaker::builder()
                .enable(true)
                // relay rolls back itself, so the rollback is planned,
                // audited and resumable; ECS only stops a failing deployment.
                .rollback(false)
                .build();
            req = req.deployment_configuration(
                DeploymentConfiguration::builder()
                    .minimum_healthy_percent(l.minimum_healthy_percent)
                    .maximum_percent(l.maximum_percent)
                    .deployment_circuit_breaker(breaker)
                    .build(),
            );
        }
        self.observed(None);
        self.limit().await;
        req.send()
            .await
            .map_err(|e| classify(PROVIDER, &format!("UpdateService {}", self.inner.service), e))?;
        Ok(())
    }

    /// Pin what the service runs now as stable before the first change, so a
    /// rollback of a service deployed outside relay knows where to go back.
    async fn adopt(&self, service: &Service) -> Result<()> {
        if stable_arn(service).is_some() {
            return Ok(());
        }
        let Some(current) = service.task_definition() else {
            return Ok(());
        };
        self.tag_stable(service, current).await
    }

    async fn tag_stable(&self, service: &Service, arn: &str) -> Result<()> {
        let service_arn = service
            .service_arn()
            .ok_or_else(|| Error::provider(PROVIDER, false, "the service has no ARN"))?;
        self.limit().await;
        self.inner
            .ecs
            .tag_resource()
            .resource_arn(service_arn)
            .tags(Tag::builder().key(STABLE_TAG).value(arn).build())
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &format!("TagResource {}", self.inner.service), e))?;
        Ok(())
    }

    /// The task definition ARN of `id`: the service's current or stable one,
    /// or one relay registered in this process.
    async fn arn_of(&self, service: &Service, id: &RevisionId) -> Result<String> {
        for arn in service
            .task_definition()
            .into_iter()
            .chain(stable_arn(service))
            .chain(service.deployments().iter().filter_map(|d| d.task_definition()))
        {
            if &self.revision_of(arn).await? == id {
                return Ok(arn.to_owned());
            }
        }
        self.cached_arn(id).ok_or_else(|| Error::NotFound {
            what: format!("revision {id} on ECS service {}", self.inner.service),
        })
    }

    async fn current_revision(&self, service: &Service) -> Result<Option<RevisionId>> {
        match service.task_definition() {
            Some(arn) => Ok(Some(self.revision_of(arn).await?)),
            None => Ok(None),
        }
    }

    pub(super) async fn rolling_stage(&self, limits: RollingLimits, spec: &RevisionSpec, n: u32) -> Result<()> {
        let service = self.describe_service().await?;
        let desired = count(n)?;
        if self.current_revision(&service).await?.as_ref() == Some(&spec.id) {
            if service.desired_count() != desired {
                self.update_service(None, Some(desired), None).await?;
            }
            return Ok(());
        }
        self.adopt(&service).await?;
        let arn = match self.arn_of(&service, &spec.id).await {
            Ok(arn) => arn,
            Err(Error::NotFound { .. }) => self.register(spec, service.task_definition()).await?,
            Err(e) => return Err(e),
        };
        self.update_service(Some(&arn), Some(desired), Some(limits)).await
    }

    pub(super) async fn rolling_scale(&self, id: &RevisionId, n: u32) -> Result<()> {
        let service = self.describe_service().await?;
        if self.current_revision(&service).await?.as_ref() != Some(id) {
            return Err(Error::Conflict {
                what: format!(
                    "ECS service {} runs one task definition at a time and {id} is not it; route to it first",
                    self.inner.service
                ),
            });
        }
        let desired = count(n)?;
        if service.desired_count() != desired {
            self.update_service(None, Some(desired), None).await?;
        }
        Ok(())
    }

    /// All traffic to `id`: the service runs its task definition.
    pub(super) async fn rolling_route(&self, id: &RevisionId) -> Result<()> {
        let service = self.describe_service().await?;
        if self.current_revision(&service).await?.as_ref() == Some(id) {
            return Ok(());
        }
        let arn = self.arn_of(&service, id).await?;
        self.update_service(Some(&arn), None, None).await
    }

    pub(super) async fn rolling_promote(&self, id: &RevisionId) -> Result<()> {
        let service = self.describe_service().await?;
        let arn = self.arn_of(&service, id).await?;
        if stable_arn(&service) == Some(arn.as_str()) {
            return Ok(());
        }
        self.tag_stable(&service, &arn).await
    }

    /// ECS drains a replaced deployment itself; the task definition stays
    /// registered so an operator can still go back to it by hand.
    pub(super) async fn rolling_retire(&self, id: &RevisionId) -> Result<()> {
        let service = self.describe_service().await?;
        if self.current_revision(&service).await?.as_ref() == Some(id) {
            return Err(Error::Conflict {
                what: format!(
                    "revision {id} is what ECS service {} runs; route to another revision first",
                    self.inner.service
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(arn: &str, desired: i32, running: i32, state: DeploymentRolloutState) -> Deployment {
        Deployment::builder()
            .task_definition(arn)
            .desired_count(desired)
            .running_count(running)
            .rollout_state(state)
            .build()
    }

    #[test]
    fn deployments_of_one_task_definition_add_up_and_a_failed_one_fails() {
        let ids = BTreeMap::from([
            ("td:1".to_owned(), RevisionId::from("a")),
            ("td:2".to_owned(), RevisionId::from("b")),
        ]);
        let states = deployment_states(
            &[
                deployment("td:2", 3, 1, DeploymentRolloutState::Failed),
                deployment("td:1", 2, 2, DeploymentRolloutState::InProgress),
                deployment("td:1", 1, 1, DeploymentRolloutState::Completed),
                deployment("td:unknown", 9, 9, DeploymentRolloutState::Completed),
            ],
            &ids,
        );
        assert_eq!(
            states,
            [
                RevisionState::new("a".into(), 3, 3),
                RevisionState {
                    id: "b".into(),
                    desired: 3,
                    ready: 1,
                    failed: 3,
                    failure: None,
                    autoscaled: false,
                },
            ]
        );
    }
}
