//! Secret redaction against any secret store: a promoted and a rolled-back
//! canary read a planted secret through the store while every log line at
//! TRACE is captured; the caller asserts the value is nowhere. Included
//! with `#[path]` by each test crate whose store holds a planted value.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay::providers::sim::{MemoryArtifactStore, RevisionBehavior, SimProbe, SimTarget};
use relay::strategies::CanaryStrategy;
use relay::{EngineConfig, Outcome, Relay, Release, RolloutSpec, SecretRef, SecretStore};

/// A log writer that keeps everything written to it.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Capture every event at TRACE on this thread until the guard drops.
    /// (Use a current-thread runtime, so the engine's tasks log here too.)
    pub fn trace() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Capture::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        // With a single dispatcher registered, tracing-core works out a
        // callsite's interest from the default of whichever thread reaches
        // it first: another test's thread, with no subscriber, would make
        // this capture miss that callsite for good. A second dispatcher,
        // kept for the life of the process, makes it ask every dispatcher.
        static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        let guard = tracing::subscriber::set_default(subscriber);
        (logs, guard)
    }

    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// Everything a user could see of two rollouts.
pub struct Observed {
    /// Log lines (TRACE).
    pub logs: String,
    /// Plans (Display, Debug, JSON), events, outcomes, audit entries and the
    /// engine's `Debug`.
    pub seen: String,
    /// The pinned reference each plan recorded (v1 then v2).
    pub pinned: Vec<SecretRef>,
}

/// Roll out v1 (promoted) and v2 (its replicas crash: rolled back) on a
/// simulated target, both reading `reference` through `store` registered for
/// `scheme`, with TRACE captured. Real time, short delays: the store may be a
/// real server.
pub async fn two_rollouts(scheme: &str, store: Arc<dyn SecretStore>, reference: &str) -> Observed {
    let (logs, _guard) = Capture::trace();
    let artifacts = MemoryArtifactStore::new();
    artifacts.push("shop/web", "v1", b"build 1", BTreeMap::new());
    let v2 = artifacts.push("shop/web", "v2", b"build 2", BTreeMap::new());
    let target = Arc::new(SimTarget::new("web").default_behavior(RevisionBehavior {
        readiness_delay: Duration::from_millis(20),
        ..Default::default()
    }));
    target.behavior(&v2.digest, RevisionBehavior::crashing());
    let audit = Arc::new(relay::MemoryAuditSink::default());
    let relay = Relay::builder()
        .target(target.clone())
        .probe(Arc::new(SimProbe::new(target.clone())))
        .artifacts(Arc::new(artifacts))
        .secrets(scheme, store)
        .audit(audit.clone())
        .config(EngineConfig {
            poll_interval: Duration::from_millis(10),
            ..Default::default()
        })
        .build()
        .unwrap();
    let release = |tag: &str| {
        Release::new(format!("shop/web:{tag}").parse().unwrap())
            .replicas(2)
            .secret("DB_PASSWORD", reference.parse().unwrap())
    };
    let mut seen = String::new();
    let mut pinned = Vec::new();
    for tag in ["v1", "v2"] {
        let spec = RolloutSpec::new("web", release(tag), CanaryStrategy::new().set_weight(50));
        let plan = relay.plan(&spec).await.unwrap();
        seen += &format!("{plan}\n{plan:?}\n{}", serde_json::to_string(&plan).unwrap());
        pinned.push(plan.candidate.secrets["DB_PASSWORD"].clone());
        let handle = relay.start(spec).await.unwrap();
        let mut events = handle.events();
        let outcome = handle.wait().await.unwrap();
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(50), events.next()).await {
            seen += &format!("{e:?}{}", serde_json::to_string(&e).unwrap());
        }
        seen += &format!("{outcome:?} {outcome}");
        if tag == "v2" {
            assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
        } else {
            assert!(outcome.is_success(), "{outcome}");
        }
    }
    for e in relay::AuditSink::entries(audit.as_ref()).await.unwrap() {
        seen += &serde_json::to_string(&e).unwrap();
    }
    seen += &format!("{relay:?}");
    let logs = logs.text();
    assert!(
        logs.contains("rolling back"),
        "the TRACE capture holds the rollout's logs: {} bytes, ends {:?}",
        logs.len(),
        &logs[logs.len().saturating_sub(1500)..]
    );
    // The reference is shown (pinned, perhaps under the store's full name
    // for the secret, which holds the name it was given).
    let path = reference.parse::<relay::SecretRef>().unwrap().path;
    assert!(seen.contains(&path), "the reference itself is visible");
    Observed { logs, seen, pinned }
}

/// Assert `planted` appears in none of `observed` nor in `extra` (errors,
/// `Debug` of stores...).
pub fn assert_nowhere(planted: &str, observed: &Observed, extra: &str) {
    assert!(!observed.logs.contains(planted), "the secret is in the logs");
    assert!(
        !observed.seen.contains(planted),
        "the secret is in events, audit, plans or Debug"
    );
    assert!(!extra.contains(planted), "the secret is in errors or Debug: {extra}");
}
