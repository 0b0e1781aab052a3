//! A node: opens storage, starts the meta group and the shard groups, creates the cluster
//! settings on first start, and serves the gateway until shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::cluster::command::*;
use crate::cluster::fanout::{Fanout, PushItem};
use crate::cluster::identity::{write_private, Identity, JoinWelcome, JOIN_TOKEN_FILE};
use crate::cluster::peer::{PeerService, PeerTransport, RaftNet};
use crate::cluster::secrets::{generate_admin_token, LocalSecrets};
use crate::cluster::{meta, Cluster, Controller, OutboxRelay, Router, ShardMap};
use crate::config::Config;
use crate::gateway::client_tls::ReloadableCert;
use crate::gateway::listener::{self, ListenerLimits};
use crate::gateway::{self, auth::TokenAuthority, ratelimit::RateLimiter, Gateway, Hub};
use crate::ids::{GroupId, META_GROUP};
use crate::metrics::Metrics;
use crate::protocol::TextLimits;
use crate::raft::{self, Applier, RaftTimings};
use crate::shard::command::*;
use crate::shard::ShardReader;
use crate::storage::{SmTxn, StorageError, Store};
use crate::transport::{
    ClusterCa, JoinAdmitter, JoinConfig, JoinGrant, JoinRequest, JoinToken, TransportConfig,
    TransportError,
};

/// Mode of the data dir and of RocksDB's directory in it: the owner only.
pub const DATA_DIR_MODE: u32 = 0o700;

/// How long start-up waits for a group to elect its leader.
pub const LEADER_WAIT_MS: u64 = 10_000;
/// How long a joiner keeps trying to reach its seed.
pub const JOIN_WAIT_MS: u64 = 60_000;
/// One join attempt.
pub const JOIN_ATTEMPT_TIMEOUT_MS: u64 = 10_000;
/// The node that creates a cluster.
pub const CREATOR_NODE_ID: u64 = 1;

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
    #[error("join: {0}")]
    Join(String),
    #[error("cluster identity: {0}")]
    Identity(#[from] crate::cluster::identity::IdentityError),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    // listener
    #[error("client tls: {0}")]
    ClientTls(#[from] gateway::client_tls::ClientTlsError),
}

/// The chat and meta logic plugged into every group's state machine; after a batch is
/// written, committed messages and receipts go to the gateways (G4: only applied entries are
/// pushed): to this node's connections always, to the other nodes' when this node leads
/// the group.
struct NodeApplier {
    cluster: Arc<OnceLock<Arc<Cluster>>>,
}

impl Applier<TypeConfig> for NodeApplier {
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

    fn after_write(&self, group: GroupId, responses: &[Response]) {
        // During start-up replay nobody is connected yet.
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        let mut items = Vec::new();
        for r in responses {
            match r {
                Response::MetaState { state, .. } => cluster.set_meta(state.clone()),
                Response::Shard(one) => push_items(one, &mut items),
                Response::ShardBatch(many) => many.iter().for_each(|r| push_items(r, &mut items)),
                _ => {}
            }
        }
        if items.is_empty() {
            return;
        }
        if cluster.is_local_leader(group) {
            // Replicas that keep up push from their own apply: only the other gateways
            // need the leader's copy.
            let skip = cluster.replicas_pushing_by_apply(group);
            cluster.fanout.broadcast_except(cluster, &items, &skip);
        }
        cluster.fanout.receive(cluster, cluster.node_id, items);
    }
}

/// What a committed shard response pushes to clients.
fn push_items(r: &ShardResponse, items: &mut Vec<PushItem>) {
    match r {
        ShardResponse::Ack {
            pushed: Some(p), ..
        } => {
            // Sending moved the sender's own read watermark to the message.
            let m = &p.message;
            let receipt = ReceiptState {
                conversation_id: m.conversation_id.clone(),
                user_id: m.sender_id.clone(),
                delivered_seq: m.seq,
                read_seq: m.seq,
                changed: true,
                recipients: p.recipients.clone(),
            };
            items.push(PushItem::Message(p.clone()));
            items.push(PushItem::Receipt(receipt));
        }
        ShardResponse::Membership {
            pushed: Some(p), ..
        } => items.push(PushItem::Message(p.clone())),
        ShardResponse::Receipt(rs) => items.push(PushItem::Receipt(rs.clone())),
        _ => {}
    }
}

/// Admits joiners: a node id from the meta group, and the settings and meta state as the
/// welcome.
struct Admitter {
    cluster: Arc<Cluster>,
    settings: ClusterSettings,
}

impl JoinAdmitter for Admitter {
    fn admit(
        &self,
        req: JoinRequest,
    ) -> futures_util::future::BoxFuture<'static, Result<(u64, Vec<u8>), String>> {
        let cluster = self.cluster.clone();
        let settings = self.settings.clone();
        Box::pin(async move {
            // The transport checked the secret against this node's copy, which may be behind
            // a rotation: check it against the meta leader's (a rotated-out secret admits
            // nobody, on any node).
            let meta = cluster.read_meta().await.map_err(|e| e.to_string())?;
            if meta.secrets.is_initialized() {
                if !crate::cluster::secrets::token_matches_bytes(
                    &meta.secrets.join_secret.0,
                    &req.secret,
                ) {
                    return Err("invalid join secret".into());
                }
                cluster.set_meta(meta);
            }
            let resp = cluster
                .meta_write(MetaOp::AddNode {
                    peer_addr: req.peer_addr.clone(),
                    client_addr: req.client_addr.clone(),
                })
                .await
                .map_err(|e| e.to_string())?;
            let Response::MetaState {
                state,
                node_id: Some(id),
            } = resp
            else {
                return Err("the cluster is full".into());
            };
            tracing::info!(node = id, peer = %req.peer_addr, "admitted a node");
            let welcome = JoinWelcome {
                settings,
                meta: state,
            };
            let app = crate::codec::encode(&welcome).map_err(|e| e.to_string())?;
            Ok((id, app))
        })
    }
}

/// A running node.
pub struct Node {
    pub gateway: Arc<Gateway>,
    pub settings: ClusterSettings,
    pub store: Arc<Store>,
    pub cluster: Arc<Cluster>,
    pub controller: Arc<Controller>,
    pub identity: Identity,
    /// The address other nodes dial (QUIC).
    pub peer_addr: String,
    // listener: how the client port is served.
    /// The client port's certificate when it serves TLS (reloaded on SIGHUP).
    pub client_tls: Option<Arc<ReloadableCert>>,
    listener_limits: ListenerLimits,
    /// `/metrics` is on its own listener (`metrics_listen`), not on the client port.
    metrics_separate: bool,
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

/// Pause between the creating node's attempts to re-admit itself after a restart.
const SELF_ADMIT_RETRY_MS: u64 = 1_000;
/// Attempts before giving up (the controller's meta refresh also shows the node then).
const SELF_ADMIT_ATTEMPTS_MAX: u32 = 600;

async fn admit_self(cluster: Arc<Cluster>, admit: MetaOp) {
    for _ in 0..SELF_ADMIT_ATTEMPTS_MAX {
        match cluster.meta_write(admit.clone()).await {
            Ok(_) => return,
            Err(e) => tracing::debug!("re-admitting this node: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(SELF_ADMIT_RETRY_MS)).await;
    }
    tracing::warn!("could not re-admit this node to the meta state");
}

/// Adds the replicated secrets to a cluster created before they existed: the join secret it
/// was created with and a new admin token (first wins, so a retry changes nothing).
async fn init_secrets(cluster: Arc<Cluster>, join_secret: [u8; 32]) {
    let op = MetaOp::InitSecrets(ClusterSecrets {
        join_secret: SecretBytes(join_secret.to_vec()),
        join_epoch: 0,
        admin_token: generate_admin_token(),
    });
    for _ in 0..SELF_ADMIT_ATTEMPTS_MAX {
        match cluster.meta_write(op.clone()).await {
            Ok(Response::MetaState { state, .. }) => {
                cluster.set_meta(state);
                tracing::info!("created the cluster's admin token");
                return;
            }
            Ok(_) => return,
            Err(e) => tracing::debug!("initializing the cluster's secrets: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(SELF_ADMIT_RETRY_MS)).await;
    }
    tracing::warn!("could not initialize the cluster's secrets");
}

/// Creates `dir` (and its parents) and makes it private: mode [`DATA_DIR_MODE`] whatever the
/// umask, also when it existed with a wider mode.
fn create_private_dir(dir: &std::path::Path) -> Result<(), NodeError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DATA_DIR_MODE)
            .create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode != DATA_DIR_MODE {
            if mode & 0o077 != 0 {
                tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), "data dir was readable by others; making it private (0700)");
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DATA_DIR_MODE))?;
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)?;
    Ok(())
}

fn random_secret() -> Vec<u8> {
    (0..32).map(|_| rand::random::<u8>()).collect()
}

/// The address to announce for a bound `addr`: an unspecified IP becomes loopback.
fn announce(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        tracing::warn!(%addr, "listening on all interfaces: announcing 127.0.0.1; set advertise_* for other hosts");
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port()).to_string()
    } else {
        addr.to_string()
    }
}

/// `peer_listen` with a concrete port (port 0 picks a free one now, so that it can be
/// announced before the transport binds it).
fn concrete_peer_listen(addr: SocketAddr) -> Result<SocketAddr, NodeError> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let probe = std::net::UdpSocket::bind(addr)?;
    Ok(probe.local_addr()?)
}

fn raft_err(e: impl std::fmt::Display) -> NodeError {
    NodeError::Raft(e.to_string())
}

/// Joins the cluster at `seed` with `token`, retrying while the seed is not up yet.
async fn join_cluster(
    seed: &str,
    token: &str,
    peer_addr: &str,
    client_addr: &str,
) -> Result<JoinGrant, NodeError> {
    let token: JoinToken = token
        .trim()
        .parse()
        .map_err(|e| NodeError::Join(format!("bad token: {e}")))?;
    let deadline = std::time::Instant::now() + Duration::from_millis(JOIN_WAIT_MS);
    loop {
        let attempt = crate::transport::join(
            seed,
            &token,
            peer_addr.to_string(),
            client_addr.to_string(),
            Duration::from_millis(JOIN_ATTEMPT_TIMEOUT_MS),
        )
        .await;
        match attempt {
            Ok(grant) => return Ok(grant),
            Err(e @ (TransportError::Unreachable(_) | TransportError::Timeout))
                if std::time::Instant::now() < deadline =>
            {
                tracing::info!(seed, error = %e, "seed not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(NodeError::Join(e.to_string())),
        }
    }
}

impl Node {
    /// Starts every group of this node, joins or creates the cluster on first start, binds
    /// the peer transport and builds the gateway (not yet listening for clients).
    pub async fn start(config: &Config) -> Result<Node, NodeError> {
        config.validate()?;
        // A certificate that does not load stops the start before anything else happens.
        let client_tls = match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert), Some(key)) => Some(ReloadableCert::load(cert, key)?),
            _ => None,
        };
        create_private_dir(&config.data_dir)?;
        let peer_listen = concrete_peer_listen(config.peer_listen)?;
        let peer_addr = config
            .advertise_peer
            .clone()
            .unwrap_or_else(|| announce(peer_listen));
        let client_addr = config
            .advertise_client
            .clone()
            .unwrap_or_else(|| announce(config.listen));

        // Who we are: from the data dir, or by joining, or (below) by creating.
        let mut identity = Identity::load(&config.data_dir)?;
        let mut meta_seed = MetaState::default();
        if identity.is_none() {
            if let (Some(seed), Some(token)) = (&config.join, &config.token) {
                let grant = join_cluster(seed, token, &peer_addr, &client_addr).await?;
                let (id, meta) = Identity::from_grant(&grant)?;
                id.save(&config.data_dir)?;
                write_private(
                    &config.data_dir.join(JOIN_TOKEN_FILE),
                    token.trim().as_bytes(),
                )?;
                tracing::info!(node_id = id.node_id, cluster_id = %id.cluster_id, "joined the cluster");
                identity = Some(id);
                meta_seed = meta;
            }
        } else if config.join.is_some() {
            tracing::info!("this data dir already belongs to a cluster; --join ignored");
        }

        let db_dir = config.data_dir.join("db");
        create_private_dir(&db_dir)?;
        let store = Store::open(&db_dir)?;
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(config.limits.devices_per_user as usize, metrics.clone());
        hub.spawn_sweeper();
        let cluster_cell: Arc<OnceLock<Arc<Cluster>>> = Arc::new(OnceLock::new());
        let applier: Arc<dyn Applier<TypeConfig>> = Arc::new(NodeApplier {
            cluster: cluster_cell.clone(),
        });
        let transport_cell: Arc<OnceLock<PeerTransport>> = Arc::new(OnceLock::new());
        let addr_cell = cluster_cell.clone();
        let network = Arc::new(RaftNet {
            transport: transport_cell.clone(),
            address_of: Box::new(move |n| addr_cell.get().and_then(|c| c.address_of(n))),
        });
        let timings = RaftTimings::default();
        let node_id = identity.as_ref().map_or(CREATOR_NODE_ID, |i| i.node_id);
        let initialize = identity.as_ref().is_none_or(|i| i.creator);

        let start_group = |group: GroupId| {
            let (store, applier, network, timings) = (
                store.clone(),
                applier.clone(),
                network.clone() as Arc<dyn crate::raft::PeerNetwork<TypeConfig>>,
                timings.clone(),
            );
            let peer_addr = peer_addr.clone();
            async move {
                let g = raft::start_group(node_id, group, store, applier, network, &timings)
                    .await
                    .map_err(raft_err)?;
                // Only the creating node ever initializes a group; joiners receive theirs.
                if initialize {
                    raft::initialize_single(&g, node_id, peer_addr)
                        .await
                        .map_err(raft_err)?;
                }
                Ok::<_, NodeError>(g)
            }
        };

        let meta_group = start_group(META_GROUP).await?;
        let creating = identity.is_none();
        let identity = match identity {
            Some(i) => i,
            None => {
                // Creating a cluster (or adopting a data dir from before clustering).
                wait_for_leader(&meta_group).await?;
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
                            .map_err(raft_err)?;
                        match resp.data {
                            Response::Meta(s) => s,
                            _ => return Err(NodeError::NoSettings),
                        }
                    }
                };
                let ca = ClusterCa::generate(&settings.cluster_id)?;
                let credentials = ca.issue_node(CREATOR_NODE_ID)?;
                let mut token = JoinToken::generate(&ca);
                // The admin token and first join secret, replicated (first wins: after a
                // crash half-way through creation the stored ones are kept).
                let proposed = ClusterSecrets {
                    join_secret: SecretBytes(token.secret.to_vec()),
                    join_epoch: 0,
                    admin_token: generate_admin_token(),
                };
                let resp = meta_group
                    .raft
                    .client_write(Request::Meta(MetaOp::InitSecrets(proposed)))
                    .await
                    .map_err(raft_err)?;
                if let Response::MetaState { state, .. } = resp.data {
                    if let Ok(s) = state.secrets.join_secret.0.as_slice().try_into() {
                        token.secret = s;
                    }
                }
                let id = Identity {
                    cluster_id: settings.cluster_id.clone(),
                    node_id: CREATOR_NODE_ID,
                    creator: true,
                    credentials,
                    ca_key_pem: ca.key_pem().to_string(),
                    join_secret: token.secret.to_vec(),
                    settings,
                };
                id.save(&config.data_dir)?;
                write_private(
                    &config.data_dir.join(JOIN_TOKEN_FILE),
                    token.to_string().as_bytes(),
                )?;
                id
            }
        };
        let settings = identity.settings.clone();
        if settings.shards != config.shards {
            tracing::debug!(
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
        let fanout = Fanout::new(node_id, hub.clone(), shard_map.clone());
        if meta_seed.nodes.is_empty() {
            // A restart: the local meta replica's state (possibly behind; the controller
            // refreshes it from the meta leader).
            meta_seed = meta::read_state(&store)?;
        }
        if meta_seed
            .nodes
            .get(&node_id)
            .is_some_and(|n| n.state == NodeState::Left)
        {
            return Err(NodeError::Join(format!(
                "node {node_id} left the cluster and cannot come back under its old identity; \
                 start with an empty data dir and --join to add this machine as a new node"
            )));
        }
        let stored_secret: [u8; 32] = identity
            .join_secret
            .as_slice()
            .try_into()
            .map_err(|_| NodeError::Join("stored join secret is malformed".into()))?;
        let secrets = LocalSecrets::new(
            &config.data_dir,
            identity.credentials.ca_fingerprint()?,
            stored_secret,
        );
        secrets.observe(&meta_seed.secrets);
        if secrets.known() {
            // Otherwise the files stay as they are until the meta state is refreshed.
            secrets.write_files()?;
        }
        secrets.spawn_file_writer();
        let secrets_missing = !meta_seed.secrets.is_initialized();
        let cluster = Cluster::new(
            node_id,
            identity.cluster_id.clone(),
            router.clone(),
            proposals.clone(),
            reader.clone(),
            transport_cell.clone(),
            fanout,
            meta_seed,
        );
        let _ = cluster_cell.set(cluster.clone());
        let _ = cluster.secrets.set(secrets.clone());
        // Presence crosses nodes without touching Raft (G9).
        let weak = Arc::downgrade(&cluster);
        hub.set_presence_out(Box::new(move |changes| {
            let Some(c) = weak.upgrade() else { return };
            let items: Vec<PushItem> = changes
                .into_iter()
                .map(|(user_id, online, last_seen)| PushItem::Presence {
                    user_id,
                    online,
                    last_seen,
                })
                .collect();
            c.fanout.broadcast(&c, &items);
        }));

        // The peer transport: mutual TLS with the cluster's CA; any member admits joiners.
        let ca = Arc::new(ClusterCa::from_pem(
            &identity.cluster_id,
            &identity.credentials.ca_cert_pem,
            &identity.ca_key_pem,
        )?);
        let mut tcfg = TransportConfig::new(
            peer_listen,
            identity.cluster_id.clone(),
            node_id,
            identity.credentials.clone(),
        );
        tcfg.join = Some(JoinConfig {
            admitter: Arc::new(Admitter {
                cluster: cluster.clone(),
                settings: settings.clone(),
            }),
            ca,
            secret: secrets.join_secret(),
        });
        // A node that left is refused even though its certificate is valid.
        let weak = Arc::downgrade(&cluster);
        tcfg.revoked = Some(Arc::new(move |id| {
            weak.upgrade().is_some_and(|c| c.node_left(id))
        }));
        let transport = PeerTransport::bind(
            tcfg,
            Arc::new(PeerService {
                cluster: cluster.clone(),
            }),
        )?;
        let _ = transport_cell.set(transport);

        // The creating node admits itself (id 1). AddNode is idempotent by peer address.
        if identity.creator && !meta::read_state(&store)?.nodes.contains_key(&node_id) {
            let admit = MetaOp::AddNode {
                peer_addr: peer_addr.clone(),
                client_addr: client_addr.clone(),
            };
            if creating {
                wait_for_leader(&router.group(META_GROUP).map_err(raft_err)?.clone()).await?;
                cluster.meta_write(admit).await.map_err(raft_err)?;
                cluster.set_meta(meta::read_state(&store)?);
            } else {
                // A restart after a crash: the local meta replica may be behind what was
                // committed (its state machine skips the WAL), and the meta group may have
                // no leader yet. Starting must not depend on either.
                tokio::spawn(admit_self(cluster.clone(), admit));
            }
        }
        if identity.creator && secrets_missing && !creating {
            // A cluster created before the secrets were replicated: its creator adds them.
            tokio::spawn(init_secrets(cluster.clone(), stored_secret));
        }
        let controller = Controller::new(cluster.clone(), peer_addr.clone(), client_addr);
        controller.spawn();

        let relay = OutboxRelay::new(
            cluster.clone(),
            shard_map.clone(),
            reader.clone(),
            config.limits.memberships_per_user_max,
        );
        relay.spawn_background();
        let _ = cluster.relay.set(relay.clone());
        let tokens = TokenAuthority::new(
            &settings.jwt_secret,
            config.auth.token_ttl_secs,
            &config.auth.external,
        )?;
        let limits = config.limits.clone();
        let synced_store = store.clone();
        let gateway = Arc::new(Gateway {
            router,
            cluster: cluster.clone(),
            shard_map,
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
            controller: controller.clone(),
            fault_injection: config.testing.fault_injection,
            stop: Arc::new(tokio::sync::Notify::new()),
            store: store.clone(),
            accounts: gateway::accounts::AccountsState::new(config),
            frame_rates: gateway::ratelimit::FrameRates::new(&config.limits),
            secrets,
            checksums: gateway::checksum::ChecksumCache::spawn(
                cluster.clone(),
                store.clone(),
                config.admin.checksum_interval_ms,
            ),
        });
        gateway::receipts::ReceiptBatcher::spawn_flusher(&gateway);
        Ok(Node {
            gateway,
            settings,
            store,
            cluster,
            controller,
            identity,
            peer_addr,
            client_tls,
            listener_limits: ListenerLimits::from(&config.limits),
            metrics_separate: config.metrics_listen.is_some(),
        })
    }

    /// The current join token of this cluster (also in `<data-dir>/join-token`).
    pub fn join_token(&self) -> String {
        self.gateway.secrets.join_token().to_string()
    }

    /// The cluster's admin token (also in `<data-dir>/admin-token`); empty until known.
    pub fn admin_token(&self) -> String {
        self.cluster.meta().secrets.admin_token.clone()
    }

    /// Serves HTTP + WebSocket (HTTPS + WSS with a certificate) on `listener` until
    /// `shutdown` resolves, through the accept loop of `gateway::listener`.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), NodeError> {
        let addr = listener.local_addr()?;
        if self.client_tls.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "!!! CLIENT PORT WITHOUT TLS ON A NON-LOOPBACK ADDRESS: passwords and tokens \
                 cross the network in clear text. Set [tls] cert_file and key_file \
                 (--tls-cert, --tls-key) or put a TLS proxy in front of this port !!!"
            );
        }
        let mut app = gateway::http::routes(self.gateway.clone());
        if self.metrics_separate {
            app = listener::without_metrics(app);
        }
        let tls = match &self.client_tls {
            Some(cert) => Some(Arc::new(cert.server_config()?)),
            None => None,
        };
        listener::serve(listener, app, self.listener_limits.clone(), tls, shutdown).await?;
        Ok(())
    }

    /// Serves `GET /metrics` alone on `listener` (`metrics_listen`), plain HTTP, until
    /// `shutdown` resolves.
    pub async fn serve_metrics(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), NodeError> {
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(gateway::http::metrics))
            .with_state(self.gateway.clone());
        listener::serve(listener, app, self.listener_limits.clone(), None, shutdown).await?;
        Ok(())
    }

    /// Reloads the client certificate (SIGHUP). `Ok(false)` when the port has no TLS; on
    /// an error the old certificate stays in use.
    pub fn reload_tls(&self) -> Result<bool, gateway::client_tls::ClientTlsError> {
        match &self.client_tls {
            Some(cert) => cert.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Stops every Raft group and the transport (acknowledged writes are already synced).
    pub async fn shutdown(&self) {
        self.gateway.checksums.stop();
        for g in self.gateway.router.groups() {
            let _ = g.raft.shutdown().await;
        }
        if let Some(t) = self.cluster.transport() {
            t.shutdown().await;
        }
    }
}
