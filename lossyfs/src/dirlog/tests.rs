use super::*;

fn created(parent: u64, name: &str) -> DirOp {
    DirOp::Created {
        parent,
        name: name.into(),
    }
}

#[test]
fn an_fsync_makes_the_ops_of_that_directory_durable() {
    let mut log = DirLog::default();
    log.push(created(1, "a"));
    log.push(created(2, "b"));
    assert_eq!(log.fsync(1), vec![created(1, "a")]);
    assert_eq!(log.len(), 1);
    assert!(log.fsync(1).is_empty());
    assert_eq!(log.fsync(2), vec![created(2, "b")]);
    assert!(log.is_empty());
}

#[test]
fn a_rename_between_directories_needs_both_fsynced() {
    let mut log = DirLog::default();
    let rename = DirOp::Renamed {
        from: 1,
        from_name: "a".into(),
        to: 2,
        to_name: "b".into(),
        overwritten: None,
    };
    log.push(rename.clone());
    assert!(log.fsync(2).is_empty());
    assert_eq!(log.fsync(1), vec![rename]);
}

#[test]
fn the_newest_op_is_undone_first() {
    let mut log = DirLog::default();
    log.push(created(1, "a"));
    log.push(created(1, "b"));
    assert_eq!(log.pop_newest(), Some(created(1, "b")));
    assert_eq!(log.pop_oldest(), Some(created(1, "a")));
    assert_eq!(log.pop_newest(), None);
}
