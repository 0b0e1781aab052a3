//! Linearizable reads for the handlers: each is a [`ShardQuery`] served by the group's
//! leader after its read barrier (G7), wherever that leader is. They all go through
//! [`Gateway::read`]; the methods below only name the query, its group and its answer.

use super::Gateway;
use crate::cluster::command::QueryResult;
use crate::ids::GroupId;
use crate::protocol::ProtocolError;
use crate::shard::command::*;
use crate::shard::query::ShardQuery;
use crate::shard::Page;

/// Takes the answer out of the one [`QueryResult`] variant a query is answered with; any
/// other variant comes back as `Err` (a bug: `internal`).
macro_rules! answer {
    ($variant:pat => $value:expr) => {
        |r: QueryResult| match r {
            $variant => Ok($value),
            r => Err(r),
        }
    };
}

impl Gateway {
    /// The one read path: `q` on `group`'s leader, its answer taken out by `pick`.
    async fn read<T>(
        &self,
        group: GroupId,
        q: ShardQuery,
        pick: impl FnOnce(QueryResult) -> Result<T, QueryResult>,
    ) -> Result<T, ProtocolError> {
        pick(self.cluster.query(group, q).await?)
            .map_err(|r| ProtocolError::internal(format!("unexpected read result {r:?}")))
    }

    pub(crate) async fn read_conversation(
        &self,
        group: GroupId,
        conversation_id: &str,
    ) -> Result<Option<ConversationState>, ProtocolError> {
        let q = ShardQuery::Conversation {
            conversation_id: conversation_id.to_string(),
        };
        self.read(group, q, answer!(QueryResult::Conversation(c) => c))
            .await
    }

    /// Several conversations of one shard with `user`'s receipt watermarks, in order.
    pub(crate) async fn read_conversations(
        &self,
        group: GroupId,
        conversation_ids: Vec<ConversationId>,
        user: &str,
    ) -> Result<Vec<Option<(ConversationState, (u64, u64))>>, ProtocolError> {
        let q = ShardQuery::Conversations {
            conversation_ids,
            receipts_of: user.to_string(),
        };
        self.read(group, q, answer!(QueryResult::Conversations(c) => c))
            .await
    }

    pub(crate) async fn read_history(
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
        self.read(group, q, answer!(QueryResult::Page(p) => p))
            .await
    }

    pub(crate) async fn read_after(
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
        self.read(group, q, answer!(QueryResult::Page(p) => p))
            .await
    }

    pub(crate) async fn read_dedup(
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
        self.read(group, q, answer!(QueryResult::Dedup(a) => a))
            .await
    }

    pub(crate) async fn read_user(
        &self,
        user_id: &str,
    ) -> Result<Option<UserRecord>, ProtocolError> {
        let group = self.shard_map.shard_for_user(user_id);
        let q = ShardQuery::User {
            user_id: user_id.to_string(),
        };
        self.read(group, q, answer!(QueryResult::User(u) => u))
            .await
    }

    pub(crate) async fn read_username(
        &self,
        username: &str,
    ) -> Result<Option<UserId>, ProtocolError> {
        let group = self.shard_map.shard_for_username(username);
        let q = ShardQuery::Username {
            username: username.to_string(),
        };
        self.read(group, q, answer!(QueryResult::Username(u) => u))
            .await
    }

    /// One page of `user`'s conversation index after `after` (exclusive), at most `limit`,
    /// and whether more follow.
    pub(crate) async fn read_user_conversations_page(
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
        let pick = answer!(QueryResult::UserConversationsPage { ids, has_more } => (ids, has_more));
        self.read(group, q, pick).await
    }

    /// `user_id`'s token epoch and sessions (accounts: token checks).
    pub(crate) async fn read_auth_state(&self, user_id: &str) -> Result<AuthState, ProtocolError> {
        let group = self.shard_map.shard_for_user(user_id);
        let q = ShardQuery::AuthState {
            user_id: user_id.to_string(),
        };
        self.read(group, q, answer!(QueryResult::AuthState(s) => s))
            .await
    }

    // ratelimit

    /// `(count, indexed)`: how many conversations `user`'s index holds, and whether it holds
    /// `conversation_id` (linearizable, on the user's shard).
    pub(crate) async fn read_user_memberships(
        &self,
        user: &str,
        conversation_id: &str,
    ) -> Result<(u64, bool), ProtocolError> {
        let group = self.shard_map.shard_for_user(user);
        let q = ShardQuery::UserMemberships {
            user_id: user.to_string(),
            conversation_id: conversation_id.to_string(),
        };
        self.read(group, q, answer!(QueryResult::UserMemberships(r) => r))
            .await
    }
}
