//! The Vault KV v2 secret store against a real OpenBao dev server on
//! 127.0.0.1, started by `scripts/test.sh`, which exports its address as
//! `RELAY_TEST_VAULT_ADDR` and its root token as `RELAY_TEST_VAULT_TOKEN`.
//! Each test writes under a path of its own.

#![allow(clippy::unwrap_used)]

#[path = "shared/fault_proxy.rs"]
mod fault_proxy;
#[path = "shared/planted.rs"]
mod planted;

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relay::providers::vault::sdk::vaultrs;
use relay::providers::vault::{VaultKvStore, VersionState};
use relay::{testing, Error, SecretStore};
use secrecy::{ExposeSecret, SecretString};

const PLANTED: &str = "bao-planted-secret-3c91e";

fn addr() -> String {
    std::env::var("RELAY_TEST_VAULT_ADDR").expect(
        "RELAY_TEST_VAULT_ADDR is not set: run the suite with scripts/test.sh, which starts an OpenBao dev server",
    )
}

fn root_token() -> SecretString {
    std::env::var("RELAY_TEST_VAULT_TOKEN").unwrap().into()
}

fn root() -> VaultKvStore {
    VaultKvStore::builder(addr()).token(root_token()).build().unwrap()
}

/// A raw client with the root token, for setting the server up.
fn admin() -> vaultrs::client::VaultClient {
    let settings = vaultrs::client::VaultClientSettingsBuilder::default()
        .address(addr())
        .token(root_token().expose_secret())
        .build()
        .unwrap();
    vaultrs::client::VaultClient::new(settings).unwrap()
}

/// A path no other test uses.
fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn data(kv: &[(&str, &str)]) -> BTreeMap<String, SecretString> {
    kv.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned().into()))
        .collect()
}

#[tokio::test]
async fn the_store_passes_the_secret_store_conformance_suite() {
    let store = root();
    let path = unique("app/conformance");
    store
        .write("secret", &path, &data(&[("password", PLANTED), ("user", "app")]), None)
        .await
        .unwrap();
    testing::secret_store_conformance(
        &store,
        &format!("vault://secret/{path}#password").parse().unwrap(),
        PLANTED,
    )
    .await;
}

#[tokio::test]
async fn versions_stay_pinned_and_deleted_or_destroyed_ones_say_so() {
    let store = root();
    let path = unique("app/db");
    let v1 = store
        .write("secret", &path, &data(&[("password", "first")]), Some(0))
        .await
        .unwrap();
    let current = store
        .fetch(&format!("vault://secret/{path}#password").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        (current.version.as_str(), current.value.expose_secret()),
        ("1", "first")
    );

    // Check-and-set: a write from a stale version is a conflict.
    let v2 = store
        .write("secret", &path, &data(&[("password", PLANTED)]), Some(v1))
        .await
        .unwrap();
    let e = store
        .write("secret", &path, &data(&[("password", "lost")]), Some(v1))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
    assert_eq!(store.metadata("secret", &path).await.unwrap().current_version, v2);

    let pinned = |v: u64| format!("vault://secret/{path}#password?version={v}").parse().unwrap();
    let old = store.fetch(&pinned(v1)).await.unwrap();
    assert_eq!(
        old.value.expose_secret(),
        "first",
        "a pinned version is re-read, never the newer value"
    );

    let admin = admin();
    vaultrs::kv2::delete_versions(&admin, "secret", &path, vec![v1])
        .await
        .unwrap();
    let e = store.fetch(&pinned(v1)).await.unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what } if what.contains("deleted")),
        "{e:?}"
    );
    vaultrs::kv2::destroy_versions(&admin, "secret", &path, vec![v1])
        .await
        .unwrap();
    let e = store.fetch(&pinned(v1)).await.unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what } if what.contains("destroyed")),
        "{e:?}"
    );
    let meta = store.metadata("secret", &path).await.unwrap();
    assert_eq!(meta.versions.get(&v1), Some(&VersionState::Destroyed));
    let e = store.fetch(&pinned(9)).await.unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what } if what.contains("no such version")),
        "{e:?}"
    );
    let e = store
        .fetch(&format!("vault://secret/{path}#nope").parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    assert!(!format!("{e} {e:?}").contains(PLANTED));
}

/// An AppRole whose token may only read `secret/<prefix>/*`, with a token
/// TTL of `ttl`.
async fn approle(prefix: &str, ttl: &str) -> (String, SecretString) {
    let admin = admin();
    // Enabling twice is an error the second time; either way it is enabled.
    let _ = vaultrs::sys::auth::enable(&admin, "approle", "approle", None).await;
    let policy = format!(
        "path \"secret/data/{prefix}/*\" {{ capabilities = [\"read\"] }}\n\
         path \"secret/metadata/{prefix}/*\" {{ capabilities = [\"read\"] }}"
    );
    let name = unique("relay-read");
    vaultrs::sys::policy::set(&admin, &name, &policy).await.unwrap();
    let mut role = vaultrs::api::auth::approle::requests::SetAppRoleRequest::builder();
    role.token_policies(vec![name.clone()])
        .token_ttl(ttl)
        .token_max_ttl(ttl);
    vaultrs::auth::approle::role::set(&admin, "approle", &name, Some(&mut role))
        .await
        .unwrap();
    let role_id = vaultrs::auth::approle::role::read_id(&admin, "approle", &name)
        .await
        .unwrap()
        .role_id;
    let secret_id = vaultrs::auth::approle::role::secret::generate(&admin, "approle", &name, None)
        .await
        .unwrap()
        .secret_id;
    (role_id, secret_id.into())
}

#[tokio::test]
async fn an_approle_token_is_refused_outside_its_policy_and_logs_in_again_after_expiry() {
    let prefix = unique("team");
    let root = root();
    root.write("secret", &format!("{prefix}/db"), &data(&[("password", PLANTED)]), None)
        .await
        .unwrap();
    root.write("secret", "other/db", &data(&[("password", PLANTED)]), None)
        .await
        .unwrap();
    let (role_id, secret_id) = approle(&prefix, "2s").await;
    let store = VaultKvStore::builder(addr())
        .approle("approle", role_id, secret_id)
        .build()
        .unwrap();
    let allowed = format!("vault://secret/{prefix}/db#password").parse().unwrap();
    assert_eq!(store.fetch(&allowed).await.unwrap().value.expose_secret(), PLANTED);
    let e = store
        .fetch(&"vault://secret/other/db#password".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::PermissionDenied { what } if what.contains("secret/other/db")),
        "{e:?}"
    );
    let shown = format!("{e} {e:?} {store:?}");
    assert!(
        !shown.contains(PLANTED) && !shown.contains(root_token().expose_secret()),
        "{shown}"
    );
    // The login token expires (TTL and max TTL 2 s); the store logs in again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(store.fetch(&allowed).await.unwrap().value.expose_secret(), PLANTED);
}

#[tokio::test]
async fn a_renewable_token_is_renewed_before_it_expires() {
    let path = unique("app/renew");
    root()
        .write("secret", &path, &data(&[("password", "v")]), None)
        .await
        .unwrap();
    let mut request = vaultrs::api::token::requests::CreateTokenRequest::builder();
    request.ttl("3s").explicit_max_ttl("60s").renewable(true);
    let token = vaultrs::token::new(&admin(), Some(&mut request))
        .await
        .unwrap()
        .client_token;
    let store = VaultKvStore::builder(addr()).token(token.into()).build().unwrap();
    let reference = format!("vault://secret/{path}#password").parse().unwrap();
    // A token used past its 3 s TTL only works if the store renewed it (a
    // given token cannot be replaced by a new login).
    for _ in 0..3 {
        assert_eq!(store.fetch(&reference).await.unwrap().value.expose_secret(), "v");
        tokio::time::sleep(Duration::from_millis(2200)).await;
    }
    assert_eq!(store.fetch(&reference).await.unwrap().value.expose_secret(), "v");
}

/// Rollouts that read a Vault secret, one promoted and one rolled back, with
/// every log line at TRACE captured: the value is nowhere, and the rolled
/// back candidate's pinned version still reads the value it was planned
/// with after the secret moved on. (One thread, so the thread-local log
/// capture sees the engine's tasks too.)
#[tokio::test]
async fn a_planted_value_never_leaks_and_the_planned_version_stays_pinned() {
    let path = unique("web/db");
    let store = Arc::new(root());
    store
        .write("secret", &path, &data(&[("password", PLANTED)]), None)
        .await
        .unwrap();
    let reference = format!("vault://secret/{path}#password");
    let observed = planted::two_rollouts("vault", store.clone(), &reference).await;
    let pinned_refs = &observed.pinned;
    // The secret moves on; the planned version still reads what was planned.
    store
        .write("secret", &path, &data(&[("password", "rotated")]), None)
        .await
        .unwrap();
    assert_eq!(pinned_refs[0].version(), Some("1"));
    let again = store.fetch(&pinned_refs[0]).await.unwrap();
    assert_eq!(again.value.expose_secret(), PLANTED);
    let denied = VaultKvStore::builder(addr())
        .token("not-a-token".to_owned().into())
        .build()
        .unwrap()
        .fetch(&reference.parse().unwrap())
        .await
        .unwrap_err();
    planted::assert_nowhere(PLANTED, &observed, &format!("{denied} {denied:?} {store:?}"));
}

/// OpenBao throttling, hanging (as a SIGSTOPped server does) and stopped,
/// through a fault proxy, while relay plans a rollout that reads a secret:
/// bounded retries, bounded time, and a loud failure or a plan, never a
/// hang. Prints the time each fault took to reach its end.
#[tokio::test]
async fn a_throttled_hung_or_stopped_vault_ends_planning_in_bounded_time() {
    let path = unique("web/faults");
    root()
        .write("secret", &path, &data(&[("password", PLANTED)]), None)
        .await
        .unwrap();
    let proxy = fault_proxy::FaultProxy::start(addr().trim_start_matches("http://")).await;
    let store = VaultKvStore::builder(proxy.url("http"))
        .token(root_token())
        .build()
        .unwrap();
    let artifacts = relay::providers::sim::MemoryArtifactStore::new();
    artifacts.push("shop/web", "v1", b"build 1", BTreeMap::new());
    let relay = relay::Relay::builder()
        .target(Arc::new(relay::providers::sim::SimTarget::new("web")))
        .artifacts(Arc::new(artifacts))
        .secrets("vault", Arc::new(store))
        .retry(fault_proxy::fast_retry())
        .build()
        .unwrap();
    let spec = relay::RolloutSpec::new(
        "web",
        relay::Release::new("shop/web:v1".parse().unwrap())
            .secret("DB", format!("vault://secret/{path}#password").parse().unwrap()),
        relay::strategies::AllAtOnceStrategy,
    );
    let bound = fault_proxy::fast_retry().deadline + Duration::from_secs(2);

    proxy.throttle(3);
    let (planned, throttled) = fault_proxy::timed(relay.plan(&spec)).await;
    planned.expect("three 429s are retried");
    assert_eq!(proxy.throttle_left(), 0, "every 429 was served");

    proxy.hang();
    let (hung, hang_time) = fault_proxy::timed(relay.plan(&spec)).await;
    let hung = hung.expect_err("a hung server fails the plan");
    assert!(hung.to_string().contains("timed out"), "{hung}");
    assert!(hang_time < bound, "{hang_time:?}");
    proxy.pass();

    proxy.stop();
    let (stopped, stop_time) = fault_proxy::timed(relay.plan(&spec)).await;
    let stopped = stopped.expect_err("a stopped server fails the plan");
    assert!(stopped.to_string().contains("gave up"), "{stopped}");
    assert!(stop_time < bound, "{stop_time:?}");
    assert!(!format!("{hung} {stopped}").contains(PLANTED));
    proxy.restart().await;
    relay.plan(&spec).await.expect("planned again once the server is back");
    eprintln!(
        "vault faults: 3 x 429 -> planned in {throttled:?}; hung -> failed in {hang_time:?} ({hung}); stopped -> failed in {stop_time:?} ({stopped})"
    );
}
