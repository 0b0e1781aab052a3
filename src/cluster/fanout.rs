//! Fan-out across nodes: committed messages (and receipts, typing) reach the connections on
//! every gateway, in seq order per conversation, without gaps or duplicates.
//!
//! - The leader of a group, after applying a batch, sends its pushes to every other node
//!   through one ordered queue per peer (one request in flight per peer, so batches arrive
//!   in the order they were produced). Every replica also delivers to its own connections.
//! - Each gateway remembers the last seq it delivered per conversation. A push at or below it
//!   is a duplicate (dropped); one past a gap holds later pushes back while the missing
//!   seqs are read from the leader, then everything goes out in order.
//! - A new leader announces itself (`LeaderChanged`): gateways re-read what follows their
//!   last seq of that group's conversations, so a message whose push died with the old
//!   leader still arrives.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::client::Cluster;
use super::peer::{NodeId, PeerReply, PeerRequest};
use super::ShardMap;
use crate::gateway::Hub;
use crate::shard::command::*;
use crate::shard::query::{QueryResult, ShardQuery};

/// Items queued for one peer before new ones are dropped (the peer's gateways then fill the
/// gap from the leader on the next message).
pub const PEER_QUEUE_ITEMS_MAX: usize = 65_536;
/// Items per push request.
pub const PUSH_BATCH_ITEMS_MAX: usize = 1_024;
/// Time for one push request.
pub const PUSH_TIMEOUT_MS: u64 = 2_000;
/// Conversations whose last delivered seq a gateway remembers.
pub const TRACKED_CONVERSATIONS_MAX: usize = 100_000;
/// Pushes held back per conversation while a gap is being filled.
pub const HELD_PUSHES_PER_CONVERSATION_MAX: usize = 1_000;
/// Most messages read to fill one gap.
pub const GAP_FILL_MESSAGES_MAX: u64 = 1_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PushItem {
    Message(Pushed),
    Receipt(ReceiptState),
    Typing {
        conversation_id: ConversationId,
        user_id: UserId,
        device: String,
        start: bool,
        recipients: Vec<UserId>,
    },
    /// The sender now leads `group`.
    LeaderChanged {
        group: GroupId,
    },
    /// A user is (or is no longer) online on the sending node (G9: never stored).
    Presence {
        user_id: UserId,
        online: bool,
        last_seen: u64,
    },
}

struct Track {
    group: GroupId,
    last_seq: u64,
    filling: bool,
    held: BTreeMap<u64, Pushed>,
    recipients: Vec<UserId>,
}

pub struct Fanout {
    node_id: NodeId,
    hub: Arc<Hub>,
    shard_map: Arc<ShardMap>,
    peers: Mutex<HashMap<NodeId, mpsc::Sender<PushItem>>>,
    tracks: Mutex<HashMap<ConversationId, Track>>,
}

impl Fanout {
    pub fn new(node_id: NodeId, hub: Arc<Hub>, shard_map: Arc<ShardMap>) -> Arc<Self> {
        Arc::new(Fanout {
            node_id,
            hub,
            shard_map,
            peers: Mutex::new(HashMap::new()),
            tracks: Mutex::new(HashMap::new()),
        })
    }

    /// Queues `items` for every other node that is not gone.
    pub fn broadcast(&self, cluster: &Arc<Cluster>, items: &[PushItem]) {
        self.broadcast_except(cluster, items, &BTreeSet::new());
    }

    /// Queues `items` for every other node that is not gone and not in `skip`.
    pub fn broadcast_except(
        &self,
        cluster: &Arc<Cluster>,
        items: &[PushItem],
        skip: &BTreeSet<NodeId>,
    ) {
        if items.is_empty() {
            return;
        }
        let meta = cluster.meta();
        let mut peers = self.peers.lock();
        for n in meta.nodes.values() {
            if n.node_id == self.node_id || n.state == NodeState::Left || skip.contains(&n.node_id)
            {
                continue;
            }
            let tx = peers.entry(n.node_id).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(PEER_QUEUE_ITEMS_MAX);
                tokio::spawn(run_peer(Arc::downgrade(cluster), n.node_id, rx));
                tx
            });
            for item in items {
                if tx.try_send(item.clone()).is_err() {
                    tracing::debug!(
                        peer = n.node_id,
                        "push queue full; the peer will fill the gap"
                    );
                    break;
                }
            }
        }
    }

    /// Pushes `p` to this node's connections now, uncommitted and untracked: broken on
    /// purpose (`sabotage::Switch::PushBeforeCommit`).
    #[cfg(feature = "fault-injection")]
    pub fn push_uncommitted(&self, p: &Pushed) {
        self.hub.push_message(p);
    }

    /// Delivers pushes (from peer `from`, or from this node's own apply) to local
    /// connections.
    pub fn receive(&self, cluster: &Arc<Cluster>, from: NodeId, items: Vec<PushItem>) {
        for item in items {
            match item {
                PushItem::Presence {
                    user_id,
                    online,
                    last_seen,
                } => {
                    if from != self.node_id {
                        self.hub.remote_presence(from, &user_id, online, last_seen);
                    }
                }
                PushItem::Message(p) => self.deliver_message(cluster, p),
                PushItem::Receipt(r) => self.hub.push_receipt(&r),
                PushItem::Typing {
                    conversation_id,
                    user_id,
                    device,
                    start,
                    recipients,
                } => self
                    .hub
                    .typing(&conversation_id, &user_id, &device, start, recipients),
                PushItem::LeaderChanged { group } => self.refill_group(cluster, group),
            }
        }
    }

    fn deliver_message(&self, cluster: &Arc<Cluster>, p: Pushed) {
        let conv = p.message.conversation_id.clone();
        let seq = p.message.seq;
        let mut tracks = self.tracks.lock();
        if !tracks.contains_key(&conv) && tracks.len() >= TRACKED_CONVERSATIONS_MAX {
            // Forgetting loses only duplicate suppression for a moment; rare and bounded.
            tracks.retain(|_, t| t.filling);
        }
        let t = tracks.entry(conv.clone()).or_insert_with(|| Track {
            group: self.shard_map.shard_for_conversation(&conv),
            last_seq: seq.saturating_sub(1),
            filling: false,
            held: BTreeMap::new(),
            recipients: Vec::new(),
        });
        t.recipients = p.recipients.clone();
        if seq <= t.last_seq {
            return;
        }
        if t.filling {
            if t.held.len() < HELD_PUSHES_PER_CONVERSATION_MAX {
                t.held.insert(seq, p);
            }
            return;
        }
        if seq == t.last_seq + 1 {
            t.last_seq = seq;
            self.hub.push_message(&p);
            return;
        }
        // A gap: hold this one, read the missing seqs from the leader.
        let from = t.last_seq;
        t.filling = true;
        t.held.insert(seq, p);
        drop(tracks);
        self.spawn_fill(cluster, conv, from, Some(seq - 1));
    }

    /// After a leader change of `group`: read what follows every tracked conversation's last
    /// delivered seq.
    fn refill_group(&self, cluster: &Arc<Cluster>, group: GroupId) {
        let mut to_fill = Vec::new();
        {
            let mut tracks = self.tracks.lock();
            for (conv, t) in tracks.iter_mut() {
                if t.group == group && !t.filling {
                    t.filling = true;
                    to_fill.push((conv.clone(), t.last_seq));
                }
            }
        }
        for (conv, from) in to_fill {
            self.spawn_fill(cluster, conv, from, None);
        }
    }

    fn spawn_fill(&self, cluster: &Arc<Cluster>, conv: ConversationId, from: u64, to: Option<u64>) {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let group = cluster.fanout.shard_map.shard_for_conversation(&conv);
            let q = ShardQuery::After {
                conversation_id: conv.clone(),
                last_seq: to.unwrap_or(from + GAP_FILL_MESSAGES_MAX),
                after_seq: from,
                limit: GAP_FILL_MESSAGES_MAX,
            };
            let fetched = match cluster.query(group, q).await {
                Ok(QueryResult::Page(p)) => p.messages,
                other => {
                    tracing::debug!(conversation = %conv, ?other, "gap fill failed; clients will sync");
                    Vec::new()
                }
            };
            cluster.fanout.finish_fill(&conv, fetched);
        });
    }

    fn finish_fill(&self, conv: &str, fetched: Vec<Message>) {
        let mut tracks = self.tracks.lock();
        let Some(t) = tracks.get_mut(conv) else {
            return;
        };
        for m in fetched {
            if m.seq == t.last_seq + 1 {
                t.last_seq = m.seq;
                t.held.remove(&m.seq);
                self.hub.push_message(&Pushed {
                    message: m,
                    recipients: t.recipients.clone(),
                });
            }
        }
        // What was held goes out in order; a gap that could not be filled stays visible to
        // the client, which asks for it with sync (G8).
        for (seq, p) in std::mem::take(&mut t.held) {
            if seq > t.last_seq {
                t.last_seq = seq;
                self.hub.push_message(&p);
            }
        }
        t.filling = false;
    }
}

/// Sends one peer's queued pushes, one request at a time, in order.
async fn run_peer(
    cluster: std::sync::Weak<Cluster>,
    peer: NodeId,
    mut rx: mpsc::Receiver<PushItem>,
) {
    while let Some(first) = rx.recv().await {
        let batch = super::with_queued(first, &mut rx, PUSH_BATCH_ITEMS_MAX);
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let (Some(t), Some(addr)) = (cluster.transport(), cluster.address_of(peer)) else {
            continue;
        };
        let timeout = Duration::from_millis(PUSH_TIMEOUT_MS);
        match t
            .call(
                peer,
                &addr,
                META_GROUP,
                "",
                PeerRequest::Push(batch),
                timeout,
            )
            .await
        {
            Ok(PeerReply::Pushed) => {}
            Ok(other) => tracing::debug!(peer, ?other, "unexpected push reply"),
            Err(e) => tracing::debug!(peer, error = %e, "push failed; the peer will fill the gap"),
        }
    }
}
