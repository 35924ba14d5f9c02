//! Helpers: a client from the test kubeconfig, a namespace per test,
//! Secrets, Deployments and a stand-in for the kubelet.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay::providers::kubernetes::sdk::k8s_openapi::api::apps::v1::Deployment;
use relay::providers::kubernetes::sdk::k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use relay::providers::kubernetes::sdk::k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use relay::providers::kubernetes::sdk::k8s_openapi::ByteString;
use relay::providers::kubernetes::sdk::kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use relay::providers::kubernetes::sdk::kube::client::ClientBuilder;
use relay::providers::kubernetes::sdk::kube::config::{KubeConfigOptions, Kubeconfig};
use relay::providers::kubernetes::sdk::kube::{Api, Client, Config};
use relay::providers::RequestCounter;
use serde_json::json;

/// A secret value planted in stores; it must never show in any output.
pub const PLANTED: &str = "kube-planted-secret-51d0e";

async fn config_from(var: &str) -> Config {
    let path = std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the suite with scripts/test.sh, which builds and starts a kube-apiserver")
    });
    let kubeconfig = Kubeconfig::read_from(path).unwrap();
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap()
}

/// The cluster admin: sets up namespaces and fixtures, plays the kubelet.
pub async fn client() -> Client {
    Client::try_from(config_from("RELAY_TEST_KUBECONFIG").await).unwrap()
}

/// The client the providers under test use: the `relay-limited` user, whose
/// only permissions are relay's Role (docs/least-privilege/kubernetes-role.yaml)
/// in each test namespace, so every provider test also proves the Role is
/// enough.
pub async fn provider_client() -> Client {
    Client::try_from(config_from("RELAY_TEST_KUBECONFIG_LIMITED").await).unwrap()
}

/// A provider client that reaches the API server through `proxy` (a
/// `FaultProxy` in front of it), and the server's `host:port` to put the
/// proxy in front of.
pub async fn proxied_provider_client(proxy: &str) -> Client {
    let mut cfg = config_from("RELAY_TEST_KUBECONFIG_LIMITED").await;
    cfg.cluster_url = proxy.parse().unwrap();
    Client::try_from(cfg).unwrap()
}

/// The API server's `host:port`.
pub async fn api_server() -> String {
    let cfg = config_from("RELAY_TEST_KUBECONFIG").await;
    cfg.cluster_url.authority().unwrap().to_string()
}

/// A provider client whose requests `calls` counts.
pub async fn counted_client(calls: &RequestCounter) -> Client {
    ClientBuilder::try_from(config_from("RELAY_TEST_KUBECONFIG_LIMITED").await)
        .unwrap()
        .with_layer(calls)
        .build()
}

/// relay's least-privilege Role, as documented.
fn relay_role() -> Role {
    let text = include_str!("../../docs/least-privilege/kubernetes-role.yaml");
    serde_saphyr::from_str(text).unwrap()
}

/// A fresh namespace for one test.
pub async fn namespace(client: &Client) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!("relay-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    // The provider client may do in it what relay's Role allows, no more.
    Api::<Role>::namespaced(client.clone(), &name)
        .create(&PostParams::default(), &relay_role())
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "relay"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "relay"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "relay-limited"}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), &name)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    name
}

pub async fn put_secret(client: &Client, ns: &str, name: &str, data: &[(&str, &[u8])]) -> Secret {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await.unwrap() {
        Some(existing) => {
            let mut next = secret;
            next.metadata.resource_version = existing.metadata.resource_version;
            api.replace(name, &PostParams::default(), &next).await.unwrap()
        }
        None => api.create(&PostParams::default(), &secret).await.unwrap(),
    }
}

/// A Deployment `name` of `replicas` pods labelled `app=<name>`, one
/// container `app`, and a Service selecting them; waits until the
/// controller has made its pods ready (with a [`Kubelet`] running).
pub async fn web_app(client: &Client, ns: &str, name: &str, replicas: i32) -> Deployment {
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.test/web:1"}]},
            },
        },
    }))
    .unwrap();
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &d).await.unwrap();
    for _ in 0..300 {
        let d = api.get(name).await.unwrap();
        let s = d.status.clone().unwrap_or_default();
        if s.observed_generation >= d.metadata.generation && s.available_replicas.unwrap_or(0) == replicas {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Deployment {ns}/{name} did not become available");
}

/// Stands in for the kubelet, which the test cluster lacks: marks every pod
/// of the namespace Ready, except pods of revisions set to fail, which it
/// reports crash-looping. Stops when dropped.
pub struct Kubelet {
    failing: Arc<Mutex<BTreeSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    pub fn start(client: &Client, ns: &str) -> Kubelet {
        let failing = Arc::new(Mutex::new(BTreeSet::new()));
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let shared = failing.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(pods) = api.list(&ListParams::default()).await {
                    for pod in pods.items {
                        let labels = pod.metadata.labels.clone().unwrap_or_default();
                        let images: Vec<String> = pod
                            .spec
                            .iter()
                            .flat_map(|s| s.containers.iter().filter_map(|c| c.image.clone()))
                            .collect();
                        let fail = shared.lock().unwrap().iter().any(|needle| {
                            labels.get("relay.dev/revision") == Some(needle)
                                || images.iter().any(|i| i.contains(needle))
                        });
                        let status = pod.status.clone().unwrap_or_default();
                        let ready = status
                            .conditions
                            .iter()
                            .flatten()
                            .any(|c| c.type_ == "Ready" && c.status == "True");
                        let reported = status.container_statuses.is_some();
                        if (fail && reported && !ready) || (!fail && ready) || pod.metadata.deletion_timestamp.is_some()
                        {
                            continue;
                        }
                        let now = api_now();
                        let patch = if fail {
                            json!({"status": {
                                "phase": "Running",
                                "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now}],
                                "containerStatuses": [{
                                    "name": "app", "image": "x", "imageID": "", "ready": false, "restartCount": 3,
                                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                }],
                            }})
                        } else {
                            json!({"status": {
                                "phase": "Running",
                                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
                                "containerStatuses": [{
                                    "name": "app", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                                    "state": {"running": {"startedAt": now}},
                                }],
                            }})
                        };
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        // A pod deleted meanwhile is no error.
                        let _ = api
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Kubelet { failing, task }
    }

    /// From now on, pods of revision `needle` (or whose image contains it)
    /// crash-loop, including ones that were ready.
    pub fn fail(&self, needle: &str) {
        self.failing.lock().unwrap().insert(needle.to_owned());
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Now, in the format of the API's times.
fn api_now() -> serde_json::Value {
    use relay::providers::kubernetes::sdk::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use relay::providers::kubernetes::sdk::k8s_openapi::jiff::Timestamp;
    serde_json::to_value(Time(Timestamp::now())).unwrap()
}

/// The Gateway API's HTTPRoute resource on the test API server
/// (tests/fixtures/gateway-api/httproute-crd.yaml), installed once and
/// established.
pub async fn gateway_api(client: &Client) {
    use relay::providers::kubernetes::sdk::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crd: CustomResourceDefinition =
        serde_saphyr::from_str(include_str!("../fixtures/gateway-api/httproute-crd.yaml")).unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    match api.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(relay::providers::kubernetes::sdk::kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("installing the HTTPRoute CRD: {e}"),
    }
    for _ in 0..100 {
        let crd = api.get("httproutes.gateway.networking.k8s.io").await.unwrap();
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
        if established {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the HTTPRoute CRD was not established");
}
