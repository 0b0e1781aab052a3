//! Announces to every gateway when this node becomes the leader of a group
//! (`PushItem::LeaderChanged`): each re-reads what follows its last delivered seq of the
//! group's conversations, so a message whose push died with the old leader still arrives.

use super::inbox::{Inbound, Inbox};
use crate::cluster::command::GroupHandle;
use crate::cluster::push::PushItem;
use openraft::ServerState;

/// Watches `g` until its Raft stops.
pub(super) async fn watch_leadership(inbox: Inbox, g: GroupHandle) {
    let mut rx = g.raft.metrics();
    let mut was_leader = false;
    loop {
        let is_leader = rx.borrow().state == ServerState::Leader;
        if is_leader && !was_leader {
            let item = PushItem::LeaderChanged { group: g.group };
            // Waits for room: losing it would leave the gateways' gaps to the clients.
            if inbox.tx.send(Inbound::Local(vec![item])).await.is_err() {
                return;
            }
        }
        was_leader = is_leader;
        if rx.changed().await.is_err() {
            return;
        }
    }
}
