//! The default audit sink: one JSON entry per line in an append-only file.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{verify_chain, AuditEntry, AuditEvent, AuditSink, ChainHead};
use crate::error::{Error, Result};

const PROVIDER: &str = "jsonl-audit";

/// Appends entries to a JSONL file. Opening an existing file verifies it and
/// continues its chain. Each append is flushed and, unless
/// [`JsonlAuditSink::sync_each_append`] is turned off, fsynced.
///
/// # Caveats
/// - One writer per file: the sink keeps the chain head in memory, so two
///   sinks (or processes) appending to the same file would fork the chain.
///   Clone the sink to share it within a process.
/// - `verify` also catches entries cut from the end of the file, because the
///   sink remembers the head it wrote; a freshly opened sink cannot know
///   about entries removed before it opened the file. Anchor the head
///   elsewhere (for example in the state store) when that matters.
#[derive(Debug, Clone)]
pub struct JsonlAuditSink {
    path: Arc<PathBuf>,
    inner: Arc<Mutex<Writer>>,
}

#[derive(Debug)]
struct Writer {
    file: File,
    head: ChainHead,
    sync: bool,
    /// The line being written, kept between appends for its allocation.
    line: Vec<u8>,
}

impl Writer {
    /// Seal `event` onto the chain and write its line.
    fn append(&mut self, path: &Path, event: &AuditEvent) -> Result<ChainHead> {
        let next = self.head.write_next_line(event, &mut self.line);
        self.line.push(b'\n');
        self.file.write_all(&self.line).map_err(|e| io_err(path, e))?;
        self.file.flush().map_err(|e| io_err(path, e))?;
        if self.sync {
            self.file.sync_data().map_err(|e| io_err(path, e))?;
        }
        // Advance only once the line is written, so a failed write does not
        // leave a gap in the chain.
        self.head.clone_from(&next);
        Ok(next)
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::provider(PROVIDER, false, format!("{}: {e}", path.display()))
}

fn read_entries(path: &Path) -> Result<Vec<AuditEntry>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path, e)),
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| io_err(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let entry: AuditEntry = serde_json::from_str(&line).map_err(|e| Error::AuditTampered {
            seq: out.last().map_or(1, |l: &AuditEntry| l.seq + 1),
            reason: format!("line {} is not a valid entry: {e}", i + 1),
        })?;
        out.push(entry);
    }
    Ok(out)
}

impl JsonlAuditSink {
    /// Open (or create) the log at `path`. An existing log must verify.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let head = verify_chain(&read_entries(&path)?, None)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        Ok(JsonlAuditSink {
            path: Arc::new(path),
            inner: Arc::new(Mutex::new(Writer {
                file,
                head,
                sync: true,
                line: Vec::new(),
            })),
        })
    }

    /// Whether every append is fsynced (default `true`). Turning it off
    /// trades durability of the last entries on power loss for speed: an
    /// append is then one write to the page cache, made from the calling
    /// task; a synced append waits for the disk on tokio's blocking pool.
    pub fn sync_each_append(self, sync: bool) -> Self {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).sync = sync;
        self
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl AuditSink for JsonlAuditSink {
    async fn append(&self, event: &AuditEvent) -> Result<ChainHead> {
        {
            let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if !w.sync {
                // A page-cache write: handing it to another thread would cost
                // more than the write.
                return w.append(&self.path, event);
            }
        }
        let (path, inner, event) = (self.path.clone(), self.inner.clone(), event.clone());
        tokio::task::spawn_blocking(move || inner.lock().unwrap_or_else(|p| p.into_inner()).append(&path, &event))
            .await
            .map_err(|e| io_err(&self.path, e))?
    }

    async fn entries(&self) -> Result<Vec<AuditEntry>> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || read_entries(&path))
            .await
            .map_err(|e| io_err(&self.path, e))?
    }

    async fn verify(&self) -> Result<u64> {
        let (path, inner) = (self.path.clone(), self.inner.clone());
        tokio::task::spawn_blocking(move || {
            let head = inner.lock().unwrap_or_else(|p| p.into_inner()).head.clone();
            verify_chain(&read_entries(&path)?, Some(&head)).map(|h| h.seq)
        })
        .await
        .map_err(|e| io_err(&self.path, e))?
    }
}
