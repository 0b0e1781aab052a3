//! The write-path switches of [`crate::sabotage`]: how a leader serves a send when it is
//! broken on purpose. Compiled only with the `fault-injection` feature.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;

use super::Cluster;
use crate::cluster::command::QueryResult;
use crate::cluster::RouteError;
use crate::ids::GroupId;
use crate::sabotage::{on, Switch, EARLY_ACK_AFTER_MS};
use crate::shard::command::*;
use crate::shard::query::ShardQuery;

/// Acks remembered by [`Switch::LeaderMemoryDedup`]; cleared when full.
const MEMORY_DEDUP_ENTRIES_MAX: usize = 100_000;

type DedupKey = (ConversationId, UserId, String);

fn memory_dedup() -> &'static Mutex<HashMap<DedupKey, Ack>> {
    static MAP: OnceLock<Mutex<HashMap<DedupKey, Ack>>> = OnceLock::new();
    MAP.get_or_init(|| Mutex::new(HashMap::new()))
}

impl Cluster {
    /// Serves a send the broken way when a write-path switch is on; `None` means "serve it
    /// normally".
    pub(super) async fn sabotaged_write(
        &self,
        group: GroupId,
        op: &ShardOp,
    ) -> Option<Result<ShardResponse, RouteError>> {
        let ShardOp::Send {
            conversation_id,
            sender,
            client_msg_id,
            ..
        } = op
        else {
            return None;
        };
        if on(Switch::LeaderMemoryDedup) {
            let key = (
                conversation_id.clone(),
                sender.clone(),
                client_msg_id.clone(),
            );
            return Some(self.write_dedup_in_memory(group, op, key).await);
        }
        if on(Switch::SeqAtProposal) {
            let (seq, _) = self.guess_next(group, conversation_id).await?;
            let op = ShardOp::SendAtSeq {
                seq,
                send: Box::new(op.clone()),
            };
            return Some(self.proposals.write(group, op).await);
        }
        if on(Switch::PushBeforeCommit) {
            self.push_before_commit(group, op, conversation_id).await;
            return None;
        }
        if on(Switch::AckBeforeCommit) {
            return self.ack_before_commit(group, op, conversation_id).await;
        }
        None
    }

    /// [`Switch::LeaderMemoryDedup`]: a send this leader acknowledged before (by `key`) is
    /// answered from its memory of acks.
    async fn write_dedup_in_memory(
        &self,
        group: GroupId,
        op: &ShardOp,
        key: DedupKey,
    ) -> Result<ShardResponse, RouteError> {
        if let Some(ack) = memory_dedup().lock().get(&key).cloned() {
            return Ok(ShardResponse::Ack { ack, pushed: None });
        }
        let r = self.proposals.write(group, op.clone()).await;
        if let Ok(ShardResponse::Ack { ack, .. }) = &r {
            let mut m = memory_dedup().lock();
            if m.len() >= MEMORY_DEDUP_ENTRIES_MAX {
                m.clear();
            }
            m.insert(key, ack.clone());
        }
        r
    }

    /// [`Switch::PushBeforeCommit`]: pushes the message at the seq it would get before it
    /// is even proposed (the write then goes on normally).
    async fn push_before_commit(&self, group: GroupId, op: &ShardOp, conversation_id: &str) {
        if let Some((seq, recipients)) = self.guess_next(group, conversation_id).await {
            if let Some(message) = message_of(op, seq) {
                self.pushes.push_uncommitted(Pushed {
                    message,
                    recipients,
                });
            }
        }
    }

    /// [`Switch::AckBeforeCommit`]: a write not committed within [`EARLY_ACK_AFTER_MS`] is
    /// acknowledged anyway, at the seq it would get; `None` (serve it normally) when that
    /// seq cannot be guessed.
    async fn ack_before_commit(
        &self,
        group: GroupId,
        op: &ShardOp,
        conversation_id: &str,
    ) -> Option<Result<ShardResponse, RouteError>> {
        let guess = self.guess_next(group, conversation_id).await;
        let (proposals, op2) = (self.proposals.clone(), op.clone());
        let mut handle = tokio::spawn(async move { proposals.write(group, op2).await });
        match tokio::time::timeout(Duration::from_millis(EARLY_ACK_AFTER_MS), &mut handle).await {
            Ok(Ok(r)) => Some(r),
            Ok(Err(e)) => Some(Err(RouteError::unavailable(
                group,
                crate::cluster::UnavailableCause::ProposalTask(e.to_string()),
            ))),
            // Not committed yet: acknowledge anyway; the proposal goes on by itself.
            Err(_) => {
                let (seq, _) = guess?;
                let m = message_of(op, seq)?;
                Some(Ok(ShardResponse::Ack {
                    ack: Ack {
                        conversation_id: m.conversation_id,
                        client_msg_id: m.client_msg_id,
                        seq,
                        msg_id: m.msg_id,
                        ts: m.ts,
                    },
                    pushed: None,
                }))
            }
        }
    }

    /// `last_seq + 1` of the conversation as this replica applied it, and its members.
    async fn guess_next(
        &self,
        group: GroupId,
        conversation_id: &str,
    ) -> Option<(u64, Vec<UserId>)> {
        let q = ShardQuery::Conversation {
            conversation_id: conversation_id.to_string(),
        };
        match self.reader.query(group, q).await {
            Ok(QueryResult::Conversation(Some(c))) => Some((
                c.last_seq + 1,
                c.members.iter().map(|m| m.user_id.clone()).collect(),
            )),
            _ => None,
        }
    }
}

/// The message a `Send` would store at `seq`.
fn message_of(op: &ShardOp, seq: u64) -> Option<Message> {
    let ShardOp::Send {
        conversation_id,
        sender,
        sender_device,
        client_msg_id,
        kind,
        body,
        ref_seq,
        msg_id,
        ts,
    } = op
    else {
        return None;
    };
    Some(Message {
        conversation_id: conversation_id.clone(),
        seq,
        msg_id: msg_id.clone(),
        sender_id: sender.clone(),
        sender_device: sender_device.clone(),
        client_msg_id: client_msg_id.clone(),
        kind: *kind,
        body: body.clone(),
        ts: *ts,
        ref_seq: *ref_seq,
    })
}
