//! The node's Raft commands: the meta group's own (cluster-wide settings, nodes, placement,
//! secrets), the top-level [`Request`] / [`Response`] that carry them and the shard's chat
//! commands, and the openraft [`TypeConfig`] declared from those two.
//!
//! The meta group (group 0) takes `Request::Meta`, shard groups (1..=S) take
//! `Request::Shard` / `Request::ShardBatch`. Stored data (every log entry, the meta state)
//! is the bincode of these enums: variants are only ever appended, never reordered, so that
//! existing data dirs decode (the golden bytes in `command/tests.rs` pin the encoding).

use std::io::Cursor;

use openraft::BasicNode;
use serde::{Deserialize, Serialize};

use crate::ids::{GroupId, NodeId};
use crate::shard::command::{ShardOp, ShardResponse};

/// A command for one Raft group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Request {
    Meta(MetaOp),
    Shard(ShardOp),
    /// Several shard commands proposed as one entry (proposal batching): applied in order,
    /// each with its own response, in one state-machine batch.
    ShardBatch(Vec<ShardOp>),
}

/// The response of an applied command. Deterministic: every replica computes the same one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Response {
    /// For blank and membership entries.
    None,
    Meta(ClusterSettings),
    Shard(ShardResponse),
    /// The responses of a `Request::ShardBatch`, in its order.
    ShardBatch(Vec<ShardResponse>),
    /// The meta state after a membership / placement command (and, for `AddNode`, the
    /// admitted node's id).
    MetaState {
        state: MetaState,
        node_id: Option<NodeId>,
    },
}

openraft::declare_raft_types!(
    /// The openraft type configuration of every group on a node.
    pub(crate) TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

impl crate::raft::GroupTypes for TypeConfig {
    fn blank_response() -> Response {
        Response::None
    }
}

/// A running group on this node.
pub(crate) type GroupHandle = crate::raft::GroupHandle<TypeConfig>;
/// A Raft RPC of this node's groups.
pub(crate) type RaftRpc = crate::raft::RaftRpc<TypeConfig>;
/// What a shard query answers, the meta group's state included.
pub(crate) type QueryResult = crate::shard::query::QueryResult<MetaState>;

/// Commands of the meta group (cluster-wide settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum MetaOp {
    /// Written once when a cluster is created; later proposals are ignored (first wins).
    InitCluster(ClusterSettings),
    /// Admits a node (or returns the one already admitted with this peer address).
    AddNode {
        peer_addr: String,
        client_addr: String,
    },
    /// A restarted node's addresses changed.
    UpdateNode {
        node_id: NodeId,
        peer_addr: String,
        client_addr: String,
    },
    SetNodeState {
        node_id: NodeId,
        state: NodeState,
    },
    /// The desired replica set of every group; applied only if `version` is the current
    /// placement version (compare-and-set, so a stale controller cannot undo a newer plan).
    SetPlacement {
        version: u64,
        replicas: std::collections::BTreeMap<GroupId, Vec<NodeId>>,
    },
    // secrets (issue 12 point 5)
    /// The cluster's admin token and first join secret, written once by the creating node
    /// (first wins: a later one changes nothing).
    InitSecrets(ClusterSecrets),
    /// Replaces the join secret (chosen by the proposer: apply stays deterministic); the old
    /// one admits nobody afterwards. Ignored unless `secret` has
    /// [`JOIN_SECRET_BYTES`] bytes and the secrets exist.
    RotateJoinSecret {
        secret: SecretBytes,
    },
}

/// Bytes of a join secret.
pub(crate) const JOIN_SECRET_BYTES: usize = 32;

/// Secret bytes whose `Debug` prints nothing (commands and states are logged with `{:?}`).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SecretBytes(pub(crate) Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} secret bytes>", self.0.len())
    }
}

/// Cluster-wide secrets, replicated in the meta state so that every member has them: the
/// join secret (rotatable) and the admin token that `/admin/*` requires on every node.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClusterSecrets {
    /// What a joiner's token must carry (with the CA fingerprint, which never changes).
    pub(crate) join_secret: SecretBytes,
    /// Times the join secret was replaced (0 = the one the cluster was created with).
    pub(crate) join_epoch: u64,
    /// `Authorization: Bearer <admin_token>` on `/admin/*`; empty until initialized.
    pub(crate) admin_token: String,
}

impl ClusterSecrets {
    pub(crate) fn is_initialized(&self) -> bool {
        !self.admin_token.is_empty() && self.join_secret.0.len() == JOIN_SECRET_BYTES
    }
}

impl std::fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSecrets")
            .field("join_epoch", &self.join_epoch)
            .field("initialized", &self.is_initialized())
            .finish_non_exhaustive()
    }
}

/// A node's place in the cluster's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum NodeState {
    /// Holds (or is receiving) replicas.
    Active,
    /// Draining: its replicas move away; then it is `Left`.
    Leaving,
    Left,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeInfo {
    pub(crate) node_id: NodeId,
    pub(crate) peer_addr: String,
    pub(crate) client_addr: String,
    pub(crate) state: NodeState,
}

/// The meta group's view of the cluster: nodes and the desired placement of replicas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MetaState {
    pub(crate) nodes: std::collections::BTreeMap<NodeId, NodeInfo>,
    pub(crate) next_node_id: NodeId,
    /// Desired replica set per group (0 = meta, 1..=S shards).
    pub(crate) replicas: std::collections::BTreeMap<GroupId, Vec<NodeId>>,
    pub(crate) placement_version: u64,
    // secrets (issue 12 point 5)
    /// Replicated to every member with the rest of the meta state (and to joiners in their
    /// welcome); never shown by `/admin/status`.
    pub(crate) secrets: ClusterSecrets,
}

/// [`MetaState`] as stored before it carried the secrets (decoded from older data dirs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MetaStateV1 {
    pub(crate) nodes: std::collections::BTreeMap<NodeId, NodeInfo>,
    pub(crate) next_node_id: NodeId,
    pub(crate) replicas: std::collections::BTreeMap<GroupId, Vec<NodeId>>,
    pub(crate) placement_version: u64,
}

impl From<MetaStateV1> for MetaState {
    fn from(v: MetaStateV1) -> Self {
        MetaState {
            nodes: v.nodes,
            next_node_id: v.next_node_id,
            replicas: v.replicas,
            placement_version: v.placement_version,
            secrets: ClusterSecrets::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClusterSettings {
    pub(crate) cluster_id: String,
    pub(crate) shards: u32,
    /// HS256 secret for the tokens this cluster issues.
    pub(crate) jwt_secret: Vec<u8>,
    pub(crate) created_ts: u64,
}

#[cfg(test)]
mod tests;
