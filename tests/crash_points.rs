//! Crash points (issue 8): every point where the engine persists state
//! (record writes, audit appends) or calls a provider (target, probe) is
//! numbered in a reference run. For each point, a fresh world runs the same
//! rollout and the engine is killed just before the call and, in another
//! run, just after it returned (before the engine saw the result); a new
//! engine then resumes from the state store once the dead one's lease has
//! expired. Every run must reach the reference's terminal state, with the
//! target as the reference leaves it, the same number of changes to the
//! target (a step re-run after a resume is idempotent and changes nothing,
//! so any extra change is a mutation applied twice), and an intact audit
//! chain. Covered points are counted against the reference run's total.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use relay::providers::sim::SimProbe;
use relay::{
    audit::{AuditEntry, AuditEvent, ChainHead},
    clock::{TokioClock, UnixMillis},
    AuditSink, Capabilities, EventKind, HealthProbe, Lease, MemoryAuditSink, MemoryStateStore, Outcome, ProbeQuery,
    Relay, RevisionId, RevisionSpec, RolloutRecord, RolloutSpec, RolloutStatus, RunningRevision, Sample, StateStore,
    Target, TargetState, TrafficSplit,
};
use tokio::sync::Notify;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    Before,
    After,
}

/// Numbers the crash points and stops the engine at the armed one: the call
/// that reaches it never returns, and the test kills the engine.
#[derive(Debug, Default)]
struct Trap {
    count: AtomicU64,
    armed: Mutex<Option<(u64, When)>>,
    names: Mutex<Vec<String>>,
    hit: Notify,
}

impl Trap {
    fn armed(k: u64, when: When) -> Arc<Self> {
        let t = Trap::default();
        *t.armed.lock().unwrap() = Some((k, when));
        Arc::new(t)
    }

    /// Point `name`: numbered before the call; the same number after it.
    async fn point(&self, name: &str, when: When, n: Option<u64>) -> u64 {
        let n = n.unwrap_or_else(|| {
            self.names.lock().unwrap().push(name.to_owned());
            self.count.fetch_add(1, Ordering::SeqCst) + 1
        });
        let armed = *self.armed.lock().unwrap();
        if armed == Some((n, when)) {
            self.hit.notify_one();
            std::future::pending::<()>().await;
        }
        n
    }

    /// Run `call` between its two points.
    async fn around<T>(&self, name: &str, call: impl std::future::Future<Output = T>) -> T {
        let n = self.point(name, When::Before, None).await;
        let r = call.await;
        self.point(name, When::After, Some(n)).await;
        r
    }
}

#[derive(Debug)]
struct TrapTarget {
    inner: Arc<dyn Target>,
    trap: Arc<Trap>,
}

#[async_trait]
impl Target for TrapTarget {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn observe(&self) -> relay::Result<TargetState> {
        self.trap.around("target.observe", self.inner.observe()).await
    }
    async fn stage(&self, revision: &RevisionSpec, replicas: u32) -> relay::Result<()> {
        self.trap
            .around("target.stage", self.inner.stage(revision, replicas))
            .await
    }
    async fn scale(&self, revision: &RevisionId, replicas: u32) -> relay::Result<()> {
        self.trap
            .around("target.scale", self.inner.scale(revision, replicas))
            .await
    }
    async fn route(&self, split: &TrafficSplit) -> relay::Result<()> {
        self.trap.around("target.route", self.inner.route(split)).await
    }
    async fn promote(&self, revision: &RevisionId) -> relay::Result<()> {
        self.trap.around("target.promote", self.inner.promote(revision)).await
    }
    async fn retire(&self, revision: &RevisionId) -> relay::Result<()> {
        self.trap.around("target.retire", self.inner.retire(revision)).await
    }
    async fn describe(&self, revision: &RevisionId) -> relay::Result<Option<RunningRevision>> {
        self.inner.describe(revision).await
    }
}

#[derive(Debug)]
struct TrapProbe {
    inner: Arc<dyn HealthProbe>,
    trap: Arc<Trap>,
}

#[async_trait]
impl HealthProbe for TrapProbe {
    async fn sample(&self, query: &ProbeQuery) -> relay::Result<Sample> {
        self.trap.around("probe.sample", self.inner.sample(query)).await
    }
}

#[derive(Debug)]
struct TrapState {
    inner: Arc<MemoryStateStore>,
    trap: Arc<Trap>,
}

#[async_trait]
impl StateStore for TrapState {
    async fn get(&self, id: &str) -> relay::Result<Option<RolloutRecord>> {
        self.inner.get(id).await
    }
    async fn put(&self, record: &RolloutRecord, expected_version: Option<u64>) -> relay::Result<u64> {
        self.trap
            .around("state.put", self.inner.put(record, expected_version))
            .await
    }
    async fn list_active(&self) -> relay::Result<Vec<RolloutRecord>> {
        self.inner.list_active().await
    }
    async fn list_target(&self, target: &str) -> relay::Result<Vec<RolloutRecord>> {
        self.inner.list_target(target).await
    }
    async fn acquire_lease(
        &self,
        target: &str,
        holder: &str,
        ttl: Duration,
        now_ms: UnixMillis,
    ) -> relay::Result<Lease> {
        self.inner.acquire_lease(target, holder, ttl, now_ms).await
    }
    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now_ms: UnixMillis) -> relay::Result<Lease> {
        self.inner.renew_lease(lease, ttl, now_ms).await
    }
    async fn release_lease(&self, lease: &Lease) -> relay::Result<()> {
        self.inner.release_lease(lease).await
    }
}

#[derive(Debug)]
struct TrapAudit {
    inner: Arc<MemoryAuditSink>,
    trap: Arc<Trap>,
}

#[async_trait]
impl AuditSink for TrapAudit {
    async fn append(&self, event: &AuditEvent) -> relay::Result<ChainHead> {
        self.trap.around("audit.append", self.inner.append(event)).await
    }
    async fn entries(&self) -> relay::Result<Vec<AuditEntry>> {
        self.inner.entries().await
    }
    async fn verify(&self) -> relay::Result<u64> {
        self.inner.verify().await
    }
}

/// One world: the simulated target (v1 stable) and the stores both engines
/// share.
struct Run {
    world: World,
    state: Arc<MemoryStateStore>,
    audit: Arc<MemoryAuditSink>,
    clock: Arc<TokioClock>,
}

impl Run {
    async fn new(seed: u64) -> Self {
        let run = Run {
            world: World::new(seed),
            state: Arc::new(MemoryStateStore::new()),
            audit: Arc::new(MemoryAuditSink::new()),
            clock: Arc::new(TokioClock::starting_at(1_000_000)),
        };
        deploy_v1(&run.engine("setup", None)).await;
        run
    }

    /// An engine on the shared stores; with `trap`, every crash point goes
    /// through it.
    fn engine(&self, holder: &str, trap: Option<&Arc<Trap>>) -> Relay {
        let b = self.world.stores().clock(self.clock.clone()).holder(holder);
        let b = match trap {
            None => b
                .target(self.world.target.clone())
                .probe(Arc::new(SimProbe::new(self.world.target.clone())))
                .state(self.state.clone())
                .audit(self.audit.clone()),
            Some(t) => b
                .target(Arc::new(TrapTarget {
                    inner: self.world.target.clone(),
                    trap: t.clone(),
                }))
                .probe(Arc::new(TrapProbe {
                    inner: Arc::new(SimProbe::new(self.world.target.clone())),
                    trap: t.clone(),
                }))
                .state(Arc::new(TrapState {
                    inner: self.state.clone(),
                    trap: t.clone(),
                }))
                .audit(Arc::new(TrapAudit {
                    inner: self.audit.clone(),
                    trap: t.clone(),
                })),
        };
        b.build().unwrap()
    }
}

/// How a run ended.
#[derive(Debug)]
struct End {
    outcome: Outcome,
    mutations: u64,
    stable: Option<RevisionId>,
    revisions: usize,
    ready: u32,
}

const ID: &str = "crash-test";

/// Run `tag` with the canary; with `crash`, kill the engine at that point
/// and finish with a second engine. `None` as the result: the rollout ended
/// before reaching the point (it is past the last one).
async fn run(seed: u64, tag: &str, crash: Option<(u64, When)>) -> Option<(End, Vec<String>)> {
    let w = Run::new(seed).await;
    let before = w.world.target.mutations();
    let trap = match crash {
        Some((k, when)) => Trap::armed(k, when),
        None => Arc::new(Trap::default()),
    };
    let a = w.engine("engine-a", Some(&trap));
    let spec = RolloutSpec::new("web", release(tag), canary()).id(ID);
    let start = tokio::spawn(async move { a.start(spec).await });
    tokio::pin!(start);
    let crashed_in_start;
    let handle = tokio::select! {
        // A `start` that returned spawned the rollout, which may already
        // have reached the point: take its handle first.
        biased;
        h = &mut start => {
            crashed_in_start = false;
            Some(h.unwrap().unwrap())
        }
        _ = trap.hit.notified() => {
            // Killed inside `start` (planning, the first record, its audit):
            // the rollout task was never spawned.
            start.abort();
            crashed_in_start = true;
            None
        }
    };
    let b = w.engine("engine-b", None);
    let outcome = match handle {
        None => None,
        Some(handle) => {
            let mut events = handle.events();
            let finished = async {
                while let Some(e) = events.next().await {
                    if matches!(e.kind, EventKind::Finished { .. }) {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = trap.hit.notified() => {
                    handle.halt();
                    None
                }
                () = finished => Some(handle.wait().await.unwrap()),
            }
        }
    };
    let outcome = match (outcome, crash) {
        (Some(o), Some(_)) if !crashed_in_start => {
            // The armed point was never reached.
            let _ = o;
            return None;
        }
        (Some(o), _) => o,
        (None, _) => {
            // The dead engine's lease must expire before another may act.
            tokio::time::sleep(Duration::from_secs(31)).await;
            match w.state.get(ID).await.unwrap() {
                Some(r) if !r.status.is_terminal() => b.resume(ID).await.unwrap().wait().await.unwrap(),
                // Killed after the terminal record was written: the end is
                // in the store.
                Some(r) => match r.status {
                    RolloutStatus::Finished(outcome) => outcome,
                    other => panic!("{other:?}"),
                },
                // Killed before the first record: start again.
                None => b
                    .start(RolloutSpec::new("web", release(tag), canary()).id(ID))
                    .await
                    .unwrap()
                    .wait()
                    .await
                    .unwrap(),
            }
        }
    };
    let record = w.state.get(ID).await.unwrap().unwrap();
    assert!(record.status.is_terminal(), "{:?}", record.status);
    w.audit.verify().await.unwrap();
    // The end is audited, whatever the engine died at.
    let entries = w.audit.entries().await.unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.event.rollout == ID && e.event.action == "rollout.finished"),
        "no rollout.finished entry"
    );
    let s = w.world.target.observe().await.unwrap();
    let names = trap.names.lock().unwrap().clone();
    Some((
        End {
            outcome,
            mutations: w.world.target.mutations() - before,
            stable: s.stable.clone(),
            revisions: s.revisions.len(),
            ready: s.ready_total(),
        },
        names,
    ))
}

/// Crash at every point of `tag`'s rollout, before and after; returns
/// (points covered, points in the reference run).
async fn every_point(seed: u64, tag: &str, expect: impl Fn(&Outcome) -> bool) -> (u64, u64) {
    let (reference, names) = run(seed, tag, None).await.unwrap();
    assert!(expect(&reference.outcome), "reference: {}", reference.outcome);
    let total = names.len() as u64;
    let mut covered = 0;
    for k in 1..=total {
        for when in [When::Before, When::After] {
            let Some((end, _)) = run(seed, tag, Some((k, when))).await else {
                panic!("point {k} ({}) {when:?} was not reached", names[k as usize - 1]);
            };
            let at = format!("killed {when:?} point {k} ({})", names[k as usize - 1]);
            assert!(expect(&end.outcome), "{at}: {}", end.outcome);
            assert_eq!(end.stable, reference.stable, "{at}");
            assert_eq!(
                (end.revisions, end.ready),
                (reference.revisions, reference.ready),
                "{at}"
            );
            assert_eq!(
                end.mutations, reference.mutations,
                "{at}: the target changed {} times, the uninterrupted run {} times",
                end.mutations, reference.mutations
            );
        }
        covered += 1;
    }
    (covered, total)
}

#[tokio::test(start_paused = true)]
async fn a_promotion_survives_a_crash_at_every_point() {
    let (covered, total) = every_point(7, "v2", |o| matches!(o, Outcome::Promoted { .. })).await;
    eprintln!("crash points, promoted canary: {covered}/{total} covered, each killed before and after");
    assert_eq!(covered, total);
}

#[tokio::test(start_paused = true)]
async fn a_rollback_survives_a_crash_at_every_point() {
    let (covered, total) = every_point(8, "v3", |o| matches!(o, Outcome::RolledBack { .. })).await;
    eprintln!("crash points, rolled-back canary: {covered}/{total} covered, each killed before and after");
    assert_eq!(covered, total);
}
