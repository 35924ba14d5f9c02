//! Environments and promotion in virtual time: the digest that succeeded in
//! dev goes to staging and prod; one that failed staging is refused by prod.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::error_analysis;
use relay::providers::sim::{MemoryArtifactStore, RevisionBehavior, SimProbe, SimTarget};
use relay::strategies::{AllAtOnce, CanaryStrategy};
use relay::{
    ArtifactRef, AuditSink, Digest, Environment, Error, MemoryAuditSink, MemoryStateStore, Outcome, Pipeline, Relay,
    StateStore,
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
        Environment::new("dev", "web-dev", AllAtOnce),
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

async fn finished(h: relay::RolloutHandle) -> (String, Outcome) {
    let id = h.id().to_string();
    (id, h.wait().await.unwrap())
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
        assert_eq!(started.unwrap().event.detail["promoted_from"], staging_id.as_str());
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
        Environment::new("dev", "a", AllAtOnce),
        Environment::new("dev", "b", AllAtOnce),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("pipeline.environments[1].name"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn drift_shows_each_change_made_behind_relays_back() {
    use relay::{Drift, Target};
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
