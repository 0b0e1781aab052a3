//! Chat commands proposed to shard groups and their deterministic responses.
//!
//! A shard group (1..=S) takes [`ShardOp`]s and answers [`ShardResponse`]s; the node's
//! top-level `Request` / `Response` enums, which also carry the meta group's commands, are
//! the cluster's (`cluster::command`). Everything a proposer must choose (timestamps,
//! ULIDs) is chosen before proposing, so that apply is a pure function of the log.
//!
//! Encoded with bincode 2 (serde): externally tagged enums only, no flatten, no untagged.
//! Stored data is these encodings: variants are only ever appended.

use serde::{Deserialize, Serialize};

pub(crate) type UserId = String;
pub(crate) type ConversationId = String;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ConvKind {
    Direct,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    /// The role's word in a stored role-change event's body ("alice made bob admin"), which
    /// clients show as is. Stored text: it is the shard's, not the protocol's wire string,
    /// so that a change of the wire format cannot change stored data.
    pub(crate) fn event_word(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MsgKind {
    Text,
    Edit,
    Delete,
    MemberAdded,
    MemberRemoved,
    RoleChanged,
}

/// Commands of a shard group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum ShardOp {
    /// Creates a conversation (no seq consumed). A direct conversation's id is derived from
    /// its two members, so creating it again returns the existing one.
    CreateConversation {
        conversation_id: ConversationId,
        kind: ConvKind,
        title: Option<String>,
        creator: UserId,
        members: Vec<UserId>,
        ts: u64,
    },
    /// A text message, an edit or a delete (a sequenced event).
    Send {
        conversation_id: ConversationId,
        sender: UserId,
        sender_device: String,
        client_msg_id: String,
        kind: MsgKind,
        body: String,
        ref_seq: Option<u64>,
        msg_id: String,
        ts: u64,
    },
    AddMembers {
        conversation_id: ConversationId,
        actor: UserId,
        actor_device: String,
        members: Vec<UserId>,
        msg_id: String,
        ts: u64,
    },
    /// Removes `user_id`; a leave is a removal of oneself.
    RemoveMember {
        conversation_id: ConversationId,
        actor: UserId,
        actor_device: String,
        user_id: UserId,
        msg_id: String,
        ts: u64,
    },
    SetRole {
        conversation_id: ConversationId,
        actor: UserId,
        actor_device: String,
        user_id: UserId,
        role: Role,
        msg_id: String,
        ts: u64,
    },
    /// Monotonic receipt watermarks; `read` implies `delivered`.
    Receipt {
        conversation_id: ConversationId,
        user_id: UserId,
        delivered_seq: Option<u64>,
        read_seq: Option<u64>,
    },
    /// A user's record, in the shard the user id hashes to.
    CreateUser {
        user_id: UserId,
        username: String,
        password_hash: String,
        ts: u64,
    },
    /// Claims a username for a user id, in the shard the username hashes to.
    ClaimUsername { username: String, user_id: UserId },
    /// Records that a user is (or was) in a conversation, in the user's shard. Idempotent.
    IndexUserConversation {
        user_id: UserId,
        conversation_id: ConversationId,
    },
    /// Drops these outbox entries of this shard (they were delivered).
    OutboxDone { ids: Vec<u64> },
    // accounts: invites (in the shard the invite code hashes to) and sessions (in the
    // user's shard). Every time is chosen by the proposer.
    /// Stores an invite; refused if the code exists.
    CreateInvite {
        code: String,
        expires_at: u64,
        uses: u32,
        ts: u64,
    },
    /// Consumes one use of an invite, refused (`Forbidden`) if it is missing, used up or
    /// expired at `ts`.
    UseInvite {
        code: String,
        user_id: UserId,
        ts: u64,
    },
    /// Opens a session (a refresh token's identity) at the user's current token epoch;
    /// answers `Session`. Drops the user's expired sessions, and the oldest past
    /// `SESSIONS_PER_USER_MAX`.
    CreateSession {
        user_id: UserId,
        session_id: String,
        expires_at: u64,
        ts: u64,
    },
    /// Rotates a session's refresh token: applied only if `generation` is the session's
    /// current one (else the session is revoked: a rotated refresh token was reused);
    /// answers `Session` with the next generation.
    RefreshSession {
        user_id: UserId,
        session_id: String,
        generation: u64,
        expires_at: u64,
        ts: u64,
    },
    /// Revokes one session (logout).
    RevokeSession { user_id: UserId, session_id: String },
    /// Revokes every session of the user and every access token issued before: the user's
    /// token epoch moves on (logout_all). Answers `Session` with the new epoch.
    RevokeAllSessions { user_id: UserId },
    // ratelimit: the memberships cap (docs/SECURITY.md, "Rate limits and caps").
    /// [`ShardOp::IndexUserConversation`] with the cap the relay (the proposer) read from
    /// its config: a new entry past `cap` entries is `Rejected` (deterministic: the cap is
    /// in the log). An entry already there is `Done` whatever the count (idempotent).
    IndexUserConversationCapped {
        user_id: UserId,
        conversation_id: ConversationId,
        cap: u32,
    },
    /// Removes a conversation from a user's index (the user left or was removed), in the
    /// user's shard. Idempotent.
    UnindexUserConversation {
        user_id: UserId,
        conversation_id: ConversationId,
    },
    /// A `Send` whose seq the proposer chose: broken on purpose, only in fault-injection
    /// builds (`sabotage::Switch::SeqAtProposal`). Last, so that it changes no other
    /// variant's encoding.
    #[cfg(feature = "fault-injection")]
    SendAtSeq { seq: u64, send: Box<ShardOp> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum ShardResponse {
    Conversation(ConversationState),
    /// A stored (or deduplicated) sequenced event. `pushed` is the message to fan out and its
    /// recipients; `None` when this was a retry of an already stored message.
    Ack {
        ack: Ack,
        pushed: Option<Pushed>,
    },
    /// A membership event: the conversation after it, and the event to fan out (None when
    /// nothing changed).
    Membership {
        conversation: ConversationState,
        pushed: Option<Pushed>,
    },
    Receipt(ReceiptState),
    UserCreated,
    UsernameClaimed {
        user_id: UserId,
    },
    Done,
    Rejected(Rejection),
    // accounts
    /// A session after `CreateSession` / `RefreshSession`, or (`RevokeAllSessions`) only
    /// the new epoch.
    Session {
        epoch: u64,
        session: Option<SessionRecord>,
    },
}

/// A deterministic refusal decided at apply time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Rejection {
    Forbidden(String),
    NotFound(String),
    BadRequest(String),
    Conflict(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub(crate) conversation_id: ConversationId,
    pub(crate) client_msg_id: String,
    pub(crate) seq: u64,
    pub(crate) msg_id: String,
    pub(crate) ts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Message {
    pub(crate) conversation_id: ConversationId,
    pub(crate) seq: u64,
    pub(crate) msg_id: String,
    pub(crate) sender_id: UserId,
    pub(crate) sender_device: String,
    pub(crate) client_msg_id: String,
    pub(crate) kind: MsgKind,
    pub(crate) body: String,
    pub(crate) ts: u64,
    pub(crate) ref_seq: Option<u64>,
}

/// A committed message and who should see it pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pushed {
    pub(crate) message: Message,
    pub(crate) recipients: Vec<UserId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Member {
    pub(crate) user_id: UserId,
    pub(crate) role: Role,
    /// Order of joining, for "the oldest admin becomes owner".
    pub(crate) joined: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConversationState {
    pub(crate) conversation_id: ConversationId,
    pub(crate) kind: ConvKind,
    pub(crate) title: Option<String>,
    pub(crate) members: Vec<Member>,
    pub(crate) last_seq: u64,
    /// Members added over the conversation's life, creator included; a re-added user counts
    /// again (limit: 200, "in all, ever").
    pub(crate) members_ever: u32,
    pub(crate) next_join: u64,
    pub(crate) created_ts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReceiptState {
    pub(crate) conversation_id: ConversationId,
    pub(crate) user_id: UserId,
    pub(crate) delivered_seq: u64,
    pub(crate) read_seq: u64,
    /// Whether the watermarks moved (only then is a receipt pushed).
    pub(crate) changed: bool,
    pub(crate) recipients: Vec<UserId>,
}

/// A user's record, in the shard the user id hashes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserRecord {
    pub(crate) user_id: UserId,
    pub(crate) username: String,
    pub(crate) password_hash: String,
    pub(crate) created_ts: u64,
}

/// A cross-shard update a shard owes to a user's shard ("user joined conversation").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OutboxEntry {
    pub(crate) user_id: UserId,
    pub(crate) conversation_id: ConversationId,
}

// accounts

/// An invite code's state, in the shard the code hashes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Invite {
    pub(crate) expires_at: u64,
    pub(crate) uses_left: u32,
    pub(crate) created_ts: u64,
}

/// A login session (what a refresh token names), in the user's shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    pub(crate) session_id: String,
    /// The user's token epoch when the session was opened.
    pub(crate) epoch: u64,
    /// The refresh token generation that may rotate it next.
    pub(crate) generation: u64,
    pub(crate) expires_at: u64,
    pub(crate) created_ts: u64,
}

/// What the WebSocket checks a token against: the user's token epoch and live sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AuthState {
    pub(crate) epoch: u64,
    pub(crate) sessions: Vec<SessionRecord>,
}
