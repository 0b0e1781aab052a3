//! The control loop every node runs.
//!
//! - Refreshes this node's copy of the meta state (addresses, desired placement).
//! - On the meta leader: computes the desired placement ([`super::balance`]) from the active
//!   nodes and stores it (compare-and-set on its version).
//! - On the leader of each group: moves the group's Raft membership one step towards the
//!   desired replica set: add a learner → wait until it caught up → replace the voters →
//!   drop learners that are not wanted. One change at a time per group.
//! - Spreads leaderships: a node that leads more than its share of groups hands one of them
//!   to its preferred leader (see `Cluster::transfer_leadership`), at most once per group
//!   per cooldown.
//! - Announces leadership changes to the gateways (fan-out gap filling).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers};

use super::balance::{balance, Placement};
use super::command::*;
use super::status::GroupState;
use super::Cluster;
use super::RouteError;
use crate::ids::{GroupId, NodeId, META_GROUP};

pub(crate) const CONTROLLER_INTERVAL_MS: u64 = 300;
/// A learner within this many entries of the leader's log counts as caught up.
pub(crate) const CATCHUP_LAG_MAX: u64 = 100;
/// Time allowed for one membership change.
pub(crate) const MEMBERSHIP_CHANGE_TIMEOUT_MS: u64 = 10_000;
/// A group's leader hands over leadership for balance at most this often.
pub(crate) const STEP_DOWN_COOLDOWN_MS: u64 = 15_000;
/// How often `leave` checks whether the node still holds replicas.
pub(crate) const LEAVE_POLL_MS: u64 = 500;

pub(crate) struct Controller {
    cluster: Arc<Cluster>,
    peer_addr: String,
    client_addr: String,
}

impl Controller {
    pub(crate) fn new(cluster: Arc<Cluster>, peer_addr: String, client_addr: String) -> Arc<Self> {
        Arc::new(Controller {
            cluster,
            peer_addr,
            client_addr,
        })
    }

    /// Starts the control loop (it stops with the cluster's shutdown).
    pub(crate) fn spawn(self: &Arc<Self>) {
        let shutdown = self.cluster.shutdown();
        let me = self.clone();
        shutdown.spawn(async move {
            let mut stepped_down: HashMap<GroupId, Instant> = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(CONTROLLER_INTERVAL_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.round(&mut stepped_down).await;
            }
        });
    }

    async fn round(&self, stepped_down: &mut HashMap<GroupId, Instant>) {
        let c = &self.cluster;
        if let Ok(m) = c.read_meta().await {
            c.set_meta(m);
        }
        let meta = c.meta();
        if let Some(me) = meta.nodes.get(&c.node_id) {
            if me.peer_addr != self.peer_addr || me.client_addr != self.client_addr {
                let _ = c
                    .meta_write(MetaOp::UpdateNode {
                        node_id: c.node_id,
                        peer_addr: self.peer_addr.clone(),
                        client_addr: self.client_addr.clone(),
                    })
                    .await;
            }
        }
        if c.is_local_leader(META_GROUP) {
            self.place(&meta).await;
        }
        let groups: Vec<GroupHandle> = c.local_groups().groups().cloned().collect();
        let led = groups.iter().filter(|g| c.is_local_leader(g.group)).count();
        for g in &groups {
            // A replica the placement moved away must not campaign: it may never learn that
            // it was removed, and its rising term would later depose the group's leader.
            let wanted = c.wanted_here(g.group);
            g.raft
                .runtime_config()
                .elect(wanted && !c.elections_held(g.group));
            if !c.is_local_leader(g.group) {
                continue;
            }
            let Some(desired) = meta.replicas.get(&g.group) else {
                continue;
            };
            if let Err(e) = self.reconcile(g, desired, &meta, led, stepped_down).await {
                tracing::debug!(group = g.group, error = %e, "reconcile step failed");
            }
        }
    }

    /// Stores a new desired placement if the active nodes changed.
    async fn place(&self, meta: &MetaState) {
        let active: Vec<NodeId> = meta
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Active)
            .map(|n| n.node_id)
            .collect();
        let mut groups: Vec<GroupId> = self
            .cluster
            .local_groups()
            .groups()
            .map(|g| g.group)
            .collect();
        groups.sort_unstable();
        let current: Placement = meta.replicas.clone();
        let next = balance(&current, &groups, &active);
        if next != current {
            tracing::info!(version = meta.placement_version, "new replica placement");
            if let Err(e) = self
                .cluster
                .meta_write(MetaOp::SetPlacement {
                    version: meta.placement_version,
                    replicas: next,
                })
                .await
            {
                tracing::debug!(error = %e, "placement not stored");
            }
        }
    }

    /// One membership step of `g` (led here) towards `desired`.
    async fn reconcile(
        &self,
        g: &GroupHandle,
        desired: &[NodeId],
        meta: &MetaState,
        led_here: usize,
        stepped_down: &mut HashMap<GroupId, Instant>,
    ) -> Result<(), String> {
        if desired.is_empty() {
            return Ok(());
        }
        let m = g.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        if membership.get_joint_config().len() > 1 {
            return Ok(()); // a change is in progress
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let want: BTreeSet<NodeId> = desired.iter().copied().collect();
        let me = self.cluster.node_id;
        if !want.contains(&me) || !voters.contains(&me) {
            // This node must not stay: openraft 0.9 keeps a leader that was removed from the
            // voters leading, so hand leadership to a wanted voter first; that leader then
            // changes the membership.
            if let Some(to) = desired.iter().find(|n| voters.contains(n) && **n != me) {
                self.hand_leadership(g, *to, &voters).await;
                return Ok(());
            }
        }

        // 1. Every wanted node is at least a learner.
        if let Some(n) = desired
            .iter()
            .find(|n| !voters.contains(n) && !learners.contains(n))
        {
            let Some(info) = meta.nodes.get(n) else {
                return Ok(());
            };
            tracing::info!(group = g.group, node = n, "adding learner");
            let fut = g
                .raft
                .add_learner(*n, BasicNode::new(info.peer_addr.clone()), false);
            return bounded(fut, "add_learner").await;
        }
        // 2. Voters = wanted, once every wanted learner caught up.
        if voters != want {
            if !learners_caught_up(&m, &voters, &want) {
                return Ok(());
            }
            tracing::info!(group = g.group, ?want, "replacing voters");
            let fut = g
                .raft
                .change_membership(ChangeMembers::ReplaceAllVoters(want), false);
            return bounded(fut, "change_membership").await;
        }
        // 3. No unwanted learners.
        let extra: BTreeSet<NodeId> = learners.difference(&want).copied().collect();
        if !extra.is_empty() {
            tracing::info!(group = g.group, ?extra, "removing learners");
            let fut = g
                .raft
                .change_membership(ChangeMembers::RemoveNodes(extra), false);
            return bounded(fut, "change_membership").await;
        }
        // 4. Leadership balance: hand this group to its preferred leader when this node
        // leads more than its share.
        self.balance_leadership(g, desired[0], &voters, meta, led_here, stepped_down)
            .await;
        Ok(())
    }

    /// Hands the leadership of `g` to `to`; the group's other voters stop campaigning
    /// meanwhile (see `Cluster::transfer_leadership`).
    async fn hand_leadership(&self, g: &GroupHandle, to: NodeId, voters: &BTreeSet<NodeId>) {
        let me = self.cluster.node_id;
        let others: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|n| *n != me && *n != to)
            .collect();
        self.cluster.transfer_leadership(g, to, &others).await;
    }

    /// Step 4 of `reconcile`: hands `g` to its `preferred` leader (a voter) when this node
    /// leads more than its share, at most once per group per [`STEP_DOWN_COOLDOWN_MS`].
    async fn balance_leadership(
        &self,
        g: &GroupHandle,
        preferred: NodeId,
        voters: &BTreeSet<NodeId>,
        meta: &MetaState,
        led_here: usize,
        stepped_down: &mut HashMap<GroupId, Instant>,
    ) {
        let me = self.cluster.node_id;
        let active = meta
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Active)
            .count()
            .max(1);
        let groups = self.cluster.local_groups().groups().count();
        // More than the least fair share: hand over towards the preferred leaders, which the
        // placement spreads ±1 (a group led by its preferred leader never moves).
        let fair_share = groups / active;
        let cooled = stepped_down
            .get(&g.group)
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(STEP_DOWN_COOLDOWN_MS));
        if preferred != me && led_here > fair_share && cooled && voters.contains(&preferred) {
            stepped_down.insert(g.group, Instant::now());
            tracing::info!(
                group = g.group,
                to = preferred,
                "transferring leadership for balance"
            );
            self.hand_leadership(g, preferred, voters).await;
        }
    }

    /// Drains this node: marks it leaving, waits until no group holds a replica here, then
    /// marks it left.
    pub(crate) async fn leave(&self) -> Result<(), RouteError> {
        let c = &self.cluster;
        c.meta_write(MetaOp::SetNodeState {
            node_id: c.node_id,
            state: NodeState::Leaving,
        })
        .await?;
        loop {
            tokio::time::sleep(Duration::from_millis(LEAVE_POLL_MS)).await;
            if !self.holds_replicas().await {
                break;
            }
        }
        c.meta_write(MetaOp::SetNodeState {
            node_id: c.node_id,
            state: NodeState::Left,
        })
        .await?;
        Ok(())
    }

    /// Whether any group's leader (as the nodes report) still counts this node in.
    async fn holds_replicas(&self) -> bool {
        let c = &self.cluster;
        let meta = c.meta();
        let mut leaders_seen = BTreeSet::new();
        let timeout = Duration::from_millis(1_000);
        for n in meta.nodes.values().filter(|n| n.state != NodeState::Left) {
            let Ok(status) = c.peer_status(n.node_id, timeout).await else {
                continue;
            };
            for g in status
                .groups
                .iter()
                .filter(|g| g.state == GroupState::Leader)
            {
                leaders_seen.insert(g.group);
                if g.holds(c.node_id) {
                    return true;
                }
            }
        }
        // Every group must have been seen with a leader that does not count us.
        let all = c.local_groups().groups().count();
        leaders_seen.len() < all
    }
}

/// Waits for a membership change at most [`MEMBERSHIP_CHANGE_TIMEOUT_MS`].
async fn bounded<T, E: std::fmt::Display>(
    fut: impl std::future::Future<Output = Result<T, E>>,
    what: &str,
) -> Result<(), String> {
    let timeout = Duration::from_millis(MEMBERSHIP_CHANGE_TIMEOUT_MS);
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what} timed out")),
    }
}

/// Whether every wanted node that is not a voter yet is within [`CATCHUP_LAG_MAX`] entries
/// of the leader's log, as the leader's replication metrics show.
fn learners_caught_up(
    m: &openraft::RaftMetrics<NodeId, BasicNode>,
    voters: &BTreeSet<NodeId>,
    want: &BTreeSet<NodeId>,
) -> bool {
    let last = m.last_log_index.unwrap_or(0);
    let matched = |n: &NodeId| {
        m.replication
            .as_ref()
            .and_then(|r| r.get(n).cloned().flatten())
            .map(|l| l.index)
            .unwrap_or(0)
    };
    let lagging = want
        .iter()
        .filter(|n| !voters.contains(n))
        .any(|n| matched(n) + CATCHUP_LAG_MAX < last);
    !lagging
}
