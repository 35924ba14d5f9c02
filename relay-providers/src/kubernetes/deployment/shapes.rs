//! Request shapes, against a scripted API server (kube's tower-test style):
//! which verb, content type, field manager and body each call sends.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use http::{Request, Response};
use kube::client::Body;
use relay_core::{Artifact, Digest};
use serde_json::Value;

use super::template::CANARY_LABEL;
use super::*;

#[derive(Debug)]
struct Seen {
    method: String,
    uri: String,
    content_type: String,
    body: Value,
}

/// Answers each request with the next scripted JSON body and records it.
#[derive(Clone, Default)]
struct Scripted {
    replies: Arc<Mutex<VecDeque<Value>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl tower_service::Service<Request<Body>> for Scripted {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::result::Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            this.seen.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                content_type: parts
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            });
            let reply = this.replies.lock().unwrap().pop_front().unwrap_or(Value::Null);
            let mut response = Response::new(Body::from(serde_json::to_vec(&reply).unwrap_or_default()));
            response
                .headers_mut()
                .insert("content-type", http::HeaderValue::from_static("application/json"));
            Ok(response)
        })
    }
}

impl Scripted {
    fn with(replies: Vec<Value>) -> (Scripted, Client) {
        let s = Scripted {
            replies: Arc::new(Mutex::new(replies.into())),
            ..Default::default()
        };
        (s.clone(), Client::new(s, "default"))
    }

    fn seen(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn deployment(name: &str, labels: Value, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "shop", "uid": "u-1", "generation": 1, "resourceVersion": "41"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
        "status": {"observedGeneration": 1},
    })
}

fn web() -> Value {
    deployment("web", json!({"app": "web"}), "web:1")
}

/// No HorizontalPodAutoscaler in the namespace.
fn no_autoscalers() -> Value {
    json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscalerList", "metadata": {}, "items": []})
}

fn candidate() -> RevisionSpec {
    let artifact = Artifact {
        repository: "reg.test/web".into(),
        tag: None,
        digest: Digest::of(b"v2"),
        metadata: Default::default(),
    };
    RevisionSpec::new(
        artifact,
        BTreeMap::from([("MODE".into(), "fast".into())]),
        BTreeMap::new(),
    )
}

#[tokio::test]
async fn rolling_stage_is_a_forced_server_side_apply_by_relay() {
    let (api, client) = Scripted::with(vec![web(), no_autoscalers(), no_autoscalers(), web(), web(), web()]);
    let target = DeploymentTarget::builder(client, "shop", "web")
        .rolling(IntOrString::Int(1), IntOrString::String("0%".into()))
        .progress_deadline(Duration::from_secs(90))
        .build()
        .await
        .unwrap();
    let spec = candidate();
    target.stage(&spec, 3).await.unwrap();
    let seen = api.seen();
    let methods: Vec<&str> = seen.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(methods, ["GET", "GET", "GET", "GET", "PATCH", "PATCH"], "{seen:#?}");
    // The builder and the stage look for an autoscaler of the Deployment.
    for s in &seen[1..3] {
        assert!(
            s.uri
                .starts_with("/apis/autoscaling/v1/namespaces/shop/horizontalpodautoscalers"),
            "{}",
            s.uri
        );
    }
    let adopt = &seen[4];
    assert_eq!(adopt.content_type, "application/merge-patch+json");
    assert!(adopt.body["metadata"]["annotations"][STABLE_ANNOTATION].is_string());
    let apply = &seen[5];
    assert_eq!(
        apply.uri,
        "/apis/apps/v1/namespaces/shop/deployments/web?&force=true&fieldManager=relay"
    );
    assert_eq!(apply.content_type, "application/apply-patch+yaml");
    let body = &apply.body;
    assert_eq!(
        (body["apiVersion"].as_str(), body["kind"].as_str()),
        (Some("apps/v1"), Some("Deployment"))
    );
    assert_eq!(body["spec"]["replicas"], 3);
    assert_eq!(body["spec"]["progressDeadlineSeconds"], 90);
    assert_eq!(
        body["spec"]["strategy"]["rollingUpdate"],
        json!({"maxSurge": 1, "maxUnavailable": "0%"})
    );
    let template = &body["spec"]["template"];
    assert_eq!(template["metadata"]["labels"][REVISION_LABEL], spec.id.as_str());
    assert_eq!(template["metadata"]["labels"]["app"], "web");
    let container = &template["spec"]["containers"][0];
    assert_eq!(container["image"], format!("reg.test/web@{}", spec.artifact.digest));
    assert_eq!(container["env"], json!([{"name": "MODE", "value": "fast"}]));
}

#[tokio::test]
async fn scaling_is_a_merge_patch_of_replicas_only() {
    let (api, client) = Scripted::with(vec![web(), no_autoscalers(), web(), no_autoscalers(), web()]);
    let target = DeploymentTarget::builder(client, "shop", "web")
        .field_manager("deployer")
        .build()
        .await
        .unwrap();
    let current = status::current(&serde_json::from_value(web()).unwrap()).unwrap();
    target.scale(&current, 5).await.unwrap();
    let seen = api.seen();
    let patch = &seen[4];
    assert_eq!(patch.method, "PATCH");
    assert_eq!(patch.content_type, "application/merge-patch+json");
    assert!(patch.uri.ends_with("fieldManager=deployer"), "{}", patch.uri);
    assert_eq!(patch.body, json!({"spec": {"replicas": 5}}));
}

#[tokio::test]
async fn a_blue_green_switch_replaces_the_selector_and_keeps_the_original() {
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}},
    });
    let spec = candidate();
    let canary = deployment(
        "web-canary",
        json!({REVISION_LABEL: spec.id.as_str(), CANARY_LABEL: "web"}),
        "reg.test/web@x",
    );
    let (api, client) = Scripted::with(vec![
        web(),
        no_autoscalers(),
        service.clone(),
        web(),
        canary,
        service.clone(),
        service,
    ]);
    let target = DeploymentTarget::builder(client, "shop", "web")
        .blue_green("web")
        .build()
        .await
        .unwrap();
    assert_eq!(target.capabilities().routing, Routing::Switch);
    target.route(&TrafficSplit::all(&spec.id)).await.unwrap();
    let seen = api.seen();
    let patch = seen.last().unwrap();
    assert_eq!(
        (patch.method.as_str(), patch.content_type.as_str()),
        ("PATCH", "application/merge-patch+json")
    );
    assert!(
        patch.uri.starts_with("/api/v1/namespaces/shop/services/web?"),
        "{}",
        patch.uri
    );
    assert_eq!(
        patch.body["spec"]["selector"],
        json!({"app": null, REVISION_LABEL: spec.id.as_str()}),
        "the Service's own keys are removed, the revision's added"
    );
    assert_eq!(
        patch.body["metadata"]["annotations"][SELECTOR_ANNOTATION],
        r#"{"app":"web"}"#
    );
}

#[tokio::test]
async fn a_split_that_a_rolling_deployment_cannot_serve_is_refused_before_any_change() {
    let (api, client) = Scripted::with(vec![web(), no_autoscalers()]);
    let target = DeploymentTarget::builder(client, "shop", "web").build().await.unwrap();
    let current = status::current(&serde_json::from_value(web()).unwrap()).unwrap();
    let split = TrafficSplit::canary(&current, &candidate().id, 10).unwrap();
    let e = target.route(&split).await.unwrap_err();
    assert!(
        matches!(&e, Error::InvalidSpec { path, .. } if path == "traffic"),
        "{e:?}"
    );
    assert_eq!(api.seen().len(), 2, "only the builder's reads: nothing was written");
}

#[tokio::test]
async fn a_watch_starts_from_what_the_last_observe_read() {
    let modified = json!({"type": "MODIFIED", "object": web()});
    let expired = json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": "Expired", "message": "too old resource version", "code": 410,
    }});
    let forbidden = json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": "Forbidden", "message": "cannot watch deployments", "code": 403,
    }});
    // Only a bookmark, and the stream ends: the server ended the watch at once.
    let ended = json!({"type": "BOOKMARK", "object": {
        "kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"resourceVersion": "42"},
    }});
    // The Deployment runs one template, so observe reads no ReplicaSet;
    // the revision is short of ready pods, so it reads them.
    let pods = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []});
    let (api, client) = Scripted::with(vec![
        web(),
        no_autoscalers(),
        web(),
        pods,
        modified,
        expired,
        forbidden,
        ended,
    ]);
    let target = DeploymentTarget::builder(client, "shop", "web").build().await.unwrap();
    assert!(target.capabilities().watches);
    target.observe().await.unwrap();
    // A change, and history the server no longer holds: both mean observe.
    target.changed().await.unwrap();
    target.changed().await.unwrap();
    let e = target.changed().await.unwrap_err();
    assert!(
        matches!(&e, Error::PermissionDenied { what } if what.contains("watch Deployment shop/web")),
        "{e:?}"
    );
    let e = target.changed().await.unwrap_err();
    assert!(
        e.is_retryable() && e.to_string().contains("ended the watch at once"),
        "{e}"
    );
    let seen = api.seen();
    assert!(seen[3].uri.starts_with("/api/v1/namespaces/shop/pods?"), "{seen:#?}");
    let watches: Vec<&str> = seen.iter().skip(4).map(|s| s.uri.as_str()).collect();
    assert_eq!(watches.len(), 4, "{seen:#?}");
    for uri in watches {
        assert!(uri.starts_with("/apis/apps/v1/namespaces/shop/deployments?"), "{uri}");
        for part in [
            "watch=true",
            "timeoutSeconds=290",
            "fieldSelector=metadata.name%3Dweb",
            "resourceVersion=41",
        ] {
            assert!(uri.contains(part), "{part} in {uri}");
        }
    }
    let off = DeploymentTarget::builder(Scripted::with(vec![web(), no_autoscalers()]).1, "shop", "web")
        .watch(false)
        .build()
        .await
        .unwrap();
    assert!(!off.capabilities().watches);
}
