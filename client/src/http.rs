//! HTTP/1.1 over hyper's client: one connection per request (`Connection: close`), a bound on
//! the time and on the response body, the bearer token of the admin endpoints.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::status::AdminStatus;

/// Time for one whole exchange (connect, request, response body) unless set otherwise.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Most bytes of a response body read (`/metrics` and `/admin/checksum` can be large).
pub const RESPONSE_BYTES_MAX: usize = 64 << 20;

/// A response: status code, headers (names lowercase) and the body as text.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_str(&self.body)?)
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Self when the status is `want`, else [`Error::Status`] naming `what`.
    pub fn expect(self, want: u16, what: &str) -> Result<Response> {
        if self.status == want {
            Ok(self)
        } else {
            Err(Error::Status {
                what: what.to_string(),
                status: self.status,
                body: self.body,
            })
        }
    }
}

/// What `/v1/login` and `/v1/refresh` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub user_id: String,
    pub token: String,
    #[serde(default)]
    pub expires_at: u64,
    #[serde(default)]
    pub session_id: String,
    #[serde(default)]
    pub refresh_token: String,
    #[serde(default)]
    pub refresh_expires_at: u64,
}

/// One request: method, path (with query), optional JSON body and bearer token.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: Option<&'a str>,
    pub bearer: Option<&'a str>,
}

impl<'a> Request<'a> {
    pub fn new(method: &'a str, path: &'a str) -> Self {
        Request {
            method,
            path,
            body: None,
            bearer: None,
        }
    }

    pub fn body(mut self, body: &'a str) -> Self {
        self.body = Some(body);
        self
    }

    pub fn bearer(mut self, token: Option<&'a str>) -> Self {
        self.bearer = token;
        self
    }
}

/// A client of one node's HTTP port (`host:port`). Cheap to clone; holds no connection.
#[derive(Debug, Clone)]
pub struct HttpClient {
    addr: String,
    timeout: Duration,
    body_bytes_max: usize,
    nodelay: bool,
    admin_token: Option<String>,
}

impl HttpClient {
    pub fn new(addr: impl ToString) -> Self {
        HttpClient {
            addr: addr.to_string(),
            timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
            body_bytes_max: RESPONSE_BYTES_MAX,
            nodelay: true,
            admin_token: None,
        }
    }

    /// The limit for one whole exchange.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = limit;
        self
    }

    /// Most bytes of a response body; a longer one is [`Error::BodyTooLarge`].
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_bytes_max = bytes;
        self
    }

    /// The cluster's admin token, sent as the bearer of every `/admin/*` request that names
    /// no other.
    pub fn admin_token(mut self, token: Option<String>) -> Self {
        self.admin_token = token;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `req` on a new TCP connection.
    pub async fn send(&self, req: Request<'_>) -> Result<Response> {
        let what = format!("{} http://{}{}", req.method, self.addr, req.path);
        let admin = self
            .admin_token
            .as_deref()
            .filter(|_| req.path.starts_with("/admin/"));
        let req = req.bearer(req.bearer.or(admin));
        let exchange = async {
            let tcp = TcpStream::connect(&self.addr)
                .await
                .map_err(|source| Error::Connect {
                    addr: self.addr.clone(),
                    source,
                })?;
            if self.nodelay {
                // Small request/reply exchanges: Nagle would only add latency.
                let _ = tcp.set_nodelay(true);
            }
            exchange(tcp, &self.addr, req, self.body_bytes_max).await
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Error::Timeout {
                what,
                limit: self.timeout,
            })?
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        bearer: Option<&str>,
    ) -> Result<Response> {
        let mut req = Request::new(method, path).bearer(bearer);
        req.body = body;
        self.send(req).await
    }

    pub async fn get(&self, path: &str) -> Result<Response> {
        self.send(Request::new("GET", path)).await
    }

    pub async fn post(&self, path: &str, body: &str) -> Result<Response> {
        self.send(Request::new("POST", path).body(body)).await
    }

    /// `POST /v1/register` (with an invite when the server requires one); the raw answer
    /// (201 created, 409 taken, ...).
    pub async fn register(
        &self,
        username: &str,
        password: &str,
        invite: Option<&str>,
    ) -> Result<Response> {
        let mut body = json!({"username": username, "password": password});
        if let Some(i) = invite {
            body["invite"] = json!(i);
        }
        self.post("/v1/register", &body.to_string()).await
    }

    /// `POST /v1/login`; the raw answer (parse a 200 with `json::<Session>()`).
    pub async fn login(&self, username: &str, password: &str) -> Result<Response> {
        let body = json!({"username": username, "password": password});
        self.post("/v1/login", &body.to_string()).await
    }

    /// `POST /v1/refresh`; the raw answer (a 200 is a [`Session`]).
    pub async fn refresh(&self, refresh_token: &str) -> Result<Response> {
        let body = json!({ "refresh_token": refresh_token });
        self.post("/v1/refresh", &body.to_string()).await
    }

    /// Whether `GET /ready` answers 200.
    pub async fn ready(&self) -> bool {
        matches!(self.get("/ready").await, Ok(r) if r.status == 200)
    }

    /// `GET /admin/status`, typed.
    pub async fn admin_status(&self) -> Result<AdminStatus> {
        self.get("/admin/status")
            .await?
            .expect(200, "GET /admin/status")?
            .json()
    }

    /// `GET /admin/checksum` as JSON (a 503 before the first background scan is an error).
    pub async fn admin_checksum(&self) -> Result<serde_json::Value> {
        self.get("/admin/checksum")
            .await?
            .expect(200, "GET /admin/checksum")?
            .json()
    }

    /// `POST /admin/leave`; the raw answer (202 when the node starts draining).
    pub async fn admin_leave(&self) -> Result<Response> {
        self.send(Request::new("POST", "/admin/leave")).await
    }

    /// `POST /admin/invites?uses=..[&ttl_secs=..]`; the raw answer (201 with the invite).
    pub async fn admin_invite(&self, uses: u32, ttl_secs: Option<u64>) -> Result<Response> {
        let mut path = format!("/admin/invites?uses={uses}");
        if let Some(t) = ttl_secs {
            path.push_str(&format!("&ttl_secs={t}"));
        }
        self.send(Request::new("POST", &path)).await
    }

    /// `POST /admin/rotate-join-token`; the raw answer (200 with the new token).
    pub async fn admin_rotate_join_token(&self) -> Result<Response> {
        self.send(Request::new("POST", "/admin/rotate-join-token"))
            .await
    }

    /// `POST /admin/faults` with `body` (test builds only); the raw answer.
    pub async fn admin_faults(&self, body: &serde_json::Value) -> Result<Response> {
        self.post("/admin/faults", &body.to_string()).await
    }
}

/// One request and its response over an already connected stream (plain TCP from a chosen
/// source address, TLS, ...). `host` is sent as the `Host` header. No timeout: wrap it.
pub async fn exchange<S>(
    io: S,
    host: &str,
    req: Request<'_>,
    body_bytes_max: usize,
) -> Result<Response>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // The connection task ends when the response is read (Connection: close) or dropped.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let body = req.body.unwrap_or("");
    let mut builder = hyper::Request::builder()
        .method(req.method)
        .uri(req.path)
        .header(HOST, host)
        .header(CONNECTION, "close");
    if !body.is_empty() {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    if let Some(t) = req.bearer {
        let value = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|e| Error::BadRequest(e.to_string()))?;
        builder = builder.header(AUTHORIZATION, value);
    }
    let request = builder
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = Limited::new(response.into_body(), body_bytes_max)
        .collect()
        .await
        .map_err(|e| match e.downcast::<hyper::Error>() {
            Ok(e) => Error::Http(*e),
            Err(_) => Error::BodyTooLarge {
                limit: body_bytes_max,
            },
        })?
        .to_bytes();
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[cfg(test)]
#[path = "http/tests.rs"]
mod tests;
