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
