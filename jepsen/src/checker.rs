//! The checker: reads a history and finds violations of G1–G8. Every anomaly names the op
//! ids that show it.
//!
//! Classes (see README.md for what each means):
//! lost, duplicated, gap, reuse, order, stale-read, diverge, connection-skip, phantom,
//! uncommitted, unrecovered.
//! Allowed but reported: recovered (a failed or indeterminate send that shows up later).

use crate::history::{Event, Msg, SyncEntry, Type, Value, F};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

pub const CLASSES: &[&str] = &[
    "lost",
    "duplicated",
    "gap",
    "reuse",
    "order",
    "stale-read",
    "diverge",
    "connection-skip",
    "phantom",
    "uncommitted",
    "unrecovered",
];

/// Anomalies listed per class in the report (all are counted).
const LIST_LIMIT: usize = 100;

#[derive(Serialize, Clone, Debug)]
pub struct Anomaly {
    pub class: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    pub op_ids: Vec<u64>,
    pub message: String,
}

#[derive(Serialize, Clone, Debug)]
pub struct Recovered {
    pub conversation: String,
    pub client_msg_id: String,
    pub seq: u64,
    /// The last attempt's outcome: fail or info.
    pub last: String,
    pub op_ids: Vec<u64>,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct Window {
    pub fault: String,
    pub targets: Vec<String>,
    pub start_s: f64,
    pub end_s: f64,
    pub sends: u64,
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
    /// (fail + info) / sends.
    pub unavailable_fraction: f64,
    /// Per shard group ("group N"; per conversation id when the history does not say which
    /// group a conversation is in): ms from the heal to the first ok send completed after it.
    pub heal_to_first_ok_ms: BTreeMap<String, f64>,
    pub heal_to_first_ok_max_ms: Option<f64>,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct FaultSummary {
    pub windows: u64,
    pub sends: u64,
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
    pub unavailable_fraction: f64,
    pub heal_to_first_ok_max_ms: Option<f64>,
    pub heal_to_first_ok_mean_ms: Option<f64>,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct Stats {
    /// ops[f][type] = count (client operations, pushes, final reads).
    pub ops: BTreeMap<String, BTreeMap<String, u64>>,
    pub sends_logical: u64,
    pub sends_acked: u64,
    pub sends_unacked_stored: u64,
    pub sends_unacked_absent: u64,
    pub push_messages: u64,
    /// Seqs a connection's pushes stepped over that it had anyway: its own sends (never
    /// pushed back to the sending connection) or a read on it.
    pub push_gaps_filled: u64,
    /// Seqs a connection's pushes stepped over that it never asked for again (it closed
    /// first): not an anomaly, nothing could fill them on that connection.
    pub push_gaps_unfilled_no_chance: u64,
    pub connections: u64,
    /// final_reads[conversation][node] = last seq read.
    pub final_reads: BTreeMap<String, BTreeMap<String, u64>>,
    pub send_latency_ms: BTreeMap<String, f64>,
    pub duration_s: f64,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct Report {
    pub valid: bool,
    /// Set when the history cannot be judged (e.g. no final reads): exit code 2.
    pub harness_error: Option<String>,
    pub counts: BTreeMap<String, usize>,
    pub anomalies: BTreeMap<String, Vec<Anomaly>>,
    pub recovered_count: usize,
    pub recovered: Vec<Recovered>,
    pub windows: Vec<Window>,
    pub availability: BTreeMap<String, FaultSummary>,
    pub stats: Stats,
    pub notes: Vec<String>,
}

impl Report {
    pub fn anomaly_total(&self) -> usize {
        self.counts.values().sum()
    }
    /// 0 no anomaly, 1 anomalies, 2 the history cannot be judged.
    pub fn exit_code(&self) -> u8 {
        if self.anomaly_total() > 0 {
            1
        } else if self.harness_error.is_some() {
            2
        } else {
            0
        }
    }
}

/// One operation: an invoke and its completion, or a single observation.
#[derive(Debug, Clone)]
pub struct Op<'a> {
    pub op_id: u64,
    pub process: i64,
    pub f: F,
    pub node: Option<&'a str>,
    pub conn: Option<u64>,
    pub conv: Option<&'a str>,
    pub cmid: Option<&'a str>,
    pub invoke_ns: u64,
    pub complete_ns: u64,
    /// ok / fail / info; an invoke without completion counts as info.
    pub ty: Type,
    pub invoke_value: Option<&'a Value>,
    pub value: Option<&'a Value>,
    pub error: Option<&'a str>,
    pub completed: bool,
}

pub fn pair(events: &[Event]) -> Vec<Op<'_>> {
    let mut ops: Vec<Op> = Vec::new();
    let mut open: HashMap<u64, usize> = HashMap::new();
    for ev in events {
        match ev.ty {
            Type::Invoke => {
                open.insert(ev.op_id, ops.len());
                ops.push(Op {
                    op_id: ev.op_id,
                    process: ev.process,
                    f: ev.f,
                    node: ev.node.as_deref(),
                    conn: ev.conn,
                    conv: ev.conversation.as_deref(),
                    cmid: ev.client_msg_id.as_deref(),
                    invoke_ns: ev.time_ns,
                    complete_ns: u64::MAX,
                    ty: Type::Info,
                    invoke_value: ev.value.as_ref(),
                    value: None,
                    error: None,
                    completed: false,
                });
            }
            _ => match open.remove(&ev.op_id) {
                Some(i) => {
                    let op = &mut ops[i];
                    op.complete_ns = ev.time_ns;
                    op.ty = ev.ty;
                    op.value = ev.value.as_ref();
                    op.error = ev.error.as_deref();
                    op.completed = true;
                }
                None => ops.push(Op {
                    op_id: ev.op_id,
                    process: ev.process,
                    f: ev.f,
                    node: ev.node.as_deref(),
                    conn: ev.conn,
                    conv: ev.conversation.as_deref(),
                    cmid: ev.client_msg_id.as_deref(),
                    invoke_ns: ev.time_ns,
                    complete_ns: ev.time_ns,
                    ty: ev.ty,
                    invoke_value: None,
                    value: ev.value.as_ref(),
                    error: ev.error.as_deref(),
                    completed: true,
                }),
            },
        }
    }
    ops
}

fn type_name(t: Type) -> &'static str {
    match t {
        Type::Invoke => "invoke",
        Type::Ok => "ok",
        Type::Fail => "fail",
        Type::Info => "info",
    }
}

struct Acc {
    anomalies: BTreeMap<&'static str, Vec<Anomaly>>,
    seen_keys: HashSet<String>,
}

impl Acc {
    fn add(&mut self, a: Anomaly) {
        self.anomalies.entry(a.class).or_default().push(a);
    }
    /// Adds an anomaly once per key.
    fn add_once(&mut self, key: String, a: Anomaly) {
        if self.seen_keys.insert(key) {
            self.add(a);
        }
    }
}

fn anomaly(
    class: &'static str,
    conv: &str,
    seq: Option<u64>,
    cmid: Option<&str>,
    op_ids: Vec<u64>,
    message: String,
) -> Anomaly {
    Anomaly {
        class,
        conversation: Some(conv.to_string()),
        seq,
        client_msg_id: cmid.map(str::to_string),
        op_ids,
        message,
    }
}

/// A logical send: every attempt of one (conversation, client_msg_id).
struct Send<'a> {
    conv: &'a str,
    cmid: &'a str,
    attempts: Vec<usize>,
    first_invoke: u64,
    /// (seq, completion time, op id) of the earliest ack (ok attempt or late ack).
    acked: Option<(u64, u64, u64)>,
}

/// Where a message was seen: (seq, client_msg_id, msg_id, op id).
struct Seen<'a> {
    seq: u64,
    cmid: &'a str,
    msg_id: Option<&'a str>,
    op: u64,
}

/// (seq, op id, time) of one pushed message.
type Stamped = (u64, u64, u64);
/// (invoke time, op id, entries) of one ok sync.
type SyncAt<'a> = (u64, u64, &'a [SyncEntry]);

fn msgs(v: Option<&Value>) -> &[Msg] {
    v.and_then(|v| v.messages.as_deref()).unwrap_or(&[])
}

fn entries(v: Option<&Value>) -> &[SyncEntry] {
    v.and_then(|v| v.entries.as_deref()).unwrap_or(&[])
}

pub fn check(events: &[Event]) -> Report {
    let ops = pair(events);
    let mut acc = Acc {
        anomalies: BTreeMap::new(),
        seen_keys: HashSet::new(),
    };
    let mut report = Report::default();
    let mut stats = Stats {
        duration_s: events.iter().map(|e| e.time_ns).max().unwrap_or(0) as f64 / 1e9,
        ..Default::default()
    };

    for op in &ops {
        *stats
            .ops
            .entry(op.f.name().to_string())
            .or_default()
            .entry(type_name(op.ty).to_string())
            .or_default() += 1;
    }
    stats.connections = ops
        .iter()
        .filter_map(|o| if o.process >= 0 { o.conn } else { None })
        .collect::<HashSet<_>>()
        .len() as u64;

    // ------------------------------------------------------------ logical sends
    let mut sends: BTreeMap<(&str, &str), Send> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        if !matches!(op.f, F::Send | F::LateAck) {
            continue;
        }
        let (Some(conv), Some(cmid)) = (op.conv, op.cmid) else {
            continue;
        };
        let s = sends.entry((conv, cmid)).or_insert_with(|| Send {
            conv,
            cmid,
            attempts: Vec::new(),
            first_invoke: u64::MAX,
            acked: None,
        });
        s.attempts.push(i);
        if op.f == F::Send {
            s.first_invoke = s.first_invoke.min(op.invoke_ns);
        }
    }
    for s in sends.values_mut() {
        // Every ack of one client_msg_id must carry the same seq.
        let mut seqs: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for &i in &s.attempts {
            let op = &ops[i];
            if op.ty != Type::Ok {
                continue;
            }
            if let Some(seq) = op.value.and_then(|v| v.seq) {
                seqs.entry(seq).or_default().push(op.op_id);
                if s.acked.is_none_or(|(_, t, _)| op.complete_ns < t) {
                    s.acked = Some((seq, op.complete_ns, op.op_id));
                }
            }
        }
        if seqs.len() > 1 {
            acc.add(anomaly(
                "duplicated",
                s.conv,
                None,
                Some(s.cmid),
                seqs.values().flatten().copied().collect(),
                format!(
                    "acks of {} carry different seqs: {:?}",
                    s.cmid,
                    seqs.keys().collect::<Vec<_>>()
                ),
            ));
        }
    }
    stats.sends_logical = sends
        .values()
        .filter(|s| s.first_invoke != u64::MAX)
        .count() as u64;
    stats.sends_acked = sends.values().filter(|s| s.acked.is_some()).count() as u64;

    // ------------------------------------------------------------ observations
    // Every place a (conversation, seq, message) was seen: acks, reads, pushes, final reads.
    let mut observed: BTreeMap<&str, Vec<Seen>> = BTreeMap::new();
    for op in &ops {
        if op.ty != Type::Ok {
            continue;
        }
        match op.f {
            F::Send | F::LateAck => {
                if let (Some(conv), Some(cmid), Some(v)) = (op.conv, op.cmid, op.value) {
                    if let Some(seq) = v.seq {
                        observed.entry(conv).or_default().push(Seen {
                            seq,
                            cmid,
                            msg_id: v.msg_id.as_deref(),
                            op: op.op_id,
                        });
                    }
                }
            }
            F::History | F::Push | F::FinalRead => {
                if let Some(conv) = op.conv {
                    for m in msgs(op.value) {
                        observed.entry(conv).or_default().push(Seen {
                            seq: m.seq,
                            cmid: &m.client_msg_id,
                            msg_id: m.msg_id.as_deref(),
                            op: op.op_id,
                        });
                    }
                }
            }
            F::Sync => {
                for e in entries(op.value) {
                    for m in e.messages.as_deref().unwrap_or(&[]) {
                        observed.entry(&e.conversation).or_default().push(Seen {
                            seq: m.seq,
                            cmid: &m.client_msg_id,
                            msg_id: m.msg_id.as_deref(),
                            op: op.op_id,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    let sent_cmids: HashSet<(&str, &str)> = sends.keys().copied().collect();
    // (conversation, client_msg_id) -> seq, as first observed.
    let mut cmid_seq: HashMap<(&str, &str), (u64, u64)> = HashMap::new();
    for (&conv, seen) in &observed {
        let mut by_seq: HashMap<u64, (&str, Option<&str>, u64)> = HashMap::new();
        for s in seen {
            match by_seq.get(&s.seq) {
                None => {
                    by_seq.insert(s.seq, (s.cmid, s.msg_id, s.op));
                }
                Some(&(cmid, msg_id, op)) => {
                    let differs = cmid != s.cmid
                        || matches!((msg_id, s.msg_id), (Some(a), Some(b)) if a != b);
                    if differs {
                        acc.add_once(
                            format!("reuse {conv} {}", s.seq),
                            anomaly(
                                "reuse",
                                conv,
                                Some(s.seq),
                                Some(s.cmid),
                                vec![op, s.op],
                                format!(
                                    "seq {} holds two messages: {cmid}/{} (op {op}) and {}/{} (op {})",
                                    s.seq,
                                    msg_id.unwrap_or("?"),
                                    s.cmid,
                                    s.msg_id.unwrap_or("?"),
                                    s.op
                                ),
                            ),
                        );
                    }
                }
            }
            match cmid_seq.get(&(conv, s.cmid)) {
                None => {
                    cmid_seq.insert((conv, s.cmid), (s.seq, s.op));
                }
                Some(&(seq, op)) if seq != s.seq => {
                    acc.add_once(
                        format!("dup {conv} {}", s.cmid),
                        anomaly(
                            "duplicated",
                            conv,
                            Some(s.seq),
                            Some(s.cmid),
                            vec![op, s.op],
                            format!("client_msg_id {} seen at seq {seq} (op {op}) and at seq {} (op {})", s.cmid, s.seq, s.op),
                        ),
                    );
                }
                _ => {}
            }
            // Membership events carry client_msg_id = msg_id; the workload makes none.
            let is_event = s.msg_id == Some(s.cmid);
            if !is_event && !sent_cmids.contains(&(conv, s.cmid)) {
                acc.add_once(
                    format!("phantom {conv} {}", s.cmid),
                    anomaly(
                        "phantom",
                        conv,
                        Some(s.seq),
                        Some(s.cmid),
                        vec![s.op],
                        format!(
                            "message {} at seq {} was never sent by the workload",
                            s.cmid, s.seq
                        ),
                    ),
                );
            }
        }
    }

    // ------------------------------------------------------------ shape of each read
    let check_run =
        |acc: &mut Acc, conv: &str, seqs: &[u64], descending: bool, op: u64, what: &str| {
            for w in seqs.windows(2) {
                let (a, b) = if descending {
                    (w[1], w[0])
                } else {
                    (w[0], w[1])
                };
                if b <= a {
                    acc.add(anomaly(
                        "order",
                        conv,
                        Some(b),
                        None,
                        vec![op],
                        format!(
                            "{what} lists seq {} after {} ({} order expected)",
                            w[1],
                            w[0],
                            if descending {
                                "descending"
                            } else {
                                "ascending"
                            }
                        ),
                    ));
                } else if b > a + 1 {
                    acc.add(anomaly(
                        "gap",
                        conv,
                        Some(a + 1),
                        None,
                        vec![op],
                        format!(
                            "{what} jumps from seq {a} to {b}: seqs {}..{} missing",
                            a + 1,
                            b - 1
                        ),
                    ));
                }
            }
        };
    for op in &ops {
        if op.ty != Type::Ok {
            continue;
        }
        match op.f {
            F::History => {
                let conv = op.conv.unwrap_or("?");
                let seqs: Vec<u64> = msgs(op.value).iter().map(|m| m.seq).collect();
                check_run(&mut acc, conv, &seqs, true, op.op_id, "history page");
                let has_more = op.value.and_then(|v| v.has_more).unwrap_or(false);
                if let Some(min) = seqs.iter().copied().min() {
                    if !has_more && min != 1 {
                        acc.add(anomaly(
                            "gap",
                            conv,
                            Some(1),
                            None,
                            vec![op.op_id],
                            format!("history page ends at seq {min} with has_more=false: seqs 1..{} missing", min - 1),
                        ));
                    }
                }
            }
            F::Sync => {
                for e in entries(op.value) {
                    let Some(ms) = e.messages.as_deref() else {
                        continue;
                    };
                    let mut seqs = vec![e.from_seq];
                    seqs.extend(ms.iter().map(|m| m.seq));
                    if ms.is_empty() {
                        continue;
                    }
                    check_run(
                        &mut acc,
                        &e.conversation,
                        &seqs,
                        false,
                        op.op_id,
                        "sync entry (from its requested seq)",
                    );
                }
            }
            F::FinalRead => {
                let conv = op.conv.unwrap_or("?");
                let mut seqs = vec![0];
                seqs.extend(msgs(op.value).iter().map(|m| m.seq));
                check_run(
                    &mut acc,
                    conv,
                    &seqs,
                    false,
                    op.op_id,
                    &format!("final read on {}", op.node.unwrap_or("?")),
                );
            }
            _ => {}
        }
    }

    // ------------------------------------------------------------ pushes per connection
    // (conn, conversation) -> [(seq, op id, time)] in arrival order.
    let mut pushes: BTreeMap<(u64, &str), Vec<Stamped>> = BTreeMap::new();
    for op in &ops {
        if op.f == F::Push && op.ty == Type::Ok {
            if let (Some(conn), Some(conv)) = (op.conn, op.conv) {
                let list = pushes.entry((conn, conv)).or_default();
                for m in msgs(op.value) {
                    list.push((m.seq, op.op_id, op.complete_ns));
                    stats.push_messages += 1;
                }
            }
        }
    }
    // What each connection learned otherwise: own acks and reads.
    let mut conn_seen: HashMap<(u64, &str), HashSet<u64>> = HashMap::new();
    // Ok syncs per connection: (invoke time, op id, entries).
    let mut conn_syncs: HashMap<u64, Vec<SyncAt>> = HashMap::new();
    for op in &ops {
        if op.ty != Type::Ok {
            continue;
        }
        let Some(conn) = op.conn else { continue };
        match op.f {
            F::Send | F::LateAck => {
                if let (Some(conv), Some(seq)) = (op.conv, op.value.and_then(|v| v.seq)) {
                    conn_seen.entry((conn, conv)).or_default().insert(seq);
                }
            }
            F::History => {
                if let Some(conv) = op.conv {
                    conn_seen
                        .entry((conn, conv))
                        .or_default()
                        .extend(msgs(op.value).iter().map(|m| m.seq));
                }
            }
            F::Sync => {
                for e in entries(op.value) {
                    conn_seen
                        .entry((conn, &e.conversation))
                        .or_default()
                        .extend(e.messages.as_deref().unwrap_or(&[]).iter().map(|m| m.seq));
                }
                conn_syncs.entry(conn).or_default().push((
                    op.invoke_ns,
                    op.op_id,
                    entries(op.value),
                ));
            }
            _ => {}
        }
    }
    let empty = HashSet::new();
    for (&(conn, conv), list) in &pushes {
        let mut last: Option<(u64, u64)> = None;
        let seen = conn_seen.get(&(conn, conv)).unwrap_or(&empty);
        for &(seq, op, t) in list {
            if let Some((prev, prev_op)) = last {
                if seq <= prev {
                    acc.add(anomaly(
                        "order",
                        conv,
                        Some(seq),
                        None,
                        vec![prev_op, op],
                        format!("connection {conn} got push seq {seq} after seq {prev}"),
                    ));
                    continue;
                }
                for x in prev + 1..seq {
                    if seen.contains(&x) {
                        // The connection's own send, or filled by a read on it.
                        stats.push_gaps_filled += 1;
                        continue;
                    }
                    // Did the client later ask this connection for x (a sync from below x)?
                    let covering = conn_syncs.get(&conn).and_then(|syncs| {
                        syncs.iter().find(|(at, _, es)| {
                            *at >= t
                                && es.iter().any(|e| {
                                    e.conversation == conv
                                        && e.from_seq < x
                                        && e.messages.as_deref().is_some_and(|ms| {
                                            !e.has_more.unwrap_or(false)
                                                || ms.iter().any(|m| m.seq >= x)
                                        })
                                })
                        })
                    });
                    match covering {
                        Some(&(_, sync_op, _)) => acc.add(anomaly(
                            "connection-skip",
                            conv,
                            Some(x),
                            None,
                            vec![prev_op, op, sync_op],
                            format!("connection {conn}: pushes jumped from seq {prev} to {seq} over {x}, and sync op {sync_op} did not fill it"),
                        )),
                        None => stats.push_gaps_unfilled_no_chance += 1,
                    }
                }
            }
            last = Some((seq, op));
        }
    }

    // ------------------------------------------------------------ final reads, lost
    // (conversation, node) -> the last ok final read.
    let mut finals: BTreeMap<&str, BTreeMap<&str, &Op>> = BTreeMap::new();
    for op in &ops {
        if op.f == F::FinalRead && op.ty == Type::Ok {
            if let (Some(conv), Some(node)) = (op.conv, op.node) {
                finals.entry(conv).or_default().insert(node, op);
            }
        }
    }
    // A node that could not serve a conversation's final read (after healing and waiting
    // for /ready): the cluster did not recover, and nothing can be said of that replica.
    let mut final_fails: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for op in &ops {
        if op.f == F::FinalRead && op.ty != Type::Ok {
            if let (Some(conv), Some(node)) = (op.conv, op.node) {
                if !finals.get(conv).is_some_and(|m| m.contains_key(node)) {
                    final_fails.entry((conv, node)).or_default().push(op.op_id);
                }
            }
        }
    }
    for ((conv, node), op_ids) in final_fails {
        let errors: BTreeSet<&str> = ops
            .iter()
            .filter(|o| op_ids.contains(&o.op_id))
            .filter_map(|o| o.error)
            .collect();
        acc.add(anomaly(
            "unrecovered",
            conv,
            None,
            None,
            op_ids.clone(),
            format!(
                "no final read of the conversation through {node} succeeded after healing ({} tries: {})",
                op_ids.len(),
                errors.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    // Members whose /ready was not 200 within the wait after the final heal.
    for op in ops.iter().filter(|o| o.f == F::Ready) {
        let Some(obj) = op
            .value
            .and_then(|v| v.raw.as_ref())
            .and_then(|r| r.as_object())
        else {
            continue;
        };
        let stuck: Vec<&str> = obj
            .iter()
            .filter(|(_, ok)| ok.as_bool() == Some(false))
            .map(|(n, _)| n.as_str())
            .collect();
        if !stuck.is_empty() {
            acc.add(Anomaly {
                class: "unrecovered",
                conversation: None,
                seq: None,
                client_msg_id: None,
                op_ids: vec![op.op_id],
                message: format!(
                    "GET /ready was not 200 on {} within the recovery wait after the final heal",
                    stuck.join(",")
                ),
            });
        }
    }
    let convs: BTreeSet<&str> = sends.keys().map(|(c, _)| *c).collect();
    if finals.is_empty() && !convs.is_empty() {
        report.harness_error =
            Some("no successful final read: lost writes cannot be judged".into());
    }
    for conv in &convs {
        if !finals.contains_key(conv) && !finals.is_empty() {
            report
                .notes
                .push(format!("no final read of conversation {conv}"));
        }
    }
    for (conv, by_node) in &finals {
        let mut contents: BTreeMap<&str, HashMap<&str, u64>> = BTreeMap::new();
        for (node, op) in by_node {
            let ms = msgs(op.value);
            stats
                .final_reads
                .entry(conv.to_string())
                .or_default()
                .insert(
                    node.to_string(),
                    ms.iter().map(|m| m.seq).max().unwrap_or(0),
                );
            contents.insert(
                node,
                ms.iter()
                    .map(|m| (m.client_msg_id.as_str(), m.seq))
                    .collect(),
            );
        }
        // Final reads happen after healing and quiescence: they must all agree.
        let longest = by_node
            .iter()
            .max_by_key(|(_, op)| msgs(op.value).len())
            .map(|(n, op)| (*n, *op));
        if let Some((ln, lop)) = longest {
            let lmax = msgs(lop.value).iter().map(|m| m.seq).max().unwrap_or(0);
            for (node, op) in by_node {
                let max = msgs(op.value).iter().map(|m| m.seq).max().unwrap_or(0);
                if max < lmax {
                    acc.add(anomaly(
                        "stale-read",
                        conv,
                        Some(max + 1),
                        None,
                        vec![op.op_id, lop.op_id],
                        format!("final read on {node} ends at seq {max}, on {ln} at seq {lmax}"),
                    ));
                }
            }
        }
        for s in sends.values().filter(|s| s.conv == *conv) {
            let Some((seq, acked_at, ack_op)) = s.acked else {
                continue;
            };
            for (node, c) in &contents {
                // Only acks that came before the final read started must be in it.
                if !c.contains_key(s.cmid) && acked_at < by_node[node].invoke_ns {
                    acc.add(anomaly(
                        "lost",
                        conv,
                        Some(seq),
                        Some(s.cmid),
                        vec![ack_op, by_node[node].op_id],
                        format!("{} was acked at seq {seq} (op {ack_op}) but the final read on {node} lacks it", s.cmid),
                    ));
                }
            }
        }
        // G4: what a client saw (push or read) must be committed, so in the final reads.
        let in_final: HashSet<&str> = contents.values().flat_map(|c| c.keys().copied()).collect();
        for op in ops.iter().filter(|o| o.ty == Type::Ok) {
            let seen: Vec<&Msg> = match op.f {
                F::History | F::Push if op.conv == Some(conv) => msgs(op.value).iter().collect(),
                F::Sync => entries(op.value)
                    .iter()
                    .filter(|e| e.conversation == *conv)
                    .flat_map(|e| e.messages.as_deref().unwrap_or(&[]))
                    .collect(),
                _ => continue,
            };
            for m in seen {
                let is_event = m.msg_id.as_deref() == Some(m.client_msg_id.as_str());
                if is_event || in_final.contains(m.client_msg_id.as_str()) {
                    continue;
                }
                acc.add_once(
                    format!("uncommitted {conv} {}", m.client_msg_id),
                    anomaly(
                        "uncommitted",
                        conv,
                        Some(m.seq),
                        Some(&m.client_msg_id),
                        vec![op.op_id],
                        format!(
                            "{:?} op {} showed {} at seq {}, which no final read holds",
                            op.f, op.op_id, m.client_msg_id, m.seq
                        ),
                    ),
                );
            }
        }
    }

    // ------------------------------------------------------------ stale reads
    // Per conversation: acks by completion time with the running max seq.
    let mut acks: HashMap<&str, Vec<(u64, u64, u64)>> = HashMap::new();
    for op in &ops {
        if matches!(op.f, F::Send | F::LateAck) && op.ty == Type::Ok {
            if let (Some(conv), Some(seq)) = (op.conv, op.value.and_then(|v| v.seq)) {
                acks.entry(conv)
                    .or_default()
                    .push((op.complete_ns, seq, op.op_id));
            }
        }
    }
    let mut prefix: HashMap<&str, Vec<(u64, u64, u64)>> = HashMap::new();
    for (conv, mut list) in acks {
        list.sort();
        let mut best = (0u64, 0u64);
        let p = list
            .into_iter()
            .map(|(t, seq, op)| {
                if seq > best.0 {
                    best = (seq, op);
                }
                (t, best.0, best.1)
            })
            .collect();
        prefix.insert(conv, p);
    }
    // The highest acked seq (and its op) completed strictly before `t`.
    let acked_before = |conv: &str, t: u64| -> Option<(u64, u64)> {
        let p = prefix.get(conv)?;
        let idx = p.partition_point(|&(ct, _, _)| ct < t);
        (idx > 0).then(|| (p[idx - 1].1, p[idx - 1].2))
    };
    for op in &ops {
        if op.ty != Type::Ok {
            continue;
        }
        match op.f {
            F::History | F::FinalRead => {
                let Some(conv) = op.conv else { continue };
                if op.f == F::History && op.invoke_value.and_then(|v| v.before_seq).is_some() {
                    continue;
                }
                let max = msgs(op.value).iter().map(|m| m.seq).max().unwrap_or(0);
                if let Some((s, send_op)) = acked_before(conv, op.invoke_ns) {
                    if s > max {
                        acc.add(anomaly(
                            "stale-read",
                            conv,
                            Some(s),
                            None,
                            vec![send_op, op.op_id],
                            format!("{} op {} started after seq {s} was acked (op {send_op}) but its newest message is seq {max}", op.f.name(), op.op_id),
                        ));
                    }
                }
            }
            F::Sync => {
                for e in entries(op.value) {
                    if e.error.is_some() {
                        continue;
                    }
                    let max_msg = e
                        .messages
                        .as_deref()
                        .unwrap_or(&[])
                        .iter()
                        .map(|m| m.seq)
                        .max()
                        .unwrap_or(e.from_seq);
                    let Some((s, send_op)) = acked_before(&e.conversation, op.invoke_ns) else {
                        continue;
                    };
                    let last_seq = e.last_seq.unwrap_or(max_msg);
                    let complete = !e.has_more.unwrap_or(false);
                    if last_seq < s || (complete && max_msg.max(e.from_seq) < s) {
                        acc.add(anomaly(
                            "stale-read",
                            &e.conversation,
                            Some(s),
                            None,
                            vec![send_op, op.op_id],
                            format!(
                                "sync op {} started after seq {s} was acked (op {send_op}) but answered last_seq {last_seq}, messages up to {max_msg}, has_more {}",
                                op.op_id, !complete
                            ),
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    // ------------------------------------------------------------ real-time order of sends
    // A send acked before another was first invoked must have the lower seq.
    let mut by_conv: BTreeMap<&str, Vec<&Send>> = BTreeMap::new();
    for s in sends.values() {
        if s.acked.is_some() && s.first_invoke != u64::MAX {
            by_conv.entry(s.conv).or_default().push(s);
        }
    }
    for (conv, list) in by_conv {
        let mut done: Vec<(u64, u64, u64)> = list
            .iter()
            .map(|s| (s.acked.unwrap().1, s.acked.unwrap().0, s.acked.unwrap().2))
            .collect();
        done.sort();
        let mut started: Vec<&Send> = list.clone();
        started.sort_by_key(|s| s.first_invoke);
        let mut j = 0;
        let mut best: Option<(u64, u64)> = None; // (seq, op)
        for b in started {
            while j < done.len() && done[j].0 < b.first_invoke {
                if best.is_none_or(|(s, _)| done[j].1 > s) {
                    best = Some((done[j].1, done[j].2));
                }
                j += 1;
            }
            let (bseq, _, bop) = b.acked.unwrap();
            if let Some((aseq, aop)) = best {
                if aseq >= bseq && aop != bop {
                    acc.add(anomaly(
                        "order",
                        conv,
                        Some(bseq),
                        Some(b.cmid),
                        vec![aop, bop],
                        format!("seq {aseq} was acked (op {aop}) before {} was first sent, yet {} got seq {bseq} (op {bop})", b.cmid, b.cmid),
                    ));
                }
            }
        }
    }

    // ------------------------------------------------------------ recovered
    for s in sends.values() {
        if s.acked.is_some() || s.first_invoke == u64::MAX {
            continue;
        }
        match cmid_seq.get(&(s.conv, s.cmid)) {
            Some(&(seq, _)) => {
                let last = s
                    .attempts
                    .iter()
                    .map(|&i| &ops[i])
                    .filter(|o| o.f == F::Send)
                    .max_by_key(|o| o.invoke_ns);
                report.recovered.push(Recovered {
                    conversation: s.conv.to_string(),
                    client_msg_id: s.cmid.to_string(),
                    seq,
                    last: last.map(|o| type_name(o.ty)).unwrap_or("info").to_string(),
                    op_ids: s.attempts.iter().map(|&i| ops[i].op_id).collect(),
                });
            }
            None => stats.sends_unacked_absent += 1,
        }
    }
    stats.sends_unacked_stored = report.recovered.len() as u64;
    report.recovered_count = report.recovered.len();
    report.recovered.truncate(LIST_LIMIT);

    // ------------------------------------------------------------ replicas diverge
    let checksums: Vec<&Op> = ops.iter().filter(|o| o.f == F::Checksum).collect();
    if checksums.is_empty() {
        report.notes.push("replica checksums: not recorded".into());
    }
    for op in checksums {
        let Some(raw) = op.value.and_then(|v| v.raw.as_ref()) else {
            report.notes.push(format!(
                "replica checksums: {}",
                op.error.unwrap_or("no answer")
            ));
            continue;
        };
        // raw = { node: {groups:[{group, applied_index, checksum}]} | null }
        let mut groups: BTreeMap<String, Vec<(String, u64, String)>> = BTreeMap::new();
        let mut answered = 0;
        if let Some(obj) = raw.as_object() {
            for (node, ans) in obj {
                let Some(gs) = ans.get("groups").and_then(|g| g.as_array()) else {
                    continue;
                };
                answered += 1;
                for g in gs {
                    let group = g["group"].to_string();
                    let idx = g["applied_index"].as_u64().unwrap_or(0);
                    let sum = match &g["checksum"] {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    groups
                        .entry(group)
                        .or_default()
                        .push((node.clone(), idx, sum));
                }
            }
        }
        if answered == 0 {
            report.notes.push(format!(
                "replica checksums: skipped ({})",
                op.error.unwrap_or("no node answered /admin/checksum")
            ));
            continue;
        }
        let mut compared = 0;
        for (group, reps) in &groups {
            let mut by_index: BTreeMap<u64, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
            for (node, idx, sum) in reps {
                by_index
                    .entry(*idx)
                    .or_default()
                    .entry(sum.as_str())
                    .or_default()
                    .push(node.as_str());
            }
            if by_index.len() > 1 {
                report.notes.push(format!(
                    "group {group}: replicas at different applied indexes after quiescence: {:?}",
                    reps.iter()
                        .map(|(n, i, _)| format!("{n}@{i}"))
                        .collect::<Vec<_>>()
                ));
            }
            for (idx, sums) in by_index {
                compared += 1;
                if sums.len() > 1 {
                    acc.add(Anomaly {
                        class: "diverge",
                        conversation: None,
                        seq: None,
                        client_msg_id: None,
                        op_ids: vec![op.op_id],
                        message: format!(
                            "group {group} at applied index {idx}: replicas differ: {sums:?}"
                        ),
                    });
                }
            }
        }
        report.notes.push(format!(
            "replica checksums: {answered} nodes answered, {compared} (group, index) sets compared"
        ));
    }

    // ------------------------------------------------------------ availability
    let mut windows: Vec<Window> = Vec::new();
    let mut open: Option<Window> = None;
    let mut starts: HashMap<u64, ()> = HashMap::new();
    for op in ops.iter().filter(|o| o.f == F::Nemesis) {
        let v = op.value.or(op.invoke_value);
        let action = v.and_then(|v| v.action.as_deref()).unwrap_or("");
        match (action, op.ty) {
            ("start", Type::Info) | ("start", Type::Ok) => {
                starts.insert(op.op_id, ());
                open = Some(Window {
                    fault: v.and_then(|v| v.fault.clone()).unwrap_or_default(),
                    targets: v.and_then(|v| v.targets.clone()).unwrap_or_default(),
                    start_s: op.invoke_ns as f64 / 1e9,
                    ..Default::default()
                });
            }
            ("stop", _) => {
                if let Some(mut w) = open.take() {
                    w.end_s = if op.completed && op.complete_ns != u64::MAX {
                        op.complete_ns
                    } else {
                        op.invoke_ns
                    } as f64
                        / 1e9;
                    windows.push(w);
                }
            }
            _ => {}
        }
    }
    if let Some(mut w) = open.take() {
        w.end_s = stats.duration_s;
        windows.push(w);
    }
    let send_ops: Vec<&Op> = ops
        .iter()
        .filter(|o| o.f == F::Send && o.process >= 0)
        .collect();
    let mut ok_by_conv: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for o in &send_ops {
        if o.ty == Type::Ok {
            if let Some(c) = o.conv {
                ok_by_conv.entry(c).or_default().push(o.complete_ns);
            }
        }
    }
    for v in ok_by_conv.values_mut() {
        v.sort();
    }
    let count_into = |w: &mut Window, from: f64, to: f64| {
        for o in &send_ops {
            let t = o.invoke_ns as f64 / 1e9;
            if t >= from && t < to {
                w.sends += 1;
                match o.ty {
                    Type::Ok => w.ok += 1,
                    Type::Fail => w.fail += 1,
                    _ => w.info += 1,
                }
            }
        }
        if w.sends > 0 {
            w.unavailable_fraction = (w.fail + w.info) as f64 / w.sends as f64;
        }
    };
    // Recovery is timed per shard group when the history says which group each
    // conversation is in: the first ok send to any conversation of the group.
    let shard_of: HashMap<&str, String> = ops
        .iter()
        .filter(|o| o.f == F::Shards)
        .filter_map(|o| o.value.and_then(|v| v.raw.as_ref()))
        .filter_map(|raw| raw.as_object())
        .flat_map(|m| {
            m.iter()
                .filter_map(|(c, g)| Some((c.as_str(), format!("group {}", g.as_u64()?))))
        })
        .collect();
    for w in &mut windows {
        let (from, to) = (w.start_s, w.end_s);
        count_into(w, from, to);
        let heal_ns = (w.end_s * 1e9) as u64;
        for (conv, oks) in &ok_by_conv {
            let i = oks.partition_point(|&t| t < heal_ns);
            if let Some(&t) = oks.get(i) {
                let key = shard_of
                    .get(conv)
                    .cloned()
                    .unwrap_or_else(|| conv.to_string());
                let ms = (t - heal_ns) as f64 / 1e6;
                let e = w.heal_to_first_ok_ms.entry(key).or_insert(ms);
                *e = e.min(ms);
            }
        }
        w.heal_to_first_ok_max_ms = w
            .heal_to_first_ok_ms
            .values()
            .copied()
            .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.max(x))));
    }
    // Outside every window: the healthy baseline.
    let mut healthy = Window {
        fault: "none".into(),
        ..Default::default()
    };
    for o in &send_ops {
        let t = o.invoke_ns as f64 / 1e9;
        if windows.iter().any(|w| t >= w.start_s && t < w.end_s) {
            continue;
        }
        healthy.sends += 1;
        match o.ty {
            Type::Ok => healthy.ok += 1,
            Type::Fail => healthy.fail += 1,
            _ => healthy.info += 1,
        }
    }
    let mut summary: BTreeMap<String, FaultSummary> = BTreeMap::new();
    if healthy.sends > 0 {
        summary.insert(
            "none".into(),
            FaultSummary {
                windows: 0,
                sends: healthy.sends,
                ok: healthy.ok,
                fail: healthy.fail,
                info: healthy.info,
                unavailable_fraction: (healthy.fail + healthy.info) as f64 / healthy.sends as f64,
                ..Default::default()
            },
        );
    }
    for w in &windows {
        let s = summary.entry(w.fault.clone()).or_default();
        s.windows += 1;
        s.sends += w.sends;
        s.ok += w.ok;
        s.fail += w.fail;
        s.info += w.info;
        if let Some(m) = w.heal_to_first_ok_max_ms {
            s.heal_to_first_ok_max_ms = Some(s.heal_to_first_ok_max_ms.map_or(m, |x| x.max(m)));
        }
    }
    for (fault, s) in summary.iter_mut() {
        if s.sends > 0 {
            s.unavailable_fraction = (s.fail + s.info) as f64 / s.sends as f64;
        }
        let maxes: Vec<f64> = windows
            .iter()
            .filter(|w| &w.fault == fault)
            .filter_map(|w| w.heal_to_first_ok_max_ms)
            .collect();
        if !maxes.is_empty() {
            s.heal_to_first_ok_mean_ms = Some(maxes.iter().sum::<f64>() / maxes.len() as f64);
        }
    }
    report.windows = windows;
    report.availability = summary;

    // ------------------------------------------------------------ latency
    let mut lat: Vec<f64> = send_ops
        .iter()
        .filter(|o| o.ty == Type::Ok)
        .map(|o| (o.complete_ns - o.invoke_ns) as f64 / 1e6)
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if !lat.is_empty() {
        for (name, q) in [("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)] {
            let i = ((lat.len() as f64 - 1.0) * q).round() as usize;
            stats
                .send_latency_ms
                .insert(name.into(), (lat[i] * 1000.0).round() / 1000.0);
        }
    }

    // ------------------------------------------------------------ wrap up
    for class in CLASSES {
        let list = acc.anomalies.remove(class).unwrap_or_default();
        report.counts.insert(class.to_string(), list.len());
        if !list.is_empty() {
            report.anomalies.insert(
                class.to_string(),
                list.into_iter().take(LIST_LIMIT).collect(),
            );
        }
    }
    report.stats = stats;
    report.valid = report.anomaly_total() == 0 && report.harness_error.is_none();
    report
}

#[cfg(test)]
#[path = "checker_tests.rs"]
mod tests;
