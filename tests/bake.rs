//! A bake at full traffic before the candidate is made stable, on the
//! simulated target in virtual time: where the plan puts it, the previous
//! revision kept warm beside the candidate, a regression during it rolled
//! back to that revision (timed from the failing verdict), an abort during
//! it, promote-now skipping it, and what the plan refuses.

#![allow(clippy::unwrap_used)]

mod common;
#[allow(dead_code)]
#[path = "shared/rollouts.rs"]
mod rollouts;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{deploy_v1, error_analysis, release, trail, World};
use relay::hook::{FnHook, HookContext, HookRun, Migration};
use relay::providers::sim::{metrics, RevisionBehavior, SimTarget};
use relay::strategies::{CanaryStrategy, Direction, MannWhitneyJudge};
use relay::{AnalysisSpec, Bake, Check, Error, EventKind, Outcome, Relay, RolloutSpec, Routing, Step, Target};
use rollouts::{timed_events, until_step_starts, verdict_to_traffic};

const BAKE: Duration = Duration::from_secs(30 * 60);

fn canary() -> CanaryStrategy {
    CanaryStrategy::new().set_weight(50).pause(Duration::from_secs(60))
}

/// The bake's analysis: errors below 5%, every minute.
fn watch() -> AnalysisSpec {
    error_analysis().every(Duration::from_secs(60), 1)
}

/// Hooks `expand` and `contract` that record the order they ran in.
fn migration_hooks(ran: &Arc<Mutex<Vec<String>>>) -> Vec<Arc<dyn relay::Hook>> {
    ["expand", "contract"]
        .into_iter()
        .map(|name| {
            let ran = ran.clone();
            Arc::new(FnHook::new(name, move |_: HookContext| {
                let ran = ran.clone();
                async move {
                    ran.lock().unwrap().push(name.to_owned());
                    Ok(HookRun::passed("ok"))
                }
            })) as Arc<dyn relay::Hook>
        })
        .collect()
}

async fn engine(w: &World, ran: &Arc<Mutex<Vec<String>>>) -> Relay {
    let mut b = w.builder();
    for h in migration_hooks(ran) {
        b = b.hook(h);
    }
    let relay = b.build().unwrap();
    deploy_v1(&relay).await;
    relay
}

fn spec(id: &str, bake: Bake) -> RolloutSpec {
    RolloutSpec::new("web", release("v2"), canary())
        .id(id)
        .bake(bake)
        .migration(Migration::new("expand", "contract"))
}

fn kinds(steps: &[Step]) -> Vec<&'static str> {
    steps.iter().map(Step::kind).collect()
}

/// What the target runs now: (revision, desired replicas) and the split.
async fn running(w: &World) -> (Vec<(String, u32)>, String) {
    let s = w.target.observe().await.unwrap();
    let revs = s.revisions.iter().map(|r| (r.id.to_string(), r.desired)).collect();
    (revs, s.traffic.to_string())
}

#[tokio::test(start_paused = true)]
async fn a_bake_runs_at_full_traffic_with_the_previous_revision_warm_then_retires_it() {
    let w = World::new(71);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let relay = engine(&w, &ran).await;
    let spec = spec("r1", Bake::new(BAKE).analysis(watch()));
    let plan = relay.plan(&spec).await.unwrap();
    assert_eq!(
        kinds(&plan.steps),
        ["hook", "stage", "route", "pause", "scale", "route", "bake", "promote", "retire", "hook"],
        "{plan}"
    );
    let shown = plan.to_string();
    assert!(shown.contains("30m at full traffic: 30 x 1m: error_rate"), "{shown}");

    let handle = relay.start(spec).await.unwrap();
    let started = tokio::time::Instant::now();
    until_step_starts(&handle, "bake").await;
    // During the bake: the candidate has every request, the previous
    // revision runs at its full size beside it, and it is not yet stable.
    let (revs, traffic) = running(&w).await;
    let v1 = plan.stable.clone().unwrap().to_string();
    let v2 = plan.candidate.id.to_string();
    assert!(revs.contains(&(v1.clone(), 4)), "{revs:?}");
    assert!(revs.contains(&(v2.clone(), 4)), "{revs:?}");
    assert_eq!(traffic, format!("{v2}=100%"));
    assert_eq!(w.target.observe().await.unwrap().stable.unwrap().to_string(), v1);
    assert_eq!(*ran.lock().unwrap(), ["expand"], "contract ran before the bake passed");

    let outcome = handle.wait().await.unwrap();
    assert!(outcome.is_success(), "{outcome}");
    assert!(started.elapsed() >= BAKE, "{:?}", started.elapsed());
    let (revs, _) = running(&w).await;
    assert_eq!(revs, [(v2, 4)]);
    assert_eq!(*ran.lock().unwrap(), ["expand", "contract"]);
    let verdicts = trail(&relay, "r1")
        .await
        .into_iter()
        .filter(|(a, _)| a == "analysis.verdict")
        .count();
    assert_eq!(verdicts, 30, "one measurement a minute across the bake");
}

/// The regression shows once the candidate has all traffic: the bake's
/// first verdict fails, and traffic is back on the previous revision with
/// no wait, as it kept its size. Run with `--nocapture` for the figure.
#[tokio::test(start_paused = true)]
async fn a_regression_during_the_bake_rolls_back_to_the_warm_previous_revision() {
    let w = World::new(72);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let relay = engine(&w, &ran).await;
    let spec = spec("r1", Bake::new(BAKE).analysis(watch()));
    let plan = relay.plan(&spec).await.unwrap();
    let handle = relay.start(spec).await.unwrap();
    let events = timed_events(&handle);
    until_step_starts(&handle, "bake").await;
    w.target
        .behavior(&plan.candidate.artifact.digest, RevisionBehavior::failing(0.3));

    let outcome = handle.wait().await.unwrap();
    let Outcome::RolledBack { cause } = &outcome else {
        panic!("{outcome}")
    };
    assert!(cause.starts_with("during the bake: "), "{cause}");
    let took = verdict_to_traffic(&events.await.unwrap()).expect("a failing verdict, then traffic back");
    println!(
        "bake rollback (sim, previous revision kept at full size): failing verdict -> 100% on it in {took:?} (virtual)"
    );
    assert_eq!(
        took,
        Duration::ZERO,
        "the previous revision was warm: nothing to wait for"
    );
    let (revs, traffic) = running(&w).await;
    assert_eq!(revs.len(), 1, "{revs:?}");
    assert_eq!(revs[0].1, 4);
    assert_eq!(traffic, format!("{}=100%", revs[0].0));
    assert_eq!(
        *ran.lock().unwrap(),
        ["expand"],
        "a rolled-back release never contracts"
    );
}

/// Keeping one replica costs less; a rollback then scales the previous
/// revision back to its size before any traffic moves to it.
#[tokio::test(start_paused = true)]
async fn a_bake_that_keeps_fewer_replicas_scales_them_back_before_traffic() {
    let w = World::new(73);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let relay = engine(&w, &ran).await;
    let spec = spec("r1", Bake::new(BAKE).analysis(watch()).keep_replicas(1));
    let plan = relay.plan(&spec).await.unwrap();
    let at = plan.steps.iter().position(|s| s.kind() == "bake").unwrap();
    assert_eq!(plan.steps[at - 1].to_string(), "scale stable to 1 replica(s)");

    let handle = relay.start(spec).await.unwrap();
    let events = timed_events(&handle);
    until_step_starts(&handle, "bake").await;
    let v1 = plan.stable.clone().unwrap().to_string();
    assert!(running(&w).await.0.contains(&(v1.clone(), 1)));
    w.target
        .behavior(&plan.candidate.artifact.digest, RevisionBehavior::failing(0.3));
    let outcome = handle.wait().await.unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
    let events = events.await.unwrap();
    let took = verdict_to_traffic(&events).unwrap();
    println!(
        "bake rollback (sim, previous revision kept at 1 of 4): failing verdict -> 100% on it in {took:?} (virtual)"
    );
    // The sim's replicas take 5 s to be ready: traffic waits for them.
    assert!(took >= Duration::from_secs(5), "{took:?}");
    let scaled = events
        .iter()
        .position(|(_, e)| matches!(e.kind, EventKind::Scaled { replicas: 4, .. }))
        .unwrap();
    let routed = events
        .iter()
        .position(|(_, e)| matches!(e.kind, EventKind::TrafficShifted { candidate_weight: 0 }))
        .unwrap();
    assert!(scaled < routed, "capacity first, then traffic");
    assert_eq!(running(&w).await, (vec![(v1.clone(), 4)], format!("{v1}=100%")));
}

#[tokio::test(start_paused = true)]
async fn an_abort_during_the_bake_rolls_back_to_the_previous_revision() {
    let w = World::new(74);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let relay = engine(&w, &ran).await;
    let handle = relay.start(spec("r1", Bake::new(BAKE))).await.unwrap();
    until_step_starts(&handle, "bake").await;
    handle.abort("oncall", "pager: checkout errors").unwrap();
    let outcome = handle.wait().await.unwrap();
    let Outcome::RolledBack { cause } = &outcome else {
        panic!("{outcome}")
    };
    assert!(cause.contains("pager: checkout errors"), "{cause}");
    let actions: Vec<String> = trail(&relay, "r1").await.into_iter().map(|(a, _)| a).collect();
    assert!(!actions.iter().any(|a| a == "rollout.abort_refused"), "{actions:?}");
    assert_eq!(*ran.lock().unwrap(), ["expand"]);
}

/// Regression: promote-now replaced every step after the cursor with a
/// fresh promotion, dropping the hooks after promotion and a migration's
/// contract; now what follows promotion stays as planned (and a bake is
/// skipped).
#[tokio::test(start_paused = true)]
async fn promote_now_skips_the_bake_and_keeps_what_follows_promotion() {
    let w = World::new(75);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let relay = engine(&w, &ran).await;
    let handle = relay.start(spec("r1", Bake::new(BAKE))).await.unwrap();
    until_step_starts(&handle, "pause").await;
    let started = tokio::time::Instant::now();
    handle.promote_now("oncall").unwrap();
    let outcome = handle.wait().await.unwrap();
    assert!(outcome.is_success(), "{outcome}");
    assert!(
        started.elapsed() < BAKE,
        "the bake was skipped: {:?}",
        started.elapsed()
    );
    assert_eq!(*ran.lock().unwrap(), ["expand", "contract"]);
    let record = relay.state().get("r1").await.unwrap().unwrap();
    let tail: Vec<&str> = kinds(&record.plan.steps).into_iter().rev().take(3).collect();
    assert_eq!(tail, ["hook", "retire", "promote"]);
}

#[tokio::test(start_paused = true)]
async fn the_plan_refuses_a_bake_it_cannot_keep() {
    let w = World::new(76);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let relay = engine(&w, &ran).await;
    let field = |e: Error| match e {
        Error::InvalidSpec { path, reason } => format!("{path}: {reason}"),
        other => panic!("{other}"),
    };
    let refused = |bake: Bake| {
        let relay = relay.clone();
        async move { field(relay.plan(&spec("r1", bake)).await.unwrap_err()) }
    };
    let e = refused(Bake::new(Duration::ZERO)).await;
    assert!(e.starts_with("spec.bake.duration:"), "{e}");
    let e = refused(Bake::new(Duration::from_secs(30)).analysis(watch())).await;
    assert!(e.starts_with("spec.bake.analysis.interval:"), "{e}");
    let e = refused(Bake::new(BAKE).keep_replicas(9)).await;
    assert!(
        e.starts_with("spec.bake.keep_replicas:") && e.contains("at most 4"),
        "{e}"
    );
    let compare = AnalysisSpec::new(vec![Check::new(
        "latency vs stable",
        metrics::LATENCY_MS,
        MannWhitneyJudge::new(Direction::LowerIsBetter),
    )])
    .every(Duration::from_secs(60), 1);
    let e = refused(Bake::new(BAKE).analysis(compare)).await;
    assert!(
        e.starts_with("spec.bake.analysis.checks[0]:") && e.contains("no traffic"),
        "{e}"
    );

    // A target whose traffic follows its replicas cannot keep the previous
    // revision without requests: none is kept, and asking for some is refused.
    let ratio = World::with_target(SimTarget::new("web").seed(77).routing(Routing::ReplicaRatio));
    let relay = engine(&ratio, &ran).await;
    let e = field(
        relay
            .plan(&spec("r2", Bake::new(BAKE).keep_replicas(1)))
            .await
            .unwrap_err(),
    );
    assert!(
        e.starts_with("spec.bake.keep_replicas:") && e.contains("ReplicaRatio"),
        "{e}"
    );
    let plan = relay.plan(&spec("r2", Bake::new(BAKE))).await.unwrap();
    let at = plan.steps.iter().position(|s| s.kind() == "bake").unwrap();
    assert_eq!(
        plan.steps[at - 1].to_string(),
        "traffic: candidate 100%, stable 0%",
        "{plan}"
    );
}
