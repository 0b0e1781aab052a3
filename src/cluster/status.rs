//! What a node reports about its replicas (for `/admin/status`, `chatnode status`, the
//! leave procedure and tests), whether it is ready to serve, and which replicas keep up
//! with a group's leader.

use std::collections::BTreeSet;

use openraft::{RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};

use super::peer::NodeId;
use crate::shard::command::GroupId;

/// A replica whose log is at most this many entries behind the leader's pushes the group's
/// messages to its own connections when it applies them; the leader does not send it its
/// copy (see [`super::Cluster::replicas_pushing_by_apply`]).
pub const PUSH_BY_APPLY_LAG_MAX: u64 = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub group: GroupId,
    /// "leader", "follower", "candidate", "learner" or "shutdown".
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub last_log_index: u64,
    pub applied: u64,
    /// On the leader: the log index each follower has matched (replication lag =
    /// `last_log_index - matched`).
    pub matched: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: u64,
    pub cluster_id: String,
    pub groups: Vec<GroupStatus>,
}

impl GroupStatus {
    pub fn from_metrics(group: GroupId, m: &RaftMetrics<u64, openraft::BasicNode>) -> Self {
        let membership = m.membership_config.membership();
        let state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let mut matched: Vec<(u64, u64)> = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(n, l)| (*n, l.map(|l| l.index).unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        matched.sort_unstable();
        GroupStatus {
            group,
            state: state.into(),
            leader: m.current_leader,
            term: m.current_term,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            last_log_index: m.last_log_index.unwrap_or(0),
            applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            matched,
        }
    }

    /// Whether `node` is a voter or learner of this group as this replica sees it.
    pub fn holds(&self, node: u64) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }
}

impl super::Cluster {
    /// Ready to serve: this node is in the meta state, and every group it holds a wanted
    /// replica of knows its leader. A replica the placement moved away is left out: if it
    /// was down or cut off when it was removed, it never learns that and still sees itself
    /// as a voter without a leader.
    pub fn ready(&self) -> bool {
        if !self.meta.get().nodes.contains_key(&self.node_id) {
            return false;
        }
        self.groups.groups().all(|g| {
            let m = g.raft.metrics();
            let m = m.borrow();
            !self.is_replica(&m) || !self.wanted_here(g.group) || m.current_leader.is_some()
        })
    }

    /// Whether the placement wants a replica of `group` on this node (yes while there is no
    /// placement for it yet).
    pub fn wanted_here(&self, group: GroupId) -> bool {
        self.meta
            .get()
            .replicas
            .get(&group)
            .is_none_or(|r| r.contains(&self.node_id))
    }

    /// Every group as this node's replica sees it.
    pub fn local_status(&self) -> NodeStatus {
        let groups = self
            .groups
            .groups()
            .map(|g| GroupStatus::from_metrics(g.group, &g.raft.metrics().borrow()))
            .collect();
        NodeStatus {
            node_id: self.node_id,
            cluster_id: self.cluster_id.clone(),
            groups,
        }
    }

    /// Asks `node` for its status.
    pub async fn peer_status(
        &self,
        node: u64,
        timeout: std::time::Duration,
    ) -> Result<NodeStatus, super::RouteError> {
        use super::peer::{PeerReply, PeerRequest};
        use crate::shard::command::META_GROUP;
        if node == self.node_id {
            return Ok(self.local_status());
        }
        match self
            .call_peer(
                node,
                META_GROUP,
                &super::trace::current(),
                PeerRequest::Status,
                timeout,
            )
            .await?
        {
            PeerReply::Status(s) => Ok(s),
            other => Err(super::route::mismatch(META_GROUP, &other)),
        }
    }

    /// On the leader of `group`: the other replicas whose log is within
    /// [`PUSH_BY_APPLY_LAG_MAX`] entries of the leader's. Their own apply pushes the group's
    /// messages to their connections, so the leader's fan-out skips them; a replica further
    /// behind (catching up, maybe through a snapshot whose messages are never applied one by
    /// one) still gets the pushes. Empty when this node does not lead `group`.
    pub fn replicas_pushing_by_apply(&self, group: GroupId) -> BTreeSet<NodeId> {
        let Ok(g) = self.groups.group(group) else {
            return BTreeSet::new();
        };
        let m = g.raft.metrics();
        let m = m.borrow();
        let (Some(replication), Some(last)) = (m.replication.as_ref(), m.last_log_index) else {
            return BTreeSet::new();
        };
        replication
            .iter()
            .filter(|(n, matched)| {
                **n != self.node_id
                    && matched.is_some_and(|l| l.index + PUSH_BY_APPLY_LAG_MAX >= last)
            })
            .map(|(n, _)| *n)
            .collect()
    }
}
