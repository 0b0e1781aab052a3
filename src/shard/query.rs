//! Reads as values, so that a gateway can ask a shard's leader over the network: a
//! [`ShardQuery`] is served by [`ShardReader::query`] on the node that passed the group's read
//! barrier, and its [`QueryResult`] travels back.

use serde::{Deserialize, Serialize};

use super::command::*;
use super::read::{Page, ShardReader};
use crate::ids::GroupId;
use crate::storage::StorageError;

/// Most conversations looked up by one [`ShardQuery::Conversations`].
pub(crate) const CONVERSATIONS_PER_QUERY_MAX: usize = 1_000;
/// Most entries of one [`ShardQuery::UserConversationsPage`].
pub(crate) const USER_CONVERSATIONS_PAGE_MAX: u32 = 1_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum ShardQuery {
    Conversation {
        conversation_id: ConversationId,
    },
    /// Several conversations of one shard, each with `user`'s receipt watermarks.
    Conversations {
        conversation_ids: Vec<ConversationId>,
        receipts_of: UserId,
    },
    History {
        conversation_id: ConversationId,
        last_seq: u64,
        before_seq: Option<u64>,
        limit: u64,
    },
    After {
        conversation_id: ConversationId,
        last_seq: u64,
        after_seq: u64,
        limit: u64,
    },
    Receipt {
        conversation_id: ConversationId,
        user_id: UserId,
    },
    Dedup {
        conversation_id: ConversationId,
        sender: UserId,
        client_msg_id: String,
    },
    User {
        user_id: UserId,
    },
    Username {
        username: String,
    },
    UserConversations {
        user_id: UserId,
    },
    /// The meta group's state (group 0 only; the cluster serves it, not
    /// [`ShardReader::query`]).
    Meta,
    // accounts
    /// A user's token epoch and live sessions.
    AuthState {
        user_id: UserId,
    },
    /// One page of a user's conversation index, in index order, after `after` (exclusive;
    /// `None` = from the start), at most `limit` (capped at [`USER_CONVERSATIONS_PAGE_MAX`]).
    /// Added after the others so that the variant indexes on the wire stay the same.
    UserConversationsPage {
        user_id: UserId,
        after: Option<ConversationId>,
        limit: u32,
    },
    // ratelimit
    /// The size of a user's conversation index and whether it holds `conversation_id`.
    UserMemberships {
        user_id: UserId,
        conversation_id: ConversationId,
    },
}

/// What a [`ShardQuery`] answers. `M` is the meta group's state (the cluster's type:
/// `cluster::command::QueryResult` names the whole), which a shard never reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum QueryResult<M> {
    Conversation(Option<ConversationState>),
    /// In the order asked; `None` for a conversation that does not exist. The pair is
    /// `(delivered_seq, read_seq)` of the user asked about.
    Conversations(Vec<Option<(ConversationState, (u64, u64))>>),
    Page(Page),
    Receipt((u64, u64)),
    Dedup(Option<Ack>),
    User(Option<UserRecord>),
    Username(Option<UserId>),
    UserConversations(Vec<ConversationId>),
    /// The answer to [`ShardQuery::Meta`], served by the cluster (group 0).
    Meta(M),
    // accounts
    AuthState(AuthState),
    /// The page, and whether the index holds more after its last entry.
    UserConversationsPage {
        ids: Vec<ConversationId>,
        has_more: bool,
    },
    // ratelimit
    /// `(count, indexed)`: see [`ShardQuery::UserMemberships`].
    UserMemberships((u64, bool)),
}

impl ShardReader {
    /// Serves `q` from this node's state of `group` (the caller passed the read barrier).
    /// [`ShardQuery::Meta`] is not a shard's to answer: an error here.
    pub(crate) async fn query<M>(
        &self,
        group: GroupId,
        q: ShardQuery,
    ) -> Result<QueryResult<M>, StorageError> {
        match q {
            ShardQuery::Conversation { .. }
            | ShardQuery::Conversations { .. }
            | ShardQuery::History { .. }
            | ShardQuery::After { .. }
            | ShardQuery::Receipt { .. }
            | ShardQuery::Dedup { .. } => self.query_conversation(group, q).await,
            ShardQuery::User { .. }
            | ShardQuery::Username { .. }
            | ShardQuery::UserConversations { .. }
            | ShardQuery::AuthState { .. }
            | ShardQuery::UserConversationsPage { .. }
            | ShardQuery::UserMemberships { .. } => self.query_user(group, q).await,
            ShardQuery::Meta => Err(StorageError::Corrupt(format!(
                "the meta state is not a shard's to read (group {group})"
            ))),
        }
    }

    /// The reads of a conversation's shard (`query` picks them).
    async fn query_conversation<M>(
        &self,
        group: GroupId,
        q: ShardQuery,
    ) -> Result<QueryResult<M>, StorageError> {
        Ok(match q {
            ShardQuery::Conversation { conversation_id } => {
                QueryResult::Conversation(self.conversation(group, &conversation_id).await?)
            }
            ShardQuery::Conversations {
                conversation_ids,
                receipts_of,
            } => QueryResult::Conversations(
                self.conversations_with_receipts(group, &conversation_ids, &receipts_of)
                    .await?,
            ),
            ShardQuery::History {
                conversation_id,
                last_seq,
                before_seq,
                limit,
            } => QueryResult::Page(
                self.history(group, &conversation_id, last_seq, before_seq, limit)
                    .await?,
            ),
            ShardQuery::After {
                conversation_id,
                last_seq,
                after_seq,
                limit,
            } => QueryResult::Page(
                self.after(group, &conversation_id, last_seq, after_seq, limit)
                    .await?,
            ),
            ShardQuery::Receipt {
                conversation_id,
                user_id,
            } => QueryResult::Receipt(self.receipt(group, &conversation_id, &user_id).await?),
            ShardQuery::Dedup {
                conversation_id,
                sender,
                client_msg_id,
            } => QueryResult::Dedup(
                self.dedup(group, &conversation_id, &sender, &client_msg_id)
                    .await?,
            ),
            other => return Err(not_picked(group, &other)),
        })
    }

    /// Each of `ids` (at most [`CONVERSATIONS_PER_QUERY_MAX`]) with `user`'s receipt
    /// watermarks in it; `None` for one that does not exist.
    async fn conversations_with_receipts(
        &self,
        group: GroupId,
        ids: &[ConversationId],
        user: &UserId,
    ) -> Result<Vec<Option<(ConversationState, (u64, u64))>>, StorageError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids.iter().take(CONVERSATIONS_PER_QUERY_MAX) {
            out.push(match self.conversation(group, id).await? {
                Some(c) => Some((c, self.receipt(group, id, user).await?)),
                None => None,
            });
        }
        Ok(out)
    }

    /// The reads of a user's or a username's shard (`query` picks them).
    async fn query_user<M>(
        &self,
        group: GroupId,
        q: ShardQuery,
    ) -> Result<QueryResult<M>, StorageError> {
        Ok(match q {
            ShardQuery::User { user_id } => QueryResult::User(self.user(group, &user_id).await?),
            ShardQuery::Username { username } => {
                QueryResult::Username(self.username(group, &username).await?)
            }
            ShardQuery::AuthState { user_id } => {
                let store = self.store().clone();
                QueryResult::AuthState(
                    tokio::task::spawn_blocking(move || {
                        super::accounts::read_auth_state(&store, group, &user_id)
                    })
                    .await
                    .map_err(|e| StorageError::Corrupt(format!("read task failed: {e}")))??,
                )
            }
            ShardQuery::UserMemberships {
                user_id,
                conversation_id,
            } => QueryResult::UserMemberships(
                self.user_memberships(group, &user_id, &conversation_id)
                    .await?,
            ),
            ShardQuery::UserConversations { user_id } => {
                QueryResult::UserConversations(self.user_conversations(group, &user_id).await?)
            }
            ShardQuery::UserConversationsPage {
                user_id,
                after,
                limit,
            } => {
                let limit = limit.clamp(1, USER_CONVERSATIONS_PAGE_MAX) as usize;
                let (ids, has_more) = self
                    .user_conversations_page(group, &user_id, after.as_deref(), limit)
                    .await?;
                QueryResult::UserConversationsPage { ids, has_more }
            }
            other => return Err(not_picked(group, &other)),
        })
    }
}

/// A query handed to the wrong one of `query`'s helpers (which `query`'s exhaustive match
/// rules out): an error, never a panic.
fn not_picked(group: GroupId, q: &ShardQuery) -> StorageError {
    StorageError::Corrupt(format!(
        "query {q:?} was not picked for this read (group {group})"
    ))
}
