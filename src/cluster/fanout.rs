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
use super::command::{NodeState, QueryResult};
use super::peer::{PeerReply, PeerRequest};
use super::ShardMap;
use crate::gateway::Hub;
use crate::ids::{GroupId, NodeId, META_GROUP};
use crate::shard::command::*;
use crate::shard::query::ShardQuery;

/// Items queued for one peer before new ones are dropped (the peer is then told to refill
/// the groups it lost messages of, see `Fanout::broadcast_except`).
pub const PEER_QUEUE_ITEMS_MAX: usize = 65_536;
/// Estimated bytes queued for one peer before new items are dropped (same rule).
pub const PEER_QUEUE_BYTES_MAX: usize = 64 << 20;
/// Items per push request.
pub const PUSH_BATCH_ITEMS_MAX: usize = 1_024;
/// About the most bytes per push request (it ends with the item that reaches it): far below
/// the transport's 16 MiB frame.
pub const PUSH_BATCH_BYTES_MAX: usize = 2 << 20;
/// Time for one push request.
pub const PUSH_TIMEOUT_MS: u64 = 2_000;
/// Conversations whose last delivered seq a gateway remembers.
pub const TRACKED_CONVERSATIONS_MAX: usize = 100_000;
/// Pushes held back per conversation while a gap is being filled.
pub const HELD_PUSHES_PER_CONVERSATION_MAX: usize = 1_000;
/// Most messages read to fill one gap: their reply must fit one frame even with bodies of
/// `shard::validate::BODY_BYTES_MAX` (200 × 64 KiB ≈ 13 MiB < 16 MiB); a longer gap is
/// left to the clients' sync (G8).
pub const GAP_FILL_MESSAGES_MAX: u64 = 200;

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
    /// Pushes of `group` for the receiver were dropped (its queue was full): re-read what
    /// follows the last delivered seq of its conversations. Last, so that it changes no
    /// other variant's encoding.
    Refill {
        group: GroupId,
    },
}

struct Track {
    group: GroupId,
    last_seq: u64,
    /// The members after `last_seq`: who may see `last_seq + 1` if it is not a membership
    /// event. Known exactly from a push that is not an add or a removal (its recipients are
    /// the members at its seq, which it did not change); `None` after an add or a removal
    /// until the next such push says. Never taken from a push out of order.
    members: Option<Vec<UserId>>,
    filling: bool,
    held: BTreeMap<u64, Pushed>,
}

/// Whether a message changes who the members are.
fn changes_members(kind: MsgKind) -> bool {
    matches!(kind, MsgKind::MemberAdded | MsgKind::MemberRemoved)
}

/// The members after `p`'s seq when `p` itself says (see [`Track::members`]).
fn members_after(p: &Pushed) -> Option<Vec<UserId>> {
    (!changes_members(p.message.kind)).then(|| p.recipients.clone())
}

/// The members before `p`'s seq (after the seq before it), when `p` says: its recipients,
/// unless it added members (then they include the new ones).
fn members_before(p: &Pushed) -> Option<Vec<UserId>> {
    (p.message.kind != MsgKind::MemberAdded).then(|| p.recipients.clone())
}

/// A gap to read from the leader: `(conversation, after_seq, up to seq)`.
type Fill = (ConversationId, u64, Option<u64>);

/// Per-conversation delivery state of a gateway: in seq order, once, and only to the members
/// as of each seq (G5). Pure: it says what to deliver; [`Fanout`] delivers it.
#[derive(Default)]
struct Tracker {
    tracks: HashMap<ConversationId, Track>,
}

impl Tracker {
    /// A committed message arrives (from a peer or this node's apply): deliver it, drop it
    /// as a duplicate, or hold it and ask for the gap before it.
    fn accept(&mut self, group: GroupId, p: Pushed, out: &mut Vec<Pushed>) -> Option<Fill> {
        let conv = p.message.conversation_id.clone();
        let seq = p.message.seq;
        if !self.tracks.contains_key(&conv) && self.tracks.len() >= TRACKED_CONVERSATIONS_MAX {
            // Forgetting loses only duplicate suppression for a moment; rare and bounded.
            self.tracks.retain(|_, t| t.filling);
        }
        let t = self.tracks.entry(conv.clone()).or_insert_with(|| Track {
            group,
            last_seq: seq.saturating_sub(1),
            members: None,
            filling: false,
            held: BTreeMap::new(),
        });
        if seq <= t.last_seq {
            return None;
        }
        if t.filling {
            if t.held.len() < HELD_PUSHES_PER_CONVERSATION_MAX {
                t.held.insert(seq, p);
            }
            return None;
        }
        if seq == t.last_seq + 1 {
            t.last_seq = seq;
            t.members = members_after(&p);
            out.push(p);
            return None;
        }
        // A gap: hold this one, read the missing seqs from the leader.
        let from = t.last_seq;
        t.filling = true;
        t.held.insert(seq, p);
        Some((conv, from, Some(seq - 1)))
    }

    /// After a leader change of `group` (or lost pushes): what follows every tracked
    /// conversation's last delivered seq is to be read.
    fn start_refill(&mut self, group: GroupId) -> Vec<Fill> {
        let mut to_fill = Vec::new();
        for (conv, t) in self.tracks.iter_mut() {
            if t.group == group && !t.filling {
                t.filling = true;
                to_fill.push((conv.clone(), t.last_seq, None));
            }
        }
        to_fill
    }

    /// The leader's messages after the gap's start arrived (`fetched`, in seq order, maybe
    /// empty): deliver them and what was held, in order. A fetched message carries no
    /// recipients; it goes to the members as of its seq, known from the delivered push
    /// before it or from the held push after it. Where neither says (right after an add or
    /// a removal, with nothing held after it), delivery stops: the gap stays visible to the
    /// clients, which sync it (G8), and no removed member is ever sent a later seq (G5).
    fn finish_fill(&mut self, conv: &str, fetched: Vec<Message>, out: &mut Vec<Pushed>) {
        let Some(t) = self.tracks.get_mut(conv) else {
            return;
        };
        let fetched: Vec<Message> = fetched.into_iter().filter(|m| m.seq > t.last_seq).collect();
        // Backward: the members after each fetched seq, from the pushes that follow it.
        let mut after: HashMap<u64, Option<Vec<UserId>>> = HashMap::new();
        let mut next = fetched
            .last()
            .and_then(|m| t.held.get(&(m.seq + 1)))
            .and_then(members_before);
        for m in fetched.iter().rev() {
            after.insert(m.seq, next.clone());
            next = match t.held.get(&m.seq) {
                Some(p) => members_before(p),
                None if changes_members(m.kind) => None,
                None => next,
            };
        }
        for m in fetched {
            if m.seq != t.last_seq + 1 {
                break;
            }
            if let Some(p) = t.held.remove(&m.seq) {
                // The push itself was held: it has the exact recipients.
                t.last_seq = m.seq;
                t.members = members_after(&p);
                out.push(p);
                continue;
            }
            let known_after = after.remove(&m.seq).flatten();
            let recipients = match m.kind {
                // The members after an add: the push's recipients (the new ones included);
                // else the members before it (a subset: the new ones sync).
                MsgKind::MemberAdded => known_after.clone().or_else(|| t.members.clone()),
                // Everyone who was a member sees a removal, the removed user included.
                MsgKind::MemberRemoved => t.members.clone(),
                _ => t.members.clone().or_else(|| known_after.clone()),
            };
            let Some(recipients) = recipients else {
                break;
            };
            t.last_seq = m.seq;
            t.members = if changes_members(m.kind) {
                known_after
            } else {
                Some(recipients.clone())
            };
            out.push(Pushed {
                message: m,
                recipients,
            });
        }
        // What was held goes out in order; a gap that could not be filled stays visible to
        // the client, which asks for it with sync (G8).
        for (seq, p) in std::mem::take(&mut t.held) {
            if seq > t.last_seq {
                t.last_seq = seq;
                t.members = members_after(&p);
                out.push(p);
            }
        }
        t.filling = false;
    }
}

pub struct Fanout {
    node_id: NodeId,
    hub: Arc<Hub>,
    shard_map: Arc<ShardMap>,
    peers: Mutex<HashMap<NodeId, PeerQueue>>,
    tracker: Mutex<Tracker>,
}

/// One peer's ordered push queue, bounded in items and bytes.
struct PeerQueue {
    tx: mpsc::Sender<PushItem>,
    state: Arc<PeerQueueState>,
}

#[derive(Default)]
struct PeerQueueState {
    /// Estimated bytes of the items queued (`PushItem::size_estimate`).
    bytes: std::sync::atomic::AtomicUsize,
    /// Groups whose messages were dropped because the queue was full: the peer is told to
    /// re-read them (`PushItem::Refill`) as soon as the queue has room.
    lost: Mutex<BTreeSet<GroupId>>,
}

impl Fanout {
    pub fn new(node_id: NodeId, hub: Arc<Hub>, shard_map: Arc<ShardMap>) -> Arc<Self> {
        Arc::new(Fanout {
            node_id,
            hub,
            shard_map,
            peers: Mutex::new(HashMap::new()),
            tracker: Mutex::new(Tracker::default()),
        })
    }

    /// Which shard holds what.
    pub fn shard_map(&self) -> &ShardMap {
        &self.shard_map
    }

    /// Queues `items` for every other node that is not gone.
    pub fn broadcast(&self, cluster: &Arc<Cluster>, items: &[PushItem]) {
        self.broadcast_except(cluster, items, &BTreeSet::new());
    }

    /// Queues `items` for every other node that is not gone and not in `skip`. Never waits
    /// (this runs on the apply thread): a peer whose queue is full in items
    /// ([`PEER_QUEUE_ITEMS_MAX`]) or bytes ([`PEER_QUEUE_BYTES_MAX`]) loses these items, and
    /// the groups of the messages among them are remembered; once its queue has room again
    /// the peer gets `PushItem::Refill` for each, and its gateways re-read what follows their
    /// last delivered seq. So a dropped message push is always followed by a gap fill;
    /// dropped typing and presence are ephemeral (G9), dropped receipts are re-read by
    /// clients with sync.
    pub fn broadcast_except(
        &self,
        cluster: &Arc<Cluster>,
        items: &[PushItem],
        skip: &BTreeSet<NodeId>,
    ) {
        use std::sync::atomic::Ordering;
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
            let q = peers.entry(n.node_id).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(PEER_QUEUE_ITEMS_MAX);
                let state = Arc::new(PeerQueueState::default());
                tokio::spawn(run_peer(
                    Arc::downgrade(cluster),
                    n.node_id,
                    rx,
                    state.clone(),
                ));
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
                tracing::debug!(
                    peer = n.node_id,
                    "push queue full; the peer will be told to refill"
                );
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
                PushItem::LeaderChanged { group } | PushItem::Refill { group } => {
                    self.refill_group(cluster, group)
                }
            }
        }
    }

    fn deliver_message(&self, cluster: &Arc<Cluster>, p: Pushed) {
        let group = self
            .shard_map
            .shard_for_conversation(&p.message.conversation_id);
        let mut out = Vec::new();
        let fill = {
            let mut tracker = self.tracker.lock();
            let fill = tracker.accept(group, p, &mut out);
            // Delivered under the lock, so concurrent deliveries keep seq order.
            for p in &out {
                self.hub.push_message(p);
            }
            fill
        };
        if let Some((conv, from, to)) = fill {
            self.spawn_fill(cluster, conv, from, to);
        }
    }

    /// After a leader change of `group`: read what follows every tracked conversation's last
    /// delivered seq.
    fn refill_group(&self, cluster: &Arc<Cluster>, group: GroupId) {
        let to_fill = self.tracker.lock().start_refill(group);
        for (conv, from, to) in to_fill {
            self.spawn_fill(cluster, conv, from, to);
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
        let mut out = Vec::new();
        let mut tracker = self.tracker.lock();
        tracker.finish_fill(conv, fetched, &mut out);
        for p in &out {
            self.hub.push_message(p);
        }
    }
}

impl PushItem {
    /// About how many bytes this item takes in a push request: what push batches and peer
    /// queues are bounded by.
    pub fn size_estimate(&self) -> usize {
        const FIXED: usize = 64;
        let list = |v: &[UserId]| v.iter().map(|s| s.len() + 2).sum::<usize>();
        FIXED
            + match self {
                PushItem::Message(p) => {
                    let m = &p.message;
                    m.conversation_id.len()
                        + m.msg_id.len()
                        + m.sender_id.len()
                        + m.sender_device.len()
                        + m.client_msg_id.len()
                        + m.body.len()
                        + list(&p.recipients)
                }
                PushItem::Receipt(r) => {
                    r.conversation_id.len() + r.user_id.len() + list(&r.recipients)
                }
                PushItem::Typing {
                    conversation_id,
                    user_id,
                    device,
                    recipients,
                    ..
                } => conversation_id.len() + user_id.len() + device.len() + list(recipients),
                PushItem::Presence { user_id, .. } => user_id.len(),
                PushItem::LeaderChanged { .. } | PushItem::Refill { .. } => 0,
            }
    }
}

/// Sends one peer's queued pushes, one request at a time, in order, in batches of at most
/// [`PUSH_BATCH_ITEMS_MAX`] items and about [`PUSH_BATCH_BYTES_MAX`] bytes; once the queue
/// has room after a loss, the peer is told which groups to refill.
async fn run_peer(
    cluster: std::sync::Weak<Cluster>,
    peer: NodeId,
    mut rx: mpsc::Receiver<PushItem>,
    state: Arc<PeerQueueState>,
) {
    use std::sync::atomic::Ordering;
    while let Some(first) = rx.recv().await {
        let mut batch = super::with_queued_within(
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
        send_batch(&cluster, peer, batch).await;
        // A loss while the queue was empty: nothing wakes us; announce it now.
        if rx.is_empty() {
            let lost = std::mem::take(&mut *state.lost.lock());
            if !lost.is_empty() {
                let batch = lost
                    .into_iter()
                    .map(|group| PushItem::Refill { group })
                    .collect();
                send_batch(&cluster, peer, batch).await;
            }
        }
    }
}

async fn send_batch(cluster: &std::sync::Weak<Cluster>, peer: NodeId, batch: Vec<PushItem>) {
    let Some(cluster) = cluster.upgrade() else {
        return;
    };
    let (Some(t), Some(addr)) = (cluster.transport(), cluster.address_of(peer)) else {
        return;
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

#[cfg(test)]
mod tests;
