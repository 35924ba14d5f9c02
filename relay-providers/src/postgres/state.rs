//! Rollout records, leases and commands in PostgreSQL.

use std::time::Duration;

use async_trait::async_trait;
use relay_core::state::logic::{self, LeaseSlot};
use relay_core::state::LeaseGrant;
use relay_core::{clock::UnixMillis, Error, Lease, Result, RolloutCommand, RolloutRecord, StateStore};
use tokio_postgres::types::Json;
use tokio_postgres::Row;

use super::{db_err, Postgres, PROVIDER};

/// How often a driver looks for commands sent from other processes, unless
/// [`PostgresStateStore::command_poll`] says otherwise.
const COMMAND_POLL: Duration = Duration::from_secs(1);

/// Tries of a command's insert that lose the race for its number.
const COMMAND_ATTEMPTS: u32 = 8;

/// A [`StateStore`] on PostgreSQL, shared by every engine, in any process
/// on any host, that connects to the same database and schema (the
/// [module documentation](super) gives the tables, roles and guarantees).
///
/// - A record write is a compare-and-swap on the row's `version` and is
///   fenced in the same statement: it locks the target's lease row and
///   lands only if the record's `lease_token` is the last token granted.
/// - A lease is granted and renewed in a transaction holding its row's
///   lock, under the rules of [`relay_core::state::logic`] that every store
///   shares, and released in one statement that clears it only if it is
///   still the one released; each grant to a new holder is recorded in
///   `lease_grants`.
/// - Commands are rows numbered 1, 2, … per rollout; concurrent senders
///   get distinct numbers.
#[derive(Clone)]
pub struct PostgresStateStore {
    pg: Postgres,
    sql: Sql,
    command_poll: Duration,
}

impl std::fmt::Debug for PostgresStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStateStore")
            .field("schema", &self.pg.schema_name())
            .finish()
    }
}

/// The statements, with the schema filled in.
#[derive(Clone)]
struct Sql {
    get: String,
    insert: String,
    update: String,
    explain_refusal: String,
    list_active: String,
    list_target: String,
    list_all: String,
    send_command: String,
    commands: String,
    lease: String,
    lock_slot: String,
    write_slot: String,
    record_grant: String,
    release: String,
}

impl Sql {
    fn new(s: &str) -> Self {
        // The fence: the target's lease row, locked against a concurrent
        // grant until the write commits, and refusing a write whose token
        // is older than the last one granted.
        let fence = format!("WITH fence AS (SELECT last_token FROM {s}.leases WHERE target = $2 FOR SHARE)");
        let fenced = "NOT EXISTS (SELECT 1 FROM fence WHERE fence.last_token > $4)";
        let list = |filter: &str| format!("SELECT version, record FROM {s}.rollouts {filter} ORDER BY created_ms, id");
        Sql {
            get: format!("SELECT version, record FROM {s}.rollouts WHERE id = $1"),
            insert: format!(
                "{fence} INSERT INTO {s}.rollouts (id, target, active, version, lease_token, created_ms, record)
                 SELECT $1::text, $2::text, $3::boolean, 1, $4::bigint, $5::bigint, $6::jsonb WHERE ({fenced})
                 ON CONFLICT (id) DO NOTHING RETURNING version"
            ),
            update: format!(
                "{fence} UPDATE {s}.rollouts SET active = $3, lease_token = $4, version = version + 1, record = $6
                 WHERE id = $1 AND version = $5 AND ({fenced}) RETURNING version"
            ),
            explain_refusal: format!(
                "SELECT (SELECT version FROM {s}.rollouts WHERE id = $1),
                        (SELECT last_token FROM {s}.leases WHERE target = $2)"
            ),
            list_active: list("WHERE active"),
            list_target: list("WHERE target = $1"),
            list_all: list(""),
            send_command: format!(
                "INSERT INTO {s}.commands (rollout, seq, command)
                 SELECT $1, COALESCE(MAX(seq), 0) + 1, $2 FROM {s}.commands WHERE rollout = $1
                 RETURNING seq"
            ),
            commands: format!("SELECT seq, command FROM {s}.commands WHERE rollout = $1 AND seq > $2 ORDER BY seq"),
            lease: format!("SELECT holder, token, expires_at_ms FROM {s}.leases WHERE target = $1"),
            lock_slot: format!(
                "INSERT INTO {s}.leases (target, holder, token, expires_at_ms, last_token) VALUES ($1, NULL, 0, 0, 0)
                 ON CONFLICT (target) DO UPDATE SET target = EXCLUDED.target
                 RETURNING holder, token, expires_at_ms, last_token"
            ),
            write_slot: format!(
                "UPDATE {s}.leases SET holder = $2, token = $3, expires_at_ms = $4, last_token = $5 WHERE target = $1"
            ),
            // Release is one statement: the lease goes only if it is still
            // the one released (the rule of `logic::release`).
            release: format!(
                "UPDATE {s}.leases SET holder = NULL, token = 0, expires_at_ms = 0
                 WHERE target = $1 AND holder = $2 AND token = $3"
            ),
            record_grant: format!(
                "INSERT INTO {s}.lease_grants (target, token, holder, granted_ms, previous_holder, previous_expires_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
            ),
        }
    }
}

/// A stored count as PostgreSQL's BIGINT.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A BIGINT read back as a count.
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A `(version, record)` row as the record, its version the row's.
fn record_of(row: &Row) -> Result<RolloutRecord> {
    let version: i64 = row.get(0);
    let Json(mut record): Json<RolloutRecord> = row
        .try_get(1)
        .map_err(|e| Error::provider_caused(PROVIDER, false, "a stored rollout record cannot be read", e))?;
    record.version = count(version);
    Ok(record)
}

impl PostgresStateStore {
    /// A store on `pg`'s schema. It must be migrated
    /// ([`Postgres::migrate`]) before the store is used.
    pub fn new(pg: Postgres) -> Self {
        PostgresStateStore {
            sql: Sql::new(pg.schema_name()),
            pg,
            command_poll: COMMAND_POLL,
        }
    }

    /// How often a driver looks for commands other processes sent (every
    /// second unless set): each look is one query.
    pub fn command_poll(mut self, every: Duration) -> Self {
        self.command_poll = every;
        self
    }

    /// The grants of `target`'s lease to a new holder, oldest first.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn lease_grants(&self, target: &str) -> Result<Vec<LeaseGrant>> {
        let client = self.pg.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT token, holder, granted_ms, previous_holder, previous_expires_at_ms
                     FROM {}.lease_grants WHERE target = $1 ORDER BY token",
                    self.pg.schema_name()
                ),
                &[&target],
            )
            .await
            .map_err(|e| db_err("read the lease grants", e))?;
        Ok(rows
            .iter()
            .map(|r| LeaseGrant {
                token: count(r.get(0)),
                holder: r.get(1),
                granted_ms: r.get(2),
                previous: r
                    .get::<_, Option<String>>(3)
                    .map(|holder| (holder, r.get::<_, Option<i64>>(4).unwrap_or(0))),
            })
            .collect())
    }

    async fn list(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<RolloutRecord>> {
        let client = self.pg.client().await?;
        let stmt = client
            .prepare_cached(sql)
            .await
            .map_err(|e| db_err("list rollout records", e))?;
        self.pg.sent("rollouts.list");
        let rows = client
            .query(&stmt, params)
            .await
            .map_err(|e| db_err("list rollout records", e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            // One damaged record affects only its own rollout, as in the
            // file store: listings leave it out and say so.
            match record_of(row) {
                Ok(r) => out.push(r),
                Err(e) => tracing::error!(error = %e, "a rollout record cannot be read; listings leave it out"),
            }
        }
        Ok(out)
    }

    /// Run `f` on `target`'s lease slot in a transaction holding its row's
    /// lock, and write the slot back when `f` says it changed; a token
    /// granted to a new holder is recorded with `now_ms`.
    async fn with_slot<T>(
        &self,
        target: &str,
        now_ms: UnixMillis,
        f: impl FnOnce(&mut LeaseSlot) -> Result<(T, bool)>,
    ) -> Result<T> {
        let mut client = self.pg.client().await?;
        self.pg.sent("BEGIN");
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_err("begin a lease change", e))?;
        let lock = tx
            .prepare_cached(&self.sql.lock_slot)
            .await
            .map_err(|e| db_err("lock the lease", e))?;
        self.pg.sent("leases.lock");
        let row = tx
            .query_one(&lock, &[&target])
            .await
            .map_err(|e| db_err("lock the lease", e))?;
        let holder: Option<String> = row.get(0);
        let mut slot = LeaseSlot {
            lease: holder.map(|holder| Lease {
                target: target.to_owned(),
                holder,
                token: count(row.get(1)),
                expires_at_ms: row.get(2),
            }),
            last_token: count(row.get(3)),
        };
        let before = slot.clone();
        let (out, changed) = f(&mut slot)?;
        if changed {
            let (holder, token, expires) = match &slot.lease {
                Some(l) => (Some(l.holder.as_str()), int(l.token), l.expires_at_ms),
                None => (None, 0, 0),
            };
            let write = tx
                .prepare_cached(&self.sql.write_slot)
                .await
                .map_err(|e| db_err("write the lease", e))?;
            self.pg.sent("leases.update");
            tx.execute(&write, &[&target, &holder, &token, &expires, &int(slot.last_token)])
                .await
                .map_err(|e| db_err("write the lease", e))?;
            if let Some(g) = logic::grant(&before, &slot, now_ms) {
                let insert = tx
                    .prepare_cached(&self.sql.record_grant)
                    .await
                    .map_err(|e| db_err("record the lease grant", e))?;
                let (previous_holder, previous_expires) = g.previous.unzip();
                self.pg.sent("lease_grants.insert");
                tx.execute(
                    &insert,
                    &[
                        &target,
                        &int(g.token),
                        &g.holder,
                        &now_ms,
                        &previous_holder,
                        &previous_expires,
                    ],
                )
                .await
                .map_err(|e| db_err("record the lease grant", e))?;
            }
        }
        self.pg.sent("COMMIT");
        tx.commit().await.map_err(|e| db_err("commit the lease change", e))?;
        Ok(out)
    }
}

#[async_trait]
impl StateStore for PostgresStateStore {
    async fn get(&self, id: &str) -> Result<Option<RolloutRecord>> {
        let client = self.pg.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.get)
            .await
            .map_err(|e| db_err("read a rollout record", e))?;
        self.pg.sent("rollouts.get");
        let row = client
            .query_opt(&stmt, &[&id])
            .await
            .map_err(|e| db_err("read a rollout record", e))?;
        row.as_ref()
            .map(record_of)
            .transpose()
            .map_err(|e| Error::provider(PROVIDER, false, format!("rollout {id}: {e}")))
    }

    async fn put(&self, record: &RolloutRecord, expected_version: Option<u64>) -> Result<u64> {
        let client = self.pg.client().await?;
        let sql = match expected_version {
            None => &self.sql.insert,
            Some(_) => &self.sql.update,
        };
        let stmt = client
            .prepare_cached(sql)
            .await
            .map_err(|e| db_err("write a rollout record", e))?;
        let active = !record.status.is_terminal();
        let token = int(record.lease_token);
        let expected = int(expected_version.unwrap_or(0));
        // $5: the creation time on insert, the expected version on update.
        let fifth = match expected_version {
            None => &record.created_ms,
            Some(_) => &expected,
        };
        self.pg.sent(if expected_version.is_none() {
            "rollouts.insert"
        } else {
            "rollouts.update"
        });
        let row = client
            .query_opt(
                &stmt,
                &[&record.id, &record.target, &active, &token, fifth, &Json(record)],
            )
            .await
            .map_err(|e| db_err("write a rollout record", e))?;
        if let Some(row) = row {
            return Ok(count(row.get(0)));
        }
        // Refused: say why, as every store does.
        self.pg.sent("rollouts.explain_refusal");
        let why = client
            .query_one(&self.sql.explain_refusal, &[&record.id, &record.target])
            .await
            .map_err(|e| db_err("read a refused write's record", e))?;
        let current: Option<i64> = why.get(0);
        let last_token: Option<i64> = why.get(1);
        logic::cas_check_versions(current.map(count), last_token.map(count), record, expected_version)?;
        // Both held when read again: the write lost a race that has ended.
        Err(Error::Conflict {
            what: format!("rollout {}: a concurrent write landed first", record.id),
        })
    }

    async fn list_active(&self) -> Result<Vec<RolloutRecord>> {
        self.list(&self.sql.list_active, &[]).await
    }

    async fn list_target(&self, target: &str) -> Result<Vec<RolloutRecord>> {
        self.list(&self.sql.list_target, &[&target]).await
    }

    async fn list_all(&self) -> Result<Vec<RolloutRecord>> {
        self.list(&self.sql.list_all, &[]).await
    }

    async fn send_command(&self, id: &str, command: &RolloutCommand) -> Result<u64> {
        let client = self.pg.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.send_command)
            .await
            .map_err(|e| db_err("send a command", e))?;
        let mut tries = 0;
        loop {
            self.pg.sent("commands.insert");
            match client.query_one(&stmt, &[&id, &Json(command)]).await {
                Ok(row) => return Ok(count(row.get(0))),
                // Another sender took the number: take the next one.
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
                        && tries < COMMAND_ATTEMPTS =>
                {
                    tries += 1;
                }
                Err(e) => return Err(db_err("send a command", e)),
            }
        }
    }

    async fn commands(&self, id: &str, after: u64) -> Result<Vec<(u64, RolloutCommand)>> {
        let client = self.pg.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.commands)
            .await
            .map_err(|e| db_err("read commands", e))?;
        self.pg.sent("commands.list");
        let rows = client
            .query(&stmt, &[&id, &int(after)])
            .await
            .map_err(|e| db_err("read commands", e))?;
        rows.iter()
            .map(|row| {
                let Json(command): Json<RolloutCommand> = row.try_get(1).map_err(|e| {
                    Error::provider_caused(PROVIDER, false, format!("a command for {id} cannot be read"), e)
                })?;
                Ok((count(row.get(0)), command))
            })
            .collect()
    }

    fn command_poll(&self) -> Option<Duration> {
        Some(self.command_poll)
    }

    async fn lease(&self, target: &str) -> Result<Option<Lease>> {
        let client = self.pg.client().await?;
        self.pg.sent("leases.get");
        let row = client
            .query_opt(&self.sql.lease, &[&target])
            .await
            .map_err(|e| db_err("read the lease", e))?;
        Ok(row.and_then(|row| {
            let holder: Option<String> = row.get(0);
            holder.map(|holder| Lease {
                target: target.to_owned(),
                holder,
                token: count(row.get(1)),
                expires_at_ms: row.get(2),
            })
        }))
    }

    async fn acquire_lease(&self, target: &str, holder: &str, ttl: Duration, now_ms: UnixMillis) -> Result<Lease> {
        self.with_slot(target, now_ms, |slot| {
            logic::acquire(slot, target, holder, ttl, now_ms).map(|l| (l, true))
        })
        .await
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now_ms: UnixMillis) -> Result<Lease> {
        self.with_slot(&lease.target, now_ms, |slot| {
            logic::renew(slot, lease, ttl, now_ms).map(|l| (l, true))
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let client = self.pg.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.release)
            .await
            .map_err(|e| db_err("release the lease", e))?;
        self.pg.sent("leases.release");
        client
            .execute(&stmt, &[&lease.target, &lease.holder, &int(lease.token)])
            .await
            .map_err(|e| db_err("release the lease", e))?;
        Ok(())
    }
}
