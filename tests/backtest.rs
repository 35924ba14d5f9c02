//! Recording what a probe measured during a live rollout, and backtesting
//! an analysis on it: the replayed verdicts are the live ones, a different
//! threshold changes the outcome, and a report tallies labelled releases.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{release, World};
use relay::providers::sim::{metrics, SimProbe};
use relay::recording::{JsonlRecording, Label, RecordedSample, Recording, RecordingProbe, ReplayProbe};
use relay::strategies::{CanaryStrategy, Direction, MannWhitneyJudge, ThresholdJudge};
use relay::{AnalysisSpec, Check, EventKind, HealthProbe, ProbeQuery, QueryContext, Role, RolloutSpec, Scope, Verdict};

/// Errors below `limit` (every minute, twice), and latency no worse than
/// the stable revision's.
fn analysis(limit: f64) -> AnalysisSpec {
    AnalysisSpec::new(vec![
        Check::new(
            "errors",
            metrics::ERROR_RATE,
            ThresholdJudge::below(limit).min_samples(10),
        ),
        Check::new(
            "latency",
            metrics::LATENCY_MS,
            MannWhitneyJudge::new(Direction::LowerIsBetter).min_samples(10),
        ),
    ])
    .every(Duration::from_secs(60), 2)
}

fn spec(tag: &str, limit: f64) -> RolloutSpec {
    let canary = CanaryStrategy::new()
        .set_weight(25)
        .analyze(analysis(limit))
        .set_weight(50)
        .pause(Duration::from_secs(300))
        .analyze(analysis(limit));
    RolloutSpec::new("web", release(tag), canary).id(format!("live-{tag}"))
}

/// What identifies a verdict and what decided it.
fn key(v: &Verdict) -> String {
    let j = &v.judgement;
    format!(
        "{} #{} {:?} observed={:?} threshold={:?} n={} {}",
        v.check, v.measurement, j.outcome, j.observed, j.threshold, j.samples, j.reason
    )
}

/// Roll `tag` out live on the simulated target, its probe recorded to a
/// file; the live verdicts, the outcome, and the recording.
async fn live(tag: &str, seed: u64, limit: f64) -> (Vec<String>, relay::Outcome, Recording) {
    let w = World::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{tag}.jsonl"));
    let probe = RecordingProbe::new(SimProbe::new(w.target.clone()), Arc::new(JsonlRecording::new(&path)));
    let relay = w.relay_with_probe(Arc::new(probe)).await;
    let handle = relay.start(spec(tag, limit)).await.unwrap();
    let mut events = handle.events();
    let outcome = handle.wait();
    let mut verdicts = Vec::new();
    while let Some(e) = events.next().await {
        if let EventKind::Verdict { verdict } = e.kind {
            verdicts.push(key(&verdict));
        }
    }
    (verdicts, outcome.await.unwrap(), Recording::load(&path).unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_backtest_reaches_the_live_verdicts_on_the_recorded_samples() {
    for (tag, seed) in [("v3", 91), ("v2", 92)] {
        let (live_verdicts, live_outcome, recording) = live(tag, seed, 0.05).await;
        assert!(!recording.samples.is_empty());
        if live_outcome.is_success() {
            assert!(
                recording.samples.iter().any(|s| s.role == Some(Role::Stable)),
                "the baselines the comparison asked for are recorded too"
            );
        }
        let report = relay::backtest(&spec(tag, 0.05), std::slice::from_ref(&recording)).unwrap();
        let run = &report.runs[0];
        let replayed: Vec<String> = run.verdicts.iter().map(|v| key(&v.verdict)).collect();
        assert!(!replayed.is_empty());
        assert_eq!(replayed, live_verdicts, "{tag}: the same verdicts, values and all");
        assert_eq!(
            run.outcome.is_success(),
            live_outcome.is_success(),
            "{tag}: {}",
            run.outcome
        );
        // The same spec and recording, the same answer.
        let again = relay::backtest(&spec(tag, 0.05), &[recording]).unwrap();
        let twice: Vec<String> = again.runs[0].verdicts.iter().map(|v| key(&v.verdict)).collect();
        assert_eq!(twice, replayed);
    }
}

#[tokio::test(start_paused = true)]
async fn a_looser_threshold_misses_what_the_recorded_release_did_wrong() {
    // Recorded with a threshold that let v3 through: the whole rollout.
    let (_, live_outcome, recording) = live("v3", 93, 0.5).await;
    assert!(live_outcome.is_success(), "{live_outcome}");
    let bad = recording.labelled(Label::Bad);
    let strict = relay::backtest(&spec("v3", 0.05), std::slice::from_ref(&bad)).unwrap();
    assert_eq!((strict.caught(), strict.missed()), (1, 0));
    let decided = strict.runs[0]
        .decided_by
        .as_ref()
        .expect("a failing verdict rolled it back");
    assert_eq!(decided.verdict.check, "errors");
    assert_eq!((decided.step, decided.elapsed_ms), (2, 60_000), "the first look at 25%");
    assert!(
        decided.verdict.judgement.observed.unwrap() > 0.15,
        "{:?}",
        decided.verdict.judgement
    );

    let loose = relay::backtest(&spec("v3", 0.5), &[bad]).unwrap();
    assert_eq!((loose.caught(), loose.missed()), (0, 1), "{loose}");
    assert!(loose.runs[0].outcome.is_success());
    let shown = strict.to_string();
    assert!(
        shown.contains("rolled back") && shown.contains("errors at step 3 after 1m00s"),
        "{shown}"
    );
    assert!(
        shown.contains(
            "overall: caught 1 of 1 bad, 0 false alarm(s) in 0 good; detected after 1m00s (median), 1m00s (p90)"
        ),
        "{shown}"
    );

    // A recording from a rollout that ended at its first look says nothing
    // of the looks after it: it ran out, neither caught nor missed.
    let (_, _, short) = live("v3", 94, 0.05).await;
    let report = relay::backtest(&spec("v3", 0.5), &[short.labelled(Label::Bad)]).unwrap();
    assert_eq!(
        (report.caught(), report.missed(), report.undecided()),
        (0, 0, 1),
        "{report}"
    );
    assert!(report.to_string().contains("no data"), "{report}");
}

fn ctx(step: usize, elapsed_s: u64, role: Option<Role>) -> QueryContext {
    QueryContext {
        rollout: "r".into(),
        step,
        measurement: 1,
        check: "errors".into(),
        role,
        elapsed_ms: elapsed_s * 1000,
        step_elapsed_ms: elapsed_s * 1000,
    }
}

fn query(window_s: u64, c: QueryContext) -> ProbeQuery {
    ProbeQuery {
        metric: "error_rate".into(),
        scope: Scope::Target,
        window: Duration::from_secs(window_s),
        target: "web".into(),
        context: Some(c),
    }
}

/// A series (samples recorded without a step, ten seconds each) answers
/// any window: the samples ending in it, joined; a query from outside a
/// rollout is refused.
#[tokio::test]
async fn a_series_answers_every_window_it_covers() {
    let series: Vec<RecordedSample> = (1..=12u64)
        .map(|i| {
            RecordedSample::series(
                Some(Role::Candidate),
                "error_rate",
                10_000,
                i * 10_000,
                vec![i as f64 / 100.0],
                Some(relay::Counts {
                    failures: i,
                    total: 100,
                }),
                "sim",
            )
        })
        .collect();
    let replay = ReplayProbe::new(Arc::new(Recording::new("series", series)));
    let s = replay
        .sample(&query(30, ctx(4, 60, Some(Role::Candidate))))
        .await
        .unwrap();
    assert_eq!(s.values, [0.04, 0.05, 0.06]);
    assert_eq!(
        s.counts,
        Some(relay::Counts {
            failures: 15,
            total: 300
        })
    );
    let none = replay.sample(&query(30, ctx(4, 60, Some(Role::Stable)))).await.unwrap();
    assert!(
        none.values.is_empty(),
        "nothing recorded for the stable revision: no data"
    );
    let mut outside = query(30, ctx(4, 60, None));
    outside.context = None;
    let e = replay.sample(&outside).await.unwrap_err();
    assert!(e.to_string().contains("query.context"), "{e}");
}

/// NaN and the infinities survive a file, which JSON numbers cannot hold.
#[test]
fn odd_values_survive_a_recording_file() {
    let line = r#"{"role":"candidate","metric":"latency_p99","window_ms":60000,"elapsed_ms":60000,"values":["NaN","inf","-inf",1.5]}"#;
    let r = Recording::from_jsonl("odd", line).unwrap();
    let v = &r.samples[0].values;
    assert!(v[0].is_nan() && v[1] == f64::INFINITY && v[2] == f64::NEG_INFINITY && v[3] == 1.5);
    let back = Recording::from_jsonl("odd", &r.to_jsonl()).unwrap();
    assert!(back.samples[0].values[0].is_nan());
    assert_eq!(back.samples[0].values[1..], [f64::INFINITY, f64::NEG_INFINITY, 1.5]);
    let e = Recording::from_jsonl("bad", "{\"values\": [\"many\"]}").unwrap_err();
    assert!(e.to_string().contains("bad:1"), "{e}");
}

/// The simulated releases checked into `tests/fixtures/recordings/`: 20
/// minutes of a candidate beside a stable revision (1% errors, 40 ms
/// median), each revision's errors and latency every 30 s.
fn simulated() -> Vec<Recording> {
    use relay::providers::sim::backtest::Phase;
    use relay::providers::sim::RevisionBehavior;
    let stable = RevisionBehavior {
        error_rate: 0.01,
        ..RevisionBehavior::healthy()
    };
    let like = |f: &dyn Fn(&mut RevisionBehavior)| {
        let mut b = stable.clone();
        f(&mut b);
        b
    };
    let from = |at_min: u64, candidate: RevisionBehavior| Phase {
        at: Duration::from_secs(at_min * 60),
        candidate,
    };
    let noisy = like(&|b| b.latency_spread = 0.5);
    let cases: Vec<(&str, Label, &str, RevisionBehavior, Vec<Phase>)> = vec![
        (
            "healthy",
            Label::Good,
            "the candidate as the stable revision",
            stable.clone(),
            vec![from(0, stable.clone())],
        ),
        (
            "errors-2x",
            Label::Bad,
            "twice the stable revision's errors",
            stable.clone(),
            vec![from(0, like(&|b| b.error_rate = 0.02))],
        ),
        (
            "latency-tail",
            Label::Bad,
            "the same median latency, a heavy tail",
            stable.clone(),
            vec![from(0, like(&|b| b.latency_spread = 0.6))],
        ),
        (
            "slow-leak",
            Label::Bad,
            "errors growing: 1%, then 1.5% from 4 min, 2.5% from 8 min, 4% from 12 min",
            stable.clone(),
            vec![
                from(0, stable.clone()),
                from(4, like(&|b| b.error_rate = 0.015)),
                from(8, like(&|b| b.error_rate = 0.025)),
                from(12, like(&|b| b.error_rate = 0.04)),
            ],
        ),
        (
            "noisy-baseline",
            Label::Good,
            "both revisions with widely spread latency",
            noisy.clone(),
            vec![from(0, noisy)],
        ),
    ];
    cases
        .into_iter()
        .enumerate()
        .map(|(i, (name, label, note, stable, phases))| {
            let mut r = relay::providers::sim::backtest::simulate(
                name,
                100 + i as u64,
                Duration::from_secs(20 * 60),
                Duration::from_secs(30),
                stable,
                phases,
            )
            .unwrap()
            .labelled(label);
            r.note = note.to_owned();
            r
        })
        .collect()
}

/// The analysis the report judges: errors and p95 latency against fixed
/// limits, latency against the stable revision's (as
/// `examples/specs/backtest.yaml` writes it).
fn canary_checks() -> RolloutSpec {
    canary_with_p95(70.0)
}

fn canary_with_p95(limit: f64) -> RolloutSpec {
    use relay::strategies::Statistic;
    let checks = AnalysisSpec::new(vec![
        Check::new(
            "errors",
            metrics::ERROR_RATE,
            ThresholdJudge::below(0.015).min_samples(30),
        ),
        Check::new(
            "latency p95",
            metrics::LATENCY_MS,
            ThresholdJudge::below(limit).statistic(Statistic::P95).min_samples(30),
        ),
        Check::new(
            "latency vs stable",
            metrics::LATENCY_MS,
            MannWhitneyJudge::new(Direction::LowerIsBetter)
                .tolerance(0.1)
                .min_samples(30),
        ),
    ])
    .every(Duration::from_secs(60), 5);
    let canary = CanaryStrategy::new()
        .set_weight(25)
        .analyze(checks.clone())
        .set_weight(50)
        .analyze(checks);
    RolloutSpec::new("web", release("v2"), canary)
}

#[path = "shared/golden.rs"]
mod golden;

/// The simulator makes the recordings checked in (so they can be made
/// again, and a change to the simulator shows), and the report on them is
/// the one checked in.
#[test]
fn the_simulated_recordings_and_their_report_are_the_checked_in_ones() {
    let recordings = simulated();
    for r in &recordings {
        golden::golden(&format!("recordings/{}.jsonl", r.name), &r.to_jsonl());
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recordings");
    let loaded: Vec<Recording> = recordings
        .iter()
        .map(|r| Recording::load(&dir.join(format!("{}.jsonl", r.name))).unwrap())
        .collect();
    assert_eq!(loaded, recordings, "a recording reads back as written");
    let report = relay::backtest(&canary_checks(), &loaded).unwrap();
    golden::golden("recordings/report.txt", &report.to_string());
    golden::golden(
        "recordings/report.json",
        &(serde_json::to_string_pretty(&report.to_json()).unwrap() + "\n"),
    );
    // Loosening the p95 limit trades detection time for false alarms.
    let sweep = relay::sweep(
        "latency p95.below",
        &[70.0, 90.0, 110.0, 130.0],
        |limit| Ok(canary_with_p95(*limit)),
        &loaded,
    )
    .unwrap();
    golden::golden("recordings/sweep.txt", &sweep.to_string());
    let last = &sweep.points.last().unwrap().1;
    assert_eq!((last.caught, last.false_alarms), (3, 0), "{sweep}");
}
