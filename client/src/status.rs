//! The `/admin/status` schema. The server serializes exactly these structs (through
//! `serde_json::Value`, so keys come out sorted as they always did) and every reader — the
//! `chatnode status` CLI, jepsen's nemesis, the tests — deserializes them, instead of each
//! picking fields out of untyped JSON.
//!
//! [`GroupStatus`] also travels between nodes (bincode, inside the peer protocol's status
//! reply): keep its fields' order and types stable.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// `GET /admin/status`: the answering node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminStatus {
    /// The node that answered.
    pub node_id: u64,
    pub cluster_id: String,
    pub placement_version: u64,
    /// Desired replica set per group (0 = meta, 1..=S shards).
    pub replicas: BTreeMap<u32, Vec<u64>>,
    /// Every node the meta group knows, left ones included.
    pub nodes: Vec<NodeEntry>,
    /// The answering node's own replicas.
    pub groups: Vec<GroupStatus>,
    /// Each node's (not left) report about its replicas, asked over the peer transport.
    pub node_statuses: Vec<NodeReport>,
}

/// One member of the cluster as the meta group records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub id: u64,
    pub client_addr: String,
    pub peer_addr: String,
    pub state: MemberState,
}

/// A node's place in the cluster's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Holds (or is receiving) replicas.
    Active,
    /// Draining: its replicas move away; then it is `Left`.
    Leaving,
    Left,
}

/// One node's answer to the status question, or why there was none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node_id: u64,
    pub reachable: bool,
    /// Present when `reachable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<GroupStatus>>,
    /// Present when not `reachable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl NodeReport {
    pub fn reachable(node_id: u64, groups: Vec<GroupStatus>) -> Self {
        NodeReport {
            node_id,
            reachable: true,
            groups: Some(groups),
            error: None,
        }
    }

    pub fn unreachable(node_id: u64, error: String) -> Self {
        NodeReport {
            node_id,
            reachable: false,
            groups: None,
            error: Some(error),
        }
    }

    /// The groups reported (none when unreachable).
    pub fn groups(&self) -> &[GroupStatus] {
        self.groups.as_deref().unwrap_or(&[])
    }
}

/// One replica of one Raft group, as the node holding it sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub group: u32,
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

impl GroupStatus {
    /// Whether `node` is a voter or learner of this group as this replica sees it.
    pub fn holds(&self, node: u64) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }

    /// Replication lag per follower, `(node, entries behind)`, as the leader sees it.
    pub fn lag(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.matched
            .iter()
            .map(|(n, idx)| (*n, self.last_log_index.saturating_sub(*idx)))
    }
}

/// A replica's Raft role. Travels as its lowercase name in every format (`/admin/status`
/// JSON and the peer transport's bincode alike), as the `String` it replaced did.
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

impl fmt::Display for GroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberState::Active => "active",
            MemberState::Leaving => "leaving",
            MemberState::Left => "left",
        })
    }
}

impl AdminStatus {
    /// Every reachable node's replicas of `group`, as `(node, status)`.
    pub fn replicas_of(&self, group: u32) -> impl Iterator<Item = (u64, &GroupStatus)> + '_ {
        self.node_statuses.iter().flat_map(move |r| {
            r.groups()
                .iter()
                .filter(move |g| g.group == group)
                .map(move |g| (r.node_id, g))
        })
    }

    /// The replica of `group` that says it leads, with the highest term, as `(node, status)`.
    pub fn leader_of(&self, group: u32) -> Option<(u64, &GroupStatus)> {
        self.replicas_of(group)
            .filter(|(_, g)| g.state == GroupState::Leader)
            .max_by_key(|(_, g)| g.term)
    }
}

/// A node's answer to a status request over the peer transport: all its replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: u64,
    pub cluster_id: String,
    pub groups: Vec<GroupStatus>,
}

#[cfg(test)]
#[path = "status/tests.rs"]
mod tests;
