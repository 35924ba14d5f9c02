//! The API server failing mid-rollout, as the engine's client sees it
//! through a fault proxy (`tests/shared/fault_proxy.rs`, terminating TLS
//! with the server's own certificate): throttled, hung for good (a
//! SIGSTOPped server), and stopped then back. Bounded retries, bounded
//! time, and the right end: a loud `RollbackFailed` when nothing answers
//! any more, a promotion when the server comes back within the retry
//! deadline. Prints the time from the fault to the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::providers::kubernetes::DeploymentTarget;
use relay::providers::sim::MemoryArtifactStore;
use relay::strategies::CanaryStrategy;
use relay::{EngineConfig, EventKind, Outcome, Relay, Release, RolloutSpec};

use crate::fault_proxy::{ended, fast_retry, FaultProxy, Tls};
use crate::support::{api_server, client, namespace, proxied_provider_client, web_app, Kubelet};

const REPO: &str = "registry.test/shop/web";

/// How long a rollback tries again through an outage, in these tests.
const ROLLBACK_BUDGET: Duration = Duration::from_secs(10);

/// An engine on a canary of Deployment `web` in a fresh namespace, whose
/// provider client goes through the returned proxy.
async fn setup() -> (Relay, FaultProxy, Kubelet, String) {
    let admin = client().await;
    let ns = namespace(&admin).await;
    let kubelet = Kubelet::start(&admin, &ns);
    web_app(&admin, &ns, "web", 2).await;
    // The test server's certificate and CA sit beside its kubeconfig.
    let kubeconfig = std::env::var("RELAY_TEST_KUBECONFIG").unwrap();
    let dir = std::path::Path::new(&kubeconfig).parent().unwrap();
    let tls = Tls::from_pem_files(&dir.join("server.crt"), &dir.join("server.key"), &dir.join("ca.crt"));
    let proxy = FaultProxy::start_tls(&api_server().await, tls).await;
    let target = DeploymentTarget::builder(proxied_provider_client(&proxy.url("https")).await, &ns, "web")
        .name("web")
        .canary()
        .poll_interval(Duration::from_millis(100))
        .promote_timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    let artifacts = MemoryArtifactStore::new();
    artifacts.push(REPO, "v2", b"v2", BTreeMap::new());
    let relay = Relay::builder()
        .target(Arc::new(target))
        .artifacts(Arc::new(artifacts))
        .retry(fast_retry())
        .config(EngineConfig {
            poll_interval: Duration::from_millis(200),
            progress_deadline: Duration::from_secs(30),
            rollback_retry_budget: ROLLBACK_BUDGET,
            ..Default::default()
        })
        .build()
        .unwrap();
    (relay, proxy, kubelet, ns)
}

/// Start v2 as a canary (50%, a short pause, full) and wait until half the
/// traffic is on it.
async fn at_half(relay: &Relay) -> relay::RolloutHandle {
    let strategy = CanaryStrategy::new().set_weight(50).pause(Duration::from_secs(1));
    let release = Release::new(format!("{REPO}:v2").parse().unwrap()).replicas(2);
    let handle = relay.start(RolloutSpec::new("web", release, strategy)).await.unwrap();
    let mut events = handle.events();
    while let Some(e) = events.next().await {
        match e.kind {
            EventKind::TrafficShifted { candidate_weight: 50 } => return handle,
            EventKind::Finished { outcome } => panic!("ended before 50%: {outcome}"),
            _ => {}
        }
    }
    panic!("no events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_hangs_mid_rollout_ends_it_loudly_in_bounded_time() {
    let (relay, proxy, _kubelet, _ns) = setup().await;
    let handle = at_half(&relay).await;
    proxy.hang();
    let hung_at = Instant::now();
    let (outcome, took) = ended(handle.wait(), hung_at).await;
    match &outcome {
        Outcome::RollbackFailed { cause, error } => {
            assert!(error.contains("timed out") || error.contains("gave up"), "{error}");
            assert!(!cause.is_empty());
        }
        other => panic!("nothing answers, so the rollback cannot complete: {other}"),
    }
    // The rollout's next step gives up within the retry deadline; the
    // rollback then tries again through the outage for its budget, the
    // last try giving up within the retry deadline, and stops there.
    let bound = 2 * fast_retry().deadline + ROLLBACK_BUDGET + Duration::from_secs(5);
    assert!(took < bound, "{took:?}");
    eprintln!("kube-apiserver hung at 50%: {outcome} after {took:?}");
    proxy.pass();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_briefly_mid_rollout_is_retried_to_a_promotion() {
    let (relay, proxy, _kubelet, _ns) = setup().await;
    let handle = at_half(&relay).await;
    proxy.stop();
    let stopped_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.restart().await;
    let (outcome, took) = ended(handle.wait(), stopped_at).await;
    assert!(matches!(outcome, Outcome::Promoted { .. }), "{outcome}");
    eprintln!("kube-apiserver stopped for 1.5 s at 50%: {outcome} {took:?} after the stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_burst_mid_rollout_is_retried_to_a_promotion() {
    let (relay, proxy, _kubelet, _ns) = setup().await;
    let handle = at_half(&relay).await;
    proxy.throttle(5);
    let throttled_at = Instant::now();
    let (outcome, took) = ended(handle.wait(), throttled_at).await;
    assert!(matches!(outcome, Outcome::Promoted { .. }), "{outcome}");
    assert_eq!(proxy.throttle_left(), 0, "every 429 was served");
    eprintln!("kube-apiserver answered 429 five times at 50%: {outcome} {took:?} after the burst began");
}
