//! `lossyfs <backing-dir> <mountpoint> --control <socket>`: mount until SIGTERM/SIGINT.
//! `lossyfs ctl <socket> <command...>`: send one control command, print the reply (exit 1 on
//! an `err` reply).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

use lossyfs::{control, mount, Backing, PENDING_BYTES_MAX_DEFAULT};

#[derive(Parser, Debug)]
#[command(
    name = "lossyfs",
    about = "A FUSE file system that loses unsynced writes on command",
    after_help = "Control: lossyfs ctl <socket> power-loss [--seed N] [--torn] | clear | status | disk-full on|off | io-errors on|off"
)]
struct Args {
    /// Directory holding the data (the "disk").
    backing_dir: PathBuf,
    /// Where to mount it.
    mountpoint: PathBuf,
    /// Unix socket to listen on for control commands.
    #[arg(long)]
    control: PathBuf,
    /// Bound of the memory kept to undo unsynced writes; past it a file counts as synced.
    #[arg(long, default_value_t = PENDING_BYTES_MAX_DEFAULT)]
    pending_bytes_max: usize,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("ctl") {
        return ctl(&argv[2..]);
    }
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lossyfs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ctl(args: &[String]) -> ExitCode {
    let Some((socket, command)) = args.split_first() else {
        eprintln!("usage: lossyfs ctl <socket> <command...>");
        return ExitCode::from(2);
    };
    match control::send(&PathBuf::from(socket), &command.join(" ")) {
        Ok(reply) => {
            println!("{reply}");
            if reply.starts_with("ok") {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("lossyfs ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> std::io::Result<()> {
    // Block the stop signals before any thread starts, so that every thread inherits the mask
    // and the main thread alone takes them with sigwait.
    let mut stop = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        stop.add(signal);
    }
    stop.thread_block().map_err(std::io::Error::from)?;
    let backing = Backing::new(&args.backing_dir, args.pending_bytes_max)?;
    let mounted = mount::mount(backing, &args.mountpoint)?;
    control::serve(&args.control, Arc::clone(mounted.backing()))?;
    println!(
        "lossyfs: {} mounted at {}, control at {}",
        args.backing_dir.display(),
        args.mountpoint.display(),
        args.control.display()
    );
    let signal = stop.wait().map_err(std::io::Error::from)?;
    tracing::info!(?signal, "lossyfs: unmounting");
    let _ = std::fs::remove_file(&args.control);
    mounted.unmount()
}
