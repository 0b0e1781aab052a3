//! What nodes say to each other over the transport, and how a node answers.
//!
//! Every frame's header carries cluster id, group and target node (checked by the
//! transport before anything here runs). The bodies: Raft RPCs of any group, client writes
//! and reads forwarded to a group's leader, meta writes, status, and fan-out pushes.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use openraft::BasicNode;
use serde::{Deserialize, Serialize};

use super::command::{MetaOp, QueryResult, RaftRpc, Response, TypeConfig};
use super::forward::{ForwardedWrite, FORWARD_BATCH_MAX};
use super::meta_view::MetaView;
use super::push::PushItem;
use super::status::NodeStatus;
use super::Cluster;
use super::RouteError;
use crate::ids::GroupId;
use crate::raft::{handle_rpc, PeerError, PeerNetwork, RaftRpcReply};
use crate::shard::command::{ShardOp, ShardResponse};
use crate::shard::query::ShardQuery;
use crate::transport::{FrameHeader, Handler, Transport, TransportError};

pub(crate) use crate::ids::NodeId;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum PeerRequest {
    /// A Raft RPC of the header's group.
    Raft(RaftRpc),
    /// A shard command for the header's group, proposed by the receiver if it leads it.
    Write(ShardOp),
    /// A meta command (group 0).
    Meta(MetaOp),
    /// A linearizable read of the header's group, served by its leader.
    Query(ShardQuery),
    /// This node's view of its groups.
    Status,
    /// Committed messages, receipts, typing and presence for the receiver's connections, in
    /// the order the sender produced them.
    Push(Vec<PushItem>),
    /// Deliver the outbox of the header's group now (its leader does).
    DrainOutbox,
    /// Do not campaign in the header's group for a while (a leadership transfer).
    HoldElections { hold_ms: u64 },
    /// Campaign in the header's group now (the target of a leadership transfer).
    Elect,
    /// Forwarded shard commands of any groups (each names its own), proposed by the
    /// receiver where it leads; answered in order by `PeerReply::WriteBatch`.
    WriteBatch(Vec<ForwardedWrite>),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PeerReply {
    Raft(RaftRpcReply),
    Write(Result<ShardResponse, RouteError>),
    Meta(Result<Response, RouteError>),
    Query(Result<QueryResult, RouteError>),
    Status(NodeStatus),
    Pushed,
    Drained(Result<(), RouteError>),
    /// The request could not be served at all (e.g. unknown group).
    Error(String),
    /// One answer per command of a `PeerRequest::WriteBatch`, in its order.
    WriteBatch(Vec<Result<ShardResponse, RouteError>>),
}

/// The node's transport.
pub(crate) type PeerTransport = Transport<PeerRequest, PeerReply>;

/// Serves peer requests with this node's groups.
pub(crate) struct PeerService {
    pub(crate) cluster: Arc<Cluster>,
}

impl Handler<PeerRequest, PeerReply> for PeerService {
    fn handle(&self, header: FrameHeader, body: PeerRequest) -> BoxFuture<'static, PeerReply> {
        let cluster = self.cluster.clone();
        let group = header.group;
        let from = header.from;
        let trace_id = header.trace_id;
        Box::pin(super::trace::remote_scope(trace_id, async move {
            match body {
                PeerRequest::Raft(rpc) => match cluster.local_groups().group(group) {
                    Ok(g) => PeerReply::Raft(handle_rpc(&g.raft, rpc).await),
                    Err(e) => PeerReply::Error(e.to_string()),
                },
                PeerRequest::Write(op) => PeerReply::Write(cluster.serve_write(group, op).await),
                PeerRequest::Meta(op) => PeerReply::Meta(cluster.serve_meta(op).await),
                PeerRequest::Query(q) => PeerReply::Query(cluster.serve_query(group, q).await),
                PeerRequest::Status => PeerReply::Status(cluster.local_status()),
                PeerRequest::DrainOutbox => PeerReply::Drained(cluster.serve_drain(group).await),
                PeerRequest::Elect => {
                    cluster.elect_now(group).await;
                    PeerReply::Pushed
                }
                PeerRequest::HoldElections { hold_ms } => {
                    cluster.hold_elections(group, hold_ms.min(super::transfer::TRANSFER_WINDOW_MS));
                    PeerReply::Pushed
                }
                PeerRequest::Push(items) => {
                    cluster.receive_push(from, items);
                    PeerReply::Pushed
                }
                PeerRequest::WriteBatch(writes) if writes.len() > FORWARD_BATCH_MAX => {
                    PeerReply::Error(format!(
                        "{} forwarded writes in one batch (at most {FORWARD_BATCH_MAX})",
                        writes.len()
                    ))
                }
                PeerRequest::WriteBatch(writes) => {
                    let answers = writes.into_iter().map(|w| {
                        let cluster = cluster.clone();
                        super::trace::remote_scope(w.trace_id, async move {
                            cluster.serve_write(w.group, w.op).await
                        })
                    });
                    PeerReply::WriteBatch(futures_util::future::join_all(answers).await)
                }
            }
        }))
    }
}

/// Raft RPCs over the node's transport (`raft::PeerNetwork`).
pub(crate) struct RaftNet {
    /// Set once the transport is open. The groups start before it: a creating node learns
    /// its cluster id, hence its certificate, from its own (single-voter) meta group, and
    /// until then its groups have no peer to call.
    pub(crate) transport: OnceLock<PeerTransport>,
    /// The current address of a node (the meta state), preferred over the address openraft
    /// stored in the group's membership (which may be older).
    pub(crate) meta: MetaView,
}

pub(crate) fn peer_error(e: TransportError) -> PeerError {
    match e {
        TransportError::Unreachable(m) => PeerError::Unreachable(m),
        TransportError::Timeout => PeerError::Timeout,
        TransportError::FrameTooLarge { bytes, max } => PeerError::PayloadTooLarge { bytes, max },
        other => PeerError::Network(other.to_string()),
    }
}

impl PeerNetwork<TypeConfig> for RaftNet {
    fn call(
        &self,
        target: NodeId,
        node: &BasicNode,
        group: GroupId,
        rpc: RaftRpc,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<RaftRpcReply, PeerError>> {
        let transport = self.transport.get().cloned();
        let addr = self
            .meta
            .peer_addr(target)
            .unwrap_or_else(|| node.addr.clone());
        Box::pin(async move {
            let Some(t) = transport else {
                return Err(PeerError::Unreachable("transport not started".into()));
            };
            match t
                .call(target, &addr, group, "", PeerRequest::Raft(rpc), timeout)
                .await
                .map_err(peer_error)?
            {
                PeerReply::Raft(r) => Ok(r),
                PeerReply::Error(e) => Err(PeerError::Network(e)),
                _ => Err(PeerError::Network(
                    "reply does not match the request".into(),
                )),
            }
        })
    }
}
