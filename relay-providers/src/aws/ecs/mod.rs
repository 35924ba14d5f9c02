//! An Amazon ECS service as a deployment [`Target`].

mod listener;
mod manual;
mod rolling;
mod taskdef;
mod tasksets;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_ecs::types::{AssignPublicIp, DeploymentControllerType, LaunchType, Service, ServiceField};
use relay_core::{Capabilities, Error, Result, RevisionId, RevisionSpec, Routing, Target, TargetState, TrafficSplit};

use super::error::classify;
use crate::RateLimiter;
use taskdef::ArnParts;

const PROVIDER: &str = "ecs";

/// An ECS service that relay deploys to. Its deployment controller picks the
/// mode, and [`Target::capabilities`] says which:
///
/// - **Rolling** (the `ECS` controller): each revision is a task definition
///   revision (derived from the service's current one: the release's image
///   pinned by digest, its environment, and its secrets as `valueFrom`:
///   the secret's full ARN (which the engine pins a reference read through
///   `SecretsManagerStore` to) with the planned version, never values; a
///   bare name or partial ARN is refused, naming the secret). `stage` registers it
///   and calls `UpdateService` with the minimum-healthy and maximum percent
///   and the deployment circuit breaker; ECS replaces the tasks itself. One
///   revision runs at a time and traffic follows the tasks, so the
///   capabilities are `Routing::None` with one revision: use the all-at-once
///   strategy and let ECS batch within the limits set with
///   [`EcsServiceTargetBuilder::rolling_limits`]. A rollback updates the service back to the stable
///   revision's task definition. A deployment the circuit breaker marks
///   `FAILED` is reported as failed replicas, so the engine rolls back.
/// - **Task sets** (the `EXTERNAL` controller): each revision is a task set
///   (`externalId` = the revision id) behind one of two target groups;
///   traffic is the weights of an ALB listener's forward action across
///   them (in its default actions or in one of its rules; nothing else in
///   the listener changes),
///   promotion is `UpdateServicePrimaryTaskSet` and retirement
///   `DeleteTaskSet`. A revision's ready tasks are the healthy targets of
///   its target group (`DescribeTargetHealth`): a task serves once it
///   passes the load balancer's health checks. While a revision is short
///   of them, its stopped tasks are read (`ListTasks` by the task set's id,
///   `DescribeTasks`): once [`EcsServiceTargetBuilder::failed_task_limit`]
///   of them stopped with a failure, the revision has failed, with the
///   last stopped reason, and the engine rolls back without waiting out
///   the progress deadline. Capabilities: weighted routing, two revisions,
///   so canary and blue/green plans run.
///
/// The `stable` revision is the one promoted last: a `relay:stable` service
/// tag in rolling mode, the primary task set in task-set mode. Every API
/// request waits for the optional shared [`RateLimiter`].
///
/// `Debug` shows the cluster, service and mode: no credential.
#[derive(Clone)]
pub struct EcsServiceTarget {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    ecs: aws_sdk_ecs::Client,
    elb: aws_sdk_elasticloadbalancingv2::Client,
    cluster: String,
    service: String,
    container: Option<String>,
    template_family: Option<String>,
    limiter: Option<RateLimiter>,
    arn: ArnParts,
    mode: Mode,
    /// Task definition ARN → revision id (task definitions are immutable).
    revisions: Mutex<BTreeMap<String, RevisionId>>,
    /// The service as the last observe read it, and when: a route or a
    /// promotion right after it (the engine's next step) reuses it rather
    /// than read it again, for [`OBSERVED_MAX_AGE`], unless relay changed
    /// the service since.
    observed: Mutex<Option<(tokio::time::Instant, Service)>>,
}

/// How long an observe's description of the service may stand in for a
/// fresh one: the engine routes or promotes within milliseconds of the
/// observe that found the revisions ready, and a task set's target group
/// never changes, so a second read would say the same. Any write relay
/// makes to the service's task sets forgets it.
const OBSERVED_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone, Debug)]
enum Mode {
    Rolling(RollingLimits),
    TaskSets(TaskSetConfig),
}

#[derive(Clone, Copy, Debug)]
struct RollingLimits {
    minimum_healthy_percent: i32,
    maximum_percent: i32,
}

#[derive(Clone, Debug)]
struct TaskSetConfig {
    listener_arn: String,
    rule_arn: Option<String>,
    target_groups: [String; 2],
    container: String,
    container_port: i32,
    subnets: Vec<String>,
    security_groups: Vec<String>,
    assign_public_ip: bool,
    launch_type: LaunchType,
    failed_task_limit: u32,
}

impl fmt::Debug for EcsServiceTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcsServiceTarget")
            .field("name", &self.inner.name)
            .field("cluster", &self.inner.cluster)
            .field("service", &self.inner.service)
            .field("mode", &self.inner.mode)
            .finish()
    }
}

impl EcsServiceTarget {
    /// Start building a target for `service` in `cluster`, using `config`'s
    /// credentials, region and endpoint.
    pub fn builder(
        config: &aws_config::SdkConfig,
        cluster: impl Into<String>,
        service: impl Into<String>,
    ) -> EcsServiceTargetBuilder {
        EcsServiceTargetBuilder {
            ecs: aws_sdk_ecs::Client::new(config),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(config),
            cluster: cluster.into(),
            service: service.into(),
            name: None,
            container: None,
            template_family: None,
            limiter: None,
            minimum_healthy_percent: 100,
            maximum_percent: 200,
            listener_arn: None,
            rule_arn: None,
            target_groups: None,
            container_port: None,
            subnets: Vec::new(),
            security_groups: Vec::new(),
            assign_public_ip: false,
            launch_type: LaunchType::Fargate,
            failed_task_limit: 3,
        }
    }

    async fn limit(&self) {
        if let Some(l) = &self.inner.limiter {
            l.acquire().await;
        }
    }

    fn cached_revision(&self, arn: &str) -> Option<RevisionId> {
        self.inner
            .revisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(arn)
            .cloned()
    }

    fn cached_arn(&self, id: &RevisionId) -> Option<String> {
        self.inner
            .revisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, r)| *r == id)
            .map(|(a, _)| a.clone())
    }

    fn remember(&self, arn: &str, id: &RevisionId) {
        self.inner
            .revisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(arn.to_owned(), id.clone());
    }

    /// The service as the last observe read it, if that was at most
    /// [`OBSERVED_MAX_AGE`] ago, relay changed nothing since, and it knows
    /// every revision in `ids`; else as ECS describes it now.
    async fn recent_service<'a>(&self, ids: impl IntoIterator<Item = &'a RevisionId>) -> Result<Service> {
        let recent = self
            .inner
            .observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .filter(|(at, _)| at.elapsed() <= OBSERVED_MAX_AGE);
        match recent {
            Some((_, service)) if ids.into_iter().all(|id| tasksets::runs(&service, id)) => Ok(service),
            _ => self.describe_service().await,
        }
    }

    /// Remember `service` as observed now (`None`: forget it, as a write
    /// changed it).
    fn observed(&self, service: Option<&Service>) {
        *self
            .inner
            .observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            service.map(|s| (tokio::time::Instant::now(), s.clone()));
    }

    /// The service as ECS describes it now, with its tags.
    async fn describe_service(&self) -> Result<Service> {
        describe_service(
            &self.inner.ecs,
            self.inner.limiter.as_ref(),
            &self.inner.cluster,
            &self.inner.service,
        )
        .await
    }
}

async fn describe_service(
    ecs: &aws_sdk_ecs::Client,
    limiter: Option<&RateLimiter>,
    cluster: &str,
    service: &str,
) -> Result<Service> {
    if let Some(l) = limiter {
        l.acquire().await;
    }
    let out = ecs
        .describe_services()
        .cluster(cluster)
        .services(service)
        .include(ServiceField::Tags)
        .send()
        .await
        .map_err(|e| classify(PROVIDER, &format!("DescribeServices {cluster}/{service}"), e))?;
    out.services()
        .iter()
        .find(|s| s.status() != Some("INACTIVE"))
        .cloned()
        .ok_or_else(|| Error::NotFound {
            what: format!("ECS service {service} in cluster {cluster}"),
        })
}

/// Builds an [`EcsServiceTarget`]; [`build`](Self::build) reads the service
/// once to choose the mode and checks that the settings it needs are there.
pub struct EcsServiceTargetBuilder {
    ecs: aws_sdk_ecs::Client,
    elb: aws_sdk_elasticloadbalancingv2::Client,
    cluster: String,
    service: String,
    name: Option<String>,
    container: Option<String>,
    template_family: Option<String>,
    limiter: Option<RateLimiter>,
    minimum_healthy_percent: i32,
    maximum_percent: i32,
    listener_arn: Option<String>,
    rule_arn: Option<String>,
    target_groups: Option<[String; 2]>,
    container_port: Option<i32>,
    subnets: Vec<String>,
    security_groups: Vec<String>,
    assign_public_ip: bool,
    launch_type: LaunchType,
    failed_task_limit: u32,
}

impl fmt::Debug for EcsServiceTargetBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcsServiceTargetBuilder")
            .field("cluster", &self.cluster)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl EcsServiceTargetBuilder {
    /// The target's name for leases and audit (default `ecs:<cluster>/<service>`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The container that runs the release's image (needed when the task
    /// definition has several).
    pub fn container(mut self, name: impl Into<String>) -> Self {
        self.container = Some(name.into());
        self
    }

    /// Derive new task definitions from the latest revision of this family
    /// instead of the one the service runs (needed when it runs none yet).
    pub fn template_family(mut self, family: impl Into<String>) -> Self {
        self.template_family = Some(family.into());
        self
    }

    /// Make every API request wait for this limiter (share one across the
    /// targets and probes of an account).
    pub fn rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Rolling mode: the percent of desired tasks that must stay healthy and
    /// the most that may run during a deployment (defaults 100 and 200).
    pub fn rolling_limits(mut self, minimum_healthy_percent: u16, maximum_percent: u16) -> Self {
        self.minimum_healthy_percent = i32::from(minimum_healthy_percent);
        self.maximum_percent = i32::from(maximum_percent);
        self
    }

    /// Task-set mode: the ALB listener relay routes through. relay weights
    /// the forward action of its default actions that sends to one of the
    /// [target groups](EcsServiceTargetBuilder::target_groups), changing
    /// only those weights: other actions (authentication first, say), their
    /// order, the target-group stickiness and every rule stay as they are.
    pub fn listener(mut self, arn: impl Into<String>) -> Self {
        self.listener_arn = Some(arn.into());
        self
    }

    /// Task-set mode: route through this rule of the
    /// [listener](EcsServiceTargetBuilder::listener) (a host or path rule
    /// in front of the service) instead of its default actions; the rule's
    /// forward action is weighted the same way, nothing else changes.
    pub fn listener_rule(mut self, arn: impl Into<String>) -> Self {
        self.rule_arn = Some(arn.into());
        self
    }

    /// Task-set mode: the two target groups revisions alternate between.
    pub fn target_groups(mut self, a: impl Into<String>, b: impl Into<String>) -> Self {
        self.target_groups = Some([a.into(), b.into()]);
        self
    }

    /// Task-set mode: how many of a revision's tasks may stop with a
    /// failure (an essential container exited, the task failed to start or
    /// failed its load balancer health checks) while the revision is short
    /// of healthy tasks, before it counts as failed (default 3, at least 1):
    /// the engine then rolls back at once with the last task's stopped
    /// reason, instead of waiting out the progress deadline.
    pub fn failed_task_limit(mut self, tasks: u32) -> Self {
        self.failed_task_limit = tasks.max(1);
        self
    }

    /// Task-set mode: the container port the target groups send traffic to.
    pub fn container_port(mut self, port: u16) -> Self {
        self.container_port = Some(i32::from(port));
        self
    }

    /// Task-set mode: the awsvpc network of new task sets.
    pub fn network(
        mut self,
        subnets: impl IntoIterator<Item = impl Into<String>>,
        security_groups: impl IntoIterator<Item = impl Into<String>>,
        assign_public_ip: bool,
    ) -> Self {
        self.subnets = subnets.into_iter().map(Into::into).collect();
        self.security_groups = security_groups.into_iter().map(Into::into).collect();
        self.assign_public_ip = assign_public_ip;
        self
    }

    /// Task-set mode: the launch type of new task sets (default Fargate).
    pub fn launch_type(mut self, launch_type: LaunchType) -> Self {
        self.launch_type = launch_type;
        self
    }

    /// Use this ECS client (interceptors, retry and timeout settings).
    pub fn ecs_client(mut self, client: aws_sdk_ecs::Client) -> Self {
        self.ecs = client;
        self
    }

    /// Use this ELBv2 client.
    pub fn elb_client(mut self, client: aws_sdk_elasticloadbalancingv2::Client) -> Self {
        self.elb = client;
        self
    }

    /// Read the service, choose the mode from its deployment controller and
    /// check the settings that mode needs.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a missing service; [`Error::InvalidSpec`]
    /// naming the builder setting that is missing or out of range;
    /// [`Error::Unsupported`] for the `CODE_DEPLOY` controller.
    pub async fn build(self) -> Result<EcsServiceTarget> {
        let service = describe_service(&self.ecs, self.limiter.as_ref(), &self.cluster, &self.service).await?;
        let arn = service
            .service_arn()
            .and_then(ArnParts::of_service)
            .ok_or_else(|| Error::provider(PROVIDER, false, "DescribeServices answered without a service ARN"))?;
        let controller = service
            .deployment_controller()
            .map(|c| c.r#type().clone())
            .unwrap_or(DeploymentControllerType::Ecs);
        let mode = match controller {
            DeploymentControllerType::Ecs => {
                if !(0..=100).contains(&self.minimum_healthy_percent) || self.maximum_percent < 100 {
                    return Err(Error::invalid(
                        "ecs.rolling_limits",
                        format!(
                            "minimum healthy {}% must be 0..=100 and maximum {}% at least 100",
                            self.minimum_healthy_percent, self.maximum_percent
                        ),
                    ));
                }
                Mode::Rolling(RollingLimits {
                    minimum_healthy_percent: self.minimum_healthy_percent,
                    maximum_percent: self.maximum_percent,
                })
            }
            DeploymentControllerType::External => {
                let missing = |what: &str, fix: &str| {
                    Error::invalid(
                        format!("ecs.{what}"),
                        format!(
                            "service {} uses the EXTERNAL controller (task sets); set {fix}",
                            self.service
                        ),
                    )
                };
                let listener_arn = self.listener_arn.ok_or_else(|| missing("listener", ".listener(arn)"))?;
                let target_groups = self
                    .target_groups
                    .ok_or_else(|| missing("target_groups", ".target_groups(a, b)"))?;
                if target_groups[0] == target_groups[1] {
                    return Err(Error::invalid(
                        "ecs.target_groups",
                        "the two target groups must differ: a revision's traffic is its target group's weight",
                    ));
                }
                let container_port = self
                    .container_port
                    .ok_or_else(|| missing("container_port", ".container_port(port)"))?;
                let container = self
                    .container
                    .clone()
                    .ok_or_else(|| missing("container", ".container(name) (the container behind the target groups)"))?;
                if self.subnets.is_empty() {
                    return Err(missing("network", ".network(subnets, security_groups, public_ip)"));
                }
                Mode::TaskSets(TaskSetConfig {
                    listener_arn,
                    rule_arn: self.rule_arn,
                    target_groups,
                    container,
                    container_port,
                    subnets: self.subnets,
                    security_groups: self.security_groups,
                    assign_public_ip: self.assign_public_ip,
                    launch_type: self.launch_type,
                    failed_task_limit: self.failed_task_limit,
                })
            }
            other => {
                return Err(Error::unsupported(format!(
                    "service {} uses the {} deployment controller; relay drives ECS (rolling) and EXTERNAL (task set) services",
                    self.service,
                    other.as_str()
                )))
            }
        };
        Ok(EcsServiceTarget {
            inner: Arc::new(Inner {
                name: self
                    .name
                    .unwrap_or_else(|| format!("ecs:{}/{}", self.cluster, self.service)),
                ecs: self.ecs,
                elb: self.elb,
                cluster: self.cluster,
                service: self.service,
                container: self.container,
                template_family: self.template_family,
                limiter: self.limiter,
                arn,
                mode,
                revisions: Mutex::new(BTreeMap::new()),
                observed: Mutex::new(None),
            }),
        })
    }
}

impl TaskSetConfig {
    fn assign_public_ip(&self) -> AssignPublicIp {
        if self.assign_public_ip {
            AssignPublicIp::Enabled
        } else {
            AssignPublicIp::Disabled
        }
    }
}

/// The one revision a rolling-mode split sends everything to.
fn sole_revision<'a>(target: &str, split: &'a TrafficSplit) -> Result<&'a RevisionId> {
    match split.weights().iter().find(|(_, w)| **w == 100) {
        Some((id, _)) => Ok(id),
        None => Err(Error::unsupported(format!(
            "ECS service {target} uses the ECS (rolling) controller and cannot split traffic {split}; \
             use an EXTERNAL-controller service with task sets for weights"
        ))),
    }
}

#[async_trait]
impl Target for EcsServiceTarget {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn manual(&self, action: &relay_core::runbook::ManualAction) -> Option<Vec<String>> {
        self.manual_commands(action)
    }

    fn capabilities(&self) -> Capabilities {
        match self.inner.mode {
            Mode::Rolling(_) => Capabilities::new(Routing::None, 1),
            Mode::TaskSets(_) => Capabilities::new(Routing::Weighted, 2),
        }
    }

    #[tracing::instrument(skip_all, fields(target = %self.inner.name))]
    async fn observe(&self) -> Result<TargetState> {
        match &self.inner.mode {
            Mode::Rolling(_) => self.rolling_observe().await,
            Mode::TaskSets(c) => self.task_sets_observe(c).await,
        }
    }

    #[tracing::instrument(skip_all, fields(target = %self.inner.name, revision = %revision.id, replicas))]
    async fn stage(&self, revision: &RevisionSpec, replicas: u32) -> Result<()> {
        match &self.inner.mode {
            Mode::Rolling(l) => self.rolling_stage(*l, revision, replicas).await,
            Mode::TaskSets(c) => self.task_sets_stage(c, revision, replicas).await,
        }
    }

    #[tracing::instrument(skip_all, fields(target = %self.inner.name, %revision, replicas))]
    async fn scale(&self, revision: &RevisionId, replicas: u32) -> Result<()> {
        match &self.inner.mode {
            Mode::Rolling(_) => self.rolling_scale(revision, replicas).await,
            Mode::TaskSets(_) => self.task_sets_scale(revision, replicas).await,
        }
    }

    #[tracing::instrument(skip_all, fields(target = %self.inner.name, %split))]
    async fn route(&self, split: &TrafficSplit) -> Result<()> {
        match &self.inner.mode {
            Mode::Rolling(_) => self.rolling_route(sole_revision(&self.inner.name, split)?).await,
            Mode::TaskSets(c) => self.task_sets_route(c, split).await,
        }
    }

    #[tracing::instrument(skip_all, fields(target = %self.inner.name, %revision))]
    async fn promote(&self, revision: &RevisionId) -> Result<()> {
        match &self.inner.mode {
            Mode::Rolling(_) => self.rolling_promote(revision).await,
            Mode::TaskSets(_) => self.task_sets_promote(revision).await,
        }
    }

    #[tracing::instrument(skip_all, fields(target = %self.inner.name, %revision))]
    async fn retire(&self, revision: &RevisionId) -> Result<()> {
        match &self.inner.mode {
            Mode::Rolling(_) => self.rolling_retire(revision).await,
            Mode::TaskSets(c) => self.task_sets_retire(c, revision).await,
        }
    }
}

/// A replica count as ECS takes it.
fn count(replicas: u32) -> Result<i32> {
    i32::try_from(replicas).map_err(|_| Error::invalid("release.replicas", format!("{replicas} is too large for ECS")))
}

/// A count ECS reported, as relay's.
fn replicas(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}
