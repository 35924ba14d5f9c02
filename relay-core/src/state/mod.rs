//! Rollout records, leases, and the [`StateStore`] seam with its memory and
//! file implementations.

mod file;
pub mod logic;
mod memory;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;
use crate::engine::RolloutCommand;
use crate::error::Result;
use crate::event::Outcome;
use crate::gate::Approval;
use crate::plan::Plan;

pub use file::{DamagedRecord, FileStateStore};
pub use memory::MemoryStateStore;

/// Where a rollout stands: running, rolling back, or finished with an
/// [`Outcome`] (the one a [`crate::RolloutHandle`] returns).
///
/// Stored tagged by `"status"`, as records have always been:
/// `{"status":"running"}`, `{"status":"rolling_back","cause":…}`,
/// `{"status":"succeeded","revision":…}`, `{"status":"rolled_back","cause":…}`,
/// `{"status":"rollback_failed","cause":…,"error":…}` and
/// `{"status":"no_change"}`. A `succeeded` record written before the
/// revision was stored takes it from its plan's candidate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "StoredStatus", from = "StoredStatus")]
pub enum RolloutStatus {
    /// Executing the plan.
    Running,
    /// Rolling back because of `cause`.
    RollingBack {
        /// Why.
        cause: String,
    },
    /// Over: how it ended.
    Finished(Outcome),
}

impl RolloutStatus {
    /// How the rollout ended; `None` while it runs or rolls back.
    pub fn outcome(&self) -> Option<&Outcome> {
        match self {
            RolloutStatus::Finished(outcome) => Some(outcome),
            RolloutStatus::Running | RolloutStatus::RollingBack { .. } => None,
        }
    }

    /// Whether the rollout is over.
    pub fn is_terminal(&self) -> bool {
        matches!(self, RolloutStatus::Finished(_))
    }

    /// Whether the rollout promoted its candidate.
    pub fn is_promoted(&self) -> bool {
        matches!(self, RolloutStatus::Finished(Outcome::Promoted { .. }))
    }

    /// Whether the rollout was rolled back (whether or not the rollback
    /// completed).
    pub fn is_rolled_back(&self) -> bool {
        matches!(
            self,
            RolloutStatus::Finished(Outcome::RolledBack { .. } | Outcome::RollbackFailed { .. })
        )
    }
}

/// [`RolloutStatus`] as records store it: one flat tag per state.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum StoredStatus {
    Running,
    RollingBack {
        cause: String,
    },
    Succeeded {
        /// Absent in records written before it was stored:
        /// [`RolloutRecord`] fills it in from its plan.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        revision: String,
    },
    RolledBack {
        cause: String,
    },
    RollbackFailed {
        cause: String,
        error: String,
    },
    NoChange,
}

impl From<RolloutStatus> for StoredStatus {
    fn from(status: RolloutStatus) -> Self {
        match status {
            RolloutStatus::Running => StoredStatus::Running,
            RolloutStatus::RollingBack { cause } => StoredStatus::RollingBack { cause },
            RolloutStatus::Finished(Outcome::Promoted { revision }) => StoredStatus::Succeeded { revision },
            RolloutStatus::Finished(Outcome::RolledBack { cause }) => StoredStatus::RolledBack { cause },
            RolloutStatus::Finished(Outcome::RollbackFailed { cause, error }) => {
                StoredStatus::RollbackFailed { cause, error }
            }
            RolloutStatus::Finished(Outcome::NoChange) => StoredStatus::NoChange,
        }
    }
}

impl From<StoredStatus> for RolloutStatus {
    fn from(status: StoredStatus) -> Self {
        match status {
            StoredStatus::Running => RolloutStatus::Running,
            StoredStatus::RollingBack { cause } => RolloutStatus::RollingBack { cause },
            StoredStatus::Succeeded { revision } => RolloutStatus::Finished(Outcome::Promoted { revision }),
            StoredStatus::RolledBack { cause } => RolloutStatus::Finished(Outcome::RolledBack { cause }),
            StoredStatus::RollbackFailed { cause, error } => {
                RolloutStatus::Finished(Outcome::RollbackFailed { cause, error })
            }
            StoredStatus::NoChange => RolloutStatus::Finished(Outcome::NoChange),
        }
    }
}

/// The actions of a rollback, in the order they run. Each is recorded as
/// done before the next starts, so a rollback resumed after a crash goes
/// on with the action it was on (`docs/engine.md`, *Rolling back*).
///
/// Serialized as the action's number (0–5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum RollbackStep {
    /// Bring the stable revision back to full strength before any traffic
    /// goes to it (started again if it was deleted).
    #[default]
    RestoreCapacity,
    /// Route all traffic to the stable revision.
    RouteToStable,
    /// Scale the stable revision to the size it ran at and wait until ready.
    ScaleStable,
    /// Make the stable revision the target's current one again.
    PromoteStable,
    /// Remove the candidate.
    RetireCandidate,
    /// Every action is done.
    Done,
}

impl RollbackStep {
    /// Every step, in order.
    pub const ALL: [RollbackStep; 6] = [
        RollbackStep::RestoreCapacity,
        RollbackStep::RouteToStable,
        RollbackStep::ScaleStable,
        RollbackStep::PromoteStable,
        RollbackStep::RetireCandidate,
        RollbackStep::Done,
    ];

    /// The step after this one (`Done` stays `Done`).
    pub fn next(self) -> RollbackStep {
        Self::ALL[(self as usize + 1).min(Self::ALL.len() - 1)]
    }

    /// The step's name, as logs and audit entries give it.
    pub fn name(self) -> &'static str {
        match self {
            RollbackStep::RestoreCapacity => "restore_capacity",
            RollbackStep::RouteToStable => "route_to_stable",
            RollbackStep::ScaleStable => "scale_stable",
            RollbackStep::PromoteStable => "promote_stable",
            RollbackStep::RetireCandidate => "retire_candidate",
            RollbackStep::Done => "done",
        }
    }
}

impl fmt::Display for RollbackStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<RollbackStep> for u8 {
    fn from(step: RollbackStep) -> u8 {
        step as u8
    }
}

impl TryFrom<u8> for RollbackStep {
    type Error = String;

    fn try_from(n: u8) -> std::result::Result<Self, String> {
        RollbackStep::ALL
            .get(usize::from(n))
            .copied()
            .ok_or_else(|| format!("rollback_cursor {n} is not a rollback step (0-5)"))
    }
}

/// Everything needed to resume a rollout in another process.
///
/// Records written by earlier versions of relay read: the fields they lack
/// take their defaults, and a `succeeded` status its revision from the plan.
#[derive(Debug, Serialize)]
pub struct RolloutRecord {
    /// Unique id.
    pub id: String,
    /// The target's name.
    pub target: String,
    /// The plan being executed. Shared: the engine's copy of a record and
    /// the copies a store keeps hold one plan (it changes only when a user
    /// promotes at once, through `Arc::make_mut`).
    pub plan: Arc<Plan>,
    /// Index of the step being executed (steps before it are done).
    pub cursor: usize,
    /// Rollback progress: the rollback action being executed (those
    /// before it are done). Stored under its old name, as the action's
    /// number, so records written before it had a name still read.
    #[serde(rename = "rollback_cursor")]
    pub rollback_step: RollbackStep,
    /// Status.
    pub status: RolloutStatus,
    /// Paused by a user.
    pub paused: bool,
    /// Human gate decisions so far.
    pub approvals: Vec<Approval>,
    /// For a promotion between environments, the rollout whose success it
    /// promotes (the same digest, in the environment before).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<String>,
    /// Who started the rollout, when its spec said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// The engine instance driving it.
    pub holder: String,
    /// The fencing token of the lease the holder drives it under.
    pub lease_token: u64,
    /// Created at (unix milliseconds).
    pub created_ms: UnixMillis,
    /// Last written at (unix milliseconds).
    pub updated_ms: UnixMillis,
    /// Store-managed version for compare-and-swap; 0 before the first write.
    pub version: u64,
    /// The audit log's head when the record was last written: an anchor
    /// outside the log, so a log cut below it shows
    /// ([`crate::audit::check_anchors`], [`crate::Relay::verify_audit`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_head: Option<crate::audit::ChainHead>,
    /// The number of the last command from the state store
    /// ([`StateStore::send_command`]) the rollout's driver applied.
    pub commands_applied: u64,
    /// The keys of the notices handed to notifiers (`started`, `step-3`,
    /// `promoted`; [`crate::notify`]): an engine that resumes the rollout
    /// sends none of them again. Empty without notifiers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notified: Vec<String>,
}

impl RolloutRecord {
    /// A record about to drive `plan` from its first step: running, not
    /// paused, no approvals, not yet written (version 0), created and
    /// updated at `now_ms`.
    pub fn new(
        id: impl Into<String>,
        target: impl Into<String>,
        plan: Arc<Plan>,
        holder: impl Into<String>,
        lease_token: u64,
        now_ms: UnixMillis,
    ) -> Self {
        RolloutRecord {
            id: id.into(),
            target: target.into(),
            plan,
            cursor: 0,
            rollback_step: RollbackStep::RestoreCapacity,
            status: RolloutStatus::Running,
            paused: false,
            approvals: Vec::new(),
            promoted_from: None,
            started_by: None,
            holder: holder.into(),
            lease_token,
            created_ms: now_ms,
            updated_ms: now_ms,
            version: 0,
            audit_head: None,
            commands_applied: 0,
            notified: Vec::new(),
        }
    }
}

impl<'de> Deserialize<'de> for RolloutRecord {
    /// As stored; a `succeeded` record written before its status held the
    /// promoted revision takes it from its plan.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let mut record = StoredRecord::deserialize(deserializer)?;
        if let RolloutStatus::Finished(Outcome::Promoted { revision }) = &mut record.status {
            if revision.is_empty() {
                *revision = record.plan.candidate.id.to_string();
            }
        }
        Ok(record)
    }
}

/// How a [`RolloutRecord`] is read, before the fix-up above. The compiler
/// holds it to the record's fields: one missing or of another type does
/// not build.
#[derive(Deserialize)]
#[serde(remote = "RolloutRecord")]
struct StoredRecord {
    id: String,
    target: String,
    plan: Arc<Plan>,
    cursor: usize,
    #[serde(default, rename = "rollback_cursor")]
    rollback_step: RollbackStep,
    status: RolloutStatus,
    #[serde(default)]
    paused: bool,
    #[serde(default)]
    approvals: Vec<Approval>,
    #[serde(default)]
    promoted_from: Option<String>,
    #[serde(default)]
    started_by: Option<String>,
    holder: String,
    lease_token: u64,
    created_ms: UnixMillis,
    updated_ms: UnixMillis,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    audit_head: Option<crate::audit::ChainHead>,
    #[serde(default)]
    commands_applied: u64,
    #[serde(default)]
    notified: Vec<String>,
}

impl RolloutRecord {
    /// Whether this rollout is orphaned: not finished, but no engine drives
    /// it — its target's lease (`lease`, as the store holds it at
    /// `now_ms`) is free, expired, or held for another rollout. A rollout
    /// left so by a crashed or killed engine stays running until an engine
    /// resumes it ([`crate::Relay::recover`]).
    pub fn is_orphaned(&self, lease: Option<&Lease>, now_ms: UnixMillis) -> bool {
        !self.status.is_terminal() && lease.is_none_or(|l| l.holder != self.holder || l.expires_at_ms <= now_ms)
    }
}

impl Clone for RolloutRecord {
    /// A blank record filled by `clone_from`, the one list of fields.
    fn clone(&self) -> Self {
        let mut copy = RolloutRecord::new(String::new(), String::new(), self.plan.clone(), String::new(), 0, 0);
        copy.clone_from(self);
        copy
    }

    /// Field by field, so a store updating its copy of a record reuses the
    /// copy's strings (a rollout's record is written at every step).
    fn clone_from(&mut self, source: &Self) {
        // Destructured: a field added to the record must be copied here.
        let RolloutRecord {
            id,
            target,
            plan,
            cursor,
            rollback_step,
            status,
            paused,
            approvals,
            promoted_from,
            started_by,
            holder,
            lease_token,
            created_ms,
            updated_ms,
            version,
            audit_head,
            commands_applied,
            notified,
        } = source;
        self.id.clone_from(id);
        self.target.clone_from(target);
        self.plan.clone_from(plan);
        self.cursor = *cursor;
        self.rollback_step = *rollback_step;
        self.status.clone_from(status);
        self.paused = *paused;
        self.approvals.clone_from(approvals);
        self.promoted_from.clone_from(promoted_from);
        self.started_by.clone_from(started_by);
        self.holder.clone_from(holder);
        self.lease_token = *lease_token;
        self.created_ms = *created_ms;
        self.updated_ms = *updated_ms;
        self.version = *version;
        self.audit_head.clone_from(audit_head);
        self.commands_applied = *commands_applied;
        self.notified.clone_from(notified);
    }
}

/// A time-limited exclusive right to drive rollouts on one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The target.
    pub target: String,
    /// Who holds it.
    pub holder: String,
    /// Fencing token: strictly increases every time the lease changes hands.
    pub token: u64,
    /// Expiry (unix milliseconds) unless renewed; [`Lease::HELD`] while its
    /// holder holds it in process ([`StateStore::hold_lease`]).
    pub expires_at_ms: UnixMillis,
}

impl Lease {
    /// The expiry of a lease held with [`StateStore::hold_lease`]: none. It
    /// lasts until it is released or its holder is gone.
    pub const HELD: UnixMillis = UnixMillis::MAX;
}

/// A grant of a target's lease to a new holder, as a store that keeps its
/// lease history reports it (the PostgreSQL and DynamoDB stores'
/// `lease_grants`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The fencing token granted (two holders never share one).
    pub token: u64,
    /// Who got it.
    pub holder: String,
    /// When (the granting engine's clock).
    pub granted_ms: UnixMillis,
    /// The lease it replaced, if one was held: its holder and its expiry
    /// then. A replaced lease that had not expired would mean two live
    /// holders; the grant rules never allow it.
    pub previous: Option<(String, UnixMillis)>,
}

impl LeaseGrant {
    /// Whether the grant took the lease from a holder whose lease was
    /// still live (its expiry after the grant): what must never happen
    /// between engines whose clocks agree. The expiry is the old holder's
    /// clock and the grant time the new holder's, so a takeover made early
    /// by a clock running ahead does not show here; the fencing token still
    /// refuses the old holder's writes.
    pub fn overlaps(&self) -> bool {
        self.previous
            .as_ref()
            .is_some_and(|(holder, expires)| holder != &self.holder && *expires > self.granted_ms)
    }
}

/// Keeps a lease held for as long as it lives, with no renewals; dropping
/// it releases the lease. A store returns one from
/// [`StateStore::hold_lease`].
pub struct LeaseHold(Option<Box<dyn FnOnce() + Send + Sync>>);

impl LeaseHold {
    /// A hold that runs `release` when dropped (the store's release of the
    /// lease, which must be a no-op for a lease no longer held).
    pub fn new(release: impl FnOnce() + Send + Sync + 'static) -> Self {
        LeaseHold(Some(Box::new(release)))
    }
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        if let Some(release) = self.0.take() {
            release();
        }
    }
}

/// Wakes a rollout's driver when a command for the rollout was queued
/// ([`StateStore::watch_commands`]). Cheap to clone.
#[derive(Clone)]
pub struct CommandWaker(Arc<dyn Fn() + Send + Sync>);

impl CommandWaker {
    /// A waker that calls `wake`.
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Self {
        CommandWaker(Arc::new(wake))
    }

    /// Wake the driver.
    pub fn wake(&self) {
        (self.0)();
    }
}

impl fmt::Debug for CommandWaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CommandWaker")
    }
}

/// Keeps a store calling back a driver when a command for its rollout is
/// queued, for as long as it lives ([`StateStore::watch_commands`]):
/// dropping it stops the calls. The same guard as a [`LeaseHold`].
pub type CommandWatch = LeaseHold;

impl fmt::Debug for LeaseHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeaseHold")
    }
}

/// Persists rollout records and target leases.
///
/// # Contract
/// - `put` is compare-and-swap: `expected_version` must equal the stored
///   version (`None`: the record must not exist yet), else
///   [`crate::Error::Conflict`]. It returns the new version. A record whose
///   `lease_token` is older than the newest token granted for its target is
///   refused with [`crate::Error::LeaseLost`] (fencing), so an engine that
///   lost its lease cannot overwrite its successor's progress.
/// - `acquire_lease` grants the lease when it is free, expired or already
///   held by `holder` (a renewal keeps the token); otherwise
///   [`crate::Error::TargetLocked`]. Every change of holder increments the
///   token. Holder ids are unique to one engine instance and rollout (the
///   engine's name and a random part drawn when it was built), so a lease
///   held by `holder` is only ever its own: another engine, or another
///   process given the same name, is another holder and waits for expiry.
/// - `renew_lease` extends a lease still held with the same token, else
///   [`crate::Error::LeaseLost`].
/// - `hold_lease`, where a store offers it, keeps a lease still held from
///   expiring (others get [`crate::Error::TargetLocked`]) until the
///   returned [`LeaseHold`] is dropped, which releases the lease.
/// - Writes are durable when the call returns.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait StateStore: Send + Sync + fmt::Debug + 'static {
    /// The record `id`, if any.
    async fn get(&self, id: &str) -> Result<Option<RolloutRecord>>;
    /// Write `record` if the stored version is `expected_version`.
    async fn put(&self, record: &RolloutRecord, expected_version: Option<u64>) -> Result<u64>;
    /// All records that are not terminal (for recovery after a crash).
    async fn list_active(&self) -> Result<Vec<RolloutRecord>>;
    /// All records of `target`, oldest first (history).
    async fn list_target(&self, target: &str) -> Result<Vec<RolloutRecord>>;
    /// Every record, of every target, oldest first (to check the audit
    /// anchors they hold). The default: [`crate::Error::Unsupported`].
    async fn list_all(&self) -> Result<Vec<RolloutRecord>> {
        Err(crate::Error::unsupported("this state store cannot list every record"))
    }
    /// Queue `command` for rollout `id`, for whichever engine drives it
    /// (in any process) to apply; returns its number, 1, 2, ... per
    /// rollout. The default: [`crate::Error::Unsupported`].
    async fn send_command(&self, id: &str, command: &RolloutCommand) -> Result<u64> {
        let _ = (id, command);
        Err(crate::Error::unsupported("this state store cannot carry commands"))
    }
    /// The commands queued for `id` numbered above `after`, oldest first.
    /// The default: none.
    async fn commands(&self, id: &str, after: u64) -> Result<Vec<(u64, RolloutCommand)>> {
        let _ = (id, after);
        Ok(Vec::new())
    }
    /// Call `wake` whenever a command for `id` is queued (and at once, when
    /// some are queued already), for as long as the returned guard lives,
    /// where the store sees every sender (it lives in their process). `None` (the default, and the answer of any
    /// store shared between processes): the engine looks for commands
    /// every [`StateStore::command_poll`].
    fn watch_commands(&self, id: &str, wake: CommandWaker) -> Option<CommandWatch> {
        let _ = (id, wake);
        None
    }
    /// How often a driver looks for commands in this store, when it cannot
    /// watch them; `None` (the default): the store carries no commands.
    fn command_poll(&self) -> Option<Duration> {
        None
    }
    /// The lease on `target` as it stands (held, expired, or none: `None`),
    /// to tell a running rollout from one its engine left (orphaned). The
    /// default: [`crate::Error::Unsupported`].
    async fn lease(&self, target: &str) -> Result<Option<Lease>> {
        let _ = target;
        Err(crate::Error::unsupported("this state store cannot show its leases"))
    }
    /// Take the lease on `target` for `ttl`.
    async fn acquire_lease(&self, target: &str, holder: &str, ttl: Duration, now_ms: UnixMillis) -> Result<Lease>;
    /// Extend `lease` by `ttl` from now.
    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now_ms: UnixMillis) -> Result<Lease>;
    /// Give `lease` up (no-op if it is no longer held).
    async fn release_lease(&self, lease: &Lease) -> Result<()>;
    /// Hold `lease` with no renewals for as long as the returned
    /// [`LeaseHold`] lives, where the store sees its holders alive because
    /// it lives in their process: the lease does not expire, and dropping
    /// the hold releases it, so a rollout that stops driving, however it
    /// stops, frees its target at once. `None` (the default, and the answer
    /// of any store shared between processes, or a lease no longer held):
    /// the holder keeps the lease by renewing it every `ttl / 3`.
    ///
    /// This is what makes a long simulated rollout cheap: renewals every
    /// ten seconds of virtual time were most of its timer wake-ups.
    fn hold_lease(&self, _lease: &Lease) -> Option<LeaseHold> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollback_step_is_stored_as_its_number_and_read_back_by_it() {
        for (n, step) in RollbackStep::ALL.into_iter().enumerate() {
            assert_eq!(serde_json::to_string(&step).unwrap(), n.to_string());
            assert_eq!(serde_json::from_str::<RollbackStep>(&n.to_string()).unwrap(), step);
        }
        assert_eq!(RollbackStep::RetireCandidate.next(), RollbackStep::Done);
        assert_eq!(RollbackStep::Done.next(), RollbackStep::Done);
        let err = serde_json::from_str::<RollbackStep>("6").unwrap_err().to_string();
        assert!(err.contains("rollback_cursor 6 is not a rollback step"), "{err}");
    }

    #[test]
    fn only_a_finished_status_has_an_outcome() {
        assert_eq!(RolloutStatus::Running.outcome(), None);
        assert_eq!(RolloutStatus::RollingBack { cause: "x".into() }.outcome(), None);
        let done = RolloutStatus::Finished(Outcome::NoChange);
        assert_eq!(done.outcome(), Some(&Outcome::NoChange));
        assert!(done.is_terminal() && !RolloutStatus::Running.is_terminal());
    }
}
