//! Exact traffic weights for a [`super::DeploymentTarget`]: the
//! [`TrafficRouter`] seam, and its Gateway API `HTTPRoute` implementation.

use std::fmt;

use async_trait::async_trait;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client};
use relay_core::{Error, Result};
use serde_json::{json, Value};

use super::error::classify;

/// Replaces that lose a race re-read and try again this often.
const ATTEMPTS: u32 = 5;

/// Splits a Deployment target's traffic between two Kubernetes Services by
/// exact weights: the stable Service (which selects the stable
/// Deployment's pods) and the canary Service `<stable>-canary` (which
/// selects the candidate's), whatever carries the requests — a Gateway API
/// implementation, a service mesh, an ingress controller.
///
/// [`super::DeploymentTargetBuilder::traffic_router`] puts a
/// [`super::DeploymentTarget`] in routed mode with one: the stable
/// Deployment keeps all its replicas through a canary, the candidate is
/// scaled to its share, and the weights are the router's.
///
/// # Adding a router
/// Implement the two methods against the object your traffic layer reads,
/// changing only the weights of the two Services' entries and leaving the
/// rest of the object as it is (read it, change the weights, write it back
/// with its `resourceVersion`, as [`HttpRouteRouter`] does):
///
/// - **Istio**: a `VirtualService` (`networking.istio.io/v1`) whose HTTP
///   route lists `route[].destination.host` = the two Services, with
///   `route[].weight`.
/// - **Linkerd / SMI**: a `TrafficSplit` (`split.smi-spec.io`) with
///   `spec.backends[].service` and `.weight` (or, on current Linkerd, the
///   Gateway API `HTTPRoute` this crate already drives).
/// - **ingress-nginx**: a second `Ingress` for the canary Service with the
///   annotations `nginx.ingress.kubernetes.io/canary: "true"` and
///   `nginx.ingress.kubernetes.io/canary-weight: "<percent>"`.
///
/// Pass the router's object names to it at construction, and give relay's
/// role `get` and `update` on that resource.
#[async_trait]
pub trait TrafficRouter: Send + Sync + fmt::Debug + 'static {
    /// The canary Service's share of the requests, in percent (0 when the
    /// router does not name it).
    async fn canary_weight(&self) -> Result<u8>;
    /// Send `percent` of the requests to the canary Service and the rest
    /// to the stable one, changing nothing else.
    async fn set_canary_weight(&self, percent: u8) -> Result<()>;
    /// For runbooks: the commands that show the weights (`None`), or that
    /// send `Some(percent)` of the requests to the canary Service by hand.
    /// `None` (the default) when the router cannot say.
    fn manual(&self, canary_percent: Option<u8>) -> Option<Vec<String>> {
        let _ = canary_percent;
        None
    }
}

/// The name of the canary Service beside `stable`.
pub(crate) fn canary_service(stable: &str) -> String {
    format!("{stable}-canary")
}

/// A Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`) as a
/// [`TrafficRouter`]: in every rule with a `backendRef` to the stable
/// Service, the stable and canary Services' `weight`s are set (the canary's
/// `backendRef` added beside the stable one, with its port, when missing).
/// Matches, filters, other backends, parent references and every other
/// rule are kept. Writes are replaces with the route's `resourceVersion`,
/// so a change made meanwhile by someone else is re-read, never
/// overwritten.
///
/// `Debug` shows the namespace, route and Services.
#[derive(Clone)]
pub struct HttpRouteRouter {
    client: Client,
    namespace: String,
    route: String,
    stable: String,
    canary: String,
}

impl fmt::Debug for HttpRouteRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRouteRouter")
            .field("namespace", &self.namespace)
            .field("route", &self.route)
            .field("stable", &self.stable)
            .field("canary", &self.canary)
            .finish()
    }
}

impl HttpRouteRouter {
    /// The `HTTPRoute` `route` in `namespace`, splitting between the
    /// Service `stable_service` and `<stable_service>-canary`.
    pub fn new(
        client: Client,
        namespace: impl Into<String>,
        route: impl Into<String>,
        stable_service: impl Into<String>,
    ) -> Self {
        let stable = stable_service.into();
        HttpRouteRouter {
            client,
            namespace: namespace.into(),
            route: route.into(),
            canary: canary_service(&stable),
            stable,
        }
    }

    fn api(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "httproutes");
        Api::namespaced_with(self.client.clone(), &self.namespace, &resource)
    }

    fn what(&self, verb: &str) -> String {
        format!("{verb} HTTPRoute {}/{}", self.namespace, self.route)
    }

    async fn get(&self) -> Result<DynamicObject> {
        self.api()
            .get(&self.route)
            .await
            .map_err(|e| classify(&self.what("get"), e))
    }
}

/// Whether a `backendRef` names the Service `name` (a Service is the
/// default kind, in the core group).
fn names_service(backend: &Value, name: &str) -> bool {
    let kind = backend.get("kind").and_then(Value::as_str).unwrap_or("Service");
    let group = backend.get("group").and_then(Value::as_str).unwrap_or("");
    kind == "Service" && group.is_empty() && backend.get("name").and_then(Value::as_str) == Some(name)
}

/// A `backendRef`'s weight (the Gateway API's default is 1).
fn weight(backend: &Value) -> u64 {
    backend.get("weight").and_then(Value::as_u64).unwrap_or(1)
}

/// The canary's percent in the first rule that routes to the stable
/// Service; `None` when no rule does.
fn canary_percent(spec: &Value, stable: &str, canary: &str) -> Option<u8> {
    let rules = spec.get("rules")?.as_array()?;
    let backends = rules.iter().find_map(|r| {
        let refs = r.get("backendRefs")?.as_array()?;
        refs.iter().any(|b| names_service(b, stable)).then_some(refs)
    })?;
    let of = |name: &str| {
        backends
            .iter()
            .filter(|b| names_service(b, name))
            .map(weight)
            .sum::<u64>()
    };
    let (s, c) = (of(stable), of(canary));
    if s + c == 0 {
        return Some(0);
    }
    Some(u8::try_from((c * 100 + (s + c) / 2) / (s + c)).unwrap_or(100))
}

/// `spec` with the weights set in every rule that routes to the stable
/// Service; `None` when no rule does. The canary's `backendRef` is added
/// after the stable one, with its port, where missing.
fn reweighted(spec: &Value, stable: &str, canary: &str, percent: u8) -> Option<Value> {
    let mut spec = spec.clone();
    let mut found = false;
    for rule in spec.get_mut("rules")?.as_array_mut()? {
        let Some(refs) = rule.get_mut("backendRefs").and_then(Value::as_array_mut) else {
            continue;
        };
        let Some(at) = refs.iter().position(|b| names_service(b, stable)) else {
            continue;
        };
        found = true;
        if !refs.iter().any(|b| names_service(b, canary)) {
            let mut added = json!({"name": canary});
            if let Some(port) = refs[at].get("port") {
                added["port"] = port.clone();
            }
            refs.insert(at + 1, added);
        }
        for b in refs.iter_mut() {
            if names_service(b, stable) {
                b["weight"] = json!(100 - u32::from(percent));
            } else if names_service(b, canary) {
                b["weight"] = json!(u32::from(percent));
            }
        }
    }
    found.then_some(spec)
}

#[async_trait]
impl TrafficRouter for HttpRouteRouter {
    fn manual(&self, canary_percent: Option<u8>) -> Option<Vec<String>> {
        let (ns, route) = (&self.namespace, &self.route);
        let (stable, canary) = (&self.stable, &self.canary);
        Some(vec![match canary_percent {
            None => format!(
                "kubectl -n {ns} get httproute {route} -o jsonpath='{{range .spec.rules[*].backendRefs[*]}}{{.name}}={{.weight}}{{\"\\n\"}}{{end}}'"
            ),
            // Every rule's backendRefs to the two Services, as relay sets
            // them (the canary's must be there: relay added it).
            Some(w) => format!(
                "kubectl -n {ns} get httproute {route} -o json | jq '(.spec.rules[].backendRefs[]? | select(.name == \"{stable}\")).weight = {} | (.spec.rules[].backendRefs[]? | select(.name == \"{canary}\")).weight = {w}' | kubectl -n {ns} replace -f -",
                100 - u32::from(w)
            ),
        }])
    }

    async fn canary_weight(&self) -> Result<u8> {
        let route = self.get().await?;
        canary_percent(&route.data["spec"], &self.stable, &self.canary).ok_or_else(|| self.no_rule())
    }

    async fn set_canary_weight(&self, percent: u8) -> Result<()> {
        if percent > 100 {
            return Err(Error::invalid("traffic", format!("{percent}% is above 100%")));
        }
        for _ in 0..ATTEMPTS {
            let mut route = self.get().await?;
            let changed =
                reweighted(&route.data["spec"], &self.stable, &self.canary, percent).ok_or_else(|| self.no_rule())?;
            if changed == route.data["spec"] {
                return Ok(());
            }
            route.data["spec"] = changed;
            match self.api().replace(&self.route, &PostParams::default(), &route).await {
                Ok(_) => return Ok(()),
                // Changed meanwhile: weigh again on what is there now.
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(classify(&self.what("update"), e)),
            }
        }
        Err(Error::Conflict {
            what: format!(
                "{}: {ATTEMPTS} writes in a row lost a race; try again",
                self.what("update")
            ),
        })
    }
}

impl HttpRouteRouter {
    fn no_rule(&self) -> Error {
        Error::invalid(
            "kubernetes.router",
            format!(
                "HTTPRoute {}/{} has no rule with a backendRef to Service {}; add one, and relay will weight it against {}",
                self.namespace, self.route, self.stable, self.canary
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Value {
        json!({
            "parentRefs": [{"name": "gateway"}],
            "hostnames": ["shop.test"],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x", "value": "1"}]}}],
                    "backendRefs": [{"name": "web", "port": 80}],
                },
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                    "backendRefs": [{"name": "admin", "port": 8080}],
                },
            ],
        })
    }

    #[test]
    fn weights_are_set_beside_the_stable_service_and_nothing_else_changes() {
        let s = spec();
        assert_eq!(
            canary_percent(&s, "web", "web-canary"),
            Some(0),
            "no canary backend: all on stable"
        );
        let out = reweighted(&s, "web", "web-canary", 30).unwrap();
        assert_eq!(
            out["rules"][0]["backendRefs"],
            json!([{"name": "web", "port": 80, "weight": 70}, {"name": "web-canary", "port": 80, "weight": 30}])
        );
        assert_eq!(canary_percent(&out, "web", "web-canary"), Some(30));
        let mut rest = out.clone();
        rest["rules"][0]["backendRefs"] = s["rules"][0]["backendRefs"].clone();
        assert_eq!(rest, s, "matches, filters, other rules and parents are kept");
        let back = reweighted(&out, "web", "web-canary", 0).unwrap();
        assert_eq!(canary_percent(&back, "web", "web-canary"), Some(0));
        assert_eq!(back["rules"][0]["backendRefs"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn weights_of_any_scale_read_as_percents_and_other_kinds_are_not_the_service() {
        let s = json!({"rules": [{"backendRefs": [
            {"name": "web", "weight": 1},
            {"name": "web-canary", "weight": 3},
            {"name": "web", "kind": "ServiceImport", "group": "multicluster.x-k8s.io", "weight": 50},
        ]}]});
        assert_eq!(canary_percent(&s, "web", "web-canary"), Some(75));
        assert_eq!(
            canary_percent(
                &json!({"rules": [{"backendRefs": [{"name": "other"}]}]}),
                "web",
                "web-canary"
            ),
            None
        );
        assert!(reweighted(&json!({"rules": []}), "web", "web-canary", 10).is_none());
    }
}
