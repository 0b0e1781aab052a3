//! `run`: network, cluster, workload + nemesis for --time, healing, final reads, checksums,
//! teardown, then the checker on the recorded history.

use crate::checker;
use crate::cluster::{self, Caps, Cluster};
use crate::history::{self, Event, History, Type, Value, F, HARNESS};
use crate::http;
use crate::nemesis::{self, Nemesis};
use crate::net;
use crate::report;
use crate::workload::{self, Client, ClientCfg, Nodes};
use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

#[derive(clap::Args, Debug, Clone)]
pub struct RunOpts {
    /// Seconds of workload (faults included).
    #[arg(long, default_value_t = 300)]
    pub time: u64,
    /// Client operations per second, all clients together.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Faults, comma-separated: partition-halves, isolate-one, isolate-leader, bridge, ring,
    /// kill, pause, join-leave, clock-skew, lossy, partition+kill, pause+kill; or all / none.
    #[arg(long, default_value = "all")]
    pub nemesis: String,
    /// Seed of every random choice (faults, ops, timing jitter); printed at the start.
    #[arg(long)]
    pub seed: Option<u64>,
    /// The chatnode binary (default: target/release/chatnode, else
    /// ~/.cache/chatnode-target/release/chatnode).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Where runs are written (a directory per run inside).
    #[arg(long, default_value_os_t = default_out())]
    pub out: PathBuf,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Client processes (users, one WebSocket each).
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// Group conversations shared by all clients.
    #[arg(long, default_value_t = 5)]
    pub conversations: usize,
    /// Seconds healthy between faults and seconds a fault lasts: "MIN-MAX".
    #[arg(long, default_value = "5-10")]
    pub interval: String,
    /// Shard groups of the new cluster (passed in the config file; chatnode's default if unset).
    #[arg(long)]
    pub shards: Option<u32>,
    /// Seconds the cluster gets after the final heal to be ready, and each final read to
    /// succeed; longer counts as `unrecovered`.
    #[arg(long, default_value_t = 120)]
    pub recovery_wait: u64,
}

pub fn default_out() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("out")
}

fn parse_interval(s: &str) -> Result<(f64, f64)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (f64, f64) = (a.trim().parse()?, b.trim().parse()?);
    if !(a > 0.0 && b >= a) {
        bail!("--interval {s}: want MIN-MAX seconds with 0 < MIN <= MAX");
    }
    Ok((a, b))
}

/// UTC "YYYYmmdd-HHMMSS" without a date crate.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Tears the network down when dropped (error, panic), unless disarmed.
struct Teardown {
    armed: bool,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if self.armed {
            for r in net::cleanup() {
                tracing::info!("teardown: removed {r}");
            }
        }
    }
}

/// What the options and the binary decide before anything starts.
struct Plan {
    bin: PathBuf,
    caps: Caps,
    faults: Vec<String>,
    interval: (f64, f64),
    seed: u64,
}

/// Everything that runs during the workload phase.
struct Running {
    clients: Vec<tokio::task::JoinHandle<()>>,
    nemesis: tokio::task::JoinHandle<()>,
    progress: tokio::task::JoinHandle<()>,
    stop: Arc<AtomicBool>,
    nemesis_notes: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Runs everything; returns the exit code (0 clean, 1 anomalies, 2 harness failure).
pub async fn run(opts: RunOpts) -> Result<u8> {
    let plan = plan(&opts)?;
    let dir = prepare_dir(&opts, &plan)?;

    for r in net::cleanup() {
        eprintln!("  leftover from an earlier run removed: {r}");
    }
    let mut teardown = Teardown { armed: true };
    let mut notes: Vec<String> = Vec::new();
    let cluster = Arc::new(Mutex::new(
        start_cluster(&opts, &plan, &dir, &mut notes).await?,
    ));

    let start = Instant::now();
    let (hist, writer) = History::create(&dir.join("history.jsonl"), start)?;
    let nodes: Nodes = Arc::new(std::sync::RwLock::new(
        (1..=opts.nodes)
            .map(|i| (i, format!("{}:{}", net::node_ip(i), net::CLIENT_PORT)))
            .collect(),
    ));
    let node_list = nodes.read().unwrap().clone();
    let setup = workload::setup(&node_list, opts.clients, opts.conversations, &hist)
        .await
        .context("workload setup (users, conversations)")?;
    eprintln!(
        "  {} users, {} conversations; workload starts",
        setup.users.len(),
        setup.conversations.len()
    );
    record_shards(&node_list[0].1, &setup.conversations, &hist).await;

    let running = start_workload(&opts, &plan, &setup, &cluster, &hist, nodes, start);
    tokio::time::sleep(Duration::from_secs(opts.time)).await;
    let nemesis_notes = wind_down(running, &cluster, &hist, &mut notes).await;

    // Final phase: every member ready, full reads through every node, replica checksums.
    let members: Vec<(usize, String)> = {
        let c = cluster.lock().await;
        c.nodes
            .iter()
            .filter(|n| n.member && n.running())
            .map(|n| (n.idx, n.client_addr()))
            .collect()
    };
    await_ready(&members, opts.recovery_wait, &hist).await;
    final_reads(&members, &setup, &hist, opts.recovery_wait, &mut notes).await;
    collect_checksums(&members, &hist).await;
    record_final_status(&members, &dir).await?;
    stop_cluster(&cluster, &mut notes).await;
    drop(hist);
    match writer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.context("writing the history")),
        Err(e) => bail!("history writer: {e}"),
    }
    for r in net::cleanup() {
        tracing::debug!("teardown: removed {r}");
    }
    teardown.armed = false;
    notes.extend(nemesis_notes.lock().unwrap().iter().cloned());

    eprintln!("  checking {}", dir.join("history.jsonl").display());
    check_dir(&dir.join("history.jsonl"), &dir, notes)
}

/// Checks the options against each other and against the binary's capabilities; picks the
/// seed.
fn plan(opts: &RunOpts) -> Result<Plan> {
    net::preflight()?;
    let bin = cluster::find_bin(opts.bin.clone())?;
    let caps = Caps::detect(&bin)?;
    let faults = nemesis::parse_list(&opts.nemesis)?;
    let interval = parse_interval(&opts.interval)?;
    if opts.nodes == 0 || opts.nodes > 9 {
        bail!("--nodes must be 1..=9");
    }
    if opts.nodes > 1 && !caps.clustered() {
        bail!(
            "{} is a single-node build (its --help has no --peer-listen/--join): use --nodes 1",
            bin.display()
        );
    }
    if opts.clients == 0 || opts.conversations == 0 || opts.rate == 0 {
        bail!("--clients, --conversations and --rate must be positive");
    }
    let seed = opts.seed.unwrap_or_else(rand::random::<u64>);
    Ok(Plan {
        bin,
        caps,
        faults,
        interval,
        seed,
    })
}

/// Creates the run's directory (and the `latest` link to it), prints the run's parameters
/// and saves them in run.json.
fn prepare_dir(opts: &RunOpts, plan: &Plan) -> Result<PathBuf> {
    let Plan {
        bin,
        caps,
        faults,
        seed,
        ..
    } = plan;
    let name = format!("{}-s{seed}", timestamp());
    let dir = opts.out.join(&name);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let latest = opts.out.join("latest");
    let _ = std::fs::remove_file(&latest);
    let _ = std::os::unix::fs::symlink(&name, &latest);
    eprintln!(
        "chatnode-jepsen: run {name}\n  bin {}\n  caps {:?}\n  nodes {} clients {} conversations {} rate {}/s time {}s seed {seed}\n  nemesis {}",
        bin.display(),
        caps,
        opts.nodes,
        opts.clients,
        opts.conversations,
        opts.rate,
        opts.time,
        if faults.is_empty() { "none".to_string() } else { faults.join(",") }
    );
    std::fs::write(
        dir.join("run.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "seed": seed, "bin": bin, "nodes": opts.nodes, "clients": opts.clients,
            "conversations": opts.conversations, "rate": opts.rate, "time": opts.time,
            "nemesis": faults, "interval": opts.interval, "caps": caps,
        }))?,
    )?;
    Ok(dir)
}

/// Sets up the network (with UDP relays when a fault needs them; a spare node for
/// join-leave) and forms the cluster of --nodes members.
async fn start_cluster(
    opts: &RunOpts,
    plan: &Plan,
    dir: &Path,
    notes: &mut Vec<String>,
) -> Result<Cluster> {
    let Plan {
        bin, caps, faults, ..
    } = plan;
    let skew = faults.iter().any(|f| f == "clock-skew") && caps.faketime.is_some();
    if faults.iter().any(|f| f == "clock-skew") && caps.faketime.is_none() {
        notes.push(
            "clock-skew skipped: libfaketime not installed (apt-get install faketime)".into(),
        );
    }
    let spare = faults.iter().any(|f| f == "join-leave") && caps.clustered();
    let total = opts.nodes + usize::from(spare);
    // Relays only when a fault needs them: otherwise peers talk directly.
    let relays = (faults.iter().any(|f| f == "flaky-links") && caps.clustered())
        .then(crate::relay::Relays::default);
    net::setup(total, relays.is_some())?;
    if let Some(r) = &relays {
        for i in 1..=total {
            r.start(i).await?;
        }
    }
    let mut c = Cluster::new(
        bin.clone(),
        dir.to_path_buf(),
        caps.clone(),
        total,
        skew,
        opts.shards,
        relays,
    )?;
    let formed = Instant::now();
    c.form(opts.nodes).await.context("forming the cluster")?;
    eprintln!(
        "  cluster of {} ready in {:.1}s",
        opts.nodes,
        formed.elapsed().as_secs_f64()
    );
    Ok(c)
}

/// Spawns one task per client, the nemesis and the progress line.
fn start_workload(
    opts: &RunOpts,
    plan: &Plan,
    setup: &workload::Setup,
    cluster: &Arc<Mutex<Cluster>>,
    hist: &History,
    nodes: Nodes,
    start: Instant,
) -> Running {
    let seed = plan.seed;
    let stop = Arc::new(AtomicBool::new(false));
    let current = Arc::new(std::sync::Mutex::new("none".to_string()));
    let nemesis_notes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let per_client = Duration::from_secs_f64(opts.clients as f64 / opts.rate as f64);
    let mut clients = Vec::new();
    for p in 0..opts.clients {
        let client = Client::new(ClientCfg {
            process: p,
            user: setup.users[p].clone(),
            conversations: setup.conversations.clone(),
            nodes: nodes.clone(),
            interval: per_client,
            seed,
            stop: stop.clone(),
            hist: hist.clone(),
        });
        clients.push(tokio::spawn(client.run()));
    }
    let nem = Nemesis::new(
        cluster.clone(),
        hist.clone(),
        StdRng::seed_from_u64(seed),
        plan.faults.clone(),
        current.clone(),
        stop.clone(),
        nodes.clone(),
        plan.interval,
        nemesis_notes.clone(),
    );
    let nemesis = tokio::spawn(nem.run());
    let progress = tokio::spawn(progress_line(hist.clone(), current, stop.clone(), start));
    Running {
        clients,
        nemesis,
        progress,
        stop,
        nemesis_notes,
    }
}

/// Prints the counts and the current fault on stderr every second, until aborted.
async fn progress_line(
    hist: History,
    current: Arc<std::sync::Mutex<String>>,
    stop: Arc<AtomicBool>,
    start: Instant,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let c = &hist.counters;
        eprintln!(
            "[{:>5.0}s] ok {:>7} fail {:>6} info {:>6} | fault: {}{}",
            start.elapsed().as_secs_f64(),
            c.ok.load(Ordering::Relaxed),
            c.fail.load(Ordering::Relaxed),
            c.info.load(Ordering::Relaxed),
            current.lock().unwrap(),
            if stop.load(Ordering::Relaxed) {
                " (winding down)"
            } else {
                ""
            }
        );
    }
}

/// Time is up: stops the nemesis, heals everything, lets every client finish its op (90 s
/// in all) and stops the progress line. Returns the nemesis' notes.
async fn wind_down(
    running: Running,
    cluster: &Arc<Mutex<Cluster>>,
    hist: &History,
    notes: &mut Vec<String>,
) -> Arc<std::sync::Mutex<Vec<String>>> {
    let Running {
        clients,
        nemesis: mut nemesis_task,
        progress,
        stop,
        nemesis_notes,
    } = running;
    stop.store(true, Ordering::Relaxed);
    eprintln!("  time is up: healing, letting clients finish");
    if tokio::time::timeout(Duration::from_secs(60), &mut nemesis_task)
        .await
        .is_err()
    {
        nemesis_task.abort();
        notes.push("the nemesis did not stop within 60 s of the end".into());
    }
    if let Err(e) = nemesis::heal_all(cluster, hist).await {
        notes.push(format!("final heal: {e:#}"));
    }
    let wind_down = Instant::now() + Duration::from_secs(90);
    for (p, mut c) in clients.into_iter().enumerate() {
        // A client finishes its current op (bounded retries) and fills its push gaps; one
        // that takes too long is stopped so that no op overlaps the final reads.
        let left = wind_down.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, &mut c).await.is_err() {
            c.abort();
            notes.push(format!(
                "client p{p} did not finish within 90 s of the end and was stopped"
            ));
        }
    }
    progress.abort();
    nemesis_notes
}

/// Waits for every member's /ready at once (one deadline of `recovery_wait` s), records
/// which were ready (`f: ready`) and prints the outcome.
async fn await_ready(members: &[(usize, String)], recovery_wait: u64, hist: &History) {
    let ready_start = Instant::now();
    let waits = members.iter().map(|(i, addr)| async move {
        (
            *i,
            cluster::wait_ready(addr, Duration::from_secs(recovery_wait))
                .await
                .is_ok(),
        )
    });
    let readiness = futures_util::future::join_all(waits).await;
    let mut ev = Event::new(hist.next_op_id(), HARNESS, Type::Ok, F::Ready, 0);
    ev.value = Some(Value {
        raw: Some(serde_json::Value::Object(
            readiness
                .iter()
                .map(|(i, ok)| (cluster::node_name(*i), serde_json::Value::Bool(*ok)))
                .collect(),
        )),
        ..Default::default()
    });
    hist.record(ev);
    let not_ready: Vec<usize> = readiness
        .into_iter()
        .filter_map(|(i, ok)| (!ok).then_some(i))
        .collect();
    if not_ready.is_empty() {
        eprintln!(
            "  all {} members ready {:.1}s after healing",
            members.len(),
            ready_start.elapsed().as_secs_f64()
        );
    } else {
        let names: Vec<String> = not_ready.iter().map(|&i| cluster::node_name(i)).collect();
        eprintln!(
            "  NOT READY {} s after healing: {}",
            recovery_wait,
            names.join(",")
        );
    }
}

/// Full reads of every conversation through every member, repeated (3 rounds at most)
/// while complete reads disagree.
///
/// Nodes must agree; a write that committed late (a send given up at the end) can make an
/// earlier node's read shorter, so disagreeing reads are repeated (the checker judges the
/// last read of each node, and every read against the acks before it).
async fn final_reads(
    members: &[(usize, String)],
    setup: &workload::Setup,
    hist: &History,
    recovery_wait: u64,
    notes: &mut Vec<String>,
) {
    eprintln!("  final reads on {} nodes", members.len());
    for round in 0..3 {
        let reads = members.iter().map(|(i, addr)| {
            let (hist, user, convs) = (hist, &setup.users[0], &setup.conversations);
            async move {
                (
                    *i,
                    workload::final_read(
                        *i,
                        addr,
                        user,
                        convs,
                        hist,
                        Duration::from_secs(recovery_wait.min(60)),
                    )
                    .await,
                )
            }
        });
        let lasts = futures_util::future::join_all(reads).await;
        for (i, got) in &lasts {
            if got.len() < setup.conversations.len() && round == 0 {
                notes.push(format!("final read through n{i} incomplete"));
            }
        }
        let complete = lasts
            .iter()
            .all(|(_, got)| got.len() == setup.conversations.len());
        let agree = lasts.windows(2).all(|w| w[0].1 == w[1].1);
        // Incomplete reads were retried for a minute already; only disagreement is re-read.
        if agree || !complete {
            break;
        }
        eprintln!("  final reads disagree between nodes; reading again");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Every node's /admin/status at the end, for diagnosis (lagging replicas, leaders), into
/// final-status.json.
async fn record_final_status(members: &[(usize, String)], dir: &Path) -> Result<()> {
    let mut status = serde_json::Map::new();
    for (i, addr) in members {
        let v = match http::get(addr, "/admin/status", Duration::from_secs(10)).await {
            Ok(r) if r.status == 200 => r.json().unwrap_or(serde_json::Value::Null),
            Ok(r) => serde_json::json!({"http_status": r.status}),
            Err(e) => serde_json::json!({"error": format!("{e:#}")}),
        };
        status.insert(cluster::node_name(*i), v);
    }
    let _ = std::fs::write(
        dir.join("final-status.json"),
        serde_json::to_string_pretty(&status)?,
    );
    Ok(())
}

/// Stops every node; notes those that had exited by themselves before.
async fn stop_cluster(cluster: &Arc<Mutex<Cluster>>, notes: &mut Vec<String>) {
    let exited = {
        let mut c = cluster.lock().await;
        let exited = c.reap();
        c.stop_all().await;
        exited
    };
    for (i, status) in exited {
        notes.push(format!(
            "n{i} had exited by itself before the end: {status}"
        ));
    }
}

async fn collect_checksums(members: &[(usize, String)], hist: &History) {
    let deadline = Instant::now() + Duration::from_secs(60);
    // Nodes compute checksums in the background (at most once per interval): only those
    // taken after quiescence (now) count. Builds that scan per request send no
    // `computed_at_ms` and are taken as they are.
    let since_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut raw = serde_json::Map::new();
    let mut error = None;
    loop {
        raw.clear();
        let mut unsupported = 0;
        let mut stale = 0;
        // A node answers 503 until its first background scan is done: ask again.
        let mut missing = 0;
        for (i, addr) in members {
            match http::get(addr, "/admin/checksum", Duration::from_secs(10)).await {
                Ok(r) if r.status == 200 => {
                    let v = r.json().unwrap_or(serde_json::Value::Null);
                    if v["computed_at_ms"].as_u64().is_some_and(|t| t < since_ms) {
                        stale += 1;
                    }
                    raw.insert(cluster::node_name(*i), v);
                }
                Ok(r) if r.status == 404 => unsupported += 1,
                _ => {
                    missing += 1;
                    raw.insert(cluster::node_name(*i), serde_json::Value::Null);
                }
            }
        }
        if unsupported == members.len() {
            error =
                Some("skipped: GET /admin/checksum answers 404 (not in this build)".to_string());
            break;
        }
        // Quiescent when every group is at one applied index on every replica.
        let mut idx: std::collections::HashMap<String, std::collections::BTreeSet<u64>> =
            Default::default();
        for ans in raw.values() {
            for g in ans["groups"].as_array().cloned().unwrap_or_default() {
                idx.entry(g["group"].to_string())
                    .or_default()
                    .insert(g["applied_index"].as_u64().unwrap_or(0));
            }
        }
        let settled = missing == 0 && stale == 0 && idx.values().all(|s| s.len() <= 1);
        if settled || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut ev = Event::new(hist.next_op_id(), HARNESS, Type::Ok, F::Checksum, 0);
    if error.is_none() {
        ev.value = Some(Value {
            raw: Some(serde_json::Value::Object(raw)),
            ..Default::default()
        });
    }
    ev.error = error;
    hist.record(ev);
}

/// Records which shard group each conversation hashes to (`GET /admin/shard`), so that the
/// checker can time recovery per shard; builds without the endpoint are left out.
async fn record_shards(addr: &str, conversations: &[String], hist: &History) {
    let mut map = serde_json::Map::new();
    for c in conversations {
        let path = format!("/admin/shard?conversation_id={c}");
        let Ok(r) = http::get(addr, &path, Duration::from_secs(5)).await else {
            return;
        };
        let Some(group) = r.json().ok().and_then(|v| v["group"].as_u64()) else {
            return;
        };
        map.insert(c.clone(), group.into());
    }
    let mut ev = Event::new(hist.next_op_id(), HARNESS, Type::Ok, F::Shards, 0);
    ev.value = Some(Value {
        raw: Some(serde_json::Value::Object(map)),
        ..Default::default()
    });
    hist.record(ev);
}

/// Checks a history file and writes results.json and latency.svg into `dir`.
pub fn check_dir(history: &Path, dir: &Path, notes: Vec<String>) -> Result<u8> {
    let events = history::read_history(history)?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut report = checker::check(&events);
    report.notes.extend(notes);
    if report.harness_error.is_none() && report.stats.sends_logical == 0 {
        report.harness_error = Some("the history has no sends".into());
        report.valid = false;
    }
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let ops = checker::pair(&events);
    std::fs::write(dir.join("latency.svg"), report::latency_svg(&ops, &report))?;
    println!("{}", report::summary(&report));
    println!(
        "results: {}\nplot:    {}",
        dir.join("results.json").display(),
        dir.join("latency.svg").display()
    );
    Ok(report.exit_code())
}
