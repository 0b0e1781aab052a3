//! The chatnode processes: one per namespace, started with `ip netns exec`, killed, paused,
//! restarted and finally stopped by the harness. Node numbers are 1-based (`n1` = index 1).

use crate::http;
use crate::net::{self, CLIENT_PORT, PEER_PORT};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// What the chatnode binary supports, from its `--help`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Caps {
    pub peer_listen: bool,
    pub join: bool,
    pub token: bool,
    /// libfaketime's shared object, when installed.
    pub faketime: Option<PathBuf>,
}

impl Caps {
    pub fn detect(bin: &Path) -> Result<Caps> {
        let out = std::process::Command::new(bin)
            .arg("--help")
            .output()
            .with_context(|| format!("run {} --help", bin.display()))?;
        let help = String::from_utf8_lossy(&out.stdout);
        let faketime = [
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
            "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
            "/usr/lib/faketime/libfaketimeMT.so.1",
            "/usr/local/lib/faketime/libfaketimeMT.so.1",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
        Ok(Caps {
            peer_listen: help.contains("--peer-listen"),
            join: help.contains("--join"),
            token: help.contains("--token"),
            faketime,
        })
    }

    pub fn clustered(&self) -> bool {
        self.peer_listen && self.join
    }
}

pub struct NodeProc {
    pub idx: usize,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub faketime_file: PathBuf,
    pub child: Option<Child>,
    pub paused: bool,
    /// Part of the cluster (started at setup, or joined and not left since).
    pub member: bool,
}

impl NodeProc {
    pub fn client_addr(&self) -> String {
        format!("{}:{CLIENT_PORT}", net::node_ip(self.idx))
    }
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| c.id()).map(|p| p as i32)
    }
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct Cluster {
    pub bin: PathBuf,
    pub config: PathBuf,
    pub caps: Caps,
    /// `nodes[i - 1]` is node i; the last ones may be spares for join-leave.
    pub nodes: Vec<NodeProc>,
    pub join_token: Option<String>,
    /// Start nodes under libfaketime (for the clock-skew nemesis).
    pub skew: bool,
    pub join_port: u16,
    /// The UDP relays in front of every peer port (for the flaky-links nemesis).
    pub relays: Option<crate::relay::Relays>,
}

pub fn node_name(i: usize) -> String {
    format!("n{i}")
}

impl Cluster {
    pub fn new(
        bin: PathBuf,
        dir: PathBuf,
        caps: Caps,
        total: usize,
        skew: bool,
        shards: Option<u32>,
        relays: Option<crate::relay::Relays>,
    ) -> Result<Cluster> {
        let config = dir.join("chatnode.toml");
        let mut toml = String::from(
            "# written by chatnode-jepsen: abuse limits raised so that the workload tests the\n\
             # cluster, not the rate limiter\n",
        );
        if let Some(s) = shards {
            toml.push_str(&format!("shards = {s}\n"));
        }
        toml.push_str(
            "\n[limits]\nuser_messages_per_minute = 10000000\nconversation_messages_per_minute = 10000000\n\
             devices_per_user = 50\nnew_connections_per_second = 100000\n\
             connections_per_ip = 1000000\n\
             typing_per_minute = 10000000\nreceipts_per_minute = 10000000\n\
             presence_subscriptions_per_minute = 10000000\nreads_per_minute = 10000000\n\
             membership_changes_per_minute = 10000000\npings_per_minute = 10000000\n\
             conversations_created_per_hour = 10000000\n\
             \n[accounts]\nregistration = \"open\"\nregistrations_per_ip_per_hour = 10000000\n\
             \n[auth]\ntoken_ttl_secs = 86400\n",
        );
        std::fs::write(&config, toml)?;
        let nodes = (1..=total)
            .map(|i| -> Result<NodeProc> {
                let faketime_file = dir.join(format!("n{i}.faketime"));
                std::fs::write(&faketime_file, "+0\n")?;
                Ok(NodeProc {
                    idx: i,
                    data_dir: dir.join(format!("n{i}.data")),
                    log: dir.join(format!("n{i}.log")),
                    faketime_file,
                    child: None,
                    paused: false,
                    member: false,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Cluster {
            bin,
            config,
            caps,
            nodes,
            join_token: None,
            skew,
            join_port: PEER_PORT,
            relays,
        })
    }

    pub fn node(&self, i: usize) -> &NodeProc {
        &self.nodes[i - 1]
    }
    fn node_mut(&mut self, i: usize) -> &mut NodeProc {
        &mut self.nodes[i - 1]
    }

    /// Members of the cluster (running or not).
    pub fn members(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .filter(|n| n.member)
            .map(|n| n.idx)
            .collect()
    }

    /// Starts node i. `join` adds --join/--token (a first start of a non-seed node).
    pub fn start(&mut self, i: usize, join: bool) -> Result<()> {
        if self.node(i).running() {
            return Ok(());
        }
        // A node whose first join never completed has no identity yet: started without
        // --join it would found a cluster of its own.
        let join = join || (i != 1 && !self.node(i).data_dir.join("cluster.json").exists());
        // Any running member admits a joiner; n1 may be the one that is down.
        let seed = (1..=self.nodes.len())
            .find(|&s| {
                s != i && self.node(s).member && self.node(s).running() && !self.node(s).paused
            })
            .unwrap_or(1);
        let ip = net::node_ip(i);
        let node = self.node(i);
        std::fs::create_dir_all(&node.data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &net::ns_name(i)])
            .arg(&self.bin)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--listen")
            .arg(format!("{ip}:{CLIENT_PORT}"))
            .arg("--config")
            .arg(&self.config);
        if self.caps.peer_listen {
            cmd.arg("--peer-listen").arg(format!("{ip}:{PEER_PORT}"));
        }
        if self.relays.is_some() {
            // The others reach this node through its relay.
            let relay = crate::relay::relay_ip(i);
            cmd.arg("--advertise-peer")
                .arg(format!("{relay}:{PEER_PORT}"));
        }
        if join {
            let token = self
                .join_token
                .clone()
                .ok_or_else(|| anyhow!("no join token to start n{i} with"))?;
            cmd.arg("--join")
                .arg(format!("{}:{}", net::node_ip(seed), self.join_port))
                .arg("--token")
                .arg(token);
        }
        if self.skew {
            if let Some(lib) = &self.caps.faketime {
                cmd.env("LD_PRELOAD", lib)
                    .env("FAKETIME_TIMESTAMP_FILE", &node.faketime_file)
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                    .env("FAKETIME_CACHE_DURATION", "1");
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Own process group: a Ctrl-C at the terminal reaches the harness only, which
            // then tears the nodes down itself.
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("start n{i}"))?;
        let node = self.node_mut(i);
        node.child = Some(child);
        node.paused = false;
        node.member = true;
        Ok(())
    }

    pub fn signal(&self, i: usize, sig: i32) {
        if let Some(pid) = self.node(i).pid() {
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    pub async fn kill(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.signal(i, libc::SIGKILL);
        let node = self.node_mut(i);
        if let Some(mut child) = node.child.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        node.paused = false;
    }

    pub fn pause(&mut self, i: usize) {
        if self.node(i).running() {
            self.signal(i, libc::SIGSTOP);
            self.node_mut(i).paused = true;
        }
    }

    pub fn resume(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.node_mut(i).paused = false;
    }

    pub fn set_clock(&self, i: usize, offset_s: i64) -> Result<()> {
        let spec = if offset_s >= 0 {
            format!("+{offset_s}\n")
        } else {
            format!("{offset_s}\n")
        };
        std::fs::write(&self.node(i).faketime_file, spec)?;
        Ok(())
    }

    /// Reaps nodes that exited by themselves (a crash): they count as not running.
    pub fn reap(&mut self) -> Vec<(usize, String)> {
        let mut exited = Vec::new();
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    exited.push((node.idx, status.to_string()));
                    node.child = None;
                }
            }
        }
        exited
    }

    /// Forms the cluster: n1 first (it writes the join token), then the others with --join.
    pub async fn form(&mut self, n: usize) -> Result<()> {
        self.start(1, false)?;
        wait_ready(&self.node(1).client_addr(), Duration::from_secs(60))
            .await
            .context("n1 did not become ready")?;
        // /admin/* needs the cluster's admin token (builds before it had none).
        let admin_token = std::fs::read_to_string(self.node(1).data_dir.join("admin-token"))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        http::set_admin_token(admin_token);
        if n > 1 {
            if !self.caps.clustered() {
                bail!(
                    "{} has no --peer-listen/--join (single-node build): run with --nodes 1",
                    self.bin.display()
                );
            }
            let token_file = self.node(1).data_dir.join("join-token");
            let deadline = Instant::now() + Duration::from_secs(30);
            let token = loop {
                if let Ok(t) = std::fs::read_to_string(&token_file) {
                    if !t.trim().is_empty() {
                        break t.trim().to_string();
                    }
                }
                if Instant::now() > deadline {
                    bail!("n1 wrote no {}", token_file.display());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            self.join_token = Some(token);
            for i in 2..=n {
                self.start(i, true)?;
                // One at a time: each join changes the membership.
                wait_ready(&self.node(i).client_addr(), Duration::from_secs(60))
                    .await
                    .with_context(|| format!("n{i} did not become ready after --join"))?;
            }
        }
        for i in 1..=n {
            wait_ready(&self.node(i).client_addr(), Duration::from_secs(60))
                .await
                .with_context(|| format!("n{i} not ready"))?;
        }
        Ok(())
    }

    /// Stops every node: SIGTERM (after SIGCONT), then SIGKILL for the ones still there.
    pub async fn stop_all(&mut self) {
        for node in &self.nodes {
            if let Some(pid) = node.pid() {
                unsafe {
                    libc::kill(pid, libc::SIGCONT);
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                if tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
        }
    }
}

pub async fn ready(addr: &str) -> bool {
    matches!(http::get(addr, "/ready", Duration::from_secs(2)).await, Ok(r) if r.status == 200)
}

pub async fn wait_ready(addr: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if ready(addr).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr}/ready not 200 within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The binary to test: --bin, else target/release/chatnode of the repo, else the shared
/// cargo target directory the project builds into.
pub fn find_bin(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(b) = explicit {
        if !b.exists() {
            bail!("--bin {}: no such file", b.display());
        }
        return Ok(std::fs::canonicalize(b)?);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut candidates = vec![repo.join("target/release/chatnode")];
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("release/chatnode"));
    }
    if let Ok(home) = std::env::var("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/chatnode-target/release/chatnode"));
    }
    for c in &candidates {
        if c.exists() {
            return Ok(std::fs::canonicalize(c)?);
        }
    }
    bail!(
        "no chatnode binary found (tried {}); build it with `cargo build --release` or pass --bin",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
