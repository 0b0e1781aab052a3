//! Power loss (undo every unsynced change, or keep a torn prefix of each file's writes),
//! clear (treat everything as synced) and status.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::entries::remove_any;
use super::{Backing, TRASH_DIR};
use crate::dirlog::DirOp;
use crate::undo::{DataOp, Keep};

/// What is unsynced right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Files with unsynced writes.
    pub unsynced_files: usize,
    /// Bytes written to them since their last sync.
    pub unsynced_bytes: u64,
    /// Directory changes not yet made durable by an fsync of their directory.
    pub unsynced_dir_ops: usize,
    /// Memory held to undo it all (bounded by the pending bound).
    pub pending_bytes: usize,
}

/// What a power loss undid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PowerLossReport {
    /// Files whose unsynced writes were (wholly or partly) undone.
    pub files_rolled_back: usize,
    /// Written bytes that survived as part of a torn prefix.
    pub bytes_kept: u64,
    /// Written bytes undone.
    pub bytes_dropped: u64,
    /// Directory changes undone.
    pub dir_ops_undone: usize,
}

impl Backing {
    pub fn status(&self) -> Status {
        Status {
            unsynced_files: self.files.len(),
            unsynced_bytes: self.files.values().map(|u| u.new_bytes()).sum(),
            unsynced_dir_ops: self.dirs.len(),
            pending_bytes: self.pending_bytes,
        }
    }

    /// Forgets the pending state: everything written so far counts as synced.
    pub fn clear(&mut self) {
        self.files.clear();
        self.pending_bytes = 0;
        for op in self.dirs.drain_all() {
            self.finalize(&op);
        }
    }

    /// Loses power: every unsynced write is undone (with `torn`, a random prefix of each file's
    /// writes survives, the last one possibly in part), then every unsynced directory change,
    /// newest first. Inode numbers start afresh (the kernel looks everything up again).
    /// Deterministic for a given `seed` and history.
    pub fn power_loss(&mut self, seed: u64, torn: bool) -> PowerLossReport {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut report = PowerLossReport::default();
        let mut inos: Vec<u64> = self.files.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let Some(undo) = self.files.remove(&ino) else {
                continue;
            };
            let keep = if torn {
                torn_keep(&mut rng, undo.ops())
            } else {
                Keep::NOTHING
            };
            let kept = kept_bytes(undo.ops(), keep);
            let Some(rel) = self.inodes.path(ino).map(PathBuf::from) else {
                tracing::warn!(
                    ino,
                    "lossyfs: power loss: a file with unsynced writes has no path"
                );
                continue;
            };
            let result = OpenOptions::new()
                .write(true)
                .open(self.abs(&rel))
                .and_then(|file| undo.rollback(&file, keep));
            match result {
                Ok(()) => {
                    report.files_rolled_back += 1;
                    report.bytes_kept += kept;
                    report.bytes_dropped += undo.new_bytes() - kept;
                }
                Err(e) => tracing::warn!(?rel, %e, "lossyfs: power loss: rollback failed"),
            }
        }
        self.pending_bytes = 0;
        while let Some(op) = self.dirs.pop_newest() {
            self.undo_dir_op(op);
            report.dir_ops_undone += 1;
        }
        self.empty_trash();
        self.inodes.reset();
        report
    }

    /// Undoes one directory change. An undo never replaces an entry that exists now (one made
    /// durable later); the undone entry is dropped instead.
    fn undo_dir_op(&mut self, op: DirOp) {
        match op {
            DirOp::Created { parent, name } => {
                if let Some(rel) = self.undo_path(parent, &name) {
                    self.inodes.remove(&rel);
                    if let Err(e) = remove_any(&self.abs(&rel)) {
                        tracing::warn!(?rel, %e, "lossyfs: power loss: could not undo a create");
                    }
                }
            }
            DirOp::Removed {
                parent,
                name,
                trash,
            } => self.restore(&trash, self.undo_path(parent, &name)),
            DirOp::Renamed {
                from,
                from_name,
                to,
                to_name,
                overwritten,
            } => {
                let now = self.undo_path(to, &to_name);
                if let Some(now) = &now {
                    self.restore(now, self.undo_path(from, &from_name));
                }
                if let Some(trash) = overwritten {
                    self.restore(&trash, now);
                }
            }
        }
    }

    /// The current path of `name` in `parent`, if `parent` still has one.
    fn undo_path(&self, parent: u64, name: &OsStr) -> Option<PathBuf> {
        self.inodes.path(parent).map(|dir| dir.join(name))
    }

    /// Moves `from` back to `to` when `to` is free; otherwise drops `from`.
    fn restore(&mut self, from: &std::path::Path, to: Option<PathBuf>) {
        if fs::symlink_metadata(self.abs(from)).is_err() {
            return;
        }
        match to {
            Some(to) if fs::symlink_metadata(self.abs(&to)).is_err() => {
                if let Err(e) = self.move_entry(from, &to) {
                    tracing::warn!(?from, ?to, %e, "lossyfs: power loss: could not restore");
                }
            }
            _ => {
                self.inodes.remove(from);
                if let Err(e) = remove_any(&self.abs(from)) {
                    tracing::warn!(?from, %e, "lossyfs: power loss: could not drop an entry");
                }
            }
        }
    }

    fn empty_trash(&mut self) {
        let trash = self.abs(std::path::Path::new(TRASH_DIR));
        let entries = match fs::read_dir(&trash) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(%e, "lossyfs: could not read the trash");
                return;
            }
        };
        for entry in entries.flatten() {
            if let Err(e) = remove_any(&entry.path()) {
                tracing::warn!(%e, "lossyfs: could not empty the trash");
            }
        }
    }
}

/// A random surviving prefix: a number of whole ops, and part of the next if it is a write.
fn torn_keep(rng: &mut StdRng, ops: &[DataOp]) -> Keep {
    let whole = rng.gen_range(0..=ops.len());
    let torn_bytes = match ops.get(whole) {
        Some(DataOp::Write { len, .. }) if *len > 0 => rng.gen_range(0..*len),
        _ => 0,
    };
    Keep {
        ops: whole,
        torn_bytes,
    }
}

/// Written bytes that `keep` lets survive.
fn kept_bytes(ops: &[DataOp], keep: Keep) -> u64 {
    let whole: u64 = ops.iter().take(keep.ops).map(DataOp::new_bytes).sum();
    whole
        + ops
            .get(keep.ops)
            .map_or(0, |op| keep.torn_bytes.min(op.new_bytes()))
}
