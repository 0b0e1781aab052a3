//! A WebSocket client of the `/v1/ws` protocol: connect (with the socket options a load
//! generator needs), authenticate, send frames, await a reply by its request id while pushes
//! are kept aside (up to a bound), receive pushes.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::error::{Error, Result};

/// A WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

/// Time to connect and finish the WebSocket handshake unless set otherwise.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Time to wait for a reply unless the caller says otherwise.
pub const REPLY_TIMEOUT_MS: u64 = 10_000;
/// Pushes kept aside while waiting for replies; the oldest are dropped beyond this.
pub const PUSHES_KEPT_MAX: usize = 100_000;

/// How to open the connection.
#[derive(Debug, Clone)]
pub struct WsOptions {
    /// The WebSocket path.
    pub path: String,
    /// tungstenite's read buffer (its default is 128 KiB). tungstenite zeroes the free part of
    /// it on every read, so a load generator with thousands of sockets wants a small one.
    pub read_buffer_bytes: Option<usize>,
    /// TCP_NODELAY: small request/reply frames, Nagle would add up to 40 ms of latency.
    pub nodelay: bool,
    /// SO_RCVBUF of the socket: a small one makes a client that stops reading stall the
    /// server's writes after a few KiB (for tests of slow consumers).
    pub recv_buffer_bytes: Option<u32>,
    pub connect_timeout: Duration,
}

impl Default for WsOptions {
    fn default() -> Self {
        WsOptions {
            path: "/v1/ws".to_string(),
            read_buffer_bytes: None,
            nodelay: true,
            recv_buffer_bytes: None,
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS),
        }
    }
}

async fn tcp_connect(addr: &str, opts: &WsOptions) -> Result<TcpStream> {
    let io_err = |source| Error::Connect {
        addr: addr.to_string(),
        source,
    };
    let stream = match opts.recv_buffer_bytes {
        None => TcpStream::connect(addr).await.map_err(io_err)?,
        Some(bytes) => {
            let target = tokio::net::lookup_host(addr)
                .await
                .map_err(io_err)?
                .next()
                .ok_or_else(|| io_err(std::io::ErrorKind::NotFound.into()))?;
            let socket = if target.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(io_err)?;
            socket.set_recv_buffer_size(bytes).map_err(io_err)?;
            socket.connect(target).await.map_err(io_err)?
        }
    };
    if opts.nodelay {
        let _ = stream.set_nodelay(true);
    }
    Ok(stream)
}

/// Opens `ws://<addr><opts.path>` (no authentication).
pub async fn connect(addr: &str, opts: &WsOptions) -> Result<Ws> {
    let url = format!("ws://{addr}{}", opts.path);
    let open = async {
        let tcp = tcp_connect(addr, opts).await?;
        let mut config = WebSocketConfig::default();
        if let Some(bytes) = opts.read_buffer_bytes {
            config = config.read_buffer_size(bytes);
        }
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(config)).await?;
        Ok(ws)
    };
    tokio::time::timeout(opts.connect_timeout, open)
        .await
        .map_err(|_| Error::Timeout {
            what: format!("WebSocket connect to {url}"),
            limit: opts.connect_timeout,
        })?
}

/// One connection: requests with fresh ids, replies matched by id, pushes kept aside.
pub struct WsClient<S = TcpStream> {
    pub ws: WebSocketStream<S>,
    /// Frames without the awaited id, oldest first (at most `pushes_max`).
    pub pushes: VecDeque<Value>,
    /// The user this connection authenticated as (empty before `auth_ok`).
    pub user_id: String,
    next_id: u64,
    pushes_max: usize,
    reconnect_is_error: bool,
}

impl WsClient<TcpStream> {
    /// Connects (no authentication yet).
    pub async fn connect(addr: &str, opts: &WsOptions) -> Result<Self> {
        Ok(WsClient::new(connect(addr, opts).await?))
    }

    /// Connects and authenticates `device` with the access token `token`.
    pub async fn connect_authed(
        addr: &str,
        opts: &WsOptions,
        token: &str,
        device: &str,
        limit: Duration,
    ) -> Result<Self> {
        let mut c = WsClient::connect(addr, opts).await?;
        c.authenticate(token, device, limit).await?;
        Ok(c)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsClient<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WsClient {
            ws,
            pushes: VecDeque::new(),
            user_id: String::new(),
            next_id: 1,
            pushes_max: PUSHES_KEPT_MAX,
            reconnect_is_error: false,
        }
    }

    /// Keeps at most `max` pushes aside (0: drop every frame that is not an awaited reply).
    pub fn keep_pushes(&mut self, max: usize) {
        self.pushes_max = max;
        while self.pushes.len() > max {
            self.pushes.pop_front();
        }
    }

    /// Whether a `reconnect` frame (the node drains) ends the wait for a reply with
    /// [`Error::Reconnect`] instead of being kept as a push.
    pub fn reconnect_is_error(&mut self, yes: bool) {
        self.reconnect_is_error = yes;
    }

    pub fn into_inner(self) -> WebSocketStream<S> {
        self.ws
    }

    /// A fresh request id.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends `auth` and waits for `auth_ok` ([`Error::AuthRefused`] with the answer
    /// otherwise); returns the `auth_ok` frame.
    pub async fn authenticate(
        &mut self,
        token: &str,
        device: &str,
        limit: Duration,
    ) -> Result<Value> {
        let frame = json!({"type": "auth", "token": token, "device_id": device});
        let reply = self.request(frame, limit).await?;
        if reply["type"] != "auth_ok" {
            return Err(Error::AuthRefused(reply));
        }
        self.user_id = reply["user_id"].as_str().unwrap_or_default().to_string();
        Ok(reply)
    }

    pub async fn send_text(&mut self, text: String) -> Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    pub async fn send(&mut self, frame: &Value) -> Result<()> {
        self.send_text(frame.to_string()).await
    }

    /// The next JSON frame from the socket: None when `limit` passes first, [`Error::Closed`]
    /// when the server closes.
    pub async fn recv(&mut self, limit: Duration) -> Result<Option<Value>> {
        let next = async {
            loop {
                match self.ws.next().await {
                    None => return Err(Error::Closed),
                    Some(msg) => match msg? {
                        Message::Text(t) => return Ok(serde_json::from_str(t.as_str())?),
                        Message::Close(_) => return Err(Error::Closed),
                        _ => continue,
                    },
                }
            }
        };
        match tokio::time::timeout(limit, next).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Sends `frame` with a fresh `id` and waits up to `limit` for the reply carrying it.
    /// The write counts against `limit` too (a peer that stopped reading fills the socket).
    pub async fn request(&mut self, mut frame: Value, limit: Duration) -> Result<Value> {
        let id = self.next_id();
        frame["id"] = json!(id);
        let deadline = tokio::time::Instant::now() + limit;
        let timeout = || Error::Timeout {
            what: format!("request {id}"),
            limit,
        };
        tokio::time::timeout(limit, self.send(&frame))
            .await
            .map_err(|_| timeout())??;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.reply_to(&json!(id), left).await
    }

    /// The frame whose `id` is `id` (perhaps already kept aside: pipelined replies come in
    /// any order); other frames are kept as pushes.
    pub async fn reply_to(&mut self, id: &Value, limit: Duration) -> Result<Value> {
        if let Some(pos) = self.pushes.iter().position(|p| p.get("id") == Some(id)) {
            if let Some(v) = self.pushes.remove(pos) {
                return Ok(v);
            }
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(v) = self.recv(left).await? else {
                return Err(Error::Timeout {
                    what: format!("reply to request {id}"),
                    limit,
                });
            };
            if v.get("id") == Some(id) {
                return Ok(v);
            }
            if self.reconnect_is_error && v["type"] == "reconnect" {
                return Err(Error::Reconnect(v));
            }
            self.keep(v);
        }
    }

    /// The next push of type `ty` (kept ones first; others are kept); None after `limit`.
    pub async fn push_of(&mut self, ty: &str, limit: Duration) -> Result<Option<Value>> {
        if let Some(pos) = self.pushes.iter().position(|p| p["type"] == ty) {
            return Ok(self.pushes.remove(pos));
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(v) = self.recv(left).await? else {
                return Ok(None);
            };
            if v["type"] == ty {
                return Ok(Some(v));
            }
            self.keep(v);
        }
    }

    /// Reads frames for `wait` and keeps them all (until the socket closes or errs).
    pub async fn drain_for(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Ok(Some(v)) => self.keep(v),
                _ => return,
            }
        }
    }

    /// Removes and returns the kept pushes of type `ty`.
    pub fn take_pushes(&mut self, ty: &str) -> Vec<Value> {
        let (matching, rest): (Vec<Value>, Vec<Value>) =
            self.pushes.drain(..).partition(|p| p["type"] == ty);
        self.pushes = rest.into();
        matching
    }

    fn keep(&mut self, v: Value) {
        if self.pushes_max == 0 {
            return;
        }
        if self.pushes.len() >= self.pushes_max {
            self.pushes.pop_front();
        }
        self.pushes.push_back(v);
    }
}

#[cfg(test)]
#[path = "ws/tests.rs"]
mod tests;
