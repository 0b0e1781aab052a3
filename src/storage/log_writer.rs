//! The log-writer thread: group commit of log appends, votes, truncations and purges.
//!
//! One dedicated std thread per [`Store`](super::Store). It blocks for the first request,
//! drains everything else already queued (up to [`LOG_BATCH_OPS_MAX`] operations), merges all
//! of it into one `WriteBatch`, writes it with `sync = true`, and only then completes every
//! request, in submission order. Requests of all groups share the batch, so N groups appending
//! concurrently cost one fsync, not N. Because every log IO goes through this one queue, log IO
//! is applied in submission order.
//!
//! Entries are also kept in the shared pending map from submission until the batch holding
//! them was written, so readers see them before they are durable (openraft requires this).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::mpsc;

use super::keys::{log_key, raft_key};
use super::queue_thread::QueueThread;
use super::{Shared, StorageError, CF_LOG, CF_RAFT};
use crate::ids::GroupId;

/// Capacity of the log-writer queue (requests). Submitters wait (asynchronously) when it is
/// full: that is the backpressure on log IO.
pub(crate) const LOG_WRITE_QUEUE_MAX: usize = 1024;

/// At most this many operations (log entries count one each) are merged into one batch.
pub(crate) const LOG_BATCH_OPS_MAX: usize = 4096;

/// Called once the request's batch was written (or failed).
pub(crate) type Completion = Box<dyn FnOnce(Result<(), StorageError>) + Send + 'static>;

/// Encoded log entries awaiting their synced write, by `(group, index)`; the value carries
/// the submission sequence number so that a newer entry at the same index (after a
/// truncation) is not removed when an older batch completes.
pub(crate) type PendingLog = BTreeMap<(GroupId, u64), (u64, Arc<[u8]>)>;

pub(crate) enum LogOp {
    Append {
        group: GroupId,
        entries: Vec<(u64, Arc<[u8]>)>,
    },
    /// Deletes the group's entries with index >= `since`.
    Truncate { group: GroupId, since: u64 },
    /// Deletes the group's entries with index <= `upto` and records `(tag, value)` (the last
    /// purged log id) in the `raft` CF in the same batch.
    Purge {
        group: GroupId,
        upto: u64,
        tag: u8,
        value: Vec<u8>,
    },
    /// A `raft` CF put (vote, …).
    PutRaft {
        group: GroupId,
        tag: u8,
        value: Vec<u8>,
    },
}

impl LogOp {
    fn ops(&self) -> usize {
        match self {
            LogOp::Append { entries, .. } => entries.len().max(1),
            _ => 1,
        }
    }
}

pub(crate) struct LogWriteReq {
    pub(crate) seq: u64,
    pub(crate) op: LogOp,
    pub(crate) done: Completion,
}

pub(crate) fn spawn(shared: Arc<Shared>) -> Result<QueueThread<LogWriteReq>, StorageError> {
    QueueThread::spawn("log-writer", LOG_WRITE_QUEUE_MAX, move |rx| run(shared, rx))
}

fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<LogWriteReq>) {
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    crate::sabotage!(UnsyncedAppends => {
        // Broken on purpose: in memory until the writeback thread flushes it.
        sync.set_sync(false);
        sync.disable_wal(true);
    });
    let mut reqs: Vec<LogWriteReq> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut ops = first.op.ops();
        reqs.push(first);
        while ops < LOG_BATCH_OPS_MAX {
            match rx.try_recv() {
                Ok(r) => {
                    ops += r.op.ops();
                    reqs.push(r);
                }
                Err(_) => break,
            }
        }

        let res = write_batch(&shared, &reqs, &sync);
        if res.is_ok() {
            shared.synced_writes.fetch_add(1, Ordering::Relaxed);
        }

        // The entries are durable (or failed): readers go to the DB from now on.
        {
            let mut pending = shared.pending.lock();
            for r in &reqs {
                if let LogOp::Append { group, entries } = &r.op {
                    for (index, _) in entries {
                        let key = (*group, *index);
                        if pending.get(&key).map(|(s, _)| *s) == Some(r.seq) {
                            pending.remove(&key);
                        }
                    }
                }
            }
        }

        for r in reqs.drain(..) {
            (r.done)(res.clone());
        }
    }
}

/// The writeback of [`crate::sabotage::Switch::UnsyncedAppends`]: flushes the `log` and
/// `raft` memtables every `WRITEBACK_INTERVAL_MS`, like an OS writing back dirty pages; what
/// came after the last flush is gone after a crash. Stops when the store is dropped.
#[cfg(feature = "fault-injection")]
pub(crate) fn spawn_writeback(shared: std::sync::Weak<Shared>) {
    let interval = std::time::Duration::from_millis(crate::sabotage::WRITEBACK_INTERVAL_MS);
    let _ = std::thread::Builder::new()
        .name("writeback".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let (Ok(log), Ok(raft)) = (shared.cf(CF_LOG), shared.cf(CF_RAFT)) else {
                return;
            };
            let mut fo = rocksdb::FlushOptions::default();
            fo.set_wait(true);
            if let Err(e) = shared.db.flush_cfs_opt(&[log, raft], &fo) {
                tracing::warn!("writeback flush: {e}");
            }
        });
}

fn write_batch(
    shared: &Shared,
    reqs: &[LogWriteReq],
    sync: &WriteOptions,
) -> Result<(), StorageError> {
    let log = shared.cf(CF_LOG)?;
    let raft = shared.cf(CF_RAFT)?;
    let mut wb = WriteBatch::default();
    for r in reqs {
        match &r.op {
            LogOp::Append { group, entries } => {
                for (index, bytes) in entries {
                    wb.put_cf(log, log_key(*group, *index), bytes);
                }
            }
            LogOp::Truncate { group, since } => {
                // u64::MAX is never a log index, so an exclusive end there covers everything.
                wb.delete_range_cf(log, log_key(*group, *since), log_key(*group, u64::MAX));
            }
            LogOp::Purge {
                group,
                upto,
                tag,
                value,
            } => {
                let end = upto.saturating_add(1);
                wb.delete_range_cf(log, log_key(*group, 0), log_key(*group, end));
                wb.put_cf(raft, raft_key(*group, *tag), value);
            }
            LogOp::PutRaft { group, tag, value } => {
                wb.put_cf(raft, raft_key(*group, *tag), value);
            }
        }
    }
    shared.db.write_opt(wb, sync)?;
    Ok(())
}
