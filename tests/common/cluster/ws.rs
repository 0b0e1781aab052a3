//! A WebSocket connection that never panics, for clients that must survive node failures:
//! the client library's `WsClient` with errors as strings, pushes dropped and a `reconnect`
//! frame (the node drains) ending the wait for a reply.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chatnode_client::ws::WsOptions;
use chatnode_client::WsClient;
use serde_json::{json, Value};

use super::config::REQUEST_TIMEOUT;

pub struct Conn {
    pub client: WsClient,
    pub addr: SocketAddr,
}

impl Conn {
    pub async fn open(addr: SocketAddr, token: &str, device: &str) -> Result<Conn, String> {
        let opts = WsOptions {
            connect_timeout: Duration::from_secs(5),
            ..WsOptions::default()
        };
        let mut client = WsClient::connect(&addr.to_string(), &opts)
            .await
            .map_err(|e| format!("ws connect {addr}: {e}"))?;
        client.keep_pushes(0);
        client.reconnect_is_error(true);
        client
            .authenticate(token, device, REQUEST_TIMEOUT)
            .await
            .map_err(|e| format!("auth on {addr}: {e}"))?;
        Ok(Conn { client, addr })
    }

    /// Sends `frame` with a fresh id and waits up to `timeout` for its reply. Err on timeout,
    /// close or a `reconnect` frame (the node drains).
    pub async fn call(&mut self, frame: Value, timeout: Duration) -> Result<Value, String> {
        self.client
            .request(frame, timeout)
            .await
            .map_err(|e| e.to_string())
    }

    /// Every message of `conv` in ascending seq order, via `history` paged by `before_seq`.
    pub async fn history_all(&mut self, conv: &str) -> Result<Vec<Value>, String> {
        let mut all = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let mut req = json!({"type":"history","conversation_id":conv,"limit":100});
            if let Some(bs) = before {
                req["before_seq"] = json!(bs);
            }
            let h = self.call(req, REQUEST_TIMEOUT).await?;
            if h["type"] != "history" {
                return Err(format!("history of {conv}: {h}"));
            }
            let msgs = h["messages"].as_array().cloned().unwrap_or_default();
            if let Some(s) = msgs.last().and_then(|m| m["seq"].as_u64()) {
                before = Some(s);
            }
            let empty = msgs.is_empty();
            all.extend(msgs);
            if h["has_more"] != true {
                break;
            }
            if empty {
                return Err(format!("history of {conv}: has_more with an empty page"));
            }
        }
        all.reverse();
        Ok(all)
    }
}

/// Opens a connection, retrying (on the given nodes in turn) for up to `timeout`.
pub async fn open_retrying(
    addrs: &[SocketAddr],
    token: &str,
    device: &str,
    timeout: Duration,
) -> Conn {
    let deadline = Instant::now() + timeout;
    let mut i = 0;
    loop {
        match Conn::open(addrs[i % addrs.len()], token, device).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect {device}: {e}");
                i += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

/// `history_all` with retries (a leader may be changing).
pub async fn history_retrying(conn: &mut Conn, conv: &str, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        match conn.history_all(conv).await {
            Ok(h) => return h,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "history of {conv} on {}: {e}",
                    conn.addr
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}
