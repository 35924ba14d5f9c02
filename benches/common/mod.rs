//! What the benches share: a paused-clock runtime and an engine on a fresh
//! simulated target whose v1 is already stable (builds `app:v1`, `app:v2`).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use relay::providers::sim::{metrics, MemoryArtifactStore, RevisionBehavior, SimProbe, SimTarget};
use relay::strategies::{AllAtOnceStrategy, CanaryStrategy, ThresholdJudge};
use relay::{AnalysisSpec, Check, Relay, Release, RolloutSpec};

/// A current-thread runtime on a paused clock: rollouts run in virtual time.
pub fn virtual_time() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// The spec of `app:<tag>` with 10 replicas on the target of `relay_with_v1`.
pub fn spec(tag: &str, strategy: impl relay::Strategy + 'static) -> RolloutSpec {
    RolloutSpec::new(
        TARGET,
        Release::new(format!("app:{tag}").parse().unwrap()).replicas(10),
        strategy,
    )
}

/// The target name every bench uses.
pub const TARGET: &str = "bench";

/// An engine on `target` (named [`TARGET`]) with v1 deployed all at once.
pub async fn relay_with_v1(target: SimTarget) -> Relay {
    let target = Arc::new(target);
    let artifacts = Arc::new(MemoryArtifactStore::new());
    artifacts.push("app", "v1", b"1", Default::default());
    artifacts.push("app", "v2", b"2", Default::default());
    let relay = Relay::builder()
        .target(target.clone())
        .artifacts(artifacts)
        .probe(Arc::new(SimProbe::new(target)))
        .build()
        .unwrap();
    relay
        .start(spec("v1", AllAtOnceStrategy))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    relay
}

/// A fresh target named [`TARGET`] (seed 1) whose revisions are healthy and
/// take `readiness` to become ready.
pub fn healthy_target(readiness: Duration) -> SimTarget {
    let behavior = RevisionBehavior {
        readiness_delay: readiness,
        ..RevisionBehavior::healthy()
    };
    SimTarget::new(TARGET).seed(1).default_behavior(behavior)
}

/// Five weights, each followed by an analysis: 12 minutes of analysis each,
/// measured every `interval`.
pub fn ten_step_canary(interval: Duration) -> CanaryStrategy {
    let count = (720 / interval.as_secs()) as u32;
    let check = Check::new("errors", metrics::ERROR_RATE, ThresholdJudge::below(0.05));
    let analysis = AnalysisSpec::new(vec![check]).every(interval, count);
    let mut c = CanaryStrategy::new();
    for w in [10, 25, 50, 75, 100] {
        c = c.set_weight(w).analyze(analysis.clone());
    }
    c
}

/// An engine over `n` fresh simulated targets `t0..`, each with its own
/// probe (target `i` seeded `i`), revisions healthy and ready after
/// `readiness`, and v1 already stable.
pub async fn fleet_with_v1(n: usize, readiness: Duration) -> Relay {
    let behavior = RevisionBehavior {
        readiness_delay: readiness,
        ..RevisionBehavior::healthy()
    };
    let artifacts = Arc::new(MemoryArtifactStore::new());
    artifacts.push("app", "v1", b"1", Default::default());
    artifacts.push("app", "v2", b"2", Default::default());
    let mut b = Relay::builder().artifacts(artifacts);
    for i in 0..n {
        let t = Arc::new(
            SimTarget::new(format!("t{i}"))
                .seed(i as u64)
                .default_behavior(behavior.clone()),
        );
        b = b
            .target(t.clone())
            .probe_for(format!("t{i}"), Arc::new(SimProbe::new(t)));
    }
    let relay = b.build().unwrap();
    run_all(&relay, n, "app:v1", AllAtOnceStrategy).await;
    relay
}

/// `strategy` from `tag` on targets `t0..t{n}` of [`fleet_with_v1`], all at
/// once, 10 replicas each; every one must succeed. Each handle is turned
/// into its outcome's future as it starts, so no rollout keeps events
/// while the ones before it are awaited.
pub async fn run_all(relay: &Relay, n: usize, tag: &str, strategy: impl relay::Strategy + Clone + 'static) {
    let mut outcomes = Vec::with_capacity(n);
    for i in 0..n {
        let release = Release::new(tag.parse().unwrap()).replicas(10);
        outcomes.push(
            relay
                .start(RolloutSpec::new(format!("t{i}"), release, strategy.clone()))
                .await
                .unwrap()
                .wait(),
        );
    }
    for outcome in outcomes {
        let outcome = outcome.await.unwrap();
        assert!(outcome.is_success(), "{outcome}");
    }
}
