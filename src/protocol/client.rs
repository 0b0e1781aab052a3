//! Frames a client sends, and their decoding.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::validate::{is_valid_client_msg_id, is_valid_id, validate_body, validate_title};
use super::{ProtocolError, TextLimits};

/// The `id` a client put on a request; echoed verbatim on the reply.
pub type RequestId = Value;

/// Most members a group can have, creator included (PROTOCOL.md "Creating").
pub const GROUP_MEMBERS_MAX: usize = 200;
/// Most conversations one `sync` request may name.
pub const SYNC_CONVERSATIONS_MAX: usize = 1000;
/// Most users one `subscribe_presence` may name.
pub const PRESENCE_USERS_MAX: usize = 1000;
/// `history` page size: default and range.
pub const HISTORY_LIMIT_DEFAULT: u32 = 50;
pub const HISTORY_LIMIT_MAX: u32 = 100;
/// A request `id` (string, or a number's decimal form) is at most this many characters; a
/// longer one is `bad_request`, answered without `id` (it is never echoed).
pub const REQUEST_ID_CHARS_MAX: usize = 64;
/// An error message is cut to this many characters, so that no error echoes a large part
/// of the frame it answers (serde's messages quote the offending value).
pub const ERROR_MESSAGE_CHARS_MAX: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypingState {
    Start,
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireConvKind {
    Direct,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireRole {
    Owner,
    Admin,
    Member,
}

/// A decoded, validated client frame.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Auth {
        token: String,
        device_id: String,
    },
    CreateConversation {
        kind: WireConvKind,
        members: Vec<String>,
        #[serde(default)]
        title: Option<String>,
    },
    Send {
        conversation_id: String,
        client_msg_id: String,
        body: String,
    },
    History {
        conversation_id: String,
        #[serde(default)]
        before_seq: Option<u64>,
        #[serde(default)]
        limit: Option<u32>,
    },
    Sync {
        #[serde(default)]
        conversations: BTreeMap<String, u64>,
        /// Continue the user's conversations after this one (the `cursor` of the previous
        /// reply); absent = from the start.
        #[serde(default)]
        cursor: Option<String>,
    },
    ListConversations {
        /// As in `sync`.
        #[serde(default)]
        cursor: Option<String>,
    },
    AddMembers {
        conversation_id: String,
        members: Vec<String>,
    },
    RemoveMember {
        conversation_id: String,
        user_id: String,
    },
    SetRole {
        conversation_id: String,
        user_id: String,
        role: WireRole,
    },
    Leave {
        conversation_id: String,
    },
    Delivered {
        conversation_id: String,
        seq: u64,
    },
    Read {
        conversation_id: String,
        seq: u64,
    },
    Typing {
        conversation_id: String,
        state: TypingState,
    },
    SubscribePresence {
        user_ids: Vec<String>,
    },
    Edit {
        conversation_id: String,
        client_msg_id: String,
        seq: u64,
        body: String,
    },
    Delete {
        conversation_id: String,
        client_msg_id: String,
        seq: u64,
    },
    Ping,
}

/// The result of decoding one text frame: the request id (when the frame was a JSON object
/// with a usable `id`) and the frame or the error to answer with.
#[derive(Debug)]
pub struct Decoded {
    pub id: Option<RequestId>,
    pub frame: Result<ClientFrame, ProtocolError>,
}

/// Decodes and validates one client text frame. Never panics on any input.
pub fn decode_client_frame(text: &str, limits: &TextLimits) -> Decoded {
    if text.len() > limits.max_frame_bytes {
        return Decoded {
            id: None,
            frame: Err(ProtocolError::too_large(format!(
                "frame is over {} bytes",
                limits.max_frame_bytes
            ))),
        };
    }
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Decoded {
                id: None,
                frame: Err(ProtocolError::bad_request(short_message(&format!(
                    "invalid JSON: {e}"
                )))),
            }
        }
    };
    let Value::Object(map) = value else {
        return Decoded {
            id: None,
            frame: Err(ProtocolError::bad_request("a frame must be a JSON object")),
        };
    };
    let id = match map.get("id") {
        Some(Value::String(s)) if s.chars().nth(REQUEST_ID_CHARS_MAX).is_some() => {
            return Decoded {
                id: None,
                frame: Err(ProtocolError::bad_request(format!(
                    "id is over {REQUEST_ID_CHARS_MAX} characters"
                ))),
            }
        }
        Some(Value::Number(n)) if n.to_string().len() > REQUEST_ID_CHARS_MAX => {
            return Decoded {
                id: None,
                frame: Err(ProtocolError::bad_request(format!(
                    "id is over {REQUEST_ID_CHARS_MAX} characters"
                ))),
            }
        }
        Some(v @ Value::Number(_)) | Some(v @ Value::String(_)) => Some(v.clone()),
        Some(Value::Null) | None => None,
        Some(_) => {
            return Decoded {
                id: None,
                frame: Err(ProtocolError::bad_request(
                    "id must be a number or a string",
                )),
            }
        }
    };
    let frame = match map.get("type") {
        Some(Value::String(_)) => serde_json::from_value::<ClientFrame>(Value::Object(map))
            .map_err(|e| ProtocolError::bad_request(short_message(&e.to_string())))
            .and_then(|f| validate(f, limits)),
        Some(_) => Err(ProtocolError::bad_request("type must be a string")),
        None => Err(ProtocolError::bad_request("missing field `type`")),
    };
    Decoded { id, frame }
}

/// `message` cut to [`ERROR_MESSAGE_CHARS_MAX`] characters.
pub fn short_message(message: &str) -> String {
    match message.char_indices().nth(ERROR_MESSAGE_CHARS_MAX) {
        Some((at, _)) => format!("{}…", &message[..at]),
        None => message.to_string(),
    }
}

/// Keeps the first occurrence of each entry, in order (duplicates are collapsed).
fn dedup_in_order(list: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::with_capacity(list.len());
    list.retain(|u| seen.insert(u.clone()));
}

fn check_id(field: &str, s: &str) -> Result<(), ProtocolError> {
    if is_valid_id(s) {
        Ok(())
    } else {
        Err(ProtocolError::bad_request(format!(
            "{field} must be 1..128 characters of [A-Za-z0-9_-]"
        )))
    }
}

fn check_client_msg_id(s: &str) -> Result<(), ProtocolError> {
    if is_valid_client_msg_id(s) {
        Ok(())
    } else {
        Err(ProtocolError::bad_request(
            "client_msg_id must be 1..64 characters of [A-Za-z0-9_-]",
        ))
    }
}

fn check_seq(seq: u64) -> Result<(), ProtocolError> {
    if seq == 0 {
        Err(ProtocolError::bad_request("seq must be at least 1"))
    } else {
        Ok(())
    }
}

fn check_users(field: &str, users: &[String], max: usize) -> Result<(), ProtocolError> {
    if users.len() > max {
        return Err(ProtocolError::bad_request(format!(
            "{field} names more than {max} users"
        )));
    }
    users.iter().try_for_each(|u| check_id(field, u))
}

/// Range and character checks that serde's types cannot express; id lists come out with
/// duplicates collapsed (first occurrence kept). Each frame family has its own checks below.
fn validate(mut frame: ClientFrame, limits: &TextLimits) -> Result<ClientFrame, ProtocolError> {
    match &mut frame {
        ClientFrame::CreateConversation { members, .. }
        | ClientFrame::AddMembers { members, .. } => dedup_in_order(members),
        ClientFrame::SubscribePresence { user_ids } => dedup_in_order(user_ids),
        _ => {}
    }
    match &frame {
        ClientFrame::Auth { token, device_id } => check_auth(token, device_id)?,
        ClientFrame::Ping => {}
        ClientFrame::Send { .. } | ClientFrame::Edit { .. } | ClientFrame::Delete { .. } => {
            check_message_frame(&frame, limits)?
        }
        ClientFrame::CreateConversation { .. }
        | ClientFrame::AddMembers { .. }
        | ClientFrame::RemoveMember { .. }
        | ClientFrame::SetRole { .. }
        | ClientFrame::Leave { .. } => check_membership_frame(&frame)?,
        ClientFrame::History { .. }
        | ClientFrame::Sync { .. }
        | ClientFrame::ListConversations { .. } => check_read_frame(&frame)?,
        ClientFrame::Delivered { .. }
        | ClientFrame::Read { .. }
        | ClientFrame::Typing { .. }
        | ClientFrame::SubscribePresence { .. } => check_signal_frame(&frame)?,
    }
    Ok(frame)
}

/// A frame handed to the checks of another family: a bug in `validate`, failed closed.
fn misrouted() -> ProtocolError {
    ProtocolError::internal("frame checked by the wrong family")
}

fn check_auth(token: &str, device_id: &str) -> Result<(), ProtocolError> {
    if token.is_empty() || token.len() > 8192 {
        return Err(ProtocolError::unauthorized("invalid token"));
    }
    check_id("device_id", device_id)
}

/// `send`, `edit`, `delete`: conversation, client message id, then seq and body.
fn check_message_frame(frame: &ClientFrame, limits: &TextLimits) -> Result<(), ProtocolError> {
    let (conversation_id, client_msg_id, seq, body) = match frame {
        ClientFrame::Send {
            conversation_id,
            client_msg_id,
            body,
        } => (conversation_id, client_msg_id, None, Some(body)),
        ClientFrame::Edit {
            conversation_id,
            client_msg_id,
            seq,
            body,
        } => (conversation_id, client_msg_id, Some(*seq), Some(body)),
        ClientFrame::Delete {
            conversation_id,
            client_msg_id,
            seq,
        } => (conversation_id, client_msg_id, Some(*seq), None),
        _ => return Err(misrouted()),
    };
    check_id("conversation_id", conversation_id)?;
    check_client_msg_id(client_msg_id)?;
    seq.map_or(Ok(()), check_seq)?;
    body.map_or(Ok(()), |b| validate_body(b, limits))
}

/// `create_conversation`, `add_members`, `remove_member`, `set_role`, `leave`.
fn check_membership_frame(frame: &ClientFrame) -> Result<(), ProtocolError> {
    match frame {
        ClientFrame::CreateConversation { members, title, .. } => {
            check_users("members", members, GROUP_MEMBERS_MAX)?;
            title.as_deref().map_or(Ok(()), validate_title)
        }
        ClientFrame::AddMembers {
            conversation_id,
            members,
        } => {
            check_id("conversation_id", conversation_id)?;
            if members.is_empty() {
                return Err(ProtocolError::bad_request("members must not be empty"));
            }
            check_users("members", members, GROUP_MEMBERS_MAX)
        }
        ClientFrame::RemoveMember {
            conversation_id,
            user_id,
        }
        | ClientFrame::SetRole {
            conversation_id,
            user_id,
            ..
        } => {
            check_id("conversation_id", conversation_id)?;
            check_id("user_id", user_id)
        }
        ClientFrame::Leave { conversation_id } => check_id("conversation_id", conversation_id),
        _ => Err(misrouted()),
    }
}

/// `history`, `sync`, `list_conversations`.
fn check_read_frame(frame: &ClientFrame) -> Result<(), ProtocolError> {
    match frame {
        ClientFrame::History {
            conversation_id,
            before_seq,
            limit,
        } => {
            check_id("conversation_id", conversation_id)?;
            before_seq.map_or(Ok(()), check_seq)?;
            match limit {
                Some(l) if *l == 0 || *l > HISTORY_LIMIT_MAX => Err(ProtocolError::bad_request(
                    format!("limit must be 1..{HISTORY_LIMIT_MAX}"),
                )),
                _ => Ok(()),
            }
        }
        ClientFrame::Sync {
            conversations,
            cursor,
        } => {
            if conversations.len() > SYNC_CONVERSATIONS_MAX {
                return Err(ProtocolError::bad_request(format!(
                    "sync names more than {SYNC_CONVERSATIONS_MAX} conversations"
                )));
            }
            conversations
                .keys()
                .try_for_each(|c| check_id("conversation_id", c))?;
            check_cursor(cursor)
        }
        ClientFrame::ListConversations { cursor } => check_cursor(cursor),
        _ => Err(misrouted()),
    }
}

fn check_cursor(cursor: &Option<String>) -> Result<(), ProtocolError> {
    cursor.as_deref().map_or(Ok(()), |c| check_id("cursor", c))
}

/// `delivered`, `read`, `typing`, `subscribe_presence`.
fn check_signal_frame(frame: &ClientFrame) -> Result<(), ProtocolError> {
    match frame {
        ClientFrame::Delivered {
            conversation_id,
            seq,
        }
        | ClientFrame::Read {
            conversation_id,
            seq,
        } => {
            check_id("conversation_id", conversation_id)?;
            check_seq(*seq)
        }
        ClientFrame::Typing {
            conversation_id, ..
        } => check_id("conversation_id", conversation_id),
        ClientFrame::SubscribePresence { user_ids } => {
            check_users("user_ids", user_ids, PRESENCE_USERS_MAX)
        }
        _ => Err(misrouted()),
    }
}
