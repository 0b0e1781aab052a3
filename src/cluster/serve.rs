//! Requests served here because this node leads (or believes it leads) their group: from
//! this node's gateway through `Cluster::route`, and from peers through `PeerService`. Each
//! answers `NotLeader` (with a hint) when this node does not lead the group or is handing
//! it over.

use super::peer::{PeerReply, PeerRequest};
use super::{Cluster, RouteError, UnavailableCause};
use crate::cluster::command::QueryResult;
use crate::cluster::command::*;
use crate::ids::*;
use crate::shard::command::*;
use crate::shard::query::ShardQuery;

#[cfg(feature = "fault-injection")]
#[path = "sabotaged_write.rs"]
mod sabotaged_write;

impl Cluster {
    /// Serves `req` for `group` here (the local hop of `Cluster::route`).
    pub(super) async fn serve(&self, group: GroupId, req: PeerRequest) -> PeerReply {
        match req {
            PeerRequest::Write(op) => PeerReply::Write(self.serve_write(group, op).await),
            PeerRequest::Meta(op) => PeerReply::Meta(self.serve_meta(op).await),
            PeerRequest::Query(q) => PeerReply::Query(self.serve_query(group, q).await),
            PeerRequest::DrainOutbox => PeerReply::Drained(self.serve_drain(group).await),
            _ => PeerReply::Error("not routable".into()),
        }
    }

    /// Proposes `op` here (batched); `NotLeader` with a hint if another node leads.
    pub(crate) async fn serve_write(
        &self,
        group: GroupId,
        op: ShardOp,
    ) -> Result<ShardResponse, RouteError> {
        if !self.is_local_leader(group) || self.is_transferring(group) {
            return Err(self.not_leader(group));
        }
        // Commands reach here from this node's gateway and from peers alike: the shape rules
        // and the shard placement are checked again before anything is proposed (apply
        // checks the shape once more, deterministically).
        if let Err(r) = check_forwarded(&self.shard_map, group, &op) {
            return Ok(ShardResponse::Rejected(r));
        }
        crate::sabotage!(any => {
            if let Some(r) = self.sabotaged_write(group, &op).await {
                return r;
            }
        });
        self.proposals.write(group, op).await
    }

    pub(crate) async fn serve_meta(&self, op: MetaOp) -> Result<Response, RouteError> {
        if !self.is_local_leader(META_GROUP) || self.is_transferring(META_GROUP) {
            return Err(self.not_leader(META_GROUP));
        }
        self.groups.write(META_GROUP, Request::Meta(op)).await
    }

    /// Reads `q` here after the group's read barrier (G7).
    pub(crate) async fn serve_query(
        &self,
        group: GroupId,
        q: ShardQuery,
    ) -> Result<QueryResult, RouteError> {
        // A read barrier sends heartbeats, which would keep followers from electing the
        // transfer's target.
        if self.is_transferring(group) {
            return Err(self.not_leader(group));
        }
        self.groups.read_barrier(group).await?;
        super::meta::serve_query(&self.reader, group, q)
            .await
            .map_err(|e| RouteError::unavailable(group, UnavailableCause::Storage(e.to_string())))
    }

    pub(crate) async fn serve_drain(&self, group: GroupId) -> Result<(), RouteError> {
        if !self.is_local_leader(group) {
            return Err(self.not_leader(group));
        }
        let Some(relay) = self.relay.get() else {
            return Ok(());
        };
        relay
            .drain_here(group)
            .await
            .map_err(|e| RouteError::unavailable(group, UnavailableCause::Outbox(e.to_string())))
    }
}

/// What a leader checks of a shard command before proposing it: its fields
/// (`shard::validate::check_op`) and that `group` is the shard its key lives in (a command
/// routed to the wrong shard would write where no read looks).
pub(crate) fn check_forwarded(
    shard_map: &super::ShardMap,
    group: GroupId,
    op: &ShardOp,
) -> Result<(), crate::shard::command::Rejection> {
    crate::shard::validate::check_op(op)?;
    let home = match op {
        ShardOp::CreateConversation {
            conversation_id, ..
        }
        | ShardOp::Send {
            conversation_id, ..
        }
        | ShardOp::AddMembers {
            conversation_id, ..
        }
        | ShardOp::RemoveMember {
            conversation_id, ..
        }
        | ShardOp::SetRole {
            conversation_id, ..
        }
        | ShardOp::Receipt {
            conversation_id, ..
        } => Some(shard_map.shard_for_conversation(conversation_id)),
        ShardOp::CreateUser { user_id, .. }
        | ShardOp::IndexUserConversation { user_id, .. }
        | ShardOp::IndexUserConversationCapped { user_id, .. }
        | ShardOp::UnindexUserConversation { user_id, .. }
        | ShardOp::CreateSession { user_id, .. }
        | ShardOp::RefreshSession { user_id, .. }
        | ShardOp::RevokeSession { user_id, .. }
        | ShardOp::RevokeAllSessions { user_id } => Some(shard_map.shard_for_user(user_id)),
        ShardOp::CreateInvite { code, .. } | ShardOp::UseInvite { code, .. } => {
            Some(shard_map.shard_for_invite(code))
        }
        ShardOp::ClaimUsername { username, .. } => Some(shard_map.shard_for_username(username)),
        // Any shard has an outbox.
        ShardOp::OutboxDone { .. } => None,
        #[cfg(feature = "fault-injection")]
        ShardOp::SendAtSeq { .. } => None,
    };
    match home {
        Some(h) if h != group => Err(crate::shard::command::Rejection::BadRequest(format!(
            "command for shard {h} sent to group {group}"
        ))),
        _ if group == META_GROUP => Err(crate::shard::command::Rejection::BadRequest(
            "a shard command sent to the meta group".into(),
        )),
        _ => Ok(()),
    }
}
