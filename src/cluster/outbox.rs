//! The outbox relay: cross-shard updates ("user joined conversation" -> the user's own
//! shard) are queued by apply in the conversation's shard and delivered from here,
//! idempotently, never by a distributed transaction.
//!
//! Handlers drain the outbox of the shard they just wrote before answering, so a user sees a
//! new conversation in `list_conversations` at once; a background loop delivers what a crash
//! left behind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::Cluster;
use super::{RouteError, ShardMap};
use crate::ids::GroupId;
use crate::shard::command::{Rejection, ShardOp, ShardResponse};
use crate::shard::ShardReader;

/// The `sender_device` of the `member_removed` event that takes back a membership over the
/// memberships cap.
pub(crate) const OVER_CAP_DEVICE: &str = "server-memberships-cap";

/// How often the background loop looks for undelivered entries.
pub(crate) const OUTBOX_SWEEP_INTERVAL_MS: u64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum OutboxError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

pub(crate) struct OutboxRelay {
    cluster: Arc<Cluster>,
    shard_map: Arc<ShardMap>,
    reader: ShardReader,
    /// One drain at a time per shard, so entries are not delivered twice concurrently.
    locks: HashMap<GroupId, Mutex<()>>,
    // ratelimit
    /// The memberships cap (`limits.memberships_per_user_max`) put into every index write.
    memberships_per_user_max: u32,
}

impl OutboxRelay {
    pub(crate) fn new(
        cluster: Arc<Cluster>,
        shard_map: Arc<ShardMap>,
        reader: ShardReader,
        memberships_per_user_max: u32,
    ) -> Arc<Self> {
        let locks = shard_map.groups().map(|g| (g, Mutex::new(()))).collect();
        Arc::new(OutboxRelay {
            cluster,
            shard_map,
            reader,
            locks,
            memberships_per_user_max,
        })
    }

    /// Delivers every pending outbox entry of `group`: here if this node leads it,
    /// otherwise by asking its leader.
    pub(crate) async fn drain(&self, group: GroupId) -> Result<(), OutboxError> {
        if !self.cluster.is_local_leader(group) {
            return Ok(self.cluster.drain_outbox_at_leader(group).await?);
        }
        self.drain_here(group).await
    }

    /// Delivers every pending outbox entry of `group` from this node (its leader).
    pub(crate) async fn drain_here(&self, group: GroupId) -> Result<(), OutboxError> {
        let Some(lock) = self.locks.get(&group) else {
            return Ok(());
        };
        let _guard = lock.lock().await;
        loop {
            let entries = self.reader.outbox(group).await?;
            if entries.is_empty() {
                return Ok(());
            }
            for (_, item) in &entries {
                let e = &item.entry;
                let user_shard = self.shard_map.shard_for_user(&e.user_id);
                let op = if item.unindex {
                    ShardOp::UnindexUserConversation {
                        user_id: e.user_id.clone(),
                        conversation_id: e.conversation_id.clone(),
                    }
                } else {
                    ShardOp::IndexUserConversationCapped {
                        user_id: e.user_id.clone(),
                        conversation_id: e.conversation_id.clone(),
                        cap: self.memberships_per_user_max,
                    }
                };
                if let ShardResponse::Rejected(r) = self.cluster.write(user_shard, op).await? {
                    self.over_cap(group, &e.user_id, &e.conversation_id, r)
                        .await?;
                }
            }
            let ids = entries.iter().map(|(id, _)| *id).collect();
            self.cluster
                .serve_write(group, ShardOp::OutboxDone { ids })
                .await?;
        }
    }

    /// The user's index refused the conversation (the memberships cap, checked at apply in
    /// the user's shard): the membership made in the conversation's shard is taken back, as
    /// a `leave` of that user (a `member_removed` event, whose own outbox entry unindexes
    /// nothing). Idempotent like every removal, so a re-delivered entry does no harm. A direct
    /// conversation's members are fixed: it stays, without an index entry for that user.
    async fn over_cap(
        &self,
        group: GroupId,
        user_id: &str,
        conversation_id: &str,
        why: Rejection,
    ) -> Result<(), OutboxError> {
        tracing::info!(user_id, conversation_id, reason = ?why, "membership over the cap taken back");
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let op = ShardOp::RemoveMember {
            conversation_id: conversation_id.to_string(),
            actor: user_id.to_string(),
            actor_device: OVER_CAP_DEVICE.to_string(),
            user_id: user_id.to_string(),
            msg_id: ulid::Ulid::new().to_string(),
            ts,
        };
        if let ShardResponse::Rejected(r) = self.cluster.write(group, op).await? {
            tracing::info!(user_id, conversation_id, reason = ?r, "membership over the cap kept");
        }
        Ok(())
    }

    /// Drains every shard periodically, until the cluster's shutdown.
    pub(crate) fn spawn_background(self: &Arc<Self>) {
        let relay = self.clone();
        self.cluster.shutdown().spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(OUTBOX_SWEEP_INTERVAL_MS));
            loop {
                tick.tick().await;
                for group in relay.shard_map.groups() {
                    if !relay.cluster.is_local_leader(group) {
                        continue;
                    }
                    if let Err(e) = relay.drain_here(group).await {
                        tracing::debug!(group, error = %e, "outbox drain deferred");
                    }
                }
            }
        });
    }
}
