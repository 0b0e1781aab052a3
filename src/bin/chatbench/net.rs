//! Networking with no extra dependencies: endpoint parsing, a hand-rolled HTTP/1.1 client for
//! the few plain requests (register, login, metrics), and WebSocket connect + request/reply.

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Argon2 on a busy server can take seconds per request; setup waits this long per call.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// `/metrics` can be large, but a bound keeps a misbehaving server from eating our memory.
const MAX_HTTP_RESPONSE: u64 = 16 << 20;

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

pub async fn connect_tcp(authority: &str) -> Result<TcpStream> {
    match TcpStream::connect(authority).await {
        Ok(s) => {
            // Small request/reply frames: Nagle would add up to 40 ms to measured latency.
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Err(e) if is_fd_exhaustion(&e) => Err(anyhow!(
            "connect to {authority}: {e}: out of file descriptors; \
             raise the limit first, e.g. `ulimit -n 65536`"
        )),
        Err(e) => Err(anyhow!(e).context(format!("connect to {authority}"))),
    }
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// One HTTP/1.1 request with `Connection: close`, so the response ends at EOF.
pub async fn http(
    ep: &Endpoint,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<HttpResponse> {
    let exchange = async {
        let mut stream = connect_tcp(&ep.authority).await?;
        let body = body.unwrap_or("");
        let content_type = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/json\r\n"
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{content_type}Content-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            ep.authority,
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.take(MAX_HTTP_RESPONSE).read_to_end(&mut raw).await?;
        parse_http_response(&raw)
    };
    timeout(HTTP_TIMEOUT, exchange)
        .await
        .with_context(|| format!("{method} {path}: no response within {HTTP_TIMEOUT:?}"))?
        .with_context(|| format!("{method} http://{}{path}", ep.authority))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub fn parse_http_response(raw: &[u8]) -> Result<HttpResponse> {
    let head_end = find(raw, b"\r\n\r\n").ok_or_else(|| anyhow!("truncated HTTP response"))?;
    let head = std::str::from_utf8(&raw[..head_end]).context("non-UTF-8 HTTP headers")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP status line"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = &raw[head_end + 4..];
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = find(rest, b"\r\n").ok_or_else(|| anyhow!("truncated chunk header"))?;
        let size_field = std::str::from_utf8(&rest[..eol])?;
        let size_hex = size_field.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).context("bad chunk size")?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
    }
}

/// The read buffer of each WebSocket. tungstenite zeroes the free part of its read buffer on
/// every read: with its default of 128 KiB that memset was a third of chatbench's CPU, taken
/// from the server it shares the cores with.
const WS_READ_BUFFER_BYTES: usize = 4 * 1024;

pub async fn connect_ws(ep: &Endpoint) -> Result<Ws> {
    let tcp = connect_tcp(&ep.authority).await?;
    let url = format!("ws://{}{}", ep.authority, ep.ws_path);
    let config = WebSocketConfig::default().read_buffer_size(WS_READ_BUFFER_BYTES);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(config))
        .await
        .with_context(|| format!("WebSocket handshake with {url}"))?;
    Ok(ws)
}

/// Connects and authenticates one device; fails unless the server answers `auth_ok`.
pub async fn connect_authed(ep: &Endpoint, token: &str, device_id: &str) -> Result<Ws> {
    let mut ws = connect_ws(ep).await?;
    let frame = json!({"type": "auth", "id": 0, "token": token, "device_id": device_id});
    // Match on the type too, in case the server does not echo the id on `auth_ok`.
    let reply = request_matching(&mut ws, &frame, |v| {
        v["id"] == 0 || (v["type"] == "auth_ok") || (v["type"] == "error" && v["id"].is_null())
    })
    .await?;
    if reply["type"] != "auth_ok" {
        bail!("auth of device {device_id} failed: {reply}");
    }
    Ok(ws)
}

/// Sends `frame` (which carries `"id": id`) and returns the reply with that id,
/// skipping unrelated pushes. Retryable errors are retried a few times after their delay.
pub async fn request(ws: &mut Ws, id: u64, frame: &Value) -> Result<Value> {
    for _attempt in 0..5 {
        let reply = request_matching(ws, frame, |v| v["id"] == id).await?;
        if reply["type"] == "error" && reply["retryable"] == true {
            let delay = reply["retry_after_ms"].as_u64().unwrap_or(200).min(10_000);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            continue;
        }
        return Ok(reply);
    }
    bail!("request kept failing with retryable errors: {frame}")
}

async fn request_matching(
    ws: &mut Ws,
    frame: &Value,
    is_reply: impl Fn(&Value) -> bool,
) -> Result<Value> {
    ws.send(Message::text(frame.to_string())).await?;
    let wait = async {
        while let Some(msg) = ws.next().await {
            match msg? {
                Message::Text(text) => {
                    let v: Value = serde_json::from_str(text.as_str())
                        .with_context(|| format!("unparsable frame from server: {text}"))?;
                    if is_reply(&v) {
                        return Ok(v);
                    }
                }
                Message::Close(c) => bail!("server closed the WebSocket: {c:?}"),
                _ => {}
            }
        }
        bail!("server closed the connection")
    };
    timeout(REQUEST_TIMEOUT, wait)
        .await
        .with_context(|| format!("no reply within {REQUEST_TIMEOUT:?} to {frame}"))?
}

#[cfg(test)]
#[path = "net/tests.rs"]
mod tests;
