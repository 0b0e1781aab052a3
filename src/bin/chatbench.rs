//! chatbench: the load generator of chatnode.
//!
//! Registers `--senders` users, gives each one WebSocket and a group conversation (shared
//! with the next sender, so every message is also pushed to someone), then sends for
//! `--warmup` + `--duration` and reports ack latency, throughput, errors, push delivery and,
//! from outside, the server's CPU, RSS and synced writes. `--idle-connections N` instead
//! measures server memory per idle authenticated socket.
//!
//! Thousands of sockets need a raised open-files limit: run `ulimit -n 65536` first.

// A binary's root is a crate root, so its modules would be looked up next to it in src/bin/
// (where cargo would take them for binaries); keep them in their own directory instead.
#[path = "chatbench/load.rs"]
mod load;
#[path = "chatbench/net.rs"]
mod net;
#[path = "chatbench/observe.rs"]
mod observe;
#[path = "chatbench/setup.rs"]
mod setup;
#[path = "chatbench/stats.rs"]
mod stats;

use anyhow::{bail, Result};
use chatnode_client::WsClient;
use clap::Parser;
use net::Endpoint;
use rand::Rng;
use stats::{Latency, ProcReport, Report, Stats, Synced};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// Devices a user may have connected at once (PROTOCOL.md "Limits").
const DEVICES_PER_USER: usize = 5;
/// Open-loop bound on outstanding sends per sender when --inflight is not given. It only
/// bounds memory: sends held back by it still count their latency from their schedule.
const OPEN_LOOP_WINDOW: usize = 1024;
/// Descriptors besides the sockets: HTTP setup connections, /proc reads, stdio.
const SPARE_FDS: u64 = 100;

#[derive(Parser, Debug)]
#[command(
    name = "chatbench",
    about = "Load generator for chatnode",
    after_help = "Many sockets need a raised open-files limit: run `ulimit -n 65536` first."
)]
struct Cli {
    /// Node WebSocket URL (repeatable; sockets are spread round-robin). Only ws://.
    #[arg(long = "url", default_value = "ws://127.0.0.1:7070")]
    urls: Vec<String>,
    /// Sending users, one socket each.
    #[arg(long, default_value_t = 1000)]
    senders: usize,
    /// Group conversations; sender i sends to conversation i mod this (≤ senders).
    #[arg(long, default_value_t = 1000)]
    conversations: usize,
    /// Total sends/s on a fixed schedule (open loop); 0 = closed loop as fast as acks come.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Outstanding sends per sender: the closed-loop window (default 1), or the open-loop
    /// memory bound (default 1024).
    #[arg(long)]
    inflight: Option<usize>,
    /// Measured window, e.g. 30s, 2m, 500ms.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before the measured window, not measured.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    warmup: Duration,
    /// Message body length (1..=4000 ASCII characters).
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Instead of load: open N idle authenticated sockets and report server RSS per socket.
    #[arg(long)]
    idle_connections: Option<usize>,
    /// Server process to sample CPU% and RSS of, from /proc (repeatable).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Registrations in flight at once (argon2 makes each slow on the server).
    #[arg(long, default_value_t = 16)]
    register_concurrency: usize,
}

/// "30s", "500ms", "2m", "1h", or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m or h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.idle_connections {
        Some(n) => run_idle(&cli, n).await,
        None => run_load(&cli).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatbench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn endpoints(cli: &Cli) -> Result<Vec<Endpoint>> {
    cli.urls.iter().map(|u| Endpoint::parse(u)).collect()
}

/// A short random id so runs never collide on usernames or client_msg_ids.
fn run_id() -> String {
    let rng = rand::thread_rng();
    rng.sample_iter(rand::distributions::Alphanumeric)
        .take(8)
        .map(|b| (b as char).to_ascii_lowercase())
        .collect()
}

fn warn_if_few_fds(sockets: usize) {
    let needed = sockets as u64 + SPARE_FDS;
    match observe::open_files_limit() {
        Some(limit) if limit < needed => eprintln!(
            "warning: open-files limit is {limit} but this run needs about {needed}; \
             run `ulimit -n 65536` first"
        ),
        _ => {}
    }
}

fn validate(cli: &Cli) -> Result<()> {
    if cli.senders < 2 {
        bail!("--senders must be at least 2: each group needs a second member");
    }
    if cli.conversations == 0 || cli.conversations > cli.senders {
        bail!("--conversations must be 1..=senders: conversation c is created by sender c");
    }
    // Conversation 0 is the largest group (senders ≡ 0 mod conversations, plus one).
    let largest = setup::group_members(0, cli.senders, cli.conversations).len();
    if largest > setup::MAX_GROUP_OTHERS {
        bail!(
            "{} senders over {} conversations makes groups of {} members; at most 200 \
             are allowed, use more conversations",
            cli.senders,
            cli.conversations,
            largest + 1
        );
    }
    if !(1..=4000).contains(&cli.body_bytes) {
        bail!("--body-bytes must be 1..=4000");
    }
    if cli.inflight == Some(0) {
        bail!("--inflight must be at least 1");
    }
    Ok(())
}

/// Ctrl-C once: stop and report what was measured. Twice: quit at once. Installed only after
/// setup, so an interrupt during setup keeps its default effect (exit).
fn watch_ctrl_c() -> Arc<Notify> {
    let interrupt = Arc::new(Notify::new());
    let notify = interrupt.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!("interrupted: stopping; the report follows (Ctrl-C again to quit now)");
        notify.notify_one();
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(130);
    });
    interrupt
}

/// Sleeps until `at`; false if interrupted first.
async fn sleep_or_interrupt(at: Instant, interrupt: &Notify) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(at.into()) => true,
        _ = interrupt.notified() => false,
    }
}

async fn run_load(cli: &Cli) -> Result<()> {
    validate(cli)?;
    let eps = endpoints(cli)?;
    let run = run_id();
    warn_if_few_fds(cli.senders);
    let window = cli
        .inflight
        .unwrap_or(if cli.rate > 0 { OPEN_LOOP_WINDOW } else { 1 });
    let mode = match cli.rate {
        0 => format!("closed loop, {window} in flight per sender"),
        r => format!("open loop {r}/s, at most {window} in flight per sender"),
    };
    let description = format!(
        "run {run}, {} senders on {} node(s), {} conversations, {mode}, {}-byte bodies, \
         warmup {:?}",
        cli.senders,
        eps.len(),
        cli.conversations,
        cli.body_bytes,
        cli.warmup
    );
    eprintln!("chatbench: {description}");

    let users = setup::users(&eps, &run, cli.senders, cli.register_concurrency).await?;
    let mut sockets =
        setup::connect_all(&eps, &users, cli.senders, |i| (i, format!("bench-{i}"))).await?;
    let conversations =
        setup::create_conversations(&mut sockets, &users, cli.conversations).await?;

    let interrupt = watch_ctrl_c();
    // A little slack so every task is running before the first send is due.
    let start = Instant::now() + Duration::from_millis(200);
    let stats = Arc::new(Stats::new(start + cli.warmup));
    let (stop_tx, stop_rx) = watch::channel(false);
    let body_json: Arc<str> = serde_json::to_string(&"x".repeat(cli.body_bytes))?.into();
    let mut tasks = Vec::new();
    for (i, ws) in sockets.into_iter().map(WsClient::into_inner).enumerate() {
        let cfg = load::SenderConfig {
            index: i,
            conversation_json: serde_json::to_string(&conversations[i % conversations.len()])?,
            client_msg_id_prefix: format!("{run}-{i}-"),
            body_json: body_json.clone(),
            schedule: (cli.rate > 0).then(|| {
                load::Schedule::new(start, cli.rate as f64 / cli.senders as f64, i, cli.senders)
            }),
            window,
        };
        tasks.extend(load::spawn_sender(ws, cfg, stats.clone(), stop_rx.clone()));
    }
    let progress = tokio::spawn(stats::progress_loop(stats.clone(), start));
    let observed = measure(cli, &eps[0], &stats, &interrupt, &stop_tx).await;
    let unacked_at_end = join_senders(tasks).await;
    progress.abort();

    let (ack, delivery) = stats.merged();
    let report = Report {
        setup: description,
        window_secs: observed.window_secs,
        sent: stats.sent.load(std::sync::atomic::Ordering::Relaxed),
        acked: stats.acked.load(std::sync::atomic::Ordering::Relaxed),
        unacked_at_end,
        ack: Latency::of(&ack),
        errors: stats.errors(),
        pushes: stats.pushes.load(std::sync::atomic::Ordering::Relaxed),
        delivery: Latency::of(&delivery),
        procs: observed.procs,
        synced: observed.synced,
    };
    print!("{}", report.format());
    write_json(cli, &report.to_json())
}

/// What was seen of the server over the measured window.
struct Observed {
    window_secs: f64,
    procs: Vec<ProcReport>,
    synced: Synced,
}

/// Waits out the warmup, observes the server over the window, and stops the senders at its
/// end (the deadline or Ctrl-C).
async fn measure(
    cli: &Cli,
    ep: &Endpoint,
    stats: &Stats,
    interrupt: &Notify,
    stop: &watch::Sender<bool>,
) -> Observed {
    if !sleep_or_interrupt(stats.measure_start, interrupt).await {
        let _ = stop.send(true);
        return Observed {
            window_secs: 0.0,
            procs: Vec::new(),
            synced: Synced::Unavailable("interrupted during warmup".into()),
        };
    }
    stats.set_measuring(true);
    let procs_before: Vec<_> = cli.pids.iter().map(|&p| sample_or_warn(p)).collect();
    let rss = observe::RssWatch::start(cli.pids.clone());
    let synced_before = observe::synced_writes(ep).await;

    sleep_or_interrupt(stats.measure_start + cli.duration, interrupt).await;
    stats.set_measuring(false);
    let _ = stop.send(true);
    let window_secs = stats.measure_start.elapsed().as_secs_f64();

    let max_rss = rss.stop();
    let procs = cli
        .pids
        .iter()
        .zip(procs_before)
        .zip(max_rss)
        .map(|((&pid, before), max_rss_bytes)| ProcReport {
            pid,
            cpu_percent: before
                .zip(sample_or_warn(pid))
                .and_then(|(b, a)| observe::cpu_percent(&b, &a)),
            max_rss_bytes,
        })
        .collect();
    let synced = match (synced_before, observe::synced_writes(ep).await) {
        (Ok(Some(before)), Ok(Some(after))) => Synced::Delta(after - before),
        (Ok(None), _) | (_, Ok(None)) => Synced::Absent,
        (Err(e), _) | (_, Err(e)) => Synced::Unavailable(format!("{e:#}")),
    };
    Observed {
        window_secs,
        procs,
        synced,
    }
}

fn sample_or_warn(pid: u32) -> Option<observe::ProcSample> {
    observe::sample(pid)
        .map_err(|e| eprintln!("warning: pid {pid}: {e:#}"))
        .ok()
}

/// Waits for the sender tasks (readers drain for load::DRAIN) and sums the sends left unacked.
async fn join_senders(tasks: Vec<JoinHandle<u64>>) -> u64 {
    let deadline = tokio::time::Instant::now() + load::DRAIN + Duration::from_secs(3);
    let mut unacked = 0;
    for task in tasks {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(n)) => unacked += n,
            _ => abort.abort(), // stuck writing to a stalled socket
        }
    }
    unacked
}

fn write_json(cli: &Cli, value: &serde_json::Value) -> Result<()> {
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")?;
        eprintln!("chatbench: wrote {}", path.display());
    }
    Ok(())
}

fn rss_of(pids: &[u32]) -> Vec<Option<u64>> {
    pids.iter()
        .map(|&p| sample_or_warn(p).map(|s| s.rss_bytes))
        .collect()
}

/// Memory per idle connection: server RSS before and after opening N authenticated sockets.
async fn run_idle(cli: &Cli, n: usize) -> Result<()> {
    if n == 0 {
        bail!("--idle-connections must be at least 1");
    }
    let eps = endpoints(cli)?;
    let run = run_id();
    warn_if_few_fds(n);
    if cli.pids.is_empty() {
        eprintln!("warning: no --pid given, so no RSS to measure; opening the sockets anyway");
    }
    let user_count = n.div_ceil(DEVICES_PER_USER);
    let users = setup::users(&eps, &run, user_count, cli.register_concurrency).await?;
    let before = rss_of(&cli.pids);
    let sockets = setup::connect_all(&eps, &users, n, |k| {
        (
            k / DEVICES_PER_USER,
            format!("idle-{}", k % DEVICES_PER_USER),
        )
    })
    .await?;
    // Let the server finish whatever it does per socket right after auth.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_of(&cli.pids);

    let mut servers = Vec::new();
    for ((pid, b), a) in cli.pids.iter().zip(before).zip(after) {
        let (Some(b), Some(a)) = (b, a) else {
            println!("pid {pid}: RSS unavailable");
            continue;
        };
        let per_conn = (a as f64 - b as f64) / n as f64;
        println!(
            "pid {pid}: RSS {:.1} MiB -> {:.1} MiB with {n} idle connections: {per_conn:.0} bytes per connection",
            b as f64 / (1 << 20) as f64,
            a as f64 / (1 << 20) as f64,
        );
        servers.push(
            serde_json::json!({"pid": pid, "rss_before_bytes": b, "rss_after_bytes": a,
                                        "bytes_per_connection": per_conn}),
        );
    }
    write_json(
        cli,
        &serde_json::json!({"idle_connections": n, "servers": servers}),
    )?;
    eprintln!("chatbench: holding {n} idle connections for 5 s");
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(sockets);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn cli_defaults() {
        let cli = Cli::parse_from(["chatbench", "--url", "ws://a:1", "--url", "ws://b:2"]);
        assert_eq!(cli.urls.len(), 2);
        assert_eq!(
            (cli.senders, cli.rate, cli.duration),
            (1000, 0, Duration::from_secs(30))
        );
        assert!(validate(&cli).is_ok());
        let cli = Cli::parse_from(["chatbench", "--senders", "1000", "--conversations", "2"]);
        assert!(validate(&cli).is_err(), "groups of 501");
    }
}
