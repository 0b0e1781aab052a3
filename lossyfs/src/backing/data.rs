//! File contents: open, read, write, length changes and fsync, each write recorded in the
//! file's undo log.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::time::SystemTime;

use nix::fcntl::FallocateFlags;

use super::{errno, Backing, Handle};
use crate::undo::DataOp;

impl Backing {
    /// Opens file `ino`; `write` asks for a writable handle. Returns the handle number.
    pub fn open(&mut self, ino: u64, write: bool) -> io::Result<u64> {
        let path = self.abs(&self.rel(ino)?);
        // A writable handle is also readable: a write reads what it overwrites.
        let file = OpenOptions::new().read(true).write(write).open(path)?;
        Ok(self.add_handle(ino, file))
    }

    pub(super) fn add_handle(&mut self, ino: u64, file: File) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { ino, file });
        fh
    }

    /// Closes handle `fh`.
    pub fn release(&mut self, fh: u64) {
        self.handles.remove(&fh);
    }

    fn handle(&self, fh: u64) -> io::Result<&Handle> {
        self.handles.get(&fh).ok_or_else(|| errno(libc::EBADF))
    }

    /// Reads up to `size` bytes at `offset` (fewer at end of file).
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        if self.faults.io_errors {
            return Err(errno(libc::EIO));
        }
        let file = &self.handle(fh)?.file;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Writes `data` at `offset` through to the backing file, recording how to undo it.
    pub fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> io::Result<usize> {
        if self.faults.io_errors {
            return Err(errno(libc::EIO));
        }
        if self.faults.disk_full {
            return Err(errno(libc::ENOSPC));
        }
        let handle = self.handle(fh)?;
        if data.is_empty() {
            return Ok(0);
        }
        let ino = handle.ino;
        let op = DataOp::before_write(&handle.file, offset, data.len() as u64)?;
        handle.file.write_all_at(data, offset)?;
        self.record(ino, op);
        Ok(data.len())
    }

    /// Sets the length of file `ino` (through handle `fh` when given), recording how to undo it.
    pub fn set_len(&mut self, ino: u64, fh: Option<u64>, size: u64) -> io::Result<()> {
        let owned;
        let file = match fh.and_then(|fh| self.handles.get(&fh)) {
            Some(handle) => &handle.file,
            None => {
                owned = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(self.abs(&self.rel(ino)?))?;
                &owned
            }
        };
        let size_before = file.metadata()?.len();
        if self.faults.disk_full && size > size_before {
            return Err(errno(libc::ENOSPC));
        }
        if size == size_before {
            return Ok(());
        }
        let cost = DataOp::set_len_cost(size_before, size);
        let op = if self.fits(ino, cost) {
            Some(DataOp::before_set_len(file, size)?)
        } else {
            None
        };
        file.set_len(size)?;
        match op {
            Some(op) => self.record(ino, op),
            None => self.forget_file(ino, "a truncate over the pending bound"),
        }
        Ok(())
    }

    /// fallocate: plain allocation (mode 0, which may extend the file), KEEP_SIZE, and
    /// PUNCH_HOLE|KEEP_SIZE (RocksDB's close releases preallocated blocks past the end with it;
    /// a hole inside the file is recorded like a write of zeros) are passed through; the other
    /// modes are not supported (EOPNOTSUPP).
    pub fn fallocate(&mut self, fh: u64, offset: u64, length: u64, mode: i32) -> io::Result<()> {
        let flags = FallocateFlags::from_bits(mode).ok_or_else(|| errno(libc::EOPNOTSUPP))?;
        let keep = FallocateFlags::FALLOC_FL_KEEP_SIZE;
        let punch = keep | FallocateFlags::FALLOC_FL_PUNCH_HOLE;
        if !(flags.is_empty() || flags == keep || flags == punch) {
            return Err(errno(libc::EOPNOTSUPP));
        }
        if self.faults.disk_full && flags != punch {
            return Err(errno(libc::ENOSPC));
        }
        let handle = self.handle(fh)?;
        let ino = handle.ino;
        let size_before = handle.file.metadata()?.len();
        let off = i64::try_from(offset).map_err(|_| errno(libc::EFBIG))?;
        let len = i64::try_from(length).map_err(|_| errno(libc::EFBIG))?;
        let zeroed = offset
            .saturating_add(length)
            .min(size_before)
            .saturating_sub(offset);
        let punched = if flags == punch && zeroed > 0 {
            Some(DataOp::before_write(&handle.file, offset, zeroed)?)
        } else {
            None
        };
        nix::fcntl::fallocate(&handle.file, flags, off, len).map_err(io::Error::from)?;
        let size_after = handle.file.metadata()?.len();
        if let Some(op) = punched {
            self.record(ino, op);
        }
        if size_after != size_before {
            self.record(
                ino,
                DataOp::SetLen {
                    size_before,
                    size_after,
                    old: Vec::new(),
                },
            );
        }
        Ok(())
    }

    /// fsync or fdatasync of file `ino`: its writes so far survive a power loss. (Not passed on
    /// to the backing file system: the backing directory is the "disk".)
    pub fn fsync(&mut self, ino: u64) -> io::Result<()> {
        if self.faults.io_errors {
            return Err(errno(libc::EIO));
        }
        if let Some(undo) = self.files.remove(&ino) {
            self.pending_bytes -= undo.cost();
        }
        Ok(())
    }

    /// Whether an op of `cost` fits the pending budget next to what is pending already.
    fn fits(&self, ino: u64, cost: usize) -> bool {
        let own = self.files.get(&ino).map_or(0, |u| u.cost());
        self.pending_bytes - own + cost <= self.pending_bytes_max
    }

    /// Adds `op` to the undo log of `ino`. When the budget is full the file counts as synced
    /// (its log is dropped, and logged) rather than the state growing without bound.
    fn record(&mut self, ino: u64, op: DataOp) {
        let cost = op.cost();
        if self.pending_bytes + cost > self.pending_bytes_max {
            self.forget_file(ino, "the pending bound is reached");
            if self.pending_bytes + cost > self.pending_bytes_max {
                return;
            }
        }
        self.pending_bytes += cost;
        self.files.entry(ino).or_default().push(op);
    }

    /// Treats file `ino` as synced.
    fn forget_file(&mut self, ino: u64, why: &str) {
        if let Some(undo) = self.files.remove(&ino) {
            self.pending_bytes -= undo.cost();
            tracing::warn!(ino, why, "lossyfs: treating a file as synced");
        }
    }

    /// chmod of `ino`.
    pub fn chmod(&self, ino: u64, mode: u32) -> io::Result<()> {
        let path = self.abs(&self.rel(ino)?);
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
    }

    /// chown of `ino` (not following a symlink).
    pub fn chown(&self, ino: u64, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        std::os::unix::fs::lchown(self.abs(&self.rel(ino)?), uid, gid)
    }

    /// Sets the access and modification times of `ino`.
    pub fn set_times(
        &self,
        ino: u64,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> io::Result<()> {
        let mut times = fs::FileTimes::new();
        if let Some(t) = atime {
            times = times.set_accessed(t);
        }
        if let Some(t) = mtime {
            times = times.set_modified(t);
        }
        File::open(self.abs(&self.rel(ino)?))?.set_times(times)
    }
}
