//! Typing and presence publishing: ephemeral events produced on this node that cross to the
//! other nodes without touching Raft (G9), through delivery's inbox (to every peer, and to
//! this node's connections).

use super::hub::PresenceOut;
use super::inbox::Inbox;
use crate::cluster::push::PushItem;
use crate::shard::command::UserId;

impl Inbox {
    /// `user` (on `device`) started or stopped typing in `conversation_id`; `recipients` are
    /// its members. Dropped when the inbox is full.
    pub(crate) fn typing(
        &self,
        conversation_id: String,
        user_id: UserId,
        device: String,
        start: bool,
        recipients: Vec<UserId>,
    ) {
        self.local(vec![PushItem::Typing {
            conversation_id,
            user_id,
            device,
            start,
            recipients,
        }]);
    }

    /// Where the hub reports presence changes of this node's users: (user, online,
    /// last_seen), carried to the other nodes. Only queues: the hub calls it freely.
    pub(crate) fn presence_out(&self) -> PresenceOut {
        let inbox = self.clone();
        Box::new(move |changes| {
            let items = changes
                .into_iter()
                .map(|(user_id, online, last_seen)| PushItem::Presence {
                    user_id,
                    online,
                    last_seen,
                })
                .collect();
            inbox.local(items);
        })
    }
}
