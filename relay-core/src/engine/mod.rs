//! The engine: [`Relay`] plans rollouts, starts them, resumes them after a
//! crash, and drives them through their plans.

mod builder;
mod driver;
mod handle;
mod tally;
mod wave;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::artifact::ArtifactPolicy;
use crate::artifact::ArtifactStore;
use crate::audit::{detail, AuditDetail, AuditEvent, AuditSink};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::event::{EventHub, EventKind, Outcome, RolloutEvent};
use crate::gate::{Approval, Gate, GateContext, GateDecision};
use crate::plan::{Plan, PlanContext, Step, Strategy};
use crate::probe::HealthProbe;
use crate::release::{Release, RevisionSpec};
use crate::retry::RetryPolicy;
use crate::rng::SeededRng;
use crate::secret::SecretStore;
use crate::state::{RolloutRecord, RolloutStatus, StateStore};
use crate::target::{Routing, Target};
use crate::verify::ArtifactVerifier;

pub use builder::RelayBuilder;
pub use handle::{RolloutCommand, RolloutControl, RolloutHandle};
pub use wave::{Revert, Wave, WaveHandle, WaveOrder, WaveReport, WaveRollout, WaveStatus, WAVE_GATE};

/// Timing of the engine itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Lease time-to-live; the lease is renewed every third of it.
    #[serde(with = "crate::serde_duration")]
    pub lease_ttl: Duration,
    /// How long after a scale readiness is first polled again.
    #[serde(with = "crate::serde_duration")]
    pub poll_interval: Duration,
    /// Each further readiness poll of the same wait comes this many times
    /// later than the one before (1.0 polls at a fixed interval), up to
    /// `poll_interval_max`: a revision that takes a minute to start costs a
    /// few observations, not thirty.
    #[serde(default = "default_poll_backoff")]
    pub poll_backoff: f64,
    /// The longest time between two readiness polls.
    #[serde(with = "crate::serde_duration", default = "default_poll_interval_max")]
    pub poll_interval_max: Duration,
    /// With a target that reports its changes ([`Capabilities::watches`](crate::Capabilities::watches)), the
    /// engine observes when it says so and otherwise only this often, in
    /// case a change went unreported.
    #[serde(with = "crate::serde_duration", default = "default_watch_resync")]
    pub watch_resync: Duration,
    /// How long a revision may take to become ready before the step fails.
    #[serde(with = "crate::serde_duration")]
    pub progress_deadline: Duration,
    /// How often a waiting gate is asked again.
    #[serde(with = "crate::serde_duration")]
    pub gate_poll_interval: Duration,
    /// Events buffered per rollout for slow subscribers.
    pub event_buffer: usize,
    /// How long a rollback keeps trying an action that fails with errors
    /// that may pass (an API unavailable or throttling, a stable revision
    /// slow to become ready) before it ends `RollbackFailed`: each try goes
    /// through the retry policy, and the tries are spaced from
    /// `poll_interval` doubling up to a minute. Errors that will not pass
    /// (a denied permission) end it at once. A rollback that failed can be
    /// finished later with [`Relay::resume`].
    #[serde(with = "crate::serde_duration", default = "default_rollback_retry_budget")]
    pub rollback_retry_budget: Duration,
    /// Bounds on what a plan may ask, checked when planning.
    #[serde(default)]
    pub limits: PlanLimits,
}

/// Bounds on what a plan may ask, checked when it is made: a slip of the
/// keyboard (`pause: 100000000d`, `count: 4294967295`) is refused with the
/// step and the limit named, rather than holding a target for centuries or
/// writing gigabytes of audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanLimits {
    /// The longest timed pause (default 7 days).
    #[serde(with = "crate::serde_duration")]
    pub max_pause: Duration,
    /// The longest interval between two measurements of an analysis
    /// (default 1 day).
    #[serde(with = "crate::serde_duration")]
    pub max_analysis_interval: Duration,
    /// The most measurements one analysis takes (default 1,000).
    pub max_analysis_count: u32,
    /// The longest all of a plan's timed pauses and analyses may take
    /// together (default 30 days).
    #[serde(with = "crate::serde_duration")]
    pub max_duration: Duration,
}

impl Default for PlanLimits {
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        PlanLimits {
            max_pause: 7 * DAY,
            max_analysis_interval: DAY,
            max_analysis_count: 1_000,
            max_duration: 30 * DAY,
        }
    }
}

impl PlanLimits {
    /// Check `steps` against the limits.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming the step (`plan.steps[i]...`) or the
    /// plan, the value and the limit.
    pub fn check(&self, steps: &[Step]) -> Result<()> {
        let over = |path: String, what: &str, value: String, limit: String, field: &str| {
            Error::invalid(
                path,
                format!("{what} {value} is more than the engine allows ({limit}, EngineConfig::limits.{field}); shorten it, or raise the limit"),
            )
        };
        let mut total = Duration::ZERO;
        for (i, step) in steps.iter().enumerate() {
            let (waits, analysis) = match step {
                Step::Pause { duration: Some(d) } => (Some(*d), None),
                Step::Bake { duration, analysis } => (Some(*duration), analysis.as_ref()),
                Step::Analyze { analysis } => (None, Some(analysis)),
                _ => (None, None),
            };
            if let Some(d) = waits {
                if d > self.max_pause {
                    return Err(over(
                        format!("plan.steps[{i}].{}", step.kind()),
                        &format!("the {}", step.kind()),
                        format!("{d:?}"),
                        format!("{:?}", self.max_pause),
                        "max_pause",
                    ));
                }
            }
            if let Some(analysis) = analysis {
                let path = format!("plan.steps[{i}].analysis");
                if analysis.interval > self.max_analysis_interval {
                    return Err(over(
                        format!("{path}.interval"),
                        "the interval",
                        format!("{:?}", analysis.interval),
                        format!("{:?}", self.max_analysis_interval),
                        "max_analysis_interval",
                    ));
                }
                if analysis.count > self.max_analysis_count {
                    return Err(over(
                        format!("{path}.count"),
                        "the count",
                        analysis.count.to_string(),
                        self.max_analysis_count.to_string(),
                        "max_analysis_count",
                    ));
                }
            }
            // A bake's analysis runs within its duration.
            let takes =
                waits.unwrap_or_else(|| analysis.map_or(Duration::ZERO, |a| a.interval.saturating_mul(a.count)));
            total = total.saturating_add(takes);
        }
        if total > self.max_duration {
            return Err(over(
                "plan".into(),
                "the pauses and analyses take",
                format!("{total:?} in all, which"),
                format!("{:?}", self.max_duration),
                "max_duration",
            ));
        }
        Ok(())
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            lease_ttl: Duration::from_secs(30),
            poll_interval: Duration::from_secs(2),
            poll_backoff: default_poll_backoff(),
            poll_interval_max: default_poll_interval_max(),
            watch_resync: default_watch_resync(),
            progress_deadline: Duration::from_secs(600),
            gate_poll_interval: Duration::from_secs(30),
            event_buffer: 256,
            rollback_retry_budget: default_rollback_retry_budget(),
            limits: PlanLimits::default(),
        }
    }
}

fn default_rollback_retry_budget() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_poll_backoff() -> f64 {
    1.5
}

fn default_poll_interval_max() -> Duration {
    Duration::from_secs(10)
}

fn default_watch_resync() -> Duration {
    Duration::from_secs(60)
}

/// What [`Relay::verify_audit`] checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditCheck {
    /// Entries in the verified chain.
    pub entries: u64,
    /// Records whose anchor was checked; `None` when the state store cannot
    /// list its records ([`StateStore::list_all`]).
    pub anchors: Option<usize>,
}

/// What to roll out, where, and how.
#[derive(Clone, Debug)]
pub struct RolloutSpec {
    /// Rollout id; generated when `None`.
    pub id: Option<String>,
    /// Name of a registered target.
    pub target: String,
    /// The release.
    pub release: Release,
    /// The strategy.
    pub strategy: Arc<dyn Strategy>,
    /// What the artifact must satisfy.
    pub policy: ArtifactPolicy,
    /// Gates checked before anything changes: a gate that refuses makes
    /// [`Relay::plan`] and [`Relay::start`] fail; one that waits becomes the
    /// plan's first step.
    pub gates_before_start: Vec<String>,
    /// Gates checked right before promotion (a step before `promote`).
    pub gates_before_promotion: Vec<String>,
    /// Decisions given before the rollout starts (an emergency override of
    /// a freeze window, say); recorded and audited when it starts.
    pub approvals: Vec<Approval>,
    /// The rollout this one promotes from another environment (set by
    /// [`crate::Pipeline::promote`]); recorded and audited.
    pub promoted_from: Option<String>,
    /// Who started the rollout (the identity the embedding application
    /// supplies); recorded, audited, and seen by gates, so one that
    /// separates duties ([`crate::ManualApproval::separate_duties`]) can
    /// refuse its starter's approval.
    pub started_by: Option<String>,
    /// Whom to call about the rollout, as (role, who) pairs (`on-call`,
    /// `#payments-oncall`): written into its runbook ([`Relay::runbook`]).
    pub contacts: Vec<(String, String)>,
    /// Hooks to run, each where its spec says ([`crate::hook`]).
    pub hooks: Vec<crate::hook::HookSpec>,
    /// Expand/contract migrations ([`crate::hook::Migration`]).
    pub migrations: Vec<crate::hook::Migration>,
    /// A bake at full traffic before the candidate is made stable, the
    /// previous revision kept beside it ([`crate::bake`]).
    pub bake: Option<crate::bake::Bake>,
}

impl RolloutSpec {
    /// Roll `release` out to `target` with `strategy`, under the default
    /// (permissive) artifact policy.
    pub fn new(target: impl Into<String>, release: Release, strategy: impl Strategy + 'static) -> Self {
        Self::with_strategy(target, release, Arc::new(strategy))
    }

    /// The same with a shared strategy.
    pub fn with_strategy(target: impl Into<String>, release: Release, strategy: Arc<dyn Strategy>) -> Self {
        RolloutSpec {
            id: None,
            target: target.into(),
            release,
            strategy,
            policy: ArtifactPolicy::default(),
            gates_before_start: Vec::new(),
            gates_before_promotion: Vec::new(),
            approvals: Vec::new(),
            promoted_from: None,
            started_by: None,
            contacts: Vec::new(),
            hooks: Vec::new(),
            migrations: Vec::new(),
            bake: None,
        }
    }

    /// Bake the release at full traffic before it is made stable
    /// ([`crate::bake`]).
    pub fn bake(mut self, bake: crate::bake::Bake) -> Self {
        self.bake = Some(bake);
        self
    }

    /// Run an expand/contract migration ([`crate::hook::Migration`]):
    /// `expand` before the candidate starts, `contract` once it is promoted
    /// and the old revision retired.
    pub fn migration(mut self, migration: crate::hook::Migration) -> Self {
        self.migrations.push(migration);
        self
    }

    /// Run a registered hook where `hook` says ([`crate::hook`]).
    pub fn hook(mut self, hook: crate::hook::HookSpec) -> Self {
        self.hooks.push(hook);
        self
    }

    /// Name `who` to call as `role` (`on-call`, `owner`, `database`) in the
    /// rollout's runbook.
    pub fn contact(mut self, role: impl Into<String>, who: impl Into<String>) -> Self {
        self.contacts.push((role.into(), who.into()));
        self
    }

    /// Record `identity` as who started the rollout.
    pub fn started_by(mut self, identity: impl Into<String>) -> Self {
        self.started_by = Some(identity.into());
        self
    }

    /// Every gate the rollout names, sorted: before start, before
    /// promotion, and the strategy's own gate steps (as it plans on a
    /// target that routes by weight beside a stable revision) — what an
    /// application registers before it starts the rollout.
    pub fn gate_names(&self) -> Vec<String> {
        let ctx = PlanContext {
            target: self.target.clone(),
            capabilities: crate::Capabilities::new(Routing::Weighted, 2),
            replicas: self.release.replicas,
            stable: Some(crate::RevisionState::new(
                "stable".into(),
                self.release.replicas,
                self.release.replicas,
            )),
        };
        let steps = self.strategy.plan(&ctx).unwrap_or_default();
        let mut names: Vec<String> = self
            .gates_before_start
            .iter()
            .chain(&self.gates_before_promotion)
            .cloned()
            .chain(steps.into_iter().filter_map(|s| match s {
                Step::Gate { name } => Some(name),
                _ => None,
            }))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Check gate `name` before anything changes.
    pub fn gate_before_start(mut self, name: impl Into<String>) -> Self {
        self.gates_before_start.push(name.into());
        self
    }

    /// Check gate `name` right before promotion.
    pub fn gate_before_promotion(mut self, name: impl Into<String>) -> Self {
        self.gates_before_promotion.push(name.into());
        self
    }

    /// Approve gate `gate` up front, as `by` with `comment` (for example an
    /// emergency override of a freeze window). Recorded in the rollout and
    /// audited when it starts.
    pub fn approve(mut self, gate: impl Into<String>, by: impl Into<String>, comment: impl Into<String>) -> Self {
        self.approvals.push(Approval {
            gate: gate.into(),
            by: by.into(),
            comment: comment.into(),
            approved: true,
            at_ms: 0,
            step: None,
        });
        self
    }

    /// Use a fixed id (letters, digits, '.', '_', '-').
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Require the artifact to satisfy `policy`.
    pub fn policy(mut self, policy: ArtifactPolicy) -> Self {
        self.policy = policy;
        self
    }
}

static INSTANCE: AtomicU64 = AtomicU64::new(0);

/// The engine. Cheap to clone; every clone shares providers and state.
///
/// ```
/// # use relay_core::*;
/// # async fn demo(relay: Relay, spec: RolloutSpec) -> Result<()> {
/// let plan = relay.plan(&spec).await?; // dry run: no side effect
/// println!("{plan}");
/// let handle = relay.start(spec).await?;
/// let outcome = handle.wait().await?;
/// assert!(outcome.is_success());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Relay {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub targets: BTreeMap<String, Arc<dyn Target>>,
    pub artifacts: Arc<dyn ArtifactStore>,
    pub secrets: BTreeMap<String, Arc<dyn SecretStore>>,
    pub probe: Option<Arc<dyn HealthProbe>>,
    pub probes: BTreeMap<String, Arc<dyn HealthProbe>>,
    pub gates: BTreeMap<String, Arc<dyn Gate>>,
    pub hooks: BTreeMap<String, Arc<dyn crate::hook::Hook>>,
    pub verifiers: Vec<Arc<dyn ArtifactVerifier>>,
    pub state: Arc<dyn StateStore>,
    pub audit: Arc<dyn AuditSink>,
    pub clock: Arc<dyn Clock>,
    pub retry: RetryPolicy,
    pub config: EngineConfig,
    pub holder: String,
    /// The prefix of the lease holder ids of this instance: the holder and
    /// the instance's random part.
    pub lease_holder: String,
    /// This instance's random part.
    pub instance: String,
    /// The rollouts this instance drives now, one driver per rollout, with
    /// their command channels (once spawned).
    pub driving: std::sync::Mutex<std::collections::HashMap<String, Option<handle::CommandTx>>>,
    /// Who may give which operator commands.
    pub authorizer: Arc<dyn crate::authorize::Authorizer>,
    /// Set once [`Relay::shutdown`] began: nothing new starts.
    pub shut_down: std::sync::atomic::AtomicBool,
    /// Told whenever a driver of this instance ends.
    pub ended: tokio::sync::Notify,
    pub rng: SeededRng,
    pub ids: AtomicU64,
    /// Where notices go ([`crate::notify`]).
    pub notifications: crate::notify::Notifications,
}

impl Inner {
    /// Run a provider call (`op`: `"<seam>.<method>"`) under the retry
    /// policy, each retry logged as a warning: the one way the engine calls
    /// a target, store, probe, gate or sink.
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let on_retry = move |attempt, e: &Error, backoff: Duration| {
            tracing::warn!(operation = op, attempt, error = %e, backoff_ms = backoff.as_millis() as u64, "retrying");
        };
        self.call_with(op, on_retry, f).await
    }

    /// [`Self::call`], retries reported to `on_retry` (a driver makes
    /// events of them).
    pub(crate) async fn call_with<T, F, Fut>(
        &self,
        op: &'static str,
        on_retry: impl FnMut(u32, &Error, Duration),
        f: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut on_retry = on_retry;
        let on_retry = |attempt, e: &Error, backoff: Duration| {
            crate::telemetry::retried(op);
            on_retry(attempt, e, backoff);
        };
        // The call's future is made where it is awaited, in either branch:
        // bound first, it would be copied once more on every call.
        #[cfg(feature = "metrics")]
        macro_rules! run {
            () => {
                crate::telemetry::measured(op, self.retry.run(op, &self.rng, on_retry, f))
            };
        }
        #[cfg(not(feature = "metrics"))]
        macro_rules! run {
            () => {
                self.retry.run(op, &self.rng, on_retry, f)
            };
        }
        // No subscriber anywhere (a simulation, a bench): no span, not even
        // a disabled one, which costs a step measurably (BENCHMARKS.md).
        if !tracing::dispatcher::has_been_set() {
            return run!().await;
        }
        run!().instrument(tracing::info_span!("call", operation = op)).await
    }

    /// The probe analysis reads for rollouts on `target`.
    pub(crate) fn probe_for(&self, target: &str) -> Option<Arc<dyn HealthProbe>> {
        self.probes.get(target).or(self.probe.as_ref()).cloned()
    }

    fn target(&self, name: &str) -> Result<&Arc<dyn Target>> {
        self.targets.get(name).ok_or_else(|| {
            Error::invalid(
                "spec.target",
                format!(
                    "no target named {name:?} is registered; registered: {:?}",
                    self.targets.keys().collect::<Vec<_>>()
                ),
            )
        })
    }

    /// The last rollout on `target`, other than `except`, that promoted
    /// `revision`: what the revision runs (its spec, pinned) and at what
    /// size, for putting it back.
    pub(crate) async fn last_promoted(
        &self,
        target: &str,
        revision: &crate::release::RevisionId,
        except: &str,
    ) -> Result<Option<RolloutRecord>> {
        let history = self
            .call("state.list_target", || self.state.list_target(target))
            .await?;
        Ok(history
            .into_iter()
            .rev()
            .find(|r| r.id != except && r.status.is_promoted() && r.plan.candidate.id == *revision))
    }

    /// The lease holder id for driving `rollout` from this instance: unique
    /// to it, so no other engine's acquire counts as this one's renewal.
    fn holder_for(&self, rollout: &str) -> String {
        format!("{}/{rollout}", self.lease_holder)
    }

    /// Claim `rollout` for a driver of this instance; `None` when one
    /// already drives it. The claim ends when the guard is dropped (the
    /// driver's task ends, however it ends).
    fn claim(self: &Arc<Self>, rollout: &str) -> Option<Driving> {
        let mut driving = self.driving.lock().unwrap_or_else(|p| p.into_inner());
        if self.shut_down.load(Ordering::SeqCst) {
            return None;
        }
        if driving.contains_key(rollout) {
            return None;
        }
        driving.insert(rollout.to_owned(), None);
        Some(Driving {
            inner: Arc::downgrade(self),
            rollout: rollout.to_owned(),
        })
    }

    /// The command channel of the driver of `rollout` in this instance, if
    /// one drives it.
    fn channel(&self, rollout: &str) -> Option<handle::CommandTx> {
        self.driving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(rollout)?
            .clone()
    }

    pub(crate) async fn audit(
        &self,
        rollout: &str,
        actor: &str,
        action: &str,
        detail: AuditDetail,
    ) -> Result<crate::audit::ChainHead> {
        let event = AuditEvent {
            at_ms: self.clock.now_ms(),
            actor: actor.to_owned(),
            rollout: rollout.to_owned(),
            action: action.to_owned(),
            detail,
        };
        self.append(&event).await
    }

    /// Append `event` to the audit sink under the retry policy; returns the
    /// chain's head after it.
    pub(crate) async fn append(&self, event: &AuditEvent) -> Result<crate::audit::ChainHead> {
        self.call("audit.append", || self.audit.append(event)).await
    }
}

/// Put each hook where its point says: before the first change, after
/// the candidate starts, after each traffic step, after promotion (after
/// a rollback is not a step: see [`Plan::post_rollback`]); and each
/// migration's expand half right before the first change, its contract
/// half after the last step, once the old revision is retired.
fn place_hooks(steps: &mut Vec<Step>, hooks: &[crate::hook::HookSpec], migrations: &[crate::hook::Migration]) {
    use crate::hook::HookPoint;
    let of = |at: HookPoint| -> Vec<Step> {
        hooks
            .iter()
            .filter(|h| h.at == at)
            .map(|h| Step::Hook { hook: h.clone() })
            .collect()
    };
    let mut placed = Vec::with_capacity(steps.len());
    let mut first_change = true;
    for step in steps.drain(..) {
        if step.is_mutation() && std::mem::take(&mut first_change) {
            placed.extend(of(HookPoint::PreRollout));
            placed.extend(migrations.iter().map(|m| Step::Hook { hook: m.expand.clone() }));
        }
        let after = match &step {
            Step::Stage { .. } => of(HookPoint::PreTraffic),
            Step::Route { candidate_weight } if *candidate_weight > 0 => of(HookPoint::PostTraffic),
            Step::Promote => of(HookPoint::PostPromotion),
            _ => Vec::new(),
        };
        placed.push(step);
        placed.extend(after);
    }
    placed.extend(migrations.iter().map(|m| Step::Hook {
        hook: m.contract.clone(),
    }));
    *steps = placed;
}

/// The steps that settle `target` on `stable`, the revision it already runs
/// as stable, at `replicas`: none when it is settled (that size, all
/// traffic, nothing else running or routed to); else full size, all
/// traffic, promote, and retire what else runs.
fn settle(target: &crate::target::TargetState, stable: &crate::release::RevisionId, replicas: u32) -> Vec<Step> {
    let mut leftovers: Vec<crate::release::RevisionId> = target
        .revisions
        .iter()
        .filter(|r| &r.id != stable && (r.desired > 0 || r.ready > 0))
        .map(|r| r.id.clone())
        .collect();
    for (id, weight) in target.traffic.weights() {
        if id != stable && *weight > 0 && !leftovers.contains(id) {
            leftovers.push(id.clone());
        }
    }
    // An autoscaled stable is at whatever size its autoscaler keeps.
    let sized = target
        .revision(stable)
        .map_or(replicas == 0, |r| r.desired == replicas || r.autoscaled);
    let routed = target.traffic.is_empty() || target.traffic.weight(stable) == 100;
    if sized && routed && leftovers.is_empty() {
        return Vec::new();
    }
    let mut steps = vec![
        Step::Scale {
            role: crate::target::Role::Candidate,
            replicas,
        },
        Step::Route { candidate_weight: 100 },
        Step::Promote,
    ];
    steps.extend(leftovers.into_iter().map(|revision| Step::RetireLeftover { revision }));
    steps
}

/// A `NotFound` met resolving the release, told with the field that named
/// the missing thing and the fix; other errors as they are.
fn in_field(e: Error, field: &str, fix: &str) -> Error {
    match e {
        Error::NotFound { what } => Error::NotFound {
            what: format!("{what} (named by {field}: {fix})"),
        },
        other => other,
    }
}

fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return Err(Error::invalid(
            "spec.id",
            "must be 1-128 letters, digits, '.', '_' or '-'",
        ));
    }
    Ok(())
}

impl Relay {
    /// Start building an engine.
    pub fn builder() -> RelayBuilder {
        RelayBuilder::default()
    }

    /// This engine instance's identity (lease holder prefix, audit actor).
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    /// The audit sink.
    pub fn audit(&self) -> &Arc<dyn AuditSink> {
        &self.inner.audit
    }

    /// The state store.
    pub fn state(&self) -> &Arc<dyn StateStore> {
        &self.inner.state
    }

    /// The controls of rollout `id`, which this engine drives: what a
    /// lost [`RolloutHandle`] gave. For a rollout another engine (or
    /// process) drives, send commands with [`Relay::command`].
    ///
    /// # Errors
    /// [`Error::NotFound`] when this engine does not drive `id`.
    pub fn control(&self, id: &str) -> Result<RolloutControl> {
        self.inner
            .channel(id)
            .map(|tx| RolloutControl::new(id.to_owned(), tx))
            .ok_or_else(|| Error::NotFound {
                what: format!("rollout {id} driven by this engine (send commands to any rollout with Relay::command)"),
            })
    }

    /// Send `command` to rollout `id`, wherever it is driven: straight to
    /// its driver when this engine drives it, else queued in the state
    /// store for the engine that holds its lease (in any process) to
    /// apply, in order, within its [`StateStore::command_poll`]. The
    /// engine that applies it asks its [`crate::Authorizer`] first, and
    /// audits it or its refusal.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] for a command whose names or text are not
    /// printable ([`RolloutCommand::validate`]), [`Error::NotFound`] for an
    /// unknown rollout, [`Error::NotRunning`] for a finished one, and the
    /// store's errors ([`Error::Unsupported`] for a store that carries no
    /// commands).
    pub async fn command(&self, id: &str, command: RolloutCommand) -> Result<()> {
        command.validate()?;
        let inner = &self.inner;
        if let Some(tx) = inner.channel(id) {
            if tx.send(Box::new(handle::Command::User(command.clone()))).is_ok() {
                return Ok(());
            }
        }
        let record = inner
            .call("state.get", || inner.state.get(id))
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("rollout {id}"),
            })?;
        if record.status.is_terminal() {
            return Err(Error::NotRunning { rollout: id.to_owned() });
        }
        inner
            .call("state.send_command", || inner.state.send_command(id, &command))
            .await
            .map(|_| ())
    }

    /// Verify the audit log: the whole chain (under the sink's key, if it
    /// has one), and the anchors the state store's records hold (the head
    /// at each record's last write), so that a log cut from its end — the
    /// last entries, all but the first, all of it — shows, naming the
    /// missing range, even to a sink opened after the cut.
    ///
    /// # Errors
    /// [`Error::AuditTampered`], and the sink's and store's errors.
    pub async fn verify_audit(&self) -> Result<AuditCheck> {
        let inner = &self.inner;
        let entries = inner.audit.verify().await?;
        let anchors = match inner.state.list_all().await {
            Ok(records) => Some(crate::audit::check_anchors(&inner.audit.entries().await?, &records)?),
            Err(Error::Unsupported { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(AuditCheck { entries, anchors })
    }

    /// A fresh id `<prefix>-<now ms>-<instance>-<counter>` for a rollout or
    /// wave: unique among the engines that share a state store, since each
    /// has its own random instance part.
    pub(crate) fn fresh_id(&self, prefix: &str) -> String {
        format!(
            "{}-{}-{}-{}",
            crate::state_key(prefix),
            self.inner.clock.now_ms(),
            self.inner.instance,
            self.inner.ids.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Plan a rollout without changing anything: validate the spec, resolve
    /// and verify the artifact, pin secret versions, observe the target and
    /// ask the strategy for steps.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming the field for a bad spec,
    /// [`Error::Unsupported`] when the target cannot do what the strategy
    /// needs, and provider errors from resolution and observation.
    #[tracing::instrument(name = "plan", skip_all, fields(target = %spec.target))]
    pub async fn plan(&self, spec: &RolloutSpec) -> Result<Plan> {
        let inner = &self.inner;
        if let Some(id) = &spec.id {
            validate_id(id)?;
        }
        if let Some(by) = &spec.started_by {
            crate::error::check_name("spec.started_by", by)?;
        }
        spec.release.validate()?;
        let target = inner.target(&spec.target)?;
        let reference = &spec.release.artifact;
        let artifact = inner
            .call("artifact.resolve", || inner.artifacts.resolve(reference))
            .await
            .map_err(|e| in_field(e, "release.artifact", "push it, or fix the tag or digest"))?;
        inner.artifacts.verify(reference, &artifact, &spec.policy).await?;
        for v in &inner.verifiers {
            v.verify(&artifact).await?;
        }
        if spec.policy.refuse_rolled_back {
            let history = inner
                .call("state.list_target", || inner.state.list_target(&spec.target))
                .await?;
            if let Some((r, cause)) = history.iter().rev().find_map(|r| match r.status.outcome() {
                Some(Outcome::RolledBack { cause }) if r.plan.candidate.artifact.digest == artifact.digest => {
                    Some((r, cause))
                }
                _ => None,
            }) {
                return Err(Error::invalid(
                    "release.artifact",
                    format!(
                        "{} was rolled back on target {:?} by rollout {} ({cause}); the policy refuses to deploy it again",
                        artifact.digest, spec.target, r.id
                    ),
                ));
            }
        }

        let mut pinned = BTreeMap::new();
        for (name, r) in &spec.release.secrets {
            let store = inner.secrets.get(&r.scheme).ok_or_else(|| {
                Error::invalid(
                    format!("release.secrets.{name}"),
                    format!(
                        "no secret store is registered for scheme {:?}; registered: {:?}",
                        r.scheme,
                        inner.secrets.keys().collect::<Vec<_>>()
                    ),
                )
            })?;
            let value = inner.call("secret.fetch", || store.fetch(r)).await.map_err(|e| {
                in_field(
                    e,
                    &format!("release.secrets.{name}"),
                    "create the secret, or fix the reference",
                )
            })?;
            // Only the version (and the store's full name for the secret)
            // is kept: the value is dropped here, unread.
            let mut pin = r.pinned(value.version.clone());
            if let Some(path) = &value.path {
                pin.path.clone_from(path);
            }
            pinned.insert(name.clone(), pin);
        }
        let candidate = RevisionSpec::new(artifact, spec.release.config.clone(), pinned);

        let observed = inner.call("target.observe", || target.observe()).await?;
        let stable = observed.stable.as_ref().and_then(|s| observed.revision(s)).cloned();
        let runs_candidate = stable.as_ref().is_some_and(|s| s.id == candidate.id);
        // The candidate is the stable revision: nothing to do only when the
        // target is settled on it (its size, all traffic, nothing else
        // running), else the plan settles it (a rollback that did not
        // finish leaves traffic and replicas on the revision it removed).
        let repair = runs_candidate.then(|| settle(&observed, &candidate.id, spec.release.replicas));
        let stable_replicas = stable.as_ref().map_or(0, |s| s.desired);
        let stable = stable.filter(|s| s.id != candidate.id);
        let ctx = PlanContext {
            target: spec.target.clone(),
            capabilities: target.capabilities(),
            replicas: spec.release.replicas,
            stable: stable.clone(),
        };
        let mut steps = match &repair {
            Some(steps) => steps.clone(),
            None => spec.strategy.plan(&ctx)?,
        };
        if !steps.is_empty() {
            self.preflight(spec, &candidate).await?;
            let gate = |name: &String| Step::Gate { name: name.clone() };
            if let Some(at) = steps.iter().position(|s| matches!(s, Step::Promote)) {
                steps.splice(at..at, spec.gates_before_promotion.iter().map(gate));
            }
            steps.splice(0..0, spec.gates_before_start.iter().map(gate));
            place_hooks(&mut steps, &spec.hooks, &spec.migrations);
            if let (Some(bake), None) = (&spec.bake, &repair) {
                bake.place(&ctx, &mut steps)?;
            }
        }
        let named = spec
            .hooks
            .iter()
            .enumerate()
            .map(|(i, h)| (format!("spec.hooks[{i}]"), h));
        let halves = spec.migrations.iter().enumerate().flat_map(|(i, m)| {
            [
                (format!("spec.migrations[{i}].expand"), &m.expand),
                (format!("spec.migrations[{i}].contract"), &m.contract),
            ]
        });
        for (field, h) in named.chain(halves) {
            if !inner.hooks.contains_key(&h.name) {
                return Err(Error::invalid(
                    format!("{field}.name"),
                    format!(
                        "no hook named {:?} is registered; add one with RelayBuilder::hook; registered: {:?}",
                        h.name,
                        inner.hooks.keys().collect::<Vec<_>>()
                    ),
                ));
            }
            if h.timeout.is_zero() {
                return Err(Error::invalid(format!("{field}.timeout"), "must be above zero"));
            }
            // Only a target that routes can hold a started candidate
            // without requests: elsewhere requests reach it as it starts.
            let holds = matches!(ctx.capabilities.routing, Routing::Weighted | Routing::Switch);
            if h.at == crate::hook::HookPoint::PreTraffic && !holds {
                return Err(Error::invalid(
                    format!("{field}.at"),
                    format!(
                        "pre_traffic needs a target that keeps the candidate from requests until a traffic step; target {:?} routes by {:?}, so requests reach the candidate as it starts: use pre_rollout (before it starts) or post_traffic",
                        spec.target, ctx.capabilities.routing
                    ),
                ));
            }
        }
        let candidate_id = candidate.id.clone();
        inner.config.limits.check(&steps)?;
        for (i, step) in steps.iter().enumerate() {
            match step {
                Step::Gate { name } if !inner.gates.contains_key(name) => {
                    return Err(Error::invalid(
                        format!("plan.steps[{i}].gate"),
                        format!("no gate named {name:?} is registered; add one with RelayBuilder::gate (for example ManualApproval::new({name:?}))"),
                    ))
                }
                Step::Analyze { analysis }
                | Step::Bake {
                    analysis: Some(analysis),
                    ..
                } => {
                    analysis.validate(&format!("plan.steps[{i}].analysis"))?;
                    if inner.probe_for(&spec.target).is_none() {
                        return Err(Error::invalid(format!("plan.steps[{i}].analysis"), format!("the plan analyzes health but no probe is registered for target {:?}; add one with RelayBuilder::probe or RelayBuilder::probe_for", spec.target)));
                    }
                }
                _ => {}
            }
        }
        Ok(Plan {
            target: spec.target.clone(),
            strategy: spec.strategy.name().to_owned(),
            requested: reference.clone(),
            candidate,
            replicas: spec.release.replicas,
            stable_replicas,
            stable: match repair {
                Some(ref steps) if !steps.is_empty() => Some(candidate_id),
                _ => stable.map(|s| s.id),
            },
            steps,
            post_rollback: spec
                .hooks
                .iter()
                .filter(|h| h.at == crate::hook::HookPoint::PostRollback)
                .cloned()
                .collect(),
        })
    }

    /// Ask the before-start gates now: a refusal fails the plan, naming the
    /// gate and its reason; a gate that waits is asked again as the plan's
    /// first step.
    async fn preflight(&self, spec: &RolloutSpec, candidate: &RevisionSpec) -> Result<()> {
        let inner = &self.inner;
        let now_ms = inner.clock.now_ms();
        for (i, name) in spec
            .gates_before_start
            .iter()
            .chain(&spec.gates_before_promotion)
            .enumerate()
        {
            let Some(gate) = inner.gates.get(name) else {
                let field = if i < spec.gates_before_start.len() {
                    format!("spec.gates_before_start[{i}]")
                } else {
                    format!("spec.gates_before_promotion[{}]", i - spec.gates_before_start.len())
                };
                return Err(Error::invalid(
                    field,
                    format!("no gate named {name:?} is registered; add one with RelayBuilder::gate"),
                ));
            };
            if i >= spec.gates_before_start.len() {
                continue;
            }
            let ctx = GateContext {
                rollout: spec.id.clone().unwrap_or_default(),
                target: spec.target.clone(),
                candidate: candidate.id.clone(),
                digest: candidate.artifact.digest.to_string(),
                step: 0,
                approvals: spec.approvals.clone(),
                now_ms,
                waiting_since_ms: now_ms,
                started_by: spec.started_by.clone(),
            };
            let decision = inner.call("gate.check", || gate.check(&ctx)).await?;
            if let GateDecision::Fail { reason } = decision {
                return Err(Error::GateRejected {
                    gate: name.clone(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// Release notes: what changed from release `from` to release `to` of
    /// `target` (each a rollout id, or a revision id), from this engine's
    /// state store and audit log ([`crate::history`]).
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `from` or `to` when no rollout of the
    /// target answers to it; store errors.
    pub async fn diff(&self, target: &str, from: &str, to: &str) -> Result<crate::history::ReleaseDiff> {
        let inner = &self.inner;
        crate::history::release_diff(inner.state.as_ref(), Some(inner.audit.as_ref()), target, from, to).await
    }

    /// The rollout `spec` would run, as a Markdown runbook for the
    /// operator ([`crate::runbook`]): planned as [`Relay::plan`] plans it
    /// (nothing changes), each step with what it changes, how to check it
    /// and the target's commands to undo it by hand, then the whole
    /// rollback by hand and the spec's contacts.
    ///
    /// # Errors
    /// As [`Relay::plan`].
    pub async fn runbook(&self, spec: &RolloutSpec) -> Result<String> {
        let plan = self.plan(spec).await?;
        let target = self.inner.target(&spec.target)?;
        Ok(plan.runbook(target.as_ref(), &spec.contacts))
    }

    /// How `target` differs from the release relay last promoted on it: the
    /// stable revision, replicas, revisions left running, and — when the
    /// target can describe what it runs — the image, the configuration and
    /// the secret references, so a change made behind relay's back shows.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] for an unknown target; provider and state
    /// store errors.
    pub async fn drift(&self, target: &str) -> Result<crate::drift::DriftReport> {
        use crate::drift::{Drift, DriftReport};
        let inner = &self.inner;
        let t = inner.target(target)?;
        let history = inner
            .call("state.list_target", || inner.state.list_target(target))
            .await?;
        let Some(applied) = history.into_iter().rev().find(|r| r.status.is_promoted()) else {
            return Ok(DriftReport {
                target: target.to_owned(),
                applied_by: None,
                differences: Vec::new(),
                described: false,
            });
        };
        let observed = inner.call("target.observe", || t.observe()).await?;
        let want = &applied.plan.candidate;
        let mut differences = Vec::new();
        if observed.stable.as_ref() != Some(&want.id) {
            differences.push(Drift::Revision {
                applied: want.id.clone(),
                running: observed.stable.clone(),
            });
        }
        let stable = observed.stable.clone().unwrap_or_else(|| want.id.clone());
        if let Some(r) = observed.revision(&stable) {
            // An autoscaler's count is not drift.
            if r.desired != applied.plan.replicas && !r.autoscaled {
                differences.push(Drift::Replicas {
                    applied: applied.plan.replicas,
                    running: r.desired,
                });
            }
        }
        for r in observed.revisions.iter().filter(|r| r.id != stable && r.desired > 0) {
            differences.push(Drift::ExtraRevision {
                revision: r.id.clone(),
                replicas: r.desired,
            });
        }
        let running = inner.call("target.describe", || t.describe(&stable)).await?;
        let described = running.is_some();
        if let Some(running) = running {
            let image = format!("{}@{}", want.artifact.repository, want.artifact.digest);
            if running.image != image {
                differences.push(Drift::Image {
                    applied: image,
                    running: running.image.clone(),
                });
            }
            for (key, value) in &want.config {
                if running.config.get(key) != Some(value) {
                    differences.push(Drift::Config {
                        key: key.clone(),
                        applied: value.clone(),
                        running: running.config.get(key).cloned(),
                    });
                }
            }
            for (name, reference) in &want.secrets {
                let now = running.secrets.get(name);
                // A target that does not record versions reports the
                // reference without one; compare what it knows.
                let same = now.is_some_and(|n| match n.parse::<crate::release::SecretRef>() {
                    Ok(n) if n.version().is_none() => {
                        let mut w = reference.clone();
                        w.params.remove("version");
                        n == w
                    }
                    Ok(n) => &n == reference,
                    Err(_) => false,
                });
                if !same {
                    differences.push(Drift::Secret {
                        name: name.clone(),
                        applied: reference.to_string(),
                        running: now.cloned(),
                    });
                }
            }
        }
        Ok(DriftReport {
            target: target.to_owned(),
            applied_by: Some(applied.id),
            differences,
            described,
        })
    }

    /// Plan and start a rollout: take the target's lease, persist the record
    /// and drive it in a task.
    ///
    /// # Errors
    /// Everything [`Relay::plan`] returns, [`Error::TargetLocked`] when
    /// another rollout holds the target, and [`Error::Conflict`] when a
    /// rollout an engine left running there (orphaned) must be driven to
    /// its end first.
    #[tracing::instrument(name = "start", skip_all, fields(target = %spec.target, rollout.id))]
    pub async fn start(&self, spec: RolloutSpec) -> Result<RolloutHandle> {
        let inner = &self.inner;
        if let Some(id) = &spec.id {
            validate_id(id)?;
        }
        inner.target(&spec.target)?;
        let now = inner.clock.now_ms();
        let id = spec.id.clone().unwrap_or_else(|| self.fresh_id(&spec.target));
        tracing::Span::current().record("rollout.id", id.as_str());
        let claim = self.claim(&id)?;
        // Lease first, then plan: the plan is made from what the target looks
        // like while no other rollout can change it.
        let holder = inner.holder_for(&id);
        let ttl = inner.config.lease_ttl;
        let lease = inner
            .call("state.acquire_lease", || {
                inner.state.acquire_lease(&spec.target, &holder, ttl, now)
            })
            .await?;
        if let Err(e) = self.no_orphan(&spec.target, &id).await {
            let _ = inner.state.release_lease(&lease).await;
            return Err(e);
        }
        let planned = self.plan(&spec).await;
        let plan = match planned {
            Ok(p) => p,
            Err(e) => {
                let _ = inner.state.release_lease(&lease).await;
                return Err(e);
            }
        };
        let now = inner.clock.now_ms();
        let mut record = RolloutRecord::new(
            id.clone(),
            spec.target.clone(),
            Arc::new(plan),
            holder,
            lease.token,
            now,
        );
        if record.plan.is_noop() {
            record.status = RolloutStatus::Finished(Outcome::NoChange);
        }
        record.approvals = spec
            .approvals
            .iter()
            .map(|a| Approval {
                at_ms: now,
                ..a.clone()
            })
            .collect();
        record.promoted_from = spec.promoted_from.clone();
        record.started_by = spec.started_by.clone();
        // Audited before the record is written, so a start that fails
        // leaves nothing behind: no record another engine would pick up
        // and drive, no lease (a failure to audit is a failure to start).
        if let Err(e) = self.audit_start(&mut record).await {
            let _ = inner.state.release_lease(&lease).await;
            return Err(e);
        }
        let saved = inner.call("state.put", || inner.state.put(&record, None)).await;
        match saved {
            Ok(v) => record.version = v,
            Err(e) => {
                let detail = detail!({"outcome": {"outcome": "not_started"}, "error": e.to_string()});
                if let Err(a) = inner.audit(&id, &inner.holder, "rollout.finished", detail).await {
                    tracing::error!(rollout = %id, error = %a, "could not audit a start that failed");
                }
                let _ = inner.state.release_lease(&lease).await;
                return Err(e);
            }
        }
        crate::telemetry::rollout_started(&record.target, &record.plan.strategy);
        Ok(self.spawn(record, lease, claim))
    }

    /// Refuse to start a rollout on `target` beside one left running there
    /// by an engine that stopped (crashed, killed, halted): with the lease
    /// taken, any rollout of the target still running is such an orphan.
    /// It must be driven to its end first, or two rollouts would change
    /// one target.
    async fn no_orphan(&self, target: &str, id: &str) -> Result<()> {
        let inner = &self.inner;
        let records = inner
            .call("state.list_target", || inner.state.list_target(target))
            .await?;
        match records.iter().find(|r| r.id != id && !r.status.is_terminal()) {
            None => Ok(()),
            Some(orphan) => Err(Error::Conflict {
                what: format!(
                    "target {target:?} has rollout {} left {} by {}, an engine that no longer drives it (orphaned); drive it to its end first with Relay::resume({:?}) or Relay::recover() (relayctl recover)",
                    orphan.id,
                    match orphan.status {
                        RolloutStatus::RollingBack { .. } => "rolling back",
                        _ => "running",
                    },
                    orphan.holder,
                    orphan.id
                ),
            }),
        }
    }

    /// Claim `id` for a new driver of this engine, or refuse: one engine
    /// never drives a rollout twice.
    fn claim(&self, id: &str) -> Result<Driving> {
        if self.inner.shut_down.load(Ordering::SeqCst) {
            return Err(Error::ShutDown { rollout: None });
        }
        self.inner.claim(id).ok_or_else(|| Error::Conflict {
            what: format!("rollout {id} is already driven by this engine"),
        })
    }

    /// Stop driving every rollout this engine drives, and start none: each
    /// driver finishes the provider call it is making, stops at its next
    /// wait or step boundary, and lets its lease go; its record stays as it
    /// was, for any engine to resume ([`Relay::resume`], [`Relay::recover`])
    /// at once. Their handles' `wait` returns [`Error::ShutDown`]. Returns
    /// the ids of the rollouts stopped, once every driver has stopped.
    pub async fn shutdown(&self) -> Vec<String> {
        let inner = &self.inner;
        inner.shut_down.store(true, Ordering::SeqCst);
        let stopped: Vec<String> = {
            let driving = inner.driving.lock().unwrap_or_else(|p| p.into_inner());
            for tx in driving.values().flatten() {
                let _ = tx.send(Box::new(handle::Command::Shutdown));
            }
            driving.keys().cloned().collect()
        };
        loop {
            let ended = inner.ended.notified();
            if inner.driving.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
                break;
            }
            ended.await;
        }
        tracing::info!(rollouts = stopped.len(), "engine shut down");
        stopped
    }

    /// The entries that open a rollout's trail: `rollout.started`, the
    /// decisions given in its spec, and, for a plan with nothing to do,
    /// its end (`rollout.finished`: no change), so every rollout's trail
    /// ends with one terminal entry.
    async fn audit_start(&self, record: &mut RolloutRecord) -> Result<()> {
        let inner = &self.inner;
        let id = &record.id;
        let detail = detail!({
            "target": record.target,
            "strategy": record.plan.strategy,
            "candidate": record.plan.candidate.id,
            "digest": record.plan.candidate.artifact.digest,
            "stable": record.plan.stable,
            "steps": record.plan.steps.len(),
            "promoted_from": record.promoted_from,
            "by": record.started_by,
        });
        let mut head = inner.audit(id, &inner.holder, "rollout.started", detail).await?;
        for a in &record.approvals {
            let detail = detail!({"gate": a.gate, "by": a.by, "comment": a.comment, "before_start": true});
            head = inner.audit(id, &inner.holder, "gate.approved", detail).await?;
        }
        if record.status == RolloutStatus::Finished(Outcome::NoChange) {
            let detail = detail!({"outcome": Outcome::NoChange});
            head = inner.audit(id, &inner.holder, "rollout.finished", detail).await?;
        }
        record.audit_head = Some(head);
        Ok(())
    }

    /// Pick up a rollout left running by a crashed or stopped engine. The
    /// step under the cursor is re-run; every step is idempotent.
    ///
    /// A rollout whose rollback failed (`RollbackFailed`, after a denied
    /// permission say) is resumed too, once a human has fixed the cause:
    /// its rollback goes on from the action that failed — unless another
    /// rollout has started on the target since, which then owns it.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::NotRunning`] for a finished rollout,
    /// [`Error::Conflict`] for a failed rollback a later rollout
    /// superseded, and [`Error::TargetLocked`] while the previous holder's
    /// lease is valid.
    pub async fn resume(&self, id: &str) -> Result<RolloutHandle> {
        let inner = &self.inner;
        let mut record = inner
            .call("state.get", || inner.state.get(id))
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("rollout {id}"),
            })?;
        inner.target(&record.target)?;
        let claim = self.claim(id)?;
        if let RolloutStatus::Finished(Outcome::RollbackFailed { cause, .. }) = &record.status {
            let history = inner
                .call("state.list_target", || inner.state.list_target(&record.target))
                .await?;
            // Whoever took the target's lease after this rollout held it
            // got a greater fencing token (clocks of engines on other
            // hosts cannot say what came first; tokens can).
            let later = history
                .iter()
                .find(|r| r.id != record.id && r.lease_token > record.lease_token);
            if let Some(later) = later {
                return Err(Error::Conflict {
                    what: format!(
                        "the rollback of {id} failed, and rollout {} has run on target {:?} since: it owns the target now",
                        later.id, record.target
                    ),
                });
            }
            record.status = RolloutStatus::RollingBack { cause: cause.clone() };
        } else if record.status.is_terminal() {
            return Err(Error::NotRunning { rollout: id.to_owned() });
        }
        let holder = inner.holder_for(id);
        let (ttl, now) = (inner.config.lease_ttl, inner.clock.now_ms());
        let lease = inner
            .call("state.acquire_lease", || {
                inner.state.acquire_lease(&record.target, &holder, ttl, now)
            })
            .await?;
        let expected = record.version;
        record.holder = holder;
        record.lease_token = lease.token;
        record.updated_ms = now;
        let saved = inner
            .call("state.put", || inner.state.put(&record, Some(expected)))
            .await;
        record.version = match saved {
            Ok(v) => v,
            Err(e) => {
                let _ = inner.state.release_lease(&lease).await;
                return Err(e);
            }
        };
        let detail = detail!({"cursor": record.cursor, "status": record.status});
        if let Err(e) = inner.audit(id, &inner.holder, "rollout.resumed", detail).await {
            let _ = inner.state.release_lease(&lease).await;
            return Err(e);
        }
        Ok(self.spawn(record, lease, claim))
    }

    /// Resume every rollout the state store holds as running. Rollouts whose
    /// target is still locked by a live holder, and rollouts this engine
    /// drives already, are skipped (and returned as errors by id:
    /// [`Error::TargetLocked`], [`Error::Conflict`]).
    pub async fn recover(&self) -> Result<(Vec<RolloutHandle>, Vec<(String, Error)>)> {
        let mut handles = Vec::new();
        let mut skipped = Vec::new();
        for r in self.inner.state.list_active().await? {
            if !self.inner.targets.contains_key(&r.target) {
                continue;
            }
            match self.resume(&r.id).await {
                Ok(h) => handles.push(h),
                Err(e) => skipped.push((r.id, e)),
            }
        }
        Ok((handles, skipped))
    }

    fn spawn(&self, record: RolloutRecord, lease: crate::state::Lease, claim: Driving) -> RolloutHandle {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let hub = EventHub::new(self.inner.config.event_buffer);
        let first = hub.subscribe();
        let id = record.id.clone();
        if let Some(slot) = self
            .inner
            .driving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&record.id)
        {
            *slot = Some(cmd_tx.clone());
        }
        // A shutdown that began while this rollout was starting.
        if self.inner.shut_down.load(Ordering::SeqCst) {
            let _ = cmd_tx.send(Box::new(handle::Command::Shutdown));
        }
        let driver = driver::Driver::new(
            self.inner.clone(),
            record,
            lease,
            claim,
            (cmd_tx.clone(), cmd_rx),
            EventSender(hub.clone()),
        );
        let join = tokio::spawn(driver.run());
        RolloutHandle::new(id, cmd_tx, hub, first, join)
    }
}

/// A rollout claimed by a driver of this engine instance (see
/// [`Inner::claim`]); dropping it ends the claim.
#[derive(Debug)]
pub(crate) struct Driving {
    inner: std::sync::Weak<Inner>,
    rollout: String,
}

impl Drop for Driving {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner
                .driving
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.rollout);
            inner.ended.notify_waiters();
        }
    }
}

/// The driver's end of a rollout's [`EventHub`]: when the driver is done
/// (or its task is dropped), subscribers end after the last event.
pub(crate) struct EventSender(Arc<EventHub>);

impl EventSender {
    /// Send an event; no subscriber is fine: events are also in tracing and
    /// audit. The event is only made (its time read, its text formatted)
    /// when someone subscribes.
    pub(crate) fn emit(&self, rollout: &str, clock: &dyn Clock, kind: impl FnOnce() -> EventKind) {
        self.0.send(|| RolloutEvent {
            rollout: rollout.to_owned(),
            at_ms: clock.now_ms(),
            kind: kind(),
        });
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        self.0.close();
    }
}
