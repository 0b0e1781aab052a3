//! What a node reports about its replicas (for `/admin/status`, `chatnode status`, the
//! leave procedure and tests).

use openraft::{RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};

use crate::ids::GroupId;

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
