//! The `aws` commands that take a runbook's actions by hand.

use relay_core::runbook::ManualAction;
use relay_core::{RevisionId, Role};

use super::rolling::STABLE_TAG;
use super::taskdef::REVISION_TAG;
use super::{EcsServiceTarget, Mode, TaskSetConfig};

impl EcsServiceTarget {
    /// The commands for `action` in this service's mode, with its cluster,
    /// service, listener and target groups.
    pub(super) fn manual_commands(&self, action: &ManualAction) -> Option<Vec<String>> {
        let (cluster, service) = (&self.inner.cluster, &self.inner.service);
        let ecs = |args: String| format!("aws ecs {args} --cluster {cluster} --service {service}");
        let describe = |query: &str| {
            format!(
                "aws ecs describe-services --cluster {cluster} --services {service} --query \"{query}\" --output text"
            )
        };
        let service_arn = describe("services[0].serviceArn");
        // The task definition of a revision: one relay registered carries
        // the revision's tag; one registered by hand is named by its id
        // (`family:revision`).
        let task_definition = |rev: &RevisionId| {
            if rev.as_str().starts_with("rev-") {
                format!(
                    "$(aws resourcegroupstaggingapi get-resources --resource-type-filters ecs:task-definition \
                     --tag-filters Key={REVISION_TAG},Values={rev} --query 'ResourceTagMappingList[0].ResourceARN' --output text)"
                )
            } else {
                rev.to_string()
            }
        };
        let c = match (&self.inner.mode, action) {
            (Mode::Rolling(_), ManualAction::Observe) => vec![format!(
                "aws ecs describe-services --cluster {cluster} --services {service} --query 'services[0].deployments[].{{status:status,taskDefinition:taskDefinition,running:runningCount,desired:desiredCount,rollout:rolloutState}}' --output table"
            )],
            (Mode::Rolling(_), ManualAction::Scale { replicas, .. }) => vec![format!(
                "aws ecs update-service --cluster {cluster} --service {service} --desired-count {replicas}"
            )],
            (Mode::Rolling(_), ManualAction::Route { .. }) => return None,
            // Before a promotion the service's tag names the stable task
            // definition; after it, the revision's own tag finds it.
            (Mode::Rolling(_), ManualAction::Retire { role: Role::Candidate, .. }) => vec![
                format!("STABLE_TASK_DEFINITION=$(aws ecs list-tags-for-resource --resource-arn \"$({service_arn})\" --query \"tags[?key=='{STABLE_TAG}'].value | [0]\" --output text)"),
                format!("aws ecs update-service --cluster {cluster} --service {service} --task-definition \"$STABLE_TASK_DEFINITION\""),
                format!("aws ecs wait services-stable --cluster {cluster} --services {service}"),
            ],
            (Mode::Rolling(_), ManualAction::Retire { role: Role::Stable, .. }) => return None,
            (Mode::Rolling(_), ManualAction::Promote { revision, role }) => {
                let mut c = vec![format!("TASK_DEFINITION={}", task_definition(revision))];
                if *role == Role::Stable {
                    c.push(format!(
                        "aws ecs update-service --cluster {cluster} --service {service} --task-definition \"$TASK_DEFINITION\""
                    ));
                    c.push(format!("aws ecs wait services-stable --cluster {cluster} --services {service}"));
                }
                c.push(format!(
                    "aws ecs tag-resource --resource-arn \"$({service_arn})\" --tags key={STABLE_TAG},value=\"$TASK_DEFINITION\""
                ));
                c
            }
            (Mode::TaskSets(ts), action) => self.task_set_commands(ts, action, &ecs, &describe)?,
            _ => return None,
        };
        Some(c)
    }

    fn task_set_commands(
        &self,
        ts: &TaskSetConfig,
        action: &ManualAction,
        ecs: &dyn Fn(String) -> String,
        describe: &dyn Fn(&str) -> String,
    ) -> Option<Vec<String>> {
        let (cluster, service) = (&self.inner.cluster, &self.inner.service);
        let task_set = |rev: &RevisionId| describe(&format!("services[0].taskSets[?externalId=='{rev}'].id | [0]"));
        let target_group = |rev: &RevisionId| {
            describe(&format!(
                "services[0].taskSets[?externalId=='{rev}'].loadBalancers[0].targetGroupArn | [0]"
            ))
        };
        Some(match action {
            ManualAction::Observe => {
                let mut c = vec![format!(
                    "aws ecs describe-services --cluster {cluster} --services {service} --query 'services[0].taskSets[].{{id:id,revision:externalId,status:status,running:runningCount,scale:scale.value,targetGroup:loadBalancers[0].targetGroupArn}}' --output table"
                )];
                c.push(match &ts.rule_arn {
                    Some(rule) => format!("aws elbv2 describe-rules --rule-arns {rule} --query 'Rules[0].Actions'"),
                    None => format!(
                        "aws elbv2 describe-listeners --listener-arns {} --query 'Listeners[0].DefaultActions'",
                        ts.listener_arn
                    ),
                });
                for tg in &ts.target_groups {
                    c.push(format!("aws elbv2 describe-target-health --target-group-arn {tg}"));
                }
                c
            }
            // Task sets are sized in percent of the service's desired count.
            ManualAction::Scale { revision, replicas, .. } => vec![
                format!("DESIRED=$({})", describe("services[0].desiredCount")),
                format!("[ \"$DESIRED\" -ge {replicas} ] || aws ecs update-service --cluster {cluster} --service {service} --desired-count {replicas}"),
                ecs(format!(
                    "update-task-set --task-set \"$({})\" --scale value=$(( 100 * {replicas} / ($DESIRED > {replicas} ? $DESIRED : {replicas}) )),unit=PERCENT",
                    task_set(revision)
                )),
            ],
            ManualAction::Route {
                stable,
                candidate,
                candidate_weight: w,
                ..
            } => {
                let mut c = vec![format!("CANDIDATE_TG=$({})", target_group(candidate))];
                let mut groups = format!("{{\\\"TargetGroupArn\\\":\\\"$CANDIDATE_TG\\\",\\\"Weight\\\":{w}}}");
                if let Some(stable) = stable {
                    c.push(format!("STABLE_TG=$({})", target_group(stable)));
                    groups = format!(
                        "{{\\\"TargetGroupArn\\\":\\\"$STABLE_TG\\\",\\\"Weight\\\":{}}},{groups}",
                        100 - u32::from(*w)
                    );
                }
                let actions = format!("\"[{{\\\"Type\\\":\\\"forward\\\",\\\"ForwardConfig\\\":{{\\\"TargetGroups\\\":[{groups}]}}}}]\"");
                match &ts.rule_arn {
                    Some(rule) => c.push(format!("aws elbv2 modify-rule --rule-arn {rule} --actions {actions}")),
                    None => {
                        c.push("# replaces the listener's default actions: keep any other action it had".to_owned());
                        c.push(format!(
                            "aws elbv2 modify-listener --listener-arn {} --default-actions {actions}",
                            ts.listener_arn
                        ));
                    }
                }
                c
            }
            ManualAction::Promote { revision, .. } => vec![format!(
                "aws ecs update-service-primary-task-set --cluster {cluster} --service {service} --primary-task-set \"$({})\"",
                task_set(revision)
            )],
            ManualAction::Retire { revision, .. } => {
                vec![ecs(format!("delete-task-set --task-set \"$({})\" --force", task_set(revision)))]
            }
            _ => return None,
        })
    }
}
