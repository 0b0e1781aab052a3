//! chatnode-jepsen: partition and crash testing of chatnode with real processes in network
//! namespaces, a recorded history and a checker for the guarantees G1–G8.
//!
//! Exit codes: 0 no anomaly, 1 anomalies found, 2 the harness itself failed.

mod checker;
mod cluster;
mod history;
mod http;
mod nemesis;
mod net;
mod prove;
mod relay;
mod report;
mod run;
mod workload;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "chatnode-jepsen",
    about = "Partition and crash testing of chatnode (needs root)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a cluster in network namespaces, run the workload under faults, check the history.
    Run(run::RunOpts),
    /// Check a recorded history again (writes results.json and latency.svg next to it).
    Check {
        history: PathBuf,
        /// Where to write results.json and latency.svg (default: the history's directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show that the checker works: short runs against a fault-injection build of chatnode,
    /// one per broken switch, each of which must be caught; then the real build must pass
    /// the same runs.
    Prove(prove::ProveOpts),
    /// Remove everything a run may have left behind (namespaces, processes in them, bridge).
    Cleanup,
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "chatnode_jepsen=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Run(opts) => {
            let code = tokio::select! {
                r = run::run(opts) => match r {
                    Ok(code) => code,
                    Err(e) => {
                        eprintln!("chatnode-jepsen: harness failure: {e:#}");
                        2
                    }
                },
                _ = shutdown_signal() => {
                    eprintln!("chatnode-jepsen: interrupted; tearing down (the partial history stays in the run directory)");
                    2
                }
            };
            for r in net::cleanup() {
                tracing::debug!("teardown: removed {r}");
            }
            code
        }
        Cmd::Check { history, out } => {
            let dir = out.unwrap_or_else(|| {
                history
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."))
            });
            match run::check_dir(&history, &dir, Vec::new()) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("chatnode-jepsen: {e:#}");
                    2
                }
            }
        }
        Cmd::Prove(opts) => match prove::prove(opts) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("chatnode-jepsen prove: {e:#}");
                2
            }
        },
        Cmd::Cleanup => {
            let removed = net::cleanup();
            if removed.is_empty() {
                eprintln!("nothing to clean up");
            }
            for r in removed {
                eprintln!("removed {r}");
            }
            0
        }
    };
    std::process::exit(code as i32);
}
