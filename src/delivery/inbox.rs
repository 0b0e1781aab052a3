//! Delivery's one inbox: what the apply side committed, what peers pushed, and what this
//! node publishes without Raft (typing, presence, a new leader). One task consumes it
//! (`fanout::Fanout::run`), so JSON encoding and the hub's lock never run on the apply
//! thread, and everything a gateway delivers goes through one ordered queue.
//!
//! Bounded ([`INBOX_ITEMS_MAX`]) and never waited on by the apply thread or a peer's
//! request: a batch that does not fit is dropped, but never silently. The groups of the
//! committed messages in it are remembered and refilled as soon as the consumer runs
//! (its gateways re-read what follows their last delivered seq; when this node leads the
//! group its peers are told `Refill` too), the same rule the peer queues follow.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::Notify;

use super::links::NodeId;
use crate::cluster::push::{PushItem, PushSink};
use crate::cluster::ShardMap;
use crate::ids::*;
use crate::metrics::Metrics;
#[cfg(feature = "fault-injection")]
use crate::shard::command::Pushed;
use crate::shard::push::Push;

/// Batches waiting in delivery's inbox before new ones are dropped (and refilled).
pub(crate) const INBOX_ITEMS_MAX: usize = 16_384;

/// One entry of the inbox.
pub(super) enum Inbound {
    /// What one group's apply committed, in log order.
    Applied { group: GroupId, pushes: Vec<Push> },
    /// A batch from peer `from`, in the order it produced them.
    Peer { from: NodeId, items: Vec<PushItem> },
    /// Produced here without Raft (typing, presence, `LeaderChanged`): to every peer and to
    /// this node's connections.
    Local(Vec<PushItem>),
    /// Broken on purpose (`sabotage::Switch::PushBeforeCommit`): straight to the hub.
    #[cfg(feature = "fault-injection")]
    Uncommitted(Pushed),
}

/// Groups whose pushes were dropped at the full inbox.
#[derive(Default, Debug, PartialEq)]
pub(super) struct Lost {
    /// From this node's apply: refilled here and, when this node leads, by its peers.
    pub(crate) applied: BTreeSet<GroupId>,
    /// From a peer: refilled here.
    pub(crate) received: BTreeSet<GroupId>,
}

impl Lost {
    pub(super) fn is_empty(&self) -> bool {
        self.applied.is_empty() && self.received.is_empty()
    }
}

#[derive(Default)]
pub(super) struct Overflow {
    any: AtomicBool,
    lost: Mutex<Lost>,
    /// Wakes the consumer when a loss happened while it waits on an empty inbox.
    pub(super) wake: Notify,
}

impl Overflow {
    /// What was lost since the last call (cheap when nothing was).
    pub(super) fn take(&self) -> Lost {
        if !self.any.swap(false, Ordering::AcqRel) {
            return Lost::default();
        }
        std::mem::take(&mut *self.lost.lock())
    }
}

/// The sending side of the inbox; cheap to clone.
#[derive(Clone)]
pub(crate) struct Inbox {
    pub(super) tx: mpsc::Sender<Inbound>,
    pub(super) overflow: Arc<Overflow>,
    /// Set by [`super::start`]: until then (the start-up replay of every group) what apply
    /// pushes goes to nobody, since nobody is connected yet, and is not queued.
    pub(super) open: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// The receiving side, for [`super::start`].
pub(crate) struct InboxReceiver {
    pub(super) rx: mpsc::Receiver<Inbound>,
    pub(super) overflow: Arc<Overflow>,
}

/// A new inbox of [`INBOX_ITEMS_MAX`] batches.
pub(crate) fn inbox(metrics: Arc<Metrics>) -> (Inbox, InboxReceiver) {
    let (inbox, receiver) = inbox_of(INBOX_ITEMS_MAX, metrics);
    inbox.open.store(false, Ordering::Release);
    (inbox, receiver)
}

pub(super) fn inbox_of(capacity: usize, metrics: Arc<Metrics>) -> (Inbox, InboxReceiver) {
    let (tx, rx) = mpsc::channel(capacity);
    let overflow = Arc::new(Overflow::default());
    let receiver = InboxReceiver {
        rx,
        overflow: overflow.clone(),
    };
    (
        Inbox {
            tx,
            overflow,
            open: Arc::new(AtomicBool::new(true)),
            metrics,
        },
        receiver,
    )
}

impl Inbox {
    /// What `group`'s apply committed (called on the apply thread, in log order). Never
    /// waits: see the module doc for a full inbox.
    pub(crate) fn applied(&self, group: GroupId, pushes: Vec<Push>) {
        if pushes.is_empty() || !self.open.load(Ordering::Acquire) {
            return;
        }
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Inbound::Applied { group, pushes }) {
            self.lose(|l| {
                l.applied.insert(group);
            });
        }
    }

    /// Ephemeral items produced here: dropped when the inbox is full (G9: typing and
    /// presence are best effort and never stored).
    pub(super) fn local(&self, items: Vec<PushItem>) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Inbound::Local(items)) {
            tracing::debug!("delivery inbox full; typing or presence dropped");
        }
    }

    fn lose(&self, record: impl FnOnce(&mut Lost)) {
        self.metrics.delivery_inbox_overflows.inc();
        let first = {
            let mut lost = self.overflow.lost.lock();
            let first = lost.is_empty();
            record(&mut lost);
            first
        };
        self.overflow.any.store(true, Ordering::Release);
        self.overflow.wake.notify_one();
        if first {
            tracing::warn!("delivery inbox full: pushes dropped; their groups will be re-read");
        }
    }

    /// The sink the peer service hands received pushes to.
    pub(crate) fn peer_sink(&self, shard_map: Arc<ShardMap>) -> Arc<dyn PushSink> {
        Arc::new(PeerSink {
            inbox: self.clone(),
            shard_map,
        })
    }
}

/// Received pushes into the inbox; on a full inbox, the groups of the dropped messages
/// (and of a dropped `LeaderChanged` or `Refill`) are refilled.
struct PeerSink {
    inbox: Inbox,
    shard_map: Arc<ShardMap>,
}

impl PushSink for PeerSink {
    fn receive(&self, from: NodeId, items: Vec<PushItem>) {
        let Err(TrySendError::Full(Inbound::Peer { items, .. })) =
            self.inbox.tx.try_send(Inbound::Peer { from, items })
        else {
            return;
        };
        let groups = lost_groups(&self.shard_map, &items);
        if !groups.is_empty() {
            self.inbox.lose(|l| l.received.extend(groups));
        }
    }

    #[cfg(feature = "fault-injection")]
    fn push_uncommitted(&self, p: Pushed) {
        let _ = self.inbox.tx.try_send(Inbound::Uncommitted(p));
    }
}

/// The groups a dropped batch leaves gaps in: those of its messages, and those it asked to
/// refill. Receipts, typing and presence leave none (clients re-read receipts with sync).
pub(super) fn lost_groups(shard_map: &ShardMap, items: &[PushItem]) -> BTreeSet<GroupId> {
    items
        .iter()
        .filter_map(|i| match i {
            PushItem::Message(p) => {
                Some(shard_map.shard_for_conversation(&p.message.conversation_id))
            }
            PushItem::LeaderChanged { group } | PushItem::Refill { group } => Some(*group),
            _ => None,
        })
        .collect()
}
