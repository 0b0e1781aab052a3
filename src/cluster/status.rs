//! What a node reports about its replicas (for `/admin/status`, `chatnode status`, the
//! leave procedure and tests), whether it is ready to serve, and which replicas keep up
//! with a group's leader. The types are the client library's `/admin/status` schema, so the
//! server and its readers share one definition.

pub(crate) use chatnode_client::status::{GroupState, GroupStatus, NodeStatus};
use openraft::{RaftMetrics, ServerState};

use crate::ids::GroupId;

/// A replica's role from openraft's (a foreign type on both sides, so a function, not `From`).
pub(crate) fn group_state(s: ServerState) -> GroupState {
    match s {
        ServerState::Leader => GroupState::Leader,
        ServerState::Follower => GroupState::Follower,
        ServerState::Candidate => GroupState::Candidate,
        ServerState::Learner => GroupState::Learner,
        ServerState::Shutdown => GroupState::Shutdown,
    }
}

/// One replica's status from its Raft metrics.
pub(crate) fn group_status(
    group: GroupId,
    m: &RaftMetrics<u64, openraft::BasicNode>,
) -> GroupStatus {
    let membership = m.membership_config.membership();
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
        state: group_state(m.state),
        leader: m.current_leader,
        term: m.current_term,
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        last_log_index: m.last_log_index.unwrap_or(0),
        applied: m.last_applied.map(|l| l.index).unwrap_or(0),
        matched,
    }
}

#[cfg(test)]
mod tests;
impl super::Cluster {
    /// Ready to serve: this node is in the meta state, and every group it holds a wanted
    /// replica of knows its leader. A replica the placement moved away is left out: if it
    /// was down or cut off when it was removed, it never learns that and still sees itself
    /// as a voter without a leader.
    pub(crate) fn ready(&self) -> bool {
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
    pub(crate) fn wanted_here(&self, group: GroupId) -> bool {
        self.meta
            .get()
            .replicas
            .get(&group)
            .is_none_or(|r| r.contains(&self.node_id))
    }

    /// Every group as this node's replica sees it.
    pub(crate) fn local_status(&self) -> NodeStatus {
        let groups = self
            .groups
            .groups()
            .map(|g| group_status(g.group, &g.raft.metrics().borrow()))
            .collect();
        NodeStatus {
            node_id: self.node_id,
            cluster_id: self.cluster_id.clone(),
            groups,
        }
    }

    /// Asks `node` for its status.
    pub(crate) async fn peer_status(
        &self,
        node: u64,
        timeout: std::time::Duration,
    ) -> Result<NodeStatus, super::RouteError> {
        use super::peer::{PeerReply, PeerRequest};
        use crate::ids::META_GROUP;
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
}
