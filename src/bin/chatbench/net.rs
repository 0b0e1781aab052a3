//! Networking through the client library (`chatnode-client`): endpoint parsing, the few
//! plain HTTP requests (register, login, metrics), and WebSocket connect + request/reply.

use anyhow::{anyhow, bail, Result};
use chatnode_client::ws::WsOptions;
use chatnode_client::{HttpClient, Response, WsClient};
use serde_json::Value;
use std::io;
use std::time::Duration;

/// A WebSocket over plain TCP: what the load's sender and reader tasks split.
pub type Ws = chatnode_client::ws::Ws;

/// Argon2 on a busy server can take seconds per request; setup waits this long per call.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// `/metrics` can be large, but a bound keeps a misbehaving server from eating our memory.
const MAX_HTTP_RESPONSE: usize = 16 << 20;

/// One server node: `host:port` plus the WebSocket path.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub authority: String,
    pub ws_path: String,
}

impl Endpoint {
    /// Accepts `ws://host[:port][/path]` (or `http://`); the path defaults to `/v1/ws`.
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| anyhow!("--url {url}: only ws:// (or http://) URLs are supported"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() {
            bail!("--url {url}: missing host");
        }
        // A port is present if there is a ':' after the (possibly bracketed IPv6) host.
        let has_port = authority.rsplit_once(':').is_some() && !authority.ends_with(']');
        let authority = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let ws_path = if path.is_empty() || path == "/" {
            "/v1/ws".to_string()
        } else {
            path.to_string()
        };
        Ok(Endpoint { authority, ws_path })
    }
}

/// EMFILE/ENFILE: the one connect failure with a fix the user must apply before running.
fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23) | Some(24))
}

/// The client's error, with the fix spelled out when we ran out of file descriptors.
fn explain(e: chatnode_client::Error) -> anyhow::Error {
    match &e {
        chatnode_client::Error::Connect { addr, source } if is_fd_exhaustion(source) => anyhow!(
            "connect to {addr}: {source}: out of file descriptors; \
             raise the limit first, e.g. `ulimit -n 65536`"
        ),
        _ => anyhow!(e),
    }
}

/// One HTTP/1.1 request (a new connection, TCP_NODELAY, `Connection: close`).
pub async fn http(ep: &Endpoint, method: &str, path: &str, body: Option<&str>) -> Result<Response> {
    HttpClient::new(&ep.authority)
        .timeout(HTTP_TIMEOUT)
        .body_limit(MAX_HTTP_RESPONSE)
        .request(method, path, body, None)
        .await
        .map_err(explain)
}

/// The read buffer of each WebSocket. tungstenite zeroes the free part of its read buffer on
/// every read: with its default of 128 KiB that memset was a third of chatbench's CPU, taken
/// from the server it shares the cores with.
const WS_READ_BUFFER_BYTES: usize = 4 * 1024;

/// How chatbench's sockets are opened: the small read buffer above and TCP_NODELAY (small
/// request/reply frames: Nagle would add up to 40 ms to measured latency).
fn ws_options(ep: &Endpoint) -> WsOptions {
    WsOptions {
        path: ep.ws_path.clone(),
        read_buffer_bytes: Some(WS_READ_BUFFER_BYTES),
        nodelay: true,
        recv_buffer_bytes: None,
        connect_timeout: REQUEST_TIMEOUT,
    }
}

/// Connects and authenticates one device; fails unless the server answers `auth_ok`.
pub async fn connect_authed(ep: &Endpoint, token: &str, device_id: &str) -> Result<WsClient> {
    let mut ws = WsClient::connect(&ep.authority, &ws_options(ep))
        .await
        .map_err(explain)?;
    // Setup does not look at pushes; the load reads the raw socket.
    ws.keep_pushes(0);
    ws.authenticate(token, device_id, REQUEST_TIMEOUT)
        .await
        .map_err(|e| anyhow!("auth of device {device_id} failed: {e}"))?;
    Ok(ws)
}

/// Sends `frame` with a fresh id and returns the reply with that id, skipping unrelated
/// pushes. Retryable errors are retried a few times after their delay.
pub async fn request(ws: &mut WsClient, frame: &Value) -> Result<Value> {
    for _attempt in 0..5 {
        let reply = ws.request(frame.clone(), REQUEST_TIMEOUT).await?;
        if reply["type"] == "error" && reply["retryable"] == true {
            let delay = reply["retry_after_ms"].as_u64().unwrap_or(200).min(10_000);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            continue;
        }
        return Ok(reply);
    }
    bail!("request kept failing with retryable errors: {frame}")
}

#[cfg(test)]
#[path = "net/tests.rs"]
mod tests;
