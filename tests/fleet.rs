//! A fleet of engines in real OS processes sharing one PostgreSQL database
//! (`RELAY_TEST_POSTGRES_URL`, started by `scripts/test.sh`), one of them
//! killed with SIGKILL every few seconds and started again.
//!
//! A test binary of its own (no libtest harness): run with no worker
//! environment it is the parent. It migrates a fresh schema, starts
//! `RELAY_FLEET_WORKERS` (3) copies of itself as workers, kills a random
//! one every 1.5-3 s (a seeded choice) and starts it again, until every
//! rollout is finished, then stops the workers and checks:
//!
//! 1. all `RELAY_FLEET_TARGETS` × `RELAY_FLEET_ROLLOUTS` (50 × 4) rollouts
//!    exist and are finished, each with its `rollout.finished` entry;
//! 2. no target ever had two live holders: every grant in `lease_grants`
//!    replaced a lease that was free or expired;
//! 3. the audit chain verifies, and every record's anchor is in it;
//! 4. every target change a worker made was audited once, by that worker:
//!    per worker process and target, the changes its targets saw (logged
//!    by the worker as they returned) are the `target.*` entries it wrote,
//!    in order, but for the last change of a killed worker (killed between
//!    the change and its entry; the engine that resumed re-applied and
//!    audited it).
//!
//! It prints what it found: rollouts, outcomes, kills, takeovers and the
//! time from a kill to the takeover of the killed worker's targets.
//!
//! The workers run in real time, not virtual: leases compare engines'
//! clocks across processes. Their targets are simulated, inside each
//! process, and become ready at once; a worker that resumes another's
//! rollout drives its own simulated copy of the target.

#![allow(clippy::unwrap_used)]

#[path = "shared/serial_moto.rs"]
mod serial_moto;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relay::audit::{check_anchors, AuditEntry};
use relay::providers::aws::{DynamoDbAuditSink, DynamoDbStateStore};
use relay::providers::postgres::{Postgres, PostgresAuditSink, PostgresStateStore};
use relay::providers::sim::{MemoryArtifactStore, RevisionBehavior, SimProbe, SimTarget};
use relay::providers::{Interceptor, Wrapped};
use relay::state::LeaseGrant;
use relay::strategies::CanaryStrategy;
use relay::{AuditSink, Error, Relay, Release, RolloutSpec, StateStore};
use secrecy::SecretString;

/// Set in a worker's environment: `<store>|<targets>|<rollouts per
/// target>|<name>|<log dir>`, the store being `postgres:<schema>` or
/// `dynamodb:<table>`.
const WORKER: &str = "RELAY_FLEET_WORKER";

fn count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn url() -> String {
    std::env::var("RELAY_TEST_POSTGRES_URL").expect(
        "RELAY_TEST_POSTGRES_URL is not set: run the suite with scripts/test.sh, which starts a PostgreSQL server",
    )
}

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn target_name(t: usize) -> String {
    format!("svc-{t:02}")
}

fn rollout_id(t: usize, k: usize) -> String {
    format!("fleet-{t:02}-{k}")
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(WORKER) {
        Ok(spec) => rt.block_on(work(&spec)),
        Err(_) => {
            let pid = std::process::id();
            let (targets, rollouts) = (count("RELAY_FLEET_TARGETS", 50), count("RELAY_FLEET_ROLLOUTS", 4));
            rt.block_on(check(&format!("postgres:fleet_{pid}"), targets, rollouts));
            // The same, smaller, on DynamoDB: moto, serving one request at
            // a time (see `SerialMoto`), so slower than PostgreSQL.
            let moto = serial_moto::SerialMoto::start();
            std::env::set_var("RELAY_TEST_MOTO_ENDPOINT", &moto.endpoint);
            let (targets, rollouts) = (
                count("RELAY_FLEET_DDB_TARGETS", 10),
                count("RELAY_FLEET_DDB_ROLLOUTS", 3),
            );
            rt.block_on(check(&format!("dynamodb:relay-fleet-{pid}"), targets, rollouts));
            drop(moto);
        }
    }
}

fn postgres(schema: &str) -> Postgres {
    Postgres::connect(&SecretString::from(url()))
        .unwrap()
        .schema(schema)
        .unwrap()
}

/// Where the fleet keeps its state: a PostgreSQL schema or a DynamoDB table
/// (on moto, `RELAY_TEST_MOTO_ENDPOINT`).
#[derive(Clone)]
enum Shared {
    Postgres(Box<PostgresStateStore>, Postgres),
    DynamoDb(DynamoDbStateStore),
}

impl Shared {
    async fn open(spec: &str) -> Self {
        match spec.split_once(':').unwrap() {
            ("postgres", schema) => {
                let pg = postgres(schema);
                let store = PostgresStateStore::new(pg.clone()).command_poll(Duration::from_millis(500));
                Shared::Postgres(Box::new(store), pg)
            }
            (_, table) => {
                use relay::providers::aws::sdk::config;
                let endpoint = std::env::var("RELAY_TEST_MOTO_ENDPOINT").expect(
                    "RELAY_TEST_MOTO_ENDPOINT is not set: run the suite with scripts/test.sh, which starts moto",
                );
                let credentials = relay::providers::aws::sdk::dynamodb::config::Credentials::new(
                    "testing", "testing", None, None, "fleet",
                );
                let config = config::defaults(config::BehaviorVersion::latest())
                    .endpoint_url(endpoint)
                    .region(config::Region::new("us-east-1"))
                    .credentials_provider(credentials)
                    .load()
                    .await;
                Shared::DynamoDb(DynamoDbStateStore::new(&config, table).command_poll(Duration::from_millis(500)))
            }
        }
    }

    fn state(&self) -> Arc<dyn StateStore> {
        match self {
            Shared::Postgres(store, _) => Arc::new(PostgresStateStore::clone(store)),
            Shared::DynamoDb(store) => Arc::new(store.clone()),
        }
    }

    fn audit(&self) -> Arc<dyn AuditSink> {
        match self {
            Shared::Postgres(_, pg) => Arc::new(PostgresAuditSink::new(pg.clone(), "fleet")),
            Shared::DynamoDb(store) => Arc::new(DynamoDbAuditSink::new(store, "fleet")),
        }
    }

    async fn lease_grants(&self, target: &str) -> Vec<LeaseGrant> {
        match self {
            Shared::Postgres(store, _) => store.lease_grants(target).await.unwrap(),
            Shared::DynamoDb(store) => store.lease_grants(target).await.unwrap(),
        }
    }
}

/// Logs each change a worker's target made, as the call returns, to the
/// worker's own file (`<target> <operation>` per line): written before the
/// engine audits it, so a kill between the two shows as a last line with
/// no entry.
#[derive(Debug)]
struct ChangeLog {
    target: String,
    file: Arc<Mutex<std::fs::File>>,
}

#[async_trait::async_trait]
impl Interceptor for ChangeLog {
    async fn before(&self, _op: &'static str) -> relay::Result<()> {
        Ok(())
    }

    fn after(&self, op: &'static str, outcome: Result<(), &Error>) {
        if outcome.is_ok() && matches!(op, "stage" | "scale" | "route" | "promote" | "retire") {
            let mut f = self.file.lock().unwrap();
            writeln!(f, "{} target.{op}", self.target).unwrap();
        }
    }
}

/// A worker: start the next rollout of any target that has none running,
/// resume rollouts whose engine is gone, until every rollout is finished.
async fn work(spec: &str) {
    // RELAY_FLEET_LOG=warn (a tracing filter) shows what the workers log.
    if let Ok(filter) = std::env::var("RELAY_FLEET_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let mut parts = spec.split('|');
    let mut next = || parts.next().unwrap();
    let (shared, targets, rollouts, name, logs) = (
        next(),
        next().parse::<usize>().unwrap(),
        next().parse::<usize>().unwrap(),
        next(),
        PathBuf::from(next()),
    );
    let shared = Shared::open(shared).await;
    let file = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{name}.log")))
            .unwrap(),
    ));
    let artifacts = Arc::new(MemoryArtifactStore::new());
    for k in 0..rollouts {
        artifacts.push(
            "shop/web",
            &format!("v{k}"),
            format!("build {k}").as_bytes(),
            BTreeMap::new(),
        );
    }
    let config = relay::EngineConfig {
        lease_ttl: Duration::from_secs(3),
        poll_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let mut builder = Relay::builder()
        .artifacts(artifacts)
        .state(shared.state())
        .audit(shared.audit())
        .config(config)
        .holder(name);
    let fast = RevisionBehavior {
        readiness_delay: Duration::ZERO,
        ..RevisionBehavior::healthy()
    };
    for t in 0..targets {
        let sim = Arc::new(SimTarget::new(target_name(t)).default_behavior(fast.clone()));
        let log = ChangeLog {
            target: target_name(t),
            file: file.clone(),
        };
        builder = builder
            .target(Arc::new(Wrapped::with(log, sim.clone())))
            .probe_for(target_name(t), Arc::new(SimProbe::new(sim)));
    }
    let relay = builder.build().unwrap();
    let store = shared.state();
    let mut order: Vec<usize> = (0..targets).collect();
    let mut seed = name
        .bytes()
        .fold(0x9e37_79b9_7f4a_7c15u64, |h, b| (h ^ u64::from(b)).wrapping_mul(31));
    let mut running = tokio::task::JoinSet::new();
    let parent = std::os::unix::process::parent_id();
    loop {
        // Orphaned (the parent was killed): stop, rather than run on.
        if std::os::unix::process::parent_id() != parent {
            return;
        }
        // Rollouts whose engine is gone (its lease lapsed): resume them.
        if let Ok((handles, _locked)) = relay.recover().await {
            for h in handles {
                running.spawn(async move { h.wait().await.map(|_| ()) });
            }
        }
        // The next rollout of each target, in an order of this worker's own.
        for i in (1..order.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        let Ok(active) = store.list_active().await else {
            continue;
        };
        let busy: BTreeSet<&str> = active.iter().map(|r| r.target.as_str()).collect();
        for &t in &order {
            if running.len() >= 8 || busy.contains(target_name(t).as_str()) {
                continue;
            }
            let Ok(history) = store.list_target(&target_name(t)).await else {
                continue;
            };
            let k = history.len();
            if k >= rollouts {
                continue;
            }
            let release = Release::new(format!("shop/web:v{k}").parse().unwrap()).replicas(2);
            let strategy = CanaryStrategy::new()
                .set_weight(25)
                .pause(Duration::from_secs(1))
                .set_weight(50)
                .pause(Duration::from_secs(1));
            let spec = RolloutSpec::new(target_name(t), release, strategy).id(rollout_id(t, k));
            // Another worker may have started it, or hold the target.
            if let Ok(h) = relay.start(spec).await {
                running.spawn(async move { h.wait().await.map(|_| ()) });
            }
        }
        while let Some(done) = running.try_join_next() {
            let _ = done;
        }
        match store.list_all().await {
            Ok(all) if all.len() == targets * rollouts && all.iter().all(|r| r.status.is_terminal()) => return,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Worker {
    index: usize,
    generation: usize,
    child: Child,
}

/// A worker is killed when the parent lets go of it, however the parent
/// ends (a failed check unwinds through here too).
impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Worker {
    fn name(index: usize, generation: usize) -> String {
        format!("w{index}-g{generation}")
    }

    fn start(shared: &str, logs: &Path, index: usize, generation: usize) -> Self {
        let child = Command::new(std::env::current_exe().unwrap())
            .env(
                WORKER,
                format!("{shared}|{}|{}", Self::name(index, generation), logs.display()),
            )
            .spawn()
            .unwrap();
        Worker {
            index,
            generation,
            child,
        }
    }
}

/// The parent: run the fleet with kills, then check what it left.
async fn check(spec: &str, targets: usize, rollouts: usize) {
    let workers = count("RELAY_FLEET_WORKERS", 3);
    let shared = Shared::open(spec).await;
    match &shared {
        Shared::Postgres(_, pg) => assert_eq!(pg.migrate().await.unwrap(), 2),
        Shared::DynamoDb(store) => store.create_table().await.unwrap(),
    }
    let store = shared.state();
    let run = format!("{spec}|{targets}|{rollouts}");
    let spec = run.as_str();
    let logs = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut fleet: Vec<Worker> = (0..workers).map(|i| Worker::start(spec, logs.path(), i, 0)).collect();
    let mut kills: Vec<(String, i64)> = Vec::new();
    let mut seed = 0x5eed_f1ee_u64;
    let mut next_kill = Instant::now() + Duration::from_millis(1500);
    let deadline = Instant::now() + Duration::from_secs(count("RELAY_FLEET_SECONDS", 600) as u64);
    loop {
        let all = store.list_all().await.unwrap();
        if all.len() == targets * rollouts && all.iter().all(|r| r.status.is_terminal()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet did not finish in time: {} of {} rollouts finished",
            all.iter().filter(|r| r.status.is_terminal()).count(),
            targets * rollouts
        );
        if Instant::now() >= next_kill {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let victim = (seed % workers as u64) as usize;
            let w = &mut fleet[victim];
            w.child.kill().unwrap(); // SIGKILL
            w.child.wait().unwrap();
            kills.push((Worker::name(w.index, w.generation), now_ms()));
            let (index, generation) = (w.index, w.generation + 1);
            *w = Worker::start(spec, logs.path(), index, generation); // the old one dropped: reaped
            next_kill = Instant::now() + Duration::from_millis(1500 + seed % 1500);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    drop(fleet);

    // 1. Every rollout finished.
    let records = store.list_all().await.unwrap();
    assert_eq!(records.len(), targets * rollouts);
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &records {
        *outcomes.entry(r.status.outcome().unwrap().name()).or_default() += 1;
    }
    let sink = shared.audit();
    let entries: Vec<AuditEntry> = sink.entries().await.unwrap();
    let finished: BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.event.action == "rollout.finished")
        .map(|e| e.event.rollout.as_str())
        .collect();
    let unaudited: Vec<&str> = records
        .iter()
        .map(|r| r.id.as_str())
        .filter(|id| !finished.contains(id))
        .collect();
    assert!(
        unaudited.is_empty(),
        "finished without a rollout.finished entry: {unaudited:?}"
    );

    // 2. No two live holders, from the database's lease history.
    let mut grants = Vec::new();
    for t in 0..targets {
        grants.extend(shared.lease_grants(&target_name(t)).await);
    }
    let overlaps: Vec<_> = grants.iter().filter(|g| g.overlaps()).collect();
    assert!(
        overlaps.is_empty(),
        "a lease was granted while another holder's was live: {overlaps:?}"
    );
    // Takeovers: grants that replaced a killed worker's lapsed lease.
    let killed: BTreeMap<&str, i64> = kills.iter().map(|(n, at)| (n.as_str(), *at)).collect();
    let mut takeover_ms: Vec<i64> = grants
        .iter()
        .filter_map(|g| {
            let (previous, _) = g.previous.as_ref()?;
            let worker = previous.split('#').next()?;
            Some(g.granted_ms - killed.get(worker)?)
        })
        .collect();
    takeover_ms.sort_unstable();

    // 3. The chain and the records' anchors.
    let verified = sink.verify().await.unwrap();
    let anchors = check_anchors(&entries, &records).unwrap();

    // 4. Every change audited once, by the worker that made it.
    let mut audited: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let target_of: BTreeMap<&str, &str> = records.iter().map(|r| (r.id.as_str(), r.target.as_str())).collect();
    for e in entries.iter().filter(|e| e.event.action.starts_with("target.")) {
        let target = target_of[e.event.rollout.as_str()].to_owned();
        audited
            .entry((e.event.actor.clone(), target))
            .or_default()
            .push(e.event.action.clone());
    }
    let mut changed: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for file in std::fs::read_dir(logs.path()).unwrap() {
        let path = file.unwrap().path();
        let worker = path.file_stem().unwrap().to_string_lossy().into_owned();
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let (target, op) = line.split_once(' ').unwrap();
            changed
                .entry((worker.clone(), target.to_owned()))
                .or_default()
                .push(op.to_owned());
        }
    }
    let (mut changes, mut unaudited_last) = (0, 0);
    let keys: BTreeSet<&(String, String)> = audited.keys().chain(changed.keys()).collect();
    for key in keys {
        let made = changed.get(key).map_or(&[][..], Vec::as_slice);
        let entries = audited.get(key).map_or(&[][..], Vec::as_slice);
        changes += made.len();
        let ok = made == entries
            || (killed.contains_key(key.0.as_str())
                && made.len() == entries.len() + 1
                && made[..entries.len()] == *entries);
        assert!(
            ok,
            "worker {} on {}: changes {made:?} but entries {entries:?}",
            key.0, key.1
        );
        if made.len() > entries.len() {
            unaudited_last += 1;
        }
    }

    let median = takeover_ms.get(takeover_ms.len() / 2).copied().unwrap_or(0);
    let p90 = takeover_ms.get(takeover_ms.len() * 9 / 10).copied().unwrap_or(0);
    let max = takeover_ms.last().copied().unwrap_or(0);
    println!(
        "fleet: {workers} workers, {} rollouts on {targets} targets in {:.1} s; outcomes {outcomes:?}; \
         {} kills (SIGKILL); {} takeovers of a killed worker's lease, kill to takeover median {median} ms, \
         p90 {p90} ms, max {max} ms; {} lease grants, 0 overlapping; {changes} target changes, \
         {unaudited_last} unaudited (a killed worker's last, re-applied by its successor); \
         audit chain of {verified} entries verified, {anchors} anchors; violations 0",
        records.len(),
        elapsed.as_secs_f64(),
        kills.len(),
        takeover_ms.len(),
        grants.len(),
    );
}
