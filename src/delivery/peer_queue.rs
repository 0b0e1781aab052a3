//! One ordered push queue per peer: the leader of a group sends the pushes it applied to
//! every other node that needs its copy, one request in flight per peer, so that batches
//! arrive in the order they were produced. Bounded in items and bytes; what does not fit is
//! dropped and made up for by a `Refill` of its group (the peer re-reads from the leader).

use crate::shutdown::Shutdown;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::links::{NodeId, Peers};
use crate::cluster::push::PushItem;
use crate::cluster::ShardMap;
use crate::ids::GroupId;

/// Items queued for one peer before new ones are dropped (the peer is then told to refill
/// the groups it lost messages of, see [`PeerQueues::broadcast_except`]).
pub(crate) const PEER_QUEUE_ITEMS_MAX: usize = 65_536;
/// Estimated bytes queued for one peer before new items are dropped (same rule).
pub(crate) const PEER_QUEUE_BYTES_MAX: usize = 64 << 20;
/// Items per push request.
pub(crate) const PUSH_BATCH_ITEMS_MAX: usize = 1_024;
/// About the most bytes per push request (it ends with the item that reaches it): far below
/// the transport's 16 MiB frame.
pub(crate) const PUSH_BATCH_BYTES_MAX: usize = 2 << 20;

/// One peer's ordered push queue, bounded in items and bytes.
struct PeerQueue {
    tx: mpsc::Sender<PushItem>,
    state: Arc<PeerQueueState>,
}

#[derive(Default)]
struct PeerQueueState {
    /// Estimated bytes of the items queued (`PushItem::size_estimate`).
    bytes: AtomicUsize,
    /// Groups whose messages were dropped because the queue was full: the peer is told to
    /// re-read them (`PushItem::Refill`) as soon as the queue has room.
    lost: Mutex<BTreeSet<GroupId>>,
}

/// The push queues towards every other node, created on first use.
pub(super) struct PeerQueues {
    peers: Arc<dyn Peers>,
    shard_map: Arc<ShardMap>,
    queues: HashMap<NodeId, PeerQueue>,
    shutdown: Shutdown,
}

impl PeerQueues {
    pub(super) fn new(peers: Arc<dyn Peers>, shard_map: Arc<ShardMap>, shutdown: Shutdown) -> Self {
        PeerQueues {
            peers,
            shard_map,
            queues: HashMap::new(),
            shutdown,
        }
    }

    /// Queues `items` for every other node that is not gone and not in `skip`. Never waits:
    /// a peer whose queue is full in items ([`PEER_QUEUE_ITEMS_MAX`]) or bytes
    /// ([`PEER_QUEUE_BYTES_MAX`]) loses these items, and the groups of the messages among
    /// them are remembered; once its queue has room again the peer gets `PushItem::Refill`
    /// for each, and its gateways re-read what follows their last delivered seq. So a
    /// dropped message push is always followed by a gap fill; dropped typing and presence
    /// are ephemeral (G9), dropped receipts are re-read by clients with sync.
    pub(super) fn broadcast_except(&mut self, items: &[PushItem], skip: &BTreeSet<NodeId>) {
        if items.is_empty() {
            return;
        }
        for peer in self.peers.peers() {
            if skip.contains(&peer) {
                continue;
            }
            let q = self.queues.entry(peer).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(PEER_QUEUE_ITEMS_MAX);
                let state = Arc::new(PeerQueueState::default());
                self.shutdown
                    .spawn(run_peer(self.peers.clone(), peer, rx, state.clone()));
                PeerQueue { tx, state }
            });
            let mut lost = false;
            for item in items {
                let size = item.size_estimate();
                let queued = q.state.bytes.load(Ordering::Relaxed);
                if lost
                    || queued.saturating_add(size) > PEER_QUEUE_BYTES_MAX
                    || q.tx.try_send(item.clone()).is_err()
                {
                    lost = true;
                    if let PushItem::Message(p) = item {
                        let group = self
                            .shard_map
                            .shard_for_conversation(&p.message.conversation_id);
                        q.state.lost.lock().insert(group);
                    }
                    continue;
                }
                q.state.bytes.fetch_add(size, Ordering::Relaxed);
            }
            if lost {
                tracing::debug!(peer, "push queue full; the peer will be told to refill");
            }
        }
    }
}

/// Sends one peer's queued pushes, one request at a time, in order, in batches of at most
/// [`PUSH_BATCH_ITEMS_MAX`] items and about [`PUSH_BATCH_BYTES_MAX`] bytes; once the queue
/// has room after a loss, the peer is told which groups to refill.
async fn run_peer(
    peers: Arc<dyn Peers>,
    peer: NodeId,
    mut rx: mpsc::Receiver<PushItem>,
    state: Arc<PeerQueueState>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = crate::cluster::with_queued_within(
            first,
            &mut rx,
            PUSH_BATCH_ITEMS_MAX,
            PUSH_BATCH_BYTES_MAX,
            PushItem::size_estimate,
        );
        let taken: usize = batch.iter().map(PushItem::size_estimate).sum();
        state.bytes.fetch_sub(taken, Ordering::Relaxed);
        // Lost groups are announced after what was queued before the loss (in this batch).
        let lost = std::mem::take(&mut *state.lost.lock());
        batch.extend(lost.into_iter().map(|group| PushItem::Refill { group }));
        send_batch(&*peers, peer, batch).await;
        // A loss while the queue was empty: nothing wakes us; announce it now.
        if rx.is_empty() {
            let lost = std::mem::take(&mut *state.lost.lock());
            if !lost.is_empty() {
                let batch = lost
                    .into_iter()
                    .map(|group| PushItem::Refill { group })
                    .collect();
                send_batch(&*peers, peer, batch).await;
            }
        }
    }
}

async fn send_batch(peers: &dyn Peers, peer: NodeId, batch: Vec<PushItem>) {
    if let Err(e) = peers.send(peer, batch).await {
        tracing::debug!(peer, error = %e, "push failed; the peer will fill the gap");
    }
}
