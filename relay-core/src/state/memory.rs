//! An in-process state store.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::logic::{self, LeaseSlot};
use super::{CommandWaker, CommandWatch, Lease, LeaseHold, RolloutCommand, RolloutRecord, StateStore};
use crate::clock::UnixMillis;
use crate::error::Result;

/// Keeps records and leases in memory. Shared by cloning an `Arc`; state is
/// lost with the process, so it suits tests and simulations.
///
/// It keeps every record unless told to [`keep_finished`](Self::keep_finished)
/// only the latest few per target, which a process running rollouts for a
/// long time needs so its memory stays flat.
///
/// Its holders live in its process, so it [holds](StateStore::hold_lease)
/// their leases with no renewals: a lease lasts until it is released or the
/// rollout driving under it stops.
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    /// Shared with the [`LeaseHold`]s it gives out, which release their
    /// lease when dropped (and do nothing once the store is gone).
    inner: Arc<Mutex<Inner>>,
    keep_finished: Option<usize>,
}

#[derive(Default)]
struct Inner {
    records: HashMap<String, RolloutRecord>,
    /// Per target, the ids of its records: history and the check for an
    /// orphan at every start read one target's records, not every one.
    by_target: HashMap<String, Vec<String>>,
    leases: HashMap<String, LeaseSlot>,
    /// Per rollout, the commands queued for it, numbered from 1.
    commands: HashMap<String, Vec<RolloutCommand>>,
    /// Per rollout, who to wake when a command is queued.
    watchers: HashMap<String, CommandWaker>,
    /// Per target, the ids of its finished records, oldest first (kept only
    /// when finished records are limited).
    finished: HashMap<String, VecDeque<String>>,
}

impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keep at most `n` finished records per target: when another rollout
    /// of the target finishes, its oldest finished record is forgotten.
    /// Running records are always kept. History, drift and the DORA figures
    /// then see only the records kept (drift needs the last promoted one).
    pub fn keep_finished(mut self, n: usize) -> Self {
        self.keep_finished = Some(n);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// The records `keep` keeps, oldest first.
    fn list_where(&self, keep: impl Fn(&RolloutRecord) -> bool) -> Vec<RolloutRecord> {
        let mut v: Vec<_> = self.lock().records.values().filter(|r| keep(r)).cloned().collect();
        v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        v
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("records", &self.records.len())
            .field("targets", &self.by_target.len())
            .field("leases", &self.leases.len())
            .field("commands", &self.commands.len())
            .finish_non_exhaustive()
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock cannot leave Inner half-updated:
    // every mutation is inserts and removals with no panic point between.
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

fn release(inner: &mut Inner, lease: &Lease) {
    if let Some(slot) = inner.leases.get_mut(&lease.target) {
        logic::release(slot, lease);
    }
}

#[async_trait]
impl StateStore for MemoryStateStore {
    async fn get(&self, id: &str) -> Result<Option<RolloutRecord>> {
        Ok(self.lock().records.get(id).cloned())
    }

    async fn put(&self, record: &RolloutRecord, expected_version: Option<u64>) -> Result<u64> {
        let mut g = self.lock();
        let Inner {
            records,
            by_target,
            leases,
            finished,
            commands,
            ..
        } = &mut *g;
        // One lookup of the id serves the check and the write.
        let mut stored = records.get_mut(&record.id);
        let v = logic::cas_check(stored.as_deref(), leases.get(&record.target), record, expected_version)?;
        let finishes = record.status.is_terminal();
        // An update overwrites the stored copy in place, reusing its strings.
        let was_finished = match stored.as_mut() {
            Some(stored) => {
                let was = stored.status.is_terminal();
                stored.clone_from(record);
                stored.version = v;
                was
            }
            None => {
                let mut stored = record.clone();
                stored.version = v;
                records.insert(record.id.clone(), stored);
                by_target
                    .entry(record.target.clone())
                    .or_default()
                    .push(record.id.clone());
                false
            }
        };
        if let (Some(keep), true, false) = (self.keep_finished, finishes, was_finished) {
            let ids = finished.entry(record.target.clone()).or_default();
            ids.push_back(record.id.clone());
            while ids.len() > keep {
                if let Some(old) = ids.pop_front() {
                    records.remove(&old);
                    commands.remove(&old);
                    if let Some(of_target) = by_target.get_mut(&record.target) {
                        of_target.retain(|id| *id != old);
                    }
                }
            }
        }
        Ok(v)
    }

    async fn list_active(&self) -> Result<Vec<RolloutRecord>> {
        Ok(self.list_where(|r| !r.status.is_terminal()))
    }

    async fn list_target(&self, target: &str) -> Result<Vec<RolloutRecord>> {
        let g = self.lock();
        let ids = g.by_target.get(target).map(Vec::as_slice).unwrap_or_default();
        let mut v: Vec<_> = ids.iter().filter_map(|id| g.records.get(id)).cloned().collect();
        v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(v)
    }

    async fn list_all(&self) -> Result<Vec<RolloutRecord>> {
        Ok(self.list_where(|_| true))
    }

    async fn send_command(&self, id: &str, command: &RolloutCommand) -> Result<u64> {
        let (seq, wake) = {
            let mut g = self.lock();
            let queue = g.commands.entry(id.to_owned()).or_default();
            queue.push(command.clone());
            let seq = queue.len() as u64;
            (seq, g.watchers.get(id).cloned())
        };
        // Woken outside the lock: the driver reads the queue at once.
        if let Some(wake) = wake {
            wake.wake();
        }
        Ok(seq)
    }

    async fn commands(&self, id: &str, after: u64) -> Result<Vec<(u64, RolloutCommand)>> {
        let g = self.lock();
        let queue = g.commands.get(id).map(Vec::as_slice).unwrap_or_default();
        Ok((1..)
            .zip(queue)
            .filter(|(seq, _)| *seq > after)
            .map(|(seq, c)| (seq, c.clone()))
            .collect())
    }

    fn watch_commands(&self, id: &str, wake: CommandWaker) -> Option<CommandWatch> {
        let queued = {
            let mut g = self.lock();
            g.watchers.insert(id.to_owned(), wake.clone());
            g.commands.contains_key(id)
        };
        if queued {
            wake.wake();
        }
        let (store, id) = (Arc::downgrade(&self.inner), id.to_owned());
        Some(CommandWatch::new(move || {
            if let Some(inner) = store.upgrade() {
                lock(&inner).watchers.remove(&id);
            }
        }))
    }

    fn command_poll(&self) -> Option<Duration> {
        // Watched: no polling.
        None
    }

    async fn lease(&self, target: &str) -> Result<Option<Lease>> {
        Ok(self.lock().leases.get(target).and_then(|s| s.lease.clone()))
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
        // A lease never acquired here is refused as released, from an empty
        // slot (no map entry, and no key cloned, for that).
        let mut empty = LeaseSlot::default();
        let mut g = self.lock();
        let slot = g.leases.get_mut(&lease.target).unwrap_or(&mut empty);
        logic::renew(slot, lease, ttl, now_ms)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        release(&mut self.lock(), lease);
        Ok(())
    }

    fn hold_lease(&self, lease: &Lease) -> Option<LeaseHold> {
        let held = self
            .lock()
            .leases
            .get_mut(&lease.target)
            .is_some_and(|slot| logic::hold(slot, lease));
        if !held {
            return None;
        }
        let (store, lease) = (Arc::downgrade(&self.inner), lease.clone());
        Some(LeaseHold::new(move || {
            if let Some(inner) = store.upgrade() {
                release(&mut lock(&inner), &lease);
            }
        }))
    }
}
