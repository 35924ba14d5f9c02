//! Hooks on the simulated target, in virtual time: where the plan puts
//! them, what they are told, retries and timeouts, and what a failure does
//! at each point.

#![allow(clippy::unwrap_used)]

mod common;
#[cfg(feature = "http")]
#[path = "shared/http_server.rs"]
mod http_server;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{deploy_v1, release, trail, World};
use relay::hook::{FnHook, HookContext, HookFailure, HookRun};
use relay::strategies::CanaryStrategy;
use relay::{Error, HookPoint, HookSpec, Outcome, Relay, RolloutSpec};

/// A hook that records what it was told and answers with `answer`.
fn recording(
    name: &str,
    seen: Arc<Mutex<Vec<HookContext>>>,
    answer: impl Fn(&HookContext) -> HookRun + Send + Sync + 'static,
) -> Arc<dyn relay::Hook> {
    let answer = Arc::new(answer);
    Arc::new(FnHook::new(name, move |ctx: HookContext| {
        let (seen, answer) = (seen.clone(), answer.clone());
        async move {
            let run = answer(&ctx);
            seen.lock().unwrap().push(ctx);
            Ok(run)
        }
    }))
}

fn canary() -> CanaryStrategy {
    CanaryStrategy::new()
        .set_weight(25)
        .pause(Duration::from_secs(60))
        .set_weight(50)
}

async fn engine(w: &World, hooks: Vec<Arc<dyn relay::Hook>>) -> Relay {
    let mut b = w.builder();
    for h in hooks {
        b = b.hook(h);
    }
    let relay = b.build().unwrap();
    deploy_v1(&relay).await;
    relay
}

/// The candidate weights of the rollout's traffic steps, in order.
async fn routes(relay: &Relay, id: &str) -> Vec<u64> {
    trail(relay, id)
        .await
        .into_iter()
        .filter(|(a, _)| a == "target.route")
        .map(|(_, d)| d["candidate_weight"].as_u64().unwrap_or(0))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn hooks_run_where_their_points_say_and_are_shown_and_audited() {
    let w = World::new(51);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let pass = |_: &HookContext| HookRun::passed("ok").logs("job/smoke-1");
    let relay = engine(&w, vec![recording("check", seen.clone(), pass)]).await;
    let mut spec = RolloutSpec::new("web", release("v2"), canary()).id("r1");
    for at in [
        HookPoint::PreRollout,
        HookPoint::PreTraffic,
        HookPoint::PostTraffic,
        HookPoint::PostPromotion,
    ] {
        spec = spec.hook(HookSpec::new("check", at));
    }
    let plan = relay.plan(&spec).await.unwrap();
    let kinds: Vec<String> = plan
        .steps
        .iter()
        .map(|s| match s {
            relay::Step::Hook { hook } => format!("hook:{}", hook.at),
            other => other.kind().to_owned(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "hook:pre_rollout",
            "stage",
            "hook:pre_traffic",
            "route",
            "hook:post_traffic",
            "pause",
            "scale",
            "route",
            "hook:post_traffic",
            "scale",
            "route",
            "hook:post_traffic",
            "promote",
            "hook:post_promotion",
            "retire",
        ]
    );
    assert!(plan.to_string().contains("hook \"check\" (pre_traffic)"), "{plan}");
    let outcome = relay.start(spec).await.unwrap().wait().await.unwrap();
    assert!(outcome.is_success(), "{outcome}");

    let seen = seen.lock().unwrap().clone();
    let told: Vec<(HookPoint, u8)> = seen.iter().map(|c| (c.at, c.candidate_weight)).collect();
    assert_eq!(
        told,
        [
            (HookPoint::PreRollout, 0),
            (HookPoint::PreTraffic, 0),
            (HookPoint::PostTraffic, 25),
            (HookPoint::PostTraffic, 50),
            (HookPoint::PostTraffic, 100),
            (HookPoint::PostPromotion, 100),
        ]
    );
    let first = &seen[0];
    assert_eq!(first.key, "r1/0/check");
    assert_eq!(first.candidate, plan.candidate.id);
    assert_eq!(first.stable, plan.stable);
    let audited: Vec<serde_json::Value> = trail(&relay, "r1")
        .await
        .into_iter()
        .filter(|(a, _)| a == "hook.passed")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(audited.len(), 6);
    assert_eq!(audited[1]["at"], "pre_traffic");
    assert_eq!(audited[1]["logs"], "job/smoke-1");
}

/// A smoke test that fails with the candidate up and no traffic: the
/// rollout rolls back before any request reaches the candidate.
#[tokio::test(start_paused = true)]
async fn a_failing_pre_traffic_smoke_test_rolls_back_before_any_traffic() {
    let w = World::new(52);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let fail = |_: &HookContext| HookRun::failed("3 of 12 smoke checks failed").logs("job/smoke-7");
    let relay = engine(&w, vec![recording("smoke", seen.clone(), fail)]).await;
    let spec = RolloutSpec::new("web", release("v2"), canary())
        .id("r2")
        .hook(HookSpec::new("smoke", HookPoint::PreTraffic).retries(1));
    let outcome = relay.start(spec).await.unwrap().wait().await.unwrap();
    match &outcome {
        Outcome::RolledBack { cause } => {
            assert!(
                cause.contains("hook \"smoke\" (pre_traffic) failed: 3 of 12 smoke checks failed"),
                "{cause}"
            )
        }
        other => panic!("{other}"),
    }
    assert_eq!(seen.lock().unwrap().len(), 2, "one attempt and one retry");
    assert_eq!(
        routes(&relay, "r2").await.iter().filter(|w| **w > 0).count(),
        0,
        "no traffic ever reached the candidate"
    );
    let failed = trail(&relay, "r2")
        .await
        .into_iter()
        .filter(|(a, _)| a == "hook.failed")
        .count();
    assert_eq!(failed, 2, "every attempt audited");
}

#[tokio::test(start_paused = true)]
async fn retries_timeouts_and_the_failure_policy() {
    let w = World::new(53);
    // Fails twice, then passes.
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let flaky = Arc::new(FnHook::new("flaky", move |_ctx: HookContext| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 2 {
                Err(Error::provider("test", true, "connection reset"))
            } else {
                Ok(HookRun::passed("third time"))
            }
        }
    }));
    // Never finishes.
    let hang = Arc::new(FnHook::new("hang", |_ctx: HookContext| async {
        tokio::time::sleep(Duration::from_secs(86_400)).await;
        Ok(HookRun::passed("too late"))
    }));
    let relay = engine(&w, vec![flaky, hang]).await;

    let spec =
        RolloutSpec::new("web", release("v2"), canary()).hook(HookSpec::new("flaky", HookPoint::PreRollout).retries(2));
    assert!(relay.start(spec).await.unwrap().wait().await.unwrap().is_success());
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // A hook that hangs past its timeout fails; told to go on, the rollout
    // goes on and its failure is on the record.
    let spec = RolloutSpec::new("web", release("v3"), canary()).id("r3").hook(
        HookSpec::new("hang", HookPoint::PreTraffic)
            .timeout(Duration::from_secs(30))
            .on_failure(HookFailure::Continue),
    );
    let started = tokio::time::Instant::now();
    let outcome = relay.start(spec).await.unwrap().wait().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3600), "the timeout bounded it");
    // v3 fails 20% of requests, but this canary has no analysis.
    assert!(outcome.is_success(), "{outcome}");
    let failed: Vec<serde_json::Value> = trail(&relay, "r3")
        .await
        .into_iter()
        .filter(|(a, _)| a == "hook.failed")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["message"], "did not finish within 30s");
}

/// After promotion a failing hook does not roll the release back; after a
/// rollback, its hooks run and their failure changes nothing.
#[tokio::test(start_paused = true)]
async fn after_promotion_and_after_a_rollback_failures_are_recorded_only() {
    let w = World::new(54);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let fail = |_: &HookContext| HookRun::failed("synthetic check failed");
    let relay = engine(&w, vec![recording("after", seen.clone(), fail)]).await;
    let spec = RolloutSpec::new("web", release("v2"), canary())
        .id("r4")
        .hook(HookSpec::new("after", HookPoint::PostPromotion));
    let outcome = relay.start(spec).await.unwrap().wait().await.unwrap();
    assert!(matches!(outcome, Outcome::Promoted { .. }), "{outcome}");
    let actions: Vec<String> = trail(&relay, "r4").await.into_iter().map(|(a, _)| a).collect();
    assert!(actions.contains(&"hook.failed".to_owned()) && actions.contains(&"rollout.cleanup_failed".to_owned()));

    // v3 with an analysis that fails it: rolled back, then the hook runs.
    let spec = RolloutSpec::new(
        "web",
        release("v3"),
        CanaryStrategy::new().set_weight(25).analyze(common::error_analysis()),
    )
    .id("r5")
    .hook(HookSpec::new("after", HookPoint::PostRollback));
    let outcome = relay.start(spec).await.unwrap().wait().await.unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
    let last = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (last.at, last.key.as_str()),
        (HookPoint::PostRollback, "r5/rollback/after")
    );
    let actions: Vec<String> = trail(&relay, "r5").await.into_iter().map(|(a, _)| a).collect();
    let hook = actions.iter().position(|a| a == "hook.failed").unwrap();
    let end = actions.iter().position(|a| a == "rollout.finished").unwrap();
    assert!(hook < end, "{actions:?}");
}

#[tokio::test(start_paused = true)]
async fn an_unknown_hook_or_a_zero_timeout_is_refused_naming_the_field() {
    let w = World::new(55);
    let relay = engine(&w, Vec::new()).await;
    let spec = RolloutSpec::new("web", release("v2"), canary()).hook(HookSpec::new("smoke", HookPoint::PreTraffic));
    match relay.plan(&spec).await {
        Err(Error::InvalidSpec { path, reason }) => {
            assert_eq!(path, "spec.hooks[0].name");
            assert!(reason.contains("RelayBuilder::hook"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let relay = engine(&w, vec![recording("smoke", seen.clone(), |_| HookRun::passed("ok"))]).await;
    let spec = RolloutSpec::new("web", release("v2"), canary())
        .hook(HookSpec::new("smoke", HookPoint::PreTraffic).timeout(Duration::ZERO));
    match relay.plan(&spec).await {
        Err(Error::InvalidSpec { path, .. }) => assert_eq!(path, "spec.hooks[0].timeout"),
        other => panic!("{other:?}"),
    }
    // A target whose requests follow its ready replicas cannot hold a
    // started candidate back: a pre-traffic hook there is refused.
    let w = World::with_target(relay::providers::sim::SimTarget::new("web").routing(relay::Routing::ReplicaRatio));
    let relay = engine(&w, vec![recording("smoke", seen, |_| HookRun::passed("ok"))]).await;
    let spec = RolloutSpec::new("web", release("v2"), canary()).hook(HookSpec::new("smoke", HookPoint::PreTraffic));
    match relay.plan(&spec).await {
        Err(Error::InvalidSpec { path, reason }) => {
            assert_eq!(path, "spec.hooks[0].at");
            assert!(reason.contains("pre_rollout"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

/// Expand runs before anything changes, contract once the old revision is
/// retired; a rollout rolled back never runs contract; the audit names the
/// phase of each run.
#[tokio::test(start_paused = true)]
async fn a_migration_expands_first_and_contracts_only_after_the_old_revision_is_gone() {
    use relay::hook::Migration;
    let w = World::new(57);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let relay = engine(
        &w,
        vec![
            recording("add-column", seen.clone(), |_| {
                HookRun::passed("ALTER TABLE orders ADD COLUMN note text")
            }),
            recording("drop-column", seen.clone(), |_| {
                HookRun::passed("ALTER TABLE orders DROP COLUMN memo")
            }),
        ],
    )
    .await;
    let migration = || Migration::new("add-column", "drop-column");
    let spec = RolloutSpec::new("web", release("v2"), canary())
        .id("m1")
        .migration(migration());
    let plan = relay.plan(&spec).await.unwrap();
    let hooks: Vec<(usize, &str)> = plan
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            relay::Step::Hook { hook } => Some((i, hook.name.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        hooks,
        [(0, "add-column"), (plan.steps.len() - 1, "drop-column")],
        "{plan}"
    );
    assert_eq!(plan.steps[plan.steps.len() - 2].kind(), "retire");
    assert!(relay.start(spec).await.unwrap().wait().await.unwrap().is_success());
    let phases: Vec<(String, String)> = trail(&relay, "m1")
        .await
        .into_iter()
        .filter(|(a, _)| a == "hook.passed")
        .map(|(_, d)| {
            (
                d["hook"].as_str().unwrap().to_owned(),
                d["phase"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        phases,
        [
            ("add-column".to_owned(), "expand".to_owned()),
            ("drop-column".to_owned(), "contract".to_owned())
        ]
    );

    // v3 rolled back by its analysis: expand ran, contract never did.
    seen.lock().unwrap().clear();
    let spec = RolloutSpec::new(
        "web",
        release("v3"),
        CanaryStrategy::new().set_weight(25).analyze(common::error_analysis()),
    )
    .id("m2")
    .migration(migration());
    let outcome = relay.start(spec).await.unwrap().wait().await.unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
    let ran: Vec<HookPoint> = seen.lock().unwrap().iter().map(|c| c.at).collect();
    assert_eq!(ran, [HookPoint::PreRollout], "only expand ran");

    // An unregistered half is named.
    let spec = RolloutSpec::new("web", release("v2"), canary()).migration(Migration::new("add-column", "drop-it"));
    match relay.plan(&spec).await {
        Err(Error::InvalidSpec { path, .. }) => assert_eq!(path, "spec.migrations[0].contract.name"),
        other => panic!("{other:?}"),
    }
}

#[cfg(feature = "http")]
mod http {
    //! The webhook hook against a server on 127.0.0.1.

    use relay::providers::http::WebhookHook;
    use secrecy::SecretString;

    use super::*;
    use crate::http_server::Server;

    const KEY: &str = "hook-signing-key-0b7e";

    /// A world whose revisions are ready at once (this runs in real time).
    fn fast_world(seed: u64) -> World {
        use relay::providers::sim::{RevisionBehavior, SimTarget};
        World::with_target(SimTarget::new("web").seed(seed).default_behavior(RevisionBehavior {
            readiness_delay: Duration::ZERO,
            ..RevisionBehavior::healthy()
        }))
    }

    #[tokio::test]
    async fn a_webhook_hook_is_signed_keyed_retried_and_its_answer_decides() {
        // A 503 (tried again), then a pass with a logs reference; then a
        // 422, a failed smoke test.
        let server = Server::start(
            vec![
                (503, "busy".to_owned()),
                (
                    200,
                    r#"{"message":"12 checks passed","logs":"https://ci.test/runs/7"}"#.to_owned(),
                ),
            ],
            (422, "3 of 12 checks failed".to_owned()),
        )
        .await;
        let hook = WebhookHook::new("smoke", SecretString::from(format!("{}/smoke?token=t0ken", server.url)))
            .unwrap()
            .signing_key(SecretString::from(KEY));
        assert!(!format!("{hook:?}").contains("t0ken"), "{hook:?}");
        let w = fast_world(56);
        let relay = engine(&w, vec![Arc::new(hook)]).await;
        let smoke = || {
            HookSpec::new("smoke", HookPoint::PreTraffic)
                .retries(1)
                .timeout(Duration::from_secs(5))
        };
        let spec = RolloutSpec::new("web", release("v2"), CanaryStrategy::new().set_weight(50))
            .id("h1")
            .hook(smoke());
        assert!(relay.start(spec).await.unwrap().wait().await.unwrap().is_success());
        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        for r in &requests {
            assert_eq!(
                r.header("Idempotency-Key"),
                Some("h1/1/smoke"),
                "the same key on a retry"
            );
            let signature = r.header("X-Relay-Signature-256").unwrap();
            assert!(relay::gate::verify_webhook_signature(
                KEY.as_bytes(),
                &r.body,
                signature
            ));
            let ctx: HookContext = serde_json::from_slice(&r.body).unwrap();
            assert_eq!((ctx.at, ctx.candidate_weight), (HookPoint::PreTraffic, 0));
        }
        let passed = trail(&relay, "h1")
            .await
            .into_iter()
            .find(|(a, _)| a == "hook.passed")
            .unwrap()
            .1;
        assert_eq!(passed["message"], "12 checks passed");
        assert_eq!(passed["logs"], "https://ci.test/runs/7");
        assert_eq!(passed["attempt"], 2);

        // A 4xx is a failed run: rolled back with no traffic on the candidate.
        let spec = RolloutSpec::new("web", release("v3"), CanaryStrategy::new().set_weight(50))
            .id("h2")
            .hook(smoke());
        match relay.start(spec).await.unwrap().wait().await.unwrap() {
            Outcome::RolledBack { cause } => assert!(cause.contains("answered 422: 3 of 12 checks failed"), "{cause}"),
            other => panic!("{other}"),
        }
        assert!(routes(&relay, "h2").await.iter().all(|w| *w == 0));
        let text = format!("{:?}", trail(&relay, "h2").await);
        assert!(!text.contains("t0ken"), "{text}");
    }
}
