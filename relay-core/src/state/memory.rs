//! An in-process state store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::logic::{self, LeaseSlot};
use super::{Lease, RolloutRecord, StateStore};
use crate::clock::UnixMillis;
use crate::error::Result;

/// Keeps records and leases in memory. Shared by cloning an `Arc`; state is
/// lost with the process, so it suits tests and simulations.
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<String, RolloutRecord>,
    leases: HashMap<String, LeaseSlot>,
}

impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave Inner half-updated:
        // every mutation is a single insert.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl StateStore for MemoryStateStore {
    async fn get(&self, id: &str) -> Result<Option<RolloutRecord>> {
        Ok(self.lock().records.get(id).cloned())
    }

    async fn put(&self, record: &RolloutRecord, expected_version: Option<u64>) -> Result<u64> {
        let mut g = self.lock();
        let stored = logic::cas_put(
            g.records.get(&record.id),
            g.leases.get(&record.target),
            record,
            expected_version,
        )?;
        let v = stored.version;
        g.records.insert(record.id.clone(), stored);
        Ok(v)
    }

    async fn list_active(&self) -> Result<Vec<RolloutRecord>> {
        let mut v: Vec<_> = self
            .lock()
            .records
            .values()
            .filter(|r| !r.status.is_terminal())
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(v)
    }

    async fn list_target(&self, target: &str) -> Result<Vec<RolloutRecord>> {
        let mut v: Vec<_> = self
            .lock()
            .records
            .values()
            .filter(|r| r.target == target)
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(v)
    }

    async fn acquire_lease(&self, target: &str, holder: &str, ttl: Duration, now_ms: UnixMillis) -> Result<Lease> {
        let mut g = self.lock();
        logic::acquire(
            g.leases.entry(target.to_owned()).or_default(),
            target,
            holder,
            ttl,
            now_ms,
        )
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now_ms: UnixMillis) -> Result<Lease> {
        let mut g = self.lock();
        logic::renew(g.leases.entry(lease.target.clone()).or_default(), lease, ttl, now_ms)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let mut g = self.lock();
        if let Some(slot) = g.leases.get_mut(&lease.target) {
            logic::release(slot, lease);
        }
        Ok(())
    }
}
