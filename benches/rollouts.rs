//! Engine throughput on the simulated providers, under virtual time.
//!
//! - `canary_10_step_1h_measured_every_{60,300}s`: a ten-step canary (five
//!   weights, each followed by a 12-minute analysis: one hour of virtual
//!   analysis, measured every minute or every five minutes) from plan to
//!   promotion, with readiness delays of 5 s. Rollouts per wall-second =
//!   1 / time per iteration.
//! - `canary_10_step_1h_measured_every_60s_100_at_once`: the 60 s canary on
//!   100 targets, all started together and awaited in turn; criterion
//!   reports rollouts per second.
//! - `engine_per_step`: a 100-step plan on zero-latency providers (no
//!   readiness delay, no pauses); criterion reports steps per second, so
//!   engine CPU per step = 1 / that.
//!
//! Each timed rollout gets an engine built before the timing (v1 stable on
//! a fresh target) and dropped after it: what is timed is the rollout.
//!
//! `cargo bench --bench rollouts`
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use relay::strategies::CanaryStrategy;
use relay::Relay;

/// Rollouts run together by the `_at_once` bench.
const AT_ONCE: usize = 100;

/// An engine on a fresh simulated target with v1 already stable.
fn world(rt: &tokio::runtime::Runtime, readiness: Duration) -> Relay {
    rt.block_on(common::relay_with_v1(common::healthy_target(readiness)))
}

fn bench(c: &mut Criterion) {
    let rt = common::virtual_time();
    let mut g = c.benchmark_group("rollouts");
    g.throughput(Throughput::Elements(1));
    for interval in [60, 300] {
        let strategy = common::ten_step_canary(Duration::from_secs(interval));
        g.bench_function(format!("canary_10_step_1h_measured_every_{interval}s"), |b| {
            b.iter_batched(
                || world(&rt, Duration::from_secs(5)),
                |relay| {
                    rt.block_on(async {
                        let spec = common::spec("v2", strategy.clone());
                        let outcome = relay.start(spec).await.unwrap().wait().await.unwrap();
                        assert!(outcome.is_success());
                    });
                    relay
                },
                BatchSize::SmallInput,
            )
        });
    }

    // The same canary on 100 targets at once: their timers fall due at the
    // same virtual instants, so one advance of the clock serves them all.
    let strategy = common::ten_step_canary(Duration::from_secs(60));
    g.throughput(Throughput::Elements(AT_ONCE as u64));
    g.bench_function(format!("canary_10_step_1h_measured_every_60s_{AT_ONCE}_at_once"), |b| {
        b.iter_batched(
            || rt.block_on(common::fleet_with_v1(AT_ONCE, Duration::from_secs(5))),
            |relay| {
                rt.block_on(common::run_all(&relay, AT_ONCE, "app:v2", strategy.clone()));
                relay
            },
            BatchSize::PerIteration,
        )
    });

    let steps = CanaryStrategy::linear(1, Duration::from_millis(1));
    let mut weights_only = CanaryStrategy::new();
    for s in steps.steps() {
        if let relay::strategies::CanaryStep::SetWeight(w) = s {
            weights_only = weights_only.set_weight(*w);
        }
    }
    let probe = world(&rt, Duration::ZERO);
    let plan_len = rt.block_on(async {
        let relay = probe;
        let spec = common::spec("v2", weights_only.clone());
        relay.plan(&spec).await.unwrap().steps.len()
    });
    g.throughput(Throughput::Elements(plan_len as u64));
    g.bench_function(format!("engine_per_step_{plan_len}_steps"), |b| {
        b.iter_batched(
            || world(&rt, Duration::ZERO),
            |relay| {
                rt.block_on(async {
                    let spec = common::spec("v2", weights_only.clone());
                    assert!(relay.start(spec).await.unwrap().wait().await.unwrap().is_success());
                });
                relay
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
