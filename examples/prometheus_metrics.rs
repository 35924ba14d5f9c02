//! relay's metrics in Prometheus' text format: install a recorder, run
//! rollouts, render what a scrape of `/metrics` would read.
//!
//! A healthy canary is promoted and a bad one (15% errors) rolled back, on
//! the simulated providers in virtual time; then the exposition is printed:
//! rollouts started and finished by outcome, rollbacks, step durations,
//! analysis verdicts, and every provider call with its latency and retries
//! (`relay::telemetry` lists the names). A service serves the same text
//! from its own `/metrics` route with `PrometheusHandle::render`, or lets
//! the exporter listen itself (its `http-listener` feature).
//!
//! ```text
//! cargo run --example prometheus_metrics --features metrics
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use relay::providers::sim::{metrics, MemoryArtifactStore, RevisionBehavior, SimProbe, SimTarget};
use relay::strategies::{AllAtOnceStrategy, CanaryStrategy, ThresholdJudge};
use relay::{AnalysisSpec, Check, Outcome, Relay, Release, RolloutSpec};

async fn run() -> relay::Result<Vec<Outcome>> {
    let target = Arc::new(SimTarget::new("checkout").seed(7));
    let artifacts = Arc::new(MemoryArtifactStore::new());
    for tag in ["v1", "v2"] {
        artifacts.push("shop/checkout", tag, tag.as_bytes(), BTreeMap::new());
    }
    let bad = artifacts.push("shop/checkout", "v3", b"v3", BTreeMap::new());
    target.behavior(&bad.digest, RevisionBehavior::failing(0.15));
    let relay = Relay::builder()
        .target(target.clone())
        .artifacts(artifacts)
        .probe(Arc::new(SimProbe::new(target)))
        .build()?;
    let canary = CanaryStrategy::new()
        .set_weight(20)
        .analyze(
            AnalysisSpec::new(vec![Check::new(
                "error rate",
                metrics::ERROR_RATE,
                ThresholdJudge::below(0.05).min_samples(20),
            )])
            .every(Duration::from_secs(60), 3),
        )
        .set_weight(60)
        .pause(Duration::from_secs(300));
    let mut outcomes = Vec::new();
    for (tag, first) in [("v1", true), ("v2", false), ("v3", false)] {
        let release = Release::new(format!("shop/checkout:{tag}").parse()?).replicas(5);
        let spec = if first {
            RolloutSpec::new("checkout", release, AllAtOnceStrategy)
        } else {
            RolloutSpec::new("checkout", release, canary.clone())
        };
        outcomes.push(relay.start(spec).await?.wait().await?);
    }
    Ok(outcomes)
}

fn main() -> ExitCode {
    // Durations as histograms (buckets a scrape can aggregate across
    // engines) rather than the exporter's default summaries.
    let buckets = [0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0];
    let handle = match PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .and_then(|b| b.install_recorder())
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("prometheus_metrics: cannot install the recorder: {e}");
            return ExitCode::FAILURE;
        }
    };
    relay::telemetry::describe();
    let outcomes = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(run()).map_err(|e| e.to_string()));
    match outcomes {
        Ok(outcomes) => {
            for o in &outcomes {
                eprintln!("rollout: {o}");
            }
            print!("{}", handle.render());
            if matches!(outcomes[1], Outcome::Promoted { .. }) && matches!(outcomes[2], Outcome::RolledBack { .. }) {
                ExitCode::SUCCESS
            } else {
                eprintln!("prometheus_metrics FAILED: v2 must be promoted and v3 rolled back");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("prometheus_metrics FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
