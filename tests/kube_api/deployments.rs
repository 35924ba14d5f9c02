//! The Deployment target (rolling, canary and blue/green modes) and the pod
//! readiness probe, with the controller manager doing the real work and a
//! stand-in kubelet making pods ready or crash-looping.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relay::providers::kubernetes::sdk::k8s_openapi::api::apps::v1::Deployment;
use relay::providers::kubernetes::sdk::k8s_openapi::api::core::v1::Service;
use relay::providers::kubernetes::sdk::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use relay::providers::kubernetes::sdk::kube::api::{Patch, PatchParams};
use relay::providers::kubernetes::sdk::kube::{Api, Client};
use relay::providers::kubernetes::{DeploymentTarget, KubeSecretStore, PodReadinessProbe};
use relay::providers::sim::MemoryArtifactStore;
use relay::providers::RequestCounter;
use relay::strategies::{AllAtOnceStrategy, BlueGreenStrategy, CanaryStrategy, Statistic, ThresholdJudge};
use relay::{
    testing, AnalysisSpec, AuditSink, Check, Digest, EngineConfig, Error, EventKind, MemoryAuditSink, Outcome,
    ProbeQuery, Relay, Release, RevisionId, RevisionSpec, RolloutSpec, Scope, Target, TrafficSplit, VerdictOutcome,
};

use crate::support::{client, counted_client, namespace, provider_client, put_secret, web_app, Kubelet, PLANTED};

const REPO: &str = "registry.test/web";

fn spec(tag: &str) -> RevisionSpec {
    testing::revision(REPO, tag.as_bytes()).tag(tag).build()
}

/// Artifacts `v2`, `v3`... whose content is their tag.
fn artifacts(tags: &[&str]) -> Arc<MemoryArtifactStore> {
    let store = MemoryArtifactStore::new();
    for tag in tags {
        store.push(REPO, tag, tag.as_bytes(), BTreeMap::new());
    }
    Arc::new(store)
}

fn pinned(tag: &str) -> String {
    format!("{REPO}@{}", Digest::of(tag.as_bytes()))
}

async fn get(client: &Client, ns: &str, name: &str) -> Option<Deployment> {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

fn image(d: &Deployment) -> String {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap()
}

fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().unwrap().replicas.unwrap()
}

async fn selector(client: &Client, ns: &str) -> BTreeMap<String, String> {
    service_selector(client, ns, "web").await
}

async fn service_selector(client: &Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .selector
        .unwrap()
}

fn engine(target: impl Target, artifacts: Arc<MemoryArtifactStore>) -> relay::RelayBuilder {
    Relay::builder()
        .target(Arc::new(target))
        .artifacts(artifacts)
        .config(EngineConfig {
            poll_interval: Duration::from_millis(200),
            progress_deadline: Duration::from_secs(60),
            ..Default::default()
        })
}

/// Every mode passes the target conformance suite: replica-ratio canary
/// (on a running and on an empty Deployment), blue/green and rolling (the
/// routed mode in its own test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_passes_the_target_conformance_suite() {
    let client = client().await;
    let ns = namespace(&client).await;
    let _kubelet = Kubelet::start(&client, &ns);
    web_app(&client, &ns, "web", 2).await;
    let canary_target = |name: &'static str| {
        let ns = ns.clone();
        async move {
            DeploymentTarget::builder(provider_client().await, &ns, name)
                .canary()
                .poll_interval(Duration::from_millis(100))
                .promote_timeout(Duration::from_secs(60))
                .build()
                .await
                .unwrap()
        }
    };
    let target = canary_target("web").await;
    testing::target_conformance(&target, &spec("v1"), &spec("v2")).await;
    let stable = get(&client, &ns, "web").await.unwrap();
    assert_eq!(
        image(&stable),
        pinned("v1"),
        "the promoted template is in the stable Deployment"
    );
    assert!(
        get(&client, &ns, "web-canary").await.is_none(),
        "retiring the candidate deleted its Deployment"
    );

    // A Deployment created empty for a first release: no stable revision,
    // and a first release is retired with its traffic.
    web_app(&client, &ns, "api", 0).await;
    let target = canary_target("api").await;
    let empty = target.observe().await.unwrap();
    assert!(
        empty.stable.is_none() && empty.revisions.is_empty(),
        "an empty Deployment runs nothing: {empty:?}"
    );
    testing::target_conformance(&target, &spec("v1"), &spec("v2")).await;
    assert!(get(&client, &ns, "api-canary").await.is_none());

    // Blue/green (a switch) and rolling (one revision at a time): the suite
    // follows what each mode declares.
    for (name, blue_green) in [("shop", true), ("cart", false)] {
        web_app(&client, &ns, name, 2).await;
        let b = DeploymentTarget::builder(provider_client().await, &ns, name)
            .poll_interval(Duration::from_millis(100))
            .promote_timeout(Duration::from_secs(60));
        let target = match blue_green {
            true => b.blue_green(name),
            false => b,
        }
        .build()
        .await
        .unwrap();
        testing::target_conformance(&target, &spec("v1"), &spec("v2")).await;
    }
    assert_eq!(image(&get(&client, &ns, "shop").await.unwrap()), pinned("v1"));
    assert_eq!(image(&get(&client, &ns, "cart").await.unwrap()), pinned("v2"));
}

/// A first release on a Deployment created at zero replicas whose pods
/// crash-loop is rolled back to nothing deployed: the candidate's
/// Deployment deleted, the Deployment left at zero with the template it
/// had, the Service back on its own selector, reported as rolled back; in
/// both modes that run a candidate beside the stable Deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_release_is_rolled_back_to_nothing_deployed() {
    let client = client().await;
    let ns = namespace(&client).await;
    let kubelet = Kubelet::start(&client, &ns);
    kubelet.fail(&Digest::of(b"v1").to_string());
    for blue_green in [false, true] {
        let name = if blue_green { "preview" } else { "web" };
        let before = web_app(&client, &ns, name, 0).await;
        let original = service_selector(&client, &ns, name).await;
        let builder = DeploymentTarget::builder(provider_client().await, &ns, name)
            .name(name)
            .progress_deadline(Duration::from_secs(3))
            .poll_interval(Duration::from_millis(100));
        let target = if blue_green {
            builder.blue_green(name)
        } else {
            builder.canary()
        }
        .build()
        .await
        .unwrap();
        let relay = engine(target.clone(), artifacts(&["v1"])).build().unwrap();
        let v1 = Release::new(format!("{REPO}:v1").parse().unwrap()).replicas(2);
        let strategy: Box<dyn Fn() -> RolloutSpec> = if blue_green {
            Box::new(move || RolloutSpec::new(name, v1.clone(), BlueGreenStrategy::new()))
        } else {
            Box::new(move || RolloutSpec::new(name, v1.clone(), CanaryStrategy::new().set_weight(50)))
        };
        let plan = relay.plan(&strategy()).await.unwrap();
        assert!(plan.stable.is_none(), "{plan}");
        let outcome = relay.start(strategy()).await.unwrap().wait().await.unwrap();
        assert!(matches!(&outcome, Outcome::RolledBack { .. }), "{name}: {outcome}");
        assert!(
            get(&client, &ns, &format!("{name}-canary")).await.is_none(),
            "{name}: the candidate's Deployment is deleted"
        );
        let after = get(&client, &ns, name).await.unwrap();
        assert_eq!(
            (image(&after), replicas(&after)),
            (image(&before), 0),
            "{name}: the Deployment is as it was"
        );
        assert_eq!(service_selector(&client, &ns, name).await, original, "{name}");
        let state = target.observe().await.unwrap();
        assert!(
            state.stable.is_none() && state.revisions.is_empty(),
            "{name}: nothing deployed: {state:?}"
        );
    }
}

/// The distinct (updated, available) replica pairs a Deployment went through.
type Seen = Arc<Mutex<Vec<(i32, i32)>>>;

/// Notes the Deployment's status in `seen` if it differs from the last.
async fn sample(api: &Api<Deployment>, seen: &Seen) {
    if let Ok(d) = api.get("web").await {
        let s = d.status.unwrap_or_default();
        let pair = (s.updated_replicas.unwrap_or(0), s.available_replicas.unwrap_or(0));
        let mut seen = seen.lock().unwrap();
        if seen.last() != Some(&pair) {
            seen.push(pair);
        }
    }
}

/// Samples the Deployment's status every 25 ms while a rollout runs, and
/// once more when the returned future (awaited) stops the sampling: the
/// rollout may end, on the word of its own watch, within 25 ms of the last
/// change.
fn sample_status(client: &Client, ns: &str) -> (Seen, impl std::future::Future<Output = ()>) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let (out, sampler) = (seen.clone(), api.clone());
    let task = tokio::spawn(async move {
        loop {
            sample(&sampler, &out).await;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    let last = seen.clone();
    let stop = async move {
        task.abort();
        sample(&api, &last).await;
    };
    (seen, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_keeps_max_unavailable_and_a_failing_one_goes_back_to_the_previous_template() {
    let client = client().await;
    let ns = namespace(&client).await;
    let kubelet = Kubelet::start(&client, &ns);
    web_app(&client, &ns, "web", 4).await;
    put_secret(&client, &ns, "db", &[("password", PLANTED.as_bytes())]).await;
    let calls = RequestCounter::default();
    let target = DeploymentTarget::builder(counted_client(&calls).await, &ns, "web")
        .name("web")
        .rolling(IntOrString::Int(1), IntOrString::Int(0))
        .progress_deadline(Duration::from_secs(4))
        // The stand-in kubelet's crash loop shows 3 restarts: above this
        // budget, so the controller's progress deadline decides here.
        .restart_budget(100)
        .build()
        .await
        .unwrap();
    // A Deployment applied by hand: its template and its ReplicaSet's get
    // the same derived id, so it is one revision, all ready.
    let before = target.observe().await.unwrap();
    let adopted = before.stable.clone().unwrap();
    assert_eq!(
        before
            .revisions
            .iter()
            .map(|r| (&r.id, r.desired, r.ready))
            .collect::<Vec<_>>(),
        [(&adopted, 4, 4)]
    );
    let audit = Arc::new(MemoryAuditSink::default());
    let log = CallLog::default();
    let metered = Metered {
        inner: target.clone(),
        calls,
        log: log.clone(),
    };
    let relay = engine(metered, artifacts(&["v2", "v3"]))
        .secrets("k8s", Arc::new(KubeSecretStore::new(provider_client().await, &ns)))
        .audit(audit.clone())
        .build()
        .unwrap();

    let (seen, stop_sampling) = sample_status(&client, &ns);
    let v2 = Release::new(format!("{REPO}:v2").parse().unwrap())
        .replicas(4)
        .config("MODE", "fast")
        .secret("DB", "k8s://db#password".parse().unwrap());
    let outcome = relay
        .start(RolloutSpec::new("web", v2, AllAtOnceStrategy))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    stop_sampling.await;
    assert!(outcome.is_success(), "{outcome}");
    let calls_of_v2 = std::mem::take(&mut *log.lock().unwrap());
    for (call, n, fewest, most, total) in summary(&calls_of_v2) {
        println!("kubernetes rolling target calls: {call:<8} x{n:<3} requests {fewest}..{most} each, {total} in all");
    }
    let observe = summary(&calls_of_v2).into_iter().find(|c| c.0 == "observe").unwrap();
    assert!(
        observe.2 == 1 && observe.3 <= 3,
        "{observe:?}: the Deployment; + its ReplicaSets while it runs more than one template; + the pods of a revision short of ready ones"
    );
    let seen = seen.lock().unwrap().clone();
    let after_start: Vec<_> = seen.iter().skip_while(|(updated, _)| *updated == 4).collect();
    assert!(
        after_start.iter().all(|(_, available)| *available >= 4),
        "maxUnavailable 0: available never below 4: {seen:?}"
    );
    let updated: Vec<i32> = after_start.iter().map(|(u, _)| *u).collect();
    assert!(
        updated.windows(2).all(|w| w[0] <= w[1]) && (1..=4).all(|n| updated.contains(&n)),
        "maxSurge 1: pods replaced one at a time: {seen:?}"
    );

    let d = get(&client, &ns, "web").await.unwrap();
    assert_eq!(image(&d), pinned("v2"));
    let spec = d.spec.as_ref().unwrap();
    let rolling = spec.strategy.as_ref().unwrap().rolling_update.as_ref().unwrap();
    assert_eq!(
        (rolling.max_surge.clone(), rolling.max_unavailable.clone()),
        (Some(IntOrString::Int(1)), Some(IntOrString::Int(0)))
    );
    assert_eq!(spec.progress_deadline_seconds, Some(4));
    let env = spec.template.spec.as_ref().unwrap().containers[0].env.clone().unwrap();
    let db = env.iter().find(|e| e.name == "DB").unwrap();
    assert_eq!(db.value, None, "a secret is a reference, never a value");
    let key = db.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
    assert_eq!((key.name.as_str(), key.key.as_str()), ("db", "password"));
    assert!(env
        .iter()
        .any(|e| e.name == "MODE" && e.value.as_deref() == Some("fast")));
    let managers = d.metadata.managed_fields.clone().unwrap_or_default();
    assert!(
        managers
            .iter()
            .any(|m| m.manager.as_deref() == Some("relay") && m.operation.as_deref() == Some("Apply")),
        "the template was server-side applied by relay: {managers:?}"
    );
    let v2_id = target.observe().await.unwrap().stable.unwrap();
    assert_ne!(v2_id, adopted);

    // v3's pods never become ready: the controller's progress deadline
    // passes, relay rolls back to v2's template from its ReplicaSet.
    kubelet.fail(&Digest::of(b"v3").to_string());
    let v3 = Release::new(format!("{REPO}:v3").parse().unwrap())
        .replicas(4)
        .config("MODE", "fast")
        .secret("DB", "k8s://db#password".parse().unwrap());
    let outcome = relay
        .start(RolloutSpec::new("web", v3, AllAtOnceStrategy))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { cause } if cause.contains("made no progress within its progressDeadlineSeconds")),
        "{outcome}"
    );
    let d = get(&client, &ns, "web").await.unwrap();
    assert_eq!(image(&d), pinned("v2"), "the previous template is back");
    let state = target.observe().await.unwrap();
    assert_eq!(state.stable.as_ref(), Some(&v2_id));
    assert_eq!(state.revision(&v2_id).map(|r| (r.desired, r.ready)), Some((4, 4)));
    for e in audit.entries().await.unwrap() {
        assert!(
            !serde_json::to_string(&e).unwrap().contains(PLANTED),
            "the secret leaked: {e:?}"
        );
    }

    // Drift: in sync, until someone sets the image by hand.
    let report = relay.drift("web").await.unwrap();
    assert!(report.in_sync() && report.described, "{report:?}");
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "registry.test/web:hotfix"}]}}}});
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .patch("web", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    let report = relay.drift("web").await.unwrap();
    assert_eq!(
        report.differences,
        [relay::drift::Drift::Image {
            applied: pinned("v2"),
            running: "registry.test/web:hotfix".into()
        }],
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_promotion_are_learned_from_watches_on_the_deployments() {
    for canary in [false, true] {
        let mode = if canary { "canary" } else { "rolling" };
        let client = client().await;
        let ns = namespace(&client).await;
        let _kubelet = Kubelet::start(&client, &ns);
        web_app(&client, &ns, "web", 3).await;
        // Every poll an hour away, the engine's and the promotion's: only
        // the watches can end the waits in time.
        let hour = Duration::from_secs(3600);
        let calls = RequestCounter::default();
        let builder = DeploymentTarget::builder(counted_client(&calls).await, &ns, "web")
            .name("web")
            .poll_interval(hour);
        let builder = if canary {
            builder.canary()
        } else {
            builder.rolling(IntOrString::Int(1), IntOrString::Int(0))
        };
        let log = CallLog::default();
        let metered = Metered {
            inner: builder.build().await.unwrap(),
            calls,
            log: log.clone(),
        };
        let relay = Relay::builder()
            .target(Arc::new(metered))
            .artifacts(artifacts(&["v2"]))
            .config(EngineConfig {
                poll_interval: hour,
                poll_interval_max: hour,
                watch_resync: hour,
                progress_deadline: 2 * hour,
                ..Default::default()
            })
            .build()
            .unwrap();
        let v2 = Release::new(format!("{REPO}:v2").parse().unwrap()).replicas(3);
        let spec = if canary {
            RolloutSpec::new("web", v2, CanaryStrategy::new().set_weight(50))
        } else {
            RolloutSpec::new("web", v2, AllAtOnceStrategy)
        };
        let started = Instant::now();
        let rollout = relay.start(spec).await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(120), rollout.wait())
            .await
            .expect("the rollout waited for a poll: no watch ended a wait")
            .unwrap();
        assert!(outcome.is_success(), "{mode}: {outcome}");
        let log = std::mem::take(&mut *log.lock().unwrap());
        let summary = summary(&log);
        for (call, n, fewest, most, total) in &summary {
            println!("kubernetes {mode} target calls, watched: {call:<8} x{n:<3} requests {fewest}..{most} each, {total} in all");
        }
        let changes = summary.iter().find(|c| c.0 == "changed").map_or(0, |c| c.1);
        assert!(changes >= 1, "{mode}: {summary:?}");
        println!(
            "{mode}: 3 replicas rolled out on {changes} watch events in {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_is_promoted_and_failing_ones_are_rolled_back() {
    let client = client().await;
    let ns = namespace(&client).await;
    let kubelet = Kubelet::start(&client, &ns);
    web_app(&client, &ns, "web", 4).await;
    let calls = RequestCounter::default();
    let target = DeploymentTarget::builder(counted_client(&calls).await, &ns, "web")
        .name("web")
        .canary()
        .progress_deadline(Duration::from_secs(120))
        .poll_interval(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let probe = Arc::new(PodReadinessProbe::new(provider_client().await, &ns, "app=web"));
    let query = |metric: &str, scope: Scope| ProbeQuery {
        metric: metric.into(),
        scope,
        window: Duration::from_secs(60),
        target: "web".into(),
        context: None,
    };
    testing::health_probe_conformance(
        probe.as_ref(),
        &query("ready_ratio", Scope::Target),
        Some(&query("ready_ratio", Scope::Revision(RevisionId::from("never-ran")))),
        Some(&query("latency_ms", Scope::Target)),
    )
    .await;
    let log = CallLog::default();
    let metered = Metered {
        inner: target.clone(),
        calls: calls.clone(),
        log: log.clone(),
    };
    let relay = engine(metered, artifacts(&["v2", "v3", "v4"]))
        .probe(probe)
        .build()
        .unwrap();
    let analysis = AnalysisSpec::new(vec![
        Check::new("ready", "ready_ratio", ThresholdJudge::above(0.99)),
        Check::new(
            "not-crashing",
            "crash_looping",
            ThresholdJudge::below(0.5).statistic(Statistic::Max),
        ),
    ])
    .every(Duration::from_secs(1), 2);
    let canary = || {
        CanaryStrategy::new()
            .set_weight(25)
            .analyze(analysis.clone())
            .set_weight(50)
            .analyze(analysis.clone())
    };
    let release = |tag: &str| Release::new(format!("{REPO}:{tag}").parse().unwrap()).replicas(4);

    // v2 is healthy: promoted; the requests of every target call counted.
    let outcome = relay
        .start(RolloutSpec::new("web", release("v2"), canary()))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(outcome.is_success(), "{outcome}");
    let calls_of_v2 = std::mem::take(&mut *log.lock().unwrap());
    for (call, n, fewest, most, total) in summary(&calls_of_v2) {
        println!("kubernetes canary target calls: {call:<8} x{n:<3} requests {fewest}..{most} each, {total} in all");
    }
    let per_call: BTreeMap<&str, (u64, u64)> = summary(&calls_of_v2)
        .into_iter()
        .map(|(call, _, fewest, most, _)| (call, (fewest, most)))
        .collect();
    let observe = per_call["observe"];
    assert!(
        observe.0 == 2 && observe.1 <= 5,
        "{observe:?}: both Deployments; + the ReplicaSets of one that runs more than one template; + the pods of a revision short of ready ones"
    );
    assert_eq!(per_call["stage"], (4, 4), "autoscalers, stable, canary, apply");
    assert_eq!(
        per_call["scale"],
        (2, 4),
        "the canary Deployment and a merge patch; the stable Deployment: + the stable Deployment and autoscalers"
    );
    assert_eq!(
        per_call["promote"],
        (6, 6),
        "both Deployments, autoscalers, apply, a watch from the apply's state, delete the canary"
    );
    let stable = get(&client, &ns, "web").await.unwrap();
    assert_eq!((image(&stable), replicas(&stable)), (pinned("v2"), 4));
    assert!(
        get(&client, &ns, "web-canary").await.is_none(),
        "promotion deletes the canary Deployment"
    );
    assert_eq!(
        selector(&client, &ns).await,
        BTreeMap::from([("app".into(), "web".into())])
    );
    let state = target.observe().await.unwrap();
    assert_eq!(
        state.stable.as_ref().map(RevisionId::as_str),
        Some(outcome_revision(&outcome))
    );

    // v3's pods crash-loop from the start: failed on their restarts while
    // relay waits for them at the first step (not at the progress
    // deadline), the pod's reason in the cause.
    kubelet.fail(&Digest::of(b"v3").to_string());
    let outcome = relay
        .start(RolloutSpec::new("web", release("v3"), canary()))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { cause }
            if cause.contains("failed to start: pod web-canary-") && cause.contains("container app CrashLoopBackOff after 3 restarts")),
        "{outcome}"
    );
    assert!(
        get(&client, &ns, "web-canary").await.is_none(),
        "the candidate's Deployment is deleted"
    );
    let stable = get(&client, &ns, "web").await.unwrap();
    assert_eq!((image(&stable), replicas(&stable)), (pinned("v2"), 4));

    // v4 gets ready, then crash-loops during analysis: the verdict fails and
    // the rollback's first mutation follows it.
    let handle = relay
        .start(RolloutSpec::new("web", release("v4"), canary()))
        .await
        .unwrap();
    let mut events = handle.events();
    let (mut verdict_at, mut first_rollback_at) = (None, None);
    while let Some(e) = events.next().await {
        match &e.kind {
            EventKind::StepStarted { kind, .. } if kind == "analyze" => kubelet.fail(&Digest::of(b"v4").to_string()),
            EventKind::Verdict { verdict } if verdict.judgement.outcome == VerdictOutcome::Fail => {
                verdict_at.get_or_insert((Instant::now(), e.at_ms));
            }
            // The first change of the rollback: stable scaled back up when
            // the canary had shrunk it, else the route back to stable.
            EventKind::Scaled { .. } | EventKind::TrafficShifted { .. } if verdict_at.is_some() => {
                first_rollback_at.get_or_insert((Instant::now(), e.at_ms));
            }
            EventKind::Finished { .. } => break,
            _ => {}
        }
    }
    let outcome = handle.wait().await.unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { cause } if cause.starts_with("analysis failed")),
        "{outcome}"
    );
    let (verdict, rollback) = (verdict_at.unwrap(), first_rollback_at.unwrap());
    println!(
        "kubernetes verdict to first rollback mutation done: {} ms wall ({} ms by event clocks)",
        rollback.0.duration_since(verdict.0).as_millis(),
        rollback.1 - verdict.1
    );
    assert!(get(&client, &ns, "web-canary").await.is_none());
    let stable = get(&client, &ns, "web").await.unwrap();
    assert_eq!((image(&stable), replicas(&stable)), (pinned("v2"), 4));
}

/// Requests each target call sent, in order: (call, requests).
type CallLog = Arc<Mutex<Vec<(&'static str, u64)>>>;

/// A target that records how many API requests each call sent (the engine
/// calls its target one call at a time, so the counts are exact).
#[derive(Debug)]
struct Metered {
    inner: DeploymentTarget,
    calls: RequestCounter,
    log: CallLog,
}

impl Metered {
    async fn measure<T>(&self, call: &'static str, f: impl std::future::Future<Output = T>) -> T {
        let before = self.calls.total();
        let out = f.await;
        self.log.lock().unwrap().push((call, self.calls.total() - before));
        out
    }
}

#[async_trait::async_trait]
impl Target for Metered {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> relay::Capabilities {
        self.inner.capabilities()
    }
    async fn observe(&self) -> relay::Result<relay::TargetState> {
        self.measure("observe", self.inner.observe()).await
    }
    async fn stage(&self, revision: &RevisionSpec, replicas: u32) -> relay::Result<()> {
        self.measure("stage", self.inner.stage(revision, replicas)).await
    }
    async fn scale(&self, revision: &RevisionId, replicas: u32) -> relay::Result<()> {
        self.measure("scale", self.inner.scale(revision, replicas)).await
    }
    async fn route(&self, split: &TrafficSplit) -> relay::Result<()> {
        self.measure("route", self.inner.route(split)).await
    }
    async fn promote(&self, revision: &RevisionId) -> relay::Result<()> {
        self.measure("promote", self.inner.promote(revision)).await
    }
    async fn retire(&self, revision: &RevisionId) -> relay::Result<()> {
        self.measure("retire", self.inner.retire(revision)).await
    }
    async fn describe(&self, revision: &RevisionId) -> relay::Result<Option<relay::RunningRevision>> {
        self.measure("describe", self.inner.describe(revision)).await
    }
    async fn changed(&self) -> relay::Result<()> {
        self.measure("changed", self.inner.changed()).await
    }
}

/// Requests per call kind: (kind, calls, fewest, most, total).
fn summary(log: &[(&'static str, u64)]) -> Vec<(&'static str, usize, u64, u64, u64)> {
    let mut by: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (call, n) in log {
        by.entry(call).or_default().push(*n);
    }
    by.into_iter()
        .map(|(k, v)| {
            (
                k,
                v.len(),
                *v.iter().min().unwrap(),
                *v.iter().max().unwrap(),
                v.iter().sum(),
            )
        })
        .collect()
}

fn outcome_revision(o: &Outcome) -> &str {
    match o {
        Outcome::Promoted { revision } => revision,
        other => panic!("not promoted: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_the_service_and_back_on_promotion() {
    let client = client().await;
    let ns = namespace(&client).await;
    let _kubelet = Kubelet::start(&client, &ns);
    web_app(&client, &ns, "web", 2).await;
    let target = DeploymentTarget::builder(provider_client().await, &ns, "web")
        .name("web")
        .blue_green("web")
        .poll_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let original = selector(&client, &ns).await;
    let blue = target.observe().await.unwrap().stable.unwrap();
    let green = spec("v2");
    target.stage(&green, 2).await.unwrap();
    let preview = get(&client, &ns, "web-canary").await.unwrap();
    let labels = preview.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    assert!(
        !labels.contains_key("app"),
        "the Service must not select the preview: {labels:?}"
    );
    assert_eq!(target.observe().await.unwrap().traffic, TrafficSplit::all(&blue));

    target.route(&TrafficSplit::all(&green.id)).await.unwrap();
    assert_eq!(
        selector(&client, &ns).await,
        BTreeMap::from([("relay.dev/revision".into(), green.id.to_string())])
    );
    assert_eq!(target.observe().await.unwrap().traffic, TrafficSplit::all(&green.id));
    let e = target.retire(&green.id).await.unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e:?}");

    target.promote(&green.id).await.unwrap();
    assert_eq!(
        selector(&client, &ns).await,
        original,
        "the Service's own selector is back"
    );
    let stable = get(&client, &ns, "web").await.unwrap();
    assert_eq!((image(&stable), replicas(&stable)), (pinned("v2"), 2));
    let state = target.observe().await.unwrap();
    assert_eq!(state.stable.as_ref(), Some(&green.id));
    assert_eq!(state.traffic, TrafficSplit::all(&green.id));
    target.retire(&blue).await.unwrap();

    // The same through the engine, every request counted (BENCHMARKS.md).
    let calls = RequestCounter::default();
    let counted = DeploymentTarget::builder(counted_client(&calls).await, &ns, "web")
        .name("web")
        .blue_green("web")
        .poll_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let log = CallLog::default();
    let metered = Metered {
        inner: counted,
        calls,
        log: log.clone(),
    };
    let relay = engine(metered, artifacts(&["v3"])).build().unwrap();
    let v3 = Release::new(format!("{REPO}:v3").parse().unwrap()).replicas(2);
    let outcome = relay
        .start(RolloutSpec::new("web", v3, BlueGreenStrategy::new()))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(outcome.is_success(), "{outcome}");
    let log = log.lock().unwrap().clone();
    for (call, n, fewest, most, total) in summary(&log) {
        println!(
            "kubernetes blue/green target calls: {call:<8} x{n:<3} requests {fewest}..{most} each, {total} in all"
        );
    }
    println!(
        "kubernetes blue/green: {} requests",
        log.iter().map(|(_, n)| n).sum::<u64>()
    );
    assert_eq!(image(&get(&client, &ns, "web").await.unwrap()), pinned("v3"));
    assert_eq!(selector(&client, &ns).await, original);
    assert!(
        get(&client, &ns, "web-canary").await.is_none(),
        "promotion deletes the preview Deployment"
    );
}

#[tokio::test]
async fn a_secret_changed_since_the_plan_is_refused_before_anything_changes() {
    let client = client().await;
    let ns = namespace(&client).await;
    let _kubelet = Kubelet::start(&client, &ns);
    web_app(&client, &ns, "web", 1).await;
    let first = put_secret(&client, &ns, "db", &[("password", b"one")]).await;
    put_secret(&client, &ns, "db", &[("password", PLANTED.as_bytes())]).await;
    let target = DeploymentTarget::builder(provider_client().await, &ns, "web")
        .build()
        .await
        .unwrap();
    let mut s = spec("v2");
    let version = first.metadata.resource_version.unwrap();
    s.secrets.insert(
        "DB".into(),
        format!("k8s://db#password?version={version}").parse().unwrap(),
    );
    let generation = get(&client, &ns, "web").await.unwrap().metadata.generation;
    let e = target.stage(&s, 1).await.unwrap_err();
    assert!(
        matches!(&e, Error::Conflict { what } if what.contains("release.secrets.DB") && what.contains("plan again")),
        "{e:?}"
    );
    assert!(!format!("{e} {e:?}").contains(PLANTED));
    assert_eq!(get(&client, &ns, "web").await.unwrap().metadata.generation, generation);
    let e = DeploymentTarget::builder(provider_client().await, &ns, "web")
        .container("sidecar")
        .build()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("kubernetes.container"), "{e}");
    let e = DeploymentTarget::builder(provider_client().await, &ns, "absent")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
}

/// An HTTPRoute `web` sending `/` to the Service `web` and `/admin` to an
/// `admin` Service, through a parent Gateway `gateway`.
async fn http_route(client: &Client, ns: &str) -> serde_json::Value {
    use relay::providers::kubernetes::sdk::kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    );
    let route: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web"},
        "spec": {
            "parentRefs": [{"name": "gateway"}],
            "hostnames": ["shop.test"],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [{"name": "web", "port": 80}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}], "backendRefs": [{"name": "admin", "port": 8080}]},
            ],
        },
    }))
    .unwrap();
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource)
        .create(&PostParams::default(), &route)
        .await
        .unwrap();
    route_spec(client, ns).await
}

async fn route_spec(client: &Client, ns: &str) -> serde_json::Value {
    use relay::providers::kubernetes::sdk::kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    );
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource)
        .get("web")
        .await
        .unwrap()
        .data["spec"]
        .clone()
}

/// The weights of the `/` rule's Services `web` and `web-canary`.
async fn route_weights(client: &Client, ns: &str) -> (u64, u64) {
    let spec = route_spec(client, ns).await;
    let refs = spec["rules"][0]["backendRefs"].as_array().unwrap().clone();
    let of = |name: &str| {
        refs.iter()
            .find(|b| b["name"] == name)
            .map_or(0, |b| b["weight"].as_u64().unwrap_or(1))
    };
    (of("web"), of("web-canary"))
}

/// Routed mode through a Gateway API HTTPRoute: exact weights on the
/// route's backendRefs while the stable Deployment keeps all its replicas;
/// promotion and rollback put all traffic on the stable Service and delete
/// the candidate's Deployment; the route's other rule, its matches and
/// parents stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_through_an_http_route_gets_exact_weights_beside_a_full_stable() {
    use relay::providers::kubernetes::HttpRouteRouter;
    let client = client().await;
    crate::support::gateway_api(&client).await;
    let ns = namespace(&client).await;
    let kubelet = Kubelet::start(&client, &ns);
    web_app(&client, &ns, "web", 4).await;
    let before = http_route(&client, &ns).await;
    let router = Arc::new(HttpRouteRouter::new(provider_client().await, &ns, "web", "web"));
    let target = DeploymentTarget::builder(provider_client().await, &ns, "web")
        .name("web")
        .traffic_router("web", router)
        .poll_interval(Duration::from_millis(100))
        .promote_timeout(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    assert_eq!(target.capabilities().routing, relay::Routing::Weighted);
    testing::target_conformance(&target, &spec("v1"), &spec("v2")).await;
    assert_eq!(route_weights(&client, &ns).await, (100, 0));
    let canary_svc = Api::<Service>::namespaced(client.clone(), &ns)
        .get("web-canary")
        .await
        .unwrap();
    assert_eq!(
        canary_svc.spec.unwrap().selector.unwrap(),
        BTreeMap::from([("relay.dev/canary-of".to_owned(), "web".to_owned())]),
        "the canary Service selects the candidate's pods"
    );

    let relay = engine(target.clone(), artifacts(&["v3", "v4"])).build().unwrap();
    let release = |tag: &str| Release::new(format!("{REPO}:{tag}").parse().unwrap()).replicas(4);
    let canary = || CanaryStrategy::new().set_weight(25).pause_until_resumed();
    let handle = relay
        .start(RolloutSpec::new("web", release("v3"), canary()))
        .await
        .unwrap();
    crate::rollouts::until_step_starts(&handle, "pause").await;
    assert_eq!(route_weights(&client, &ns).await, (75, 25), "exact weights");
    assert_eq!(
        replicas(&get(&client, &ns, "web").await.unwrap()),
        4,
        "the stable keeps its replicas"
    );
    assert_eq!(
        replicas(&get(&client, &ns, "web-canary").await.unwrap()),
        1,
        "the canary its share"
    );
    let cand = crate::rollouts::candidate_of(&relay, &handle).await;
    assert_eq!(target.observe().await.unwrap().traffic.weight(&cand), 25);
    handle.resume("test").unwrap();
    assert!(handle.wait().await.unwrap().is_success());
    assert_eq!(route_weights(&client, &ns).await, (100, 0));
    assert!(get(&client, &ns, "web-canary").await.is_none());
    let stable = get(&client, &ns, "web").await.unwrap();
    assert_eq!((image(&stable), replicas(&stable)), (pinned("v3"), 4));

    // v4 crash-loops: rolled back, all traffic on the stable Service.
    kubelet.fail(&Digest::of(b"v4").to_string());
    let outcome = relay
        .start(RolloutSpec::new("web", release("v4"), canary()))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(matches!(&outcome, Outcome::RolledBack { .. }), "{outcome}");
    assert_eq!(route_weights(&client, &ns).await, (100, 0));
    assert!(get(&client, &ns, "web-canary").await.is_none());
    assert_eq!(image(&get(&client, &ns, "web").await.unwrap()), pinned("v3"));

    let after = route_spec(&client, &ns).await;
    assert_eq!(after["rules"][1], before["rules"][1], "the other rule is untouched");
    assert_eq!(
        (&after["parentRefs"], &after["hostnames"], &after["rules"][0]["matches"]),
        (
            &before["parentRefs"],
            &before["hostnames"],
            &before["rules"][0]["matches"]
        )
    );
}

/// A bake through the HTTPRoute: the candidate has every request and the
/// stable Deployment keeps all its replicas; when the candidate's pods
/// start crash-looping during the bake, the failing verdict sends the route
/// back to the stable Service at once (its pods never stopped). Prints the
/// time from the verdict to the route (BENCHMARKS.md, *Rollback during a
/// bake*).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regression_during_the_bake_sends_the_route_back_to_the_kept_deployment() {
    use relay::providers::kubernetes::HttpRouteRouter;
    let client = client().await;
    crate::support::gateway_api(&client).await;
    let ns = namespace(&client).await;
    let kubelet = Kubelet::start(&client, &ns);
    web_app(&client, &ns, "web", 4).await;
    http_route(&client, &ns).await;
    let router = Arc::new(HttpRouteRouter::new(provider_client().await, &ns, "web", "web"));
    let target = DeploymentTarget::builder(provider_client().await, &ns, "web")
        .name("web")
        .traffic_router("web", router)
        .poll_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let probe = Arc::new(PodReadinessProbe::new(provider_client().await, &ns, "app=web"));
    let relay = engine(target.clone(), artifacts(&["v2"])).probe(probe).build().unwrap();
    let release = Release::new(format!("{REPO}:v2").parse().unwrap()).replicas(4);
    let check = Check::new(
        "not-crashing",
        "crash_looping",
        ThresholdJudge::below(0.5).statistic(Statistic::Max),
    );
    let spec = crate::rollouts::baked_canary(release, check, Duration::from_secs(1), Duration::from_secs(120));
    let (handle, events, cand) = crate::rollouts::start_until_bake(&relay, spec).await;
    assert_eq!(
        route_weights(&client, &ns).await,
        (0, 100),
        "the candidate has every request"
    );
    assert_eq!(
        replicas(&get(&client, &ns, "web").await.unwrap()),
        4,
        "the stable is kept whole"
    );
    kubelet.fail(&cand.to_string());
    crate::rollouts::rolled_back_during_bake(handle, events, "Kubernetes HTTPRoute").await;
    assert_eq!(route_weights(&client, &ns).await, (100, 0));
    assert!(get(&client, &ns, "web-canary").await.is_none());
    let stable = get(&client, &ns, "web").await.unwrap();
    assert_eq!(
        (image(&stable), replicas(&stable)),
        ("registry.test/web:1".to_owned(), 4)
    );
}

/// Beside an autoscaler and a GitOps tool: relay never sets the replicas of
/// a Deployment a HorizontalPodAutoscaler scales (the replica-ratio canary,
/// which would shrink it, is refused naming the fix; blue/green promotes
/// and rolls back around the autoscaler's count; rolling applies the
/// template without replicas and waits for the autoscaler's count), and
/// with `force_ownership(false)` it never takes a field another field
/// manager applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autoscaled_or_gitops_managed_deployment_is_not_fought_over() {
    use relay::providers::kubernetes::sdk::k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler;
    use relay::providers::kubernetes::sdk::kube::api::PostParams;
    let client = client().await;
    let ns = namespace(&client).await;
    let kubelet = Kubelet::start(&client, &ns);
    web_app(&client, &ns, "web", 3).await;
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(serde_json::json!({
        "apiVersion": "autoscaling/v1",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web-hpa"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 2,
            "maxReplicas": 10,
        },
    }))
    .unwrap();
    Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &hpa)
        .await
        .unwrap();

    // The replica-ratio canary, which would shrink it, is refused.
    let e = DeploymentTarget::builder(provider_client().await, &ns, "web")
        .canary()
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidSpec { path, .. } if path == "kubernetes.mode")
            && e.to_string().contains("HorizontalPodAutoscaler web-hpa")
            && e.to_string().contains(".blue_green(..)"),
        "{e}"
    );

    // Blue/green: promoted with the autoscaler's count, not the release's.
    let target = DeploymentTarget::builder(provider_client().await, &ns, "web")
        .name("web")
        .blue_green("web")
        .poll_interval(Duration::from_millis(100))
        .promote_timeout(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let relay = engine(target, artifacts(&["v2", "v3"])).build().unwrap();
    let release = |tag: &str| Release::new(format!("{REPO}:{tag}").parse().unwrap()).replicas(5);
    let outcome = relay
        .start(RolloutSpec::new("web", release("v2"), BlueGreenStrategy::new()))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(outcome.is_success(), "{outcome}");
    let web = get(&client, &ns, "web").await.unwrap();
    assert_eq!(
        (image(&web), replicas(&web)),
        (pinned("v2"), 3),
        "the autoscaler's 3 replicas, not 5"
    );

    // The autoscaler scales down; a failing release is rolled back around it.
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    kubelet.fail(&Digest::of(b"v3").to_string());
    let outcome = relay
        .start(RolloutSpec::new("web", release("v3"), BlueGreenStrategy::new()))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(matches!(&outcome, Outcome::RolledBack { .. }), "{outcome}");
    let web = get(&client, &ns, "web").await.unwrap();
    assert_eq!((image(&web), replicas(&web)), (pinned("v2"), 2));

    // Rolling: the template is applied without replicas, and the new
    // revision is ready at the autoscaler's 2 pods, not the release's 5.
    let target = DeploymentTarget::builder(provider_client().await, &ns, "web")
        .name("web")
        .poll_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let relay = engine(target.clone(), artifacts(&["v4"])).build().unwrap();
    let outcome = relay
        .start(RolloutSpec::new("web", release("v4"), AllAtOnceStrategy))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(outcome.is_success(), "{outcome}");
    let web = get(&client, &ns, "web").await.unwrap();
    assert_eq!((image(&web), replicas(&web)), (pinned("v4"), 2));
    // Reported at the autoscaler's count (once the controller has seen the
    // last write to the Deployment: a generation bump after the rollout,
    // from the controllers, briefly makes its pods count as not ready).
    let deadline = Instant::now() + Duration::from_secs(30);
    let v4 = loop {
        let state = target.observe().await.unwrap();
        let v4 = state.revision(state.stable.as_ref().unwrap()).unwrap().clone();
        if v4.ready == 2 || Instant::now() > deadline {
            break v4;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(v4.autoscaled && v4.desired == 2 && v4.ready == 2, "{v4:?}");

    // GitOps: a Deployment a GitOps tool applies; relay without force
    // refuses to take its image and changes no pod.
    let applied = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{"name": "app", "image": "registry.test/api:1"}]},
            },
        },
    });
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .patch("api", &PatchParams::apply("argocd-controller"), &Patch::Apply(&applied))
        .await
        .unwrap();
    let target = DeploymentTarget::builder(provider_client().await, &ns, "api")
        .name("api")
        .force_ownership(false)
        .build()
        .await
        .unwrap();
    let relay = engine(target, artifacts(&["v2"])).build().unwrap();
    let outcome = relay
        .start(RolloutSpec::new(
            "api",
            Release::new(format!("{REPO}:v2").parse().unwrap()),
            AllAtOnceStrategy,
        ))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { cause } if cause.contains("argocd-controller") && cause.contains("force_ownership(false)")),
        "{outcome}"
    );
    assert_eq!(image(&get(&client, &ns, "api").await.unwrap()), "registry.test/api:1");
}

/// Runbooks of each mode's rollout — rolling (all at once), replica-ratio
/// canary, blue/green, and a canary through an HTTPRoute — against golden
/// files: the real namespace, Deployments, Service and route in every
/// command (the namespace, unique per test, put back to a generic one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbooks_name_the_real_deployments_service_and_route() {
    use relay::providers::kubernetes::HttpRouteRouter;
    let client = client().await;
    crate::support::gateway_api(&client).await;
    let ns = namespace(&client).await;
    let _kubelet = Kubelet::start(&client, &ns);
    web_app(&client, &ns, "web", 2).await;
    http_route(&client, &ns).await;
    let builder = || DeploymentTarget::builder(client.clone(), &ns, "web").name("web");
    let canary = || {
        CanaryStrategy::new()
            .set_weight(25)
            .pause(Duration::from_secs(600))
            .set_weight(50)
    };
    let router = Arc::new(HttpRouteRouter::new(client.clone(), &ns, "web", "web"));
    let cases: Vec<(&str, DeploymentTarget, Arc<dyn relay::Strategy>)> = vec![
        (
            "k8s-rolling-all-at-once",
            builder().build().await.unwrap(),
            Arc::new(AllAtOnceStrategy),
        ),
        (
            "k8s-canary",
            builder().canary().build().await.unwrap(),
            Arc::new(canary()),
        ),
        (
            "k8s-blue-green",
            builder().blue_green("web").build().await.unwrap(),
            Arc::new(BlueGreenStrategy::new()),
        ),
        (
            "k8s-http-route-canary",
            builder().traffic_router("web", router).build().await.unwrap(),
            Arc::new(canary()),
        ),
    ];
    for (name, target, strategy) in cases {
        let relay = engine(target, artifacts(&["v2"])).build().unwrap();
        let release = Release::new(format!("{REPO}:v2").parse().unwrap()).replicas(4);
        let spec = RolloutSpec::with_strategy("web", release, strategy).contact("on-call", "#web-oncall");
        let md = relay.runbook(&spec).await.unwrap().replace(&ns, "NAMESPACE");
        crate::golden::golden(&format!("runbooks/{name}.md"), &md);
    }
}

/// A Job as a rollout's hook, on the real API server with relay's
/// least-privilege Role. No Job controller runs here, so the test plays
/// it: once the Job exists it marks it complete, then (the next attempt's)
/// failed. The hook waits for the end, judges by the Job's condition,
/// names the Job as its logs, and for the same attempt again waits on the
/// same Job rather than create a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_hook_runs_a_job_to_its_end_once_per_attempt() {
    use relay::hook::Hook;
    use relay::providers::kubernetes::sdk::k8s_openapi::api::batch::v1::Job;
    use relay::providers::kubernetes::sdk::kube::api::ListParams;
    use relay::providers::kubernetes::{JobHook, HOOK_LABEL};
    let client = client().await;
    let ns = namespace(&client).await;
    let template: Job = serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "ignored"},
        "spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "smoke", "image": "registry.test/smoke:1", "args": ["--all"]}],
        }}},
    }))
    .unwrap();
    let hook = JobHook::new(provider_client().await, &ns, "smoke", template)
        .unwrap()
        .poll_interval(Duration::from_millis(50));
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    // The Job controller's part: end the next Job that appears.
    let end_next = |condition: &'static str, message: &'static str| {
        let jobs = jobs.clone();
        tokio::spawn(async move {
            loop {
                let listed = jobs
                    .list(&ListParams::default().labels(&format!("{HOOK_LABEL}=smoke")))
                    .await
                    .unwrap();
                let fresh = listed
                    .items
                    .into_iter()
                    .find(|j| j.status.as_ref().and_then(|s| s.conditions.as_ref()).is_none());
                if let Some(job) = fresh {
                    let name = job.metadata.name.clone().unwrap();
                    let status = serde_json::json!({"status": {"conditions": [
                        {"type": condition, "status": "True", "reason": "Test", "message": message}
                    ]}});
                    jobs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await
                        .unwrap();
                    return job;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let ctx = |attempt: u32| crate::rollouts::smoke_hook_context(&pinned("v2"), attempt);
    let ender = end_next("Complete", "12 checks passed");
    let run = tokio::time::timeout(Duration::from_secs(30), hook.run(&ctx(1)))
        .await
        .unwrap()
        .unwrap();
    let job = ender.await.unwrap();
    let name = job.metadata.name.clone().unwrap();
    assert!(run.passed, "{run:?}");
    assert_eq!(run.message, format!("Job {name} completed: 12 checks passed"));
    assert_eq!(run.logs, Some(format!("job/{ns}/{name}")));
    let spec = job.spec.unwrap();
    assert_eq!(
        (spec.backoff_limit, spec.ttl_seconds_after_finished),
        (Some(0), Some(3600))
    );
    let env = spec.template.spec.unwrap().containers[0].env.clone().unwrap();
    for (k, v) in [
        ("RELAY_HOOK_POINT", "pre_traffic"),
        ("RELAY_CANDIDATE", "rev-2"),
        ("RELAY_HOOK_KEY", "r1/2/smoke"),
        ("RELAY_ATTEMPT", "1"),
    ] {
        assert!(
            env.iter().any(|e| e.name == k && e.value.as_deref() == Some(v)),
            "{k} missing from {env:?}"
        );
    }
    // The same attempt again: the same Job, already complete.
    let again = hook.run(&ctx(1)).await.unwrap();
    assert!(again.passed && again.logs == run.logs, "{again:?}");
    // The next attempt: a Job of its own, which fails.
    let ender = end_next("Failed", "BackoffLimitExceeded");
    let failed = tokio::time::timeout(Duration::from_secs(30), hook.run(&ctx(2)))
        .await
        .unwrap()
        .unwrap();
    ender.await.unwrap();
    assert!(
        !failed.passed && failed.message.ends_with("failed: BackoffLimitExceeded"),
        "{failed:?}"
    );
    assert_ne!(failed.logs, run.logs);
    let all = jobs
        .list(&ListParams::default().labels(&format!("{HOOK_LABEL}=smoke")))
        .await
        .unwrap();
    assert_eq!(all.items.len(), 2, "one Job per attempt");
}
