//! Attacks on accounts against a real node: registration modes and invites, login
//! throttles per IP and per username, a registration flood against the password hashing
//! queue, refresh token rotation and reuse, logout / logout_all, and live WebSockets of
//! revoked or expired tokens.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chatnode::config::Registration;
use chatnode_client::http;
use common::*;
use serde_json::{json, Value};

const PASSWORD: &str = "password123";
/// Per request: well above the server's own deadlines, even behind a hashing queue.
const HTTP_WAIT: Duration = Duration::from_secs(60);

/// A response: status, lower-cased headers, body as JSON (Null if not JSON).
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request from source address `from` (any 127.0.0.0/8 address is local).
async fn request_from(
    from: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> Reply {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{from}:0").parse().unwrap())
        .expect("bind a loopback source address");
    let s = socket.connect(addr).await.unwrap();
    let mut req = http::Request::new(method, path).bearer(bearer);
    if !body.is_empty() {
        req = req.body(body);
    }
    let host = addr.to_string();
    let r = tokio::time::timeout(HTTP_WAIT, http::exchange(s, &host, req, 1 << 20))
        .await
        .expect("answer in time")
        .expect("HTTP exchange");
    Reply {
        status: r.status,
        body: serde_json::from_str(&r.body).unwrap_or(Value::Null),
        headers: r.headers,
    }
}

async fn post(addr: SocketAddr, path: &str, bearer: Option<&str>, body: &str) -> Reply {
    request_from("127.0.0.1", addr, "POST", path, bearer, body).await
}

fn creds(name: &str, password: &str) -> String {
    json!({"username": name, "password": password}).to_string()
}

async fn login(addr: SocketAddr, from: &str, name: &str, password: &str) -> Reply {
    request_from(
        from,
        addr,
        "POST",
        "/v1/login",
        None,
        &creds(name, password),
    )
    .await
}

async fn register_ok(addr: SocketAddr, name: &str) {
    let r = post(addr, "/v1/register", None, &creds(name, PASSWORD)).await;
    assert_eq!(r.status, 201, "register {name}: {}", r.body);
}

/// Logs in; returns (access token, refresh token).
async fn login_ok(addr: SocketAddr, name: &str) -> (String, String) {
    let r = login(addr, "127.0.0.1", name, PASSWORD).await;
    assert_eq!(r.status, 200, "login {name}: {}", r.body);
    (
        r.body["token"].as_str().unwrap().to_string(),
        r.body["refresh_token"].as_str().unwrap().to_string(),
    )
}

/// The first frame answering `auth` with `token`.
async fn ws_auth(addr: SocketAddr, token: &str) -> Value {
    use futures_util::{SinkExt, StreamExt};
    let mut ws = Client::connect_raw(addr).await;
    let frame = json!({"type":"auth","id":1,"token":token,"device_id":"d"}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(frame.into()))
        .await
        .unwrap();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an answer to auth");
        match msg {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                return serde_json::from_str(t.as_str()).unwrap()
            }
            Some(Ok(_)) => continue,
            _ => return Value::Null,
        }
    }
}

fn assert_refused(v: &Value) {
    assert_eq!(v["type"], "error", "token accepted: {v}");
    assert_eq!(v["code"], "unauthorized", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_registration_is_refused() {
    let n = start_node_with(|c| c.accounts.registration = Some(Registration::Closed)).await;
    let r = post(n.addr, "/v1/register", None, &creds("mallory", PASSWORD)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["code"], "forbidden");
    assert!(
        r.body["message"].as_str().unwrap().contains("closed"),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_mode_needs_an_invite_that_works_once() {
    let n = start_node_with(|c| {
        c.accounts.registration = Some(Registration::Invite);
        c.accounts.login_failures_per_15min = 1_000;
    })
    .await;
    let admin = std::fs::read_to_string(n._dir.path().join("admin-token"))
        .expect("admin-token file")
        .trim()
        .to_string();
    let r = post(n.addr, "/v1/register", None, &creds("mallory", PASSWORD)).await;
    assert_eq!(r.status, 403, "no invite: {}", r.body);
    let body = json!({"username":"mallory","password":PASSWORD,"invite":"0123456789abcdef"});
    let r = post(n.addr, "/v1/register", None, &body.to_string()).await;
    assert_eq!(r.status, 403, "made-up invite: {}", r.body);
    // Only the operator creates invites.
    let r = post(n.addr, "/admin/invites", None, "").await;
    assert_eq!(r.status, 401, "invite without the admin credential");
    let r = post(n.addr, "/admin/invites", Some(&admin), "").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let code = r.body["invite"].as_str().unwrap().to_string();
    assert!(r.body["expires_at"].as_u64().unwrap() > chatnode::gateway::now_ms());

    // Five registrations race for one invite: exactly one account is created.
    let mut tasks = Vec::new();
    for i in 0..5 {
        let body = json!({"username": format!("guest{i}"), "password": PASSWORD, "invite": code});
        let addr = n.addr;
        tasks.push(tokio::spawn(async move {
            post(addr, "/v1/register", None, &body.to_string())
                .await
                .status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(
        statuses,
        vec![201, 403, 403, 403, 403],
        "one invite, one account"
    );
    let body = json!({"username":"late","password":PASSWORD,"invite":code});
    let r = post(n.addr, "/v1/register", None, &body.to_string()).await;
    assert_eq!(r.status, 403, "used invite accepted: {}", r.body);

    // The CLI: `chatnode invite` prints a code that works.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatnode"))
        .args([
            "invite",
            "--addr",
            &n.addr.to_string(),
            "--admin-token",
            &admin,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let body = json!({"username":"invited","password":PASSWORD,"invite":code});
    let r = post(n.addr, "/v1/register", None, &body.to_string()).await;
    assert_eq!(r.status, 201, "CLI invite: {}", r.body);
    login_ok(n.addr, "invited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixth_failed_login_gets_429_with_retry_after() {
    let n = start_node().await;
    register_ok(n.addr, "alice").await;
    for i in 0..5 {
        let r = login(n.addr, "127.0.0.1", "alice", "wrong-password").await;
        assert_eq!(r.status, 401, "attempt {i}: {}", r.body);
    }
    // Even the right password is refused until the window ends.
    let r = login(n.addr, "127.0.0.1", "alice", PASSWORD).await;
    assert_eq!(r.status, 429, "6th attempt: {}", r.body);
    assert_eq!(r.body["code"], "rate_limited");
    let secs: u64 = r
        .header("retry-after")
        .expect("Retry-After header")
        .parse()
        .unwrap();
    assert!((1..=900).contains(&secs), "Retry-After {secs}");
    let ms = r.body["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(ms > 0 && ms <= 900_000, "{ms}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_throttles_count_per_ip_and_per_username() {
    let n = start_node().await;
    register_ok(n.addr, "alice").await;
    register_ok(n.addr, "bob").await;
    // Per IP: one address guessing five different names is stopped for every name...
    for i in 0..5 {
        let r = login(n.addr, "127.0.0.2", &format!("nobody{i}"), "wrong-password").await;
        assert_eq!(r.status, 401);
    }
    let r = login(n.addr, "127.0.0.2", "bob", PASSWORD).await;
    assert_eq!(r.status, 429, "same IP, other name: {}", r.body);
    // ...but not other addresses.
    let r = login(n.addr, "127.0.0.3", "bob", PASSWORD).await;
    assert_eq!(r.status, 200, "other IP: {}", r.body);
    // Per username: five addresses guessing one name lock that name (for everyone)...
    for i in 0..5 {
        let r = login(
            n.addr,
            &format!("127.0.1.{}", i + 1),
            "alice",
            "wrong-password",
        )
        .await;
        assert_eq!(r.status, 401);
    }
    let r = login(n.addr, "127.0.2.1", "alice", PASSWORD).await;
    assert_eq!(r.status, 429, "fresh IP, guessed name: {}", r.body);
    // ...and no other name.
    let r = login(n.addr, "127.0.2.1", "bob", PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_flood_does_not_starve_logins() {
    const FLOOD: usize = 300;
    const WAIT_MS: u64 = 500;
    let n = start_node_with(|c| {
        c.accounts.password_hash_wait_ms = WAIT_MS;
        c.accounts.password_hash_queue_max = 16;
    })
    .await;
    register_ok(n.addr, "alice").await;
    let mut flood = Vec::new();
    for i in 0..FLOOD {
        let addr = n.addr;
        flood.push(tokio::spawn(async move {
            let r = post(
                addr,
                "/v1/register",
                None,
                &creds(&format!("flood{i}"), PASSWORD),
            )
            .await;
            (r.status, r.body["retry_after_ms"].as_u64())
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let start = Instant::now();
        let r = login(n.addr, "127.0.0.1", "alice", PASSWORD).await;
        let took = start.elapsed();
        assert!(
            r.status == 200 || (r.status == 503 && r.body["code"] == "overloaded"),
            "login during the flood: {} {}",
            r.status,
            r.body
        );
        // The hashing wait bound plus one hash, with a generous margin for a shared CPU.
        assert!(
            took < Duration::from_millis(WAIT_MS + 4_000),
            "a login waited {took:?} behind the registrations"
        );
    }
    let mut refused = 0;
    for t in flood {
        let (status, retry) = t.await.unwrap();
        assert!(
            status == 201 || status == 503,
            "flood registration: {status}"
        );
        if status == 503 {
            assert!(retry.is_some(), "503 without retry_after_ms");
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "no registration was refused: the queue is unbounded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_a_spent_refresh_token_is_refused() {
    let n = start_node().await;
    register_ok(n.addr, "alice").await;
    let r = login(n.addr, "127.0.0.1", "alice", PASSWORD).await;
    assert_eq!(r.status, 200);
    let now = chatnode::gateway::now_ms();
    let exp = r.body["expires_at"].as_u64().unwrap();
    assert!(
        exp > now && exp <= now + 3_600_000 + 1_000,
        "access token lives 1 h"
    );
    let rexp = r.body["refresh_expires_at"].as_u64().unwrap();
    assert!(
        rexp > now + 29 * 24 * 3_600_000,
        "refresh token lives 30 days"
    );
    let r1 = r.body["refresh_token"].as_str().unwrap().to_string();
    // The refresh token is not an access token.
    assert_refused(&ws_auth(n.addr, &r1).await);

    let body = |t: &str| json!({ "refresh_token": t }).to_string();
    let r = post(n.addr, "/v1/refresh", None, &body(&r1)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t2 = r.body["token"].as_str().unwrap().to_string();
    let r2 = r.body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(r1, r2, "refresh token not rotated");
    assert_eq!(ws_auth(n.addr, &t2).await["type"], "auth_ok");

    // The spent token is refused, and its reuse revokes the session (r2 too).
    let r = post(n.addr, "/v1/refresh", None, &body(&r1)).await;
    assert_eq!(r.status, 401, "spent refresh token accepted: {}", r.body);
    let r = post(n.addr, "/v1/refresh", None, &body(&r2)).await;
    assert_eq!(
        r.status, 401,
        "session survived a reused refresh token: {}",
        r.body
    );
    assert_refused(&ws_auth(n.addr, &t2).await);
    let r = post(n.addr, "/v1/refresh", None, &body("garbage")).await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_one_session() {
    let n = start_node().await;
    register_ok(n.addr, "alice").await;
    let (t1, r1) = login_ok(n.addr, "alice").await;
    let (t2, r2) = login_ok(n.addr, "alice").await;
    let r = post(n.addr, "/v1/logout", Some(&t1), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_refused(&ws_auth(n.addr, &t1).await);
    let r = post(
        n.addr,
        "/v1/refresh",
        None,
        &json!({"refresh_token": r1}).to_string(),
    )
    .await;
    assert_eq!(r.status, 401, "logged-out refresh token accepted");
    // The other session lives, until it logs out with its refresh token.
    assert_eq!(ws_auth(n.addr, &t2).await["type"], "auth_ok");
    let r = post(
        n.addr,
        "/v1/logout",
        None,
        &json!({"refresh_token": r2}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_refused(&ws_auth(n.addr, &t2).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_all_revokes_every_session() {
    let n = start_node().await;
    register_ok(n.addr, "alice").await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(login_ok(n.addr, "alice").await);
    }
    let r = post(n.addr, "/v1/logout_all", Some(&sessions[0].0), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    for (t, rt) in &sessions {
        assert_refused(&ws_auth(n.addr, t).await);
        let r = post(
            n.addr,
            "/v1/refresh",
            None,
            &json!({"refresh_token": rt}).to_string(),
        )
        .await;
        assert_eq!(r.status, 401, "refresh after logout_all: {}", r.body);
    }
    let (t, _) = login_ok(n.addr, "alice").await;
    assert_eq!(
        ws_auth(n.addr, &t).await["type"],
        "auth_ok",
        "a new login works"
    );
}

/// Waits for the server to send `unauthorized` and close the socket.
async fn closed_as_unauthorized(c: &mut Client, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "socket still open after {within:?}");
        match c.recv(left).await {
            Some(v) if v["type"] == "error" => {
                assert_eq!(v["code"], "unauthorized", "{v}");
                assert!(c.recv(Duration::from_secs(5)).await.is_none(), "not closed");
                return v;
            }
            Some(_) => continue,
            None => panic!("closed without an unauthorized error"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_tokens_live_websocket_is_closed() {
    let n = start_node_with(|c| c.auth.session_check_interval_ms = 200).await;
    register_ok(n.addr, "alice").await;
    let (t1, _) = login_ok(n.addr, "alice").await;
    let (t2, _) = login_ok(n.addr, "alice").await;
    let (t3, _) = login_ok(n.addr, "alice").await;
    let mut c1 = Client::connect(n.addr, &t1, "d1").await;
    let mut c2 = Client::connect(n.addr, &t2, "d2").await;
    let mut c3 = Client::connect(n.addr, &t3, "d3").await;
    let r = post(n.addr, "/v1/logout", Some(&t1), "").await;
    assert_eq!(r.status, 200);
    let v = closed_as_unauthorized(&mut c1, Duration::from_secs(10)).await;
    assert!(v["message"].as_str().unwrap().contains("revoked"), "{v}");
    // The other sessions stay connected...
    let pong = c2.request(json!({"type":"ping"})).await;
    assert_eq!(pong["type"], "pong");
    // ...until logout_all.
    let r = post(n.addr, "/v1/logout_all", Some(&t2), "").await;
    assert_eq!(r.status, 200);
    closed_as_unauthorized(&mut c2, Duration::from_secs(10)).await;
    closed_as_unauthorized(&mut c3, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_tokens_live_websocket_is_closed() {
    let n = start_node_with(|c| {
        c.auth.session_check_interval_ms = 200;
        c.auth.token_ttl_secs = 2;
    })
    .await;
    register_ok(n.addr, "alice").await;
    let (t, rt) = login_ok(n.addr, "alice").await;
    let mut c = Client::connect(n.addr, &t, "d1").await;
    let v = closed_as_unauthorized(&mut c, Duration::from_secs(15)).await;
    assert!(v["message"].as_str().unwrap().contains("expired"), "{v}");
    // The client refreshes and reconnects.
    let r = post(
        n.addr,
        "/v1/refresh",
        None,
        &json!({"refresh_token": rt}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    Client::connect(n.addr, r.body["token"].as_str().unwrap(), "d1").await;
}
