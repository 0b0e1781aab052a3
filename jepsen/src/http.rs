//! A tiny HTTP/1.1 client (`Connection: close`, the body ends at EOF or is chunked) for the
//! handful of plain requests the harness makes: register, login, /ready, /admin/*.

use anyhow::{anyhow, bail, Context, Result};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const MAX_RESPONSE: u64 = 64 << 20;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {:.200}", self.body))
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

fn admin_token_for(path: &str) -> Option<String> {
    if !path.starts_with("/admin/") {
        return None;
    }
    ADMIN_TOKEN.read().ok().and_then(|t| t.clone())
}

pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    bearer: Option<&str>,
    limit: Duration,
) -> Result<Response> {
    let admin = admin_token_for(path);
    let bearer = bearer.or(admin.as_deref());
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let body = body.unwrap_or("");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(token) = bearer {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        head.push_str(body);
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut raw).await?;
        parse(&raw)
    };
    timeout(limit, exchange)
        .await
        .map_err(|_| anyhow!("{method} http://{addr}{path}: no answer within {limit:?}"))?
        .with_context(|| format!("{method} http://{addr}{path}"))
}

pub async fn get(addr: &str, path: &str, limit: Duration) -> Result<Response> {
    request(addr, "GET", path, None, None, limit).await
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse(raw: &[u8]) -> Result<Response> {
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
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = find(rest, b"\r\n").ok_or_else(|| anyhow!("truncated chunk header"))?;
        let size = std::str::from_utf8(&rest[..eol])?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| anyhow!("bad chunk size {size:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let r = parse(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_str()), (201, "{}"));
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "abcde"));
    }
}
