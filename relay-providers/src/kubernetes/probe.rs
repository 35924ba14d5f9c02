//! Pod readiness per revision as a [`HealthProbe`].

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use relay_core::{Error, HealthProbe, ProbeQuery, Result, Sample, Scope};

use super::deployment::REVISION_LABEL;
use super::error::classify;

/// Container states that mean a pod will not become ready by waiting.
const BROKEN: [&str; 6] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "InvalidImageName",
];

/// Counts over the pods of one revision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PodCounts {
    /// Pods that are not being deleted.
    pub total: u32,
    /// Of those, pods whose `Ready` condition is true.
    pub ready: u32,
    /// Of those, pods crash-looping, failing to pull their image or to
    /// create a container, or failed outright.
    pub broken: u32,
}

pub(crate) fn count(pods: &[Pod]) -> PodCounts {
    let mut c = PodCounts::default();
    for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        c.total += 1;
        let Some(status) = &pod.status else { continue };
        let ready = status
            .conditions
            .as_ref()
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            c.ready += 1;
        }
        let waiting_broken = status.container_statuses.iter().flatten().any(|cs| {
            cs.state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                .is_some_and(|r| BROKEN.contains(&r))
        });
        if waiting_broken || status.phase.as_deref() == Some("Failed") {
            c.broken += 1;
        }
    }
    c
}

/// Container states that clear only when the pod spec or the cluster
/// changes (not by restarting): a broken pod in one of them has failed at
/// once; a crash loop only after the restart budget.
const STUCK: [&str; 4] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "InvalidImageName",
];

/// Why `pod` will not become ready by waiting, if it will not: a container
/// waiting in a state that does not clear by itself (an image that cannot
/// be pulled, a missing config key), a container that restarted at least
/// `restarts` times (crash-looping or killed for memory; its last exit
/// reason and code named), or a failed pod. A pod that is ready, being
/// deleted, or still within its budget has no failure.
pub(crate) fn failure(pod: &Pod, restarts: u32) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    if status.phase.as_deref() == Some("Failed") {
        let why = status
            .reason
            .as_deref()
            .or(status.message.as_deref())
            .unwrap_or("no reason given");
        return Some(format!("pod {name} failed: {why}"));
    }
    for c in status.container_statuses.iter().flatten() {
        if c.ready {
            continue;
        }
        let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
        let reason = waiting.and_then(|w| w.reason.as_deref()).unwrap_or_default();
        if STUCK.contains(&reason) {
            // The kubelet's message names the image or the key; a long one
            // is cut.
            let message: String = waiting
                .and_then(|w| w.message.as_deref())
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            let sep = if message.is_empty() { "" } else { ": " };
            return Some(format!("pod {name}: container {} {reason}{sep}{message}", c.name));
        }
        let restarted = u32::try_from(c.restart_count).unwrap_or(0);
        if restarted >= restarts.max(1) {
            let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
            let exit = last.map_or_else(String::new, |t| {
                format!(
                    ", last exit {} (code {})",
                    t.reason.as_deref().unwrap_or("unknown"),
                    t.exit_code
                )
            });
            let state = if reason.is_empty() { "not ready" } else { reason };
            return Some(format!(
                "pod {name}: container {} {state} after {restarted} restarts{exit}",
                c.name
            ));
        }
    }
    None
}

/// Measures pods through the API server: per revision, the pods labelled
/// `relay.dev/revision=<id>` (every template a [`super::DeploymentTarget`]
/// writes carries it); for the whole target, the pods of a label selector.
///
/// Metrics (one value per sample):
/// - `ready_ratio`: ready pods over pods (crash-looping ones are not ready);
///   no pods is no data. The sample's labels carry `pods`, `ready` and
///   `crash_looping`.
/// - `ready_pods`: ready pods.
/// - `crash_looping`: pods in `CrashLoopBackOff`, image pull or container
///   creation errors, or failed — a check with `max: 0` fails as soon as
///   one pod of the revision cannot run.
///
/// Other metric names are [`Error::InvalidSpec`].
///
/// Revision ids are derived from the release's content, so two Deployments
/// of one namespace running the very same release share a revision label
/// and are counted together; keep such twins in separate namespaces.
#[derive(Clone)]
pub struct PodReadinessProbe {
    client: Client,
    namespace: String,
    selector: String,
}

impl fmt::Debug for PodReadinessProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodReadinessProbe")
            .field("namespace", &self.namespace)
            .field("selector", &self.selector)
            .finish()
    }
}

impl PodReadinessProbe {
    /// A probe over the pods of `namespace`; `selector` (like `app=web`)
    /// picks the pods of the whole target.
    pub fn new(client: Client, namespace: impl Into<String>, selector: impl Into<String>) -> Self {
        PodReadinessProbe {
            client,
            namespace: namespace.into(),
            selector: selector.into(),
        }
    }
}

#[async_trait]
impl HealthProbe for PodReadinessProbe {
    #[tracing::instrument(skip_all, fields(metric = %query.metric, scope = %query.scope))]
    async fn sample(&self, query: &ProbeQuery) -> Result<Sample> {
        if !matches!(query.metric.as_str(), "ready_ratio" | "ready_pods" | "crash_looping") {
            return Err(Error::invalid(
                "analysis.checks.metric",
                format!(
                    "{:?} is not a pod metric; use ready_ratio, ready_pods or crash_looping",
                    query.metric
                ),
            ));
        }
        let selector = match &query.scope {
            Scope::Revision(id) => format!("{REVISION_LABEL}={id}"),
            Scope::Target => self.selector.clone(),
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let pods = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| classify(&format!("list Pods {}/{selector}", self.namespace), e))?;
        let c = count(&pods.items);
        let value = match query.metric.as_str() {
            "ready_ratio" if c.total == 0 => None,
            "ready_ratio" => Some(f64::from(c.ready) / f64::from(c.total)),
            "ready_pods" => Some(f64::from(c.ready)),
            _ => Some(f64::from(c.broken)),
        };
        Ok(Sample {
            values: value.into_iter().collect(),
            source: format!(
                "pods {}/{selector}: {} of {} ready, {} crash-looping",
                self.namespace, c.ready, c.total, c.broken
            ),
            labels: BTreeMap::from([
                ("pods".to_owned(), c.total.to_string()),
                ("ready".to_owned(), c.ready.to_string()),
                ("crash_looping".to_owned(), c.broken.to_string()),
            ]),
            counts: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;

    fn pod(ready: bool, waiting: Option<&str>, deleting: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                deletion_timestamp: deleting.then(|| Time(Default::default())),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                container_statuses: Some(vec![ContainerStatus {
                    name: "app".into(),
                    state: waiting.map(|r| ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(r.into()),
                            message: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    /// A pod whose one container restarted `restarts` times, waiting for
    /// `waiting` (reason, message), last ended by `last` (reason, code).
    fn container(waiting: Option<(&str, &str)>, restarts: i32, last: Option<(&str, i32)>) -> Pod {
        use k8s_openapi::api::core::v1::ContainerStateTerminated;
        let mut p = pod(false, None, false);
        p.metadata.name = Some("web-canary-7f9c".into());
        let cs = &mut p.status.as_mut().unwrap().container_statuses.as_mut().unwrap()[0];
        cs.restart_count = restarts;
        cs.state = waiting.map(|(reason, message)| ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: (!message.is_empty()).then(|| message.into()),
            }),
            ..Default::default()
        });
        cs.last_state = last.map(|(reason, code)| ContainerState {
            terminated: Some(ContainerStateTerminated {
                reason: Some(reason.into()),
                exit_code: code,
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    }

    #[test]
    fn a_pod_fails_on_a_stuck_state_at_once_and_on_restarts_past_the_budget() {
        let pull = container(
            Some(("ImagePullBackOff", "Back-off pulling image \"web@sha256:0\"")),
            0,
            None,
        );
        assert_eq!(
            failure(&pull, 3).as_deref(),
            Some("pod web-canary-7f9c: container app ImagePullBackOff: Back-off pulling image \"web@sha256:0\"")
        );
        let config = container(Some(("CreateContainerConfigError", "")), 0, None);
        assert_eq!(
            failure(&config, 3).as_deref(),
            Some("pod web-canary-7f9c: container app CreateContainerConfigError")
        );
        let crashing = |restarts| container(Some(("CrashLoopBackOff", "back-off 40s")), restarts, Some(("Error", 1)));
        assert_eq!(failure(&crashing(2), 3), None, "within the budget");
        assert_eq!(
            failure(&crashing(3), 3).as_deref(),
            Some("pod web-canary-7f9c: container app CrashLoopBackOff after 3 restarts, last exit Error (code 1)")
        );
        let oom = container(None, 4, Some(("OOMKilled", 137)));
        assert_eq!(
            failure(&oom, 3).as_deref(),
            Some("pod web-canary-7f9c: container app not ready after 4 restarts, last exit OOMKilled (code 137)")
        );
        assert_eq!(
            failure(&crashing(9), 0).is_some(),
            failure(&crashing(1), 0).is_some(),
            "0 is 1"
        );
        let mut ready = crashing(9);
        ready.status.as_mut().unwrap().container_statuses.as_mut().unwrap()[0].ready = true;
        assert_eq!(failure(&ready, 3), None, "a container ready again is no failure");
        let long = container(Some(("ErrImagePull", &"x\n".repeat(500))), 0, None);
        let why = failure(&long, 3).unwrap();
        assert!(why.chars().count() < 300 && !why.contains('\n'), "{why}");
        let mut failed = pod(false, None, false);
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        failed.status.as_mut().unwrap().reason = Some("Evicted".into());
        assert_eq!(failure(&failed, 3).as_deref(), Some("pod ? failed: Evicted"));
        assert_eq!(failure(&pod(false, Some("ContainerCreating"), false), 3), None);
        assert_eq!(failure(&crashing_deleted(), 3), None, "a pod being deleted is gone");
    }

    fn crashing_deleted() -> Pod {
        let mut p = container(Some(("CrashLoopBackOff", "")), 9, None);
        p.metadata.deletion_timestamp = Some(Time(Default::default()));
        p
    }

    #[test]
    fn pods_count_as_ready_broken_or_neither_and_deleted_ones_not_at_all() {
        let pods = [
            pod(true, None, false),
            pod(false, None, false),
            pod(false, Some("ContainerCreating"), false),
            pod(false, Some("CrashLoopBackOff"), false),
            pod(false, Some("CreateContainerConfigError"), false),
            pod(true, None, true),
        ];
        assert_eq!(
            count(&pods),
            PodCounts {
                total: 5,
                ready: 1,
                broken: 2
            }
        );
    }
}
