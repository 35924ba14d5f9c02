//! The default audit sink: one JSON entry per line in an append-only file.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{parse_line, AuditEntry, AuditEvent, AuditSink, ChainHead, ChainKey};
use crate::clock::{Clock, TokioClock};
use crate::error::{Error, Result};

const PROVIDER: &str = "jsonl-audit";

/// Appends entries to a JSONL file. Opening an existing file verifies it and
/// continues its chain. Each append is flushed and, unless
/// [`JsonlAuditSink::sync_each_append`] is turned off, fsynced.
///
/// # Guarantees
/// - Any number of writers — sinks in one process, or processes (one
///   `relayctl` per CI job) — append to one log as one chain: each append
///   holds an exclusive lock on the file, reads what the others appended
///   since (checking that it continues the chain), and chains its entry
///   after the last one.
/// - An append is all or nothing: when its write or sync fails, the bytes
///   it wrote are cut off again before it returns the error, so the file
///   ends with the last whole entry and the next append continues the
///   chain (no torn line, no repeated sequence number). Should the cut
///   fail too, the sink refuses further appends until the file is opened
///   again.
/// - A last line left interrupted (a crash or a full disk mid-write leaves
///   a line without its newline) is cut off, on open or by the next append
///   (which holds the lock, so no append is in progress), and an
///   `audit.repaired` entry says how many bytes were cut. A whole line that
///   does not verify is tampering, never repaired.
///
/// # Caveats
/// - `verify` catches entries cut from the end of the file up to the last
///   entry this sink wrote or saw; a freshly opened sink cannot know about
///   entries removed before it opened the file. Anchor the head elsewhere
///   (for example in the state store) when that matters.
/// - The lock is advisory (`flock`): every writer must be a
///   `JsonlAuditSink`.
#[derive(Debug, Clone)]
pub struct JsonlAuditSink {
    path: Arc<PathBuf>,
    inner: Arc<Mutex<Writer>>,
}

/// The file a [`JsonlAuditSink`] appends to, as the sink uses it: a seam
/// for tests that fail writes, syncs and truncations as a disk would
/// ([`JsonlAuditSink::open_with`]). `std::fs::File` implements it.
pub trait AuditFile: Send + fmt::Debug {
    /// Write all of `bytes` at the end of the file (it may write part of
    /// them and fail).
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Make what was written durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Cut the file back to `len` bytes, durably.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

impl AuditFile for File {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)?;
        self.flush()
    }

    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)?;
        self.sync_data()
    }
}

#[derive(Debug)]
struct Writer {
    file: Box<dyn AuditFile>,
    /// A read handle on the log: locked around each append, and read for
    /// what other writers appended.
    reader: File,
    /// Where the last whole entry this sink wrote or saw ends.
    len: u64,
    /// Whether the log is a regular file, whose length says what others
    /// appended (a log written to a device such as `/dev/null` is not
    /// read back).
    regular: bool,
    head: ChainHead,
    /// How entries are hashed.
    key: ChainKey,
    sync: bool,
    /// Set when a failed append could not be cut off again: the file may
    /// end in a partial line, so nothing more is appended until it is
    /// opened again (which repairs it).
    broken: Option<String>,
    /// The line being written, kept between appends for its allocation.
    line: Vec<u8>,
}

impl Writer {
    /// Seal `event` onto the chain after every entry in the file (whoever
    /// wrote them) and write its line, all or nothing.
    fn append(&mut self, path: &Path, event: &AuditEvent) -> Result<ChainHead> {
        if let Some(why) = &self.broken {
            return Err(io_err(
                path,
                format!("appends are refused until the log is opened again: {why}"),
            ));
        }
        self.locked(path, |w| {
            w.catch_up(path)?;
            w.write(path, event)
        })
    }

    /// Run `f` holding the log's exclusive lock.
    fn locked<T>(&mut self, path: &Path, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.reader.lock().map_err(|e| io_err(path, e))?;
        let r = f(self);
        // Closing the handle would release it too; the handle is kept.
        let _ = self.reader.unlock();
        r
    }

    /// Read what other writers appended since this sink last wrote or read,
    /// check that it continues the chain, and take its head. A partial
    /// last line (its writer died mid-append: the lock is held, so nobody
    /// writes now) is cut off and the repair recorded.
    fn catch_up(&mut self, path: &Path) -> Result<()> {
        if !self.regular {
            return Ok(());
        }
        let end = self.reader.metadata().map_err(|e| io_err(path, e))?.len();
        if end < self.len {
            return Err(Error::AuditTampered {
                seq: self.head.seq,
                reason: format!(
                    "the log is {end} bytes long, shorter than the {} bytes of entries this sink wrote or read: entries were cut from its end",
                    self.len
                ),
            });
        }
        if end == self.len {
            return Ok(());
        }
        let mut bytes = Vec::new();
        let mut reader = &self.reader;
        reader
            .seek(SeekFrom::Start(self.len))
            .and_then(|_| reader.take(end - self.len).read_to_end(&mut bytes))
            .map_err(|e| io_err(path, e))?;
        let (entries, whole) = parse_entries(&bytes, self.head.seq)?;
        self.head = self.key.verify_chain_from(&self.head, &entries)?;
        self.len += whole as u64;
        let torn = bytes.len() - whole;
        if torn == 0 {
            return Ok(());
        }
        self.file.truncate(self.len).map_err(|e| io_err(path, e))?;
        tracing::warn!(path = %path.display(), bytes = torn, "cut off an interrupted last line of the audit log");
        let repair = AuditEvent {
            at_ms: TokioClock::new().now_ms(),
            actor: PROVIDER.to_owned(),
            rollout: String::new(),
            action: "audit.repaired".to_owned(),
            detail: crate::audit::detail!({
                "cut_bytes": torn,
                "after_seq": self.head.seq,
                "reason": "the last line was interrupted (no newline): an append that never completed",
            }),
        };
        self.write(path, &repair).map(|_| ())
    }

    /// Write `event`'s line after the head, all or nothing.
    fn write(&mut self, path: &Path, event: &AuditEvent) -> Result<ChainHead> {
        let next = self.head.write_next_line_with(&self.key, event, &mut self.line);
        self.line.push(b'\n');
        let written = self
            .file
            .append(&self.line)
            .and_then(|()| if self.sync { self.file.sync() } else { Ok(()) });
        if let Err(e) = written {
            // Whatever part of the line reached the file is cut off, so the
            // file still ends with the last whole entry and the next append
            // continues the chain from the head, which did not move.
            if let Err(t) = self.file.truncate(self.len) {
                self.broken = Some(format!("a failed append ({e}) could not be cut off ({t})"));
            }
            return Err(io_err(path, e));
        }
        self.len += self.line.len() as u64;
        self.head.clone_from(&next);
        Ok(next)
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::provider(PROVIDER, false, format!("{}: {e}", path.display()))
}

/// The entries of a log's bytes (those after entry `after`), and where its
/// last whole line ends: bytes after the last newline are an interrupted
/// write.
fn parse_entries(bytes: &[u8], after: u64) -> Result<(Vec<AuditEntry>, usize)> {
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut out = Vec::new();
    for line in bytes[..whole].split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.push(parse_line(line, after + out.len() as u64 + 1)?);
    }
    Ok((out, whole))
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(path, e)),
    }
}

/// Every entry of the log at `path`. A partial last line (an append in
/// progress, or interrupted) is not an entry yet.
fn read_entries(path: &Path) -> Result<Vec<AuditEntry>> {
    parse_entries(&read_bytes(path)?, 0).map(|(entries, _)| entries)
}

impl JsonlAuditSink {
    /// Open (or create) the log at `path`. An existing log must verify; an
    /// interrupted last line is cut off and the repair recorded (see the
    /// type's guarantees).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(path, &ChainKey::none(), |file| Box::new(file))
    }

    /// Open (or create) a log whose entries are hashed under `key` (see
    /// [`ChainKey`]): an existing log must verify under it.
    pub fn open_keyed(path: impl Into<PathBuf>, key: &ChainKey) -> Result<Self> {
        Self::open_with(path, key, |file| Box::new(file))
    }

    /// [`JsonlAuditSink::open_keyed`], writing through `wrap(file)`: for
    /// tests that fail the disk under the sink.
    pub fn open_with(
        path: impl Into<PathBuf>,
        key: &ChainKey,
        wrap: impl FnOnce(File) -> Box<dyn AuditFile>,
    ) -> Result<Self> {
        let path = path.into();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let reader = File::open(&path).map_err(|e| io_err(&path, e))?;
        let regular = reader.metadata().map_err(|e| io_err(&path, e))?.is_file();
        let mut writer = Writer {
            file: wrap(file),
            reader,
            len: 0,
            regular,
            head: ChainHead::default(),
            key: key.clone(),
            sync: true,
            broken: None,
            line: Vec::new(),
        };
        // The whole log is what this new sink has to catch up with.
        writer.locked(&path, |w| w.catch_up(&path))?;
        Ok(JsonlAuditSink {
            path: Arc::new(path),
            inner: Arc::new(Mutex::new(writer)),
        })
    }

    /// Verify the log at `path` without writing to it (as an auditor, or
    /// `relayctl verify-audit`, does): every line must be one relay wrote,
    /// chained to the one before, hashed with `key`. Returns the head. Reads under a shared
    /// lock, so an append in progress is not mistaken for an interrupted
    /// one; an interrupted last line (its writer died mid-append) is
    /// reported, not repaired — the next append or open repairs it.
    ///
    /// # Errors
    /// [`Error::AuditTampered`] naming the first entry that does not verify
    /// or the interrupted line; I/O errors.
    pub fn verify_file(path: impl AsRef<Path>, key: &ChainKey) -> Result<ChainHead> {
        let entries = Self::read_verified(path, key)?;
        Ok(entries.last().map_or_else(ChainHead::default, |e| ChainHead {
            seq: e.seq,
            hash: e.hash.clone(),
        }))
    }

    /// The entries of the log at `path`, verified as
    /// [`JsonlAuditSink::verify_file`] verifies them, without writing to it.
    ///
    /// # Errors
    /// As [`JsonlAuditSink::verify_file`].
    pub fn read_verified(path: impl AsRef<Path>, key: &ChainKey) -> Result<Vec<AuditEntry>> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        file.lock_shared().map_err(|e| io_err(path, e))?;
        let mut bytes = Vec::new();
        (&file).read_to_end(&mut bytes).map_err(|e| io_err(path, e))?;
        drop(file);
        let (entries, whole) = parse_entries(&bytes, 0)?;
        let head = key.verify_chain(&entries, None)?;
        if whole < bytes.len() {
            return Err(Error::AuditTampered {
                seq: head.seq + 1,
                reason: format!(
                    "the last {} bytes are an interrupted line (no newline): an append that never completed; the next append or open cuts it off and records the repair",
                    bytes.len() - whole
                ),
            });
        }
        Ok(entries)
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
            let (ours, key) = {
                let w = inner.lock().unwrap_or_else(|p| p.into_inner());
                (w.head.clone(), w.key.clone())
            };
            let entries = read_entries(&path)?;
            let head = key.verify_chain(&entries, None)?;
            // Other writers may have appended after this sink's last entry;
            // none may have been cut from before it.
            let Some(last) = usize::try_from(ours.seq).ok().and_then(|n| n.checked_sub(1)) else {
                return Ok(head.seq);
            };
            match entries.get(last) {
                None => Err(Error::AuditTampered {
                    seq: head.seq + 1,
                    reason: format!(
                        "log ends at entry {} but {} were written: entries were deleted from the end",
                        head.seq, ours.seq
                    ),
                }),
                Some(e) if e.hash != ours.hash => Err(Error::AuditTampered {
                    seq: ours.seq,
                    reason: "the entry is not the one this sink wrote or read: the chain was rewritten".to_owned(),
                }),
                Some(_) => Ok(head.seq),
            }
        })
        .await
        .map_err(|e| io_err(&self.path, e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_on_a_device_is_written_and_never_read_back() {
        // As the scale bench writes a million rollouts' entries to
        // /dev/null: its length never grows, and that is no tampering.
        let sink = JsonlAuditSink::open("/dev/null").unwrap().sync_each_append(false);
        let event = AuditEvent {
            at_ms: 1,
            actor: "a".into(),
            rollout: "r".into(),
            action: "x".into(),
            detail: Default::default(),
        };
        let mut w = sink.inner.lock().unwrap();
        for seq in 1..=3 {
            assert_eq!(w.append(sink.path(), &event).unwrap().seq, seq);
        }
    }
}
