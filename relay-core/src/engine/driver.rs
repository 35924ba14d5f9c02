//! Drives one rollout through its plan, and through rollback when it fails.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::handle::{Command, CommandRx, CommandTx, RolloutCommand};
use super::tally::{self, CheckTally, Next};
use super::{Driving, EventSender, Inner};
use crate::analysis::{AnalysisSpec, CheckScope, InconclusivePolicy, VerdictView};
use crate::audit::{detail, AuditDetail, AuditEvent, CanonicalObject};
use crate::error::{Error, Result};
use crate::event::{EventKind, Outcome};
use crate::gate::{Approval, GateContext, GateDecision};
use crate::hook::{HookContext, HookFailure, HookRun, HookSpec};
use crate::notify::{Notice, NoticeKind};
use crate::plan::Step;
use crate::probe::{ProbeQuery, QueryContext, Scope};
use crate::release::RevisionId;
use crate::state::{Lease, RollbackStep, RolloutRecord, RolloutStatus};
use crate::target::{Role, Target, TrafficSplit};
use crate::telemetry;

/// Why the forward path stopped.
enum Stop {
    /// Roll back for this cause.
    Rollback(String),
    /// Roll back for this cause, which may pass by itself: a provider call
    /// that failed retryably until the retry policy gave up (an outage), a
    /// revision not ready in time. During a rollback the action that met it
    /// is tried again, within [`EngineConfig::rollback_retry_budget`](super::EngineConfig::rollback_retry_budget).
    Transient(String),
    /// Stop driving without touching the target (lease lost, state store down).
    Fatal(Error),
}

impl Stop {
    /// The stop for `what` failing with `e`: fatal when the lease is gone
    /// (someone else drives the rollout now), transient when the error may
    /// pass.
    fn failed(what: impl std::fmt::Display, e: Error) -> Stop {
        match e {
            Error::LeaseLost { .. } => Stop::Fatal(e),
            e if e.is_retryable() || matches!(e, Error::RetriesExhausted { .. }) => {
                Stop::Transient(format!("{what} failed: {e}"))
            }
            e => Stop::Rollback(format!("{what} failed: {e}")),
        }
    }
}

/// The longest wait between two tries of a failed rollback action.
const ROLLBACK_RETRY_MAX: Duration = Duration::from_secs(60);

/// Why a wait ended early.
#[derive(PartialEq)]
enum Wake {
    Elapsed,
    /// A user paused the rollout: a timed wait stops counting.
    Paused,
    Resumed,
    Decision,
    PromoteNow,
    /// The target said its state may have changed.
    Changed,
    /// The target's watch failed; poll instead.
    Unwatched,
}

/// What a target's [`Target::changed`](crate::Target::changed) returns.
type Changed<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = crate::Result<()>> + Send + 'a>>;

/// How a step ended.
enum StepEnd {
    Done,
    /// A user asked to promote now; the remaining steps are replaced.
    PromoteNow,
}

/// What one check of an analysis asks the probe at every measurement.
struct Asked {
    query: ProbeQuery,
    /// The stable revision's query, for a judge that compares with it.
    baseline: Option<ProbeQuery>,
    /// The query's scope, as verdicts name it.
    scope: String,
}

/// What a driver knows of its lease: whether it was lost, and until when it
/// holds for certain (`None`: held in process, with no expiry).
#[derive(Default)]
struct LeaseWatch {
    state: Mutex<(Option<String>, Option<Instant>)>,
}

impl LeaseWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<String>, Option<Instant>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn good_until(&self) -> Option<Instant> {
        self.lock().1
    }

    fn set_good_until(&self, until: Instant) {
        self.lock().1 = Some(until);
    }

    fn lose(&self, reason: String) {
        tracing::error!(%reason, "lease lost: stopped changing the target");
        self.lock().0 = Some(reason);
    }

    /// `Err(why)` once the lease was lost or its margin has passed.
    fn check(&self) -> Result<(), String> {
        let (lost, until) = &*self.lock();
        if let Some(reason) = lost {
            return Err(reason.clone());
        }
        match until {
            Some(until) if Instant::now() >= *until => Err("the lease was not renewed in time".to_owned()),
            _ => Ok(()),
        }
    }
}

/// Until when `lease`, granted by a call made at `at` (`at_ms` on the
/// engine's clock, from which the store set its expiry), holds for certain:
/// its expiry less a sixth of its time to live, so an engine stops before
/// another may take the lease over, not after.
fn good_until(lease: &Lease, at_ms: crate::clock::UnixMillis, at: Instant, ttl: Duration) -> Instant {
    let left = u64::try_from(lease.expires_at_ms.saturating_sub(at_ms)).unwrap_or(0);
    at + Duration::from_millis(left).saturating_sub(ttl / 6)
}

/// Aborts the lease renewal task when the driver ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) struct Driver {
    inner: Arc<Inner>,
    target: Arc<dyn Target>,
    record: RolloutRecord,
    lease: Lease,
    /// What the driver knows of its lease, shared with the renewal task.
    lease_watch: Arc<LeaseWatch>,
    commands: Option<CommandRx>,
    /// A sender on the driver's own command channel, for its lease renewal.
    wake: CommandTx,
    events: EventSender,
    promote_now: bool,
    rolling_back: bool,
    /// The split of the last traffic step, when the step just before this
    /// one was one: the next re-weighs it in place
    /// (`TrafficSplit::set_canary`) instead of copying both ids.
    split: TrafficSplit,
    /// The rollout's last audit entry, kept for the next: its actor and
    /// rollout are every entry's, and its action and detail are rewritten
    /// in their buffers (a verdict's detail is written into the last one's).
    entry: AuditEvent,
    /// This engine's claim on the rollout, released when the driver ends.
    _claim: Driving,
}

impl Driver {
    pub(crate) fn new(
        inner: Arc<Inner>,
        record: RolloutRecord,
        lease: Lease,
        claim: Driving,
        (wake, commands): (CommandTx, CommandRx),
        events: EventSender,
    ) -> Self {
        let target = inner.targets[&record.target].clone();
        let entry = AuditEvent {
            at_ms: 0,
            actor: inner.holder.clone(),
            rollout: record.id.clone(),
            action: String::new(),
            detail: AuditDetail::default(),
        };
        Driver {
            inner,
            target,
            record,
            lease,
            lease_watch: Arc::new(LeaseWatch::default()),
            commands: Some(commands),
            wake,
            events,
            promote_now: false,
            rolling_back: false,
            split: TrafficSplit::default(),
            entry,
            _claim: claim,
        }
    }

    fn emit(&self, kind: EventKind) {
        self.emit_with(|| kind);
    }

    /// [`Self::emit`] of an event that costs something to make (text, a
    /// copy): made only when someone subscribes.
    fn emit_with(&self, kind: impl FnOnce() -> EventKind) {
        self.events.emit(&self.record.id, self.inner.clock.as_ref(), kind);
    }

    /// Hand the notice `what` (its key in the rollout) to the notifiers,
    /// unless the record says it was handed on already, by this engine or
    /// one before it; the key is recorded with the record's next write.
    fn notify(&mut self, what: String, kind: impl FnOnce() -> NoticeKind) {
        if self.inner.notifications.is_empty() || self.record.notified.contains(&what) {
            return;
        }
        let notice = self.notice(&what, kind());
        self.record.notified.push(what);
        self.inner.notifications.send(notice);
    }

    /// [`Self::notify`] of a wait that may last hours: the record is
    /// written at once, so an engine that resumes the rollout meanwhile
    /// does not send the notice again.
    async fn notify_waiting(&mut self, what: String, kind: impl FnOnce() -> NoticeKind) -> Result<(), Stop> {
        let before = self.record.notified.len();
        self.notify(what, kind);
        if self.record.notified.len() > before {
            self.persist().await?;
        }
        Ok(())
    }

    fn notice(&self, what: &str, kind: NoticeKind) -> Notice {
        let plan = &self.record.plan;
        Notice {
            key: format!("{}/{what}", self.record.id),
            rollout: self.record.id.clone(),
            target: self.record.target.clone(),
            candidate: plan.candidate.id.to_string(),
            artifact: plan.candidate.artifact.pinned_ref().to_string(),
            at_ms: self.inner.clock.now_ms(),
            kind,
        }
    }

    async fn audit(&mut self, action: &str, detail: AuditDetail) -> Result<()> {
        self.entry.detail = detail;
        self.append(action).await
    }

    /// Record the rollout's entry, its detail already in place, as `action`
    /// now.
    async fn append(&mut self, action: &str) -> Result<()> {
        let entry = &mut self.entry;
        entry.at_ms = self.inner.clock.now_ms();
        entry.action.clear();
        entry.action.push_str(action);
        let head = self.inner.append(entry).await?;
        // The anchor the record's next write carries.
        self.record.audit_head = Some(head);
        Ok(())
    }

    /// Audit on the forward path: a failure to record stops the rollout.
    async fn audit_or_stop(&mut self, action: &str, detail: AuditDetail) -> Result<(), Stop> {
        self.entry.detail = detail;
        self.append_or_stop(action).await
    }

    /// [`Driver::append`] on the forward path.
    async fn append_or_stop(&mut self, action: &str) -> Result<(), Stop> {
        self.append(action)
            .await
            .map_err(|e| Stop::Rollback(format!("audit sink failed: {e}")))
    }

    /// Renew the lease every `ttl / 3`; after a renewal that failed
    /// retryably, try again every `ttl / 10`. The lease counts as lost —
    /// and the driver stops mutating — once it could not be renewed before
    /// [`LeaseWatch::good_until`], a margin ahead of its expiry in the
    /// store, not after it.
    fn spawn_lease_renewal(&self) -> AbortOnDrop {
        let (state, clock, ttl) = (
            self.inner.state.clone(),
            self.inner.clock.clone(),
            self.inner.config.lease_ttl,
        );
        let watch = self.lease_watch.clone();
        watch.set_good_until(good_until(&self.lease, clock.now_ms(), Instant::now(), ttl));
        let mut lease = self.lease.clone();
        // A lost lease wakes the driver where it waits: on its commands.
        let wake = self.wake.clone();
        let lose = move |reason: String| {
            watch.lose(reason);
            let _ = wake.send(Box::new(Command::LeaseLost));
        };
        let watch = self.lease_watch.clone();
        AbortOnDrop(tokio::spawn(async move {
            let (period, again) = (ttl / 3, (ttl / 10).max(Duration::from_millis(1)));
            let mut next = Instant::now() + period;
            loop {
                tokio::time::sleep_until(next).await;
                let Some(until) = watch.good_until() else {
                    return;
                };
                let (at, at_ms) = (Instant::now(), clock.now_ms());
                // A renewal that hangs past the margin is as good as none.
                let renewed = tokio::time::timeout_at(until, state.renew_lease(&lease, ttl, at_ms)).await;
                match renewed {
                    Ok(Ok(l)) => {
                        watch.set_good_until(good_until(&l, at_ms, at, ttl));
                        lease = l;
                        next = Instant::now() + period;
                    }
                    Ok(Err(e)) if e.is_retryable() && Instant::now() + again < until => {
                        tracing::warn!(error = %e, "lease renewal failed, retrying");
                        next = Instant::now() + again;
                    }
                    Ok(Err(e)) => {
                        return lose(format!("could not renew the lease before it expires: {e}"));
                    }
                    Err(_) => {
                        return lose("could not renew the lease before it expires: the renewal did not answer".into());
                    }
                }
            }
        }))
    }

    /// Have the commands queued for this rollout in the state store (by
    /// any process, [`crate::Relay::command`]) reach the driver: the store
    /// wakes it where it can watch its senders, else a task looks every
    /// [`StateStore::command_poll`](crate::StateStore::command_poll). Those
    /// queued before the driver started are applied at its first wait or
    /// step boundary.
    /// The returned guard (the watch, or the task) lasts as long as the
    /// driver keeps it.
    fn feed_store_commands(&self) -> Option<Box<dyn Send>> {
        let (state, id) = (self.inner.state.clone(), self.record.id.clone());
        let wake = self.wake.clone();
        let stored = crate::state::CommandWaker::new(move || {
            let _ = wake.send(Box::new(Command::Stored));
        });
        if let Some(watch) = state.watch_commands(&id, stored.clone()) {
            return Some(Box::new(watch));
        }
        let every = state.command_poll()?;
        let mut seen = self.record.commands_applied;
        Some(Box::new(AbortOnDrop(tokio::spawn(async move {
            loop {
                if let Ok(new) = state.commands(&id, seen).await {
                    if let Some((last, _)) = new.last() {
                        seen = *last;
                        stored.wake();
                    }
                }
                tokio::time::sleep(every).await;
            }
        }))))
    }

    /// Whether the lease still holds; an engine that cannot say so must
    /// not change the target.
    fn lease_check(&self) -> Result<()> {
        self.lease_watch.check().map_err(|reason| Error::LeaseLost {
            target: self.record.target.clone(),
            reason,
        })
    }

    fn check_lease(&self) -> Result<(), Stop> {
        self.lease_check().map_err(Stop::Fatal)
    }

    async fn persist(&mut self) -> Result<(), Stop> {
        self.record.updated_ms = self.inner.clock.now_ms();
        let (inner, record) = (&self.inner, &self.record);
        let expected = record.version;
        let v = inner
            .call("state.put", || inner.state.put(record, Some(expected)))
            .await
            .map_err(Stop::Fatal)?;
        self.record.version = v;
        Ok(())
    }

    /// Call a provider through the retry policy, reporting retries as events.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let on_retry = |attempt, e: &Error, backoff: Duration| {
            tracing::warn!(operation = op, attempt, error = %e, "retrying");
            self.emit(EventKind::Retrying {
                operation: op.to_owned(),
                attempt,
                error: e.to_string(),
                backoff_ms: backoff.as_millis() as u64,
            });
        };
        self.inner.call_with(op, on_retry, f).await
    }

    /// Apply one target mutation and record it: one audit entry per mutation.
    async fn mutate<F, Fut>(&mut self, op: &'static str, detail: AuditDetail, f: F) -> Result<(), Stop>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        self.check_lease()?;
        // Fenced: every attempt, retries included, is made only while the
        // lease holds.
        let (mut f, this) = (f, &*self);
        let fenced = || {
            let call = f();
            async move {
                this.lease_check()?;
                call.await
            }
        };
        match self.call(op, fenced).await {
            Ok(()) => {
                tracing::info!(operation = op, %detail, "target changed");
                let r = self.audit(op, detail).await;
                if self.rolling_back {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "audit sink failed during rollback");
                    }
                    Ok(())
                } else {
                    r.map_err(|e| Stop::Rollback(format!("audit sink failed: {e}")))
                }
            }
            Err(e) => Err(Stop::failed(op, e)),
        }
    }

    /// Wait until `deadline` (forever when `None`), handling user commands.
    async fn wait_until(&mut self, deadline: Option<Instant>) -> Result<Wake, Stop> {
        self.wait_or_changed(deadline, None).await
    }

    /// [`Self::wait_until`] that also ends when `changed` does: commands are
    /// handled meanwhile, and the target's word is only taken between them.
    async fn wait_or_changed(
        &mut self,
        deadline: Option<Instant>,
        mut changed: Option<Changed<'_>>,
    ) -> Result<Wake, Stop> {
        loop {
            let cmd = {
                let sleep = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                let recv = async {
                    match self.commands.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let watch = async {
                    match changed.as_mut() {
                        Some(c) => c.await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = sleep => return Ok(Wake::Elapsed),
                    c = recv => c,
                    r = watch => return Ok(match r {
                        Ok(()) => Wake::Changed,
                        Err(e) => {
                            tracing::warn!(target = %self.record.target, error = %e, "watch failed, polling instead");
                            Wake::Unwatched
                        }
                    }),
                }
            };
            let Some(cmd) = cmd else {
                // Every handle was dropped: nobody can send commands any more.
                self.commands = None;
                continue;
            };
            // Boxed: commands are rare, and inline their future would make
            // every waiting rollout's task larger.
            if let Some(w) = Box::pin(self.dispatch(*cmd)).await? {
                return Ok(w);
            }
        }
    }

    /// Ask the engine's authorizer whether `cmd` may take effect; a refusal
    /// is audited (`command.refused`, with who asked and why) and reported.
    async fn authorized(&mut self, cmd: &RolloutCommand) -> Result<bool, Stop> {
        use crate::authorize::{CommandKind, CommandRequest};
        let (kind, by, gate) = match cmd {
            RolloutCommand::Pause { by } => (CommandKind::Pause, by, None),
            RolloutCommand::Resume { by } => (CommandKind::Resume, by, None),
            RolloutCommand::Abort { by, .. } => (CommandKind::Abort, by, None),
            RolloutCommand::PromoteNow { by } => (CommandKind::PromoteNow, by, None),
            RolloutCommand::Decide { gate, by, approved, .. } => (
                if *approved {
                    CommandKind::Approve
                } else {
                    CommandKind::Reject
                },
                by,
                Some(gate.clone()),
            ),
        };
        let request = CommandRequest {
            kind,
            by: by.clone(),
            rollout: self.record.id.clone(),
            target: self.record.target.clone(),
            gate,
            started_by: self.record.started_by.clone(),
        };
        let Err(reason) = self.inner.authorizer.authorize(&request).await else {
            return Ok(true);
        };
        tracing::warn!(%kind, by = %request.by, %reason, "command refused");
        let detail = detail!({"command": kind, "by": request.by, "gate": request.gate, "reason": reason});
        self.audit_or_stop("command.refused", detail).await?;
        self.emit(EventKind::CommandRefused {
            command: kind.to_string(),
            by: request.by,
            reason,
        });
        Ok(false)
    }

    /// Act on what arrived on the driver's channel.
    async fn dispatch(&mut self, cmd: Command) -> Result<Option<Wake>, Stop> {
        match cmd {
            Command::User(c) => self.handle_command(c).await,
            Command::LeaseLost => self.check_lease().map(|()| None),
            Command::Stored => self.apply_stored_commands().await,
            Command::Shutdown => Err(Stop::Fatal(Error::ShutDown {
                rollout: Some(self.record.id.clone()),
            })),
        }
    }

    /// Apply the commands queued for this rollout in the state store (by
    /// any process) that it has not applied yet, in order; returns the
    /// last one's wake. Each is counted as applied before it acts, so a
    /// command is applied once, or — when the engine dies before the count
    /// is written — once more after a resume (commands are idempotent).
    async fn apply_stored_commands(&mut self) -> Result<Option<Wake>, Stop> {
        let (inner, id, after) = (&self.inner, &self.record.id, self.record.commands_applied);
        let queued = inner
            .call("state.commands", || inner.state.commands(id, after))
            .await
            .map_err(Stop::Fatal)?;
        let mut wake = None;
        for (seq, command) in queued {
            self.record.commands_applied = seq;
            if let Err(e) = command.validate() {
                tracing::warn!(seq, error = %e, "a stored command is invalid; ignored");
                continue;
            }
            wake = Box::pin(self.handle_command(command)).await?.or(wake);
        }
        Ok(wake)
    }

    async fn handle_command(&mut self, cmd: RolloutCommand) -> Result<Option<Wake>, Stop> {
        if !self.authorized(&cmd).await? {
            return Ok(None);
        }
        match cmd {
            RolloutCommand::Pause { by } => {
                if !self.record.paused && !self.rolling_back {
                    self.record.paused = true;
                    self.persist().await?;
                    self.audit_or_stop("rollout.paused", detail!({"by": by})).await?;
                    self.emit(EventKind::Paused { by });
                    return Ok(Some(Wake::Paused));
                }
                Ok(None)
            }
            RolloutCommand::Resume { by } => {
                if self.record.paused {
                    self.record.paused = false;
                    self.persist().await?;
                    self.audit_or_stop("rollout.unpaused", detail!({"by": by})).await?;
                    self.emit(EventKind::Unpaused { by });
                }
                Ok(Some(Wake::Resumed))
            }
            RolloutCommand::Abort { by, reason } if self.promoted() => {
                // The candidate is the stable revision: rolling back now
                // would revert a release that passed every check. Going
                // back is a new rollout of the previous release.
                tracing::warn!(%by, %reason, "abort refused: the candidate is already promoted");
                let why = "the candidate is already promoted; roll the previous release out again to go back";
                self.audit_or_stop(
                    "rollout.abort_refused",
                    detail!({"by": by, "reason": reason, "why": why}),
                )
                .await?;
                Ok(None)
            }
            RolloutCommand::Abort { by, reason } if !self.rolling_back => {
                self.audit_or_stop("rollout.aborted", detail!({"by": by, "reason": reason}))
                    .await?;
                Err(Stop::Rollback(format!("aborted by {by}: {reason}")))
            }
            RolloutCommand::PromoteNow { .. } if self.promoted() => Ok(None),
            RolloutCommand::PromoteNow { by } if !self.rolling_back => {
                self.audit_or_stop("rollout.promote_now", detail!({"by": by})).await?;
                self.emit(EventKind::PromotedNow { by });
                self.promote_now = true;
                Ok(Some(Wake::PromoteNow))
            }
            RolloutCommand::Decide {
                gate,
                by,
                comment,
                approved,
            } if !self.rolling_back => {
                // Bound to one instance of the gate: the one the rollout
                // waits at, or the next one ahead.
                let steps = &self.record.plan.steps;
                let at = (self.record.cursor..steps.len())
                    .find(|&i| matches!(&steps[i], Step::Gate { name } if *name == gate));
                let Some(step) = at else {
                    let why = "no step of this gate is ahead of the rollout";
                    tracing::warn!(%gate, %by, why, "gate decision ignored");
                    self.audit_or_stop(
                        "gate.decision_ignored",
                        detail!({"gate": gate, "by": by, "approved": approved, "why": why}),
                    )
                    .await?;
                    return Ok(None);
                };
                let action = if approved { "gate.approved" } else { "gate.rejected" };
                self.record.approvals.push(Approval {
                    gate: gate.clone(),
                    by: by.clone(),
                    comment: comment.clone(),
                    approved,
                    at_ms: self.inner.clock.now_ms(),
                    step: Some(step),
                });
                self.persist().await?;
                self.audit_or_stop(
                    action,
                    detail!({"gate": gate, "by": by, "comment": comment, "step": step}),
                )
                .await?;
                Ok(Some(Wake::Decision))
            }
            RolloutCommand::Abort { .. } | RolloutCommand::PromoteNow { .. } | RolloutCommand::Decide { .. } => {
                tracing::info!("command ignored: the rollout is rolling back");
                Ok(None)
            }
        }
    }

    pub(crate) async fn run(mut self) -> Result<Outcome> {
        let span = tracing::info_span!(
            "rollout",
            rollout.id = %self.record.id,
            target = %self.record.target,
            strategy = %self.record.plan.strategy
        );
        async move {
            let _in_progress = telemetry::InProgress::start();
            // A store that sees this process alive holds the lease with no
            // renewals (and releases it however this task ends).
            let held = self.inner.state.hold_lease(&self.lease);
            let _renewal = held.is_none().then(|| self.spawn_lease_renewal());
            let _store_commands = self.feed_store_commands();
            self.emit_with(|| EventKind::Started {
                target: self.record.target.clone(),
                strategy: self.record.plan.strategy.clone(),
                candidate: self.record.plan.candidate.id.to_string(),
                stable: self.record.plan.stable.as_ref().map(ToString::to_string),
                steps: self.record.plan.steps.len(),
                cursor: self.record.cursor,
            });
            if !self.record.status.is_terminal() {
                let plan = &self.record.plan;
                let (strategy, stable, steps) = (
                    plan.strategy.clone(),
                    plan.stable.as_ref().map(ToString::to_string),
                    plan.steps.len(),
                );
                self.notify("started".into(), || NoticeKind::Started {
                    strategy,
                    stable,
                    steps,
                });
            }
            tracing::info!(
                cursor = self.record.cursor,
                steps = self.record.plan.steps.len(),
                "driving rollout"
            );
            let result = match self.record.status.clone() {
                RolloutStatus::Finished(Outcome::NoChange) => Ok(Outcome::NoChange),
                // The rollback's future is boxed: most rollouts never need it,
                // and inline it would make every rollout's task larger.
                RolloutStatus::RollingBack { cause } => Box::pin(self.rollback(cause)).await,
                RolloutStatus::Running => match self.forward().await {
                    Ok(()) => {
                        let revision = self.record.plan.candidate.id.to_string();
                        self.finish(Outcome::Promoted { revision }).await
                    }
                    Err(Stop::Rollback(cause) | Stop::Transient(cause)) => Box::pin(self.rollback(cause)).await,
                    Err(Stop::Fatal(e)) => Err(e),
                },
                RolloutStatus::Finished(_) => Err(Error::NotRunning {
                    rollout: self.record.id.clone(),
                }),
            };
            match &result {
                Ok(outcome) => {
                    if let Err(e) = self.inner.state.release_lease(&self.lease).await {
                        tracing::warn!(error = %e, "could not release the lease; it will expire");
                    }
                    telemetry::rollout_finished(&self.record.target, outcome);
                    self.emit(EventKind::Finished {
                        outcome: outcome.clone(),
                    });
                    tracing::info!(%outcome, "rollout finished");
                }
                // Shut down on purpose: the lease is let go at once, so
                // another engine resumes the rollout without waiting.
                Err(e @ Error::ShutDown { .. }) => {
                    tracing::info!(error = %e, "stopped driving the rollout; it can be resumed");
                    if let Err(e) = self.inner.state.release_lease(&self.lease).await {
                        tracing::warn!(error = %e, "could not release the lease; it will expire");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "stopped driving the rollout; it can be resumed");
                    // Not when another engine took the rollout over (it
                    // goes on there), nor for one that had ended.
                    let unattended = !matches!(e, Error::LeaseLost { .. } | Error::NotRunning { .. });
                    if !self.inner.notifications.is_empty() && unattended {
                        let kind = NoticeKind::Failed {
                            error: e.to_string(),
                            resumable: true,
                        };
                        let notice = self.notice(&format!("stopped-{}", self.inner.clock.now_ms()), kind);
                        self.inner.notifications.send(notice);
                    }
                }
            }
            result
        }
        .instrument(span)
        .await
    }

    /// End the rollout with `outcome`: audited, then recorded.
    async fn finish(&mut self, outcome: Outcome) -> Result<Outcome> {
        // Audited before the terminal record is written: an engine that dies
        // between the two leaves the rollout running, and the engine that
        // resumes it audits the end again, so no terminal record lacks its
        // `rollout.finished` entry (as a re-run mutation is audited again).
        if let Err(e) = self.audit("rollout.finished", detail!({"outcome": outcome})).await {
            tracing::error!(error = %e, "could not audit the outcome");
        }
        match &outcome {
            Outcome::Promoted { revision } => {
                let revision = revision.clone();
                self.notify("promoted".into(), || NoticeKind::Promoted { revision });
            }
            Outcome::RolledBack { cause } => {
                let cause = cause.clone();
                self.notify("rolled-back".into(), || NoticeKind::RolledBack { cause });
            }
            Outcome::RollbackFailed { cause, error } => {
                let error = format!("the rollback failed: {error} (it rolled back because: {cause})");
                self.notify("failed".into(), || NoticeKind::Failed {
                    error,
                    resumable: false,
                });
            }
            Outcome::NoChange => {}
        }
        self.record.status = RolloutStatus::Finished(outcome.clone());
        self.persist().await.map_err(|s| match s {
            Stop::Fatal(e) => e,
            Stop::Rollback(c) | Stop::Transient(c) => Error::provider("engine", false, c),
        })?;
        Ok(outcome)
    }

    /// Whether the candidate was promoted: a `promote` step is behind the
    /// cursor. From then on nothing rolls the rollout back.
    fn promoted(&self) -> bool {
        self.record.plan.steps[..self.record.cursor.min(self.record.plan.steps.len())]
            .iter()
            .any(|s| matches!(s, Step::Promote))
    }

    /// Handle the commands that arrived while the engine was not waiting
    /// (a step's provider calls run without reading them): at every step
    /// boundary, so an abort sent while the last step before promotion
    /// runs stops the rollout before it promotes.
    async fn take_commands(&mut self) -> Result<(), Stop> {
        use tokio::sync::mpsc::error::TryRecvError;
        while let Some(rx) = self.commands.as_mut() {
            match rx.try_recv() {
                Ok(cmd) => {
                    Box::pin(self.dispatch(*cmd)).await?;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.commands = None,
            }
        }
        Ok(())
    }

    /// [`Self::take_commands`] between two steps: after promotion, a
    /// command that would stop the rollout only fails to be recorded.
    async fn take_commands_between_steps(&mut self) -> Result<(), Stop> {
        match self.take_commands().await {
            Err(Stop::Rollback(error) | Stop::Transient(error)) if self.promoted() => {
                tracing::error!(%error, "a command after promotion could not be recorded");
                Ok(())
            }
            other => other,
        }
    }

    /// After promotion a failing step (retiring the old stable, say) does
    /// not roll back the promoted release: it is audited as
    /// `rollout.cleanup_failed`, logged as an error and reported as an
    /// event, and the rollout goes on to its end. What it left behind (an
    /// old revision still running) is for a human to remove.
    async fn cleanup_failed(&mut self, index: usize, error: String) {
        let step = self.record.plan.steps[index].kind();
        tracing::error!(step, %error, "cleanup after promotion failed: the release stays promoted; remove what is left by hand");
        let detail = detail!({"index": index, "step": step, "error": error});
        if let Err(e) = self.audit("rollout.cleanup_failed", detail).await {
            tracing::error!(error = %e, "could not audit the failed cleanup");
        }
        self.emit(EventKind::CleanupFailed { index, error });
    }

    async fn forward(&mut self) -> Result<(), Stop> {
        while self.record.cursor < self.record.plan.steps.len() {
            self.take_commands_between_steps().await?;
            while self.record.paused && !self.promote_now {
                self.wait_until(None).await?;
            }
            if self.promote_now {
                self.replace_remaining_with_promotion().await?;
                self.promote_now = false;
            }
            self.persist().await?;
            let index = self.record.cursor;
            let step = self.record.plan.steps[index].clone();
            self.emit_with(|| EventKind::StepStarted {
                index,
                kind: step.kind().to_owned(),
                description: step.to_string(),
            });
            let span = tracing::info_span!("step", index, kind = step.kind());
            let timer = telemetry::StepTimer::start();
            let executed = self.execute(index, &step).instrument(span).await;
            timer.done(step.kind());
            let end = match executed {
                Ok(end) => end,
                Err(Stop::Rollback(error) | Stop::Transient(error)) if self.promoted() => {
                    // Boxed, as every rare path: inline it would make
                    // every rollout's task larger.
                    Box::pin(self.cleanup_failed(index, error)).await;
                    StepEnd::Done
                }
                Err(stop) => return Err(stop),
            };
            self.emit(EventKind::StepCompleted { index });
            let steps = self.record.plan.steps.len();
            self.notify(format!("step-{index}"), || NoticeKind::Step {
                index,
                steps,
                description: step.to_string(),
            });
            self.record.cursor += 1;
            if matches!(end, StepEnd::PromoteNow) {
                self.promote_now = true;
            }
        }
        // Commands sent while the last step ran are answered (an abort
        // after promotion is refused, on the record).
        self.take_commands_between_steps().await?;
        self.persist().await
    }

    /// Skip the rest of the plan: the remaining steps become "the remaining
    /// gates, full capacity, full traffic", then the plan's promotion and
    /// what follows it as planned (hooks after promotion, the old revision
    /// retired, a migration's contract), persisted so a resume does the
    /// same. A bake is skipped too. Gates are kept (an approval, a
    /// freeze window, a wave's barrier must still pass before promotion),
    /// ahead of the traffic they guard; decisions already bound to them
    /// follow them to their new steps.
    async fn replace_remaining_with_promotion(&mut self) -> Result<(), Stop> {
        let cursor = self.record.cursor;
        let plan = Arc::make_mut(&mut self.record.plan);
        let mut rest = plan.steps.split_off(cursor);
        // What follows promotion stays as planned: its hooks, the old
        // revision's retirement, a migration's contract half.
        let promotion = match rest.iter().position(|s| matches!(s, Step::Promote)) {
            Some(at) => rest.split_off(at),
            None if plan.stable.is_some() => vec![Step::Promote, Step::Retire { role: Role::Stable }],
            None => vec![Step::Promote],
        };
        for (old, step) in rest.into_iter().enumerate() {
            if matches!(step, Step::Gate { .. }) {
                let (old, new) = (cursor + old, plan.steps.len());
                for a in self.record.approvals.iter_mut().filter(|a| a.step == Some(old)) {
                    a.step = Some(new);
                }
                plan.steps.push(step);
            }
        }
        plan.steps.push(Step::Scale {
            role: Role::Candidate,
            replicas: plan.replicas,
        });
        plan.steps.push(Step::Route { candidate_weight: 100 });
        plan.steps.extend(promotion);
        self.persist().await
    }

    /// `candidate_weight` percent to the candidate, the rest to the stable
    /// revision (all or nothing to the candidate when there is none), set
    /// in `self.split`.
    fn set_split(&mut self, candidate_weight: u8) -> Result<(), Stop> {
        let cand = &self.record.plan.candidate.id;
        match &self.record.plan.stable {
            Some(stable) => self
                .split
                .set_canary(stable, cand, candidate_weight)
                .map_err(|e| Stop::Rollback(e.to_string())),
            None if candidate_weight == 0 => {
                self.split = TrafficSplit::default();
                Ok(())
            }
            None => {
                self.split = TrafficSplit::all(cand);
                Ok(())
            }
        }
    }

    async fn execute(&mut self, index: usize, step: &Step) -> Result<StepEnd, Stop> {
        let target = self.target.clone();
        if !matches!(step, Step::Route { .. }) {
            // The split is kept from one traffic step to the next only:
            // nothing is held while a rollout waits (10,000 rollouts in an
            // analysis would hold half a KiB each).
            self.split = TrafficSplit::default();
        }
        match step {
            Step::Stage { replicas } => {
                let spec = self.record.plan.candidate.clone();
                let cand = spec.id.clone();
                let detail = detail!({"revision": cand, "digest": spec.artifact.digest, "replicas": replicas});
                self.mutate("target.stage", detail, || target.stage(&spec, *replicas))
                    .await?;
                self.emit(EventKind::Scaled {
                    role: Role::Candidate,
                    replicas: *replicas,
                });
                self.wait_ready(&cand, *replicas).await?;
            }
            Step::Scale { role, replicas } => {
                let Some(rev) = self.record.plan.revision(*role).cloned() else {
                    return Ok(StepEnd::Done);
                };
                let detail = detail!({"role": role, "revision": rev, "replicas": replicas});
                self.mutate("target.scale", detail, || target.scale(&rev, *replicas))
                    .await?;
                self.emit(EventKind::Scaled {
                    role: *role,
                    replicas: *replicas,
                });
                self.wait_ready(&rev, *replicas).await?;
            }
            Step::Route { candidate_weight } => {
                self.set_split(*candidate_weight)?;
                // Out of the driver while the route is recorded.
                let split = std::mem::take(&mut self.split);
                let detail = route_detail(&split, ("candidate_weight", *candidate_weight));
                let routed = self.mutate("target.route", detail, || target.route(&split)).await;
                self.split = split;
                routed?;
                self.emit(EventKind::TrafficShifted {
                    candidate_weight: *candidate_weight,
                });
            }
            Step::Pause { duration } => return self.pause_step(*duration).await,
            Step::Analyze { analysis } => return self.analyze_step(index, analysis).await,
            Step::Bake { duration, analysis } => {
                let until = Instant::now() + *duration;
                if let Some(analysis) = analysis {
                    match self.analyze_step(index, analysis).await {
                        Ok(StepEnd::Done) => {}
                        Err(Stop::Rollback(why)) => return Err(Stop::Rollback(format!("during the bake: {why}"))),
                        other => return other,
                    }
                }
                // What the measurements left of the duration.
                let rest = until.saturating_duration_since(Instant::now());
                if !rest.is_zero() {
                    return self.pause_step(Some(rest)).await;
                }
            }
            Step::Gate { name } => return self.gate(index, name).await,
            Step::Hook { hook } => {
                let (passed, message) = self.run_hook(Some(index), hook).await?;
                if !passed && hook.on_failure == HookFailure::RollBack {
                    return Err(Stop::Rollback(format!(
                        "hook {:?} ({}) failed: {message}",
                        hook.name, hook.at
                    )));
                }
            }
            Step::Promote => {
                let cand = self.record.plan.candidate.id.clone();
                self.mutate("target.promote", detail!({"revision": cand}), || target.promote(&cand))
                    .await?;
            }
            Step::Retire { role } => {
                let Some(rev) = self.record.plan.revision(*role).cloned() else {
                    return Ok(StepEnd::Done);
                };
                self.mutate("target.retire", detail!({"role": role, "revision": rev}), || {
                    target.retire(&rev)
                })
                .await?;
            }
            Step::RetireLeftover { revision } => {
                self.mutate(
                    "target.retire",
                    detail!({"leftover": true, "revision": revision}),
                    || target.retire(revision),
                )
                .await?;
            }
        }
        Ok(StepEnd::Done)
    }

    /// Run analysis step `index`: a failure is notified as such.
    async fn analyze_step(&mut self, index: usize, analysis: &AnalysisSpec) -> Result<StepEnd, Stop> {
        let judged = self.analyze(analysis).await;
        if let Err(Stop::Rollback(reason)) = &judged {
            let reason = reason.clone();
            self.notify(format!("analysis-failed-{index}"), || NoticeKind::AnalysisFailed {
                step: index,
                reason,
            });
        }
        judged
    }

    /// Run `spec`'s hook (at plan step `step`; `None` after a rollback),
    /// each attempt bounded by its timeout and audited, a failed one tried
    /// again while its retries last. Whether it passed, and its last word.
    async fn run_hook(&mut self, step: Option<usize>, spec: &HookSpec) -> Result<(bool, String), Stop> {
        let Some(hook) = self.inner.hooks.get(&spec.name).cloned() else {
            return Ok((
                false,
                format!("no hook named {:?} is registered in this engine", spec.name),
            ));
        };
        let plan = &self.record.plan;
        // Requests on the candidate when it runs: the last traffic step's.
        let candidate_weight = match step {
            Some(i) => plan.steps[..i]
                .iter()
                .rev()
                .find_map(|s| match s {
                    Step::Route { candidate_weight } => Some(*candidate_weight),
                    _ => None,
                })
                .unwrap_or(0),
            None => 0,
        };
        let place = step.map_or_else(|| "rollback".to_owned(), |i| i.to_string());
        let mut ctx = HookContext {
            key: format!("{}/{place}/{}", self.record.id, spec.name),
            rollout: self.record.id.clone(),
            target: self.record.target.clone(),
            at: spec.at,
            candidate: plan.candidate.id.clone(),
            artifact: plan.candidate.artifact.pinned_ref().to_string(),
            stable: plan.stable.clone(),
            candidate_weight,
            attempt: 0,
        };
        let mut last = String::new();
        for attempt in 1..=spec.retries.saturating_add(1) {
            ctx.attempt = attempt;
            let ran = match tokio::time::timeout(spec.timeout, hook.run(&ctx)).await {
                Ok(Ok(ran)) => ran,
                Ok(Err(e)) => HookRun::failed(format!("could not run: {e}")),
                Err(_) => HookRun::failed(format!("did not finish within {:?}", spec.timeout)),
            };
            let action = if ran.passed { "hook.passed" } else { "hook.failed" };
            tracing::info!(hook = %spec.name, at = %spec.at, attempt, passed = ran.passed, message = %ran.message, "hook ran");
            let detail = detail!({"hook": spec.name, "at": spec.at, "phase": spec.phase, "attempt": attempt, "key": ctx.key, "message": ran.message, "logs": ran.logs});
            match self.audit(action, detail).await {
                Err(e) if !self.rolling_back => return Err(Stop::Rollback(format!("audit sink failed: {e}"))),
                Err(e) => tracing::error!(error = %e, "could not audit a hook run"),
                Ok(()) => {}
            }
            self.emit(EventKind::HookRan {
                hook: spec.name.clone(),
                at: spec.at,
                attempt,
                passed: ran.passed,
                message: ran.message.clone(),
                logs: ran.logs.clone(),
            });
            if ran.passed {
                return Ok((true, ran.message));
            }
            last = ran.message;
            if attempt <= spec.retries {
                // A moment before the next attempt, commands answered
                // meanwhile (an abort stops the retries).
                let next = Instant::now() + self.inner.config.poll_interval;
                while self.wait_until(Some(next)).await? != Wake::Elapsed {}
            }
        }
        Ok((false, last))
    }

    async fn pause_step(&mut self, duration: Option<Duration>) -> Result<StepEnd, Stop> {
        let Some(mut remaining) = duration else {
            let step = self.record.cursor;
            self.notify_waiting(format!("paused-{step}"), || NoticeKind::Paused {
                step,
                by: "pause".into(),
                reason: "the plan pauses here until the rollout is resumed".into(),
            })
            .await?;
            loop {
                match self.wait_until(None).await? {
                    Wake::PromoteNow => return Ok(StepEnd::PromoteNow),
                    Wake::Resumed if !self.record.paused => return Ok(StepEnd::Done),
                    _ => {}
                }
            }
        };
        loop {
            if self.record.paused {
                // A paused rollout's timed pause stops counting.
                if self.wait_until(None).await? == Wake::PromoteNow {
                    return Ok(StepEnd::PromoteNow);
                }
                continue;
            }
            let started = Instant::now();
            match self.wait_until(Some(started + remaining)).await? {
                Wake::Elapsed => return Ok(StepEnd::Done),
                Wake::PromoteNow => return Ok(StepEnd::PromoteNow),
                _ => remaining = remaining.saturating_sub(started.elapsed()),
            }
        }
    }

    async fn gate(&mut self, index: usize, name: &str) -> Result<StepEnd, Stop> {
        let Some(gate) = self.inner.gates.get(name).cloned() else {
            return Err(Stop::Rollback(format!(
                "gate {name:?} is not registered in this engine"
            )));
        };
        let mut last_wait: Option<String> = None;
        let waiting_since_ms = self.inner.clock.now_ms();
        loop {
            let plan = &self.record.plan;
            let ctx = GateContext {
                waiting_since_ms,
                rollout: self.record.id.clone(),
                target: self.record.target.clone(),
                candidate: plan.candidate.id.clone(),
                digest: plan.candidate.artifact.digest.to_string(),
                step: index,
                approvals: self
                    .record
                    .approvals
                    .iter()
                    .filter(|a| a.applies_to(index))
                    .cloned()
                    .collect(),
                now_ms: self.inner.clock.now_ms(),
                started_by: self.record.started_by.clone(),
            };
            let decision = self
                .call("gate.check", || gate.check(&ctx))
                .await
                .map_err(|e| Stop::Rollback(format!("gate {name:?} failed: {e}")))?;
            match decision {
                GateDecision::Pass { by } => {
                    self.audit_or_stop("gate.passed", detail!({"gate": name, "by": by}))
                        .await?;
                    self.emit(EventKind::GatePassed {
                        gate: name.to_owned(),
                        by,
                    });
                    return Ok(StepEnd::Done);
                }
                GateDecision::Fail { reason } => {
                    self.audit_or_stop("gate.failed", detail!({"gate": name, "reason": reason}))
                        .await?;
                    return Err(Stop::Rollback(
                        Error::GateRejected {
                            gate: name.to_owned(),
                            reason,
                        }
                        .to_string(),
                    ));
                }
                GateDecision::Wait { reason } => {
                    if last_wait.as_deref() != Some(reason.as_str()) {
                        self.audit_or_stop("gate.waiting", detail!({"gate": name, "reason": reason}))
                            .await?;
                        self.emit(EventKind::GateWaiting {
                            gate: name.to_owned(),
                            reason: reason.clone(),
                        });
                        let held = reason.clone();
                        self.notify_waiting(format!("paused-{index}"), || NoticeKind::Paused {
                            step: index,
                            by: format!("gate {name:?}"),
                            reason: held,
                        })
                        .await?;
                        last_wait = Some(reason);
                    }
                    // Promote-now does not skip a gate: the flag is kept,
                    // and the rest of the plan is replaced once it passes.
                    let next = Instant::now() + self.inner.config.gate_poll_interval;
                    self.wait_until(Some(next)).await?;
                }
            }
        }
    }

    async fn wait_ready(&mut self, rev: &RevisionId, replicas: u32) -> Result<(), Stop> {
        let config = &self.inner.config;
        let deadline = Instant::now() + config.progress_deadline;
        let (backoff, max) = (
            config.poll_backoff.max(1.0),
            config.poll_interval_max.max(config.poll_interval),
        );
        let mut interval = config.poll_interval;
        let mut watch = self.target.capabilities().watches;
        loop {
            let target = self.target.clone();
            let state = self
                .call("target.observe", || target.observe())
                .await
                .map_err(|e| Stop::failed("target.observe", e))?;
            match state.revision(rev) {
                Some(r) if r.failed > 0 => {
                    let e = Error::RevisionFailed {
                        target: self.record.target.clone(),
                        revision: rev.to_string(),
                        reason: match &r.failure {
                            Some(why) => format!("{} of {} replicas failed to start: {why}", r.failed, r.desired),
                            None => format!("{} of {} replicas failed to start", r.failed, r.desired),
                        },
                    };
                    return Err(Stop::Rollback(e.to_string()));
                }
                // An autoscaled revision is ready at its autoscaler's count.
                Some(r) if r.autoscaled && r.ready_with(replicas) => return Ok(()),
                Some(r) if !r.autoscaled && r.ready >= replicas => return Ok(()),
                None if replicas == 0 => return Ok(()),
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                let e = Error::Timeout {
                    what: format!(
                        "revision {rev} not ready with {replicas} replicas after {:?}",
                        self.inner.config.progress_deadline
                    ),
                };
                return Err(Stop::Transient(e.to_string()));
            }
            // Readiness waits are not skipped by promote-now; the flag is kept.
            if watch {
                // On the target's word, with a poll now and then in case a
                // change goes unreported.
                let target = self.target.clone();
                let resync = (now + self.inner.config.watch_resync).min(deadline);
                let wake = self.wait_or_changed(Some(resync), Some(target.changed())).await?;
                watch = wake != Wake::Unwatched;
                if watch {
                    continue;
                }
            }
            self.wait_until(Some((Instant::now() + interval).min(deadline))).await?;
            interval = interval.mul_f64(backoff).min(max);
        }
    }

    async fn analyze(&mut self, spec: &AnalysisSpec) -> Result<StepEnd, Stop> {
        if !spec.skipped.is_empty() {
            Box::pin(self.audit_or_stop("analysis.skipped", detail!({"skipped": spec.skipped}))).await?;
        }
        if spec.checks.is_empty() {
            return Ok(StepEnd::Done);
        }
        let Some(probe) = self.inner.probe_for(&self.record.target) else {
            return Err(Stop::Rollback(
                "the plan analyzes health but this engine has no probe".into(),
            ));
        };
        let mut tally: Vec<CheckTally> = spec.checks.iter().map(|_| CheckTally::default()).collect();
        // What each check asks the probe, the same at every measurement; a
        // check of a role the plan lacks asks nothing.
        let started = Instant::now();
        let mut asked: Vec<Option<Asked>> = spec
            .checks
            .iter()
            .map(|check| {
                let (scope, role) = match check.scope {
                    CheckScope::Target => (Scope::Target, None),
                    CheckScope::Role(r) => (Scope::Revision(self.record.plan.revision(r)?.clone()), Some(r)),
                };
                let context = QueryContext {
                    rollout: self.record.id.clone(),
                    step: self.record.cursor,
                    measurement: 0,
                    check: check.name.clone(),
                    role,
                    elapsed_ms: 0,
                    step_elapsed_ms: 0,
                };
                let query = ProbeQuery {
                    metric: check.metric.clone(),
                    scope,
                    window: spec.interval,
                    target: self.record.target.clone(),
                    context: Some(context),
                };
                // The baseline is the stable revision, measured in the same window.
                let baseline = match (&self.record.plan.stable, check.judge.needs_baseline()) {
                    (Some(stable), true) => {
                        let mut q = query.clone();
                        q.scope = Scope::Revision(stable.clone());
                        if let Some(c) = q.context.as_mut() {
                            c.role = Some(Role::Stable);
                        }
                        Some(q)
                    }
                    _ => None,
                };
                Some(Asked {
                    scope: query.scope.to_string(),
                    query,
                    baseline,
                })
            })
            .collect();
        for measurement in 1..=spec.count {
            let next = Instant::now() + spec.interval;
            loop {
                match self.wait_until(Some(next)).await? {
                    Wake::Elapsed => break,
                    Wake::PromoteNow => return Ok(StepEnd::PromoteNow),
                    _ => {}
                }
            }
            let elapsed_ms = u64::try_from(self.inner.clock.now_ms() - self.record.created_ms).unwrap_or(0);
            let step_elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            for ((check, t), asked) in spec.checks.iter().zip(tally.iter_mut()).zip(asked.iter_mut()) {
                let Some(Asked { query, baseline, scope }) = asked else {
                    continue;
                };
                for q in std::iter::once(&mut *query).chain(baseline.as_mut()) {
                    if let Some(c) = q.context.as_mut() {
                        (c.measurement, c.elapsed_ms, c.step_elapsed_ms) = (measurement, elapsed_ms, step_elapsed_ms);
                    }
                }
                let (query, baseline, scope) = (&*query, &*baseline, &*scope);
                t.measuring();
                let mut sample = match self.call("probe.sample", || probe.sample(query)).await {
                    Ok(s) => s,
                    Err(e) => {
                        Box::pin(self.probe_error(spec, check, t, scope, e)).await?;
                        continue;
                    }
                };
                // A measurement is the candidate's and the baseline's
                // window together: without the baseline's, the candidate's
                // is not recorded either (a comparison must not pair this
                // window with an older one), and the failure counts as the
                // candidate's would.
                let baseline = match baseline {
                    Some(q) => match self.call("probe.sample", || probe.sample(q)).await {
                        Ok(b) => Some(b),
                        Err(e) => {
                            let scope = format!("baseline {}", q.scope);
                            Box::pin(self.probe_error(spec, check, t, &scope, e)).await?;
                            continue;
                        }
                    },
                    None => None,
                };
                let source = std::mem::take(&mut sample.source);
                t.sampled(sample, baseline, check.judge.cumulative());
                let judgement = check.judge.evaluate(&t.input(measurement, spec.count));
                telemetry::verdict(&self.record.target, &check.name, judgement.outcome);
                let verdict = VerdictView {
                    check: &check.name,
                    metric: &check.metric,
                    scope,
                    source: &source,
                    measurement,
                    dry_run: check.dry_run,
                    judgement: &judgement,
                };
                tracing::info!(%verdict, "verdict");
                verdict.write_audit_detail(&mut self.entry.detail);
                self.append_or_stop("analysis.verdict").await?;
                self.emit_with(|| EventKind::Verdict {
                    verdict: Box::new(verdict.to_verdict()),
                });
                if check.dry_run {
                    continue;
                }
                match t.judged(verdict.judgement.outcome, spec, verdict) {
                    Next::Continue => {}
                    Next::RollBack(why) => return Err(Stop::Rollback(why)),
                    Next::Inconclusive(why) => return self.inconclusive(spec.on_inconclusive, why).await,
                }
            }
        }
        match tally::unproven(spec, &tally) {
            Some(why) => self.inconclusive(spec.on_inconclusive, why).await,
            None => Ok(StepEnd::Done),
        }
    }

    /// A probe call of `check` (of `scope`) failed: audited as
    /// `analysis.probe_error`, and counted towards the analysis's
    /// consecutive error limit, past which the rollout rolls back.
    async fn probe_error(
        &mut self,
        spec: &AnalysisSpec,
        check: &crate::analysis::Check,
        t: &mut CheckTally,
        scope: &str,
        e: Error,
    ) -> Result<(), Stop> {
        let (consecutive, next) = t.probe_failed(spec, &check.name, check.dry_run, scope, &e);
        let detail = detail!({"check": check.name, "scope": scope, "error": e.to_string(), "consecutive": consecutive});
        self.audit_or_stop("analysis.probe_error", detail).await?;
        match next {
            Next::RollBack(why) => Err(Stop::Rollback(why)),
            _ => Ok(()),
        }
    }

    /// Past the inconclusive limit: roll back, or hold for a human whose
    /// `resume` accepts the analysis (and whose `abort` rolls back).
    async fn inconclusive(&mut self, policy: InconclusivePolicy, why: String) -> Result<StepEnd, Stop> {
        if policy == InconclusivePolicy::RollBack {
            return Err(Stop::Rollback(why));
        }
        tracing::warn!(reason = %why, "analysis inconclusive: paused for a human");
        let step = self.record.cursor;
        let held = why.clone();
        self.notify(format!("paused-{step}"), || NoticeKind::Paused {
            step,
            by: "analysis".into(),
            reason: format!("inconclusive: {held}"),
        });
        self.record.paused = true;
        self.persist().await?;
        self.audit_or_stop("analysis.inconclusive_paused", detail!({"reason": why}))
            .await?;
        self.emit(EventKind::Paused {
            by: format!("analysis: {why}"),
        });
        while self.record.paused {
            if self.wait_until(None).await? == Wake::PromoteNow {
                return Ok(StepEnd::PromoteNow);
            }
        }
        Ok(StepEnd::Done)
    }

    /// Scale the stable revision back to `n` replicas and wait until they are
    /// ready.
    async fn restore_stable(&mut self, stable: &RevisionId, n: u32) -> Result<(), Stop> {
        let target = self.target.clone();
        self.mutate(
            "target.scale",
            detail!({"rollback": true, "role": Role::Stable, "revision": stable, "replicas": n}),
            || target.scale(stable, n),
        )
        .await?;
        self.emit(EventKind::Scaled {
            role: Role::Stable,
            replicas: n,
        });
        self.wait_ready(stable, n).await
    }

    /// Start the stable revision again, from the spec of the rollout that
    /// promoted it, with `n` replicas, and wait until they are ready. With
    /// no record of what it ran the rollback fails: traffic stays where it
    /// is rather than going to a revision that is not there.
    async fn recreate_stable(&mut self, stable: &RevisionId, n: u32) -> Result<(), Stop> {
        let found = self
            .inner
            .last_promoted(&self.record.target, stable, &self.record.id)
            .await
            .map_err(|e| Stop::failed(format_args!("reading what stable revision {stable} ran"), e))?;
        let Some(before) = found else {
            return Err(Stop::Rollback(format!(
                "stable revision {stable} is gone from target {} and relay has no record of what it ran; restore it by hand",
                self.record.target
            )));
        };
        let spec = before.plan.candidate.clone();
        let target = self.target.clone();
        let detail = detail!({"rollback": true, "role": Role::Stable, "revision": stable, "digest": spec.artifact.digest, "replicas": n, "recreated": true});
        self.mutate("target.stage", detail, || target.stage(&spec, n)).await?;
        self.emit(EventKind::Scaled {
            role: Role::Stable,
            replicas: n,
        });
        self.wait_ready(stable, n).await
    }

    /// Restore stable's capacity, route everything back to it, make it
    /// stable again, retire the candidate. Each action is persisted as done, so a
    /// resumed rollback continues where it stopped. A first release (no
    /// stable) is retired with its traffic: nothing stays deployed.
    async fn rollback(&mut self, cause: String) -> Result<Outcome> {
        self.rolling_back = true;
        self.promote_now = false;
        let to_err = |s: Stop| match s {
            Stop::Fatal(e) => Err(e),
            Stop::Rollback(c) | Stop::Transient(c) => Ok(c),
        };
        if !matches!(self.record.status, RolloutStatus::RollingBack { .. }) {
            tracing::warn!(%cause, "rolling back");
            telemetry::rollback_started(&self.record.target);
            self.record.status = RolloutStatus::RollingBack { cause: cause.clone() };
            self.record.rollback_step = RollbackStep::RestoreCapacity;
            self.record.paused = false;
            let rolling = cause.clone();
            self.notify("rolling-back".into(), || NoticeKind::RollingBack { cause: rolling });
            if let Err(s) = self.persist().await {
                to_err(s)?;
            }
            if let Err(e) = self.audit("rollback.started", detail!({"cause": cause})).await {
                tracing::error!(error = %e, "could not audit the rollback start");
            }
        }
        self.emit(EventKind::RollbackStarted { cause: cause.clone() });
        let target = self.target.clone();
        let plan = self.record.plan.clone();
        let cand = plan.candidate.id.clone();
        // Stable goes back to the size it ran at; one that ran with none
        // (scaled to zero behind relay's back) is not handed all the
        // traffic empty-handed: it gets the release's size.
        let n = if plan.stable_replicas > 0 {
            plan.stable_replicas
        } else {
            plan.replicas
        };
        // A failed action is tried again while the budget lasts (a fresh
        // one when a resumed rollback starts again).
        let budget = Instant::now() + self.inner.config.rollback_retry_budget;
        let mut pause = self.inner.config.poll_interval;
        let mut tries = 0u32;
        while self.record.rollback_step != RollbackStep::Done {
            let action = self.record.rollback_step;
            let span = tracing::info_span!("rollback", action = action.name());
            let result = async {
                match (action, &plan.stable) {
                    // Stable's capacity first: traffic moved onto a stable that
                    // was scaled down (by a rolling rollout, say) would find too
                    // few replicas. A stable at full strength is not touched, so
                    // the route follows at once; one the target no longer runs
                    // (replaced in place) comes back with the route.
                    (RollbackStep::RestoreCapacity, Some(stable)) => {
                        let observed = self.call("target.observe", || target.observe()).await;
                        match observed.as_ref().map(|s| s.revision(stable)) {
                            // At full strength (an autoscaled one at its
                            // autoscaler's count): the route follows at once.
                            Ok(Some(r)) if r.ready_with(n) => Ok(()),
                            // A target that runs one revision at a time brings
                            // the one it replaced back with the route.
                            Ok(None) if target.capabilities().max_revisions <= 1 => Ok(()),
                            // Deleted behind relay's back: started again from
                            // what it ran, before any traffic goes to it.
                            Ok(None) => self.recreate_stable(stable, n).await,
                            // Short, or unobservable: scale (it is idempotent).
                            _ => self.restore_stable(stable, n).await,
                        }
                    }
                    // A first release has nothing to route back to: its
                    // traffic goes with it when it is retired below (a split
                    // to nowhere is refused by every load balancer).
                    (RollbackStep::RouteToStable, None) => Ok(()),
                    (RollbackStep::RouteToStable, Some(stable)) => {
                        let split = TrafficSplit::all(stable);
                        let r = self
                            .mutate("target.route", route_detail(&split, ("rollback", true)), || {
                                target.route(&split)
                            })
                            .await;
                        if r.is_ok() {
                            self.emit(EventKind::TrafficShifted { candidate_weight: 0 });
                        }
                        r
                    }
                    (RollbackStep::ScaleStable, Some(stable)) => self.restore_stable(stable, n).await,
                    (RollbackStep::PromoteStable, Some(stable)) => {
                        self.mutate(
                            "target.promote",
                            detail!({"rollback": true, "revision": stable}),
                            || target.promote(stable),
                        )
                        .await
                    }
                    // Settling on the stable revision: the candidate is it.
                    (RollbackStep::RetireCandidate, _) if plan.is_repair() => Ok(()),
                    (RollbackStep::RetireCandidate, _) => {
                        self.mutate(
                            "target.retire",
                            detail!({"rollback": true, "role": Role::Candidate, "revision": cand}),
                            || target.retire(&cand),
                        )
                        .await
                    }
                    _ => Ok(()),
                }
            }
            .instrument(span)
            .await;
            match result {
                Ok(()) => {}
                // An outage: the same action again, later, within the budget.
                Err(Stop::Transient(error)) if Instant::now() + pause < budget => {
                    tries += 1;
                    tracing::warn!(%error, %action, tries, "rollback action failed; trying again");
                    let detail = detail!({"step": action as u8, "action": action.name(), "error": error, "tries": tries, "next_in_ms": pause.as_millis() as u64});
                    if let Err(e) = self.audit("rollback.retrying", detail).await {
                        tracing::error!(error = %e, "could not audit a rollback retry");
                    }
                    self.emit(EventKind::Retrying {
                        operation: "rollback".to_owned(),
                        attempt: tries,
                        error,
                        backoff_ms: pause.as_millis() as u64,
                    });
                    let until = Instant::now() + pause;
                    loop {
                        match self.wait_until(Some(until)).await {
                            Ok(Wake::Elapsed) => break,
                            Ok(_) => {}
                            Err(s) => {
                                to_err(s)?;
                            }
                        }
                    }
                    pause = (pause * 2).min(ROLLBACK_RETRY_MAX);
                    continue;
                }
                Err(s) => {
                    let error = to_err(s)?;
                    tracing::error!(%cause, %error, "ROLLBACK FAILED: the target needs a human");
                    return self.finish(Outcome::RollbackFailed { cause, error }).await;
                }
            }
            pause = self.inner.config.poll_interval;
            tries = 0;
            self.record.rollback_step = action.next();
            if let Err(s) = self.persist().await {
                to_err(s)?;
            }
        }
        // After the rollback: its hooks, whose failures are recorded (each
        // attempt audited) and change nothing.
        let hooks = self.record.plan.post_rollback.clone();
        for hook in &hooks {
            if let Err(s) = self.run_hook(None, hook).await {
                to_err(s)?;
            }
        }
        self.finish(Outcome::RolledBack { cause }).await
    }
}

/// The audit detail of a traffic change: `first` (a key that sorts before
/// `weights`) beside the split's `weights`, as `json!` would make it,
/// written by the canonical writer (a canary writes one at every step).
fn route_detail(split: &TrafficSplit, first: (&'static str, impl serde::Serialize)) -> AuditDetail {
    let mut text = Vec::with_capacity(32 + 24 * split.weights().len());
    let mut o = CanonicalObject::begin(&mut text);
    o.value(first.0, &first.1);
    // The split's map of weights, in its (sorted) order.
    let mut weights = o.object("weights");
    for (rev, weight) in split.weights() {
        weights.entry(rev.as_str(), weight);
    }
    weights.end();
    o.end();
    AuditDetail::from_canonical(String::from_utf8(text).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_route_detail_is_what_json_makes_of_the_split() {
        let (stable, candidate) = (RevisionId::from("app@v1"), RevisionId::from("app@v2"));
        let canary = TrafficSplit::canary(&stable, &candidate, 30).unwrap();
        let three: TrafficSplit = [("b\"c", 20u8), ("a", 30), ("é", 50)]
            .into_iter()
            .map(|(id, w)| (RevisionId::from(id), w))
            .collect::<std::collections::BTreeMap<_, _>>()
            .try_into()
            .unwrap();
        for (made, expected) in [
            (
                route_detail(&canary, ("candidate_weight", 30u8)),
                json!({"candidate_weight": 30, "weights": canary}),
            ),
            (
                route_detail(&three, ("candidate_weight", 50u8)),
                json!({"candidate_weight": 50, "weights": {"a": 30, "b\"c": 20, "é": 50}}),
            ),
            (
                route_detail(&TrafficSplit::all(&stable), ("rollback", true)),
                json!({"rollback": true, "weights": {"app@v1": 100}}),
            ),
            (
                route_detail(&TrafficSplit::default(), ("rollback", true)),
                json!({"rollback": true, "weights": {}}),
            ),
        ] {
            assert_eq!(made, AuditDetail::from(expected.clone()), "{expected}");
        }
    }
}
