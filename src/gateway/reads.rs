//! Linearizable reads for the handlers: each is a [`ShardQuery`] served by the group's
//! leader after its read barrier (G7), wherever that leader is.

use super::Gateway;
use crate::cluster::command::QueryResult;
use crate::ids::GroupId;
use crate::protocol::ProtocolError;
use crate::shard::command::*;
use crate::shard::query::ShardQuery;
use crate::shard::Page;

fn unexpected(r: QueryResult) -> ProtocolError {
    ProtocolError::internal(format!("unexpected read result {r:?}"))
}

impl Gateway {
    pub async fn read_conversation(
        &self,
        group: GroupId,
        conversation_id: &str,
    ) -> Result<Option<ConversationState>, ProtocolError> {
        let q = ShardQuery::Conversation {
            conversation_id: conversation_id.to_string(),
        };
        match self.cluster.query(group, q).await? {
            QueryResult::Conversation(c) => Ok(c),
            r => Err(unexpected(r)),
        }
    }

    /// Several conversations of one shard with `user`'s receipt watermarks, in order.
    pub async fn read_conversations(
        &self,
        group: GroupId,
        conversation_ids: Vec<ConversationId>,
        user: &str,
    ) -> Result<Vec<Option<(ConversationState, (u64, u64))>>, ProtocolError> {
        let q = ShardQuery::Conversations {
            conversation_ids,
            receipts_of: user.to_string(),
        };
        match self.cluster.query(group, q).await? {
            QueryResult::Conversations(c) => Ok(c),
            r => Err(unexpected(r)),
        }
    }

    pub async fn read_history(
        &self,
        group: GroupId,
        conv: &ConversationState,
        before_seq: Option<u64>,
        limit: u64,
    ) -> Result<Page, ProtocolError> {
        let q = ShardQuery::History {
            conversation_id: conv.conversation_id.clone(),
            last_seq: conv.last_seq,
            before_seq,
            limit,
        };
        match self.cluster.query(group, q).await? {
            QueryResult::Page(p) => Ok(p),
            r => Err(unexpected(r)),
        }
    }

    pub async fn read_after(
        &self,
        group: GroupId,
        conv: &ConversationState,
        after_seq: u64,
        limit: u64,
    ) -> Result<Page, ProtocolError> {
        let q = ShardQuery::After {
            conversation_id: conv.conversation_id.clone(),
            last_seq: conv.last_seq,
            after_seq,
            limit,
        };
        match self.cluster.query(group, q).await? {
            QueryResult::Page(p) => Ok(p),
            r => Err(unexpected(r)),
        }
    }

    pub async fn read_dedup(
        &self,
        group: GroupId,
        conversation_id: &str,
        sender: &str,
        client_msg_id: &str,
    ) -> Result<Option<Ack>, ProtocolError> {
        let q = ShardQuery::Dedup {
            conversation_id: conversation_id.to_string(),
            sender: sender.to_string(),
            client_msg_id: client_msg_id.to_string(),
        };
        match self.cluster.query(group, q).await? {
            QueryResult::Dedup(a) => Ok(a),
            r => Err(unexpected(r)),
        }
    }

    pub async fn read_user(&self, user_id: &str) -> Result<Option<UserRecord>, ProtocolError> {
        let group = self.shard_map.shard_for_user(user_id);
        let q = ShardQuery::User {
            user_id: user_id.to_string(),
        };
        match self.cluster.query(group, q).await? {
            QueryResult::User(u) => Ok(u),
            r => Err(unexpected(r)),
        }
    }

    pub async fn read_username(&self, username: &str) -> Result<Option<UserId>, ProtocolError> {
        let group = self.shard_map.shard_for_username(username);
        let q = ShardQuery::Username {
            username: username.to_string(),
        };
        match self.cluster.query(group, q).await? {
            QueryResult::Username(u) => Ok(u),
            r => Err(unexpected(r)),
        }
    }

    /// The conversations `user` was ever put in (a hint: membership is checked after).
    pub async fn read_user_conversations(
        &self,
        user: &str,
    ) -> Result<Vec<ConversationId>, ProtocolError> {
        let group = self.shard_map.shard_for_user(user);
        let q = ShardQuery::UserConversations {
            user_id: user.to_string(),
        };
        match self.cluster.query(group, q).await? {
            QueryResult::UserConversations(ids) => Ok(ids),
            r => Err(unexpected(r)),
        }
    }

    /// One page of `user`'s conversation index after `after` (exclusive), at most `limit`,
    /// and whether more follow.
    pub async fn read_user_conversations_page(
        &self,
        user: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<ConversationId>, bool), ProtocolError> {
        let group = self.shard_map.shard_for_user(user);
        let q = ShardQuery::UserConversationsPage {
            user_id: user.to_string(),
            after: after.map(str::to_string),
            limit,
        };
        match self.cluster.query(group, q).await? {
            QueryResult::UserConversationsPage { ids, has_more } => Ok((ids, has_more)),
            r => Err(unexpected(r)),
        }
    }

    // ratelimit

    /// `(count, indexed)`: how many conversations `user`'s index holds, and whether it holds
    /// `conversation_id` (linearizable, on the user's shard).
    pub async fn read_user_memberships(
        &self,
        user: &str,
        conversation_id: &str,
    ) -> Result<(u64, bool), ProtocolError> {
        let group = self.shard_map.shard_for_user(user);
        let q = ShardQuery::UserMemberships {
            user_id: user.to_string(),
            conversation_id: conversation_id.to_string(),
        };
        match self.cluster.query(group, q).await? {
            QueryResult::UserMemberships(r) => Ok(r),
            r => Err(unexpected(r)),
        }
    }
}
