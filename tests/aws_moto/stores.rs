//! The AWS providers against a real local AWS emulator: moto in server mode,
//! started on 127.0.0.1 by `scripts/test.sh`, which exports its address as
//! `RELAY_TEST_MOTO_ENDPOINT`.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relay::providers::aws::sdk::config::{
    retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region, SdkConfig,
};
use relay::providers::aws::sdk::{ecr, secretsmanager};
use relay::providers::aws::{EcrArtifactStore, SecretsManagerStore};
use relay::providers::sim::SimTarget;
use relay::strategies::AllAtOnce;
use relay::{testing, ArtifactRef, Digest, Error, Relay, Release, RolloutSpec, SecretStore};
use secrecy::ExposeSecret;

const PLANTED: &str = "moto-planted-secret-3c9e1";

fn endpoint() -> String {
    std::env::var("RELAY_TEST_MOTO_ENDPOINT")
        .expect("RELAY_TEST_MOTO_ENDPOINT is not set: run the suite with scripts/test.sh, which installs and starts a moto server")
}

/// Test credentials for `endpoint`, one attempt and an operation timeout, so
/// an emulator error is reported rather than retried into duplicates.
async fn config_for(endpoint: &str) -> SdkConfig {
    relay::providers::aws::sdk::config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(secretsmanager::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "relay-tests",
        ))
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .load()
        .await
}

async fn config() -> SdkConfig {
    config_for(&endpoint()).await
}

/// Names unique to this test process, so runs against one server don't collide.
fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

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

async fn push_image(cfg: &SdkConfig, repo: &str, tag: &str, manifest: &str) -> Digest {
    let client = ecr::Client::new(cfg);
    let _ = client.create_repository().repository_name(repo).send().await;
    let out = client
        .put_image()
        .repository_name(repo)
        .image_tag(tag)
        .image_manifest(manifest)
        .send()
        .await
        .unwrap();
    out.image()
        .unwrap()
        .image_id()
        .unwrap()
        .image_digest()
        .unwrap()
        .parse()
        .unwrap()
}

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":7023,"digest":"sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7"},"layers":[]}"#;

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
        .start(RolloutSpec::new("api", release.clone(), AllAtOnce))
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
    let next = relay.plan(&RolloutSpec::new("api", release, AllAtOnce)).await.unwrap();
    assert_ne!(next.candidate.secrets["DB_PASSWORD"].version().unwrap(), pinned);
    assert_ne!(next.candidate.id, record.plan.candidate.id);
    let record_json = serde_json::to_string(&record).unwrap();
    assert!(!record_json.contains(PLANTED));
}
