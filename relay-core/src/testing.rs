//! Shared conformance suites: every provider, simulated or real, runs the same
//! checks. Each function panics with a message naming the broken rule.
//!
//! ```
//! # mod relay { pub use relay_core::*; }
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! relay::testing::state_store_conformance(&relay::MemoryStateStore::new()).await;
//! # }
//! ```
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use crate::audit::{AuditEvent, AuditSink};
use crate::error::Error;
use crate::event::Outcome;
use crate::plan::Plan;
use crate::release::RevisionSpec;
use crate::state::{Lease, RolloutRecord, RolloutStatus, StateStore};
use crate::target::{Routing, Target, TargetState, TrafficSplit};
use crate::{Artifact, Digest, HealthProbe, ProbeQuery, RevisionId, SecretRef, SecretStore};

/// Start a [`RevisionSpec`] for a test: `repository` at the digest of
/// `content`, untagged, with no configuration or secrets until added.
///
/// ```
/// # mod relay { pub use relay_core::*; }
/// let spec = relay::testing::revision("shop/web", b"build 2")
///     .tag("v2")
///     .config("MODE", "fast")
///     .build();
/// assert_eq!(spec.artifact.tag.as_deref(), Some("v2"));
/// assert_ne!(spec.id, relay::testing::revision("shop/web", b"build 3").build().id);
/// ```
pub fn revision(repository: &str, content: &[u8]) -> RevisionSpecBuilder {
    RevisionSpecBuilder {
        artifact: Artifact {
            repository: repository.to_owned(),
            tag: None,
            digest: Digest::of(content),
            metadata: BTreeMap::new(),
        },
        config: BTreeMap::new(),
        secrets: BTreeMap::new(),
    }
}

/// Builds a [`RevisionSpec`] for tests; see [`revision`].
#[derive(Clone, Debug)]
pub struct RevisionSpecBuilder {
    artifact: Artifact,
    config: BTreeMap<String, String>,
    secrets: BTreeMap<String, SecretRef>,
}

impl RevisionSpecBuilder {
    /// The tag the artifact was resolved from.
    pub fn tag(mut self, tag: &str) -> Self {
        self.artifact.tag = Some(tag.to_owned());
        self
    }

    /// A configuration value.
    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.config.insert(key.to_owned(), value.to_owned());
        self
    }

    /// A secret reference.
    pub fn secret(mut self, key: &str, reference: SecretRef) -> Self {
        self.secrets.insert(key.to_owned(), reference);
        self
    }

    /// The revision, its id derived from its content.
    pub fn build(self) -> RevisionSpec {
        RevisionSpec::new(self.artifact, self.config, self.secrets)
    }
}

/// A record for `target` with a one-step plan, for store tests.
pub fn sample_record(id: &str, target: &str, lease_token: u64) -> RolloutRecord {
    let artifact = Artifact {
        repository: "app".into(),
        tag: None,
        digest: Digest::of(id.as_bytes()),
        metadata: BTreeMap::new(),
    };
    let plan = std::sync::Arc::new(Plan {
        target: target.into(),
        strategy: "test".into(),
        requested: artifact.pinned_ref(),
        candidate: RevisionSpec::new(artifact, BTreeMap::new(), BTreeMap::new()),
        replicas: 1,
        stable: None,
        stable_replicas: 0,
        steps: vec![crate::Step::Promote],
        post_rollback: Vec::new(),
    });
    RolloutRecord::new(id, target, plan, "h", lease_token, 1)
}

/// Compare-and-swap, listing, leases with expiry and fencing.
pub async fn state_store_conformance(store: &dyn StateStore) {
    let ttl = Duration::from_secs(10);
    // Leases: exclusive, expiring, token increases on every change of holder.
    let a = store.acquire_lease("conf-t", "a", ttl, 1_000).await.unwrap();
    let again = store.acquire_lease("conf-t", "a", ttl, 2_000).await.unwrap();
    assert_eq!(a.token, again.token, "re-acquiring by the holder keeps the token");
    match store.acquire_lease("conf-t", "b", ttl, 3_000).await {
        Err(Error::TargetLocked { holder, .. }) => assert_eq!(holder, "a"),
        other => panic!("a held lease must refuse another holder, got {other:?}"),
    }
    let renewed = store.renew_lease(&again, ttl, 5_000).await.unwrap();
    assert_eq!(renewed.expires_at_ms, 15_000, "renewal extends from now");
    let b = store
        .acquire_lease("conf-t", "b", ttl, 15_001)
        .await
        .expect("an expired lease can be taken");
    assert!(b.token > a.token, "fencing token must increase when the holder changes");
    assert!(
        matches!(
            store.renew_lease(&renewed, ttl, 15_002).await,
            Err(Error::LeaseLost { .. })
        ),
        "the old holder's renewal must fail"
    );

    // Records: create-only, compare-and-swap, fencing against the old holder.
    let mut rec = sample_record("conf-r1", "conf-t", b.token);
    let v1 = store.put(&rec, None).await.unwrap();
    assert!(
        matches!(store.put(&rec, None).await, Err(Error::Conflict { .. })),
        "create of an existing record must conflict"
    );
    rec.cursor = 1;
    let v2 = store.put(&rec, Some(v1)).await.unwrap();
    assert!(v2 > v1);
    assert!(
        matches!(store.put(&rec, Some(v1)).await, Err(Error::Conflict { .. })),
        "a stale version must conflict"
    );
    let got = store.get("conf-r1").await.unwrap().expect("record stored");
    assert_eq!((got.cursor, got.version), (1, v2));
    let mut stale = got.clone();
    stale.lease_token = a.token;
    assert!(
        matches!(store.put(&stale, Some(v2)).await, Err(Error::LeaseLost { .. })),
        "a write under an old fencing token must be refused"
    );
    // The old holder's write from the version before the new holder's: it
    // lost its lease, which is what it must hear (not a version conflict,
    // which would have it stop as if the store had failed).
    assert!(
        matches!(store.put(&stale, Some(v1)).await, Err(Error::LeaseLost { .. })),
        "a write under an old fencing token from an old version must be refused as LeaseLost"
    );
    assert!(store.get("conf-missing").await.unwrap().is_none());

    // Listing: active only, per target.
    let mut done = sample_record("conf-r2", "conf-t", b.token);
    done.status = RolloutStatus::Finished(Outcome::Promoted {
        revision: done.plan.candidate.id.to_string(),
    });
    store.put(&done, None).await.unwrap();
    let read = store
        .get("conf-r2")
        .await
        .unwrap()
        .expect("a finished record reads back");
    assert_eq!(read.status, done.status, "a finished record keeps its outcome");
    let active: Vec<String> = store.list_active().await.unwrap().into_iter().map(|r| r.id).collect();
    assert!(active.contains(&"conf-r1".to_string()) && !active.contains(&"conf-r2".to_string()));
    assert_eq!(store.list_target("conf-t").await.unwrap().len(), 2);
    // Every record (where the store can list them), with its audit anchor.
    match store.list_all().await {
        Ok(all) => {
            let ids: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
            assert!(ids.contains(&"conf-r1") && ids.contains(&"conf-r2"), "{ids:?}");
        }
        Err(Error::Unsupported { .. }) => {}
        Err(e) => panic!("list_all: {e}"),
    }
    let mut anchored = sample_record("conf-r3", "conf-t", b.token);
    anchored.audit_head = Some(crate::audit::ChainHead {
        seq: 7,
        hash: "ab".repeat(32),
    });
    store.put(&anchored, None).await.unwrap();
    assert_eq!(
        store.get("conf-r3").await.unwrap().and_then(|r| r.audit_head),
        anchored.audit_head,
        "the audit anchor is kept with the record"
    );

    // Commands, where the store carries them: numbered in order per
    // rollout, read back from after a number.
    let pause = crate::engine::RolloutCommand::Pause { by: "ana".into() };
    let abort = crate::engine::RolloutCommand::Abort {
        by: "bo".into(),
        reason: "stop".into(),
    };
    match store.send_command("conf-r1", &pause).await {
        Ok(first) => {
            assert_eq!(first, 1);
            assert_eq!(store.send_command("conf-r1", &abort).await.unwrap(), 2);
            assert_eq!(
                store.send_command("conf-r2", &pause).await.unwrap(),
                1,
                "numbered per rollout"
            );
            let all = store.commands("conf-r1", 0).await.unwrap();
            assert_eq!(all, vec![(1, pause.clone()), (2, abort.clone())]);
            assert_eq!(store.commands("conf-r1", 1).await.unwrap(), vec![(2, abort)]);
            assert!(store.commands("conf-r1", 2).await.unwrap().is_empty());
            assert!(store.commands("conf-none", 0).await.unwrap().is_empty());
            // Senders at once (operators in several processes): each
            // command gets a number of its own, none lost.
            let send = |i: u32| {
                let command = crate::engine::RolloutCommand::Pause { by: format!("op{i}") };
                async move { store.send_command("conf-r3", &command).await.unwrap() }
            };
            let (a, b, c, d, e, f) = tokio::join!(send(0), send(1), send(2), send(3), send(4), send(5));
            let mut numbers = [a, b, c, d, e, f];
            numbers.sort_unstable();
            assert_eq!(numbers, [1, 2, 3, 4, 5, 6], "concurrent senders get distinct numbers");
            assert_eq!(store.commands("conf-r3", 0).await.unwrap().len(), 6);
        }
        Err(Error::Unsupported { .. }) => {}
        Err(e) => panic!("send_command: {e}"),
    }
    // The lease as it stands, where the store can show it.
    match store.lease("conf-t").await {
        Ok(Some(l)) => assert_eq!((l.holder.as_str(), l.token), ("b", b.token)),
        Ok(None) => panic!("a held lease must show"),
        Err(Error::Unsupported { .. }) => {}
        Err(e) => panic!("lease: {e}"),
    }
    // Release, then a new holder gets a still larger token.
    store.release_lease(&b).await.unwrap();
    let c = store.acquire_lease("conf-t", "c", ttl, 15_003).await.unwrap();
    assert!(c.token > b.token, "tokens never repeat, even after a release");

    // A store that holds leases in process: held, they do not expire, and
    // dropping the hold releases them.
    if let Some(hold) = store.hold_lease(&c) {
        let long_after = 15_003 + 100 * 10_000;
        match store.acquire_lease("conf-t", "d", ttl, long_after).await {
            Err(Error::TargetLocked {
                holder, expires_at_ms, ..
            }) => {
                assert_eq!((holder.as_str(), expires_at_ms), ("c", Lease::HELD));
            }
            other => panic!("a held lease must not expire, got {other:?}"),
        }
        let renewed = store.renew_lease(&c, ttl, long_after).await.unwrap();
        let again = store.acquire_lease("conf-t", "c", ttl, long_after).await.unwrap();
        assert_eq!(
            (renewed.expires_at_ms, again.expires_at_ms, again.token),
            (Lease::HELD, Lease::HELD, c.token),
            "renewing or re-acquiring a held lease keeps it held"
        );
        drop(hold);
        let d = store
            .acquire_lease("conf-t", "d", ttl, long_after)
            .await
            .expect("dropping the hold releases the lease");
        assert!(d.token > c.token);
        assert!(store.hold_lease(&c).is_none(), "a lease no longer held cannot be held");
        // A hold outliving its lease does not release the next holder's.
        let stale = store.hold_lease(&d);
        store.release_lease(&d).await.unwrap();
        store.acquire_lease("conf-t", "e", ttl, long_after).await.unwrap();
        drop(stale);
        assert!(
            matches!(
                store.acquire_lease("conf-t", "f", ttl, long_after + 1).await,
                Err(Error::TargetLocked { .. })
            ),
            "a hold dropped after its release must not release the next holder's lease"
        );
    }
}

/// Append, read back in order, verify.
pub async fn audit_sink_conformance(sink: &dyn AuditSink) {
    let before = sink.entries().await.unwrap().len() as u64;
    for i in 0..3 {
        let e = sink
            .append(&AuditEvent {
                at_ms: i,
                actor: "conf".into(),
                rollout: "r".into(),
                action: "test".into(),
                detail: serde_json::json!({"i": i}).into(),
            })
            .await
            .unwrap();
        assert_eq!(e.seq, before + i as u64 + 1, "sequence numbers have no gaps");
    }
    let all = sink.entries().await.unwrap();
    assert_eq!(all.len() as u64, before + 3);
    assert_eq!(sink.verify().await.unwrap(), before + 3);
    // Appenders at once (engines sharing the sink, or its log): one chain,
    // every entry in it once.
    let append = |i: i64| async move {
        sink.append(&AuditEvent {
            at_ms: i,
            actor: format!("conf-{i}"),
            rollout: "r".into(),
            action: "test.concurrent".into(),
            detail: serde_json::json!({"i": i}).into(),
        })
        .await
        .unwrap()
        .seq
    };
    let (a, b, c, d, e, f) = tokio::join!(append(0), append(1), append(2), append(3), append(4), append(5));
    let mut seqs = [a, b, c, d, e, f];
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        std::array::from_fn(|i| before + 4 + i as u64),
        "one sequence, no gap"
    );
    assert_eq!(
        sink.verify().await.unwrap(),
        before + 9,
        "the chain verifies after concurrent appends"
    );
    let actors: std::collections::BTreeSet<String> = sink.entries().await.unwrap()[before as usize + 3..]
        .iter()
        .map(|e| e.event.actor.clone())
        .collect();
    assert_eq!(actors.len(), 6, "every concurrent entry is in the chain once");
}

/// How long [`target_conformance`] waits for a revision to report its
/// replicas ready (virtual time on a paused clock; a real target needs its
/// environment to start them, such as a stand-in kubelet).
pub const READY_WITHIN: Duration = Duration::from_secs(300);

/// Observe until revision `id` asks for exactly `n` replicas and reports
/// them ready; panics naming the broken rule otherwise.
async fn until_ready(target: &dyn Target, id: &RevisionId, n: u32, after: &str) -> TargetState {
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    loop {
        let s = target.observe().await.unwrap();
        let r = s.revision(id);
        if let Some(r) = r {
            assert!(
                r.desired == n || r.autoscaled,
                "{after} sets revision {id} to {n} replicas (never adds to them), yet observe reports {} asked for: {s:?}",
                r.desired
            );
            assert_eq!(
                r.failed, 0,
                "{after}: a healthy revision {id} reports failed replicas: {s:?}"
            );
            if r.ready >= n {
                return s;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{after}: observe never reported revision {id} with {n} ready replicas within {READY_WITHIN:?} \
             (observe must count ready replicas): {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The primitives of a target, as its [`Capabilities`](crate::Capabilities)
/// declare them: `first` and `second` must differ, and the target's
/// environment must start their replicas (the suite waits up to
/// [`READY_WITHIN`] for `observe` to report them ready).
///
/// Every target: `stage` and `scale` set a revision's replica count (again
/// with the same count changes nothing; they never add to it), `observe`
/// reports the count asked for and the replicas ready, `route`, `promote`
/// and `retire` are idempotent, and a split that sends traffic nowhere is
/// refused as [`Error::InvalidSpec`] changing nothing.
///
/// A target that runs two revisions side by side: a revision with traffic
/// cannot be retired (`Conflict`); weighted routing reports exactly the
/// weights set, a switch reports all traffic on the revision switched to,
/// a replica ratio the split its ready replicas make. On such a target that
/// runs nothing yet, a first release is rolled back first: staged, given
/// all traffic, then retired with its traffic, which must leave nothing
/// deployed.
///
/// A target that runs one revision at a time (`max_revisions` 1, such as a
/// rolling update): staging the second replaces the first, and routing to
/// and promoting it makes it stable.
pub async fn target_conformance(target: &dyn Target, first: &RevisionSpec, second: &RevisionSpec) {
    assert_ne!(first.id, second.id);
    let caps = target.capabilities();
    let before = target.observe().await.unwrap();
    match target.route(&TrafficSplit::default()).await {
        Err(Error::InvalidSpec { .. }) => {}
        other => panic!("a split that sends traffic nowhere must be InvalidSpec, got {other:?}"),
    }
    assert_eq!(
        target.observe().await.unwrap().traffic,
        before.traffic,
        "a refused split changes nothing"
    );
    if caps.max_revisions <= 1 {
        return one_at_a_time(target, first, second).await;
    }
    if before.stable.is_none() && before.revisions.is_empty() {
        target.stage(first, 1).await.unwrap();
        target.route(&TrafficSplit::all(&first.id)).await.unwrap();
        target
            .retire(&first.id)
            .await
            .expect("the only revision is retired with its traffic (a first release rolled back)");
        let s = target.observe().await.unwrap();
        assert!(
            s.revision(&first.id).is_none() && s.traffic.weight(&first.id) == 0,
            "a retired first release leaves nothing deployed: {s:?}"
        );
    }
    establish(target, first).await;
    target.stage(second, 1).await.unwrap();
    until_ready(target, &second.id, 1, "stage").await;
    let split = match caps.routing {
        Routing::Switch | Routing::None => TrafficSplit::all(&second.id),
        Routing::Weighted | Routing::ReplicaRatio => TrafficSplit::canary(&first.id, &second.id, 20).unwrap(),
    };
    target.route(&split).await.unwrap();
    target.route(&split).await.expect("route is idempotent");
    let s = target.observe().await.unwrap();
    assert_eq!(s.stable.as_ref(), Some(&first.id), "routing does not promote: {s:?}");
    match caps.routing {
        Routing::Weighted | Routing::Switch => assert_eq!(
            (s.traffic.weight(&first.id), s.traffic.weight(&second.id)),
            (split.weight(&first.id), split.weight(&second.id)),
            "observe reports the weights route set, each on its own revision ({split} asked): {s:?}"
        ),
        Routing::ReplicaRatio | Routing::None => {}
    }
    assert!(
        matches!(target.retire(&second.id).await, Err(Error::Conflict { .. })),
        "retiring a revision with traffic must conflict"
    );
    scale_to_three(target, &second.id).await;
    target.route(&TrafficSplit::all(&first.id)).await.unwrap();
    let s = target.observe().await.unwrap();
    if caps.routing != Routing::ReplicaRatio {
        assert_eq!(s.traffic.weight(&first.id), 100, "all traffic routed back: {s:?}");
    }
    target.retire(&second.id).await.unwrap();
    target
        .retire(&second.id)
        .await
        .expect("retire of an absent revision succeeds");
    assert!(target.observe().await.unwrap().revision(&second.id).is_none());
}

/// Stage `first` at 2 replicas (twice), wait until they are ready, give it
/// all traffic and promote it (twice).
async fn establish(target: &dyn Target, first: &RevisionSpec) {
    target.stage(first, 2).await.unwrap();
    target.stage(first, 2).await.expect("stage is idempotent");
    until_ready(target, &first.id, 2, "stage, twice,").await;
    target.route(&TrafficSplit::all(&first.id)).await.unwrap();
    target.promote(&first.id).await.unwrap();
    target.promote(&first.id).await.expect("promote is idempotent");
}

/// Scale `id` to 3 replicas (twice) and wait until they are ready.
async fn scale_to_three(target: &dyn Target, id: &RevisionId) {
    target.scale(id, 3).await.unwrap();
    target.scale(id, 3).await.expect("scale is idempotent");
    until_ready(target, id, 3, "scale, twice,").await;
}

/// [`target_conformance`] for a target that runs one revision at a time.
async fn one_at_a_time(target: &dyn Target, first: &RevisionSpec, second: &RevisionSpec) {
    establish(target, first).await;
    target.stage(second, 2).await.unwrap();
    until_ready(target, &second.id, 2, "stage of a second revision").await;
    target.route(&TrafficSplit::all(&second.id)).await.unwrap();
    target
        .route(&TrafficSplit::all(&second.id))
        .await
        .expect("route is idempotent");
    target.promote(&second.id).await.unwrap();
    target.promote(&second.id).await.expect("promote is idempotent");
    let s = target.observe().await.unwrap();
    assert_eq!(
        s.stable.as_ref(),
        Some(&second.id),
        "the promoted revision is stable: {s:?}"
    );
    scale_to_three(target, &second.id).await;
}

/// The contract of a [`HealthProbe`]. `measured` asks for a metric and
/// scope the probe's source has data for; `absent`, where the source can
/// have none (a metrics store asked about a revision that never ran, where
/// an HTTP check would measure a failed request), for one it has none for;
/// `unknown`, where the probe has a fixed set of metrics, for a metric it
/// does not know.
///
/// A measurement has a value that is a number, or counts, and a `source`
/// saying where it came from; counts never have more failures than events.
/// No data is an empty sample (or NaN only), never an error: the judge
/// calls it inconclusive, while an error counts towards the analysis's
/// limit of consecutive probe errors. An unknown metric is
/// [`Error::InvalidSpec`] naming `analysis.checks.metric`, so the user
/// learns which check to fix.
pub async fn health_probe_conformance(
    probe: &dyn HealthProbe,
    measured: &ProbeQuery,
    absent: Option<&ProbeQuery>,
    unknown: Option<&ProbeQuery>,
) {
    let sample = probe
        .sample(measured)
        .await
        .unwrap_or_else(|e| panic!("measuring {measured:?} must succeed: {e}"));
    assert!(
        sample.values.iter().any(|v| !v.is_nan()) || sample.counts.is_some_and(|c| c.total > 0),
        "a measurement has a value or counts: {sample:?}"
    );
    assert!(
        !sample.source.is_empty(),
        "a sample says where it came from: {sample:?}"
    );
    if let Some(c) = sample.counts {
        assert!(
            c.failures <= c.total,
            "counts never have more failures than events: {c:?}"
        );
    }
    let again = probe.sample(measured).await;
    assert!(again.is_ok(), "measuring again succeeds: {again:?}");
    if let Some(absent) = absent {
        let nothing = probe
            .sample(absent)
            .await
            .unwrap_or_else(|e| panic!("no data is an empty sample, not an error ({absent:?}): {e}"));
        assert!(
            nothing.values.iter().all(|v| v.is_nan()) && nothing.counts.is_none_or(|c| c.total == 0),
            "no data is an empty sample: {nothing:?}"
        );
    }
    if let Some(unknown) = unknown {
        match probe.sample(unknown).await {
            Err(Error::InvalidSpec { path, .. }) if path == "analysis.checks.metric" => {}
            other => panic!("an unknown metric is InvalidSpec naming analysis.checks.metric, got {other:?}"),
        }
    }
}

/// Fetch current and pinned versions; a missing secret is `NotFound`; the
/// value is absent from `Debug` and errors. `planted` is the value stored at
/// `reference` (current version).
pub async fn secret_store_conformance(store: &dyn SecretStore, reference: &SecretRef, planted: &str) {
    use secrecy::ExposeSecret;
    let current = store.fetch(reference).await.unwrap();
    assert_eq!(current.value.expose_secret(), planted);
    assert!(
        !format!("{current:?}").contains(planted),
        "Debug must not show the value"
    );
    let pinned = store.fetch(&reference.pinned(current.version.clone())).await.unwrap();
    assert_eq!(pinned.version, current.version);
    let mut missing = reference.clone();
    missing.path.push_str("-does-not-exist");
    match store.fetch(&missing).await {
        Err(e @ Error::NotFound { .. }) => assert!(!e.to_string().contains(planted)),
        other => panic!("a missing secret must be NotFound, got {other:?}"),
    }
    match store.fetch(&reference.pinned("no-such-version")).await {
        Err(e) => assert!(!e.to_string().contains(planted), "errors must not show the value"),
        Ok(_) => panic!("an unknown version must not resolve"),
    }
}

/// Resolve by tag and by digest; unknown tags and digests are `NotFound`;
/// a digest that does not match is never substituted. `tagged` must name an
/// existing tag whose image has digest `digest`.
pub async fn artifact_store_conformance(
    store: &dyn crate::ArtifactStore,
    tagged: &crate::ArtifactRef,
    digest: &Digest,
) {
    let by_tag = store.resolve(tagged).await.unwrap();
    assert_eq!(&by_tag.digest, digest, "a tag resolves to its digest");
    let pinned = crate::ArtifactRef {
        tag: None,
        digest: Some(digest.clone()),
        ..tagged.clone()
    };
    assert_eq!(
        &store.resolve(&pinned).await.unwrap().digest,
        digest,
        "a digest resolves to itself"
    );
    let mut missing_tag = tagged.clone();
    missing_tag.tag = Some("no-such-tag-relay-conformance".into());
    assert!(
        matches!(store.resolve(&missing_tag).await, Err(Error::NotFound { .. })),
        "an unknown tag is NotFound"
    );
    let other = crate::ArtifactRef {
        tag: None,
        digest: Some(Digest::of(b"relay conformance: no such image")),
        ..tagged.clone()
    };
    match store.resolve(&other).await {
        Err(Error::NotFound { .. }) => {}
        Ok(a) => panic!("an unknown digest resolved to {}", a.digest),
        Err(e) => panic!("an unknown digest must be NotFound, got {e:?}"),
    }
}
