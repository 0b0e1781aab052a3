//! What delivery needs of the cluster, as two small traits: the peers to send pushes to
//! (and sending them), and reading a gap from a group's leader. `ClusterLink` implements
//! both over `cluster::Cluster`; the tests use fakes.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use openraft::ServerState;

use crate::cluster::command::*;
use crate::cluster::peer::{PeerReply, PeerRequest};
use crate::cluster::push::PushItem;
use crate::cluster::Cluster;
use crate::ids::*;
use crate::shard::command::*;
use crate::shard::query::{QueryResult, ShardQuery};

pub(crate) use crate::cluster::peer::NodeId;

/// Time for one push request.
pub(crate) const PUSH_TIMEOUT_MS: u64 = 2_000;
/// A replica whose log is at most this many entries behind the leader's pushes the group's
/// messages to its own connections when it applies them; the leader does not send it its
/// copy (see [`replicas_pushing_by_apply`]).
pub(crate) const PUSH_BY_APPLY_LAG_MAX: u64 = 64;

/// How the leader of a group sees its replicas' logs.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Replication {
    /// The leader's last log index.
    pub(crate) last_log_index: u64,
    /// Each other replica and the last index known to match the leader's log.
    pub(crate) matched: Vec<(NodeId, Option<u64>)>,
}

/// The other nodes, and sending them a batch of pushes.
pub(crate) trait Peers: Send + Sync + 'static {
    /// The other nodes that are not gone: where pushes go.
    fn peers(&self) -> Vec<NodeId>;
    /// When this node leads `group` right now: how far its replicas are (else `None`).
    fn replication(&self, group: GroupId) -> Option<Replication>;
    /// Sends one batch to `peer` and waits for its acknowledgement (bounded in time).
    fn send(&self, peer: NodeId, batch: Vec<PushItem>) -> BoxFuture<'_, Result<(), String>>;
}

/// Reading what a gateway missed.
pub(crate) trait GapRead: Send + Sync + 'static {
    /// The messages of `conversation` after `after_seq`, at most up to `last_seq` and
    /// `limit` of them, read linearizably from the leader of `group`.
    fn read_after(
        &self,
        group: GroupId,
        conversation: ConversationId,
        after_seq: u64,
        last_seq: u64,
        limit: u64,
    ) -> BoxFuture<'_, Result<Vec<Message>, String>>;
}

/// On the leader of a group: the other replicas whose log is within
/// [`PUSH_BY_APPLY_LAG_MAX`] entries of the leader's. Their own apply pushes the group's
/// messages to their connections, so the leader's fan-out skips them; a replica further
/// behind (catching up, maybe through a snapshot whose messages are never applied one by
/// one) still gets the pushes.
pub(crate) fn replicas_pushing_by_apply(r: &Replication) -> BTreeSet<NodeId> {
    r.matched
        .iter()
        .filter(|(_, matched)| {
            matched.is_some_and(|l| l + PUSH_BY_APPLY_LAG_MAX >= r.last_log_index)
        })
        .map(|(n, _)| *n)
        .collect()
}

/// Both traits over the cluster. Weak: delivery's tasks do not keep the cluster alive.
pub(crate) struct ClusterLink(pub(crate) Weak<Cluster>);

impl ClusterLink {
    pub(crate) fn new(cluster: &Arc<Cluster>) -> Arc<Self> {
        Arc::new(ClusterLink(Arc::downgrade(cluster)))
    }
}

impl Peers for ClusterLink {
    fn peers(&self) -> Vec<NodeId> {
        let Some(c) = self.0.upgrade() else {
            return Vec::new();
        };
        let meta = c.meta();
        meta.nodes
            .values()
            .filter(|n| n.node_id != c.node_id && n.state != NodeState::Left)
            .map(|n| n.node_id)
            .collect()
    }

    fn replication(&self, group: GroupId) -> Option<Replication> {
        let c = self.0.upgrade()?;
        let g = c.local_groups().group(group).ok()?;
        let m = g.raft.metrics();
        let m = m.borrow();
        if m.state != ServerState::Leader {
            return None;
        }
        let last_log_index = m.last_log_index.unwrap_or(0);
        let matched = match (m.replication.as_ref(), m.last_log_index) {
            (Some(r), Some(_)) => r
                .iter()
                .filter(|(n, _)| **n != c.node_id)
                .map(|(n, l)| (*n, l.map(|l| l.index)))
                .collect(),
            _ => Vec::new(),
        };
        Some(Replication {
            last_log_index,
            matched,
        })
    }

    fn send(&self, peer: NodeId, batch: Vec<PushItem>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let c = self.0.upgrade().ok_or("the cluster is gone")?;
            let t = c.transport();
            let addr = c
                .address_of(peer)
                .ok_or_else(|| format!("no address for node {peer}"))?;
            let timeout = Duration::from_millis(PUSH_TIMEOUT_MS);
            match t
                .call(
                    peer,
                    &addr,
                    META_GROUP,
                    "",
                    PeerRequest::Push(batch),
                    timeout,
                )
                .await
            {
                Ok(PeerReply::Pushed) => Ok(()),
                Ok(other) => Err(format!("unexpected push reply: {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

impl GapRead for ClusterLink {
    fn read_after(
        &self,
        group: GroupId,
        conversation: ConversationId,
        after_seq: u64,
        last_seq: u64,
        limit: u64,
    ) -> BoxFuture<'_, Result<Vec<Message>, String>> {
        Box::pin(async move {
            let c = self.0.upgrade().ok_or("the cluster is gone")?;
            let q = ShardQuery::After {
                conversation_id: conversation,
                last_seq,
                after_seq,
                limit,
            };
            match c.query(group, q).await {
                Ok(QueryResult::Page(p)) => Ok(p.messages),
                Ok(_) => Err("reply does not match the query".into()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}
