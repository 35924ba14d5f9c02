//! State on PostgreSQL, for a fleet of engines in several processes and on
//! several hosts: [`PostgresStateStore`] (rollout records, target leases
//! with fencing tokens, the command channel) and [`PostgresAuditSink`] (the
//! audit chain as an append-only table).
//!
//! # Schema
//! Every table lives in one PostgreSQL schema (`relay` unless
//! [`Postgres::schema`] names another), created and migrated by
//! [`Postgres::migrate`] (versioned, recorded in `<schema>.migrations`,
//! serialized between processes by an advisory lock):
//!
//! | table | holds |
//! |---|---|
//! | `rollouts` | one row per rollout: `id`, `target`, `active`, `version` (compare-and-swap), `lease_token`, `created_ms`, `record` (the [`relay_core::RolloutRecord`] as JSONB) |
//! | `leases` | one row per target: the lease (`holder`, `token`, `expires_at_ms`; no holder when free) and `last_token`, the last fencing token granted |
//! | `lease_grants` | every grant of a lease to a new holder: `target`, `token`, `holder`, `granted_ms`, and the lease it replaced (`previous_holder`, `previous_expires_at_ms`; none when it was free): the history that shows no target had two live holders |
//! | `commands` | operator commands per rollout: `rollout`, `seq` (1, 2, …), `command` (JSONB) |
//! | `audit` | the audit chain: `chain`, `seq`, `line` (the entry as relay writes it, hashed) |
//! | `audit_heads` | each chain's head: `chain`, `seq`, `hash`, written in the transaction of its entry |
//! | `recordings` | what probes measured, for backtests ([`PostgresRecording`]): `rollout`, `seq` (an identity), `sample` (JSONB) |
//!
//! # Roles
//! The role that migrates owns the schema (`CREATE` on the database). The
//! engines can run as a role that may only read and write rows, with
//! [`Postgres::check_schema`] in place of [`Postgres::migrate`]:
//!
//! ```sql
//! GRANT USAGE ON SCHEMA relay TO relay_engine;
//! GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA relay TO relay_engine;
//! ```
//!
//! No engine deletes a row: the audit table is append-only for them (an
//! owner can `REVOKE UPDATE ON relay.audit` as well; the chain shows an
//! edit either way).
//!
//! # Fencing and clocks
//! A record write is one statement that locks the target's lease row and
//! lands only if the record's fencing token is the last one granted, so a
//! holder that lost its lease is refused by the database itself, however
//! late its write arrives. Lease expiry compares the times engines give
//! (their clocks, as with the file store): engines on several hosts need
//! clocks within a small part of the lease's time to live.
//!
//! # Errors
//! Connection failures, a full pool, serialization failures and deadlocks
//! are retryable [`Error::Provider`]s; a missing table or privilege, or a
//! schema newer than this library, is terminal and says what to run.
//!
//! TLS: [`Postgres::connect`] speaks plain TCP (a database on loopback or a
//! private network); for TLS, build a `deadpool_postgres::Pool` with the
//! connector of your choice and use [`Postgres::from_pool`].

mod audit;
mod recording;
mod schema;
mod state;

use std::fmt;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use relay_core::{Error, Result};
use secrecy::{ExposeSecret, SecretString};

pub use audit::PostgresAuditSink;
pub use recording::PostgresRecording;
pub use state::PostgresStateStore;

/// The PostgreSQL client crates relay uses, for building a pool with TLS.
pub mod sdk {
    pub use deadpool_postgres;
    pub use tokio_postgres;
}

const PROVIDER: &str = "postgres";

/// Connections in a pool [`Postgres::connect`] builds.
const POOL_SIZE: usize = 8;

/// A connection pool and the schema relay's tables live in: what
/// [`PostgresStateStore`] and [`PostgresAuditSink`] are built from.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    schema: String,
    counter: Option<crate::RequestCounter>,
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres").field("schema", &self.schema).finish()
    }
}

impl Postgres {
    /// A pool of up to eight connections to the database at `url`
    /// (`postgres://user:password@host:port/database`, or the key=value
    /// form), in plain TCP. Nothing connects until first used.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] for a URL that does not parse (the URL is
    /// not echoed: it may hold a password).
    pub fn connect(url: &SecretString) -> Result<Self> {
        let config: tokio_postgres::Config = url.expose_secret().parse().map_err(|_| {
            Error::invalid(
                "postgres.url",
                "is not a PostgreSQL connection string: write postgres://user:password@host:port/database",
            )
        })?;
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::provider(PROVIDER, false, format!("cannot build the connection pool: {e}")))?;
        Ok(Self::from_pool(pool))
    }

    /// Use `pool` (built with TLS, or sized, as you need).
    pub fn from_pool(pool: Pool) -> Self {
        Postgres {
            pool,
            schema: "relay".to_owned(),
            counter: None,
        }
    }

    /// Count every statement the stores built from this sends to the
    /// database (each one round trip; `BEGIN` and `COMMIT` included) in
    /// `counter`, by what it does (`rollouts.update`, `audit.append`, …).
    /// Preparing a statement, once per connection, is not counted.
    pub fn count_statements(mut self, counter: crate::RequestCounter) -> Self {
        self.counter = Some(counter);
        self
    }

    /// One statement of kind `what` sent.
    fn sent(&self, what: &'static str) {
        if let Some(c) = &self.counter {
            c.record(what.to_owned());
        }
    }

    /// Keep relay's tables in schema `name` (`relay` unless set): one
    /// database can hold several separate relays, such as one per test.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] unless `name` is a lowercase SQL identifier
    /// (`[a-z_][a-z0-9_]*`, at most 63 bytes).
    pub fn schema(mut self, name: &str) -> Result<Self> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(Error::invalid(
                "postgres.schema",
                format!("{name:.64?} is not a lowercase SQL identifier: use letters a-z, digits and _"),
            ));
        }
        self.schema = name.to_owned();
        Ok(self)
    }

    /// The schema relay's tables live in.
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    /// Create the schema and its tables, or bring them up to this
    /// library's version; safe to run from several processes at once. On a
    /// schema already at this version it only reads the version, so an
    /// engine running as a role that may only read and write rows can call
    /// it at every start. Returns the schema version.
    ///
    /// # Errors
    /// When the database cannot be reached, the role may not create the
    /// schema, or the schema is newer than this library knows.
    pub async fn migrate(&self) -> Result<u32> {
        schema::migrate(self).await
    }

    /// Check that the schema is at this library's version, creating
    /// nothing: for engines that run as a role that may only read and
    /// write rows. Returns the schema version.
    ///
    /// # Errors
    /// Terminal, saying to run [`Postgres::migrate`], when the schema is
    /// missing or older; also when it is newer.
    pub async fn check_schema(&self) -> Result<u32> {
        schema::check(self).await
    }

    /// A connection from the pool.
    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(|e| {
            let retryable = !matches!(
                e,
                deadpool_postgres::PoolError::Closed | deadpool_postgres::PoolError::NoRuntimeSpecified
            );
            Error::provider_caused(PROVIDER, retryable, "no database connection", e)
        })
    }
}

/// Whether a failed statement may succeed when tried again: the connection
/// broke, or the server asked for it (serialization failure, deadlock,
/// resources short, shutting down or starting up).
fn retryable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => e.is_closed() || e.as_db_error().is_none(),
        Some(code) => {
            let code = code.code();
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(code, "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "55P03")
        }
    }
}

/// A failed statement as relay's error, saying what was being done.
fn db_err(doing: &str, e: tokio_postgres::Error) -> Error {
    let retryable = retryable(&e);
    let msg = match e.code().map(|c| c.code()) {
        Some("42P01") | Some("3F000") => {
            format!("{doing}: relay's tables are missing: run Postgres::migrate as the schema's owner")
        }
        Some("42501") => format!(
            "{doing}: the role lacks a privilege on relay's tables (see the grants in relay::providers::postgres)"
        ),
        _ => doing.to_owned(),
    };
    Error::provider_caused(PROVIDER, retryable, msg, e)
}
