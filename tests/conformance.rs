//! Every provider of this crate runs the shared conformance suites.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use relay::providers::sim::{MemorySecretStore, SimTarget};
use relay::testing;
use relay::{
    Artifact, Digest, FileStateStore, JsonlAuditSink, MemoryAuditSink, MemoryStateStore, RevisionSpec, SecretRef,
};

#[tokio::test]
async fn memory_state_store() {
    testing::state_store_conformance(&MemoryStateStore::new()).await;
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
    let artifact = Artifact {
        repository: "app".into(),
        tag: None,
        digest: Digest::of(content),
        metadata: BTreeMap::new(),
    };
    RevisionSpec::new(artifact, BTreeMap::new(), BTreeMap::new())
}

#[tokio::test(start_paused = true)]
async fn sim_target() {
    testing::target_conformance(&SimTarget::new("t"), &revision(b"1"), &revision(b"2")).await;
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
