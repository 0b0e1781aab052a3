//! Cluster: membership, join, placement, routing to group leaders, fan-out across nodes.
//!
//! - `placement::ShardMap`: which shard holds a conversation / user (consistent hashing).
//! - `balance`: which nodes hold each group's replicas (and which should lead it).
//! - `meta`: the meta group's state machine (settings, nodes, desired placement).
//! - `identity`: what a node remembers of its cluster (`<data-dir>/cluster.json`).
//! - `Cluster` (one type, one file per concern):
//!   - `route`: writes and reads routed to group leaders, local or over QUIC;
//!   - `leader_cache`: who leads each group (as learned, and as the local replicas see it);
//!   - `serve`: requests served here because this node leads their group;
//!   - `forward`: calls to other nodes, client writes batched per leader node;
//!   - `transfer`: leadership transfer (and holding elections for one);
//!   - `status`: this node's view of its groups, readiness.
//! - `meta_view`: the latest meta state this node saw, published by the applier.
//! - `route_error`: `RouteError` and its `UnavailableCause`.
//! - `peer`: the node-to-node request/reply types and the serving side.
//! - `controller`: the control loop (placement, membership steps, leader balance, leave).
//! - `push`: the wire form of pushes between nodes and the sink received ones go to
//!   (the delivery layer moves them to connections).
//! - `local_groups`, `batcher`, `outbox`: the groups held here (writes, read barriers),
//!   proposal batching, cross-shard updates.
pub(crate) mod balance;
pub(crate) mod batcher;
pub(crate) mod command;
pub(crate) mod controller;
pub(crate) mod forward;
pub(crate) mod identity;
pub(crate) mod leader_cache;
pub(crate) mod local_groups;
pub(crate) mod meta;
pub(crate) mod meta_view;
pub(crate) mod outbox;
pub(crate) mod peer;
pub(crate) mod placement;
pub(crate) mod push;
pub(crate) mod route;
pub(crate) mod route_error;
pub mod secrets;
pub(crate) mod serve;
pub(crate) mod status;
pub(crate) mod trace;
pub(crate) mod transfer;

pub(crate) use batcher::ProposalBatcher;
pub(crate) use controller::Controller;
pub(crate) use local_groups::LocalGroups;
pub(crate) use meta_view::MetaView;
pub(crate) use outbox::OutboxRelay;
pub use placement::ShardMap;
pub(crate) use route::Cluster;
pub(crate) use route_error::{RouteError, UnavailableCause};

/// `first` and whatever else is queued in `rx` right now, at most `max` items in all.
#[cfg(test)]
pub(crate) fn with_queued<T>(
    first: T,
    rx: &mut tokio::sync::mpsc::Receiver<T>,
    max: usize,
) -> Vec<T> {
    with_queued_within(first, rx, max, usize::MAX, |_| 0)
}

/// `first` and whatever else is queued in `rx` right now, at most `max` items and about
/// `bytes_max` bytes (as `size` estimates them) in all: the batch ends with the item that
/// reaches `bytes_max`, so it is at most `bytes_max` plus one item. How the proposer, the
/// write forwarder and the push sender cut their batches; what is left stays queued for
/// the next batch (nothing is dropped).
pub(crate) fn with_queued_within<T>(
    first: T,
    rx: &mut tokio::sync::mpsc::Receiver<T>,
    max: usize,
    bytes_max: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<T> {
    let mut bytes = size(&first);
    let mut batch = vec![first];
    while batch.len() < max && bytes < bytes_max {
        match rx.try_recv() {
            Ok(item) => {
                bytes = bytes.saturating_add(size(&item));
                batch.push(item);
            }
            Err(_) => break,
        }
    }
    batch
}

// Every batch a node sends fits one transport frame with room to spare: the largest Raft
// snapshot chunk and append, and forward batches at their byte cap plus the largest entries
// (an entry is at most a proposal batch; an append stops after the entry that passes its
// cap). Checked by the compiler; push batches and gap-fill replies are checked in node.rs.
const _: () = {
    use crate::transport::FRAME_BYTES_MAX;
    let op_max = crate::shard::validate::OP_BYTES_MAX;
    let entry_max = batcher::PROPOSAL_BATCH_BYTES_MAX + op_max;
    assert!(crate::raft::SNAPSHOT_CHUNK_BYTES_MAX as usize * 2 <= FRAME_BYTES_MAX);
    assert!(crate::raft::APPEND_ENTRIES_BYTES_MAX * 2 <= FRAME_BYTES_MAX);
    assert!(crate::raft::APPEND_ENTRIES_BYTES_MAX + entry_max * 2 <= FRAME_BYTES_MAX);
    assert!(forward::FORWARD_BATCH_BYTES_MAX + op_max * 2 <= FRAME_BYTES_MAX);
};

#[cfg(test)]
#[path = "batch/tests.rs"]
mod batch_tests;

#[cfg(test)]
#[path = "peer_fuzz/tests.rs"]
mod peer_fuzz;
