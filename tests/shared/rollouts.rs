//! Following a rollout from a provider test: its candidate, and the moment
//! a step starts.

use relay::{EventKind, Relay, RevisionId, RolloutHandle};

/// What a smoke-test hook before traffic is told at `attempt` of rollout
/// `r1` (step 2), whose candidate `rev-2` is `artifact`, beside `rev-1`.
pub fn smoke_hook_context(artifact: &str, attempt: u32) -> relay::hook::HookContext {
    relay::hook::HookContext {
        key: "r1/2/smoke".into(),
        rollout: "r1".into(),
        target: "web".into(),
        at: relay::HookPoint::PreTraffic,
        candidate: RevisionId::from("rev-2"),
        artifact: artifact.to_owned(),
        stable: Some(RevisionId::from("rev-1")),
        candidate_weight: 0,
        attempt,
    }
}

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

/// Start `spec` (a [`baked_canary`]) and wait until its bake starts: the
/// handle, its events as [`timed_events`] collects them, the candidate.
pub async fn start_until_bake(
    relay: &Relay,
    spec: relay::RolloutSpec,
) -> (
    RolloutHandle,
    tokio::task::JoinHandle<Vec<(tokio::time::Instant, relay::RolloutEvent)>>,
    RevisionId,
) {
    let handle = relay.start(spec).await.unwrap();
    let events = timed_events(&handle);
    let candidate = candidate_of(relay, &handle).await;
    until_step_starts(&handle, "bake").await;
    (handle, events, candidate)
}

/// Wait until a failure during the bake rolled the rollout back, and check
/// that traffic was back on the previous revision within 30 s of the
/// failing verdict; prints the time for BENCHMARKS.md (*Rollback during a
/// bake*), saying `where`.
pub async fn rolled_back_during_bake(
    handle: RolloutHandle,
    events: tokio::task::JoinHandle<Vec<(tokio::time::Instant, relay::RolloutEvent)>>,
    r#where: &str,
) {
    let outcome = handle.wait().await.unwrap();
    assert!(
        matches!(&outcome, relay::Outcome::RolledBack { cause } if cause.starts_with("during the bake")),
        "{outcome}"
    );
    let took = verdict_to_traffic(&events.await.unwrap()).expect("a failing verdict, then traffic back");
    println!("bake rollback ({where}): failing verdict -> 100% on the previous revision in {took:?}");
    assert!(took < std::time::Duration::from_secs(30), "{took:?}");
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
