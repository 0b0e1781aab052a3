//! Who leads each group: the leader cache (as last learned from answers and hints) and
//! this node's own replicas' view of their leaders.

use std::collections::HashMap;

use openraft::ServerState;
use parking_lot::Mutex;

use super::peer::NodeId;
use super::{Cluster, RouteError};
use crate::ids::GroupId;

/// Leader of each group as last learned; at most one entry per group (bounded by the
/// number of groups).
#[derive(Default)]
pub(crate) struct LeaderCache {
    leaders: Mutex<HashMap<GroupId, NodeId>>,
}

impl LeaderCache {
    pub(crate) fn get(&self, group: GroupId) -> Option<NodeId> {
        self.leaders.lock().get(&group).copied()
    }

    /// `node` answered for `group` as its leader, or was named as its leader.
    pub(crate) fn learn(&self, group: GroupId, node: NodeId) {
        self.leaders.lock().insert(group, node);
    }

    /// The cached leader did not serve: ask around again.
    pub(crate) fn forget(&self, group: GroupId) {
        self.leaders.lock().remove(&group);
    }
}

impl Cluster {
    /// Whether this node's Raft of `group` is its leader right now.
    pub(crate) fn is_local_leader(&self, group: GroupId) -> bool {
        self.groups
            .group(group)
            .map(|g| g.raft.metrics().borrow().state == ServerState::Leader)
            .unwrap_or(false)
    }

    /// The voters this node's replica of `group` knows of (possibly out of date).
    pub(super) fn local_voters(&self, group: GroupId) -> Vec<NodeId> {
        let Ok(g) = self.groups.group(group) else {
            return Vec::new();
        };
        let m = g.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().voter_ids().collect()
    }

    /// Whether this node is a voter or learner in the membership `m` knows.
    pub(super) fn is_replica(
        &self,
        m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>,
    ) -> bool {
        m.membership_config
            .membership()
            .get_node(&self.node_id)
            .is_some()
    }

    /// The leader this node's replica of `group` knows of, if this node is a replica the
    /// placement wants (a displaced one may be stuck with a leader of long ago). Never this
    /// node unless it leads: a replica may name itself from its persisted vote while it is
    /// not leading (a restarted node that was removed), and routing to that would send every
    /// attempt to this node's own "not leader" and never ask anyone else.
    pub(super) fn local_leader_view(&self, group: GroupId) -> Option<NodeId> {
        if !self.wanted_here(group) {
            return None;
        }
        let g = self.groups.group(group).ok()?;
        let m = g.raft.metrics();
        let m = m.borrow();
        if !self.is_replica(&m) {
            return None;
        }
        let leads = m.state == ServerState::Leader;
        m.current_leader.filter(|l| *l != self.node_id || leads)
    }

    /// `NotLeader`, with the leader this node's replica knows of as the hint.
    pub(super) fn not_leader(&self, group: GroupId) -> RouteError {
        RouteError::NotLeader {
            group,
            leader_hint: self.local_leader_view(group).filter(|l| *l != self.node_id),
        }
    }
}
