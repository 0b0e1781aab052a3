//! The file system without FUSE: a backing directory plus what was changed in it since the
//! last fsyncs, so that `power_loss` can undo the unsynced part.
//!
//! Every operation is applied to the backing directory at once (so reads see it) and recorded:
//! data changes per file (`undo::FileUndo`), entry changes per directory (`dirlog::DirLog`).
//! The FUSE adapter (`fs.rs`) only translates requests into these calls; unit tests call them
//! directly.

mod data;
mod entries;
mod power;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io;
use std::path::{Path, PathBuf};

use crate::dirlog::DirLog;
use crate::inodes::Inodes;
use crate::undo::FileUndo;

pub use entries::Created;
pub use power::{PowerLossReport, Status};

/// Default bound of the memory kept to undo unsynced writes (saved bytes plus per-op overhead).
pub const PENDING_BYTES_MAX_DEFAULT: usize = 256 * 1024 * 1024;
/// Bound of the pending directory-op log; past it the oldest op counts as durable.
pub const DIR_OPS_MAX: usize = 100_000;
/// Name of lossyfs's own directory under the backing root (holds the trash); hidden from the
/// mount.
pub const META_DIR: &str = ".lossyfs";
/// Where unlinked and overwritten entries wait (under `META_DIR`) until their change is durable.
const TRASH_DIR: &str = ".lossyfs/trash";

/// Faults a later disk-fault nemesis switches on (the seam: `set_disk_full`, `set_io_errors`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Faults {
    /// Writes, extensions and creations fail with ENOSPC.
    pub disk_full: bool,
    /// Reads, writes and syncs fail with EIO.
    pub io_errors: bool,
}

/// An open file: the backing file and the inode it was opened as.
#[derive(Debug)]
struct Handle {
    ino: u64,
    file: File,
}

/// The backing directory and its unsynced state.
#[derive(Debug)]
pub struct Backing {
    root: PathBuf,
    inodes: Inodes,
    files: HashMap<u64, FileUndo>,
    dirs: DirLog,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    trash_seq: u64,
    pending_bytes: usize,
    pending_bytes_max: usize,
    faults: Faults,
}

/// An io::Error for errno `code`.
pub fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl Backing {
    /// Serves `root` (which must exist), with at most `pending_bytes_max` bytes of undo state.
    /// Leftovers of an earlier run's trash are deleted.
    pub fn new(root: &Path, pending_bytes_max: usize) -> io::Result<Backing> {
        let root = root.canonicalize()?;
        let trash = root.join(TRASH_DIR);
        if trash.exists() {
            fs::remove_dir_all(&trash)?;
        }
        fs::create_dir_all(&trash)?;
        Ok(Backing {
            root,
            inodes: Inodes::default(),
            files: HashMap::new(),
            dirs: DirLog::default(),
            handles: HashMap::new(),
            next_fh: 1,
            trash_seq: 0,
            pending_bytes: 0,
            pending_bytes_max,
            faults: Faults::default(),
        })
    }

    /// The backing root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn set_disk_full(&mut self, on: bool) {
        self.faults.disk_full = on;
    }

    pub fn set_io_errors(&mut self, on: bool) {
        self.faults.io_errors = on;
    }

    pub fn faults(&self) -> Faults {
        self.faults
    }

    /// The relative path of `ino`, or ENOENT.
    fn rel(&self, ino: u64) -> io::Result<PathBuf> {
        self.inodes
            .path(ino)
            .map(Path::to_path_buf)
            .ok_or_else(|| errno(libc::ENOENT))
    }

    /// The absolute backing path of a relative path.
    fn abs(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// The relative path of `name` in directory `parent`; lossyfs's own directory is not
    /// reachable.
    fn child(&self, parent: u64, name: &OsStr) -> io::Result<PathBuf> {
        let dir = self.rel(parent)?;
        if dir.as_os_str().is_empty() && name == META_DIR {
            return Err(errno(libc::EACCES));
        }
        Ok(dir.join(name))
    }

    /// Metadata of `ino` (not following a symlink).
    pub fn getattr(&self, ino: u64) -> io::Result<Metadata> {
        fs::symlink_metadata(self.abs(&self.rel(ino)?))
    }

    /// Looks `name` up in `parent`: its inode number and metadata.
    pub fn lookup(&mut self, parent: u64, name: &OsStr) -> io::Result<(u64, Metadata)> {
        let rel = self.child(parent, name).map_err(|_| errno(libc::ENOENT))?;
        let meta = fs::symlink_metadata(self.abs(&rel))?;
        Ok((self.inodes.ino_for(&rel), meta))
    }

    /// The entries of directory `ino` (without "." and ".."), with their numbers.
    pub fn readdir(
        &mut self,
        ino: u64,
    ) -> io::Result<Vec<(u64, fs::FileType, std::ffi::OsString)>> {
        let dir = self.rel(ino)?;
        let mut out = Vec::new();
        for entry in fs::read_dir(self.abs(&dir))? {
            let entry = entry?;
            let name = entry.file_name();
            if dir.as_os_str().is_empty() && name == META_DIR {
                continue;
            }
            let kind = entry.file_type()?;
            out.push((self.inodes.ino_for(&dir.join(&name)), kind, name));
        }
        Ok(out)
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> io::Result<PathBuf> {
        fs::read_link(self.abs(&self.rel(ino)?))
    }

    /// Space figures of the backing file system.
    pub fn statfs(&self) -> io::Result<nix::sys::statvfs::Statvfs> {
        nix::sys::statvfs::statvfs(&self.root).map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests;
