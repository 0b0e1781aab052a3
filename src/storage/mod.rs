//! The only module that touches RocksDB.
//!
//! One RocksDB instance per node, column families by purpose:
//! - `log`:   (group u32 BE, index u64 BE) -> encoded log entry (opaque bytes here)
//! - `raft`:  (group u32 BE, tag u8)        -> vote / last purged log id (opaque bytes here)
//! - `sm`:    (group u32 BE, user key…)     -> state-machine data; user keys start with a
//!   byte >= 0x01, the reserved prefix (group, 0x00, …) holds the applied log id and the last
//!   membership, written in the same batch as the data.
//!
//! Log appends, votes, truncations and purges go through one log-writer thread that merges
//! everything queued into one synced `WriteBatch` (group commit), see [`log_writer`].
//! State-machine writes skip the WAL: after a crash the `sm` column family comes back as of
//! its last memtable flush, a consistent prefix (data and applied log id travel in one
//! batch), and openraft re-applies the rest from the synced log. So the log is purged only
//! after the `sm` column family was flushed (see [`Store::log_purge`]).
//!
//! Every method that reads or writes RocksDB directly is blocking: call it from
//! `spawn_blocking` (the `async` methods only wait on the log writer and never block).

mod blocking;
pub(crate) mod keys;
mod log_writer;
mod queue_thread;
mod sm_cache;
mod sm_writer;
mod txn;

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Direction, FlushOptions,
    IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB,
};
use tokio::sync::oneshot;

pub(crate) use blocking::{blocking, TaskFailed};
pub(crate) use log_writer::Completion;
pub(crate) use sm_writer::SmJob;
pub(crate) use txn::SmTxn;

use crate::ids::GroupId;

/// Key/value pairs of one group's `sm` range (keys without the group prefix), as a
/// snapshot dump, an apply's reserved writes or a range read returns them.
pub(crate) type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;
use keys::{group_prefix, log_key, parse_log_key, raft_key, sm_key};
use log_writer::{LogOp, LogWriteReq, PendingLog};
use queue_thread::QueueThread;
use sm_cache::SmCache;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_RAFT: &str = "raft";
pub(crate) const CF_SM: &str = "sm";
/// Background writes (flushes, compactions) are written back every this many bytes.
pub(crate) const FLUSH_SYNC_EVERY_BYTES: u64 = 1024 * 1024;
/// Size of one memtable of each column family.
pub(crate) const MEMTABLE_BYTES: usize = 16 * 1024 * 1024;
/// The block cache shared by the column families.
pub(crate) const BLOCK_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Errors of the storage layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(String),
    #[error("corrupt value: {0}")]
    Corrupt(String),
    #[error("storage is shut down")]
    Closed,
    #[error("state-machine key is empty or in the reserved 0x00 range: {0:?}")]
    ReservedKey(Vec<u8>),
    #[error("key string too long: {0} bytes")]
    KeyTooLong(usize),
    #[error("encode: {0}")]
    Encode(String),
    #[error("blocking task failed: {0}")]
    Task(String),
}

type SmResult = Result<(), StorageError>;

/// A stored value that cannot be encoded or decoded is an encode / corrupt-value error.
impl From<crate::codec::CodecError> for StorageError {
    fn from(e: crate::codec::CodecError) -> Self {
        match e {
            crate::codec::CodecError::Encode(m) => StorageError::Encode(m),
            crate::codec::CodecError::Decode(m) => StorageError::Corrupt(m),
        }
    }
}

impl From<TaskFailed> for StorageError {
    fn from(e: TaskFailed) -> Self {
        StorageError::Task(e.0)
    }
}

impl From<rocksdb::Error> for StorageError {
    fn from(e: rocksdb::Error) -> Self {
        StorageError::Rocks(e.into_string())
    }
}

/// State shared by the [`Store`] handle and its log-writer thread.
pub(crate) struct Shared {
    pub(crate) db: DB,
    pub(crate) pending: Mutex<PendingLog>,
    pub(crate) synced_writes: AtomicU64,
    next_seq: AtomicU64,
}

impl Shared {
    /// Flushes the `sm` memtable to disk and waits (blocking).
    fn flush_sm(&self) -> Result<(), StorageError> {
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        self.db.flush_cf_opt(self.cf(CF_SM)?, &fo)?;
        Ok(())
    }

    pub(crate) fn cf(&self, name: &str) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StorageError::Rocks(format!("missing column family {name}")))
    }
}

/// The node's storage: one RocksDB instance, its log-writer thread and its state-machine
/// apply thread. Share it as `Arc<Store>`; dropping the last handle stops both threads
/// (after the log writer wrote everything queued) and closes the DB.
pub(crate) struct Store {
    shared: Arc<Shared>,
    writer: QueueThread<LogWriteReq>,
    /// `None` only if its thread could not be started (then `open` fails).
    sm_writer: Option<QueueThread<Box<dyn SmJob>>>,
    sm_cache: Mutex<SmCache>,
    sm_writes: AtomicU64,
    /// The runtime of the first submitter: the apply thread runs completions inside it.
    sm_runtime: std::sync::OnceLock<tokio::runtime::Handle>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.shared.db.path())
            .finish()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // The apply thread first; the log writer then writes everything still queued.
        if let Some(w) = self.sm_writer.as_mut() {
            w.stop();
        }
        self.writer.stop();
    }
}

/// Bounds of `[start, end)` inside a group's `sm` range; empty `end` means the group's end.
fn sm_bounds(group: GroupId, start: &[u8], end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    let lo = sm_key(group, start);
    let hi = if end.is_empty() {
        keys::prefix_successor(&group_prefix(group))
    } else {
        Some(sm_key(group, end))
    };
    (lo, hi)
}

/// Stored bytes read so far against a limit (see [`Store::log_range_within`]).
struct ReadBudget {
    used: usize,
    max: usize,
}

impl ReadBudget {
    /// Counts `len` more bytes read; `true` once the limit is reached.
    fn spend(&mut self, len: usize) -> bool {
        self.used = self.used.saturating_add(len);
        self.used >= self.max
    }
}

/// Whether `pending` (in index order) holds every index of `[start, end)`, so that the DB
/// need not be read.
fn covers(pending: &[(u64, Arc<[u8]>)], start: u64, end: u64) -> bool {
    pending.first().is_some_and(|(i, _)| *i == start)
        && pending.windows(2).all(|w| w[1].0 == w[0].0 + 1)
        && pending
            .last()
            .is_some_and(|(i, _)| i.saturating_add(1) >= end)
}

impl Store {
    /// Opens (creating if needed) the RocksDB instance in `dir` and starts the log writer.
    pub(crate) fn open(dir: &Path) -> Result<Arc<Store>, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(5);
        // Many groups apply at once on few cores: writers queue without spinning, and the WAL
        // write of one batch overlaps the memtable insert of the previous one.
        opts.set_enable_write_thread_adaptive_yield(false);
        opts.set_enable_pipelined_write(true);
        // A memtable flush writes ~60 MB; synced in one go at the end it can hold up the log
        // writer's fsyncs (every commit). Written back as it goes, it leaves the disk to them.
        opts.set_bytes_per_sync(FLUSH_SYNC_EVERY_BYTES);
        // Point reads of missing keys (the dedup check of every new message) are answered by
        // bloom filters instead of reading every SST file.
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cfs = [CF_LOG, CF_RAFT, CF_SM].into_iter().map(|name| {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            let mut cf_opts = Options::default();
            cf_opts.set_block_based_table_factory(&table);
            // A missing key (the dedup check of a new message) is answered without a
            // memtable search.
            cf_opts.set_memtable_whole_key_filtering(true);
            cf_opts.set_memtable_prefix_bloom_ratio(0.05);
            // Smaller memtables: each flush is short (a long one held up the commits behind
            // it on a busy machine), and inserts walk a shallower skip list.
            cf_opts.set_write_buffer_size(MEMTABLE_BYTES);
            ColumnFamilyDescriptor::new(name, cf_opts)
        });
        crate::sabotage!(UnsyncedAppends => {
            // The writeback flushes log and vote together (atomic flush excludes pipelining).
            opts.set_enable_pipelined_write(false);
            opts.set_atomic_flush(true);
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let shared = Arc::new(Shared {
            db,
            pending: Mutex::new(PendingLog::new()),
            synced_writes: AtomicU64::new(0),
            next_seq: AtomicU64::new(1),
        });
        let writer = log_writer::spawn(shared.clone())?;
        crate::sabotage!(UnsyncedAppends => {
            log_writer::spawn_writeback(Arc::downgrade(&shared));
        });
        let mut spawn_error = None;
        let store = Arc::new_cyclic(|weak| Store {
            shared,
            writer,
            sm_writer: sm_writer::spawn(weak.clone())
                .map_err(|e| spawn_error = Some(e))
                .ok(),
            sm_cache: Mutex::new(SmCache::default()),
            sm_writes: AtomicU64::new(0),
            sm_runtime: std::sync::OnceLock::new(),
        });
        match spawn_error {
            Some(e) => Err(e),
            None => Ok(store),
        }
    }

    #[cfg(test)]
    /// Number of state-machine writes so far (metrics; one per apply round).
    pub(crate) fn sm_writes(&self) -> u64 {
        self.sm_writes.load(Ordering::Relaxed)
    }

    /// Queues a state-machine job for the apply thread (see [`SmJob`]); it completes through
    /// its `done`. Waits (asynchronously) while the queue is full.
    pub(crate) async fn sm_submit(&self, job: Box<dyn SmJob>) -> Result<(), StorageError> {
        self.sm_runtime.get_or_init(tokio::runtime::Handle::current);
        let tx = self
            .sm_writer
            .as_ref()
            .and_then(|w| w.sender())
            .ok_or(StorageError::Closed)?;
        tx.send(job).await.map_err(|_| StorageError::Closed)
    }

    /// Number of synced log-writer writes so far (metrics; one per merged batch).
    pub(crate) fn synced_writes(&self) -> u64 {
        self.shared.synced_writes.load(Ordering::Relaxed)
    }

    // ---------------------------------------------------------------- state machine (sm CF)

    /// Point read of a state-machine key of `group` (blocking: call from spawn_blocking).
    pub(crate) fn sm_get(
        &self,
        group: GroupId,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let cf = self.shared.cf(CF_SM)?;
        Ok(self.shared.db.get_cf(cf, sm_key(group, key))?)
    }

    /// Range read `[start, end)` of a group's state-machine keys (without the group prefix;
    /// an empty `end` means "to the end of the group"), ascending or descending, at most
    /// `limit` pairs (blocking). Keys are returned without the group prefix.
    pub(crate) fn sm_scan(
        &self,
        group: GroupId,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<KvPairs, StorageError> {
        let (lo, hi) = sm_bounds(group, start, end);
        self.scan_cf(CF_SM, &group_prefix(group), lo, hi, reverse, limit)
    }

    /// All keys of a group starting with `prefix` (without the group prefix), see
    /// [`Store::sm_scan`]. An empty `prefix` scans the whole group (reserved keys included).
    pub(crate) fn sm_scan_prefix(
        &self,
        group: GroupId,
        prefix: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<KvPairs, StorageError> {
        let lo = sm_key(group, prefix);
        let hi = keys::prefix_successor(&lo);
        self.scan_cf(CF_SM, &lo.clone(), lo, hi, reverse, limit)
    }

    /// Scans `[lo, hi)` of a column family keeping keys that start with `prefix`, and strips
    /// the 4-byte group prefix.
    fn scan_cf(
        &self,
        cf: &str,
        prefix: &[u8],
        lo: Vec<u8>,
        hi: Option<Vec<u8>>,
        reverse: bool,
        limit: usize,
    ) -> Result<KvPairs, StorageError> {
        let mut out = Vec::new();
        if limit == 0 || hi.as_ref().is_some_and(|h| *h <= lo) {
            return Ok(out);
        }
        let cf = self.shared.cf(cf)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lo);
        if let Some(h) = hi {
            ro.set_iterate_upper_bound(h);
        }
        let mode = if reverse {
            IteratorMode::End
        } else {
            IteratorMode::Start
        };
        for item in self.shared.db.iterator_cf_opt(cf, ro, mode) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k[4..].to_vec(), v.into_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// A checksum (FNV-1a, 64 bits) and count of a group's state-machine data, reserved keys
    /// (0x00…: applied log id, membership) excluded: replicas with the same applied index
    /// must agree (blocking; iterates without holding the data in memory).
    pub(crate) fn sm_checksum(&self, group: GroupId) -> Result<(u64, u64), StorageError> {
        const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
        let (lo, hi) = sm_bounds(group, &[0x01], &[]);
        let prefix = group_prefix(group);
        let cf = self.shared.cf(CF_SM)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lo);
        if let Some(h) = hi {
            ro.set_iterate_upper_bound(h);
        }
        let (mut hash, mut count) = (FNV_OFFSET, 0u64);
        for item in self.shared.db.iterator_cf_opt(cf, ro, IteratorMode::Start) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            for part in [&k[..], &(v.len() as u64).to_be_bytes()[..], &v[..]] {
                for b in part {
                    hash = (hash ^ u64::from(*b)).wrapping_mul(FNV_PRIME);
                }
            }
            count += 1;
        }
        Ok((hash, count))
    }

    /// Starts a state-machine transaction over `group`.
    pub(crate) fn txn(&self, group: GroupId) -> SmTxn<'_> {
        SmTxn::new(self, group)
    }

    /// Point read of a state-machine key through the write-through cache of hot values
    /// (blocking). For keys read by every apply (a conversation's state); see `sm_cache`
    /// for why this is safe only from the group's apply.
    pub(crate) fn sm_get_cached(
        &self,
        group: GroupId,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let full = sm_key(group, key);
        if let Some(v) = self.sm_cache.lock().get(&full) {
            return Ok(Some(v.to_vec()));
        }
        let cf = self.shared.cf(CF_SM)?;
        let value = self.shared.db.get_cf(cf, &full)?;
        if let Some(v) = &value {
            self.sm_cache.lock().insert(full, Arc::from(v.as_slice()));
        }
        Ok(value)
    }

    /// Writes a transaction's effects plus `reserved` pairs (keys starting with 0x00: the
    /// applied log id, membership…) in one non-synced batch (blocking). Applies go through
    /// the apply thread ([`Store::sm_submit`]) instead, which merges many groups' writes.
    pub(crate) fn sm_commit(&self, txn: SmTxn<'_>, reserved: KvPairs) -> Result<(), StorageError> {
        let (group, writes) = txn.into_parts()?;
        self.sm_write(vec![(group, writes, reserved)])
    }

    /// Writes the effects and reserved pairs of several groups in one non-synced batch and
    /// updates the cache (blocking).
    fn sm_write(&self, parts: Vec<(GroupId, txn::Writes, KvPairs)>) -> SmResult {
        let cf = self.shared.cf(CF_SM)?;
        let mut wb = WriteBatch::default();
        let mut written = Vec::new();
        for (group, writes, reserved) in parts {
            for (k, v) in writes {
                let key = sm_key(group, &k);
                match &v {
                    Some(v) => wb.put_cf(cf, &key, v),
                    None => wb.delete_cf(cf, &key),
                }
                written.push((key, v));
            }
            for (k, v) in reserved {
                if txn::is_user_key(&k) || k.is_empty() {
                    return Err(StorageError::ReservedKey(k));
                }
                wb.put_cf(cf, sm_key(group, &k), v);
            }
        }
        // No WAL: see the module comment (the synced log is the durable copy).
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.shared.db.write_opt(wb, &wo)?;
        self.sm_writes.fetch_add(1, Ordering::Relaxed);
        let mut cache = self.sm_cache.lock();
        for (key, v) in &written {
            cache.written(key, v.as_deref());
        }
        Ok(())
    }

    /// Every `sm` pair of a group (reserved keys included, keys without the group prefix),
    /// from one consistent view: the content of a snapshot (blocking).
    pub(crate) fn sm_dump(&self, group: GroupId) -> Result<KvPairs, StorageError> {
        self.sm_scan(group, &[], &[], false, usize::MAX)
    }

    /// Replaces a group's whole `sm` range with `pairs` atomically (one synced batch: a
    /// range delete then the puts): snapshot installation (blocking).
    pub(crate) fn sm_replace(&self, group: GroupId, pairs: KvPairs) -> Result<(), StorageError> {
        let cf = self.shared.cf(CF_SM)?;
        let mut wb = WriteBatch::default();
        let (lo, hi) = sm_bounds(group, &[], &[]);
        match hi {
            Some(hi) => wb.delete_range_cf(cf, lo, hi),
            None => {
                // The last group: no exclusive end key exists, delete key by key.
                for (k, _) in self.sm_dump(group)? {
                    wb.delete_cf(cf, sm_key(group, &k));
                }
            }
        }
        for (k, v) in pairs {
            if k.is_empty() {
                return Err(StorageError::ReservedKey(k));
            }
            wb.put_cf(cf, sm_key(group, &k), v);
        }
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.shared.db.write_opt(wb, &sync)?;
        self.sm_cache.lock().remove_prefix(&group_prefix(group));
        Ok(())
    }

    // ---------------------------------------------------------------- raft state (raft CF)

    /// Reads a `raft` CF value of a group (blocking).
    pub(crate) fn raft_get(
        &self,
        group: GroupId,
        tag: u8,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let cf = self.shared.cf(CF_RAFT)?;
        Ok(self.shared.db.get_cf(cf, raft_key(group, tag))?)
    }

    /// Writes a `raft` CF value through the log writer (synced, ordered with log IO) and
    /// waits for it.
    pub(crate) async fn raft_put(
        &self,
        group: GroupId,
        tag: u8,
        value: Vec<u8>,
    ) -> Result<(), StorageError> {
        self.submit_and_wait(LogOp::PutRaft { group, tag, value })
            .await
    }

    /// Queues a `raft` CF value for the log writer's next batch and returns at once,
    /// without waiting for it to be written: for hints whose loss costs nothing but a little
    /// work after a crash (the committed log id). `false` when the queue is full (skipped).
    pub(crate) fn raft_put_hint(&self, group: GroupId, tag: u8, value: Vec<u8>) -> bool {
        let Some(tx) = self.writer.sender() else {
            return false;
        };
        let req = LogWriteReq {
            seq: self.shared.next_seq.fetch_add(1, Ordering::Relaxed),
            op: LogOp::PutRaft { group, tag, value },
            done: Box::new(|_| {}),
        };
        tx.try_send(req).is_ok()
    }

    // ---------------------------------------------------------------- raft log (log CF)

    /// Hands encoded entries `(index, bytes)` of one group to the log writer and returns as
    /// soon as they are queued (waiting only if the queue is full). They are readable at once;
    /// `done` runs on the log-writer thread after the synced write returned (or failed).
    pub(crate) async fn log_append(
        &self,
        group: GroupId,
        entries: Vec<(u64, Vec<u8>)>,
        done: Completion,
    ) -> Result<(), StorageError> {
        let seq = self.shared.next_seq.fetch_add(1, Ordering::Relaxed);
        let entries: Vec<(u64, Arc<[u8]>)> = entries
            .into_iter()
            .map(|(i, b)| (i, Arc::<[u8]>::from(b)))
            .collect();
        {
            let mut p = self.shared.pending.lock();
            for (i, b) in &entries {
                p.insert((group, *i), (seq, b.clone()));
            }
        }
        let indexes: Vec<u64> = entries.iter().map(|(i, _)| *i).collect();
        let req = LogWriteReq {
            seq,
            op: LogOp::Append { group, entries },
            done,
        };
        if let Err(e) = self.send(req).await {
            let mut p = self.shared.pending.lock();
            for i in indexes {
                if p.get(&(group, i)).map(|(s, _)| *s) == Some(seq) {
                    p.remove(&(group, i));
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// Deletes the group's entries with index >= `since` (synced, ordered with appends) and
    /// waits for it.
    pub(crate) async fn log_truncate(
        &self,
        group: GroupId,
        since: u64,
    ) -> Result<(), StorageError> {
        self.remove_pending(group, since, u64::MAX);
        self.submit_and_wait(LogOp::Truncate { group, since }).await
    }

    /// Deletes the group's entries with index <= `upto` and stores `(tag, value)` in the
    /// `raft` CF in the same synced batch (the last purged log id); waits for it.
    pub(crate) async fn log_purge(
        &self,
        group: GroupId,
        upto: u64,
        tag: u8,
        value: Vec<u8>,
    ) -> Result<(), StorageError> {
        // The state machine was written without WAL: make it durable before the log entries
        // that could rebuild it go away.
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.flush_sm())
            .await
            .map_err(|e| StorageError::Task(e.to_string()))??;
        self.remove_pending(group, 0, upto);
        self.submit_and_wait(LogOp::Purge {
            group,
            upto,
            tag,
            value,
        })
        .await
    }

    /// Decodes the group's entries with index in `[start, end)`, pending (not yet durable)
    /// entries included, in index order (blocking).
    pub(crate) fn log_range<T>(
        &self,
        group: GroupId,
        start: u64,
        end: u64,
        decode: impl FnMut(u64, &[u8]) -> Result<T, StorageError>,
    ) -> Result<Vec<T>, StorageError> {
        self.log_range_within(group, start, end, usize::MAX, decode)
    }

    /// Like [`Store::log_range`], but stops after the entry that brings the stored bytes read
    /// past `bytes_max` (so the result is a prefix of the range, at least one entry long when
    /// the range holds any): replication reads at most about a frame's worth.
    pub(crate) fn log_range_within<T>(
        &self,
        group: GroupId,
        start: u64,
        end: u64,
        bytes_max: usize,
        mut decode: impl FnMut(u64, &[u8]) -> Result<T, StorageError>,
    ) -> Result<Vec<T>, StorageError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let mut budget = ReadBudget {
            used: 0,
            max: bytes_max,
        };
        // Pending first, then the DB: an entry leaves the pending map only after it was
        // written, so reading in this order cannot miss it.
        let pending = self.pending_range(group, start, end);
        if !covers(&pending, start, end) {
            return self.merge_durable(group, start, end, &pending, &mut budget, decode);
        }
        let mut out = Vec::new();
        for (i, b) in &pending {
            out.push(decode(*i, b)?);
            if budget.spend(b.len()) {
                break;
            }
        }
        Ok(out)
    }

    /// The group's pending (not yet durable) entries with index in `[start, end)`, in index
    /// order.
    fn pending_range(&self, group: GroupId, start: u64, end: u64) -> Vec<(u64, Arc<[u8]>)> {
        let p = self.shared.pending.lock();
        p.range((group, start)..(group, end))
            .map(|((_, i), (_, b))| (*i, b.clone()))
            .collect()
    }

    /// Decodes the group's durable entries with index in `[start, end)` merged in index order
    /// with `pending` (the same range's pending entries, read before), until `budget` is
    /// spent.
    fn merge_durable<T>(
        &self,
        group: GroupId,
        start: u64,
        end: u64,
        pending: &[(u64, Arc<[u8]>)],
        budget: &mut ReadBudget,
        mut decode: impl FnMut(u64, &[u8]) -> Result<T, StorageError>,
    ) -> Result<Vec<T>, StorageError> {
        let mut out: Vec<(u64, T)> = Vec::new();
        let cf = self.shared.cf(CF_LOG)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(log_key(group, end).to_vec());
        let from = log_key(group, start);
        let iter =
            self.shared
                .db
                .iterator_cf_opt(cf, ro, IteratorMode::From(&from, Direction::Forward));
        let mut pi = pending.iter().peekable();
        for item in iter {
            let (k, v) = item?;
            let (g, index) = parse_log_key(&k)?;
            if g != group {
                break;
            }
            // Pending entries win over (older) durable ones at the same index.
            while let Some((pidx, pb)) = pi.peek() {
                if *pidx > index {
                    break;
                }
                out.push((*pidx, decode(*pidx, pb)?));
                pi.next();
                if budget.spend(pb.len()) {
                    return Ok(out.into_iter().map(|(_, t)| t).collect());
                }
            }
            if out.last().is_some_and(|(i, _)| *i == index) {
                continue;
            }
            out.push((index, decode(index, &v)?));
            if budget.spend(v.len()) {
                return Ok(out.into_iter().map(|(_, t)| t).collect());
            }
        }
        for (pidx, pb) in pi {
            out.push((*pidx, decode(*pidx, pb)?));
            if budget.spend(pb.len()) {
                break;
            }
        }
        Ok(out.into_iter().map(|(_, t)| t).collect())
    }

    /// The group's last entry (pending ones included): `(index, bytes)` (blocking).
    pub(crate) fn log_last(&self, group: GroupId) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let pending = {
            let p = self.shared.pending.lock();
            p.range((
                Bound::Included((group, 0)),
                Bound::Included((group, u64::MAX)),
            ))
            .next_back()
            .map(|((_, i), (_, b))| (*i, b.to_vec()))
        };
        let cf = self.shared.cf(CF_LOG)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(log_key(group, 0).to_vec());
        let from = log_key(group, u64::MAX);
        let mut iter =
            self.shared
                .db
                .iterator_cf_opt(cf, ro, IteratorMode::From(&from, Direction::Reverse));
        let durable = match iter.next() {
            Some(item) => {
                let (k, v) = item?;
                let (g, index) = parse_log_key(&k)?;
                (g == group).then(|| (index, v.into_vec()))
            }
            None => None,
        };
        Ok(match (pending, durable) {
            (Some(p), Some(d)) => Some(if p.0 >= d.0 { p } else { d }),
            (p, d) => p.or(d),
        })
    }

    // ---------------------------------------------------------------- internals

    fn remove_pending(&self, group: GroupId, from: u64, to_inclusive: u64) {
        let mut p = self.shared.pending.lock();
        let keys: Vec<(GroupId, u64)> = p
            .range((
                Bound::Included((group, from)),
                Bound::Included((group, to_inclusive)),
            ))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            p.remove(&k);
        }
    }

    async fn send(&self, req: LogWriteReq) -> Result<(), StorageError> {
        let tx = self.writer.sender().ok_or(StorageError::Closed)?;
        tx.send(req).await.map_err(|_| StorageError::Closed)
    }

    async fn submit_and_wait(&self, op: LogOp) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        let req = LogWriteReq {
            seq: self.shared.next_seq.fetch_add(1, Ordering::Relaxed),
            op,
            done: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        };
        self.send(req).await?;
        rx.await.map_err(|_| StorageError::Closed)?
    }
}

#[cfg(test)]
mod tests;
