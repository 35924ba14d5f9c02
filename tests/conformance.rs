//! Every provider of this crate runs the shared conformance suites.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use async_trait::async_trait;
use relay::providers::sim::{metrics, MemorySecretStore, SimProbe, SimTarget};
use relay::testing;
use relay::{
    Capabilities, FileStateStore, JsonlAuditSink, MemoryAuditSink, MemoryStateStore, ProbeQuery, RevisionId,
    RevisionSpec, Routing, Scope, SecretRef, StateStore, Target, TargetState, TrafficSplit,
};

#[tokio::test]
async fn memory_state_store() {
    testing::state_store_conformance(&MemoryStateStore::new()).await;
}

#[tokio::test]
async fn a_memory_store_limited_to_the_latest_finished_records_passes_and_forgets_the_oldest() {
    testing::state_store_conformance(&MemoryStateStore::new().keep_finished(1)).await;

    async fn finish(store: &MemoryStateStore, id: &str, target: &str, token: u64) {
        let mut r = testing::sample_record(id, target, token);
        let v = store.put(&r, None).await.unwrap();
        r.status = relay::RolloutStatus::Finished(relay::Outcome::NoChange);
        let v = store.put(&r, Some(v)).await.unwrap();
        // Writing a finished record again does not count it twice.
        store.put(&r, Some(v)).await.unwrap();
    }
    let ids = |rs: Vec<relay::RolloutRecord>| {
        let mut ids: Vec<String> = rs.into_iter().map(|r| r.id).collect();
        ids.sort();
        ids
    };
    let ttl = std::time::Duration::from_secs(60);
    let store = MemoryStateStore::new().keep_finished(2);
    let a = store.acquire_lease("a", "h", ttl, 0).await.unwrap();
    let b = store.acquire_lease("b", "h", ttl, 0).await.unwrap();
    store
        .put(&testing::sample_record("a-running", "a", a.token), None)
        .await
        .unwrap();
    for n in 0..5 {
        finish(&store, &format!("a{n}"), "a", a.token).await;
    }
    finish(&store, "b0", "b", b.token).await;
    assert_eq!(ids(store.list_target("a").await.unwrap()), ["a-running", "a3", "a4"]);
    assert_eq!(ids(store.list_target("b").await.unwrap()), ["b0"]);
    assert!(store.get("a0").await.unwrap().is_none());

    let all = MemoryStateStore::new();
    let a = all.acquire_lease("a", "h", ttl, 0).await.unwrap();
    for n in 0..5 {
        finish(&all, &format!("a{n}"), "a", a.token).await;
    }
    assert_eq!(all.list_target("a").await.unwrap().len(), 5, "every record by default");
}

#[tokio::test]
async fn file_state_store() {
    let dir = tempfile::tempdir().unwrap();
    testing::state_store_conformance(&FileStateStore::open(dir.path()).unwrap()).await;
    // A second store on the same directory sees the same state.
    let other = FileStateStore::open(dir.path()).unwrap();
    assert!(relay::StateStore::get(&other, "conf-r1").await.unwrap().is_some());
}

#[tokio::test]
async fn audit_sinks() {
    testing::audit_sink_conformance(&MemoryAuditSink::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    testing::audit_sink_conformance(&JsonlAuditSink::open(&path).unwrap()).await;
    // Reopening continues the chain.
    testing::audit_sink_conformance(&JsonlAuditSink::open(&path).unwrap()).await;
}

fn revision(content: &[u8]) -> RevisionSpec {
    testing::revision("app", content).build()
}

#[tokio::test(start_paused = true)]
async fn sim_target() {
    testing::target_conformance(&SimTarget::new("t"), &revision(b"1"), &revision(b"2")).await;
}

/// The suite follows the declared capabilities: a switch, a replica ratio,
/// and one revision replaced in place.
#[tokio::test(start_paused = true)]
async fn sim_targets_of_every_routing() {
    for target in [
        SimTarget::new("switch").routing(Routing::Switch),
        SimTarget::new("ratio").routing(Routing::ReplicaRatio),
        SimTarget::new("in-place").replace_in_place(),
    ] {
        testing::target_conformance(&target, &revision(b"1"), &revision(b"2")).await;
    }
}

/// A bug planted in an otherwise correct target.
#[derive(Clone, Copy, Debug)]
enum Bug {
    /// `stage` of a revision that runs adds the replicas to its count.
    StageAdds,
    /// `route` gives each revision the other's weight.
    SwappedWeights,
    /// `observe` never reports a replica ready.
    NeverReady,
    /// `retire` of a revision with traffic retires it anyway.
    RetiresWithTraffic,
    /// `scale` ignores the count.
    ScaleIgnored,
}

#[derive(Debug)]
struct Broken {
    inner: SimTarget,
    bug: Bug,
}

#[async_trait]
impl Target for Broken {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn observe(&self) -> relay::Result<TargetState> {
        let mut s = self.inner.observe().await?;
        if let Bug::NeverReady = self.bug {
            s.revisions.iter_mut().for_each(|r| r.ready = 0);
        }
        Ok(s)
    }
    async fn stage(&self, revision: &RevisionSpec, replicas: u32) -> relay::Result<()> {
        let running = self.inner.observe().await?.revision(&revision.id).map(|r| r.desired);
        match (self.bug, running) {
            (Bug::StageAdds, Some(n)) => self.inner.scale(&revision.id, n + replicas).await,
            _ => self.inner.stage(revision, replicas).await,
        }
    }
    async fn scale(&self, revision: &RevisionId, replicas: u32) -> relay::Result<()> {
        match self.bug {
            Bug::ScaleIgnored => Ok(()),
            _ => self.inner.scale(revision, replicas).await,
        }
    }
    async fn route(&self, split: &TrafficSplit) -> relay::Result<()> {
        let weights: Vec<_> = split.weights().iter().collect();
        match (self.bug, &weights[..]) {
            (Bug::SwappedWeights, [(a, wa), (b, wb)]) => {
                let swapped = TrafficSplit::new(BTreeMap::from([((*a).clone(), **wb), ((*b).clone(), **wa)])).unwrap();
                self.inner.route(&swapped).await
            }
            _ => self.inner.route(split).await,
        }
    }
    async fn promote(&self, revision: &RevisionId) -> relay::Result<()> {
        self.inner.promote(revision).await
    }
    async fn retire(&self, revision: &RevisionId) -> relay::Result<()> {
        if let Bug::RetiresWithTraffic = self.bug {
            let all: Vec<RevisionId> = self
                .inner
                .observe()
                .await?
                .revisions
                .into_iter()
                .map(|r| r.id)
                .collect();
            if let Some(other) = all.iter().find(|id| *id != revision) {
                self.inner.route(&TrafficSplit::all(other)).await?;
            }
        }
        self.inner.retire(revision).await
    }
}

/// Each planted bug fails the target suite with a message naming the rule
/// it breaks.
#[tokio::test(start_paused = true)]
async fn the_target_suite_catches_each_planted_bug() {
    for (bug, rule) in [
        (Bug::StageAdds, "never adds to them"),
        (Bug::SwappedWeights, "each on its own revision"),
        (Bug::NeverReady, "observe must count ready replicas"),
        (
            Bug::RetiresWithTraffic,
            "retiring a revision with traffic must conflict",
        ),
        (Bug::ScaleIgnored, "sets revision"),
    ] {
        let target = Broken {
            inner: SimTarget::new("broken"),
            bug,
        };
        let run = tokio::spawn(async move {
            testing::target_conformance(&target, &revision(b"1"), &revision(b"2")).await;
        });
        let panic = run.await.expect_err("the suite must fail").into_panic();
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        assert!(message.contains(rule), "{bug:?}: {message}");
    }
}

#[tokio::test]
async fn memory_secret_store() {
    let store = MemorySecretStore::new();
    store.put("app/db#password", "old-value".to_string().into());
    store.put("app/db#password", "current-value".to_string().into());
    let r: SecretRef = "mem://app/db#password".parse().unwrap();
    testing::secret_store_conformance(&store, &r, "current-value").await;
    let v1 = relay::SecretStore::fetch(&store, &r.pinned("1")).await.unwrap();
    assert_eq!(secrecy::ExposeSecret::expose_secret(&v1.value), "old-value");
}

#[tokio::test]
async fn memory_artifact_store() {
    let store = relay::providers::sim::MemoryArtifactStore::new();
    let a = store.push("shop/web", "v1", b"image", BTreeMap::new());
    testing::artifact_store_conformance(&store, &"shop/web:v1".parse().unwrap(), &a.digest).await;
}

/// Every field of a record, none at its default.
fn full_record() -> relay::RolloutRecord {
    let mut r = testing::sample_record("r-full", "web", 7);
    r.cursor = 3;
    r.rollback_step = relay::state::RollbackStep::ScaleStable;
    r.status = relay::RolloutStatus::RollingBack { cause: "errors".into() };
    r.paused = true;
    r.approvals = vec![relay::gate::Approval {
        gate: "qa".into(),
        by: "ana".into(),
        comment: "ok".into(),
        approved: true,
        at_ms: 5,
        step: Some(4),
    }];
    r.promoted_from = Some("r-staging".into());
    r.audit_head = Some(relay::audit::ChainHead {
        seq: 12,
        hash: "cd".repeat(32),
    });
    r.holder = "engine-2".into();
    r.created_ms = 10;
    r.updated_ms = 20;
    r.version = 9;
    r
}

/// A copy, made afresh or over another record (as the memory store
/// updates its copy), equals the original in every field.
#[test]
fn a_record_copied_over_another_equals_the_original() {
    let full = full_record();
    let json = |r: &relay::RolloutRecord| serde_json::to_value(r).unwrap();
    assert_eq!(json(&full.clone()), json(&full));
    let mut over = testing::sample_record("other-id-longer-than-the-first", "api", 1);
    over.clone_from(&full);
    assert_eq!(json(&over), json(&full));
    // And back over a record with more in it.
    let plain = testing::sample_record("r-plain", "web", 1);
    let mut back = full.clone();
    back.clone_from(&plain);
    assert_eq!(json(&back), json(&plain));
}

fn query(metric: &str, scope: Scope) -> ProbeQuery {
    ProbeQuery {
        metric: metric.into(),
        scope,
        window: std::time::Duration::from_secs(60),
        target: "t".into(),
        context: None,
    }
}

#[tokio::test(start_paused = true)]
async fn sim_probe() {
    let target = std::sync::Arc::new(SimTarget::new("t"));
    let first = revision(b"1");
    target.stage(&first, 2).await.unwrap();
    target.route(&TrafficSplit::all(&first.id)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    let probe = SimProbe::new(target);
    testing::health_probe_conformance(
        &probe,
        &query(metrics::ERROR_RATE, Scope::Revision(first.id.clone())),
        Some(&query(
            metrics::ERROR_RATE,
            Scope::Revision(RevisionId::from("never-ran")),
        )),
        Some(&query("no_such_metric", Scope::Target)),
    )
    .await;
}

/// A probe with one value for revision `rev-1`, breaking the contract as
/// told.
#[derive(Debug)]
struct BrokenProbe {
    /// No data is an error, rather than an empty sample.
    errors_on_no_data: bool,
}

#[async_trait]
impl relay::HealthProbe for BrokenProbe {
    async fn sample(&self, query: &ProbeQuery) -> relay::Result<relay::Sample> {
        if query.metric != metrics::ERROR_RATE {
            // What the simulated probe answered before: not the field.
            return Err(relay::Error::NotFound {
                what: format!("metric {}", query.metric),
            });
        }
        match &query.scope {
            Scope::Revision(r) if r.as_str() == "rev-1" => Ok(relay::Sample {
                values: vec![0.01],
                source: "fixed".into(),
                ..Default::default()
            }),
            _ if self.errors_on_no_data => Err(relay::Error::NotFound {
                what: "no series".into(),
            }),
            _ => Ok(relay::Sample::default()),
        }
    }
}

/// The probe suite fails a probe that reports no data as an error, or an
/// unknown metric without naming the field.
#[tokio::test]
async fn the_probe_suite_catches_a_probe_breaking_its_contract() {
    let measured = query(metrics::ERROR_RATE, Scope::Revision(RevisionId::from("rev-1")));
    let absent = query(metrics::ERROR_RATE, Scope::Revision(RevisionId::from("rev-2")));
    let unknown = query("throughput", Scope::Target);
    for (errors_on_no_data, rule) in [
        (true, "no data is an empty sample, not an error"),
        (false, "an unknown metric is InvalidSpec naming analysis.checks.metric"),
    ] {
        let (measured, absent, unknown) = (measured.clone(), absent.clone(), unknown.clone());
        let run = tokio::spawn(async move {
            let probe = BrokenProbe { errors_on_no_data };
            testing::health_probe_conformance(&probe, &measured, Some(&absent), Some(&unknown)).await;
        });
        let panic = run.await.expect_err("the suite must fail").into_panic();
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains(rule), "{message}");
    }
}
