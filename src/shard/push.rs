//! What a committed shard response pushes to clients: a message (to the members as of its
//! seq) and receipt watermarks. Pure: computed from the response alone, the same on every
//! replica, so that any replica's apply can hand it to delivery (G4: only applied entries
//! are pushed).

use super::command::{Pushed, ReceiptState, ShardResponse};

/// One push a committed command implies.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Push {
    /// A committed message for its recipients' connections.
    Message(Pushed),
    /// A receipt watermark that moved.
    Receipt(ReceiptState),
}

/// Appends to `out` what committed response `r` pushes, in the order clients must see it.
pub(crate) fn pushes_of(r: &ShardResponse, out: &mut Vec<Push>) {
    match r {
        ShardResponse::Ack {
            pushed: Some(p), ..
        } => {
            // Sending moved the sender's own read watermark to the message.
            let m = &p.message;
            let receipt = ReceiptState {
                conversation_id: m.conversation_id.clone(),
                user_id: m.sender_id.clone(),
                delivered_seq: m.seq,
                read_seq: m.seq,
                changed: true,
                recipients: p.recipients.clone(),
            };
            out.push(Push::Message(p.clone()));
            out.push(Push::Receipt(receipt));
        }
        ShardResponse::Membership {
            pushed: Some(p), ..
        } => out.push(Push::Message(p.clone())),
        ShardResponse::Receipt(rs) => out.push(Push::Receipt(rs.clone())),
        _ => {}
    }
}
