//! The state-machine apply thread: one dedicated std thread per [`Store`] runs the applies of
//! every group and writes all of them that arrived together in one RocksDB batch.
//!
//! This is the state-machine counterpart of the log writer. Before it, every group's apply
//! was its own blocking-pool task with its own RocksDB write: on a few cores the hand-offs,
//! the concurrent memtable inserts and the per-write overhead cost more than the apply logic.
//! A round drains the queued jobs (at most one per group, so a job always reads its group's
//! state as of the previous round), runs each into its own [`SmTxn`], writes the effects of
//! all that succeeded in one non-synced batch, then completes them in submission order.

use super::KvPairs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Weak;

use tokio::sync::mpsc;

use super::queue_thread::QueueThread;
use super::{SmTxn, StorageError, Store};
use crate::ids::GroupId;

/// Capacity of the apply queue (jobs). One job per group is in flight at most (openraft
/// applies a group's entries one batch at a time), so this bounds groups, not entries.
pub(crate) const SM_APPLY_QUEUE_MAX: usize = 1024;
/// Most jobs merged into one state-machine write.
pub(crate) const SM_ROUND_JOBS_MAX: usize = 256;

/// One group's apply, run on the apply thread.
pub(crate) trait SmJob: Send + 'static {
    fn group(&self) -> GroupId;
    /// Fills `txn` with the job's effects and returns the reserved pairs (applied log id,
    /// membership) to write with them. An `Err` leaves the job out of the round's write.
    fn apply(&mut self, txn: &mut SmTxn<'_>) -> Result<KvPairs, StorageError>;
    /// Called on the apply thread once the round's batch was written, or with the error.
    fn done(self: Box<Self>, result: Result<(), StorageError>);
}

pub(crate) fn spawn(store: Weak<Store>) -> Result<QueueThread<Box<dyn SmJob>>, StorageError> {
    QueueThread::spawn("sm-apply", SM_APPLY_QUEUE_MAX, move |rx| run(store, rx))
}

fn run(store: Weak<Store>, mut rx: mpsc::Receiver<Box<dyn SmJob>>) {
    let mut carried: Option<Box<dyn SmJob>> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.blocking_recv() {
                Some(job) => job,
                None => return,
            },
        };
        let mut jobs = vec![first];
        while jobs.len() < SM_ROUND_JOBS_MAX {
            let Ok(job) = rx.try_recv() else {
                break;
            };
            if jobs.iter().any(|j| j.group() == job.group()) {
                // Its group already has a job in this round: it must see that one's writes.
                carried = Some(job);
                break;
            }
            jobs.push(job);
        }
        // The owner may have dropped the store: then this handle is the last one, and the
        // store closes on this thread when it goes (its Drop never joins this thread).
        let Some(store) = store.upgrade() else {
            for job in jobs {
                finish(job, Err(StorageError::Closed));
            }
            return;
        };
        // Completions may spawn tasks (gap fills of pushes): run them inside the runtime
        // that submitted the jobs.
        let _runtime = store.sm_runtime.get().map(|h| h.enter());
        round(&store, jobs);
    }
}

/// Applies `jobs` (distinct groups) and writes what they produced in one batch.
fn round(store: &Store, jobs: Vec<Box<dyn SmJob>>) {
    let mut applied = Vec::with_capacity(jobs.len());
    let mut parts = Vec::with_capacity(jobs.len());
    for mut job in jobs {
        let mut txn = store.txn(job.group());
        // A panicking apply drops the job (its caller sees the group's apply fail, as a
        // failed blocking task did before) instead of the thread every group shares.
        let reserved = match catch_unwind(AssertUnwindSafe(|| job.apply(&mut txn))) {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                finish(job, Err(e));
                continue;
            }
            Err(_) => {
                tracing::error!(group = job.group(), "state-machine apply panicked");
                continue;
            }
        };
        match txn.into_parts() {
            Ok((group, writes)) => {
                parts.push((group, writes, reserved));
                applied.push(job);
            }
            Err(e) => finish(job, Err(e)),
        }
    }
    if applied.is_empty() {
        return;
    }
    let res = store.sm_write(parts);
    for job in applied {
        finish(job, res.clone());
    }
}

fn finish(job: Box<dyn SmJob>, result: Result<(), StorageError>) {
    let group = job.group();
    if catch_unwind(AssertUnwindSafe(|| job.done(result))).is_err() {
        tracing::error!(group, "state-machine completion panicked");
    }
}
