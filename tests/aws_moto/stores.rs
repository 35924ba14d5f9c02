//! Secrets Manager and ECR stores on the emulator.

use std::sync::Arc;
use std::time::Duration;

use relay::providers::aws::sdk::secretsmanager;
use relay::providers::aws::{EcrArtifactStore, SecretsManagerStore};
use relay::providers::sim::SimTarget;
use relay::strategies::AllAtOnceStrategy;
use relay::{testing, ArtifactRef, Error, Relay, Release, RolloutSpec, SecretStore};
use secrecy::ExposeSecret;

use crate::support::{config, config_for, push_image, unique, MANIFEST, PLANTED};

async fn secret_with_two_versions(sm: &secretsmanager::Client) -> (String, String) {
    let name = unique("relay/db");
    let first = sm
        .create_secret()
        .name(&name)
        .secret_string(r#"{"password":"old-value","user":"app"}"#)
        .send()
        .await
        .unwrap();
    let second = sm
        .put_secret_value()
        .secret_id(&name)
        .secret_string(format!(r#"{{"password":"{PLANTED}","user":"app"}}"#))
        .send()
        .await
        .unwrap();
    assert_ne!(first.version_id(), second.version_id());
    (name, first.version_id().unwrap().to_owned())
}

#[tokio::test]
async fn secrets_manager_passes_the_secret_store_conformance_suite() {
    let cfg = config().await;
    let sm = secretsmanager::Client::new(&cfg);
    let (name, _) = secret_with_two_versions(&sm).await;
    let store = SecretsManagerStore::new(&cfg);
    let reference = format!("aws-sm://{name}#password").parse().unwrap();
    testing::secret_store_conformance(&store, &reference, PLANTED).await;
}

#[tokio::test]
async fn versions_and_stages_are_pinned() {
    let cfg = config().await;
    let sm = secretsmanager::Client::new(&cfg);
    let (name, old_version) = secret_with_two_versions(&sm).await;
    let store = SecretsManagerStore::new(&cfg);
    let current = store
        .fetch(&format!("aws-sm://{name}#password").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(current.value.expose_secret(), PLANTED);
    let previous = store
        .fetch(&format!("aws-sm://{name}#password?stage=AWSPREVIOUS").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        (previous.value.expose_secret(), previous.version.as_str()),
        ("old-value", old_version.as_str())
    );
    let pinned = store
        .fetch(&format!("aws-sm://{name}#user?version={old_version}").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        (pinned.value.expose_secret(), pinned.version.as_str()),
        ("app", old_version.as_str())
    );
    // A newer version does not move a pinned reference.
    sm.put_secret_value()
        .secret_id(&name)
        .secret_string(r#"{"password":"newest"}"#)
        .send()
        .await
        .unwrap();
    let still = store
        .fetch(
            &format!("aws-sm://{name}#password?version={}", current.version)
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(still.value.expose_secret(), PLANTED);
}

#[tokio::test]
async fn bad_references_fail_clearly_and_never_show_the_value() {
    let cfg = config().await;
    let sm = secretsmanager::Client::new(&cfg);
    let (name, _) = secret_with_two_versions(&sm).await;
    let store = SecretsManagerStore::new(&cfg);
    let fetch = |r: String| {
        let store = store.clone();
        async move { store.fetch(&r.parse().unwrap()).await.unwrap_err() }
    };
    let missing = fetch(format!("aws-sm://{name}-missing")).await;
    assert!(matches!(missing, Error::NotFound { .. }), "{missing:?}");
    let no_field = fetch(format!("aws-sm://{name}#nope")).await;
    assert!(matches!(no_field, Error::NotFound { .. }), "{no_field:?}");
    let plain = unique("relay/plain");
    sm.create_secret()
        .name(&plain)
        .secret_string(format!("not json {PLANTED}"))
        .send()
        .await
        .unwrap();
    let not_json = fetch(format!("aws-sm://{plain}#password")).await;
    assert!(matches!(not_json, Error::InvalidSpec { .. }), "{not_json:?}");
    let binary = unique("relay/binary");
    sm.create_secret()
        .name(&binary)
        .secret_binary(secretsmanager::primitives::Blob::new(PLANTED.as_bytes()))
        .send()
        .await
        .unwrap();
    let bin = fetch(format!("aws-sm://{binary}")).await;
    assert!(matches!(bin, Error::InvalidSpec { .. }), "{bin:?}");
    for e in [missing, no_field, not_json, bin] {
        assert!(!format!("{e} {e:?}").contains(PLANTED), "the value leaked into {e:?}");
    }
    assert!(
        !format!("{store:?}").contains("testing"),
        "Debug shows no credential: {store:?}"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_retryable_error() {
    // The discard port: nothing listens there.
    let cfg = config_for("http://127.0.0.1:9").await;
    let e = SecretsManagerStore::new(&cfg)
        .fetch(&"aws-sm://x".parse().unwrap())
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
}

#[tokio::test]
async fn ecr_passes_the_artifact_store_conformance_suite() {
    let cfg = config().await;
    let repo = unique("shop/web");
    let digest = push_image(&cfg, &repo, "v1", MANIFEST).await;
    let store = EcrArtifactStore::new(&cfg);
    testing::artifact_store_conformance(&store, &format!("{repo}:v1").parse().unwrap(), &digest).await;
    let missing: ArtifactRef = format!("{}-absent:v1", repo).parse().unwrap();
    assert!(matches!(
        relay::ArtifactStore::resolve(&store, &missing).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_pins_the_secret_version_and_image_digest_it_resolved() {
    let cfg = config().await;
    let sm = secretsmanager::Client::new(&cfg);
    let (name, _) = secret_with_two_versions(&sm).await;
    let repo = unique("shop/api");
    let digest = push_image(&cfg, &repo, "v1", MANIFEST).await;
    let target = Arc::new(
        SimTarget::new("api").default_behavior(relay::providers::sim::RevisionBehavior {
            readiness_delay: Duration::from_millis(10),
            ..Default::default()
        }),
    );
    let relay = Relay::builder()
        .target(target)
        .artifacts(Arc::new(EcrArtifactStore::new(&cfg)))
        .secrets("aws-sm", Arc::new(SecretsManagerStore::new(&cfg)))
        .config(relay::EngineConfig {
            poll_interval: Duration::from_millis(10),
            ..Default::default()
        })
        .build()
        .unwrap();
    let release = Release::new(format!("{repo}:v1").parse().unwrap())
        .replicas(2)
        .secret("DB_PASSWORD", format!("aws-sm://{name}#password").parse().unwrap());
    let handle = relay
        .start(RolloutSpec::new("api", release.clone(), AllAtOnceStrategy))
        .await
        .unwrap();
    let id = handle.id().to_string();
    assert!(handle.wait().await.unwrap().is_success());
    let record = relay.state().get(&id).await.unwrap().unwrap();
    assert_eq!(record.plan.candidate.artifact.digest, digest);
    let pinned = record.plan.candidate.secrets["DB_PASSWORD"]
        .version()
        .unwrap()
        .to_owned();
    let current = sm.describe_secret().secret_id(&name).send().await.unwrap();
    let stages = current.version_ids_to_stages().unwrap();
    assert!(
        stages[&pinned].iter().any(|s| s == "AWSCURRENT"),
        "pinned the current version"
    );
    // A new secret version makes a new revision: code, config and secret version move together.
    sm.put_secret_value()
        .secret_id(&name)
        .secret_string(r#"{"password":"rotated"}"#)
        .send()
        .await
        .unwrap();
    let next = relay
        .plan(&RolloutSpec::new("api", release, AllAtOnceStrategy))
        .await
        .unwrap();
    assert_ne!(next.candidate.secrets["DB_PASSWORD"].version().unwrap(), pinned);
    assert_ne!(next.candidate.id, record.plan.candidate.id);
    let record_json = serde_json::to_string(&record).unwrap();
    assert!(!record_json.contains(PLANTED));
}

/// A promoted and a rolled-back rollout read a value planted in Secrets
/// Manager, with every log line at TRACE captured: the value is nowhere.
#[tokio::test]
async fn a_planted_secrets_manager_value_never_leaks() {
    let cfg = config().await;
    let sm = secretsmanager::Client::new(&cfg);
    let (name, _) = secret_with_two_versions(&sm).await;
    let store = Arc::new(SecretsManagerStore::new(&cfg));
    let reference = format!("aws-sm://{name}#password");
    let observed = crate::planted::two_rollouts("aws-sm", store.clone(), &reference).await;
    let missing = store
        .fetch(
            &format!("aws-sm://{name}#password?version=00000000-0000-0000-0000-000000000000")
                .parse()
                .unwrap(),
        )
        .await
        .unwrap_err();
    crate::planted::assert_nowhere(PLANTED, &observed, &format!("{missing} {missing:?} {store:?}"));
}

/// `repo:tag` used to be pinned as `repo@sha256:…`, without the registry
/// host, which a container runtime pulls from Docker Hub. However written —
/// name and tag, the full URI, a digest — an ECR image is now pinned as
/// `<registry host>/<name>@sha256:…`.
#[tokio::test]
async fn ecr_references_are_pinned_with_their_registry_host() {
    let cfg = config().await;
    let repo = unique("shop/pinned");
    let digest = push_image(&cfg, &repo, "v1", MANIFEST).await;
    let store = EcrArtifactStore::new(&cfg);
    let resolve = |r: String| {
        let store = store.clone();
        async move {
            relay::ArtifactStore::resolve(&store, &r.parse().unwrap())
                .await
                .unwrap()
        }
    };
    let by_tag = resolve(format!("{repo}:v1")).await;
    let (host, name) = by_tag.repository.split_once('/').unwrap();
    assert!(host.contains(".dkr.ecr."), "{}", by_tag.repository);
    assert_eq!(name, repo);
    let pinned = by_tag.pinned_ref().to_string();
    assert_eq!(pinned, format!("{}@{digest}", by_tag.repository));
    for written in [format!("{}:v1", by_tag.repository), format!("{repo}@{digest}"), pinned] {
        let a = resolve(written.clone()).await;
        assert_eq!(
            (a.repository.as_str(), &a.digest),
            (by_tag.repository.as_str(), &digest),
            "{written}"
        );
    }
}
