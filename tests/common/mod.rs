//! Test helpers: an in-process node on 127.0.0.1:0, and the client library's HTTP and
//! WebSocket clients (replies matched by id, pushes kept aside) wrapped to panic on failure.
#![allow(dead_code)]

pub mod cluster;

use std::net::SocketAddr;
use std::time::Duration;

use chatnode_client::http::Session;
use chatnode_client::ws::{self, WsOptions};
use chatnode_client::{HttpClient, WsClient};
use serde_json::{json, Value};

use chatnode::config::Config;
use chatnode::node::Node;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestNode {
    pub addr: SocketAddr,
    pub _dir: tempfile::TempDir,
    pub node: std::sync::Arc<Node>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Limits raised so that tests are not rate limited (except the tests of limits).
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        peer_listen: "127.0.0.1:0".parse().unwrap(),
        shards: 4,
        ..Config::default()
    };
    c.limits.user_messages_per_minute = 100_000;
    c.limits.conversation_messages_per_minute = 100_000;
    c.accounts.registrations_per_ip_per_hour = 100_000;
    // Every test client connects from 127.0.0.1.
    c.limits.connections_per_ip = 1_000_000;
    // ratelimit: the per-frame budgets too.
    c.limits.typing_per_minute = 100_000;
    c.limits.receipts_per_minute = 100_000;
    c.limits.presence_subscriptions_per_minute = 100_000;
    c.limits.reads_per_minute = 100_000;
    c.limits.membership_changes_per_minute = 100_000;
    c.limits.pings_per_minute = 100_000;
    c.limits.conversations_created_per_hour = 100_000;
    c
}

pub async fn start_node_with(config: impl FnOnce(&mut Config)) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    config(&mut c);
    let node = std::sync::Arc::new(Node::start(&c).await.expect("node starts"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let n = node.clone();
    tokio::spawn(async move {
        let _ = n
            .serve(listener, async {
                let _ = rx.await;
            })
            .await;
    });
    TestNode {
        addr,
        _dir: dir,
        node,
        stop: Some(tx),
    }
}

pub async fn start_node() -> TestNode {
    start_node_with(|_| {}).await
}

/// A free loopback address (for a spawned `chatnode` process).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A spawned `chatnode` process, killed when dropped, so a failing test leaves no server
/// behind.
pub struct Server(pub std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request (through the client library); returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let body = (!body.is_empty()).then_some(body);
    let r = HttpClient::new(addr)
        .timeout(WAIT)
        .request(method, path, body, None)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (r.status, r.body)
}

/// Status code and body (de-chunked) of a raw HTTP/1.1 response; status 0 if unparsable.
pub fn parse_http_response(out: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(out).to_string();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// Registers and logs in; returns (user_id, token).
pub async fn register(addr: SocketAddr, name: &str) -> (String, String) {
    let http = HttpClient::new(addr).timeout(WAIT);
    let r = http.register(name, "password123", None).await.unwrap();
    assert_eq!(r.status, 201, "register {name}: {}", r.body);
    let r = http.login(name, "password123").await.unwrap();
    assert_eq!(r.status, 200, "login {name}: {}", r.body);
    let s: Session = r.json().unwrap();
    (s.user_id, s.token)
}

pub type Ws = chatnode_client::ws::Ws;

/// The client library's WebSocket client with the tests' manners: every failure panics,
/// replies are awaited for [`WAIT`]. Its fields (`ws`, `pushes`, `user_id`) are the library
/// client's, through `Deref`.
pub struct Client(pub WsClient);

impl std::ops::Deref for Client {
    type Target = WsClient;
    fn deref(&self) -> &WsClient {
        &self.0
    }
}

impl std::ops::DerefMut for Client {
    fn deref_mut(&mut self) -> &mut WsClient {
        &mut self.0
    }
}

impl Client {
    pub async fn connect_raw(addr: SocketAddr) -> Ws {
        ws::connect(&addr.to_string(), &WsOptions::default())
            .await
            .expect("ws connect")
    }

    /// Sends `auth` on an open socket and waits for `auth_ok`.
    async fn authenticate(ws: Ws, token: &str, device: &str) -> Client {
        let mut c = Client(WsClient::new(ws));
        let r = c.0.authenticate(token, device, WAIT).await;
        assert!(r.is_ok(), "auth: {r:?}");
        c
    }

    pub async fn connect(addr: SocketAddr, token: &str, device: &str) -> Client {
        let ws = Self::connect_raw(addr).await;
        Self::authenticate(ws, token, device).await
    }

    /// Like `connect`, over a socket whose receive buffer is `recv_buffer_bytes`: a client
    /// that then stops reading stalls the server's writes to it after a few KiB.
    pub async fn connect_small_buffer(
        addr: SocketAddr,
        token: &str,
        device: &str,
        recv_buffer_bytes: u32,
    ) -> Client {
        let opts = WsOptions {
            recv_buffer_bytes: Some(recv_buffer_bytes),
            ..WsOptions::default()
        };
        let ws = ws::connect(&addr.to_string(), &opts)
            .await
            .expect("ws connect");
        Self::authenticate(ws, token, device).await
    }

    pub async fn send_text(&mut self, text: String) {
        self.0.send_text(text).await.unwrap();
    }

    /// Next frame from the socket, or None on timeout/close.
    pub async fn recv(&mut self, wait: Duration) -> Option<Value> {
        self.0.recv(wait).await.ok().flatten()
    }

    /// Sends `frame` with a fresh id and waits for the reply carrying it.
    pub async fn request(&mut self, frame: Value) -> Value {
        match self.0.request(frame, WAIT).await {
            Ok(v) => v,
            // The frames just before (an error without an id says why the server closed).
            Err(e) => panic!(
                "no reply: {e}; last frames: {:?}",
                self.0
                    .pushes
                    .iter()
                    .rev()
                    .take(3)
                    .map(|f| f.to_string().chars().take(300).collect::<String>())
                    .collect::<Vec<_>>()
            ),
        }
    }

    pub async fn reply_to(&mut self, id: Value) -> Value {
        self.0
            .reply_to(&id, WAIT)
            .await
            .unwrap_or_else(|e| panic!("no reply to {id}: {e}"))
    }

    /// The next pushed frame of type `ty` (others are kept).
    pub async fn push_of(&mut self, ty: &str, wait: Duration) -> Option<Value> {
        self.0.push_of(ty, wait).await.ok().flatten()
    }

    /// Drains pushes for `wait` and returns those of type `ty`.
    pub async fn collect(&mut self, ty: &str, wait: Duration) -> Vec<Value> {
        self.0.drain_for(wait).await;
        self.0.take_pushes(ty)
    }

    /// Creates (or finds) the direct conversation with `other`; returns its id.
    pub async fn create_direct(&mut self, other: &str) -> String {
        let r = self
            .request(json!({"type":"create_conversation","kind":"direct","members":[other]}))
            .await;
        r["conversation"]["conversation_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no conversation in {r}"))
            .to_string()
    }

    /// Every message of a conversation via `history`, newest first, paging by `before_seq`
    /// until `has_more` is false; checks each page is newest-first and gapless.
    pub async fn history_all(&mut self, conv: &str) -> Vec<Value> {
        self.try_history_all(conv)
            .await
            .unwrap_or_else(|e| panic!("history of {conv}: {e}"))
    }

    /// `history_all` that returns the connection's error instead of panicking (the server
    /// may drop a connection that a burst of pushes overflowed: a real client reconnects).
    pub async fn try_history_all(
        &mut self,
        conv: &str,
    ) -> Result<Vec<Value>, chatnode_client::Error> {
        let mut all = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let mut req = json!({"type":"history","conversation_id":conv,"limit":100});
            if let Some(bs) = before {
                req["before_seq"] = json!(bs);
            }
            let h = self.0.request(req, WAIT).await?;
            let msgs = h["messages"].as_array().cloned().unwrap_or_default();
            let seqs: Vec<u64> = msgs.iter().filter_map(|m| m["seq"].as_u64()).collect();
            assert!(
                seqs.windows(2).all(|w| w[0] == w[1] + 1),
                "not newest-first: {seqs:?}"
            );
            before = seqs.last().copied();
            all.extend(msgs);
            if h["has_more"] != true {
                return Ok(all);
            }
        }
    }

    pub async fn send_msg(&mut self, conv: &str, cmid: &str, body: &str) -> Value {
        self.request(json!({"type":"send","conversation_id":conv,"client_msg_id":cmid,"body":body}))
            .await
    }
}
