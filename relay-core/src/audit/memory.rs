//! An in-memory audit sink.

use std::sync::Mutex;

use async_trait::async_trait;

use super::{parse_line, write_line, AuditEntry, AuditEvent, AuditSink, ChainHead, ChainKey};
use crate::error::Result;

/// Keeps the chain in memory; for tests and simulations. Entries are kept
/// as the JSON lines a [`crate::JsonlAuditSink`] would write (a few hundred
/// bytes each), end to end in blocks, and read back on
/// [`AuditSink::entries`].
#[derive(Debug, Default)]
pub struct MemoryAuditSink {
    inner: Mutex<Chain>,
    key: ChainKey,
}

#[derive(Debug, Default)]
struct Chain {
    head: ChainHead,
    lines: Lines,
    /// The line being written, kept between appends for its allocation.
    scratch: Vec<u8>,
}

/// The sizes of [`Lines`]' blocks: the first, and the most a later one
/// doubles to.
const FIRST_BLOCK: usize = 4 * 1024;
const MAX_BLOCK: usize = 64 * 1024;

/// Lines stored end to end in blocks, each twice the last up to
/// [`MAX_BLOCK`] (a longer line gets a block of its own): a few
/// allocations for a rollout's entries instead of one per entry; a sink
/// with few entries stays small.
#[derive(Debug, Default)]
struct Lines {
    blocks: Vec<Vec<u8>>,
    /// Each line's block and its byte range there.
    spans: Vec<(usize, std::ops::Range<usize>)>,
}

impl Lines {
    fn push(&mut self, line: &[u8]) {
        let last = self.blocks.last().map_or(0, Vec::capacity);
        let room = self.blocks.last().map_or(0, |b| b.capacity() - b.len());
        if room < line.len() {
            let size = (2 * last).clamp(FIRST_BLOCK, MAX_BLOCK).max(line.len());
            self.blocks.push(Vec::with_capacity(size));
        }
        let i = self.blocks.len() - 1;
        let block = &mut self.blocks[i];
        let start = block.len();
        block.extend_from_slice(line);
        self.spans.push((i, start..block.len()));
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|(i, range)| &self.blocks[*i][range.clone()])
    }
}

impl MemoryAuditSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty sink whose entries are hashed under `key` (see [`ChainKey`]).
    pub fn keyed(key: ChainKey) -> Self {
        MemoryAuditSink { key, ..Self::default() }
    }

    /// Replace the stored entries (to simulate tampering in tests). The head
    /// the sink remembers is kept, so `verify` notices.
    pub fn overwrite_entries(&self, entries: Vec<AuditEntry>) {
        let (mut lines, mut line) = (Lines::default(), Vec::new());
        for e in &entries {
            line.clear();
            write_line(e, &mut line);
            lines.push(&line);
        }
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
        let next = head.write_next_line_with(&self.key, event, scratch);
        lines.push(scratch);
        head.clone_from(&next);
        Ok(next)
    }

    async fn entries(&self) -> Result<Vec<AuditEntry>> {
        parse(&self.lock().lines)
    }

    async fn verify(&self) -> Result<u64> {
        let g = self.lock();
        self.key.verify_chain(&parse(&g.lines)?, Some(&g.head)).map(|h| h.seq)
    }
}

fn parse(lines: &Lines) -> Result<Vec<AuditEntry>> {
    lines.iter().zip(1..).map(|(line, seq)| parse_line(line, seq)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_back_as_pushed_across_blocks() {
        let mut lines = Lines::default();
        // Short lines, one longer than any block, and lines that do not fit
        // what is left of a block.
        let pushed: Vec<Vec<u8>> = (0..400usize)
            .map(|i| {
                let len = match i {
                    7 => MAX_BLOCK + 5,
                    _ => 1 + (i * 37) % 900,
                };
                vec![b'a' + (i % 26) as u8; len]
            })
            .collect();
        for l in &pushed {
            lines.push(l);
        }
        let back: Vec<&[u8]> = lines.iter().collect();
        assert_eq!(back.len(), pushed.len());
        for (i, (b, p)) in back.iter().zip(&pushed).enumerate() {
            assert_eq!(*b, p.as_slice(), "line {i}");
        }
        let total: usize = pushed.iter().map(Vec::len).sum();
        assert!(
            lines.blocks.len() < 10,
            "{} blocks for {total} bytes in {} lines",
            lines.blocks.len(),
            pushed.len()
        );
        assert_eq!(
            lines.blocks[0].capacity(),
            FIRST_BLOCK,
            "a sink with few entries stays small"
        );
    }
}
