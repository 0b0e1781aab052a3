//! openraft plumbing only. No chat logic here, and no chat types: every group's Raft is
//! generic over its [`GroupTypes`] (openraft's type config with this node's fixed choices);
//! the node's one type config, with its request and response enums, is declared by the
//! cluster (`cluster::command::TypeConfig`).
//!
//! - [`GroupTypes`]: `D` and `R` are the caller's, `NodeId` = u64, `Node` = [`BasicNode`],
//!   `SnapshotData` = `Cursor<Vec<u8>>`, Tokio runtime.
//! - [`LogStore`] / [`StateMachineStore`]: one per group, cheap handles over the node's
//!   [`Store`]. Log IO goes through the store's group-commit log writer; the state machine
//!   applies a batch of entries as one [`SmTxn`] through the [`Applier`].
//! - [`PeerNetwork`]: how Raft RPCs of any group reach a peer node (a QUIC transport
//!   implements it; [`NoPeers`] is the single-node stand-in); [`handle_rpc`] serves them.
//! - [`start_group`] / [`initialize_single`]: create a group's `Raft`.

mod log_store;
mod network;
mod state_machine;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::sync::Arc;

use openraft::error::{Fatal, InitializeError, RaftError};
use openraft::{BasicNode, Config, ConfigError, RaftTypeConfig, SnapshotPolicy};

pub(crate) use log_store::LogStore;
pub(crate) use log_store::APPEND_ENTRIES_BYTES_MAX;
#[cfg(test)]
pub(crate) use network::NoPeers;
pub(crate) use network::{handle_rpc, PeerError, PeerNetwork, RaftRpc, RaftRpcReply};
pub(crate) use state_machine::StateMachineStore;

pub(crate) use crate::ids::{GroupId, NodeId};
pub(crate) use crate::storage::SmTxn;
use crate::storage::{StorageError, Store};

/// The openraft type configuration of a node's groups, as far as `raft` fixes it: the
/// caller chooses the request (`D`) and response (`R`) types; ids, nodes, entries,
/// snapshots and the runtime are this module's.
pub(crate) trait GroupTypes:
    RaftTypeConfig<
    D: Clone + Debug,
    R: Clone + Debug,
    NodeId = NodeId,
    Node = BasicNode,
    Entry = openraft::Entry<Self>,
    SnapshotData = Cursor<Vec<u8>>,
    AsyncRuntime = openraft::TokioRuntime,
>
{
    /// The response of a blank or membership entry (they carry no request).
    fn blank_response() -> Self::R;
}

pub(crate) type Entry<C> = openraft::Entry<C>;
/// A running group's openraft handle.
pub(crate) type Raft<C> = openraft::Raft<C>;

/// Chat (or meta) logic plugged into every group's state machine.
pub(crate) trait Applier<C: GroupTypes>: Send + Sync + 'static {
    /// Applies one committed normal entry. Must be deterministic. Reads and writes go
    /// through `txn` only. Deterministic refusals are `Ok` responses; an `Err` is an IO
    /// failure: nothing of the batch is written and the group's Raft stops (fatal).
    fn apply(&self, txn: &mut SmTxn<'_>, req: &C::D) -> Result<C::R, StorageError>;
    /// Called after the batch holding these entries' effects was written, in log order
    /// (one response per entry, [`GroupTypes::blank_response`] for blank/membership
    /// entries). Runs on the store's apply thread, which every group shares: must not block
    /// for long.
    fn after_write(&self, group: GroupId, responses: &[C::R]);
}

/// Bytes of snapshot data per install-snapshot RPC. openraft 0.9 sends a snapshot as chunks
/// of this size (one RPC each, `install_snapshot_timeout_ms` apiece), so a snapshot of any
/// size crosses the network in frames far under the transport's 16 MiB limit. The snapshot
/// itself is built and received in memory (`SnapshotData = Cursor<Vec<u8>>`): its size is
/// bounded by the group's data, not by the frame limit.
pub(crate) const SNAPSHOT_CHUNK_BYTES_MAX: u64 = 2 << 20;

/// Default snapshot interval of a group, in applied entries (`[raft] snapshot_every_logs`).
pub(crate) const SNAPSHOT_EVERY_LOGS: u64 = 100_000;
/// Default entries kept behind a snapshot (`[raft] keep_logs_behind_snapshot`).
pub(crate) const KEEP_LOGS_BEHIND_SNAPSHOT: u64 = 1_000;

/// Raft timings and log-compaction settings of a group.
#[derive(Debug, Clone)]
pub(crate) struct RaftTimings {
    pub(crate) heartbeat_ms: u64,
    pub(crate) election_min_ms: u64,
    pub(crate) election_max_ms: u64,
    /// Timeout of one install-snapshot chunk RPC.
    pub(crate) install_snapshot_timeout_ms: u64,
    /// Build a snapshot (and allow purging the log) every this many applied entries.
    pub(crate) snapshot_every_logs: u64,
    /// Entries kept in the log behind the last snapshot (to replicate without snapshots).
    pub(crate) keep_logs_behind_snapshot: u64,
    /// Entries per append-entries RPC.
    pub(crate) max_payload_entries: u64,
    /// Purge the log only once at least this many entries can go.
    pub(crate) purge_batch_size: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        // openraft 0.9 bounds every AppendEntries (follower fsync included) by the heartbeat
        // interval: on a loaded 2-core machine 100 ms timed out under load and replication
        // thrashed. Elections stay under ~2 s.
        Self {
            heartbeat_ms: 250,
            election_min_ms: 1_000,
            election_max_ms: 1_800,
            install_snapshot_timeout_ms: 2_000,
            snapshot_every_logs: SNAPSHOT_EVERY_LOGS,
            keep_logs_behind_snapshot: KEEP_LOGS_BEHIND_SNAPSHOT,
            max_payload_entries: 300,
            purge_batch_size: 256,
        }
    }
}

impl RaftTimings {
    /// The validated openraft config for `group`.
    // openraft's ConfigError is large, but this runs once per group at start: boxing it
    // would buy nothing.
    #[allow(clippy::result_large_err)]
    pub(crate) fn to_config(&self, group: GroupId) -> Result<Config, ConfigError> {
        Config {
            cluster_name: format!("chatnode-group-{group}"),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_logs),
            max_in_snapshot_log_to_keep: self.keep_logs_behind_snapshot,
            max_payload_entries: self.max_payload_entries,
            purge_batch_size: self.purge_batch_size,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES_MAX,
            ..Default::default()
        }
        .validate()
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RaftStartError {
    #[error("raft config: {0}")]
    Config(#[from] ConfigError),
    #[error("raft: {0}")]
    Fatal(#[from] Fatal<NodeId>),
    #[error("initialize: {0}")]
    Initialize(#[from] RaftError<NodeId, InitializeError<NodeId, BasicNode>>),
}

/// A running group on this node.
pub(crate) struct GroupHandle<C: GroupTypes> {
    pub(crate) group: GroupId,
    pub(crate) raft: Raft<C>,
}

// Not derived: a derive would ask `C: Clone` of the handle's users.
impl<C: GroupTypes> Clone for GroupHandle<C> {
    fn clone(&self) -> Self {
        Self {
            group: self.group,
            raft: self.raft.clone(),
        }
    }
}

/// Creates (or restarts, from what `store` holds) the Raft of `group` on this node.
pub(crate) async fn start_group<C: GroupTypes>(
    node_id: NodeId,
    group: GroupId,
    store: Arc<Store>,
    applier: Arc<dyn Applier<C>>,
    network: Arc<dyn PeerNetwork<C>>,
    timings: &RaftTimings,
) -> Result<GroupHandle<C>, RaftStartError> {
    let config = Arc::new(timings.to_config(group)?);
    let log = LogStore::new(group, store.clone());
    let sm = StateMachineStore::new(group, store, applier);
    let net = network::NetworkFactory::new(node_id, group, network);
    let raft = Raft::new(node_id, config, net, log, sm).await?;
    Ok(GroupHandle { group, raft })
}

/// Initializes a group with this node as its single voter if it never was initialized
/// (no vote, no log); on a restarted or already-joined node this is a no-op.
pub(crate) async fn initialize_single<C: GroupTypes>(
    handle: &GroupHandle<C>,
    node_id: NodeId,
    addr: String,
) -> Result<(), RaftStartError> {
    if handle.raft.is_initialized().await? {
        return Ok(());
    }
    let mut nodes = BTreeMap::new();
    nodes.insert(node_id, BasicNode::new(addr));
    match handle.raft.initialize(nodes).await {
        Ok(()) => Ok(()),
        // Initialized concurrently (e.g. a vote arrived in between): nothing to do.
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Runs a blocking storage call on the blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    crate::storage::blocking(f).await
}

#[cfg(test)]
mod tests;
