//! Attacks on the client port's HTTP layer (issue 12 point 6): slowloris, connection caps
//! (global and per source IP), stalled requests, and TCP_NODELAY on accepted sockets.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Half-open connections of the slowloris attack.
const SLOWLORIS_CONNECTIONS: usize = 2_000;
/// The header timeout the slowloris test configures.
const SLOWLORIS_HEADER_TIMEOUT_MS: u64 = 4_000;

/// Reads a raw HTTP/1.1 response head + body until the server closes (or `wait` passes).
async fn read_all(s: &mut TcpStream, wait: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

/// GET `path` on a fresh connection; returns the whole raw response.
async fn raw_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    read_all(&mut s, WAIT).await
}

fn header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    let head = raw.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn status(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// One slowloris connection: sends a request head one byte per second, never finishing it;
/// returns when the server closes the connection (or after `give_up`).
async fn slowloris(addr: SocketAddr, opened: Arc<AtomicUsize>, give_up: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    let _ = s.set_nodelay(true);
    let head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let mut i = 0usize;
    while started.elapsed() < give_up {
        let byte = head[i % head.len()];
        if s.write_all(&[byte]).await.is_err() {
            return true;
        }
        if i == 0 {
            opened.fetch_add(1, Ordering::SeqCst);
        }
        i += 1;
        // A read returning (0 = closed, or an error) means the server dropped us.
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {} // a 408/400 answer: keep reading until the close
            Err(_) => {}
        }
    }
    false
}

/// 2,000 half-open connections sending one header byte per second do not stop a normal
/// client from logging in and chatting, and the header timeout closes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_stop_clients_and_is_closed_by_the_header_timeout() {
    let node = start_node_with(|c| {
        c.limits.http_header_timeout_ms = SLOWLORIS_HEADER_TIMEOUT_MS;
    })
    .await;
    let addr = node.addr;
    let (_bob_id, bob_token) = register(addr, "bob").await;

    let opened = Arc::new(AtomicUsize::new(0));
    let give_up = Duration::from_millis(SLOWLORIS_HEADER_TIMEOUT_MS) + Duration::from_secs(20);
    let attack_started = Instant::now();
    let attackers: Vec<_> = (0..SLOWLORIS_CONNECTIONS)
        .map(|_| tokio::spawn(slowloris(addr, opened.clone(), give_up)))
        .collect();
    // The attack is in place: every connection is open and has sent its first byte.
    let deadline = Instant::now() + WAIT;
    while opened.load(Ordering::SeqCst) < SLOWLORIS_CONNECTIONS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(opened.load(Ordering::SeqCst), SLOWLORIS_CONNECTIONS);

    // A normal client registers, logs in, connects and chats while the attack runs.
    let normal = async {
        let (alice_id, alice_token) = register(addr, "alice").await;
        let mut alice = Client::connect(addr, &alice_token, "a").await;
        let mut bob = Client::connect(addr, &bob_token, "b").await;
        let conv = alice.create_direct(&bob.user_id.clone()).await;
        let ack = alice.send_msg(&conv, "m1", "hello under attack").await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let pushed = bob
            .push_of("message", WAIT)
            .await
            .expect("bob gets the message");
        assert_eq!(pushed["sender_id"], json!(alice_id), "{pushed}");
    };
    let began = Instant::now();
    tokio::time::timeout(WAIT, normal)
        .await
        .expect("a normal client logs in and chats while the attack runs");
    let took = began.elapsed();
    // The normal client did its work while the attack was still holding its connections.
    assert!(
        attack_started.elapsed() < Duration::from_millis(SLOWLORIS_HEADER_TIMEOUT_MS) + WAIT,
        "the attack was over before the normal client finished"
    );
    eprintln!("normal client: register + login + chat took {took:?} under attack");

    // Every attacking connection is closed by the header timeout, not by the client.
    let mut closed = 0;
    for a in attackers {
        if a.await.unwrap_or(false) {
            closed += 1;
        }
    }
    let elapsed = attack_started.elapsed();
    assert_eq!(
        closed, SLOWLORIS_CONNECTIONS,
        "connections the server closed after {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(SLOWLORIS_HEADER_TIMEOUT_MS),
        "closed before the header timeout: {elapsed:?}"
    );
}

/// Past `connections_per_ip`, a new connection from the same address is answered 503 with
/// `Retry-After` (a WebSocket upgrade too), and a freed slot admits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_ip_cap_get_503_with_retry_after() {
    const CAP: usize = 4;
    let node = start_node_with(|c| c.limits.connections_per_ip = CAP).await;
    let addr = node.addr;
    let (_, token) = register(addr, "carol").await;
    // CAP open WebSockets hold the source's slots (an upgraded connection keeps its slot).
    let mut held = Vec::new();
    for i in 0..CAP {
        held.push(Client::connect(addr, &token, &format!("d{i}")).await);
    }
    check_refused(addr, "too many connections from this address").await;

    // A freed slot admits again (the server notices the close asynchronously).
    drop(held.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let raw = raw_get(addr, "/health").await;
        if status(&raw) == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {raw}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Past `http_connections_max`, likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_node_cap_get_503_with_retry_after() {
    const CAP: usize = 3;
    let node = start_node_with(|c| c.limits.http_connections_max = CAP).await;
    let addr = node.addr;
    let (_, token) = register(addr, "dave").await;
    let mut held = Vec::new();
    for i in 0..CAP {
        held.push(Client::connect(addr, &token, &format!("d{i}")).await);
    }
    check_refused(addr, "node is at its connection limit").await;
}

async fn check_refused(addr: SocketAddr, message: &str) {
    let raw = raw_get(addr, "/health").await;
    assert_eq!(status(&raw), 503, "{raw}");
    assert_eq!(header(&raw, "retry-after"), Some("1"), "{raw}");
    assert!(raw.contains(message), "{raw}");
    assert!(raw.contains("\"overloaded\""), "{raw}");
    match tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            assert_eq!(
                resp.headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()),
                Some("1")
            );
        }
        other => panic!("WebSocket upgrade past the cap: {:?}", other.map(|_| ())),
    }
}

/// A request whose body stops arriving is cut by the idle timeout (no byte moved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_is_closed_by_the_idle_timeout() {
    const IDLE_MS: u64 = 500;
    let node = start_node_with(|c| c.limits.http_idle_timeout_ms = IDLE_MS).await;
    let mut s = TcpStream::connect(node.addr).await.expect("connect");
    // The head is complete (the header timeout no longer runs); the body never comes.
    let head = "POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
    s.write_all(head.as_bytes()).await.expect("write");
    let began = Instant::now();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "a stalled request was still open after {:?}",
        began.elapsed()
    );
}

/// Replies are written at once (TCP_NODELAY). Two pipelined requests whose replies leave
/// the server in two writes: with Nagle on, the second reply waits for the client's delayed
/// ACK of the first (40 ms on Linux) every time; 200 such rounds would take ~8 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_replies_do_not_wait_for_delayed_acks() {
    const ROUNDS: u64 = 200;
    let node = start_node().await;
    let (_, token) = register(node.addr, "erin").await;
    let (frank, _) = register(node.addr, "frank").await;
    let mut c = Client::connect(node.addr, &token, "e").await;
    let conv = c.create_direct(&frank).await;
    let began = Instant::now();
    for i in 0..ROUNDS {
        // One write carrying both: the pong is ready at once, the ack after the commit.
        let ping = json!({"type":"ping","id": 2 * i + 1_000_000});
        let send = json!({"type":"send","id": 2 * i + 1_000_001,"conversation_id":conv,
            "client_msg_id": format!("m{i}"),"body":"x"});
        c.ws.feed(Message::Text(ping.to_string().into()))
            .await
            .expect("feed");
        c.ws.feed(Message::Text(send.to_string().into()))
            .await
            .expect("feed");
        c.ws.flush().await.expect("flush");
        let pong = c.reply_to(json!(2 * i + 1_000_000)).await;
        assert_eq!(pong["type"], "pong", "{pong}");
        let ack = c.reply_to(json!(2 * i + 1_000_001)).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let took = began.elapsed();
    eprintln!("{ROUNDS} pipelined rounds: {took:?}");
    assert!(
        took < Duration::from_secs(4),
        "{ROUNDS} rounds took {took:?}"
    );
}

/// `/metrics` stays on the client port by default; with `metrics_listen` it is served there
/// only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_moves_metrics_off_the_client_port() {
    let plain = start_node().await;
    assert_eq!(status(&raw_get(plain.addr, "/metrics").await), 200);

    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let metrics_addr = metrics.local_addr().expect("addr");
    let node = start_node_with(move |c| c.metrics_listen = Some(metrics_addr)).await;
    let n = node.node.clone();
    tokio::spawn(async move { n.serve_metrics(metrics, std::future::pending()).await });
    assert_eq!(status(&raw_get(node.addr, "/metrics").await), 404);
    assert_eq!(status(&raw_get(node.addr, "/health").await), 200);
    let raw = raw_get(metrics_addr, "/metrics").await;
    assert_eq!(status(&raw), 200, "{raw}");
    assert!(raw.contains("chatnode_"), "{raw}");
    assert_eq!(status(&raw_get(metrics_addr, "/health").await), 404);
}
