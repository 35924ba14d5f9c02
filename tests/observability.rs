//! What a service watching relay sees: spans that put a provider's log
//! lines under their rollout, step and call, and metrics under the names
//! `relay::telemetry` documents, rendered by a real Prometheus exporter.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shared/planted.rs"]
mod planted;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use relay::providers::sim::SimProbe;
use relay::providers::{Faulty, Interceptor, Latency, Wrapped};
use relay::telemetry;
use relay::{Outcome, RolloutSpec};

/// Logs from inside every provider call it wraps.
#[derive(Debug)]
struct Chatty;

#[async_trait::async_trait]
impl Interceptor for Chatty {
    async fn before(&self, op: &'static str) -> relay::Result<()> {
        tracing::info!(op, "inside the provider");
        Ok(())
    }
}

/// v1 deployed all at once, v2 promoted through the canary (a pause of
/// 600 s), v3 (20% errors) rolled back at its first analysis; the target
/// takes 50 ms a call, and its first `stage` fails once (retried).
async fn three_rollouts(relay: &relay::Relay) -> Vec<Outcome> {
    let mut outcomes = vec![];
    for (tag, canary) in [("v1", false), ("v2", true), ("v3", true)] {
        let spec = if canary {
            RolloutSpec::new("web", release(tag), common::canary())
        } else {
            RolloutSpec::new("web", release(tag), relay::strategies::AllAtOnceStrategy)
        };
        outcomes.push(relay.start(spec).await.unwrap().wait().await.unwrap());
    }
    outcomes
}

fn engine(w: &World) -> relay::Relay {
    let target = Faulty::new(Latency::new(w.target.clone(), Duration::from_millis(50)), 1).only_operations(&["stage"]);
    target.fail_next(1);
    let target = Wrapped::with(Chatty, target);
    w.stores()
        .target(Arc::new(target))
        .probe(Arc::new(SimProbe::new(w.target.clone())))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_providers_log_lines_carry_the_rollout_the_step_and_the_call() {
    let (logs, _guard) = planted::Capture::trace();
    let w = World::new(11);
    let relay = engine(&w);
    let outcomes = three_rollouts(&relay).await;
    assert!(matches!(outcomes[2], Outcome::RolledBack { .. }), "{outcomes:?}");
    let logs = logs.text();
    let line = |all: &[&str]| {
        logs.lines()
            .find(|l| all.iter().all(|p| l.contains(p)))
            .unwrap_or_else(|| panic!("no log line holds all of {all:?}; the log:\n{logs}"))
            .to_owned()
    };
    // A step's target call.
    let staged = line(&[
        "rollout{rollout.id=",
        "target=web strategy=canary}",
        ":step{index=0 kind=\"stage\"}",
        ":call{operation=\"target.stage\"}",
        "inside the provider",
    ]);
    assert!(
        staged.find("rollout{").unwrap() < staged.find("step{").unwrap(),
        "{staged}"
    );
    // Its retry, in the same call's span.
    line(&[":call{operation=\"target.stage\"}", "retrying"]);
    // A rollback action's call.
    line(&[
        "target=web strategy=canary}",
        ":rollback{action=\"route_to_stable\"}",
        ":call{operation=\"target.route\"}",
        "inside the provider",
    ]);
    // Planning, before any rollout span exists.
    line(&[
        "start{target=web rollout.id=",
        ":plan{target=web}",
        ":call{operation=\"target.observe\"}",
        "inside the provider",
    ]);
}

/// The exporter's text, as (name, labels) → value.
fn parse(exposition: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut out = BTreeMap::new();
    for line in exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (key, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match key.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (key, ""),
        };
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        out.insert((name.to_owned(), labels), value.parse().unwrap());
    }
    out
}

#[test]
fn the_engine_reports_rollouts_steps_verdicts_and_provider_calls() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let outcomes = metrics::with_local_recorder(&recorder, || {
        telemetry::describe();
        runtime.block_on(async {
            let w = World::new(11);
            let relay = engine(&w);
            three_rollouts(&relay).await
        })
    });
    assert!(matches!(outcomes[1], Outcome::Promoted { .. }), "{outcomes:?}");
    assert!(matches!(outcomes[2], Outcome::RolledBack { .. }), "{outcomes:?}");
    let text = handle.render();
    let m = parse(&text);
    let get = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        *m.get(&(name.to_owned(), want))
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
    };
    assert!(
        text.contains("# HELP relay_rollouts_finished_total Rollouts driven to their end"),
        "{text}"
    );

    assert_eq!(
        get(
            telemetry::ROLLOUTS_STARTED,
            &[("target", "web"), ("strategy", "all-at-once")]
        ),
        1.0
    );
    assert_eq!(
        get(
            telemetry::ROLLOUTS_STARTED,
            &[("target", "web"), ("strategy", "canary")]
        ),
        2.0
    );
    assert_eq!(
        get(
            telemetry::ROLLOUTS_FINISHED,
            &[("target", "web"), ("outcome", "promoted")]
        ),
        2.0
    );
    assert_eq!(
        get(
            telemetry::ROLLOUTS_FINISHED,
            &[("target", "web"), ("outcome", "rolled_back")]
        ),
        1.0
    );
    assert_eq!(get(telemetry::ROLLBACKS_STARTED, &[("target", "web")]), 1.0);
    assert_eq!(get(telemetry::ROLLOUTS_IN_PROGRESS, &[]), 0.0);

    // v2 passed both analyses (2 measurements each); v3 failed its first.
    let verdict = |v| {
        get(
            telemetry::ANALYSIS_VERDICTS,
            &[("target", "web"), ("check", "errors"), ("verdict", v)],
        )
    };
    assert_eq!(verdict("pass"), 4.0);
    assert!(verdict("fail") >= 1.0);

    // Only v2 reached the 600 s pause: virtual time, as the step took.
    assert_eq!(
        get(&format!("{}_sum", telemetry::STEP_DURATION), &[("kind", "pause")]),
        600.0
    );
    assert_eq!(
        get(&format!("{}_count", telemetry::STEP_DURATION), &[("kind", "pause")]),
        1.0
    );

    // Three stages, the first tried twice; each took the target's 50 ms,
    // the first also its backoff (at most the policy's first, 200 ms).
    assert_eq!(
        get(
            telemetry::PROVIDER_CALLS,
            &[("operation", "target.stage"), ("result", "ok")]
        ),
        3.0
    );
    assert_eq!(
        get(telemetry::PROVIDER_CALL_RETRIES, &[("operation", "target.stage")]),
        1.0
    );
    let stage_time = get(
        &format!("{}_sum", telemetry::PROVIDER_CALL_DURATION),
        &[("operation", "target.stage")],
    );
    assert!((0.15..=0.35).contains(&stage_time), "{stage_time}");
    // An in-memory store's call is done at once: no time.
    assert_eq!(
        get(
            &format!("{}_sum", telemetry::PROVIDER_CALL_DURATION),
            &[("operation", "state.put")]
        ),
        0.0
    );
    assert!(
        get(
            telemetry::PROVIDER_CALLS,
            &[("operation", "probe.sample"), ("result", "ok")]
        ) >= 5.0
    );
}
