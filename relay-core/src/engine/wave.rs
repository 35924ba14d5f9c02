//! Waves: one release across several targets of an environment (one per
//! region, say), in sequence or in parallel, where a failure anywhere rolls
//! back every target that already moved.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::handle::{joined, Command, CommandRx, CommandTx, RolloutCommand, RolloutControl};
use super::{validate_id, Relay, RolloutHandle, RolloutSpec};
use crate::audit::{detail, AuditDetail};
use crate::error::{Error, Result};
use crate::event::{EventKind, Outcome};
use crate::plan::Strategy;
use crate::release::{Release, RevisionId};

/// The gate a parallel wave holds each of its rollouts at, right before
/// promotion, until every target has passed its analysis. Every engine
/// registers it (a [`crate::ManualApproval`]); a rollout resumed after a
/// crash that waits there is let through with
/// [`RolloutControl::approve`]`(WAVE_GATE, ..)`.
pub const WAVE_GATE: &str = "relay.wave";

/// How a wave moves through its targets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveOrder {
    /// One target at a time, in order: each is promoted before the next
    /// starts, so a bad release reaches one target first.
    #[default]
    Sequential,
    /// Every target at once; each holds before promotion at [`WAVE_GATE`]
    /// until all have passed their analysis, then all promote.
    Parallel,
}

/// One release rolled out to several targets as a unit.
///
/// Each target gets its own rollout (its own record, lease, events and audit
/// trail) from its own [`RolloutSpec`]; the wave starts them in its
/// [`WaveOrder`] and, when one fails, aborts those still running (they roll
/// back) and reverts those already promoted: each is rolled out again with
/// the release it ran before, pinned by digest and secret versions, with
/// the target's strategy (or [`Wave::revert_with`]) and without gates.
#[derive(Clone, Debug)]
pub struct Wave {
    id: Option<String>,
    order: WaveOrder,
    specs: Vec<RolloutSpec>,
    revert_strategy: Option<Arc<dyn Strategy>>,
}

impl Wave {
    /// A sequential wave over `specs`, one per target, in order.
    pub fn new(specs: Vec<RolloutSpec>) -> Self {
        Wave {
            id: None,
            order: WaveOrder::Sequential,
            specs,
            revert_strategy: None,
        }
    }

    /// Use a fixed id (letters, digits, '.', '_', '-'); generated when not
    /// set. Rollouts are named `<wave id>.<target>` unless their spec names
    /// them.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Move through the targets in `order`.
    pub fn order(mut self, order: WaveOrder) -> Self {
        self.order = order;
        self
    }

    /// Revert promoted targets with `strategy` (all at once, say) instead
    /// of each target's own.
    pub fn revert_with(mut self, strategy: impl Strategy + 'static) -> Self {
        self.revert_strategy = Some(Arc::new(strategy));
        self
    }

    /// The rollout specs, one per target.
    pub fn specs(&self) -> &[RolloutSpec] {
        &self.specs
    }

    fn validate(&self) -> Result<()> {
        if let Some(id) = &self.id {
            validate_id(id).map_err(|_| Error::invalid("wave.id", "must be 1-128 letters, digits, '.', '_' or '-'"))?;
        }
        if self.specs.is_empty() {
            return Err(Error::invalid("wave.targets", "name at least one target"));
        }
        for (i, s) in self.specs.iter().enumerate() {
            if self.specs[..i].iter().any(|o| o.target == s.target) {
                return Err(Error::invalid(
                    format!("wave.targets[{i}]"),
                    format!("target {:?} is in the wave twice", s.target),
                ));
            }
        }
        Ok(())
    }

    /// The id, once [`Relay::start_wave`] has set it.
    fn wave_id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }

    /// The rollout id of target `i`: the spec's own, or the wave's id and
    /// the target's.
    fn rollout_id(&self, i: usize) -> String {
        self.specs[i]
            .id
            .clone()
            .unwrap_or_else(|| format!("{}.{}", self.wave_id(), crate::state_key(&self.specs[i].target)))
    }
}

/// How a wave ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum WaveStatus {
    /// Every target runs the release.
    Succeeded,
    /// A target failed; the others were rolled back or reverted (see each
    /// [`WaveRollout::revert`]).
    Failed {
        /// The first target that failed.
        target: String,
        /// Why.
        cause: String,
    },
    /// Stopped with [`RolloutControl::abort`]; the targets were rolled back or
    /// reverted.
    Aborted {
        /// Who.
        by: String,
        /// Why.
        reason: String,
    },
}

/// What the wave did to a target that had already been promoted when
/// another failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "revert", rename_all = "snake_case")]
pub enum Revert {
    /// The release it ran before is back.
    Reverted {
        /// The rollout that put it back.
        rollout: String,
        /// The revision it runs again.
        revision: RevisionId,
    },
    /// Nothing ran there before this wave (or relay has no record of it):
    /// the target keeps the new release, and a human must decide.
    NothingToRevertTo {
        /// What is missing.
        reason: String,
    },
    /// The revert was tried and failed: a human must look.
    Failed {
        /// Why.
        error: String,
    },
}

/// One target of a finished wave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveRollout {
    /// The target.
    pub target: String,
    /// Its rollout, unless the wave never started one there.
    pub rollout: Option<String>,
    /// How the rollout ended (`None`: never started, or the engine lost it).
    pub outcome: Option<Outcome>,
    /// Set when the target had been promoted and the wave failed elsewhere.
    pub revert: Option<Revert>,
}

/// The end of a wave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveReport {
    /// The wave's id.
    pub id: String,
    /// How it ended.
    pub status: WaveStatus,
    /// Each target, in the wave's order.
    pub rollouts: Vec<WaveRollout>,
}

impl WaveReport {
    /// Whether every target runs the release.
    pub fn is_success(&self) -> bool {
        self.status == WaveStatus::Succeeded
    }
}

/// A running wave: it dereferences to a [`RolloutControl`] whose commands
/// reach every rollout of the wave running when they arrive (approve a
/// gate on all of them, say); [`RolloutControl::abort`] stops the wave
/// (running rollouts roll back, promoted targets are reverted, no further
/// target starts). Await its [`WaveReport`].
#[derive(Debug)]
pub struct WaveHandle {
    control: RolloutControl,
    join: JoinHandle<WaveReport>,
}

impl std::ops::Deref for WaveHandle {
    type Target = RolloutControl;

    fn deref(&self) -> &RolloutControl {
        &self.control
    }
}

impl WaveHandle {
    /// Wait for the end.
    ///
    /// # Errors
    /// When the wave's task ended abnormally.
    pub async fn wait(self) -> Result<WaveReport> {
        self.join
            .await
            .map_err(|e| Error::provider("engine", false, format!("wave task ended abnormally: {e}")))
    }
}

impl Relay {
    /// Plan every target of `wave` (so a bad spec, a refusing gate or an
    /// unresolvable artifact anywhere changes nothing) and start it.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] for a bad wave, and what [`Relay::plan`]
    /// returns for any of its targets.
    pub async fn start_wave(&self, mut wave: Wave) -> Result<WaveHandle> {
        wave.validate()?;
        let id = wave.id.get_or_insert_with(|| self.fresh_id("wave")).clone();
        for spec in &wave.specs {
            self.plan(spec).await?;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let join = tokio::spawn(WaveDriver::new(self.clone(), wave).run(rx));
        Ok(WaveHandle {
            control: RolloutControl::new(id, tx),
            join,
        })
    }
}

/// What a rollout's watcher tells the wave.
enum Note {
    /// Rollout `i` waits at the wave gate.
    Held(usize),
    /// Rollout `i` ended.
    Done(usize, Result<Outcome>),
}

/// Watch rollout `i`: report when it holds at the wave gate and when it
/// ends; forward commands to it.
fn watch(i: usize, mut handle: RolloutHandle, notes: mpsc::UnboundedSender<Note>) -> CommandTx {
    let (tx, mut rx) = mpsc::unbounded_channel::<Box<Command>>();
    tokio::spawn(async move {
        let mut events = handle.events();
        let mut events_open = true;
        let (commands, join) = handle.parts();
        loop {
            tokio::select! {
                r = &mut *join => {
                    let _ = notes.send(Note::Done(i, joined(r)));
                    return;
                }
                e = events.next(), if events_open => match e {
                    Some(e) => {
                        if matches!(&e.kind, EventKind::GateWaiting { gate, .. } if gate == WAVE_GATE) {
                            let _ = notes.send(Note::Held(i));
                        }
                    }
                    None => events_open = false,
                },
                Some(c) = rx.recv() => {
                    let _ = commands.send(c);
                }
            }
        }
    });
    tx
}

/// Drives a wave: its rollouts, in batches, and its reverts.
struct WaveDriver {
    relay: Relay,
    wave: Wave,
    rows: Vec<WaveRollout>,
    live: BTreeMap<usize, CommandTx>,
    held: Vec<usize>,
    failure: Option<WaveStatus>,
    notes_tx: mpsc::UnboundedSender<Note>,
    notes: mpsc::UnboundedReceiver<Note>,
}

impl WaveDriver {
    fn new(relay: Relay, wave: Wave) -> Self {
        let rows = wave
            .specs
            .iter()
            .map(|s| WaveRollout {
                target: s.target.clone(),
                rollout: None,
                outcome: None,
                revert: None,
            })
            .collect();
        let (notes_tx, notes) = mpsc::unbounded_channel();
        WaveDriver {
            relay,
            wave,
            rows,
            live: BTreeMap::new(),
            held: Vec::new(),
            failure: None,
            notes_tx,
            notes,
        }
    }

    async fn audit(&self, action: &str, detail: AuditDetail) {
        let inner = &self.relay.inner;
        if let Err(e) = inner.audit(self.wave.wave_id(), &inner.holder, action, detail).await {
            tracing::error!(wave = %self.wave.wave_id(), action, error = %e, "could not audit a wave decision");
        }
    }

    async fn run(mut self, mut commands: CommandRx) -> WaveReport {
        let targets: Vec<String> = self.wave.specs.iter().map(|s| s.target.clone()).collect();
        self.audit("wave.started", detail!({"targets": targets, "order": self.wave.order}))
            .await;
        let n = self.wave.specs.len();
        match self.wave.order {
            WaveOrder::Sequential => {
                for i in 0..n {
                    if self.failure.is_some() {
                        break;
                    }
                    self.start(i, false).await;
                    while self.live.contains_key(&i) {
                        self.next(&mut commands).await;
                    }
                }
            }
            WaveOrder::Parallel => {
                for i in 0..n {
                    if self.failure.is_some() {
                        break;
                    }
                    self.start(i, true).await;
                }
                while !self.live.is_empty() {
                    self.next(&mut commands).await;
                    let all_started = self.rows.iter().all(|r| r.rollout.is_some());
                    let all_there = self.live.keys().all(|i| self.held.contains(i));
                    if self.failure.is_none() && all_started && all_there && !self.held.is_empty() {
                        self.audit("wave.released", detail!({"targets": targets})).await;
                        for i in std::mem::take(&mut self.held) {
                            self.send(
                                i,
                                Command::User(RolloutCommand::Decide {
                                    gate: WAVE_GATE.to_owned(),
                                    by: format!("wave {}", self.wave.wave_id()),
                                    comment: "every target of the wave passed its analysis".to_owned(),
                                    approved: true,
                                }),
                            );
                        }
                    }
                }
            }
        }
        let status = match self.failure.take() {
            None => WaveStatus::Succeeded,
            Some(failed) => {
                for i in (0..n).rev() {
                    if matches!(self.rows[i].outcome, Some(Outcome::Promoted { .. })) {
                        let revert = self.revert(i).await;
                        self.audit(
                            "wave.reverted",
                            detail!({"target": self.rows[i].target, "revert": revert}),
                        )
                        .await;
                        self.rows[i].revert = Some(revert);
                    }
                }
                failed
            }
        };
        self.audit("wave.finished", detail!({"status": status})).await;
        WaveReport {
            id: self.wave.wave_id().to_owned(),
            status,
            rollouts: self.rows,
        }
    }

    fn send(&self, i: usize, c: Command) {
        if let Some(tx) = self.live.get(&i) {
            let _ = tx.send(Box::new(c));
        }
    }

    /// Start target `i`'s rollout, held before promotion when `barrier`.
    async fn start(&mut self, i: usize, barrier: bool) {
        let mut spec = self.wave.specs[i].clone();
        spec.id = Some(self.wave.rollout_id(i));
        if barrier {
            spec.gates_before_promotion.push(WAVE_GATE.to_owned());
        }
        match self.relay.start(spec).await {
            Ok(handle) => {
                self.rows[i].rollout = Some(handle.id().to_owned());
                let tx = watch(i, handle, self.notes_tx.clone());
                self.live.insert(i, tx);
            }
            Err(e) => self.fail(i, format!("could not start: {e}")).await,
        }
    }

    /// Record that target `i` failed (the first failure names the wave's)
    /// and abort every rollout still running.
    async fn fail(&mut self, i: usize, cause: String) {
        if self.failure.is_some() {
            return;
        }
        let target = self.rows[i].target.clone();
        self.audit("wave.failed", detail!({"target": target, "cause": cause}))
            .await;
        let reason = format!("wave {}: target {target:?} failed: {cause}", self.wave.wave_id());
        for tx in self.live.values() {
            let _ = tx.send(Box::new(Command::User(RolloutCommand::Abort {
                by: format!("wave {}", self.wave.wave_id()),
                reason: reason.clone(),
            })));
        }
        self.failure = Some(WaveStatus::Failed { target, cause });
    }

    /// Handle the next note from a rollout or command from the user.
    async fn next(&mut self, commands: &mut CommandRx) {
        tokio::select! {
            Some(note) = self.notes.recv() => match note {
                Note::Held(i) => {
                    if !self.held.contains(&i) {
                        self.held.push(i);
                    }
                }
                Note::Done(i, result) => {
                    self.live.remove(&i);
                    self.held.retain(|h| *h != i);
                    match result {
                        Ok(outcome) => {
                            let ok = outcome.is_success();
                            let cause = outcome.to_string();
                            self.rows[i].outcome = Some(outcome);
                            if !ok {
                                self.fail(i, cause).await;
                            }
                        }
                        Err(e) => self.fail(i, format!("the engine lost the rollout: {e}")).await,
                    }
                }
            },
            Some(c) = commands.recv() => {
                if let Command::User(RolloutCommand::Abort { by, reason }) = &*c {
                    self.audit("wave.aborted", detail!({"by": by, "reason": reason})).await;
                    if self.failure.is_none() {
                        self.failure = Some(WaveStatus::Aborted { by: by.clone(), reason: reason.clone() });
                    }
                }
                for tx in self.live.values() {
                    let _ = tx.send(c.clone());
                }
            }
        }
    }

    /// Put back on target `i` the release it ran before the wave.
    async fn revert(&self, i: usize) -> Revert {
        let Some(rollout) = &self.rows[i].rollout else {
            return Revert::NothingToRevertTo {
                reason: "the wave started no rollout there".to_owned(),
            };
        };
        let inner = &self.relay.inner;
        let target = &self.rows[i].target;
        let previous = async {
            let record = inner.state.get(rollout).await?.ok_or_else(|| Error::NotFound {
                what: format!("rollout {rollout}"),
            })?;
            let Some(stable) = record.plan.stable.clone() else {
                return Ok(None);
            };
            let before = inner.last_promoted(target, &stable, rollout).await?;
            Ok::<_, Error>(Some((stable, before)))
        }
        .await;
        let (stable, before) = match previous {
            Err(e) => return Revert::Failed { error: e.to_string() },
            Ok(None) => {
                return Revert::NothingToRevertTo {
                    reason: format!("nothing ran on {target:?} before rollout {rollout}"),
                }
            }
            Ok(Some((stable, None))) => {
                return Revert::NothingToRevertTo {
                    reason: format!("relay has no record of the release {stable} that ran on {target:?} before"),
                }
            }
            Ok(Some((stable, Some(before)))) => (stable, before),
        };
        let was = &before.plan.candidate;
        let release = Release {
            artifact: crate::artifact::ArtifactRef {
                repository: was.artifact.repository.clone(),
                tag: None,
                digest: Some(was.artifact.digest.clone()),
            },
            config: was.config.clone(),
            secrets: was.secrets.clone(),
            replicas: before.plan.replicas,
        };
        let spec = &self.wave.specs[i];
        let strategy = self
            .wave
            .revert_strategy
            .clone()
            .unwrap_or_else(|| spec.strategy.clone());
        let revert = RolloutSpec::with_strategy(target.clone(), release, strategy)
            .policy(spec.policy.clone())
            .id(format!("{}.revert", self.wave.rollout_id(i)));
        let handle = match self.relay.start(revert).await {
            Ok(h) => h,
            Err(e) => return Revert::Failed { error: e.to_string() },
        };
        let id = handle.id().to_owned();
        match handle.wait().await {
            Ok(o) if o.is_success() => Revert::Reverted {
                rollout: id,
                revision: stable,
            },
            Ok(o) => Revert::Failed {
                error: format!("rollout {id}: {o}"),
            },
            Err(e) => Revert::Failed {
                error: format!("rollout {id}: {e}"),
            },
        }
    }
}
