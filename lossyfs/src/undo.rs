//! The per-file undo log: what was written to one file since its last fsync/fdatasync, with
//! the bytes each write overwrote, so that a power loss can put the file back (or keep a torn
//! prefix of the writes).
//!
//! Writes go through to the backing file at once; the log only remembers how to reverse them.
//! Appends cost no undo bytes (nothing was overwritten), so a WAL or a new SST is cheap.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bookkeeping cost charged to the pending budget per recorded operation, beyond its saved bytes.
pub const OP_OVERHEAD_BYTES: usize = 64;

/// One reversible change to a file's contents or length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataOp {
    /// `len` bytes written at `offset`; `old` holds what was at `[offset, offset + old.len())`
    /// before (only the part that was inside the file, whose length was `size_before`).
    Write {
        offset: u64,
        len: u64,
        size_before: u64,
        old: Vec<u8>,
    },
    /// The length changed from `size_before` to `size_after` (truncate, ftruncate, fallocate);
    /// when it shrank, `old` holds the cut-off bytes `[size_after, size_before)`.
    SetLen {
        size_before: u64,
        size_after: u64,
        old: Vec<u8>,
    },
}

impl DataOp {
    /// What this op costs the pending budget.
    pub fn cost(&self) -> usize {
        let saved = match self {
            DataOp::Write { old, .. } | DataOp::SetLen { old, .. } => old.len(),
        };
        saved + OP_OVERHEAD_BYTES
    }

    /// Bytes of new data this op put in the file (what a power loss would drop).
    pub fn new_bytes(&self) -> u64 {
        match self {
            DataOp::Write { len, .. } => *len,
            DataOp::SetLen { .. } => 0,
        }
    }

    /// Reads what a write of `len` bytes at `offset` is about to overwrite.
    pub fn before_write(file: &File, offset: u64, len: u64) -> io::Result<DataOp> {
        let size_before = file.metadata()?.len();
        let end = offset.saturating_add(len).min(size_before);
        let old = read_range(file, offset, end)?;
        Ok(DataOp::Write {
            offset,
            len,
            size_before,
            old,
        })
    }

    /// Reads what a change of length to `size_after` is about to cut off.
    pub fn before_set_len(file: &File, size_after: u64) -> io::Result<DataOp> {
        let size_before = file.metadata()?.len();
        let old = read_range(file, size_after, size_before)?;
        Ok(DataOp::SetLen {
            size_before,
            size_after,
            old,
        })
    }

    /// The bytes a `before_set_len` to `size_after` would save, computed without reading.
    pub fn set_len_cost(size_before: u64, size_after: u64) -> usize {
        let saved = size_before.saturating_sub(size_after);
        usize::try_from(saved)
            .unwrap_or(usize::MAX)
            .saturating_add(OP_OVERHEAD_BYTES)
    }

    /// Reverses this op on `file`, keeping the first `keep` bytes of a write (a torn write;
    /// 0 undoes it fully). The file must be in the state right after this op.
    fn undo(&self, file: &File, keep: u64) -> io::Result<()> {
        match self {
            DataOp::Write {
                offset,
                len,
                size_before,
                old,
            } => {
                let keep = keep.min(*len);
                let skip = usize::try_from(keep).unwrap_or(usize::MAX).min(old.len());
                file.write_all_at(&old[skip..], offset + skip as u64)?;
                if *size_before < offset + len {
                    // A write that starts past the old end and keeps nothing leaves no hole.
                    let kept_end = if keep == 0 { 0 } else { offset + keep };
                    file.set_len((*size_before).max(kept_end))?;
                }
                Ok(())
            }
            DataOp::SetLen {
                size_before,
                size_after,
                old,
            } => {
                file.set_len(*size_before)?;
                if size_after < size_before {
                    file.write_all_at(old, *size_after)?;
                }
                Ok(())
            }
        }
    }
}

/// Reads `[start, end)` of `file` (empty when `end <= start`).
fn read_range(file: &File, start: u64, end: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(end.saturating_sub(start))
        .map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, start)?;
    Ok(buf)
}

/// How much of a file's unsynced writes survive a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// The first `ops` operations survive whole.
    pub ops: usize,
    /// Of operation number `ops` (if it is a write), the first `torn_bytes` bytes survive too.
    pub torn_bytes: u64,
}

impl Keep {
    /// Nothing survives: the file goes back to its state at the last fsync.
    pub const NOTHING: Keep = Keep {
        ops: 0,
        torn_bytes: 0,
    };
}

/// The unsynced operations of one file, oldest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileUndo {
    ops: Vec<DataOp>,
    cost: usize,
}

impl FileUndo {
    pub fn push(&mut self, op: DataOp) {
        self.cost += op.cost();
        self.ops.push(op);
    }

    pub fn ops(&self) -> &[DataOp] {
        &self.ops
    }

    /// What this log costs the pending budget.
    pub fn cost(&self) -> usize {
        self.cost
    }

    /// Bytes of unsynced new data.
    pub fn new_bytes(&self) -> u64 {
        self.ops.iter().map(DataOp::new_bytes).sum()
    }

    /// Puts `file` back as it was at its last sync, except for what `keep` lets survive.
    pub fn rollback(&self, file: &File, keep: Keep) -> io::Result<()> {
        for op in self.ops.iter().skip(keep.ops + 1).rev() {
            op.undo(file, 0)?;
        }
        if let Some(op) = self.ops.get(keep.ops) {
            op.undo(file, keep.torn_bytes)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
