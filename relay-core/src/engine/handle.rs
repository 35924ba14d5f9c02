//! Controlling a running rollout.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::{EventHub, Outcome, RolloutEvents};

/// An operator's instruction to a running rollout: given through a
/// [`RolloutControl`] in the process that drives it, or from any process
/// through the state store ([`crate::Relay::command`]). The engine asks
/// its [`crate::Authorizer`] before one takes effect, and audits who gave
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum RolloutCommand {
    /// Hold at the next step boundary.
    Pause {
        /// Who.
        by: String,
    },
    /// Continue; end an indefinite pause.
    Resume {
        /// Who.
        by: String,
    },
    /// Stop and roll back.
    Abort {
        /// Who.
        by: String,
        /// Why.
        reason: String,
    },
    /// Skip the remaining pauses and analyses.
    PromoteNow {
        /// Who.
        by: String,
    },
    /// Approve or reject a gate.
    Decide {
        /// The gate.
        gate: String,
        /// Who.
        by: String,
        /// Their comment (a rejection's reason).
        comment: String,
        /// Whether they approved.
        approved: bool,
    },
}

impl RolloutCommand {
    /// Check its names and text: who gave it and the gate it names must be
    /// printable names, its comment or reason printable text (they reach
    /// logs, terminals and the audit log).
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] at `command.by`, `command.gate`,
    /// `command.comment` or `command.reason`.
    pub fn validate(&self) -> Result<()> {
        use crate::error::{check_name, check_text};
        match self {
            RolloutCommand::Pause { by } | RolloutCommand::Resume { by } | RolloutCommand::PromoteNow { by } => {
                check_name("command.by", by)
            }
            RolloutCommand::Abort { by, reason } => {
                check_name("command.by", by)?;
                check_text("command.reason", reason)
            }
            RolloutCommand::Decide { gate, by, comment, .. } => {
                check_name("command.gate", gate)?;
                check_name("command.by", by)?;
                check_text("command.comment", comment)
            }
        }
    }
}

/// What reaches a rollout's driver on its channel.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    /// An operator's command, from this process.
    User(RolloutCommand),
    /// From the driver's own lease renewal: the lease could not be renewed
    /// in time (sent on the command channel, which every wait already
    /// reads, so a waiting driver stops at once).
    LeaseLost,
    /// Commands for the rollout may have been queued in the state store
    /// (from another process): read and apply them.
    Stored,
    /// The engine shuts down: stop driving, leave the rollout resumable.
    Shutdown,
}

/// The sending end of a rollout's commands. Commands travel boxed: an
/// unbounded channel allocates its first block of 32 slots up front, which
/// is 256 bytes of pointers rather than 2.5 KiB of commands per rollout.
pub(crate) type CommandTx = mpsc::UnboundedSender<Box<Command>>;
/// The receiving end of a rollout's commands.
pub(crate) type CommandRx = mpsc::UnboundedReceiver<Box<Command>>;

/// The controls of a running rollout (or of every rollout of a wave):
/// cheap to clone and to hand to another task while the
/// [`RolloutHandle`] awaits the outcome. Commands reach the engine in the
/// order they are sent; the engine audits who gave each.
///
/// Every command fails with [`Error::InvalidSpec`] (`command.by`,
/// `command.gate`, `command.comment`, `command.reason`) when who sent it or
/// the gate it names is not a printable name, or its text holds control
/// characters or more than 4,096 bytes, and with [`Error::NotRunning`]
/// once the rollout has ended.
#[derive(Clone, Debug)]
pub struct RolloutControl {
    id: String,
    commands: CommandTx,
}

impl RolloutControl {
    pub(crate) fn new(id: String, commands: CommandTx) -> Self {
        RolloutControl { id, commands }
    }

    /// The rollout's (or wave's) id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Send `c`, checked first ([`RolloutCommand::validate`]).
    fn send(&self, c: RolloutCommand) -> Result<()> {
        c.validate()?;
        self.commands
            .send(Box::new(Command::User(c)))
            .map_err(|_| Error::NotRunning {
                rollout: self.id.clone(),
            })
    }

    /// Hold the rollout at the next step boundary (a running analysis
    /// finishes first; a timed pause stops counting).
    pub fn pause(&self, by: impl Into<String>) -> Result<()> {
        self.send(RolloutCommand::Pause { by: by.into() })
    }

    /// Continue after [`RolloutControl::pause`], or end an indefinite pause step.
    pub fn resume(&self, by: impl Into<String>) -> Result<()> {
        self.send(RolloutCommand::Resume { by: by.into() })
    }

    /// Stop now and roll back. Read at the rollout's next wait or step
    /// boundary, so an abort sent while a step's provider calls run takes
    /// effect before the next step. Once the candidate is promoted the
    /// abort is refused (audited as `rollout.abort_refused`): going back
    /// is a new rollout of the previous release.
    pub fn abort(&self, by: impl Into<String>, reason: impl Into<String>) -> Result<()> {
        self.send(RolloutCommand::Abort {
            by: by.into(),
            reason: reason.into(),
        })
    }

    /// Skip the remaining pauses and analyses: full traffic to the
    /// candidate, promote, retire stable. The gates still ahead (an
    /// approval, a freeze window, a wave's barrier) are kept and still
    /// wait, before the traffic moves.
    pub fn promote_now(&self, by: impl Into<String>) -> Result<()> {
        self.send(RolloutCommand::PromoteNow { by: by.into() })
    }

    /// Approve the manual gate `gate`: the step of it the rollout waits
    /// at, or else the next step of it ahead. A plan that holds the gate
    /// twice needs two approvals. With no step of that gate ahead, the
    /// decision is ignored (audited as `gate.decision_ignored`).
    pub fn approve(&self, gate: impl Into<String>, by: impl Into<String>, comment: impl Into<String>) -> Result<()> {
        self.send(RolloutCommand::Decide {
            gate: gate.into(),
            by: by.into(),
            comment: comment.into(),
            approved: true,
        })
    }

    /// Reject the manual gate `gate` (bound to one step of it, as
    /// [`RolloutControl::approve`]): the rollout rolls back when it gets
    /// there.
    pub fn reject(&self, gate: impl Into<String>, by: impl Into<String>, reason: impl Into<String>) -> Result<()> {
        self.send(RolloutCommand::Decide {
            gate: gate.into(),
            by: by.into(),
            comment: reason.into(),
            approved: false,
        })
    }
}

/// A running rollout: control it (it dereferences to its
/// [`RolloutControl`]: `handle.approve(..)`, `handle.abort(..)`), watch its
/// events, await its [`Outcome`].
///
/// Dropping the handle does not stop the rollout.
///
/// Until its first [`RolloutHandle::events`] call, a handle keeps the
/// rollout's events for it (at most [`crate::EngineConfig::event_buffer`]); `wait`
/// and dropping the handle end that, so a rollout whose events nobody
/// asks for makes none. To start many rollouts and await them in turn,
/// keep `handle.wait()` (a future) rather than the handle: a handle
/// waiting its turn keeps its rollout's events.
#[derive(Debug)]
pub struct RolloutHandle {
    control: RolloutControl,
    events: Arc<EventHub>,
    /// Subscribed when the rollout started, for the first `events()` call.
    first: Mutex<Option<RolloutEvents>>,
    join: JoinHandle<Result<Outcome>>,
}

impl std::ops::Deref for RolloutHandle {
    type Target = RolloutControl;

    fn deref(&self) -> &RolloutControl {
        &self.control
    }
}

impl RolloutHandle {
    pub(crate) fn new(
        id: String,
        commands: CommandTx,
        events: Arc<EventHub>,
        first: RolloutEvents,
        join: JoinHandle<Result<Outcome>>,
    ) -> Self {
        RolloutHandle {
            control: RolloutControl::new(id, commands),
            events,
            first: Mutex::new(Some(first)),
            join,
        }
    }

    /// The rollout's controls, to hand to another task.
    pub fn control(&self) -> RolloutControl {
        self.control.clone()
    }

    /// The rollout's events. The first call sees every event from the start;
    /// later calls see events from the moment they subscribe.
    pub fn events(&self) -> RolloutEvents {
        let first = self.first.lock().unwrap_or_else(|p| p.into_inner()).take();
        first.unwrap_or_else(|| self.events.subscribe())
    }

    /// The command channel and the task, borrowed apart so one caller can
    /// forward commands while it awaits the outcome (see `crate::wave`).
    pub(crate) fn parts(&mut self) -> (&CommandTx, &mut JoinHandle<Result<Outcome>>) {
        (&self.control.commands, &mut self.join)
    }

    /// Wait for the outcome.
    ///
    /// The rollout stops keeping events for this handle when `wait` is
    /// called, not when its future is first polled: handles of many
    /// rollouts turned into futures as they start, and awaited one after
    /// another, keep no events while they wait their turn.
    ///
    /// # Errors
    /// When the engine could not drive the rollout to an end: the lease was
    /// lost or the state store failed. The record then stays running for
    /// [`crate::Relay::resume`].
    pub fn wait(self) -> impl Future<Output = Result<Outcome>> + Send + 'static {
        // Events nobody asked for are not kept (nor made) while the rollout
        // runs: the subscription taken at the start is dropped here, not
        // when the rollout ends (fields a `..` pattern leaves behind live
        // until the function returns).
        let RolloutHandle { join, first, .. } = self;
        drop(first);
        async move { joined(join.await) }
    }

    /// Stop driving the rollout in this process at once, without rolling
    /// back, as a crash or shutdown would. The record stays running and its
    /// lease expires (a lease [held](crate::StateStore::hold_lease) in
    /// process, as [`crate::MemoryStateStore`] holds them, is released at
    /// once), so another engine can [`crate::Relay::resume`] it.
    pub fn halt(self) {
        self.join.abort();
    }
}

/// A rollout task's result: a task that panicked or was cancelled is an
/// engine error.
pub(crate) fn joined(r: std::result::Result<Result<Outcome>, tokio::task::JoinError>) -> Result<Outcome> {
    match r {
        Ok(r) => r,
        Err(e) => Err(Error::provider(
            "engine",
            false,
            format!("rollout task ended abnormally: {e}"),
        )),
    }
}

impl IntoFuture for RolloutHandle {
    type Output = Result<Outcome>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Outcome>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.wait())
    }
}
