//! Deployment targets: what they can do, what they look like, and the
//! [`Target`] seam.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::release::{RevisionId, RevisionSpec};

/// How a target can split traffic between revisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// Traffic goes wherever the running replicas are; no control.
    None,
    /// All-or-nothing switch between revisions (a Service selector).
    Switch,
    /// Traffic follows the ratio of ready replicas; weights are approximate.
    ReplicaRatio,
    /// Exact weights (a load balancer's weighted target groups).
    Weighted,
}

/// What a target can do. Strategies check these when planning, so a plan that
/// the target cannot execute is refused before anything changes.
///
/// New capabilities may be added: build one with [`Capabilities::new`]
/// (fields added later get a default that asks nothing new of a target).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// How traffic can be split.
    pub routing: Routing,
    /// How many revisions may run side by side (2 for canary/blue-green).
    pub max_revisions: u32,
    /// Whether the target reports its changes ([`Target::changed`]): the
    /// engine then waits for readiness on the target's word and observes
    /// otherwise only once per
    /// [`EngineConfig::watch_resync`](crate::EngineConfig::watch_resync);
    /// when it does not, the engine polls [`Target::observe`] with backoff.
    #[serde(default)]
    pub watches: bool,
}

impl Capabilities {
    /// A target that splits traffic by `routing` and runs up to
    /// `max_revisions` revisions side by side (2 for canary and blue/green,
    /// 1 for a rolling update in place), and does not report its changes.
    ///
    /// ```
    /// # mod relay { pub use relay_core::*; }
    /// use relay::{Capabilities, Routing};
    /// let caps = Capabilities::new(Routing::Weighted, 2).watching(true);
    /// assert!(caps.can_route(25) && caps.watches);
    /// ```
    pub const fn new(routing: Routing, max_revisions: u32) -> Self {
        Capabilities {
            routing,
            max_revisions,
            watches: false,
        }
    }

    /// The same, reporting its changes or not ([`Capabilities::watches`]).
    pub const fn watching(mut self, watches: bool) -> Self {
        self.watches = watches;
        self
    }

    /// Whether the target can hold the candidate at `weight` percent.
    pub fn can_route(&self, weight: u8) -> bool {
        match self.routing {
            Routing::Weighted | Routing::ReplicaRatio => true,
            Routing::Switch => weight == 0 || weight == 100,
            Routing::None => weight == 100,
        }
    }
}

/// Which of a rollout's two revisions a step acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The revision serving before the rollout.
    Stable,
    /// The revision being rolled out.
    Candidate,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Stable => "stable",
            Role::Candidate => "candidate",
        })
    }
}

/// Traffic weights per revision, in whole percent, always summing to 100.
/// Revisions with weight 0 are not stored, so equal splits compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BTreeMap<RevisionId, u8>")]
pub struct TrafficSplit(BTreeMap<RevisionId, u8>);

/// Serialized as its map of weights (not through `serde(into)`, which
/// would copy the map first).
impl Serialize for TrafficSplit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl TrafficSplit {
    /// Build a split; the weights must sum to exactly 100.
    pub fn new(weights: BTreeMap<RevisionId, u8>) -> Result<Self> {
        let sum: u32 = weights.values().map(|w| u32::from(*w)).sum();
        if sum != 100 {
            return Err(Error::invalid(
                "traffic",
                format!("weights sum to {sum}, they must sum to 100"),
            ));
        }
        Ok(TrafficSplit(weights.into_iter().filter(|(_, w)| *w > 0).collect()))
    }

    /// All traffic to `rev`.
    pub fn all(rev: &RevisionId) -> Self {
        TrafficSplit(BTreeMap::from([(rev.clone(), 100)]))
    }

    /// `candidate_weight` percent to `candidate`, the rest to `stable`.
    /// Weights above 100 are an error.
    pub fn canary(stable: &RevisionId, candidate: &RevisionId, candidate_weight: u8) -> Result<Self> {
        let mut split = TrafficSplit::default();
        split.set_canary(stable, candidate, candidate_weight)?;
        Ok(split)
    }

    /// Make this split [`TrafficSplit::canary`]`(stable, candidate,
    /// candidate_weight)` in place, keeping the revision ids it already
    /// holds: a canary's steps re-weigh the same two revisions, and copy no
    /// id after the first. On error the split is unchanged.
    pub fn set_canary(&mut self, stable: &RevisionId, candidate: &RevisionId, candidate_weight: u8) -> Result<()> {
        if candidate_weight > 100 {
            return Err(Error::invalid(
                "traffic.weight",
                format!("{candidate_weight} is above 100"),
            ));
        }
        if stable == candidate {
            // One revision cannot take two shares; `new` says why.
            *self = TrafficSplit::new(BTreeMap::from([(candidate.clone(), candidate_weight)]))?;
            return Ok(());
        }
        // Two weights summing to 100 by construction; a zero is not stored.
        self.0.retain(|rev, _| rev == stable || rev == candidate);
        for (rev, w) in [(stable, 100 - candidate_weight), (candidate, candidate_weight)] {
            match (w, self.0.get_mut(rev)) {
                (0, _) => {
                    self.0.remove(rev);
                }
                (w, Some(stored)) => *stored = w,
                (w, None) => {
                    self.0.insert(rev.clone(), w);
                }
            }
        }
        Ok(())
    }

    /// The split that follows ready replicas (a target whose traffic goes to
    /// every ready replica alike): each revision's share of `ready`, in whole
    /// percent, the last one taking the rounding remainder. Revisions with no
    /// ready replica get nothing; with none ready at all the split is empty.
    pub fn by_replicas<'a>(ready: impl IntoIterator<Item = (&'a RevisionId, u32)>) -> Self {
        let ready: Vec<(&RevisionId, u32)> = ready.into_iter().filter(|(_, n)| *n > 0).collect();
        let total: u64 = ready.iter().map(|(_, n)| u64::from(*n)).sum();
        let mut weights = BTreeMap::new();
        let mut given = 0u64;
        for (i, (id, n)) in ready.iter().enumerate() {
            let w = if i + 1 == ready.len() {
                100 - given
            } else {
                u64::from(*n) * 100 / total
            };
            given += w;
            *weights.entry((*id).clone()).or_insert(0u8) += w as u8;
        }
        TrafficSplit(weights.into_iter().filter(|(_, w)| *w > 0).collect())
    }

    /// The weight of `rev` (0 when absent).
    pub fn weight(&self, rev: &RevisionId) -> u8 {
        self.0.get(rev).copied().unwrap_or(0)
    }

    /// The weights, by revision.
    pub fn weights(&self) -> &BTreeMap<RevisionId, u8> {
        &self.0
    }

    /// Whether no revision receives traffic (a target with nothing deployed).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<BTreeMap<RevisionId, u8>> for TrafficSplit {
    type Error = Error;
    fn try_from(m: BTreeMap<RevisionId, u8>) -> Result<Self> {
        if m.is_empty() {
            return Ok(TrafficSplit::default());
        }
        TrafficSplit::new(m)
    }
}

impl From<TrafficSplit> for BTreeMap<RevisionId, u8> {
    fn from(t: TrafficSplit) -> Self {
        t.0
    }
}

impl fmt::Display for TrafficSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(no traffic)");
        }
        for (i, (r, w)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}={w}%")?;
        }
        Ok(())
    }
}

/// One revision as the target reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionState {
    /// The revision.
    pub id: RevisionId,
    /// Replicas asked for.
    pub desired: u32,
    /// Replicas ready to serve.
    pub ready: u32,
    /// Replicas that failed to start or crashed.
    pub failed: u32,
    /// Why they failed, as the target can tell (a pod's `CrashLoopBackOff`
    /// with its restarts, a task's stopped reason): shown in the rollback
    /// cause and the audit. `None` when nothing failed or the target cannot
    /// say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// An autoscaler, not relay, sets how many replicas this revision runs
    /// (a Kubernetes Deployment a HorizontalPodAutoscaler scales): the
    /// target leaves its count alone when asked to scale it, and the engine
    /// judges it by the autoscaler's count, `desired`, never by the count a
    /// plan asked for (see [`RevisionState::ready_with`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub autoscaled: bool,
}

impl RevisionState {
    /// A revision asking for `desired` replicas of which `ready` serve,
    /// none failed, not autoscaled.
    pub fn new(id: RevisionId, desired: u32, ready: u32) -> Self {
        RevisionState {
            id,
            desired,
            ready,
            failed: 0,
            failure: None,
            autoscaled: false,
        }
    }

    /// Whether the revision serves at the strength of `replicas` replicas:
    /// that many ask to run and are ready; for an autoscaled revision, every
    /// replica its autoscaler asks for (at least one) is ready, whatever
    /// `replicas` is, as the autoscaler decides the count.
    pub fn ready_with(&self, replicas: u32) -> bool {
        if self.autoscaled {
            self.desired > 0 && self.ready >= self.desired
        } else {
            self.desired >= replicas && self.ready >= replicas
        }
    }
}

/// What a target looks like now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetState {
    /// The revision the target considers stable (promoted), if any.
    pub stable: Option<RevisionId>,
    /// Every revision present on the target.
    pub revisions: Vec<RevisionState>,
    /// The current traffic split.
    pub traffic: TrafficSplit,
}

impl TargetState {
    /// The state of `id`, if present.
    pub fn revision(&self, id: &RevisionId) -> Option<&RevisionState> {
        self.revisions.iter().find(|r| &r.id == id)
    }

    /// Ready replicas over all revisions.
    pub fn ready_total(&self) -> u32 {
        self.revisions.iter().map(|r| r.ready).sum()
    }
}

/// What a revision runs, as the target reports it (for drift detection):
/// the image reference, and the configuration and secret references relay
/// manages. A secret is written as its reference (`k8s://db#password`,
/// with `?version=` when the target records which version).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningRevision {
    /// The image, `repository@sha256:…` when pinned.
    pub image: String,
    /// Configuration values.
    pub config: BTreeMap<String, String>,
    /// Secret references by name.
    pub secrets: BTreeMap<String, String>,
}

/// A place where revisions run: an ECS service, a Kubernetes Deployment, a
/// simulated target.
///
/// # Contract
/// - Every mutation is idempotent and declarative: `scale(r, 3)` sets 3
///   replicas, `route` sets the whole split. Repeating a call that succeeded is
///   a no-op, so the engine may re-run a step after a crash.
/// - Mutations return once the target has *accepted* the change; readiness is
///   observed with [`Target::observe`].
/// - `route` of a split that sends traffic nowhere (an empty split) is
///   [`Error::InvalidSpec`] and changes nothing, as a load balancer refuses
///   a forward to no target group.
/// - `retire` of a revision that is absent succeeds; `retire` of a revision
///   that still receives traffic is [`Error::Conflict`] while another
///   revision runs that could take it. The one revision a target runs may
///   be retired with its traffic: that is how a failed first release is
///   rolled back to nothing deployed (there is nothing to route to).
///
/// # Errors
/// Transient failures (throttling, 5xx, timeouts) must be classified
/// retryable; everything else terminal. See [`Error::is_retryable`].
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Target: Send + Sync + fmt::Debug + 'static {
    /// A stable, human-readable name, used for leases and audit.
    fn name(&self) -> &str;
    /// What this target can do.
    fn capabilities(&self) -> Capabilities;
    /// The current state. Called when planning, after every mutation that
    /// must take effect (each readiness poll while replicas start), before
    /// each rollback action, and for drift reports; it must not change
    /// anything. The engine waits on it: a revision is ready once `ready`
    /// reaches the count asked for, and **any** `failed` replica rolls the
    /// rollout back at once (report only replicas that will not recover:
    /// a crash loop past its budget, a stopped task, not one still
    /// starting), with `failure` saying why.
    async fn observe(&self) -> Result<TargetState>;
    /// Create the candidate revision with `replicas` replicas, or set an
    /// existing one to that count (never add to it); returns once accepted.
    /// Called first in a rollout, and again on resume.
    async fn stage(&self, revision: &RevisionSpec, replicas: u32) -> Result<()>;
    /// Set the replica count of an existing revision (`NotFound` when it
    /// runs nowhere). Called by strategies between traffic steps, and by a
    /// rollback to bring the stable revision back to its size before any
    /// traffic moves to it.
    async fn scale(&self, revision: &RevisionId, replicas: u32) -> Result<()>;
    /// Set the whole traffic split to exactly these weights (never an empty
    /// split: see the contract above). Called for each traffic step, and by
    /// a rollback with all traffic on the stable revision.
    async fn route(&self, split: &TrafficSplit) -> Result<()>;
    /// Mark `revision` as the stable one: the revision a later rollback
    /// returns to. Called once the candidate has all traffic, and **also by
    /// every rollback with the stable revision it restores**, so promoting
    /// the revision that is already stable must succeed and change nothing.
    async fn promote(&self, revision: &RevisionId) -> Result<()>;
    /// Remove `revision` from the target (the last one, traffic and all,
    /// only when no other revision runs). Called for the old stable after a
    /// promotion and for the candidate after a rollback; an error after a
    /// promotion does not roll the promoted release back.
    async fn retire(&self, revision: &RevisionId) -> Result<()>;
    /// What `revision` runs now, read from the target (not from relay's
    /// records), or `None` when the target cannot say. Used to detect
    /// changes made behind relay's back.
    async fn describe(&self, revision: &RevisionId) -> Result<Option<RunningRevision>> {
        let _ = revision;
        Ok(None)
    }
    /// Returns once the target's state may differ from what the last
    /// [`Target::observe`] returned (a Kubernetes watch, for one), so that
    /// the engine observes again at once. Only called when
    /// [`Capabilities::watches`] is true. The engine drops the future when its own
    /// poll timer fires first, so an implementation need not time out; an
    /// error makes the engine poll for the rest of that wait. It must not
    /// return without cause: the engine observes each time it does. The
    /// default never returns.
    async fn changed(&self) -> Result<()> {
        std::future::pending().await
    }
    /// The shell commands a person would run to take `action` by hand on
    /// this target, its real names filled in (`kubectl …`, `aws …`), for
    /// runbooks ([`crate::runbook`]). `None` (the default) when the target
    /// cannot say. Never a credential in them.
    fn manual(&self, action: &crate::runbook::ManualAction) -> Option<Vec<String>> {
        let _ = action;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_always_sums_to_100() {
        let a = RevisionId::from("a");
        let b = RevisionId::from("b");
        let s = TrafficSplit::canary(&a, &b, 25).unwrap();
        assert_eq!(s.weight(&a), 75);
        assert_eq!(s.weight(&b), 25);
        assert_eq!(TrafficSplit::canary(&a, &b, 0).unwrap(), TrafficSplit::all(&a));
        assert!(TrafficSplit::canary(&a, &b, 101).is_err());
        assert_eq!(TrafficSplit::canary(&a, &b, 100).unwrap(), TrafficSplit::all(&b));
        assert!(TrafficSplit::canary(&a, &a, 25).is_err());
        assert_eq!(TrafficSplit::canary(&a, &a, 100).unwrap(), TrafficSplit::all(&a));
        let bad: Result<TrafficSplit, _> = serde_json::from_str(r#"{"a":50,"b":40}"#);
        assert!(bad.is_err());
        // Serialized as the map of weights, and read back the same.
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"a":75,"b":25}"#);
        assert_eq!(serde_json::from_str::<TrafficSplit>(&json).unwrap(), s);
    }

    #[test]
    fn a_split_set_in_place_is_the_canary_split() {
        let (a, b, c) = (RevisionId::from("a"), RevisionId::from("b"), RevisionId::from("c"));
        // From nothing, from another split, from one holding a third
        // revision, and through every weight in turn.
        let mut walked = TrafficSplit::default();
        for start in [
            TrafficSplit::default(),
            TrafficSplit::all(&c),
            TrafficSplit::canary(&a, &c, 40).unwrap(),
        ] {
            for w in (0..=100).chain([50, 0, 100, 7]) {
                let mut s = start.clone();
                s.set_canary(&a, &b, w).unwrap();
                walked.set_canary(&a, &b, w).unwrap();
                let want = TrafficSplit::canary(&a, &b, w).unwrap();
                assert_eq!((&s, &walked), (&want, &want), "weight {w} from {start:?}");
                assert_eq!((want.weight(&a), want.weight(&b), want.weight(&c)), (100 - w, w, 0));
            }
        }
        // An error leaves the split as it was.
        let before = walked.clone();
        assert!(walked.set_canary(&a, &b, 101).is_err());
        assert!(walked.set_canary(&a, &a, 25).is_err());
        assert_eq!(walked, before);
        walked.set_canary(&a, &a, 100).unwrap();
        assert_eq!(walked, TrafficSplit::all(&a));
    }

    #[test]
    fn a_split_by_replicas_follows_ready_counts_and_sums_to_100() {
        let a = RevisionId::from("a");
        let b = RevisionId::from("b");
        let s = TrafficSplit::by_replicas([(&a, 1), (&b, 2)]);
        assert_eq!((s.weight(&a), s.weight(&b)), (33, 67));
        assert_eq!(TrafficSplit::by_replicas([(&a, 0), (&b, 5)]), TrafficSplit::all(&b));
        assert!(TrafficSplit::by_replicas([(&a, 0)]).is_empty());
    }

    #[test]
    fn capabilities_gate_weights() {
        let sw = Capabilities::new(Routing::Switch, 2);
        assert!(sw.can_route(100) && sw.can_route(0) && !sw.can_route(10));
        let w = Capabilities::new(Routing::Weighted, 2);
        assert!(w.can_route(10));
    }
}
