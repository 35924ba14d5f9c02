//! Rolling mode: the user's Deployment is updated in place, and its
//! controller replaces the pods (`maxSurge`, `maxUnavailable`); one
//! revision runs at a time, so there is nothing to route.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use relay_core::{Error, Result, RevisionId, RevisionSpec};
use serde_json::json;

use super::{status, template, DeploymentTarget, STABLE_ANNOTATION};

impl DeploymentTarget {
    /// Stage `spec` at `replicas` by applying its template to the
    /// Deployment (`stable`, as read); its replicas are left to an
    /// autoscaler when one scales it.
    pub(super) async fn stage_in_place(
        &self,
        spec: &RevisionSpec,
        replicas: u32,
        stable: &Deployment,
        autoscaled: bool,
        max_surge: &IntOrString,
        max_unavailable: &IntOrString,
    ) -> Result<()> {
        let base = stable.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
        if status::current(stable).as_ref() == Some(&spec.id) {
            if status::desired(stable) != replicas && !autoscaled {
                self.set_replicas(&self.inner.deployment, replicas).await?;
            }
            return Ok(());
        }
        let annotated = stable
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(STABLE_ANNOTATION));
        let t = template::candidate(&base, spec, &self.inner.container, &self.inner.namespace)?;
        let mut body = json!({
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": max_surge, "maxUnavailable": max_unavailable},
            },
            "template": t,
        });
        if let Some(n) = self.replicas_to_apply(stable, autoscaled, replicas) {
            body["replicas"] = json!(n);
        }
        if let Some(s) = self.deadline_seconds() {
            body["progressDeadlineSeconds"] = json!(s);
        }
        if !annotated {
            // Adopt what runs now as stable, so a rollback of a
            // Deployment applied by hand knows where to go back.
            if let Some(current) = status::current(stable) {
                self.annotate_stable(&current).await?;
            }
        }
        self.apply(&self.inner.deployment, body).await.map(drop)
    }

    /// Promote `id`, which the Deployment (`stable`, as read) must run:
    /// mark it as the stable revision, where a rollback goes back to.
    pub(super) async fn promote_in_place(&self, id: &RevisionId, stable: &Deployment) -> Result<()> {
        let promoted = stable
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(STABLE_ANNOTATION));
        if promoted.map(String::as_str) == Some(id.as_str()) {
            return Ok(());
        }
        if status::current(stable).as_ref() != Some(id) {
            return Err(Error::Conflict {
                what: format!(
                    "Deployment {} does not run {id}; route to it before promoting it",
                    self.inner.deployment
                ),
            });
        }
        self.annotate_stable(id).await
    }
}
