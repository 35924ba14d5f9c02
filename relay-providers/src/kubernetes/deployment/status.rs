//! What a Deployment and its ReplicaSets say about the revisions they run.
//! Pure functions over API objects, unit tested.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use relay_core::{RevisionId, RevisionState};

use super::template::revision_of;

fn count(n: Option<i32>) -> u32 {
    u32::try_from(n.unwrap_or(0)).unwrap_or(0)
}

/// The revision of the Deployment's current pod template.
pub(crate) fn current(d: &Deployment) -> Option<RevisionId> {
    d.spec.as_ref().map(|s| revision_of(&s.template))
}

/// Whether the Deployment controller has seen the latest spec: before that,
/// `status` describes an older one (kube-runtime's completion check ignores
/// this and reports a rollout complete right after an image change).
pub(crate) fn caught_up(d: &Deployment) -> bool {
    let generation = d.metadata.generation.unwrap_or(0);
    d.status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .is_some_and(|o| o >= generation)
}

/// Whether the controller gave up on the current template:
/// `progressDeadlineSeconds` passed without progress.
pub(crate) fn deadline_exceeded(d: &Deployment) -> bool {
    d.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
        cs.iter().any(|c| {
            c.type_ == "Progressing" && c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        })
    })
}

/// The Deployment's desired replicas.
pub(crate) fn desired(d: &Deployment) -> u32 {
    count(d.spec.as_ref().and_then(|s| s.replicas).or(Some(1)))
}

/// Whether the Deployment runs its current template on all its replicas,
/// all available, and nothing else.
pub(crate) fn complete(d: &Deployment) -> bool {
    let Some(s) = &d.status else { return false };
    let want = desired(d);
    caught_up(d)
        && count(s.updated_replicas) == want
        && count(s.replicas) == want
        && count(s.available_replicas) == want
}

/// Whether every pod `d` runs has its current template: the controller has
/// seen the spec and counts no pod of an older ReplicaSet. Its ReplicaSets
/// then tell nothing its status does not, so they need not be read.
pub(crate) fn runs_one_template(d: &Deployment) -> bool {
    let Some(s) = &d.status else { return false };
    caught_up(d) && count(s.replicas) == count(s.updated_replicas)
}

/// Whether `rs` is controlled by `d`.
pub(crate) fn owned_by(rs: &ReplicaSet, d: &Deployment) -> bool {
    let Some(uid) = d.metadata.uid.as_deref() else {
        return false;
    };
    rs.metadata
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.controller == Some(true) && r.uid == uid))
}

/// Add the revisions `d` runs to `into`, from its ReplicaSets: desired
/// replicas and available ones per revision (several ReplicaSets of one
/// revision add up). The current template's revision is always there; until
/// the controller has caught up with the spec its pods count as not ready,
/// and once `progressDeadlineSeconds` has passed without progress they count
/// as failed. ReplicaSets scaled to zero with no pods left are history, not
/// running revisions. `sets: None` (for a Deployment that
/// [runs one template](runs_one_template)) reads the current revision's
/// available pods from the Deployment's status.
pub(crate) fn add_revisions(
    d: &Deployment,
    sets: Option<&[ReplicaSet]>,
    into: &mut BTreeMap<RevisionId, RevisionState>,
) {
    let current = current(d);
    let fresh = caught_up(d);
    if let (None, Some(id), true) = (sets, &current, fresh) {
        entry(into, id).ready += count(d.status.as_ref().and_then(|s| s.available_replicas));
    }
    for rs in sets.unwrap_or_default().iter().filter(|rs| owned_by(rs, d)) {
        let Some(template) = rs.spec.as_ref().and_then(|s| s.template.as_ref()) else {
            continue;
        };
        let id = revision_of(template);
        let want = count(rs.spec.as_ref().and_then(|s| s.replicas));
        let status = rs.status.as_ref();
        let pods = count(status.map(|s| s.replicas));
        if want == 0 && pods == 0 && Some(&id) != current.as_ref() {
            continue;
        }
        let available = if fresh || Some(&id) != current.as_ref() {
            count(status.and_then(|s| s.available_replicas))
        } else {
            0
        };
        let r = entry(into, &id);
        r.ready += available;
        if Some(&id) != current.as_ref() {
            r.desired += want;
        }
    }
    if let Some(id) = current {
        let want = desired(d);
        let failed = fresh && deadline_exceeded(d);
        let r = entry(into, &id);
        r.desired += want;
        if failed {
            r.failed += want.max(1);
            r.failure = Some(format!(
                "Deployment {} made no progress within its progressDeadlineSeconds",
                d.metadata.name.as_deref().unwrap_or("?")
            ));
        }
    }
}

fn entry<'a>(into: &'a mut BTreeMap<RevisionId, RevisionState>, id: &RevisionId) -> &'a mut RevisionState {
    into.entry(id.clone())
        .or_insert_with(|| RevisionState::new(id.clone(), 0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DeploymentCondition, DeploymentSpec, DeploymentStatus, ReplicaSetSpec, ReplicaSetStatus,
    };
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;

    use super::super::template::REVISION_LABEL;

    fn template(rev: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([(REVISION_LABEL.to_owned(), rev.to_owned())])),
                ..Default::default()
            }),
            spec: None,
        }
    }

    fn deployment(rev: &str, replicas: i32, generation: i64, observed: i64) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                uid: Some("dep-uid".into()),
                generation: Some(generation),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                template: template(rev),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                ..Default::default()
            }),
        }
    }

    fn rs(rev: &str, replicas: i32, available: i32, owner: &str) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                owner_references: Some(vec![OwnerReference {
                    uid: owner.into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                template: Some(template(rev)),
                ..Default::default()
            }),
            status: Some(ReplicaSetStatus {
                replicas: available,
                available_replicas: Some(available),
                ..Default::default()
            }),
        }
    }

    fn states(d: &Deployment, sets: &[ReplicaSet]) -> Vec<(String, u32, u32, u32)> {
        let mut m = BTreeMap::new();
        add_revisions(d, Some(sets), &mut m);
        m.into_values()
            .map(|r| (r.id.0, r.desired, r.ready, r.failed))
            .collect()
    }

    #[test]
    fn a_rollout_in_progress_reports_both_revisions() {
        let d = deployment("new", 4, 2, 2);
        let sets = [
            rs("old", 2, 2, "dep-uid"),
            rs("new", 3, 1, "dep-uid"),
            rs("x", 9, 9, "other"),
        ];
        assert_eq!(states(&d, &sets), [("new".into(), 4, 1, 0), ("old".into(), 2, 2, 0)]);
    }

    #[test]
    fn nothing_of_the_new_spec_is_ready_before_the_controller_sees_it() {
        // The template was just changed back to a revision whose ReplicaSet
        // still reports pods: they do not count until status catches up.
        let d = deployment("new", 4, 3, 2);
        assert_eq!(states(&d, &[rs("new", 4, 4, "dep-uid")]), [("new".into(), 4, 0, 0)]);
        let d = deployment("new", 4, 3, 3);
        assert_eq!(states(&d, &[rs("new", 4, 4, "dep-uid")]), [("new".into(), 4, 4, 0)]);
    }

    #[test]
    fn history_is_not_a_running_revision_and_a_passed_deadline_fails() {
        let mut d = deployment("new", 2, 1, 1);
        d.status.as_mut().unwrap().conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            ..Default::default()
        }]);
        let sets = [rs("old", 0, 0, "dep-uid"), rs("new", 2, 0, "dep-uid")];
        assert_eq!(states(&d, &sets), [("new".into(), 2, 0, 2)]);
    }

    #[test]
    fn a_deployment_running_one_template_is_read_from_its_status() {
        let mut d = deployment("new", 4, 3, 3);
        let s = d.status.as_mut().unwrap();
        (s.replicas, s.updated_replicas, s.available_replicas) = (Some(4), Some(3), Some(3));
        assert!(!runs_one_template(&d), "a pod of an older template is still there");
        d.status.as_mut().unwrap().replicas = Some(3);
        assert!(runs_one_template(&d));
        let mut m = BTreeMap::new();
        add_revisions(&d, None, &mut m);
        let read: Vec<_> = m
            .into_values()
            .map(|r| (r.id.0, r.desired, r.ready, r.failed))
            .collect();
        assert_eq!(
            read,
            states(&d, &[rs("new", 4, 3, "dep-uid"), rs("old", 0, 0, "dep-uid")]),
            "the status and the ReplicaSets agree"
        );
        d.metadata.generation = Some(4);
        assert!(!runs_one_template(&d), "status is about an older spec");
    }

    #[test]
    fn complete_needs_every_replica_updated_and_available() {
        let mut d = deployment("a", 2, 1, 1);
        let s = d.status.as_mut().unwrap();
        s.updated_replicas = Some(2);
        s.replicas = Some(3);
        s.available_replicas = Some(2);
        assert!(!complete(&d), "an old pod is still there");
        d.status.as_mut().unwrap().replicas = Some(2);
        assert!(complete(&d));
        d.metadata.generation = Some(2);
        assert!(!complete(&d), "status is about an older spec");
    }
}
