//! Deterministic apply of shard commands.
//!
//! Order of checks for a send (DESIGN.md §4.5): dedup -> membership and role -> seq. The
//! message, its dedup entry, the conversation's new `last_seq` and the sender's read
//! watermark are written through one [`SmTxn`], which raft/ commits in one batch together with
//! the applied log id.

use super::command::*;
use super::keys;
use crate::codec::{decode, encode};
use crate::storage::{SmTxn, StorageError};

/// Most members a conversation can ever have had, creator included.
pub(crate) const MEMBERS_EVER_MAX: u32 = 200;

pub(super) type ApplyResult = Result<ShardResponse, StorageError>;

fn rejected(r: Rejection) -> ApplyResult {
    Ok(ShardResponse::Rejected(r))
}

pub(super) fn get<T: serde::de::DeserializeOwned>(
    txn: &SmTxn<'_>,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    Ok(txn.get(key)?.map(|v| decode(&v)).transpose()?)
}

pub(super) fn put<T: serde::Serialize>(
    txn: &mut SmTxn<'_>,
    key: Vec<u8>,
    value: &T,
) -> Result<(), StorageError> {
    txn.put(key, encode(value)?);
    Ok(())
}

/// Applies one shard command. Total: a command that breaks the shape rules
/// (`validate::check_op`) is rejected before any key is built, so no command, however
/// malformed, panics apply or wedges the group. Each family of commands has its own
/// dispatch (`validate` checks them along the same seams), each command its own function.
pub(crate) fn apply_shard(txn: &mut SmTxn<'_>, op: &ShardOp) -> ApplyResult {
    if let Err(r) = super::validate::check_op(op) {
        return rejected(r);
    }
    let applied = match op {
        ShardOp::CreateConversation { .. } | ShardOp::Send { .. } | ShardOp::Receipt { .. } => {
            apply_conversation_op(txn, op)
        }
        ShardOp::AddMembers { .. } | ShardOp::RemoveMember { .. } | ShardOp::SetRole { .. } => {
            apply_membership_op(txn, op)
        }
        ShardOp::CreateUser { .. }
        | ShardOp::ClaimUsername { .. }
        | ShardOp::IndexUserConversation { .. }
        | ShardOp::IndexUserConversationCapped { .. }
        | ShardOp::UnindexUserConversation { .. }
        | ShardOp::OutboxDone { .. } => apply_user_op(txn, op),
        ShardOp::CreateInvite { .. }
        | ShardOp::UseInvite { .. }
        | ShardOp::CreateSession { .. }
        | ShardOp::RefreshSession { .. }
        | ShardOp::RevokeSession { .. }
        | ShardOp::RevokeAllSessions { .. } => super::accounts::apply_account(txn, op),
        #[cfg(feature = "fault-injection")]
        ShardOp::SendAtSeq { seq, send } => Some(send_at_seq(txn, *seq, send)),
    };
    // Every family answers the commands routed to it: `None` would be a routing bug above,
    // still a deterministic refusal rather than a panic.
    applied.unwrap_or_else(|| {
        rejected(Rejection::BadRequest(
            "command routed to the wrong family".into(),
        ))
    })
}

/// A `Send` whose seq the proposer chose: broken on purpose
/// (`sabotage::Switch::SeqAtProposal`), the proposer's seq wins.
#[cfg(feature = "fault-injection")]
fn send_at_seq(txn: &mut SmTxn<'_>, seq: u64, send: &ShardOp) -> ApplyResult {
    if let ShardOp::Send {
        conversation_id, ..
    } = send
    {
        put(txn, keys::last_seq(conversation_id), &seq.saturating_sub(1))?;
    }
    apply_shard(txn, send)
}

/// A conversation's own commands: creation, messages and receipts (`None` for the rest).
fn apply_conversation_op(txn: &mut SmTxn<'_>, op: &ShardOp) -> Option<ApplyResult> {
    Some(match op {
        ShardOp::CreateConversation {
            conversation_id,
            kind,
            title,
            creator,
            members,
            ts,
        } => create_conversation(txn, conversation_id, *kind, title, creator, members, *ts),
        ShardOp::Send {
            conversation_id,
            sender,
            sender_device,
            client_msg_id,
            kind,
            body,
            ref_seq,
            msg_id,
            ts,
        } => send(
            txn,
            conversation_id,
            EventArgs {
                sender,
                sender_device,
                client_msg_id,
                kind: *kind,
                body,
                ref_seq: *ref_seq,
                msg_id,
                ts: *ts,
            },
        ),
        ShardOp::Receipt {
            conversation_id,
            user_id,
            delivered_seq,
            read_seq,
        } => receipt(txn, conversation_id, user_id, *delivered_seq, *read_seq),
        _ => return None,
    })
}

/// A conversation's membership changes, each a sequenced event (`None` for the rest).
fn apply_membership_op(txn: &mut SmTxn<'_>, op: &ShardOp) -> Option<ApplyResult> {
    Some(match op {
        ShardOp::AddMembers {
            conversation_id,
            actor,
            actor_device,
            members,
            msg_id,
            ts,
        } => {
            let actor = Actor::new(actor, actor_device, msg_id, *ts);
            add_members(txn, conversation_id, &actor, members)
        }
        ShardOp::RemoveMember {
            conversation_id,
            actor,
            actor_device,
            user_id,
            msg_id,
            ts,
        } => {
            let actor = Actor::new(actor, actor_device, msg_id, *ts);
            remove_member(txn, conversation_id, &actor, user_id)
        }
        ShardOp::SetRole {
            conversation_id,
            actor,
            actor_device,
            user_id,
            role,
            msg_id,
            ts,
        } => {
            let actor = Actor::new(actor, actor_device, msg_id, *ts);
            set_role(txn, conversation_id, &actor, user_id, *role)
        }
        _ => return None,
    })
}

/// A user's records in the user's (or the username's) shard: the user, the username claim,
/// the user's conversation index, and the outbox entries delivered to it (`None` for the
/// rest).
fn apply_user_op(txn: &mut SmTxn<'_>, op: &ShardOp) -> Option<ApplyResult> {
    Some(match op {
        ShardOp::CreateUser {
            user_id,
            username,
            password_hash,
            ts,
        } => create_user(txn, user_id, username, password_hash, *ts),
        ShardOp::ClaimUsername { username, user_id } => claim_username(txn, username, user_id),
        ShardOp::IndexUserConversation {
            user_id,
            conversation_id,
        } => index_user_conversation(txn, user_id, conversation_id, None),
        ShardOp::IndexUserConversationCapped {
            user_id,
            conversation_id,
            cap,
        } => index_user_conversation(txn, user_id, conversation_id, Some(*cap)),
        ShardOp::UnindexUserConversation {
            user_id,
            conversation_id,
        } => unindex_user_conversation(txn, user_id, conversation_id),
        ShardOp::OutboxDone { ids } => outbox_done(txn, ids),
        _ => return None,
    })
}

/// Stores a user's record once; a retry (same user id) keeps the first.
fn create_user(
    txn: &mut SmTxn<'_>,
    user_id: &str,
    username: &str,
    password_hash: &str,
    ts: u64,
) -> ApplyResult {
    let key = keys::user(user_id);
    if txn.get(&key)?.is_none() {
        let record = UserRecord {
            user_id: user_id.to_string(),
            username: username.to_string(),
            password_hash: password_hash.to_string(),
            created_ts: ts,
        };
        put(txn, key, &record)?;
    }
    Ok(ShardResponse::UserCreated)
}

/// Claims `username` for `user_id`: first wins, a retry by the owner succeeds again.
fn claim_username(txn: &mut SmTxn<'_>, username: &str, user_id: &str) -> ApplyResult {
    let key = keys::username(username);
    match get::<String>(txn, &key)? {
        Some(owner) if owner != user_id => {
            rejected(Rejection::Conflict("username is taken".into()))
        }
        Some(owner) => Ok(ShardResponse::UsernameClaimed { user_id: owner }),
        None => {
            put(txn, key, &user_id)?;
            Ok(ShardResponse::UsernameClaimed {
                user_id: user_id.to_string(),
            })
        }
    }
}

/// Drops delivered outbox entries (joins and leaves share the id sequence).
fn outbox_done(txn: &mut SmTxn<'_>, ids: &[u64]) -> ApplyResult {
    for id in ids {
        txn.delete(keys::outbox(*id));
        txn.delete(keys::outbox_unindex(*id));
    }
    Ok(ShardResponse::Done)
}

/// Like [`get`], through the store's cache of hot values (read by nearly every apply).
fn get_cached<T: serde::de::DeserializeOwned>(
    txn: &SmTxn<'_>,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    Ok(txn.get_cached(key)?.map(|v| decode(&v)).transpose()?)
}

/// The conversation's state; its `last_seq` lives under its own key (see `keys::last_seq`).
fn load_conversation(
    txn: &SmTxn<'_>,
    conversation_id: &str,
) -> Result<Option<ConversationState>, StorageError> {
    let Some(mut conv) =
        get_cached::<ConversationState>(txn, &keys::conversation(conversation_id))?
    else {
        return Ok(None);
    };
    conv.last_seq = get_cached(txn, &keys::last_seq(conversation_id))?.unwrap_or(0);
    Ok(Some(conv))
}

/// Saves the whole state (membership changed) and its `last_seq`.
fn save_conversation(txn: &mut SmTxn<'_>, conv: &ConversationState) -> Result<(), StorageError> {
    put(txn, keys::conversation(&conv.conversation_id), conv)?;
    save_last_seq(txn, conv)
}

/// Saves only `last_seq` (a message was appended; members did not change).
fn save_last_seq(txn: &mut SmTxn<'_>, conv: &ConversationState) -> Result<(), StorageError> {
    put(txn, keys::last_seq(&conv.conversation_id), &conv.last_seq)
}

/// Queues "user is in conversation" for the user's shard (delivered by the outbox relay).
fn outbox_push(
    txn: &mut SmTxn<'_>,
    user_id: &str,
    conversation_id: &str,
) -> Result<(), StorageError> {
    outbox_queue(txn, user_id, conversation_id, keys::outbox)
}

/// Queues "user is no longer in conversation" for the user's shard; it shares the id
/// sequence with [`outbox_push`], so the relay delivers joins and leaves in apply order.
fn outbox_unindex_push(
    txn: &mut SmTxn<'_>,
    user_id: &str,
    conversation_id: &str,
) -> Result<(), StorageError> {
    outbox_queue(txn, user_id, conversation_id, keys::outbox_unindex)
}

fn outbox_queue(
    txn: &mut SmTxn<'_>,
    user_id: &str,
    conversation_id: &str,
    key: fn(u64) -> Vec<u8>,
) -> Result<(), StorageError> {
    let next_key = keys::outbox_next();
    let id: u64 = get(txn, &next_key)?.unwrap_or(1);
    put(
        txn,
        key(id),
        &OutboxEntry {
            user_id: user_id.to_string(),
            conversation_id: conversation_id.to_string(),
        },
    )?;
    put(txn, next_key, &id.saturating_add(1))
}

/// Most index entries counted when a user's count key is missing (an index written before
/// the count existed); such a user is past any sane cap anyway.
pub(crate) const USER_CONVERSATION_COUNT_SCAN_MAX: usize = 100_000;

/// How many conversations `user_id`'s index holds: the count key, or (first time) a count of
/// the index itself. Deterministic: both are state of this group.
fn user_conversation_count(txn: &SmTxn<'_>, user_id: &str) -> Result<u64, StorageError> {
    if let Some(n) = get::<u64>(txn, &keys::user_conversation_count(user_id))? {
        return Ok(n);
    }
    let start = keys::user_conversation_prefix(user_id);
    let mut end = start.clone();
    // The prefix ends with the user id's last byte: the next prefix bounds the range.
    end.push(0xff);
    let n = txn
        .scan(&start, &end, false, USER_CONVERSATION_COUNT_SCAN_MAX)?
        .iter()
        .filter(|(k, _)| k.starts_with(&start))
        .count();
    Ok(n as u64)
}

/// Adds a conversation to a user's index; with a cap, a new entry past it is refused.
/// Idempotent: an entry already there is `Done` and counted once.
fn index_user_conversation(
    txn: &mut SmTxn<'_>,
    user_id: &str,
    conversation_id: &str,
    cap: Option<u32>,
) -> ApplyResult {
    let key = keys::user_conversation(user_id, conversation_id);
    if txn.get(&key)?.is_some() {
        return Ok(ShardResponse::Done);
    }
    let count = user_conversation_count(txn, user_id)?;
    if cap.is_some_and(|cap| count >= u64::from(cap)) {
        return rejected(Rejection::BadRequest(format!(
            "user {user_id} is in too many conversations"
        )));
    }
    txn.put(key, Vec::new());
    put(txn, keys::user_conversation_count(user_id), &(count + 1))?;
    Ok(ShardResponse::Done)
}

/// Removes a conversation from a user's index (the user left or was removed). Idempotent.
fn unindex_user_conversation(
    txn: &mut SmTxn<'_>,
    user_id: &str,
    conversation_id: &str,
) -> ApplyResult {
    let key = keys::user_conversation(user_id, conversation_id);
    if txn.get(&key)?.is_none() {
        return Ok(ShardResponse::Done);
    }
    let count = user_conversation_count(txn, user_id)?;
    txn.delete(key);
    put(
        txn,
        keys::user_conversation_count(user_id),
        &count.saturating_sub(1),
    )?;
    Ok(ShardResponse::Done)
}

/// The conversation and `user`'s role in it; `None` when it does not exist or `user` is not a
/// member (both are `forbidden`: no existence leak).
fn load_as_member(
    txn: &SmTxn<'_>,
    conversation_id: &str,
    user: &str,
) -> Result<Option<(ConversationState, Role)>, StorageError> {
    Ok(load_conversation(txn, conversation_id)?
        .and_then(|conv| member_role(&conv, user).map(|role| (conv, role))))
}

fn not_a_member() -> ApplyResult {
    rejected(Rejection::Forbidden("not a member".into()))
}

fn member_role(conv: &ConversationState, user: &str) -> Option<Role> {
    conv.members
        .iter()
        .find(|m| m.user_id == user)
        .map(|m| m.role)
}

fn recipients(conv: &ConversationState) -> Vec<UserId> {
    conv.members.iter().map(|m| m.user_id.clone()).collect()
}

fn create_conversation(
    txn: &mut SmTxn<'_>,
    conversation_id: &str,
    kind: ConvKind,
    title: &Option<String>,
    creator: &str,
    members: &[UserId],
    ts: u64,
) -> ApplyResult {
    if let Some(existing) = load_conversation(txn, conversation_id)? {
        // A direct conversation is created once; a retried group creation returns itself.
        return if member_role(&existing, creator).is_some() {
            Ok(ShardResponse::Conversation(existing))
        } else {
            rejected(Rejection::Conflict("conversation exists".into()))
        };
    }
    let mut others: Vec<&UserId> = Vec::new();
    for m in members {
        if m != creator && !others.contains(&m) {
            others.push(m);
        }
    }
    match kind {
        ConvKind::Direct if others.len() != 1 => {
            return rejected(Rejection::BadRequest(
                "a direct conversation has exactly one other member".into(),
            ))
        }
        ConvKind::Group if others.is_empty() || others.len() >= MEMBERS_EVER_MAX as usize => {
            return rejected(Rejection::BadRequest(format!(
                "a group has 1..{} other members",
                MEMBERS_EVER_MAX - 1
            )))
        }
        _ => {}
    }
    let creator_role = match kind {
        ConvKind::Direct => Role::Member,
        ConvKind::Group => Role::Owner,
    };
    let mut conv = ConversationState {
        conversation_id: conversation_id.to_string(),
        kind,
        title: title.clone(),
        members: vec![Member {
            user_id: creator.to_string(),
            role: creator_role,
            joined: 0,
        }],
        last_seq: 0,
        members_ever: 1,
        next_join: 1,
        created_ts: ts,
    };
    for m in others {
        join(&mut conv, m, Role::Member);
    }
    for m in conv.members.clone() {
        outbox_push(txn, &m.user_id, conversation_id)?;
    }
    save_conversation(txn, &conv)?;
    Ok(ShardResponse::Conversation(conv))
}

fn join(conv: &mut ConversationState, user: &str, role: Role) {
    conv.members.push(Member {
        user_id: user.to_string(),
        role,
        joined: conv.next_join,
    });
    conv.next_join = conv.next_join.saturating_add(1);
    conv.members_ever = conv.members_ever.saturating_add(1);
}

fn send(txn: &mut SmTxn<'_>, conversation_id: &str, a: EventArgs<'_>) -> ApplyResult {
    let dedup_key = keys::dedup(conversation_id, a.sender, a.client_msg_id);
    let dedup_at_apply = !crate::sabotage!(LeaderMemoryDedup);
    if dedup_at_apply {
        if let Some(ack) = get::<Ack>(txn, &dedup_key)? {
            return Ok(ShardResponse::Ack { ack, pushed: None });
        }
    }
    let Some((mut conv, role)) = load_as_member(txn, conversation_id, a.sender)? else {
        return not_a_member();
    };
    if let Some(target_seq) = a.ref_seq {
        let target: Option<Message> = get(txn, &keys::message(conversation_id, target_seq))?;
        let Some(target) = target else {
            return rejected(Rejection::NotFound(format!(
                "no message at seq {target_seq}"
            )));
        };
        if target.kind != MsgKind::Text {
            return rejected(Rejection::BadRequest(
                "only text messages can be edited or deleted".into(),
            ));
        }
        let allowed = match a.kind {
            MsgKind::Edit => target.sender_id == a.sender,
            MsgKind::Delete => {
                target.sender_id == a.sender || matches!(role, Role::Owner | Role::Admin)
            }
            _ => false,
        };
        if !allowed {
            return rejected(Rejection::Forbidden(
                "not allowed to change this message".into(),
            ));
        }
    }
    let (sender, client_msg_id) = (a.sender, a.client_msg_id);
    let message = append_event(txn, &mut conv, a)?;
    let ack = Ack {
        conversation_id: conversation_id.to_string(),
        client_msg_id: client_msg_id.to_string(),
        seq: message.seq,
        msg_id: message.msg_id.clone(),
        ts: message.ts,
    };
    put(txn, dedup_key, &ack)?;
    // Sending moves the sender's own read watermark to the message.
    let rkey = keys::receipt(conversation_id, sender);
    put(txn, rkey, &(message.seq, message.seq))?;
    save_last_seq(txn, &conv)?;
    Ok(ShardResponse::Ack {
        ack,
        pushed: Some(Pushed {
            message,
            recipients: recipients(&conv),
        }),
    })
}

struct EventArgs<'a> {
    sender: &'a str,
    sender_device: &'a str,
    client_msg_id: &'a str,
    kind: MsgKind,
    body: &'a str,
    ref_seq: Option<u64>,
    msg_id: &'a str,
    ts: u64,
}

/// Assigns the next seq and stores the event. The caller saves the conversation.
fn append_event(
    txn: &mut SmTxn<'_>,
    conv: &mut ConversationState,
    e: EventArgs<'_>,
) -> Result<Message, StorageError> {
    let seq = conv.last_seq.saturating_add(1);
    let message = Message {
        conversation_id: conv.conversation_id.clone(),
        seq,
        msg_id: e.msg_id.to_string(),
        sender_id: e.sender.to_string(),
        sender_device: e.sender_device.to_string(),
        client_msg_id: e.client_msg_id.to_string(),
        kind: e.kind,
        body: e.body.to_string(),
        ts: e.ts,
        ref_seq: e.ref_seq,
    };
    put(txn, keys::message(&conv.conversation_id, seq), &message)?;
    conv.last_seq = seq;
    Ok(message)
}

/// Who made a membership change, and the id and time the proposer chose for its event.
struct Actor<'a> {
    user: &'a str,
    device: &'a str,
    msg_id: &'a str,
    ts: u64,
}

impl<'a> Actor<'a> {
    fn new(user: &'a str, device: &'a str, msg_id: &'a str, ts: u64) -> Self {
        Self {
            user,
            device,
            msg_id,
            ts,
        }
    }
}

/// Appends a membership event (server-generated: its client_msg_id is its msg_id), saves the
/// conversation and answers with the event to push to `recipients`.
fn membership_event(
    txn: &mut SmTxn<'_>,
    mut conv: ConversationState,
    actor: &Actor<'_>,
    kind: MsgKind,
    body: &str,
    recipients: Vec<UserId>,
) -> ApplyResult {
    let message = append_event(
        txn,
        &mut conv,
        EventArgs {
            sender: actor.user,
            sender_device: actor.device,
            client_msg_id: actor.msg_id,
            kind,
            body,
            ref_seq: None,
            msg_id: actor.msg_id,
            ts: actor.ts,
        },
    )?;
    save_conversation(txn, &conv)?;
    Ok(ShardResponse::Membership {
        pushed: Some(Pushed {
            message,
            recipients,
        }),
        conversation: conv,
    })
}

fn add_members(
    txn: &mut SmTxn<'_>,
    conversation_id: &str,
    actor: &Actor<'_>,
    members: &[UserId],
) -> ApplyResult {
    let Some((mut conv, actor_role)) = load_as_member(txn, conversation_id, actor.user)? else {
        return not_a_member();
    };
    if actor_role == Role::Member {
        return rejected(Rejection::Forbidden(
            "only an owner or admin adds members".into(),
        ));
    }
    if conv.kind == ConvKind::Direct {
        return rejected(Rejection::BadRequest(
            "a direct conversation has fixed members".into(),
        ));
    }
    let mut new: Vec<&UserId> = Vec::new();
    for m in members {
        if member_role(&conv, m).is_none() && !new.contains(&m) {
            new.push(m);
        }
    }
    if new.is_empty() {
        return Ok(ShardResponse::Membership {
            conversation: conv,
            pushed: None,
        });
    }
    if conv.members_ever as usize + new.len() > MEMBERS_EVER_MAX as usize {
        return rejected(Rejection::BadRequest(format!(
            "a group has at most {MEMBERS_EVER_MAX} members, ever"
        )));
    }
    for m in &new {
        join(&mut conv, m, Role::Member);
        outbox_push(txn, m, conversation_id)?;
    }
    let body = format!(
        "{} added {}",
        actor.user,
        new.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let recipients = recipients(&conv);
    membership_event(txn, conv, actor, MsgKind::MemberAdded, &body, recipients)
}

fn remove_member(
    txn: &mut SmTxn<'_>,
    conversation_id: &str,
    actor: &Actor<'_>,
    user_id: &str,
) -> ApplyResult {
    let Some((mut conv, actor_role)) = load_as_member(txn, conversation_id, actor.user)? else {
        return not_a_member();
    };
    if conv.kind == ConvKind::Direct {
        return rejected(Rejection::BadRequest(
            "a direct conversation has fixed members".into(),
        ));
    }
    let Some(target_role) = member_role(&conv, user_id) else {
        // Already gone (e.g. a retried removal that committed before its timeout): nothing
        // to do, so that the retry succeeds.
        return Ok(ShardResponse::Membership {
            conversation: conv,
            pushed: None,
        });
    };
    let leaving = actor.user == user_id;
    let allowed = leaving
        || actor_role == Role::Owner
        || (actor_role == Role::Admin && target_role == Role::Member);
    if !allowed {
        return rejected(Rejection::Forbidden(
            "not allowed to remove this member".into(),
        ));
    }
    // Everyone who was a member sees the event, the removed user included.
    let before = recipients(&conv);
    conv.members.retain(|m| m.user_id != user_id);
    // The slot in the user's memberships cap is freed once the relay delivers this.
    outbox_unindex_push(txn, user_id, conversation_id)?;
    if target_role == Role::Owner {
        promote_successor(&mut conv);
    }
    let body = if leaving {
        format!("{user_id} left")
    } else {
        format!("{} removed {user_id}", actor.user)
    };
    membership_event(txn, conv, actor, MsgKind::MemberRemoved, &body, before)
}

/// When the owner leaves, the oldest admin (else the oldest member) becomes owner.
fn promote_successor(conv: &mut ConversationState) {
    let pick = |role: Role, conv: &ConversationState| {
        conv.members
            .iter()
            .filter(|m| m.role == role)
            .min_by_key(|m| m.joined)
            .map(|m| m.user_id.clone())
    };
    let successor = pick(Role::Admin, conv).or_else(|| pick(Role::Member, conv));
    if let Some(s) = successor {
        for m in conv.members.iter_mut() {
            if m.user_id == s {
                m.role = Role::Owner;
            }
        }
    }
}

fn set_role(
    txn: &mut SmTxn<'_>,
    conversation_id: &str,
    actor: &Actor<'_>,
    user_id: &str,
    role: Role,
) -> ApplyResult {
    let Some((mut conv, actor_role)) = load_as_member(txn, conversation_id, actor.user)? else {
        return not_a_member();
    };
    if actor_role != Role::Owner {
        return rejected(Rejection::Forbidden("only the owner sets roles".into()));
    }
    let Some(current) = member_role(&conv, user_id) else {
        return rejected(Rejection::BadRequest(format!("{user_id} is not a member")));
    };
    if current == role {
        return Ok(ShardResponse::Membership {
            conversation: conv,
            pushed: None,
        });
    }
    if actor.user == user_id {
        return rejected(Rejection::BadRequest(
            "the owner hands ownership to another member".into(),
        ));
    }
    for m in conv.members.iter_mut() {
        if m.user_id == user_id {
            m.role = role;
        } else if role == Role::Owner && m.user_id == actor.user {
            // Handing over ownership: there is one owner; the old one becomes admin.
            m.role = Role::Admin;
        }
    }
    let body = format!("{} made {user_id} {}", actor.user, role.event_word());
    let recipients = recipients(&conv);
    membership_event(txn, conv, actor, MsgKind::RoleChanged, &body, recipients)
}

fn receipt(
    txn: &mut SmTxn<'_>,
    conversation_id: &str,
    user_id: &str,
    delivered: Option<u64>,
    read: Option<u64>,
) -> ApplyResult {
    let Some((conv, _)) = load_as_member(txn, conversation_id, user_id)? else {
        return not_a_member();
    };
    let highest = delivered.unwrap_or(0).max(read.unwrap_or(0));
    if highest > conv.last_seq {
        return rejected(Rejection::BadRequest(format!(
            "seq {highest} is above last_seq {}",
            conv.last_seq
        )));
    }
    let key = keys::receipt(conversation_id, user_id);
    let (old_delivered, old_read): (u64, u64) = get(txn, &key)?.unwrap_or((0, 0));
    let new_read = old_read.max(read.unwrap_or(0));
    // `read` implies `delivered`.
    let new_delivered = old_delivered.max(delivered.unwrap_or(0)).max(new_read);
    let changed = (new_delivered, new_read) != (old_delivered, old_read);
    if changed {
        put(txn, key, &(new_delivered, new_read))?;
    }
    Ok(ShardResponse::Receipt(ReceiptState {
        conversation_id: conversation_id.to_string(),
        user_id: user_id.to_string(),
        delivered_seq: new_delivered,
        read_seq: new_read,
        changed,
        recipients: recipients(&conv),
    }))
}
