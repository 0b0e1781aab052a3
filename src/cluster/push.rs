//! Pushes between nodes: the wire form of a push batch (`PeerRequest::Push`) and the sink
//! the peer service hands received batches to. What happens to them (order, dedup, gap
//! fill, the connections) is the delivery layer's business; the cluster only carries them,
//! so it names the sink as a trait here instead of importing the layer above it.

use serde::{Deserialize, Serialize};

use super::peer::NodeId;
use crate::ids::*;
use crate::shard::command::*;
use crate::shard::push::Push;

/// One push between nodes. The variants' order is their encoding: append only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum PushItem {
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

impl From<Push> for PushItem {
    fn from(p: Push) -> Self {
        match p {
            Push::Message(p) => PushItem::Message(p),
            Push::Receipt(r) => PushItem::Receipt(r),
        }
    }
}

impl PushItem {
    /// About how many bytes this item takes in a push request: what push batches and peer
    /// queues are bounded by.
    pub(crate) fn size_estimate(&self) -> usize {
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

/// Where the peer service hands pushes received from other nodes (implemented by
/// the delivery layer). Must not wait: it runs in the request handler.
pub(crate) trait PushSink: Send + Sync {
    /// A batch from peer `from`, in the order it produced them.
    fn receive(&self, from: NodeId, items: Vec<PushItem>);
    /// Pushes `p` to this node's connections now, uncommitted and untracked: broken on
    /// purpose (`sabotage::Switch::PushBeforeCommit`).
    #[cfg(feature = "fault-injection")]
    fn push_uncommitted(&self, p: Pushed);
}
