//! State-machine keys of a shard group (without the group prefix, which storage adds).
//!
//! Every key starts with a tag byte >= 0x01 (0x00 is reserved by storage for the applied
//! log id); strings are length-prefixed and numbers big-endian, so that range scans follow
//! `(conversation, seq)` order.

use crate::storage::keys::{push_str, push_u64, KeyReader};
use crate::storage::StorageError;

const TAG_CONVERSATION: u8 = 0x10;
const TAG_MESSAGE: u8 = 0x11;
const TAG_DEDUP: u8 = 0x12;
const TAG_RECEIPT: u8 = 0x13;
const TAG_LAST_SEQ: u8 = 0x14;
const TAG_USER: u8 = 0x20;
const TAG_USERNAME: u8 = 0x21;
const TAG_USER_CONVERSATION: u8 = 0x22;
const TAG_OUTBOX: u8 = 0x30;
const TAG_OUTBOX_NEXT: u8 = 0x31;
// accounts
const TAG_INVITE: u8 = 0x40;
const TAG_TOKEN_EPOCH: u8 = 0x41;
const TAG_SESSION: u8 = 0x42;
// ratelimit: the memberships cap.
const TAG_USER_CONVERSATION_COUNT: u8 = 0x23;
const TAG_OUTBOX_UNINDEX: u8 = 0x32;

fn tagged(tag: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(64);
    k.push(tag);
    k
}

pub(crate) fn conversation(conv: &str) -> Vec<u8> {
    let mut k = tagged(TAG_CONVERSATION);
    push_str(&mut k, conv);
    k
}

/// A conversation's `last_seq`, kept apart from its state so that a send writes 8 bytes,
/// not the member list.
pub(crate) fn last_seq(conv: &str) -> Vec<u8> {
    let mut k = tagged(TAG_LAST_SEQ);
    push_str(&mut k, conv);
    k
}

/// The prefix of all messages of a conversation.
pub(crate) fn message_prefix(conv: &str) -> Vec<u8> {
    let mut k = tagged(TAG_MESSAGE);
    push_str(&mut k, conv);
    k
}

pub(crate) fn message(conv: &str, seq: u64) -> Vec<u8> {
    let mut k = message_prefix(conv);
    push_u64(&mut k, seq);
    k
}

pub(crate) fn dedup(conv: &str, sender: &str, client_msg_id: &str) -> Vec<u8> {
    let mut k = tagged(TAG_DEDUP);
    push_str(&mut k, conv);
    push_str(&mut k, sender);
    push_str(&mut k, client_msg_id);
    k
}

pub(crate) fn receipt(conv: &str, user: &str) -> Vec<u8> {
    let mut k = tagged(TAG_RECEIPT);
    push_str(&mut k, conv);
    push_str(&mut k, user);
    k
}

pub(crate) fn user(user_id: &str) -> Vec<u8> {
    let mut k = tagged(TAG_USER);
    push_str(&mut k, user_id);
    k
}

pub(crate) fn username(name: &str) -> Vec<u8> {
    let mut k = tagged(TAG_USERNAME);
    push_str(&mut k, name);
    k
}

/// The prefix of a user's conversation index.
pub(crate) fn user_conversation_prefix(user_id: &str) -> Vec<u8> {
    let mut k = tagged(TAG_USER_CONVERSATION);
    push_str(&mut k, user_id);
    k
}

pub(crate) fn user_conversation(user_id: &str, conv: &str) -> Vec<u8> {
    let mut k = user_conversation_prefix(user_id);
    push_str(&mut k, conv);
    k
}

pub(crate) fn outbox(id: u64) -> Vec<u8> {
    let mut k = tagged(TAG_OUTBOX);
    push_u64(&mut k, id);
    k
}

pub(crate) fn outbox_range() -> (Vec<u8>, Vec<u8>) {
    (tagged(TAG_OUTBOX), tagged(TAG_OUTBOX + 1))
}

pub(crate) fn outbox_next() -> Vec<u8> {
    tagged(TAG_OUTBOX_NEXT)
}

// accounts

pub(crate) fn invite(code: &str) -> Vec<u8> {
    let mut k = tagged(TAG_INVITE);
    push_str(&mut k, code);
    k
}

/// A user's token epoch (kept apart from the user's record so that records written before
/// it still decode).
pub(crate) fn token_epoch(user_id: &str) -> Vec<u8> {
    let mut k = tagged(TAG_TOKEN_EPOCH);
    push_str(&mut k, user_id);
    k
}

/// The prefix of a user's sessions.
pub(crate) fn session_prefix(user_id: &str) -> Vec<u8> {
    let mut k = tagged(TAG_SESSION);
    push_str(&mut k, user_id);
    k
}

pub(crate) fn session(user_id: &str, session_id: &str) -> Vec<u8> {
    let mut k = session_prefix(user_id);
    push_str(&mut k, session_id);
    k
}

/// The conversation id in a user-conversation index key.
pub(crate) fn conversation_of_user_index(key: &[u8]) -> Result<String, StorageError> {
    let mut r = KeyReader::new(key);
    r.u8()?;
    r.str()?;
    Ok(r.str()?.to_string())
}

/// The id in an outbox key.
pub(crate) fn outbox_id(key: &[u8]) -> Result<u64, StorageError> {
    let mut r = KeyReader::new(key);
    r.u8()?;
    r.u64()
}

// ratelimit: the memberships cap.

/// How many entries a user's conversation index holds (kept by the apply that writes the
/// index; absent for an index written before the count existed: it is counted then).
pub(crate) fn user_conversation_count(user_id: &str) -> Vec<u8> {
    let mut k = tagged(TAG_USER_CONVERSATION_COUNT);
    push_str(&mut k, user_id);
    k
}

/// An outbox entry that removes a conversation from a user's index (the user left or was
/// removed). It shares the id sequence of [`outbox`] entries, so both kinds are delivered
/// in the order apply queued them.
pub(crate) fn outbox_unindex(id: u64) -> Vec<u8> {
    let mut k = tagged(TAG_OUTBOX_UNINDEX);
    push_u64(&mut k, id);
    k
}

pub(crate) fn outbox_unindex_range() -> (Vec<u8>, Vec<u8>) {
    (tagged(TAG_OUTBOX_UNINDEX), tagged(TAG_OUTBOX_UNINDEX + 1))
}
