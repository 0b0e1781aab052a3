//! lossyfs mounted for real (root with /dev/fuse only; otherwise each test prints why it is
//! skipped): the syscall patterns RocksDB uses go through the mount, a power loss follows, and
//! the backing directory shows what survived.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};

use lossyfs::{mount, Backing};

/// Why FUSE tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".to_string());
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Some(format!("/dev/fuse: {e}"));
    }
    // Root in a container may still be refused mount(2).
    let dir = tempfile::tempdir().ok()?;
    let backing = match Backing::new(dir.path(), 1 << 10) {
        Ok(backing) => backing,
        Err(e) => return Some(format!("backing dir: {e}")),
    };
    let mnt = tempfile::tempdir().ok()?;
    match mount::mount(backing, mnt.path()) {
        Ok(mounted) => mounted.unmount().err().map(|e| format!("unmount: {e}")),
        Err(e) => Some(format!("mount: {e}")),
    }
}

fn skip(test: &str) -> bool {
    match skip_reason() {
        Some(why) => {
            println!("skipping {test}: {why}");
            true
        }
        None => false,
    }
}

/// fsync of a directory, as RocksDB's FsyncWithDirOptions does it.
fn fsync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

#[test]
fn rocksdb_patterns_survive_a_power_loss_only_where_synced() {
    if skip("rocksdb_patterns_survive_a_power_loss_only_where_synced") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (backing_dir, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    fs::create_dir_all(&backing_dir).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    let mounted = mount::mount(Backing::new(&backing_dir, 1 << 24).unwrap(), &mnt).unwrap();

    let db = mnt.join("db");
    fs::create_dir(&db).unwrap();
    fsync_dir(&mnt);

    // LOCK: RocksDB takes an fcntl write lock on it (the kernel keeps FUSE locks locally).
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .open(db.join("LOCK"))
        .unwrap();
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: a valid fd and a valid flock struct.
    assert_eq!(
        unsafe { libc::fcntl(lock.as_raw_fd(), libc::F_SETLK, &fl) },
        0,
        "fcntl lock"
    );

    // WAL: append + fdatasync, then an unsynced append.
    let mut wal = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(db.join("000004.log"))
        .unwrap();
    fsync_dir(&db);
    // RocksDB preallocates with KEEP_SIZE.
    // SAFETY: a valid fd.
    assert_eq!(
        unsafe { libc::fallocate(wal.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 16) },
        0
    );
    wal.write_all(b"record-1;").unwrap();
    wal.sync_data().unwrap();
    wal.write_all(b"record-2;").unwrap();
    assert_eq!(
        fs::read(db.join("000004.log")).unwrap(),
        b"record-1;record-2;"
    );

    // CURRENT: write a temp file, fsync it, rename it into place, fsync the directory.
    let mut tmp = File::create(db.join("000005.dbtmp")).unwrap();
    tmp.write_all(b"MANIFEST-000005\n").unwrap();
    tmp.sync_all().unwrap();
    fs::rename(db.join("000005.dbtmp"), db.join("CURRENT")).unwrap();
    fsync_dir(&db);

    // An SST written and fsynced, but its directory never fsynced.
    let mut sst = File::create(db.join("000006.sst")).unwrap();
    sst.write_all(b"table").unwrap();
    sst.sync_all().unwrap();

    // The OPTIONS dance with no syncs at all: written, renamed over, both lost.
    fs::write(db.join("OPTIONS-000007.dbtmp"), b"opts").unwrap();
    fs::rename(db.join("OPTIONS-000007.dbtmp"), db.join("OPTIONS-000007")).unwrap();

    let stat = nix::sys::statvfs::statvfs(&mnt).unwrap();
    assert!(stat.blocks() > 0, "statfs through the mount");

    let status = mounted.backing().lock().status();
    assert_eq!(status.unsynced_files, 2, "{status:?}"); // the WAL tail and OPTIONS
                                                        // The node is killed: its files close.
    drop((lock, wal, tmp, sst));
    let report = mounted.backing().lock().power_loss(7, false);
    assert_eq!(report.bytes_dropped, 9 + 4, "{report:?}");

    let bdb = backing_dir.join("db");
    assert_eq!(fs::read(bdb.join("000004.log")).unwrap(), b"record-1;");
    assert_eq!(fs::read(bdb.join("CURRENT")).unwrap(), b"MANIFEST-000005\n");
    for gone in [
        "000006.sst",
        "OPTIONS-000007",
        "OPTIONS-000007.dbtmp",
        "000005.dbtmp",
    ] {
        assert!(!bdb.join(gone).exists(), "{gone} survived");
    }
    // The mount shows the same, not the kernel's cached view from before.
    assert_eq!(fs::read(db.join("000004.log")).unwrap(), b"record-1;");
    let mut listed: Vec<String> = fs::read_dir(&db)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, ["000004.log", "CURRENT", "LOCK"]);
    assert!(!mnt.join(".lossyfs").exists());

    // Writing goes on after the power loss.
    fs::write(db.join("after"), b"x").unwrap();
    assert_eq!(fs::read(bdb.join("after")).unwrap(), b"x");
    mounted.unmount().unwrap();
}

#[test]
fn large_writes_and_pwrites_roll_back_through_the_mount() {
    if skip("large_writes_and_pwrites_roll_back_through_the_mount") {
        return;
    }
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let (backing_dir, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    fs::create_dir_all(&backing_dir).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    let mounted = mount::mount(Backing::new(&backing_dir, 1 << 24).unwrap(), &mnt).unwrap();
    let synced: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let f = File::create(mnt.join("big")).unwrap();
    f.write_all_at(&synced, 0).unwrap();
    f.sync_all().unwrap();
    fsync_dir(&mnt);
    // An overwrite in the middle, an append past the end, a truncate: all unsynced.
    f.write_all_at(&[7u8; 200_000], 50_000).unwrap();
    f.write_all_at(b"tail", 400_000).unwrap();
    f.set_len(350_000).unwrap();
    drop(f);
    let status = mounted.backing().lock().status();
    assert_eq!(status.unsynced_files, 1, "{status:?}");
    assert!(
        status.pending_bytes >= 200_000,
        "the overwritten bytes are saved: {status:?}"
    );
    mounted.backing().lock().power_loss(3, false);
    assert!(
        fs::read(backing_dir.join("big")).unwrap() == synced,
        "backing dir"
    );
    assert!(
        fs::read(mnt.join("big")).unwrap() == synced,
        "through the mount"
    );
    mounted.unmount().unwrap();
}

#[test]
fn flock_excludes_a_second_open_file() {
    if skip("flock_excludes_a_second_open_file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (backing_dir, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    fs::create_dir_all(&backing_dir).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    let mounted = mount::mount(Backing::new(&backing_dir, 1 << 20).unwrap(), &mnt).unwrap();
    let a = File::create(mnt.join("LOCK")).unwrap();
    let b = File::open(mnt.join("LOCK")).unwrap();
    // SAFETY: valid fds.
    assert_eq!(
        unsafe { libc::flock(a.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    assert_eq!(
        unsafe { libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        -1
    );
    drop((a, b));
    mounted.unmount().unwrap();
}

#[test]
fn the_binary_mounts_and_obeys_the_control_socket() {
    if skip("the_binary_mounts_and_obeys_the_control_socket") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (backing_dir, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    let sock = dir.path().join("ctl.sock");
    fs::create_dir_all(&backing_dir).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    let bin = env!("CARGO_BIN_EXE_lossyfs");
    let mut child = Command::new(bin)
        .arg(&backing_dir)
        .arg(&mnt)
        .arg("--control")
        .arg(&sock)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("mounted"), "{line}");

    let ctl = |command: &str| {
        let out = Command::new(bin)
            .arg("ctl")
            .arg(&sock)
            .args(command.split(' '))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    fs::write(mnt.join("kept"), b"k").unwrap();
    File::open(&mnt).unwrap().sync_all().unwrap();
    File::options()
        .write(true)
        .open(mnt.join("kept"))
        .unwrap()
        .sync_all()
        .unwrap();
    fs::write(mnt.join("lost"), b"l").unwrap();
    assert!(ctl("status").starts_with("ok unsynced_files=1 unsynced_bytes=1 unsynced_dir_ops=1"));
    assert!(ctl("power-loss --seed 1 --torn").starts_with("ok seed=1 "));
    assert_eq!(fs::read(backing_dir.join("kept")).unwrap(), b"k");
    assert!(!backing_dir.join("lost").exists());
    assert!(ctl("disk-full on").starts_with("ok"));
    assert_eq!(
        fs::write(mnt.join("full"), b"x")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOSPC)
    );
    assert!(ctl("nonsense").starts_with("err"));

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(!sock.exists());
    assert!(
        fs::read_dir(&mnt).unwrap().next().is_none(),
        "still mounted"
    );
}
