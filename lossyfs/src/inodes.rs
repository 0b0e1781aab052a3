//! FUSE inode numbers for paths of the backing directory.
//!
//! A path keeps its number while it exists; a rename moves the number (and those of everything
//! below a renamed directory) to the new path, so a file keeps its number, and its pending
//! writes, across renames and its move into the trash. Numbers are never reused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The root's inode number, fixed by FUSE.
pub const ROOT_INO: u64 = 1;

#[derive(Debug)]
pub struct Inodes {
    by_ino: HashMap<u64, PathBuf>,
    by_path: HashMap<PathBuf, u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut inodes = Inodes {
            by_ino: HashMap::new(),
            by_path: HashMap::new(),
            next: ROOT_INO + 1,
        };
        inodes.reset();
        inodes
    }
}

impl Inodes {
    /// The path (relative to the backing root; "" is the root) of `ino`.
    pub fn path(&self, ino: u64) -> Option<&Path> {
        self.by_ino.get(&ino).map(PathBuf::as_path)
    }

    /// The number of `path`, if it has one.
    pub fn get(&self, path: &Path) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// The number of `path`, given a new one if it has none.
    pub fn ino_for(&mut self, path: &Path) -> u64 {
        if let Some(ino) = self.by_path.get(path) {
            return *ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_ino.insert(ino, path.to_path_buf());
        self.by_path.insert(path.to_path_buf(), ino);
        ino
    }

    /// Moves the numbers of `from` and everything below it to `to`; what was numbered at `to`
    /// loses its number.
    pub fn rename(&mut self, from: &Path, to: &Path) {
        self.remove(to);
        let moved: Vec<(PathBuf, u64)> = self
            .by_path
            .iter()
            .filter(|(path, _)| path.starts_with(from))
            .map(|(path, ino)| (path.clone(), *ino))
            .collect();
        for (old, ino) in moved {
            self.by_path.remove(&old);
            let new = match old.strip_prefix(from) {
                Ok(rest) if !rest.as_os_str().is_empty() => to.join(rest),
                _ => to.to_path_buf(),
            };
            self.by_ino.insert(ino, new.clone());
            self.by_path.insert(new, ino);
        }
    }

    /// Forgets `path` and everything below it.
    pub fn remove(&mut self, path: &Path) {
        let gone: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|p| p.starts_with(path))
            .cloned()
            .collect();
        for p in gone {
            if let Some(ino) = self.by_path.remove(&p) {
                self.by_ino.remove(&ino);
            }
        }
    }

    /// Forgets every number but the root's (after a power loss the kernel must look up again).
    pub fn reset(&mut self) {
        self.by_ino.clear();
        self.by_path.clear();
        self.by_ino.insert(ROOT_INO, PathBuf::new());
        self.by_path.insert(PathBuf::new(), ROOT_INO);
    }
}

#[cfg(test)]
mod tests;
