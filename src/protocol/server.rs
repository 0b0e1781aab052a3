//! Frames the server sends. Field names are the contract in PROTOCOL.md.

use serde::Serialize;

use super::{ErrorCode, ProtocolError, RequestId};
use crate::shard::command::{self as cmd, ConvKind, MsgKind, Role};

/// No reply is longer than this (JSON text): sync, history and list_conversations pages are
/// cut to it, with `has_more`.
pub const REPLY_BYTES_MAX: usize = 1024 * 1024;

fn kind_str(k: ConvKind) -> &'static str {
    match k {
        ConvKind::Direct => "direct",
        ConvKind::Group => "group",
    }
}

pub fn role_str(r: Role) -> &'static str {
    match r {
        Role::Owner => "owner",
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

pub fn msg_kind_str(k: MsgKind) -> &'static str {
    match k {
        MsgKind::Text => "text",
        MsgKind::Edit => "edit",
        MsgKind::Delete => "delete",
        MsgKind::MemberAdded => "member_added",
        MsgKind::MemberRemoved => "member_removed",
        MsgKind::RoleChanged => "role_changed",
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub user_id: String,
    pub role: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConversationView {
    pub conversation_id: String,
    pub kind: &'static str,
    pub title: Option<String>,
    pub members: Vec<MemberView>,
    pub last_seq: u64,
}

impl From<&cmd::ConversationState> for ConversationView {
    fn from(c: &cmd::ConversationState) -> Self {
        ConversationView {
            conversation_id: c.conversation_id.clone(),
            kind: kind_str(c.kind),
            title: c.title.clone(),
            members: c
                .members
                .iter()
                .map(|m| MemberView {
                    user_id: m.user_id.clone(),
                    role: role_str(m.role),
                })
                .collect(),
            last_seq: c.last_seq,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    pub conversation_id: String,
    pub seq: u64,
    pub msg_id: String,
    pub sender_id: String,
    pub sender_device: String,
    pub client_msg_id: String,
    pub kind: &'static str,
    pub body: String,
    pub ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ref_seq: Option<u64>,
}

impl From<&cmd::Message> for MessageView {
    fn from(m: &cmd::Message) -> Self {
        MessageView {
            conversation_id: m.conversation_id.clone(),
            seq: m.seq,
            msg_id: m.msg_id.clone(),
            sender_id: m.sender_id.clone(),
            sender_device: m.sender_device.clone(),
            client_msg_id: m.client_msg_id.clone(),
            kind: msg_kind_str(m.kind),
            body: m.body.clone(),
            ts: m.ts,
            ref_seq: m.ref_seq,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncEntry {
    pub conversation_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<MessageView>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_more: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConversationSummary {
    pub conversation_id: String,
    pub kind: &'static str,
    pub title: Option<String>,
    pub last_seq: u64,
    pub read_seq: u64,
    pub unread: u64,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PresenceView {
    pub user_id: String,
    pub status: &'static str,
    pub last_seen: u64,
}

/// Every frame the server sends. `id` is present on replies to requests that carried one.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    AuthOk {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        user_id: String,
        device_id: String,
    },
    Conversation {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        conversation: ConversationView,
    },
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        conversation_id: String,
        client_msg_id: String,
        seq: u64,
        msg_id: String,
        ts: u64,
    },
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        conversation_id: String,
        messages: Vec<MessageView>,
        has_more: bool,
    },
    Sync {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        conversations: Vec<SyncEntry>,
        /// More of the user's conversations follow: sync again with `cursor` (additive;
        /// absent when the reply covers them all).
        #[serde(skip_serializing_if = "Option::is_none")]
        has_more: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    Conversations {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        conversations: Vec<ConversationSummary>,
        /// As in `Sync`.
        #[serde(skip_serializing_if = "Option::is_none")]
        has_more: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    Ok {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        user_id: String,
        status: &'static str,
        last_seen: u64,
        /// On the reply to `subscribe_presence` only: every allowed user's status, the first
        /// being the one in the fields above (the reply is one frame).
        #[serde(skip_serializing_if = "Option::is_none")]
        presences: Option<Vec<PresenceView>>,
    },
    Message(MessageView),
    Receipt {
        conversation_id: String,
        user_id: String,
        delivered_seq: u64,
        read_seq: u64,
    },
    Typing {
        conversation_id: String,
        user_id: String,
        state: &'static str,
    },
    Reconnect {
        retry_after_ms: u64,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        code: ErrorCode,
        message: String,
        retryable: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl ServerFrame {
    pub fn error(id: Option<RequestId>, e: ProtocolError) -> ServerFrame {
        ServerFrame::Error {
            id,
            code: e.code,
            retryable: e.code.retryable(),
            message: super::client::short_message(&e.message),
            retry_after_ms: e.retry_after_ms,
        }
    }

    pub fn ack(id: Option<RequestId>, a: &cmd::Ack) -> ServerFrame {
        ServerFrame::Ack {
            id,
            conversation_id: a.conversation_id.clone(),
            client_msg_id: a.client_msg_id.clone(),
            seq: a.seq,
            msg_id: a.msg_id.clone(),
            ts: a.ts,
        }
    }

    /// The exact length of [`ServerFrame::to_json`]'s text, without building it.
    pub fn json_len(&self) -> usize {
        json_len(self)
    }

    /// The JSON text of this frame. Serializing these types cannot fail (no maps with
    /// non-string keys, no custom serializers), so a failure is reported as an internal error
    /// frame rather than a panic.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                r#"{{"type":"error","code":"internal","message":"encode: {}","retryable":true}}"#,
                e.to_string().replace('"', "'")
            )
        })
    }
}

/// Counts bytes written, for [`json_len`].
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The length of `v`'s JSON text (as `serde_json::to_string` writes it), without allocating
/// it: how reply byte budgets are measured.
pub fn json_len<T: Serialize + ?Sized>(v: &T) -> usize {
    let mut c = ByteCounter(0);
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => c.0,
        Err(_) => usize::MAX,
    }
}
