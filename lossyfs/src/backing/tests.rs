//! The pending-state model, without FUSE: the calls the kernel would make, then a power loss,
//! then a look at the backing directory.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use super::*;
use crate::inodes::ROOT_INO;

fn setup(pending_bytes_max: usize) -> (tempfile::TempDir, Backing) {
    let dir = tempfile::tempdir().unwrap();
    let backing = Backing::new(dir.path(), pending_bytes_max).unwrap();
    (dir, backing)
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Creates `n` in `parent` with `data`; returns (ino, fh).
fn create_with(b: &mut Backing, parent: u64, n: &str, data: &[u8]) -> (u64, u64) {
    let c = b.create(parent, name(n), 0o644, true).unwrap();
    b.write(c.fh, 0, data).unwrap();
    (c.ino, c.fh)
}

fn read(dir: &Path, rel: &str) -> Option<Vec<u8>> {
    fs::read(dir.join(rel)).ok()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != META_DIR)
        .collect();
    v.sort();
    v
}

#[test]
fn synced_data_survives_and_unsynced_data_goes() {
    let (dir, mut b) = setup(1 << 20);
    let (ino, fh) = create_with(&mut b, ROOT_INO, "wal", b"synced;");
    b.fsync(ino).unwrap();
    b.fsyncdir(ROOT_INO).unwrap();
    b.write(fh, 7, b"lost").unwrap();
    assert_eq!(
        read(dir.path(), "wal").unwrap(),
        b"synced;lost",
        "writes go through"
    );
    let status = b.status();
    assert_eq!((status.unsynced_files, status.unsynced_bytes), (1, 4));
    let report = b.power_loss(1, false);
    assert_eq!(report.files_rolled_back, 1);
    assert_eq!(report.bytes_dropped, 4);
    assert_eq!(read(dir.path(), "wal").unwrap(), b"synced;");
    assert_eq!(b.status().unsynced_files, 0);
}

#[test]
fn a_file_whose_directory_was_not_fsynced_disappears_even_if_the_file_was() {
    let (dir, mut b) = setup(1 << 20);
    let (ino, _) = create_with(&mut b, ROOT_INO, "sst", b"data");
    b.fsync(ino).unwrap();
    assert_eq!(b.status().unsynced_dir_ops, 1);
    b.power_loss(1, false);
    assert_eq!(names(dir.path()), Vec::<String>::new());
}

#[test]
fn an_unlink_is_undone_until_the_directory_is_fsynced() {
    let (dir, mut b) = setup(1 << 20);
    let (ino, _) = create_with(&mut b, ROOT_INO, "old", b"keep me");
    b.fsync(ino).unwrap();
    b.fsyncdir(ROOT_INO).unwrap();
    b.unlink(ROOT_INO, name("old")).unwrap();
    assert_eq!(names(dir.path()), Vec::<String>::new());
    b.power_loss(1, false);
    assert_eq!(read(dir.path(), "old").unwrap(), b"keep me");

    b.unlink(ROOT_INO, name("old")).unwrap();
    b.fsyncdir(ROOT_INO).unwrap();
    b.power_loss(2, false);
    assert_eq!(names(dir.path()), Vec::<String>::new());
    assert_eq!(
        fs::read_dir(dir.path().join(TRASH_DIR)).unwrap().count(),
        0,
        "the trash is emptied"
    );
}

/// RocksDB's CURRENT pattern: write a temp file, fsync it, rename it over CURRENT, fsync the
/// directory.
#[test]
fn a_rename_over_a_file_is_undone_unless_the_directory_is_fsynced() {
    let (dir, mut b) = setup(1 << 20);
    let (cur, _) = create_with(&mut b, ROOT_INO, "CURRENT", b"MANIFEST-1\n");
    b.fsync(cur).unwrap();
    b.fsyncdir(ROOT_INO).unwrap();

    let (tmp, _) = create_with(&mut b, ROOT_INO, "000002.dbtmp", b"MANIFEST-2\n");
    b.fsync(tmp).unwrap();
    b.rename(
        ROOT_INO,
        name("000002.dbtmp"),
        ROOT_INO,
        name("CURRENT"),
        false,
    )
    .unwrap();
    assert_eq!(read(dir.path(), "CURRENT").unwrap(), b"MANIFEST-2\n");
    b.power_loss(1, false);
    assert_eq!(read(dir.path(), "CURRENT").unwrap(), b"MANIFEST-1\n");
    assert_eq!(
        names(dir.path()),
        vec!["CURRENT"],
        "the temp file was never durable"
    );

    let (tmp, _) = create_with(&mut b, ROOT_INO, "000003.dbtmp", b"MANIFEST-3\n");
    b.fsync(tmp).unwrap();
    b.rename(
        ROOT_INO,
        name("000003.dbtmp"),
        ROOT_INO,
        name("CURRENT"),
        false,
    )
    .unwrap();
    b.fsyncdir(ROOT_INO).unwrap();
    b.power_loss(2, false);
    assert_eq!(read(dir.path(), "CURRENT").unwrap(), b"MANIFEST-3\n");
    assert_eq!(names(dir.path()), vec!["CURRENT"]);
}

#[test]
fn a_renamed_file_keeps_its_unsynced_writes_pending() {
    let (dir, mut b) = setup(1 << 20);
    let (ino, fh) = create_with(&mut b, ROOT_INO, "a", b"one");
    b.fsync(ino).unwrap();
    b.fsyncdir(ROOT_INO).unwrap();
    b.rename(ROOT_INO, name("a"), ROOT_INO, name("b"), false)
        .unwrap();
    b.fsyncdir(ROOT_INO).unwrap();
    b.write(fh, 3, b"two").unwrap();
    b.power_loss(1, false);
    assert_eq!(read(dir.path(), "b").unwrap(), b"one");
}

#[test]
fn no_replace_refuses_an_existing_target() {
    let (_dir, mut b) = setup(1 << 20);
    create_with(&mut b, ROOT_INO, "a", b"");
    create_with(&mut b, ROOT_INO, "b", b"");
    let e = b
        .rename(ROOT_INO, name("a"), ROOT_INO, name("b"), true)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
}

#[test]
fn an_unsynced_truncate_is_undone() {
    let (dir, mut b) = setup(1 << 20);
    let (ino, _) = create_with(&mut b, ROOT_INO, "f", b"0123456789");
    b.fsync(ino).unwrap();
    b.fsyncdir(ROOT_INO).unwrap();
    b.set_len(ino, None, 3).unwrap();
    assert_eq!(read(dir.path(), "f").unwrap(), b"012");
    b.power_loss(1, false);
    assert_eq!(read(dir.path(), "f").unwrap(), b"0123456789");
}

#[test]
fn a_new_directory_goes_with_its_contents_unless_its_parent_is_fsynced() {
    let (dir, mut b) = setup(1 << 20);
    let (d, _) = b.mkdir(ROOT_INO, name("db"), 0o755).unwrap();
    let (f, _) = create_with(&mut b, d, "LOG", b"x");
    b.fsync(f).unwrap();
    b.fsyncdir(d).unwrap();
    b.power_loss(1, false);
    assert_eq!(names(dir.path()), Vec::<String>::new());

    let (d, _) = b.mkdir(ROOT_INO, name("db"), 0o755).unwrap();
    let (f, _) = create_with(&mut b, d, "LOG", b"y");
    b.fsync(f).unwrap();
    b.fsyncdir(d).unwrap();
    b.fsyncdir(ROOT_INO).unwrap();
    b.power_loss(2, false);
    assert_eq!(read(dir.path(), "db/LOG").unwrap(), b"y");
}

#[test]
fn rmdir_is_undone_until_the_parent_is_fsynced() {
    let (dir, mut b) = setup(1 << 20);
    b.mkdir(ROOT_INO, name("d"), 0o755).unwrap();
    b.fsyncdir(ROOT_INO).unwrap();
    b.rmdir(ROOT_INO, name("d")).unwrap();
    b.power_loss(1, false);
    assert!(dir.path().join("d").is_dir());
}

#[test]
fn a_torn_power_loss_keeps_a_prefix_of_the_writes_and_is_seeded() {
    let written: Vec<u8> = (0..200u8).collect();
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..20 {
        let (dir, mut b) = setup(1 << 20);
        let (ino, fh) = create_with(&mut b, ROOT_INO, "wal", b"");
        b.fsync(ino).unwrap();
        b.fsyncdir(ROOT_INO).unwrap();
        for chunk in 0..4u64 {
            let range = (chunk * 50) as usize..(chunk * 50 + 50) as usize;
            b.write(fh, chunk * 50, &written[range]).unwrap();
        }
        let report = b.power_loss(seed, true);
        let left = read(dir.path(), "wal").unwrap();
        assert_eq!(
            &written[..left.len()],
            &left[..],
            "seed {seed}: not a prefix"
        );
        assert_eq!(report.bytes_kept, left.len() as u64);
        assert_eq!(report.bytes_kept + report.bytes_dropped, 200);
        outcomes.insert(left.len());
    }
    assert!(
        outcomes.len() > 1,
        "the kept prefix does not depend on the seed"
    );

    let run = |seed| {
        let (dir, mut b) = setup(1 << 20);
        let (ino, fh) = create_with(&mut b, ROOT_INO, "wal", b"");
        b.fsync(ino).unwrap();
        b.fsyncdir(ROOT_INO).unwrap();
        b.write(fh, 0, &written).unwrap();
        b.power_loss(seed, true);
        read(dir.path(), "wal").unwrap()
    };
    assert_eq!(run(5), run(5));
}

#[test]
fn past_the_pending_bound_a_file_counts_as_synced() {
    let (dir, mut b) = setup(600);
    let (ino, fh) = create_with(&mut b, ROOT_INO, "f", &[b'a'; 1000]);
    b.fsync(ino).unwrap();
    b.fsyncdir(ROOT_INO).unwrap();
    b.write(fh, 0, &[b'b'; 100]).unwrap();
    assert_eq!(b.status().unsynced_files, 1);
    // Saving 1000 overwritten bytes does not fit in 600: the file counts as synced.
    b.write(fh, 0, &[b'c'; 1000]).unwrap();
    let status = b.status();
    assert_eq!(status.unsynced_files, 0);
    assert!(status.pending_bytes <= 600);
    b.power_loss(1, false);
    assert_eq!(read(dir.path(), "f").unwrap(), vec![b'c'; 1000]);
}

#[test]
fn clear_treats_everything_as_synced() {
    let (dir, mut b) = setup(1 << 20);
    create_with(&mut b, ROOT_INO, "f", b"data");
    b.clear();
    assert_eq!(b.status().unsynced_dir_ops, 0);
    b.power_loss(1, false);
    assert_eq!(read(dir.path(), "f").unwrap(), b"data");
}

#[test]
fn disk_full_and_io_errors_fail_writes_and_syncs() {
    let (_dir, mut b) = setup(1 << 20);
    let (ino, fh) = create_with(&mut b, ROOT_INO, "f", b"");
    b.set_disk_full(true);
    assert_eq!(
        b.write(fh, 0, b"x").unwrap_err().raw_os_error(),
        Some(libc::ENOSPC)
    );
    assert_eq!(
        b.create(ROOT_INO, name("g"), 0o644, true)
            .err()
            .map(|e| e.raw_os_error()),
        Some(Some(libc::ENOSPC))
    );
    b.set_disk_full(false);
    b.set_io_errors(true);
    assert_eq!(b.fsync(ino).unwrap_err().raw_os_error(), Some(libc::EIO));
    assert_eq!(
        b.fsyncdir(ROOT_INO).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    b.set_io_errors(false);
    assert_eq!(b.write(fh, 0, b"x").unwrap(), 1);
}

#[test]
fn the_meta_directory_is_hidden() {
    let (_dir, mut b) = setup(1 << 20);
    assert!(b.readdir(ROOT_INO).unwrap().is_empty());
    assert!(b.lookup(ROOT_INO, name(META_DIR)).is_err());
    assert!(b.mkdir(ROOT_INO, name(META_DIR), 0o755).is_err());
}

#[test]
fn fallocate_extends_undoably_and_a_punched_hole_is_refilled() {
    let (dir, mut b) = setup(1 << 20);
    let (ino, fh) = create_with(&mut b, ROOT_INO, "f", b"0123456789");
    b.fsync(ino).unwrap();
    b.fsyncdir(ROOT_INO).unwrap();
    b.fallocate(fh, 0, 100, 0).unwrap();
    assert_eq!(fs::metadata(dir.path().join("f")).unwrap().len(), 100);
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    b.fallocate(fh, 2, 4096, punch).unwrap();
    assert_eq!(&read(dir.path(), "f").unwrap()[..10], b"01\0\0\0\0\0\0\0\0");
    let e = b
        .fallocate(fh, 0, 10, libc::FALLOC_FL_COLLAPSE_RANGE)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
    b.power_loss(1, false);
    assert_eq!(read(dir.path(), "f").unwrap(), b"0123456789");
}
