//! `chatnode status`, `leave`, `invite` and `rotate-join-token`: small HTTP clients of a
//! node's admin endpoints, authenticated with the cluster's admin token.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most bytes of an admin response read.
const RESPONSE_BYTES_MAX: usize = 16 << 20;
const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// One HTTP/1.1 request (Connection: close); returns the status code and body.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let auth = bearer
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        (&mut s)
            .take(RESPONSE_BYTES_MAX as u64)
            .read_to_end(&mut buf)
            .await?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("malformed HTTP response")?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok::<_, anyhow::Error>((code, body))
    };
    tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), fut)
        .await
        .context("request timed out")?
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Environment variable with the admin token (when no `--admin-token` is given).
pub const ADMIN_TOKEN_ENV: &str = "CHATNODE_ADMIN_TOKEN";

/// The admin token: `flag`, else `$CHATNODE_ADMIN_TOKEN`, else `<data_dir>/admin-token`.
pub fn admin_token(flag: Option<&str>, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(t) = flag {
        return Ok(t.trim().to_string());
    }
    if let Ok(t) = std::env::var(ADMIN_TOKEN_ENV) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let path = data_dir.join(chatnode::cluster::secrets::ADMIN_TOKEN_FILE);
    let t = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (or pass --admin-token, or set {ADMIN_TOKEN_ENV})",
            path.display()
        )
    })?;
    Ok(t.trim().to_string())
}

pub async fn status(addr: &str, raw: bool, token: &str) -> anyhow::Result<()> {
    let (code, body) = http(addr, "GET", "/admin/status", Some(token)).await?;
    if code != 200 {
        bail!("{addr} answered {code}: {body}");
    }
    let v: Value = serde_json::from_str(&body)?;
    if raw {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("cluster {}", v["cluster_id"].as_str().unwrap_or("?"));
    println!("{:<6} {:<22} {:<22} {}", "node", "client", "peer", "state");
    for n in v["nodes"].as_array().into_iter().flatten() {
        println!(
            "{:<6} {:<22} {:<22} {}",
            n["id"],
            n["client_addr"].as_str().unwrap_or(""),
            n["peer_addr"].as_str().unwrap_or(""),
            n["state"].as_str().unwrap_or("")
        );
    }
    println!();
    println!(
        "{:<6} {:<8} {:<14} {:<10} {:<10} {:<10} {}",
        "group", "leader", "voters", "learners", "last_log", "applied", "lag (node:entries)"
    );
    for s in v["node_statuses"].as_array().into_iter().flatten() {
        for g in s["groups"].as_array().into_iter().flatten() {
            if g["state"] != "leader" {
                continue;
            }
            let last = g["last_log_index"].as_u64().unwrap_or(0);
            let lag: Vec<String> = g["matched"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| {
                    let node = m.get(0)?.as_u64()?;
                    let idx = m.get(1)?.as_u64()?;
                    Some(format!("{node}:{}", last.saturating_sub(idx)))
                })
                .collect();
            println!(
                "{:<6} {:<8} {:<14} {:<10} {:<10} {:<10} {}",
                g["group"],
                g["leader"],
                g["voters"].to_string(),
                g["learners"].to_string(),
                last,
                g["applied"],
                lag.join(" ")
            );
        }
    }
    for s in v["node_statuses"].as_array().into_iter().flatten() {
        if s["reachable"] == false {
            println!("node {} unreachable: {}", s["node_id"], s["error"]);
        }
    }
    Ok(())
}

pub async fn leave(addr: &str, token: &str) -> anyhow::Result<()> {
    let (code, body) = http(addr, "POST", "/admin/leave", Some(token)).await?;
    if code != 202 {
        bail!("{addr} answered {code}: {body}");
    }
    println!("{addr} is leaving: its replicas move to other nodes, then it stops");
    Ok(())
}

/// `chatnode invite`: `POST /admin/invites` with the admin token.
pub async fn invite(
    addr: &str,
    token: &str,
    uses: u32,
    ttl_secs: Option<u64>,
) -> anyhow::Result<()> {
    let mut path = format!("/admin/invites?uses={uses}");
    if let Some(t) = ttl_secs {
        path.push_str(&format!("&ttl_secs={t}"));
    }
    let (code, body) = http(addr, "POST", &path, Some(token)).await?;
    if code != 201 {
        bail!("{addr} answered {code}: {body}");
    }
    let v: Value = serde_json::from_str(&body)?;
    let invite = v["invite"].as_str().context("no invite in the answer")?;
    println!("{invite}");
    eprintln!(
        "invite for {} account(s), valid until {} (ms since the epoch); register with \
         {{\"username\": ..., \"password\": ..., \"invite\": \"{invite}\"}}",
        v["uses"], v["expires_at"]
    );
    Ok(())
}

pub async fn rotate_join_token(addr: &str, token: &str) -> anyhow::Result<()> {
    let (code, body) = http(addr, "POST", "/admin/rotate-join-token", Some(token)).await?;
    if code != 200 {
        bail!("{addr} answered {code}: {body}");
    }
    let v: Value = serde_json::from_str(&body)?;
    let new = v["join_token"]
        .as_str()
        .context("no join_token in the answer")?;
    eprintln!("the old join token admits nobody from now on; new joiners need:");
    println!("{new}");
    Ok(())
}
