//! Environments and promotion in virtual time: the digest that succeeded in
//! dev goes to staging and prod; one that failed staging is refused by prod.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::error_analysis;
use relay::providers::sim::{MemoryArtifactStore, RevisionBehavior, SimProbe, SimTarget};
use relay::strategies::{AllAtOnceStrategy, CanaryStrategy};
use relay::{
    ArtifactRef, AuditSink, Digest, Environment, Error, MemoryAuditSink, MemoryStateStore, Outcome, Pipeline, Relay,
    Revert, StateStore, WaveOrder, WaveStatus,
};

struct Envs {
    /// One engine per environment (each with its target and probe), all on
    /// one state store and audit log.
    engines: BTreeMap<&'static str, Relay>,
    state: Arc<MemoryStateStore>,
    audit: Arc<MemoryAuditSink>,
    pipeline: Pipeline,
}

fn envs() -> Envs {
    let artifacts = Arc::new(MemoryArtifactStore::new());
    for tag in ["v1", "v2", "v3", "v4"] {
        artifacts.push("shop/web", tag, tag.as_bytes(), BTreeMap::new());
    }
    let failing = Digest::of(b"v3");
    let state = Arc::new(MemoryStateStore::new());
    let audit = Arc::new(MemoryAuditSink::new());
    let mut engines = BTreeMap::new();
    for (i, env) in ["dev", "staging", "prod"].into_iter().enumerate() {
        let target = Arc::new(SimTarget::new(format!("web-{env}")).seed(40 + i as u64));
        target.behavior(&failing, RevisionBehavior::failing(0.2));
        let relay = Relay::builder()
            .target(target.clone())
            .probe(Arc::new(SimProbe::new(target)))
            .artifacts(artifacts.clone())
            .state(state.clone())
            .audit(audit.clone())
            .build()
            .unwrap();
        engines.insert(env, relay);
    }
    let checked = || CanaryStrategy::new().set_weight(50).analyze(error_analysis());
    let pipeline = Pipeline::new(vec![
        Environment::new("dev", "web-dev", AllAtOnceStrategy),
        Environment::new("staging", "web-staging", checked()).replicas(2),
        Environment::new("prod", "web-prod", checked())
            .replicas(4)
            .config("LOG", "warn"),
    ])
    .unwrap()
    .config("LOG", "info");
    Envs {
        engines,
        state,
        audit,
        pipeline,
    }
}

/// The rollout and outcome of a one-target environment's deployment.
async fn finished(h: relay::WaveHandle) -> (String, Outcome) {
    let report = h.wait().await.unwrap();
    assert_eq!(report.rollouts.len(), 1, "{report:?}");
    let row = report.rollouts.into_iter().next().unwrap();
    (row.rollout.unwrap(), row.outcome.unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_digest_goes_from_dev_to_prod_only_through_staging() {
    let e = envs();
    let (p, dev, staging, prod) = (
        &e.pipeline,
        &e.engines["dev"],
        &e.engines["staging"],
        &e.engines["prod"],
    );
    let tag = |t: &str| t.parse::<ArtifactRef>().unwrap();
    for v in ["shop/web:v1", "shop/web:v2"] {
        let digest = Digest::of(v.trim_start_matches("shop/web:").as_bytes());
        let (dev_id, outcome) = finished(p.deploy(dev, tag(v)).await.unwrap()).await;
        assert!(outcome.is_success(), "{outcome}");
        let (staging_id, outcome) = finished(p.promote(staging, &digest, "staging").await.unwrap()).await;
        assert!(outcome.is_success(), "{outcome}");
        let (prod_id, outcome) = finished(p.promote(prod, &digest, "prod").await.unwrap()).await;
        assert!(outcome.is_success(), "{outcome}");
        // Each promotion names the rollout it promotes, in its record and
        // in the audit log.
        let record = |id: &str| {
            let state = e.state.clone();
            let id = id.to_owned();
            async move { state.get(&id).await.unwrap().unwrap() }
        };
        assert_eq!(
            record(&staging_id).await.promoted_from.as_deref(),
            Some(dev_id.as_str())
        );
        let prod_record = record(&prod_id).await;
        assert_eq!(prod_record.promoted_from.as_deref(), Some(staging_id.as_str()));
        assert_eq!(prod_record.plan.candidate.artifact.digest, digest, "the same build");
        assert_eq!(prod_record.plan.candidate.config["LOG"], "warn", "prod's overlay");
        assert_eq!(
            record(&staging_id).await.plan.candidate.config["LOG"],
            "info",
            "the base"
        );
        let started = e
            .audit
            .entries()
            .await
            .unwrap()
            .into_iter()
            .find(|a| a.event.rollout == prod_id && a.event.action == "rollout.started");
        assert_eq!(
            started.unwrap().event.detail.to_value()["promoted_from"],
            staging_id.as_str()
        );
    }

    // v3 passes dev (no analysis there) but fails staging's canary.
    let v3 = Digest::of(b"v3");
    assert!(finished(p.deploy(dev, tag("shop/web:v3")).await.unwrap())
        .await
        .1
        .is_success());
    let (_, outcome) = finished(p.promote(staging, &v3, "staging").await.unwrap()).await;
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
    match p.promote(prod, &v3, "prod").await {
        Err(Error::InvalidSpec { path, reason }) => {
            assert_eq!(path, "promotion.digest");
            assert!(
                reason.contains("did not succeed in staging") && reason.contains("RolledBack"),
                "{reason}"
            );
            assert!(
                reason.contains(&Digest::of(b"v2").to_string()),
                "says what staging runs: {reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    // v4 went to dev only: it cannot skip staging.
    let v4 = Digest::of(b"v4");
    assert!(finished(p.deploy(dev, tag("shop/web:v4")).await.unwrap())
        .await
        .1
        .is_success());
    assert!(matches!(
        p.promote(prod, &v4, "prod").await,
        Err(Error::InvalidSpec { .. })
    ));
    let e2 = p.promote(dev, &v4, "dev").await.unwrap_err();
    assert!(e2.to_string().contains("promotion.to"), "{e2}");
    let e3 = p.promote(dev, &v4, "qa").await.unwrap_err();
    assert!(e3.to_string().contains("pipeline.environment"), "{e3}");
}

#[test]
fn a_pipeline_needs_distinct_named_environments() {
    assert!(Pipeline::new(vec![]).is_err());
    let e = Pipeline::new(vec![
        Environment::new("dev", "a", AllAtOnceStrategy),
        Environment::new("dev", "b", AllAtOnceStrategy),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("pipeline.environments[1].name"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn drift_shows_each_change_made_behind_relays_back() {
    use relay::{drift::Drift, Target};
    let (w, relay) = common::World::with_v1(50).await;
    let report = relay.drift("web").await.unwrap();
    assert!(report.in_sync() && report.described, "{report:?}");
    let stable = w.target.observe().await.unwrap().stable.unwrap();

    // An operator hot-patches the image, a variable and a secret, and
    // scales up, without relay.
    assert!(w.target.edit_behind_relays_back(&stable, |r| {
        r.image = "shop/web:hotfix".into();
        r.config.insert("MODE".into(), "debug".into());
        r.secrets.remove("DB_PASSWORD");
    }));
    w.target.scale(&stable, 7).await.unwrap();
    let report = relay.drift("web").await.unwrap();
    let kinds: Vec<String> = report.differences.iter().map(ToString::to_string).collect();
    assert_eq!(report.differences.len(), 4, "{kinds:#?}");
    assert!(report
        .differences
        .iter()
        .any(|d| matches!(d, Drift::Image { running, .. } if running == "shop/web:hotfix")));
    assert!(report.differences.iter().any(
        |d| matches!(d, Drift::Config { key, running, .. } if key == "MODE" && running.as_deref() == Some("debug"))
    ));
    assert!(report
        .differences
        .iter()
        .any(|d| matches!(d, Drift::Secret { name, running: None, .. } if name == "DB_PASSWORD")));
    assert!(report
        .differences
        .iter()
        .any(|d| matches!(d, Drift::Replicas { applied: 4, running: 7 })));
    assert!(
        !format!("{report:?}").contains(common::PLANTED_SECRET),
        "values are never compared or shown"
    );
}

/// Two regions of one environment, each its own sim target with its own
/// probe; `v3` fails only in the second region.
fn regions(order: WaveOrder) -> (Relay, Pipeline, Arc<MemoryAuditSink>, Arc<SimTarget>, Arc<SimTarget>) {
    let artifacts = Arc::new(MemoryArtifactStore::new());
    for tag in ["v1", "v2", "v3"] {
        artifacts.push("shop/web", tag, tag.as_bytes(), BTreeMap::new());
    }
    let eu = Arc::new(SimTarget::new("web-eu").seed(7));
    let us = Arc::new(SimTarget::new("web-us").seed(8));
    us.behavior(&Digest::of(b"v3"), RevisionBehavior::failing(0.2));
    let audit = Arc::new(MemoryAuditSink::new());
    let relay = Relay::builder()
        .target(eu.clone())
        .target(us.clone())
        .probe_for("web-eu", Arc::new(SimProbe::new(eu.clone())))
        .probe_for("web-us", Arc::new(SimProbe::new(us.clone())))
        .artifacts(artifacts)
        .audit(audit.clone())
        .build()
        .unwrap();
    let canary = CanaryStrategy::new().set_weight(50).analyze(error_analysis());
    let pipeline = Pipeline::new(vec![Environment::new("prod", "web-eu", canary)
        .also_target("web-us")
        .order(order)
        .replicas(2)])
    .unwrap();
    (relay, pipeline, audit, eu, us)
}

/// Deploy `artifact` to the pipeline's first environment and wait for the
/// wave's end.
async fn deployed(p: &Pipeline, relay: &Relay, artifact: &str) -> relay::WaveReport {
    p.deploy(relay, artifact.parse().unwrap())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap()
}

async fn stable_of(t: &SimTarget) -> relay::RevisionId {
    relay::Target::observe(t).await.unwrap().stable.unwrap()
}

async fn actions(audit: &MemoryAuditSink) -> Vec<(String, String)> {
    audit
        .entries()
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.event.rollout, a.event.action))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_sequential_wave_reverts_the_first_region_when_the_second_fails() {
    let (relay, p, audit, eu, us) = regions(WaveOrder::Sequential);
    let report = deployed(&p, &relay, "shop/web:v1").await;
    assert!(report.is_success(), "{report:?}");
    let v1_eu = stable_of(&eu).await;
    let v1_us = stable_of(&us).await;

    let report = deployed(&p, &relay, "shop/web:v3").await;
    let WaveStatus::Failed { target, cause } = &report.status else {
        panic!("{report:?}")
    };
    assert_eq!(target, "web-us");
    assert!(cause.contains("rolled back"), "{cause}");
    // The first region had been promoted: the wave put v1 back there.
    assert!(
        matches!(report.rollouts[0].outcome, Some(Outcome::Promoted { .. })),
        "{report:?}"
    );
    match &report.rollouts[0].revert {
        Some(Revert::Reverted { revision, .. }) => assert_eq!(revision, &v1_eu),
        other => panic!("{other:?}"),
    }
    assert!(matches!(report.rollouts[1].outcome, Some(Outcome::RolledBack { .. })));
    assert_eq!(report.rollouts[1].revert, None, "the failed region rolled itself back");
    assert_eq!(stable_of(&eu).await, v1_eu);
    assert_eq!(stable_of(&us).await, v1_us);
    // No candidate is left running anywhere.
    for t in [&eu, &us] {
        let state = relay::Target::observe(t.as_ref()).await.unwrap();
        assert!(
            state
                .revisions
                .iter()
                .all(|r| r.id == state.stable.clone().unwrap() || r.desired == 0),
            "{state:?}"
        );
    }
    let log = actions(&audit).await;
    let wave = |a: &str| log.iter().any(|(r, x)| r == &report.id && x == a);
    assert!(wave("wave.started") && wave("wave.failed") && wave("wave.reverted") && wave("wave.finished"));
    relay::audit::verify_chain(&audit.entries().await.unwrap(), None).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_parallel_wave_promotes_nowhere_until_every_region_passed_and_then_everywhere() {
    let (relay, p, audit, eu, us) = regions(WaveOrder::Parallel);
    assert!(deployed(&p, &relay, "shop/web:v1").await.is_success());
    let v1 = stable_of(&eu).await;

    // v2 is good in both regions: both hold at the wave gate, then promote.
    let report = deployed(&p, &relay, "shop/web:v2").await;
    assert!(report.is_success(), "{report:?}");
    assert_ne!(stable_of(&eu).await, v1);
    assert_eq!(stable_of(&eu).await, stable_of(&us).await);
    let log = actions(&audit).await;
    let released = log
        .iter()
        .position(|(r, a)| r == &report.id && a == "wave.released")
        .expect("released");
    for row in &report.rollouts {
        let id = row.rollout.clone().unwrap();
        let held = log
            .iter()
            .position(|(r, a)| r == &id && a == "gate.waiting")
            .expect("each region waited at the wave gate");
        let finished = log
            .iter()
            .position(|(r, a)| r == &id && a == "rollout.finished")
            .unwrap();
        assert!(held < released && released < finished, "{log:?}");
    }

    // v3 fails in us: eu, still before promotion, is aborted and rolls back.
    let v2 = stable_of(&eu).await;
    let report = deployed(&p, &relay, "shop/web:v3").await;
    assert!(
        matches!(&report.status, WaveStatus::Failed { target, .. } if target == "web-us"),
        "{report:?}"
    );
    for row in &report.rollouts {
        assert!(matches!(row.outcome, Some(Outcome::RolledBack { .. })), "{row:?}");
        assert_eq!(row.revert, None, "nothing was promoted, so nothing is reverted");
    }
    match &report.rollouts[0].outcome {
        Some(Outcome::RolledBack { cause }) => {
            assert!(cause.contains("web-us"), "names the region that failed: {cause}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stable_of(&eu).await, v2);
    assert_eq!(stable_of(&us).await, v2);
}

#[tokio::test(start_paused = true)]
async fn a_bad_wave_changes_nothing_and_an_aborted_one_rolls_back_and_starts_no_further_region() {
    let (relay, p, _audit, eu, us) = regions(WaveOrder::Sequential);
    let tag = |t: &str| t.parse::<ArtifactRef>().unwrap();
    // A tag the store does not have: planning fails before any region moves.
    let e = p.deploy(&relay, tag("shop/web:v9")).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert!(relay::Target::observe(eu.as_ref()).await.unwrap().stable.is_none());
    assert!(relay::Target::observe(us.as_ref()).await.unwrap().stable.is_none());
    let twice = relay::Wave::new(vec![p.wave("prod", tag("shop/web:v1")).unwrap().specs()[0].clone(); 2]);
    let e = relay.start_wave(twice).await.unwrap_err();
    assert!(e.to_string().contains("wave.targets[1]"), "{e}");

    assert!(deployed(&p, &relay, "shop/web:v1").await.is_success());
    let v1 = stable_of(&eu).await;
    // Abort v2 while the first region is in its canary.
    let wave = p.deploy(&relay, tag("shop/web:v2")).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    wave.abort("alice", "wrong build").unwrap();
    let report = wave.wait().await.unwrap();
    assert_eq!(
        report.status,
        WaveStatus::Aborted {
            by: "alice".into(),
            reason: "wrong build".into()
        }
    );
    assert!(
        matches!(report.rollouts[0].outcome, Some(Outcome::RolledBack { .. })),
        "{report:?}"
    );
    assert_eq!(report.rollouts[1].rollout, None, "the second region never started");
    assert_eq!(stable_of(&eu).await, v1);
}
