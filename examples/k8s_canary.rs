//! A canary on a Kubernetes Deployment: the candidate runs in a second
//! Deployment (`<name>-canary`) whose pods the Service also selects, so it
//! takes traffic in proportion to its ready replicas; pod readiness judges
//! each step.
//!
//! ```text
//! cargo run --example k8s_canary --features kubernetes -- plan    # dry run: print the plan
//! cargo run --example k8s_canary --features kubernetes -- apply   # run the canary
//! ```
//!
//! The cluster comes from the default kubeconfig (`$KUBECONFIG`, else
//! `~/.kube/config`, else the in-cluster service account). What to deploy,
//! and where:
//!
//! | variable | meaning |
//! |---|---|
//! | `RELAY_DEPLOYMENT` | the Deployment (default `web`) |
//! | `RELAY_NAMESPACE` | its namespace (default: the kubeconfig's) |
//! | `RELAY_CONTAINER` | the container to deploy to (default: the only one) |
//! | `RELAY_IMAGE` | the image, pinned by digest (`repo@sha256:…`) |
//! | `RELAY_REPLICAS` | replicas at full rollout (default 2) |
//! | `RELAY_SELECTOR` | the label selector of the app's pods (default `app=<deployment>`) |
//! | `RELAY_STEP_SECONDS` | time between measurements (default 30) |
//!
//! The canary goes 25% → 50% → 100%; at each step every candidate pod must be
//! ready and none crash-looping, measured twice 30 s apart. Rollout records
//! and the target's lease live in the namespace (ConfigMaps and a Lease), so
//! several copies of a tool using relay coordinate; the audit log goes to
//! `./relay-k8s-state/audit.jsonl`.

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use relay::providers::kubernetes::sdk::kube::Client;
use relay::providers::kubernetes::{DeploymentTarget, KubeSecretStore, KubeStateStore, PodReadinessProbe};
use relay::strategies::{CanaryStrategy, Statistic, ThresholdJudge};
use relay::{artifact::PinnedArtifactStore, AnalysisSpec, Check, JsonlAuditSink, Relay, Release, RolloutSpec, Target};

fn var_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn run(apply: bool) -> Result<bool, String> {
    let client = Client::try_default()
        .await
        .map_err(|e| format!("no cluster from the default kubeconfig: {e}"))?;
    let deployment = var_or("RELAY_DEPLOYMENT", "web");
    let namespace = var_or("RELAY_NAMESPACE", client.default_namespace());
    let image = std::env::var("RELAY_IMAGE")
        .map_err(|_| "set RELAY_IMAGE to the image to deploy, pinned by digest (repo@sha256:…)".to_owned())?;
    let replicas: u32 = var_or("RELAY_REPLICAS", "2")
        .parse()
        .map_err(|e| format!("RELAY_REPLICAS: {e}"))?;
    let selector = var_or("RELAY_SELECTOR", &format!("app={deployment}"));

    let mut builder = DeploymentTarget::builder(client.clone(), &namespace, &deployment).canary();
    if let Ok(c) = std::env::var("RELAY_CONTAINER") {
        builder = builder.container(c);
    }
    let target = builder.build().await.map_err(|e| e.to_string())?;
    let name = target.name().to_owned();

    let pods_healthy = AnalysisSpec::new(vec![
        Check::new("all candidate pods ready", "ready_ratio", ThresholdJudge::above(0.99)),
        Check::new(
            "no candidate pod crash-looping",
            "crash_looping",
            ThresholdJudge::below(0.5).statistic(Statistic::Max),
        ),
    ])
    .every(support::step_interval(Duration::from_secs(30))?, 2);
    let canary = CanaryStrategy::new()
        .set_weight(25)
        .analyze(pods_healthy.clone())
        .set_weight(50)
        .analyze(pods_healthy);

    let dir = std::path::Path::new("relay-k8s-state");
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let relay = Relay::builder()
        .target(Arc::new(target))
        .artifacts(Arc::new(PinnedArtifactStore))
        .secrets("k8s", Arc::new(KubeSecretStore::new(client.clone(), &namespace)))
        .probe(Arc::new(PodReadinessProbe::new(client.clone(), &namespace, selector)))
        .state(Arc::new(KubeStateStore::new(client, &namespace)))
        .audit(Arc::new(
            JsonlAuditSink::open(dir.join("audit.jsonl")).map_err(|e| e.to_string())?,
        ))
        .build()
        .map_err(|e| e.to_string())?;
    let release = Release::new(image.parse().map_err(|e: relay::Error| e.to_string())?).replicas(replicas);
    let spec = RolloutSpec::new(name, release, canary);
    support::plan_or_apply(&relay, spec, apply).await
}

#[tokio::main]
async fn main() -> ExitCode {
    match support::apply_requested() {
        Ok(apply) => support::exit(run(apply).await),
        Err(code) => code,
    }
}
