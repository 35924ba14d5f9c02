//! API economy (issue 9): one rate limit shared by every rollout of a
//! process (a thousand canaries at once on targets behind one
//! [`RateLimiter`] all end right, and the API behind it never sees more calls
//! in a second than the limiter allows), readiness polls that back off, and
//! targets that report their changes observed only when they change.

#![allow(clippy::unwrap_used)]

#[path = "shared/calls.rs"]
mod calls;

use std::sync::Arc;
use std::time::Duration;

use relay::providers::sim::{metrics, MemoryArtifactStore, SimProbe, SimTarget};
use relay::providers::{Faulty, RateLimited, RateLimiter, Wrapped};
use relay::strategies::{AllAtOnceStrategy, CanaryStrategy, ThresholdJudge};
use relay::{AnalysisSpec, Check, EngineConfig, Relay, Release, RolloutSpec};
use tokio::time::Instant;

use calls::Calls;

const ROLLOUTS: usize = 1000;
const PER_SECOND: f64 = 200.0;
const BURST: u32 = 20;

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_rollouts_never_exceed_the_shared_rate() {
    let limiter = RateLimiter::new(PER_SECOND, BURST).unwrap();
    let arrivals = Calls::default();
    let artifacts = Arc::new(MemoryArtifactStore::new());
    artifacts.push("app", "v1", b"1", Default::default());
    artifacts.push("app", "v2", b"2", Default::default());
    let mut builder = Relay::builder().artifacts(artifacts).config(EngineConfig {
        poll_interval: Duration::from_secs(1),
        ..Default::default()
    });
    for i in 0..ROLLOUTS {
        let sim = Arc::new(SimTarget::new(format!("t{i}")));
        let api = Wrapped::with(arrivals.clone(), sim.clone());
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
                None => RolloutSpec::new(format!("t{i}"), release(tag), AllAtOnceStrategy),
                Some(c) => RolloutSpec::new(format!("t{i}"), release(tag), c.clone()),
            };
            handles.push(relay.start(spec).await.unwrap());
        }
        for h in handles.drain(..) {
            let outcome = h.wait().await.unwrap();
            assert!(outcome.is_success(), "{outcome}");
        }
    }

    let mut times: Vec<Duration> = arrivals.times(|_| true).into_iter().map(|t| t - start).collect();
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

/// How the target tells the engine of its changes.
#[derive(Clone, Copy, PartialEq)]
enum Watch {
    /// It does not: the engine polls.
    No,
    /// It does.
    Yes,
    /// It says it does, but every watch fails.
    Failing,
}

/// Observations while a revision of `start` startup time becomes ready,
/// polled from 2 s on with `backoff` (or watched).
async fn observes_while_starting(start: Duration, backoff: f64, watch: Watch) -> relay::Result<usize> {
    let arrivals = Calls::default();
    let artifacts = Arc::new(MemoryArtifactStore::new());
    artifacts.push("app", "v1", b"1", Default::default());
    let mut sim = SimTarget::new("web").default_behavior(relay::providers::sim::RevisionBehavior {
        readiness_delay: start,
        ..Default::default()
    });
    if watch != Watch::No {
        sim = sim.watching();
    }
    let faulty = Faulty::new(Wrapped::with(arrivals.clone(), sim), 1).only_operations(&["changed"]);
    if watch == Watch::Failing {
        faulty.fail_next(u32::MAX);
    }
    let relay = Relay::builder()
        .artifacts(artifacts)
        .target(Arc::new(faulty))
        .config(EngineConfig {
            poll_interval: Duration::from_secs(2),
            poll_backoff: backoff,
            poll_interval_max: Duration::from_secs(10),
            ..Default::default()
        })
        .build()?;
    let release = Release::new("app:v1".parse().unwrap()).replicas(4);
    let started = Instant::now();
    let outcome = relay
        .start(RolloutSpec::new("web", release, AllAtOnceStrategy))
        .await?
        .wait()
        .await?;
    assert!(outcome.is_success(), "{outcome}");
    // Ready no later than one (longest) interval after it could be.
    assert!(
        started.elapsed() <= start + Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    Ok(arrivals.times(|op| op == "observe").len())
}

#[tokio::test(start_paused = true)]
async fn readiness_polls_back_off_up_to_their_longest_interval() {
    let minute = Duration::from_secs(60);
    let fixed = observes_while_starting(minute, 1.0, Watch::No).await.unwrap();
    let backed_off = observes_while_starting(minute, 1.5, Watch::No).await.unwrap();
    // Fixed: one poll every 2 s for a minute. Backing off: 2, 3, 4.5, 6.75,
    // then every 10 s.
    assert!(fixed >= 30, "{fixed}");
    assert!(backed_off <= 12, "{backed_off}");
    eprintln!("a minute-long start: {fixed} observations at a fixed 2 s, {backed_off} backing off 1.5x to 10 s");
    match observes_while_starting(minute, 0.5, Watch::No).await {
        Err(relay::Error::InvalidSpec { path, .. }) => assert_eq!(path, "relay.config.poll_backoff"),
        other => panic!("a backoff below 1 must be refused: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_target_that_reports_its_changes_is_observed_only_when_it_changes() {
    // Shorter than the engine's 60 s resync: once as the rollout starts (as
    // polled), once when the wait begins, once when the replicas came up.
    let start = Duration::from_secs(50);
    let watched = observes_while_starting(start, 1.5, Watch::Yes).await.unwrap();
    assert_eq!(watched, 3, "{watched}");
    // A watch that fails falls back to polling with backoff.
    let failing = observes_while_starting(start, 1.5, Watch::Failing).await.unwrap();
    let polled = observes_while_starting(start, 1.5, Watch::No).await.unwrap();
    assert_eq!(failing, polled, "{failing} vs {polled}");
    eprintln!("a 50 s start: {watched} observations watched, {polled} polled, {failing} with a failing watch");
}

#[tokio::test(start_paused = true)]
async fn a_wait_on_the_targets_word_still_takes_commands() {
    let artifacts = Arc::new(MemoryArtifactStore::new());
    artifacts.push("app", "v1", b"1", Default::default());
    // Ten minutes to start, a watch that reports it: nothing but a command
    // can end the wait before then (the resync is a minute away).
    let sim = SimTarget::new("web")
        .watching()
        .default_behavior(relay::providers::sim::RevisionBehavior {
            readiness_delay: Duration::from_secs(600),
            ..Default::default()
        });
    let relay = Relay::builder()
        .artifacts(artifacts)
        .target(Arc::new(sim))
        .build()
        .unwrap();
    let release = Release::new("app:v1".parse().unwrap()).replicas(4);
    let handle = relay
        .start(RolloutSpec::new("web", release, AllAtOnceStrategy))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let aborted = Instant::now();
    handle.abort("oncall", "wrong build").unwrap();
    let outcome = handle.wait().await.unwrap();
    assert!(
        matches!(&outcome, relay::Outcome::RolledBack { cause } if cause.contains("aborted by oncall")),
        "{outcome}"
    );
    assert!(aborted.elapsed() < Duration::from_secs(30), "{:?}", aborted.elapsed());
}
