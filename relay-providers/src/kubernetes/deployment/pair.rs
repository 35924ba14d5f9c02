//! Canary, routed and blue/green modes: the user's Deployment runs the
//! stable revision and `<name>-canary` the candidate beside it. They
//! differ in how traffic is split: by ready replicas (canary), by a
//! [`TrafficRouter`](super::super::router::TrafficRouter)'s exact weights
//! (routed), or by the Service's selector (blue/green).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use relay_core::{Error, Result, RevisionId, RevisionSpec, TrafficSplit};
use serde_json::json;

use super::super::error::classify;
use super::super::router::canary_service;
use super::template::CANARY_LABEL;
use super::{
    original_selector, service_api, status, template, DeploymentTarget, Mode, POD_TEMPLATE_HASH, REVISION_LABEL,
    SELECTOR_ANNOTATION,
};

impl DeploymentTarget {
    /// Stage `spec` at `replicas` in the canary Deployment, from the
    /// stable Deployment's (`stable`, as read) template.
    pub(super) async fn stage_beside(&self, spec: &RevisionSpec, replicas: u32, stable: &Deployment) -> Result<()> {
        let base = stable.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
        if let Mode::Routed { service, .. } = &self.inner.mode {
            self.ensure_canary_service(service).await?;
        }
        if status::current(stable).as_ref() == Some(&spec.id) {
            return Err(Error::Conflict {
                what: format!(
                    "revision {} already runs in the stable Deployment {}; there is nothing to stage",
                    spec.id, self.inner.deployment
                ),
            });
        }
        let canary = self.canary_name();
        if let Some(c) = self.get_opt(&canary).await? {
            if status::current(&c).as_ref() == Some(&spec.id) {
                if status::desired(&c) != replicas {
                    self.set_replicas(&canary, replicas).await?;
                }
                return Ok(());
            }
        }
        let body = self.canary_spec(&base, spec, replicas)?;
        self.apply(&canary, body).await.map(drop)
    }

    /// Split traffic between the two Deployments (as read) as `split`
    /// says; `sole_revision` is the one revision a blue/green split sends
    /// everything to.
    pub(super) async fn route_beside(
        &self,
        split: &TrafficSplit,
        stable: &Deployment,
        canary: Option<&Deployment>,
        sole_revision: Option<RevisionId>,
    ) -> Result<()> {
        let on_stable = status::current(stable);
        let on_canary = canary.and_then(status::current);
        match &self.inner.mode {
            Mode::Rolling { .. } => Ok(()),
            Mode::Canary => {
                // Traffic follows ready replicas: a revision routed to 0%
                // stops serving when its pods go.
                for d in std::iter::once(stable).chain(canary) {
                    let Some(id) = status::current(d) else { continue };
                    if split.weight(&id) == 0 && status::desired(d) > 0 {
                        self.set_replicas(d.metadata.name.as_deref().unwrap_or_default(), 0)
                            .await?;
                    }
                }
                Ok(())
            }
            Mode::BlueGreen { service } => {
                let to = sole_revision.as_ref();
                if on_canary.as_ref() == to && on_stable.as_ref() != to {
                    self.switch_service(service, to).await
                } else {
                    self.switch_service(service, None).await
                }
            }
            // Exact weights; both Deployments keep their replicas.
            Mode::Routed { router, .. } => {
                let weight = match on_canary {
                    Some(c) if on_stable.as_ref() != Some(&c) => split.weight(&c),
                    _ => 0,
                };
                router.set_canary_weight(weight).await
            }
        }
    }

    /// Promote `id`: the stable Deployment takes the canary's template (if
    /// it does not run `id` already), is waited for, takes the traffic
    /// back, and the canary Deployment goes.
    pub(super) async fn promote_from_canary(
        &self,
        id: &RevisionId,
        mut stable: Deployment,
        canary: Option<Deployment>,
    ) -> Result<()> {
        if status::current(&stable).as_ref() != Some(id) {
            let c = canary
                .as_ref()
                .filter(|c| status::current(c).as_ref() == Some(id))
                .ok_or_else(|| Error::NotFound {
                    what: format!("revision {id} in Deployment {} or its canary", self.inner.deployment),
                })?;
            let mut t = c.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
            let mut labels = template::labels(&stable.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default());
            labels.insert(REVISION_LABEL.to_owned(), id.to_string());
            labels.remove(POD_TEMPLATE_HASH);
            template::set_labels(&mut t, labels);
            let mut body = json!({"template": t});
            let want = status::desired(c).max(status::desired(&stable));
            let hpa = self.autoscaler().await?;
            if let Some(n) = self.replicas_to_apply(&stable, hpa.is_some(), want) {
                body["replicas"] = json!(n);
            }
            if let Some(s) = self.deadline_seconds() {
                body["progressDeadlineSeconds"] = json!(s);
            }
            stable = self.apply(&self.inner.deployment, body).await?;
        }
        self.wait_complete(stable).await?;
        // The stable Deployment runs the candidate everywhere: its Service
        // takes the traffic back before the canary goes.
        self.traffic_to_stable().await?;
        // The candidate runs in the stable Deployment now: its canary
        // Deployment goes (left at zero replicas it would linger in every
        // listing and in the next rollout's way).
        if canary.is_some() {
            self.delete_canary().await?;
        }
        Ok(())
    }

    /// All traffic back on the stable Deployment's pods: the Service on its
    /// own selector (blue/green), the router's canary weight at 0 (routed).
    /// In canary mode traffic follows the replicas: nothing to do.
    pub(super) async fn traffic_to_stable(&self) -> Result<()> {
        match &self.inner.mode {
            Mode::BlueGreen { service } => self.switch_service(service, None).await,
            Mode::Routed { router, .. } => router.set_canary_weight(0).await,
            Mode::Canary | Mode::Rolling { .. } => Ok(()),
        }
    }

    /// Whether the canary Deployment `canary`, running `id`, takes traffic.
    pub(super) async fn canary_serving(&self, id: &RevisionId, canary: &Deployment) -> Result<bool> {
        Ok(match &self.inner.mode {
            Mode::BlueGreen { service } => self.switched_to(service).await?.as_ref() == Some(id),
            Mode::Routed { router, .. } => router.canary_weight().await? > 0,
            Mode::Canary | Mode::Rolling { .. } => status::desired(canary) > 0,
        })
    }

    pub(super) async fn switch_service(&self, service: &str, to: Option<&RevisionId>) -> Result<()> {
        let api = service_api(&self.inner.client, &self.inner.namespace);
        let what = self.what("switch", "Service", service);
        let svc = api.get(service).await.map_err(|e| classify(&what, e))?;
        let original = original_selector(&svc);
        let current = svc.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
        let (wanted, keep) = match to {
            Some(id) => (BTreeMap::from([(REVISION_LABEL.to_owned(), id.to_string())]), true),
            None => (original.clone(), false),
        };
        if current == wanted {
            return Ok(());
        }
        // A merge patch removes a key set to null.
        let mut selector: serde_json::Map<String, serde_json::Value> =
            current.keys().map(|k| (k.clone(), serde_json::Value::Null)).collect();
        for (k, v) in &wanted {
            selector.insert(k.clone(), json!(v));
        }
        let annotation = if keep {
            json!(serde_json::to_string(&original).unwrap_or_default())
        } else {
            serde_json::Value::Null
        };
        let patch = json!({
            "metadata": {"annotations": {SELECTOR_ANNOTATION: annotation}},
            "spec": {"selector": selector},
        });
        let params = PatchParams {
            field_manager: Some(self.inner.field_manager.clone()),
            ..Default::default()
        };
        api.patch(service, &params, &Patch::Merge(&patch))
            .await
            .map_err(|e| classify(&what, e))?;
        Ok(())
    }

    /// The canary Deployment for `base` (the stable template) running `spec`.
    pub(super) fn canary_spec(
        &self,
        base: &PodTemplateSpec,
        spec: &RevisionSpec,
        replicas: u32,
    ) -> Result<serde_json::Value> {
        let mut t = template::candidate(base, spec, &self.inner.container, &self.inner.namespace)?;
        let mut labels = template::labels(&t);
        if let Mode::BlueGreen { .. } | Mode::Routed { .. } = self.inner.mode {
            // Without the labels the Service selects, the candidate gets no
            // traffic until the switch (or the router's weight).
            labels.retain(|k, _| k == template::REVISION_LABEL);
        }
        labels.insert(CANARY_LABEL.to_owned(), self.inner.deployment.clone());
        labels.remove(POD_TEMPLATE_HASH);
        template::set_labels(&mut t, labels);
        let mut spec = json!({
            "replicas": replicas,
            "selector": {"matchLabels": {CANARY_LABEL: self.inner.deployment}},
            "template": t,
        });
        if let Some(s) = self.deadline_seconds() {
            spec["progressDeadlineSeconds"] = json!(s);
        }
        Ok(spec)
    }

    /// Create the canary Service beside `service` (routed mode) unless it
    /// exists: `service`'s ports, selecting the canary Deployment's pods.
    pub(super) async fn ensure_canary_service(&self, service: &str) -> Result<()> {
        let api = service_api(&self.inner.client, &self.inner.namespace);
        let name = canary_service(service);
        if api
            .get_opt(&name)
            .await
            .map_err(|e| classify(&self.what("get", "Service", &name), e))?
            .is_some()
        {
            return Ok(());
        }
        let stable = api
            .get(service)
            .await
            .map_err(|e| classify(&self.what("get", "Service", service), e))?;
        let ports: Vec<serde_json::Value> = stable
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .map(|p| {
                let mut port = json!({"port": p.port});
                if let Some(n) = &p.name {
                    port["name"] = json!(n);
                }
                if let Some(t) = &p.target_port {
                    port["targetPort"] = json!(t);
                }
                if let Some(proto) = &p.protocol {
                    port["protocol"] = json!(proto);
                }
                port
            })
            .collect();
        let svc: Service = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "labels": {CANARY_LABEL: self.inner.deployment}},
            "spec": {"selector": {CANARY_LABEL: self.inner.deployment}, "ports": ports},
        }))
        .map_err(|e| Error::provider("kubernetes", false, format!("Service {name}: {e}")))?;
        match api.create(&PostParams::default(), &svc).await {
            Ok(_) => Ok(()),
            // Created meanwhile by another engine: the same Service.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(classify(&self.what("create", "Service", &name), e)),
        }
    }

    /// Delete the canary Deployment (its pods with it); gone already is done.
    pub(super) async fn delete_canary(&self) -> Result<()> {
        let name = self.canary_name();
        match self.deployments().delete(&name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(classify(&self.what("delete", "Deployment", &name), e)),
        }
    }

    /// The revision the Service is switched to, if relay switched it.
    pub(super) async fn switched_to(&self, service: &str) -> Result<Option<RevisionId>> {
        let svc = service_api(&self.inner.client, &self.inner.namespace)
            .get(service)
            .await
            .map_err(|e| classify(&self.what("get", "Service", service), e))?;
        Ok(svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| s.get(REVISION_LABEL))
            .map(|r| RevisionId(r.clone())))
    }
}
