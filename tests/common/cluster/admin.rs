//! The HTTP side of the harness, through the client library: accounts (register + login
//! with retries) and the admin endpoints (status, faults, leave) with the admin token.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chatnode_client::http::Session;
use chatnode_client::status::AdminStatus;
use chatnode_client::HttpClient;
use serde_json::{json, Value};

use super::config::REQUEST_TIMEOUT;
use super::process::TestCluster;
use super::view::View;

/// One HTTP/1.1 request that never panics: Err on connect failure or timeout.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let body = (!body.is_empty()).then_some(body);
    HttpClient::new(addr)
        .timeout(timeout)
        .request(method, path, body, bearer)
        .await
        .map(|r| (r.status, r.body))
        .map_err(|e| format!("{method} {path} on {addr}: {e}"))
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

/// `GET /admin/status` of `addr`, typed.
pub async fn admin_status(addr: SocketAddr, admin_token: &str) -> Result<AdminStatus, String> {
    HttpClient::new(addr)
        .timeout(Duration::from_secs(5))
        .admin_token(Some(admin_token.to_string()))
        .admin_status()
        .await
        .map_err(|e| format!("GET /admin/status on {addr}: {e}"))
}

/// Registers and logs in over HTTP with retries (a node may briefly answer 503); returns
/// (user_id, token).
pub async fn register_user(addr: SocketAddr, name: &str) -> (String, String) {
    let http = HttpClient::new(addr).timeout(REQUEST_TIMEOUT);
    let password = "password123";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut registered = false;
    loop {
        if !registered {
            match http
                .register(name, password, None)
                .await
                .map(|r| (r.status, r.body))
            {
                Ok((201, _)) => registered = true,
                // A retried registration whose first attempt did commit.
                Ok((409, _)) => registered = true,
                Ok((s, b)) if s != 503 && s != 500 => {
                    panic!("register {name} on {addr}: {s} {b}")
                }
                other => {
                    assert!(Instant::now() < deadline, "register {name}: {other:?}");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
            }
        }
        match http.login(name, password).await {
            Ok(r) if r.status == 200 => {
                let s: Session = r.json().unwrap();
                return (s.user_id, s.token);
            }
            other => {
                assert!(Instant::now() < deadline, "login {name}: {other:?}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

impl TestCluster {
    /// `/admin/status` from the first running node that answers.
    pub async fn view(&mut self) -> Option<View> {
        let running = self.running();
        for p in &self.nodes {
            if !running.contains(&p.id) {
                continue;
            }
            if let Ok(v) = admin_status(p.client, &self.admin_token).await {
                return Some(View::new(v));
            }
        }
        None
    }

    /// The admin client of node `id`.
    pub fn admin(&self, id: u64, timeout: Duration) -> HttpClient {
        HttpClient::new(self.addr_of(id))
            .timeout(timeout)
            .admin_token(Some(self.admin_token.clone()))
    }

    /// `/admin/status` of one node.
    pub async fn view_of(&self, id: u64) -> Result<View, String> {
        admin_status(self.addr_of(id), &self.admin_token)
            .await
            .map(View::new)
    }

    /// `POST /admin/faults` on node `on`.
    pub async fn fault(&self, on: u64, body: Value) {
        let r = self
            .admin(on, Duration::from_secs(5))
            .admin_faults(&body)
            .await
            .map(|r| (r.status, r.body));
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
        self.admin(id, Duration::from_secs(10))
            .admin_leave()
            .await
            .map(|r| (r.status, r.body))
            .unwrap_or_else(|e| panic!("leave node {id}: {e}"))
    }
}
