//! The simulated deployment target.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use relay_core::rng::{Binomial, Draw};
use relay_core::{
    rng::SeededRng, Capabilities, Counts, Digest, Error, Result, RevisionId, RevisionSpec, RevisionState, Routing,
    RunningRevision, Sample, Scope, Target, TargetState, TrafficSplit,
};
use tokio::time::Instant;

use super::metrics;

/// How a simulated revision behaves, chosen by its artifact digest.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionBehavior {
    /// Fraction of requests that fail (0.0 to 1.0).
    pub error_rate: f64,
    /// Median latency in milliseconds.
    pub latency_ms: f64,
    /// Spread of latency (sigma of a log-normal distribution).
    pub latency_spread: f64,
    /// Time from scale-up until a replica is ready.
    pub readiness_delay: Duration,
    /// Replicas crash instead of becoming ready.
    pub crash_on_start: bool,
}

impl Default for RevisionBehavior {
    fn default() -> Self {
        RevisionBehavior {
            error_rate: 0.001,
            latency_ms: 40.0,
            latency_spread: 0.2,
            readiness_delay: Duration::from_secs(5),
            crash_on_start: false,
        }
    }
}

impl RevisionBehavior {
    /// A healthy revision (0.1% errors, 40 ms).
    pub fn healthy() -> Self {
        Self::default()
    }

    /// A revision failing `rate` of requests.
    pub fn failing(rate: f64) -> Self {
        RevisionBehavior {
            error_rate: rate,
            ..Self::default()
        }
    }

    /// A revision whose replicas crash on start.
    pub fn crashing() -> Self {
        RevisionBehavior {
            crash_on_start: true,
            ..Self::default()
        }
    }
}

/// How many traffic splits [`SimTarget::traffic_history`] keeps at least.
const HISTORY_LIMIT: usize = 4096;

fn push_history(history: &mut Vec<TrafficSplit>, split: TrafficSplit) {
    history.push(split);
    // Trimmed in chunks, so a full history costs one shift per 4,096 pushes.
    if history.len() >= 2 * HISTORY_LIMIT {
        history.drain(..history.len() - HISTORY_LIMIT);
    }
}

#[derive(Debug)]
struct SimRevision {
    /// What it runs, as `describe` reports it.
    running: RunningRevision,
    desired: u32,
    /// When each replica becomes ready (or crashes); one per desired replica.
    up_at: Vec<Instant>,
    /// The artifact it runs, which picks its behaviour.
    digest: Digest,
    behavior: RevisionBehavior,
}

impl SimRevision {
    fn started(&self, now: Instant) -> u32 {
        self.up_at.iter().filter(|t| **t <= now).count() as u32
    }
    fn ready(&self, now: Instant) -> u32 {
        if self.behavior.crash_on_start {
            0
        } else {
            self.started(now)
        }
    }
    fn failed(&self, now: Instant) -> u32 {
        if self.behavior.crash_on_start {
            self.started(now)
        } else {
            0
        }
    }
}

#[derive(Debug, Default)]
struct State {
    revisions: BTreeMap<RevisionId, SimRevision>,
    /// In-place mode: revisions replaced by a newer one, with the replica
    /// count they ran at, so routing back to one restarts it.
    replaced: BTreeMap<RevisionId, SimRevision>,
    traffic: TrafficSplit,
    stable: Option<RevisionId>,
    history: Vec<TrafficSplit>,
    mutations: u64,
    /// The count an autoscaler keeps the stable revision at, if one does.
    autoscaler: Option<u32>,
}

/// A simulated deployment target.
///
/// Replicas become ready after their revision's readiness delay (or crash),
/// traffic follows the weights set with `route` (or the ready-replica ratio
/// under [`Routing::ReplicaRatio`]), and [`SimTarget::measure`] serves
/// synthetic requests from a seeded generator. Behaviour is chosen per
/// artifact digest with [`SimTarget::behavior`].
///
/// ```
/// # mod relay { pub use relay_core::*; pub mod providers { pub use relay_providers::*; } }
/// use relay::providers::sim::{RevisionBehavior, SimTarget};
/// let target = SimTarget::new("web").seed(7).default_behavior(RevisionBehavior::healthy());
/// assert_eq!(relay::Target::name(&target), "web");
/// ```
#[derive(Debug)]
pub struct SimTarget {
    name: String,
    capabilities: Capabilities,
    rng: SeededRng,
    requests_per_second: f64,
    default_behavior: RevisionBehavior,
    behaviors: Mutex<BTreeMap<Digest, RevisionBehavior>>,
    state: Mutex<State>,
    in_place: bool,
}

impl SimTarget {
    /// A target named `name` with weighted routing, two revisions side by
    /// side, seed 0 and 100 requests per second.
    pub fn new(name: impl Into<String>) -> Self {
        SimTarget {
            name: name.into(),
            capabilities: Capabilities::new(Routing::Weighted, 2),
            rng: SeededRng::new(0),
            requests_per_second: 100.0,
            default_behavior: RevisionBehavior::default(),
            behaviors: Mutex::new(BTreeMap::new()),
            state: Mutex::new(State::default()),
            in_place: false,
        }
    }

    /// Model a target that runs one revision and replaces it in place, as an
    /// ECS service on its own deployment controller does: staging a new
    /// revision stops the old one's replicas, routing all traffic back to a
    /// replaced revision restarts it at the size it ran, and traffic always
    /// follows the one running revision. Capabilities: no traffic control,
    /// one revision.
    pub fn replace_in_place(mut self) -> Self {
        self.in_place = true;
        self.capabilities = Capabilities::new(Routing::None, 1).watching(self.capabilities.watches);
        self
    }

    /// Model a target that reports its changes, as a Kubernetes one
    /// watching its Deployments does ([`Capabilities::watches`]): the engine then
    /// observes when a replica comes up rather than on a poll timer. Changes
    /// made with [`SimTarget::behavior`] or
    /// [`SimTarget::edit_behind_relays_back`] are not reported (the engine's
    /// safety poll sees them).
    pub fn watching(mut self) -> Self {
        self.capabilities.watches = true;
        self
    }

    /// Seed the traffic generator.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = SeededRng::new(seed);
        self
    }

    /// How traffic can be split.
    pub fn routing(mut self, routing: Routing) -> Self {
        self.capabilities.routing = routing;
        self
    }

    /// How many revisions may run side by side.
    pub fn max_revisions(mut self, n: u32) -> Self {
        self.capabilities.max_revisions = n;
        self
    }

    /// Requests per second the target serves in all.
    pub fn requests_per_second(mut self, rps: f64) -> Self {
        self.requests_per_second = rps.max(0.0);
        self
    }

    /// Behaviour of revisions whose digest has none set.
    pub fn default_behavior(mut self, b: RevisionBehavior) -> Self {
        self.default_behavior = b;
        self
    }

    /// Set the behaviour of revisions built from `digest`, including
    /// revisions already running, from now on: a test injects a failure at a
    /// known (virtual) instant this way.
    pub fn behavior(&self, digest: &Digest, b: RevisionBehavior) -> &Self {
        let mut st = lock(&self.state);
        let State {
            revisions, replaced, ..
        } = &mut *st;
        for r in revisions.values_mut().chain(replaced.values_mut()) {
            if r.digest == *digest {
                r.behavior = b.clone();
            }
        }
        lock(&self.behaviors).insert(digest.clone(), b);
        self
    }

    /// Change what `revision` runs without relay (as an operator editing the
    /// live service would), so tests can check drift detection. Returns
    /// whether the revision exists.
    pub fn edit_behind_relays_back(&self, revision: &RevisionId, edit: impl FnOnce(&mut RunningRevision)) -> bool {
        match lock(&self.state).revisions.get_mut(revision) {
            Some(r) => {
                edit(&mut r.running);
                true
            }
            None => false,
        }
    }

    /// Let an autoscaler size the stable revision, as a
    /// HorizontalPodAutoscaler sizes a Deployment: from now on the stable
    /// revision (and each revision promoted after it) runs `replicas`,
    /// whatever relay asks, `scale` of it changes nothing, and `observe`
    /// reports it [`autoscaled`](relay_core::RevisionState::autoscaled).
    /// `None` hands the count back to relay.
    pub fn autoscale(&self, replicas: Option<u32>) {
        let mut st = lock(&self.state);
        st.autoscaler = replicas;
        Self::apply_autoscaler(&mut st, Instant::now());
    }

    /// Size the stable revision as the autoscaler says, if one does.
    fn apply_autoscaler(st: &mut State, now: Instant) {
        let (Some(n), Some(stable)) = (st.autoscaler, st.stable.clone()) else {
            return;
        };
        if let Some(rev) = st.revisions.get_mut(&stable) {
            Self::set_replicas(rev, n, now);
        }
    }

    /// The traffic splits set so far, in order: at least the last 4,096 of
    /// them (older ones are dropped, so a long-lived target does not grow
    /// without bound).
    pub fn traffic_history(&self) -> Vec<TrafficSplit> {
        lock(&self.state).history.clone()
    }

    /// How many mutations (stage, scale, route, promote, retire) changed
    /// something.
    pub fn mutations(&self) -> u64 {
        lock(&self.state).mutations
    }

    /// The split requests follow now: the routed one, borrowed (a
    /// measurement reads it and copies nothing), or the ready replicas'
    /// ratio where the target cannot route.
    fn effective_split<'a>(&self, st: &'a State, now: Instant) -> Cow<'a, TrafficSplit> {
        if self.capabilities.routing != Routing::ReplicaRatio {
            return Cow::Borrowed(&st.traffic);
        }
        Cow::Owned(TrafficSplit::by_replicas(
            st.revisions.iter().map(|(id, r)| (id, r.ready(now))),
        ))
    }

    /// Serve the synthetic requests of `window` for `scope` and report
    /// `metric` per sample interval (one value per second, at most 60).
    /// A revision with no ready replica yields no data.
    pub fn measure(&self, metric: &str, scope: &Scope, window: Duration) -> Result<Sample> {
        if ![metrics::ERROR_RATE, metrics::LATENCY_MS, metrics::REQUESTS].contains(&metric) {
            return Err(Error::invalid(
                "analysis.checks.metric",
                format!("{metric:?} is not a simulated metric; use error_rate, latency_ms or requests"),
            ));
        }
        let buckets = window.as_secs().clamp(1, MAX_BUCKETS as u64);
        let bucket_secs = window.as_secs_f64() / buckets as f64;
        let now = Instant::now();
        let st = lock(&self.state);
        let split = self.effective_split(&st, now);
        // Revisions in scope with the requests each serves a bucket; preview
        // traffic of 1 rps reaches a ready revision without weight. Every
        // bucket of a member serves as many requests. Read where they are,
        // twice (the total first), rather than copied out: a scope is one
        // revision, or the few a target runs.
        let in_scope = match scope {
            Scope::Revision(want) => st.revisions.range(want..=want),
            Scope::Target => st.revisions.range::<RevisionId, _>(..),
        };
        let members = || {
            in_scope.clone().filter_map(|(id, r)| {
                let weight = split.weight(id);
                if (matches!(scope, Scope::Target) && weight == 0) || r.ready(now) == 0 {
                    return None;
                }
                let rps = if weight > 0 {
                    self.requests_per_second * f64::from(weight) / 100.0
                } else {
                    1.0
                };
                let n = (rps * bucket_secs).round() as u64;
                (n > 0).then_some((n, &r.behavior))
            })
        };
        // Every bucket serves the same requests: no member, no data point
        // (not a zero).
        let requests: u64 = members().map(|(n, _)| n).sum();
        let buckets = if requests == 0 { 0 } else { buckets as usize };
        // One batch of the seeded sequence for the whole window: the same
        // numbers as drawing each from the shared generator.
        let (values, failures) = self.rng.batch(|rng| {
            let (mut failures, mut latency) = ([0u64; MAX_BUCKETS], [0.0; MAX_BUCKETS]);
            let (failures, latency) = (
                &mut failures[..buckets],
                &mut latency[..if metric == metrics::LATENCY_MS { buckets } else { 0 }],
            );
            for (n, b) in members() {
                // A member's failure distribution, set up once for its buckets.
                Binomial::new(n, b.error_rate).add_each(rng, failures);
                for l in latency.iter_mut() {
                    *l += n as f64 * b.latency_ms * (b.latency_spread * rng.next_normal()).exp();
                }
            }
            let requests_f = requests as f64;
            let values: Vec<f64> = match metric {
                metrics::ERROR_RATE => failures.iter().map(|f| *f as f64 / requests_f).collect(),
                metrics::LATENCY_MS => latency.iter().map(|l| l / requests_f).collect(),
                _ => vec![requests as f64; buckets],
            };
            (values, failures.iter().sum::<u64>())
        });
        drop(st);
        let counts = Counts {
            failures,
            total: requests * buckets as u64,
        };
        Ok(Sample {
            values,
            // `sim:{name}/{metric}{{{scope}}}`, one allocation, no formatter.
            source: ["sim:", &self.name, "/", metric, "{", scope.as_str(), "}"].concat(),
            labels: BTreeMap::new(),
            counts: (metric == metrics::ERROR_RATE && counts.total > 0).then_some(counts),
        })
    }

    fn behavior_of(&self, digest: &Digest) -> RevisionBehavior {
        lock(&self.behaviors)
            .get(digest)
            .cloned()
            .unwrap_or_else(|| self.default_behavior.clone())
    }

    /// In-place mode: stop the running revision, remembering its size.
    fn replace_current(st: &mut State) {
        for (id, rev) in std::mem::take(&mut st.revisions) {
            st.replaced.insert(id, rev);
        }
    }

    /// In-place mode: all traffic goes to the running revision; naming a
    /// replaced one starts it again at its old size.
    fn route_in_place(&self, st: &mut State, split: &TrafficSplit) -> Result<()> {
        let Some((id, _)) = split.weights().iter().find(|(_, w)| **w == 100) else {
            return Err(Error::unsupported(format!(
                "target {} runs one revision at a time and cannot split traffic {split}",
                self.name
            )));
        };
        if st.revisions.contains_key(id) {
            return Ok(());
        }
        let old = st.replaced.remove(id).ok_or_else(|| missing(id))?;
        Self::replace_current(st);
        let mut rev = SimRevision {
            running: old.running,
            desired: 0,
            up_at: Vec::new(),
            digest: old.digest,
            behavior: old.behavior,
        };
        Self::set_replicas(&mut rev, old.desired, Instant::now());
        st.revisions.insert(id.clone(), rev);
        st.traffic = TrafficSplit::all(id);
        push_history(&mut st.history, st.traffic.clone());
        st.mutations += 1;
        Ok(())
    }

    fn set_replicas(rev: &mut SimRevision, replicas: u32, now: Instant) -> bool {
        let n = replicas as usize;
        if rev.up_at.len() == n {
            return false;
        }
        rev.up_at.truncate(n);
        while rev.up_at.len() < n {
            rev.up_at.push(now + rev.behavior.readiness_delay);
        }
        rev.desired = replicas;
        true
    }
}

/// Sample intervals a measurement reports at most (one a second of a
/// window of up to a minute).
const MAX_BUCKETS: usize = 60;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn missing(id: &RevisionId) -> Error {
    Error::NotFound {
        what: format!("revision {id} on the simulated target"),
    }
}

#[async_trait]
impl Target for SimTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    /// Sleeps until the next replica comes up (or crashes).
    async fn changed(&self) -> Result<()> {
        let now = Instant::now();
        let next = lock(&self.state)
            .revisions
            .values()
            .flat_map(|r| r.up_at.iter().copied())
            .filter(|t| *t > now)
            .min();
        match next {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
        Ok(())
    }

    async fn observe(&self) -> Result<TargetState> {
        let now = Instant::now();
        let st = lock(&self.state);
        Ok(TargetState {
            stable: st.stable.clone(),
            revisions: st
                .revisions
                .iter()
                .map(|(id, r)| {
                    let failed = r.failed(now);
                    RevisionState {
                        id: id.clone(),
                        desired: r.desired,
                        ready: r.ready(now),
                        failed,
                        failure: (failed > 0).then(|| "simulated replicas crash on start".to_owned()),
                        autoscaled: st.autoscaler.is_some() && st.stable.as_ref() == Some(id),
                    }
                })
                .collect(),
            traffic: self.effective_split(&st, now).into_owned(),
        })
    }

    async fn stage(&self, revision: &RevisionSpec, replicas: u32) -> Result<()> {
        let behavior = self.behavior_of(&revision.artifact.digest);
        let now = Instant::now();
        let mut st = lock(&self.state);
        if self.in_place && !st.revisions.contains_key(&revision.id) {
            Self::replace_current(&mut st);
            st.replaced.remove(&revision.id);
            st.traffic = TrafficSplit::all(&revision.id);
            push_history(&mut st.history, TrafficSplit::all(&revision.id));
        }
        if !st.revisions.contains_key(&revision.id) && st.revisions.len() as u32 >= self.capabilities.max_revisions {
            return Err(Error::Conflict {
                what: format!(
                    "target {} already runs {} revisions; retire one first",
                    self.name,
                    st.revisions.len()
                ),
            });
        }
        let rev = st.revisions.entry(revision.id.clone()).or_insert_with(|| SimRevision {
            running: RunningRevision {
                image: format!("{}@{}", revision.artifact.repository, revision.artifact.digest),
                config: revision.config.clone(),
                secrets: revision
                    .secrets
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_string()))
                    .collect(),
            },
            desired: 0,
            up_at: Vec::new(),
            digest: revision.artifact.digest.clone(),
            behavior,
        });
        if Self::set_replicas(rev, replicas, now) {
            st.mutations += 1;
        }
        Ok(())
    }

    async fn scale(&self, revision: &RevisionId, replicas: u32) -> Result<()> {
        let now = Instant::now();
        let mut st = lock(&self.state);
        if st.autoscaler.is_some() && st.stable.as_ref() == Some(revision) {
            // Its autoscaler decides its count.
            return if st.revisions.contains_key(revision) {
                Ok(())
            } else {
                Err(missing(revision))
            };
        }
        let rev = st.revisions.get_mut(revision).ok_or_else(|| missing(revision))?;
        if Self::set_replicas(rev, replicas, now) {
            st.mutations += 1;
        }
        Ok(())
    }

    async fn route(&self, split: &TrafficSplit) -> Result<()> {
        if split.is_empty() {
            // As ELBv2 refuses a forward to no target group: a caller that
            // means "nothing deployed" retires the last revision instead.
            return Err(Error::invalid(
                "traffic",
                format!(
                    "a split must send traffic somewhere; target {} was left as it is",
                    self.name
                ),
            ));
        }
        let mut st = lock(&self.state);
        if self.in_place {
            return self.route_in_place(&mut st, split);
        }
        if let Some(id) = split.weights().keys().find(|id| !st.revisions.contains_key(*id)) {
            return Err(missing(id));
        }
        let needs_switch = split.weights().values().any(|w| *w != 100);
        if needs_switch && matches!(self.capabilities.routing, Routing::Switch | Routing::None) {
            return Err(Error::unsupported(format!(
                "target {} cannot split traffic {split}",
                self.name
            )));
        }
        if &st.traffic != split {
            st.traffic = split.clone();
            push_history(&mut st.history, split.clone());
            st.mutations += 1;
        }
        Ok(())
    }

    async fn promote(&self, revision: &RevisionId) -> Result<()> {
        let mut st = lock(&self.state);
        if !st.revisions.contains_key(revision) && !st.replaced.contains_key(revision) {
            return Err(missing(revision));
        }
        if st.stable.as_ref() != Some(revision) {
            st.stable = Some(revision.clone());
            st.mutations += 1;
            // The autoscaler's target is the stable revision.
            Self::apply_autoscaler(&mut st, Instant::now());
        }
        Ok(())
    }

    async fn retire(&self, revision: &RevisionId) -> Result<()> {
        let mut st = lock(&self.state);
        if st.replaced.remove(revision).is_some() {
            st.mutations += 1;
        }
        if !st.revisions.contains_key(revision) {
            return Ok(());
        }
        // Traffic is routed away first while another revision could take
        // it; the only revision goes with its traffic (a first release
        // rolled back leaves nothing deployed).
        if st.traffic.weight(revision) > 0 && st.revisions.len() > 1 {
            return Err(Error::Conflict {
                what: format!(
                    "revision {revision} still receives {}% of traffic; route it away first",
                    st.traffic.weight(revision)
                ),
            });
        }
        st.revisions.remove(revision);
        if st.revisions.is_empty() && !st.traffic.is_empty() {
            st.traffic = TrafficSplit::default();
            push_history(&mut st.history, TrafficSplit::default());
        }
        if st.stable.as_ref() == Some(revision) {
            st.stable = None;
        }
        st.mutations += 1;
        Ok(())
    }

    async fn describe(&self, revision: &RevisionId) -> Result<Option<RunningRevision>> {
        Ok(lock(&self.state).revisions.get(revision).map(|r| r.running.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::Artifact;

    fn rev(content: &[u8]) -> RevisionSpec {
        let artifact = Artifact {
            repository: "app".into(),
            tag: None,
            digest: Digest::of(content),
            metadata: BTreeMap::new(),
        };
        RevisionSpec::new(artifact, BTreeMap::new(), BTreeMap::new())
    }

    #[tokio::test(start_paused = true)]
    async fn replicas_become_ready_after_the_readiness_delay() {
        let t = SimTarget::new("t");
        let a = rev(b"a");
        t.stage(&a, 3).await.unwrap();
        let s = t.observe().await.unwrap();
        assert_eq!(
            (s.revision(&a.id).unwrap().desired, s.revision(&a.id).unwrap().ready),
            (3, 0)
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(t.observe().await.unwrap().revision(&a.id).unwrap().ready, 3);
        assert_eq!(
            t.measure(
                metrics::ERROR_RATE,
                &Scope::Revision(a.id.clone()),
                Duration::from_secs(10)
            )
            .unwrap()
            .values
            .len(),
            10
        );
    }

    #[tokio::test(start_paused = true)]
    async fn crashing_revisions_report_failures_and_serve_nothing() {
        let t = SimTarget::new("t");
        let a = rev(b"a");
        t.behavior(&a.artifact.digest, RevisionBehavior::crashing());
        t.stage(&a, 2).await.unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        let s = t.observe().await.unwrap();
        assert_eq!(
            (s.revision(&a.id).unwrap().ready, s.revision(&a.id).unwrap().failed),
            (0, 2)
        );
        let sample = t
            .measure(
                metrics::ERROR_RATE,
                &Scope::Revision(a.id.clone()),
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(sample.values.is_empty(), "no ready replica, no data");
    }

    #[tokio::test(start_paused = true)]
    async fn replica_ratio_routing_follows_ready_replicas() {
        let t = SimTarget::new("t").routing(Routing::ReplicaRatio);
        let (a, b) = (rev(b"a"), rev(b"b"));
        t.stage(&a, 3).await.unwrap();
        t.stage(&b, 1).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let s = t.observe().await.unwrap();
        assert_eq!((s.traffic.weight(&a.id), s.traffic.weight(&b.id)), (75, 25));
        assert!(
            t.stage(&rev(b"c"), 1).await.is_err(),
            "a third revision exceeds max_revisions"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn measurements_reflect_the_revision_behaviour_and_the_seed() {
        let make = |seed| {
            let t = SimTarget::new("t").seed(seed);
            let (a, b) = (rev(b"a"), rev(b"b"));
            t.behavior(
                &b.artifact.digest,
                RevisionBehavior {
                    error_rate: 0.3,
                    latency_ms: 200.0,
                    ..RevisionBehavior::default()
                },
            );
            (t, a, b)
        };
        let (t, a, b) = make(1);
        t.stage(&a, 2).await.unwrap();
        t.stage(&b, 2).await.unwrap();
        t.route(&TrafficSplit::canary(&a.id, &b.id, 50).unwrap()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let w = Duration::from_secs(60);
        let good = t
            .measure(metrics::ERROR_RATE, &Scope::Revision(a.id.clone()), w)
            .unwrap();
        let bad = t
            .measure(metrics::ERROR_RATE, &Scope::Revision(b.id.clone()), w)
            .unwrap();
        assert!(mean(&good.values) < 0.01 && (mean(&bad.values) - 0.3).abs() < 0.03);
        let lat = t
            .measure(metrics::LATENCY_MS, &Scope::Revision(b.id.clone()), w)
            .unwrap();
        assert!((mean(&lat.values) - 200.0).abs() < 20.0);
        let all = t.measure(metrics::ERROR_RATE, &Scope::Target, w).unwrap();
        assert!((mean(&all.values) - 0.15).abs() < 0.03, "a 50/50 mix");
        assert_eq!(all.source, "sim:t/error_rate{target}");
        assert_eq!(lat.source, format!("sim:t/latency_ms{{{}}}", b.id));
        // The counts are the values' requests and failures: 50 requests a
        // second each at 50%, 100 over the target.
        for (sample, per_second) in [(&good, 50.0), (&bad, 50.0), (&all, 100.0)] {
            let counts = sample.counts.unwrap();
            let failures: f64 = sample.values.iter().map(|v| (v * per_second).round()).sum();
            assert_eq!(
                (counts.failures as f64, counts.total as f64),
                (failures, 60.0 * per_second)
            );
        }
        assert_eq!(lat.counts, None, "counts come with error rates");
        assert!(t.measure("nope", &Scope::Target, w).is_err());
        // Same seed, same numbers.
        let (t2, a2, b2) = make(1);
        t2.stage(&a2, 2).await.unwrap();
        t2.stage(&b2, 2).await.unwrap();
        t2.route(&TrafficSplit::canary(&a2.id, &b2.id, 50).unwrap())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            t2.measure(metrics::ERROR_RATE, &Scope::Revision(a2.id.clone()), w)
                .unwrap()
                .values,
            good.values
        );
    }
}
