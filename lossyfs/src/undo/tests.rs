use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;

use super::*;

fn file_with(content: &[u8]) -> (tempfile::TempDir, File) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, content).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    (dir, file)
}

fn contents(file: &File) -> Vec<u8> {
    let mut out = Vec::new();
    let mut f = file.try_clone().unwrap();
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut out).unwrap();
    out
}

fn write(undo: &mut FileUndo, file: &File, offset: u64, data: &[u8]) {
    undo.push(DataOp::before_write(file, offset, data.len() as u64).unwrap());
    file.write_all_at(data, offset).unwrap();
}

#[test]
fn appends_cost_no_saved_bytes_and_roll_back_to_the_synced_length() {
    let (_dir, file) = file_with(b"synced");
    let mut undo = FileUndo::default();
    write(&mut undo, &file, 6, b"-one");
    write(&mut undo, &file, 10, b"-two");
    assert_eq!(undo.cost(), 2 * OP_OVERHEAD_BYTES);
    assert_eq!(undo.new_bytes(), 8);
    undo.rollback(&file, Keep::NOTHING).unwrap();
    assert_eq!(contents(&file), b"synced");
}

#[test]
fn overwrites_get_their_old_bytes_back() {
    let (_dir, file) = file_with(b"abcdefgh");
    let mut undo = FileUndo::default();
    write(&mut undo, &file, 2, b"XY");
    write(&mut undo, &file, 6, b"ZZZZ");
    write(&mut undo, &file, 3, b"Q");
    assert_eq!(contents(&file), b"abXQefZZZZ");
    undo.rollback(&file, Keep::NOTHING).unwrap();
    assert_eq!(contents(&file), b"abcdefgh");
}

#[test]
fn a_torn_rollback_keeps_whole_writes_then_part_of_the_next() {
    let (_dir, file) = file_with(b"");
    let mut undo = FileUndo::default();
    write(&mut undo, &file, 0, b"first");
    write(&mut undo, &file, 5, b"second");
    write(&mut undo, &file, 11, b"third");
    let keep = Keep {
        ops: 1,
        torn_bytes: 3,
    };
    undo.rollback(&file, keep).unwrap();
    assert_eq!(contents(&file), b"firstsec");
}

#[test]
fn keeping_every_op_changes_nothing() {
    let (_dir, file) = file_with(b"x");
    let mut undo = FileUndo::default();
    write(&mut undo, &file, 1, b"yz");
    undo.rollback(
        &file,
        Keep {
            ops: 1,
            torn_bytes: 0,
        },
    )
    .unwrap();
    assert_eq!(contents(&file), b"xyz");
}

#[test]
fn truncates_and_extensions_are_undone() {
    let (_dir, file) = file_with(b"0123456789");
    let mut undo = FileUndo::default();
    undo.push(DataOp::before_set_len(&file, 4).unwrap());
    file.set_len(4).unwrap();
    write(&mut undo, &file, 4, b"ab");
    undo.push(DataOp::before_set_len(&file, 20).unwrap());
    file.set_len(20).unwrap();
    assert_eq!(contents(&file).len(), 20);
    undo.rollback(&file, Keep::NOTHING).unwrap();
    assert_eq!(contents(&file), b"0123456789");
}

#[test]
fn a_write_past_the_end_leaves_no_hole_after_rollback() {
    let (_dir, file) = file_with(b"ab");
    let mut undo = FileUndo::default();
    write(&mut undo, &file, 10, b"far");
    undo.rollback(&file, Keep::NOTHING).unwrap();
    assert_eq!(contents(&file), b"ab");
}
