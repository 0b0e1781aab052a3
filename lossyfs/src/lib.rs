//! lossyfs: a pass-through FUSE file system that remembers what was written since each file's
//! last fsync (and each directory's entry changes since its last fsync) and, on command, loses
//! power: the unsynced part is undone in the backing directory, optionally keeping a torn
//! prefix of each file's writes, like lazyfs does for Jepsen. See README.md.

pub mod backing;
pub mod control;
pub mod dirlog;
pub mod fs;
pub mod inodes;
pub mod mount;
pub mod undo;

pub use backing::{Backing, PowerLossReport, Status, PENDING_BYTES_MAX_DEFAULT};
