//! The embedded default state store: one JSON file per record and per lease,
//! written atomically (temp file, fsync, rename, fsync of the directory) and
//! serialized across processes by an advisory lock on `<dir>/.lock`.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::logic::{self, LeaseSlot};
use super::{Lease, RolloutCommand, RolloutRecord, StateStore};
use crate::clock::UnixMillis;
use crate::error::{Error, Result};

const PROVIDER: &str = "file-state";

/// Stores records in a directory. Several stores (in one process or many)
/// may share the directory: every operation holds an exclusive file lock.
#[derive(Debug, Clone)]
pub struct FileStateStore {
    dir: Arc<PathBuf>,
    /// How often a driver looks for commands other processes queued.
    command_poll: Duration,
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    let retryable = matches!(
        e.kind(),
        ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut
    );
    Error::provider(PROVIDER, retryable, format!("{}: {e}", path.display()))
}

/// File names that cannot escape the directory whatever the id or target.
fn file_name(key: &str) -> String {
    let mut s = String::with_capacity(key.len() + 5);
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02x}"));
        }
    }
    s.push_str(".json");
    s
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| corrupt(path, e)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, e)),
    }
}

/// The error for a file that does not parse: it names the file and what to
/// do about it.
fn corrupt(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::provider(
        PROVIDER,
        false,
        format!(
            "{} is corrupt ({e}); restore it from a backup, or move it aside (other records are not affected)",
            path.display()
        ),
    )
}

/// A record file of a [`FileStateStore`] that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedRecord {
    /// The file.
    pub path: PathBuf,
    /// Why it cannot be read, and what to do.
    pub error: String,
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::provider(PROVIDER, false, e))?;
    let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(&bytes).map_err(|e| io_err(&tmp, e))?;
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    // Make the rename itself durable.
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))
}

impl FileStateStore {
    /// A store in `dir`, created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        for sub in ["records", "leases", "commands"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(|e| io_err(&p, e))?;
        }
        Ok(FileStateStore {
            dir: Arc::new(dir),
            command_poll: Duration::from_secs(1),
        })
    }

    /// Look for commands other processes queued this often (default: every
    /// second).
    pub fn command_poll(mut self, every: Duration) -> Self {
        self.command_poll = every;
        self
    }

    /// The directory this store writes to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn record_path(dir: &Path, id: &str) -> PathBuf {
        dir.join("records").join(file_name(id))
    }

    fn lease_path(dir: &Path, target: &str) -> PathBuf {
        dir.join("leases").join(file_name(target))
    }

    fn commands_path(dir: &Path, id: &str) -> PathBuf {
        dir.join("commands").join(file_name(id))
    }

    /// Run `f` on a blocking thread while holding the directory lock.
    async fn locked<T: Send + 'static>(&self, f: impl FnOnce(&Path) -> Result<T> + Send + 'static) -> Result<T> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let lock_path = dir.join(".lock");
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| io_err(&lock_path, e))?;
            lock.lock().map_err(|e| io_err(&lock_path, e))?;
            let r = f(&dir);
            // Dropping the file releases the lock.
            drop(lock);
            r
        })
        .await
        .map_err(|e| Error::provider(PROVIDER, false, format!("state task failed: {e}")))?
    }

    /// The records `keep` keeps, oldest first, and the record files that
    /// cannot be read. One damaged file affects only its own rollout: the
    /// listings leave it out (and log it as an error, with what to do).
    fn scan(dir: &Path, keep: impl Fn(&RolloutRecord) -> bool) -> Result<(Vec<RolloutRecord>, Vec<DamagedRecord>)> {
        let rdir = dir.join("records");
        let (mut out, mut damaged) = (Vec::new(), Vec::new());
        for entry in fs::read_dir(&rdir).map_err(|e| io_err(&rdir, e))? {
            let path = entry.map_err(|e| io_err(&rdir, e))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match read_json::<RolloutRecord>(&path) {
                Ok(Some(r)) if keep(&r) => out.push(r),
                Ok(_) => {}
                Err(e) => damaged.push(DamagedRecord {
                    path,
                    error: e.to_string(),
                }),
            }
        }
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok((out, damaged))
    }

    fn list_where(dir: &Path, keep: impl Fn(&RolloutRecord) -> bool) -> Result<Vec<RolloutRecord>> {
        let (records, damaged) = Self::scan(dir, keep)?;
        for d in damaged {
            tracing::error!(path = %d.path.display(), error = %d.error, "a rollout record cannot be read; listings leave it out");
        }
        Ok(records)
    }

    /// The record files that cannot be read (corrupt, or unreadable), with
    /// why and what to do: what listings leave out.
    ///
    /// # Errors
    /// When the records directory itself cannot be read.
    pub async fn damaged(&self) -> Result<Vec<DamagedRecord>> {
        self.locked(|dir| Self::scan(dir, |_| false).map(|(_, damaged)| damaged))
            .await
    }

    async fn with_slot<T: Send + 'static>(
        &self,
        target: String,
        f: impl FnOnce(&mut LeaseSlot) -> Result<(T, bool)> + Send + 'static,
    ) -> Result<T> {
        self.locked(move |dir| {
            let path = Self::lease_path(dir, &target);
            let mut slot: LeaseSlot = read_json(&path)?.unwrap_or_default();
            let (out, changed) = f(&mut slot)?;
            if changed {
                write_json(&path, &slot)?;
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl StateStore for FileStateStore {
    async fn get(&self, id: &str) -> Result<Option<RolloutRecord>> {
        let id = id.to_owned();
        self.locked(move |dir| read_json(&Self::record_path(dir, &id))).await
    }

    async fn put(&self, record: &RolloutRecord, expected_version: Option<u64>) -> Result<u64> {
        let record = record.clone();
        self.locked(move |dir| {
            let path = Self::record_path(dir, &record.id);
            let existing: Option<RolloutRecord> = read_json(&path)?;
            let slot: Option<LeaseSlot> = read_json(&Self::lease_path(dir, &record.target))?;
            let stored = logic::cas_put(existing.as_ref(), slot.as_ref(), &record, expected_version)?;
            write_json(&path, &stored)?;
            Ok(stored.version)
        })
        .await
    }

    async fn list_active(&self) -> Result<Vec<RolloutRecord>> {
        self.locked(|dir| Self::list_where(dir, |r| !r.status.is_terminal()))
            .await
    }

    async fn list_target(&self, target: &str) -> Result<Vec<RolloutRecord>> {
        let target = target.to_owned();
        self.locked(move |dir| Self::list_where(dir, |r| r.target == target))
            .await
    }

    async fn list_all(&self) -> Result<Vec<RolloutRecord>> {
        self.locked(|dir| Self::list_where(dir, |_| true)).await
    }

    async fn send_command(&self, id: &str, command: &RolloutCommand) -> Result<u64> {
        let (id, command) = (id.to_owned(), command.clone());
        self.locked(move |dir| {
            let path = Self::commands_path(dir, &id);
            let mut queue: Vec<RolloutCommand> = read_json(&path)?.unwrap_or_default();
            queue.push(command);
            write_json(&path, &queue)?;
            Ok(queue.len() as u64)
        })
        .await
    }

    async fn commands(&self, id: &str, after: u64) -> Result<Vec<(u64, RolloutCommand)>> {
        let id = id.to_owned();
        self.locked(move |dir| {
            let queue: Vec<RolloutCommand> = read_json(&Self::commands_path(dir, &id))?.unwrap_or_default();
            Ok((1..).zip(queue).filter(|(seq, _)| *seq > after).collect())
        })
        .await
    }

    fn command_poll(&self) -> Option<Duration> {
        Some(self.command_poll)
    }

    async fn lease(&self, target: &str) -> Result<Option<Lease>> {
        let target = target.to_owned();
        self.locked(move |dir| {
            let slot: Option<LeaseSlot> = read_json(&Self::lease_path(dir, &target))?;
            Ok(slot.and_then(|s| s.lease))
        })
        .await
    }

    async fn acquire_lease(&self, target: &str, holder: &str, ttl: Duration, now_ms: UnixMillis) -> Result<Lease> {
        let (t, h) = (target.to_owned(), holder.to_owned());
        self.with_slot(target.to_owned(), move |slot| {
            logic::acquire(slot, &t, &h, ttl, now_ms).map(|l| (l, true))
        })
        .await
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now_ms: UnixMillis) -> Result<Lease> {
        let l = lease.clone();
        self.with_slot(lease.target.clone(), move |slot| {
            logic::renew(slot, &l, ttl, now_ms).map(|l| (l, true))
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let l = lease.clone();
        self.with_slot(lease.target.clone(), move |slot| Ok(((), logic::release(slot, &l))))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_cannot_escape() {
        assert_eq!(file_name("web-1"), "web-1.json");
        assert_eq!(file_name("../etc/passwd"), "%2e%2e%2fetc%2fpasswd.json");
    }
}
