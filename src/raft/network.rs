//! Routing Raft RPCs of every group to peer nodes.
//!
//! A transport implements [`PeerNetwork`]: deliver a `(group, RaftRpc)` to node `target` and
//! bring back its [`RaftRpcReply`]; on the receiving node, hand it to [`handle_rpc`] with that
//! group's `Raft`. Both types are serde-serializable (bincode frames). openraft's network
//! traits stay inside this module.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes};
use serde::{Deserialize, Serialize};

use super::{GroupId, NodeId, Raft, TypeConfig};

/// A Raft RPC for one group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RaftRpc {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The reply of the target node's `Raft` to a [`RaftRpc`] (same variant).
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpcReply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
}

/// Transport failures (the RPC may or may not have reached the peer).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// Peer down / no connection: openraft backs off before retrying.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// No reply within the deadline.
    #[error("rpc timed out")]
    Timeout,
    /// Any other transport error (retried at once), including "the peer does not host this
    /// group (yet)".
    #[error("network: {0}")]
    Network(String),
}

/// Delivers Raft RPCs of any group to peer nodes.
pub trait PeerNetwork: Send + Sync + 'static {
    /// Sends `rpc` of `group` to node `target` (whose address is in `node`), waiting at most
    /// `timeout` for the reply.
    fn call(
        &self,
        target: NodeId,
        node: &BasicNode,
        group: GroupId,
        rpc: RaftRpc,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<RaftRpcReply, PeerError>>;
}

/// Single-node stand-in: every peer is unreachable.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPeers;

impl PeerNetwork for NoPeers {
    fn call(
        &self,
        _target: NodeId,
        _node: &BasicNode,
        _group: GroupId,
        _rpc: RaftRpc,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<RaftRpcReply, PeerError>> {
        Box::pin(async {
            Err(PeerError::Unreachable(
                "no peer network (single node)".into(),
            ))
        })
    }
}

/// Serves an RPC received from a peer with the local `Raft` of its group.
pub async fn handle_rpc(raft: &Raft, rpc: RaftRpc) -> RaftRpcReply {
    match rpc {
        RaftRpc::AppendEntries(r) => RaftRpcReply::AppendEntries(raft.append_entries(r).await),
        RaftRpc::Vote(r) => RaftRpcReply::Vote(raft.vote(r).await),
        RaftRpc::InstallSnapshot(r) => {
            RaftRpcReply::InstallSnapshot(raft.install_snapshot(r).await)
        }
    }
}

/// openraft's network factory for one group, over a [`PeerNetwork`].
pub(crate) struct NetworkFactory {
    node_id: NodeId,
    group: GroupId,
    peers: Arc<dyn PeerNetwork>,
}

impl NetworkFactory {
    pub(crate) fn new(node_id: NodeId, group: GroupId, peers: Arc<dyn PeerNetwork>) -> Self {
        Self {
            node_id,
            group,
            peers,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            node_id: self.node_id,
            group: self.group,
            target,
            node: node.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// openraft's connection to one peer for one group.
pub(crate) struct PeerClient {
    node_id: NodeId,
    group: GroupId,
    target: NodeId,
    node: BasicNode,
    peers: Arc<dyn PeerNetwork>,
}

impl PeerClient {
    async fn call<E: std::error::Error>(
        &self,
        action: RPCTypes,
        rpc: RaftRpc,
        option: &RPCOption,
    ) -> Result<RaftRpcReply, RPCError<NodeId, BasicNode, E>> {
        let timeout = option.hard_ttl();
        self.peers
            .call(self.target, &self.node, self.group, rpc, timeout)
            .await
            .map_err(|e| match e {
                PeerError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
                PeerError::Timeout => RPCError::Timeout(Timeout {
                    action,
                    id: self.node_id,
                    target: self.target,
                    timeout,
                }),
                PeerError::Network(_) => RPCError::Network(NetworkError::new(&e)),
            })
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<NodeId, BasicNode, E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            e,
        ))
    }

    fn mismatch<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
        RPCError::Network(NetworkError::new(&PeerError::Network(
            "reply does not match the request".into(),
        )))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .call(
                RPCTypes::AppendEntries,
                RaftRpc::AppendEntries(rpc),
                &option,
            )
            .await?
        {
            RaftRpcReply::AppendEntries(r) => r.map_err(|e| self.remote(e)),
            _ => Err(Self::mismatch()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(
                RPCTypes::InstallSnapshot,
                RaftRpc::InstallSnapshot(rpc),
                &option,
            )
            .await?
        {
            RaftRpcReply::InstallSnapshot(r) => r.map_err(|e| self.remote(e)),
            _ => Err(Self::mismatch()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .call(RPCTypes::Vote, RaftRpc::Vote(rpc), &option)
            .await?
        {
            RaftRpcReply::Vote(r) => r.map_err(|e| self.remote(e)),
            _ => Err(Self::mismatch()),
        }
    }
}
