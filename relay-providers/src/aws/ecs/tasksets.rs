//! Task-set mode (the `EXTERNAL` controller): one task set per revision,
//! each behind its own target group, weighted at the ALB listener.

use std::collections::BTreeMap;

use aws_sdk_ecs::types::{
    AwsVpcConfiguration, DesiredStatus, LoadBalancer, NetworkConfiguration, Scale, ScaleUnit, Service, Task, TaskSet,
    TaskStopCode,
};
use aws_sdk_elasticloadbalancingv2::types::TargetHealthStateEnum;
use relay_core::{Error, Result, RevisionId, RevisionSpec, RevisionState, TargetState, TrafficSplit};

use super::listener::split_of;
use super::{count, replicas, EcsServiceTarget, TaskSetConfig, PROVIDER};
use crate::aws::error::classify;

/// A task set that has not been retired, with its revision and target group.
struct Set<'a> {
    ts: &'a TaskSet,
    id: RevisionId,
}

impl<'a> Set<'a> {
    fn arn(&self) -> &'a str {
        self.ts.task_set_arn().unwrap_or_default()
    }

    fn target_group(&self) -> Option<&'a str> {
        self.ts.load_balancers().iter().find_map(|lb| lb.target_group_arn())
    }

    fn is_primary(&self) -> bool {
        self.ts.status() == Some("PRIMARY")
    }

    /// Tasks asked for: the scale percent of the service's desired count,
    /// rounded up, as ECS computes it.
    fn desired(&self, service_desired: i32) -> u32 {
        match self.ts.scale().filter(|s| s.unit() == Some(&ScaleUnit::Percent)) {
            Some(s) => {
                let tasks = f64::from(service_desired) * s.value() / 100.0;
                (tasks - 1e-9).ceil().max(0.0) as u32
            }
            None => replicas(self.ts.computed_desired_count()),
        }
    }

    fn percent(&self) -> Option<f64> {
        self.ts.scale().map(Scale::value)
    }
}

fn sets(service: &Service) -> Vec<Set<'_>> {
    service
        .task_sets()
        .iter()
        .filter(|ts| ts.status() != Some("DRAINING"))
        .map(|ts| Set {
            ts,
            id: RevisionId(match ts.external_id() {
                Some(id) if !id.is_empty() => id.to_owned(),
                // A task set created outside relay.
                _ => format!("taskset:{}", ts.id().unwrap_or("?")),
            }),
        })
        .collect()
}

fn find<'a>(service: &'a Service, id: &RevisionId) -> Option<Set<'a>> {
    sets(service).into_iter().find(|s| &s.id == id)
}

/// Whether `service` has a task set for revision `id`.
pub(super) fn runs(service: &Service, id: &RevisionId) -> bool {
    find(service, id).is_some()
}

/// Whether a stopped task failed: ECS's stop code says so (an essential
/// container exited, the task could not start), or, where it names none or
/// the scheduler stopped the task, the reason does (failed health checks).
fn failed(task: &Task) -> bool {
    match task.stop_code() {
        Some(TaskStopCode::EssentialContainerExited | TaskStopCode::TaskFailedToStart) => true,
        Some(TaskStopCode::UserInitiated | TaskStopCode::SpotInterruption | TaskStopCode::TerminationNotice) => false,
        _ => task.stopped_reason().is_some_and(|r| {
            const FAILURES: [&str; 5] = [
                "Essential container in task exited",
                "failed ELB health checks",
                "failed container health checks",
                "CannotPullContainerError",
                "ResourceInitializationError",
            ];
            FAILURES.iter().any(|f| r.contains(f))
        }),
    }
}

/// A stopped task's reason, with its essential containers' exit codes and
/// reasons (an out-of-memory kill, say), cut to a line.
fn stopped_reason(task: &Task) -> String {
    let mut why = task.stopped_reason().unwrap_or("no reason given").to_owned();
    for c in task.containers() {
        let code = c.exit_code().map(|code| format!("exit code {code}"));
        let detail: Vec<String> = code.into_iter().chain(c.reason().map(str::to_owned)).collect();
        if !detail.is_empty() {
            why.push_str(&format!(
                "; container {}: {}",
                c.name().unwrap_or("?"),
                detail.join(", ")
            ));
        }
    }
    why.chars().filter(|c| !c.is_control()).take(400).collect()
}

/// `n` tasks as a percent of `of`.
fn percent(n: u32, of: i32) -> f64 {
    if of <= 0 {
        return 0.0;
    }
    (f64::from(n) * 100.0 / f64::from(of)).min(100.0)
}

impl EcsServiceTarget {
    /// The target group ARN `revision`'s task set is behind, in task-set
    /// mode; `None` in rolling mode or when the revision has no task set.
    ///
    /// # Errors
    /// Those of `DescribeServices`.
    pub async fn target_group_of(&self, revision: &RevisionId) -> Result<Option<String>> {
        if !matches!(self.inner.mode, super::Mode::TaskSets(_)) {
            return Ok(None);
        }
        let service = self.describe_service().await?;
        Ok(find(&service, revision).and_then(|s| s.target_group().map(str::to_owned)))
    }

    pub(super) async fn task_sets_observe(&self, c: &TaskSetConfig) -> Result<TargetState> {
        let service = self.describe_service().await?;
        self.observed(Some(&service));
        let weights = self.listener_weights(c).await?;
        let sets = sets(&service);
        let mut revisions = Vec::with_capacity(sets.len());
        for s in &sets {
            let desired = s.desired(service.desired_count());
            // A task serves once its target passes the target group's
            // health checks; a set without a group counts running tasks.
            let ready = match s.target_group() {
                Some(tg) if desired > 0 => self.healthy_targets(tg).await?,
                Some(_) => 0,
                None => replicas(s.ts.running_count()),
            };
            let (failed, failure) = if ready < desired {
                self.failed_tasks(s, c.failed_task_limit).await?
            } else {
                (0, None)
            };
            revisions.push(RevisionState {
                id: s.id.clone(),
                desired,
                ready,
                failed,
                failure,
                autoscaled: false,
            });
        }
        let by_group: Vec<(RevisionId, u32)> = sets
            .iter()
            .filter_map(|s| {
                let w = weights.get(s.target_group()?)?;
                Some((s.id.clone(), *w))
            })
            .collect();
        Ok(TargetState {
            stable: sets.iter().find(|s| s.is_primary()).map(|s| s.id.clone()),
            revisions,
            traffic: split_of(&by_group)?,
        })
    }

    /// Targets of `tg` that pass its health checks.
    async fn healthy_targets(&self, tg: &str) -> Result<u32> {
        self.limit().await;
        let out = self
            .inner
            .elb
            .describe_target_health()
            .target_group_arn(tg)
            .send()
            .await
            .map_err(|e| classify("elbv2", &format!("DescribeTargetHealth {tg}"), e))?;
        let healthy = out
            .target_health_descriptions()
            .iter()
            .filter(|d| d.target_health().and_then(|h| h.state()) == Some(&TargetHealthStateEnum::Healthy))
            .count();
        Ok(u32::try_from(healthy).unwrap_or(u32::MAX))
    }

    /// The set's tasks that stopped with a failure, once there are at least
    /// `limit` of them, with the latest one's stopped reason (ECS keeps
    /// stopped tasks for about an hour). ECS starts a task set's tasks with
    /// `startedBy` set to the set's id (`ecs-svc/…`, the deployment id of
    /// the tasks it starts), which is how they are found. A task stopped by
    /// a scale-in or by a user is no failure.
    async fn failed_tasks(&self, set: &Set<'_>, limit: u32) -> Result<(u32, Option<String>)> {
        let Some(started_by) = set.ts.id() else {
            return Ok((0, None));
        };
        self.limit().await;
        let listed = self
            .inner
            .ecs
            .list_tasks()
            .cluster(&self.inner.cluster)
            .started_by(started_by)
            .desired_status(DesiredStatus::Stopped)
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &format!("ListTasks startedBy {started_by}"), e))?;
        if listed.task_arns().is_empty() {
            return Ok((0, None));
        }
        self.limit().await;
        let described = self
            .inner
            .ecs
            .describe_tasks()
            .cluster(&self.inner.cluster)
            .set_tasks(Some(listed.task_arns().to_vec()))
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &format!("DescribeTasks of {}", set.id), e))?;
        let mut failures: Vec<&Task> = described.tasks().iter().filter(|t| failed(t)).collect();
        let n = u32::try_from(failures.len()).unwrap_or(u32::MAX);
        if n < limit {
            return Ok((0, None));
        }
        failures.sort_by_key(|t| t.stopped_at().map(|d| (d.secs(), d.subsec_nanos())));
        let last = failures.last().map(|t| stopped_reason(t));
        Ok((n, last.map(|why| format!("{n} tasks stopped; the last: {why}"))))
    }

    async fn update_task_set(&self, set: &Set<'_>, pct: f64) -> Result<()> {
        let scale = Scale::builder().unit(ScaleUnit::Percent).value(pct).build();
        self.observed(None);
        self.limit().await;
        self.inner
            .ecs
            .update_task_set()
            .cluster(&self.inner.cluster)
            .service(&self.inner.service)
            .task_set(set.arn())
            .scale(scale)
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &format!("UpdateTaskSet {}", set.id), e))?;
        Ok(())
    }

    /// Task-set scales are percents of the service's desired count: raise it
    /// to `n` when a revision needs more, keeping every other set's task
    /// count. Returns the desired count to scale against.
    async fn ensure_capacity(&self, service: &Service, n: u32, except: Option<&RevisionId>) -> Result<i32> {
        let before = service.desired_count();
        let needed = count(n)?;
        if needed <= before {
            return Ok(before);
        }
        self.update_service(None, Some(needed), None).await?;
        for set in sets(service).iter().filter(|s| Some(&s.id) != except) {
            let tasks = set.desired(before);
            self.update_task_set(set, percent(tasks, needed)).await?;
        }
        Ok(needed)
    }

    pub(super) async fn task_sets_stage(&self, c: &TaskSetConfig, spec: &RevisionSpec, n: u32) -> Result<()> {
        let service = self.describe_service().await?;
        if let Some(set) = find(&service, &spec.id) {
            return self.scale_set(&service, &set, n).await;
        }
        let existing = sets(&service);
        let used: Vec<&str> = existing.iter().filter_map(Set::target_group).collect();
        let free = c
            .target_groups
            .iter()
            .find(|tg| !used.contains(&tg.as_str()))
            .ok_or_else(|| Error::Conflict {
                what: format!(
                    "ECS service {} already runs task sets on both target groups; retire one first",
                    self.inner.service
                ),
            })?;
        let current = existing
            .iter()
            .find(|s| s.is_primary())
            .and_then(|s| s.ts.task_definition())
            .or(service.task_definition());
        let task_definition = match self.cached_arn(&spec.id) {
            Some(arn) => arn,
            None => self.register(spec, current).await?,
        };
        let desired = self.ensure_capacity(&service, n, None).await?;
        let network = NetworkConfiguration::builder()
            .awsvpc_configuration(
                AwsVpcConfiguration::builder()
                    .set_subnets(Some(c.subnets.clone()))
                    .set_security_groups(Some(c.security_groups.clone()))
                    .assign_public_ip(c.assign_public_ip())
                    .build()
                    .map_err(|e| Error::invalid("ecs.network", e.to_string()))?,
            )
            .build();
        let load_balancer = LoadBalancer::builder()
            .target_group_arn(free)
            .container_name(&c.container)
            .container_port(c.container_port)
            .build();
        self.observed(None);
        self.limit().await;
        self.inner
            .ecs
            .create_task_set()
            .cluster(&self.inner.cluster)
            .service(&self.inner.service)
            .task_definition(&task_definition)
            .external_id(spec.id.as_str())
            .load_balancers(load_balancer)
            .network_configuration(network)
            .launch_type(c.launch_type.clone())
            .scale(
                Scale::builder()
                    .unit(ScaleUnit::Percent)
                    .value(percent(n, desired))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &format!("CreateTaskSet {}", spec.id), e))?;
        Ok(())
    }

    async fn scale_set(&self, service: &Service, set: &Set<'_>, n: u32) -> Result<()> {
        let desired = self.ensure_capacity(service, n, Some(&set.id)).await?;
        let pct = percent(n, desired);
        if set.percent().is_some_and(|p| (p - pct).abs() < 1e-9) && desired == service.desired_count() {
            return Ok(());
        }
        self.update_task_set(set, pct).await
    }

    pub(super) async fn task_sets_scale(&self, id: &RevisionId, n: u32) -> Result<()> {
        let service = self.describe_service().await?;
        let set = find(&service, id).ok_or_else(|| self.no_task_set(id))?;
        self.scale_set(&service, &set, n).await
    }

    fn no_task_set(&self, id: &RevisionId) -> Error {
        Error::NotFound {
            what: format!("task set for revision {id} on ECS service {}", self.inner.service),
        }
    }

    pub(super) async fn task_sets_route(&self, c: &TaskSetConfig, split: &TrafficSplit) -> Result<()> {
        if split.is_empty() {
            return Err(Error::invalid("traffic", "a split must send traffic somewhere"));
        }
        let service = self.recent_service(split.weights().keys()).await?;
        let mut by_group: BTreeMap<&str, u8> = BTreeMap::new();
        for (id, w) in split.weights() {
            let set = find(&service, id).ok_or_else(|| self.no_task_set(id))?;
            let tg = set.target_group().ok_or_else(|| {
                Error::provider(
                    PROVIDER,
                    false,
                    format!("the task set of {id} has no target group, so it cannot take traffic"),
                )
            })?;
            let tg = c
                .target_groups
                .iter()
                .find(|g| g.as_str() == tg)
                .ok_or_else(|| Error::Conflict {
                    what: format!(
                        "the task set of {id} is behind {tg}, which is not one of this target's target groups"
                    ),
                })?;
            by_group.insert(tg.as_str(), *w);
        }
        self.set_listener_weights(c, &by_group).await
    }

    pub(super) async fn task_sets_promote(&self, id: &RevisionId) -> Result<()> {
        let service = self.recent_service([id]).await?;
        let set = find(&service, id).ok_or_else(|| self.no_task_set(id))?;
        if set.is_primary() {
            return Ok(());
        }
        self.observed(None);
        self.limit().await;
        self.inner
            .ecs
            .update_service_primary_task_set()
            .cluster(&self.inner.cluster)
            .service(&self.inner.service)
            .primary_task_set(set.arn())
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &format!("UpdateServicePrimaryTaskSet {id}"), e))?;
        Ok(())
    }

    pub(super) async fn task_sets_retire(&self, c: &TaskSetConfig, id: &RevisionId) -> Result<()> {
        let service = self.describe_service().await?;
        let Some(set) = find(&service, id) else {
            return Ok(());
        };
        if set.is_primary() {
            return Err(Error::Conflict {
                what: format!("revision {id} is the primary task set; promote another revision first"),
            });
        }
        // Traffic is routed away first while another task set could take
        // it; the only one goes with its traffic (a first release rolled
        // back: the listener is left forwarding to its empty group, as it
        // did before the release).
        if sets(&service).len() > 1 {
            let weights = self.listener_weights(c).await?;
            if let Some(w) = set.target_group().and_then(|tg| weights.get(tg)).filter(|w| **w > 0) {
                return Err(Error::Conflict {
                    what: format!(
                        "revision {id} still receives traffic (listener weight {w} of {}); route it away first",
                        weights.values().sum::<u32>()
                    ),
                });
            }
        }
        self.observed(None);
        self.limit().await;
        self.inner
            .ecs
            .delete_task_set()
            .cluster(&self.inner.cluster)
            .service(&self.inner.service)
            .task_set(set.arn())
            // Traffic is already away (or there is nowhere else for it);
            // the tasks may go with the set.
            .force(true)
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &format!("DeleteTaskSet {id}"), e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pct: f64) -> TaskSet {
        TaskSet::builder()
            .external_id("rev-a")
            .scale(Scale::builder().unit(ScaleUnit::Percent).value(pct).build())
            .build()
    }

    #[test]
    fn a_stopped_task_fails_on_its_stop_code_or_reason_but_not_when_scaled_in() {
        use aws_sdk_ecs::types::Container;
        let task = |code: Option<TaskStopCode>, reason: &str| {
            Task::builder()
                .set_stop_code(code)
                .stopped_reason(reason)
                .containers(
                    Container::builder()
                        .name("web")
                        .exit_code(137)
                        .reason("OutOfMemoryError")
                        .build(),
                )
                .build()
        };
        let exited = task(
            Some(TaskStopCode::EssentialContainerExited),
            "Essential container in task exited",
        );
        assert!(failed(&exited));
        assert_eq!(
            stopped_reason(&exited),
            "Essential container in task exited; container web: exit code 137, OutOfMemoryError"
        );
        assert!(failed(&task(
            Some(TaskStopCode::TaskFailedToStart),
            "CannotPullContainerError: x"
        )));
        assert!(failed(&task(
            Some(TaskStopCode::ServiceSchedulerInitiated),
            "Task failed ELB health checks in (target-group arn:aws:...)"
        )));
        assert!(!failed(&task(
            Some(TaskStopCode::ServiceSchedulerInitiated),
            "Scaling activity initiated by (deployment ecs-svc/1)"
        )));
        assert!(!failed(&task(
            Some(TaskStopCode::UserInitiated),
            "Essential container in task exited"
        )));
        assert!(
            failed(&task(None, "Essential container in task exited")),
            "no stop code: the reason decides"
        );
        assert!(!failed(&task(None, "stopped by hand")));
    }

    #[test]
    fn task_counts_round_up_from_the_scale_percent_as_ecs_does() {
        let svc = Service::builder()
            .desired_count(3)
            .task_sets(set(percent(2, 3)))
            .build();
        let s = &sets(&svc)[0];
        assert_eq!(s.id, RevisionId::from("rev-a"));
        assert_eq!(s.desired(3), 2, "66.67% of 3 is 2 tasks");
        assert_eq!(s.desired(4), 3, "66.67% of 4 rounds up to 3");
        assert_eq!(percent(5, 2), 100.0, "a scale is at most 100%");
        assert_eq!(percent(1, 0), 0.0);
    }
}
