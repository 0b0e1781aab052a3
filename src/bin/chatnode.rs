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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .init();
    let args = Args::parse();
    match &args.command {
        Some(Command::Status { addr, json, admin }) => {
            return admin::status(addr, *json, &admin.token()?).await
        }
        Some(Command::Leave { addr, admin }) => return admin::leave(addr, &admin.token()?).await,
        Some(Command::RotateJoinToken { addr, admin }) => {
            return admin::rotate_join_token(addr, &admin.token()?).await
        }
        None => {}
    }
    let config = load_config(&args)?;
    if let Some(switch) = chatnode::sabotage::from_env()? {
        tracing::error!(
            switch = switch.name(),
            "BROKEN ON PURPOSE: a fault-injection switch is on; this node loses, duplicates \
             or reorders messages (for checker tests only)"
        );
    }
    let node = Node::start(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(
        listen = %listener.local_addr()?,
        peer_listen = %node.peer_addr,
        node_id = node.identity.node_id,
        data_dir = %config.data_dir.display(),
        cluster_id = %node.settings.cluster_id,
        shards = node.settings.shards,
        "chatnode ready"
    );
    if node.identity.creator {
        println!(
            "join this cluster with: chatnode --join {} --token {}",
            node.peer_addr,
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
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let hub = node.gateway.hub.clone();
    let left = node.gateway.stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown_signal() => {},
            _ = left.notified() => {},
        }
        tracing::info!("draining: asking clients to reconnect");
        hub.drain_all(DRAIN_RETRY_AFTER_MS);
        let _ = stop_tx.send(());
    });
    node.serve(listener, async {
        let _ = stop_rx.await;
    })
    .await?;
    let _ = tokio::time::timeout(Duration::from_millis(DRAIN_TIMEOUT_MS), node.shutdown()).await;
    tracing::info!("stopped");
    Ok(())
}
