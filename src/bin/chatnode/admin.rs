//! `chatnode status`, `leave`, `invite` and `rotate-join-token`: small HTTP clients of a
//! node's admin endpoints, authenticated with the cluster's admin token.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use chatnode_client::{GroupState, HttpClient, Response};
use serde_json::Value;

/// Most bytes of an admin response read.
const RESPONSE_BYTES_MAX: usize = 16 << 20;
const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// The client of `addr`'s admin endpoints.
fn client(addr: &str, token: &str) -> HttpClient {
    HttpClient::new(addr)
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .body_limit(RESPONSE_BYTES_MAX)
        .admin_token(Some(token.to_string()))
}

/// The answer when its status is `want`, else an error naming the node and the answer.
fn expect(addr: &str, r: Response, want: u16) -> anyhow::Result<Response> {
    if r.status != want {
        bail!("{addr} answered {}: {}", r.status, r.body);
    }
    Ok(r)
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
    let c = client(addr, token);
    let r = expect(addr, c.get("/admin/status").await?, 200)?;
    if raw {
        let v: Value = r.json()?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let v: chatnode_client::AdminStatus = r.json()?;
    println!("cluster {}", v.cluster_id);
    println!("{:<6} {:<22} {:<22} state", "node", "client", "peer");
    for n in &v.nodes {
        println!(
            "{:<6} {:<22} {:<22} {}",
            n.id, n.client_addr, n.peer_addr, n.state
        );
    }
    println!();
    println!(
        "{:<6} {:<8} {:<14} {:<10} {:<10} {:<10} lag (node:entries)",
        "group", "leader", "voters", "learners", "last_log", "applied"
    );
    for s in &v.node_statuses {
        for g in s.groups().iter().filter(|g| g.state == GroupState::Leader) {
            let lag: Vec<String> = g.lag().map(|(node, n)| format!("{node}:{n}")).collect();
            let leader = g.leader.map_or("null".to_string(), |l| l.to_string());
            println!(
                "{:<6} {:<8} {:<14} {:<10} {:<10} {:<10} {}",
                g.group,
                leader,
                serde_json::to_string(&g.voters)?,
                serde_json::to_string(&g.learners)?,
                g.last_log_index,
                g.applied,
                lag.join(" ")
            );
        }
    }
    for s in v.node_statuses.iter().filter(|s| !s.reachable) {
        // Quoted, as this line always printed the JSON string.
        let error = serde_json::to_string(&s.error.as_deref().unwrap_or_default())?;
        println!("node {} unreachable: {error}", s.node_id);
    }
    Ok(())
}

pub async fn leave(addr: &str, token: &str) -> anyhow::Result<()> {
    expect(addr, client(addr, token).admin_leave().await?, 202)?;
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
    let r = client(addr, token).admin_invite(uses, ttl_secs).await?;
    let v: Value = expect(addr, r, 201)?.json()?;
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
    let r = client(addr, token).admin_rotate_join_token().await?;
    let v: Value = expect(addr, r, 200)?.json()?;
    let new = v["join_token"]
        .as_str()
        .context("no join_token in the answer")?;
    eprintln!("the old join token admits nobody from now on; new joiners need:");
    println!("{new}");
    Ok(())
}
