//! What a node reports about its replicas (for `/admin/status`, `chatnode status`, the
//! leave procedure and tests), whether it is ready to serve, and which replicas keep up
//! with a group's leader.

use openraft::{RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};

use crate::ids::GroupId;

/// A replica's Raft role as it reports it. Travels as its lowercase name in every format
/// (`/admin/status` JSON and the peer transport's bincode alike), as the `String` it
/// replaced did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum GroupState {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl GroupState {
    pub const ALL: [GroupState; 5] = [
        GroupState::Leader,
        GroupState::Follower,
        GroupState::Candidate,
        GroupState::Learner,
        GroupState::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Leader => "leader",
            GroupState::Follower => "follower",
            GroupState::Candidate => "candidate",
            GroupState::Learner => "learner",
            GroupState::Shutdown => "shutdown",
        }
    }
}

impl From<ServerState> for GroupState {
    fn from(s: ServerState) -> Self {
        match s {
            ServerState::Leader => GroupState::Leader,
            ServerState::Follower => GroupState::Follower,
            ServerState::Candidate => GroupState::Candidate,
            ServerState::Learner => GroupState::Learner,
            ServerState::Shutdown => GroupState::Shutdown,
        }
    }
}

impl From<GroupState> for &'static str {
    fn from(s: GroupState) -> Self {
        s.as_str()
    }
}

/// A name no [`GroupState`] has.
#[derive(Debug, thiserror::Error)]
#[error("unknown group state {0:?}")]
pub struct UnknownGroupState(String);

impl TryFrom<String> for GroupState {
    type Error = UnknownGroupState;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        GroupState::ALL
            .into_iter()
            .find(|g| g.as_str() == s)
            .ok_or(UnknownGroupState(s))
    }
}

impl std::fmt::Display for GroupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub group: GroupId,
    pub state: GroupState,
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
            state: m.state.into(),
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

#[cfg(test)]
mod tests;
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
