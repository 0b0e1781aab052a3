use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;

fn open() -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    (dir, store)
}

fn durable(store: &Store, group: GroupId, index: u64) -> Option<Vec<u8>> {
    let cf = store.shared.cf(CF_LOG).expect("cf");
    store
        .shared
        .db
        .get_cf(cf, log_key(group, index))
        .expect("get")
}

fn read_all(store: &Store, group: GroupId) -> Vec<(u64, Vec<u8>)> {
    store
        .log_range(group, 0, u64::MAX, |i, b| Ok((i, b.to_vec())))
        .expect("range")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_merges_concurrent_appends() {
    let (_dir, store) = open();
    const GROUPS: u32 = 16;
    const PER_GROUP: u64 = 100;
    let completed = Arc::new(AtomicUsize::new(0));
    let early = Arc::new(AtomicBool::new(false));

    let mut tasks = Vec::new();
    for g in 1..=GROUPS {
        let store = store.clone();
        let completed = completed.clone();
        let early = early.clone();
        tasks.push(tokio::spawn(async move {
            let mut waits = Vec::new();
            for i in 1..=PER_GROUP {
                let (tx, rx) = oneshot::channel();
                let check = store.clone();
                let completed = completed.clone();
                let early = early.clone();
                let done: Completion = Box::new(move |r| {
                    // Fired only after the synced write returned: the entry is in the DB.
                    if r.is_err() || durable(&check, g, i).is_none() || check.synced_writes() == 0 {
                        early.store(true, Ordering::SeqCst);
                    }
                    completed.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send(r);
                });
                store
                    .log_append(g, vec![(i, format!("{g}:{i}").into_bytes())], done)
                    .await
                    .expect("append");
                // Readable before it is durable.
                let got = store
                    .log_range(g, i, i + 1, |_, b| Ok(b.to_vec()))
                    .expect("read");
                assert_eq!(got, vec![format!("{g}:{i}").into_bytes()]);
                waits.push(rx);
                // Keep a few appends in flight per group, like openraft does.
                if waits.len() >= 4 {
                    waits.remove(0).await.expect("cb").expect("write");
                }
            }
            for w in waits {
                w.await.expect("cb").expect("write");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let appends = (GROUPS as u64 * PER_GROUP) as usize;
    assert_eq!(completed.load(Ordering::SeqCst), appends);
    assert!(
        !early.load(Ordering::SeqCst),
        "a callback fired before its write"
    );
    let synced = store.synced_writes();
    assert!(
        synced < appends as u64,
        "synced writes {synced} not fewer than appends {appends}"
    );
    for g in 1..=GROUPS {
        let all = read_all(&store, g);
        assert_eq!(all.len(), PER_GROUP as usize);
        assert!(all.iter().enumerate().all(|(n, (i, _))| *i == n as u64 + 1));
    }
    assert!(store.shared.pending.lock().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_and_purge_cover_pending_entries() {
    let (_dir, store) = open();
    let (tx, rx) = oneshot::channel();
    let entries = (1..=10).map(|i| (i, vec![i as u8])).collect();
    store
        .log_append(
            7,
            entries,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .await
        .expect("append");
    // Truncating right away (maybe before the append was written).
    store.log_truncate(7, 8).await.expect("truncate");
    rx.await.expect("cb").expect("write");
    let (tx, rx) = oneshot::channel();
    store
        .log_append(
            7,
            vec![(8, vec![80]), (9, vec![90])],
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .await
        .expect("append");
    let all = read_all(&store, 7);
    assert_eq!(all.len(), 9);
    assert_eq!(all[7], (8, vec![80]));
    assert_eq!(store.log_last(7).expect("last"), Some((9, vec![90])));
    rx.await.expect("cb").expect("write");
    store
        .log_purge(7, 3, 2, b"purged".to_vec())
        .await
        .expect("purge");
    let all = read_all(&store, 7);
    assert_eq!(all.first().map(|e| e.0), Some(4));
    assert_eq!(all.last(), Some(&(9, vec![90])));
    assert_eq!(store.raft_get(7, 2).expect("get"), Some(b"purged".to_vec()));
    // Other groups are untouched / empty.
    assert!(read_all(&store, 6).is_empty());
    assert_eq!(store.log_last(8).expect("last"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_and_vote_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        let (tx, rx) = oneshot::channel();
        store
            .log_append(
                3,
                vec![(1, b"one".to_vec()), (2, b"two".to_vec())],
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
            .await
            .expect("append");
        rx.await.expect("cb").expect("write");
        store.raft_put(3, 1, b"vote".to_vec()).await.expect("vote");
    }
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(
        read_all(&store, 3),
        vec![(1, b"one".to_vec()), (2, b"two".to_vec())]
    );
    assert_eq!(store.raft_get(3, 1).expect("get"), Some(b"vote".to_vec()));
}

#[test]
fn sm_txn_scan_and_commit() {
    let (_dir, store) = open();
    let mut t = store.txn(5);
    for i in 1u8..=5 {
        t.put(vec![1, i], vec![i]);
    }
    store
        .sm_commit(t, vec![(vec![0, 1], b"applied".to_vec())])
        .expect("commit");
    // Another group's keys never show up.
    let mut other = store.txn(6);
    other.put(vec![1, 3], vec![99]);
    store.sm_commit(other, vec![]).expect("commit");

    let mut t = store.txn(5);
    t.delete(vec![1, 2]);
    t.put(vec![1, 6], vec![6]);
    t.put(vec![1, 1], vec![11]);
    assert_eq!(t.get(&[1, 1]).expect("get"), Some(vec![11]));
    assert_eq!(t.get(&[1, 2]).expect("get"), None);
    assert_eq!(t.get(&[1, 3]).expect("get"), Some(vec![3]));
    let fwd = t.scan(&[1], &[2], false, 3).expect("scan");
    assert_eq!(
        fwd,
        vec![
            (vec![1, 1], vec![11]),
            (vec![1, 3], vec![3]),
            (vec![1, 4], vec![4])
        ]
    );
    let rev = t.scan(&[1], &[], true, 2).expect("scan");
    assert_eq!(rev, vec![(vec![1, 6], vec![6]), (vec![1, 5], vec![5])]);
    store.sm_commit(t, vec![]).expect("commit");

    assert_eq!(store.sm_get(5, &[1, 2]).expect("get"), None);
    let all = store
        .sm_scan(5, &[1], &[], false, usize::MAX)
        .expect("scan");
    assert_eq!(all.len(), 5);
    let pre = store.sm_scan_prefix(5, &[1], true, 1).expect("scan");
    assert_eq!(pre, vec![(vec![1, 6], vec![6])]);
    assert_eq!(store.sm_dump(5).expect("dump").len(), 6);

    // Snapshot replace: atomically swaps the whole range.
    store
        .sm_replace(5, vec![(vec![0, 1], b"x".to_vec()), (vec![1, 9], vec![9])])
        .expect("replace");
    assert_eq!(
        store.sm_dump(5).expect("dump"),
        vec![(vec![0, 1], b"x".to_vec()), (vec![1, 9], vec![9])]
    );
    assert_eq!(store.sm_get(6, &[1, 3]).expect("get"), Some(vec![99]));
    // The last group has no exclusive end key.
    let mut t = store.txn(u32::MAX);
    t.put(vec![1], vec![1]);
    store.sm_commit(t, vec![]).expect("commit");
    store
        .sm_replace(u32::MAX, vec![(vec![2], vec![2])])
        .expect("replace");
    assert_eq!(
        store.sm_dump(u32::MAX).expect("dump"),
        vec![(vec![2], vec![2])]
    );
}

#[test]
#[cfg(not(debug_assertions))]
fn reserved_keys_are_refused() {
    let (_dir, store) = open();
    let mut t = store.txn(1);
    t.put(vec![0, 1], vec![1]);
    assert!(matches!(
        store.sm_commit(t, vec![]),
        Err(StorageError::ReservedKey(_))
    ));
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "reserved")]
fn reserved_keys_are_refused() {
    let (_dir, store) = open();
    let mut t = store.txn(1);
    t.put(vec![0, 1], vec![1]);
}

#[test]
fn reserved_commit_keys_must_be_reserved() {
    let (_dir, store) = open();
    let t = store.txn(1);
    assert!(matches!(
        store.sm_commit(t, vec![(vec![1], vec![])]),
        Err(StorageError::ReservedKey(_))
    ));
}

/// A job of the apply-thread tests: puts `value` under key `[1]`, or fails.
struct PutJob {
    group: GroupId,
    value: Option<u8>,
    done: std::sync::mpsc::Sender<(GroupId, Result<(), StorageError>)>,
}

impl SmJob for PutJob {
    fn group(&self) -> GroupId {
        self.group
    }

    fn apply(&mut self, txn: &mut SmTxn<'_>) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        let v = self.value.ok_or(StorageError::Corrupt("refused".into()))?;
        txn.put(vec![1], vec![v]);
        Ok(vec![(vec![0, 1], vec![v])])
    }

    fn done(self: Box<Self>, result: Result<(), StorageError>) {
        let _ = self.done.send((self.group, result));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_thread_writes_every_group_and_isolates_a_failing_job() {
    let (_dir, store) = open();
    let (tx, rx) = std::sync::mpsc::channel();
    for (group, value) in [(1, Some(10)), (2, None), (3, Some(30)), (1, Some(11))] {
        let job = PutJob {
            group,
            value,
            done: tx.clone(),
        };
        store.sm_submit(Box::new(job)).await.expect("submit");
    }
    let mut results: Vec<(GroupId, bool)> = (0..4)
        .map(|_| {
            let (g, r) = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("done");
            (g, r.is_ok())
        })
        .collect();
    results.sort();
    assert_eq!(results, vec![(1, true), (1, true), (2, false), (3, true)]);
    // The second job of group 1 ran after the first: its value is the last one.
    assert_eq!(store.sm_get(1, &[1]).expect("get"), Some(vec![11]));
    assert_eq!(store.sm_get(1, &[0, 1]).expect("get"), Some(vec![11]));
    assert_eq!(store.sm_get(2, &[1]).expect("get"), None);
    assert_eq!(store.sm_get(3, &[1]).expect("get"), Some(vec![30]));
    assert!(store.sm_writes() >= 2);
}

#[test]
fn cached_reads_follow_commits_deletes_and_snapshots() {
    let (_dir, store) = open();
    let put = |v: Option<u8>| {
        let mut t = store.txn(4);
        match v {
            Some(v) => t.put(vec![1, 1], vec![v]),
            None => t.delete(vec![1, 1]),
        }
        store.sm_commit(t, vec![]).expect("commit");
    };
    assert_eq!(store.sm_get_cached(4, &[1, 1]).expect("get"), None);
    put(Some(1));
    assert_eq!(store.sm_get_cached(4, &[1, 1]).expect("get"), Some(vec![1]));
    put(Some(2));
    assert_eq!(store.sm_get_cached(4, &[1, 1]).expect("get"), Some(vec![2]));
    put(None);
    assert_eq!(store.sm_get_cached(4, &[1, 1]).expect("get"), None);
    put(Some(3));
    assert_eq!(store.sm_get_cached(4, &[1, 1]).expect("get"), Some(vec![3]));
    store
        .sm_replace(4, vec![(vec![1, 1], vec![9])])
        .expect("replace");
    assert_eq!(store.sm_get_cached(4, &[1, 1]).expect("get"), Some(vec![9]));
    assert_eq!(
        store.txn(4).get_cached(&[1, 1]).expect("get"),
        Some(vec![9])
    );
}
