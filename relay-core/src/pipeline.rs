//! Environments and promotion: build once, deploy the same digest
//! everywhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::artifact::{ArtifactRef, Digest};
use crate::engine::{Relay, RolloutSpec, Wave, WaveHandle, WaveOrder};
use crate::error::{Error, Result};
use crate::plan::Strategy;
use crate::release::{Release, SecretRef};
use crate::state::RolloutRecord;

/// One environment of a [`Pipeline`]: where it deploys, how, behind which
/// gates, and its configuration on top of the pipeline's base.
#[derive(Clone, Debug)]
pub struct Environment {
    name: String,
    targets: Vec<String>,
    order: WaveOrder,
    strategy: Arc<dyn Strategy>,
    replicas: u32,
    config: BTreeMap<String, String>,
    secrets: BTreeMap<String, SecretRef>,
    gates_before_start: Vec<String>,
    gates_before_promotion: Vec<String>,
}

impl Environment {
    /// Environment `name` deploying to the registered target `target` with
    /// `strategy`, one replica until [`Environment::replicas`] says more.
    pub fn new(name: impl Into<String>, target: impl Into<String>, strategy: impl Strategy + 'static) -> Self {
        Self::with_strategy(name, target, Arc::new(strategy))
    }

    /// The same with a shared strategy.
    pub fn with_strategy(name: impl Into<String>, target: impl Into<String>, strategy: Arc<dyn Strategy>) -> Self {
        Environment {
            name: name.into(),
            targets: vec![target.into()],
            order: WaveOrder::Sequential,
            strategy,
            replicas: 1,
            config: BTreeMap::new(),
            secrets: BTreeMap::new(),
            gates_before_start: Vec::new(),
            gates_before_promotion: Vec::new(),
        }
    }

    /// Another target (a second region, say): every deployment here is a
    /// [`Wave`] over the targets, in `order` ([`Environment::order`]).
    pub fn also_target(mut self, target: impl Into<String>) -> Self {
        self.targets.push(target.into());
        self
    }

    /// How a deployment moves through the targets (default: one at a time).
    pub fn order(mut self, order: WaveOrder) -> Self {
        self.order = order;
        self
    }

    /// Replicas at full rollout.
    pub fn replicas(mut self, n: u32) -> Self {
        self.replicas = n;
        self
    }

    /// A configuration value for this environment (over the base).
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// A secret for this environment (over the base).
    pub fn secret(mut self, name: impl Into<String>, reference: SecretRef) -> Self {
        self.secrets.insert(name.into(), reference);
        self
    }

    /// A gate checked before anything changes here.
    pub fn gate_before_start(mut self, gate: impl Into<String>) -> Self {
        self.gates_before_start.push(gate.into());
        self
    }

    /// A gate checked before promotion here.
    pub fn gate_before_promotion(mut self, gate: impl Into<String>) -> Self {
        self.gates_before_promotion.push(gate.into());
        self
    }

    /// The environment's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The targets it deploys to, in order.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// How a deployment moves through the targets.
    pub fn wave_order(&self) -> WaveOrder {
        self.order
    }

    /// Replicas at full rollout.
    pub fn replica_count(&self) -> u32 {
        self.replicas
    }

    /// The strategy.
    pub fn strategy(&self) -> &Arc<dyn Strategy> {
        &self.strategy
    }
}

/// Named environments in order (dev → staging → prod).
///
/// Each deployment to an environment is a [`Wave`] over its targets (a wave
/// of one for a single target). [`Pipeline::deploy`] rolls an artifact out
/// to the first environment;
/// [`Pipeline::promote`] rolls the exact digest that succeeded in the
/// previous environment out to the next one, and refuses a digest that did
/// not succeed there. A promotion's record names the rollout it promotes
/// (`promoted_from`), and the audit log says so too.
#[derive(Clone, Debug)]
pub struct Pipeline {
    environments: Vec<Environment>,
    config: BTreeMap<String, String>,
    secrets: BTreeMap<String, SecretRef>,
}

impl Pipeline {
    /// A pipeline through `environments`, in order.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] at `pipeline.environments` for none, an empty
    /// or duplicated name, or zero replicas.
    pub fn new(environments: Vec<Environment>) -> Result<Self> {
        if environments.is_empty() {
            return Err(Error::invalid("pipeline.environments", "name at least one environment"));
        }
        for (i, e) in environments.iter().enumerate() {
            let path = format!("pipeline.environments[{i}]");
            if e.name.trim().is_empty() {
                return Err(Error::invalid(format!("{path}.name"), "must not be empty"));
            }
            if environments[..i].iter().any(|o| o.name == e.name) {
                return Err(Error::invalid(
                    format!("{path}.name"),
                    format!("{:?} is used twice", e.name),
                ));
            }
            for (j, t) in e.targets.iter().enumerate() {
                if e.targets[..j].iter().any(|o| o == t) {
                    return Err(Error::invalid(
                        format!("{path}.targets[{j}]"),
                        format!("target {t:?} is named twice"),
                    ));
                }
            }
            if e.replicas == 0 {
                return Err(Error::invalid(format!("{path}.replicas"), "must be at least 1"));
            }
        }
        Ok(Pipeline {
            environments,
            config: BTreeMap::new(),
            secrets: BTreeMap::new(),
        })
    }

    /// A configuration value every environment gets unless it sets its own.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// A secret every environment gets unless it sets its own.
    pub fn secret(mut self, name: impl Into<String>, reference: SecretRef) -> Self {
        self.secrets.insert(name.into(), reference);
        self
    }

    /// The environments, in order.
    pub fn environments(&self) -> &[Environment] {
        &self.environments
    }

    fn position(&self, env: &str) -> Result<usize> {
        self.environments.iter().position(|e| e.name == env).ok_or_else(|| {
            Error::invalid(
                "pipeline.environment",
                format!(
                    "no environment {env:?}; the pipeline has {:?}",
                    self.environments.iter().map(|e| e.name.as_str()).collect::<Vec<_>>()
                ),
            )
        })
    }

    /// The wave that deploys `artifact` to environment `env`: one rollout
    /// spec per target, each with the base configuration and secrets with
    /// the environment's on top, its replicas, strategy and gates.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] for an unknown environment.
    pub fn wave(&self, env: &str, artifact: ArtifactRef) -> Result<Wave> {
        self.wave_from(env, artifact, None)
    }

    fn wave_from(&self, env: &str, artifact: ArtifactRef, promoted_from: Option<String>) -> Result<Wave> {
        let e = &self.environments[self.position(env)?];
        let mut release = Release::new(artifact).replicas(e.replicas);
        release.config = self.config.clone();
        release.config.extend(e.config.clone());
        release.secrets = self.secrets.clone();
        release.secrets.extend(e.secrets.clone());
        let specs = e
            .targets
            .iter()
            .map(|target| {
                let mut spec = RolloutSpec::with_strategy(target.clone(), release.clone(), e.strategy.clone());
                spec.gates_before_start = e.gates_before_start.clone();
                spec.gates_before_promotion = e.gates_before_promotion.clone();
                spec.promoted_from = promoted_from.clone();
                spec
            })
            .collect();
        Ok(Wave::new(specs).order(e.order))
    }

    /// Roll `artifact` out to the first environment.
    ///
    /// # Errors
    /// Those of [`Relay::start_wave`].
    pub async fn deploy(&self, relay: &Relay, artifact: ArtifactRef) -> Result<WaveHandle> {
        relay.start_wave(self.wave(&self.environments[0].name, artifact)?).await
    }

    /// Whether `digest` succeeded on every target of environment `env`: the
    /// latest of the rollouts that promoted it there (the one that
    /// completed the environment), or `None` when a target has none.
    ///
    /// # Errors
    /// Those of the state store.
    pub async fn succeeded_in(&self, relay: &Relay, env: &str, digest: &Digest) -> Result<Option<RolloutRecord>> {
        let e = &self.environments[self.position(env)?];
        let mut latest: Option<RolloutRecord> = None;
        for target in &e.targets {
            let history = relay.state().list_target(target).await?;
            let Some(r) = history
                .into_iter()
                .rev()
                .find(|r| r.status.is_promoted() && &r.plan.candidate.artifact.digest == digest)
            else {
                return Ok(None);
            };
            if latest.as_ref().is_none_or(|l| r.updated_ms >= l.updated_ms) {
                latest = Some(r);
            }
        }
        Ok(latest)
    }

    /// How each target of environment `env` differs from what relay last
    /// promoted there ([`Relay::drift`]), in the environment's order.
    ///
    /// # Errors
    /// As [`Relay::drift`], and for an unknown environment.
    pub async fn drift(&self, relay: &Relay, env: &str) -> Result<Vec<crate::drift::DriftReport>> {
        let mut reports = Vec::new();
        for target in &self.environments[self.position(env)?].targets {
            reports.push(relay.drift(target).await?);
        }
        Ok(reports)
    }

    /// Roll `digest` out to environment `to`, which must not be the first:
    /// only a digest that succeeded in the environment before it is
    /// promoted, pinned by digest (the build that was tested is the build
    /// that ships).
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] at `promotion.digest` when the digest did not
    /// succeed in the previous environment (naming it, and what it runs
    /// instead), at `promotion.to` for the first environment; those of
    /// [`Relay::start`].
    pub async fn promote(&self, relay: &Relay, digest: &Digest, to: &str) -> Result<WaveHandle> {
        let at = self.position(to)?;
        if at == 0 {
            return Err(Error::invalid(
                "promotion.to",
                format!("{to:?} is the first environment: deploy to it, promotion comes after"),
            ));
        }
        let from = &self.environments[at - 1].name;
        let Some(source) = self.succeeded_in(relay, from, digest).await? else {
            let mut history = Vec::new();
            for target in &self.environments[at - 1].targets {
                history.extend(relay.state().list_target(target).await?);
            }
            history.sort_by_key(|r| r.updated_ms);
            let last = history
                .iter()
                .rev()
                .find(|r| r.status.is_promoted())
                .map(|r| format!("; {from} last promoted {}", r.plan.candidate.artifact.digest))
                .unwrap_or_default();
            let tried = history
                .iter()
                .rev()
                .find(|r| &r.plan.candidate.artifact.digest == digest)
                .map(|r| format!(" (its rollout {} ended {:?})", r.id, r.status))
                .unwrap_or_default();
            return Err(Error::invalid(
                "promotion.digest",
                format!("{digest} did not succeed in {from}{tried}, so it cannot go to {to}{last}"),
            ));
        };
        let artifact = ArtifactRef {
            repository: source.plan.candidate.artifact.repository.clone(),
            tag: None,
            digest: Some(digest.clone()),
        };
        relay.start_wave(self.wave_from(to, artifact, Some(source.id))?).await
    }
}
