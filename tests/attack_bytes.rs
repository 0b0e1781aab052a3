//! Attack tests of issue 12 point 1 ("bytes, not counts") against a real `chatnode` process,
//! whose RSS is read from /proc: replies that echo a huge request `id`, one reply frame per
//! list entry, and large sync/history/list replies towards a client that does not read must
//! not grow the node's memory by more than 64 MiB, and the node must keep serving others.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The bound on the node's RSS growth during one attack.
const RSS_GROWTH_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// How long RSS is watched after the attack frames were sent.
const WATCH_MS: u64 = 8_000;
/// A request id just under the default 1 MiB frame limit, as in the issue.
const HUGE_ID_CHARS: usize = 900 * 1024;
/// Message bodies near the default `max_body_chars` (4000).
const BODY_CHARS: usize = 3_900;

impl Server {
    fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

fn spawn(dir: &Path) -> (Server, SocketAddr) {
    let config = dir.join("chatnode.toml");
    std::fs::write(
        &config,
        "shards = 4\n[limits]\nuser_messages_per_minute = 1000000\nconversation_messages_per_minute = 1000000\n",
    )
    .unwrap();
    let addr = free_addr();
    // ATTACK_CHATNODE_BIN runs the attacks against another build (e.g. one without the
    // defences, to see the test fail there).
    let bin = std::env::var("ATTACK_CHATNODE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_chatnode").to_string());
    let child = Command::new(bin)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--peer-listen")
        .arg("127.0.0.1:0")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chatnode");
    (Server(child), addr)
}

async fn wait_ready(addr: SocketAddr) {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let (status, _) = http(addr, "GET", "/ready", "").await;
            if status == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chatnode at {addr} never became ready");
}

type RawWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket client with a tiny receive buffer that, after `auth_ok`, never reads again.
async fn stalled_client(addr: SocketAddr, token: &str, device: &str) -> RawWs {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/v1/ws"), stream)
        .await
        .expect("ws handshake");
    ws.send(Message::Text(
        json!({"type":"auth","id":1,"token":token,"device_id":device})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("auth_ok in time")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            assert_eq!(v["type"], "auth_ok", "{v}");
            return ws;
        }
    }
}

/// Sends `frames` on a client that does not read, then watches the node's RSS for a while;
/// meanwhile `other` must be answered. Returns the largest RSS growth seen. The process is
/// killed as soon as the growth passes the bound (the attack succeeded; keep the machine).
async fn attack(
    server: &Server,
    addr: SocketAddr,
    token: &str,
    other: &mut Client,
    frames: Vec<String>,
) -> u64 {
    let base = server.rss_bytes();
    let mut ws = stalled_client(addr, token, "attacker").await;
    let sending = tokio::spawn(async move {
        for f in frames {
            // The node may stop reading (backpressure) or close: both end the attack.
            match tokio::time::timeout(Duration::from_secs(5), ws.send(Message::Text(f.into())))
                .await
            {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        ws
    });
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WATCH_MS);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let watch = async {
        let mut peak = 0u64;
        while tokio::time::Instant::now() < deadline {
            let growth = server.rss_bytes().saturating_sub(base);
            peak = peak.max(growth);
            if growth > RSS_GROWTH_MAX_BYTES {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        peak
    };
    // Another user is served while the attacker's replies pile up.
    let serve = async {
        let mut pongs = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match tokio::time::timeout(WAIT, other.request(json!({"type":"ping"}))).await {
                Ok(v) if v["type"] == "pong" => pongs += 1,
                r => return Err(format!("no pong during the attack: {r:?}")),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(pongs)
    };
    let (peak, served) = tokio::join!(watch, serve);
    sending.abort();
    let _ = sending.await;
    if peak <= RSS_GROWTH_MAX_BYTES {
        let pongs = served.expect("another client was served during the attack");
        assert!(pongs > 0, "no request of another client was answered");
    }
    peak
}

fn huge_id(tag: usize) -> String {
    let mut s = format!("{tag}-");
    s.push_str(&"x".repeat(HUGE_ID_CHARS));
    s
}

/// The measurement: one subscribe_presence naming the user's own id 1,000 times with
/// a ~900 KB request id, sent 8 times without reading the replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_amplification_keeps_rss_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = spawn(dir.path());
    wait_ready(addr).await;
    let (alice, at) = register(addr, "alice").await;
    let (bob, bt) = register(addr, "bob").await;
    let mut a = Client::connect(addr, &at, "a").await;
    a.create_direct(&bob).await;
    let mut b = Client::connect(addr, &bt, "b").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let own: Vec<&str> = vec![alice.as_str(); 1000];
    let frames = (0..8)
        .map(|i| json!({"type":"subscribe_presence","id":huge_id(i),"user_ids":own}).to_string())
        .collect();
    let growth = attack(&server, addr, &at, &mut b, frames).await;
    eprintln!("presence amplification: RSS growth {} KiB", growth / 1024);
    assert!(
        growth <= RSS_GROWTH_MAX_BYTES,
        "RSS grew by {} MiB",
        growth / (1024 * 1024)
    );
}

/// sync, history and list_conversations of a user with many conversations full of large
/// messages, asked many times by a client that does not read; with small ids (so only the
/// reply and queue byte budgets can save the node) and with huge ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_replies_to_a_stalled_reader_keep_rss_bounded() {
    const CONVERSATIONS: usize = 10;
    const MESSAGES_PER_CONVERSATION: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = spawn(dir.path());
    wait_ready(addr).await;
    let (_alice, at) = register(addr, "alice").await;
    let (bob, bt) = register(addr, "bob").await;
    let mut a = Client::connect(addr, &at, "a").await;
    let body = "é".repeat(BODY_CHARS / 2) + &"z".repeat(BODY_CHARS / 2);
    let mut convs = Vec::new();
    for c in 0..CONVERSATIONS {
        let r = a
            .request(json!({"type":"create_conversation","kind":"group","members":[bob],"title":"t".repeat(200)}))
            .await;
        let conv = r["conversation"]["conversation_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_string();
        for i in 0..MESSAGES_PER_CONVERSATION {
            a.send_text(
                json!({"type":"send","id":format!("s{c}-{i}"),"conversation_id":conv,
                       "client_msg_id":format!("m{i}"),"body":body})
                .to_string(),
            )
            .await;
        }
        for i in 0..MESSAGES_PER_CONVERSATION {
            let ack = a.reply_to(json!(format!("s{c}-{i}"))).await;
            assert_eq!(ack["type"], "ack", "{ack}");
        }
        convs.push(conv);
    }
    drop(a);
    let mut b = Client::connect(addr, &bt, "b").await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut growths = Vec::new();
    // ATTACK_ONLY=<name> runs one attack alone (to measure each on a build without defences).
    let only = std::env::var("ATTACK_ONLY").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    // sync: every conversation from seq 0, ~4 MB of messages per reply on an unbounded node.
    let frames = (0..48)
        .map(|i| json!({"type":"sync","id":i,"conversations":{}}).to_string())
        .collect();
    if wanted("sync") {
        growths.push(("sync", attack(&server, addr, &at, &mut b, frames).await));
    }
    // history: 100 large messages per reply.
    let frames = (0..600)
        .map(|i| {
            json!({"type":"history","id":i,"conversation_id":convs[i % convs.len()],"limit":100})
                .to_string()
        })
        .collect();
    if wanted("history") {
        growths.push(("history", attack(&server, addr, &at, &mut b, frames).await));
    }
    // list_conversations with a huge id: the id echoed on every reply.
    let frames = (0..300)
        .map(|i| json!({"type":"list_conversations","id":huge_id(i)}).to_string())
        .collect();
    if wanted("list_conversations") {
        growths.push((
            "list_conversations",
            attack(&server, addr, &at, &mut b, frames).await,
        ));
    }
    // history with a huge id.
    let frames = (0..100)
        .map(|i| {
            json!({"type":"history","id":huge_id(i),"conversation_id":convs[0],"limit":100})
                .to_string()
        })
        .collect();
    if wanted("history, huge id") {
        growths.push((
            "history, huge id",
            attack(&server, addr, &at, &mut b, frames).await,
        ));
    }
    eprintln!(
        "RSS growth by attack (KiB): {:?}",
        growths
            .iter()
            .map(|(n, g)| (n, g / 1024))
            .collect::<Vec<_>>()
    );
    for (name, growth) in &growths {
        assert!(
            *growth <= RSS_GROWTH_MAX_BYTES,
            "{name}: RSS grew by {} MiB",
            growth / (1024 * 1024)
        );
    }
}

/// The per-user index is paged, never cut: a user in more conversations than one reply
/// holds gets every one of them through `list_conversations` and `sync` cursors, and each
/// reply stays within 1 MiB. (Titles of 200 four-byte characters make ~1 KB summaries, so
/// 1,100 conversations need two list pages and three sync pages.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_reaches_every_conversation_within_the_reply_budget() {
    const GROUPS: usize = 1_100;
    const REPLY_BYTES_MAX: usize = 1024 * 1024;
    let n = start_node().await;
    let (_alice, at) = register(n.addr, "alice").await;
    let (bob, _bt) = register(n.addr, "bob").await;
    let (carol, _ct) = register(n.addr, "carol").await;
    let mut a = Client::connect(n.addr, &at, "a").await;
    let title = "😀".repeat(200);
    let mut all = std::collections::BTreeSet::new();
    for chunk in 0..GROUPS / 100 {
        for i in 0..100 {
            a.send_text(
                json!({"type":"create_conversation","id":format!("c{chunk}-{i}"),"kind":"group",
                       "members":[bob],"title":title})
                .to_string(),
            )
            .await;
        }
        for i in 0..100 {
            let r = a.reply_to(json!(format!("c{chunk}-{i}"))).await;
            let id = r["conversation"]["conversation_id"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}"));
            all.insert(id.to_string());
        }
    }
    // A direct conversation created last (its id sorts after every group's).
    all.insert(a.create_direct(&carol).await);

    // list_conversations: follow the cursor.
    let mut listed = std::collections::BTreeSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut req = json!({"type":"list_conversations"});
        if let Some(c) = &cursor {
            req["cursor"] = json!(c);
        }
        let r = a.request(req).await;
        assert!(
            r.to_string().len() <= REPLY_BYTES_MAX,
            "list reply over 1 MiB"
        );
        pages += 1;
        for c in r["conversations"].as_array().unwrap() {
            assert!(
                listed.insert(c["conversation_id"].as_str().unwrap().to_string()),
                "listed twice: {}",
                c["conversation_id"]
            );
        }
        match r["cursor"].as_str() {
            Some(c) => {
                assert_eq!(r["has_more"], true);
                cursor = Some(c.to_string());
            }
            None => break,
        }
        assert!(pages < 20, "list paging does not end");
    }
    assert!(
        pages >= 2,
        "the listing fit one reply: the test does not exercise paging"
    );
    assert_eq!(listed, all, "list_conversations left conversations out");

    // sync: follow the cursor; a named conversation is answered exactly once.
    let named: Vec<&String> = all.iter().step_by(97).collect();
    let asked: serde_json::Map<String, Value> = named
        .iter()
        .map(|c| (c.to_string(), json!(0)))
        .chain([("01J9ZZZZZZZZZZZZZZZZZZZZZZ".to_string(), json!(0))])
        .collect();
    let mut synced = std::collections::BTreeSet::new();
    let mut forbidden = 0;
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut req = json!({"type":"sync","conversations":asked});
        if let Some(c) = &cursor {
            req["cursor"] = json!(c);
        }
        let r = a.request(req).await;
        assert!(
            r.to_string().len() <= REPLY_BYTES_MAX,
            "sync reply over 1 MiB"
        );
        pages += 1;
        for e in r["conversations"].as_array().unwrap() {
            if e["error"] == "forbidden" {
                forbidden += 1;
                continue;
            }
            assert!(
                synced.insert(e["conversation_id"].as_str().unwrap().to_string()),
                "synced twice: {e}"
            );
        }
        match r["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 20, "sync paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(synced, all, "sync left conversations out");
    assert_eq!(forbidden, 1, "the unknown conversation is answered once");
}

/// `history` and `sync` of large messages are cut to 1 MiB with `has_more`, and paging on
/// returns every message exactly once, in order (G8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_are_paged_by_bytes_without_gaps() {
    let n = start_node().await;
    let (_alice, at) = register(n.addr, "alice").await;
    let (bob, _bt) = register(n.addr, "bob").await;
    let mut a = Client::connect(n.addr, &at, "a").await;
    let conv = a.create_direct(&bob).await;
    // 4000 four-byte characters: 16 KB of JSON per body; 100 of them are 1.6 MB.
    let body = "😀".repeat(4000);
    for i in 0..100 {
        a.send_text(
            json!({"type":"send","id":format!("s{i}"),"conversation_id":conv,"client_msg_id":format!("m{i}"),"body":body})
                .to_string(),
        )
        .await;
    }
    for i in 0..100 {
        let ack = a.reply_to(json!(format!("s{i}"))).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let h = a
        .request(json!({"type":"history","conversation_id":conv,"limit":100}))
        .await;
    assert!(h.to_string().len() <= 1024 * 1024);
    assert_eq!(h["has_more"], true);
    assert!(h["messages"].as_array().unwrap().len() < 100);
    let all = a.history_all(&conv).await;
    assert_eq!(all.len(), 100, "history paging lost messages");

    let mut after = 0u64;
    let mut rounds = 0;
    loop {
        let s = a
            .request(json!({"type":"sync","conversations":{conv.clone(): after}}))
            .await;
        assert!(s.to_string().len() <= 1024 * 1024);
        let e = &s["conversations"][0];
        for m in e["messages"].as_array().unwrap() {
            assert_eq!(m["seq"].as_u64(), Some(after + 1), "gap in sync");
            after += 1;
        }
        rounds += 1;
        if e["has_more"] != true {
            break;
        }
        assert!(rounds < 10);
    }
    assert_eq!(after, 100);
    assert!(rounds >= 2, "one sync reply held 1.6 MB");
}
