//! The harness's plain requests (register, login, /ready, /admin/*) through the client
//! library's HTTP client; the admin token of the cluster is added to every `/admin/*`
//! request. The harness only talks to the nodes over the network.

use anyhow::{Context, Result};
use chatnode_client::status::AdminStatus;
use chatnode_client::HttpClient;
use std::time::Duration;

const MAX_RESPONSE: usize = 64 << 20;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {:.200}", self.body))
    }

    /// The body as the typed `/admin/status` answer.
    pub fn status(&self) -> Result<AdminStatus> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("not an /admin/status answer: {:.200}", self.body))
    }
}

/// The cluster's admin token (`<data-dir>/admin-token` of the first node), sent as the bearer
/// token of every `/admin/*` request that names none; None for builds without one.
static ADMIN_TOKEN: std::sync::RwLock<Option<String>> = std::sync::RwLock::new(None);

pub fn set_admin_token(token: Option<String>) {
    if let Ok(mut t) = ADMIN_TOKEN.write() {
        *t = token;
    }
}

fn client(addr: &str, limit: Duration) -> HttpClient {
    let admin = ADMIN_TOKEN.read().ok().and_then(|t| t.clone());
    HttpClient::new(addr)
        .timeout(limit)
        .body_limit(MAX_RESPONSE)
        .admin_token(admin)
}

pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    bearer: Option<&str>,
    limit: Duration,
) -> Result<Response> {
    let r = client(addr, limit)
        .request(method, path, body, bearer)
        .await?;
    Ok(Response {
        status: r.status,
        body: r.body,
    })
}

pub async fn get(addr: &str, path: &str, limit: Duration) -> Result<Response> {
    request(addr, "GET", path, None, None, limit).await
}
