//! An expand/contract schema change on a real PostgreSQL database, rolled
//! out with a canary: the old and the new revision both work at every
//! traffic step, a rollback leaves the old revision working, and the old
//! column goes only once the new revision passed its bake.
//!
//! ```text
//! cargo run --example migration --features postgres -- postgres://user:password@127.0.0.1:5432/db
//! ```
//!
//! The URL may also come from `RELAY_POSTGRES_URL`. The example works in a
//! schema of its own (`relay_migration_example_<pid>`), dropped at the end,
//! and exits non-zero when anything it expects does not hold.
//!
//! The application renames `customers.name` to `customers.full_name`. v1
//! reads and writes `name`; v2 reads and writes `full_name`. The change is
//! a [`Migration`]:
//!
//! - **expand** (`add-full-name`, before the candidate starts): add
//!   `full_name`, copy `name` into it, and a trigger that keeps the two in
//!   step whichever revision writes: both revisions work side by side;
//! - **contract** (`drop-name`, after the bake, once v1 is retired): drop
//!   the trigger and `name`.
//!
//! A hook after every traffic step (`both-revisions-work`) writes a
//! customer as v1 and one as v2 and reads them all back both ways; were
//! either to fail, the rollout would roll back. The targets are simulated;
//! the database is real.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use relay::hook::{FnHook, HookContext, HookRun, Migration};
use relay::providers::postgres::sdk::tokio_postgres::{self, Client};
use relay::providers::sim::{MemoryArtifactStore, RevisionBehavior, SimProbe, SimTarget};
use relay::strategies::{AllAtOnceStrategy, CanaryStrategy, ThresholdJudge};
use relay::{
    AnalysisSpec, AuditSink, Bake, Check, EngineConfig, HookPoint, HookSpec, Outcome, Relay, Release, RolloutSpec,
};
use secrecy::ExposeSecret;

type Failure = Box<dyn std::error::Error>;

#[path = "support/postgres_url.rs"]
mod postgres_url;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let url = postgres_url::from_args("migration")?;
    let (db, conn) = tokio_postgres::connect(url.expose_secret(), tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
    tokio::spawn(conn);
    let db = Arc::new(db);
    let schema = format!("relay_migration_example_{}", std::process::id());
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema}; SET search_path TO {schema};
         CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);
         INSERT INTO customers (name) VALUES ('Ada Lovelace'), ('Grace Hopper');"
    ))
    .await?;
    println!("schema {schema}: customers(id, name), 2 rows");
    let result = release(&db).await;
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await?;
    println!("schema {schema} dropped");
    result
}

/// One revision's data access: v1's uses `name`, v2's `full_name`.
#[derive(Clone, Copy)]
struct App {
    column: &'static str,
}

const V1: App = App { column: "name" };
const V2: App = App { column: "full_name" };

impl App {
    async fn write(self, db: &Client, who: &str) -> Result<(), tokio_postgres::Error> {
        let sql = format!("INSERT INTO customers ({}) VALUES ($1)", self.column);
        db.execute(&sql, &[&who]).await.map(|_| ())
    }

    async fn read(self, db: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
        let sql = format!("SELECT {} FROM customers ORDER BY id", self.column);
        let rows = db.query(&sql, &[]).await?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
            .collect())
    }
}

const EXPAND: &str = "
    ALTER TABLE customers ADD COLUMN IF NOT EXISTS full_name text;
    ALTER TABLE customers ALTER COLUMN name DROP NOT NULL;
    CREATE OR REPLACE FUNCTION customers_sync_names() RETURNS trigger AS $$
    BEGIN
      IF NEW.full_name IS NULL THEN NEW.full_name := NEW.name; END IF;
      IF NEW.name IS NULL THEN NEW.name := NEW.full_name; END IF;
      RETURN NEW;
    END $$ LANGUAGE plpgsql;
    DROP TRIGGER IF EXISTS customers_sync_names ON customers;
    CREATE TRIGGER customers_sync_names BEFORE INSERT OR UPDATE ON customers
      FOR EACH ROW EXECUTE FUNCTION customers_sync_names();
    UPDATE customers SET full_name = name WHERE full_name IS NULL;";

const CONTRACT: &str = "
    DROP TRIGGER IF EXISTS customers_sync_names ON customers;
    DROP FUNCTION IF EXISTS customers_sync_names();
    ALTER TABLE customers DROP COLUMN IF EXISTS name;";

/// A hook that runs `sql` (idempotent: a step run again after a crash runs
/// it again).
fn sql_hook(db: &Arc<Client>, name: &'static str, sql: &'static str) -> Arc<dyn relay::Hook> {
    let db = db.clone();
    Arc::new(FnHook::new(name, move |ctx: HookContext| {
        let db = db.clone();
        async move {
            Ok(match db.batch_execute(sql).await {
                Ok(()) => HookRun::passed(format!("{name} applied for {}", ctx.candidate)),
                Err(e) => HookRun::failed(format!("{name}: {e}")),
            })
        }
    }))
}

/// After each traffic step: a customer written by each revision, and every
/// customer read back by each.
fn both_revisions_work(db: &Arc<Client>) -> Arc<dyn relay::Hook> {
    let db = db.clone();
    Arc::new(FnHook::new("both-revisions-work", move |ctx: HookContext| {
        let db = db.clone();
        async move {
            let tag = format!("at {}%", ctx.candidate_weight);
            let wrote = async {
                V1.write(&db, &format!("written by v1 {tag}")).await?;
                V2.write(&db, &format!("written by v2 {tag}")).await
            };
            if let Err(e) = wrote.await {
                return Ok(HookRun::failed(format!("a write failed: {e}")));
            }
            let (v1, v2) = (V1.read(&db).await, V2.read(&db).await);
            Ok(match (v1, v2) {
                (Ok(a), Ok(b)) if a == b && a.iter().all(|n| !n.is_empty()) => {
                    println!(
                        "  {tag}: v1 and v2 each wrote a customer and read all {} alike",
                        a.len()
                    );
                    HookRun::passed(format!("both revisions read the same {} customers", a.len()))
                }
                (Ok(a), Ok(b)) => HookRun::failed(format!("v1 reads {a:?} but v2 reads {b:?}")),
                (Err(e), _) => HookRun::failed(format!("v1 failed: {e}")),
                (_, Err(e)) => HookRun::failed(format!("v2 failed: {e}")),
            })
        }
    }))
}

async fn columns(db: &Client) -> Result<Vec<String>, Failure> {
    let rows = db
        .query(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = 'customers' ORDER BY ordinal_position",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Check `what`, or fail the example saying what did not hold.
fn expect(ok: bool, what: &str) -> Result<(), Failure> {
    if ok {
        println!("  ok: {what}");
        Ok(())
    } else {
        Err(format!("expected: {what}").into())
    }
}

async fn release(db: &Arc<Client>) -> Result<(), Failure> {
    let artifacts = Arc::new(MemoryArtifactStore::new());
    let [_, _, broken] = ["v1", "v2", "v2-broken"]
        .map(|tag| artifacts.push("shop/crm", tag, format!("build {tag}").as_bytes(), BTreeMap::new()));
    let quick = RevisionBehavior {
        readiness_delay: Duration::from_millis(50),
        ..RevisionBehavior::healthy()
    };
    let target = Arc::new(SimTarget::new("crm").seed(7).default_behavior(quick.clone()));
    target.behavior(
        &broken.digest,
        RevisionBehavior {
            error_rate: 0.3,
            ..quick
        },
    );
    let relay = Relay::builder()
        .artifacts(artifacts)
        .target(target.clone())
        .probe(Arc::new(SimProbe::new(target)))
        .hook(sql_hook(db, "add-full-name", EXPAND))
        .hook(sql_hook(db, "drop-name", CONTRACT))
        .hook(both_revisions_work(db))
        .config(EngineConfig {
            poll_interval: Duration::from_millis(50),
            ..EngineConfig::default()
        })
        .build()?;
    let errors = AnalysisSpec::new(vec![Check::new(
        "errors",
        "error_rate",
        // The simulator gives one value a second of window.
        ThresholdJudge::below(0.05).min_samples(1),
    )])
    .every(Duration::from_secs(1), 2);
    let rollout = |tag: &str, id: &str| {
        let release = Release::new(format!("shop/crm:{tag}").parse().expect("a valid reference")).replicas(2);
        let canary = CanaryStrategy::new()
            .set_weight(25)
            .analyze(errors.clone())
            .set_weight(50)
            .analyze(errors.clone());
        RolloutSpec::new("crm", release, canary)
            .id(id)
            .migration(Migration::new("add-full-name", "drop-name"))
            .hook(HookSpec::new("both-revisions-work", HookPoint::PostTraffic))
            .bake(Bake::new(Duration::from_secs(3)).analysis(errors.clone()))
    };

    println!("v1 goes live (no migration)");
    let v1 = Release::new("shop/crm:v1".parse()?).replicas(2);
    let outcome = relay
        .start(RolloutSpec::new("crm", v1, AllAtOnceStrategy))
        .await?
        .wait()
        .await?;
    expect(outcome.is_success(), "v1 is live")?;

    println!("v2-broken: expand, a canary that fails its analysis, rolled back");
    println!("{}", relay.plan(&rollout("v2-broken", "crm-v2-broken")).await?);
    let outcome = relay.start(rollout("v2-broken", "crm-v2-broken")).await?.wait().await?;
    println!("  outcome: {outcome}");
    expect(
        matches!(outcome, Outcome::RolledBack { .. }),
        "v2-broken is rolled back",
    )?;
    expect(
        columns(db).await? == ["id", "name", "full_name"],
        "the rollback never contracted: `name` is still there",
    )?;
    expect(
        V1.write(db, "written by v1 after the rollback").await.is_ok(),
        "v1 works",
    )?;

    println!("v2: expand (again: idempotent), a canary, a bake, then contract");
    let outcome = relay.start(rollout("v2", "crm-v2")).await?.wait().await?;
    println!("  outcome: {outcome}");
    expect(outcome.is_success(), "v2 is live")?;
    expect(columns(db).await? == ["id", "full_name"], "the contract dropped `name`")?;
    V2.write(db, "written by v2 when live").await?;
    let names = V2.read(db).await?;
    expect(
        names.iter().all(|n| !n.is_empty())
            && [
                "Ada Lovelace",
                "written by v1 at 25%",
                "written by v1 after the rollback",
            ]
            .iter()
            .all(|n| names.iter().any(|m| m == n)),
        "v2 reads every customer, the ones v1 wrote included",
    )?;
    let v1_now = V1.read(db).await;
    expect(
        v1_now.is_err(),
        "v1 would fail now (it is retired, as the contract requires)",
    )?;

    println!("the migration's runs, from the audit log:");
    for entry in relay.audit().entries().await? {
        let d = entry.event.detail.to_value();
        if let Some(phase) = d.get("phase").and_then(|p| p.as_str()) {
            println!(
                "  {:<14} {:<9} {:<8} {}",
                entry.event.rollout,
                entry.event.action,
                phase,
                d["message"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}
