//! The shape rules of a shard command, checked twice: by the leader before it proposes a
//! command that came from a peer (`Cluster::serve_write`), and by `apply_shard` before it
//! touches any key. So a malformed command — from a buggy or compromised node, or written
//! before a rule existed — is a deterministic `Rejection::BadRequest` on every replica,
//! never a panic (a key string over 64 KiB cannot be encoded) and never unbounded work
//! (a member list with a million entries).
//!
//! The rules are the gateway's (`super::text`, which `protocol::validate` applies too): ids are 1..=128 characters of
//! `[A-Za-z0-9_-]`, `client_msg_id` 1..=64, titles at most 200 code points without control
//! characters, bodies without control characters. Counts that are configurable at the
//! gateway have a fixed ceiling here, since apply must not depend on a node's config:
//! bodies at most [`BODY_BYTES_MAX`] bytes (`[limits] max_body_chars` is at most a quarter of
//! it, see `config::validate`).

use super::apply::MEMBERS_EVER_MAX;
use super::command::{MsgKind, Rejection, ShardOp};
use super::read::OUTBOX_BATCH_MAX;
use super::text::{first_control, is_valid_client_msg_id, is_valid_id, title_error};

/// Most bytes of a message body at apply (4 bytes per code point of the largest
/// `max_body_chars` a node accepts).
pub(crate) const BODY_BYTES_MAX: usize = 64 << 10;
/// Most bytes of a stored password hash (an argon2id PHC string is about 100).
pub(crate) const PASSWORD_HASH_BYTES_MAX: usize = 512;
/// Most bytes of a username (the gateway allows 32 characters of `[A-Za-z0-9_.-]`).
pub(crate) const USERNAME_BYTES_MAX: usize = 64;
/// Most user ids in one command's member list.
pub(crate) const MEMBERS_PER_OP_MAX: usize = MEMBERS_EVER_MAX as usize;
/// Most outbox ids one `OutboxDone` drops (the relay sends one outbox page).
pub(crate) const OUTBOX_IDS_PER_OP_MAX: usize = OUTBOX_BATCH_MAX;
/// Most bytes a valid command can have, as [`ShardOp::size_estimate`] counts them.
pub(crate) const OP_BYTES_MAX: usize = BODY_BYTES_MAX + MEMBERS_PER_OP_MAX * 130 + 4096;

fn bad(what: impl Into<String>) -> Rejection {
    Rejection::BadRequest(what.into())
}

fn id(field: &str, v: &str) -> Result<(), Rejection> {
    if is_valid_id(v) {
        Ok(())
    } else {
        Err(bad(format!(
            "{field} must be 1..=128 characters of [A-Za-z0-9_-]"
        )))
    }
}

fn ids(field: &str, vs: &[String]) -> Result<(), Rejection> {
    if vs.len() > MEMBERS_PER_OP_MAX {
        return Err(bad(format!(
            "{field} lists {} users (at most {MEMBERS_PER_OP_MAX})",
            vs.len()
        )));
    }
    vs.iter().try_for_each(|v| id(field, v))
}

fn username(v: &str) -> bool {
    v.len() <= USERNAME_BYTES_MAX
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn body(kind: MsgKind, v: &str) -> Result<(), Rejection> {
    if v.len() > BODY_BYTES_MAX {
        return Err(bad(format!("body is over {BODY_BYTES_MAX} bytes")));
    }
    match kind {
        MsgKind::Text | MsgKind::Edit if v.is_empty() => Err(bad("body must not be empty")),
        _ if first_control(v).is_some() => Err(bad("body contains a control character")),
        _ => Ok(()),
    }
}

/// The two families of ops the shape rules and the size estimate treat apart: one list, so
/// a new op is placed once.
enum OpFamily {
    Conversation,
    User,
    /// A fault-injection send with a forced seq, around the send it wraps.
    #[cfg(feature = "fault-injection")]
    Wrapped,
}

fn family(op: &ShardOp) -> OpFamily {
    match op {
        ShardOp::CreateConversation { .. }
        | ShardOp::Send { .. }
        | ShardOp::AddMembers { .. }
        | ShardOp::RemoveMember { .. }
        | ShardOp::SetRole { .. }
        | ShardOp::Receipt { .. } => OpFamily::Conversation,
        ShardOp::CreateUser { .. }
        | ShardOp::ClaimUsername { .. }
        | ShardOp::IndexUserConversation { .. }
        | ShardOp::IndexUserConversationCapped { .. }
        | ShardOp::UnindexUserConversation { .. }
        | ShardOp::OutboxDone { .. }
        | ShardOp::CreateInvite { .. }
        | ShardOp::UseInvite { .. }
        | ShardOp::CreateSession { .. }
        | ShardOp::RefreshSession { .. }
        | ShardOp::RevokeSession { .. }
        | ShardOp::RevokeAllSessions { .. } => OpFamily::User,
        #[cfg(feature = "fault-injection")]
        ShardOp::SendAtSeq { .. } => OpFamily::Wrapped,
    }
}

/// Checks `op`'s fields; `Err` is the rejection to answer instead of applying it.
pub(crate) fn check_op(op: &ShardOp) -> Result<(), Rejection> {
    match family(op) {
        OpFamily::Conversation => check_conversation_op(op),
        OpFamily::User => check_user_op(op),
        #[cfg(feature = "fault-injection")]
        OpFamily::Wrapped => match op {
            ShardOp::SendAtSeq { send, .. } if matches!(send.as_ref(), ShardOp::Send { .. }) => {
                check_op(send)
            }
            _ => Err(bad("SendAtSeq wraps a send")),
        },
    }
}

/// The commands of a conversation's shard (`check_op` picks them; the rest pass here).
fn check_conversation_op(op: &ShardOp) -> Result<(), Rejection> {
    match op {
        ShardOp::CreateConversation { .. } => check_create_conversation(op),
        ShardOp::Send { .. } => check_send(op),
        ShardOp::AddMembers { .. } | ShardOp::RemoveMember { .. } | ShardOp::SetRole { .. } => {
            check_membership_op(op)
        }
        ShardOp::Receipt {
            conversation_id,
            user_id,
            ..
        } => {
            id("conversation_id", conversation_id)?;
            id("user_id", user_id)
        }
        _ => Ok(()),
    }
}

/// A `CreateConversation` (`check_conversation_op` picks it; the rest pass here).
fn check_create_conversation(op: &ShardOp) -> Result<(), Rejection> {
    let ShardOp::CreateConversation {
        conversation_id,
        title,
        creator,
        members,
        ..
    } = op
    else {
        return Ok(());
    };
    id("conversation_id", conversation_id)?;
    id("creator", creator)?;
    ids("members", members)?;
    match title {
        Some(t) if title_error(t).is_some() => Err(bad(
            "title must be at most 200 characters without control characters",
        )),
        _ => Ok(()),
    }
}

/// A `Send` (`check_conversation_op` picks it; the rest pass here).
fn check_send(op: &ShardOp) -> Result<(), Rejection> {
    let ShardOp::Send {
        conversation_id,
        sender,
        sender_device,
        client_msg_id,
        kind,
        body: b,
        ref_seq,
        msg_id,
        ..
    } = op
    else {
        return Ok(());
    };
    id("conversation_id", conversation_id)?;
    id("sender", sender)?;
    id("sender_device", sender_device)?;
    id("msg_id", msg_id)?;
    if !is_valid_client_msg_id(client_msg_id) {
        return Err(bad(
            "client_msg_id must be 1..=64 characters of [A-Za-z0-9_-]",
        ));
    }
    // Membership events are written by apply only, never sent.
    match (kind, ref_seq) {
        (MsgKind::Text, None) | (MsgKind::Edit | MsgKind::Delete, Some(_)) => {}
        _ => return Err(bad("a send is a text, or an edit or delete of a seq")),
    }
    body(*kind, b)
}

/// `AddMembers`, `RemoveMember` and `SetRole` (`check_conversation_op` picks them; the rest
/// pass here).
fn check_membership_op(op: &ShardOp) -> Result<(), Rejection> {
    match op {
        ShardOp::AddMembers {
            conversation_id,
            actor,
            actor_device,
            members,
            msg_id,
            ..
        } => {
            id("conversation_id", conversation_id)?;
            id("actor", actor)?;
            id("actor_device", actor_device)?;
            id("msg_id", msg_id)?;
            ids("members", members)
        }
        ShardOp::RemoveMember {
            conversation_id,
            actor,
            actor_device,
            user_id,
            msg_id,
            ..
        }
        | ShardOp::SetRole {
            conversation_id,
            actor,
            actor_device,
            user_id,
            msg_id,
            ..
        } => {
            id("conversation_id", conversation_id)?;
            id("actor", actor)?;
            id("actor_device", actor_device)?;
            id("user_id", user_id)?;
            id("msg_id", msg_id)
        }
        _ => Ok(()),
    }
}

/// The commands of a user's, a username's or an invite's shard, and the outbox.
fn check_user_op(op: &ShardOp) -> Result<(), Rejection> {
    match op {
        ShardOp::CreateUser {
            user_id,
            username: name,
            password_hash,
            ..
        } => {
            id("user_id", user_id)?;
            // Users of an external issuer have no username (empty).
            if !username(name) {
                return Err(bad("username is malformed"));
            }
            if password_hash.len() > PASSWORD_HASH_BYTES_MAX {
                return Err(bad("password hash is too long"));
            }
            Ok(())
        }
        ShardOp::ClaimUsername {
            username: name,
            user_id,
        } => {
            id("user_id", user_id)?;
            if name.is_empty() || !username(name) {
                return Err(bad("username is malformed"));
            }
            Ok(())
        }
        ShardOp::IndexUserConversation {
            user_id,
            conversation_id,
        } => {
            id("user_id", user_id)?;
            id("conversation_id", conversation_id)
        }
        ShardOp::OutboxDone { ids } if ids.len() > OUTBOX_IDS_PER_OP_MAX => Err(bad(format!(
            "{} outbox ids (at most {OUTBOX_IDS_PER_OP_MAX})",
            ids.len()
        ))),
        ShardOp::OutboxDone { .. } => Ok(()),
        ShardOp::CreateInvite { code, .. } => id("code", code),
        ShardOp::UseInvite { code, user_id, .. } => {
            id("code", code)?;
            id("user_id", user_id)
        }
        ShardOp::CreateSession {
            user_id,
            session_id,
            ..
        }
        | ShardOp::RefreshSession {
            user_id,
            session_id,
            ..
        }
        | ShardOp::RevokeSession {
            user_id,
            session_id,
        } => {
            id("user_id", user_id)?;
            id("session_id", session_id)
        }
        ShardOp::RevokeAllSessions { user_id } => id("user_id", user_id),
        ShardOp::IndexUserConversationCapped {
            user_id,
            conversation_id,
            ..
        }
        | ShardOp::UnindexUserConversation {
            user_id,
            conversation_id,
        } => {
            id("user_id", user_id)?;
            id("conversation_id", conversation_id)
        }
        _ => Ok(()),
    }
}

impl ShardOp {
    /// About how many bytes this command takes on the wire and in the log (its strings and
    /// lists, plus a fixed allowance): what proposal and forwarding batches are cut by.
    pub(crate) fn size_estimate(&self) -> usize {
        const FIXED: usize = 64;
        FIXED
            + match family(self) {
                OpFamily::Conversation => conversation_op_bytes(self),
                OpFamily::User => user_op_bytes(self),
                #[cfg(feature = "fault-injection")]
                OpFamily::Wrapped => match self {
                    ShardOp::SendAtSeq { send, .. } => send.size_estimate(),
                    _ => 0,
                },
            }
    }
}

/// The bytes of a list of ids as [`ShardOp::size_estimate`] counts them.
fn list_bytes(v: &[String]) -> usize {
    v.iter().map(|s| s.len() + 2).sum::<usize>()
}

/// The variable bytes of a conversation shard's command (`size_estimate` picks them; the
/// rest count 0 here).
fn conversation_op_bytes(op: &ShardOp) -> usize {
    match op {
        ShardOp::CreateConversation {
            conversation_id,
            title,
            creator,
            members,
            ..
        } => {
            conversation_id.len()
                + title.as_ref().map_or(0, |t| t.len())
                + creator.len()
                + list_bytes(members)
        }
        ShardOp::Send {
            conversation_id,
            sender,
            sender_device,
            client_msg_id,
            body,
            msg_id,
            ..
        } => {
            conversation_id.len()
                + sender.len()
                + sender_device.len()
                + client_msg_id.len()
                + body.len()
                + msg_id.len()
        }
        ShardOp::AddMembers { .. } | ShardOp::RemoveMember { .. } | ShardOp::SetRole { .. } => {
            membership_op_bytes(op)
        }
        ShardOp::Receipt {
            conversation_id,
            user_id,
            ..
        } => conversation_id.len() + user_id.len(),
        _ => 0,
    }
}

/// The variable bytes of `AddMembers`, `RemoveMember` and `SetRole` (`conversation_op_bytes`
/// picks them; the rest count 0 here).
fn membership_op_bytes(op: &ShardOp) -> usize {
    match op {
        ShardOp::AddMembers {
            conversation_id,
            actor,
            actor_device,
            members,
            msg_id,
            ..
        } => {
            conversation_id.len()
                + actor.len()
                + actor_device.len()
                + list_bytes(members)
                + msg_id.len()
        }
        ShardOp::RemoveMember {
            conversation_id,
            actor,
            actor_device,
            user_id,
            msg_id,
            ..
        }
        | ShardOp::SetRole {
            conversation_id,
            actor,
            actor_device,
            user_id,
            msg_id,
            ..
        } => {
            conversation_id.len() + actor.len() + actor_device.len() + user_id.len() + msg_id.len()
        }
        _ => 0,
    }
}

/// The variable bytes of a user's, a username's or an invite's shard's command, and of the
/// outbox's (`size_estimate` picks them; the rest count 0 here).
fn user_op_bytes(op: &ShardOp) -> usize {
    match op {
        ShardOp::CreateUser {
            user_id,
            username,
            password_hash,
            ..
        } => user_id.len() + username.len() + password_hash.len(),
        ShardOp::ClaimUsername { username, user_id } => username.len() + user_id.len(),
        ShardOp::CreateInvite { code, .. } => code.len(),
        ShardOp::UseInvite { code, user_id, .. } => code.len() + user_id.len(),
        ShardOp::CreateSession {
            user_id,
            session_id,
            ..
        }
        | ShardOp::RefreshSession {
            user_id,
            session_id,
            ..
        }
        | ShardOp::RevokeSession {
            user_id,
            session_id,
        } => user_id.len() + session_id.len(),
        ShardOp::RevokeAllSessions { user_id } => user_id.len(),
        ShardOp::IndexUserConversationCapped {
            user_id,
            conversation_id,
            ..
        }
        | ShardOp::UnindexUserConversation {
            user_id,
            conversation_id,
        } => user_id.len() + conversation_id.len(),
        ShardOp::IndexUserConversation {
            user_id,
            conversation_id,
        } => user_id.len() + conversation_id.len(),
        ShardOp::OutboxDone { ids } => ids.len() * 8,
        _ => 0,
    }
}
