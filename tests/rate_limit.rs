//! One API rate limit shared by every rollout of a process (issue 9): a
//! thousand canaries at once on targets behind one [`RateLimiter`] all end
//! right, and the API behind it never sees more calls in a second than the
//! limiter allows.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use relay::providers::sim::{metrics, MemoryArtifactStore, SimProbe, SimTarget};
use relay::providers::{Layer, RateLimited, RateLimiter, Wrapped};
use relay::strategies::{AllAtOnce, CanaryStrategy, ThresholdJudge};
use relay::{AnalysisSpec, Check, EngineConfig, Relay, Release, RolloutSpec};
use tokio::time::Instant;

/// Stands for the API: notes when each call reaches it.
#[derive(Debug, Default, Clone)]
struct Arrivals(Arc<Mutex<Vec<Instant>>>);

#[async_trait]
impl Layer for Arrivals {
    async fn before(&self, _op: &'static str) -> relay::Result<()> {
        self.0.lock().unwrap().push(Instant::now());
        Ok(())
    }
}

const ROLLOUTS: usize = 1000;
const PER_SECOND: f64 = 200.0;
const BURST: u32 = 20;

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_rollouts_never_exceed_the_shared_rate() {
    let limiter = RateLimiter::new(PER_SECOND, BURST).unwrap();
    let arrivals = Arrivals::default();
    let artifacts = Arc::new(MemoryArtifactStore::new());
    artifacts.push("app", "v1", b"1", Default::default());
    artifacts.push("app", "v2", b"2", Default::default());
    let mut builder = Relay::builder().artifacts(artifacts).config(EngineConfig {
        poll_interval: Duration::from_secs(1),
        ..Default::default()
    });
    for i in 0..ROLLOUTS {
        let sim = Arc::new(SimTarget::new(format!("t{i}")));
        let api = Wrapped::layered(arrivals.clone(), sim.clone());
        builder = builder
            .target(Arc::new(RateLimited::new(api, limiter.clone())))
            .probe_for(format!("t{i}"), Arc::new(SimProbe::new(sim)));
    }
    let relay = builder.build().unwrap();
    let check = Check::new("errors", metrics::ERROR_RATE, ThresholdJudge::below(0.05));
    let canary = CanaryStrategy::new()
        .set_weight(20)
        .analyze(AnalysisSpec::new(vec![check]).every(Duration::from_secs(30), 2))
        .set_weight(100);
    let release = |tag: &str| Release::new(format!("app:{tag}").parse().unwrap()).replicas(4);

    let start = Instant::now();
    let mut handles = Vec::new();
    for (tag, strategy) in [("v1", None), ("v2", Some(canary))] {
        for i in 0..ROLLOUTS {
            let spec = match &strategy {
                None => RolloutSpec::new(format!("t{i}"), release(tag), AllAtOnce),
                Some(c) => RolloutSpec::new(format!("t{i}"), release(tag), c.clone()),
            };
            handles.push(relay.start(spec).await.unwrap());
        }
        for h in handles.drain(..) {
            let outcome = h.wait().await.unwrap();
            assert!(outcome.is_success(), "{outcome}");
        }
    }

    let mut times: Vec<Duration> = arrivals.0.lock().unwrap().iter().map(|t| *t - start).collect();
    times.sort();
    assert_eq!(
        limiter.granted(),
        times.len() as u64,
        "every call went through the limiter"
    );
    assert!(times.len() > 10 * ROLLOUTS, "{} calls", times.len());
    let most = (0..times.len())
        .map(|i| times[i..].partition_point(|t| *t < times[i] + Duration::from_secs(1)))
        .max()
        .unwrap();
    assert!(
        most <= BURST as usize + PER_SECOND as usize,
        "{most} calls reached the API within one second"
    );
    let span = times.last().unwrap().as_secs_f64();
    eprintln!(
        "{} rollouts, {} target calls in {span:.1} s of virtual time: at most {most} in any second (limit {PER_SECOND}/s, burst {BURST}); {:.1} calls per rollout",
        2 * ROLLOUTS,
        times.len(),
        times.len() as f64 / (2 * ROLLOUTS) as f64
    );
}
