//! The audit chain as an append-only table.

use async_trait::async_trait;
use relay_core::audit::{parse_line, AuditEntry, AuditEvent, AuditSink, ChainHead, ChainKey};
use relay_core::{Error, Result};

use super::{db_err, Postgres};

/// An [`AuditSink`] on PostgreSQL: every engine appending to one chain (by
/// name, in one schema) extends one chain, whatever process or host it
/// runs in.
///
/// An append is one transaction: it locks the chain's head row, writes the
/// entry (the line relay writes, its hash over the entry and the previous
/// hash, keyed when built with [`PostgresAuditSink::keyed`]) and moves the
/// head. The head lives beside the entries, so [`AuditSink::verify`] sees
/// entries deleted from the end; records anchor it too
/// ([`relay_core::audit::check_anchors`]).
#[derive(Clone, Debug)]
pub struct PostgresAuditSink {
    pg: Postgres,
    chain: String,
    key: ChainKey,
    lock_head: String,
    insert: String,
    move_head: String,
    entries: String,
    head: String,
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

    /// The chain's entries up to `last`, in order.
    async fn entries_to(&self, last: i64) -> Result<Vec<AuditEntry>> {
        let client = self.pg.client().await?;
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
        let mut client = self.pg.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_err("begin an audit append", e))?;
        let lock = tx
            .prepare_cached(&self.lock_head)
            .await
            .map_err(|e| db_err("lock the audit head", e))?;
        let row = tx
            .query_one(&lock, &[&self.chain, &ChainHead::default().hash])
            .await
            .map_err(|e| db_err("lock the audit head", e))?;
        let head = Self::head_of(&row);
        let mut line = Vec::new();
        let next = head.write_next_line_with(&self.key, event, &mut line);
        let line = String::from_utf8(line)
            .map_err(|e| Error::provider(super::PROVIDER, false, format!("an audit line is not UTF-8: {e}")))?;
        let seq = i64::try_from(next.seq).unwrap_or(i64::MAX);
        let insert = tx
            .prepare_cached(&self.insert)
            .await
            .map_err(|e| db_err("append an audit entry", e))?;
        tx.execute(&insert, &[&self.chain, &seq, &line])
            .await
            .map_err(|e| db_err("append an audit entry", e))?;
        let advance = tx
            .prepare_cached(&self.move_head)
            .await
            .map_err(|e| db_err("move the audit head", e))?;
        tx.execute(&advance, &[&self.chain, &seq, &next.hash])
            .await
            .map_err(|e| db_err("move the audit head", e))?;
        tx.commit().await.map_err(|e| db_err("commit an audit append", e))?;
        Ok(next)
    }

    async fn entries(&self) -> Result<Vec<AuditEntry>> {
        self.entries_to(i64::MAX).await
    }

    async fn verify(&self) -> Result<u64> {
        // The head first: entries appended after it was read are left out,
        // and entries missing below it show.
        let client = self.pg.client().await?;
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
