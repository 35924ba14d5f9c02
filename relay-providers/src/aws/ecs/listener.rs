//! Traffic in task-set mode: the weights of one forward action of an ALB
//! listener (its default actions, or one of its rules'), changed in place.

use std::collections::BTreeMap;

use aws_sdk_elasticloadbalancingv2::types::{Action, ActionTypeEnum, ForwardActionConfig, TargetGroupTuple};
use relay_core::{Error, Result, RevisionId, TrafficSplit};

use super::{EcsServiceTarget, TaskSetConfig};
use crate::aws::error::classify;

const ELB: &str = "elbv2";

impl EcsServiceTarget {
    /// The actions relay routes with: the listener's default actions, or
    /// the configured rule's.
    async fn routing_actions(&self, c: &TaskSetConfig) -> Result<Vec<Action>> {
        self.limit().await;
        match &c.rule_arn {
            None => {
                let out = self
                    .inner
                    .elb
                    .describe_listeners()
                    .listener_arns(&c.listener_arn)
                    .send()
                    .await
                    .map_err(|e| classify(ELB, &format!("DescribeListeners {}", c.listener_arn), e))?;
                let listener = out.listeners().first().ok_or_else(|| Error::NotFound {
                    what: format!("listener {}", c.listener_arn),
                })?;
                Ok(listener.default_actions().to_vec())
            }
            Some(rule) => {
                let out = self
                    .inner
                    .elb
                    .describe_rules()
                    .rule_arns(rule)
                    .send()
                    .await
                    .map_err(|e| classify(ELB, &format!("DescribeRules {rule}"), e))?;
                let rule = out.rules().first().ok_or_else(|| Error::NotFound {
                    what: format!("listener rule {rule}"),
                })?;
                Ok(rule.actions().to_vec())
            }
        }
    }

    /// The weight per target group ARN of the forward action relay manages
    /// (a plain forward to one group is all of it; groups it does not name
    /// have none).
    pub(super) async fn listener_weights(&self, c: &TaskSetConfig) -> Result<BTreeMap<String, u32>> {
        let actions = self.routing_actions(c).await?;
        let mut weights = BTreeMap::new();
        if let Some(i) = managed(&actions, c) {
            for (arn, w) in groups_of(&actions[i]) {
                *weights.entry(arn).or_default() += w;
            }
        }
        Ok(weights)
    }

    /// Give the two target groups these percent weights (0 for a group not
    /// named) in the forward action relay manages, leaving every other
    /// action, the order, the stickiness and every other rule as they are.
    pub(super) async fn set_listener_weights(&self, c: &TaskSetConfig, percent: &BTreeMap<&str, u8>) -> Result<()> {
        let actions = self.routing_actions(c).await?;
        let Some(actions) = reweighted(&actions, c, percent)? else {
            return Ok(());
        };
        self.limit().await;
        match &c.rule_arn {
            None => self
                .inner
                .elb
                .modify_listener()
                .listener_arn(&c.listener_arn)
                .set_default_actions(Some(actions))
                .send()
                .await
                .map(drop)
                .map_err(|e| classify(ELB, &format!("ModifyListener {}", c.listener_arn), e)),
            Some(rule) => self
                .inner
                .elb
                .modify_rule()
                .rule_arn(rule)
                .set_actions(Some(actions))
                .send()
                .await
                .map(drop)
                .map_err(|e| classify(ELB, &format!("ModifyRule {rule}"), e)),
        }
    }
}

/// Where the routing actions live, for messages.
fn place(c: &TaskSetConfig) -> String {
    match &c.rule_arn {
        None => format!("the default actions of listener {}", c.listener_arn),
        Some(rule) => format!("listener rule {rule}"),
    }
}

/// The target groups a forward action sends to, with their weights (ELB's
/// default weight is 1; a plain forward names one group).
fn groups_of(action: &Action) -> Vec<(String, u32)> {
    if action.r#type() != Some(&ActionTypeEnum::Forward) {
        return Vec::new();
    }
    match action.forward_config() {
        Some(config) if !config.target_groups().is_empty() => config
            .target_groups()
            .iter()
            .filter_map(|tg| {
                let w = u32::try_from(tg.weight().unwrap_or(1)).unwrap_or(0);
                Some((tg.target_group_arn()?.to_owned(), w))
            })
            .collect(),
        _ => action
            .target_group_arn()
            .map(|a| vec![(a.to_owned(), 1)])
            .unwrap_or_default(),
    }
}

/// The forward action relay manages: the first that sends to one of the
/// target's two groups.
fn managed(actions: &[Action], c: &TaskSetConfig) -> Option<usize> {
    actions
        .iter()
        .position(|a| groups_of(a).iter().any(|(arn, _)| c.target_groups.contains(arn)))
}

/// `actions` with the managed forward action's weights set to `percent`,
/// to be written back; `None` when they are already so. Every other action
/// is written back as read, except that an `authenticate-oidc` action asks
/// ELB to keep its client secret (`UseExistingClientSecret`): ELB never
/// returns the secret, so it is never echoed.
fn reweighted(actions: &[Action], c: &TaskSetConfig, percent: &BTreeMap<&str, u8>) -> Result<Option<Vec<Action>>> {
    let Some(at) = managed(actions, c) else {
        return Err(Error::invalid(
            "ecs.listener",
            format!(
                "{} have no forward action to target group {} or {}; make one forward to either, and relay will weight it",
                place(c),
                c.target_groups[0],
                c.target_groups[1]
            ),
        ));
    };
    let current = &actions[at];
    let others: Vec<(String, u32)> = groups_of(current)
        .into_iter()
        .filter(|(arn, _)| !c.target_groups.contains(arn))
        .collect();
    if let Some((arn, w)) = others.iter().find(|(_, w)| *w > 0) {
        return Err(Error::Conflict {
            what: format!(
                "the forward action relay weights in {} also sends traffic to target group {arn} (weight {w}); \
                 relay's percentages would not hold: give it weight 0 or move it to another action",
                place(c)
            ),
        });
    }
    let want = |tg: &str| i32::from(percent.get(tg).copied().unwrap_or(0));
    let now: BTreeMap<String, u32> = groups_of(current).into_iter().collect();
    let unchanged = current.forward_config().is_some_and(|f| !f.target_groups().is_empty())
        && c.target_groups
            .iter()
            .all(|tg| now.get(tg).copied() == u32::try_from(want(tg)).ok());
    if unchanged {
        return Ok(None);
    }
    let tuples: Vec<TargetGroupTuple> = c
        .target_groups
        .iter()
        .map(|tg| {
            TargetGroupTuple::builder()
                .target_group_arn(tg)
                .weight(want(tg))
                .build()
        })
        .chain(
            others
                .iter()
                .map(|(arn, _)| TargetGroupTuple::builder().target_group_arn(arn).weight(0).build()),
        )
        .collect();
    let forward = ForwardActionConfig::builder()
        .set_target_groups(Some(tuples))
        .set_target_group_stickiness_config(
            current
                .forward_config()
                .and_then(|f| f.target_group_stickiness_config())
                .cloned(),
        )
        .build();
    let mut out = Vec::with_capacity(actions.len());
    for (i, action) in actions.iter().enumerate() {
        let mut action = action.clone();
        if i == at {
            action.target_group_arn = None;
            action.forward_config = Some(forward.clone());
        }
        if let Some(oidc) = action.authenticate_oidc_config.as_mut() {
            oidc.client_secret = None;
            oidc.use_existing_client_secret = Some(true);
        }
        out.push(action);
    }
    Ok(Some(out))
}

/// Listener weights (any scale) as whole percents summing to 100, by the
/// largest remainder, so 1:2 reads as 33/67. Groups with no revision are left
/// out; no weight at all is no traffic.
pub(super) fn split_of(weights: &[(RevisionId, u32)]) -> Result<TrafficSplit> {
    let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return Ok(TrafficSplit::default());
    }
    let mut shares: Vec<(RevisionId, u64, u64)> = weights
        .iter()
        .map(|(id, w)| {
            let scaled = u64::from(*w) * 100;
            (id.clone(), scaled / total, scaled % total)
        })
        .collect();
    let mut left = 100 - shares.iter().map(|s| s.1).sum::<u64>();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|a, b| shares[*b].2.cmp(&shares[*a].2));
    for i in order {
        if left == 0 {
            break;
        }
        shares[i].1 += 1;
        left -= 1;
    }
    let mut map = BTreeMap::new();
    for (id, pct, _) in shares {
        *map.entry(id).or_insert(0u8) += u8::try_from(pct).unwrap_or(100);
    }
    TrafficSplit::new(map)
}

#[cfg(test)]
mod tests {
    use aws_sdk_elasticloadbalancingv2::types::{AuthenticateOidcActionConfig, TargetGroupStickinessConfig};

    use super::*;

    fn config(rule: Option<&str>) -> TaskSetConfig {
        TaskSetConfig {
            listener_arn: "listener/app/web".into(),
            rule_arn: rule.map(str::to_owned),
            target_groups: ["tg/blue".into(), "tg/green".into()],
            container: "web".into(),
            container_port: 8080,
            subnets: vec!["subnet-1".into()],
            security_groups: Vec::new(),
            assign_public_ip: false,
            launch_type: aws_sdk_ecs::types::LaunchType::Fargate,
            failed_task_limit: 3,
        }
    }

    fn oidc() -> Action {
        Action::builder()
            .r#type(ActionTypeEnum::AuthenticateOidc)
            .order(1)
            .authenticate_oidc_config(
                AuthenticateOidcActionConfig::builder()
                    .issuer("https://idp.test")
                    .client_id("relay")
                    .client_secret("planted-oidc-secret")
                    .build(),
            )
            .build()
    }

    fn forward(groups: &[(&str, i32)]) -> Action {
        Action::builder()
            .r#type(ActionTypeEnum::Forward)
            .order(2)
            .forward_config(
                ForwardActionConfig::builder()
                    .set_target_groups(Some(
                        groups
                            .iter()
                            .map(|(arn, w)| TargetGroupTuple::builder().target_group_arn(*arn).weight(*w).build())
                            .collect(),
                    ))
                    .target_group_stickiness_config(
                        TargetGroupStickinessConfig::builder()
                            .enabled(true)
                            .duration_seconds(300)
                            .build(),
                    )
                    .build(),
            )
            .build()
    }

    #[test]
    fn only_the_managed_weights_change_and_no_client_secret_is_echoed() {
        let c = config(None);
        let actions = [oidc(), forward(&[("tg/blue", 100), ("tg/green", 0)])];
        let out = reweighted(&actions, &c, &BTreeMap::from([("tg/blue", 75), ("tg/green", 25)]))
            .unwrap()
            .unwrap();
        assert_eq!(out.len(), 2);
        let auth = out[0].authenticate_oidc_config().unwrap();
        assert_eq!(out[0].order(), Some(1), "authentication stays first");
        assert_eq!(auth.client_secret(), None, "the secret is never written back");
        assert_eq!(auth.use_existing_client_secret(), Some(true));
        assert_eq!(
            (auth.issuer(), auth.client_id()),
            (Some("https://idp.test"), Some("relay"))
        );
        let f = out[1].forward_config().unwrap();
        assert_eq!(out[1].order(), Some(2));
        let weights: Vec<_> = f
            .target_groups()
            .iter()
            .map(|t| (t.target_group_arn().unwrap(), t.weight().unwrap()))
            .collect();
        assert_eq!(weights, [("tg/blue", 75), ("tg/green", 25)]);
        let sticky = f.target_group_stickiness_config().unwrap();
        assert_eq!((sticky.enabled(), sticky.duration_seconds()), (Some(true), Some(300)));
        // Weights already so: nothing to write.
        let again = [oidc(), forward(&[("tg/blue", 75), ("tg/green", 25)])];
        assert!(
            reweighted(&again, &c, &BTreeMap::from([("tg/blue", 75), ("tg/green", 25)]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_forward_relay_cannot_weight_alone_is_refused_before_any_write() {
        let c = config(Some("listener-rule/app/web/1"));
        let e = reweighted(&[oidc()], &c, &BTreeMap::from([("tg/blue", 100)])).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidSpec { .. }) && e.to_string().contains("listener rule listener-rule/app/web/1"),
            "{e}"
        );
        let shared = [forward(&[("tg/blue", 50), ("tg/other", 50)])];
        let e = reweighted(&shared, &c, &BTreeMap::from([("tg/blue", 100)])).unwrap_err();
        assert!(
            matches!(&e, Error::Conflict { .. }) && e.to_string().contains("tg/other"),
            "{e}"
        );
        // A third group at weight 0 is kept at 0.
        let idle = [forward(&[("tg/blue", 100), ("tg/other", 0)])];
        let out = reweighted(&idle, &c, &BTreeMap::from([("tg/green", 100)]))
            .unwrap()
            .unwrap();
        let groups: Vec<_> = out[0]
            .forward_config()
            .unwrap()
            .target_groups()
            .iter()
            .map(|t| (t.target_group_arn().unwrap(), t.weight().unwrap()))
            .collect();
        assert_eq!(groups, [("tg/blue", 0), ("tg/green", 100), ("tg/other", 0)]);
    }

    #[test]
    fn weights_become_percents_summing_to_100() {
        let a = RevisionId::from("a");
        let b = RevisionId::from("b");
        let s = split_of(&[(a.clone(), 1), (b.clone(), 2)]).unwrap();
        assert_eq!((s.weight(&a), s.weight(&b)), (33, 67));
        let s = split_of(&[(a.clone(), 90), (b.clone(), 10)]).unwrap();
        assert_eq!((s.weight(&a), s.weight(&b)), (90, 10));
        let s = split_of(&[(a.clone(), 0), (b.clone(), 999)]).unwrap();
        assert_eq!(s, TrafficSplit::all(&b));
        assert!(split_of(&[(a, 0)]).unwrap().is_empty());
    }
}
