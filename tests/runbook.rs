//! Runbooks on the simulated target, which gives no commands: the
//! structure every runbook has (the providers' commands are checked
//! against golden files on the real API server and the emulator:
//! `tests/kube_api/deployments.rs`, `tests/aws_moto/ecs.rs`).

#![allow(clippy::unwrap_used)]

mod common;

use common::{canary, deploy_v1, release, World};
use relay::RolloutSpec;

#[tokio::test(start_paused = true)]
async fn a_runbook_has_a_section_per_step_the_rollback_by_hand_and_whom_to_call() {
    let w = World::new(41);
    let relay = w.relay();
    let first = relay
        .runbook(&RolloutSpec::new("web", release("v1"), canary()))
        .await
        .unwrap();
    assert!(
        first.contains("- Stable: none; this is the target's first release."),
        "{first}"
    );
    assert!(first.contains("The spec names no one"), "{first}");
    deploy_v1(&relay).await;

    let spec = RolloutSpec::new("web", release("v2"), canary())
        .contact("on-call", "#web-oncall")
        .contact("database", "dba@shop.test");
    let plan = relay.plan(&spec).await.unwrap();
    let md = relay.runbook(&spec).await.unwrap();
    let steps = md.lines().filter(|l| l.starts_with("### ")).count();
    assert_eq!(steps, plan.steps.len(), "{md}");
    for (i, step) in plan.steps.iter().enumerate() {
        assert!(
            md.contains(&format!("### {}. {step}\n", i + 1)),
            "step {i} missing:\n{md}"
        );
    }
    let stable = plan.stable.as_ref().unwrap().to_string();
    assert!(md.contains(&format!("- Stable: `{stable}`, ")), "{md}");
    assert!(md.contains("- on-call: #web-oncall\n- database: dba@shop.test"), "{md}");
    // Every mutation says how to check it and undo it; every wait that
    // there is nothing to undo.
    let mutations = plan.steps.iter().filter(|s| s.is_mutation()).count();
    assert_eq!(md.matches("**Check:**").count(), mutations, "{md}");
    assert_eq!(
        md.matches("**Undo:** nothing to undo").count(),
        plan.steps.len() - mutations,
        "{md}"
    );
    let rollback = md
        .split("## Roll the release back by hand")
        .nth(1)
        .expect("a rollback section");
    assert!(
        rollback.contains(&format!("Set the stable `{stable}` to 4 replicas"))
            && rollback.contains("Send 0% of requests to the candidate")
            && rollback.contains(&format!("Remove `{}`", plan.candidate.id)),
        "{rollback}"
    );
    // The simulated target gives no commands, and says so.
    assert!(md.contains("(target `web` gives no command for this"), "{md}");
    assert!(!md.contains(common::PLANTED_SECRET), "{md}");
}
