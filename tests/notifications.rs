//! Notices: what they say and when, that no notifier can hold a rollout
//! up, that a resumed rollout sends none twice, and (feature `http`) the
//! Slack and signed webhook notifiers against a local HTTP server.

#![allow(clippy::unwrap_used)]

mod common;
#[cfg(feature = "http")]
#[path = "shared/http_server.rs"]
mod http_server;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{canary, deploy_v1, release, until, World};
use relay::notify::{Delivery, MemoryNotifier, Notice, NoticeKind, Notifier};
use relay::strategies::CanaryStrategy;
use relay::{
    clock::TokioClock, Error, EventKind, FileStateStore, ManualApproval, Outcome, Relay, RolloutSpec, StateStore,
};

/// Gives delivery tasks their turn (the clock is paused: this is virtual).
async fn settle() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

fn kinds(notices: &[Notice]) -> Vec<&'static str> {
    notices.iter().map(|n| n.kind.name()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_canary_is_told_from_its_start_through_its_gate_to_promotion() {
    let w = World::new(11);
    let notes = MemoryNotifier::new();
    let relay = w
        .builder()
        .gate(Arc::new(ManualApproval::new("qa")))
        .notifier(Arc::new(notes.clone()))
        .build()
        .unwrap();
    deploy_v1(&relay).await;
    let spec = RolloutSpec::new("web", release("v2"), canary()).gate_before_promotion("qa");
    let handle = relay.start(spec).await.unwrap();
    let id = handle.id().to_owned();
    let control = handle.control();
    let mut events = handle.events();
    until(&mut events, |k| matches!(k, EventKind::GateWaiting { .. })).await;
    settle().await;
    let paused = notes
        .notices()
        .into_iter()
        .find(|n| n.rollout == id && n.kind.name() == "paused");
    let paused = paused.expect("the gate's wait is told before anyone approves");
    assert!(
        matches!(&paused.kind, NoticeKind::Paused { by, .. } if by == "gate \"qa\""),
        "{paused:?}"
    );
    assert!(paused.summary().contains("approve"), "{}", paused.summary());
    control.approve("qa", "alice", "looks good").unwrap();
    let outcome = handle.wait().await.unwrap();
    assert!(outcome.is_success(), "{outcome}");
    settle().await;

    let sent: Vec<Notice> = notes.notices().into_iter().filter(|n| n.rollout == id).collect();
    let record = relay.state().get(&id).await.unwrap().unwrap();
    let steps = record.plan.steps.len();
    let gate = record.plan.steps.iter().position(|s| s.kind() == "gate").unwrap();
    let mut expected = vec!["started"];
    for i in 0..steps {
        if i == gate {
            expected.push("paused");
        }
        expected.push("step");
    }
    expected.push("promoted");
    assert_eq!(kinds(&sent), expected);
    let keys: BTreeSet<&str> = sent.iter().map(|n| n.key.as_str()).collect();
    assert_eq!(keys.len(), sent.len(), "every key once: {keys:?}");
    assert!(keys.contains(format!("{id}/promoted").as_str()), "{keys:?}");
    let last = sent.last().unwrap();
    assert_eq!(last.target, "web");
    assert!(last.artifact.starts_with("shop/web@sha256:"), "{}", last.artifact);
    assert_eq!(
        record.notified.len(),
        sent.len(),
        "the record keeps every key it handed on"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_analysis_is_told_with_the_rollback_and_its_end() {
    let w = World::new(12);
    let notes = MemoryNotifier::new();
    let relay = w.builder().notifier(Arc::new(notes.clone())).build().unwrap();
    deploy_v1(&relay).await;
    let outcome = common::run(&relay, RolloutSpec::new("web", release("v3"), canary())).await;
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
    settle().await;
    let sent = notes.notices();
    let id = sent.last().unwrap().rollout.clone();
    let tail: Vec<&str> = notes.kinds(&id).into_iter().rev().take(3).collect();
    assert_eq!(tail, ["rolled_back", "rolling_back", "analysis_failed"]);
    let failed = sent.iter().find(|n| n.kind.name() == "analysis_failed").unwrap();
    assert!(failed.summary().contains("errors"), "{}", failed.summary());
}

/// Takes an hour to answer.
#[derive(Debug)]
struct Slow;

#[async_trait]
impl Notifier for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    async fn send(&self, _: &Notice) -> relay::Result<()> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    }
}

/// Never answers well: a retryable failure, counted.
#[derive(Debug, Default)]
struct Down(AtomicU32);

#[async_trait]
impl Notifier for Down {
    fn name(&self) -> &str {
        "down"
    }
    async fn send(&self, _: &Notice) -> relay::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(Error::provider("test", true, "503"))
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_or_failing_notifier_never_delays_a_rollout_and_gives_up_in_bounds() {
    // The same rollout, timed in virtual time, with no notifier and with a
    // slow one and a failing one.
    async fn timed(notifiers: Vec<(Arc<dyn Notifier>, Delivery)>) -> (Duration, usize) {
        let w = World::new(13);
        let mut builder = w.builder();
        for (n, d) in notifiers {
            builder = builder.notifier_with(n, d);
        }
        let relay = builder.build().unwrap();
        let started = tokio::time::Instant::now();
        let outcome = common::run(&relay, RolloutSpec::new("web", release("v2"), canary())).await;
        assert!(outcome.is_success(), "{outcome}");
        let record = relay.state().list_all().await.unwrap().pop().unwrap();
        (started.elapsed(), record.notified.len())
    }
    let (alone, _) = timed(Vec::new()).await;
    let down = Arc::new(Down::default());
    let bounded = Delivery {
        attempts: 3,
        timeout: Duration::from_secs(5),
        backoff: Duration::from_secs(1),
        queue: 2,
    };
    let (with, notices) = timed(vec![(Arc::new(Slow), Delivery::default()), (down.clone(), bounded)]).await;
    assert_eq!(with, alone, "notifiers took the rollout's time");
    // Let the failing notifier's queue run dry: each notice it took was
    // tried 3 times, no more (those its full queue dropped, not at all).
    tokio::time::sleep(Duration::from_secs(600)).await;
    let tries = down.0.load(Ordering::SeqCst) as usize;
    assert!(
        tries >= 3 && tries.is_multiple_of(3) && tries <= 3 * notices,
        "{tries} tries of {notices} notices"
    );
}

/// The state store refuses the engine mid-rollout: the engine stops
/// driving, the rollout stays running, and the notice says a human must
/// resume it.
#[tokio::test(start_paused = true)]
async fn an_engine_that_stops_on_an_error_says_the_rollout_is_unattended() {
    use relay::providers::{FaultKind, Faulty};
    let w = World::new(16);
    let notes = MemoryNotifier::new();
    let store = Arc::new(
        Faulty::new(relay::MemoryStateStore::new(), 1)
            .with_rate(FaultKind::PermissionDenied, 0.0)
            .only_operations(&["put"]),
    );
    let relay = w
        .builder()
        .state(store.clone())
        .notifier(Arc::new(notes.clone()))
        .build()
        .unwrap();
    let handle = relay
        .start(RolloutSpec::new("web", release("v2"), canary()))
        .await
        .unwrap();
    let id = handle.id().to_owned();
    let mut events = handle.events();
    until(&mut events, |k| matches!(k, EventKind::StepStarted { index: 2, .. })).await;
    store.fail_next(1);
    let err = handle.wait().await.unwrap_err();
    settle().await;
    let last = notes.notices().into_iter().rfind(|n| n.rollout == id).unwrap();
    match &last.kind {
        NoticeKind::Failed { error, resumable: true } => assert_eq!(error, &err.to_string()),
        other => panic!("{other:?}"),
    }
    assert!(
        last.summary().contains("STOPPED") && last.summary().contains("resume"),
        "{}",
        last.summary()
    );
}

#[tokio::test]
async fn a_delivery_that_cannot_work_is_refused_naming_the_field() {
    let w = World::new(14);
    for (delivery, field) in [
        (
            Delivery {
                attempts: 0,
                ..Delivery::default()
            },
            "delivery.attempts",
        ),
        (
            Delivery {
                timeout: Duration::ZERO,
                ..Delivery::default()
            },
            "delivery.timeout",
        ),
        (
            Delivery {
                queue: 0,
                ..Delivery::default()
            },
            "delivery.queue",
        ),
    ] {
        let err = w
            .builder()
            .notifier_with(Arc::new(MemoryNotifier::new()), delivery)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
}

/// An engine killed while a gate held its rollout; another resumes it.
/// Between them every notice is sent once: the second sends none the first
/// did.
#[tokio::test(start_paused = true)]
async fn a_resumed_rollout_sends_no_notice_twice() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(15);
    let state: Arc<dyn StateStore> = Arc::new(FileStateStore::open(dir.path()).unwrap());
    let audit: Arc<dyn relay::AuditSink> = Arc::new(relay::MemoryAuditSink::new());
    let engine = |name: &str, notes: &MemoryNotifier| {
        w.builder()
            .state(state.clone())
            .audit(audit.clone())
            .gate(Arc::new(ManualApproval::new("qa")))
            .clock(Arc::new(TokioClock::starting_at(1_000_000)))
            .holder(name)
            .notifier(Arc::new(notes.clone()))
            .build()
            .unwrap()
    };
    let (first, second) = (MemoryNotifier::new(), MemoryNotifier::new());
    // Both built now: their clocks start together.
    let (a, b): (Relay, Relay) = (engine("a", &first), engine("b", &second));
    deploy_v1(&a).await;
    let spec = RolloutSpec::new("web", release("v2"), CanaryStrategy::new().set_weight(25)).gate_before_promotion("qa");
    let handle = a.start(spec).await.unwrap();
    let id = handle.id().to_owned();
    let mut events = handle.events();
    until(&mut events, |k| matches!(k, EventKind::GateWaiting { .. })).await;
    settle().await;
    handle.halt();
    drop(a);

    tokio::time::sleep(Duration::from_secs(31)).await;
    let resumed = b.resume(&id).await.unwrap();
    resumed.control().approve("qa", "alice", "ok").unwrap();
    assert!(resumed.wait().await.unwrap().is_success());
    settle().await;

    let before = first.kinds(&id);
    assert_eq!(before.first(), Some(&"started"));
    assert_eq!(before.last(), Some(&"paused"));
    let after = second.kinds(&id);
    assert_eq!(after.last(), Some(&"promoted"));
    assert!(!after.contains(&"started") && !after.contains(&"paused"), "{after:?}");
    let mut keys: Vec<String> = first
        .notices()
        .into_iter()
        .chain(second.notices())
        .filter(|n| n.rollout == id)
        .map(|n| n.key)
        .collect();
    let all = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), all, "a notice sent twice: {keys:?}");
}

#[cfg(feature = "http")]
mod http {
    //! The HTTP notifiers against a server on 127.0.0.1 that records what
    //! it is sent, and answers 503 to the first request when told to.

    use relay::providers::http::{SlackNotifier, WebhookNotifier};
    use secrecy::SecretString;

    use super::*;
    use crate::http_server::Server;

    const KEY: &str = "notice-signing-key-5c1e";
    /// The path part of the URL: an incoming webhook's token.
    const TOKEN: &str = "T000/B000/xoxb-planted-webhook-token";

    /// Serve on 127.0.0.1: record each request; answer 503 to the first
    /// `fail_first` of them, 200 after. The URL, with its token path.
    async fn server(fail_first: u32) -> (String, Server) {
        let busy = (0..fail_first).map(|_| (503, "busy".to_owned())).collect();
        let server = Server::start(busy, (200, "ok".to_owned())).await;
        (format!("{}/services/{TOKEN}", server.url), server)
    }

    fn quick() -> Delivery {
        Delivery {
            attempts: 3,
            timeout: Duration::from_secs(2),
            backoff: Duration::from_millis(20),
            queue: 64,
        }
    }

    /// A world whose revisions are ready at once (these run in real time).
    fn fast_world(seed: u64) -> World {
        World::with_target(
            relay::providers::sim::SimTarget::new("web")
                .seed(seed)
                .default_behavior(relay::providers::sim::RevisionBehavior {
                    readiness_delay: Duration::ZERO,
                    ..relay::providers::sim::RevisionBehavior::healthy()
                }),
        )
    }

    #[tokio::test]
    async fn slack_gets_one_line_per_notice_and_a_503_is_tried_again() {
        let (url, seen) = server(1).await;
        let slack = SlackNotifier::new(SecretString::from(url))
            .unwrap()
            .only(&["started", "promoted", "rolled_back"])
            .unwrap();
        let w = fast_world(21);
        let relay = w.builder().notifier_with(Arc::new(slack), quick()).build().unwrap();
        let spec = RolloutSpec::new("web", release("v2"), CanaryStrategy::new().set_weight(50));
        let outcome = common::run(&relay, spec).await;
        assert!(outcome.is_success(), "{outcome}");
        // started (refused once with 503, then sent again), promoted.
        let requests = seen.until_seen(3).await;
        let texts: Vec<String> = requests
            .iter()
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(texts[0], texts[1], "the 503 was tried again with the same notice");
        assert!(
            texts[0].starts_with("web: rollout ") && texts[0].contains(" started: "),
            "{texts:?}"
        );
        assert!(texts[2].contains(" promoted rev-"), "{texts:?}");
        assert_eq!(
            requests[0].header("Idempotency-Key"),
            requests[1].header("Idempotency-Key")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(seen.requests().len(), 3, "only the kinds asked for");
    }

    #[tokio::test]
    async fn the_webhook_signs_each_notice_and_names_it_for_idempotency() {
        let (url, seen) = server(0).await;
        let hook = WebhookNotifier::new("ops", SecretString::from(url))
            .unwrap()
            .signing_key(SecretString::from(KEY));
        let w = fast_world(22);
        let relay = w.builder().notifier_with(Arc::new(hook), quick()).build().unwrap();
        let outcome = common::run(
            &relay,
            RolloutSpec::new("web", release("v2"), CanaryStrategy::new().set_weight(50)),
        )
        .await;
        assert!(outcome.is_success(), "{outcome}");
        let record = relay.state().list_all().await.unwrap().pop().unwrap();
        let n = record.notified.len();
        let requests = seen.until_seen(n).await;
        for r in &requests {
            let signature = r.header("X-Relay-Signature-256").unwrap();
            assert!(relay::gate::verify_webhook_signature(
                KEY.as_bytes(),
                &r.body,
                signature
            ));
            assert!(!relay::gate::verify_webhook_signature(
                b"another key",
                &r.body,
                signature
            ));
            let notice: Notice = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(r.header("Idempotency-Key"), Some(notice.key.as_str()));
            assert_eq!(r.header("X-Relay-Notice"), Some(notice.kind.name()));
            let text = String::from_utf8_lossy(&r.body);
            assert!(!text.contains(common::PLANTED_SECRET), "{text}");
        }
        let notices: Vec<Notice> = requests
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect();
        assert_eq!(kinds(&notices).first(), Some(&"started"));
        assert_eq!(kinds(&notices).last(), Some(&"promoted"));
    }

    /// Neither the webhook's URL (its token) nor the signing key shows in
    /// `Debug`, in a construction error, in a delivery error, or in the
    /// logs of a failed delivery.
    #[tokio::test]
    async fn the_webhooks_address_and_key_never_show() {
        let url = format!("http://127.0.0.1:1/services/{TOKEN}");
        let slack = SlackNotifier::new(SecretString::from(url.clone())).unwrap();
        let hook = WebhookNotifier::new("ops", SecretString::from(url))
            .unwrap()
            .signing_key(SecretString::from(KEY));
        let notice = Notice {
            key: "r/promoted".into(),
            rollout: "r".into(),
            target: "web".into(),
            candidate: "rev-1".into(),
            artifact: "shop/web@sha256:00".into(),
            at_ms: 0,
            kind: NoticeKind::Promoted {
                revision: "rev-1".into(),
            },
        };
        let slack_err = slack.send(&notice).await.unwrap_err();
        let hook_err = hook.send(&notice).await.unwrap_err();
        assert!(slack_err.is_retryable() && hook_err.is_retryable(), "{slack_err}");
        let bad = SlackNotifier::new(SecretString::from(format!("ftp://h/{TOKEN}"))).unwrap_err();
        let shown = format!("{slack:?} {hook:?} {slack_err} {slack_err:?} {hook_err} {hook_err:?} {bad}");
        assert!(shown.contains("127.0.0.1"), "{shown}");
        for secret in [TOKEN, "xoxb", KEY] {
            assert!(!shown.contains(secret), "{secret} shown in: {shown}");
        }
        let unknown = WebhookNotifier::new("ops", SecretString::from("http://h/x".to_owned()))
            .unwrap()
            .only(&["promotd"])
            .unwrap_err();
        assert!(
            unknown.to_string().contains("webhook.only") && unknown.to_string().contains("promoted"),
            "{unknown}"
        );
    }
}
