//! Two engines, in two processes, sharing one PostgreSQL database: the
//! first drives a canary and is killed with SIGKILL in the middle of it;
//! the second sees the rollout orphaned, waits for the lease to lapse,
//! takes it over and finishes it. Then it prints the lease's grants and
//! verifies the audit chain both engines wrote.
//!
//! ```text
//! cargo run --example fleet --features postgres -- postgres://user:password@127.0.0.1:5432/db
//! ```
//!
//! The URL may also come from `RELAY_POSTGRES_URL`. The example works in a
//! schema of its own (`relay_fleet_example_<pid>`), dropped at the end.
//! The targets are simulated, one per process; each stages what the
//! database says runs there (the live revision, and the candidate of a
//! rollout in progress) before it drives anything, as a real target would
//! still run them.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use relay::providers::postgres::sdk::tokio_postgres;
use relay::providers::postgres::{Postgres, PostgresAuditSink, PostgresStateStore};
use relay::providers::sim::{MemoryArtifactStore, RevisionBehavior, SimProbe, SimTarget};
use relay::strategies::CanaryStrategy;
use relay::{EngineConfig, Relay, Release, RolloutSpec, StateStore, Target, TrafficSplit};
use secrecy::{ExposeSecret, SecretString};

type Failure = Box<dyn std::error::Error>;

#[path = "support/postgres_url.rs"]
mod postgres_url;

/// Set in the first engine's environment: the schema to work in.
const CHILD: &str = "RELAY_FLEET_EXAMPLE_SCHEMA";
const ROLLOUT: &str = "fleet-example";

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let url = postgres_url::from_args("fleet")?;
    match std::env::var(CHILD) {
        Ok(schema) => first_engine(&url, &schema).await,
        Err(_) => second_engine(&url).await,
    }
}

/// An engine named `name` on `pg`, its simulated target running the
/// revision the database says is live.
async fn engine(name: &str, pg: &Postgres) -> Result<Relay, Failure> {
    let artifacts = Arc::new(MemoryArtifactStore::new());
    for tag in ["v1", "v2"] {
        artifacts.push("shop/web", tag, format!("build {tag}").as_bytes(), BTreeMap::new());
    }
    let target = Arc::new(SimTarget::new("web").default_behavior(RevisionBehavior {
        readiness_delay: Duration::from_millis(200),
        ..RevisionBehavior::healthy()
    }));
    let state = PostgresStateStore::new(pg.clone()).command_poll(Duration::from_millis(500));
    let history = state.list_target("web").await?;
    if let Some(live) = history.iter().rev().find(|r| r.status.is_promoted()) {
        let revision = &live.plan.candidate;
        target.stage(revision, live.plan.replicas).await?;
        target.route(&TrafficSplit::all(&revision.id)).await?;
        target.promote(&revision.id).await?;
    }
    // A real target keeps running what a killed engine started; this
    // process's simulated one is told so.
    if let Some(running) = history.iter().find(|r| !r.status.is_terminal()) {
        target.stage(&running.plan.candidate, 1).await?;
    }
    let config = EngineConfig {
        lease_ttl: Duration::from_secs(3),
        ..Default::default()
    };
    Ok(Relay::builder()
        .artifacts(artifacts)
        .target(target.clone())
        .probe(Arc::new(SimProbe::new(target)))
        .state(Arc::new(state))
        .audit(Arc::new(PostgresAuditSink::new(pg.clone(), "example")))
        .config(config)
        .holder(name)
        .build()?)
}

fn canary() -> CanaryStrategy {
    CanaryStrategy::new()
        .set_weight(20)
        .pause(Duration::from_secs(2))
        .set_weight(50)
        .pause(Duration::from_secs(2))
        .set_weight(80)
        .pause(Duration::from_secs(2))
}

/// The first engine: start the canary of v2 and drive it until killed.
async fn first_engine(url: &SecretString, schema: &str) -> Result<(), Failure> {
    let pg = Postgres::connect(url)?.schema(schema)?;
    let relay = engine("engine-a", &pg).await?;
    let spec = RolloutSpec::new("web", Release::new("shop/web:v2".parse()?).replicas(4), canary()).id(ROLLOUT);
    let handle = relay.start(spec).await?;
    let mut events = handle.events();
    while let Some(e) = events.next().await {
        println!("  engine-a: {:?}", e.kind);
    }
    Ok(())
}

/// The second engine: deploy v1, start the first engine in a process of
/// its own, kill it mid-canary, take the rollout over.
async fn second_engine(url: &SecretString) -> Result<(), Failure> {
    let schema = format!("relay_fleet_example_{}", std::process::id());
    let pg = Postgres::connect(url)?.schema(&schema)?;
    pg.migrate().await?;
    println!("schema {schema} migrated");
    let result = take_over(url, &pg, &schema).await;
    let (client, conn) = tokio_postgres::connect(url.expose_secret(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await?;
    println!("schema {schema} dropped");
    result
}

async fn take_over(url: &SecretString, pg: &Postgres, schema: &str) -> Result<(), Failure> {
    let store = PostgresStateStore::new(pg.clone());
    {
        let relay = engine("engine-b", pg).await?;
        let v1 = RolloutSpec::new("web", Release::new("shop/web:v1".parse()?).replicas(4), canary());
        println!("engine-b deploys v1: {}", relay.start(v1).await?.wait().await?);
    }

    println!("engine-a starts the canary of v2 in process of its own");
    // The URL (it may hold a password) goes in the child's environment,
    // which only this user can read, not on its command line.
    let mut child = Command::new(std::env::current_exe()?)
        .env(postgres_url::URL_VAR, url.expose_secret())
        .env(CHILD, schema)
        .spawn()?;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(r) = store.get(ROLLOUT).await? {
            if r.cursor >= 3 {
                break;
            }
        }
    }
    child.kill()?; // SIGKILL: no clean-up, the lease stays held until it lapses
    child.wait()?;
    let r = store.get(ROLLOUT).await?.ok_or("the rollout has no record")?;
    println!(
        "killed engine-a (SIGKILL) at step {} of {}; its lease: {:?}",
        r.cursor,
        r.plan.steps.len(),
        store.lease("web").await?.map(|l| (l.holder, l.token))
    );

    let relay = engine("engine-b", pg).await?;
    let mut said = String::new();
    let handle = loop {
        let (mut resumed, skipped) = relay.recover().await?;
        if let Some(h) = resumed.pop() {
            break h;
        }
        if let Some((_, why)) = skipped.first() {
            if why.to_string() != said {
                said = why.to_string();
                println!("engine-b waits: {said}");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("engine-b took the rollout over");
    println!("engine-b finished it: {}", handle.wait().await?);
    for g in store.lease_grants("web").await? {
        println!(
            "lease grant: token {} to {} (replacing {:?}){}",
            g.token,
            g.holder,
            g.previous.as_ref().map(|(h, _)| h),
            if g.overlaps() { " OVERLAPPING" } else { "" }
        );
    }
    let check = relay.verify_audit().await?;
    println!(
        "audit chain verified: {} entries, {} record anchors",
        check.entries,
        check.anchors.unwrap_or(0)
    );
    Ok(())
}
