//! Notifications: what a rollout tells the people around it — started, a
//! step done, paused for an approval, analysis failed, rolling back, rolled
//! back, promoted, failed — through [`Notifier`]s (a Slack incoming
//! webhook, a signed JSON webhook: `relay::providers::http`; or one of your
//! own).
//!
//! # Delivery
//! Never in the rollout's way: the engine hands each [`Notice`] to a queue
//! per notifier and goes on. A task per notifier sends them in order, each
//! attempt bounded by [`Delivery::timeout`], a retryable failure tried
//! again up to [`Delivery::attempts`] times with doubling waits; what still
//! fails is logged (`WARN`, with the notice's key, never its receiver's
//! address) and counted ([`crate::telemetry::NOTICES`]). A notifier that
//! is slow, failing or down delays only its own queue; when the queue is
//! full ([`Delivery::queue`]) a new notice for it is dropped, logged and
//! counted, and the rollout is not held.
//!
//! # Once per rollout, across resumes
//! Every notice has a key, unique in its rollout (`<rollout>/promoted`,
//! `<rollout>/step-3`); the engine records in the rollout's record the keys
//! it handed on ([`crate::RolloutRecord::notified`]), and an engine that
//! resumes the rollout (after a crash, on another host) sends none of them
//! again. A notice handed on just before a crash, before the record was
//! next written, may be sent again by the engine that resumes: with the
//! same key, which the webhooks send as `Idempotency-Key`, so a receiver can
//! drop the repeat.
//!
//! # Secrets
//! A notice holds names, revisions, step descriptions and causes, never a
//! configuration or secret value (relay's errors hold none). Notifiers keep
//! their addresses and keys in `SecretString`s and never show them.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::clock::UnixMillis;
use crate::error::{Error, Result};

/// What happened, as a notice tells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
#[non_exhaustive]
pub enum NoticeKind {
    /// The rollout started.
    Started {
        /// The strategy.
        strategy: String,
        /// The revision that serves now, if any.
        stable: Option<String>,
        /// Steps in the plan.
        steps: usize,
    },
    /// A step of the plan is done.
    Step {
        /// Its index (0-based).
        index: usize,
        /// Steps in the plan.
        steps: usize,
        /// What it did.
        description: String,
    },
    /// The rollout waits for a person: an approval gate, a pause until
    /// resumed, an inconclusive analysis held for a human.
    Paused {
        /// The step it waits at.
        step: usize,
        /// What holds it: `gate "<name>"`, `pause`, `analysis`.
        by: String,
        /// Why, in the holder's words.
        reason: String,
    },
    /// An analysis failed: the rollout rolls back.
    AnalysisFailed {
        /// The analysis step.
        step: usize,
        /// The verdict's reason.
        reason: String,
    },
    /// A rollback began.
    RollingBack {
        /// Why.
        cause: String,
    },
    /// The rollback finished: the stable revision serves.
    RolledBack {
        /// Why the rollout was rolled back.
        cause: String,
    },
    /// The candidate is the stable revision and takes all traffic.
    Promoted {
        /// The promoted revision.
        revision: String,
    },
    /// A human must look: the rollback failed, or the engine stopped
    /// driving the rollout on an error (it can be resumed).
    Failed {
        /// What failed.
        error: String,
        /// Whether the rollout is still running, for an engine to resume
        /// ([`crate::Relay::recover`]); else its rollback failed.
        resumable: bool,
    },
}

impl NoticeKind {
    /// Every kind's [`NoticeKind::name`].
    pub const NAMES: [&'static str; 8] = [
        "started",
        "step",
        "paused",
        "analysis_failed",
        "rolling_back",
        "rolled_back",
        "promoted",
        "failed",
    ];

    /// The kind's name, as serialized (`"notice"`): `started`, `step`,
    /// `paused`, `analysis_failed`, `rolling_back`, `rolled_back`,
    /// `promoted`, `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            NoticeKind::Started { .. } => "started",
            NoticeKind::Step { .. } => "step",
            NoticeKind::Paused { .. } => "paused",
            NoticeKind::AnalysisFailed { .. } => "analysis_failed",
            NoticeKind::RollingBack { .. } => "rolling_back",
            NoticeKind::RolledBack { .. } => "rolled_back",
            NoticeKind::Promoted { .. } => "promoted",
            NoticeKind::Failed { .. } => "failed",
        }
    }
}

/// One notice of a rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Unique among the rollout's notices, and the same when a resumed
    /// rollout's engine sends it again: `<rollout>/<what>`.
    pub key: String,
    /// The rollout.
    pub rollout: String,
    /// The target.
    pub target: String,
    /// The candidate revision.
    pub candidate: String,
    /// The candidate's artifact, pinned (`repository@digest`).
    pub artifact: String,
    /// When (unix milliseconds, engine clock).
    pub at_ms: UnixMillis,
    /// What happened.
    #[serde(flatten)]
    pub kind: NoticeKind,
}

impl Notice {
    /// One line for a chat message: the target, what happened, the
    /// rollout's id and what to do when a person must act.
    pub fn summary(&self) -> String {
        let (t, r, c) = (&self.target, &self.rollout, &self.candidate);
        match &self.kind {
            NoticeKind::Started {
                strategy,
                stable,
                steps,
            } => {
                let from = stable.as_deref().map(|s| format!(", replacing {s}")).unwrap_or_default();
                format!(
                    "{t}: rollout {r} started: {c} ({}) by {strategy}, {steps} steps{from}",
                    self.artifact
                )
            }
            NoticeKind::Step {
                index,
                steps,
                description,
            } => format!("{t}: rollout {r}: step {}/{steps} done: {description}", index + 1),
            NoticeKind::Paused { step, by, reason } => format!(
                "{t}: rollout {r} is waiting at step {} for {by}: {reason} (approve or resume it to go on, reject or abort it to roll back)",
                step + 1
            ),
            NoticeKind::AnalysisFailed { step, reason } => {
                format!("{t}: rollout {r}: analysis at step {} failed: {reason}", step + 1)
            }
            NoticeKind::RollingBack { cause } => format!("{t}: rollout {r} is rolling back {c}: {cause}"),
            NoticeKind::RolledBack { cause } => format!("{t}: rollout {r} rolled back {c}: {cause}"),
            NoticeKind::Promoted { revision } => {
                format!("{t}: rollout {r} promoted {revision} ({})", self.artifact)
            }
            NoticeKind::Failed { error, resumable: true } => format!(
                "{t}: rollout {r} STOPPED: {error}; it is still running, unattended: resume it (Relay::recover)"
            ),
            NoticeKind::Failed { error, resumable: false } => {
                format!("{t}: rollout {r} FAILED: {error}; a human must look at the target")
            }
        }
    }
}

/// Where notices go: a chat, a webhook, a pager.
///
/// # Contract
/// - [`Notifier::send`] makes one attempt; the engine bounds it in time and
///   retries it ([`Delivery`]): return a retryable error
///   ([`Error::is_retryable`]) for what may pass (a refused connection, a
///   5xx, a 429), a terminal one for what will not (a 4xx).
/// - A notice may arrive twice (see the module's documentation): send its
///   [`Notice::key`] where the receiver can see it.
/// - Never put an address, token or key in an error or in `Debug`.
#[async_trait]
pub trait Notifier: Send + Sync + fmt::Debug {
    /// The notifier's name, in logs and metrics.
    fn name(&self) -> &str;

    /// Whether to send notices of this kind (default: all).
    fn wants(&self, kind: &NoticeKind) -> bool {
        let _ = kind;
        true
    }

    /// Send one notice, once.
    async fn send(&self, notice: &Notice) -> Result<()>;
}

/// How notices reach one notifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Attempts per notice, the first included (at least 1).
    pub attempts: u32,
    /// The longest one attempt may take.
    pub timeout: Duration,
    /// The wait after the first failed attempt; it doubles after each.
    pub backoff: Duration,
    /// Notices waiting for the notifier, at most; one more is dropped.
    pub queue: usize,
}

impl Default for Delivery {
    /// 4 attempts of at most 10 s, 1 s then 2 s then 4 s apart; 256 waiting.
    fn default() -> Self {
        Delivery {
            attempts: 4,
            timeout: Duration::from_secs(10),
            backoff: Duration::from_secs(1),
            queue: 256,
        }
    }
}

/// A notifier that keeps what it is sent, for tests and simulations.
#[derive(Debug, Default, Clone)]
pub struct MemoryNotifier {
    sent: Arc<Mutex<Vec<Notice>>>,
}

impl MemoryNotifier {
    /// An empty one.
    pub fn new() -> Self {
        Self::default()
    }

    /// What it was sent, in order.
    pub fn notices(&self) -> Vec<Notice> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The kinds' names of what it was sent for `rollout`, in order.
    pub fn kinds(&self, rollout: &str) -> Vec<&'static str> {
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|n| n.rollout == rollout)
            .map(|n| n.kind.name())
            .collect()
    }
}

#[async_trait]
impl Notifier for MemoryNotifier {
    fn name(&self) -> &str {
        "memory"
    }

    async fn send(&self, notice: &Notice) -> Result<()> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).push(notice.clone());
        Ok(())
    }
}

/// One notifier's queue and the task that empties it, started with the
/// first notice (inside the runtime that drives the rollout), and again if
/// that runtime has gone.
struct Queue {
    notifier: Arc<dyn Notifier>,
    delivery: Delivery,
    tx: Mutex<Option<mpsc::Sender<Arc<Notice>>>>,
}

impl Queue {
    fn sender(&self) -> mpsc::Sender<Arc<Notice>> {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(sender) if !sender.is_closed() => sender.clone(),
            _ => {
                let (sender, rx) = mpsc::channel(self.delivery.queue);
                tokio::spawn(deliver(self.notifier.clone(), self.delivery.clone(), rx));
                *tx = Some(sender.clone());
                sender
            }
        }
    }
}

/// The engine's notifiers and their queues.
#[derive(Default)]
pub(crate) struct Notifications {
    queues: Vec<Queue>,
}

impl fmt::Debug for Notifications {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.queues.iter().map(|q| q.notifier.name()))
            .finish()
    }
}

impl Notifications {
    /// Notices also go to `notifier`, as `delivery` says.
    pub(crate) fn add(&mut self, notifier: Arc<dyn Notifier>, delivery: Delivery) -> Result<()> {
        if delivery.attempts == 0 {
            return Err(Error::invalid("delivery.attempts", "must be at least 1"));
        }
        if delivery.timeout.is_zero() {
            return Err(Error::invalid("delivery.timeout", "must be above zero"));
        }
        if delivery.queue == 0 {
            return Err(Error::invalid("delivery.queue", "must be at least 1"));
        }
        self.queues.push(Queue {
            notifier,
            delivery,
            tx: Mutex::new(None),
        });
        Ok(())
    }

    /// Whether any notifier listens.
    pub(crate) fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Hand `notice` to every notifier that wants it; never waits.
    pub(crate) fn send(&self, notice: Notice) {
        let notice = Arc::new(notice);
        for q in &self.queues {
            if !q.notifier.wants(&notice.kind) {
                continue;
            }
            if q.sender().try_send(notice.clone()).is_err() {
                let notifier = q.notifier.name();
                tracing::warn!(notifier, notice = %notice.key, "notice dropped: the notifier's queue is full");
                crate::telemetry::notice(notifier, "dropped");
            }
        }
    }
}

/// Send each notice `rx` yields to `notifier`, in order, as `delivery`
/// says; ends when the engine is dropped.
async fn deliver(notifier: Arc<dyn Notifier>, delivery: Delivery, mut rx: mpsc::Receiver<Arc<Notice>>) {
    let name = notifier.name().to_owned();
    while let Some(notice) = rx.recv().await {
        let mut wait = delivery.backoff;
        for attempt in 1..=delivery.attempts {
            let sent = match tokio::time::timeout(delivery.timeout, notifier.send(&notice)).await {
                Ok(sent) => sent,
                Err(_) => Err(Error::Timeout {
                    what: format!("notifier {name} (no answer within {:?})", delivery.timeout),
                }),
            };
            match sent {
                Ok(()) => {
                    crate::telemetry::notice(&name, "delivered");
                    break;
                }
                Err(e) if e.is_retryable() && attempt < delivery.attempts => {
                    tracing::debug!(notifier = %name, notice = %notice.key, attempt, error = %e, "notice not delivered; trying again");
                    tokio::time::sleep(wait).await;
                    wait = wait.saturating_mul(2);
                }
                Err(e) => {
                    tracing::warn!(notifier = %name, notice = %notice.key, attempt, error = %e, "notice not delivered");
                    crate::telemetry::notice(&name, "failed");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds every send until released, then keeps the notice.
    #[derive(Debug, Default)]
    struct Held {
        open: tokio::sync::Notify,
        kept: MemoryNotifier,
    }

    #[async_trait]
    impl Notifier for Held {
        fn name(&self) -> &str {
            "held"
        }
        async fn send(&self, notice: &Notice) -> Result<()> {
            self.open.notified().await;
            self.kept.send(notice).await
        }
    }

    fn notice(n: usize) -> Notice {
        Notice {
            key: format!("r/step-{n}"),
            rollout: "r".into(),
            target: "t".into(),
            candidate: "rev-1".into(),
            artifact: "a@sha256:00".into(),
            at_ms: 0,
            kind: NoticeKind::Step {
                index: n,
                steps: 5,
                description: String::new(),
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_drops_new_notices_without_waiting() {
        let held = Arc::new(Held::default());
        let mut notifications = Notifications::default();
        let delivery = Delivery {
            queue: 2,
            ..Delivery::default()
        };
        notifications.add(held.clone(), delivery).unwrap();
        // Handed on at once, none waiting for the held notifier: two fit.
        for n in 0..5 {
            notifications.send(notice(n));
        }
        for _ in 0..2 {
            tokio::task::yield_now().await;
            held.open.notify_one();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        let kept: Vec<String> = held.kept.notices().into_iter().map(|n| n.key).collect();
        assert_eq!(kept, ["r/step-0", "r/step-1"]);
    }

    #[test]
    fn every_kind_is_named_as_it_is_serialized() {
        let kinds = [
            NoticeKind::Started {
                strategy: "canary".into(),
                stable: None,
                steps: 3,
            },
            NoticeKind::Step {
                index: 0,
                steps: 3,
                description: "x".into(),
            },
            NoticeKind::Paused {
                step: 1,
                by: "pause".into(),
                reason: "r".into(),
            },
            NoticeKind::AnalysisFailed {
                step: 1,
                reason: "r".into(),
            },
            NoticeKind::RollingBack { cause: "c".into() },
            NoticeKind::RolledBack { cause: "c".into() },
            NoticeKind::Promoted { revision: "r".into() },
            NoticeKind::Failed {
                error: "e".into(),
                resumable: false,
            },
        ];
        let names: Vec<&str> = kinds.iter().map(NoticeKind::name).collect();
        assert_eq!(names, NoticeKind::NAMES);
        for kind in kinds {
            let json = serde_json::to_value(&kind).unwrap();
            assert_eq!(json["notice"], kind.name(), "{json}");
        }
    }
}
