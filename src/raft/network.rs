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
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes};
use serde::{Deserialize, Serialize};

use super::{GroupId, GroupTypes, NodeId, Raft};

/// A Raft RPC for one group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) enum RaftRpc<C: GroupTypes> {
    AppendEntries(AppendEntriesRequest<C>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<C>),
}

/// The reply of the target node's `Raft` to a [`RaftRpc`] (same variant).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RaftRpcReply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
}

/// Transport failures (the RPC may or may not have reached the peer).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum PeerError {
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
    /// The encoded RPC would be `bytes` long, over the transport's `max`: nothing was sent.
    #[error("rpc of {bytes} bytes is over the {max}-byte frame limit")]
    PayloadTooLarge { bytes: usize, max: usize },
}

/// How many of `entries` entries should fit in one RPC when all of them encoded to `bytes`
/// and the limit is `max`: proportionally fewer, with a quarter of headroom, at least 1.
pub(crate) fn entries_hint(entries: usize, bytes: usize, max: usize) -> u64 {
    let fit = (entries as u128 * max as u128 * 3 / 4) / (bytes.max(1) as u128);
    fit.clamp(1, entries.saturating_sub(1).max(1) as u128) as u64
}

/// Delivers Raft RPCs of any group to peer nodes.
pub(crate) trait PeerNetwork<C: GroupTypes>: Send + Sync + 'static {
    /// Sends `rpc` of `group` to node `target` (whose address is in `node`), waiting at most
    /// `timeout` for the reply.
    fn call(
        &self,
        target: NodeId,
        node: &BasicNode,
        group: GroupId,
        rpc: RaftRpc<C>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<RaftRpcReply, PeerError>>;
}

#[cfg(test)]
/// Single-node stand-in: every peer is unreachable.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NoPeers;

#[cfg(test)]
impl<C: GroupTypes> PeerNetwork<C> for NoPeers {
    fn call(
        &self,
        _target: NodeId,
        _node: &BasicNode,
        _group: GroupId,
        _rpc: RaftRpc<C>,
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
pub(crate) async fn handle_rpc<C: GroupTypes>(raft: &Raft<C>, rpc: RaftRpc<C>) -> RaftRpcReply {
    match rpc {
        RaftRpc::AppendEntries(r) => RaftRpcReply::AppendEntries(raft.append_entries(r).await),
        RaftRpc::Vote(r) => RaftRpcReply::Vote(raft.vote(r).await),
        RaftRpc::InstallSnapshot(r) => {
            RaftRpcReply::InstallSnapshot(raft.install_snapshot(r).await)
        }
    }
}

/// openraft's network factory for one group, over a [`PeerNetwork`].
pub(crate) struct NetworkFactory<C: GroupTypes> {
    node_id: NodeId,
    group: GroupId,
    peers: Arc<dyn PeerNetwork<C>>,
}

impl<C: GroupTypes> NetworkFactory<C> {
    pub(crate) fn new(node_id: NodeId, group: GroupId, peers: Arc<dyn PeerNetwork<C>>) -> Self {
        Self {
            node_id,
            group,
            peers,
        }
    }
}

impl<C: GroupTypes> RaftNetworkFactory<C> for NetworkFactory<C> {
    type Network = PeerClient<C>;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient<C> {
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
pub(crate) struct PeerClient<C: GroupTypes> {
    node_id: NodeId,
    group: GroupId,
    target: NodeId,
    node: BasicNode,
    peers: Arc<dyn PeerNetwork<C>>,
}

impl<C: GroupTypes> PeerClient<C> {
    async fn call<E: std::error::Error>(
        &self,
        action: RPCTypes,
        rpc: RaftRpc<C>,
        option: &RPCOption,
    ) -> Result<RaftRpcReply, RPCError<NodeId, BasicNode, E>> {
        let timeout = option.hard_ttl();
        self.peers
            .call(self.target, &self.node, self.group, rpc, timeout)
            .await
            .map_err(|e| self.rpc_error(action, timeout, e))
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        action: RPCTypes,
        timeout: Duration,
        e: PeerError,
    ) -> RPCError<NodeId, BasicNode, E> {
        match e {
            PeerError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
            PeerError::Timeout => RPCError::Timeout(Timeout {
                action,
                id: self.node_id,
                target: self.target,
                timeout,
            }),
            PeerError::Network(_) | PeerError::PayloadTooLarge { .. } => {
                RPCError::Network(NetworkError::new(&e))
            }
        }
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

impl<C: GroupTypes> RaftNetwork<C> for PeerClient<C> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let entries = rpc.entries.len();
        let timeout = option.hard_ttl();
        let sent = self
            .peers
            .call(
                self.target,
                &self.node,
                self.group,
                RaftRpc::AppendEntries(rpc),
                timeout,
            )
            .await;
        let reply = match sent {
            // The log reader already cuts batches by bytes (`APPEND_ENTRIES_BYTES_MAX`); this
            // catches what it cannot see (encoding overhead): openraft retries at once with
            // fewer entries. One entry that alone is too large cannot be split: a network
            // error (retried later); entries are cut by bytes when proposed, so it does not
            // happen.
            Err(PeerError::PayloadTooLarge { bytes, max }) if entries > 1 => {
                let hint = entries_hint(entries, bytes, max);
                tracing::warn!(
                    group = self.group,
                    target = self.target,
                    entries,
                    bytes,
                    hint,
                    "append-entries over the frame limit; openraft retries with fewer entries"
                );
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(hint),
                ));
            }
            other => other.map_err(|e| self.rpc_error(RPCTypes::AppendEntries, timeout, e))?,
        };
        match reply {
            RaftRpcReply::AppendEntries(r) => r.map_err(|e| self.remote(e)),
            _ => Err(Self::mismatch()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
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
