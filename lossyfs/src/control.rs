//! The control channel: one-line text commands on a Unix socket (`power-loss [--seed N]
//! [--torn]`, `clear`, `status`, `disk-full on|off`, `io-errors on|off`), each answered by one
//! line starting with `ok` or `err`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::backing::Backing;

/// Longest command line accepted; a longer one ends the connection.
pub const COMMAND_BYTES_MAX: u64 = 4096;

/// A parsed control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Undo every unsynced change (`seed` picks the torn prefixes; None: from the clock).
    PowerLoss { seed: Option<u64>, torn: bool },
    /// Treat everything as synced.
    Clear,
    /// Report what is unsynced.
    Status,
    /// Fail writes with ENOSPC (or stop).
    DiskFull(bool),
    /// Fail reads, writes and syncs with EIO (or stop).
    IoErrors(bool),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("empty command")]
    Empty,
    #[error("unknown command {0:?} (power-loss, clear, status, disk-full, io-errors)")]
    Unknown(String),
    #[error("bad argument {0:?}")]
    BadArgument(String),
}

fn on_off(arg: Option<&str>) -> Result<bool, ParseError> {
    match arg {
        Some("on") => Ok(true),
        Some("off") => Ok(false),
        other => Err(ParseError::BadArgument(other.unwrap_or("").to_string())),
    }
}

impl Command {
    pub fn parse(line: &str) -> Result<Command, ParseError> {
        let mut words = line.split_whitespace();
        let name = words.next().ok_or(ParseError::Empty)?;
        let args: Vec<&str> = words.collect();
        let command = match name {
            "power-loss" => parse_power_loss(&args)?,
            "clear" => Command::Clear,
            "status" => Command::Status,
            "disk-full" => Command::DiskFull(on_off(args.first().copied())?),
            "io-errors" => Command::IoErrors(on_off(args.first().copied())?),
            other => return Err(ParseError::Unknown(other.to_string())),
        };
        let takes = match &command {
            Command::PowerLoss { .. } => args.len(),
            Command::Clear | Command::Status => 0,
            Command::DiskFull(_) | Command::IoErrors(_) => 1,
        };
        match args.get(takes) {
            Some(extra) => Err(ParseError::BadArgument((*extra).to_string())),
            None => Ok(command),
        }
    }

    /// Carries the command out; returns the reply line (without newline).
    pub fn execute(&self, backing: &Mutex<Backing>) -> String {
        let mut backing = backing.lock();
        match self {
            Command::PowerLoss { seed, torn } => {
                let seed = seed.unwrap_or_else(clock_seed);
                let r = backing.power_loss(seed, *torn);
                format!(
                    "ok seed={seed} files_rolled_back={} bytes_dropped={} bytes_kept={} dir_ops_undone={}",
                    r.files_rolled_back, r.bytes_dropped, r.bytes_kept, r.dir_ops_undone
                )
            }
            Command::Clear => {
                backing.clear();
                "ok".to_string()
            }
            Command::Status => {
                let s = backing.status();
                let f = backing.faults();
                format!(
                    "ok unsynced_files={} unsynced_bytes={} unsynced_dir_ops={} pending_bytes={} disk_full={} io_errors={}",
                    s.unsynced_files, s.unsynced_bytes, s.unsynced_dir_ops, s.pending_bytes,
                    f.disk_full, f.io_errors
                )
            }
            Command::DiskFull(on) => {
                backing.set_disk_full(*on);
                "ok".to_string()
            }
            Command::IoErrors(on) => {
                backing.set_io_errors(*on);
                "ok".to_string()
            }
        }
    }
}

fn parse_power_loss(args: &[&str]) -> Result<Command, ParseError> {
    let mut seed = None;
    let mut torn = false;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match *arg {
            "--torn" => torn = true,
            "--seed" => {
                let value = iter.next().copied().unwrap_or("");
                seed = Some(
                    value
                        .parse()
                        .map_err(|_| ParseError::BadArgument(value.to_string()))?,
                );
            }
            other => return Err(ParseError::BadArgument(other.to_string())),
        }
    }
    Ok(Command::PowerLoss { seed, torn })
}

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The reply to one command line.
pub fn handle_line(line: &str, backing: &Mutex<Backing>) -> String {
    match Command::parse(line) {
        Ok(command) => command.execute(backing),
        Err(e) => format!("err {e}"),
    }
}

/// Serves the control socket at `path` (a stale socket file is replaced) on a thread.
pub fn serve(path: &Path, backing: Arc<Mutex<Backing>>) -> io::Result<std::thread::JoinHandle<()>> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("lossyfs-control".to_string())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = serve_connection(stream, &backing) {
                            tracing::warn!(%e, "lossyfs: control connection failed");
                        }
                    }
                    Err(e) => tracing::warn!(%e, "lossyfs: control accept failed"),
                }
            }
        })
}

/// Answers each line of one connection until it closes.
fn serve_connection(stream: UnixStream, backing: &Mutex<Backing>) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        let n = (&mut reader).take(COMMAND_BYTES_MAX).read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') && n as u64 >= COMMAND_BYTES_MAX {
            writeln!(writer, "err command too long")?;
            return Ok(());
        }
        writeln!(writer, "{}", handle_line(line.trim(), backing))?;
    }
}

/// Sends one command to the control socket at `path`; returns the reply line.
pub fn send(path: &Path, command: &str) -> io::Result<String> {
    let mut stream = UnixStream::connect(path)?;
    writeln!(stream, "{command}")?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    Ok(reply.trim_end().to_string())
}

#[cfg(test)]
mod tests;
