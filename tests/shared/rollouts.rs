//! Following a rollout from a provider test: its candidate, and the moment
//! a step starts.

use relay::{EventKind, Relay, RevisionId, RolloutHandle};

/// A canary to 50%, then a bake of `bake` that measures `check` every
/// `every`: a regression during it rolls back to the kept previous revision.
pub fn baked_canary(
    release: relay::Release,
    check: relay::Check,
    every: std::time::Duration,
    bake: std::time::Duration,
) -> relay::RolloutSpec {
    let watch = relay::AnalysisSpec::new(vec![check]).every(every, 1);
    relay::RolloutSpec::new("web", release, relay::strategies::CanaryStrategy::new().set_weight(50))
        .bake(relay::Bake::new(bake).analysis(watch))
}

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

/// Every event of the rollout `handle` drives, each with the moment this
/// test saw it (virtual time under a paused clock), until it ends.
pub fn timed_events(
    handle: &RolloutHandle,
) -> tokio::task::JoinHandle<Vec<(tokio::time::Instant, relay::RolloutEvent)>> {
    let mut events = handle.events();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(e) = events.next().await {
            seen.push((tokio::time::Instant::now(), e));
        }
        seen
    })
}

/// From the first failing verdict to the rollback's traffic step (all
/// traffic back on the previous revision): `None` when either is missing.
pub fn verdict_to_traffic(events: &[(tokio::time::Instant, relay::RolloutEvent)]) -> Option<std::time::Duration> {
    let failed = events.iter().position(|(_, e)| {
        matches!(&e.kind, EventKind::Verdict { verdict }
            if !verdict.dry_run && verdict.judgement.outcome == relay::VerdictOutcome::Fail)
    })?;
    let back = events[failed..]
        .iter()
        .find(|(_, e)| matches!(e.kind, EventKind::RollbackStarted { .. }))
        .and_then(|_| {
            events[failed..]
                .iter()
                .find(|(_, e)| matches!(e.kind, EventKind::TrafficShifted { candidate_weight: 0 }))
        })?;
    Some(back.0 - events[failed].0)
}
