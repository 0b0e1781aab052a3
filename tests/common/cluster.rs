//! A cluster of real `chatnode` processes on 127.0.0.1 for the multi-process tests: spawning,
//! joining, killing and restarting nodes; the admin endpoints (status, checksum, leave,
//! faults); a load of retrying clients; and the checks that no acknowledged message was lost
//! or duplicated.
//!
//! Every process is SIGKILLed when the `TestCluster` is dropped (also on panic), and on panic
//! the tail of every node's log is printed.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Limits raised so that the load is never rate limited; fault injection on.
pub const CLUSTER_CONFIG: &str = r#"
[limits]
user_messages_per_minute = 1000000
conversation_messages_per_minute = 1000000
devices_per_user = 50
new_connections_per_second = 10000
connections_per_ip = 1000000
typing_per_minute = 1000000
receipts_per_minute = 1000000
presence_subscriptions_per_minute = 1000000
reads_per_minute = 1000000
membership_changes_per_minute = 1000000
pings_per_minute = 1000000
conversations_created_per_hour = 1000000
[accounts]
registrations_per_ip_per_hour = 1000000
[testing]
fault_injection = true
[admin]
checksum_interval_ms = 1000
"#;

/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;
/// A client-side request timeout: above the server's 5 s request deadline.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);
/// How long one load client keeps retrying one send before it counts as failed.
pub const SEND_GIVE_UP: Duration = Duration::from_secs(60);

/// The admin token in a node's data dir (mode 0600).
pub fn read_admin_token(data: &Path) -> String {
    let path = data.join("admin-token");
    let t = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "admin-token mode {mode:o}");
    }
    assert!(t.starts_with("chatnode-admin-v1."), "{t:?}");
    t.trim().to_string()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn free_tcp() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub fn free_udp() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// HTTP

/// One HTTP/1.1 request that never panics: Err on connect failure or timeout.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let auth = bearer
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok(super::parse_http_response(&out))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("{method} {path} on {addr}: timed out"))?
}

/// `GET path` with the admin token as bearer; the parsed body of a 200.
pub async fn get_json(addr: SocketAddr, path: &str, admin_token: &str) -> Result<Value, String> {
    let (status, body) = try_http(
        addr,
        "GET",
        path,
        Some(admin_token),
        "",
        Duration::from_secs(5),
    )
    .await?;
    if status != 200 {
        return Err(format!("GET {path} on {addr}: {status} {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET {path} on {addr}: {e}: {body}"))
}

/// Registers and logs in over HTTP with retries (a node may briefly answer 503); returns
/// (user_id, token).
pub async fn register_user(addr: SocketAddr, name: &str) -> (String, String) {
    let creds = json!({"username": name, "password": "password123"}).to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut registered = false;
    loop {
        if !registered {
            match try_http(addr, "POST", "/v1/register", None, &creds, REQUEST_TIMEOUT).await {
                Ok((201, _)) => registered = true,
                // A retried registration whose first attempt did commit.
                Ok((409, _)) => registered = true,
                Ok((s, b)) if s != 503 && s != 500 && s != 0 => {
                    panic!("register {name} on {addr}: {s} {b}")
                }
                other => {
                    assert!(Instant::now() < deadline, "register {name}: {other:?}");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
            }
        }
        match try_http(addr, "POST", "/v1/login", None, &creds, REQUEST_TIMEOUT).await {
            Ok((200, body)) => {
                let v: Value = serde_json::from_str(&body).unwrap();
                return (
                    v["user_id"].as_str().unwrap().to_string(),
                    v["token"].as_str().unwrap().to_string(),
                );
            }
            other => {
                assert!(Instant::now() < deadline, "login {name}: {other:?}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Status views

#[derive(Debug, Clone)]
pub struct GroupView {
    pub node: u64,
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    pub last_log_index: u64,
    pub applied: u64,
}

/// One node's `/admin/status`, parsed.
#[derive(Debug, Clone)]
pub struct View {
    pub raw: Value,
    pub from: u64,
    /// Desired replicas per group.
    pub replicas: BTreeMap<u32, Vec<u64>>,
    /// Node id → state ("active", "leaving", "left").
    pub nodes: BTreeMap<u64, String>,
    /// Group → each reachable node's view of it.
    pub groups: BTreeMap<u32, Vec<GroupView>>,
    pub unreachable: BTreeSet<u64>,
}

fn ids(v: &Value) -> BTreeSet<u64> {
    v.as_array()
        .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
        .unwrap_or_default()
}

impl View {
    pub fn parse(raw: Value) -> View {
        let mut replicas = BTreeMap::new();
        if let Some(m) = raw["replicas"].as_object() {
            for (g, r) in m {
                if let Ok(g) = g.parse::<u32>() {
                    replicas.insert(
                        g,
                        r.as_array()
                            .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
                            .unwrap_or_default(),
                    );
                }
            }
        }
        let mut nodes = BTreeMap::new();
        for n in raw["nodes"].as_array().into_iter().flatten() {
            if let Some(id) = n["id"].as_u64() {
                nodes.insert(id, n["state"].as_str().unwrap_or("").to_string());
            }
        }
        let mut groups: BTreeMap<u32, Vec<GroupView>> = BTreeMap::new();
        let mut unreachable = BTreeSet::new();
        for ns in raw["node_statuses"].as_array().into_iter().flatten() {
            let node = ns["node_id"].as_u64().unwrap_or(0);
            if ns["reachable"] != true {
                unreachable.insert(node);
                continue;
            }
            for g in ns["groups"].as_array().into_iter().flatten() {
                let Some(group) = g["group"].as_u64() else {
                    continue;
                };
                groups.entry(group as u32).or_default().push(GroupView {
                    node,
                    state: g["state"].as_str().unwrap_or("").to_string(),
                    leader: g["leader"].as_u64(),
                    term: g["term"].as_u64().unwrap_or(0),
                    voters: ids(&g["voters"]),
                    learners: ids(&g["learners"]),
                    last_log_index: g["last_log_index"].as_u64().unwrap_or(0),
                    applied: g["applied"].as_u64().unwrap_or(0),
                });
            }
        }
        View {
            from: raw["node_id"].as_u64().unwrap_or(0),
            raw,
            replicas,
            nodes,
            groups,
            unreachable,
        }
    }

    /// The replica reporting itself leader with the highest term.
    pub fn leader_view(&self, group: u32) -> Option<&GroupView> {
        self.groups
            .get(&group)?
            .iter()
            .filter(|g| g.state == "leader")
            .max_by_key(|g| g.term)
    }

    pub fn leader_of(&self, group: u32) -> Option<u64> {
        self.leader_view(group).map(|g| g.node)
    }

    /// Groups led per node (every node of `members` listed, 0 if it leads nothing).
    pub fn leader_counts(&self, members: &BTreeSet<u64>) -> BTreeMap<u64, usize> {
        let mut c: BTreeMap<u64, usize> = members.iter().map(|n| (*n, 0)).collect();
        for g in self.groups.keys() {
            if let Some(l) = self.leader_of(*g) {
                *c.entry(l).or_default() += 1;
            }
        }
        c
    }

    /// Voter replicas per node, as the groups' leaders see them.
    pub fn replica_counts(&self, members: &BTreeSet<u64>) -> BTreeMap<u64, usize> {
        let mut c: BTreeMap<u64, usize> = members.iter().map(|n| (*n, 0)).collect();
        for g in self.groups.keys() {
            if let Some(l) = self.leader_view(*g) {
                for v in &l.voters {
                    *c.entry(*v).or_default() += 1;
                }
            }
        }
        c
    }

    /// Whether every group 0..=shards is settled on 3 voters of `members` (desired = actual,
    /// no learners), with one leader that every voter agrees on. Err says what is missing.
    pub fn converged(&self, shards: u32, members: &BTreeSet<u64>) -> Result<(), String> {
        if !self.unreachable.is_empty() {
            return Err(format!("unreachable nodes {:?}", self.unreachable));
        }
        for m in members {
            if self.nodes.get(m).map(String::as_str) != Some("active") {
                return Err(format!("node {m} is not active: {:?}", self.nodes));
            }
        }
        // The desired placement covers every member with its fair share (so it was computed
        // for this membership).
        let mut planned: BTreeMap<u64, usize> = members.iter().map(|m| (*m, 0)).collect();
        for g in 0..=shards {
            for n in self.replicas.get(&g).into_iter().flatten() {
                *planned.entry(*n).or_default() += 1;
            }
        }
        let fair = (shards + 1) as f64 * 3.min(members.len()) as f64 / members.len() as f64;
        if planned.values().any(|c| (*c as f64 - fair).abs() > 1.0) {
            return Err(format!(
                "desired placement is not spread over {members:?}: {planned:?} (fair {fair:.2})"
            ));
        }
        for g in 0..=shards {
            let desired: BTreeSet<u64> = self
                .replicas
                .get(&g)
                .map(|r| r.iter().copied().collect())
                .unwrap_or_default();
            let want = 3.min(members.len());
            if desired.len() != want || !desired.is_subset(members) {
                return Err(format!("group {g}: desired replicas {desired:?}"));
            }
            let Some(l) = self.leader_view(g) else {
                return Err(format!("group {g}: no leader"));
            };
            if l.voters != desired || !l.learners.is_empty() {
                return Err(format!(
                    "group {g}: leader {} has voters {:?} learners {:?}, desired {desired:?}",
                    l.node, l.voters, l.learners
                ));
            }
            for v in &desired {
                let Some(r) = self.groups[&g].iter().find(|x| x.node == *v) else {
                    return Err(format!("group {g}: voter {v} does not report it"));
                };
                if r.leader != Some(l.node) || r.term != l.term {
                    return Err(format!(
                        "group {g}: node {v} sees leader {:?} term {}, leader {} is in term {}",
                        r.leader, r.term, l.node, l.term
                    ));
                }
            }
            // No replica outside the members still thinks it leads.
            let leaders = self.groups[&g]
                .iter()
                .filter(|x| x.state == "leader")
                .count();
            if leaders != 1 {
                return Err(format!("group {g}: {leaders} replicas say they lead"));
            }
        }
        Ok(())
    }

    /// Replicas that were moved away (not in the desired set) but still campaign or lead.
    /// Replicas the placement moved away that still act (candidate or leader): key
    /// (group, node) -> (term, description).
    pub fn lingering(&self) -> BTreeMap<(u32, u64), (u64, String)> {
        let mut out = BTreeMap::new();
        for (g, rs) in &self.groups {
            let desired = self.replicas.get(g).cloned().unwrap_or_default();
            for r in rs {
                if !desired.contains(&r.node) && (r.state == "candidate" || r.state == "leader") {
                    out.insert((*g, r.node), (r.term, format!(
                        "group {g}: node {} is not a desired replica ({desired:?}) but is {} in term {} with voters {:?}",
                        r.node, r.state, r.term, r.voters
                    )));
                }
            }
        }
        out
    }

    /// Fair share ±1 of voter replicas and of leaderships over `members`, counting every
    /// group 0..=shards.
    pub fn balanced(&self, shards: u32, members: &BTreeSet<u64>) -> Result<(), String> {
        let n = members.len() as f64;
        let groups = (shards + 1) as f64;
        let rf = 3.min(members.len()) as f64;
        let replicas = self.replica_counts(members);
        let leaders = self.leader_counts(members);
        let fair_r = groups * rf / n;
        let fair_l = groups / n;
        for m in members {
            let r = replicas[m] as f64;
            let l = leaders[m] as f64;
            if (r - fair_r).abs() > 1.0 || (l - fair_l).abs() > 1.0 {
                return Err(format!(
                    "unbalanced: replicas {replicas:?} (fair {fair_r:.2}), leaders {leaders:?} (fair {fair_l:.2})"
                ));
            }
        }
        Ok(())
    }

    /// One line per group: desired replicas, and each reporting replica's state.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "status from node {}: nodes {:?}, unreachable {:?}\n",
            self.from, self.nodes, self.unreachable
        );
        let groups: BTreeSet<u32> = self
            .replicas
            .keys()
            .chain(self.groups.keys())
            .copied()
            .collect();
        for g in groups {
            out.push_str(&format!(
                "  group {g}: desired {:?};",
                self.replicas.get(&g)
            ));
            for r in self.groups.get(&g).into_iter().flatten() {
                out.push_str(&format!(
                    " n{} {} t{} leader {:?} voters {:?} learners {:?} applied {}/{};",
                    r.node,
                    r.state,
                    r.term,
                    r.leader,
                    r.voters,
                    r.learners,
                    r.applied,
                    r.last_log_index
                ));
            }
            out.push('\n');
        }
        out
    }

    /// Whether `node` holds any replica, desired or actual (in any reachable view).
    pub fn holds_anything(&self, node: u64) -> bool {
        self.replicas.values().any(|r| r.contains(&node))
            || self.groups.keys().any(|g| {
                self.leader_view(*g)
                    .is_some_and(|l| l.voters.contains(&node) || l.learners.contains(&node))
            })
    }
}

// ---------------------------------------------------------------------------------------
// Processes

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
            if let Ok(v) = get_json(addr, "/admin/status", &self.admin_token).await {
                if let Some(id) = v["node_id"].as_u64() {
                    return id;
                }
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

    /// `/admin/status` from the first running node that answers.
    pub async fn view(&mut self) -> Option<View> {
        let running = self.running();
        for p in &self.nodes {
            if !running.contains(&p.id) {
                continue;
            }
            if let Ok(v) = get_json(p.client, "/admin/status", &self.admin_token).await {
                return Some(View::parse(v));
            }
        }
        None
    }

    /// `/admin/status` of one node.
    pub async fn view_of(&self, id: u64) -> Result<View, String> {
        get_json(self.addr_of(id), "/admin/status", &self.admin_token)
            .await
            .map(View::parse)
    }

    /// Polls until the status (seen from a running node) shows every group on 3 voters of
    /// `members` with an agreed leader and, if `balanced`, a fair spread. Returns that view.
    pub async fn wait_converged(
        &mut self,
        members: &BTreeSet<u64>,
        balanced: bool,
        timeout: Duration,
    ) -> View {
        match self.try_converge(members, balanced, timeout).await {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// `wait_converged` that returns what was wrong instead of panicking.
    pub async fn try_converge(
        &mut self,
        members: &BTreeSet<u64>,
        balanced: bool,
        timeout: Duration,
    ) -> Result<View, String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no status yet");
        let mut last_summary = String::new();
        loop {
            if let Some(v) = self.view().await {
                let check = v.converged(self.shards, members).and_then(|()| {
                    if balanced {
                        v.balanced(self.shards, members)
                    } else {
                        Ok(())
                    }
                });
                match check {
                    Ok(()) => return Ok(v),
                    Err(e) => {
                        last = e;
                        last_summary = v.summary();
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "cluster did not converge on {members:?} (balanced: {balanced}) within {timeout:?}: {last}\nlast {last_summary}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until no moved-away replica campaigns or leads (see `View::lingering`).
    pub async fn wait_no_lingering(&mut self, timeout: Duration) -> Result<(), String> {
        // A displaced replica may stay "candidate": openraft never tells a removed node that
        // it was removed. What must not happen is campaigning — its term rising (that term
        // would later depose the group's leader). Compare two views 5 s apart.
        let deadline = Instant::now() + timeout;
        loop {
            let mut last = vec!["no status".to_string()];
            if let Some(before) = self.view().await.map(|v| v.lingering()) {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if let Some(after) = self.view().await.map(|v| v.lingering()) {
                    last = after
                        .iter()
                        .filter(|(k, (term, _))| before.get(k).is_some_and(|(t, _)| t < term))
                        .map(|(_, (_, d))| d.clone())
                        .collect();
                    if last.is_empty() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "replicas moved away still campaign (term rising) {timeout:?} later:\n{}",
                    last.join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Polls every running node's `/admin/checksum` until, for every group, all its desired
    /// replicas report the same applied index; then their checksums must be equal. A
    /// mismatch at equal applied indexes seen twice in a row fails at once.
    pub async fn assert_replicas_identical(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        // Checksums are computed in the background: only those taken after this call count.
        let since_ms = now_ms();
        let mut suspect: BTreeMap<u32, u64> = BTreeMap::new();
        loop {
            let Some(view) = self.view().await else {
                assert!(Instant::now() < deadline, "no status");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let running = self.running();
            // group -> node -> (applied, checksum, keys)
            let mut sums: BTreeMap<u32, BTreeMap<u64, (u64, String, u64)>> = BTreeMap::new();
            for id in &running {
                if let Ok(v) =
                    get_json(self.addr_of(*id), "/admin/checksum", &self.admin_token).await
                {
                    if v["computed_at_ms"].as_u64().unwrap_or(0) < since_ms {
                        continue;
                    }
                    for g in v["groups"].as_array().into_iter().flatten() {
                        let group = g["group"].as_u64().unwrap_or(u64::MAX) as u32;
                        sums.entry(group).or_default().insert(
                            *id,
                            (
                                g["applied_index"].as_u64().unwrap_or(0),
                                g["checksum"].as_str().unwrap_or("").to_string(),
                                g["keys"].as_u64().unwrap_or(0),
                            ),
                        );
                    }
                }
            }
            let mut pending = Vec::new();
            for g in 0..=self.shards {
                let desired = view.replicas.get(&g).cloned().unwrap_or_default();
                let got = sums.get(&g).cloned().unwrap_or_default();
                let mut rows = Vec::new();
                for n in &desired {
                    match got.get(n) {
                        Some(r) => rows.push((*n, r.clone())),
                        None => pending.push(format!("group {g}: node {n} reports no checksum")),
                    }
                }
                if rows.len() != desired.len() || rows.is_empty() {
                    continue;
                }
                let applied: BTreeSet<u64> = rows.iter().map(|(_, r)| r.0).collect();
                if applied.len() != 1 {
                    pending.push(format!("group {g}: applied indexes differ: {rows:?}"));
                    continue;
                }
                let sums_set: BTreeSet<&String> = rows.iter().map(|(_, r)| &r.1).collect();
                if sums_set.len() != 1 {
                    let at = *applied.iter().next().unwrap();
                    if suspect.get(&g) == Some(&at) {
                        panic!("group {g}: replicas diverge at applied index {at}: {rows:?}");
                    }
                    suspect.insert(g, at);
                    pending.push(format!("group {g}: checksums differ at {at}: {rows:?}"));
                } else {
                    suspect.remove(&g);
                }
            }
            if pending.is_empty() {
                return;
            }
            let last = pending.join("\n");
            assert!(
                Instant::now() < deadline,
                "replica checksums did not settle within {timeout:?}:\n{last}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// `POST /admin/faults` on node `on`.
    pub async fn fault(&self, on: u64, body: Value) {
        let r = try_http(
            self.addr_of(on),
            "POST",
            "/admin/faults",
            Some(&self.admin_token),
            &body.to_string(),
            Duration::from_secs(5),
        )
        .await;
        assert!(
            matches!(r, Ok((200, _))),
            "fault {body} on node {on}: {r:?}"
        );
    }

    /// Cuts `x` off from every other node, in both directions on both sides.
    pub async fn isolate(&self, x: u64) {
        for other in self.ids() {
            if other != x {
                self.fault(x, json!({"action":"block","peer":other})).await;
                self.fault(other, json!({"action":"block","peer":x})).await;
            }
        }
    }

    pub async fn heal_all(&self) {
        for id in self.ids() {
            self.fault(id, json!({"action":"heal"})).await;
        }
    }

    /// `POST /admin/leave` on node `id`.
    pub async fn leave(&self, id: u64) -> (u16, String) {
        try_http(
            self.addr_of(id),
            "POST",
            "/admin/leave",
            Some(&self.admin_token),
            "",
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("leave node {id}: {e}"))
    }
}

// ---------------------------------------------------------------------------------------
// A WebSocket connection that never panics (for clients that must survive node failures).

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

pub struct Conn {
    ws: Ws,
    next_id: u64,
    /// Pushes received while waiting for replies (only if `keep_pushes`).
    pub pushes: Vec<Value>,
    pub keep_pushes: bool,
    pub addr: SocketAddr,
}

impl Conn {
    pub async fn open(addr: SocketAddr, token: &str, device: &str) -> Result<Conn, String> {
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws")),
        )
        .await
        .map_err(|_| format!("ws connect {addr}: timeout"))?
        .map_err(|e| format!("ws connect {addr}: {e}"))?;
        let mut c = Conn {
            ws,
            next_id: 1,
            pushes: Vec::new(),
            keep_pushes: false,
            addr,
        };
        let r = c
            .call(
                json!({"type":"auth","token":token,"device_id":device}),
                REQUEST_TIMEOUT,
            )
            .await?;
        if r["type"] != "auth_ok" {
            return Err(format!("auth on {addr}: {r}"));
        }
        Ok(c)
    }

    /// Sends `frame` with a fresh id and waits up to `timeout` for its reply. Err on timeout,
    /// close or a `reconnect` frame (the node drains).
    pub async fn call(&mut self, mut frame: Value, timeout: Duration) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        tokio::time::timeout(
            Duration::from_secs(5),
            self.ws.send(Message::Text(frame.to_string().into())),
        )
        .await
        .map_err(|_| "write timeout".to_string())?
        .map_err(|e| format!("write: {e}"))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return Err(format!("no reply within {timeout:?}")),
                Ok(None) => return Err("closed".into()),
                Ok(Some(Err(e))) => return Err(format!("read: {e}")),
                Ok(Some(Ok(m))) => m,
            };
            let v: Value = match msg {
                Message::Text(t) => serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?,
                Message::Close(_) => return Err("closed".into()),
                _ => continue,
            };
            if v.get("id") == Some(&json!(id)) {
                return Ok(v);
            }
            if v["type"] == "reconnect" {
                return Err("reconnect (node draining)".into());
            }
            if self.keep_pushes {
                self.pushes.push(v);
            }
        }
    }

    /// Reads pushes for `wait`, keeping them.
    pub async fn drain_pushes(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(t.as_str()) {
                        self.pushes.push(v);
                    }
                }
                Ok(Some(Ok(_))) => continue,
                _ => return,
            }
        }
    }

    /// Every message of `conv` in ascending seq order, via `history` paged by `before_seq`.
    pub async fn history_all(&mut self, conv: &str) -> Result<Vec<Value>, String> {
        let mut all = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let mut req = json!({"type":"history","conversation_id":conv,"limit":100});
            if let Some(bs) = before {
                req["before_seq"] = json!(bs);
            }
            let h = self.call(req, REQUEST_TIMEOUT).await?;
            if h["type"] != "history" {
                return Err(format!("history of {conv}: {h}"));
            }
            let msgs = h["messages"].as_array().cloned().unwrap_or_default();
            if let Some(s) = msgs.last().and_then(|m| m["seq"].as_u64()) {
                before = Some(s);
            }
            let empty = msgs.is_empty();
            all.extend(msgs);
            if h["has_more"] != true {
                break;
            }
            if empty {
                return Err(format!("history of {conv}: has_more with an empty page"));
            }
        }
        all.reverse();
        Ok(all)
    }
}

/// Opens a connection, retrying (on the given nodes in turn) for up to `timeout`.
pub async fn open_retrying(
    addrs: &[SocketAddr],
    token: &str,
    device: &str,
    timeout: Duration,
) -> Conn {
    let deadline = Instant::now() + timeout;
    let mut i = 0;
    loop {
        match Conn::open(addrs[i % addrs.len()], token, device).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect {device}: {e}");
                i += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

/// `history_all` with retries (a leader may be changing).
pub async fn history_retrying(conn: &mut Conn, conv: &str, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        match conn.history_all(conv).await {
            Ok(h) => return h,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "history of {conv} on {}: {e}",
                    conn.addr
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Load: clients sending continuously with retries.

#[derive(Debug, Clone)]
pub struct Acked {
    pub conv: String,
    pub cmid: String,
    pub seq: u64,
    pub msg_id: String,
    /// Resends of this `client_msg_id` before its ack.
    pub retries: u32,
    /// Why it was resent.
    pub reasons: Vec<String>,
    /// When the ack arrived.
    pub at: Instant,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub acked: Vec<Acked>,
    /// Sends that never got an ack, or got a non-retryable error.
    pub failed: Vec<String>,
}

impl LoadReport {
    pub fn max_retries(&self) -> u32 {
        self.acked.iter().map(|a| a.retries).max().unwrap_or(0)
    }

    pub fn retry_histogram(&self) -> BTreeMap<u32, usize> {
        let mut h = BTreeMap::new();
        for a in &self.acked {
            *h.entry(a.retries).or_default() += 1;
        }
        h
    }
}

/// Users and conversations for a load: `users` users with `devices` devices each; one group
/// conversation per user `j` with user `j+1` (mod users).
pub struct Workload {
    pub users: Vec<(String, String)>,
    pub convs: Vec<String>,
    /// For each conversation, a user (index into `users`) who is a member.
    pub owners: Vec<usize>,
    pub devices: usize,
}

impl Workload {
    pub async fn setup(addr: SocketAddr, prefix: &str, users: usize, devices: usize) -> Workload {
        let mut us = Vec::new();
        for i in 0..users {
            us.push(register_user(addr, &format!("{prefix}{i}")).await);
        }
        let mut convs = Vec::new();
        for j in 0..users {
            let mut c = open_retrying(&[addr], &us[j].1, "setup", Duration::from_secs(30)).await;
            let other = &us[(j + 1) % users].0;
            let deadline = Instant::now() + Duration::from_secs(30);
            let id = loop {
                let r = c
                    .call(
                        json!({"type":"create_conversation","kind":"group","members":[other],"title":format!("load {j}")}),
                        REQUEST_TIMEOUT,
                    )
                    .await;
                match r {
                    Ok(v) if v["type"] == "conversation" => {
                        break v["conversation"]["conversation_id"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    }
                    other => {
                        assert!(
                            Instant::now() < deadline,
                            "create conversation {j}: {other:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            };
            convs.push(id);
        }
        Workload {
            users: us,
            owners: (0..convs.len()).collect(),
            convs,
            devices,
        }
    }

    /// Clients: client k is user k % users, device k / users; it sends to its own
    /// conversation or to the previous user's (both of which it belongs to).
    pub fn clients(&self) -> usize {
        self.users.len() * self.devices
    }

    /// The token of a member of conversation `conv`.
    pub fn member_token(&self, conv: usize) -> &str {
        &self.users[self.owners[conv]].1
    }

    /// Starts every client, spread over `addrs`; they send until the returned `Load` stops.
    pub fn start(&self, addrs: Vec<SocketAddr>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let n = self.users.len();
        let mut handles = Vec::new();
        for k in 0..self.clients() {
            let u = k % n;
            let d = k / n;
            let conv = if d % 2 == 0 {
                self.convs[u].clone()
            } else {
                self.convs[(u + n - 1) % n].clone()
            };
            let token = self.users[u].1.clone();
            let addrs = addrs.clone();
            let stop = stop.clone();
            let counter = acks.clone();
            handles.push(tokio::spawn(load_client(
                k, addrs, token, conv, stop, counter,
            )));
        }
        Load {
            stop,
            acks,
            handles,
        }
    }

    /// Checks the stored histories against the acks: every acked (conversation,
    /// client_msg_id) exactly once at its acked seq, no `client_msg_id` twice, seqs gapless
    /// from 1, and the same history read through every node in `via`. Returns the messages
    /// per conversation.
    pub async fn verify(&self, via: &[SocketAddr], report: &LoadReport) -> Vec<Vec<Value>> {
        let mut by_conv: HashMap<&str, Vec<&Acked>> = HashMap::new();
        for a in &report.acked {
            by_conv.entry(a.conv.as_str()).or_default().push(a);
        }
        let mut out = Vec::new();
        for (j, conv) in self.convs.iter().enumerate() {
            let mut first: Option<Vec<Value>> = None;
            for addr in via {
                let mut c = open_retrying(
                    &[*addr],
                    self.member_token(j),
                    "verify",
                    Duration::from_secs(30),
                )
                .await;
                let h = history_retrying(&mut c, conv, Duration::from_secs(30)).await;
                match &first {
                    None => first = Some(h),
                    Some(f) => {
                        let key = |m: &Value| {
                            (
                                m["seq"].clone(),
                                m["msg_id"].clone(),
                                m["client_msg_id"].clone(),
                            )
                        };
                        let a: Vec<_> = f.iter().map(key).collect();
                        let b: Vec<_> = h.iter().map(key).collect();
                        assert_eq!(
                            a, b,
                            "conversation {j}: history via {addr} differs from via {}",
                            via[0]
                        );
                    }
                }
            }
            let h = first.unwrap();
            let seqs: Vec<u64> = h.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
            let expect: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert!(
                seqs == expect,
                "conversation {j} ({conv}): seqs not gapless from 1: {} messages, first deviations: {:?}",
                seqs.len(),
                seqs.iter().zip(&expect).filter(|(a, b)| a != b).take(5).collect::<Vec<_>>()
            );
            let mut cmids: HashMap<&str, Vec<u64>> = HashMap::new();
            for m in &h {
                cmids
                    .entry(m["client_msg_id"].as_str().unwrap_or(""))
                    .or_default()
                    .push(m["seq"].as_u64().unwrap());
            }
            let dups: Vec<_> = cmids.iter().filter(|(_, s)| s.len() > 1).take(10).collect();
            assert!(
                dups.is_empty(),
                "conversation {j}: duplicated client_msg_ids (at seqs): {dups:?}"
            );
            let acks = by_conv.get(conv.as_str()).cloned().unwrap_or_default();
            for a in &acks {
                let Some(seqs) = cmids.get(a.cmid.as_str()) else {
                    panic!("conversation {j}: acked message {a:?} is missing (history has {} messages)", h.len());
                };
                assert_eq!(
                    seqs,
                    &vec![a.seq],
                    "conversation {j}: {a:?} stored at {seqs:?}"
                );
                let m = &h[(a.seq - 1) as usize];
                assert_eq!(
                    m["msg_id"].as_str(),
                    Some(a.msg_id.as_str()),
                    "msg_id of {a:?}"
                );
            }
            out.push(h);
        }
        out
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    /// Acks received so far (all clients).
    pub acks: Arc<AtomicU64>,
    handles: Vec<tokio::task::JoinHandle<LoadReport>>,
}

impl Load {
    /// Waits until `n` more sends than now are acked; returns how long that took, or None
    /// after `timeout`.
    pub async fn wait_progress(&self, n: u64, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        let base = self.acks.load(Ordering::SeqCst);
        while start.elapsed() < timeout {
            if self.acks.load(Ordering::SeqCst) >= base + n {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Stops the clients (each finishes the send it has started, with retries) and gathers
    /// what they recorded.
    pub async fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = LoadReport::default();
        for h in std::mem::take(&mut self.handles) {
            let r = h.await.expect("load client panicked");
            all.acked.extend(r.acked);
            all.failed.extend(r.failed);
        }
        all
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in &self.handles {
            h.abort();
        }
    }
}

fn retryable(code: &str) -> bool {
    matches!(
        code,
        "unavailable" | "internal" | "overloaded" | "rate_limited"
    )
}

async fn load_client(
    k: usize,
    addrs: Vec<SocketAddr>,
    token: String,
    conv: String,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
) -> LoadReport {
    let mut report = LoadReport::default();
    let device = format!("load-{k}");
    let mut node = k % addrs.len();
    let mut conn: Option<Conn> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let cmid = format!("c{k}-{n}");
        let started = Instant::now();
        let mut retries = 0u32;
        let mut reasons = Vec::new();
        let mut errors_here = 0;
        loop {
            if started.elapsed() > SEND_GIVE_UP {
                report.failed.push(format!(
                    "{cmid} to {conv}: no ack after {SEND_GIVE_UP:?}: {reasons:?}"
                ));
                break;
            }
            if conn.is_none() {
                match Conn::open(addrs[node], &token, &device).await {
                    Ok(c) => conn = Some(c),
                    Err(_) => {
                        node = (node + 1) % addrs.len();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            let c = conn.as_mut().unwrap();
            let frame = json!({"type":"send","conversation_id":conv,"client_msg_id":cmid,"body":format!("client {k} message {n}")});
            match c.call(frame, REQUEST_TIMEOUT).await {
                Ok(v) if v["type"] == "ack" => {
                    if v["conversation_id"] != json!(conv) || v["client_msg_id"] != json!(cmid) {
                        report
                            .failed
                            .push(format!("{cmid}: ack for something else: {v}"));
                    } else {
                        report.acked.push(Acked {
                            conv: conv.clone(),
                            cmid: cmid.clone(),
                            seq: v["seq"].as_u64().unwrap_or(0),
                            msg_id: v["msg_id"].as_str().unwrap_or("").to_string(),
                            retries,
                            reasons,
                            at: Instant::now(),
                        });
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    break;
                }
                Ok(v) if v["type"] == "error" && retryable(v["code"].as_str().unwrap_or("")) => {
                    retries += 1;
                    errors_here += 1;
                    reasons.push(format!("node {}: {}", c.addr, v["code"]));
                    let wait = v["retry_after_ms"].as_u64().unwrap_or(100).min(1000);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    if errors_here >= 2 {
                        // This node may be cut off: try another.
                        errors_here = 0;
                        conn = None;
                        node = (node + 1) % addrs.len();
                    }
                }
                Ok(v) => {
                    report.failed.push(format!("{cmid} to {conv}: {v}"));
                    break;
                }
                Err(e) => {
                    retries += 1;
                    reasons.push(format!("node {}: {e}", c.addr));
                    conn = None;
                    errors_here = 0;
                    node = (node + 1) % addrs.len();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    report
}
