//! Spawning, joining, killing and restarting the `chatnode` processes of a [`TestCluster`].
//!
//! Every process is SIGKILLed when the `TestCluster` is dropped (also on panic), and on panic
//! the tail of every node's log is printed.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::admin::{admin_status, try_http};
use super::config::*;

/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub struct Proc {
    /// Node id (known once it is up).
    pub id: u64,
    pub name: String,
    pub data: PathBuf,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    /// stdout and stderr of every start.
    pub log: PathBuf,
    pub child: Option<Child>,
    starts: u32,
}

/// One test's clusters at a time per test binary: every cluster is 3–5 real processes, and
/// on a 2-core CI machine two or three tests' clusters at once starve each other's Raft
/// timers (leader balance and catch-up deadlines then fail for want of CPU, not for a bug).
/// A test may hold several clusters (they are made on its thread): the owner re-enters.
static CLUSTERS_OWNER: std::sync::Mutex<(Option<std::thread::ThreadId>, usize)> =
    std::sync::Mutex::new((None, 0));

/// Held by a `TestCluster` for its whole life (released when it drops, also on a panic).
struct OneAtATime;

impl OneAtATime {
    fn wait() -> OneAtATime {
        let me = std::thread::current().id();
        loop {
            {
                let mut owner = CLUSTERS_OWNER.lock().unwrap_or_else(|e| e.into_inner());
                if owner.0.is_none() || owner.0 == Some(me) {
                    owner.0 = Some(me);
                    owner.1 += 1;
                    return OneAtATime;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OneAtATime {
    fn drop(&mut self) {
        let mut owner = CLUSTERS_OWNER.lock().unwrap_or_else(|e| e.into_inner());
        owner.1 = owner.1.saturating_sub(1);
        if owner.1 == 0 {
            owner.0 = None;
        }
    }
}

pub struct TestCluster {
    dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub config: PathBuf,
    pub shards: u32,
    pub token: String,
    /// The cluster's admin token (`<data-dir>/admin-token`, the same on every node).
    pub admin_token: String,
    pub nodes: Vec<Proc>,
    /// Dropped after `drop` below has killed the processes.
    _one_at_a_time: OneAtATime,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for p in &mut self.nodes {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            for p in &self.nodes {
                eprintln!(
                    "----- {} (node {}, client {}, peer {}) log tail: {} -----\n{}",
                    p.name,
                    p.id,
                    p.client,
                    p.peer,
                    p.log.display(),
                    tail(&p.log, LOG_TAIL_LINES)
                );
            }
            if std::env::var_os("CHATNODE_KEEP_TEST_DIR").is_some() {
                if let Some(d) = self.dir.take() {
                    eprintln!("keeping {}", d.keep().display());
                }
            }
        }
    }
}

impl TestCluster {
    /// A directory and config for a cluster of `shards` shards; no process yet.
    pub fn new(shards: u32) -> TestCluster {
        let one_at_a_time = OneAtATime::wait();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let config = root.join("chatnode.toml");
        std::fs::write(&config, CLUSTER_CONFIG).unwrap();
        TestCluster {
            dir: Some(dir),
            root,
            config,
            shards,
            token: String::new(),
            admin_token: String::new(),
            nodes: Vec::new(),
            _one_at_a_time: one_at_a_time,
        }
    }

    /// Creates a cluster on one node and joins `n - 1` more, one after the other.
    pub async fn start(n: usize, shards: u32) -> TestCluster {
        let mut c = TestCluster::new(shards);
        c.create().await;
        for _ in 1..n {
            c.join().await;
        }
        c
    }

    pub fn new_proc(&mut self) -> usize {
        let slot = self.nodes.len();
        let name = format!("n{}", slot + 1);
        self.nodes.push(Proc {
            id: 0,
            data: self.root.join(&name),
            log: self.root.join(format!("{name}.log")),
            name,
            client: free_tcp(),
            peer: free_udp(),
            child: None,
            starts: 0,
        });
        slot
    }

    /// Spawns the process of `slot` (with `--join` if given); stdout and stderr are appended
    /// to files in the test directory.
    pub fn spawn(&mut self, slot: usize, join: Option<(String, String)>) {
        let config = self.config.clone();
        let shards = self.shards;
        let p = &mut self.nodes[slot];
        assert!(p.child.is_none(), "{} is already running", p.name);
        p.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .unwrap();
        writeln!(
            log,
            "===== test harness: start #{} of {} =====",
            p.starts, p.name
        )
        .unwrap();
        // The node logs to stdout; both streams go to the log file (O_APPEND).
        let out = log.try_clone().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatnode"));
        cmd.arg("--data-dir")
            .arg(&p.data)
            .arg("--listen")
            .arg(p.client.to_string())
            .arg("--peer-listen")
            .arg(p.peer.to_string())
            .arg("--config")
            .arg(&config)
            .arg("--shards")
            .arg(shards.to_string());
        if let Some((seed, token)) = join {
            cmd.arg("--join").arg(seed).arg("--token").arg(token);
        }
        let rust_log =
            std::env::var("CHATNODE_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into());
        p.child = Some(
            cmd.env("RUST_LOG", rust_log)
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn chatnode"),
        );
    }

    /// Starts the creating node (node 1) and reads its join token.
    pub async fn create(&mut self) -> usize {
        assert!(self.nodes.is_empty());
        let slot = self.new_proc();
        self.spawn(slot, None);
        self.wait_ready(slot, Duration::from_secs(60)).await;
        let token_file = self.nodes[slot].data.join("join-token");
        let token = std::fs::read_to_string(&token_file)
            .unwrap_or_else(|e| panic!("{}: {e}", token_file.display()));
        self.token = token.trim().to_string();
        assert!(!self.token.is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "join-token mode {mode:o}");
        }
        self.admin_token = read_admin_token(&self.nodes[slot].data);
        assert_ne!(
            self.admin_token, self.token,
            "the admin token is not the join token"
        );
        let out = std::fs::read_to_string(&self.nodes[slot].log).unwrap_or_default();
        assert!(
            out.contains("join this cluster with: chatnode --join") && out.contains(&self.token),
            "the creating node printed no join line: {out:?}"
        );
        self.nodes[slot].id = self.own_id(slot).await;
        assert_eq!(self.nodes[slot].id, 1, "the creating node is node 1");
        slot
    }

    /// Starts a new node with `--join <node 1's peer address> --token <token>`; returns its
    /// slot once it is ready.
    pub async fn join(&mut self) -> usize {
        let seed = self.nodes[0].peer.to_string();
        let slot = self.new_proc();
        self.spawn(slot, Some((seed, self.token.clone())));
        self.wait_ready(slot, Duration::from_secs(90)).await;
        assert_eq!(
            read_admin_token(&self.nodes[slot].data),
            self.admin_token,
            "a joiner's admin-token is the cluster's"
        );
        self.nodes[slot].id = self.own_id(slot).await;
        slot
    }

    async fn own_id(&self, slot: usize) -> u64 {
        let addr = self.nodes[slot].client;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(v) = admin_status(addr, &self.admin_token).await {
                return v.node_id;
            }
            assert!(Instant::now() < deadline, "no node id from {addr}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn slot_of(&self, id: u64) -> usize {
        self.nodes
            .iter()
            .position(|p| p.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn addr_of(&self, id: u64) -> SocketAddr {
        self.nodes[self.slot_of(id)].client
    }

    pub fn ids(&self) -> BTreeSet<u64> {
        self.nodes
            .iter()
            .map(|p| p.id)
            .filter(|id| *id != 0)
            .collect()
    }

    /// Ids of the nodes whose process runs.
    pub fn running(&mut self) -> BTreeSet<u64> {
        let mut s = BTreeSet::new();
        for p in &mut self.nodes {
            if let Some(c) = &mut p.child {
                if c.try_wait().ok().flatten().is_none() {
                    s.insert(p.id);
                }
            }
        }
        s
    }

    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|p| p.client).collect()
    }

    /// Waits for `/ready` = 200 on `slot`; panics if the process exits or time runs out.
    pub async fn wait_ready(&mut self, slot: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let addr = self.nodes[slot].client;
        loop {
            if let Ok((200, _)) =
                try_http(addr, "GET", "/ready", None, "", Duration::from_secs(2)).await
            {
                return;
            }
            if let Some(c) = &mut self.nodes[slot].child {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("{} exited before ready: {st}", self.nodes[slot].name);
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} at {addr} not ready within {timeout:?}",
                self.nodes[slot].name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self, slot: usize) {
        if let Some(mut c) = self.nodes[slot].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for the process to exit; returns its status.
    pub async fn terminate(&mut self, slot: usize, timeout: Duration) -> ExitStatus {
        let pid = self.nodes[slot].child.as_ref().expect("running").id();
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -TERM {pid}");
        self.wait_exit(slot, timeout).await.unwrap_or_else(|| {
            panic!(
                "{} did not exit within {timeout:?} after SIGTERM",
                self.nodes[slot].name
            )
        })
    }

    /// Waits for the process of `slot` to exit by itself.
    pub async fn wait_exit(&mut self, slot: usize, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.nodes[slot].child.as_mut()?;
            if let Some(st) = c.try_wait().unwrap() {
                self.nodes[slot].child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts a stopped node again from its data dir (no `--join`).
    pub async fn restart(&mut self, slot: usize) {
        self.spawn(slot, None);
        self.wait_ready(slot, Duration::from_secs(60)).await;
    }
}
