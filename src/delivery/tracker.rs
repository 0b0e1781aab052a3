//! Per-conversation delivery state of one gateway: committed messages reach its connections
//! in seq order per conversation, once, and only to the members as of each seq (G5).
//!
//! - Each gateway remembers the last seq it delivered per conversation. A push at or below it
//!   is a duplicate (dropped); one past a gap holds later pushes back while the missing
//!   seqs are read from the leader, then everything goes out in order.
//! - A new leader announces itself (`LeaderChanged`), and a peer whose queue overflowed is
//!   told `Refill`: gateways re-read what follows their last seq of that group's
//!   conversations, so a message whose push died with the old leader still arrives.

use std::collections::{BTreeMap, HashMap};

use crate::ids::*;
use crate::shard::command::*;

/// Conversations whose last delivered seq a gateway remembers.
pub(crate) const TRACKED_CONVERSATIONS_MAX: usize = 100_000;
/// Pushes held back per conversation while a gap is being filled.
pub(crate) const HELD_PUSHES_PER_CONVERSATION_MAX: usize = 1_000;
/// Most messages read to fill one gap: their reply must fit one frame even with bodies of
/// `shard::validate::BODY_BYTES_MAX` (200 × 64 KiB ≈ 13 MiB < 16 MiB); a longer gap is
/// left to the clients' sync (G8).
pub(crate) const GAP_FILL_MESSAGES_MAX: u64 = 200;

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
pub(super) type Fill = (ConversationId, u64, Option<u64>);

/// Per-conversation delivery state of a gateway: in seq order, once, and only to the members
/// as of each seq (G5). Pure: it says what to deliver; [`Fanout`] delivers it.
#[derive(Default)]
pub(super) struct Tracker {
    tracks: HashMap<ConversationId, Track>,
}

impl Tracker {
    /// A committed message arrives (from a peer or this node's apply): deliver it, drop it
    /// as a duplicate, or hold it and ask for the gap before it.
    pub(super) fn accept(
        &mut self,
        group: GroupId,
        p: Pushed,
        out: &mut Vec<Pushed>,
    ) -> Option<Fill> {
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
    pub(super) fn start_refill(&mut self, group: GroupId) -> Vec<Fill> {
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
    pub(super) fn finish_fill(&mut self, conv: &str, fetched: Vec<Message>, out: &mut Vec<Pushed>) {
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

#[cfg(test)]
mod tests;
