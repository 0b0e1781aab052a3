//! What each client request does. Identity comes from the session, never from the frame.

use std::collections::BTreeSet;
use std::time::Instant;

use super::{now_ms, Gateway};
use crate::delivery::hub::ConnId;
use crate::delivery::out_queue::OutQueue;
use crate::ids::GroupId;
use crate::protocol::client::{WireConvKind, WireRole, HISTORY_LIMIT_DEFAULT};
use crate::protocol::{
    ClientFrame, ConversationView, ErrorCode, ProtocolError, RequestId, ServerFrame, TypingState,
};
use crate::shard::command::*;

/// The authenticated side of a connection.
pub(crate) struct Session {
    pub(crate) user_id: String,
    pub(crate) device_id: String,
    pub(crate) conn_id: ConnId,
    pub(crate) tx: OutQueue,
    /// Notified by the hub when this connection is replaced or too slow.
    pub(crate) kill: std::sync::Arc<tokio::sync::Notify>,
}

type Reply = Result<Vec<ServerFrame>, ProtocolError>;

fn one(frame: ServerFrame) -> Reply {
    Ok(vec![frame])
}

/// A direct conversation's id is derived from its two members, so it exists once. The first
/// id's length is spelled out, so ids that contain `-` cannot make two pairs collide.
pub(crate) fn direct_conversation_id(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("d{}-{x}-{y}", x.len())
}

fn new_msg_id() -> String {
    ulid::Ulid::new().to_string()
}

/// `remove_member` and `leave` (the actor removing themselves).
fn remove_member(
    conversation_id: &str,
    actor: String,
    actor_device: String,
    user_id: String,
) -> ShardOp {
    ShardOp::RemoveMember {
        conversation_id: conversation_id.to_string(),
        actor,
        actor_device,
        user_id,
        msg_id: new_msg_id(),
        ts: now_ms(),
    }
}

/// A frame handed to a family function that does not handle it: a bug in `handle`, failed
/// closed.
fn misrouted() -> ProtocolError {
    ProtocolError::internal("frame dispatched to the wrong handler")
}

impl Gateway {
    /// Writes a shard command; a deterministic rejection becomes its protocol error.
    pub(crate) async fn write_shard(
        &self,
        group: GroupId,
        op: ShardOp,
    ) -> Result<ShardResponse, ProtocolError> {
        match self.cluster.write(group, op).await? {
            ShardResponse::Rejected(r) => Err(r.into()),
            r => Ok(r),
        }
    }

    /// The conversation, read linearizably, if `user` is a member; `forbidden` otherwise
    /// (also when it does not exist: no existence leak).
    pub(crate) async fn member_conversation(
        &self,
        user: &str,
        conversation_id: &str,
    ) -> Result<(GroupId, ConversationState), ProtocolError> {
        let group = self.shard_map.shard_for_conversation(conversation_id);
        match self.read_conversation(group, conversation_id).await? {
            Some(c) if c.members.iter().any(|m| m.user_id == user) => Ok((group, c)),
            _ => Err(ProtocolError::forbidden(
                "not a member of this conversation",
            )),
        }
    }

    async fn user_exists(&self, user_id: &str) -> Result<bool, ProtocolError> {
        Ok(self.read_user(user_id).await?.is_some())
    }

    async fn check_users_exist(&self, users: &[String]) -> Result<(), ProtocolError> {
        for u in users {
            if !self.user_exists(u).await? {
                return Err(ProtocolError::bad_request(format!("unknown user {u}")));
            }
        }
        Ok(())
    }

    /// Gives back the tokens of a send that was refused (not a member…): refused sends must
    /// not spend a conversation's budget.
    fn refund_send_rate(&self, user: &str, conversation_id: &str) {
        self.user_rate.refund(&user.to_string());
        self.conversation_rate.refund(&conversation_id.to_string());
    }

    fn check_send_rate(&self, user: &str, conversation_id: &str) -> Result<(), ProtocolError> {
        let now = Instant::now();
        let user_key = user.to_string();
        if let Err(wait) = self.user_rate.check(&user_key, now) {
            return Err(ProtocolError::rate_limited(
                "too many messages from this user",
                wait,
            ));
        }
        if let Err(wait) = self
            .conversation_rate
            .check(&conversation_id.to_string(), now)
        {
            self.user_rate.refund(&user_key);
            return Err(ProtocolError::rate_limited(
                "too many messages in this conversation",
                wait,
            ));
        }
        Ok(())
    }

    /// Charges `frame` to its per-user budget (ratelimit::FrameKind); sends, edits and
    /// deletes are charged in `send_event` (a repeat of a stored one gets its ack anyway).
    /// Creating a conversation also takes one of the user's hourly creations.
    fn check_rate(&self, user: &str, frame: &ClientFrame) -> Result<(), ProtocolError> {
        use super::ratelimit::FrameKind;
        let kind = match frame {
            ClientFrame::Send { .. } | ClientFrame::Edit { .. } | ClientFrame::Delete { .. } => {
                return Ok(())
            }
            ClientFrame::Auth { .. } | ClientFrame::Ping => FrameKind::Ping,
            ClientFrame::Typing { .. } => FrameKind::Typing,
            ClientFrame::Delivered { .. } | ClientFrame::Read { .. } => FrameKind::Receipt,
            ClientFrame::SubscribePresence { .. } => FrameKind::PresenceSubscription,
            ClientFrame::History { .. }
            | ClientFrame::Sync { .. }
            | ClientFrame::ListConversations { .. } => FrameKind::Read,
            ClientFrame::CreateConversation { .. }
            | ClientFrame::AddMembers { .. }
            | ClientFrame::RemoveMember { .. }
            | ClientFrame::SetRole { .. }
            | ClientFrame::Leave { .. } => FrameKind::MembershipChange,
        };
        let now = Instant::now();
        self.frame_rates
            .check(kind, user, now)
            .map_err(|wait| ProtocolError::rate_limited(kind.refusal(), wait))?;
        if matches!(frame, ClientFrame::CreateConversation { .. }) {
            self.frame_rates
                .creations
                .check(&user.to_string(), now)
                .map_err(|wait| {
                    ProtocolError::rate_limited("too many conversations created this hour", wait)
                })?;
        }
        Ok(())
    }

    /// Refuses before proposing when one of `users` has no room left under the memberships
    /// cap (`limits.memberships_per_user_max`). A user already indexed in `conversation_id`
    /// needs no new slot. The apply in the user's shard checks again (a race past this
    /// check is taken back by the outbox relay; see docs/SECURITY.md, "Rate limits and caps").
    async fn check_membership_room(
        &self,
        users: &[String],
        conversation_id: &str,
    ) -> Result<(), ProtocolError> {
        let cap = u64::from(self.limits.memberships_per_user_max);
        for u in users {
            let (count, indexed) = self.read_user_memberships(u, conversation_id).await?;
            if !indexed && count >= cap {
                return Err(ProtocolError::bad_request(format!(
                    "user {u} is in too many conversations"
                )));
            }
        }
        Ok(())
    }

    /// Handles one authenticated request; returns the frames to answer with (in order).
    /// Each frame family has its own function below.
    pub(crate) async fn handle(
        &self,
        s: &Session,
        id: Option<RequestId>,
        frame: ClientFrame,
    ) -> Reply {
        // Before any read or write: a refused frame costs nothing but this check.
        self.check_rate(&s.user_id, &frame)?;
        match frame {
            ClientFrame::Auth { .. } => Err(ProtocolError::bad_request("already authenticated")),
            ClientFrame::Ping => one(ServerFrame::Pong { id }),
            f @ (ClientFrame::Send { .. }
            | ClientFrame::Edit { .. }
            | ClientFrame::Delete { .. }) => self.message_frame(s, id, f).await,
            f @ (ClientFrame::CreateConversation { .. }
            | ClientFrame::AddMembers { .. }
            | ClientFrame::RemoveMember { .. }
            | ClientFrame::Leave { .. }
            | ClientFrame::SetRole { .. }) => self.membership_frame(s, id, f).await,
            f @ (ClientFrame::History { .. }
            | ClientFrame::Sync { .. }
            | ClientFrame::ListConversations { .. }) => self.read_frame(s, id, f).await,
            ClientFrame::Delivered {
                conversation_id,
                seq,
            } => self.receipt(s, id, conversation_id, Some(seq), None).await,
            ClientFrame::Read {
                conversation_id,
                seq,
            } => self.receipt(s, id, conversation_id, None, Some(seq)).await,
            ClientFrame::Typing {
                conversation_id,
                state,
            } => self.typing(s, conversation_id, state).await,
            ClientFrame::SubscribePresence { user_ids } => {
                // Only users who share a conversation with the subscriber; others silently skipped.
                self.subscribe_presence(s, id, user_ids).await
            }
        }
    }

    /// `send`, `edit`, `delete`: one message event each.
    async fn message_frame(&self, s: &Session, id: Option<RequestId>, frame: ClientFrame) -> Reply {
        let (conversation_id, client_msg_id, kind, body, ref_seq) = match frame {
            ClientFrame::Send {
                conversation_id,
                client_msg_id,
                body,
            } => (conversation_id, client_msg_id, MsgKind::Text, body, None),
            ClientFrame::Edit {
                conversation_id,
                client_msg_id,
                seq,
                body,
            } => (
                conversation_id,
                client_msg_id,
                MsgKind::Edit,
                body,
                Some(seq),
            ),
            ClientFrame::Delete {
                conversation_id,
                client_msg_id,
                seq,
            } => (
                conversation_id,
                client_msg_id,
                MsgKind::Delete,
                String::new(),
                Some(seq),
            ),
            _ => return Err(misrouted()),
        };
        self.send_event(s, id, conversation_id, client_msg_id, kind, body, ref_seq)
            .await
    }

    /// `create_conversation`, `add_members`, `remove_member`, `leave`, `set_role`: a
    /// membership change of one conversation, answered with the conversation.
    async fn membership_frame(
        &self,
        s: &Session,
        id: Option<RequestId>,
        frame: ClientFrame,
    ) -> Reply {
        let actor = s.user_id.clone();
        let actor_device = s.device_id.clone();
        let (conversation_id, op) = match frame {
            ClientFrame::CreateConversation {
                kind,
                members,
                title,
            } => return self.create_conversation(s, id, kind, members, title).await,
            ClientFrame::AddMembers {
                conversation_id,
                members,
            } => {
                self.check_users_exist(&members).await?;
                self.check_membership_room(&members, &conversation_id)
                    .await?;
                let op = ShardOp::AddMembers {
                    conversation_id: conversation_id.clone(),
                    actor,
                    actor_device,
                    members,
                    msg_id: new_msg_id(),
                    ts: now_ms(),
                };
                (conversation_id, op)
            }
            ClientFrame::RemoveMember {
                conversation_id,
                user_id,
            } => {
                let op = remove_member(&conversation_id, actor, actor_device, user_id);
                (conversation_id, op)
            }
            ClientFrame::Leave { conversation_id } => {
                let op = remove_member(&conversation_id, actor.clone(), actor_device, actor);
                (conversation_id, op)
            }
            ClientFrame::SetRole {
                conversation_id,
                user_id,
                role,
            } => {
                let op = ShardOp::SetRole {
                    conversation_id: conversation_id.clone(),
                    actor,
                    actor_device,
                    user_id,
                    role: match role {
                        WireRole::Owner => Role::Owner,
                        WireRole::Admin => Role::Admin,
                        WireRole::Member => Role::Member,
                    },
                    msg_id: new_msg_id(),
                    ts: now_ms(),
                };
                (conversation_id, op)
            }
            _ => return Err(misrouted()),
        };
        let group = self.shard_map.shard_for_conversation(&conversation_id);
        self.membership_change(id, group, op).await
    }

    /// `history`, `sync`, `list_conversations`: linearizable reads (see `replies`).
    async fn read_frame(&self, s: &Session, id: Option<RequestId>, frame: ClientFrame) -> Reply {
        match frame {
            ClientFrame::History {
                conversation_id,
                before_seq,
                limit,
            } => {
                let limit = u64::from(limit.unwrap_or(HISTORY_LIMIT_DEFAULT));
                self.history(s, id, conversation_id, before_seq, limit)
                    .await
            }
            ClientFrame::Sync {
                conversations,
                cursor,
            } => self.sync(s, id, conversations, cursor).await,
            ClientFrame::ListConversations { cursor } => {
                self.list_conversations(s, id, cursor).await
            }
            _ => Err(misrouted()),
        }
    }

    /// `typing`: ephemeral, nothing stored; the members come from the shard's leader.
    async fn typing(&self, s: &Session, conversation_id: String, state: TypingState) -> Reply {
        let group = self.shard_map.shard_for_conversation(&conversation_id);
        let conv = self.read_conversation(group, &conversation_id).await?;
        let Some(conv) = conv.filter(|c| c.members.iter().any(|m| m.user_id == s.user_id)) else {
            return Err(ProtocolError::forbidden(
                "not a member of this conversation",
            ));
        };
        let recipients = conv.members.iter().map(|m| m.user_id.clone()).collect();
        let start = state == TypingState::Start;
        // Typing crosses nodes without touching Raft (G9).
        self.delivery.typing(
            conversation_id,
            s.user_id.clone(),
            s.device_id.clone(),
            start,
            recipients,
        );
        Ok(Vec::new())
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_event(
        &self,
        s: &Session,
        id: Option<RequestId>,
        conversation_id: String,
        client_msg_id: String,
        kind: MsgKind,
        body: String,
        ref_seq: Option<u64>,
    ) -> Reply {
        let started = Instant::now();
        self.metrics.sends.inc();
        let group = self.shard_map.shard_for_conversation(&conversation_id);
        if let Err(limited) = self.check_send_rate(&s.user_id, &conversation_id) {
            // A retry of a stored message gets its ack whatever the rate (idempotency
            // holds at any later time).
            let stored = self
                .read_dedup(group, &conversation_id, &s.user_id, &client_msg_id)
                .await?;
            return match stored {
                Some(ack) => one(ServerFrame::ack(id, &ack)),
                None => Err(limited),
            };
        }
        let op = ShardOp::Send {
            conversation_id: conversation_id.clone(),
            sender: s.user_id.clone(),
            sender_device: s.device_id.clone(),
            client_msg_id,
            kind,
            body,
            ref_seq,
            msg_id: new_msg_id(),
            ts: now_ms(),
        };
        let written = self.write_shard(group, op).await;
        if matches!(&written, Err(e) if e.code == ErrorCode::Forbidden) {
            self.refund_send_rate(&s.user_id, &conversation_id);
        }
        match written? {
            ShardResponse::Ack { ack, .. } => {
                self.metrics.acks.inc();
                self.metrics
                    .ack_latency_seconds
                    .observe(started.elapsed().as_secs_f64());
                one(ServerFrame::ack(id, &ack))
            }
            other => Err(ProtocolError::internal(format!(
                "unexpected response {other:?}"
            ))),
        }
    }

    async fn create_conversation(
        &self,
        s: &Session,
        id: Option<RequestId>,
        kind: WireConvKind,
        members: Vec<String>,
        title: Option<String>,
    ) -> Reply {
        let others: Vec<String> = members
            .into_iter()
            .filter(|m| *m != s.user_id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let (kind, conversation_id) = match kind {
            WireConvKind::Direct => {
                let [other] = others.as_slice() else {
                    return Err(ProtocolError::bad_request(
                        "a direct conversation has exactly one other member",
                    ));
                };
                (ConvKind::Direct, direct_conversation_id(&s.user_id, other))
            }
            WireConvKind::Group => {
                if others.is_empty()
                    || others.len() >= crate::shard::apply::MEMBERS_EVER_MAX as usize
                {
                    return Err(ProtocolError::bad_request(
                        "a group has 1..199 other members",
                    ));
                }
                (ConvKind::Group, ulid::Ulid::new().to_string())
            }
        };
        self.check_users_exist(&others).await?;
        let mut everyone = others.clone();
        everyone.push(s.user_id.clone());
        self.check_membership_room(&everyone, &conversation_id)
            .await?;
        let group = self.shard_map.shard_for_conversation(&conversation_id);
        let op = ShardOp::CreateConversation {
            conversation_id,
            kind,
            title,
            creator: s.user_id.clone(),
            members: others,
            ts: now_ms(),
        };
        self.membership_change(id, group, op).await
    }

    /// Delivers the shard's outbox (user -> conversation index) before answering, so the
    /// members see the conversation listed at once. A failure is retried in the background.
    async fn deliver_outbox(&self, group: GroupId) {
        if let Err(e) = self.relay.drain(group).await {
            tracing::warn!(group, error = %e, "outbox delivery deferred");
        }
    }

    /// Writes a creation or membership change, delivers its outbox, answers `conversation`.
    async fn membership_change(&self, id: Option<RequestId>, group: GroupId, op: ShardOp) -> Reply {
        match self.write_shard(group, op).await? {
            ShardResponse::Conversation(conversation)
            | ShardResponse::Membership { conversation, .. } => {
                self.deliver_outbox(group).await;
                one(ServerFrame::Conversation {
                    id,
                    conversation: ConversationView::from(&conversation),
                })
            }
            other => Err(ProtocolError::internal(format!(
                "unexpected response {other:?}"
            ))),
        }
    }

    async fn receipt(
        &self,
        s: &Session,
        id: Option<RequestId>,
        conversation_id: String,
        delivered_seq: Option<u64>,
        read_seq: Option<u64>,
    ) -> Reply {
        // Checked before coalescing, so that one bad watermark cannot fail the good ones it
        // would be merged with; apply checks again.
        let seq = delivered_seq.max(read_seq).unwrap_or(0);
        let (_, conv) = self
            .member_conversation(&s.user_id, &conversation_id)
            .await?;
        if seq > conv.last_seq {
            return Err(ProtocolError::bad_request(format!(
                "seq {seq} is above last_seq {}",
                conv.last_seq
            )));
        }
        let applied =
            self.receipts
                .submit(&conversation_id, &s.user_id, delivered_seq, read_seq)?;
        applied
            .await
            .map_err(|_| ProtocolError::unavailable("receipt was not written"))??;
        Ok(match id {
            Some(id) => vec![ServerFrame::Ok { id: Some(id) }],
            None => Vec::new(),
        })
    }
}
