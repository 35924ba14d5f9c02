//! Typed rollout events, streamed to [`crate::RolloutHandle::events`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use serde::{Deserialize, Serialize};
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

    /// The outcome's name, as it is serialized (`"outcome"`) and labels
    /// metrics: `promoted`, `rolled_back`, `rollback_failed`, `no_change`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Promoted { .. } => "promoted",
            Outcome::RolledBack { .. } => "rolled_back",
            Outcome::RollbackFailed { .. } => "rollback_failed",
            Outcome::NoChange => "no_change",
        }
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
        /// event, and every event kept for a subscriber takes as much room
        /// as the largest kind).
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
    /// The engine's authorizer refused an operator command: it had no
    /// effect.
    CommandRefused {
        /// The command (`abort`, `approve`, ...).
        command: String,
        /// Who gave it.
        by: String,
        /// Why it was refused.
        reason: String,
    },
    /// A step after promotion failed (retiring the old stable, say): the
    /// release stays promoted, and what the step left behind is for a
    /// human to remove.
    CleanupFailed {
        /// The step's index.
        index: usize,
        /// Why it failed.
        error: String,
    },
    /// A hook ran once ([`crate::hook`]).
    HookRan {
        /// The hook.
        hook: String,
        /// Where.
        at: crate::hook::HookPoint,
        /// Which attempt (1-based).
        attempt: u32,
        /// Whether it passed.
        passed: bool,
        /// Its word on how it went.
        message: String,
        /// Where its logs are.
        logs: Option<String>,
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

/// Where a rollout's events wait for their subscribers.
///
/// An event is kept only until every subscriber has taken it, and at most
/// `capacity` of them for the slowest one (older ones are dropped for it, as
/// a lagging subscriber skips). Nothing is allocated ahead: a rollout nobody
/// watches keeps no events at all, which is what lets ten thousand rollouts
/// share a process (a broadcast channel allocates all its slots up front).
#[derive(Debug)]
pub(crate) struct EventHub {
    state: Mutex<HubState>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct HubState {
    events: VecDeque<RolloutEvent>,
    /// Sequence number of `events[0]`.
    first: u64,
    /// Subscriber slots, reused after a subscriber is dropped.
    subscribers: Vec<Option<Subscriber>>,
    /// The rollout has ended: no event will follow.
    closed: bool,
}

#[derive(Debug)]
struct Subscriber {
    /// Sequence number of the next event this subscriber takes.
    next: u64,
    waker: Option<Waker>,
}

impl HubState {
    fn next_seq(&self) -> u64 {
        self.first + self.events.len() as u64
    }

    /// Drop the events every subscriber has taken.
    fn trim(&mut self) {
        let keep_from = self
            .subscribers
            .iter()
            .flatten()
            .map(|s| s.next)
            .min()
            .unwrap_or_else(|| self.next_seq());
        while self.first < keep_from && self.events.pop_front().is_some() {
            self.first += 1;
        }
    }

    fn wake_all(&mut self) {
        for s in self.subscribers.iter_mut().flatten() {
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }
}

impl EventHub {
    /// A hub keeping at most `capacity` events for its slowest subscriber.
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(EventHub {
            state: Mutex::new(HubState::default()),
            capacity: capacity.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A subscriber that sees the events sent from now on.
    pub(crate) fn subscribe(self: &Arc<Self>) -> RolloutEvents {
        let mut st = self.lock();
        let sub = Subscriber {
            next: st.next_seq(),
            waker: None,
        };
        let slot = match st.subscribers.iter().position(Option::is_none) {
            Some(i) => {
                st.subscribers[i] = Some(sub);
                i
            }
            None => {
                st.subscribers.push(Some(sub));
                st.subscribers.len() - 1
            }
        };
        RolloutEvents {
            hub: self.clone(),
            slot,
        }
    }

    /// Hand an event to the subscribers. With none, the event is not even
    /// made: `make` runs only for someone to take it.
    pub(crate) fn send(&self, make: impl FnOnce() -> RolloutEvent) {
        let mut st = self.lock();
        if st.subscribers.iter().all(Option::is_none) {
            st.first += 1;
            return;
        }
        st.events.push_back(make());
        if st.events.len() > self.capacity {
            st.events.pop_front();
            st.first += 1;
        }
        st.wake_all();
    }

    /// No event follows: subscribers end once they have taken the rest.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.wake_all();
    }
}

/// A stream of a rollout's events. A subscriber too slow to keep up skips the
/// events it missed rather than blocking the rollout.
#[derive(Debug)]
pub struct RolloutEvents {
    hub: Arc<EventHub>,
    slot: usize,
}

impl RolloutEvents {
    /// The next event, or `None` once the rollout has finished and every
    /// event was delivered.
    pub async fn next(&mut self) -> Option<RolloutEvent> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for RolloutEvents {
    type Item = RolloutEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RolloutEvent>> {
        let mut st = self.hub.lock();
        let first = st.first;
        let (len, closed) = (st.events.len() as u64, st.closed);
        let Some(Some(sub)) = st.subscribers.get_mut(self.slot) else {
            return Poll::Ready(None);
        };
        // Lagged: the events it missed were dropped; go on from the oldest.
        sub.next = sub.next.max(first);
        if sub.next >= first + len {
            if closed {
                return Poll::Ready(None);
            }
            sub.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let at = sub.next;
        sub.next += 1;
        let others_need_it = st
            .subscribers
            .iter()
            .enumerate()
            .any(|(i, s)| i != self.slot && s.as_ref().is_some_and(|s| s.next <= at));
        if at == first && !others_need_it {
            // The last subscriber to take the oldest event takes it away.
            st.first += 1;
            return Poll::Ready(st.events.pop_front());
        }
        let event = st.events[(at - first) as usize].clone();
        Poll::Ready(Some(event))
    }
}

impl Drop for RolloutEvents {
    fn drop(&mut self) {
        let mut st = self.hub.lock();
        if let Some(s) = st.subscribers.get_mut(self.slot) {
            *s = None;
        }
        st.trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn event(n: i64) -> RolloutEvent {
        RolloutEvent {
            rollout: "r".into(),
            at_ms: n,
            kind: EventKind::Paused { by: "t".into() },
        }
    }

    #[test]
    fn an_outcome_is_named_as_it_is_serialized() {
        let outcomes = [
            Outcome::Promoted { revision: "v2".into() },
            Outcome::RolledBack { cause: "c".into() },
            Outcome::RollbackFailed {
                cause: "c".into(),
                error: "e".into(),
            },
            Outcome::NoChange,
        ];
        for outcome in outcomes {
            let json = serde_json::to_value(&outcome).unwrap();
            assert_eq!(json["outcome"], outcome.name(), "{json}");
        }
    }

    fn kept(hub: &EventHub) -> usize {
        hub.lock().events.len()
    }

    async fn drain(mut events: RolloutEvents) -> Vec<i64> {
        let mut seen = Vec::new();
        while let Some(e) = events.next().await {
            seen.push(e.at_ms);
        }
        seen
    }

    #[tokio::test]
    async fn nothing_is_kept_without_a_subscriber_and_each_sees_what_follows_its_subscription() {
        let hub = EventHub::new(8);
        hub.send(|| event(0));
        assert_eq!(kept(&hub), 0, "no subscriber: the event is dropped");
        let early = hub.subscribe();
        hub.send(|| event(1));
        let late = hub.subscribe();
        hub.send(|| event(2));
        assert_eq!(kept(&hub), 2);
        hub.close();
        assert_eq!(drain(late).await, vec![2]);
        assert_eq!(kept(&hub), 2, "the early subscriber has not taken them yet");
        assert_eq!(drain(early).await, vec![1, 2]);
        assert_eq!(kept(&hub), 0, "taken by everyone: gone");
    }

    #[tokio::test]
    async fn a_slow_subscriber_skips_what_overflowed_and_a_dropped_one_frees_its_events() {
        let hub = EventHub::new(3);
        let slow = hub.subscribe();
        let mut quick = hub.subscribe();
        for n in 0..5 {
            hub.send(|| event(n));
            assert_eq!(quick.next().await.map(|e| e.at_ms), Some(n));
        }
        assert_eq!(kept(&hub), 3, "kept for the slow one, up to the capacity");
        drop(slow);
        assert_eq!(kept(&hub), 0);
        let slow = hub.subscribe();
        for n in 5..10 {
            hub.send(|| event(n));
        }
        drop(quick);
        hub.close();
        assert_eq!(drain(slow).await, vec![7, 8, 9], "the oldest two were dropped");
    }

    #[tokio::test]
    async fn a_waiting_subscriber_wakes_for_the_next_event_and_ends_on_close() {
        let hub = EventHub::new(4);
        let events = hub.subscribe();
        let reader = tokio::spawn(async move { events.map(|e| e.at_ms).collect::<Vec<_>>().await });
        tokio::task::yield_now().await;
        hub.send(|| event(7));
        tokio::task::yield_now().await;
        hub.send(|| event(8));
        hub.close();
        assert_eq!(reader.await.unwrap(), vec![7, 8]);
    }
}
