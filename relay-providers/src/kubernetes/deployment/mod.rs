//! A Kubernetes Deployment as a deployment [`Target`].

mod manual;
mod pair;
mod rolling;
#[cfg(test)]
mod shapes;
mod status;
mod template;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use relay_core::{
    Capabilities, Error, Result, RevisionId, RevisionSpec, RevisionState, Routing, Target, TargetState, TrafficSplit,
};
use serde_json::json;
use tokio_stream::StreamExt;

use super::error::classify;
use super::probe::failure;
use super::router::TrafficRouter;
use template::POD_TEMPLATE_HASH;
pub(crate) use template::REVISION_LABEL;

/// The Deployment annotation naming the promoted revision (rolling mode).
const STABLE_ANNOTATION: &str = "relay.dev/stable";
/// The Service annotation keeping its selector while relay switches it.
const SELECTOR_ANNOTATION: &str = "relay.dev/selector";
/// Restarts of a container before its pod counts as failed (see
/// [`DeploymentTargetBuilder::restart_budget`]).
const DEFAULT_RESTART_BUDGET: u32 = 3;
/// A replace that loses a race re-reads and tries again this often.
const REPLACE_ATTEMPTS: u32 = 3;
/// The longest a watch for changes runs before the server ends it (the
/// engine usually drops it long before, at its next safety poll).
const WATCH_SECONDS: u32 = 290;
/// How long a promotion waits on its watch before it reads the Deployment
/// anyway.
const WATCH_RESYNC: Duration = Duration::from_secs(60);
/// A watch that ends sooner without an event is refused (see
/// `DeploymentTarget::watch_until`).
const WATCH_SHORTEST: Duration = Duration::from_secs(1);

/// A Kubernetes `Deployment` that relay deploys to, in one of three modes
/// that [`Target::capabilities`] reports:
///
/// - **Rolling** ([`DeploymentTargetBuilder::rolling`], the default): the
///   Deployment controller replaces the pods. `stage` writes the revision's
///   pod template with server-side apply (field manager `relay`), with
///   `maxSurge`/`maxUnavailable` and `progressDeadlineSeconds`. One revision
///   at a time and traffic follows the pods: `Routing::None`, one revision;
///   use the all-at-once strategy. A rollback puts the previous template
///   back from its ReplicaSet (what `kubectl rollout undo` does).
/// - **Canary** ([`DeploymentTargetBuilder::canary`]): the candidate runs in
///   a second Deployment, `<name>-canary`, whose pods carry the stable pods'
///   labels, so the Service that selects them sends it a share of requests
///   in proportion to ready replicas: `Routing::ReplicaRatio` (approximate
///   weights), two revisions. Routing a revision to 0% scales its
///   Deployment to zero. Promotion writes the candidate's template into the
///   stable Deployment, waits for it to be complete, then deletes the canary
///   Deployment; so does retiring the candidate.
/// - **Routed** ([`DeploymentTargetBuilder::traffic_router`]): canary with
///   exact weights, as a service mesh or Gateway API implementation gives
///   them. The candidate runs in `<name>-canary` with pods the stable
///   Service does not select, behind a `<service>-canary` Service relay
///   creates; a [`TrafficRouter`] (the Gateway API's
///   [`crate::kubernetes::HttpRouteRouter`], or one of your own) sets the
///   two Services' weights: `Routing::Weighted`, two revisions. The stable
///   Deployment keeps all its replicas until promotion; the candidate is
///   scaled to its share (at least one). Promotion writes the template into
///   the stable Deployment, waits for it, gives its Service all the traffic
///   and deletes the canary Deployment.
/// - **Blue/green** ([`DeploymentTargetBuilder::blue_green`]): the same two
///   Deployments, but the candidate's pods lack the labels the Service
///   selects, so they get no traffic until `route` switches the Service's
///   selector to the candidate's `relay.dev/revision` label:
///   `Routing::Switch`. Promotion writes the template into the stable
///   Deployment, waits for it, switches the Service back to its own
///   selector (kept in an annotation meanwhile) and deletes the canary
///   Deployment.
///
/// In canary and blue/green mode a stable Deployment at zero replicas (one
/// created empty for a first release, or scaled to zero) serves nothing:
/// `observe` reports no stable revision, so the engine plans a first
/// deployment, and a failed one is retired with its traffic, leaving the
/// Deployment at zero as it was.
///
/// # Sharing the Deployment with an autoscaler or a GitOps tool
/// - **An autoscaler**: relay never sets the replicas of a Deployment a
///   `HorizontalPodAutoscaler` scales. Its current revision is reported
///   [`autoscaled`](relay_core::RevisionState::autoscaled), so the engine
///   waits for the autoscaler's count of ready pods rather than the
///   release's `replicas`, and scaling it is left to the autoscaler. The
///   rolling mode applies the new template without replicas; routed and
///   blue/green modes size only relay's own `<name>-canary` Deployment and
///   promote into the autoscaled one without its replicas (or with the
///   autoscaler's present count, where relay's applies own the field). The
///   replica-ratio canary shifts traffic by shrinking the stable
///   Deployment, so it is refused (at build and at each stage) naming the
///   autoscaler and the modes to use instead.
/// - **A GitOps tool** (Argo CD, Flux): by default relay's server-side
///   applies take the fields they set (the template's image and
///   environment), which the tool then reverts or reports as drift. Build
///   with [`DeploymentTargetBuilder::force_ownership`]`(false)` when the
///   tool must stay the source of truth: an apply over a field the tool
///   owns is refused, naming it, and nothing is taken. Either let relay own
///   the image and environment (tell the tool to ignore them, such as an
///   Argo CD `ignoreDifferences` on the container's image and env), or
///   leave releases to the tool.
///
/// Revisions are pod templates: a template relay wrote carries the
/// revision id as its `relay.dev/revision` label (a template applied by
/// hand gets an id derived from its pod spec). Progress is read from the
/// Deployments' ReplicaSets, and only once the controller has caught up with
/// the latest spec (`observedGeneration`); a passed `progressDeadlineSeconds`
/// reports the revision's replicas as failed, so the engine rolls back.
/// While a revision is short of ready pods, its pods are read too: one
/// crash-looping or killed for memory past the restart budget, or stuck on
/// an image pull or a missing config key, fails the revision at once with
/// the pod's reason ([`DeploymentTargetBuilder::restart_budget`]).
/// The engine learns of progress from a watch on the Deployments, started
/// from the `resourceVersion`s its last observe read ([`Target::changed`];
/// [`DeploymentTargetBuilder::watch`] turns it off).
///
/// A revision's image is pinned by digest; its config becomes environment
/// variables and its secrets `secretKeyRef`s (`k8s://<secret>#<key>`), never
/// values. Kubernetes keeps no old Secret versions, so `stage` refuses a
/// secret whose `resourceVersion` moved since the plan ([`Error::Conflict`]:
/// plan again).
///
/// `Debug` shows the namespace, Deployment and mode: no credential.
#[derive(Clone)]
pub struct DeploymentTarget {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    client: Client,
    namespace: String,
    deployment: String,
    container: String,
    mode: Mode,
    field_manager: String,
    force: bool,
    progress_deadline: Option<Duration>,
    poll_interval: Duration,
    promote_timeout: Duration,
    watch: bool,
    restart_budget: u32,
    /// The HorizontalPodAutoscaler scaling the stable Deployment, as last
    /// listed.
    autoscaler: std::sync::Mutex<Option<String>>,
    /// The Deployments the last observe read, with their `resourceVersion`s:
    /// where a watch for changes starts.
    seen: std::sync::Mutex<Vec<(String, String)>>,
}

#[derive(Clone, Debug)]
enum Mode {
    Rolling {
        max_surge: IntOrString,
        max_unavailable: IntOrString,
    },
    Canary,
    BlueGreen {
        service: String,
    },
    Routed {
        service: String,
        router: Arc<dyn TrafficRouter>,
    },
}

impl fmt::Debug for DeploymentTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeploymentTarget")
            .field("name", &self.inner.name)
            .field("namespace", &self.inner.namespace)
            .field("deployment", &self.inner.deployment)
            .field("mode", &self.inner.mode)
            .finish()
    }
}

/// Settings for a [`DeploymentTarget`]; [`DeploymentTargetBuilder::build`]
/// checks them against the cluster.
#[must_use]
pub struct DeploymentTargetBuilder {
    client: Client,
    namespace: String,
    deployment: String,
    name: Option<String>,
    container: Option<String>,
    mode: Mode,
    field_manager: String,
    force: bool,
    progress_deadline: Option<Duration>,
    poll_interval: Duration,
    promote_timeout: Duration,
    watch: bool,
    restart_budget: u32,
}

impl fmt::Debug for DeploymentTargetBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeploymentTargetBuilder")
            .field("namespace", &self.namespace)
            .field("deployment", &self.deployment)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl DeploymentTargetBuilder {
    /// The target's name in leases and audit (default
    /// `k8s:<namespace>/<deployment>`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The container that runs the artifact (default: the only one).
    pub fn container(mut self, name: impl Into<String>) -> Self {
        self.container = Some(name.into());
        self
    }

    /// Rolling mode (the default) with the Deployment controller's limits:
    /// pods above the desired count and pods that may be unavailable while
    /// it replaces them (a count or a percent, as in a Deployment:
    /// `IntOrString::String("25%".into())`).
    pub fn rolling(mut self, max_surge: IntOrString, max_unavailable: IntOrString) -> Self {
        self.mode = Mode::Rolling {
            max_surge,
            max_unavailable,
        };
        self
    }

    /// Canary mode: the candidate in `<deployment>-canary`, traffic by
    /// replica ratio.
    pub fn canary(mut self) -> Self {
        self.mode = Mode::Canary;
        self
    }

    /// Routed mode: canary with exact weights. The candidate runs in
    /// `<deployment>-canary` with pods that `service` (the stable Service)
    /// does not select, behind a Service `<service>-canary` that relay
    /// creates with `service`'s ports; `router` sets the weights between
    /// the two Services (a Gateway API [`crate::kubernetes::HttpRouteRouter`], or
    /// your own [`TrafficRouter`]). The stable Deployment keeps all its
    /// replicas until promotion.
    pub fn traffic_router(mut self, service: impl Into<String>, router: Arc<dyn TrafficRouter>) -> Self {
        self.mode = Mode::Routed {
            service: service.into(),
            router,
        };
        self
    }

    /// Blue/green mode: the candidate in `<deployment>-canary`, traffic
    /// switched with the selector of `service`.
    pub fn blue_green(mut self, service: impl Into<String>) -> Self {
        self.mode = Mode::BlueGreen {
            service: service.into(),
        };
        self
    }

    /// The field manager of relay's server-side applies (default `relay`).
    pub fn field_manager(mut self, manager: impl Into<String>) -> Self {
        self.field_manager = manager.into();
        self
    }

    /// Whether relay's server-side applies take over fields another field
    /// manager owns (default `true`: relay is the Deployment's only
    /// writer). With `false`, an apply that would change a field that, say,
    /// Argo CD or Flux applied (the image, an environment variable) is
    /// refused as [`Error::Conflict`] naming the manager and the field, and
    /// nothing changes: the GitOps tool stays the source of truth, and
    /// relay deploys only the fields it owns. In rolling mode the refusal
    /// comes at `stage`, before any pod changes; in canary, routed and
    /// blue/green modes at promotion, after the canary, which is then
    /// rolled back.
    pub fn force_ownership(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// `progressDeadlineSeconds` for the templates relay writes (default:
    /// the Deployment's own, 600 s unless set).
    pub fn progress_deadline(mut self, deadline: Duration) -> Self {
        self.progress_deadline = Some(deadline);
        self
    }

    /// How often a promotion re-reads the stable Deployment while it rolls
    /// when it cannot watch it (default 2 s; see
    /// [`DeploymentTargetBuilder::watch`]).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long a promotion waits for the stable Deployment to run the
    /// candidate everywhere (default 10 min).
    pub fn promote_timeout(mut self, timeout: Duration) -> Self {
        self.promote_timeout = timeout;
        self
    }

    /// Whether the engine learns of readiness, and a promotion of the
    /// stable Deployment's progress, from a watch on the Deployments
    /// (default `true`, see [`Capabilities::watches`]) or by polling them
    /// only; turn it off where relay's role may not `watch` Deployments (a
    /// refused watch already falls back to polling, with a warning on every
    /// wait).
    pub fn watch(mut self, watch: bool) -> Self {
        self.watch = watch;
        self
    }

    /// How many times a container of a revision that is not ready yet may
    /// restart before its pod counts as failed (default 3): while the engine
    /// waits for a revision's pods, a pod crash-looping or killed for memory
    /// that often, or stuck where waiting does not help (an image that
    /// cannot be pulled, a missing config key: at once), fails the revision
    /// with the pod's reason, instead of waiting out the progress deadline.
    /// 0 is taken as 1.
    pub fn restart_budget(mut self, restarts: u32) -> Self {
        self.restart_budget = restarts;
        self
    }

    /// Read the Deployment (and the Service in blue/green mode) and check the
    /// settings against them.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a missing Deployment or Service;
    /// [`Error::InvalidSpec`] naming the setting (`kubernetes.container`,
    /// `kubernetes.service`, `kubernetes.field_manager`...) for the rest.
    pub async fn build(self) -> Result<DeploymentTarget> {
        if self.field_manager.is_empty() {
            return Err(Error::invalid("kubernetes.field_manager", "must not be empty"));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::invalid("kubernetes.poll_interval", "must be above zero"));
        }
        if let Some(d) = self.progress_deadline {
            if d.as_secs() == 0 || i32::try_from(d.as_secs()).is_err() {
                return Err(Error::invalid(
                    "kubernetes.progress_deadline",
                    format!("{d:?} must be between 1 s and {} s", i32::MAX),
                ));
            }
        }
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let what = format!("get Deployment {}/{}", self.namespace, self.deployment);
        let d = api
            .get_opt(&self.deployment)
            .await
            .map_err(|e| classify(&what, e))?
            .ok_or_else(|| Error::NotFound {
                what: format!("Deployment {}/{}", self.namespace, self.deployment),
            })?;
        let template = d.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
        let container = template::container_name(&template, &self.deployment, self.container.as_deref())?;
        let hpa = autoscaler_of(&self.client, &self.namespace, &self.deployment).await?;
        refuse_autoscaled(&self.mode, &self.deployment, hpa.clone())?;
        if let Mode::BlueGreen { service } | Mode::Routed { service, .. } = &self.mode {
            let svc = service_api(&self.client, &self.namespace)
                .get_opt(service)
                .await
                .map_err(|e| classify(&format!("get Service {}/{service}", self.namespace), e))?
                .ok_or_else(|| Error::NotFound {
                    what: format!("Service {}/{service}", self.namespace),
                })?;
            let selector = original_selector(&svc);
            if selector.is_empty() {
                return Err(Error::invalid(
                    "kubernetes.service",
                    format!("Service {service} has no selector, so relay cannot switch it"),
                ));
            }
            let pod_labels = template::labels(&template);
            if !selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)) {
                return Err(Error::invalid(
                    "kubernetes.service",
                    format!(
                        "Service {service} selects {selector:?}, which the pods of Deployment {} do not carry",
                        self.deployment
                    ),
                ));
            }
        }
        Ok(DeploymentTarget {
            inner: Arc::new(Inner {
                name: self
                    .name
                    .unwrap_or_else(|| format!("k8s:{}/{}", self.namespace, self.deployment)),
                client: self.client,
                namespace: self.namespace,
                deployment: self.deployment,
                container,
                mode: self.mode,
                field_manager: self.field_manager,
                force: self.force,
                progress_deadline: self.progress_deadline,
                poll_interval: self.poll_interval,
                promote_timeout: self.promote_timeout,
                watch: self.watch,
                restart_budget: self.restart_budget,
                seen: std::sync::Mutex::default(),
                autoscaler: std::sync::Mutex::new(hpa),
            }),
        })
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The HorizontalPodAutoscaler that scales Deployment `deployment`, if one
/// does.
async fn autoscaler_of(client: &Client, namespace: &str, deployment: &str) -> Result<Option<String>> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| classify(&format!("list HorizontalPodAutoscalers {namespace}"), e))?;
    Ok(list.items.into_iter().find_map(|h| {
        let target = &h.spec.as_ref()?.scale_target_ref;
        (target.kind == "Deployment" && target.name == deployment).then(|| h.metadata.name.unwrap_or_default())
    }))
}

/// Refuse the mode that must set the replicas of a Deployment an
/// autoscaler scales (the replica-ratio canary shifts traffic by shrinking
/// it): relay would fight the autoscaler over `spec.replicas`.
fn refuse_autoscaled(mode: &Mode, deployment: &str, hpa: Option<String>) -> Result<()> {
    match (mode, hpa) {
        (Mode::Canary, Some(hpa)) => Err(Error::invalid(
            "kubernetes.mode",
            format!(
                "HorizontalPodAutoscaler {hpa} scales Deployment {deployment}, and canary (replica-ratio) mode \
                 would shrink it to shift traffic, against the autoscaler; use .traffic_router(..) or \
                 .blue_green(..), where relay sizes only its own {deployment}-canary Deployment, or the \
                 rolling mode, where the autoscaler keeps the count"
            ),
        )),
        _ => Ok(()),
    }
}

/// Whether relay's server-side applies own `spec.replicas` of `d` (a field
/// dropped from an apply its manager owns alone is removed, and replicas
/// would fall back to 1).
fn applies_replicas(d: &Deployment, manager: &str) -> bool {
    d.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(manager)
            && m.operation.as_deref() == Some("Apply")
            && m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.get("f:spec").and_then(|s| s.get("f:replicas")).is_some())
    })
}

/// Whether the stable Deployment asks for no replicas and runs no pod: a
/// first release's empty Deployment, or one scaled to zero.
fn serves_nothing(d: &Deployment) -> bool {
    status::desired(d) == 0 && d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0) == 0
}

fn service_api(client: &Client, namespace: &str) -> Api<Service> {
    Api::namespaced(client.clone(), namespace)
}

/// The Service's own selector: the one relay kept aside while it switched,
/// or the current one.
fn original_selector(svc: &Service) -> BTreeMap<String, String> {
    svc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SELECTOR_ANNOTATION))
        .and_then(|s| serde_json::from_str(s).ok())
        .or_else(|| svc.spec.as_ref().and_then(|s| s.selector.clone()))
        .unwrap_or_default()
}

/// The label selector string of a Deployment's `matchLabels`.
fn selector_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// The one revision a split sends everything to, for targets that cannot
/// split.
fn sole(split: &TrafficSplit, routing: &str) -> Result<RevisionId> {
    match split.weights().iter().collect::<Vec<_>>()[..] {
        [(id, 100)] => Ok(id.clone()),
        _ => Err(Error::invalid(
            "traffic",
            format!("{split}: a Deployment in {routing} mode sends all traffic to one revision"),
        )),
    }
}

impl DeploymentTarget {
    /// Start building a target for Deployment `deployment` in `namespace`.
    pub fn builder(
        client: Client,
        namespace: impl Into<String>,
        deployment: impl Into<String>,
    ) -> DeploymentTargetBuilder {
        DeploymentTargetBuilder {
            client,
            namespace: namespace.into(),
            deployment: deployment.into(),
            name: None,
            container: None,
            mode: Mode::Rolling {
                max_surge: IntOrString::String("25%".into()),
                max_unavailable: IntOrString::String("25%".into()),
            },
            field_manager: "relay".into(),
            force: true,
            progress_deadline: None,
            poll_interval: Duration::from_secs(2),
            promote_timeout: Duration::from_secs(600),
            watch: true,
            restart_budget: DEFAULT_RESTART_BUDGET,
        }
    }

    /// The name of the Deployment that runs candidates in canary and
    /// blue/green modes.
    pub fn canary_name(&self) -> String {
        format!("{}-canary", self.inner.deployment)
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.inner.client.clone(), &self.inner.namespace)
    }

    fn what(&self, verb: &str, kind: &str, name: &str) -> String {
        format!("{verb} {kind} {}/{name}", self.inner.namespace)
    }

    async fn get(&self, name: &str) -> Result<Deployment> {
        self.get_opt(name).await?.ok_or_else(|| self.no_deployment(name))
    }

    fn no_deployment(&self, name: &str) -> Error {
        Error::NotFound {
            what: format!("Deployment {}/{name}", self.inner.namespace),
        }
    }

    async fn get_opt(&self, name: &str) -> Result<Option<Deployment>> {
        self.deployments()
            .get_opt(name)
            .await
            .map_err(|e| classify(&self.what("get", "Deployment", name), e))
    }

    /// The stable Deployment and, outside rolling mode, the canary one.
    async fn both(&self) -> Result<(Deployment, Option<Deployment>)> {
        let stable = self.get(&self.inner.deployment).await?;
        let canary = match self.inner.mode {
            Mode::Rolling { .. } => None,
            _ => self.get_opt(&self.canary_name()).await?,
        };
        Ok((stable, canary))
    }

    /// Note where a watch for changes after this observe starts: each
    /// Deployment's `resourceVersion` (an absent canary Deployment is
    /// watched for from the stable one's).
    fn saw(&self, stable: &Deployment, canary: Option<&Deployment>) {
        let version = |d: &Deployment| d.metadata.resource_version.clone().unwrap_or_default();
        let mut seen = vec![(self.inner.deployment.clone(), version(stable))];
        if !matches!(self.inner.mode, Mode::Rolling { .. }) {
            seen.push((self.canary_name(), canary.map_or_else(|| version(stable), version)));
        }
        *lock(&self.inner.seen) = seen;
    }

    /// Returns at the first change to Deployment `name` after `version`,
    /// or when the server ends the watch (so the caller observes afresh).
    async fn changed_after(&self, name: &str, version: &str) -> Result<()> {
        self.watch_until(name, version, |_| true).await.map(|_| ())
    }

    /// Watches Deployment `name` from `version` and returns the first state
    /// it takes that is `done`, or `None` when the watch ends first (the
    /// server's timeout, history it no longer holds, the Deployment
    /// deleted): the caller reads afresh. A watch that the server (or a
    /// proxy) ends at once, with no event, is an error: taking it for a
    /// change would have the caller read and watch again in a tight loop.
    async fn watch_until(
        &self,
        name: &str,
        version: &str,
        done: impl Fn(&Deployment) -> bool,
    ) -> Result<Option<Deployment>> {
        let what = || self.what("watch", "Deployment", name);
        let params = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(WATCH_SECONDS);
        let started = tokio::time::Instant::now();
        let stream = self
            .deployments()
            .watch(&params, version)
            .await
            .map_err(|e| classify(&what(), e))?;
        let mut stream = std::pin::pin!(stream);
        let mut changes = 0;
        while let Some(event) = stream.next().await {
            match event.map_err(|e| classify(&what(), e))? {
                WatchEvent::Bookmark(_) => {}
                WatchEvent::Added(d) | WatchEvent::Modified(d) if done(&d) => return Ok(Some(d)),
                WatchEvent::Added(_) | WatchEvent::Modified(_) => changes += 1,
                // The server no longer holds history that old.
                WatchEvent::Error(status) if status.code == 410 => return Ok(None),
                WatchEvent::Error(status) => return Err(classify(&what(), kube::Error::Api(status))),
                WatchEvent::Deleted(_) => return Ok(None),
            }
        }
        if changes == 0 && started.elapsed() < WATCH_SHORTEST {
            return Err(Error::provider(
                "kubernetes",
                true,
                format!("{}: the server ended the watch at once", what()),
            ));
        }
        Ok(None)
    }

    async fn replica_sets(&self, d: &Deployment) -> Result<Vec<ReplicaSet>> {
        let api: Api<ReplicaSet> = Api::namespaced(self.inner.client.clone(), &self.inner.namespace);
        let name = d.metadata.name.as_deref().unwrap_or_default();
        let list = api
            .list(&ListParams::default().labels(&selector_of(d)))
            .await
            .map_err(|e| classify(&self.what("list ReplicaSets of", "Deployment", name), e))?;
        Ok(list.items.into_iter().filter(|rs| status::owned_by(rs, d)).collect())
    }

    /// Server-side apply `spec` to Deployment `name`; the Deployment as the
    /// apply left it.
    async fn apply(&self, name: &str, spec: serde_json::Value) -> Result<Deployment> {
        let body = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": spec,
        });
        let mut params = PatchParams::apply(&self.inner.field_manager);
        if self.inner.force {
            params = params.force();
        }
        match self.deployments().patch(name, &params, &Patch::Apply(&body)).await {
            Ok(d) => Ok(d),
            // Another field manager owns fields this apply sets (only
            // without force): name them, change nothing.
            Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict {
                what: format!(
                    "Deployment {}/{name}: {}; relay does not take fields another manager owns \
                     (force_ownership(false)): change them through that manager, or let relay own them",
                    self.inner.namespace, s.message
                ),
            }),
            Err(e) => Err(classify(&self.what("apply", "Deployment", name), e)),
        }
    }

    async fn set_replicas(&self, name: &str, n: u32) -> Result<()> {
        let params = PatchParams {
            field_manager: Some(self.inner.field_manager.clone()),
            ..Default::default()
        };
        self.deployments()
            .patch(name, &params, &Patch::Merge(json!({"spec": {"replicas": n}})))
            .await
            .map_err(|e| classify(&self.what("scale", "Deployment", name), e))?;
        Ok(())
    }

    fn deadline_seconds(&self) -> Option<i32> {
        self.inner
            .progress_deadline
            .and_then(|d| i32::try_from(d.as_secs()).ok())
    }

    /// Refuse secrets that changed since the plan: a pod reads the current
    /// value of a Secret, and Kubernetes keeps no older one.
    async fn check_secrets(&self, spec: &RevisionSpec) -> Result<()> {
        let api: Api<Secret> = Api::namespaced(self.inner.client.clone(), &self.inner.namespace);
        for (name, reference) in &spec.secrets {
            let (secret, _, pinned) = template::secret_key_ref(name, reference, &self.inner.namespace)?;
            let Some(pinned) = pinned else { continue };
            let what = self.what("get", "Secret", secret);
            let now = api
                .get_metadata_opt(secret)
                .await
                .map_err(|e| classify(&what, e))?
                .ok_or_else(|| Error::NotFound {
                    what: format!("Secret {}/{secret} (release.secrets.{name})", self.inner.namespace),
                })?
                .metadata
                .resource_version
                .unwrap_or_default();
            if now != pinned {
                return Err(Error::Conflict {
                    what: format!(
                        "Secret {}/{secret} (release.secrets.{name}) changed since the plan (resourceVersion {pinned}, now {now}); \
                         pods would read the new value, so plan again",
                        self.inner.namespace
                    ),
                });
            }
        }
        Ok(())
    }

    /// Put `id`'s template back into Deployment `d` from its ReplicaSet
    /// history, as `kubectl rollout undo` does. The replace carries the
    /// `resourceVersion`, so a concurrent change is re-read, never lost.
    async fn restore(&self, d: &Deployment, id: &RevisionId) -> Result<()> {
        let name = d.metadata.name.clone().unwrap_or_default();
        let sets = self.replica_sets(d).await?;
        let template = sets
            .iter()
            .filter_map(|rs| rs.spec.as_ref()?.template.as_ref())
            .find(|t| &template::revision_of(t) == id)
            .map(template::without_hash)
            .ok_or_else(|| Error::NotFound {
                what: format!(
                    "revision {id} in the ReplicaSet history of Deployment {}/{name} (revisionHistoryLimit may have dropped it)",
                    self.inner.namespace
                ),
            })?;
        let mut current = d.clone();
        for attempt in 1..=REPLACE_ATTEMPTS {
            if let Some(spec) = current.spec.as_mut() {
                spec.template = template.clone();
            }
            current.metadata.managed_fields = None;
            let params = PostParams {
                field_manager: Some(self.inner.field_manager.clone()),
                ..Default::default()
            };
            match self.deployments().replace(&name, &params, &current).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 && attempt < REPLACE_ATTEMPTS => {
                    current = self.get(&name).await?;
                }
                Err(e) => return Err(classify(&self.what("replace", "Deployment", &name), e)),
            }
        }
        Err(Error::Conflict {
            what: format!(
                "Deployment {}/{name} kept changing while relay restored {id}",
                self.inner.namespace
            ),
        })
    }

    /// Wait for the stable Deployment, last `read` so, to run its template
    /// on every replica.
    async fn wait_complete(&self, read: Deployment) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.inner.promote_timeout;
        let mut watch = self.inner.watch;
        let mut read = Some(read);
        loop {
            // The state just read (by the promotion's apply), else afresh.
            let d = match read.take() {
                Some(d) => d,
                None => self.get(&self.inner.deployment).await?,
            };
            if let Some(end) = self.completion(&d) {
                return end;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "Deployment {}/{} not complete {:?} after promotion",
                        self.inner.namespace, self.inner.deployment, self.inner.promote_timeout
                    ),
                });
            }
            if watch {
                // Judge each state the watch reports, without reading the
                // Deployment again; read afresh when the watch ends or after
                // a while, in case a change went unreported.
                let version = d.metadata.resource_version.clone().unwrap_or_default();
                let wait = deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .min(WATCH_RESYNC);
                let until = self.watch_until(&self.inner.deployment, &version, |d| self.completion(d).is_some());
                match tokio::time::timeout(wait, until).await {
                    Ok(Ok(Some(d))) => return self.completion(&d).unwrap_or(Ok(())),
                    Ok(Ok(None)) | Err(_) => continue,
                    Ok(Err(e)) => {
                        tracing::warn!(target = %self.inner.name, error = %e, "watch failed, polling instead");
                        watch = false;
                    }
                }
            }
            tokio::time::sleep(self.inner.poll_interval).await;
        }
    }

    /// How a promotion ends with the stable Deployment in state `d`: done,
    /// failed past its progress deadline, or `None` while it still rolls.
    fn completion(&self, d: &Deployment) -> Option<Result<()>> {
        if status::complete(d) {
            return Some(Ok(()));
        }
        if status::caught_up(d) && status::deadline_exceeded(d) {
            return Some(Err(Error::RevisionFailed {
                target: self.inner.name.clone(),
                revision: status::current(d).map(|r| r.to_string()).unwrap_or_default(),
                reason: format!(
                    "Deployment {}/{} exceeded its progress deadline",
                    self.inner.namespace, self.inner.deployment
                ),
            }));
        }
        None
    }
}

#[async_trait]
impl Target for DeploymentTarget {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn manual(&self, action: &relay_core::runbook::ManualAction) -> Option<Vec<String>> {
        self.manual_commands(action)
    }

    fn capabilities(&self) -> Capabilities {
        match self.inner.mode {
            Mode::Rolling { .. } => Capabilities::new(Routing::None, 1).watching(self.inner.watch),
            Mode::Canary => Capabilities::new(Routing::ReplicaRatio, 2).watching(self.inner.watch),
            Mode::BlueGreen { .. } => Capabilities::new(Routing::Switch, 2).watching(self.inner.watch),
            Mode::Routed { .. } => Capabilities::new(Routing::Weighted, 2).watching(self.inner.watch),
        }
    }

    #[tracing::instrument(skip_all, fields(target = %self.inner.name))]
    async fn observe(&self) -> Result<TargetState> {
        let (stable, canary) = self.both().await?;
        self.saw(&stable, canary.as_ref());
        let mut revisions = BTreeMap::new();
        // The autoscaler found by the last call that looked (build, stage,
        // scale, promote): observe is the hot path, so it does not list.
        let autoscaled = lock(&self.inner.autoscaler).is_some();
        for d in std::iter::once(&stable).chain(canary.as_ref()) {
            // A Deployment that runs one template says all in its status.
            let sets = match status::runs_one_template(d) {
                true => None,
                false => Some(self.replica_sets(d).await?),
            };
            status::add_revisions(d, sets.as_deref(), &mut revisions);
            if autoscaled && d.metadata.name.as_deref() == Some(self.inner.deployment.as_str()) {
                // The autoscaler's count is the current template's.
                if let Some(r) = status::current(d).and_then(|id| revisions.get_mut(&id)) {
                    r.autoscaled = true;
                }
            }
        }
        self.fail_stuck_pods(&mut revisions).await?;
        let current = status::current(&stable);
        let promoted = match self.inner.mode {
            Mode::Rolling { .. } => stable
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(STABLE_ANNOTATION))
                .map(|s| RevisionId(s.clone()))
                .or(current.clone()),
            // A stable Deployment asked to run nothing (created at zero
            // replicas for a first release, or scaled to zero) serves
            // nothing: there is no stable revision, and its template is
            // not a running revision.
            _ if serves_nothing(&stable) => {
                let idle = |r: &RevisionState| r.desired == 0 && r.ready == 0 && r.failed == 0;
                if let Some(id) = current.as_ref().filter(|id| revisions.get(*id).is_some_and(idle)) {
                    revisions.remove(id);
                }
                None
            }
            _ => current.clone(),
        };
        let traffic = match &self.inner.mode {
            Mode::Rolling { .. } => current.as_ref().map(TrafficSplit::all).unwrap_or_default(),
            Mode::Canary => TrafficSplit::by_replicas(revisions.values().map(|r| (&r.id, r.ready))),
            Mode::BlueGreen { service } => self
                .switched_to(service)
                .await?
                .or(promoted.clone())
                .as_ref()
                .map(TrafficSplit::all)
                .unwrap_or_default(),
            Mode::Routed { router, .. } => {
                let weight = router.canary_weight().await?;
                let on_canary = canary.as_ref().and_then(status::current);
                match (&promoted, on_canary) {
                    (Some(s), Some(c)) if *s != c => TrafficSplit::canary(s, &c, weight)?,
                    (Some(s), _) => TrafficSplit::all(s),
                    // A first release: the canary Service's share goes to
                    // it, the rest to a stable Service with no pods.
                    (None, Some(c)) if weight > 0 => TrafficSplit::all(&c),
                    (None, _) => TrafficSplit::default(),
                }
            }
        };
        Ok(TargetState {
            stable: promoted,
            revisions: revisions.into_values().collect(),
            traffic,
        })
    }

    /// A watch on the Deployments the last observe read (two in canary and
    /// blue/green mode), from their `resourceVersion`s; without an observe
    /// yet, returns at once.
    async fn changed(&self) -> Result<()> {
        let seen = lock(&self.inner.seen).clone();
        match seen.as_slice() {
            [] => Ok(()),
            [(name, version)] => self.changed_after(name, version).await,
            [(a, va), (b, vb), ..] => tokio::select! {
                r = self.changed_after(a, va) => r,
                r = self.changed_after(b, vb) => r,
            },
        }
    }

    #[tracing::instrument(skip_all, fields(target = %self.inner.name, revision = %spec.id, replicas))]
    async fn stage(&self, spec: &RevisionSpec, replicas: u32) -> Result<()> {
        self.check_secrets(spec).await?;
        let hpa = match self.inner.mode {
            // An autoscaler may have come since the target was built.
            Mode::Rolling { .. } | Mode::Canary => {
                let hpa = self.autoscaler().await?;
                refuse_autoscaled(&self.inner.mode, &self.inner.deployment, hpa.clone())?;
                hpa
            }
            _ => None,
        };
        let stable = self.get(&self.inner.deployment).await?;
        match &self.inner.mode {
            Mode::Rolling {
                max_surge,
                max_unavailable,
            } => {
                self.stage_in_place(spec, replicas, &stable, hpa.is_some(), max_surge, max_unavailable)
                    .await
            }
            Mode::Canary | Mode::BlueGreen { .. } | Mode::Routed { .. } => {
                self.stage_beside(spec, replicas, &stable).await
            }
        }
    }

    #[tracing::instrument(skip_all, fields(target = %self.inner.name, revision = %id, replicas))]
    async fn scale(&self, id: &RevisionId, replicas: u32) -> Result<()> {
        // Read one Deployment at a time, the canary (which relay scales
        // most) first, and stop at the one that runs `id`.
        let mut names = vec![self.inner.deployment.clone()];
        if !matches!(self.inner.mode, Mode::Rolling { .. }) {
            names.insert(0, self.canary_name());
        }
        let mut found = None;
        for name in names {
            match self.get_opt(&name).await? {
                Some(d) if status::current(&d).as_ref() == Some(id) => {
                    found = Some(d);
                    break;
                }
                Some(_) => {}
                None if name == self.inner.deployment => return Err(self.no_deployment(&name)),
                None => {}
            }
        }
        let d = &found.ok_or_else(|| match self.inner.mode {
            Mode::Rolling { .. } => Error::Conflict {
                what: format!(
                    "Deployment {} runs one template at a time and {id} is not it; route to it first",
                    self.inner.deployment
                ),
            },
            _ => Error::NotFound {
                what: format!("revision {id} in Deployment {} or its canary", self.inner.deployment),
            },
        })?;
        if status::desired(d) == replicas {
            return Ok(());
        }
        let name = d.metadata.name.as_deref().unwrap_or_default();
        if name == self.inner.deployment {
            if let Some(hpa) = self.autoscaler().await? {
                // Its autoscaler decides how many replicas it runs.
                tracing::info!(%hpa, replicas, "not scaling an autoscaled Deployment");
                return Ok(());
            }
        }
        self.set_replicas(name, replicas).await
    }

    #[tracing::instrument(skip_all, fields(target = %self.inner.name, split = %split))]
    async fn route(&self, split: &TrafficSplit) -> Result<()> {
        if split.is_empty() {
            return Err(Error::invalid("traffic", "a split must send traffic somewhere"));
        }
        // Refuse a split the mode cannot serve before changing anything.
        let sole_revision = match &self.inner.mode {
            Mode::Rolling { .. } => Some(sole(split, "rolling")?),
            Mode::BlueGreen { .. } => Some(sole(split, "blue/green")?),
            Mode::Canary | Mode::Routed { .. } => None,
        };
        let (mut stable, mut canary) = self.both().await?;
        // A revision that should serve but runs in no Deployment any more
        // (a rollback after the template moved on) comes back from history.
        let running = |s: &Deployment, c: &Option<Deployment>| {
            [Some(s), c.as_ref()]
                .into_iter()
                .flatten()
                .filter_map(status::current)
                .collect::<Vec<_>>()
        };
        let missing: Vec<RevisionId> = split
            .weights()
            .keys()
            .filter(|id| !running(&stable, &canary).contains(id))
            .cloned()
            .collect();
        if let [id] = &missing[..] {
            self.restore(&stable, id).await?;
            (stable, canary) = self.both().await?;
        } else if missing.len() > 1 {
            return Err(Error::NotFound {
                what: format!(
                    "revisions {missing:?} in Deployment {} or its canary",
                    self.inner.deployment
                ),
            });
        }
        match &self.inner.mode {
            Mode::Rolling { .. } => Ok(()),
            _ => self.route_beside(split, &stable, canary.as_ref(), sole_revision).await,
        }
    }

    #[tracing::instrument(skip_all, fields(target = %self.inner.name, revision = %id))]
    async fn promote(&self, id: &RevisionId) -> Result<()> {
        let (stable, canary) = self.both().await?;
        match self.inner.mode {
            Mode::Rolling { .. } => self.promote_in_place(id, &stable).await,
            _ => self.promote_from_canary(id, stable, canary).await,
        }
    }

    #[tracing::instrument(skip_all, fields(target = %self.inner.name, revision = %id))]
    async fn describe(&self, id: &RevisionId) -> Result<Option<relay_core::RunningRevision>> {
        let (stable, canary) = self.both().await?;
        Ok(std::iter::once(&stable)
            .chain(canary.as_ref())
            .find(|d| status::current(d).as_ref() == Some(id))
            .and_then(|d| d.spec.as_ref())
            .map(|s| template::running(&s.template, &self.inner.container)))
    }

    #[tracing::instrument(skip_all, fields(target = %self.inner.name, revision = %id))]
    async fn retire(&self, id: &RevisionId) -> Result<()> {
        let (stable, canary) = self.both().await?;
        if status::current(&stable).as_ref() == Some(id) {
            return Err(Error::Conflict {
                what: format!(
                    "revision {id} is what Deployment {} runs; route to and promote another revision first",
                    self.inner.deployment
                ),
            });
        }
        let Some(c) = canary.filter(|c| status::current(c).as_ref() == Some(id)) else {
            // Gone already, or only in the ReplicaSet history, which stays
            // for `kubectl rollout undo`.
            return Ok(());
        };
        let serving = self.canary_serving(id, &c).await?;
        if serving {
            // Traffic is routed away first while the stable Deployment
            // could take it; with nothing there, the candidate goes with
            // its traffic (a first release rolled back), the Service
            // back on its own selector.
            if !serves_nothing(&stable) {
                return Err(Error::Conflict {
                    what: format!(
                        "revision {id} still receives traffic in {}; route it away first",
                        self.canary_name()
                    ),
                });
            }
            self.traffic_to_stable().await?;
        }
        self.delete_canary().await
    }
}

impl DeploymentTarget {
    /// The HorizontalPodAutoscaler that scales the stable Deployment, if
    /// any; remembered for `observe`.
    async fn autoscaler(&self) -> Result<Option<String>> {
        let hpa = autoscaler_of(&self.inner.client, &self.inner.namespace, &self.inner.deployment).await?;
        lock(&self.inner.autoscaler).clone_from(&hpa);
        Ok(hpa)
    }

    /// The `spec.replicas` an apply to the stable Deployment `stable` sets:
    /// `want`, unless an autoscaler scales it. Then none, or its present
    /// count where relay's applies own the field (dropped from an apply
    /// that owned it alone, replicas would fall back to 1).
    fn replicas_to_apply(&self, stable: &Deployment, autoscaled: bool, want: u32) -> Option<u32> {
        if !autoscaled {
            Some(want)
        } else if applies_replicas(stable, &self.inner.field_manager) {
            Some(status::desired(stable))
        } else {
            None
        }
    }

    /// Count the pods of each revision that is short of ready replicas
    /// which will not get ready by waiting (see
    /// [`DeploymentTargetBuilder::restart_budget`]) as failed, with the
    /// first one's reason. Read only while a revision is short, so a
    /// settled target costs no pod listing.
    async fn fail_stuck_pods(&self, revisions: &mut BTreeMap<RevisionId, RevisionState>) -> Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.inner.client.clone(), &self.inner.namespace);
        for r in revisions.values_mut().filter(|r| r.failed == 0 && r.ready < r.desired) {
            let selector = format!("{REVISION_LABEL}={}", r.id);
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| classify(&format!("list Pods {}/{selector}", self.inner.namespace), e))?;
            let failures: Vec<String> = list
                .items
                .iter()
                .filter_map(|p| failure(p, self.inner.restart_budget))
                .collect();
            if let Some(first) = failures.first() {
                r.failed = u32::try_from(failures.len()).unwrap_or(u32::MAX);
                r.failure = Some(match failures.len() {
                    1 => first.clone(),
                    n => format!("{first} (and {} more pods)", n - 1),
                });
            }
        }
        Ok(())
    }
}

impl DeploymentTarget {
    async fn annotate_stable(&self, id: &RevisionId) -> Result<()> {
        let params = PatchParams {
            field_manager: Some(self.inner.field_manager.clone()),
            ..Default::default()
        };
        let patch = json!({"metadata": {"annotations": {STABLE_ANNOTATION: id.as_str()}}});
        self.deployments()
            .patch(&self.inner.deployment, &params, &Patch::Merge(&patch))
            .await
            .map_err(|e| classify(&self.what("annotate", "Deployment", &self.inner.deployment), e))?;
        Ok(())
    }
}
