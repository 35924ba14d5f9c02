//! Versioned migrations of relay's schema.

use relay_core::{Error, Result};

use super::{db_err, Postgres, PROVIDER};

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`. `{s}`
/// stands for the schema. A released migration is never edited; a change
/// is a new one.
const MIGRATIONS: &[&str] = &[
    // 1: records, leases and their grants, commands, the audit chain.
    "CREATE TABLE {s}.rollouts (
        id TEXT PRIMARY KEY,
        target TEXT NOT NULL,
        active BOOLEAN NOT NULL,
        version BIGINT NOT NULL,
        lease_token BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        record JSONB NOT NULL
    );
    CREATE INDEX rollouts_by_target ON {s}.rollouts (target, created_ms, id);
    CREATE INDEX rollouts_active ON {s}.rollouts (created_ms, id) WHERE active;
    CREATE TABLE {s}.leases (
        target TEXT PRIMARY KEY,
        holder TEXT,
        token BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        last_token BIGINT NOT NULL
    );
    CREATE TABLE {s}.lease_grants (
        target TEXT NOT NULL,
        token BIGINT NOT NULL,
        holder TEXT NOT NULL,
        granted_ms BIGINT NOT NULL,
        previous_holder TEXT,
        previous_expires_at_ms BIGINT,
        PRIMARY KEY (target, token)
    );
    CREATE TABLE {s}.commands (
        rollout TEXT NOT NULL,
        seq BIGINT NOT NULL,
        command JSONB NOT NULL,
        PRIMARY KEY (rollout, seq)
    );
    CREATE TABLE {s}.audit (
        chain TEXT NOT NULL,
        seq BIGINT NOT NULL,
        line TEXT NOT NULL,
        PRIMARY KEY (chain, seq)
    );
    CREATE TABLE {s}.audit_heads (
        chain TEXT PRIMARY KEY,
        seq BIGINT NOT NULL,
        hash TEXT NOT NULL
    );",
    // 2: what probes measured, for backtests (PostgresRecording).
    "CREATE TABLE {s}.recordings (
        rollout TEXT NOT NULL,
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        sample JSONB NOT NULL,
        PRIMARY KEY (rollout, seq)
    );",
];

/// The schema version this library reads and writes.
pub(super) const VERSION: u32 = MIGRATIONS.len() as u32;

/// The advisory lock migrations hold (any constant; relay's own).
const MIGRATION_LOCK: i64 = 0x7265_6c61_7900_0001;

pub(super) async fn migrate(pg: &Postgres) -> Result<u32> {
    let s = &pg.schema;
    let mut client = pg.client().await?;
    // Up to date (versions only grow): nothing to create, so a role that
    // may only read and write rows can call this at every start.
    let current = current_version(&client, s).await?;
    refuse_newer(current)?;
    if current == VERSION {
        return Ok(VERSION);
    }
    let tx = client
        .transaction()
        .await
        .map_err(|e| db_err("begin the migration", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| db_err("take the migration lock", e))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.migrations (
             version INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(|e| db_err(&format!("create schema {s}"), e))?;
    let current = current_version(&tx, s).await?;
    refuse_newer(current)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(&sql.replace("{s}", s))
            .await
            .map_err(|e| db_err(&format!("apply migration {version}"), e))?;
        tx.execute(
            &format!("INSERT INTO {s}.migrations (version) VALUES ($1)"),
            &[&version],
        )
        .await
        .map_err(|e| db_err(&format!("record migration {version}"), e))?;
        tracing::info!(schema = %s, version, "migrated relay's schema");
    }
    tx.commit().await.map_err(|e| db_err("commit the migration", e))?;
    Ok(VERSION)
}

pub(super) async fn check(pg: &Postgres) -> Result<u32> {
    let client = pg.client().await?;
    let current = current_version(&client, &pg.schema).await?;
    refuse_newer(current)?;
    if current < VERSION {
        return Err(Error::provider(
            PROVIDER,
            false,
            format!(
                "schema {} is at version {current}, this library needs {VERSION}: run Postgres::migrate as the schema's owner",
                pg.schema
            ),
        ));
    }
    Ok(current)
}

/// The version recorded in `{s}.migrations`, 0 without the table.
async fn current_version(client: &impl deadpool_postgres::GenericClient, s: &str) -> Result<u32> {
    let exists = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&format!("{s}.migrations")])
        .await
        .map_err(|e| db_err("read the schema version", e))?;
    if !exists.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_one(&format!("SELECT COALESCE(MAX(version), 0) FROM {s}.migrations"), &[])
        .await
        .map_err(|e| db_err("read the schema version", e))?;
    Ok(u32::try_from(row.get::<_, i32>(0)).unwrap_or(0))
}

fn refuse_newer(current: u32) -> Result<()> {
    if current > VERSION {
        return Err(Error::provider(
            PROVIDER,
            false,
            format!("the schema is at version {current}, newer than this library's {VERSION}: upgrade relay"),
        ));
    }
    Ok(())
}
