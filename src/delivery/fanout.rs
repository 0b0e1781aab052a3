//! The consumer of delivery's inbox: one task per node that turns committed pushes into
//! frames on this node's connections (through the tracker, in seq order, once, G5) and,
//! for groups this node leads, into batches for the peers that need the leader's copy.
//!
//! - After applying a batch, every replica hands its pushes here (`Inbound::Applied`): each
//!   delivers to its own connections. The leader of the group also queues them for the
//!   other nodes, except the replicas close enough to push from their own apply.
//! - A gap is read from the group's leader on a task of its own; the messages come back
//!   through `fills` and are delivered here, so the tracker has one owner and no lock.

use crate::shutdown::Shutdown;
use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::hub::Hub;
use super::inbox::{Inbound, InboxReceiver, Lost};
use super::links::{replicas_pushing_by_apply, GapRead, NodeId, Peers};
use super::peer_queue::PeerQueues;
use super::tracker::{Tracker, GAP_FILL_MESSAGES_MAX};
use crate::cluster::push::PushItem;
use crate::cluster::ShardMap;
use crate::ids::*;
use crate::shard::command::*;
use crate::shard::push::Push;

/// Gap-fill answers waiting for the consumer (the fill tasks wait for room; they are at most
/// one per tracked conversation).
pub(crate) const FILLS_QUEUED_MAX: usize = 1_024;

/// The messages read for one gap.
pub(super) struct Filled {
    conversation: ConversationId,
    messages: Vec<Message>,
}

pub(super) struct Fanout {
    node_id: NodeId,
    hub: Arc<Hub>,
    shard_map: Arc<ShardMap>,
    peers: Arc<dyn Peers>,
    gaps: Arc<dyn GapRead>,
    queues: PeerQueues,
    tracker: Tracker,
    fills: mpsc::Sender<Filled>,
    /// Gap fills and peer workers stop with the node.
    shutdown: Shutdown,
}

impl Fanout {
    pub(super) fn new(
        node_id: NodeId,
        hub: Arc<Hub>,
        shard_map: Arc<ShardMap>,
        peers: Arc<dyn Peers>,
        gaps: Arc<dyn GapRead>,
        shutdown: Shutdown,
    ) -> (Self, mpsc::Receiver<Filled>) {
        let (fills, fills_rx) = mpsc::channel(FILLS_QUEUED_MAX);
        let fanout = Fanout {
            node_id,
            hub,
            queues: PeerQueues::new(peers.clone(), shard_map.clone(), shutdown.clone()),
            shutdown,
            shard_map,
            peers,
            gaps,
            tracker: Tracker::default(),
            fills,
        };
        (fanout, fills_rx)
    }

    /// Consumes the inbox until every sender is gone. Gap fills first: they unblock the
    /// conversations that hold pushes back.
    pub(super) async fn run(mut self, mut inbox: InboxReceiver, mut fills: mpsc::Receiver<Filled>) {
        loop {
            tokio::select! {
                biased;
                Some(f) = fills.recv() => self.finish_fill(f),
                m = inbox.rx.recv() => match m {
                    Some(m) => self.handle(m),
                    None => return,
                },
                _ = inbox.overflow.wake.notified() => {}
            }
            let lost = inbox.overflow.take();
            if !lost.is_empty() {
                self.recover(lost);
            }
        }
    }

    pub(super) fn handle(&mut self, m: Inbound) {
        match m {
            Inbound::Applied { group, pushes } => self.applied(group, pushes),
            Inbound::Peer { from, items } => self.receive(from, items),
            Inbound::Local(items) => {
                self.queues.broadcast_except(&items, &BTreeSet::new());
                self.receive(self.node_id, items);
            }
            #[cfg(feature = "fault-injection")]
            Inbound::Uncommitted(p) => self.hub.push_message(&p),
        }
    }

    /// Pushes of `group` this node applied (G4: only applied entries are pushed): to this
    /// node's connections always, to the other nodes' when this node leads the group.
    fn applied(&mut self, group: GroupId, pushes: Vec<Push>) {
        let items: Vec<PushItem> = pushes.into_iter().map(PushItem::from).collect();
        if let Some(r) = self.peers.replication(group) {
            // Replicas that keep up push from their own apply: only the other gateways
            // need the leader's copy.
            let skip = replicas_pushing_by_apply(&r);
            self.queues.broadcast_except(&items, &skip);
        }
        self.receive(self.node_id, items);
    }

    /// Delivers pushes (from peer `from`, or from this node) to local connections.
    fn receive(&mut self, from: NodeId, items: Vec<PushItem>) {
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
                PushItem::Message(p) => self.deliver_message(p),
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
                    self.refill_group(group)
                }
            }
        }
    }

    fn deliver_message(&mut self, p: Pushed) {
        let group = self
            .shard_map
            .shard_for_conversation(&p.message.conversation_id);
        let mut out = Vec::new();
        let fill = self.tracker.accept(group, p, &mut out);
        for p in &out {
            self.hub.push_message(p);
        }
        if let Some((conv, from, to)) = fill {
            self.spawn_fill(conv, from, to);
        }
    }

    /// After a leader change of `group` (or lost pushes): read what follows every tracked
    /// conversation's last delivered seq.
    fn refill_group(&mut self, group: GroupId) {
        for (conv, from, to) in self.tracker.start_refill(group) {
            self.spawn_fill(conv, from, to);
        }
    }

    /// Pushes dropped at the full inbox: their groups are re-read here, and the peers of a
    /// group this node leads are told to re-read it too (they may have relied on its copy).
    pub(super) fn recover(&mut self, lost: Lost) {
        for group in lost.applied {
            if self.peers.replication(group).is_some() {
                let refill = [PushItem::Refill { group }];
                self.queues.broadcast_except(&refill, &BTreeSet::new());
            }
            self.refill_group(group);
        }
        for group in lost.received {
            self.refill_group(group);
        }
    }

    fn spawn_fill(&self, conversation: ConversationId, from: u64, to: Option<u64>) {
        let (gaps, fills) = (self.gaps.clone(), self.fills.clone());
        let group = self.shard_map.shard_for_conversation(&conversation);
        self.shutdown.spawn(async move {
            let last_seq = to.unwrap_or(from + GAP_FILL_MESSAGES_MAX);
            let read = gaps.read_after(
                group,
                conversation.clone(),
                from,
                last_seq,
                GAP_FILL_MESSAGES_MAX,
            );
            let messages = match read.await {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(conversation = %conversation, error = %e, "gap fill failed; clients will sync");
                    Vec::new()
                }
            };
            // An empty answer still ends the fill (what was held goes out).
            let _ = fills
                .send(Filled {
                    conversation,
                    messages,
                })
                .await;
        });
    }

    pub(super) fn finish_fill(&mut self, f: Filled) {
        let mut out = Vec::new();
        self.tracker
            .finish_fill(&f.conversation, f.messages, &mut out);
        for p in &out {
            self.hub.push_message(p);
        }
    }
}
