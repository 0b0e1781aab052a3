//! Commands proposed to Raft groups and their deterministic responses.
//!
//! These are the `D` (request) and `R` (response) types of every Raft group on a node:
//! the meta group (group 0) takes `Request::Meta`, shard groups (1..=S) take
//! `Request::Shard`. Everything a proposer must choose (timestamps, ULIDs) is chosen before
//! proposing, so that apply is a pure function of the log.
//!
//! Encoded with bincode 2 (serde): externally tagged enums only, no flatten, no untagged.

use serde::{Deserialize, Serialize};

/// A Raft group id: 0 is the meta group, 1..=S are shard groups.
pub type GroupId = u32;
/// The meta group's id.
pub const META_GROUP: GroupId = 0;

pub type UserId = String;
pub type ConversationId = String;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConvKind {
    Direct,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    Owner,
    Admin,
    Member,
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

/// A command for one Raft group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Meta(MetaOp),
    Shard(ShardOp),
    /// Several shard commands proposed as one entry (proposal batching): applied in order,
    /// each with its own response, in one state-machine batch.
    ShardBatch(Vec<ShardOp>),
}

/// Commands of the meta group (cluster-wide settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaOp {
    /// Written once when a cluster is created; later proposals are ignored (first wins).
    InitCluster(ClusterSettings),
    /// Admits a node (or returns the one already admitted with this peer address).
    AddNode {
        peer_addr: String,
        client_addr: String,
    },
    /// A restarted node's addresses changed.
    UpdateNode {
        node_id: u64,
        peer_addr: String,
        client_addr: String,
    },
    SetNodeState {
        node_id: u64,
        state: NodeState,
    },
    /// The desired replica set of every group; applied only if `version` is the current
    /// placement version (compare-and-set, so a stale controller cannot undo a newer plan).
    SetPlacement {
        version: u64,
        replicas: std::collections::BTreeMap<GroupId, Vec<u64>>,
    },
    // secrets (issue 12 point 5)
    /// The cluster's admin token and first join secret, written once by the creating node
    /// (first wins: a later one changes nothing).
    InitSecrets(ClusterSecrets),
    /// Replaces the join secret (chosen by the proposer: apply stays deterministic); the old
    /// one admits nobody afterwards. Ignored unless `secret` has
    /// [`JOIN_SECRET_BYTES`] bytes and the secrets exist.
    RotateJoinSecret {
        secret: SecretBytes,
    },
}

/// Bytes of a join secret.
pub const JOIN_SECRET_BYTES: usize = 32;

/// Secret bytes whose `Debug` prints nothing (commands and states are logged with `{:?}`).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} secret bytes>", self.0.len())
    }
}

/// Cluster-wide secrets, replicated in the meta state so that every member has them: the
/// join secret (rotatable) and the admin token that `/admin/*` requires on every node.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSecrets {
    /// What a joiner's token must carry (with the CA fingerprint, which never changes).
    pub join_secret: SecretBytes,
    /// Times the join secret was replaced (0 = the one the cluster was created with).
    pub join_epoch: u64,
    /// `Authorization: Bearer <admin_token>` on `/admin/*`; empty until initialized.
    pub admin_token: String,
}

impl ClusterSecrets {
    pub fn is_initialized(&self) -> bool {
        !self.admin_token.is_empty() && self.join_secret.0.len() == JOIN_SECRET_BYTES
    }
}

impl std::fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSecrets")
            .field("join_epoch", &self.join_epoch)
            .field("initialized", &self.is_initialized())
            .finish_non_exhaustive()
    }
}

/// A node's place in the cluster's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Holds (or is receiving) replicas.
    Active,
    /// Draining: its replicas move away; then it is `Left`.
    Leaving,
    Left,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: u64,
    pub peer_addr: String,
    pub client_addr: String,
    pub state: NodeState,
}

/// The meta group's view of the cluster: nodes and the desired placement of replicas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    pub nodes: std::collections::BTreeMap<u64, NodeInfo>,
    pub next_node_id: u64,
    /// Desired replica set per group (0 = meta, 1..=S shards).
    pub replicas: std::collections::BTreeMap<GroupId, Vec<u64>>,
    pub placement_version: u64,
    // secrets (issue 12 point 5)
    /// Replicated to every member with the rest of the meta state (and to joiners in their
    /// welcome); never shown by `/admin/status`.
    pub secrets: ClusterSecrets,
}

/// [`MetaState`] as stored before it carried the secrets (decoded from older data dirs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaStateV1 {
    pub nodes: std::collections::BTreeMap<u64, NodeInfo>,
    pub next_node_id: u64,
    pub replicas: std::collections::BTreeMap<GroupId, Vec<u64>>,
    pub placement_version: u64,
}

impl From<MetaStateV1> for MetaState {
    fn from(v: MetaStateV1) -> Self {
        MetaState {
            nodes: v.nodes,
            next_node_id: v.next_node_id,
            replicas: v.replicas,
            placement_version: v.placement_version,
            secrets: ClusterSecrets::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    pub cluster_id: String,
    pub shards: u32,
    /// HS256 secret for the tokens this cluster issues.
    pub jwt_secret: Vec<u8>,
    pub created_ts: u64,
}

/// Commands of a shard group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShardOp {
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

/// The response of an applied command. Deterministic: every replica computes the same one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// For blank and membership entries.
    None,
    Meta(ClusterSettings),
    Shard(ShardResponse),
    /// The responses of a `Request::ShardBatch`, in its order.
    ShardBatch(Vec<ShardResponse>),
    /// The meta state after a membership / placement command (and, for `AddNode`, the
    /// admitted node's id).
    MetaState {
        state: MetaState,
        node_id: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShardResponse {
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
pub enum Rejection {
    Forbidden(String),
    NotFound(String),
    BadRequest(String),
    Conflict(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub conversation_id: ConversationId,
    pub client_msg_id: String,
    pub seq: u64,
    pub msg_id: String,
    pub ts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub conversation_id: ConversationId,
    pub seq: u64,
    pub msg_id: String,
    pub sender_id: UserId,
    pub sender_device: String,
    pub client_msg_id: String,
    pub kind: MsgKind,
    pub body: String,
    pub ts: u64,
    pub ref_seq: Option<u64>,
}

/// A committed message and who should see it pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pushed {
    pub message: Message,
    pub recipients: Vec<UserId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user_id: UserId,
    pub role: Role,
    /// Order of joining, for "the oldest admin becomes owner".
    pub joined: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationState {
    pub conversation_id: ConversationId,
    pub kind: ConvKind,
    pub title: Option<String>,
    pub members: Vec<Member>,
    pub last_seq: u64,
    /// Members added over the conversation's life, creator included; a re-added user counts
    /// again (limit: 200, "in all, ever").
    pub members_ever: u32,
    pub next_join: u64,
    pub created_ts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptState {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub delivered_seq: u64,
    pub read_seq: u64,
    /// Whether the watermarks moved (only then is a receipt pushed).
    pub changed: bool,
    pub recipients: Vec<UserId>,
}

/// A user's record, in the shard the user id hashes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub user_id: UserId,
    pub username: String,
    pub password_hash: String,
    pub created_ts: u64,
}

/// A cross-shard update a shard owes to a user's shard ("user joined conversation").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub user_id: UserId,
    pub conversation_id: ConversationId,
}

// accounts

/// An invite code's state, in the shard the code hashes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    pub expires_at: u64,
    pub uses_left: u32,
    pub created_ts: u64,
}

/// A login session (what a refresh token names), in the user's shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub session_id: String,
    /// The user's token epoch when the session was opened.
    pub epoch: u64,
    /// The refresh token generation that may rotate it next.
    pub generation: u64,
    pub expires_at: u64,
    pub created_ts: u64,
}

/// What the WebSocket checks a token against: the user's token epoch and live sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub epoch: u64,
    pub sessions: Vec<SessionRecord>,
}
