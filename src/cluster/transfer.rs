//! Leadership transfer: handing a group led here to another voter, and the other side of
//! it (holding elections, campaigning now). openraft 0.9 has no leader transfer, so: the
//! other voters stop campaigning for a moment, this node stops heartbeats and refuses new
//! writes (`NotLeader`, retried by gateways), and the target's election timer fires first;
//! everything is re-enabled after [`TRANSFER_WINDOW_MS`] whatever happened.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::peer::{NodeId, PeerRequest};
use super::Cluster;
use crate::cluster::command::GroupHandle;
use crate::ids::GroupId;

/// How long a leadership transfer may take before everything is re-enabled.
/// Longer than the election timeout, so that the target's timer fires inside it.
pub(crate) const TRANSFER_WINDOW_MS: u64 = 4_000;

/// The transfers this node takes part in, each until when (one entry per group in each map,
/// so both are bounded by the number of groups).
#[derive(Default)]
pub(crate) struct Transfers {
    /// Groups whose leadership this node is handing over.
    handing_over: Mutex<HashMap<GroupId, Instant>>,
    /// Groups in which this node does not campaign.
    elections_held: Mutex<HashMap<GroupId, Instant>>,
}

fn active(map: &Mutex<HashMap<GroupId, Instant>>, group: GroupId) -> bool {
    map.lock()
        .get(&group)
        .is_some_and(|until| Instant::now() < *until)
}

impl Cluster {
    /// Hands leadership of `g` (led here) to `to` (see the module comment).
    pub(crate) async fn transfer_leadership(&self, g: &GroupHandle, to: NodeId, others: &[NodeId]) {
        let group = g.group;
        let hold = Duration::from_millis(TRANSFER_WINDOW_MS);
        for n in others {
            let _ = self
                .call_peer(
                    *n,
                    group,
                    "",
                    PeerRequest::HoldElections {
                        hold_ms: TRANSFER_WINDOW_MS,
                    },
                    hold,
                )
                .await;
        }
        self.transfers
            .handing_over
            .lock()
            .insert(group, Instant::now() + hold);
        g.raft.runtime_config().heartbeat(false);
        let mut rx = g.raft.metrics();
        let handed_over = async {
            loop {
                let leader = rx.borrow().current_leader;
                if leader.is_some() && leader != Some(self.node_id) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(hold, handed_over).await;
        g.raft.runtime_config().heartbeat(true);
        self.transfers.handing_over.lock().remove(&group);
        let leader = g.raft.metrics().borrow().current_leader;
        tracing::info!(group, to, ?leader, "leadership transfer done");
    }

    /// This node does not campaign in `group` for `hold_ms` (a transfer to another voter).
    pub(crate) fn hold_elections(&self, group: GroupId, hold_ms: u64) {
        let Ok(g) = self.groups.group(group) else {
            return;
        };
        g.raft.runtime_config().elect(false);
        // The controller re-enables elections once the hold is over.
        self.transfers
            .elections_held
            .lock()
            .insert(group, Instant::now() + Duration::from_millis(hold_ms));
    }

    /// Campaigns for `group` now (the target of a leadership transfer).
    pub(crate) async fn elect_now(&self, group: GroupId) {
        if let Ok(g) = self.groups.group(group) {
            let _ = g.raft.trigger().elect().await;
        }
    }

    /// Whether a transfer asked this node not to campaign in `group` right now.
    pub(crate) fn elections_held(&self, group: GroupId) -> bool {
        active(&self.transfers.elections_held, group)
    }

    /// Whether this node is handing `group`'s leadership over right now.
    pub(super) fn is_transferring(&self, group: GroupId) -> bool {
        active(&self.transfers.handing_over, group)
    }
}
