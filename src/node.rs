//! A node: opens storage, starts the meta group and the shard groups, creates the cluster
//! settings on first start, and serves the gateway until shutdown.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{meta, OutboxRelay, Router, ShardMap};
use crate::config::Config;
use crate::gateway::{self, auth::TokenAuthority, ratelimit::RateLimiter, Gateway, Hub};
use crate::metrics::Metrics;
use crate::protocol::TextLimits;
use crate::raft::{self, Applier, GroupHandle, NoPeers, RaftTimings};
use crate::shard::command::*;
use crate::shard::ShardReader;
use crate::storage::{SmTxn, StorageError, Store};

/// How long start-up waits for a group to elect its leader.
pub const LEADER_WAIT_MS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("auth: {0}")]
    Auth(#[from] gateway::auth::AuthError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("cluster settings missing after initialization")]
    NoSettings,
}

/// The chat and meta logic plugged into every group's state machine; after a batch is
/// written, committed messages and receipts go to the hub (G4: only applied entries are
/// pushed).
struct NodeApplier {
    hub: Arc<Hub>,
}

impl Applier for NodeApplier {
    fn apply(&self, txn: &mut SmTxn<'_>, req: &Request) -> Result<Response, StorageError> {
        match req {
            Request::Meta(op) => meta::apply_meta(txn, op),
            Request::Shard(op) => Ok(Response::Shard(crate::shard::apply_shard(txn, op)?)),
            Request::ShardBatch(ops) => ops
                .iter()
                .map(|op| crate::shard::apply_shard(txn, op))
                .collect::<Result<Vec<_>, _>>()
                .map(Response::ShardBatch),
        }
    }

    fn after_write(&self, _group: GroupId, responses: &[Response]) {
        let shard_responses = responses.iter().flat_map(|r| match r {
            Response::Shard(one) => std::slice::from_ref(one),
            Response::ShardBatch(many) => many.as_slice(),
            _ => &[],
        });
        for r in shard_responses {
            match r {
                ShardResponse::Ack {
                    pushed: Some(p), ..
                } => {
                    self.hub.push_message(p);
                    // Sending moved the sender's own read watermark to the message.
                    let m = &p.message;
                    self.hub.push_receipt(&ReceiptState {
                        conversation_id: m.conversation_id.clone(),
                        user_id: m.sender_id.clone(),
                        delivered_seq: m.seq,
                        read_seq: m.seq,
                        changed: true,
                        recipients: p.recipients.clone(),
                    });
                }
                ShardResponse::Membership {
                    pushed: Some(p), ..
                } => self.hub.push_message(p),
                ShardResponse::Receipt(rs) => self.hub.push_receipt(rs),
                _ => {}
            }
        }
    }
}

/// A running node.
pub struct Node {
    pub gateway: Arc<Gateway>,
    pub settings: ClusterSettings,
    pub store: Arc<Store>,
}

async fn wait_for_leader(g: &GroupHandle) -> Result<(), NodeError> {
    let mut rx = g.raft.metrics();
    let wait = async {
        loop {
            if rx.borrow().current_leader.is_some() {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(LEADER_WAIT_MS), wait)
        .await
        .map_err(|_| NodeError::Raft(format!("group {} elected no leader", g.group)))
}

fn random_secret() -> Vec<u8> {
    (0..32).map(|_| rand::random::<u8>()).collect()
}

impl Node {
    /// Starts every group of this node and builds the gateway (not yet listening).
    pub async fn start(config: &Config) -> Result<Node, NodeError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)?;
        let store = Store::open(&config.data_dir.join("db"))?;
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(config.limits.devices_per_user as usize, metrics.clone());
        hub.spawn_sweeper();
        let applier: Arc<dyn Applier> = Arc::new(NodeApplier { hub: hub.clone() });
        let network = Arc::new(NoPeers);
        let timings = RaftTimings::default();
        let node_id = config.node_id;
        let addr = config.listen.to_string();

        let start_group = |group: GroupId| {
            let (store, applier, network, timings) = (
                store.clone(),
                applier.clone(),
                network.clone(),
                timings.clone(),
            );
            let addr = addr.clone();
            async move {
                let g = raft::start_group(node_id, group, store, applier, network, &timings)
                    .await
                    .map_err(|e| NodeError::Raft(e.to_string()))?;
                raft::initialize_single(&g, node_id, addr)
                    .await
                    .map_err(|e| NodeError::Raft(e.to_string()))?;
                wait_for_leader(&g).await?;
                Ok::<_, NodeError>(g)
            }
        };

        let meta_group = start_group(META_GROUP).await?;
        let settings = match meta::read_settings(&store)? {
            Some(s) => s,
            None => {
                let proposed = ClusterSettings {
                    cluster_id: ulid::Ulid::new().to_string(),
                    shards: config.shards,
                    jwt_secret: random_secret(),
                    created_ts: gateway::now_ms(),
                };
                let resp = meta_group
                    .raft
                    .client_write(Request::Meta(MetaOp::InitCluster(proposed)))
                    .await
                    .map_err(|e| NodeError::Raft(e.to_string()))?;
                match resp.data {
                    Response::Meta(s) => s,
                    _ => return Err(NodeError::NoSettings),
                }
            }
        };
        if settings.shards != config.shards {
            tracing::warn!(
                stored = settings.shards,
                configured = config.shards,
                "shard count is fixed at cluster creation; using the stored value"
            );
        }
        let shard_map = Arc::new(ShardMap::new(settings.shards));
        let mut groups = vec![meta_group];
        for group in shard_map.groups() {
            groups.push(start_group(group).await?);
        }
        let router = Arc::new(Router::new(groups));
        let reader = ShardReader::new(store.clone());
        let proposals = crate::cluster::ProposalBatcher::start(router.clone(), shard_map.groups());
        let relay = OutboxRelay::new(router.clone(), shard_map.clone(), reader.clone());
        relay.spawn_background();
        let tokens = TokenAuthority::new(
            &settings.jwt_secret,
            config.auth.token_ttl_secs,
            &config.auth.external,
        )?;
        let limits = config.limits.clone();
        let synced_store = store.clone();
        let gateway = Arc::new(Gateway {
            router,
            proposals,
            shard_map,
            reader,
            hub,
            tokens,
            text_limits: TextLimits {
                max_body_chars: limits.max_body_chars,
                max_frame_bytes: limits.max_frame_bytes,
            },
            user_rate: RateLimiter::per_minute(limits.user_messages_per_minute),
            conversation_rate: RateLimiter::per_minute(limits.conversation_messages_per_minute),
            connect_rate: RateLimiter::per_second(limits.new_connections_per_second),
            connections: Arc::new(tokio::sync::Semaphore::new(limits.connections_max)),
            limits,
            metrics,
            relay,
            receipts: Default::default(),
            password_hashing: tokio::sync::Semaphore::new(gateway::PASSWORD_HASHES_IN_FLIGHT_MAX),
            synced_writes: Box::new(move || synced_store.synced_writes()),
        });
        gateway::receipts::ReceiptBatcher::spawn_flusher(&gateway);
        Ok(Node {
            gateway,
            settings,
            store,
        })
    }

    /// Serves HTTP + WebSocket on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), NodeError> {
        let app = gateway::http::routes(self.gateway.clone());
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }

    /// Stops every Raft group (flushes nothing extra: acknowledged writes are already synced).
    pub async fn shutdown(&self) {
        for g in self.gateway.router.groups() {
            let _ = g.raft.shutdown().await;
        }
    }
}
