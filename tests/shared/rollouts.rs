//! Following a rollout from a provider test: its candidate, and the moment
//! a step starts.

use relay::{EventKind, Relay, RevisionId, RolloutHandle};

/// The candidate revision of the rollout `handle` drives, from its record.
pub async fn candidate_of(relay: &Relay, handle: &RolloutHandle) -> RevisionId {
    relay
        .state()
        .get(handle.id())
        .await
        .unwrap()
        .expect("a started rollout has a record")
        .plan
        .candidate
        .id
        .clone()
}

/// Wait until the rollout starts a step of `kind` (`"pause"`, `"analyze"`…).
pub async fn until_step_starts(handle: &RolloutHandle, kind: &str) {
    let mut events = handle.events();
    while let Some(e) = events.next().await {
        if matches!(&e.kind, EventKind::StepStarted { kind: k, .. } if k == kind) {
            return;
        }
    }
    panic!("the rollout ended before a {kind} step");
}
