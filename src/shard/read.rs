//! Reads of shard state. Callers establish linearizability first (raft's read index); these
//! functions only read the local state machine, off the async workers.

use std::sync::Arc;

use super::command::*;
use super::keys;
use crate::codec::decode;
use crate::ids::GroupId;
use crate::storage::{blocking, StorageError, Store};

/// Most entries of the whole-index read [`ShardReader::user_conversations`] (kept for
/// peers that still send `ShardQuery::UserConversations`); the gateway reads the index in
/// pages ([`ShardReader::user_conversations_page`]), which cut nothing off.
pub(crate) const USER_CONVERSATIONS_MAX: usize = 10_000;
/// Most outbox entries taken in one relay round.
pub(crate) const OUTBOX_BATCH_MAX: usize = 256;

/// A pending outbox entry: add the conversation to the user's index, or (`unindex`) remove
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutboxItem {
    pub(crate) entry: OutboxEntry,
    pub(crate) unindex: bool,
}

/// A page of messages and whether more exist beyond it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Page {
    pub(crate) messages: Vec<Message>,
    pub(crate) has_more: bool,
}

/// Blocking reads of one node's shard state; the async wrappers run them on the blocking pool.
#[derive(Clone)]
pub(crate) struct ShardReader {
    store: Arc<Store>,
}

impl ShardReader {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        ShardReader { store }
    }

    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn get_value<T: serde::de::DeserializeOwned>(
        store: &Store,
        group: GroupId,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        Ok(store.sm_get(group, key)?.map(|v| decode(&v)).transpose()?)
    }

    pub(crate) async fn conversation(
        &self,
        group: GroupId,
        conversation_id: &str,
    ) -> Result<Option<ConversationState>, StorageError> {
        let store = self.store.clone();
        let key = keys::conversation(conversation_id);
        let seq_key = keys::last_seq(conversation_id);
        blocking(move || {
            let Some(mut conv) = Self::get_value::<ConversationState>(&store, group, &key)? else {
                return Ok(None);
            };
            conv.last_seq = Self::get_value(&store, group, &seq_key)?.unwrap_or(0);
            Ok(Some(conv))
        })
        .await
    }

    pub(crate) async fn receipt(
        &self,
        group: GroupId,
        conversation_id: &str,
        user_id: &str,
    ) -> Result<(u64, u64), StorageError> {
        let store = self.store.clone();
        let key = keys::receipt(conversation_id, user_id);
        blocking(move || Ok(Self::get_value(&store, group, &key)?.unwrap_or((0, 0)))).await
    }

    /// Messages with seq in `from..=to`, ascending (`reverse` = descending).
    pub(crate) async fn messages(
        &self,
        group: GroupId,
        conversation_id: &str,
        from: u64,
        to: u64,
        reverse: bool,
    ) -> Result<Vec<Message>, StorageError> {
        if from > to {
            return Ok(Vec::new());
        }
        let store = self.store.clone();
        let start = keys::message(conversation_id, from);
        let end = keys::message(conversation_id, to.saturating_add(1));
        let limit = (to - from + 1).min(u64::from(u32::MAX)) as usize;
        blocking(move || {
            store
                .sm_scan(group, &start, &end, reverse, limit)?
                .iter()
                .map(|(_, v)| Ok(decode(v)?))
                .collect()
        })
        .await
    }

    /// Newest first, below `before_seq` (exclusive; `None` = from the newest).
    pub(crate) async fn history(
        &self,
        group: GroupId,
        conversation_id: &str,
        last_seq: u64,
        before_seq: Option<u64>,
        limit: u64,
    ) -> Result<Page, StorageError> {
        let top = before_seq
            .map(|b| b.saturating_sub(1))
            .unwrap_or(last_seq)
            .min(last_seq);
        if top == 0 {
            return Ok(Page {
                messages: Vec::new(),
                has_more: false,
            });
        }
        let bottom = top.saturating_sub(limit - 1).max(1);
        let messages = self
            .messages(group, conversation_id, bottom, top, true)
            .await?;
        Ok(Page {
            messages,
            has_more: bottom > 1,
        })
    }

    /// Ascending, after `after_seq`, at most `limit`.
    pub(crate) async fn after(
        &self,
        group: GroupId,
        conversation_id: &str,
        last_seq: u64,
        after_seq: u64,
        limit: u64,
    ) -> Result<Page, StorageError> {
        if after_seq >= last_seq {
            return Ok(Page {
                messages: Vec::new(),
                has_more: false,
            });
        }
        let top = last_seq.min(after_seq + limit);
        let messages = self
            .messages(group, conversation_id, after_seq + 1, top, false)
            .await?;
        Ok(Page {
            messages,
            has_more: top < last_seq,
        })
    }

    /// The ack of a stored message, by its dedup key.
    pub(crate) async fn dedup(
        &self,
        group: GroupId,
        conversation_id: &str,
        sender: &str,
        client_msg_id: &str,
    ) -> Result<Option<Ack>, StorageError> {
        let store = self.store.clone();
        let key = keys::dedup(conversation_id, sender, client_msg_id);
        blocking(move || Self::get_value(&store, group, &key)).await
    }

    pub(crate) async fn user(
        &self,
        group: GroupId,
        user_id: &str,
    ) -> Result<Option<UserRecord>, StorageError> {
        let store = self.store.clone();
        let key = keys::user(user_id);
        blocking(move || Self::get_value(&store, group, &key)).await
    }

    pub(crate) async fn username(
        &self,
        group: GroupId,
        username: &str,
    ) -> Result<Option<UserId>, StorageError> {
        let store = self.store.clone();
        let key = keys::username(username);
        blocking(move || Self::get_value(&store, group, &key)).await
    }

    /// The conversations a user was ever put in (a hint: callers check membership).
    pub(crate) async fn user_conversations(
        &self,
        group: GroupId,
        user_id: &str,
    ) -> Result<Vec<ConversationId>, StorageError> {
        let store = self.store.clone();
        let prefix = keys::user_conversation_prefix(user_id);
        blocking(move || {
            store
                .sm_scan_prefix(group, &prefix, false, USER_CONVERSATIONS_MAX)?
                .iter()
                .map(|(k, _)| keys::conversation_of_user_index(k))
                .collect()
        })
        .await
    }

    /// One page of a user's conversation index (key order), after `after` (exclusive), at
    /// most `limit`; and whether more follow. Nothing is cut off: paging by the last id of
    /// each page reaches every entry, however many there are.
    pub(crate) async fn user_conversations_page(
        &self,
        group: GroupId,
        user_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ConversationId>, bool), StorageError> {
        let store = self.store.clone();
        let prefix = keys::user_conversation_prefix(user_id);
        let start = match after {
            // The smallest key above the cursor's own: its key with a 0 byte appended.
            Some(c) if crate::storage::keys::try_push_str(&mut Vec::new(), c).is_ok() => {
                let mut k = keys::user_conversation(user_id, c);
                k.push(0);
                k
            }
            _ => prefix.clone(),
        };
        let end = crate::storage::keys::prefix_successor(&prefix);
        blocking(move || {
            let rows = match end {
                Some(end) => store.sm_scan(group, &start, &end, false, limit + 1)?,
                None => Vec::new(),
            };
            let has_more = rows.len() > limit;
            let ids = rows
                .iter()
                .take(limit)
                .map(|(k, _)| keys::conversation_of_user_index(k))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((ids, has_more))
        })
        .await
    }

    /// Pending outbox entries of a shard (index and unindex), oldest first.
    pub(crate) async fn outbox(
        &self,
        group: GroupId,
    ) -> Result<Vec<(u64, OutboxItem)>, StorageError> {
        let store = self.store.clone();
        blocking(move || {
            let mut out = Vec::new();
            for (range, unindex) in [
                (keys::outbox_range(), false),
                (keys::outbox_unindex_range(), true),
            ] {
                for (k, v) in store.sm_scan(group, &range.0, &range.1, false, OUTBOX_BATCH_MAX)? {
                    let id = keys::outbox_id(&k)?;
                    let entry: OutboxEntry = decode(&v)?;
                    out.push((id, OutboxItem { entry, unindex }));
                }
            }
            // The two kinds share one id sequence: the oldest OUTBOX_BATCH_MAX of both.
            out.sort_by_key(|(id, _)| *id);
            out.truncate(OUTBOX_BATCH_MAX);
            Ok(out)
        })
        .await
    }

    // ratelimit: the memberships cap.

    /// How many conversations `user_id`'s index holds, and whether `conversation_id` is one
    /// of them (then adding the user there takes no new slot).
    pub(crate) async fn user_memberships(
        &self,
        group: GroupId,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<(u64, bool), StorageError> {
        let store = self.store.clone();
        let count_key = keys::user_conversation_count(user_id);
        let prefix = keys::user_conversation_prefix(user_id);
        let entry = keys::user_conversation(user_id, conversation_id);
        blocking(move || {
            let indexed = store.sm_get(group, &entry)?.is_some();
            let count = match Self::get_value::<u64>(&store, group, &count_key)? {
                Some(n) => n,
                None => store
                    .sm_scan_prefix(
                        group,
                        &prefix,
                        false,
                        super::apply::USER_CONVERSATION_COUNT_SCAN_MAX,
                    )?
                    .len() as u64,
            };
            Ok((count, indexed))
        })
        .await
    }
}
