//! An in-memory audit sink.

use std::sync::Mutex;

use async_trait::async_trait;

use super::{verify_chain, AuditEntry, AuditEvent, AuditSink, ChainHead};
use crate::error::Result;

/// Keeps the chain in memory; for tests and simulations.
#[derive(Debug, Default)]
pub struct MemoryAuditSink {
    inner: Mutex<(ChainHead, Vec<AuditEntry>)>,
}

impl MemoryAuditSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace the stored entries (to simulate tampering in tests). The head
    /// the sink remembers is kept, so `verify` notices.
    pub fn overwrite_entries(&self, entries: Vec<AuditEntry>) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).1 = entries;
    }
}

#[async_trait]
impl AuditSink for MemoryAuditSink {
    async fn append(&self, event: &AuditEvent) -> Result<ChainHead> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let entry = g.0.seal(event.clone());
        g.1.push(entry);
        Ok(g.0.clone())
    }

    async fn entries(&self) -> Result<Vec<AuditEntry>> {
        Ok(self.inner.lock().unwrap_or_else(|p| p.into_inner()).1.clone())
    }

    async fn verify(&self) -> Result<u64> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        verify_chain(&g.1, Some(&g.0)).map(|h| h.seq)
    }
}
