//! The Secret store and the state store (ConfigMaps and Leases).

use std::collections::BTreeMap;

use relay::providers::kubernetes::{KubeSecretStore, KubeStateStore};
use relay::providers::sim::{MemoryArtifactStore, SimTarget};
use relay::strategies::AllAtOnceStrategy;
use relay::{testing, Error, Relay, Release, RolloutSpec, SecretStore, StateStore};

use crate::support::{client, namespace, provider_client, put_secret, PLANTED};

#[tokio::test]
async fn secrets_pass_the_secret_store_conformance_suite() {
    let client = client().await;
    let ns = namespace(&client).await;
    put_secret(
        &client,
        &ns,
        "db",
        &[("password", PLANTED.as_bytes()), ("user", b"app")],
    )
    .await;
    let store = KubeSecretStore::new(provider_client().await, &ns);
    testing::secret_store_conformance(&store, &"k8s://db#password".parse().unwrap(), PLANTED).await;
    let other_namespace = store
        .fetch(&format!("k8s://{ns}/db#user").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(secrecy::ExposeSecret::expose_secret(&other_namespace.value), "app");
}

#[tokio::test]
async fn a_pinned_version_is_never_silently_replaced_by_a_newer_value() {
    let client = client().await;
    let ns = namespace(&client).await;
    let first = put_secret(&client, &ns, "db", &[("password", b"old-value")]).await;
    let pinned = first.metadata.resource_version.unwrap();
    put_secret(&client, &ns, "db", &[("password", PLANTED.as_bytes())]).await;
    let store = KubeSecretStore::new(provider_client().await, &ns);
    let e = store
        .fetch(&format!("k8s://db#password?version={pinned}").parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what } if what.contains("has changed")),
        "{e:?}"
    );
    assert!(!format!("{e} {e:?}").contains(PLANTED));
    let current = store.fetch(&"k8s://db#password".parse().unwrap()).await.unwrap();
    assert_ne!(current.version, pinned);
}

#[tokio::test]
async fn bad_references_fail_clearly_and_never_show_the_value() {
    let client = client().await;
    let ns = namespace(&client).await;
    put_secret(
        &client,
        &ns,
        "db",
        &[("password", PLANTED.as_bytes()), ("blob", &[0xff, 0xfe])],
    )
    .await;
    let store = KubeSecretStore::new(provider_client().await, &ns);
    let fetch = |r: &str| {
        let store = store.clone();
        let r = r.to_owned();
        async move { store.fetch(&r.parse().unwrap()).await.unwrap_err() }
    };
    let no_key = fetch("k8s://db").await;
    assert!(matches!(no_key, Error::InvalidSpec { .. }), "{no_key:?}");
    let missing_key = fetch("k8s://db#nope").await;
    assert!(matches!(missing_key, Error::NotFound { .. }), "{missing_key:?}");
    let missing = fetch("k8s://absent#password").await;
    assert!(matches!(missing, Error::NotFound { .. }), "{missing:?}");
    let binary = fetch("k8s://db#blob").await;
    assert!(matches!(binary, Error::InvalidSpec { .. }), "{binary:?}");
    for e in [no_key, missing_key, missing, binary] {
        assert!(!format!("{e} {e:?}").contains(PLANTED), "the value leaked into {e:?}");
    }
}

#[tokio::test]
async fn the_state_store_passes_the_state_store_conformance_suite() {
    let client = client().await;
    let ns = namespace(&client).await;
    testing::state_store_conformance(&KubeStateStore::new(provider_client().await, &ns)).await;
}

/// The Lease is one other tools read: `kubectl get lease` shows its holder,
/// and `renewTime` + `leaseDurationSeconds` say when it lapses.
#[tokio::test]
async fn a_target_lease_carries_the_standard_lease_fields() {
    use relay::providers::kubernetes::sdk::k8s_openapi::api::coordination::v1::Lease;
    use relay::providers::kubernetes::sdk::kube::api::{Api, ListParams};
    let client = client().await;
    let ns = namespace(&client).await;
    let store = KubeStateStore::new(provider_client().await, &ns);
    let ttl = std::time::Duration::from_secs(30);
    let t0: i64 = 1_790_000_000_000;
    let read = || async {
        let leases = Api::<Lease>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        assert_eq!(leases.len(), 1);
        leases[0].spec.clone().unwrap()
    };
    let ms = |t: &relay::providers::kubernetes::sdk::k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime| {
        t.0.as_millisecond()
    };
    let lease = store.acquire_lease("web", "engine-a#1", ttl, t0).await.unwrap();
    let spec = read().await;
    assert_eq!(spec.holder_identity.as_deref(), Some("engine-a#1"));
    assert_eq!(spec.lease_duration_seconds, Some(30));
    assert_eq!(spec.renew_time.as_ref().map(ms), Some(t0));
    assert_eq!(spec.acquire_time.as_ref().map(ms), Some(t0));
    assert_eq!(spec.lease_transitions, Some(i32::try_from(lease.token).unwrap()));

    store.renew_lease(&lease, ttl, t0 + 10_000).await.unwrap();
    let spec = read().await;
    assert_eq!(spec.renew_time.as_ref().map(ms), Some(t0 + 10_000), "renewed");
    assert_eq!(spec.acquire_time.as_ref().map(ms), Some(t0), "acquired when taken");

    // Lapsed (40 s after the renewal at +10 s, with a 30 s duration): another
    // holder takes it, and it is theirs from now.
    let taken = store
        .acquire_lease("web", "engine-b#2", ttl, t0 + 50_000)
        .await
        .unwrap();
    let spec = read().await;
    assert_eq!(spec.holder_identity.as_deref(), Some("engine-b#2"));
    assert_eq!(spec.acquire_time.as_ref().map(ms), Some(t0 + 50_000));
    assert_eq!(spec.lease_transitions, Some(i32::try_from(taken.token).unwrap()));
    assert!(taken.token > lease.token);

    store.release_lease(&taken).await.unwrap();
    let spec = read().await;
    assert_eq!(spec.holder_identity, None, "released: no holder");
    assert_eq!(spec.renew_time, None);
    assert_eq!(store.lease("web").await.unwrap(), None);
}

/// Two processes (two clients) write the same record from the same version
/// at once: exactly one write lands, the other is a conflict, never an
/// overwrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_record_writes_conflict_instead_of_overwriting() {
    let ns = namespace(&client().await).await;
    let (a, b) = (
        KubeStateStore::new(provider_client().await, &ns),
        KubeStateStore::new(provider_client().await, &ns),
    );
    for round in 0..5 {
        let id = format!("race-{round}");
        let record = testing::sample_record(&id, "web", 0);
        let v1 = a.put(&record, None).await.unwrap();
        let (mut from_a, mut from_b) = (record.clone(), record.clone());
        from_a.cursor = 1;
        from_b.cursor = 2;
        let (ra, rb) = tokio::join!(a.put(&from_a, Some(v1)), b.put(&from_b, Some(v1)));
        let winner = match (ra, rb) {
            (Ok(_), Err(Error::Conflict { .. })) => 1,
            (Err(Error::Conflict { .. }), Ok(_)) => 2,
            other => panic!("exactly one write must land: {other:?}"),
        };
        let stored = a.get(&id).await.unwrap().unwrap();
        assert_eq!(stored.cursor, winner, "the stored record is the winner's");
    }
}

/// Two engines with their own clients start a rollout on the same target at
/// once: the Lease lets exactly one proceed; the other gets `TargetLocked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_racing_for_a_target_exactly_one_proceeds() {
    let ns = namespace(&client().await).await;
    let engine = |store: KubeStateStore| {
        let artifacts = MemoryArtifactStore::new();
        artifacts.push("shop/web", "v1", b"build 1", BTreeMap::new());
        let target = SimTarget::new("web").default_behavior(relay::providers::sim::RevisionBehavior {
            readiness_delay: std::time::Duration::from_millis(10),
            ..Default::default()
        });
        Relay::builder()
            .target(std::sync::Arc::new(target))
            .config(relay::EngineConfig {
                poll_interval: std::time::Duration::from_millis(10),
                ..Default::default()
            })
            .artifacts(std::sync::Arc::new(artifacts))
            .state(std::sync::Arc::new(store))
            .build()
            .unwrap()
    };
    let a = engine(KubeStateStore::new(provider_client().await, &ns));
    let b = engine(KubeStateStore::new(provider_client().await, &ns));
    let spec = || RolloutSpec::new("web", Release::new("shop/web:v1".parse().unwrap()), AllAtOnceStrategy);
    let (ra, rb) = tokio::join!(a.start(spec()), b.start(spec()));
    let (handle, locked) = match (ra, rb) {
        (Ok(h), Err(e)) | (Err(e), Ok(h)) => (h, e),
        (Ok(_), Ok(_)) => panic!("both engines proceeded on one target"),
        (Err(x), Err(y)) => panic!("neither proceeded: {x:?} / {y:?}"),
    };
    assert!(matches!(locked, Error::TargetLocked { .. }), "{locked:?}");
    let outcome = handle.wait().await.unwrap();
    assert!(outcome.is_success(), "{outcome}");
    let store = KubeStateStore::new(provider_client().await, &ns);
    assert_eq!(store.list_target("web").await.unwrap().len(), 1, "one rollout record");
}

/// A promoted and a rolled-back rollout read a value planted in a
/// Kubernetes Secret, with every log line at TRACE captured: the value is
/// nowhere.
#[tokio::test]
async fn a_planted_secret_value_never_leaks() {
    let client = client().await;
    let ns = namespace(&client).await;
    put_secret(&client, &ns, "db", &[("password", PLANTED.as_bytes())]).await;
    let store = std::sync::Arc::new(KubeSecretStore::new(provider_client().await, &ns));
    let observed = crate::planted::two_rollouts("k8s", store.clone(), "k8s://db#password").await;
    let missing = store
        .fetch(&"k8s://db#password?version=1".parse().unwrap())
        .await
        .unwrap_err();
    crate::planted::assert_nowhere(PLANTED, &observed, &format!("{missing} {missing:?} {store:?}"));
}
