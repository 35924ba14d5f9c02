//! The PostgreSQL state store and audit sink against a real PostgreSQL
//! server on 127.0.0.1, started by `scripts/test.sh` (initdb into a
//! temporary directory), which exports a superuser's URL as
//! `RELAY_TEST_POSTGRES_URL`. Each test works in a schema of its own.

#![allow(clippy::unwrap_used)]

#[path = "shared/fault_proxy.rs"]
mod fault_proxy;
#[path = "shared/shared_stores.rs"]
mod shared_stores;

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relay::audit::ChainKey;
use relay::providers::postgres::sdk::tokio_postgres;
use relay::providers::postgres::{Postgres, PostgresAuditSink, PostgresRecording, PostgresStateStore};
use relay::{testing, AuditSink, Error, Outcome, RolloutCommand, RolloutStatus, StateStore};
use secrecy::SecretString;

fn url() -> String {
    std::env::var("RELAY_TEST_POSTGRES_URL").expect(
        "RELAY_TEST_POSTGRES_URL is not set: run the suite with scripts/test.sh, which starts a PostgreSQL server",
    )
}

/// A schema no other test (or run) uses.
fn schema(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("t_{name}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

async fn migrated(name: &str) -> Postgres {
    let pg = Postgres::connect(&SecretString::from(url()))
        .unwrap()
        .schema(&schema(name))
        .unwrap();
    pg.migrate().await.unwrap();
    pg
}

/// A plain client, as a DBA would use, to look at or tamper with the tables.
async fn sql() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn the_state_store_passes_the_state_store_conformance_suite() {
    testing::state_store_conformance(&PostgresStateStore::new(migrated("conf").await)).await;
}

#[tokio::test]
async fn the_audit_sink_passes_the_audit_sink_conformance_suite() {
    let pg = migrated("audit_conf").await;
    testing::audit_sink_conformance(&PostgresAuditSink::new(pg.clone(), "main")).await;
    // Keyed: a chain of its own, verified only with its key.
    let key = ChainKey::hmac(&SecretString::from("audit-key-8d2f-0c47-93ab-51e6")).unwrap();
    testing::audit_sink_conformance(&PostgresAuditSink::keyed(pg.clone(), "keyed", key)).await;
    let err = PostgresAuditSink::new(pg, "keyed").verify().await.unwrap_err();
    assert!(matches!(err, Error::AuditTampered { .. }), "{err}");
}

/// Eight engines' sinks and stores (each its own pool, as processes would
/// have) append to one chain and send to one rollout at once.
#[tokio::test]
async fn eight_writers_at_once_all_land_on_one_chain() {
    let pg = migrated("many").await;
    let mut sinks: Vec<Arc<dyn AuditSink>> = Vec::new();
    let mut stores: Vec<Arc<dyn StateStore>> = Vec::new();
    for _ in 0..8 {
        let own = Postgres::connect(&SecretString::from(url()))
            .unwrap()
            .schema(pg.schema_name())
            .unwrap();
        sinks.push(Arc::new(PostgresAuditSink::new(own.clone(), "main")));
        stores.push(Arc::new(PostgresStateStore::new(own)));
    }
    shared_stores::many_writers(sinks, stores, 12).await;
}

#[tokio::test]
async fn migrations_are_versioned_idempotent_and_safe_to_run_at_once() {
    let pg = Postgres::connect(&SecretString::from(url()))
        .unwrap()
        .schema(&schema("migrate"))
        .unwrap();
    let err = pg.check_schema().await.unwrap_err().to_string();
    assert!(err.contains("run Postgres::migrate"), "{err}");
    let runs = (0..4).map(|_| {
        let pg = pg.clone();
        tokio::spawn(async move { pg.migrate().await })
    });
    for run in runs {
        assert_eq!(run.await.unwrap().unwrap(), 2);
    }
    assert_eq!(pg.migrate().await.unwrap(), 2);
    assert_eq!(pg.check_schema().await.unwrap(), 2);
    let db = sql().await;
    let rows = db
        .query(&format!("SELECT version FROM {}.migrations", pg.schema_name()), &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "each migration is recorded once");
    // A schema from a newer relay is refused, not written to.
    db.execute(
        &format!("INSERT INTO {}.migrations (version) VALUES (99)", pg.schema_name()),
        &[],
    )
    .await
    .unwrap();
    let err = pg.check_schema().await.unwrap_err().to_string();
    assert!(err.contains("newer than this library"), "{err}");
}

#[tokio::test]
async fn a_role_that_may_only_read_and_write_rows_runs_the_store() {
    let pg = migrated("roles").await;
    let s = pg.schema_name().to_owned();
    let role = format!("{s}_engine");
    let db = sql().await;
    db.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN;
         GRANT USAGE ON SCHEMA {s} TO {role};
         GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {s} TO {role};"
    ))
    .await
    .unwrap();
    let engine_url = url().replacen("//relay@", &format!("//{role}@"), 1);
    let limited = Postgres::connect(&SecretString::from(engine_url))
        .unwrap()
        .schema(&s)
        .unwrap();
    assert_eq!(limited.check_schema().await.unwrap(), 2);
    testing::state_store_conformance(&PostgresStateStore::new(limited.clone())).await;
    testing::audit_sink_conformance(&PostgresAuditSink::new(limited.clone(), "main")).await;
    // Migrating a schema already at this version asks nothing of it; it
    // cannot delete, so cannot erase the audit log.
    assert_eq!(limited.migrate().await.unwrap(), 2);
    // It records what probes measure, in order, and reads it back.
    let recordings = PostgresRecording::new(limited.clone());
    let sample = |i: u64| relay::recording::RecordedSample {
        rollout: "r1".into(),
        target: "web".into(),
        step: Some(2),
        measurement: u32::try_from(i).unwrap(),
        check: "errors".into(),
        role: Some(relay::Role::Candidate),
        metric: "error_rate".into(),
        window_ms: 60_000,
        elapsed_ms: 60_000 * i,
        step_elapsed_ms: 60_000 * i,
        values: vec![0.01 * i as f64, f64::NAN],
        counts: Some(relay::Counts {
            failures: i,
            total: 100,
        }),
        source: "sim".into(),
    };
    for i in 1..=3 {
        relay::recording::RecordingSink::record(&recordings, &sample(i))
            .await
            .unwrap();
    }
    let back = recordings.recording("r1").await.unwrap();
    assert_eq!(back.samples.len(), 3);
    for (i, got) in (1..=3).zip(&back.samples) {
        let want = sample(i);
        assert_eq!(
            (got.measurement, got.elapsed_ms, got.counts),
            (want.measurement, want.elapsed_ms, want.counts)
        );
        assert!(got.values[1].is_nan() && got.values[0] == want.values[0]);
    }
    assert!(recordings.recording("other").await.unwrap().samples.is_empty());
    let (client, conn) = tokio_postgres::connect(
        &url().replacen("//relay@", &format!("//{role}@"), 1),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let err = client
        .execute(&format!("DELETE FROM {s}.audit"), &[])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    let err = PostgresStateStore::new(
        Postgres::connect(&SecretString::from(url().replacen(
            "//relay@",
            &format!("//{role}@"),
            1,
        )))
        .unwrap()
        .schema("relay_absent")
        .unwrap(),
    )
    .get("x")
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("run Postgres::migrate"),
        "a missing schema says what to run: {err}"
    );
}

#[tokio::test]
async fn a_stale_holders_write_is_refused_by_the_database_even_when_racing_a_takeover() {
    let store = PostgresStateStore::new(migrated("fence").await);
    for (target, old, new) in shared_stores::stale_holder_races(&store, 20).await {
        let grants = store.lease_grants(&target).await.unwrap();
        assert_eq!(
            grants.iter().map(|g| (g.token, g.holder.as_str())).collect::<Vec<_>>(),
            [(old.token, "old"), (new.token, "new")]
        );
        assert_eq!(grants[1].previous, Some(("old".to_owned(), old.expires_at_ms)));
        assert!(!grants.iter().any(|g| g.overlaps()), "{grants:?}");
    }
}

#[tokio::test]
async fn concurrent_command_senders_get_distinct_numbers() {
    let store = Arc::new(PostgresStateStore::new(migrated("commands").await));
    let sends = (0..16).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .send_command("r", &RolloutCommand::Pause { by: format!("op{i}") })
                .await
                .unwrap()
        })
    });
    let mut numbers = Vec::new();
    for s in sends {
        numbers.push(s.await.unwrap());
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=16).collect::<Vec<u64>>());
    assert_eq!(store.commands("r", 10).await.unwrap().len(), 6);
}

#[tokio::test]
async fn an_edited_or_cut_audit_table_fails_verification() {
    let pg = migrated("tamper").await;
    let sink = PostgresAuditSink::new(pg.clone(), "main");
    testing::audit_sink_conformance(&sink).await;
    let s = pg.schema_name();
    let db = sql().await;
    db.execute(
        &format!("UPDATE {s}.audit SET line = replace(line, '\"test\"', '\"tset\"') WHERE seq = 2"),
        &[],
    )
    .await
    .unwrap();
    let err = sink.verify().await.unwrap_err();
    assert!(matches!(err, Error::AuditTampered { seq: 2, .. }), "{err}");
    db.execute(
        &format!("UPDATE {s}.audit SET line = replace(line, '\"tset\"', '\"test\"') WHERE seq = 2"),
        &[],
    )
    .await
    .unwrap();
    let last = sink.verify().await.unwrap();
    assert_eq!(last, sink.entries().await.unwrap().len() as u64);
    db.execute(&format!("DELETE FROM {s}.audit WHERE seq = $1"), &[&(last as i64)])
        .await
        .unwrap();
    let err = sink.verify().await.unwrap_err().to_string();
    assert!(err.contains("deleted from the end"), "{err}");
}

#[tokio::test]
async fn a_bad_url_is_refused_without_echoing_it() {
    let err = Postgres::connect(&SecretString::from("postgres://relay:hunter2-pw@127.0.0.1:notaport/db"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("postgres.url") && !err.contains("hunter2"), "{err}");
    let err = Postgres::connect(&SecretString::from(url()))
        .unwrap()
        .schema("Robert'); DROP TABLE x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("postgres.schema"), "{err}");
    let pg = Postgres::connect(&SecretString::from("postgres://relay:hunter2-pw@127.0.0.1:1/db")).unwrap();
    let debug = format!("{pg:?} {:?}", PostgresStateStore::new(pg.clone()));
    assert!(!debug.contains("hunter2"), "{debug}");
    // Nothing listens on port 1: a retryable error, no password in it.
    let err = PostgresStateStore::new(pg).get("x").await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}

/// Two engines on one database share records, leases, commands and one
/// audit chain.
#[tokio::test]
async fn two_engines_share_records_leases_commands_and_one_audit_chain() {
    let pg = migrated("engines").await;
    let world = shared_stores::ready_world();
    shared_stores::two_engines_share(|_| {
        world
            .builder()
            .state(Arc::new(
                PostgresStateStore::new(pg.clone()).command_poll(Duration::from_millis(50)),
            ))
            .audit(Arc::new(PostgresAuditSink::new(pg.clone(), "main")))
    })
    .await;
}

/// The database becomes unreachable for one engine in the middle of a
/// rollout: it changes the target no more, its lease lapses, another
/// engine resumes the rollout and finishes it, and when the database comes
/// back the first engine is refused by its fencing token and stops.
#[tokio::test]
async fn an_engine_cut_off_from_the_database_stops_and_another_takes_over() {
    let pg = migrated("outage").await;
    let server = url();
    let host_port = server
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let proxy = fault_proxy::FaultProxy::start(&host_port).await;
    let via_proxy = Postgres::connect(&SecretString::from(server.replacen(
        &host_port,
        &proxy.addr().to_string(),
        1,
    )))
    .unwrap()
    .schema(pg.schema_name())
    .unwrap();
    shared_stores::cut_off_engine_stops(&proxy, |cut_off| {
        let db = if cut_off { &via_proxy } else { &pg };
        let state: Arc<dyn StateStore> = Arc::new(PostgresStateStore::new(db.clone()));
        (state, Arc::new(PostgresAuditSink::new(db.clone(), "main")))
    })
    .await;
    let grants = PostgresStateStore::new(pg.clone()).lease_grants("web").await.unwrap();
    shared_stores::handed_over(&grants);
}

#[tokio::test]
async fn two_sinks_on_one_chain_write_one_chain() {
    let pg = migrated("two_sinks").await;
    let counter = relay::providers::RequestCounter::default();
    let counted = pg.clone().count_statements(counter.clone());
    let (a, b) = (
        PostgresAuditSink::new(counted, "main"),
        PostgresAuditSink::new(pg.clone(), "main"),
    );
    let event = |actor: &str, i: i64| relay::audit::AuditEvent {
        at_ms: i,
        actor: actor.into(),
        rollout: "r".into(),
        action: "test.append".into(),
        detail: serde_json::json!({"i": i}).into(),
    };
    for i in 0..3 {
        assert_eq!(a.append(&event("a", i)).await.unwrap().seq, i as u64 + 1);
    }
    let first = counter.counts();
    assert_eq!(
        first.get("audit.append"),
        Some(&2),
        "after its first, one statement each: {first:?}"
    );
    assert_eq!(first.get("audit_heads.lock"), Some(&1), "{first:?}");
    assert_eq!(b.append(&event("b", 3)).await.unwrap().seq, 4);
    counter.reset();
    assert_eq!(a.append(&event("a", 4)).await.unwrap().seq, 5);
    let after = counter.counts();
    assert_eq!(
        (after.get("audit.append"), after.get("audit_heads.lock")),
        (Some(&1), Some(&1)),
        "a moved head sends the append to the locked path: {after:?}"
    );
    assert_eq!(b.verify().await.unwrap(), 5);
    let actors: Vec<String> = b.entries().await.unwrap().into_iter().map(|e| e.event.actor).collect();
    assert_eq!(actors, ["a", "a", "a", "b", "a"]);
}

/// Lease expiry compares engines' clocks. An engine whose clock runs a
/// minute ahead sees a live lease as lapsed and takes the rollout over;
/// the store's fencing keeps the first engine from writing any more: it
/// stops with `LeaseLost`, and the rollout ends as the second drives it.
#[tokio::test]
async fn an_engine_with_a_clock_ahead_takes_over_early_and_fencing_stops_the_holder() {
    let pg = migrated("skew").await;
    let world = shared_stores::ready_world();
    let config = relay::EngineConfig {
        lease_ttl: Duration::from_secs(3),
        ..Default::default()
    };
    let now = relay::clock::TokioClock::new();
    let engine = |holder: &str, ahead_ms: i64| {
        world
            .builder()
            .state(Arc::new(PostgresStateStore::new(pg.clone())))
            .audit(Arc::new(PostgresAuditSink::new(pg.clone(), "main")))
            .clock(Arc::new(relay::clock::TokioClock::starting_at(
                relay::Clock::now_ms(&now) + ahead_ms,
            )))
            .config(config.clone())
            .holder(holder)
            .build()
            .unwrap()
    };
    let (a, b) = (engine("engine-a", 0), engine("engine-b", 60_000));
    let handle = shared_stores::canary_under_way(&a, &a).await;
    let id = handle.id().to_string();
    // By its clock, the lease lapsed a minute ago.
    let (resumed, skipped) = b.recover().await.unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    let resumed = resumed
        .into_iter()
        .next()
        .expect("the engine ahead takes the rollout over");
    let first = tokio::time::timeout(Duration::from_secs(30), handle.wait())
        .await
        .expect("the holder stops");
    assert!(matches!(first, Err(Error::LeaseLost { .. })), "{first:?}");
    let outcome = tokio::time::timeout(Duration::from_secs(60), resumed.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(outcome, Outcome::Promoted { .. }), "{outcome}");
    let record = b.state().get(&id).await.unwrap().unwrap();
    assert_eq!(record.status, RolloutStatus::Finished(outcome));
    let grants = PostgresStateStore::new(pg.clone()).lease_grants("web").await.unwrap();
    assert!(grants.last().unwrap().holder.starts_with("engine-b"), "{grants:?}");
    b.verify_audit().await.unwrap();
}
