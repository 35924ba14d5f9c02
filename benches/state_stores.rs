//! Rollouts per second and database statements per rollout step, with the
//! state and audit on PostgreSQL and, beside them, on files.
//!
//! ```text
//! RELAY_TEST_POSTGRES_URL=postgres://… cargo bench --features postgres --bench state_stores
//! ```
//!
//! Each engine process drives `RELAY_BENCH_ROLLOUTS` (200) rollouts on 20
//! simulated targets that are ready at once, up to 20 at a time; each
//! rollout is a canary of six steps (stage, 25%, scale, 50%, promote,
//! retire) with no pauses, so what is left is relay and its stores. It runs
//! the store with one process and with three, and prints a table row per
//! run: rollouts per second, statements per step to the state store and to
//! the audit sink (each statement one round trip), and relay's own CPU time
//! per rollout (the rest of the wall time is the database's and the
//! waiting). Without `RELAY_TEST_POSTGRES_URL` only the file store runs.

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::providers::postgres::{Postgres, PostgresAuditSink, PostgresStateStore};
use relay::providers::sim::{MemoryArtifactStore, RevisionBehavior, SimProbe, SimTarget};
use relay::providers::RequestCounter;
use relay::strategies::CanaryStrategy;
use relay::{AuditSink, FileStateStore, JsonlAuditSink, Relay, Release, RolloutSpec, StateStore};
use secrecy::SecretString;

/// Set in an engine process's environment: `<store>|<where>|<process>`.
const ENGINE: &str = "RELAY_BENCH_ENGINE";
const TARGETS: usize = 20;

fn rollouts() -> usize {
    std::env::var("RELAY_BENCH_ROLLOUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// This process's CPU time (user and system), from /proc.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap().split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(ENGINE) {
        Ok(spec) => rt.block_on(engine(&spec)),
        Err(_) => rt.block_on(report()),
    }
}

/// One engine process: drive its rollouts, print its counts as a line.
async fn engine(spec: &str) {
    let mut parts = spec.split('|');
    let (store, place, process) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap().parse::<usize>().unwrap(),
    );
    let (state_count, audit_count) = (RequestCounter::default(), RequestCounter::default());
    let (state, audit): (Arc<dyn StateStore>, Arc<dyn AuditSink>) = match store {
        "postgres" => {
            let pg = Postgres::connect(&SecretString::from(std::env::var("RELAY_TEST_POSTGRES_URL").unwrap()))
                .unwrap()
                .schema(place)
                .unwrap();
            (
                Arc::new(PostgresStateStore::new(
                    pg.clone().count_statements(state_count.clone()),
                )),
                Arc::new(PostgresAuditSink::new(
                    pg.count_statements(audit_count.clone()),
                    "bench",
                )),
            )
        }
        _ => (
            Arc::new(FileStateStore::open(format!("{place}/state")).unwrap()),
            Arc::new(JsonlAuditSink::open(format!("{place}/audit.jsonl")).unwrap()),
        ),
    };
    let artifacts = Arc::new(MemoryArtifactStore::new());
    let n = rollouts();
    for k in 0..n.div_ceil(TARGETS) {
        artifacts.push(
            "shop/web",
            &format!("v{k}"),
            format!("build {k}").as_bytes(),
            BTreeMap::new(),
        );
    }
    let mut builder = Relay::builder()
        .artifacts(artifacts)
        .state(state.clone())
        .audit(audit)
        .holder(format!("bench-{process}"));
    let ready = RevisionBehavior {
        readiness_delay: Duration::ZERO,
        ..RevisionBehavior::healthy()
    };
    for t in 0..TARGETS {
        let sim = Arc::new(SimTarget::new(format!("p{process}-t{t}")).default_behavior(ready.clone()));
        builder = builder
            .target(sim.clone())
            .probe_for(format!("p{process}-t{t}"), Arc::new(SimProbe::new(sim)));
    }
    let relay = Arc::new(builder.build().unwrap());
    let (cpu_before, started) = (cpu(), Instant::now());
    let mut lanes = tokio::task::JoinSet::new();
    for t in 0..TARGETS {
        let relay = relay.clone();
        lanes.spawn(async move {
            for k in 0..n.div_ceil(TARGETS) {
                if k * TARGETS + t >= n {
                    break;
                }
                let release = Release::new(format!("shop/web:v{k}").parse().unwrap()).replicas(2);
                let strategy = CanaryStrategy::new().set_weight(25).set_weight(50);
                let spec = RolloutSpec::new(format!("p{process}-t{t}"), release, strategy);
                let outcome = relay.start(spec).await.unwrap().wait().await.unwrap();
                assert!(outcome.is_success(), "{outcome}");
            }
        });
    }
    while let Some(lane) = lanes.join_next().await {
        lane.unwrap();
    }
    let (wall, cpu_used) = (started.elapsed(), cpu() - cpu_before);
    let steps: usize = state
        .list_all()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.target.starts_with(&format!("p{process}-")))
        .map(|r| r.plan.steps.len())
        .sum();
    if std::env::var_os("RELAY_BENCH_VERBOSE").is_some() {
        eprintln!("state: {:?}\naudit: {:?}", state_count.counts(), audit_count.counts());
    }
    println!(
        "{} {} {} {} {} {}",
        n,
        steps,
        state_count.total(),
        audit_count.total(),
        wall.as_millis(),
        cpu_used.as_millis()
    );
}

/// Run each store with one engine process and with three, print a row each.
async fn report() {
    println!("| store | processes | rollouts | rollouts/s | steps | state statements per step | audit statements per step | relay CPU per rollout |");
    println!("|---|---|---|---|---|---|---|---|");
    let url = std::env::var("RELAY_TEST_POSTGRES_URL").ok();
    for processes in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        run("file", &dir.path().display().to_string(), processes);
        if let Some(url) = &url {
            let schema = format!("bench_{}_{processes}", std::process::id());
            let pg = Postgres::connect(&SecretString::from(url.clone()))
                .unwrap()
                .schema(&schema)
                .unwrap();
            pg.migrate().await.unwrap();
            run("postgres", &schema, processes);
        }
    }
}

fn run(store: &str, place: &str, processes: usize) {
    let started = Instant::now();
    let children: Vec<_> = (0..processes)
        .map(|p| {
            Command::new(std::env::current_exe().unwrap())
                .env(ENGINE, format!("{store}|{place}|{p}"))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut sums = [0u128; 6];
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "an engine process failed");
        let line = String::from_utf8(out.stdout).unwrap();
        for (sum, field) in sums.iter_mut().zip(line.split_whitespace()) {
            *sum += field.parse::<u128>().unwrap();
        }
    }
    let wall = started.elapsed();
    let [rollouts, steps, state, audit, _, cpu_ms] = sums;
    let per_step = |n: u128| {
        if store == "postgres" {
            format!("{:.2}", n as f64 / steps as f64)
        } else {
            "—".to_owned()
        }
    };
    println!(
        "| {store} | {processes} | {rollouts} | {:.0} | {steps} | {} | {} | {:.1} ms |",
        rollouts as f64 / wall.as_secs_f64(),
        per_step(state),
        per_step(audit),
        cpu_ms as f64 / rollouts as f64,
    );
}
