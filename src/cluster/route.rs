//! `Cluster`: how a gateway reaches any group, wherever its leader is.
//!
//! A write, meta write or read goes to the group's leader: this node if it leads the group
//! (served by cluster/serve.rs: proposal batcher / read barrier here), otherwise over the
//! transport (cluster/forward.rs) to the node the leader cache (cluster/leader_cache.rs)
//! names, refreshed by `NotLeader { leader_hint }` answers and by trying the group's
//! replicas in turn. Retries stay within the request's deadline; after it the answer is
//! `unavailable` (retryable). Sends are idempotent by `client_msg_id`, so a forwarded send
//! that may have been applied is safe to retry.
//!
//! The rest of `Cluster` lives beside this file, one concern each: leadership transfer
//! (transfer.rs), status and readiness (status.rs).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::forward::WriteForwarder;
use super::leader_cache::LeaderCache;
use super::local_groups::REQUEST_TIMEOUT_MS;
use super::meta_view::MetaView;
use super::peer::{NodeId, PeerReply, PeerRequest, PeerTransport};
use super::push::{PushItem, PushSink};
use super::secrets::LocalSecrets;
use super::transfer::Transfers;
use super::{trace, LocalGroups, ProposalBatcher, RouteError, UnavailableCause};
use crate::cluster::command::QueryResult;
use crate::cluster::command::*;
use crate::ids::*;
use crate::shard::command::*;
use crate::shard::query::ShardQuery;
use crate::shard::ShardReader;
use crate::shutdown::Shutdown;

/// First pause after a failed attempt; doubles up to [`RETRY_BACKOFF_MAX_MS`].
pub(crate) const RETRY_BACKOFF_MIN_MS: u64 = 20;
pub(crate) const RETRY_BACKOFF_MAX_MS: u64 = 400;
/// Most hops one request follows (leader hints and retries) before giving up.
pub(crate) const ROUTE_ATTEMPTS_MAX: u32 = 64;

/// What a `Cluster` is made of; every part exists before it (see `Node::start`).
pub(crate) struct ClusterParts {
    pub(crate) node_id: NodeId,
    pub(crate) cluster_id: String,
    pub(crate) groups: Arc<LocalGroups>,
    pub(crate) proposals: Arc<ProposalBatcher>,
    pub(crate) reader: ShardReader,
    pub(crate) transport: PeerTransport,
    pub(crate) meta: MetaView,
    pub(crate) shard_map: Arc<super::ShardMap>,
    /// Where pushes received from peers go (delivery).
    pub(crate) pushes: Arc<dyn PushSink>,
    pub(crate) secrets: Arc<LocalSecrets>,
    pub(crate) shutdown: Shutdown,
}

pub(crate) struct Cluster {
    pub(crate) node_id: NodeId,
    pub(crate) cluster_id: String,
    pub(super) groups: Arc<LocalGroups>,
    pub(super) proposals: Arc<ProposalBatcher>,
    pub(super) reader: ShardReader,
    transport: PeerTransport,
    /// The latest meta state this node saw (node addresses, desired placement).
    pub(super) meta: MetaView,
    leaders: LeaderCache,
    pub(super) shard_map: Arc<super::ShardMap>,
    /// Where pushes received from peers go (delivery).
    pub(super) pushes: Arc<dyn PushSink>,
    pub(super) forwarder: WriteForwarder,
    pub(super) transfers: Transfers,
    /// Set once the relay exists: the relay writes through this cluster, and a peer's
    /// `DrainOutbox` reaches the relay through it (the one cycle left; see `Node::start`).
    pub(crate) relay: OnceLock<Arc<super::OutboxRelay>>,
    /// The cluster's secrets as this node holds them; fed by every meta state set here.
    secrets: Arc<LocalSecrets>,
    shutdown: Shutdown,
}

impl Cluster {
    pub(crate) fn new(p: ClusterParts) -> Arc<Self> {
        Arc::new(Cluster {
            node_id: p.node_id,
            cluster_id: p.cluster_id,
            groups: p.groups,
            proposals: p.proposals,
            reader: p.reader,
            forwarder: WriteForwarder::new(p.transport.clone(), p.shutdown.clone()),
            transport: p.transport,
            meta: p.meta,
            leaders: LeaderCache::default(),
            shard_map: p.shard_map,
            pushes: p.pushes,
            relay: OnceLock::new(),
            transfers: Transfers::default(),
            secrets: p.secrets,
            shutdown: p.shutdown,
        })
    }

    /// The groups this node holds.
    pub(crate) fn local_groups(&self) -> &Arc<LocalGroups> {
        &self.groups
    }

    pub(crate) fn transport(&self) -> &PeerTransport {
        &self.transport
    }

    /// The node's stop signal (every loop working for this cluster listens to it).
    pub(crate) fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    pub(crate) fn meta(&self) -> Arc<MetaState> {
        self.meta.get()
    }

    /// Takes `m` as the latest meta state, and its secrets (at once, for the caller's next
    /// step; states the applier publishes reach the secrets through `Node`'s follower).
    pub(crate) fn set_meta(&self, m: MetaState) {
        self.secrets.observe(&m.secrets);
        self.meta.publish(m);
    }

    /// The peer address of `node`: from the meta state, else from any group's Raft
    /// membership (a restarted node whose meta replica is behind, or was removed and is never
    /// caught up, still has to reach the meta leader to learn the meta state).
    pub(crate) fn address_of(&self, node: NodeId) -> Option<String> {
        if let Some(addr) = self.meta.peer_addr(node) {
            return Some(addr);
        }
        self.groups.groups().find_map(|g| {
            let m = g.raft.metrics();
            let m = m.borrow();
            let addr = m.membership_config.membership().get_node(&node);
            addr.map(|n| n.addr.clone())
        })
    }

    fn pick_target(&self, group: GroupId, attempt: u32) -> NodeId {
        if let Some(l) = self.leaders.get(group) {
            return l;
        }
        // A replica may name itself as leader from its persisted vote while it is not
        // leading (a restarted node that was removed): trusting that would send every
        // attempt to this node's own "not leader" and never ask anyone else.
        if let Some(l) = self
            .local_leader_view(group)
            .filter(|l| *l != self.node_id || self.is_local_leader(group))
        {
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
        let mut last_error = RouteError::unavailable(group, UnavailableCause::NoLeaderReachable);
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
                        self.leaders.learn(group, target);
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
                    self.leaders.learn(group, *h);
                    last_error = error;
                    continue;
                }
                RouteError::Timeout { .. } => return Err(error),
                RouteError::NoSuchGroup(_) => return Err(error),
                _ => {}
            }
            self.leaders.forget(group);
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
            other => RouteError::unavailable(group, UnavailableCause::GaveUp(Box::new(other))),
        })
    }

    /// Writes a shard command through the group's leader.
    pub(crate) async fn write(
        &self,
        group: GroupId,
        op: ShardOp,
    ) -> Result<ShardResponse, RouteError> {
        match self.route(group, PeerRequest::Write(op)).await? {
            PeerReply::Write(r) => r,
            other => Err(mismatch(group, &other)),
        }
    }

    /// Writes a meta command through the meta leader.
    pub(crate) async fn meta_write(&self, op: MetaOp) -> Result<Response, RouteError> {
        match self.route(META_GROUP, PeerRequest::Meta(op)).await? {
            PeerReply::Meta(r) => r,
            other => Err(mismatch(META_GROUP, &other)),
        }
    }

    /// A linearizable read of `group`, served by its leader.
    pub(crate) async fn query(
        &self,
        group: GroupId,
        q: ShardQuery,
    ) -> Result<QueryResult, RouteError> {
        crate::sabotage!(FollowerReads => {
            if matches!(q, ShardQuery::History { .. } | ShardQuery::After { .. })
                && self.groups.group(group).is_ok()
            {
                return self.reader.query(group, q).await.map_err(|e| {
                    RouteError::unavailable(group, UnavailableCause::Storage(e.to_string()))
                });
            }
        });
        match self.route(group, PeerRequest::Query(q)).await? {
            PeerReply::Query(r) => r,
            other => Err(mismatch(group, &other)),
        }
    }

    /// Asks the leader of `group` to deliver its outbox now.
    pub(crate) async fn drain_outbox_at_leader(&self, group: GroupId) -> Result<(), RouteError> {
        match self.route(group, PeerRequest::DrainOutbox).await? {
            PeerReply::Drained(r) => r,
            other => Err(mismatch(group, &other)),
        }
    }

    /// The meta state as the meta leader has it (linearizable).
    pub(crate) async fn read_meta(&self) -> Result<MetaState, RouteError> {
        match self
            .route(META_GROUP, PeerRequest::Query(ShardQuery::Meta))
            .await?
        {
            PeerReply::Query(Ok(QueryResult::Meta(m))) => Ok(m),
            PeerReply::Query(Err(e)) => Err(e),
            other => Err(mismatch(META_GROUP, &other)),
        }
    }

    /// Pushes received from a peer.
    pub(crate) fn receive_push(&self, from: NodeId, items: Vec<PushItem>) {
        self.pushes.receive(from, items);
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

/// `unavailable` for a reply of another kind than the request (or a peer's refusal).
pub(super) fn mismatch(group: GroupId, r: &PeerReply) -> RouteError {
    let cause = match r {
        PeerReply::Error(e) => UnavailableCause::PeerRefused(e.clone()),
        _ => UnavailableCause::ReplyMismatch,
    };
    RouteError::unavailable(group, cause)
}
