//! Typed rollout events, streamed to [`crate::RolloutHandle::events`].

use std::pin::Pin;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::Stream;

use crate::analysis::Verdict;
use crate::clock::UnixMillis;
use crate::target::Role;

/// How a rollout ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The candidate is the stable revision and takes all traffic.
    Promoted {
        /// The promoted revision.
        revision: String,
    },
    /// The candidate was removed and stable restored.
    RolledBack {
        /// Why.
        cause: String,
    },
    /// The rollback could not complete: a human must look.
    RollbackFailed {
        /// Why the rollout was rolled back.
        cause: String,
        /// Why the rollback failed.
        error: String,
    },
    /// The candidate was already stable; nothing changed.
    NoChange,
}

impl Outcome {
    /// Whether the release is now live (promoted or already live).
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Promoted { .. } | Outcome::NoChange)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Promoted { revision } => write!(f, "promoted {revision}"),
            Outcome::RolledBack { cause } => write!(f, "rolled back: {cause}"),
            Outcome::RollbackFailed { cause, error } => write!(f, "ROLLBACK FAILED ({error}) after: {cause}"),
            Outcome::NoChange => write!(f, "no change: already stable"),
        }
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The rollout started (or was resumed) in this process.
    Started {
        /// Target name.
        target: String,
        /// Strategy name.
        strategy: String,
        /// Candidate revision.
        candidate: String,
        /// Stable revision, if any.
        stable: Option<String>,
        /// Number of steps.
        steps: usize,
        /// Step the engine starts at (non-zero after a resume).
        cursor: usize,
    },
    /// A step began.
    StepStarted {
        /// Step index (0-based).
        index: usize,
        /// Step kind.
        kind: String,
        /// Readable description.
        description: String,
    },
    /// A step finished.
    StepCompleted {
        /// Step index.
        index: usize,
    },
    /// A revision's replica count was set.
    Scaled {
        /// Which revision.
        role: Role,
        /// Replicas.
        replicas: u32,
    },
    /// Traffic moved.
    TrafficShifted {
        /// Percent now on the candidate.
        candidate_weight: u8,
    },
    /// An analysis measurement was judged.
    Verdict {
        /// The verdict with its numbers (boxed: it is by far the largest
        /// event, and every slot of a rollout's event buffer is as large as
        /// the largest event).
        verdict: Box<Verdict>,
    },
    /// A gate is holding the rollout.
    GateWaiting {
        /// Gate name.
        gate: String,
        /// What it waits for.
        reason: String,
    },
    /// A gate let the rollout through.
    GatePassed {
        /// Gate name.
        gate: String,
        /// Who or what passed it.
        by: String,
    },
    /// A user paused the rollout.
    Paused {
        /// Who.
        by: String,
    },
    /// A user resumed the rollout.
    Unpaused {
        /// Who.
        by: String,
    },
    /// A user skipped the remaining steps.
    PromotedNow {
        /// Who.
        by: String,
    },
    /// A provider call failed and is retried.
    Retrying {
        /// The operation.
        operation: String,
        /// The attempt that failed (1-based).
        attempt: u32,
        /// The error (never a secret).
        error: String,
        /// Backoff before the next attempt, in milliseconds.
        backoff_ms: u64,
    },
    /// Rollback began.
    RollbackStarted {
        /// Why.
        cause: String,
    },
    /// The rollout ended.
    Finished {
        /// How.
        outcome: Outcome,
    },
}

/// One event of a rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutEvent {
    /// The rollout.
    pub rollout: String,
    /// When (unix milliseconds, engine clock).
    pub at_ms: UnixMillis,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// A stream of a rollout's events. A subscriber too slow to keep up skips the
/// events it missed rather than blocking the rollout.
#[derive(Debug)]
pub struct RolloutEvents {
    inner: BroadcastStream<RolloutEvent>,
}

impl RolloutEvents {
    pub(crate) fn new(rx: broadcast::Receiver<RolloutEvent>) -> Self {
        RolloutEvents {
            inner: BroadcastStream::new(rx),
        }
    }

    /// The next event, or `None` once the rollout has finished and every
    /// event was delivered.
    pub async fn next(&mut self) -> Option<RolloutEvent> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for RolloutEvents {
    type Item = RolloutEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RolloutEvent>> {
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(e))) => return Poll::Ready(Some(e)),
                // Lagged: some events were dropped for this subscriber; go on.
                Poll::Ready(Some(Err(_))) => continue,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
