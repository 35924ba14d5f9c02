//! A simulated world for scenario tests: a target, a registry with three
//! builds (v1, v2 healthy; v3 failing 20% of requests), a secret, a probe.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use relay::providers::sim::{metrics, MemoryArtifactStore, MemorySecretStore, RevisionBehavior, SimProbe, SimTarget};
use relay::strategies::{CanaryStrategy, ThresholdJudge};
use relay::{
    AnalysisSpec, Artifact, Check, EventKind, Outcome, Relay, RelayBuilder, Release, RolloutEvent, RolloutEvents,
    RolloutSpec,
};

pub const PLANTED_SECRET: &str = "planted-secret-value-7f3a9c";

pub struct World {
    pub target: Arc<SimTarget>,
    pub artifacts: Arc<MemoryArtifactStore>,
    pub secrets: Arc<MemorySecretStore>,
    pub v3: Artifact,
}

impl World {
    pub fn new(seed: u64) -> Self {
        Self::with_target(SimTarget::new("web").seed(seed))
    }

    pub fn with_target(target: SimTarget) -> Self {
        let target = Arc::new(target);
        let artifacts = Arc::new(MemoryArtifactStore::new());
        artifacts.push("shop/web", "v1", b"build 1", BTreeMap::new());
        artifacts.push("shop/web", "v2", b"build 2", BTreeMap::new());
        let v3 = artifacts.push("shop/web", "v3", b"build 3", BTreeMap::new());
        target.behavior(&v3.digest, RevisionBehavior::failing(0.2));
        let secrets = Arc::new(MemorySecretStore::new());
        secrets.put("web/db#password", PLANTED_SECRET.to_string().into());
        World {
            target,
            artifacts,
            secrets,
            v3,
        }
    }

    /// A builder with this world's artifact and secret stores, for a test
    /// that brings its own target (a wrapped one, say) and probe.
    pub fn stores(&self) -> RelayBuilder {
        Relay::builder()
            .artifacts(self.artifacts.clone())
            .secrets("mem", self.secrets.clone())
    }

    /// A builder with every provider of this world.
    pub fn builder(&self) -> RelayBuilder {
        self.stores()
            .target(self.target.clone())
            .probe(Arc::new(SimProbe::new(self.target.clone())))
    }

    /// An engine on this world's target with `probe`, v1 deployed.
    pub async fn relay_with_probe(&self, probe: Arc<dyn relay::HealthProbe>) -> Relay {
        let relay = self.stores().target(self.target.clone()).probe(probe).build().unwrap();
        deploy_v1(&relay).await;
        relay
    }

    pub fn relay(&self) -> Relay {
        self.builder().build().unwrap()
    }

    /// An engine with a manual approval gate called `gate`, v1 deployed.
    pub async fn relay_with_approval(&self, gate: &str) -> Relay {
        let relay = self
            .builder()
            .gate(std::sync::Arc::new(relay::ManualApproval::new(gate)))
            .build()
            .unwrap();
        deploy_v1(&relay).await;
        relay
    }

    /// A world whose target already runs v1 as stable, and its engine.
    pub async fn with_v1(seed: u64) -> (World, Relay) {
        let w = World::new(seed);
        let relay = w.relay();
        deploy_v1(&relay).await;
        (w, relay)
    }
}

pub fn release(tag: &str) -> Release {
    Release::new(format!("shop/web:{tag}").parse().unwrap())
        .replicas(4)
        .config("MODE", "test")
        .secret("DB_PASSWORD", "mem://web/db#password".parse().unwrap())
}

pub fn error_analysis() -> AnalysisSpec {
    AnalysisSpec::new(vec![Check::new(
        "errors",
        metrics::ERROR_RATE,
        ThresholdJudge::below(0.05).min_samples(10),
    )])
    .every(Duration::from_secs(60), 2)
}

/// 25% → analysis → 50% → pause 10 min → analysis → full.
pub fn canary() -> CanaryStrategy {
    CanaryStrategy::new()
        .set_weight(25)
        .analyze(error_analysis())
        .set_weight(50)
        .pause(Duration::from_secs(600))
        .analyze(error_analysis())
}

/// Start a rollout and wait for its outcome.
pub async fn run(relay: &Relay, spec: RolloutSpec) -> Outcome {
    relay.start(spec).await.unwrap().wait().await.unwrap()
}

/// Start a rollout and return its outcome and every event it emitted.
pub async fn run_with_events(relay: &Relay, spec: RolloutSpec) -> (Outcome, Vec<RolloutEvent>) {
    let handle = relay.start(spec).await.unwrap();
    let events = handle.events();
    let outcome = handle.wait().await.unwrap();
    (outcome, drain(events).await)
}

/// Put v1 on the target as stable.
pub async fn deploy_v1(relay: &Relay) {
    let outcome = run(
        relay,
        RolloutSpec::new("web", release("v1"), relay::strategies::AllAtOnceStrategy),
    )
    .await;
    assert!(outcome.is_success(), "{outcome}");
}

/// Read events until one matches; panics if the stream ends first.
pub async fn until(events: &mut RolloutEvents, mut pred: impl FnMut(&EventKind) -> bool) -> RolloutEvent {
    while let Some(e) = events.next().await {
        if pred(&e.kind) {
            return e;
        }
    }
    panic!("event stream ended before the expected event");
}

/// Every event until the stream ends.
pub async fn drain(mut events: RolloutEvents) -> Vec<RolloutEvent> {
    let mut all = Vec::new();
    while let Some(e) = events.next().await {
        all.push(e);
    }
    all
}

/// The actions of `rollout`'s audit entries, in order.
pub async fn actions(relay: &Relay, rollout: &str) -> Vec<String> {
    trail(relay, rollout)
        .await
        .into_iter()
        .map(|(action, _)| action)
        .collect()
}

/// The actions of `rollout`'s audit entries, in order, with their details.
pub async fn trail(relay: &Relay, rollout: &str) -> Vec<(String, serde_json::Value)> {
    relay
        .audit()
        .entries()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event.rollout == rollout)
        .map(|e| (e.event.action, e.event.detail.to_value()))
        .collect()
}
