//! Directory entries: create, mkdir, symlink, unlink, rmdir, rename and fsyncdir, each change
//! recorded in the directory log. Unlinked and overwritten entries are moved into the trash
//! (not deleted) so that a power loss can bring them back.

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{errno, Backing, DIR_OPS_MAX, TRASH_DIR};
use crate::dirlog::DirOp;

/// What `create` returns: the new inode, its metadata and an open handle.
pub struct Created {
    pub ino: u64,
    pub meta: Metadata,
    pub fh: u64,
}

/// Removes whatever is at `path` (a directory with its contents).
pub(super) fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

impl Backing {
    /// Creates (or, without `exclusive`, opens) file `name` in `parent`.
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        exclusive: bool,
    ) -> io::Result<Created> {
        if self.faults.disk_full {
            return Err(errno(libc::ENOSPC));
        }
        let rel = self.child(parent, name)?;
        let path = self.abs(&rel);
        let existed = exists(&path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .create_new(exclusive)
            .mode(mode & 0o7777)
            .open(&path)?;
        let meta = file.metadata()?;
        if !existed {
            self.push_dir_op(DirOp::Created {
                parent,
                name: name.to_os_string(),
            });
        }
        let ino = self.inodes.ino_for(&rel);
        let fh = self.add_handle(ino, file);
        Ok(Created { ino, meta, fh })
    }

    /// Makes directory `name` in `parent`.
    pub fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32) -> io::Result<(u64, Metadata)> {
        if self.faults.disk_full {
            return Err(errno(libc::ENOSPC));
        }
        let rel = self.child(parent, name)?;
        let path = self.abs(&rel);
        DirBuilder::new().mode(mode & 0o7777).create(&path)?;
        self.push_dir_op(DirOp::Created {
            parent,
            name: name.to_os_string(),
        });
        Ok((self.inodes.ino_for(&rel), fs::symlink_metadata(path)?))
    }

    /// Makes symlink `name` in `parent` pointing at `target`.
    pub fn symlink(
        &mut self,
        parent: u64,
        name: &OsStr,
        target: &Path,
    ) -> io::Result<(u64, Metadata)> {
        let rel = self.child(parent, name)?;
        let path = self.abs(&rel);
        std::os::unix::fs::symlink(target, &path)?;
        self.push_dir_op(DirOp::Created {
            parent,
            name: name.to_os_string(),
        });
        Ok((self.inodes.ino_for(&rel), fs::symlink_metadata(path)?))
    }

    /// Unlinks file `name` from `parent` (into the trash until `parent` is fsynced).
    pub fn unlink(&mut self, parent: u64, name: &OsStr) -> io::Result<()> {
        let rel = self.child(parent, name)?;
        if fs::symlink_metadata(self.abs(&rel))?.is_dir() {
            return Err(errno(libc::EISDIR));
        }
        let trash = self.to_trash(&rel)?;
        self.push_dir_op(DirOp::Removed {
            parent,
            name: name.to_os_string(),
            trash,
        });
        Ok(())
    }

    /// Removes empty directory `name` from `parent` (into the trash until `parent` is fsynced).
    pub fn rmdir(&mut self, parent: u64, name: &OsStr) -> io::Result<()> {
        let rel = self.child(parent, name)?;
        let path = self.abs(&rel);
        if !fs::symlink_metadata(&path)?.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        if fs::read_dir(&path)?.next().is_some() {
            return Err(errno(libc::ENOTEMPTY));
        }
        let trash = self.to_trash(&rel)?;
        self.push_dir_op(DirOp::Removed {
            parent,
            name: name.to_os_string(),
            trash,
        });
        Ok(())
    }

    /// Renames `parent/name` to `new_parent/new_name`, replacing what is there (into the trash)
    /// unless `no_replace`.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> io::Result<()> {
        let from = self.child(parent, name)?;
        let to = self.child(new_parent, new_name)?;
        let source = fs::symlink_metadata(self.abs(&from))?;
        if from == to {
            return Ok(());
        }
        let overwritten = match fs::symlink_metadata(self.abs(&to)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
            Ok(_) if no_replace => return Err(errno(libc::EEXIST)),
            Ok(target) => {
                check_replace(&source, &target, &self.abs(&to))?;
                Some(self.to_trash(&to)?)
            }
        };
        if let Err(e) = fs::rename(self.abs(&from), self.abs(&to)) {
            if let Some(trash) = &overwritten {
                self.move_entry(trash, &to)?;
            }
            return Err(e);
        }
        self.inodes.rename(&from, &to);
        self.push_dir_op(DirOp::Renamed {
            from: parent,
            from_name: name.to_os_string(),
            to: new_parent,
            to_name: new_name.to_os_string(),
            overwritten,
        });
        Ok(())
    }

    /// fsync of directory `ino`: its entry changes so far survive a power loss.
    pub fn fsyncdir(&mut self, ino: u64) -> io::Result<()> {
        if self.faults.io_errors {
            return Err(errno(libc::EIO));
        }
        for op in self.dirs.fsync(ino) {
            self.finalize(&op);
        }
        Ok(())
    }

    /// Records a directory op, keeping the log within `DIR_OPS_MAX`.
    fn push_dir_op(&mut self, op: DirOp) {
        self.dirs.push(op);
        while self.dirs.len() > DIR_OPS_MAX {
            if let Some(old) = self.dirs.pop_oldest() {
                tracing::warn!("lossyfs: directory log full, treating its oldest change as synced");
                self.finalize(&old);
            }
        }
    }

    /// A durable op's trash entry is deleted for good (with any pending writes to it).
    pub(super) fn finalize(&mut self, op: &DirOp) {
        if let Some(trash) = op.trash() {
            self.delete_trash(trash);
        }
    }

    pub(super) fn delete_trash(&mut self, trash: &Path) {
        let inos: Vec<u64> = self.files.keys().copied().collect();
        for ino in inos {
            if self.inodes.path(ino).is_some_and(|p| p.starts_with(trash)) {
                if let Some(undo) = self.files.remove(&ino) {
                    self.pending_bytes -= undo.cost();
                }
            }
        }
        self.inodes.remove(trash);
        if let Err(e) = remove_any(&self.abs(trash)) {
            tracing::warn!(?trash, %e, "lossyfs: could not delete a trash entry");
        }
    }

    /// Moves the entry at `rel` into the trash; returns its trash path.
    fn to_trash(&mut self, rel: &Path) -> io::Result<PathBuf> {
        self.trash_seq += 1;
        let trash = Path::new(TRASH_DIR).join(self.trash_seq.to_string());
        self.move_entry(rel, &trash)?;
        Ok(trash)
    }

    /// Renames `from` to `to` (both relative) in the backing directory and in the inode map.
    pub(super) fn move_entry(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(self.abs(from), self.abs(to))?;
        self.inodes.rename(from, to);
        Ok(())
    }
}

/// rename(2)'s rules for replacing `target` by `source`.
fn check_replace(source: &Metadata, target: &Metadata, target_path: &Path) -> io::Result<()> {
    match (source.is_dir(), target.is_dir()) {
        (true, false) => Err(errno(libc::ENOTDIR)),
        (false, true) => Err(errno(libc::EISDIR)),
        (true, true) if fs::read_dir(target_path)?.next().is_some() => Err(errno(libc::ENOTEMPTY)),
        _ => Ok(()),
    }
}
