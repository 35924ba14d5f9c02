//! Building a [`Relay`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{EngineConfig, Inner, Relay, INSTANCE};
use crate::artifact::ArtifactStore;
use crate::audit::{AuditSink, MemoryAuditSink};
use crate::clock::{Clock, TokioClock};
use crate::error::{Error, Result};
use crate::gate::Gate;
use crate::probe::HealthProbe;
use crate::retry::RetryPolicy;
use crate::rng::SeededRng;
use crate::secret::SecretStore;
use crate::state::{MemoryStateStore, StateStore};
use crate::target::Target;
use crate::verify::ArtifactVerifier;

/// Eight hex digits drawn for one engine instance: from the standard
/// library's random hash keys (seeded from the operating system once per
/// thread), mixed with a process-wide counter so instances built on one
/// thread differ too.
fn nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(INSTANCE.fetch_add(1, Ordering::Relaxed));
    format!("{:08x}", h.finish() as u32)
}

/// Builds a [`Relay`] from its providers. A target and an artifact store are
/// required; state and audit default to in-memory stores (use
/// [`crate::FileStateStore`] and [`crate::JsonlAuditSink`] to survive a
/// restart).
#[derive(Debug, Default)]
pub struct RelayBuilder {
    targets: Vec<Arc<dyn Target>>,
    artifacts: Option<Arc<dyn ArtifactStore>>,
    secrets: BTreeMap<String, Arc<dyn SecretStore>>,
    probe: Option<Arc<dyn HealthProbe>>,
    probes: BTreeMap<String, Arc<dyn HealthProbe>>,
    gates: Vec<Arc<dyn Gate>>,
    hooks: Vec<Arc<dyn crate::hook::Hook>>,
    verifiers: Vec<Arc<dyn ArtifactVerifier>>,
    state: Option<Arc<dyn StateStore>>,
    audit: Option<Arc<dyn AuditSink>>,
    clock: Option<Arc<dyn Clock>>,
    retry: Option<RetryPolicy>,
    config: Option<EngineConfig>,
    holder: Option<String>,
    seed: Option<u64>,
    authorizer: Option<Arc<dyn crate::authorize::Authorizer>>,
    notifiers: Vec<(Arc<dyn crate::notify::Notifier>, crate::notify::Delivery)>,
}

impl RelayBuilder {
    /// Add an artifact verifier; every one must accept an artifact before a
    /// rollout of it is planned.
    pub fn verifier(mut self, verifier: Arc<dyn ArtifactVerifier>) -> Self {
        self.verifiers.push(verifier);
        self
    }

    /// Register a target under its [`Target::name`].
    pub fn target(mut self, target: Arc<dyn Target>) -> Self {
        self.targets.push(target);
        self
    }

    /// The artifact store.
    pub fn artifacts(mut self, store: Arc<dyn ArtifactStore>) -> Self {
        self.artifacts = Some(store);
        self
    }

    /// Register a secret store for references with `scheme` (`vault`, `mem`...).
    pub fn secrets(mut self, scheme: impl Into<String>, store: Arc<dyn SecretStore>) -> Self {
        self.secrets.insert(scheme.into(), store);
        self
    }

    /// The health probe analysis steps read (for every target without a
    /// probe of its own).
    pub fn probe(mut self, probe: Arc<dyn HealthProbe>) -> Self {
        self.probe = Some(probe);
        self
    }

    /// The health probe for rollouts on `target` (one per region, say),
    /// instead of the one set with [`RelayBuilder::probe`].
    pub fn probe_for(mut self, target: impl Into<String>, probe: Arc<dyn HealthProbe>) -> Self {
        self.probes.insert(target.into(), probe);
        self
    }

    /// Register a gate under its [`Gate::name`].
    pub fn gate(mut self, gate: Arc<dyn Gate>) -> Self {
        self.gates.push(gate);
        self
    }

    /// Send the rollouts' notices to `notifier` too, delivered as
    /// [`Delivery::default`](crate::notify::Delivery) says: never in a
    /// rollout's way ([`crate::notify`]).
    pub fn notifier(self, notifier: Arc<dyn crate::notify::Notifier>) -> Self {
        self.notifier_with(notifier, crate::notify::Delivery::default())
    }

    /// [`Self::notifier`], delivered as `delivery` says (checked by
    /// [`Self::build`]).
    pub fn notifier_with(
        mut self,
        notifier: Arc<dyn crate::notify::Notifier>,
        delivery: crate::notify::Delivery,
    ) -> Self {
        self.notifiers.push((notifier, delivery));
        self
    }

    /// Register a hook under its [`Hook::name`](crate::hook::Hook::name),
    /// for rollouts to run ([`crate::RolloutSpec::hook`]).
    pub fn hook(mut self, hook: Arc<dyn crate::hook::Hook>) -> Self {
        self.hooks.push(hook);
        self
    }

    /// The state store (default: in memory).
    pub fn state(mut self, state: Arc<dyn StateStore>) -> Self {
        self.state = Some(state);
        self
    }

    /// The audit sink (default: in memory).
    pub fn audit(mut self, audit: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// The wall clock for audit and leases (default: [`TokioClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The retry policy for every provider call.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Engine timing.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// This engine's identity, the actor of its audit entries (default:
    /// `relay-<pid>-<random>`). The leases it takes carry it and a random
    /// part drawn for this engine instance, so engines given the same name
    /// (two containers, both PID 1) never hold a lease as one.
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = Some(holder.into());
        self
    }

    /// Who may give which operator commands (default:
    /// [`crate::AllowAll`], everyone anything). A refused command is
    /// audited and has no effect.
    pub fn authorizer(mut self, authorizer: Arc<dyn crate::authorize::Authorizer>) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// Seed for retry jitter (default: derived from the holder identity).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Build the engine.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming what is missing or duplicated.
    pub fn build(self) -> Result<Relay> {
        if self.targets.is_empty() {
            return Err(Error::invalid(
                "relay.targets",
                "register at least one target with RelayBuilder::target",
            ));
        }
        let mut targets = BTreeMap::new();
        for t in self.targets {
            let name = t.name().to_owned();
            if name.is_empty() {
                return Err(Error::invalid("relay.targets", "a target has an empty name"));
            }
            crate::error::check_name(&format!("relay.targets[{}]", targets.len()), &name)?;
            if targets.insert(name.clone(), t).is_some() {
                return Err(Error::invalid(
                    "relay.targets",
                    format!("two targets are named {name:?}"),
                ));
            }
        }
        if let Some(name) = self.probes.keys().find(|n| !targets.contains_key(*n)) {
            return Err(Error::invalid(
                format!("relay.probes.{name}"),
                format!(
                    "no target named {name:?} is registered; registered: {:?}",
                    targets.keys().collect::<Vec<_>>()
                ),
            ));
        }
        let mut gates = BTreeMap::new();
        for g in self.gates {
            let name = g.name().to_owned();
            crate::error::check_name(&format!("relay.gates[{}]", gates.len()), &name)?;
            if gates.insert(name.clone(), g).is_some() {
                return Err(Error::invalid("relay.gates", format!("two gates are named {name:?}")));
            }
        }
        let mut hooks = BTreeMap::new();
        for h in self.hooks {
            let name = h.name().to_owned();
            crate::error::check_name(&format!("relay.hooks[{}]", hooks.len()), &name)?;
            if hooks.insert(name.clone(), h).is_some() {
                return Err(Error::invalid("relay.hooks", format!("two hooks are named {name:?}")));
            }
        }
        // The barrier a wave holds its rollouts at before promotion.
        gates
            .entry(super::WAVE_GATE.to_owned())
            .or_insert_with(|| Arc::new(crate::gate::ManualApproval::new(super::WAVE_GATE)));
        let artifacts = self
            .artifacts
            .ok_or_else(|| Error::invalid("relay.artifacts", "set an artifact store with RelayBuilder::artifacts"))?;
        let retry = self.retry.unwrap_or_default();
        retry.validate()?;
        let config = self.config.unwrap_or_default();
        let backoff = config.poll_backoff;
        if !(1.0..=10.0).contains(&backoff) {
            return Err(Error::invalid(
                "relay.config.poll_backoff",
                format!("{backoff} is not a factor from 1.0 (a fixed interval) to 10.0"),
            ));
        }
        if config.lease_ttl.is_zero()
            || config.poll_interval.is_zero()
            || config.gate_poll_interval.is_zero()
            || config.watch_resync.is_zero()
        {
            return Err(Error::invalid(
                "relay.config",
                "lease_ttl, poll_interval, gate_poll_interval and watch_resync must be greater than zero",
            ));
        }
        let mut notifications = crate::notify::Notifications::default();
        for (notifier, delivery) in self.notifiers {
            notifications.add(notifier, delivery)?;
        }
        let instance = nonce();
        let (holder, lease_holder) = match self.holder {
            Some(h) => (h.clone(), format!("{h}#{instance}")),
            None => {
                let h = format!("relay-{}-{instance}", std::process::id());
                (h.clone(), h)
            }
        };
        let seed = self.seed.unwrap_or_else(|| {
            holder.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
        });
        Ok(Relay {
            inner: Arc::new(Inner {
                targets,
                artifacts,
                secrets: self.secrets,
                probe: self.probe,
                probes: self.probes,
                gates,
                hooks,
                verifiers: self.verifiers,
                state: self.state.unwrap_or_else(|| Arc::new(MemoryStateStore::new())),
                audit: self.audit.unwrap_or_else(|| Arc::new(MemoryAuditSink::new())),
                clock: self.clock.unwrap_or_else(|| Arc::new(TokioClock::new())),
                retry,
                config,
                holder,
                lease_holder,
                instance,
                driving: Default::default(),
                authorizer: self.authorizer.unwrap_or_else(|| Arc::new(crate::authorize::AllowAll)),
                shut_down: Default::default(),
                ended: Default::default(),
                rng: SeededRng::new(seed),
                ids: AtomicU64::new(0),
                notifications,
            }),
        })
    }
}
