//! How users mock a seam: a mockall `MockTarget` (feature `mock`) that
//! asserts each call the engine makes for a first deployment.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use relay::providers::sim::MemoryArtifactStore;
use relay::strategies::AllAtOnceStrategy;
use relay::{Capabilities, MockTarget, Relay, Release, RevisionState, RolloutSpec, Routing, TargetState, TrafficSplit};

#[tokio::test(start_paused = true)]
async fn a_mocked_target_sees_exactly_the_expected_calls() {
    let artifacts = Arc::new(MemoryArtifactStore::new());
    let artifact = artifacts.push("app", "v1", b"v1", Default::default());
    let staged = Arc::new(Mutex::new(None));

    let mut target = MockTarget::new();
    target.expect_name().return_const("mocked".to_string());
    target
        .expect_capabilities()
        .return_const(Capabilities::new(Routing::Weighted, 2));
    let seen = staged.clone();
    target.expect_observe().returning(move || {
        // Empty before staging, ready after.
        Ok(match seen.lock().unwrap().clone() {
            None => TargetState::default(),
            Some(id) => TargetState {
                stable: None,
                revisions: vec![RevisionState::new(id, 3, 3)],
                traffic: TrafficSplit::default(),
            },
        })
    });
    let record = staged.clone();
    let digest = artifact.digest.clone();
    target
        .expect_stage()
        .withf(move |rev, replicas| rev.artifact.digest == digest && *replicas == 3)
        .times(1)
        .returning(move |rev, _| {
            *record.lock().unwrap() = Some(rev.id.clone());
            Ok(())
        });
    let record = staged.clone();
    target
        .expect_route()
        .withf(move |split| {
            record
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|id| split == &TrafficSplit::all(id))
        })
        .times(1)
        .returning(|_| Ok(()));
    target.expect_promote().times(1).returning(|_| Ok(()));
    target.expect_scale().never();
    target.expect_retire().never();

    let relay = Relay::builder()
        .target(Arc::new(target))
        .artifacts(artifacts)
        .build()
        .unwrap();
    let outcome = relay
        .start(RolloutSpec::new(
            "mocked",
            Release::new("app:v1".parse().unwrap()).replicas(3),
            AllAtOnceStrategy,
        ))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(outcome.is_success(), "{outcome}");
    // mockall checks `times` when the mock is dropped with the engine.
}
