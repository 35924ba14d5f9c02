//! Release notes from history: what changed between two releases of a
//! target, as Markdown (a golden file) and JSON, secrets by reference only.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shared/golden.rs"]
mod golden;

use std::sync::Arc;

use common::{canary, release, World, PLANTED_SECRET};
use relay::strategies::AllAtOnceStrategy;
use relay::{Error, ManualApproval, Relay, RolloutSpec};

/// v1; v2 with its configuration changed, its secret re-pinned to a new
/// version and a gate approved; v3 (failing 20% of requests) rolled back.
async fn three_releases() -> (World, Relay) {
    let w = World::new(31);
    let relay = w.builder().gate(Arc::new(ManualApproval::new("qa"))).build().unwrap();
    let v1 = RolloutSpec::new("web", release("v1"), AllAtOnceStrategy)
        .id("r1")
        .started_by("ci");
    assert!(common::run(&relay, v1).await.is_success());

    w.secrets
        .put("web/db#password", "rotated-secret-value-b81d".to_owned().into());
    let v2 = release("v2").config("MODE", "fast").config("FEATURE_CART", "on");
    let spec = RolloutSpec::new("web", v2, canary())
        .id("r2")
        .gate_before_promotion("qa");
    let handle = relay.start(spec).await.unwrap();
    let control = handle.control();
    let mut events = handle.events();
    common::until(&mut events, |k| matches!(k, relay::EventKind::GateWaiting { .. })).await;
    control.approve("qa", "alice", "error budget fine").unwrap();
    assert!(handle.wait().await.unwrap().is_success());

    let v3 = RolloutSpec::new(
        "web",
        release("v3").config("MODE", "fast").config("FEATURE_CART", "on"),
        canary(),
    )
    .id("r3");
    let outcome = common::run(&relay, v3).await;
    assert!(matches!(outcome, relay::Outcome::RolledBack { .. }), "{outcome}");
    (w, relay)
}

#[tokio::test(start_paused = true)]
async fn the_notes_say_what_changed_and_what_happened_between_two_releases() {
    let (_w, relay) = three_releases().await;
    let diff = relay.diff("web", "r1", "r2").await.unwrap();
    assert!(diff.artifact_changed);
    let config: Vec<(&str, Option<&str>, Option<&str>)> = diff
        .config
        .iter()
        .map(|c| (c.name.as_str(), c.from.as_deref(), c.to.as_deref()))
        .collect();
    assert_eq!(
        config,
        [("FEATURE_CART", None, Some("on")), ("MODE", Some("test"), Some("fast"))]
    );
    assert_eq!(diff.secrets.len(), 1, "{:?}", diff.secrets);
    let secret = &diff.secrets[0];
    assert_eq!(secret.name, "DB_PASSWORD");
    assert!(secret.from.as_deref().unwrap().contains("version=1"), "{secret:?}");
    assert!(secret.to.as_deref().unwrap().contains("version=2"), "{secret:?}");
    assert_eq!(diff.decisions.len(), 1);
    assert_eq!(
        (diff.decisions[0].by.as_str(), diff.decisions[0].approved),
        ("alice", true)
    );
    assert!(diff.checks.iter().all(|c| c.outcome == "pass"), "{:?}", diff.checks);
    assert_eq!(diff.checks.len(), 1);

    // From v2's revision to the rolled-back v3: the attempt and its failed check.
    let v2 = diff.to.revision.clone();
    let failed = relay.diff("web", &v2, "r3").await.unwrap();
    assert_eq!(failed.from.rollout, "r2");
    assert_eq!(failed.to.outcome, "rolled_back");
    assert!(failed.config.is_empty() && failed.secrets.is_empty(), "{failed:?}");
    assert_eq!(failed.checks[0].outcome, "fail", "{:?}", failed.checks);

    // Markdown, against the golden file; JSON with the same facts; neither
    // holds a secret's value.
    let md = diff.to_markdown();
    golden::golden("release-notes/r1-r2.md", &md);
    let json = serde_json::to_string(&diff).unwrap();
    let back: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(back["to"]["rollout"], "r2");
    assert_eq!(back["config"][1]["to"], "fast");
    for text in [&md, &json] {
        assert!(
            !text.contains(PLANTED_SECRET) && !text.contains("rotated-secret-value"),
            "{text}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_release_the_history_lacks_or_out_of_order_is_named() {
    let (_w, relay) = three_releases().await;
    match relay.diff("web", "r9", "r2").await {
        Err(Error::InvalidSpec { path, reason }) => {
            assert_eq!(path, "from");
            assert!(reason.contains("r9") && reason.contains("3 rollouts"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    match relay.diff("web", "r2", "r1").await {
        Err(Error::InvalidSpec { path, reason }) => {
            assert_eq!(path, "to");
            assert!(reason.contains("earlier release first"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}
