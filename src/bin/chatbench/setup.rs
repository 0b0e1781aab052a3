//! Setup before any measurement: users, authenticated sockets, conversations.

use crate::net::{connect_authed, http, request, Endpoint};
use anyhow::{anyhow, bail, Context, Result};
use chatnode_client::WsClient;
use futures_util::{stream, StreamExt, TryStreamExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

const PASSWORD: &str = "chatbench-password-1";
/// Connects are cheap for the server but a burst of thousands overflows its accept backlog.
const CONNECT_CONCURRENCY: usize = 64;
const CREATE_CONCURRENCY: usize = 64;
/// Groups hold at most 200 members (PROTOCOL.md, "Creating").
pub const MAX_GROUP_OTHERS: usize = 199;

pub struct User {
    pub user_id: String,
    pub token: String,
}

/// A "done/total" line on stderr every second while a setup step runs.
pub struct Progress {
    label: &'static str,
    total: usize,
    done: Arc<AtomicUsize>,
    started: Instant,
    ticker: JoinHandle<()>,
}

impl Progress {
    pub fn start(label: &'static str, total: usize) -> Self {
        let done = Arc::new(AtomicUsize::new(0));
        let seen = done.clone();
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("setup: {label} {}/{total}", seen.load(Ordering::Relaxed));
            }
        });
        Progress {
            label,
            total,
            done,
            started: Instant::now(),
            ticker,
        }
    }

    pub fn counter(&self) -> Arc<AtomicUsize> {
        self.done.clone()
    }

    pub fn finish(self) {
        self.ticker.abort();
        eprintln!(
            "setup: {} {}/{} done in {:.1}s",
            self.label,
            self.done.load(Ordering::Relaxed),
            self.total,
            self.started.elapsed().as_secs_f64()
        );
    }
}

fn str_field(v: &Value, field: &str) -> Result<String> {
    v[field]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("reply without \"{field}\": {v}"))
}

/// POSTs `body`, retrying while the server says "later" (429/503), e.g. under argon2 load.
async fn post_retrying(ep: &Endpoint, path: &str, body: &str) -> Result<(u16, String)> {
    let mut delay = Duration::from_millis(200);
    for _ in 0..6 {
        let r = http(ep, "POST", path, Some(body)).await?;
        if r.status != 429 && r.status != 503 {
            return Ok((r.status, r.body));
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    bail!("POST {path}: server kept answering 429/503")
}

/// Registers `username` (an existing one is fine) and logs it in.
async fn register_and_login(ep: &Endpoint, username: &str) -> Result<User> {
    let body = json!({"username": username, "password": PASSWORD}).to_string();
    let (status, reply) = post_retrying(ep, "/v1/register", &body).await?;
    if !matches!(status, 200 | 201 | 409) {
        bail!("register {username}: HTTP {status}: {}", reply.trim());
    }
    let (status, reply) = post_retrying(ep, "/v1/login", &body).await?;
    if status != 200 {
        bail!("login {username}: HTTP {status}: {}", reply.trim());
    }
    let v: Value = serde_json::from_str(&reply).context("login reply is not JSON")?;
    Ok(User {
        user_id: str_field(&v, "user_id")?,
        token: str_field(&v, "token")?,
    })
}

/// Users `bench-<run>-<i>` for i in 0..count, spread over the endpoints, `concurrency` at a
/// time because registration runs argon2 on the server.
pub async fn users(
    eps: &[Endpoint],
    run: &str,
    count: usize,
    concurrency: usize,
) -> Result<Vec<User>> {
    let progress = Progress::start("users registered+logged in", count);
    let done = progress.counter();
    let users = stream::iter(0..count)
        .map(|i| {
            let done = done.clone();
            async move {
                let user =
                    register_and_login(&eps[i % eps.len()], &format!("bench-{run}-{i}")).await?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok::<_, anyhow::Error>(user)
            }
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await?;
    progress.finish();
    Ok(users)
}

/// Opens `count` authenticated sockets; socket k belongs to `owner(k)` = (user index, device id)
/// and goes to endpoint k mod the number of endpoints.
pub async fn connect_all(
    eps: &[Endpoint],
    users: &[User],
    count: usize,
    owner: impl Fn(usize) -> (usize, String),
) -> Result<Vec<WsClient>> {
    let progress = Progress::start("sockets authenticated", count);
    let done = progress.counter();
    let sockets = stream::iter(0..count)
        .map(|k| {
            let (user, device) = owner(k);
            let done = done.clone();
            async move {
                let ws = connect_authed(&eps[k % eps.len()], &users[user].token, &device)
                    .await
                    .with_context(|| format!("socket {k}"))?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok::<_, anyhow::Error>(ws)
            }
        })
        .buffered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    progress.finish();
    Ok(sockets)
}

/// The other members of conversation `c`: every sender that sends to it (i mod
/// conversations == c) plus the next sender, so each message is pushed to someone.
pub fn group_members(c: usize, senders: usize, conversations: usize) -> Vec<usize> {
    let mut members: Vec<usize> = (c..senders).step_by(conversations).collect();
    members.push((c + 1) % senders);
    members.sort_unstable();
    members.dedup();
    members.retain(|&m| m != c);
    members
}

/// Creates the group conversations; conversation c is created by sender c on its own socket.
pub async fn create_conversations(
    sockets: &mut [WsClient],
    users: &[User],
    conversations: usize,
) -> Result<Vec<String>> {
    let senders = users.len();
    let progress = Progress::start("conversations created", conversations);
    let done = progress.counter();
    let ids = stream::iter(sockets.iter_mut().take(conversations).enumerate())
        .map(|(c, ws)| {
            let done = done.clone();
            async move {
                let members: Vec<&str> = group_members(c, senders, conversations)
                    .into_iter()
                    .map(|m| users[m].user_id.as_str())
                    .collect();
                let frame = json!({
                    "type": "create_conversation", "kind": "group",
                    "members": members, "title": format!("chatbench {c}"),
                });
                let reply = request(ws, &frame).await?;
                let id = reply["conversation"]["conversation_id"]
                    .as_str()
                    .ok_or_else(|| anyhow!("create_conversation {c} failed: {reply}"))?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok::<_, anyhow::Error>(id.to_string())
            }
        })
        .buffered(CREATE_CONCURRENCY)
        .try_collect()
        .await?;
    progress.finish();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::group_members;

    #[test]
    fn every_sender_is_a_member_of_its_conversation() {
        assert_eq!(group_members(0, 4, 4), vec![1]);
        assert_eq!(group_members(3, 4, 4), vec![0]);
        assert_eq!(group_members(0, 4, 2), vec![1, 2]);
        assert_eq!(group_members(1, 5, 2), vec![2, 3]);
        for (s, c) in [(10, 3), (7, 7), (2, 1)] {
            for i in 0..s {
                let conv = i % c;
                assert!(conv == i || group_members(conv, s, c).contains(&i));
            }
        }
    }
}
