//! The emulator failing, as the providers' SDK clients see it through a
//! fault proxy (`tests/shared/fault_proxy.rs`): a throttling burst and a
//! stopped server while a rollout is planned (Secrets Manager), and a
//! server that hangs mid-rollout while its analysis reads CloudWatch.
//! Bounded retries, bounded time, the right end. Prints the times.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::providers::aws::sdk::secretsmanager;
use relay::providers::aws::{CloudWatchMetric, CloudWatchProbe, DimensionValue, SecretsManagerStore};
use relay::providers::sim::{MemoryArtifactStore, RevisionBehavior, SimTarget};
use relay::strategies::{AllAtOnceStrategy, CanaryStrategy, ThresholdJudge};
use relay::{AnalysisSpec, Check, EngineConfig, Outcome, Relay, Release, RolloutSpec};

use crate::fault_proxy::{ended, fast_retry, timed, FaultProxy};
use crate::support::{config, config_for, endpoint, unique, PLANTED};

fn artifacts() -> Arc<MemoryArtifactStore> {
    let a = MemoryArtifactStore::new();
    a.push("shop/web", "v1", b"build 1", BTreeMap::new());
    a.push("shop/web", "v2", b"build 2", BTreeMap::new());
    Arc::new(a)
}

fn target() -> Arc<SimTarget> {
    Arc::new(SimTarget::new("web").default_behavior(RevisionBehavior {
        readiness_delay: Duration::from_millis(20),
        ..Default::default()
    }))
}

#[tokio::test]
async fn a_throttled_or_stopped_emulator_ends_planning_in_bounded_time() {
    let sm = secretsmanager::Client::new(&config().await);
    let name = unique("relay/faults");
    sm.create_secret()
        .name(&name)
        .secret_string(format!(r#"{{"password":"{PLANTED}"}}"#))
        .send()
        .await
        .unwrap();
    let proxy = FaultProxy::start(endpoint().trim_start_matches("http://")).await;
    let store = SecretsManagerStore::new(&config_for(&proxy.url("http")).await);
    let relay = Relay::builder()
        .target(target())
        .artifacts(artifacts())
        .secrets("aws-sm", Arc::new(store))
        .retry(fast_retry())
        .build()
        .unwrap();
    let spec = RolloutSpec::new(
        "web",
        Release::new("shop/web:v1".parse().unwrap()).secret("DB", format!("aws-sm://{name}#password").parse().unwrap()),
        AllAtOnceStrategy,
    );
    let bound = fast_retry().deadline + Duration::from_secs(2);

    proxy.throttle(3);
    let (planned, throttled) = timed(relay.plan(&spec)).await;
    planned.expect("three 429s are retried");
    assert_eq!(proxy.throttle_left(), 0, "every 429 was served");

    proxy.stop();
    let (stopped, stop_time) = timed(relay.plan(&spec)).await;
    let stopped = stopped.expect_err("a stopped emulator fails the plan");
    assert!(stopped.to_string().contains("gave up"), "{stopped}");
    assert!(stop_time < bound, "{stop_time:?}");
    assert!(!format!("{stopped:?}").contains(PLANTED));
    proxy.restart().await;
    relay
        .plan(&spec)
        .await
        .expect("planned again once the emulator is back");
    eprintln!("moto faults: 3 x 429 -> planned in {throttled:?}; stopped -> failed in {stop_time:?} ({stopped})");
}

#[tokio::test]
async fn an_emulator_that_hangs_mid_analysis_rolls_the_canary_back_in_bounded_time() {
    let proxy = FaultProxy::start(endpoint().trim_start_matches("http://")).await;
    let probe = CloudWatchProbe::new(&config_for(&proxy.url("http")).await).metric(
        "errors",
        CloudWatchMetric::new(unique("Relay/Faults"), "ErrorRate")
            .statistic("Average")
            .dimension("Revision", DimensionValue::Revision),
    );
    let target = target();
    let relay = Relay::builder()
        .target(target.clone())
        .probe(Arc::new(probe))
        .artifacts(artifacts())
        .retry(fast_retry())
        .config(EngineConfig {
            poll_interval: Duration::from_millis(20),
            ..Default::default()
        })
        .build()
        .unwrap();
    let first = relay
        .start(RolloutSpec::new(
            "web",
            Release::new("shop/web:v1".parse().unwrap()),
            AllAtOnceStrategy,
        ))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(first.is_success(), "{first}");
    let mut analysis = AnalysisSpec::new(vec![Check::new("errors", "errors", ThresholdJudge::below(0.05))])
        .every(Duration::from_millis(500), 4);
    analysis.consecutive_error_limit = 1;
    let canary = CanaryStrategy::new().set_weight(50).analyze(analysis);
    proxy.hang();
    let started = Instant::now();
    let rollout = relay
        .start(RolloutSpec::new(
            "web",
            Release::new("shop/web:v2".parse().unwrap()),
            canary,
        ))
        .await
        .unwrap();
    let (outcome, took) = ended(rollout.wait(), started).await;
    match &outcome {
        Outcome::RolledBack { cause } => assert!(cause.contains("probe errors"), "{cause}"),
        other => panic!("{other}"),
    }
    // Two probe calls give up (the limit is one), each within the deadline.
    let bound = 2 * fast_retry().deadline + Duration::from_secs(4);
    assert!(took < bound, "{took:?}");
    let state = relay::Target::observe(target.as_ref()).await.unwrap();
    assert_eq!(state.revisions.len(), 1, "the candidate is gone: {state:?}");
    eprintln!("moto hung during analysis: {outcome} after {took:?}");
    proxy.pass();
}
