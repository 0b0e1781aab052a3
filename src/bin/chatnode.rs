//! `chatnode`: the chat server. `chatnode` alone serves a single-node cluster with its data
//! in `./data`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use chatnode::config::Config;
use chatnode::node::Node;

#[path = "chatnode/admin.rs"]
mod admin;

// mimalloc: less time in malloc than glibc's, and freed memory goes back instead of staying
// in per-thread arenas (argon2's 19 MiB blocks on blocking threads kept RSS over 1 GiB).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long clients are told to wait before reconnecting when the node drains.
const DRAIN_RETRY_AFTER_MS: u64 = 1_000;
/// How long shutdown waits for connections to close.
const DRAIN_TIMEOUT_MS: u64 = 5_000;

#[derive(Parser, Debug)]
#[command(
    name = "chatnode",
    version,
    about = "A self-hosted chat server that is its own database"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Data directory (RocksDB, cluster settings). Default ./data
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP + WebSocket listen address. Default 127.0.0.1:7070
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TOML config file (see config/single-node.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Shard groups of a new cluster (fixed at creation). Default 16
    #[arg(long)]
    shards: Option<u32>,
    /// QUIC address for other nodes. Default 127.0.0.1:7071
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// Client address announced to the cluster (when listening on 0.0.0.0).
    #[arg(long)]
    advertise_client: Option<String>,
    /// Peer address announced to the cluster (when listening on 0.0.0.0).
    #[arg(long)]
    advertise_peer: Option<String>,
    /// Join the cluster of the node whose peer address this is (first start only).
    #[arg(long, requires = "token")]
    join: Option<String>,
    /// The join token (the creating node prints it and writes <data-dir>/join-token).
    #[arg(long)]
    token: Option<String>,
    /// PEM certificate chain for the client port (HTTPS/WSS); reloaded on SIGHUP.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve GET /metrics on this address instead of the client port.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Shows the cluster: nodes, shard replicas, leaders, log/applied indexes and lag.
    Status {
        /// Client (HTTP) address of any node.
        #[arg(long, default_value = "127.0.0.1:7070")]
        addr: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminAuth,
    },
    /// Drains a node (its replicas move away first), then stops it.
    Leave {
        /// Client (HTTP) address of the node that leaves.
        #[arg(long, default_value = "127.0.0.1:7070")]
        addr: String,
        #[command(flatten)]
        admin: AdminAuth,
    },
    /// Creates an invite code for `[accounts] registration = "invite"`; prints it.
    Invite {
        /// Client (HTTP) address of any node.
        #[arg(long, default_value = "127.0.0.1:7070")]
        addr: String,
        #[command(flatten)]
        admin: AdminAuth,
        /// Accounts the invite may create.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Lifetime in seconds (default: the node's [accounts] invite_ttl_secs).
        #[arg(long)]
        ttl_secs: Option<u64>,
    },
    /// Replaces the cluster's join token: the old one admits nobody from now on; every node
    /// rewrites its <data-dir>/join-token. Prints the new token.
    RotateJoinToken {
        /// Client (HTTP) address of any node.
        #[arg(long, default_value = "127.0.0.1:7070")]
        addr: String,
        #[command(flatten)]
        admin: AdminAuth,
    },
}

/// Where an admin command finds the admin token: `--admin-token`, else the
/// CHATNODE_ADMIN_TOKEN environment variable, else `<data-dir>/admin-token`.
#[derive(clap::Args, Debug)]
struct AdminAuth {
    /// The cluster's admin token (not the join token).
    #[arg(long)]
    admin_token: Option<String>,
    /// A node's data dir whose admin-token file to read.
    #[arg(long = "data-dir", default_value = "./data")]
    admin_data_dir: PathBuf,
}

impl AdminAuth {
    fn token(&self) -> anyhow::Result<String> {
        admin::admin_token(self.admin_token.as_deref(), &self.admin_data_dir)
    }
}

fn load_config(args: &Args) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(d) = &args.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(s) = args.shards {
        config.shards = s;
    }
    if let Some(p) = args.peer_listen {
        config.peer_listen = p;
    }
    if let Some(a) = &args.advertise_client {
        config.advertise_client = Some(a.clone());
    }
    if let Some(a) = &args.advertise_peer {
        config.advertise_peer = Some(a.clone());
    }
    if let Some(j) = &args.join {
        config.join = Some(j.clone());
    }
    if let Some(t) = &args.token {
        config.token = Some(t.clone());
    }
    if let Some(c) = &args.tls_cert {
        config.tls.cert_file = Some(c.clone());
    }
    if let Some(k) = &args.tls_key {
        config.tls.key_file = Some(k.clone());
    }
    if let Some(m) = args.metrics_listen {
        config.metrics_listen = Some(m);
    }
    config.validate()?;
    Ok(config)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Reloads the client certificate on every SIGHUP; a certificate that does not load is
/// logged and the old one stays in use.
#[cfg(unix)]
fn spawn_tls_reloader(
    cert: std::sync::Arc<chatnode::gateway::client_tls::ReloadableCert>,
    shutdown: &chatnode::shutdown::Shutdown,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: the certificate cannot be reloaded");
            return;
        }
    };
    shutdown.spawn(async move {
        while hup.recv().await.is_some() {
            match cert.reload() {
                Ok(()) => tracing::info!("SIGHUP: client TLS certificate reloaded"),
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: the new client TLS certificate did not load; keeping the old one"
                ),
            }
        }
    });
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .init();
    let args = Args::parse();
    if let Some(command) = &args.command {
        return run_admin_command(command).await;
    }
    let config = load_config(&args)?;
    warn_if_sabotaged()?;
    let node = Node::start(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    #[cfg(unix)]
    if let Some(cert) = node.client_tls() {
        spawn_tls_reloader(cert.clone(), node.stop_signal());
    }
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
        None => None,
    };
    announce_ready(&node, &config, &listener, metrics_listener.as_ref())?;
    let (stop_rx, metrics_stop_rx) = spawn_drain_on_signal(&node);
    let node = std::sync::Arc::new(node);
    if let Some(ml) = metrics_listener {
        spawn_metrics_listener(node.clone(), ml, metrics_stop_rx);
    }
    node.serve(listener, async {
        let _ = stop_rx.await;
    })
    .await?;
    let _ = tokio::time::timeout(Duration::from_millis(DRAIN_TIMEOUT_MS), node.shutdown()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Runs one of the admin commands (a client of a running node's `/admin/*`).
async fn run_admin_command(command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Status { addr, json, admin } => admin::status(addr, *json, &admin.token()?).await,
        Command::Leave { addr, admin } => admin::leave(addr, &admin.token()?).await,
        Command::RotateJoinToken { addr, admin } => {
            admin::rotate_join_token(addr, &admin.token()?).await
        }
        Command::Invite {
            addr,
            admin,
            uses,
            ttl_secs,
        } => admin::invite(addr, &admin.token()?, *uses, *ttl_secs).await,
    }
}

/// Says loudly that a fault-injection switch (`CHATNODE_BREAK`) is on; an unknown switch,
/// or any switch in a build without the `fault-injection` feature, is an error.
fn warn_if_sabotaged() -> anyhow::Result<()> {
    if let Some(switch) = chatnode::sabotage::from_env()? {
        tracing::error!(
            switch = switch.name(),
            "BROKEN ON PURPOSE: a fault-injection switch is on; this node loses, duplicates \
             or reorders messages (for checker tests only)"
        );
    }
    Ok(())
}

/// Logs that the node is ready (where it listens, who it is); the creating node also
/// prints how to join its cluster and where the admin token is.
fn announce_ready(
    node: &Node,
    config: &Config,
    listener: &tokio::net::TcpListener,
    metrics_listener: Option<&tokio::net::TcpListener>,
) -> anyhow::Result<()> {
    tracing::info!(
        listen = %listener.local_addr()?,
        tls = node.client_tls().is_some(),
        metrics_listen = ?metrics_listener.and_then(|l| l.local_addr().ok()),
        peer_listen = %node.peer_addr(),
        node_id = node.node_id(),
        data_dir = %config.data_dir.display(),
        cluster_id = %node.cluster_id(),
        shards = node.shards(),
        "chatnode ready"
    );
    if node.is_creator() {
        println!(
            "join this cluster with: chatnode --join {} --token {}",
            node.peer_addr(),
            node.join_token()
        );
        println!(
            "admin commands (chatnode status, leave, rotate-join-token) use the admin token in {}",
            config
                .data_dir
                .join(chatnode::cluster::secrets::ADMIN_TOKEN_FILE)
                .display()
        );
    }
    Ok(())
}

/// On SIGINT/SIGTERM, or when the node left its cluster: asks every client to reconnect,
/// then stops the client listener (first receiver) and the metrics listener (second).
fn spawn_drain_on_signal(
    node: &Node,
) -> (
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::watch::Receiver<bool>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (metrics_stop_tx, metrics_stop_rx) = tokio::sync::watch::channel(false);
    let drain = node.drain_clients();
    let left = node.left_signal();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown_signal() => {},
            _ = left.notified() => {},
        }
        tracing::info!("draining: asking clients to reconnect");
        drain(DRAIN_RETRY_AFTER_MS);
        let _ = stop_tx.send(());
        let _ = metrics_stop_tx.send(true);
    });
    (stop_rx, metrics_stop_rx)
}

/// Serves `/metrics` on its own listener until `stop` turns true.
fn spawn_metrics_listener(
    node: std::sync::Arc<Node>,
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = node.serve_metrics(listener, stopped).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
}
