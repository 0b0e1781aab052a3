//! Load: clients sending continuously with retries, and the check that no acknowledged
//! message was lost or duplicated.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::admin::register_user;
use super::config::{REQUEST_TIMEOUT, SEND_GIVE_UP};
use super::ws::{history_retrying, open_retrying, Conn};

#[derive(Debug, Clone)]
pub struct Acked {
    pub conv: String,
    pub cmid: String,
    pub seq: u64,
    pub msg_id: String,
    /// Resends of this `client_msg_id` before its ack.
    pub retries: u32,
    /// Why it was resent.
    pub reasons: Vec<String>,
    /// When the ack arrived.
    pub at: Instant,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub acked: Vec<Acked>,
    /// Sends that never got an ack, or got a non-retryable error.
    pub failed: Vec<String>,
}

impl LoadReport {
    pub fn max_retries(&self) -> u32 {
        self.acked.iter().map(|a| a.retries).max().unwrap_or(0)
    }

    pub fn retry_histogram(&self) -> BTreeMap<u32, usize> {
        let mut h = BTreeMap::new();
        for a in &self.acked {
            *h.entry(a.retries).or_default() += 1;
        }
        h
    }
}

/// Users and conversations for a load: `users` users with `devices` devices each; one group
/// conversation per user `j` with user `j+1` (mod users).
pub struct Workload {
    pub users: Vec<(String, String)>,
    pub convs: Vec<String>,
    /// For each conversation, a user (index into `users`) who is a member.
    pub owners: Vec<usize>,
    pub devices: usize,
}

impl Workload {
    pub async fn setup(addr: SocketAddr, prefix: &str, users: usize, devices: usize) -> Workload {
        let mut us = Vec::new();
        for i in 0..users {
            us.push(register_user(addr, &format!("{prefix}{i}")).await);
        }
        let mut convs = Vec::new();
        for j in 0..users {
            let mut c = open_retrying(&[addr], &us[j].1, "setup", Duration::from_secs(30)).await;
            let other = &us[(j + 1) % users].0;
            let deadline = Instant::now() + Duration::from_secs(30);
            let id = loop {
                let r = c
                    .call(
                        json!({"type":"create_conversation","kind":"group","members":[other],"title":format!("load {j}")}),
                        REQUEST_TIMEOUT,
                    )
                    .await;
                match r {
                    Ok(v) if v["type"] == "conversation" => {
                        break v["conversation"]["conversation_id"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    }
                    other => {
                        assert!(
                            Instant::now() < deadline,
                            "create conversation {j}: {other:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            };
            convs.push(id);
        }
        Workload {
            users: us,
            owners: (0..convs.len()).collect(),
            convs,
            devices,
        }
    }

    /// Clients: client k is user k % users, device k / users; it sends to its own
    /// conversation or to the previous user's (both of which it belongs to).
    pub fn clients(&self) -> usize {
        self.users.len() * self.devices
    }

    /// The token of a member of conversation `conv`.
    pub fn member_token(&self, conv: usize) -> &str {
        &self.users[self.owners[conv]].1
    }

    /// Starts every client, spread over `addrs`; they send until the returned `Load` stops.
    pub fn start(&self, addrs: Vec<SocketAddr>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let n = self.users.len();
        let mut handles = Vec::new();
        for k in 0..self.clients() {
            let u = k % n;
            let d = k / n;
            let conv = if d % 2 == 0 {
                self.convs[u].clone()
            } else {
                self.convs[(u + n - 1) % n].clone()
            };
            let token = self.users[u].1.clone();
            let addrs = addrs.clone();
            let stop = stop.clone();
            let counter = acks.clone();
            handles.push(tokio::spawn(load_client(
                k, addrs, token, conv, stop, counter,
            )));
        }
        Load {
            stop,
            acks,
            handles,
        }
    }

    /// Checks the stored histories against the acks: every acked (conversation,
    /// client_msg_id) exactly once at its acked seq, no `client_msg_id` twice, seqs gapless
    /// from 1, and the same history read through every node in `via`. Returns the messages
    /// per conversation.
    pub async fn verify(&self, via: &[SocketAddr], report: &LoadReport) -> Vec<Vec<Value>> {
        let mut by_conv: HashMap<&str, Vec<&Acked>> = HashMap::new();
        for a in &report.acked {
            by_conv.entry(a.conv.as_str()).or_default().push(a);
        }
        let mut out = Vec::new();
        for (j, conv) in self.convs.iter().enumerate() {
            let mut first: Option<Vec<Value>> = None;
            for addr in via {
                let mut c = open_retrying(
                    &[*addr],
                    self.member_token(j),
                    "verify",
                    Duration::from_secs(30),
                )
                .await;
                let h = history_retrying(&mut c, conv, Duration::from_secs(30)).await;
                match &first {
                    None => first = Some(h),
                    Some(f) => {
                        let key = |m: &Value| {
                            (
                                m["seq"].clone(),
                                m["msg_id"].clone(),
                                m["client_msg_id"].clone(),
                            )
                        };
                        let a: Vec<_> = f.iter().map(key).collect();
                        let b: Vec<_> = h.iter().map(key).collect();
                        assert_eq!(
                            a, b,
                            "conversation {j}: history via {addr} differs from via {}",
                            via[0]
                        );
                    }
                }
            }
            let h = first.unwrap();
            let seqs: Vec<u64> = h.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
            let expect: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert!(
                seqs == expect,
                "conversation {j} ({conv}): seqs not gapless from 1: {} messages, first deviations: {:?}",
                seqs.len(),
                seqs.iter().zip(&expect).filter(|(a, b)| a != b).take(5).collect::<Vec<_>>()
            );
            let mut cmids: HashMap<&str, Vec<u64>> = HashMap::new();
            for m in &h {
                cmids
                    .entry(m["client_msg_id"].as_str().unwrap_or(""))
                    .or_default()
                    .push(m["seq"].as_u64().unwrap());
            }
            let dups: Vec<_> = cmids.iter().filter(|(_, s)| s.len() > 1).take(10).collect();
            assert!(
                dups.is_empty(),
                "conversation {j}: duplicated client_msg_ids (at seqs): {dups:?}"
            );
            let acks = by_conv.get(conv.as_str()).cloned().unwrap_or_default();
            for a in &acks {
                let Some(seqs) = cmids.get(a.cmid.as_str()) else {
                    panic!("conversation {j}: acked message {a:?} is missing (history has {} messages)", h.len());
                };
                assert_eq!(
                    seqs,
                    &vec![a.seq],
                    "conversation {j}: {a:?} stored at {seqs:?}"
                );
                let m = &h[(a.seq - 1) as usize];
                assert_eq!(
                    m["msg_id"].as_str(),
                    Some(a.msg_id.as_str()),
                    "msg_id of {a:?}"
                );
            }
            out.push(h);
        }
        out
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    /// Acks received so far (all clients).
    pub acks: Arc<AtomicU64>,
    handles: Vec<tokio::task::JoinHandle<LoadReport>>,
}

impl Load {
    /// Waits until `n` more sends than now are acked; returns how long that took, or None
    /// after `timeout`.
    pub async fn wait_progress(&self, n: u64, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        let base = self.acks.load(Ordering::SeqCst);
        while start.elapsed() < timeout {
            if self.acks.load(Ordering::SeqCst) >= base + n {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Stops the clients (each finishes the send it has started, with retries) and gathers
    /// what they recorded.
    pub async fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = LoadReport::default();
        for h in std::mem::take(&mut self.handles) {
            let r = h.await.expect("load client panicked");
            all.acked.extend(r.acked);
            all.failed.extend(r.failed);
        }
        all
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in &self.handles {
            h.abort();
        }
    }
}

fn retryable(code: &str) -> bool {
    matches!(
        code,
        "unavailable" | "internal" | "overloaded" | "rate_limited"
    )
}

async fn load_client(
    k: usize,
    addrs: Vec<SocketAddr>,
    token: String,
    conv: String,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
) -> LoadReport {
    let mut report = LoadReport::default();
    let device = format!("load-{k}");
    let mut node = k % addrs.len();
    let mut conn: Option<Conn> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let cmid = format!("c{k}-{n}");
        let started = Instant::now();
        let mut retries = 0u32;
        let mut reasons = Vec::new();
        let mut errors_here = 0;
        loop {
            if started.elapsed() > SEND_GIVE_UP {
                report.failed.push(format!(
                    "{cmid} to {conv}: no ack after {SEND_GIVE_UP:?}: {reasons:?}"
                ));
                break;
            }
            if conn.is_none() {
                match Conn::open(addrs[node], &token, &device).await {
                    Ok(c) => conn = Some(c),
                    Err(_) => {
                        node = (node + 1) % addrs.len();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            let c = conn.as_mut().unwrap();
            let frame = json!({"type":"send","conversation_id":conv,"client_msg_id":cmid,"body":format!("client {k} message {n}")});
            match c.call(frame, REQUEST_TIMEOUT).await {
                Ok(v) if v["type"] == "ack" => {
                    if v["conversation_id"] != json!(conv) || v["client_msg_id"] != json!(cmid) {
                        report
                            .failed
                            .push(format!("{cmid}: ack for something else: {v}"));
                    } else {
                        report.acked.push(Acked {
                            conv: conv.clone(),
                            cmid: cmid.clone(),
                            seq: v["seq"].as_u64().unwrap_or(0),
                            msg_id: v["msg_id"].as_str().unwrap_or("").to_string(),
                            retries,
                            reasons,
                            at: Instant::now(),
                        });
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    break;
                }
                Ok(v) if v["type"] == "error" && retryable(v["code"].as_str().unwrap_or("")) => {
                    retries += 1;
                    errors_here += 1;
                    reasons.push(format!("node {}: {} ({})", c.addr, v["code"], v["message"]));
                    let wait = v["retry_after_ms"].as_u64().unwrap_or(100).min(1000);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    if errors_here >= 2 {
                        // This node may be cut off: try another.
                        errors_here = 0;
                        conn = None;
                        node = (node + 1) % addrs.len();
                    }
                }
                Ok(v) => {
                    report.failed.push(format!("{cmid} to {conv}: {v}"));
                    break;
                }
                Err(e) => {
                    retries += 1;
                    reasons.push(format!("node {}: {e}", c.addr));
                    conn = None;
                    errors_here = 0;
                    node = (node + 1) % addrs.len();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    report
}
