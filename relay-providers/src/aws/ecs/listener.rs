//! Traffic in task-set mode: the weights of an ALB listener's forward action.

use std::collections::BTreeMap;

use aws_sdk_elasticloadbalancingv2::types::{Action, ActionTypeEnum, ForwardActionConfig, TargetGroupTuple};
use relay_core::{Error, Result, RevisionId, TrafficSplit};

use super::{EcsServiceTarget, TaskSetConfig};
use crate::aws::error::classify;

const ELB: &str = "elbv2";

impl EcsServiceTarget {
    /// The listener's weight per target group ARN (a plain forward to one
    /// group is all of it; groups the action does not name have none).
    pub(super) async fn listener_weights(&self, c: &TaskSetConfig) -> Result<BTreeMap<String, u32>> {
        self.limit().await;
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
        let mut weights = BTreeMap::new();
        let forward = listener
            .default_actions()
            .iter()
            .find(|a| a.r#type() == Some(&ActionTypeEnum::Forward));
        if let Some(action) = forward {
            match action.forward_config() {
                Some(config) if !config.target_groups().is_empty() => {
                    for tg in config.target_groups() {
                        if let Some(arn) = tg.target_group_arn() {
                            // ELB's default weight is 1.
                            let w = u32::try_from(tg.weight().unwrap_or(1)).unwrap_or(0);
                            *weights.entry(arn.to_owned()).or_default() += w;
                        }
                    }
                }
                _ => {
                    if let Some(arn) = action.target_group_arn() {
                        weights.insert(arn.to_owned(), 1);
                    }
                }
            }
        }
        Ok(weights)
    }

    /// Set the listener's default action to forward to both target groups
    /// with these percent weights (0 for a group not named).
    pub(super) async fn set_listener_weights(&self, c: &TaskSetConfig, percent: &BTreeMap<&str, u8>) -> Result<()> {
        let tuples: Vec<TargetGroupTuple> = c
            .target_groups
            .iter()
            .map(|tg| {
                TargetGroupTuple::builder()
                    .target_group_arn(tg)
                    .weight(i32::from(percent.get(tg.as_str()).copied().unwrap_or(0)))
                    .build()
            })
            .collect();
        let action = Action::builder()
            .r#type(ActionTypeEnum::Forward)
            .forward_config(ForwardActionConfig::builder().set_target_groups(Some(tuples)).build())
            .build();
        self.limit().await;
        self.inner
            .elb
            .modify_listener()
            .listener_arn(&c.listener_arn)
            .default_actions(action)
            .send()
            .await
            .map_err(|e| classify(ELB, &format!("ModifyListener {}", c.listener_arn), e))?;
        Ok(())
    }
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
    use super::*;

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
