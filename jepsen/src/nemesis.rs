//! Faults on a schedule: healthy for a while, one fault (chosen with the seeded RNG among the
//! enabled ones) for a while, heal, repeat. Every start and stop is recorded in the history
//! (`f: nemesis`, `value.action` = start/stop) so that the checker can cut the run into
//! windows.

use crate::cluster::{node_name, Cluster};
use crate::history::{Event, History, Type, Value, F, NEMESIS};
use crate::http;
use crate::net;
use crate::workload::Nodes;
use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard};

pub const ALL: &[&str] = &[
    "partition-halves",
    "isolate-one",
    "isolate-leader",
    "bridge",
    "ring",
    "kill",
    "pause",
    "join-leave",
    "clock-skew",
    "lossy",
    "partition+kill",
    "pause+kill",
    "kill-all",
    "isolate+kill-rest",
    "flaky-links",
];

pub fn parse_list(s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "none" => {}
            "all" => out.extend(ALL.iter().map(|s| s.to_string())),
            p if ALL.contains(&p) => out.push(p.to_string()),
            p => bail!(
                "unknown nemesis {p:?}; known: {}, all, none",
                ALL.join(", ")
            ),
        }
    }
    out.dedup();
    Ok(out)
}

pub struct Nemesis {
    pub cluster: Arc<Mutex<Cluster>>,
    pub hist: History,
    pub rng: StdRng,
    pub faults: Vec<String>,
    pub current: Arc<std::sync::Mutex<String>>,
    pub stop: Arc<AtomicBool>,
    pub nodes: Nodes,
    /// Seconds healthy between faults, and seconds a fault lasts: uniform in [lo, hi].
    pub interval: (f64, f64),
    /// Notes for the report (skipped faults and why).
    pub notes: Arc<std::sync::Mutex<Vec<String>>>,
    leave_unsupported: bool,
}

#[derive(Default)]
struct Applied {
    targets: Vec<String>,
    detail: String,
    /// Not applied at all (unsupported here): the window does not count as a fault.
    noop: bool,
}

impl Nemesis {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cluster: Arc<Mutex<Cluster>>,
        hist: History,
        rng: StdRng,
        faults: Vec<String>,
        current: Arc<std::sync::Mutex<String>>,
        stop: Arc<AtomicBool>,
        nodes: Nodes,
        interval: (f64, f64),
        notes: Arc<std::sync::Mutex<Vec<String>>>,
    ) -> Self {
        Nemesis {
            cluster,
            hist,
            rng,
            faults,
            current,
            stop,
            nodes,
            interval,
            notes,
            leave_unsupported: false,
        }
    }

    fn note(&self, s: String) {
        let mut notes = self.notes.lock().unwrap();
        if !notes.contains(&s) {
            tracing::warn!("{s}");
            notes.push(s);
        }
    }

    async fn sleep_unless_stopped(&mut self) {
        let secs = self.rng.gen_range(self.interval.0..=self.interval.1);
        let end = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
        while tokio::time::Instant::now() < end && !self.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn record(&self, ty: Type, op_id: u64, value: Value, error: Option<String>) {
        let mut ev = Event::new(op_id, NEMESIS, ty, F::Nemesis, 0);
        ev.value = Some(value);
        ev.error = error;
        self.hist.record(ev);
    }

    pub async fn run(mut self) {
        if self.faults.is_empty() {
            return;
        }
        loop {
            self.sleep_unless_stopped().await;
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let fault = self.faults.choose(&mut self.rng).unwrap().clone();
            let op = self.hist.next_op_id();
            let start = |targets: Option<Vec<String>>, detail: Option<String>| Value {
                action: Some("start".into()),
                fault: Some(fault.clone()),
                targets,
                detail,
                ..Default::default()
            };
            self.record(Type::Invoke, op, start(None, None), None);
            let applied = self.start(&fault).await;
            match applied {
                Ok(a) if a.noop => {
                    self.record(
                        Type::Fail,
                        op,
                        start(None, Some(a.detail.clone())),
                        Some("skipped".into()),
                    );
                    self.note(format!("{fault}: {}", a.detail));
                    continue;
                }
                Ok(a) => {
                    *self.current.lock().unwrap() = format!("{fault} {}", a.targets.join(","));
                    self.record(Type::Info, op, start(Some(a.targets), Some(a.detail)), None);
                }
                Err(e) => {
                    self.record(Type::Info, op, start(None, None), Some(format!("{e:#}")));
                    self.note(format!("{fault}: failed to apply: {e:#}"));
                }
            }
            self.sleep_unless_stopped().await;
            let op = self.hist.next_op_id();
            let stop = Value {
                action: Some("stop".into()),
                fault: Some(fault.clone()),
                ..Default::default()
            };
            self.record(Type::Invoke, op, stop.clone(), None);
            let healed = heal_all(&self.cluster, &self.hist).await;
            self.record(Type::Info, op, stop, healed.err().map(|e| format!("{e:#}")));
            *self.current.lock().unwrap() = "none".into();
        }
    }

    /// Running members, as node numbers.
    async fn members(&self) -> Vec<usize> {
        self.cluster.lock().await.members()
    }

    async fn pick(&mut self, max: usize) -> Vec<usize> {
        let mut m = self.members().await;
        m.shuffle(&mut self.rng);
        let count = self.rng.gen_range(1..=max.max(1)).min(m.len());
        m.truncate(count);
        m.sort();
        m
    }

    /// Applies one fault to the running members.
    async fn start(&mut self, fault: &str) -> Result<Applied> {
        let members = self.members().await;
        let n = members.len();
        let minority = (n.saturating_sub(1)) / 2;
        match fault {
            "partition-halves" => self.partition_halves(&members),
            "isolate-one" => {
                let victim = *members.choose(&mut self.rng).unwrap();
                self.isolate(&members, victim, "random")
            }
            "isolate-leader" => self.isolate_leader(&members).await,
            "bridge" => self.bridge(&members),
            "ring" => self.ring(&members),
            "kill" => self.kill_some(minority).await,
            "pause" => self.pause_some(minority).await,
            "flaky-links" => self.flaky_links().await,
            "kill-all" => self.kill_all(&members).await,
            "isolate+kill-rest" => self.isolate_kill_rest(&members).await,
            "partition+kill" => self.partition_kill(&members).await,
            "pause+kill" => self.pause_kill(&members).await,
            "clock-skew" => self.clock_skew(minority).await,
            "join-leave" => self.join_leave().await,
            "lossy" => self.lossy(&members),
            other => bail!("unknown fault {other}"),
        }
    }

    /// Cuts off the node that leads the most groups (a random one if no status answers).
    async fn isolate_leader(&mut self, members: &[usize]) -> Result<Applied> {
        let (victim, how) = match busiest_leader(&self.cluster).await {
            Some(v) => (v, "leads the most groups".to_string()),
            None => (
                *members.choose(&mut self.rng).unwrap(),
                "random: /admin/status gave no leaders".to_string(),
            ),
        };
        self.isolate(members, victim, &how)
    }

    /// SIGKILLs up to `minority` random members (restarted at heal).
    async fn kill_some(&mut self, minority: usize) -> Result<Applied> {
        let victims = self.pick(minority).await;
        let mut c = self.cluster.lock().await;
        for &v in &victims {
            c.kill(v).await;
        }
        Ok(Applied {
            targets: node_names(&victims),
            detail: "SIGKILL; restarted at heal".into(),
            noop: false,
        })
    }

    /// SIGSTOPs up to `minority` random members (SIGCONT at heal).
    async fn pause_some(&mut self, minority: usize) -> Result<Applied> {
        let victims = self.pick(minority).await;
        let mut c = self.cluster.lock().await;
        for &v in &victims {
            c.pause(v);
        }
        Ok(Applied {
            targets: node_names(&victims),
            detail: "SIGSTOP; SIGCONT at heal".into(),
            noop: false,
        })
    }

    /// Delays (with jitter), duplicates and drops peer datagrams in the UDP relays.
    async fn flaky_links(&mut self) -> Result<Applied> {
        let c = self.cluster.lock().await;
        let Some(relays) = c.relays.clone() else {
            return Ok(Applied {
                detail: "skipped: the run has no relays".into(),
                noop: true,
                ..Default::default()
            });
        };
        drop(c);
        let lo = self.rng.gen_range(5..=50);
        let hi = lo + self.rng.gen_range(50..=250);
        let f = crate::relay::LinkFaults {
            delay_ms: Some((lo, hi)),
            duplicate_pct: self.rng.gen_range(5..=20),
            drop_pct: self.rng.gen_range(0..=5),
        };
        relays.set(f);
        Ok(Applied {
            targets: vec![format!(
                "delay {lo}-{hi}ms dup {}% drop {}%",
                f.duplicate_pct, f.drop_pct
            )],
            detail: "every peer datagram through the UDP relays: delayed with jitter (so reordered), some duplicated, some dropped".into(),
            noop: false,
        })
    }

    /// SIGKILLs every member at once (a power loss).
    async fn kill_all(&mut self, members: &[usize]) -> Result<Applied> {
        let mut c = self.cluster.lock().await;
        for &v in members {
            c.kill(v).await;
        }
        Ok(Applied {
            targets: node_names(members),
            detail: "SIGKILL on every node at once (a power loss); restarted at heal".into(),
            noop: false,
        })
    }

    /// Cuts one node off, then crashes and restarts every other node at once.
    async fn isolate_kill_rest(&mut self, members: &[usize]) -> Result<Applied> {
        if let Some(a) = self.single_node(members.len()) {
            return Ok(a);
        }
        let victim = *members.choose(&mut self.rng).unwrap();
        let mut a = self.isolate(members, victim, "random")?;
        // The others crash and come back at once, while the isolated node, which
        // remembers the latest term, is cut off: they must elect among themselves.
        let mut c = self.cluster.lock().await;
        for &v in members.iter().filter(|&&v| v != victim) {
            c.kill(v).await;
            c.start(v, false)?;
            a.targets.push(format!("restart {}", node_name(v)));
        }
        a.detail = format!(
            "{}; every other node SIGKILLed and restarted at once",
            a.detail
        );
        Ok(a)
    }

    /// Two halves, and one random node SIGKILLed.
    async fn partition_kill(&mut self, members: &[usize]) -> Result<Applied> {
        let mut a = self.partition_halves(members)?;
        let victim = *members.choose(&mut self.rng).unwrap();
        self.cluster.lock().await.kill(victim).await;
        a.targets.push(format!("kill {}", node_name(victim)));
        a.noop = false;
        Ok(a)
    }

    /// SIGSTOPs one random node and SIGKILLs another.
    async fn pause_kill(&mut self, members: &[usize]) -> Result<Applied> {
        let mut m = members.to_vec();
        m.shuffle(&mut self.rng);
        let mut c = self.cluster.lock().await;
        let mut targets = Vec::new();
        if m.len() >= 2 {
            c.pause(m[1]);
            targets.push(format!("pause {}", node_name(m[1])));
        }
        c.kill(m[0]).await;
        targets.push(format!("kill {}", node_name(m[0])));
        Ok(Applied {
            targets,
            detail: "SIGSTOP one node, SIGKILL another".into(),
            noop: false,
        })
    }

    /// Moves the wall clock of up to `minority` random members by ±3–20 s (libfaketime).
    async fn clock_skew(&mut self, minority: usize) -> Result<Applied> {
        let c = self.cluster.lock().await;
        if !c.skew || c.caps.faketime.is_none() {
            return Ok(Applied {
                detail: "skipped: libfaketime is not installed (apt-get install faketime)".into(),
                noop: true,
                ..Default::default()
            });
        }
        drop(c);
        let victims = self.pick(minority).await;
        let c = self.cluster.lock().await;
        let mut targets = Vec::new();
        for &v in &victims {
            let secs = self.rng.gen_range(3..=20) * if self.rng.gen_bool(0.5) { 1 } else { -1 };
            c.set_clock(v, secs)?;
            targets.push(format!("{}:{:+}s", node_name(v), secs));
        }
        Ok(Applied {
            targets,
            detail: "wall clock offset via libfaketime (monotonic clock untouched); reset at heal"
                .into(),
            noop: false,
        })
    }

    /// Every node drops 10–40 % of the packets from the other nodes.
    fn lossy(&mut self, members: &[usize]) -> Result<Applied> {
        if let Some(a) = self.single_node(members.len()) {
            return Ok(a);
        }
        let pct = self.rng.gen_range(10..=40);
        for &i in members {
            let others: Vec<usize> = members.iter().copied().filter(|&o| o != i).collect();
            net::set_lossy(i, &others, pct)?;
        }
        Ok(Applied {
            targets: vec![format!("{pct}%")],
            detail: format!(
                "every node drops {pct}% of the packets from the other nodes (nftables numgen)"
            ),
            noop: false,
        })
    }

    fn single_node(&self, n: usize) -> Option<Applied> {
        (n < 2).then(|| Applied {
            detail: format!("skipped: a partition needs at least 2 nodes, the cluster has {n}"),
            noop: true,
            ..Default::default()
        })
    }

    fn partition_halves(&mut self, members: &[usize]) -> Result<Applied> {
        if let Some(a) = self.single_node(members.len()) {
            return Ok(a);
        }
        let mut m = members.to_vec();
        m.shuffle(&mut self.rng);
        let half = m.len() / 2;
        let side: Vec<bool> = m.iter().enumerate().map(|(i, _)| i < half).collect();
        net::apply_grid(&m, &|a, b| side[a] == side[b])?;
        let mut small: Vec<usize> = m[..half].to_vec();
        let mut big: Vec<usize> = m[half..].to_vec();
        small.sort();
        big.sort();
        Ok(Applied {
            targets: vec![names(&small), names(&big)],
            detail: format!("{} | {}", names(&small), names(&big)),
            noop: false,
        })
    }

    fn isolate(&mut self, members: &[usize], victim: usize, how: &str) -> Result<Applied> {
        if let Some(a) = self.single_node(members.len()) {
            return Ok(a);
        }
        let pos = members.iter().position(|&m| m == victim).unwrap_or(0);
        net::apply_grid(members, &|a, b| a != pos && b != pos)?;
        Ok(Applied {
            targets: vec![node_name(victim)],
            detail: format!("{} cut off from the other nodes ({how})", node_name(victim)),
            noop: false,
        })
    }

    /// Jepsen's bridge: two halves that only talk through one node in the middle.
    fn bridge(&mut self, members: &[usize]) -> Result<Applied> {
        if members.len() < 3 {
            return Ok(Applied {
                detail: format!(
                    "skipped: a bridge needs at least 3 nodes, the cluster has {}",
                    members.len()
                ),
                noop: true,
                ..Default::default()
            });
        }
        let mut m = members.to_vec();
        m.shuffle(&mut self.rng);
        let mid = m.len() / 2;
        net::apply_grid(&m, &|a, b| bridge_reach(m.len(), a, b))?;
        Ok(Applied {
            targets: vec![names(&m[..mid]), node_name(m[mid]), names(&m[mid + 1..])],
            detail: format!(
                "{} <-> {} <-> {}",
                names(&m[..mid]),
                node_name(m[mid]),
                names(&m[mid + 1..])
            ),
            noop: false,
        })
    }

    /// Majorities ring: nodes on a shuffled ring see their neighbours within distance
    /// n/2, so each sees a majority (itself included) and no two majorities are the same.
    fn ring(&mut self, members: &[usize]) -> Result<Applied> {
        let n = members.len();
        if n < 5 {
            if n >= 3 {
                return self.bridge(members);
            }
            return Ok(Applied {
                detail: format!("skipped: a ring needs at least 3 nodes, the cluster has {n}"),
                noop: true,
                ..Default::default()
            });
        }
        let mut m = members.to_vec();
        m.shuffle(&mut self.rng);
        net::apply_grid(&m, &|a, b| ring_reach(n, a, b))?;
        let ring = node_names(&m).join("-");
        Ok(Applied {
            targets: node_names(&m),
            detail: format!("ring {ring}, each node sees its neighbours"),
            noop: false,
        })
    }

    /// A spare node joins the cluster if there is one; else a member leaves.
    async fn join_leave(&mut self) -> Result<Applied> {
        // A clone, so that the guard does not borrow `self`.
        let cluster = self.cluster.clone();
        let c = cluster.lock().await;
        if !c.caps.clustered() || self.leave_unsupported {
            return Ok(Applied {
                detail:
                    "skipped: this chatnode has no --join (single-node build) or no /admin/leave"
                        .into(),
                noop: true,
                ..Default::default()
            });
        }
        let spare = c
            .nodes
            .iter()
            .find(|n| !n.member && !n.running())
            .map(|n| n.idx);
        match spare {
            Some(s) => self.join(c, s).await,
            None => self.leave(c).await,
        }
    }

    /// Starts spare node `s` with an empty data dir and --join; clients may use it once it
    /// is ready.
    async fn join(&mut self, mut c: MutexGuard<'_, Cluster>, s: usize) -> Result<Applied> {
        let _ = std::fs::remove_dir_all(&c.node(s).data_dir);
        c.start(s, true)?;
        let addr = c.node(s).client_addr();
        drop(c);
        let ready = crate::cluster::wait_ready(&addr, Duration::from_secs(30))
            .await
            .is_ok();
        if ready {
            self.nodes.write().unwrap().push((s, addr));
        }
        Ok(Applied {
            targets: vec![node_name(s)],
            detail: format!("{} joined (ready: {ready})", node_name(s)),
            noop: false,
        })
    }

    /// A random member other than the seed leaves via POST /admin/leave (at least 3 stay
    /// candidates); clients stop using it at once, and get it back if it could not leave.
    async fn leave(&mut self, c: MutexGuard<'_, Cluster>) -> Result<Applied> {
        // Nobody spare: a member other than the seed leaves (keep at least 3).
        let mut candidates: Vec<usize> = c.members().into_iter().filter(|&i| i != 1).collect();
        if candidates.len() < 3 {
            return Ok(Applied {
                detail: "skipped: no spare node and too few members to let one leave".into(),
                noop: true,
                ..Default::default()
            });
        }
        candidates.shuffle(&mut self.rng);
        let leaver = candidates[0];
        let addr = c.node(leaver).client_addr();
        drop(c);
        self.nodes.write().unwrap().retain(|(i, _)| *i != leaver);
        let r = http::request(
            &addr,
            "POST",
            "/admin/leave",
            Some(""),
            None, // the admin token, added by `http` for /admin/*
            Duration::from_secs(30),
        )
        .await;
        match r {
            Ok(r) if r.status == 404 || r.status == 405 => {
                self.leave_unsupported = true;
                let a = addr.clone();
                self.nodes.write().unwrap().push((leaver, a));
                Ok(Applied {
                    detail: "skipped: POST /admin/leave is not supported (404)".into(),
                    noop: true,
                    ..Default::default()
                })
            }
            Ok(r) if r.status < 300 => {
                self.retire(leaver).await;
                Ok(Applied {
                    targets: vec![node_name(leaver)],
                    detail: format!("{} left via /admin/leave", node_name(leaver)),
                    noop: false,
                })
            }
            Ok(r) => {
                self.nodes.write().unwrap().push((leaver, addr));
                bail!(
                    "/admin/leave on {}: {} {}",
                    node_name(leaver),
                    r.status,
                    r.body
                )
            }
            Err(e) => {
                self.nodes.write().unwrap().push((leaver, addr));
                Err(e)
            }
        }
    }

    /// Gives a node that left time (60 s) to hand its replicas over and exit, then kills
    /// the process and marks it no member.
    async fn retire(&self, leaver: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut c = self.cluster.lock().await;
            c.reap();
            if !c.node(leaver).running() || tokio::time::Instant::now() > deadline {
                c.kill(leaver).await;
                let n = &mut c.nodes[leaver - 1];
                n.member = false;
                break;
            }
            drop(c);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Bridge grid over positions 0..n: the node in the middle sees everyone; the others see
/// their own side and the middle.
pub fn bridge_reach(n: usize, a: usize, b: usize) -> bool {
    let mid = n / 2;
    a == mid || b == mid || (a < mid) == (b < mid)
}

/// Ring grid over positions 0..n: nodes see the others within the smallest ring distance
/// that still gives each a majority (5 nodes: the two neighbours, 3 of 5 with itself).
pub fn ring_reach(n: usize, a: usize, b: usize) -> bool {
    let reach = (n / 2).div_ceil(2);
    let d = a.abs_diff(b);
    d.min(n - d) <= reach
}

/// The names of node numbers, in order.
fn node_names(nodes: &[usize]) -> Vec<String> {
    nodes.iter().map(|&i| node_name(i)).collect()
}

/// Node names joined by commas, for a fault's targets and detail.
fn names(nodes: &[usize]) -> String {
    node_names(nodes).join(",")
}

/// The node leading the most groups, from `/admin/status` of any node that answers.
pub async fn busiest_leader(cluster: &Arc<Mutex<Cluster>>) -> Option<usize> {
    let addrs: Vec<(usize, String)> = {
        let c = cluster.lock().await;
        c.nodes
            .iter()
            .filter(|n| n.running() && !n.paused)
            .map(|n| (n.idx, n.client_addr()))
            .collect()
    };
    for (_, addr) in addrs {
        let Ok(r) = http::get(&addr, "/admin/status", Duration::from_secs(2)).await else {
            continue;
        };
        if r.status != 200 {
            continue;
        }
        let Ok(v) = r.status() else { continue };
        // node id -> our node number, by the client address' IP.
        let mut by_id = std::collections::HashMap::new();
        for n in &v.nodes {
            let ip = n.client_addr.rsplit_once(':').map(|(h, _)| h);
            if let Some(last) = ip.and_then(|ip| ip.rsplit('.').next()?.parse::<usize>().ok()) {
                if last > 10 {
                    by_id.insert(n.id, last - 10);
                }
            }
        }
        // Each group's leader as the node with the highest term reports it: this node's own
        // view plus every reachable node's (`node_statuses`).
        let views =
            std::iter::once(&v.groups[..]).chain(v.node_statuses.iter().map(|ns| ns.groups()));
        let mut leaders = std::collections::BTreeMap::<u32, (u64, u64)>::new();
        for g in views.flatten() {
            let Some(leader) = g.leader else {
                continue;
            };
            let e = leaders.entry(g.group).or_insert((g.term, leader));
            if g.term > e.0 {
                *e = (g.term, leader);
            }
        }
        // Shard groups carry the clients' traffic; the meta group (0) only breaks ties.
        let mut counts = std::collections::BTreeMap::<usize, usize>::new();
        for (group, (_, leader)) in &leaders {
            if let Some(node) = by_id.get(leader) {
                *counts.entry(*node).or_default() += if *group == 0 { 1 } else { 1000 };
            }
        }
        if let Some((&node, _)) = counts.iter().max_by_key(|(_, &c)| c) {
            return Some(node);
        }
    }
    None
}

/// Undoes every fault: network rules, pauses, dead members (restarted), clocks. Nodes that
/// died on their own are recorded in the history.
pub async fn heal_all(cluster: &Arc<Mutex<Cluster>>, hist: &History) -> Result<()> {
    let mut c = cluster.lock().await;
    let total = c.nodes.len();
    let mut first_err = None;
    if let Some(r) = &c.relays {
        r.set(crate::relay::LinkFaults::default());
    }
    for i in 1..=total {
        if let Err(e) = net::set_blocked(i, &[]) {
            first_err.get_or_insert(e);
        }
    }
    for (i, status) in c.reap() {
        let mut ev = Event::new(hist.next_op_id(), NEMESIS, Type::Info, F::Nemesis, 0);
        ev.node = Some(node_name(i));
        ev.value = Some(Value {
            action: Some("crashed".into()),
            detail: Some(format!("{} exited by itself: {status}", node_name(i))),
            ..Default::default()
        });
        hist.record(ev);
    }
    for i in 1..=total {
        let _ = c.set_clock(i, 0);
        if c.node(i).paused {
            c.resume(i);
        }
        if c.node(i).member && !c.node(i).running() {
            if let Err(e) = c.start(i, false) {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each node's view (itself included) in a grid.
    fn views(n: usize, reach: fn(usize, usize, usize) -> bool) -> Vec<Vec<usize>> {
        (0..n)
            .map(|a| (0..n).filter(|&b| a == b || reach(n, a, b)).collect())
            .collect()
    }

    #[test]
    fn ring_and_bridge_give_every_node_a_different_majority() {
        for n in [3usize, 5, 7] {
            for (name, reach) in [
                ("ring", ring_reach as fn(usize, usize, usize) -> bool),
                ("bridge", bridge_reach),
            ] {
                if name == "ring" && n < 5 {
                    continue;
                }
                let v = views(n, reach);
                for (a, seen) in v.iter().enumerate() {
                    assert!(
                        seen.len() > n / 2,
                        "{name} n={n}: node {a} sees {seen:?}, no majority"
                    );
                    assert!(
                        seen.len() < n || (name == "bridge" && a == n / 2),
                        "{name} n={n}: node {a} sees everyone"
                    );
                }
                let distinct: std::collections::BTreeSet<_> = v.iter().collect();
                assert!(
                    distinct.len() > 1,
                    "{name} n={n}: every node sees the same majority"
                );
                // Symmetric: a sees b iff b sees a.
                for a in 0..n {
                    for b in 0..n {
                        assert_eq!(reach(n, a, b), reach(n, b, a));
                    }
                }
            }
        }
    }

    #[test]
    fn nemesis_lists_parse() {
        assert_eq!(parse_list("kill,pause").unwrap(), vec!["kill", "pause"]);
        assert_eq!(parse_list("all").unwrap().len(), ALL.len());
        assert!(parse_list("none").unwrap().is_empty());
        assert!(parse_list("kill,bogus").is_err());
    }
}
