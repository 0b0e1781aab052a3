//! The log of directory changes since each directory's last fsync.
//!
//! An entry change (create, unlink, rename) is durable once every directory it touched has been
//! fsynced after it (a rename touches two). Until then a power loss undoes it. Unlinked and
//! overwritten entries wait in the trash until their change is durable.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;

/// One directory-entry change, with what is needed to undo it. Directories are inode numbers
/// (see `Inodes`), so an op stays valid while its directory is renamed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirOp {
    /// `name` appeared in `parent` (file, directory, symlink).
    Created { parent: u64, name: OsString },
    /// `name` left `parent`; the entry waits at `trash` (relative to the backing root).
    Removed {
        parent: u64,
        name: OsString,
        trash: PathBuf,
    },
    /// `from/from_name` became `to/to_name`; what `to_name` named before waits at `overwritten`.
    Renamed {
        from: u64,
        from_name: OsString,
        to: u64,
        to_name: OsString,
        overwritten: Option<PathBuf>,
    },
}

impl DirOp {
    /// The directories that must be fsynced for this op to be durable.
    fn dirs(&self) -> Vec<u64> {
        match self {
            DirOp::Created { parent, .. } | DirOp::Removed { parent, .. } => vec![*parent],
            DirOp::Renamed { from, to, .. } if from == to => vec![*from],
            DirOp::Renamed { from, to, .. } => vec![*from, *to],
        }
    }

    /// The trash entry this op holds, to delete once it is durable.
    pub fn trash(&self) -> Option<&PathBuf> {
        match self {
            DirOp::Removed { trash, .. } => Some(trash),
            DirOp::Renamed { overwritten, .. } => overwritten.as_ref(),
            DirOp::Created { .. } => None,
        }
    }
}

#[derive(Debug)]
struct Pending {
    op: DirOp,
    unsynced: Vec<u64>,
}

/// Pending directory ops, oldest first.
#[derive(Debug, Default)]
pub struct DirLog {
    ops: VecDeque<Pending>,
}

impl DirLog {
    pub fn push(&mut self, op: DirOp) {
        let unsynced = op.dirs();
        self.ops.push_back(Pending { op, unsynced });
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Records an fsync of directory `dir`; returns the ops that became durable.
    pub fn fsync(&mut self, dir: u64) -> Vec<DirOp> {
        let mut durable = Vec::new();
        let mut kept = VecDeque::with_capacity(self.ops.len());
        for mut pending in self.ops.drain(..) {
            pending.unsynced.retain(|d| *d != dir);
            if pending.unsynced.is_empty() {
                durable.push(pending.op);
            } else {
                kept.push_back(pending);
            }
        }
        self.ops = kept;
        durable
    }

    /// Removes and returns the oldest op (made durable when the log is over its bound).
    pub fn pop_oldest(&mut self) -> Option<DirOp> {
        self.ops.pop_front().map(|p| p.op)
    }

    /// Removes and returns the newest op (undone first by a power loss).
    pub fn pop_newest(&mut self) -> Option<DirOp> {
        self.ops.pop_back().map(|p| p.op)
    }

    /// Removes every op (all treated as durable).
    pub fn drain_all(&mut self) -> Vec<DirOp> {
        self.ops.drain(..).map(|p| p.op).collect()
    }
}

#[cfg(test)]
mod tests;
