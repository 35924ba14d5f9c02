//! Crash-resume, leases between engines, and audit tamper detection.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use relay::{
    clock::TokioClock, AuditSink, Error, EventKind, FileStateStore, JsonlAuditSink, Lease, Outcome, Relay, RolloutSpec,
    StateStore, Target,
};

struct Crash {
    world: World,
    dir: tempfile::TempDir,
    clock: Arc<TokioClock>,
}

impl Crash {
    fn new(seed: u64) -> Self {
        Crash {
            world: World::new(seed),
            dir: tempfile::tempdir().unwrap(),
            clock: Arc::new(TokioClock::starting_at(1_000_000)),
        }
    }

    /// A fresh engine on the shared state directory, as a restarted process would build it.
    fn engine(&self, holder: &str) -> Relay {
        let state = Arc::new(FileStateStore::open(self.dir.path()).unwrap());
        self.world
            .builder()
            .state(state)
            .clock(self.clock.clone())
            .holder(holder)
            .build()
            .unwrap()
    }
}

/// Run `tag` with the canary, kill the engine when `crash_on` matches the
/// `nth` event, resume with a new engine, and return the outcome and the
/// target mutations made after v1.
async fn crash_and_resume(seed: u64, tag: &str, crash_on: impl Fn(&EventKind) -> bool) -> (Outcome, u64, World) {
    let c = Crash::new(seed);
    let a = c.engine("engine-a");
    deploy_v1(&a).await;
    let before = c.world.target.mutations();
    let handle = a.start(RolloutSpec::new("web", release(tag), canary())).await.unwrap();
    let id = handle.id().to_string();
    let mut events = handle.events();
    until(&mut events, crash_on).await;
    handle.halt();
    drop(a);

    let b = c.engine("engine-b");
    match b.resume(&id).await {
        Err(Error::TargetLocked { holder, .. }) => assert!(holder.starts_with("engine-a#"), "{holder}"),
        other => panic!("the crashed engine's lease must still hold, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(31)).await;
    let outcome = b.resume(&id).await.unwrap().wait().await.unwrap();
    let record = b.state().get(&id).await.unwrap().unwrap();
    assert!(record.status.is_terminal());
    b.audit().verify().await.unwrap();
    (outcome, c.world.target.mutations() - before, c.world)
}

#[tokio::test(start_paused = true)]
async fn resume_after_a_crash_at_every_step_boundary_reaches_the_right_end() {
    let steps = 11; // canary(): stage, route 25, analyze, scale, route 50, pause, analyze, scale, route 100, promote, retire
    for k in 0..steps {
        for on_completion in [false, true] {
            let (outcome, mutations, w) = crash_and_resume(100 + k as u64, "v2", |e| match e {
                EventKind::StepStarted { index, .. } if !on_completion => *index == k,
                EventKind::StepCompleted { index } if on_completion => *index == k,
                _ => false,
            })
            .await;
            let Outcome::Promoted { revision } = &outcome else {
                panic!("crash at step {k} (completed: {on_completion}): {outcome}")
            };
            let state = w.target.observe().await.unwrap();
            assert_eq!(state.stable.as_ref().map(|r| r.as_str()), Some(revision.as_str()));
            assert_eq!(state.revisions.len(), 1);
            assert_eq!(
                mutations, 8,
                "crash at step {k}: a mutation was applied twice (idempotent re-runs change nothing)"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn resume_after_a_crash_during_rollback_finishes_the_rollback() {
    for (i, crash_on) in [
        Box::new(|e: &EventKind| matches!(e, EventKind::RollbackStarted { .. })) as Box<dyn Fn(&EventKind) -> bool>,
        Box::new(|e: &EventKind| matches!(e, EventKind::TrafficShifted { candidate_weight: 0 })),
        Box::new(|e: &EventKind| matches!(e, EventKind::StepStarted { index: 2, .. })),
    ]
    .into_iter()
    .enumerate()
    {
        let (outcome, _, w) = crash_and_resume(200 + i as u64, "v3", crash_on).await;
        assert!(matches!(outcome, Outcome::RolledBack { .. }), "case {i}: {outcome}");
        let state = w.target.observe().await.unwrap();
        assert_eq!(state.revisions.len(), 1, "case {i}: candidate retired");
        assert_eq!(state.revisions[0].ready, 4);
    }
}

#[tokio::test(start_paused = true)]
async fn two_engines_on_one_target_exactly_one_gets_the_lease() {
    let c = Crash::new(300);
    let (a, b) = (c.engine("engine-a"), c.engine("engine-b"));
    deploy_v1(&a).await;
    let (ra, rb) = tokio::join!(
        a.start(RolloutSpec::new("web", release("v2"), canary())),
        b.start(RolloutSpec::new("web", release("v2"), canary()))
    );
    let (winner, loser) = match (ra, rb) {
        (Ok(h), Err(e)) | (Err(e), Ok(h)) => (h, e),
        (ra, rb) => panic!(
            "exactly one engine must win: {:?} / {:?}",
            ra.map(|h| h.id().to_string()),
            rb.map(|h| h.id().to_string())
        ),
    };
    assert!(matches!(loser, Error::TargetLocked { .. }), "{loser:?}");
    assert!(winner.wait().await.unwrap().is_success());
    // Once released, the other engine may deploy.
    assert!(b
        .start(RolloutSpec::new("web", release("v3"), canary()))
        .await
        .unwrap()
        .wait()
        .await
        .is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_second_rollout_from_the_same_engine_is_locked_out() {
    let (_w, relay) = World::with_v1(301).await;
    let first = relay
        .start(RolloutSpec::new("web", release("v2"), canary()))
        .await
        .unwrap();
    assert!(matches!(
        relay.start(RolloutSpec::new("web", release("v3"), canary())).await,
        Err(Error::TargetLocked { .. })
    ));
    first.abort("test", "done").unwrap();
    first.wait().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn jsonl_audit_detects_modification_deletion_insertion_and_reordering() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let w = World::new(302);
    let sink = Arc::new(JsonlAuditSink::open(&path).unwrap());
    let relay = w.builder().audit(sink.clone()).build().unwrap();
    deploy_v1(&relay).await;
    run(&relay, RolloutSpec::new("web", release("v3"), canary())).await;
    let n = sink.verify().await.unwrap();
    assert!(n > 10, "{n}");
    let original = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = original.lines().collect();

    let tamper = |name: &str, lines: Vec<String>| {
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        (name.to_string(), lines)
    };
    let mut cases = Vec::new();
    let mut modified: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    modified[3] = modified[3].replace("\"actor\":\"", "\"actor\":\"mallory-");
    cases.push(tamper("modified", modified));
    let mut deleted: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    deleted.remove(2);
    cases.push(tamper("deleted", deleted));
    let mut inserted: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    inserted.insert(4, lines[4].to_string());
    cases.push(tamper("inserted", inserted));
    let mut reordered: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    reordered.swap(5, 6);
    cases.push(tamper("reordered", reordered));
    let mut truncated: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    truncated.pop();
    cases.push(tamper("truncated", truncated));

    for (name, content) in cases {
        std::fs::write(&path, content.join("\n") + "\n").unwrap();
        assert!(
            matches!(sink.verify().await, Err(Error::AuditTampered { .. })),
            "{name} not detected"
        );
        if name != "truncated" {
            assert!(
                matches!(JsonlAuditSink::open(&path), Err(Error::AuditTampered { .. })),
                "{name} not detected on open"
            );
        }
    }
    std::fs::write(&path, &original).unwrap();
    assert_eq!(sink.verify().await.unwrap(), n);
}

#[tokio::test(start_paused = true)]
async fn memory_audit_detects_tampering() {
    let w = World::new(303);
    let sink = Arc::new(relay::MemoryAuditSink::new());
    let relay = w.builder().audit(sink.clone()).build().unwrap();
    deploy_v1(&relay).await;
    let mut entries = sink.entries().await.unwrap();
    entries[1].event.detail = serde_json::json!({"replicas": 400}).into();
    sink.overwrite_entries(entries);
    assert!(matches!(sink.verify().await, Err(Error::AuditTampered { seq: 2, .. })));
}

#[tokio::test(start_paused = true)]
async fn recover_resumes_every_running_rollout() {
    let c = Crash::new(304);
    let a = c.engine("engine-a");
    deploy_v1(&a).await;
    let h = a.start(RolloutSpec::new("web", release("v2"), canary())).await.unwrap();
    let mut ev = h.events();
    until(&mut ev, |k| matches!(k, EventKind::StepStarted { index: 3, .. })).await;
    h.halt();
    tokio::time::sleep(Duration::from_secs(31)).await;
    let b = c.engine("engine-b");
    let (handles, skipped) = b.recover().await.unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(handles.len(), 1);
    for h in handles {
        assert!(h.wait().await.unwrap().is_success());
    }
    assert!(b.state().list_active().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_engine_that_loses_its_lease_stops_without_touching_the_target() {
    use relay::providers::{FaultKind, Faulty};
    let w = World::new(305);
    let state = Arc::new(
        Faulty::new(relay::MemoryStateStore::new(), 1)
            .with_rate(FaultKind::PermissionDenied, 0.0)
            .only_operations(&["renew_lease"]),
    );
    let relay = w.builder().state(state.clone()).build().unwrap();
    deploy_v1(&relay).await;
    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), canary()))
        .await
        .unwrap();
    let mut events = handle.events();
    until(&mut events, |k| {
        matches!(k, EventKind::TrafficShifted { candidate_weight: 25 })
    })
    .await;
    let mutations = w.target.mutations();
    state.fail_next(1);
    match handle.wait().await {
        Err(Error::LeaseLost { target, .. }) => assert_eq!(target, "web"),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    assert_eq!(w.target.mutations(), mutations, "no mutation after the lease was lost");
    let records = relay::StateStore::list_active(state.as_ref()).await.unwrap();
    assert_eq!(
        records.len(),
        1,
        "the record stays running for whoever holds the lease now"
    );
}

/// Eight stores on one directory (eight processes, as far as the store can
/// tell), on eight OS threads released together, race for the same lease,
/// round after round: exactly one wins each time, the others get
/// `TargetLocked`; a write under a lease that was taken over is refused.
#[test]
fn file_stores_racing_for_a_lease_let_exactly_one_win() {
    let dir = tempfile::tempdir().unwrap();
    let rounds = 40;
    let racers = 8;
    for round in 0..rounds {
        let target = format!("race-{round}");
        let barrier = Arc::new(std::sync::Barrier::new(racers));
        let results: Vec<relay::Result<relay::Lease>> = (0..racers)
            .map(|i| {
                let (dir, target, barrier) = (dir.path().to_owned(), target.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let store = FileStateStore::open(dir).unwrap();
                    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                    barrier.wait();
                    rt.block_on(relay::StateStore::acquire_lease(
                        &store,
                        &target,
                        &format!("engine-{i}"),
                        Duration::from_secs(30),
                        1_000,
                    ))
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: {results:?}");
        assert!(
            results
                .iter()
                .all(|r| r.is_ok() || matches!(r, Err(Error::TargetLocked { .. }))),
            "round {round}: {results:?}"
        );
    }
    // Fencing: once another holder took an expired lease over, a record
    // write under the old token is refused.
    let store = FileStateStore::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        use relay::StateStore;
        let old = store
            .acquire_lease("fenced", "a", Duration::from_secs(1), 0)
            .await
            .unwrap();
        let mut record = relay::testing::sample_record("fenced-1", "fenced", old.token);
        let v = store.put(&record, None).await.unwrap();
        let new = store
            .acquire_lease("fenced", "b", Duration::from_secs(1), 5_000)
            .await
            .unwrap();
        assert!(new.token > old.token);
        record.cursor = 1;
        assert!(matches!(
            store.put(&record, Some(v)).await,
            Err(Error::LeaseLost { .. })
        ));
    });
}

/// A memory store that counts lease renewals, and holds leases in process
/// only when `hold` (as the memory store does) — without, the engine must
/// renew.
#[derive(Debug)]
struct CountingRenewals {
    inner: relay::MemoryStateStore,
    hold: bool,
    renewals: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl relay::StateStore for CountingRenewals {
    async fn get(&self, id: &str) -> relay::Result<Option<relay::RolloutRecord>> {
        self.inner.get(id).await
    }
    async fn put(&self, record: &relay::RolloutRecord, expected: Option<u64>) -> relay::Result<u64> {
        self.inner.put(record, expected).await
    }
    async fn list_active(&self) -> relay::Result<Vec<relay::RolloutRecord>> {
        self.inner.list_active().await
    }
    async fn list_target(&self, target: &str) -> relay::Result<Vec<relay::RolloutRecord>> {
        self.inner.list_target(target).await
    }
    async fn acquire_lease(&self, target: &str, holder: &str, ttl: Duration, now: i64) -> relay::Result<Lease> {
        self.inner.acquire_lease(target, holder, ttl, now).await
    }
    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now: i64) -> relay::Result<Lease> {
        self.renewals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.renew_lease(lease, ttl, now).await
    }
    async fn release_lease(&self, lease: &Lease) -> relay::Result<()> {
        self.inner.release_lease(lease).await
    }
    fn hold_lease(&self, lease: &Lease) -> Option<relay::state::LeaseHold> {
        self.hold.then(|| self.inner.hold_lease(lease)).flatten()
    }
}

/// Runs the canary on a store that holds leases or not, with a second
/// engine on the same store trying the target midway; returns the
/// renewals and the virtual time the rollout took.
async fn lease_kept(hold: bool) -> (u32, Duration) {
    let w = World::new(306);
    let state = Arc::new(CountingRenewals {
        inner: relay::MemoryStateStore::new(),
        hold,
        renewals: Default::default(),
    });
    let (a, b) = (
        w.builder().state(state.clone()).holder("engine-a").build().unwrap(),
        w.builder().state(state.clone()).holder("engine-b").build().unwrap(),
    );
    deploy_v1(&a).await;
    let started = tokio::time::Instant::now();
    let handle = a.start(RolloutSpec::new("web", release("v2"), canary())).await.unwrap();
    let mut events = handle.events();
    until(
        &mut events,
        |k| matches!(k, EventKind::StepStarted { kind, .. } if kind == "pause"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(300)).await;
    match b.start(RolloutSpec::new("web", release("v3"), canary())).await {
        Err(e) => {
            let Error::TargetLocked {
                holder, expires_at_ms, ..
            } = &e
            else {
                panic!("the running rollout's lease must hold, got {e:?}")
            };
            assert!(holder.starts_with("engine-a#"), "{holder}");
            assert_eq!(*expires_at_ms == Lease::HELD, hold, "held only by a store that holds");
            let until = if hold { "for as long as it runs" } else { "until " };
            assert!(e.to_string().contains(until), "{e}");
        }
        Ok(h) => panic!("the running rollout's lease must hold, but {} started", h.id()),
    }
    assert!(handle.wait().await.unwrap().is_success());
    let took = started.elapsed();
    assert!(
        b.start(RolloutSpec::new("web", release("v3"), canary())).await.is_ok(),
        "a finished rollout frees its target"
    );
    (state.renewals.load(std::sync::atomic::Ordering::Relaxed), took)
}

#[tokio::test(start_paused = true)]
async fn an_in_process_store_holds_a_rollouts_lease_with_no_renewals() {
    let (renewals, took) = lease_kept(true).await;
    assert!(took > Duration::from_secs(600), "many lease TTLs long: {took:?}");
    assert_eq!(renewals, 0, "a held lease is not renewed");
    // The same rollout on a store that cannot hold renews every ttl / 3.
    let (renewals, took) = lease_kept(false).await;
    let expected = (took.as_secs() / 10) as u32;
    assert!(
        (expected - 1..=expected).contains(&renewals),
        "{renewals} renewals in {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn halting_a_rollout_on_an_in_process_store_frees_its_target_at_once() {
    let w = World::new(307);
    let state = Arc::new(relay::MemoryStateStore::new());
    let (a, b) = (
        w.builder().state(state.clone()).holder("engine-a").build().unwrap(),
        w.builder().state(state.clone()).holder("engine-b").build().unwrap(),
    );
    deploy_v1(&a).await;
    let handle = a.start(RolloutSpec::new("web", release("v2"), canary())).await.unwrap();
    let id = handle.id().to_string();
    let mut events = handle.events();
    until(&mut events, |k| {
        matches!(k, EventKind::TrafficShifted { candidate_weight: 25 })
    })
    .await;
    handle.halt();
    // The halted task is dropped when the runtime next runs; no TTL to wait.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let outcome = b.resume(&id).await.unwrap().wait().await.unwrap();
    assert!(outcome.is_success(), "{outcome}");
}

/// Two engines in one process, each with its own sink on one JSONL log (as
/// two `relayctl` runs on one state directory have), roll out to two
/// targets at once: the log is one chain with both rollouts' entries, and
/// each sink still verifies it.
#[tokio::test(start_paused = true)]
async fn two_sinks_on_one_log_write_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (web, api) = (
        World::new(310),
        World::with_target(relay::providers::sim::SimTarget::new("api").seed(311)),
    );
    let (sink_a, sink_b) = (
        Arc::new(JsonlAuditSink::open(&path).unwrap()),
        Arc::new(JsonlAuditSink::open(&path).unwrap()),
    );
    let a = web.builder().audit(sink_a.clone()).build().unwrap();
    let b = api.builder().audit(sink_b.clone()).build().unwrap();
    let first = |target: &str| RolloutSpec::new(target, release("v1"), relay::strategies::AllAtOnceStrategy);
    let (x, y) = tokio::join!(run(&a, first("web")), run(&b, first("api")));
    assert!(x.is_success() && y.is_success());
    let (x, y) = tokio::join!(
        run(&a, RolloutSpec::new("web", release("v2"), canary())),
        run(&b, RolloutSpec::new("api", release("v3"), canary()))
    );
    assert!(x.is_success(), "{x}");
    assert!(matches!(y, Outcome::RolledBack { .. }), "{y}");
    let n = JsonlAuditSink::open(&path).unwrap().verify().await.unwrap();
    assert_eq!(sink_a.verify().await.unwrap(), n);
    assert_eq!(sink_b.verify().await.unwrap(), n);
    let entries = sink_a.entries().await.unwrap();
    for target in ["web", "api"] {
        assert!(
            entries
                .iter()
                .any(|e| e.event.rollout.starts_with(target) && e.event.action == "rollout.finished"),
            "{target}'s rollouts are in the chain"
        );
    }
}

/// Only the lines relay writes verify: a field the hash does not cover
/// (`"approved_by":"mallory"`), a repeated key, keys out of order or added
/// spaces were ignored by the verifier before; each is refused now, on
/// `verify`, on `open` and by the read-only `verify_file`, naming the entry.
#[tokio::test(start_paused = true)]
async fn jsonl_audit_refuses_lines_relay_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let w = World::new(312);
    let sink = Arc::new(JsonlAuditSink::open(&path).unwrap());
    let relay = w.builder().audit(sink.clone()).build().unwrap();
    deploy_v1(&relay).await;
    let original = std::fs::read_to_string(&path).unwrap();
    let third = original.lines().nth(2).unwrap().to_owned();
    let edits: [(&str, String); 5] = [
        (
            "an unknown field",
            third.replacen("{", r#"{"approved_by":"mallory","#, 1),
        ),
        (
            "a repeated key",
            third.replacen(r#""action":"#, r#""action":"gate.approved","action":"#, 1),
        ),
        ("keys out of order", {
            let v: serde_json::Value = serde_json::from_str(&third).unwrap();
            let mut fields: Vec<(String, serde_json::Value)> = v.as_object().unwrap().clone().into_iter().collect();
            fields.reverse();
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("{:?}:{v}", k)).collect();
            format!("{{{}}}", body.join(","))
        }),
        ("a space", third.replacen(",", ", ", 1)),
        ("an escaped letter", {
            let at = third.find(r#""action":""#).unwrap() + r#""action":""#.len();
            let letter = third[at..].chars().next().unwrap();
            format!(
                "{}\\u{:04x}{}",
                &third[..at],
                u32::from(letter),
                &third[at + letter.len_utf8()..]
            )
        }),
    ];
    for (what, line) in edits {
        assert_ne!(line, third, "{what}: the edit changed nothing");
        std::fs::write(&path, original.replacen(&third, &line, 1)).unwrap();
        for (how, result) in [
            ("verify", sink.verify().await.map(|_| ())),
            ("open", JsonlAuditSink::open(&path).map(|_| ())),
            (
                "verify_file",
                JsonlAuditSink::verify_file(&path, &relay::audit::ChainKey::none()).map(|_| ()),
            ),
        ] {
            assert!(
                matches!(result, Err(Error::AuditTampered { seq: 3, .. })),
                "{what} passed {how}: {result:?}"
            );
        }
    }
    std::fs::write(&path, &original).unwrap();
    sink.verify().await.unwrap();
}

/// A JSONL log kept under an HMAC key: written and reopened with the key,
/// it verifies only with it — not without a key, not with another — and a
/// log begun without the key cannot be continued with it.
#[tokio::test(start_paused = true)]
async fn a_keyed_jsonl_log_verifies_only_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = relay::audit::ChainKey::hmac(&"0123456789abcdef0123456789abcdef".to_owned().into()).unwrap();
    let other = relay::audit::ChainKey::hmac(&"fedcba9876543210fedcba9876543210".to_owned().into()).unwrap();
    let w = World::new(313);
    let sink = Arc::new(JsonlAuditSink::open_keyed(&path, &key).unwrap());
    let relay = w.builder().audit(sink.clone()).build().unwrap();
    deploy_v1(&relay).await;
    let n = sink.verify().await.unwrap();
    assert_eq!(JsonlAuditSink::verify_file(&path, &key).unwrap().seq, n);
    for (what, wrong) in [
        ("without a key", relay::audit::ChainKey::none()),
        ("with another key", other),
    ] {
        assert!(
            matches!(
                JsonlAuditSink::verify_file(&path, &wrong),
                Err(Error::AuditTampered { seq: 1, .. })
            ),
            "verified {what}"
        );
        assert!(JsonlAuditSink::open_keyed(&path, &wrong).is_err(), "opened {what}");
    }
    // Reopened with the key, it goes on.
    let again = JsonlAuditSink::open_keyed(&path, &key).unwrap();
    let more = w.builder().audit(Arc::new(again)).build().unwrap();
    run(
        &more,
        RolloutSpec::new("web", release("v2"), relay::strategies::AllAtOnceStrategy),
    )
    .await;
    assert!(JsonlAuditSink::verify_file(&path, &key).unwrap().seq > n);
    // An unkeyed log is not continued under a key.
    let plain = dir.path().join("plain.jsonl");
    let unkeyed = Arc::new(JsonlAuditSink::open(&plain).unwrap());
    deploy_v1(&w.builder().audit(unkeyed).build().unwrap()).await;
    assert!(JsonlAuditSink::open_keyed(&plain, &key).is_err());
    // Too short a key is refused, naming the setting.
    let short = relay::audit::ChainKey::hmac(&"short".to_owned().into()).unwrap_err();
    assert!(short.to_string().contains("audit.key"), "{short}");
}

/// Cutting the log's tail — its last entries, all but the first, all of
/// it — leaves a chain that verifies on its own, so a sink opened after
/// the cut carried on from it. The records in the state store hold the
/// head at their last write, outside the log: `verify_audit` compares, and
/// names the missing range and the rollout that anchors it.
#[tokio::test(start_paused = true)]
async fn a_log_cut_below_a_records_anchor_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let state = Arc::new(FileStateStore::open(dir.path().join("state")).unwrap());
    let w = World::new(314);
    let engine = || {
        w.builder()
            .state(state.clone())
            .audit(Arc::new(JsonlAuditSink::open(&path).unwrap()))
            .build()
            .unwrap()
    };
    let relay = engine();
    deploy_v1(&relay).await;
    let outcome = run(&relay, RolloutSpec::new("web", release("v3"), canary())).await;
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
    let check = relay.verify_audit().await.unwrap();
    assert_eq!(check.anchors, Some(2), "two rollouts, two anchors");
    let full = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = full.lines().collect();
    let n = lines.len();
    for keep in [n - 3, 1, 0] {
        let cut: String = lines[..keep].iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, cut).unwrap();
        // The chain alone verifies: a sink opened now would carry on.
        assert_eq!(
            JsonlAuditSink::verify_file(&path, &relay::audit::ChainKey::none())
                .unwrap()
                .seq,
            keep as u64
        );
        let err = engine().verify_audit().await.unwrap_err();
        let expected = format!("entries {}..={n} were cut", keep + 1);
        assert!(
            matches!(&err, Error::AuditTampered { reason, .. } if reason.contains(&expected)),
            "kept {keep} of {n}: {err}"
        );
    }
    // A rewritten anchored entry is named too.
    std::fs::write(&path, &full).unwrap();
    engine().verify_audit().await.unwrap();
}

/// One corrupt record file made every listing of the state directory fail:
/// every target's history, recovery and status. It now affects only its
/// own rollout: the others list, start and recover; the damaged file is
/// reported with its path and what to do, and reading it says the same.
#[tokio::test(start_paused = true)]
async fn a_corrupt_record_affects_only_its_own_rollout() {
    use relay::StateStore as _;
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(FileStateStore::open(dir.path()).unwrap());
    let (web, api) = (
        World::new(315),
        World::with_target(relay::providers::sim::SimTarget::new("api").seed(316)),
    );
    let a = web.builder().state(state.clone()).build().unwrap();
    let b = api.builder().state(state.clone()).build().unwrap();
    let first = |target: &str| RolloutSpec::new(target, release("v1"), relay::strategies::AllAtOnceStrategy);
    let broken = a.start(first("web")).await.unwrap();
    let broken_id = broken.id().to_owned();
    assert!(broken.wait().await.unwrap().is_success());
    assert!(run(&b, first("api")).await.is_success());
    let file = dir.path().join("records").join(format!("{broken_id}.json"));
    assert!(file.exists(), "{}", file.display());
    std::fs::write(&file, b"{\"id\": \"web-").unwrap();

    assert_eq!(state.list_target("api").await.unwrap().len(), 1);
    assert!(state.list_target("web").await.unwrap().is_empty());
    assert_eq!(state.list_all().await.unwrap().len(), 1);
    b.recover().await.unwrap();
    assert!(run(&b, RolloutSpec::new("api", release("v2"), canary()))
        .await
        .is_success());
    assert!(run(&a, RolloutSpec::new("web", release("v2"), canary()))
        .await
        .is_success());
    let damaged = state.damaged().await.unwrap();
    assert_eq!(damaged.len(), 1);
    assert_eq!(damaged[0].path, file);
    assert!(
        damaged[0].error.contains("restore it from a backup"),
        "{}",
        damaged[0].error
    );
    let err = state.get(&broken_id).await.unwrap_err();
    assert!(err.to_string().contains(&file.display().to_string()), "{err}");
}

/// A rollout whose engine died (here: halted) stays running, orphaned. Once
/// its lease expired, another engine started a second rollout on the same
/// target beside it, and the orphan stayed "running" for good. Now that
/// start is refused, naming the orphan and how to recover it; recovery
/// drives it to its end, and then the target takes new rollouts.
#[tokio::test(start_paused = true)]
async fn a_start_beside_an_orphan_is_refused_until_it_is_recovered() {
    let c = Crash::new(317);
    let a = c.engine("engine-a");
    deploy_v1(&a).await;
    let handle = a.start(RolloutSpec::new("web", release("v2"), canary())).await.unwrap();
    let orphan = handle.id().to_owned();
    let mut events = handle.events();
    until(&mut events, |k| matches!(k, EventKind::TrafficShifted { .. })).await;
    handle.halt();
    drop(a);
    tokio::time::sleep(Duration::from_secs(31)).await;

    let b = c.engine("engine-b");
    let err = b
        .start(RolloutSpec::new("web", release("v3"), canary()))
        .await
        .map(|h| h.id().to_owned())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Conflict { what } if what.contains(&orphan) && what.contains("orphaned") && what.contains("recover")),
        "{err}"
    );
    let (handles, skipped) = b.recover().await.unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    for h in handles {
        assert!(h.wait().await.unwrap().is_success());
    }
    assert!(b.state().list_active().await.unwrap().is_empty());
    let outcome = run(&b, RolloutSpec::new("web", release("v3"), canary())).await;
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
}

/// Records relayctl wrote (a canary promoted, then a bad canary rolled
/// back) before a record's status held its outcome: they read, the
/// promoted one taking its revision from its plan.
#[tokio::test]
async fn records_written_before_the_status_held_the_outcome_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-before-outcome-status");
    std::fs::create_dir(dir.path().join("records")).unwrap();
    for file in std::fs::read_dir(fixture.join("records")).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), dir.path().join("records").join(file.file_name())).unwrap();
    }
    let store = FileStateStore::open(dir.path()).unwrap();
    let history = store.list_target("web").await.unwrap();
    let outcomes: Vec<_> = history.iter().map(|r| r.status.outcome().cloned()).collect();
    assert_eq!(
        outcomes,
        [
            Some(Outcome::Promoted {
                revision: history[0].plan.candidate.id.to_string()
            }),
            Some(Outcome::RolledBack {
                cause: "analysis failed: errors [error_rate on rev-abbf2ef207] #1: FAIL (mean 0.1227 >= 0.02; n=60)"
                    .into()
            }),
        ]
    );
    assert!(!history[0].plan.candidate.id.to_string().is_empty());
    // Written again, the promoted revision is stored with the status.
    let json = serde_json::to_value(&history[0]).unwrap();
    assert_eq!(json["status"]["status"], "succeeded");
    assert_eq!(json["status"]["revision"], history[0].plan.candidate.id.to_string());
}
