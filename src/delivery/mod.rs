//! Delivery: everything that moves committed events to connections.
//!
//! The apply side only emits what a committed batch pushes (`shard::push`) into the
//! [`Inbox`]; peer pushes, typing, presence and leader changes join the same inbox; one task
//! (`fanout`) consumes it: in seq order per conversation, once, only to the members as of
//! each seq (`tracker`), to this node's connections (`hub`, each with its bounded
//! `out_queue`) and, for groups this node leads, to the other nodes (`peer_queue`).
//! Delivery reaches the cluster only through two small traits (`links`).
//!
//! - `inbox`: the bounded inbox, its overflow rule (drop, remember the group, refill).
//! - `fanout`: the consumer task; gap fills; who gets the leader's copy.
//! - `tracker`: per-conversation order, dedup, gaps and members (G5).
//! - `peer_queue`: one ordered, bounded push queue per peer; `Refill` after a loss.
//! - `links`: the `Peers` and `GapRead` traits, implemented over `cluster::Cluster`.
//! - `hub`: the connection registry; pushes into connections; presence, typing expiry.
//! - `out_queue`: a connection's outbound queue, bounded in frames and bytes.
//! - `presence`, `leadership`: typing and presence publishing; `LeaderChanged`.
pub(crate) mod fanout;
pub(crate) mod hub;
pub(crate) mod inbox;
mod leadership;
pub(crate) mod links;
pub(crate) mod out_queue;
pub(crate) mod peer_queue;
mod presence;
pub(crate) mod tracker;

use std::sync::Arc;

pub(crate) use hub::Hub;
pub(crate) use inbox::{inbox, Inbox, InboxReceiver};
pub(crate) use links::{ClusterLink, NodeId};

use crate::cluster::command::GroupHandle;
use crate::cluster::ShardMap;
use crate::shutdown::Shutdown;

/// Starts delivery: the inbox's consumer, and one leadership watcher per group of `groups`.
pub(crate) fn start(
    node_id: NodeId,
    hub: Arc<Hub>,
    shard_map: Arc<ShardMap>,
    link: Arc<ClusterLink>,
    (inbox, receiver): (Inbox, InboxReceiver),
    groups: impl Iterator<Item = GroupHandle>,
    shutdown: &Shutdown,
) {
    let (fanout, fills) = fanout::Fanout::new(
        node_id,
        hub,
        shard_map,
        link.clone(),
        link,
        shutdown.clone(),
    );
    shutdown.spawn(fanout.run(receiver, fills));
    for g in groups {
        shutdown.spawn(leadership::watch_leadership(inbox.clone(), g));
    }
    inbox.open.store(true, std::sync::atomic::Ordering::Release);
}

#[cfg(test)]
mod tests;
