//! An in-memory audit sink.

use std::sync::Mutex;

use async_trait::async_trait;

use super::{parse_line, verify_chain, AuditEntry, AuditEvent, AuditSink, ChainHead};
use crate::error::Result;

/// Keeps the chain in memory; for tests and simulations. Entries are kept
/// as the JSON lines a [`crate::JsonlAuditSink`] would write (a few hundred
/// bytes each), and read back on [`AuditSink::entries`].
#[derive(Debug, Default)]
pub struct MemoryAuditSink {
    inner: Mutex<Chain>,
}

#[derive(Debug, Default)]
struct Chain {
    head: ChainHead,
    lines: Vec<Box<[u8]>>,
    /// The line being written, kept between appends for its allocation: a
    /// stored line is an exact copy of it.
    scratch: Vec<u8>,
}

impl MemoryAuditSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace the stored entries (to simulate tampering in tests). The head
    /// the sink remembers is kept, so `verify` notices.
    pub fn overwrite_entries(&self, entries: Vec<AuditEntry>) {
        let lines = entries
            .iter()
            .map(|e| serde_json::to_vec(e).unwrap_or_default().into_boxed_slice())
            .collect();
        self.lock().lines = lines;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Chain> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl AuditSink for MemoryAuditSink {
    async fn append(&self, event: &AuditEvent) -> Result<ChainHead> {
        let mut g = self.lock();
        let Chain { head, lines, scratch } = &mut *g;
        let next = head.write_next_line(event, scratch);
        lines.push(scratch.as_slice().into());
        head.clone_from(&next);
        Ok(next)
    }

    async fn entries(&self) -> Result<Vec<AuditEntry>> {
        parse(&self.lock().lines)
    }

    async fn verify(&self) -> Result<u64> {
        let g = self.lock();
        verify_chain(&parse(&g.lines)?, Some(&g.head)).map(|h| h.seq)
    }
}

fn parse(lines: &[Box<[u8]>]) -> Result<Vec<AuditEntry>> {
    lines.iter().zip(1..).map(|(line, seq)| parse_line(line, seq)).collect()
}
