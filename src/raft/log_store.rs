//! A group's Raft log and vote over the node's [`Store`] (storage-v2 `RaftLogStorage`).

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, LogId, OptionalSend, RaftLogReader, StorageIOError, Vote};

use super::{blocking, Entry, GroupId, GroupTypes, NodeId};
use crate::codec::{decode, encode};
use crate::storage::{StorageError, Store};

type SError = openraft::StorageError<NodeId>;

/// `raft` CF tags.
pub(crate) const TAG_VOTE: u8 = 1;
pub(crate) const TAG_LAST_PURGED: u8 = 2;
pub(crate) const TAG_COMMITTED: u8 = 3;

/// Most stored (bincode) bytes of log entries one AppendEntries carries. openraft asks the
/// reader for up to `max_payload_entries` entries per RPC; [`LogStore::limited_get_log_entries`]
/// stops once this many bytes are read (always at least one entry), so a follower far
/// behind catches up in frames well under the transport's limit (`FRAME_BYTES_MAX`,
/// 16 MiB) however large the entries are. The network checks the encoded request again
/// (`PeerError::PayloadTooLarge` → openraft's `PayloadTooLarge`). 1 MiB, because openraft
/// 0.9 bounds every AppendEntries (follower fsync included) by the heartbeat interval
/// (250 ms): a catch-up RPC must cross a loaded machine well within it.
pub(crate) const APPEND_ENTRIES_BYTES_MAX: usize = 1 << 20;

fn io(e: StorageIOError<NodeId>) -> SError {
    SError::IO { source: e }
}

/// One group's log store: a cheap, cloneable handle (it is also its own log reader).
#[derive(Debug)]
pub(crate) struct LogStore<C> {
    group: GroupId,
    store: Arc<Store>,
    /// The last committed log id openraft reported, also queued for the log writer.
    committed: Arc<parking_lot::Mutex<Option<LogId<NodeId>>>>,
    /// The entries' type (only decoded here).
    types: PhantomData<C>,
}

// Not derived: a derive would ask `C: Clone`.
impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            group: self.group,
            store: self.store.clone(),
            committed: self.committed.clone(),
            types: PhantomData,
        }
    }
}

impl<C: GroupTypes> LogStore<C> {
    pub(crate) fn new(group: GroupId, store: Arc<Store>) -> Self {
        Self {
            group,
            store,
            committed: Arc::new(parking_lot::Mutex::new(None)),
            types: PhantomData,
        }
    }

    /// Reads and decodes one of this group's `raft` CF values (vote, committed log id).
    async fn read_raft_value<T>(&self, tag: u8) -> Result<Option<T>, StorageError>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let (store, group) = (self.store.clone(), self.group);
        blocking(move || match store.raft_get(group, tag)? {
            Some(b) => Ok(Some(decode::<T>(&b)?)),
            None => Ok(None),
        })
        .await
    }
}

impl<C: GroupTypes> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<C>>, SError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => x.saturating_add(1),
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        let (store, group) = (self.store.clone(), self.group);
        blocking(move || store.log_range(group, start, end, |_, b| Ok(decode::<Entry<C>>(b)?)))
            .await
            .map_err(|e| io(StorageIOError::read_logs(AnyError::new(&e))))
    }

    /// What replication sends: the entries of `[start, end)` from `start` on, cut after
    /// [`APPEND_ENTRIES_BYTES_MAX`] stored bytes (at least one entry). openraft sends the
    /// prefix and asks for the rest next.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<C>>, SError> {
        let (store, group) = (self.store.clone(), self.group);
        blocking(move || {
            store.log_range_within(group, start, end, APPEND_ENTRIES_BYTES_MAX, |_, b| {
                Ok(decode::<Entry<C>>(b)?)
            })
        })
        .await
        .map_err(|e| io(StorageIOError::read_logs(AnyError::new(&e))))
    }
}

impl<C: GroupTypes> RaftLogStorage<C> for LogStore<C> {
    type LogReader = LogStore<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, SError> {
        let (store, group) = (self.store.clone(), self.group);
        let (purged, last) = blocking(move || {
            let purged = match store.raft_get(group, TAG_LAST_PURGED)? {
                Some(b) => Some(decode::<LogId<NodeId>>(&b)?),
                None => None,
            };
            let last = match store.log_last(group)? {
                Some((_, b)) => Some(decode::<Entry<C>>(&b)?.log_id),
                None => None,
            };
            Ok((purged, last))
        })
        .await
        .map_err(|e| io(StorageIOError::read_logs(AnyError::new(&e))))?;
        let last_log_id = std::cmp::max(last, purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SError> {
        let r = match encode(vote) {
            Ok(b) => self.store.raft_put(self.group, TAG_VOTE, b).await,
            Err(e) => Err(e.into()),
        };
        r.map_err(|e| io(StorageIOError::write_vote(AnyError::new(&e))))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SError> {
        crate::sabotage!(ForgetVote => {
            return Ok(None);
        });
        self.read_raft_value(TAG_VOTE)
            .await
            .map_err(|e| io(StorageIOError::read_vote(AnyError::new(&e))))
    }

    /// Keeps the committed log id so that a restart re-applies everything committed before
    /// the crash (the state machine skips the WAL) without waiting for a leader to say what
    /// is committed. Not waited for: openraft calls this before every apply, and a lost or
    /// older value only means less is re-applied at start; entries up to it are durable
    /// first, since they went through the same log-writer queue earlier.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SError> {
        *self.committed.lock() = committed;
        if let Some(c) = committed {
            let b = encode(&c).map_err(|e| io(StorageIOError::write(AnyError::new(&e))))?;
            // A full queue skips this hint; a later commit writes a newer one.
            let _ = self.store.raft_put_hint(self.group, TAG_COMMITTED, b);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SError> {
        if let Some(c) = *self.committed.lock() {
            return Ok(Some(c));
        }
        self.read_raft_value(TAG_COMMITTED)
            .await
            .map_err(|e| io(StorageIOError::read(AnyError::new(&e))))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), SError>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for e in entries {
            let b =
                encode(&e).map_err(|err| io(StorageIOError::write_logs(AnyError::new(&err))))?;
            encoded.push((e.log_id.index, b));
        }
        self.store
            .log_append(
                self.group,
                encoded,
                Box::new(move |r| callback.log_io_completed(r.map_err(std::io::Error::other))),
            )
            .await
            .map_err(|e| io(StorageIOError::write_logs(AnyError::new(&e))))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        self.store
            .log_truncate(self.group, log_id.index)
            .await
            .map_err(|e| io(StorageIOError::write_logs(AnyError::new(&e))))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        let r = match encode(&log_id) {
            Ok(b) => {
                self.store
                    .log_purge(self.group, log_id.index, TAG_LAST_PURGED, b)
                    .await
            }
            Err(e) => Err(e.into()),
        };
        r.map_err(|e: StorageError| io(StorageIOError::write_logs(AnyError::new(&e))))
    }
}
