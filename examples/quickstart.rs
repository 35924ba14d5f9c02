//! relay's main job, on the embedded simulated providers, in virtual time:
//!
//! 1. a first release goes out all at once;
//! 2. a healthy release goes out as a canary, judged by analysis, and is
//!    promoted;
//! 3. a bad release (12% errors) goes out the same way, fails its analysis
//!    against the stable baseline at 10% traffic and is rolled back
//!    automatically; every verdict prints the numbers behind it (sample
//!    sizes, medians or rates, p-value against the look's alpha, effect);
//! 4. the audit chain is verified.
//!
//! Exits non-zero if anything went otherwise.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use relay::providers::sim::{metrics, MemoryArtifactStore, MemorySecretStore, RevisionBehavior, SimProbe, SimTarget};
use relay::strategies::{
    AllAtOnceStrategy, CanaryStrategy, Direction, MannWhitneyJudge, ProportionJudge, Statistic, ThresholdJudge,
};
use relay::{
    AnalysisSpec, Check, EventKind, FileStateStore, JsonlAuditSink, Outcome, Relay, Release, RolloutSpec, Target,
};

/// Each analysis compares the candidate with the stable baseline serving in
/// the same minutes (errors: proportion test; latency: Mann-Whitney U), and
/// keeps an absolute guard on the candidate's p95 latency.
fn canary() -> CanaryStrategy {
    let analysis = AnalysisSpec::new(vec![
        Check::new(
            "errors vs baseline",
            metrics::ERROR_RATE,
            ProportionJudge::new().tolerance(0.5),
        ),
        Check::new(
            "latency vs baseline",
            metrics::LATENCY_MS,
            MannWhitneyJudge::new(Direction::LowerIsBetter).tolerance(0.2),
        ),
        Check::new(
            "latency p95",
            metrics::LATENCY_MS,
            ThresholdJudge::below(250.0).statistic(Statistic::P95).min_samples(30),
        ),
    ])
    .every(Duration::from_secs(60), 3);
    CanaryStrategy::new()
        .set_weight(10)
        .analyze(analysis.clone())
        .set_weight(50)
        .pause(Duration::from_secs(300))
        .analyze(analysis)
}

async fn deploy(relay: &Relay, spec: RolloutSpec) -> relay::Result<Outcome> {
    println!("\n{}", relay.plan(&spec).await?);
    let handle = relay.start(spec).await?;
    let mut events = handle.events();
    let printer = tokio::spawn(async move {
        let mut t0 = None;
        while let Some(e) = events.next().await {
            let t = (e.at_ms - *t0.get_or_insert(e.at_ms)) / 1000;
            let line = match e.kind {
                EventKind::StepStarted {
                    index,
                    kind,
                    description,
                } => format!("step {:>2} {kind:<8} {description}", index + 1),
                EventKind::TrafficShifted { candidate_weight } => {
                    format!("         traffic  candidate now at {candidate_weight}%")
                }
                EventKind::Verdict { verdict } => format!("         verdict  {verdict}"),
                EventKind::RollbackStarted { cause } => format!("ROLLBACK {cause}"),
                EventKind::Finished { outcome } => format!("finished: {outcome}"),
                _ => continue,
            };
            println!("  [+{:02}:{:02}] {line}", t / 60, t % 60);
        }
    });
    let outcome = handle.wait().await;
    let _ = printer.await;
    outcome
}

async fn run() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("relay-quickstart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state = Arc::new(FileStateStore::open(dir.join("state")).map_err(|e| e.to_string())?);
    let audit = Arc::new(JsonlAuditSink::open(dir.join("audit.jsonl")).map_err(|e| e.to_string())?);
    let audit: Arc<dyn relay::AuditSink> = audit;

    let target = Arc::new(SimTarget::new("checkout").seed(42).requests_per_second(200.0));
    let artifacts = Arc::new(MemoryArtifactStore::new());
    let mut provenance = BTreeMap::new();
    provenance.insert("provenance".to_string(), "ci-build".to_string());
    artifacts.push("shop/checkout", "v1", b"checkout build 1", provenance.clone());
    artifacts.push("shop/checkout", "v2", b"checkout build 2", provenance.clone());
    let bad = artifacts.push("shop/checkout", "v3", b"checkout build 3", provenance);
    target.behavior(&bad.digest, RevisionBehavior::failing(0.12));
    let secrets = Arc::new(MemorySecretStore::new());
    secrets.put("checkout/db#password", "s3cr3t-from-the-vault".to_string().into());

    let relay = Relay::builder()
        .target(target.clone())
        .artifacts(artifacts)
        .secrets("mem", secrets)
        .probe(Arc::new(SimProbe::new(target.clone())))
        .state(state)
        .audit(audit.clone())
        .build()
        .map_err(|e| e.to_string())?;

    let release = |tag: &str| -> Result<Release, String> {
        Ok(Release::new(
            format!("shop/checkout:{tag}")
                .parse()
                .map_err(|e: relay::Error| e.to_string())?,
        )
        .replicas(10)
        .config("LOG_LEVEL", "info")
        .secret(
            "DB_PASSWORD",
            "mem://checkout/db#password"
                .parse()
                .map_err(|e: relay::Error| e.to_string())?,
        ))
    };

    println!("== 1. first release (v1), all at once");
    let first = deploy(&relay, RolloutSpec::new("checkout", release("v1")?, AllAtOnceStrategy))
        .await
        .map_err(|e| e.to_string())?;
    println!("== 2. healthy release (v2), canary with analysis");
    let good = deploy(&relay, RolloutSpec::new("checkout", release("v2")?, canary()))
        .await
        .map_err(|e| e.to_string())?;
    println!("== 3. bad release (v3: 12% errors), same canary");
    let bad_outcome = deploy(&relay, RolloutSpec::new("checkout", release("v3")?, canary()))
        .await
        .map_err(|e| e.to_string())?;

    let state = target.observe().await.map_err(|e| e.to_string())?;
    let verified = relay
        .audit()
        .verify()
        .await
        .map_err(|e| format!("audit chain broken: {e}"))?;
    println!("\n== summary");
    println!("  v1: {first}");
    println!("  v2: {good}");
    println!("  v3: {bad_outcome}");
    println!(
        "  target now: stable {:?}, traffic {}",
        state.stable.as_ref().map(|s| s.to_string()),
        state.traffic
    );
    println!("  audit: {verified} entries, hash chain verified");

    let mut problems = Vec::new();
    if !matches!(first, Outcome::Promoted { .. }) {
        problems.push("v1 was not promoted".to_string());
    }
    let Outcome::Promoted { revision: v2 } = &good else {
        return Err(format!("v2 was not promoted: {good}"));
    };
    if !matches!(bad_outcome, Outcome::RolledBack { .. }) {
        problems.push(format!("v3 was not rolled back: {bad_outcome}"));
    }
    if state.stable.as_ref().map(|s| s.as_str()) != Some(v2.as_str()) || state.revisions.len() != 1 {
        problems.push(format!(
            "target should run only v2 ({v2}) as stable, runs {:?}",
            state.revisions
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn main() -> ExitCode {
    // The engine's own log on stderr, as RUST_LOG says (RUST_LOG=info shows
    // every target change, retry and verdict; unset, errors only).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Virtual time: the rollouts below wait and analyze for many minutes of
    // tokio time, which a paused clock skips through.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quickstart: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => {
            println!("\nquickstart: all as expected");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\nquickstart FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
