//! `Cluster`: how a gateway reaches any group, wherever its leader is.
//!
//! A write, meta write or read goes to the group's leader: this node if it leads the group
//! (proposal batcher / read barrier here), otherwise over the transport to the node the
//! leader cache names, refreshed by `NotLeader { leader_hint }` answers and by trying the
//! group's replicas in turn. Retries stay within the request's deadline; after it the
//! answer is `unavailable` (retryable). Sends are idempotent by `client_msg_id`, so a
//! forwarded send that may have been applied is safe to retry.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use openraft::ServerState;
use parking_lot::{Mutex, RwLock};

use super::command::*;
use super::fanout::{Fanout, PushItem};
use super::forward::{ForwardedWrite, WriteForwarder};
use super::peer::{PeerReply, PeerRequest, PeerTransport};
use super::router::REQUEST_TIMEOUT_MS;
use super::status::{GroupStatus, NodeStatus};
use super::{trace, ProposalBatcher, RouteError, Router};
use crate::ids::{GroupId, NodeId, META_GROUP};
use crate::shard::command::*;
use crate::shard::query::ShardQuery;
use crate::shard::ShardReader;

/// First pause after a failed attempt; doubles up to [`RETRY_BACKOFF_MAX_MS`].
pub const RETRY_BACKOFF_MIN_MS: u64 = 20;
pub const RETRY_BACKOFF_MAX_MS: u64 = 400;
/// How long a leadership transfer may take before everything is re-enabled.
/// Longer than the election timeout, so that the target's timer fires inside it.
pub const TRANSFER_WINDOW_MS: u64 = 4_000;
/// Most hops one request follows (leader hints and retries) before giving up.
pub const ROUTE_ATTEMPTS_MAX: u32 = 64;
/// A replica whose log is at most this many entries behind the leader's pushes the group's
/// messages to its own connections when it applies them; the leader does not send it its
/// copy (see [`Cluster::replicas_pushing_by_apply`]).
pub const PUSH_BY_APPLY_LAG_MAX: u64 = 64;

#[cfg(feature = "fault-injection")]
#[path = "sabotaged_write.rs"]
mod sabotaged_write;

pub struct Cluster {
    pub node_id: NodeId,
    pub cluster_id: String,
    router: Arc<Router>,
    proposals: Arc<ProposalBatcher>,
    reader: ShardReader,
    transport: Arc<OnceLock<PeerTransport>>,
    /// The latest meta state this node saw (node addresses, desired placement).
    meta: RwLock<Arc<MetaState>>,
    /// Leader of each group as last learned; at most one entry per group.
    leaders: Mutex<HashMap<GroupId, NodeId>>,
    pub fanout: Arc<Fanout>,
    forwarder: WriteForwarder,
    /// Groups whose leadership this node is handing over, until when (at most one entry per
    /// group).
    transferring: Mutex<HashMap<GroupId, Instant>>,
    /// Groups in which this node does not campaign, until when (one entry per group).
    elections_held: Mutex<HashMap<GroupId, Instant>>,
    /// Set once the relay exists (it holds this cluster).
    pub relay: OnceLock<Arc<super::OutboxRelay>>,
    // secrets (issue 12 point 5)
    /// The cluster's secrets as this node holds them; fed by every meta state seen.
    pub secrets: OnceLock<Arc<super::secrets::LocalSecrets>>,
}

impl Cluster {
    pub fn new(
        node_id: NodeId,
        cluster_id: String,
        router: Arc<Router>,
        proposals: Arc<ProposalBatcher>,
        reader: ShardReader,
        transport: Arc<OnceLock<PeerTransport>>,
        fanout: Arc<Fanout>,
        meta: MetaState,
    ) -> Arc<Self> {
        Arc::new(Cluster {
            node_id,
            cluster_id,
            router,
            proposals,
            reader,
            forwarder: WriteForwarder::new(transport.clone()),
            transport,
            meta: RwLock::new(Arc::new(meta)),
            leaders: Mutex::new(HashMap::new()),
            fanout,
            relay: OnceLock::new(),
            transferring: Mutex::new(HashMap::new()),
            elections_held: Mutex::new(HashMap::new()),
            secrets: OnceLock::new(),
        })
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn transport(&self) -> Option<&PeerTransport> {
        self.transport.get()
    }

    pub fn meta(&self) -> Arc<MetaState> {
        self.meta.read().clone()
    }

    pub fn set_meta(&self, m: MetaState) {
        if let Some(s) = self.secrets.get() {
            s.observe(&m.secrets);
        }
        let mut cur = self.meta.write();
        if **cur != m {
            *cur = Arc::new(m);
        }
    }

    /// Whether `node` left the cluster (its certificate no longer counts).
    pub fn node_left(&self, node: NodeId) -> bool {
        self.meta
            .read()
            .nodes
            .get(&node)
            .is_some_and(|n| n.state == NodeState::Left)
    }

    /// The peer address of `node`: from the meta state, else from any group's Raft
    /// membership (a restarted node whose meta replica is behind, or was removed and is never
    /// caught up, still has to reach the meta leader to learn the meta state).
    pub fn address_of(&self, node: NodeId) -> Option<String> {
        if let Some(n) = self.meta.read().nodes.get(&node) {
            return Some(n.peer_addr.clone());
        }
        self.router.groups().find_map(|g| {
            let m = g.raft.metrics();
            let m = m.borrow();
            let addr = m.membership_config.membership().get_node(&node);
            addr.map(|n| n.addr.clone())
        })
    }

    /// The voters this node's replica of `group` knows of (possibly out of date).
    fn local_voters(&self, group: GroupId) -> Vec<NodeId> {
        let Ok(g) = self.router.group(group) else {
            return Vec::new();
        };
        let m = g.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().voter_ids().collect()
    }

    /// Ready to serve: this node is in the meta state, and every group it holds a wanted
    /// replica of knows its leader. A replica the placement moved away is left out: if it
    /// was down or cut off when it was removed, it never learns that and still sees itself
    /// as a voter without a leader.
    pub fn ready(&self) -> bool {
        if !self.meta.read().nodes.contains_key(&self.node_id) {
            return false;
        }
        self.router.groups().all(|g| {
            let m = g.raft.metrics();
            let m = m.borrow();
            !self.is_replica(&m) || !self.wanted_here(g.group) || m.current_leader.is_some()
        })
    }

    /// Whether the placement wants a replica of `group` on this node (yes while there is no
    /// placement for it yet).
    pub fn wanted_here(&self, group: GroupId) -> bool {
        self.meta
            .read()
            .replicas
            .get(&group)
            .is_none_or(|r| r.contains(&self.node_id))
    }

    /// Whether this node is a voter or learner in the membership `m` knows.
    fn is_replica(&self, m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>) -> bool {
        m.membership_config
            .membership()
            .get_node(&self.node_id)
            .is_some()
    }

    /// Whether this node's Raft of `group` is its leader right now.
    pub fn is_local_leader(&self, group: GroupId) -> bool {
        self.router
            .group(group)
            .map(|g| g.raft.metrics().borrow().state == ServerState::Leader)
            .unwrap_or(false)
    }

    /// On the leader of `group`: the other replicas whose log is within
    /// [`PUSH_BY_APPLY_LAG_MAX`] entries of the leader's. Their own apply pushes the group's
    /// messages to their connections, so the leader's fan-out skips them; a replica further
    /// behind (catching up, maybe through a snapshot whose messages are never applied one by
    /// one) still gets the pushes. Empty when this node does not lead `group`.
    pub fn replicas_pushing_by_apply(&self, group: GroupId) -> BTreeSet<NodeId> {
        let Ok(g) = self.router.group(group) else {
            return BTreeSet::new();
        };
        let m = g.raft.metrics();
        let m = m.borrow();
        let (Some(replication), Some(last)) = (m.replication.as_ref(), m.last_log_index) else {
            return BTreeSet::new();
        };
        replication
            .iter()
            .filter(|(n, matched)| {
                **n != self.node_id
                    && matched.is_some_and(|l| l.index + PUSH_BY_APPLY_LAG_MAX >= last)
            })
            .map(|(n, _)| *n)
            .collect()
    }

    /// The leader this node's replica of `group` knows of, if this node is a replica the
    /// placement wants (a displaced one may be stuck with a leader of long ago).
    fn local_leader_view(&self, group: GroupId) -> Option<NodeId> {
        if !self.wanted_here(group) {
            return None;
        }
        let g = self.router.group(group).ok()?;
        let m = g.raft.metrics();
        let m = m.borrow();
        if self.is_replica(&m) {
            m.current_leader
        } else {
            None
        }
    }

    fn pick_target(&self, group: GroupId, attempt: u32) -> NodeId {
        if let Some(l) = self.leaders.lock().get(&group) {
            return *l;
        }
        if let Some(l) = self.local_leader_view(group) {
            return l;
        }
        let meta = self.meta();
        let mut candidates: Vec<NodeId> = meta.replicas.get(&group).cloned().unwrap_or_default();
        if candidates.is_empty() {
            candidates = meta
                .nodes
                .values()
                .filter(|n| n.state != NodeState::Left)
                .map(|n| n.node_id)
                .collect();
        }
        if candidates.is_empty() {
            candidates = self.local_voters(group);
        }
        if candidates.is_empty() {
            return self.node_id;
        }
        candidates[attempt as usize % candidates.len()]
    }

    /// Serves `req` for `group` here (this node is, or believes it is, the leader).
    async fn serve(&self, group: GroupId, req: PeerRequest) -> PeerReply {
        match req {
            PeerRequest::Write(op) => PeerReply::Write(self.serve_write(group, op).await),
            PeerRequest::Meta(op) => PeerReply::Meta(self.serve_meta(op).await),
            PeerRequest::Query(q) => PeerReply::Query(self.serve_query(group, q).await),
            PeerRequest::DrainOutbox => PeerReply::Drained(self.serve_drain(group).await),
            _ => PeerReply::Error("not routable".into()),
        }
    }

    /// Sends `req` to the leader of `group`, following hints and retrying within the
    /// request deadline.
    ///
    /// Boxed: serving an outbox drain writes through `route` again (recursion).
    fn route(
        &self,
        group: GroupId,
        req: PeerRequest,
    ) -> futures_util::future::BoxFuture<'_, Result<PeerReply, RouteError>> {
        Box::pin(self.route_inner(group, req))
    }

    async fn route_inner(&self, group: GroupId, req: PeerRequest) -> Result<PeerReply, RouteError> {
        let deadline = Instant::now() + Duration::from_millis(REQUEST_TIMEOUT_MS);
        let trace_id = trace::current();
        let mut backoff_ms = RETRY_BACKOFF_MIN_MS;
        let mut last_error = RouteError::Unavailable {
            group,
            reason: "no leader reachable".into(),
        };
        for attempt in 0..ROUTE_ATTEMPTS_MAX {
            let target = self.pick_target(group, attempt);
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let reply = if target == self.node_id {
                // The local path has its own timeouts; the request's deadline bounds it too.
                match tokio::time::timeout(deadline - now, self.serve(group, req.clone())).await {
                    Ok(r) => Ok(r),
                    Err(_) => Err(RouteError::Timeout {
                        group,
                        timeout_ms: REQUEST_TIMEOUT_MS,
                    }),
                }
            } else {
                self.call_peer(target, group, &trace_id, req.clone(), deadline - now)
                    .await
            };
            let error = match reply {
                Ok(r) => match route_error_of(&r) {
                    None => {
                        self.leaders.lock().insert(group, target);
                        return Ok(r);
                    }
                    Some(e) => e.clone(),
                },
                Err(e) => e,
            };
            match &error {
                RouteError::NotLeader {
                    leader_hint: Some(h),
                    ..
                } if *h != target => {
                    self.leaders.lock().insert(group, *h);
                    last_error = error;
                    continue;
                }
                RouteError::Timeout { .. } => return Err(error),
                RouteError::NoSuchGroup(_) => return Err(error),
                _ => {}
            }
            self.leaders.lock().remove(&group);
            last_error = error;
            let pause = Duration::from_millis(backoff_ms);
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            backoff_ms = (backoff_ms * 2).min(RETRY_BACKOFF_MAX_MS);
        }
        Err(match last_error {
            e @ RouteError::Unavailable { .. } => e,
            other => RouteError::Unavailable {
                group,
                reason: other.to_string(),
            },
        })
    }

    async fn call_peer(
        &self,
        target: NodeId,
        group: GroupId,
        trace_id: &str,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerReply, RouteError> {
        let unavailable = |reason: String| RouteError::Unavailable { group, reason };
        let Some(t) = self.transport.get() else {
            return Err(unavailable("transport not started".into()));
        };
        let Some(addr) = self.address_of(target) else {
            return Err(unavailable(format!("no address for node {target}")));
        };
        if let PeerRequest::Write(op) = req {
            let write = ForwardedWrite {
                group,
                trace_id: trace_id.to_string(),
                op,
            };
            return self
                .forwarder
                .write(target, &addr, write, timeout)
                .await
                .map(PeerReply::Write)
                .map_err(|e| unavailable(format!("node {target}: {e}")));
        }
        t.call(target, &addr, group, trace_id, req, timeout)
            .await
            .map_err(|e| unavailable(format!("node {target}: {e}")))
    }

    /// Writes a shard command through the group's leader.
    pub async fn write(&self, group: GroupId, op: ShardOp) -> Result<ShardResponse, RouteError> {
        match self.route(group, PeerRequest::Write(op)).await? {
            PeerReply::Write(r) => r,
            other => Err(mismatch(group, &other)),
        }
    }

    /// Writes a meta command through the meta leader.
    pub async fn meta_write(&self, op: MetaOp) -> Result<Response, RouteError> {
        match self.route(META_GROUP, PeerRequest::Meta(op)).await? {
            PeerReply::Meta(r) => r,
            other => Err(mismatch(META_GROUP, &other)),
        }
    }

    /// A linearizable read of `group`, served by its leader.
    pub async fn query(&self, group: GroupId, q: ShardQuery) -> Result<QueryResult, RouteError> {
        #[cfg(feature = "fault-injection")]
        if crate::sabotage::on(crate::sabotage::Switch::FollowerReads)
            && matches!(q, ShardQuery::History { .. } | ShardQuery::After { .. })
            && self.router.group(group).is_ok()
        {
            return self
                .reader
                .query(group, q)
                .await
                .map_err(|e| RouteError::Unavailable {
                    group,
                    reason: format!("storage: {e}"),
                });
        }
        match self.route(group, PeerRequest::Query(q)).await? {
            PeerReply::Query(r) => r,
            other => Err(mismatch(group, &other)),
        }
    }

    /// Proposes `op` here (batched); `NotLeader` with a hint if another node leads.
    pub async fn serve_write(
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
        if let Err(r) = check_forwarded(self.fanout.shard_map(), group, &op) {
            return Ok(ShardResponse::Rejected(r));
        }
        #[cfg(feature = "fault-injection")]
        if let Some(r) = self.sabotaged_write(group, &op).await {
            return r;
        }
        self.proposals.write(group, op).await
    }

    pub async fn serve_meta(&self, op: MetaOp) -> Result<Response, RouteError> {
        if !self.is_local_leader(META_GROUP) || self.is_transferring(META_GROUP) {
            return Err(self.not_leader(META_GROUP));
        }
        self.router.write(META_GROUP, Request::Meta(op)).await
    }

    /// Reads `q` here after the group's read barrier (G7).
    pub async fn serve_query(
        &self,
        group: GroupId,
        q: ShardQuery,
    ) -> Result<QueryResult, RouteError> {
        // A read barrier sends heartbeats, which would keep followers from electing the
        // transfer's target.
        if self.is_transferring(group) {
            return Err(self.not_leader(group));
        }
        self.router.read_barrier(group).await?;
        super::meta::serve_query(&self.reader, group, q)
            .await
            .map_err(|e| RouteError::Unavailable {
                group,
                reason: format!("storage: {e}"),
            })
    }

    /// Hands leadership of `g` (led here) to `to`. openraft 0.9 has no leader transfer, so:
    /// the other voters stop campaigning for a moment, this node stops heartbeats and
    /// refuses new writes (`NotLeader`, retried by gateways), and `to`'s election timer fires
    /// first; everything is re-enabled after [`TRANSFER_WINDOW_MS`] whatever happened.
    pub async fn transfer_leadership(&self, g: &GroupHandle, to: NodeId, others: &[NodeId]) {
        let group = g.group;
        let hold = Duration::from_millis(TRANSFER_WINDOW_MS);
        for n in others {
            let _ = self
                .call_peer(
                    *n,
                    group,
                    "",
                    PeerRequest::HoldElections {
                        hold_ms: TRANSFER_WINDOW_MS,
                    },
                    hold,
                )
                .await;
        }
        self.transferring
            .lock()
            .insert(group, Instant::now() + hold);
        g.raft.runtime_config().heartbeat(false);
        let mut rx = g.raft.metrics();
        let handed_over = async {
            loop {
                let leader = rx.borrow().current_leader;
                if leader.is_some() && leader != Some(self.node_id) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(hold, handed_over).await;
        g.raft.runtime_config().heartbeat(true);
        self.transferring.lock().remove(&group);
        let leader = g.raft.metrics().borrow().current_leader;
        tracing::info!(group, to, ?leader, "leadership transfer done");
    }

    /// This node does not campaign in `group` for `hold_ms` (a transfer to another voter).
    pub fn hold_elections(&self, group: GroupId, hold_ms: u64) {
        let Ok(g) = self.router.group(group) else {
            return;
        };
        g.raft.runtime_config().elect(false);
        // The controller re-enables elections once the hold is over.
        self.elections_held
            .lock()
            .insert(group, Instant::now() + Duration::from_millis(hold_ms));
    }

    /// Campaigns for `group` now (the target of a leadership transfer).
    pub async fn elect_now(&self, group: GroupId) {
        if let Ok(g) = self.router.group(group) {
            let _ = g.raft.trigger().elect().await;
        }
    }

    /// Whether a transfer asked this node not to campaign in `group` right now.
    pub fn elections_held(&self, group: GroupId) -> bool {
        let held = self.elections_held.lock();
        held.get(&group)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// Asks the leader of `group` to deliver its outbox now.
    pub async fn drain_outbox_at_leader(&self, group: GroupId) -> Result<(), RouteError> {
        match self.route(group, PeerRequest::DrainOutbox).await? {
            PeerReply::Drained(r) => r,
            other => Err(mismatch(group, &other)),
        }
    }

    pub async fn serve_drain(&self, group: GroupId) -> Result<(), RouteError> {
        if !self.is_local_leader(group) {
            return Err(self.not_leader(group));
        }
        let Some(relay) = self.relay.get() else {
            return Ok(());
        };
        relay
            .drain_here(group)
            .await
            .map_err(|e| RouteError::Unavailable {
                group,
                reason: e.to_string(),
            })
    }

    fn is_transferring(&self, group: GroupId) -> bool {
        let t = self.transferring.lock();
        t.get(&group).is_some_and(|until| Instant::now() < *until)
    }

    fn not_leader(&self, group: GroupId) -> RouteError {
        RouteError::NotLeader {
            group,
            leader_hint: self.local_leader_view(group).filter(|l| *l != self.node_id),
        }
    }

    /// The meta state as the meta leader has it (linearizable).
    pub async fn read_meta(&self) -> Result<MetaState, RouteError> {
        match self
            .route(META_GROUP, PeerRequest::Query(ShardQuery::Meta))
            .await?
        {
            PeerReply::Query(Ok(QueryResult::Meta(m))) => Ok(m),
            PeerReply::Query(Err(e)) => Err(e),
            other => Err(mismatch(META_GROUP, &other)),
        }
    }

    /// Every group as this node's replica sees it.
    pub fn local_status(&self) -> NodeStatus {
        let groups = self
            .router
            .groups()
            .map(|g| GroupStatus::from_metrics(g.group, &g.raft.metrics().borrow()))
            .collect();
        NodeStatus {
            node_id: self.node_id,
            cluster_id: self.cluster_id.clone(),
            groups,
        }
    }

    /// Asks `node` for its status.
    pub async fn peer_status(
        &self,
        node: NodeId,
        timeout: Duration,
    ) -> Result<NodeStatus, RouteError> {
        if node == self.node_id {
            return Ok(self.local_status());
        }
        match self
            .call_peer(
                node,
                META_GROUP,
                &trace::current(),
                PeerRequest::Status,
                timeout,
            )
            .await?
        {
            PeerReply::Status(s) => Ok(s),
            other => Err(mismatch(META_GROUP, &other)),
        }
    }

    /// Pushes received from a peer.
    pub fn receive_push(self: &Arc<Self>, from: NodeId, items: Vec<PushItem>) {
        self.fanout.receive(self, from, items);
    }
}

fn route_error_of(r: &PeerReply) -> Option<&RouteError> {
    match r {
        PeerReply::Write(Err(e))
        | PeerReply::Meta(Err(e))
        | PeerReply::Query(Err(e))
        | PeerReply::Drained(Err(e)) => Some(e),
        _ => None,
    }
}

fn mismatch(group: GroupId, r: &PeerReply) -> RouteError {
    RouteError::Unavailable {
        group,
        reason: match r {
            PeerReply::Error(e) => e.clone(),
            _ => "reply does not match the request".into(),
        },
    }
}

/// What a leader checks of a shard command before proposing it: its fields
/// (`shard::validate::check_op`) and that `group` is the shard its key lives in (a command
/// routed to the wrong shard would write where no read looks).
pub fn check_forwarded(
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
