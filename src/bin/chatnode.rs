//! `chatnode`: the chat server. `chatnode` alone serves a single-node cluster with its data
//! in `./data`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use chatnode::config::Config;
use chatnode::node::Node;

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
    let config = load_config(&args)?;
    let node = Node::start(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(
        listen = %listener.local_addr()?,
        data_dir = %config.data_dir.display(),
        cluster_id = %node.settings.cluster_id,
        shards = node.settings.shards,
        "chatnode ready"
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let hub = node.gateway.hub.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
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
