//! Scenarios every store shared between processes must pass, run by the
//! PostgreSQL tests and the DynamoDB tests on their stores. Included with
//! `#[path]` beside `common`.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relay::providers::sim::{RevisionBehavior, SimTarget};
use relay::state::LeaseGrant;
use relay::strategies::CanaryStrategy;
use relay::{
    testing, AuditSink, Error, Lease, Outcome, RelayBuilder, RolloutCommand, RolloutSpec, RolloutStatus, StateStore,
};

use crate::common::{release, World};

/// A world whose simulated target's revisions are ready at once (the
/// engines here run in real time, against a real store).
pub fn ready_world() -> World {
    let ready = RevisionBehavior {
        readiness_delay: Duration::ZERO,
        ..RevisionBehavior::healthy()
    };
    World::with_target(SimTarget::new("web").default_behavior(ready))
}

/// A canary slow enough (two 2 s pauses) for something to happen in it.
pub fn slow_canary() -> CanaryStrategy {
    CanaryStrategy::new()
        .set_weight(25)
        .pause(Duration::from_secs(2))
        .set_weight(50)
        .pause(Duration::from_secs(2))
}

/// v1 deployed by `deployer`, then `driver`'s slow canary of v2 under way:
/// its handle, once a quarter of the traffic reached the candidate.
pub async fn canary_under_way(deployer: &relay::Relay, driver: &relay::Relay) -> relay::RolloutHandle {
    let v1 = deployer
        .start(RolloutSpec::new(
            "web",
            release("v1"),
            CanaryStrategy::new().set_weight(50),
        ))
        .await
        .unwrap();
    assert!(v1.wait().await.unwrap().is_success());
    let handle = driver
        .start(RolloutSpec::new("web", release("v2"), slow_canary()))
        .await
        .unwrap();
    let mut events = handle.events();
    crate::common::until(&mut events, |k| {
        matches!(k, relay::EventKind::TrafficShifted { candidate_weight: 25 })
    })
    .await;
    handle
}

/// An old holder's record write racing a takeover of its expired lease,
/// `rounds` times: whichever the store orders first, nothing the old holder
/// writes lands after the takeover. Returns each round's target and the
/// two leases, for the store's grant history to be checked.
pub async fn stale_holder_races(store: &dyn StateStore, rounds: i64) -> Vec<(String, Lease, Lease)> {
    let ttl = Duration::from_secs(10);
    let mut out = Vec::new();
    for round in 0..rounds {
        let target = format!("t{round}");
        let old = store.acquire_lease(&target, "old", ttl, round * 100_000).await.unwrap();
        let mut record = testing::sample_record(&format!("r{round}"), &target, old.token);
        let v = store.put(&record, None).await.unwrap();
        record.cursor = 1;
        let later = round * 100_000 + 20_000;
        let (write, takeover) = tokio::join!(
            store.put(&record, Some(v)),
            store.acquire_lease(&target, "new", ttl, later)
        );
        let new = takeover.unwrap();
        assert!(new.token > old.token);
        assert!(matches!(write, Ok(_) | Err(Error::LeaseLost { .. })), "{write:?}");
        let version = store.get(&record.id).await.unwrap().unwrap().version;
        record.cursor = 2;
        assert!(
            matches!(store.put(&record, Some(version)).await, Err(Error::LeaseLost { .. })),
            "after the takeover, the old holder can write nothing"
        );
        out.push((target, old, new));
    }
    out
}

/// Two engines on one store (`engine` builds each, given its holder name,
/// with the store and an audit sink on one chain): the other may not
/// start on the leased target, but approves, through the store, the gated
/// rollout the first drives; the record and the chain both wrote verify.
pub async fn two_engines_share(engine: impl Fn(&str) -> RelayBuilder) {
    let build = |holder: &str| {
        engine(holder)
            .gate(Arc::new(relay::ManualApproval::new("release-manager")))
            .holder(holder)
            .build()
            .unwrap()
    };
    let (a, b) = (build("engine-a"), build("engine-b"));
    let quick = || CanaryStrategy::new().set_weight(50);
    let first = a.start(RolloutSpec::new("web", release("v1"), quick())).await.unwrap();
    assert!(first.wait().await.unwrap().is_success());
    let gated = CanaryStrategy::new().set_weight(50).gate("release-manager");
    let handle = a.start(RolloutSpec::new("web", release("v2"), gated)).await.unwrap();
    let id = handle.id().to_string();
    assert!(matches!(
        b.start(RolloutSpec::new("web", release("v3"), quick())).await,
        Err(Error::TargetLocked { .. })
    ));
    b.command(
        &id,
        RolloutCommand::Decide {
            gate: "release-manager".into(),
            by: "ops".into(),
            comment: "from the other engine".into(),
            approved: true,
        },
    )
    .await
    .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), handle.wait())
        .await
        .expect("the approval reaches the driving engine")
        .unwrap();
    assert!(matches!(outcome, Outcome::Promoted { .. }), "{outcome}");
    let record = b.state().get(&id).await.unwrap().unwrap();
    assert_eq!(record.status, RolloutStatus::Finished(outcome));
    assert!(b.state().list_active().await.unwrap().is_empty());
    let check = b.verify_audit().await.unwrap();
    assert!(check.entries > 0 && check.anchors.unwrap() >= 2, "{check:?}");
}

/// Counts the calls that change a target, for one engine.
#[derive(Clone, Debug, Default)]
pub struct Mutations(Arc<AtomicU64>);

#[async_trait::async_trait]
impl relay::providers::Interceptor for Mutations {
    async fn before(&self, op: &'static str) -> relay::Result<()> {
        if matches!(op, "stage" | "scale" | "route" | "promote" | "retire") {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

impl Mutations {
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The store becomes unreachable for one engine in the middle of a canary
/// (`proxy`, between that engine and the store, stops): it changes the
/// target no more, its lease lapses, another engine resumes the rollout
/// and finishes it, and when the store is back the first engine is refused
/// by its fencing token and stops. `stores(cut_off)` gives an engine its
/// state store and audit sink, through the proxy when `cut_off`.
pub async fn cut_off_engine_stops(
    proxy: &crate::fault_proxy::FaultProxy,
    stores: impl Fn(bool) -> (Arc<dyn StateStore>, Arc<dyn AuditSink>),
) {
    let world = ready_world();
    let config = relay::EngineConfig {
        lease_ttl: Duration::from_secs(3),
        ..Default::default()
    };
    let engine = |holder: &str, cut_off: bool, counted: Mutations| {
        let (state, audit) = stores(cut_off);
        world
            .stores()
            .target(Arc::new(relay::providers::Wrapped::with(counted, world.target.clone())))
            .probe(Arc::new(relay::providers::sim::SimProbe::new(world.target.clone())))
            .state(state)
            .audit(audit)
            .config(config.clone())
            .retry(crate::fault_proxy::fast_retry())
            .holder(holder)
            .build()
            .unwrap()
    };
    let (by_a, by_b) = (Mutations::default(), Mutations::default());
    let a = engine("engine-a", true, by_a.clone());
    let b = engine("engine-b", false, by_b.clone());
    let handle = canary_under_way(&b, &a).await;
    let id = handle.id().to_string();
    proxy.stop();
    let cut_at = by_a.count();

    // Once the lease has lapsed, the other engine resumes the rollout.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (resumed, skipped) = b.recover().await.unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(resumed.len(), 1);
    let outcome = tokio::time::timeout(Duration::from_secs(60), resumed.into_iter().next().unwrap().wait())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(outcome, Outcome::Promoted { .. }), "{outcome}");
    assert!(by_b.count() > 1, "the second engine finished the rollout");

    // The store comes back: the first engine is fenced off and stops.
    proxy.restart().await;
    let ended = tokio::time::timeout(Duration::from_secs(60), handle.wait())
        .await
        .expect("the cut-off engine stops once it can tell");
    assert!(ended.is_err(), "the cut-off engine cannot report an end: {ended:?}");
    assert_eq!(
        by_a.count(),
        cut_at,
        "no target change by the engine that could not reach the store"
    );
    let record = b.state().get(&id).await.unwrap().unwrap();
    assert_eq!(record.status, RolloutStatus::Finished(outcome));
    b.verify_audit().await.unwrap();
}

/// The lease history [`cut_off_engine_stops`] leaves: v1's engine, the
/// cut-off engine, then the engine that took over, no grant overlapping.
pub fn handed_over(grants: &[LeaseGrant]) {
    assert!(!grants.iter().any(|g| g.overlaps()), "{grants:?}");
    let holders: Vec<&str> = grants.iter().map(|g| g.holder.as_str()).collect();
    assert_eq!(holders.len(), 3, "{grants:?}");
    assert!(
        holders[1].starts_with("engine-a") && holders[2].starts_with("engine-b"),
        "{grants:?}"
    );
}

/// Writers in as many engines (a sink each, as processes would have) append
/// `each` entries at once to one chain, and as many senders (a store each)
/// send commands to one rollout: every entry lands once in one chain that
/// verifies, and the commands take the numbers 1..=n. Contended optimistic
/// writes must wait and try again rather than give up.
pub async fn many_writers(sinks: Vec<Arc<dyn AuditSink>>, stores: Vec<Arc<dyn StateStore>>, each: usize) {
    let before = sinks[0].verify().await.unwrap();
    let mut appends = tokio::task::JoinSet::new();
    for (w, sink) in sinks.iter().enumerate() {
        let sink = sink.clone();
        appends.spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..each {
                let event = relay::audit::AuditEvent {
                    at_ms: i as i64,
                    actor: format!("writer-{w}"),
                    rollout: "many".into(),
                    action: "test.contended".into(),
                    detail: serde_json::json!({"i": i}).into(),
                };
                match sink.append(&event).await {
                    Ok(head) => seqs.push(head.seq),
                    Err(e) => panic!("writer {w}, entry {i}: {e}"),
                }
            }
            seqs
        });
    }
    let mut seqs: Vec<u64> = appends.join_all().await.into_iter().flatten().collect();
    seqs.sort_unstable();
    let n = (sinks.len() * each) as u64;
    assert_eq!(
        seqs,
        (before + 1..=before + n).collect::<Vec<_>>(),
        "one sequence, no gap"
    );
    assert_eq!(sinks[0].verify().await.unwrap(), before + n);

    let mut sends = tokio::task::JoinSet::new();
    for (s, store) in stores.iter().enumerate() {
        let store = store.clone();
        sends.spawn(async move {
            let mut numbers = Vec::new();
            for _ in 0..each {
                match store
                    .send_command(
                        "many",
                        &RolloutCommand::Pause {
                            by: format!("sender-{s}"),
                        },
                    )
                    .await
                {
                    Ok(n) => numbers.push(n),
                    Err(e) => panic!("sender {s}: {e}"),
                }
            }
            numbers
        });
    }
    let mut numbers: Vec<u64> = sends.join_all().await.into_iter().flatten().collect();
    numbers.sort_unstable();
    let n = (stores.len() * each) as u64;
    assert_eq!(numbers, (1..=n).collect::<Vec<_>>());
}
