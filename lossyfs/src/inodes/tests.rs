use std::path::Path;

use super::*;

#[test]
fn the_root_is_one_and_paths_keep_their_numbers() {
    let mut inodes = Inodes::default();
    assert_eq!(inodes.get(Path::new("")), Some(ROOT_INO));
    let a = inodes.ino_for(Path::new("a"));
    assert_ne!(a, ROOT_INO);
    assert_eq!(inodes.ino_for(Path::new("a")), a);
    assert_eq!(inodes.path(a), Some(Path::new("a")));
}

#[test]
fn a_rename_moves_the_numbers_of_a_directory_and_its_contents() {
    let mut inodes = Inodes::default();
    let d = inodes.ino_for(Path::new("d"));
    let f = inodes.ino_for(Path::new("d/f"));
    let other = inodes.ino_for(Path::new("dd"));
    let old_target = inodes.ino_for(Path::new("e"));
    inodes.rename(Path::new("d"), Path::new("e"));
    assert_eq!(inodes.path(d), Some(Path::new("e")));
    assert_eq!(inodes.path(f), Some(Path::new("e/f")));
    assert_eq!(
        inodes.path(other),
        Some(Path::new("dd")),
        "a name prefix is not a parent"
    );
    assert_eq!(inodes.path(old_target), None);
    assert_eq!(inodes.get(Path::new("d/f")), None);
}

#[test]
fn numbers_are_not_reused_after_a_reset() {
    let mut inodes = Inodes::default();
    let a = inodes.ino_for(Path::new("a"));
    inodes.reset();
    assert_eq!(inodes.path(a), None);
    assert_ne!(inodes.ino_for(Path::new("a")), a);
    assert_eq!(inodes.path(ROOT_INO), Some(Path::new("")));
}
