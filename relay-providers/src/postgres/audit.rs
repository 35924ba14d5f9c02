//! The audit chain as an append-only table.

use std::sync::Arc;

use async_trait::async_trait;
use relay_core::audit::{parse_line, AuditEntry, AuditEvent, AuditSink, ChainHead, ChainKey};
use relay_core::{Error, Result};

use super::{db_err, Postgres};

/// An [`AuditSink`] on PostgreSQL: every engine appending to one chain (by
/// name, in one schema) extends one chain, whatever process or host it
/// runs in.
///
/// An entry (the line relay writes, its hash over the entry and the
/// previous hash, keyed when built with [`PostgresAuditSink::keyed`]) and
/// the chain's head move together, in one transaction. While no other
/// writer has appended since this sink's last entry, that is one statement
/// (the head moved only if it is still the one the entry was chained to);
/// otherwise a transaction locks the head row, chains the entry to the
/// head it finds, writes both and commits. The head lives beside the
/// entries, so [`AuditSink::verify`] sees entries deleted from the end;
/// records anchor it too ([`relay_core::audit::check_anchors`]).
#[derive(Clone)]
pub struct PostgresAuditSink {
    pg: Postgres,
    chain: String,
    key: ChainKey,
    /// The head after this sink's last append: where the next one chains
    /// on, unless another writer appended since. Held through an append,
    /// so this sink's appends go one at a time, each chained onto the one
    /// before (the database would serialize them on the head row anyway).
    last: Arc<tokio::sync::Mutex<Option<ChainHead>>>,
    append_after: String,
    lock_head: String,
    insert: String,
    move_head: String,
    entries: String,
    head: String,
}

impl std::fmt::Debug for PostgresAuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresAuditSink")
            .field("schema", &self.pg.schema_name())
            .field("chain", &self.chain)
            .field("keyed", &self.key.is_keyed())
            .finish()
    }
}

impl PostgresAuditSink {
    /// The chain named `chain` in `pg`'s schema, hashed unkeyed (SHA-256).
    /// The schema must be migrated ([`Postgres::migrate`]).
    pub fn new(pg: Postgres, chain: impl Into<String>) -> Self {
        Self::keyed(pg, chain, ChainKey::none())
    }

    /// The chain named `chain`, hashed with HMAC-SHA256 under `key`: only a
    /// holder of the key can write entries that verify.
    pub fn keyed(pg: Postgres, chain: impl Into<String>, key: ChainKey) -> Self {
        let s = pg.schema_name().to_owned();
        PostgresAuditSink {
            pg,
            chain: chain.into(),
            key,
            last: Arc::default(),
            append_after: format!(
                "WITH moved AS (
                     UPDATE {s}.audit_heads SET seq = $2, hash = $3 WHERE chain = $1 AND seq = $4 AND hash = $5
                     RETURNING chain
                 )
                 INSERT INTO {s}.audit (chain, seq, line) SELECT chain, $2, $6 FROM moved"
            ),
            lock_head: format!(
                "INSERT INTO {s}.audit_heads (chain, seq, hash) VALUES ($1, 0, $2)
                 ON CONFLICT (chain) DO UPDATE SET chain = EXCLUDED.chain RETURNING seq, hash"
            ),
            insert: format!("INSERT INTO {s}.audit (chain, seq, line) VALUES ($1, $2, $3)"),
            move_head: format!("UPDATE {s}.audit_heads SET seq = $2, hash = $3 WHERE chain = $1"),
            entries: format!("SELECT seq, line FROM {s}.audit WHERE chain = $1 AND seq <= $2 ORDER BY seq"),
            head: format!("SELECT seq, hash FROM {s}.audit_heads WHERE chain = $1"),
        }
    }

    /// Chain `event` after `head` in one statement, if `head` is still the
    /// chain's; `None` when another writer moved it.
    async fn append_after(
        &self,
        head: &ChainHead,
        event: &AuditEvent,
        line: &mut Vec<u8>,
    ) -> Result<Option<ChainHead>> {
        let next = head.write_next_line_with(&self.key, event, line);
        let text = std::str::from_utf8(line).map_err(|e| not_utf8(&e))?;
        let client = self.pg.client().await?;
        let stmt = client
            .prepare_cached(&self.append_after)
            .await
            .map_err(|e| db_err("append an audit entry", e))?;
        self.pg.sent("audit.append");
        let moved = client
            .execute(
                &stmt,
                &[
                    &self.chain,
                    &seq(next.seq),
                    &next.hash,
                    &seq(head.seq),
                    &head.hash,
                    &text,
                ],
            )
            .await
            .map_err(|e| db_err("append an audit entry", e))?;
        Ok((moved == 1).then_some(next))
    }

    /// Chain `event` after the head the chain has, holding its lock.
    async fn append_locked(&self, event: &AuditEvent, line: &mut Vec<u8>) -> Result<ChainHead> {
        let mut client = self.pg.client().await?;
        self.pg.sent("BEGIN");
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_err("begin an audit append", e))?;
        let lock = tx
            .prepare_cached(&self.lock_head)
            .await
            .map_err(|e| db_err("lock the audit head", e))?;
        self.pg.sent("audit_heads.lock");
        let row = tx
            .query_one(&lock, &[&self.chain, &ChainHead::default().hash])
            .await
            .map_err(|e| db_err("lock the audit head", e))?;
        let head = Self::head_of(&row);
        let next = head.write_next_line_with(&self.key, event, line);
        let text = std::str::from_utf8(line).map_err(|e| not_utf8(&e))?;
        let insert = tx
            .prepare_cached(&self.insert)
            .await
            .map_err(|e| db_err("append an audit entry", e))?;
        self.pg.sent("audit.insert");
        tx.execute(&insert, &[&self.chain, &seq(next.seq), &text])
            .await
            .map_err(|e| db_err("append an audit entry", e))?;
        let advance = tx
            .prepare_cached(&self.move_head)
            .await
            .map_err(|e| db_err("move the audit head", e))?;
        self.pg.sent("audit_heads.update");
        tx.execute(&advance, &[&self.chain, &seq(next.seq), &next.hash])
            .await
            .map_err(|e| db_err("move the audit head", e))?;
        self.pg.sent("COMMIT");
        tx.commit().await.map_err(|e| db_err("commit an audit append", e))?;
        Ok(next)
    }

    /// The chain's entries up to `last`, in order.
    async fn entries_to(&self, last: i64) -> Result<Vec<AuditEntry>> {
        let client = self.pg.client().await?;
        self.pg.sent("audit.list");
        let rows = client
            .query(&self.entries, &[&self.chain, &last])
            .await
            .map_err(|e| db_err("read the audit chain", e))?;
        rows.iter()
            .enumerate()
            .map(|(i, row)| parse_line(row.get::<_, &str>(1).as_bytes(), i as u64 + 1))
            .collect()
    }

    fn head_of(row: &tokio_postgres::Row) -> ChainHead {
        ChainHead {
            seq: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
            hash: row.get(1),
        }
    }
}

#[async_trait]
impl AuditSink for PostgresAuditSink {
    async fn append(&self, event: &AuditEvent) -> Result<ChainHead> {
        let mut line = Vec::new();
        let mut last = self.last.lock().await;
        let next = match last.as_ref() {
            Some(head) => self.append_after(head, event, &mut line).await?,
            None => None,
        };
        let next = match next {
            Some(next) => next,
            None => self.append_locked(event, &mut line).await?,
        };
        *last = Some(next.clone());
        Ok(next)
    }

    async fn entries(&self) -> Result<Vec<AuditEntry>> {
        self.entries_to(i64::MAX).await
    }

    async fn verify(&self) -> Result<u64> {
        // The head first: entries appended after it was read are left out,
        // and entries missing below it show.
        let client = self.pg.client().await?;
        self.pg.sent("audit_heads.get");
        let head = client
            .query_opt(&self.head, &[&self.chain])
            .await
            .map_err(|e| db_err("read the audit head", e))?
            .map(|row| Self::head_of(&row));
        drop(client);
        let last = head
            .as_ref()
            .map_or(i64::MAX, |h| i64::try_from(h.seq).unwrap_or(i64::MAX));
        let entries = self.entries_to(last).await?;
        self.key.verify_chain(&entries, head.as_ref()).map(|h| h.seq)
    }
}

/// A sequence number as PostgreSQL's BIGINT.
fn seq(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn not_utf8(e: &std::str::Utf8Error) -> Error {
    Error::provider(super::PROVIDER, false, format!("an audit line is not UTF-8: {e}"))
}
