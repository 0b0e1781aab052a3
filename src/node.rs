//! A node: opens storage, starts the meta group and the shard groups, creates the cluster
//! settings on first start, and serves the gateway until shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::cluster::command::*;
use crate::cluster::identity::{write_private, Identity, JoinWelcome, JOIN_TOKEN_FILE};
use crate::cluster::peer::{PeerReply, PeerRequest, PeerService, PeerTransport, RaftNet};
use crate::cluster::route::ClusterParts;
use crate::cluster::secrets::{generate_admin_token, LocalSecrets};
use crate::cluster::{
    meta, Cluster, Controller, LocalGroups, MetaView, OutboxRelay, ProposalBatcher, ShardMap,
};
use crate::config::Config;
use crate::delivery::{self, ClusterLink, Hub};
use crate::gateway::client_tls::ReloadableCert;
use crate::gateway::listener::{self, ListenerLimits};
use crate::gateway::{self, auth::TokenAuthority, ratelimit::RateLimiter, Gateway};

use crate::ids::{GroupId, META_GROUP};
use crate::metrics::Metrics;
use crate::protocol::TextLimits;
use crate::raft::{self, Applier, RaftTimings};
use crate::shard::push::pushes_of;
use crate::shard::ShardReader;
use crate::shutdown::Shutdown;
use crate::storage::{SmTxn, StorageError, Store};
use crate::transport::{
    ClusterCa, Inbound, JoinAdmitter, JoinConfig, JoinGrant, JoinRequest, JoinToken,
    TransportConfig, TransportError,
};

/// Mode of the data dir and of RocksDB's directory in it: the owner only.
pub(crate) const DATA_DIR_MODE: u32 = 0o700;

/// How long start-up waits for a group to elect its leader.
pub(crate) const LEADER_WAIT_MS: u64 = 10_000;
/// How long a joiner keeps trying to reach its seed.
pub(crate) const JOIN_WAIT_MS: u64 = 60_000;
/// One join attempt.
pub(crate) const JOIN_ATTEMPT_TIMEOUT_MS: u64 = 10_000;
/// The node that creates a cluster.
pub(crate) const CREATOR_NODE_ID: u64 = 1;

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
/// written, every meta state goes to the node's meta view, and what its committed messages
/// and receipts push (`shard::push`) goes to delivery's inbox (G4: only applied entries are
/// pushed), which never waits.
struct NodeApplier {
    meta: MetaView,
    delivery: delivery::Inbox,
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
        let mut pushes = Vec::new();
        for r in responses {
            match r {
                Response::MetaState { state, .. } => self.meta.publish(state.clone()),
                Response::Shard(one) => pushes_of(one, &mut pushes),
                Response::ShardBatch(many) => many.iter().for_each(|r| pushes_of(r, &mut pushes)),
                _ => {}
            }
        }
        // Dropped until delivery starts: during start-up replay nobody is connected yet.
        self.delivery.applied(group, pushes);
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
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) settings: ClusterSettings,
    pub(crate) store: Arc<Store>,
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) identity: Identity,
    /// The address other nodes dial (QUIC).
    pub(crate) peer_addr: String,
    // listener: how the client port is served.
    /// The client port's certificate when it serves TLS (reloaded on SIGHUP).
    pub(crate) client_tls: Option<Arc<ReloadableCert>>,
    listener_limits: ListenerLimits,
    /// `/metrics` is on its own listener (`metrics_listen`), not on the client port.
    metrics_separate: bool,
    /// Stops every loop the node spawned.
    shutdown: Shutdown,
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
    // The new entry is durable only once its parent directory is (a power loss could
    // otherwise undo `db/` under a RocksDB that fsynced everything inside it).
    if let Some(parent) = dir.parent() {
        crate::cluster::identity::sync_dir(parent)?;
    }
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

/// Where this node listens and what it announces, fixed before anything starts.
struct Addresses {
    /// `peer_listen` with a concrete port.
    peer_listen: SocketAddr,
    peer_addr: String,
    client_addr: String,
}

impl Addresses {
    fn of(config: &Config) -> Result<Self, NodeError> {
        let peer_listen = concrete_peer_listen(config.peer_listen)?;
        Ok(Addresses {
            peer_addr: config
                .advertise_peer
                .clone()
                .unwrap_or_else(|| announce(peer_listen)),
            client_addr: config
                .advertise_client
                .clone()
                .unwrap_or_else(|| announce(config.listen)),
            peer_listen,
        })
    }
}

/// Who this node is before its groups start: from the data dir, or by joining; `None`
/// when it creates the cluster (see [`create_cluster`]). With the meta state it was
/// welcomed with (empty unless it just joined).
async fn find_identity(
    config: &Config,
    addrs: &Addresses,
) -> Result<(Option<Identity>, MetaState), NodeError> {
    let identity = Identity::load(&config.data_dir)?;
    if identity.is_some() {
        if config.join.is_some() {
            tracing::info!("this data dir already belongs to a cluster; --join ignored");
        }
        return Ok((identity, MetaState::default()));
    }
    let (Some(seed), Some(token)) = (&config.join, &config.token) else {
        return Ok((None, MetaState::default()));
    };
    let grant = join_cluster(seed, token, &addrs.peer_addr, &addrs.client_addr).await?;
    let (id, meta) = Identity::from_grant(&grant)?;
    id.save(&config.data_dir)?;
    write_private(
        &config.data_dir.join(JOIN_TOKEN_FILE),
        token.trim().as_bytes(),
    )?;
    tracing::info!(node_id = id.node_id, cluster_id = %id.cluster_id, "joined the cluster");
    Ok((Some(id), meta))
}

/// Starts this node's Raft groups, all with the same store, applier and network.
struct GroupStarter {
    node_id: u64,
    /// Only the creating node ever initializes a group; joiners receive theirs.
    initialize: bool,
    peer_addr: String,
    store: Arc<Store>,
    applier: Arc<dyn Applier<TypeConfig>>,
    network: Arc<RaftNet>,
    timings: RaftTimings,
}

impl GroupStarter {
    async fn start(&self, group: GroupId) -> Result<GroupHandle, NodeError> {
        let network = self.network.clone() as Arc<dyn crate::raft::PeerNetwork<TypeConfig>>;
        let g = raft::start_group(
            self.node_id,
            group,
            self.store.clone(),
            self.applier.clone(),
            network,
            &self.timings,
        )
        .await
        .map_err(raft_err)?;
        if self.initialize {
            raft::initialize_single(&g, self.node_id, self.peer_addr.clone())
                .await
                .map_err(raft_err)?;
        }
        Ok(g)
    }
}

/// Creates the cluster (or adopts a data dir from before clustering) on its first node:
/// settings and secrets through the meta group, then the CA and this node's identity.
async fn create_cluster(
    config: &Config,
    store: &Store,
    meta_group: &GroupHandle,
) -> Result<Identity, NodeError> {
    wait_for_leader(meta_group).await?;
    let settings = match meta::read_settings(store)? {
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
    // The admin token and first join secret, replicated (first wins: after a crash half-way
    // through creation the stored ones are kept).
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
        members: Default::default(),
    };
    id.save(&config.data_dir)?;
    write_private(
        &config.data_dir.join(JOIN_TOKEN_FILE),
        token.to_string().as_bytes(),
    )?;
    Ok(id)
}

/// The meta state this node starts from: the one it was welcomed with, else its own
/// replica's (possibly behind; the controller refreshes it from the meta leader), else,
/// with no replica yet, only the members its identity remembers (so that it can reach
/// them). A node that left cannot come back under its old identity.
fn starting_meta(
    store: &Store,
    welcome: MetaState,
    identity: &Identity,
) -> Result<MetaState, NodeError> {
    let node_id = identity.node_id;
    let mut meta = if welcome.nodes.is_empty() {
        meta::read_state(store)?
    } else {
        welcome
    };
    if meta.nodes.is_empty() {
        meta.nodes = identity.members.clone();
    }
    if meta
        .nodes
        .get(&node_id)
        .is_some_and(|n| n.state == NodeState::Left)
    {
        return Err(NodeError::Join(format!(
            "node {node_id} left the cluster and cannot come back under its old identity; \
             start with an empty data dir and --join to add this machine as a new node"
        )));
    }
    Ok(meta)
}

/// The secrets as this node holds them, seeded from `meta` and the identity, their files
/// rewritten on every change until `shutdown`.
fn load_secrets(
    config: &Config,
    identity: &Identity,
    meta: &MetaState,
    shutdown: &Shutdown,
) -> Result<Arc<LocalSecrets>, NodeError> {
    let stored_secret: [u8; 32] = stored_join_secret(identity)?;
    let secrets = LocalSecrets::new(
        &config.data_dir,
        identity.credentials.ca_fingerprint()?,
        stored_secret,
    );
    secrets.observe(&meta.secrets);
    if secrets.known() {
        // Otherwise the files stay as they are until the meta state is refreshed.
        secrets.write_files()?;
    }
    secrets.spawn_file_writer(shutdown);
    Ok(secrets)
}

fn stored_join_secret(identity: &Identity) -> Result<[u8; 32], NodeError> {
    identity
        .join_secret
        .as_slice()
        .try_into()
        .map_err(|_| NodeError::Join("stored join secret is malformed".into()))
}

/// Every meta state the applier publishes reaches the secrets (a rotation on another node
/// changes this node's join secret and files).
fn follow_secrets(meta: &MetaView, secrets: Arc<LocalSecrets>, shutdown: &Shutdown) {
    let mut rx = meta.subscribe();
    shutdown.spawn(async move {
        while rx.changed().await.is_ok() {
            let m = rx.borrow_and_update().clone();
            secrets.observe(&m.secrets);
        }
    });
}

/// The peer transport, open for calls out: mutual TLS with the cluster's CA, and a node
/// that left is refused even though its certificate is valid. Inbound calls wait for
/// [`serve_peers`].
fn open_transport(
    identity: &Identity,
    addrs: &Addresses,
    meta: &MetaView,
) -> Result<(PeerTransport, Inbound<PeerRequest, PeerReply>), NodeError> {
    let mut tcfg = TransportConfig::new(
        addrs.peer_listen,
        identity.cluster_id.clone(),
        identity.node_id,
        identity.credentials.clone(),
    );
    let meta = meta.clone();
    tcfg.revoked = Some(Arc::new(move |id| meta.node_left(id)));
    Ok(PeerTransport::open(tcfg)?)
}

/// Answers peers with `cluster`; any member admits joiners.
fn serve_peers(
    inbound: Inbound<PeerRequest, PeerReply>,
    cluster: &Arc<Cluster>,
    identity: &Identity,
    secrets: &LocalSecrets,
) -> Result<(), NodeError> {
    let ca = Arc::new(ClusterCa::from_pem(
        &identity.cluster_id,
        &identity.credentials.ca_cert_pem,
        &identity.ca_key_pem,
    )?);
    let join = JoinConfig {
        admitter: Arc::new(Admitter {
            cluster: cluster.clone(),
            settings: identity.settings.clone(),
        }),
        ca,
        secret: secrets.join_secret(),
    };
    let service = Arc::new(PeerService {
        cluster: cluster.clone(),
    });
    inbound.serve(service, Some(join))?;
    Ok(())
}

/// The creating node admits itself (id 1; AddNode is idempotent by peer address), and adds
/// the replicated secrets to a cluster created before they existed.
async fn admit_creator(
    cluster: &Arc<Cluster>,
    store: &Store,
    addrs: &Addresses,
    creating: bool,
    secrets_missing: Option<[u8; 32]>,
) -> Result<(), NodeError> {
    let node_id = cluster.node_id;
    if !meta::read_state(store)?.nodes.contains_key(&node_id) {
        let admit = MetaOp::AddNode {
            peer_addr: addrs.peer_addr.clone(),
            client_addr: addrs.client_addr.clone(),
        };
        if creating {
            let meta_group = cluster.local_groups().group(META_GROUP).map_err(raft_err)?;
            wait_for_leader(&meta_group.clone()).await?;
            cluster.meta_write(admit).await.map_err(raft_err)?;
            cluster.set_meta(meta::read_state(store)?);
        } else {
            // A restart after a crash: the local meta replica may be behind what was
            // committed (its state machine skips the WAL), and the meta group may have
            // no leader yet. Starting must not depend on either.
            cluster.shutdown().spawn(admit_self(cluster.clone(), admit));
        }
    }
    if let (Some(stored_secret), false) = (secrets_missing, creating) {
        // A cluster created before the secrets were replicated: its creator adds them.
        cluster
            .shutdown()
            .spawn(init_secrets(cluster.clone(), stored_secret));
    }
    Ok(())
}

/// What every later step of `Node::start` shares: storage, the stop signal, the meta view,
/// the hub, and how the groups start.
struct Foundation {
    store: Arc<Store>,
    shutdown: Shutdown,
    meta_view: MetaView,
    metrics: Arc<Metrics>,
    hub: Arc<Hub>,
    /// Delivery's inbox: the applier and the peer service put pushes in; delivery starts
    /// consuming it once the cluster exists.
    inbox: (delivery::Inbox, delivery::InboxReceiver),
    network: Arc<RaftNet>,
    starter: GroupStarter,
}

impl Foundation {
    fn lay(
        config: &Config,
        identity: Option<&Identity>,
        addrs: &Addresses,
    ) -> Result<Self, NodeError> {
        let db_dir = config.data_dir.join("db");
        create_private_dir(&db_dir)?;
        let store = Store::open(&db_dir)?;
        let shutdown = Shutdown::new();
        let meta_view = MetaView::new(MetaState::default());
        let metrics = Arc::new(Metrics::new());
        let (inbox, inbox_rx) = delivery::inbox(metrics.clone());
        let hub = Hub::new(
            config.limits.devices_per_user as usize,
            metrics.clone(),
            inbox.presence_out(),
        );
        hub.spawn_sweeper(&shutdown);
        let network = Arc::new(RaftNet {
            transport: OnceLock::new(),
            meta: meta_view.clone(),
        });
        let starter = GroupStarter {
            node_id: identity.map_or(CREATOR_NODE_ID, |i| i.node_id),
            initialize: identity.is_none_or(|i| i.creator),
            peer_addr: addrs.peer_addr.clone(),
            store: store.clone(),
            applier: Arc::new(NodeApplier {
                meta: meta_view.clone(),
                delivery: inbox.clone(),
            }),
            network: network.clone(),
            timings: RaftTimings {
                snapshot_every_logs: config.raft.snapshot_every_logs,
                keep_logs_behind_snapshot: config.raft.keep_logs_behind_snapshot,
                ..RaftTimings::default()
            },
        };
        Ok(Foundation {
            store,
            shutdown,
            meta_view,
            metrics,
            hub,
            inbox: (inbox, inbox_rx),
            network,
            starter,
        })
    }
}

/// Starts the shard groups beside the running `meta_group`; the shard count is the one
/// stored at the cluster's creation.
async fn start_shard_groups(
    config: &Config,
    settings: &ClusterSettings,
    starter: &GroupStarter,
    meta_group: GroupHandle,
) -> Result<(Arc<ShardMap>, Arc<LocalGroups>), NodeError> {
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
        groups.push(starter.start(group).await?);
    }
    Ok((shard_map, Arc::new(LocalGroups::new(groups))))
}

/// The client port's certificate, when the config names one (`[tls]`).
fn load_client_tls(config: &Config) -> Result<Option<Arc<ReloadableCert>>, NodeError> {
    Ok(match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(cert), Some(key)) => Some(ReloadableCert::load(cert, key)?),
        _ => None,
    })
}

/// This node's identity and running groups, and the secrets it starts with.
struct StartedGroups {
    identity: Identity,
    shard_map: Arc<ShardMap>,
    local: Arc<LocalGroups>,
    secrets: Arc<LocalSecrets>,
    /// The stored join secret, when this node created the cluster before the secrets were
    /// replicated (see [`admit_creator`]).
    secrets_missing: Option<[u8; 32]>,
}

/// Starts the meta group (creating the cluster through it when there is no `identity` yet),
/// then the shard groups; publishes the starting meta state into the meta view, which the
/// secrets follow from then on.
async fn start_groups(
    config: &Config,
    f: &Foundation,
    identity: Option<Identity>,
    welcome: MetaState,
) -> Result<StartedGroups, NodeError> {
    let meta_group = f.starter.start(META_GROUP).await?;
    let identity = match identity {
        Some(i) => i,
        None => create_cluster(config, &f.store, &meta_group).await?,
    };
    let (shard_map, local) =
        start_shard_groups(config, &identity.settings, &f.starter, meta_group).await?;
    let meta_seed = starting_meta(&f.store, welcome, &identity)?;
    let secrets = load_secrets(config, &identity, &meta_seed, &f.shutdown)?;
    let secrets_missing = (identity.creator && !meta_seed.secrets.is_initialized())
        .then(|| stored_join_secret(&identity))
        .transpose()?;
    follow_secrets(&f.meta_view, secrets.clone(), &f.shutdown);
    f.meta_view.publish(meta_seed);
    Ok(StartedGroups {
        identity,
        shard_map,
        local,
        secrets,
        secrets_missing,
    })
}

/// The cluster over this node's groups, calling out through `transport`; pushes received
/// from peers go to delivery's inbox.
fn new_cluster(
    f: &Foundation,
    g: &StartedGroups,
    reader: ShardReader,
    transport: PeerTransport,
) -> Arc<Cluster> {
    Cluster::new(ClusterParts {
        node_id: f.starter.node_id,
        cluster_id: g.identity.cluster_id.clone(),
        groups: g.local.clone(),
        proposals: ProposalBatcher::start(g.local.clone(), g.shard_map.groups(), &f.shutdown),
        reader,
        transport,
        meta: f.meta_view.clone(),
        shard_map: g.shard_map.clone(),
        pushes: f.inbox.0.peer_sink(g.shard_map.clone()),
        secrets: g.secrets.clone(),
        shutdown: f.shutdown.clone(),
    })
}

/// The controller and the outbox relay, running until the node's shutdown.
fn spawn_control(
    config: &Config,
    cluster: &Arc<Cluster>,
    shard_map: &Arc<ShardMap>,
    reader: ShardReader,
    addrs: &Addresses,
) -> (Arc<Controller>, Arc<OutboxRelay>) {
    let controller = Controller::new(
        cluster.clone(),
        addrs.peer_addr.clone(),
        addrs.client_addr.clone(),
    );
    controller.spawn();
    let relay = OutboxRelay::new(
        cluster.clone(),
        shard_map.clone(),
        reader,
        config.limits.memberships_per_user_max,
    );
    relay.spawn_background();
    let _ = cluster.relay.set(relay.clone());
    (controller, relay)
}

/// What the gateway is built from besides the config.
struct GatewayParts {
    cluster: Arc<Cluster>,
    shard_map: Arc<ShardMap>,
    hub: Arc<Hub>,
    delivery: delivery::Inbox,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    relay: Arc<OutboxRelay>,
    controller: Arc<Controller>,
    secrets: Arc<LocalSecrets>,
}

fn build_gateway(
    config: &Config,
    settings: &ClusterSettings,
    p: GatewayParts,
) -> Result<Arc<Gateway>, NodeError> {
    let tokens = TokenAuthority::new(
        &settings.jwt_secret,
        config.auth.token_ttl_secs,
        &config.auth.external,
    )?;
    let limits = config.limits.clone();
    let synced_store = p.store.clone();
    let gateway = Arc::new(Gateway {
        cluster: p.cluster.clone(),
        shard_map: p.shard_map,
        hub: p.hub,
        delivery: p.delivery,
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
        metrics: p.metrics,
        relay: p.relay,
        receipts: Default::default(),
        password_hashing: tokio::sync::Semaphore::new(gateway::PASSWORD_HASHES_IN_FLIGHT_MAX),
        synced_writes: Box::new(move || synced_store.synced_writes()),
        controller: p.controller,
        fault_injection: config.testing.fault_injection,
        stop: Arc::new(tokio::sync::Notify::new()),
        accounts: gateway::accounts::AccountsState::new(config),
        frame_rates: gateway::ratelimit::FrameRates::new(&config.limits),
        secrets: p.secrets,
        checksums: gateway::checksum::ChecksumCache::spawn(
            p.cluster,
            p.store,
            config.admin.checksum_interval_ms,
        ),
    });
    gateway::receipts::ReceiptBatcher::spawn_flusher(&gateway);
    Ok(gateway)
}

/// How long `Node::shutdown` waits for the node's loops to end.
pub(crate) const LOOPS_STOP_WAIT_MS: u64 = 5_000;

impl Node {
    /// Starts every group of this node, joins or creates the cluster on first start, opens
    /// the peer transport and builds the gateway (not yet listening for clients).
    ///
    /// Construction order breaks the cycles: the meta view, the stop signal and delivery's
    /// inbox exist first; the groups publish meta states into the view and pushes into the
    /// inbox; the transport opens before `Cluster` (which calls out through it) and serves
    /// peers once `Cluster` exists; delivery starts once `Cluster` exists.
    pub async fn start(config: &Config) -> Result<Node, NodeError> {
        config.validate()?;
        // A certificate that does not load stops the start before anything else happens.
        let client_tls = load_client_tls(config)?;
        create_private_dir(&config.data_dir)?;
        let addrs = Addresses::of(config)?;
        let (identity, welcome) = find_identity(config, &addrs).await?;

        let f = Foundation::lay(config, identity.as_ref(), &addrs)?;
        let creating = identity.is_none();
        let g = start_groups(config, &f, identity, welcome).await?;
        let settings = g.identity.settings.clone();

        let (transport, inbound) = open_transport(&g.identity, &addrs, &f.meta_view)?;
        let _ = f.network.transport.set(transport.clone());
        let reader = ShardReader::new(f.store.clone());
        let cluster = new_cluster(&f, &g, reader.clone(), transport);
        let delivery = f.inbox.0.clone();
        delivery::start(
            f.starter.node_id,
            f.hub.clone(),
            g.shard_map.clone(),
            ClusterLink::new(&cluster),
            f.inbox,
            g.local.groups().cloned(),
            &f.shutdown,
        );
        serve_peers(inbound, &cluster, &g.identity, &g.secrets)?;

        if g.identity.creator {
            admit_creator(&cluster, &f.store, &addrs, creating, g.secrets_missing).await?;
        }
        let (controller, relay) = spawn_control(config, &cluster, &g.shard_map, reader, &addrs);
        let gateway = build_gateway(
            config,
            &settings,
            GatewayParts {
                cluster: cluster.clone(),
                shard_map: g.shard_map,
                hub: f.hub,
                delivery,
                store: f.store.clone(),
                metrics: f.metrics,
                relay,
                controller,
                secrets: g.secrets,
            },
        )?;
        Ok(Node {
            gateway,
            settings,
            store: f.store,
            cluster,
            identity: g.identity,
            peer_addr: addrs.peer_addr,
            client_tls,
            listener_limits: ListenerLimits::from(&config.limits),
            metrics_separate: config.metrics_listen.is_some(),
            shutdown: f.shutdown,
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

    /// Stops every loop of the node, every Raft group and the transport (acknowledged
    /// writes are already synced), and waits (at most [`LOOPS_STOP_WAIT_MS`]) until the
    /// loops have ended.
    pub async fn shutdown(&self) {
        self.shutdown.stop();
        self.gateway.checksums.stop();
        for g in self.cluster.local_groups().groups() {
            let _ = g.raft.shutdown().await;
        }
        self.cluster.transport().shutdown().await;
        let wait = Duration::from_millis(LOOPS_STOP_WAIT_MS);
        if tokio::time::timeout(wait, self.shutdown.all_stopped())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.shutdown.running(),
                "loops still running after shutdown"
            );
        }
    }

    /// The node's stop signal: a loop spawned with it stops at [`Node::shutdown`].
    pub fn stop_signal(&self) -> &Shutdown {
        &self.shutdown
    }

    /// The node's loops still running (zero once `shutdown` returned).
    pub fn running_loops(&self) -> usize {
        self.shutdown.running()
    }

    pub fn node_id(&self) -> u64 {
        self.identity.node_id
    }

    /// Whether this node created the cluster (it prints the join command at start).
    pub fn is_creator(&self) -> bool {
        self.identity.creator
    }

    pub fn cluster_id(&self) -> &str {
        &self.settings.cluster_id
    }

    pub fn shards(&self) -> u32 {
        self.settings.shards
    }

    /// The address other nodes dial (QUIC).
    pub fn peer_addr(&self) -> &str {
        &self.peer_addr
    }

    /// The client port's certificate when it serves TLS (the binary reloads it on SIGHUP).
    pub fn client_tls(&self) -> Option<&Arc<ReloadableCert>> {
        self.client_tls.as_ref()
    }

    /// Notified when this node has left the cluster (the binary then drains and exits).
    pub fn left_signal(&self) -> Arc<tokio::sync::Notify> {
        self.gateway.stop.clone()
    }

    /// Asks every connected client to reconnect elsewhere in `retry_after_ms`.
    pub fn drain_clients(&self) -> impl Fn(u64) + Send + 'static {
        let hub = self.gateway.hub.clone();
        move |retry_after_ms| hub.drain_all(retry_after_ms)
    }

    /// Synced RocksDB writes so far (tests count fsyncs with it).
    pub fn synced_writes(&self) -> u64 {
        self.store.synced_writes()
    }

    /// Connections closed for not reading their pushes.
    pub fn slow_consumer_disconnects(&self) -> u64 {
        self.gateway.metrics.slow_consumer_disconnects.get()
    }

    /// Typing/receipt pushes dropped at a full connection queue.
    pub fn ephemeral_pushes_dropped(&self) -> u64 {
        self.gateway.metrics.ephemeral_pushes_dropped.get()
    }
}

// A push batch at its byte cap plus one largest item, and a gap-fill reply of the largest
// messages, each fit one transport frame with room to spare (checked by the compiler, here
// because delivery does not see the transport).
const _: () = {
    let frame = crate::transport::FRAME_BYTES_MAX;
    let op_max = crate::shard::validate::OP_BYTES_MAX;
    let body_max = crate::shard::validate::BODY_BYTES_MAX;
    let message_max = body_max + 1024;
    assert!(crate::delivery::peer_queue::PUSH_BATCH_BYTES_MAX + op_max * 2 <= frame);
    assert!(crate::delivery::peer_queue::PUSH_BATCH_BYTES_MAX + body_max + 64 * 1024 < frame);
    assert!(crate::delivery::tracker::GAP_FILL_MESSAGES_MAX as usize * message_max <= frame);
};

#[cfg(test)]
mod tests;
