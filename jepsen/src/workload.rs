//! The workload: K client processes, each a user with one WebSocket at a time to one node,
//! sending unique `client_msg_id`s to a few shared group conversations (retrying with the
//! same id on timeout, `unavailable` or a lost connection, on another node), reading
//! `history` and `sync`, filling push gaps with `sync`, and recording every push.

use crate::history::{Event, History, Msg, SyncEntry, Type, Value, F, HARNESS};
use crate::http;
use anyhow::{anyhow, bail, Context, Result};
use chatnode_client::ws::WsOptions;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

type Ws = chatnode_client::ws::Ws;

/// Client-side deadline of one request: above the server's 5 s request deadline.
pub const OP_TIMEOUT: Duration = Duration::from_secs(6);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Tries of one client_msg_id before the client gives up on it (it stays indeterminate).
pub const MAX_ATTEMPTS: u32 = 10;
/// Pushes are written to the history in batches per connection and conversation.
const PUSH_FLUSH: Duration = Duration::from_millis(500);
/// A hole in a connection's pushes this old is filled with `sync`.
const HOLE_GRACE: Duration = Duration::from_millis(1000);
pub const PASSWORD: &str = "jepsen-password-1";

#[derive(Clone, Debug)]
pub struct User {
    pub user_id: String,
    pub token: String,
}

/// Node addresses the clients may use: (node number, "ip:port").
pub type Nodes = Arc<std::sync::RwLock<Vec<(usize, String)>>>;

pub struct Setup {
    pub users: Vec<User>,
    pub conversations: Vec<String>,
}

// ---------------------------------------------------------------- known seqs

/// Seqs a process (or a connection) holds for one conversation: everything up to the
/// watermark `w`, plus `above`.
#[derive(Default, Debug)]
pub struct Track {
    pub w: u64,
    above: BTreeSet<u64>,
}

impl Track {
    pub fn insert(&mut self, seq: u64) {
        if seq <= self.w {
            return;
        }
        self.above.insert(seq);
        while self.above.remove(&(self.w + 1)) {
            self.w += 1;
        }
    }
}

/// What one connection saw of one conversation, to find the holes in its pushes.
#[derive(Default, Debug)]
struct ConnTrack {
    last_push: Option<u64>,
    /// Seqs above `last_push` seen by an ack or a read on this connection.
    seen_above: BTreeSet<u64>,
    /// Seqs skipped by the pushes and not yet seen otherwise, with when the skip was noticed.
    holes: BTreeMap<u64, Instant>,
}

impl ConnTrack {
    fn on_push(&mut self, p: u64) {
        match self.last_push {
            Some(last) if p <= last => {}
            Some(last) => {
                let now = Instant::now();
                for x in last + 1..p {
                    if !self.seen_above.contains(&x) {
                        self.holes.insert(x, now);
                    }
                }
                self.seen_above = self.seen_above.split_off(&(p + 1));
                self.last_push = Some(p);
            }
            None => {
                self.seen_above = self.seen_above.split_off(&(p + 1));
                self.last_push = Some(p);
            }
        }
    }
    fn on_seen(&mut self, s: u64) {
        match self.last_push {
            Some(last) if s <= last => {
                self.holes.remove(&s);
            }
            _ => {
                self.seen_above.insert(s);
            }
        }
    }
}

#[derive(Default)]
struct ConnState {
    convs: HashMap<String, ConnTrack>,
}

// ---------------------------------------------------------------- connection

#[derive(Debug)]
pub enum ReqError {
    Timeout,
    Lost,
}

pub struct Conn {
    pub id: u64,
    pub node: usize,
    sink: tokio::sync::Mutex<SplitSink<Ws, Message>>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<serde_json::Value>>>>,
    next_req: AtomicU64,
    alive: Arc<AtomicBool>,
    state: Arc<Mutex<ConnState>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

pub struct ConnCtx {
    pub hist: History,
    pub process: i64,
    pub known: Option<Arc<Mutex<HashMap<String, Track>>>>,
    pub record_pushes: bool,
}

impl Conn {
    pub async fn open(
        node: usize,
        addr: &str,
        user: &User,
        device: &str,
        ctx: ConnCtx,
    ) -> Result<Conn> {
        let opts = WsOptions {
            connect_timeout: CONNECT_TIMEOUT,
            nodelay: true,
            ..WsOptions::default()
        };
        let ws = chatnode_client::ws::connect(addr, &opts)
            .await
            .with_context(|| format!("connect ws://{addr}/v1/ws"))?;
        let (mut sink, mut stream) = ws.split();
        let auth = json!({"type":"auth","id":0,"token":user.token,"device_id":device});
        sink.send(Message::Text(auth.to_string().into())).await?;
        let reply = timeout(Duration::from_secs(5), async {
            while let Some(frame) = stream.next().await {
                if let Message::Text(t) = frame? {
                    return Ok::<_, anyhow::Error>(serde_json::from_str::<serde_json::Value>(&t)?);
                }
            }
            bail!("closed during auth")
        })
        .await
        .map_err(|_| anyhow!("auth on {addr}: timeout"))??;
        if reply["type"] != "auth_ok" {
            bail!("auth on {addr}: {reply}");
        }
        let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<serde_json::Value>>>> =
            Default::default();
        let alive = Arc::new(AtomicBool::new(true));
        let state: Arc<Mutex<ConnState>> = Default::default();
        let reader = tokio::spawn(read_loop(
            stream,
            ReaderCtx {
                ctx,
                conn: id,
                node,
                pending: pending.clone(),
                alive: alive.clone(),
                state: state.clone(),
            },
        ));
        Ok(Conn {
            id,
            node,
            sink: tokio::sync::Mutex::new(sink),
            pending,
            next_req: AtomicU64::new(1),
            alive,
            state,
            reader,
        })
    }

    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    pub async fn request(
        &self,
        mut frame: serde_json::Value,
        limit: Duration,
    ) -> Result<serde_json::Value, ReqError> {
        let id = self.next_req.fetch_add(1, Ordering::Relaxed);
        frame["id"] = id.into();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        if !self.alive() {
            self.pending.lock().unwrap().remove(&id);
            return Err(ReqError::Lost);
        }
        let sent = {
            let mut sink = self.sink.lock().await;
            timeout(limit, sink.send(Message::Text(frame.to_string().into()))).await
        };
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                self.pending.lock().unwrap().remove(&id);
                return Err(ReqError::Lost);
            }
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                return Err(ReqError::Timeout);
            }
        }
        match timeout(limit, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(ReqError::Lost),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                Err(ReqError::Timeout)
            }
        }
    }

    /// Notes a seq this connection learned from an ack or a read.
    fn seen(&self, conv: &str, seq: u64) {
        self.state
            .lock()
            .unwrap()
            .convs
            .entry(conv.to_string())
            .or_default()
            .on_seen(seq);
    }

    /// For each conversation with a hole older than the grace period: the seq to sync from.
    fn old_holes(&self) -> HashMap<String, u64> {
        let now = Instant::now();
        let st = self.state.lock().unwrap();
        st.convs
            .iter()
            .filter_map(|(c, t)| {
                t.holes
                    .iter()
                    .find(|(_, at)| now.duration_since(**at) >= HOLE_GRACE)
                    .map(|_| (c.clone(), t.holes.keys().next().copied().unwrap_or(1) - 1))
            })
            .collect()
    }

    fn any_holes(&self) -> HashMap<String, u64> {
        let st = self.state.lock().unwrap();
        st.convs
            .iter()
            .filter_map(|(c, t)| t.holes.keys().next().map(|h| (c.clone(), h - 1)))
            .collect()
    }
}

struct ReaderCtx {
    ctx: ConnCtx,
    conn: u64,
    node: usize,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<serde_json::Value>>>>,
    alive: Arc<AtomicBool>,
    state: Arc<Mutex<ConnState>>,
}

pub fn parse_msg(m: &serde_json::Value) -> Option<Msg> {
    Some(Msg {
        seq: m["seq"].as_u64()?,
        msg_id: m["msg_id"].as_str().map(str::to_string),
        client_msg_id: m["client_msg_id"].as_str()?.to_string(),
        sender: m["sender_id"].as_str().map(str::to_string),
    })
}

/// Reads the connection's frames until it closes: replies go to their waiting request (a
/// late ack is recorded), pushes are tracked and written to the history in batches.
async fn read_loop(mut stream: futures_util::stream::SplitStream<Ws>, r: ReaderCtx) {
    let mut pushes: BTreeMap<String, Vec<Msg>> = BTreeMap::new();
    let mut first_buffered: Option<Instant> = None;
    let mut tick = tokio::time::interval(PUSH_FLUSH / 2);
    loop {
        let frame = tokio::select! {
            f = stream.next() => f,
            _ = tick.tick() => {
                if first_buffered.is_some_and(|t| t.elapsed() >= PUSH_FLUSH) {
                    r.flush_pushes(&mut pushes);
                    first_buffered = None;
                }
                continue;
            }
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if let Some(id) = v.get("id").and_then(|i| i.as_u64()) {
            r.on_reply(id, v);
            continue;
        }
        match v["type"].as_str() {
            Some("message") if r.ctx.record_pushes => {
                let buffered = r.on_push(&v, &mut pushes);
                if buffered {
                    first_buffered.get_or_insert_with(Instant::now);
                }
            }
            Some("reconnect") => break,
            _ => {}
        }
    }
    r.flush_pushes(&mut pushes);
    r.alive.store(false, Ordering::Release);
    // Dropping the waiters tells every pending request that the connection is gone.
    r.pending.lock().unwrap().clear();
}

impl ReaderCtx {
    /// Writes the buffered pushes to the history, one event per conversation.
    fn flush_pushes(&self, pushes: &mut BTreeMap<String, Vec<Msg>>) {
        for (conv, msgs) in std::mem::take(pushes) {
            let mut ev = Event::new(0, self.ctx.process, Type::Ok, F::Push, 0);
            ev.node = Some(crate::cluster::node_name(self.node));
            ev.conn = Some(self.conn);
            ev.conversation = Some(conv);
            ev.value = Some(Value {
                messages: Some(msgs),
                ..Default::default()
            });
            self.ctx.hist.observe(ev);
        }
    }

    /// Notes a seq of `conv` this connection (and its process, if tracked) now holds.
    fn track(&self, conv: &str, seq: u64, push: bool) {
        {
            let mut st = self.state.lock().unwrap();
            let t = st.convs.entry(conv.to_string()).or_default();
            if push {
                t.on_push(seq);
            } else {
                t.on_seen(seq);
            }
        }
        if let Some(known) = &self.ctx.known {
            known
                .lock()
                .unwrap()
                .entry(conv.to_string())
                .or_default()
                .insert(seq);
        }
    }

    /// Hands a reply to its waiting request; an ack nobody waits for any more is a late ack.
    fn on_reply(&self, id: u64, v: serde_json::Value) {
        let waiter = self.pending.lock().unwrap().remove(&id);
        match waiter {
            Some(tx) => {
                let _ = tx.send(v);
            }
            None if v["type"] == "ack" => self.record_late_ack(&v),
            None => {}
        }
    }

    /// The send was given up (timeout): its ack still tells where it went.
    fn record_late_ack(&self, v: &serde_json::Value) {
        let (Some(conv), Some(seq)) = (v["conversation_id"].as_str(), v["seq"].as_u64()) else {
            return;
        };
        self.track(conv, seq, false);
        let mut ev = Event::new(0, self.ctx.process, Type::Ok, F::LateAck, 0);
        ev.node = Some(crate::cluster::node_name(self.node));
        ev.conn = Some(self.conn);
        ev.conversation = Some(conv.to_string());
        ev.client_msg_id = v["client_msg_id"].as_str().map(str::to_string);
        ev.value = Some(Value {
            seq: Some(seq),
            msg_id: v["msg_id"].as_str().map(str::to_string),
            ..Default::default()
        });
        self.ctx.hist.observe(ev);
    }

    /// Tracks a pushed message and buffers it for the history; false if it is not one.
    fn on_push(&self, v: &serde_json::Value, pushes: &mut BTreeMap<String, Vec<Msg>>) -> bool {
        let (Some(conv), Some(m)) = (v["conversation_id"].as_str(), parse_msg(v)) else {
            return false;
        };
        self.track(conv, m.seq, true);
        // Pushes leave out the sender: the client_msg_id names the process.
        let m = Msg { sender: None, ..m };
        pushes.entry(conv.to_string()).or_default().push(m);
        true
    }
}

// ---------------------------------------------------------------- setup

async fn http_retry(
    addrs: &[String],
    path: &str,
    body: &str,
    want: &[u16],
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut i = 0;
    loop {
        let addr = &addrs[i % addrs.len()];
        i += 1;
        match http::request(
            addr,
            "POST",
            path,
            Some(body),
            None,
            Duration::from_secs(30),
        )
        .await
        {
            Ok(r) if want.contains(&r.status) => return r.json(),
            Ok(r) if r.status < 500 => bail!("POST {path} on {addr}: {} {}", r.status, r.body),
            Ok(r) if Instant::now() > deadline => bail!("POST {path}: {} {}", r.status, r.body),
            Err(e) if Instant::now() > deadline => return Err(e),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Registers `k` users and creates `c` group conversations that all of them belong to.
pub async fn setup(nodes: &[(usize, String)], k: usize, c: usize, hist: &History) -> Result<Setup> {
    let addrs: Vec<String> = nodes.iter().map(|(_, a)| a.clone()).collect();
    let mut tasks = Vec::new();
    for p in 0..k {
        let addrs: Vec<String> = addrs
            .iter()
            .cycle()
            .skip(p)
            .take(addrs.len())
            .cloned()
            .collect();
        tasks.push(tokio::spawn(register_user(p, addrs)));
    }
    let mut users = Vec::new();
    for t in tasks {
        users.push(t.await??);
    }
    let (node, addr) = nodes[0].clone();
    let conn = Conn::open(
        node,
        &addr,
        &users[0],
        "setup",
        ConnCtx {
            hist: hist.clone(),
            process: HARNESS,
            known: None,
            record_pushes: false,
        },
    )
    .await?;
    let members: Vec<&str> = users[1..].iter().map(|u| u.user_id.as_str()).collect();
    let mut conversations = Vec::new();
    for i in 0..c {
        conversations.push(create_conversation(&conn, i, &members).await?);
    }
    Ok(Setup {
        users,
        conversations,
    })
}

/// Registers user `jepsen{p}` (trying `addrs` in turn) and logs it in.
async fn register_user(p: usize, addrs: Vec<String>) -> Result<User> {
    let creds = json!({"username": format!("jepsen{p}"), "password": PASSWORD}).to_string();
    match http_retry(&addrs, "/v1/register", &creds, &[201, 200]).await {
        Ok(_) => {}
        // A retried registration that had gone through answers "taken": fine.
        Err(e) if e.to_string().contains(" 409 ") => {}
        Err(e) => return Err(e),
    }
    let login = http_retry(&addrs, "/v1/login", &creds, &[200]).await?;
    Ok::<_, anyhow::Error>(User {
        user_id: login["user_id"]
            .as_str()
            .ok_or_else(|| anyhow!("login: {login}"))?
            .to_string(),
        token: login["token"]
            .as_str()
            .ok_or_else(|| anyhow!("login: {login}"))?
            .to_string(),
    })
}

/// Creates group conversation `jepsen-{i}` with `members` (10 tries); returns its id.
async fn create_conversation(conn: &Conn, i: usize, members: &[&str]) -> Result<String> {
    let mut tries = 0;
    loop {
        tries += 1;
        let frame = json!({"type":"create_conversation","kind":"group","title":format!("jepsen-{i}"),"members":members});
        match conn.request(frame, Duration::from_secs(10)).await {
            Ok(v) if v["type"] == "conversation" => {
                return Ok(v["conversation"]["conversation_id"]
                    .as_str()
                    .ok_or_else(|| anyhow!("create_conversation: {v}"))?
                    .to_string());
            }
            r if tries < 10 => {
                tracing::warn!("create_conversation: {r:?}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            r => bail!("create_conversation failed: {r:?}"),
        }
    }
}

// ---------------------------------------------------------------- client process

pub struct ClientCfg {
    pub process: usize,
    pub user: User,
    pub conversations: Vec<String>,
    pub nodes: Nodes,
    /// Seconds between this process' operations on average.
    pub interval: Duration,
    pub seed: u64,
    /// Set when the workload ends: finish the current operation, then stop.
    pub stop: Arc<AtomicBool>,
    pub hist: History,
}

pub struct Client {
    cfg: ClientCfg,
    rng: StdRng,
    conn: Option<Conn>,
    /// Index into the node list of the node to use next.
    node_pos: usize,
    known: Arc<Mutex<HashMap<String, Track>>>,
    next_msg: u64,
    fail_streak: u32,
}

impl Client {
    pub fn new(cfg: ClientCfg) -> Client {
        let rng = StdRng::seed_from_u64(
            cfg.seed ^ (cfg.process as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let node_pos = cfg.process;
        Client {
            cfg,
            rng,
            conn: None,
            node_pos,
            known: Default::default(),
            next_msg: 1,
            fail_streak: 0,
        }
    }

    fn rotate(&mut self) {
        self.conn = None;
        self.node_pos += 1;
    }

    /// Makes sure there is a live connection; on failure returns the node tried and why
    /// (after a backoff, and with the next node chosen for the next try).
    async fn ensure_conn(&mut self) -> Result<(), (usize, String)> {
        if self.conn.as_ref().is_some_and(|c| c.alive()) {
            return Ok(());
        }
        self.conn = None;
        let (node, addr) = {
            let nodes = self.cfg.nodes.read().unwrap();
            nodes[self.node_pos % nodes.len()].clone()
        };
        let ctx = ConnCtx {
            hist: self.cfg.hist.clone(),
            process: self.cfg.process as i64,
            known: Some(self.known.clone()),
            record_pushes: true,
        };
        let device = format!("p{}", self.cfg.process);
        match Conn::open(node, &addr, &self.cfg.user, &device, ctx).await {
            Ok(c) => {
                self.conn = Some(c);
                self.fail_streak = 0;
                Ok(())
            }
            Err(e) => {
                tracing::debug!("p{}: {e:#}", self.cfg.process);
                self.fail_streak += 1;
                self.node_pos += 1;
                let backoff = 100u64 << self.fail_streak.min(4);
                let jitter = self.rng.gen_range(0.5..1.5);
                tokio::time::sleep(Duration::from_millis((backoff as f64 * jitter) as u64)).await;
                Err((node, format!("no-connection: {e}")))
            }
        }
    }

    /// Records an op that could not be sent for want of a connection: a definite failure.
    fn record_unsent(&self, mut ev: Event, node: usize, err: String) {
        ev.node = Some(crate::cluster::node_name(node));
        ev.conn = None;
        let done = self.cfg.hist.invoke(ev);
        self.cfg.hist.complete(done, Type::Fail, None, Some(err));
    }

    fn base_event(&self, f: F) -> Event {
        let mut ev = Event::new(0, self.cfg.process as i64, Type::Invoke, f, 0);
        if let Some(c) = &self.conn {
            ev.node = Some(crate::cluster::node_name(c.node));
            ev.conn = Some(c.id);
        }
        ev
    }

    pub async fn run(mut self) {
        let mut next = Instant::now() + self.cfg.interval.mul_f64(self.rng.gen_range(0.0..1.0));
        while !self.cfg.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if next > now {
                tokio::time::sleep(next - now).await;
            } else if now - next > Duration::from_secs(1) {
                next = now; // fell behind (retries): do not burst to catch up
            }
            // Exponential gaps: a Poisson process of ops per client.
            let u: f64 = self.rng.gen_range(1e-9..1.0);
            next += self.cfg.interval.mul_f64(-u.ln());
            if self.cfg.stop.load(Ordering::Relaxed) {
                break;
            }
            let holes = self
                .conn
                .as_ref()
                .filter(|c| c.alive())
                .map(|c| c.old_holes())
                .unwrap_or_default();
            if !holes.is_empty() {
                self.sync(holes).await;
                continue;
            }
            let r: f64 = self.rng.gen();
            let conv =
                self.cfg.conversations[self.rng.gen_range(0..self.cfg.conversations.len())].clone();
            if r < 0.90 {
                self.send(&conv).await;
                continue;
            }
            if let Err((node, err)) = self.ensure_conn().await {
                let mut ev = self.base_event(if r < 0.95 { F::History } else { F::Sync });
                ev.conversation = (r < 0.95).then(|| conv.clone());
                self.record_unsent(ev, node, err);
                continue;
            }
            if r < 0.95 {
                self.history(&conv).await;
            } else {
                self.sync(HashMap::new()).await;
            }
        }
        // Fill what the pushes skipped on the last connection before leaving.
        for _ in 0..3 {
            let holes = self
                .conn
                .as_ref()
                .filter(|c| c.alive())
                .map(|c| c.any_holes())
                .unwrap_or_default();
            if holes.is_empty() {
                break;
            }
            self.sync(holes).await;
        }
    }

    /// Sends one new client_msg_id to `conv`, retrying it (same id, with backoff, on the
    /// next node after a timeout, a lost connection or a retryable refusal) up to
    /// MAX_ATTEMPTS times; fewer when the workload is winding down.
    async fn send(&mut self, conv: &str) {
        let cmid = format!("p{}-{}", self.cfg.process, self.next_msg);
        self.next_msg += 1;
        let body = format!("jepsen {cmid}");
        for attempt in 1..=MAX_ATTEMPTS {
            if attempt > 1 {
                let backoff = (100u64 << (attempt - 2).min(4)).min(2000);
                let jitter = self.rng.gen_range(0.5..1.5);
                tokio::time::sleep(Duration::from_millis((backoff as f64 * jitter) as u64)).await;
            }
            let mut ev = self.base_event(F::Send);
            ev.conversation = Some(conv.to_string());
            ev.client_msg_id = Some(cmid.clone());
            ev.attempt = Some(attempt);
            if let Err((node, err)) = self.ensure_conn().await {
                // Never reached a server: certainly not stored by this attempt.
                self.record_unsent(ev, node, err);
                continue;
            }
            let conn = self.conn.as_ref().unwrap();
            ev.node = Some(crate::cluster::node_name(conn.node));
            ev.conn = Some(conn.id);
            let done = self.cfg.hist.invoke(ev);
            let frame =
                json!({"type":"send","conversation_id":conv,"client_msg_id":cmid,"body":body});
            let conn = self.conn.as_ref().unwrap();
            let res = conn.request(frame, OP_TIMEOUT).await;
            if self.on_send_reply(conv, &cmid, done, res).await {
                return;
            }
            if self.cfg.stop.load(Ordering::Relaxed) && attempt >= 3 {
                // Winding down: do not hold the end of the run up for long.
                return;
            }
        }
    }

    /// Records one send attempt's outcome; true when the send is over (acked, or refused
    /// for good), false when it is to be tried again.
    async fn on_send_reply(
        &mut self,
        conv: &str,
        cmid: &str,
        done: Event,
        res: Result<serde_json::Value, ReqError>,
    ) -> bool {
        match res {
            Ok(v) if v["type"] == "ack" => {
                let seq = v["seq"].as_u64();
                if let Some(seq) = seq {
                    if let Some(conn) = self.conn.as_ref() {
                        conn.seen(conv, seq);
                    }
                    self.known
                        .lock()
                        .unwrap()
                        .entry(conv.to_string())
                        .or_default()
                        .insert(seq);
                }
                let value = Value {
                    seq,
                    msg_id: v["msg_id"].as_str().map(str::to_string),
                    ts: v["ts"].as_u64(),
                    ..Default::default()
                };
                self.cfg.hist.complete(done, Type::Ok, Some(value), None);
                return true;
            }
            Ok(v) => {
                let code = v["code"].as_str().unwrap_or("unknown").to_string();
                let retryable = v["retryable"].as_bool().unwrap_or(false);
                self.cfg
                    .hist
                    .complete(done, Type::Fail, None, Some(code.clone()));
                if !retryable {
                    tracing::warn!("p{}: send {cmid}: {v}", self.cfg.process);
                    return true;
                }
                if let Some(ms) = v["retry_after_ms"].as_u64() {
                    tokio::time::sleep(Duration::from_millis(ms.min(5000))).await;
                }
                if code != "rate_limited" {
                    self.rotate();
                }
            }
            Err(ReqError::Timeout) => {
                self.cfg
                    .hist
                    .complete(done, Type::Info, None, Some("timeout".into()));
                self.rotate();
            }
            Err(ReqError::Lost) => {
                self.cfg
                    .hist
                    .complete(done, Type::Info, None, Some("connection-lost".into()));
                self.rotate();
            }
        }
        false
    }

    /// Reads the newest history page of `conv`.
    async fn history(&mut self, conv: &str) {
        let mut ev = self.base_event(F::History);
        ev.conversation = Some(conv.to_string());
        let done = self.cfg.hist.invoke(ev);
        let frame = json!({"type":"history","conversation_id":conv,"limit":100});
        let conn = self.conn.as_ref().unwrap();
        match conn.request(frame, OP_TIMEOUT).await {
            Ok(v) if v["type"] == "history" => {
                let msgs: Vec<Msg> = v["messages"]
                    .as_array()
                    .map(|a| a.iter().filter_map(parse_msg).collect())
                    .unwrap_or_default();
                self.learn(conv, &msgs);
                let value = Value {
                    messages: Some(msgs),
                    has_more: v["has_more"].as_bool(),
                    ..Default::default()
                };
                self.cfg.hist.complete(done, Type::Ok, Some(value), None);
            }
            res => self.read_failed(done, res),
        }
    }

    /// Notes the seqs of messages read from `conv` for the process and its connection.
    fn learn(&self, conv: &str, msgs: &[Msg]) {
        let mut known = self.known.lock().unwrap();
        let t = known.entry(conv.to_string()).or_default();
        for m in msgs {
            t.insert(m.seq);
            if let Some(conn) = self.conn.as_ref() {
                conn.seen(conv, m.seq);
            }
        }
    }

    /// Records a read that did not get its answer: a refusal is a failure (and moves on to
    /// the next node when the node is unavailable or broken), a timeout or a lost
    /// connection is indeterminate (and moves on).
    fn read_failed(&mut self, done: Event, res: Result<serde_json::Value, ReqError>) {
        match res {
            Ok(v) => {
                let code = v["code"].as_str().unwrap_or("unknown").to_string();
                self.cfg
                    .hist
                    .complete(done, Type::Fail, None, Some(code.clone()));
                if code == "unavailable" || code == "internal" {
                    self.rotate();
                }
            }
            Err(e) => {
                let err = if matches!(e, ReqError::Timeout) {
                    "timeout"
                } else {
                    "connection-lost"
                };
                self.cfg
                    .hist
                    .complete(done, Type::Info, None, Some(err.into()));
                self.rotate();
            }
        }
    }

    /// `sync` from what the process holds, or from lower where `from` says (holes of this
    /// connection); repeated while a conversation has more.
    async fn sync(&mut self, mut from: HashMap<String, u64>) {
        for _round in 0..50 {
            let Some(conn) = self.conn.as_ref() else {
                return;
            };
            let req = self.sync_request(&from);
            let mut ev = self.base_event(F::Sync);
            ev.value = Some(Value {
                entries: Some(
                    req.iter()
                        .map(|(c, &f)| SyncEntry {
                            conversation: c.clone(),
                            from_seq: f,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            });
            let done = self.cfg.hist.invoke(ev);
            let frame = json!({"type":"sync","conversations":req});
            match conn.request(frame, OP_TIMEOUT).await {
                Ok(v) if v["type"] == "sync" => {
                    let (entries, more) = self.sync_entries(&req, &v);
                    let value = Value {
                        entries: Some(entries),
                        ..Default::default()
                    };
                    self.cfg.hist.complete(done, Type::Ok, Some(value), None);
                    if more.is_empty() {
                        return;
                    }
                    from = more;
                }
                res => {
                    self.read_failed(done, res);
                    return;
                }
            }
        }
    }

    /// The seq to sync each conversation from: the process' watermark, or lower where
    /// `from` says.
    fn sync_request(&self, from: &HashMap<String, u64>) -> BTreeMap<String, u64> {
        let known = self.known.lock().unwrap();
        self.cfg
            .conversations
            .iter()
            .map(|c| {
                let w = known.get(c).map(|t| t.w).unwrap_or(0);
                let f = from.get(c).map(|&h| h.min(w)).unwrap_or(w);
                (c.clone(), f)
            })
            .collect()
    }

    /// A sync reply's entries as recorded (their messages learned), and the conversations
    /// that have more, with the seq to continue from.
    fn sync_entries(
        &self,
        req: &BTreeMap<String, u64>,
        v: &serde_json::Value,
    ) -> (Vec<SyncEntry>, HashMap<String, u64>) {
        let mut entries = Vec::new();
        let mut more = HashMap::new();
        for e in v["conversations"].as_array().cloned().unwrap_or_default() {
            let conv = e["conversation_id"].as_str().unwrap_or("").to_string();
            let from_seq = req.get(&conv).copied().unwrap_or(0);
            if let Some(err) = e["error"].as_str() {
                entries.push(SyncEntry {
                    conversation: conv,
                    from_seq,
                    error: Some(err.to_string()),
                    ..Default::default()
                });
                continue;
            }
            let msgs: Vec<Msg> = e["messages"]
                .as_array()
                .map(|a| a.iter().filter_map(parse_msg).collect())
                .unwrap_or_default();
            self.learn(&conv, &msgs);
            let has_more = e["has_more"].as_bool().unwrap_or(false);
            if has_more {
                if let Some(last) = msgs.last() {
                    more.insert(conv.clone(), last.seq);
                }
            }
            entries.push(SyncEntry {
                conversation: conv,
                from_seq,
                last_seq: e["last_seq"].as_u64(),
                has_more: Some(has_more),
                messages: Some(msgs),
                error: None,
            });
        }
        (entries, more)
    }
}

// ---------------------------------------------------------------- final reads

/// Reads every conversation in full through node `node` (history pages, newest first, until
/// `has_more` is false) and records one `final-read` per conversation, in ascending order.
/// Retries for up to `limit`; returns the last seq read per conversation (some may be
/// missing if they could not be read).
pub async fn final_read(
    node: usize,
    addr: &str,
    user: &User,
    conversations: &[String],
    hist: &History,
    limit: Duration,
) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + limit;
    let mut done_convs = BTreeMap::new();
    let mut conn: Option<Conn> = None;
    while Instant::now() < deadline && done_convs.len() < conversations.len() {
        if conn.as_ref().is_none_or(|c| !c.alive()) {
            let ctx = ConnCtx {
                hist: hist.clone(),
                process: HARNESS,
                known: None,
                record_pushes: false,
            };
            match Conn::open(node, addr, user, &format!("final-n{node}"), ctx).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!("final read on n{node}: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let c = conn.as_ref().unwrap();
        for conv in conversations {
            if done_convs.contains_key(conv) {
                continue;
            }
            let mut ev = Event::new(0, HARNESS, Type::Invoke, F::FinalRead, 0);
            ev.node = Some(crate::cluster::node_name(node));
            ev.conn = Some(c.id);
            ev.conversation = Some(conv.clone());
            let done = hist.invoke(ev);
            match read_all(c, conv).await {
                Ok(mut all) => {
                    all.reverse();
                    let last = all.iter().map(|m| m.seq).max();
                    let value = Value {
                        last_seq: last,
                        messages: Some(all),
                        ..Default::default()
                    };
                    hist.complete(done, Type::Ok, Some(value), None);
                    done_convs.insert(conv.clone(), last.unwrap_or(0));
                }
                Err((ty, err)) => {
                    tracing::warn!("final read of {conv} on n{node}: {err}");
                    hist.complete(done, ty, None, Some(err));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
    done_convs
}

/// Every message of `conv`, newest first, page by page (`before_seq` = the oldest seq so
/// far) until a page says has_more=false; or how the reading failed (a refusal or an
/// inconsistent page: fail; a timeout or a lost connection: info).
async fn read_all(c: &Conn, conv: &str) -> Result<Vec<Msg>, (Type, String)> {
    let mut all: Vec<Msg> = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut frame = json!({"type":"history","conversation_id":conv,"limit":100});
        if let Some(b) = before {
            frame["before_seq"] = b.into();
        }
        match c.request(frame, Duration::from_secs(10)).await {
            Ok(v) if v["type"] == "history" => {
                let msgs: Vec<Msg> = v["messages"]
                    .as_array()
                    .map(|a| a.iter().filter_map(parse_msg).collect())
                    .unwrap_or_default();
                let has_more = v["has_more"].as_bool().unwrap_or(false);
                let min = msgs.iter().map(|m| m.seq).min();
                all.extend(msgs);
                match (has_more, min) {
                    (true, Some(m)) if m > 1 => before = Some(m),
                    (true, _) => {
                        return Err((Type::Fail, "has_more with an empty page".into()));
                    }
                    (false, _) => return Ok(all),
                }
            }
            Ok(v) => {
                return Err((
                    Type::Fail,
                    v["code"].as_str().unwrap_or("unknown").to_string(),
                ));
            }
            Err(e) => {
                let err = if matches!(e, ReqError::Timeout) {
                    "timeout"
                } else {
                    "connection-lost"
                };
                return Err((Type::Info, err.into()));
            }
        }
    }
}
