//! Cluster: membership, join, placement, routing to group leaders, fan-out across nodes.
//!
//! - `placement::ShardMap`: which shard holds a conversation / user (consistent hashing).
//! - `balance`: which nodes hold each group's replicas (and which should lead it).
//! - `meta`: the meta group's state machine (settings, nodes, desired placement).
//! - `identity`: what a node remembers of its cluster (`<data-dir>/cluster.json`).
//! - `client::Cluster`: writes and reads routed to group leaders, local or over QUIC.
//! - `peer`: the node-to-node request/reply types and the serving side.
//! - `controller`: the control loop (placement, membership steps, leader balance, leave).
//! - `fanout`: committed messages to every gateway, in order, with gap filling.
//! - `forward`: client writes forwarded to a group's leader, batched per leader node.
//! - `router`, `batcher`, `outbox`: the local groups, proposal batching, cross-shard updates.
pub mod balance;
pub mod batcher;
pub mod client;
pub mod command;
pub mod controller;
pub mod fanout;
pub mod forward;
pub mod identity;
pub mod meta;
pub mod outbox;
pub mod peer;
pub mod placement;
pub mod router;
pub mod secrets;
pub mod status;
pub mod trace;

pub use batcher::ProposalBatcher;
pub use client::Cluster;
pub use controller::Controller;
pub use outbox::OutboxRelay;
pub use placement::ShardMap;
pub use router::{RouteError, Router};

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

#[cfg(test)]
#[path = "batch/tests.rs"]
mod batch_tests;

#[cfg(test)]
#[path = "peer_fuzz/tests.rs"]
mod peer_fuzz;
