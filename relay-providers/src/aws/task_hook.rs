//! A hook that runs an ECS task to its end: a smoke test, a migration.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, ContainerOverride, KeyValuePair, LaunchType, NetworkConfiguration, Task,
    TaskOverride,
};
use aws_sdk_ecs::Client;
use relay_core::hook::{Hook, HookContext, HookRun};
use relay_core::{Error, Result};
use sha2::{Digest as _, Sha256};

use super::error::classify;

const PROVIDER: &str = "ecs";

/// A [`Hook`] that runs a task of an ECS task definition (`RunTask`),
/// waits until it stopped, and passes when its essential container exited
/// 0: the logs reference is the task's ARN (its container's logs are where
/// the task definition sends them).
///
/// The task is told the rollout in its essential container's environment
/// ([`HookContext::environment`]). It is
/// started by `relay-<hash of the hook's key and attempt>`: a run of the
/// same attempt again (an engine that resumed the rollout) waits for the
/// task already started rather than start a second. A task of the attempt
/// before that still runs (the hook spec's timeout ended that attempt) is
/// stopped when the next attempt starts.
///
/// `Debug` shows the cluster and task definition.
#[derive(Clone)]
pub struct EcsTaskHook {
    name: String,
    ecs: Client,
    cluster: String,
    task_definition: String,
    launch_type: LaunchType,
    network: Option<NetworkConfiguration>,
    poll: Duration,
}

impl fmt::Debug for EcsTaskHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcsTaskHook")
            .field("name", &self.name)
            .field("cluster", &self.cluster)
            .field("task_definition", &self.task_definition)
            .finish()
    }
}

impl EcsTaskHook {
    /// A hook called `name` that runs `task_definition` (family, or
    /// `family:revision`, or an ARN) in `cluster` on Fargate, with
    /// `config`'s credentials and region.
    pub fn new(
        config: &aws_config::SdkConfig,
        name: impl Into<String>,
        cluster: impl Into<String>,
        task_definition: impl Into<String>,
    ) -> Self {
        EcsTaskHook {
            name: name.into(),
            ecs: Client::new(config),
            cluster: cluster.into(),
            task_definition: task_definition.into(),
            launch_type: LaunchType::Fargate,
            network: None,
            poll: Duration::from_secs(5),
        }
    }

    /// The task's network (`awsvpc`: Fargate needs one).
    pub fn network(
        mut self,
        subnets: impl IntoIterator<Item = String>,
        security_groups: impl IntoIterator<Item = String>,
        assign_public_ip: bool,
    ) -> Self {
        let vpc = AwsVpcConfiguration::builder()
            .set_subnets(Some(subnets.into_iter().collect()))
            .set_security_groups(Some(security_groups.into_iter().collect()))
            .assign_public_ip(if assign_public_ip {
                AssignPublicIp::Enabled
            } else {
                AssignPublicIp::Disabled
            })
            .build();
        // Only fails without subnets, which ECS refuses naming them.
        self.network = vpc
            .ok()
            .map(|vpc| NetworkConfiguration::builder().awsvpc_configuration(vpc).build());
        self
    }

    /// Launch type (default Fargate).
    pub fn launch_type(mut self, launch_type: LaunchType) -> Self {
        self.launch_type = launch_type;
        self
    }

    /// How often the task is looked at while it runs (default 5 s).
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Use this ECS client.
    pub fn ecs_client(mut self, client: Client) -> Self {
        self.ecs = client;
        self
    }

    /// The essential container of the task definition: the one whose exit
    /// code decides, and whose environment tells the task the rollout.
    async fn essential_container(&self) -> Result<String> {
        let out = self
            .ecs
            .describe_task_definition()
            .task_definition(&self.task_definition)
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &format!("DescribeTaskDefinition {}", self.task_definition), e))?;
        let containers = out
            .task_definition()
            .map(|t| t.container_definitions())
            .unwrap_or_default();
        containers
            .iter()
            .find(|c| c.essential().unwrap_or(true))
            .and_then(|c| c.name())
            .map(str::to_owned)
            .ok_or_else(|| {
                Error::invalid(
                    "hook.task_definition",
                    format!("task definition {} has no essential container", self.task_definition),
                )
            })
    }

    /// The task this attempt started, if an engine started it already.
    async fn started(&self, started_by: &str) -> Result<Option<String>> {
        for status in [
            aws_sdk_ecs::types::DesiredStatus::Running,
            aws_sdk_ecs::types::DesiredStatus::Stopped,
        ] {
            let out = self
                .ecs
                .list_tasks()
                .cluster(&self.cluster)
                .started_by(started_by)
                .desired_status(status)
                .send()
                .await
                .map_err(|e| classify(PROVIDER, &format!("ListTasks startedBy {started_by}"), e))?;
            if let Some(arn) = out.task_arns().first() {
                return Ok(Some(arn.clone()));
            }
        }
        Ok(None)
    }

    async fn describe(&self, arn: &str) -> Result<Option<Task>> {
        let out = self
            .ecs
            .describe_tasks()
            .cluster(&self.cluster)
            .tasks(arn)
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &format!("DescribeTasks {arn}"), e))?;
        Ok(out.tasks().first().cloned())
    }
}

/// Who starts the task of `attempt` of the hook's run: `relay-<hash>`
/// (`startedBy` takes 36 characters).
fn started_by(ctx: &HookContext, attempt: u32) -> String {
    let hash = Sha256::digest(format!("{}#{attempt}", ctx.key).as_bytes());
    format!("relay-{}", &hex::encode(hash)[..24])
}

impl EcsTaskHook {
    /// Stop the task `attempt` started, if it still runs (that attempt
    /// timed out).
    async fn stop_attempt(&self, ctx: &HookContext, attempt: u32) -> Result<()> {
        let by = started_by(ctx, attempt);
        let out = self
            .ecs
            .list_tasks()
            .cluster(&self.cluster)
            .started_by(&by)
            .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &format!("ListTasks startedBy {by}"), e))?;
        for arn in out.task_arns() {
            self.ecs
                .stop_task()
                .cluster(&self.cluster)
                .task(arn)
                .reason(format!("relay: hook {} attempt {attempt} ended without it", self.name))
                .send()
                .await
                .map_err(|e| classify(PROVIDER, &format!("StopTask {arn}"), e))?;
        }
        Ok(())
    }
}

/// How a stopped task ended, judged by `container`'s exit code.
fn judged(task: &Task, container: &str) -> HookRun {
    let arn = task.task_arn().unwrap_or_default().to_owned();
    let reason = task.stopped_reason().unwrap_or("no reason given");
    let exit = task
        .containers()
        .iter()
        .find(|c| c.name() == Some(container))
        .and_then(|c| c.exit_code());
    match exit {
        Some(0) => HookRun::passed(format!("container {container} exited 0")),
        Some(code) => HookRun::failed(format!("container {container} exited {code}: {reason}")),
        None => HookRun::failed(format!(
            "the task stopped without an exit code from {container}: {reason}"
        )),
    }
    .logs(arn)
}

#[async_trait]
impl Hook for EcsTaskHook {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, ctx: &HookContext) -> Result<HookRun> {
        let container = self.essential_container().await?;
        if ctx.attempt > 1 {
            self.stop_attempt(ctx, ctx.attempt - 1).await?;
        }
        let started_by = started_by(ctx, ctx.attempt);
        let arn = match self.started(&started_by).await? {
            Some(arn) => arn,
            None => {
                let env = |name: &str, value: String| KeyValuePair::builder().name(name).value(value).build();
                let overrides = TaskOverride::builder()
                    .container_overrides(
                        ContainerOverride::builder()
                            .name(&container)
                            .set_environment(Some(ctx.environment().into_iter().map(|(k, v)| env(k, v)).collect()))
                            .build(),
                    )
                    .build();
                let out = self
                    .ecs
                    .run_task()
                    .cluster(&self.cluster)
                    .task_definition(&self.task_definition)
                    .launch_type(self.launch_type.clone())
                    .set_network_configuration(self.network.clone())
                    .started_by(&started_by)
                    .overrides(overrides)
                    .send()
                    .await
                    .map_err(|e| classify(PROVIDER, &format!("RunTask {}", self.task_definition), e))?;
                if let Some(failure) = out.failures().first() {
                    return Ok(HookRun::failed(format!(
                        "the task did not start: {}",
                        failure.reason().unwrap_or("no reason given")
                    )));
                }
                out.tasks()
                    .first()
                    .and_then(|t| t.task_arn())
                    .map(str::to_owned)
                    .ok_or_else(|| Error::provider(PROVIDER, true, "RunTask started no task"))?
            }
        };
        loop {
            if let Some(task) = self.describe(&arn).await? {
                if task.last_status() == Some("STOPPED") {
                    return Ok(judged(&task, &container));
                }
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::types::Container;

    fn task(exit: Option<i32>) -> Task {
        Task::builder()
            .task_arn("arn:aws:ecs:eu-west-1:1:task/c/t1")
            .last_status("STOPPED")
            .stopped_reason("Essential container in task exited")
            .containers(Container::builder().name("smoke").set_exit_code(exit).build())
            .containers(Container::builder().name("sidecar").exit_code(0).build())
            .build()
    }

    #[test]
    fn the_essential_containers_exit_code_decides() {
        let ok = judged(&task(Some(0)), "smoke");
        assert!(ok.passed);
        assert_eq!(ok.logs.as_deref(), Some("arn:aws:ecs:eu-west-1:1:task/c/t1"));
        let failed = judged(&task(Some(3)), "smoke");
        assert!(!failed.passed);
        assert_eq!(
            failed.message,
            "container smoke exited 3: Essential container in task exited"
        );
        let lost = judged(&task(None), "smoke");
        assert!(
            !lost.passed && lost.message.contains("without an exit code"),
            "{}",
            lost.message
        );
    }
}
