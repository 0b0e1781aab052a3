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

#[derive(Default)]
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

/// Every logical send, keyed by (conversation, client_msg_id).
type Sends<'a> = BTreeMap<(&'a str, &'a str), Send<'a>>;
/// Every place each conversation's messages were seen, in history order.
type Observed<'a> = BTreeMap<&'a str, Vec<Seen<'a>>>;
/// (conversation, client_msg_id) -> (seq, op id) where it was first observed.
type FirstSeq<'a> = HashMap<(&'a str, &'a str), (u64, u64)>;
/// final reads[conversation][node] = the last ok final read.
type Finals<'a, 'o> = BTreeMap<&'a str, BTreeMap<&'a str, &'o Op<'a>>>;
/// (conn, conversation) -> [(seq, op id, time)] of its pushed messages in arrival order.
type Pushes<'a> = BTreeMap<(u64, &'a str), Vec<Stamped>>;

/// Judges a history: runs every anomaly check in a fixed order (the order each class lists
/// its anomalies in), then the allowed-but-reported recoveries, availability and latency.
pub fn check(events: &[Event]) -> Report {
    let ops = pair(events);
    let mut acc = Acc::default();
    let mut report = Report::default();
    let mut stats = op_counts(events, &ops);

    let sends = logical_sends(&ops);
    duplicated_acks(&ops, &sends, &mut acc);
    stats.sends_logical = sends
        .values()
        .filter(|s| s.first_invoke != u64::MAX)
        .count() as u64;
    stats.sends_acked = sends.values().filter(|s| s.acked.is_some()).count() as u64;

    let observed = observations(&ops);
    reuse(&observed, &mut acc);
    let first_seq = duplicated_observations(&observed, &mut acc);
    phantom(&observed, &sends, &mut acc);

    let runs = read_runs(&ops);
    gap_in_reads(&runs, &mut acc);
    order_in_reads(&runs, &mut acc);

    let pushes = pushes_per_connection(&ops, &mut stats);
    order_in_pushes(&pushes, &mut acc);
    connection_skip(&ops, &pushes, &mut acc, &mut stats);

    let finals = final_reads(&ops);
    unrecovered_final_reads(&ops, &finals, &mut acc);
    unrecovered_ready(&ops, &mut acc);
    missing_final_reads(&sends, &finals, &mut report);
    stats.final_reads = final_read_ends(&finals);
    stale_final_reads(&finals, &mut acc);
    lost(&sends, &finals, &mut acc);
    uncommitted(&ops, &finals, &mut acc);

    stale_reads(&ops, &mut acc);
    order_in_real_time(&sends, &mut acc);
    recovered(&ops, &sends, &first_seq, &mut report, &mut stats);
    diverge(&ops, &mut acc, &mut report.notes);
    availability(&ops, stats.duration_s, &mut report);
    stats.send_latency_ms = send_latency(&ops);
    wrap_up(acc, report, stats)
}

/// Counts ops per (f, type), distinct client connections and the history's duration.
fn op_counts(events: &[Event], ops: &[Op]) -> Stats {
    let mut stats = Stats {
        duration_s: events.iter().map(|e| e.time_ns).max().unwrap_or(0) as f64 / 1e9,
        ..Default::default()
    };
    for op in ops {
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
    stats
}

/// Groups the send and late-ack ops into logical sends, one per (conversation,
/// client_msg_id), each with its earliest ack.
fn logical_sends<'a>(ops: &[Op<'a>]) -> Sends<'a> {
    let mut sends: Sends = BTreeMap::new();
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
        for &i in &s.attempts {
            let op = &ops[i];
            if op.ty != Type::Ok {
                continue;
            }
            if let Some(seq) = op.value.and_then(|v| v.seq) {
                if s.acked.is_none_or(|(_, t, _)| op.complete_ns < t) {
                    s.acked = Some((seq, op.complete_ns, op.op_id));
                }
            }
        }
    }
    sends
}

/// `duplicated` (G3), from the acks: every ok attempt (send or late ack) of one
/// client_msg_id must carry the same seq.
fn duplicated_acks(ops: &[Op], sends: &Sends, acc: &mut Acc) {
    for s in sends.values() {
        let mut seqs: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for &i in &s.attempts {
            let op = &ops[i];
            if op.ty != Type::Ok {
                continue;
            }
            if let Some(seq) = op.value.and_then(|v| v.seq) {
                seqs.entry(seq).or_default().push(op.op_id);
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
}

/// Every place a (conversation, seq, message) was seen: ok acks, history pages, pushes,
/// syncs and final reads.
fn observations<'a>(ops: &[Op<'a>]) -> Observed<'a> {
    let mut observed: Observed = BTreeMap::new();
    for op in ops {
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
    observed
}

/// `reuse` (G2), from every observation: one seq of a conversation holds one message (the
/// same client_msg_id, and the same msg_id where both sides carry one). Once per seq.
fn reuse(observed: &Observed, acc: &mut Acc) {
    for (&conv, seen) in observed {
        let mut by_seq: HashMap<u64, (&str, Option<&str>, u64)> = HashMap::new();
        for s in seen {
            let Some(&(cmid, msg_id, op)) = by_seq.get(&s.seq) else {
                by_seq.insert(s.seq, (s.cmid, s.msg_id, s.op));
                continue;
            };
            let differs =
                cmid != s.cmid || matches!((msg_id, s.msg_id), (Some(a), Some(b)) if a != b);
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
}

/// `duplicated` (G3), from every observation: one client_msg_id is seen at one seq only.
/// Once per client_msg_id. Returns where each client_msg_id was first seen.
fn duplicated_observations<'a>(observed: &Observed<'a>, acc: &mut Acc) -> FirstSeq<'a> {
    let mut first_seq: FirstSeq = HashMap::new();
    for (&conv, seen) in observed {
        for s in seen {
            match first_seq.get(&(conv, s.cmid)) {
                None => {
                    first_seq.insert((conv, s.cmid), (s.seq, s.op));
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
        }
    }
    first_seq
}

/// `phantom`, from every observation: each message seen was sent by the workload.
/// Membership events (client_msg_id = msg_id; the workload makes none) are exempt. Once per
/// client_msg_id.
fn phantom(observed: &Observed, sends: &Sends, acc: &mut Acc) {
    for (&conv, seen) in observed {
        for s in seen {
            let is_event = s.msg_id == Some(s.cmid);
            if is_event || sends.contains_key(&(conv, s.cmid)) {
                continue;
            }
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

/// The seqs one read listed, in its order, for the checks of a read's shape.
struct Run<'a> {
    conv: &'a str,
    seqs: Vec<u64>,
    /// History pages are newest first; syncs and final reads oldest first.
    descending: bool,
    op: u64,
    what: String,
    /// A history page that said has_more=false: its oldest seq must be 1.
    reaches_start: bool,
}

/// The runs of seqs in ok history pages, sync entries (from the requested seq; entries
/// without messages are skipped) and final reads (from seq 0).
fn read_runs<'a>(ops: &[Op<'a>]) -> Vec<Run<'a>> {
    let mut runs = Vec::new();
    for op in ops.iter().filter(|o| o.ty == Type::Ok) {
        match op.f {
            F::History => runs.push(Run {
                conv: op.conv.unwrap_or("?"),
                seqs: msgs(op.value).iter().map(|m| m.seq).collect(),
                descending: true,
                op: op.op_id,
                what: "history page".to_string(),
                reaches_start: !op.value.and_then(|v| v.has_more).unwrap_or(false),
            }),
            F::Sync => {
                for e in entries(op.value) {
                    let Some(ms) = e.messages.as_deref() else {
                        continue;
                    };
                    if ms.is_empty() {
                        continue;
                    }
                    let mut seqs = vec![e.from_seq];
                    seqs.extend(ms.iter().map(|m| m.seq));
                    runs.push(Run {
                        conv: &e.conversation,
                        seqs,
                        descending: false,
                        op: op.op_id,
                        what: "sync entry (from its requested seq)".to_string(),
                        reaches_start: false,
                    });
                }
            }
            F::FinalRead => {
                let mut seqs = vec![0];
                seqs.extend(msgs(op.value).iter().map(|m| m.seq));
                runs.push(Run {
                    conv: op.conv.unwrap_or("?"),
                    seqs,
                    descending: false,
                    op: op.op_id,
                    what: format!("final read on {}", op.node.unwrap_or("?")),
                    reaches_start: false,
                });
            }
            _ => {}
        }
    }
    runs
}

impl Run<'_> {
    /// Each neighbouring pair as (listed first, listed second, older, newer).
    fn steps(&self) -> impl Iterator<Item = (u64, u64, u64, u64)> + '_ {
        self.seqs.windows(2).map(|w| {
            let (a, b) = if self.descending {
                (w[1], w[0])
            } else {
                (w[0], w[1])
            };
            (w[0], w[1], a, b)
        })
    }
}

/// `gap` (G5), from history pages, sync entries and final reads: consecutive messages of
/// one read have consecutive seqs, and a history page with has_more=false reaches seq 1.
fn gap_in_reads(runs: &[Run], acc: &mut Acc) {
    for run in runs {
        for (_, _, a, b) in run.steps() {
            if b > a + 1 {
                acc.add(anomaly(
                    "gap",
                    run.conv,
                    Some(a + 1),
                    None,
                    vec![run.op],
                    format!(
                        "{} jumps from seq {a} to {b}: seqs {}..{} missing",
                        run.what,
                        a + 1,
                        b - 1
                    ),
                ));
            }
        }
        let Some(min) = run.seqs.iter().copied().min() else {
            continue;
        };
        if run.reaches_start && min != 1 {
            acc.add(anomaly(
                "gap",
                run.conv,
                Some(1),
                None,
                vec![run.op],
                format!(
                    "history page ends at seq {min} with has_more=false: seqs 1..{} missing",
                    min - 1
                ),
            ));
        }
    }
}

/// `order` (G5), from history pages, sync entries and final reads: each read lists its
/// seqs strictly in its order (descending for history pages, ascending otherwise).
fn order_in_reads(runs: &[Run], acc: &mut Acc) {
    for run in runs {
        for (first, second, a, b) in run.steps() {
            if b <= a {
                acc.add(anomaly(
                    "order",
                    run.conv,
                    Some(b),
                    None,
                    vec![run.op],
                    format!(
                        "{} lists seq {second} after {first} ({} order expected)",
                        run.what,
                        if run.descending {
                            "descending"
                        } else {
                            "ascending"
                        }
                    ),
                ));
            }
        }
    }
}

/// The pushed messages of each (connection, conversation) in arrival order; counts them.
fn pushes_per_connection<'a>(ops: &[Op<'a>], stats: &mut Stats) -> Pushes<'a> {
    let mut pushes: Pushes = BTreeMap::new();
    for op in ops {
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
    pushes
}

/// One push measured against the newest push before it that moved forward.
struct PushStep {
    prev: u64,
    prev_op: u64,
    seq: u64,
    op: u64,
    at: u64,
}

/// The steps of one connection's pushes of one conversation: a push that does not move
/// forward is a step of its own but does not become the new reference.
fn push_steps(list: &[Stamped]) -> Vec<PushStep> {
    let mut steps = Vec::new();
    let mut last: Option<(u64, u64)> = None;
    for &(seq, op, at) in list {
        if let Some((prev, prev_op)) = last {
            steps.push(PushStep {
                prev,
                prev_op,
                seq,
                op,
                at,
            });
            if seq <= prev {
                continue;
            }
        }
        last = Some((seq, op));
    }
    steps
}

/// `order` (G5), from pushes: one connection gets one conversation's pushes in strictly
/// increasing seq order (a repeated seq counts too).
fn order_in_pushes(pushes: &Pushes, acc: &mut Acc) {
    for (&(conn, conv), list) in pushes {
        for st in push_steps(list).into_iter().filter(|st| st.seq <= st.prev) {
            acc.add(anomaly(
                "order",
                conv,
                Some(st.seq),
                None,
                vec![st.prev_op, st.op],
                format!(
                    "connection {conn} got push seq {} after seq {}",
                    st.seq, st.prev
                ),
            ));
        }
    }
}

/// What each connection learned other than by push: the seqs of its own acks and reads
/// per (conn, conversation), and its ok syncs (invoke time, op id, entries).
type Learned<'a> = (
    HashMap<(u64, &'a str), HashSet<u64>>,
    HashMap<u64, Vec<SyncAt<'a>>>,
);

/// Collects each connection's own acks, reads and syncs (see `Learned`).
fn learned_per_connection<'a>(ops: &[Op<'a>]) -> Learned<'a> {
    let mut conn_seen: HashMap<(u64, &str), HashSet<u64>> = HashMap::new();
    let mut conn_syncs: HashMap<u64, Vec<SyncAt>> = HashMap::new();
    for op in ops {
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
    (conn_seen, conn_syncs)
}

/// The first ok sync on the connection, invoked at or after `at`, that asked the
/// conversation from below `x` and answered through `x` (or claimed no more).
fn sync_covering<'s, 'a>(
    syncs: &'s [SyncAt<'a>],
    conv: &str,
    x: u64,
    at: u64,
) -> Option<&'s SyncAt<'a>> {
    syncs.iter().find(|(t, _, es)| {
        *t >= at
            && es.iter().any(|e| {
                e.conversation == conv
                    && e.from_seq < x
                    && e.messages.as_deref().is_some_and(|ms| {
                        !e.has_more.unwrap_or(false) || ms.iter().any(|m| m.seq >= x)
                    })
            })
    })
}

/// `connection-skip` (G4, G8), from pushes, acks, history pages and syncs per connection: a
/// seq that a connection's pushes stepped over must reach it some other way. Its own ack
/// or a read on it fills the gap (counted); a later sync from below that still lacks it is
/// the anomaly; no such sync at all is counted as no chance.
fn connection_skip(ops: &[Op], pushes: &Pushes, acc: &mut Acc, stats: &mut Stats) {
    let (conn_seen, conn_syncs) = learned_per_connection(ops);
    let empty = HashSet::new();
    for (&(conn, conv), list) in pushes {
        let seen = conn_seen.get(&(conn, conv)).unwrap_or(&empty);
        let syncs = conn_syncs.get(&conn).map(Vec::as_slice).unwrap_or(&[]);
        for st in push_steps(list).into_iter().filter(|st| st.seq > st.prev) {
            for x in st.prev + 1..st.seq {
                if seen.contains(&x) {
                    // The connection's own send, or filled by a read on it.
                    stats.push_gaps_filled += 1;
                    continue;
                }
                match sync_covering(syncs, conv, x, st.at) {
                    Some(&(_, sync_op, _)) => acc.add(anomaly(
                        "connection-skip",
                        conv,
                        Some(x),
                        None,
                        vec![st.prev_op, st.op, sync_op],
                        format!("connection {conn}: pushes jumped from seq {} to {} over {x}, and sync op {sync_op} did not fill it", st.prev, st.seq),
                    )),
                    None => stats.push_gaps_unfilled_no_chance += 1,
                }
            }
        }
    }
}

/// The last ok final read of each (conversation, node).
fn final_reads<'a, 'o>(ops: &'o [Op<'a>]) -> Finals<'a, 'o> {
    let mut finals: Finals = BTreeMap::new();
    for op in ops {
        if op.f == F::FinalRead && op.ty == Type::Ok {
            if let (Some(conv), Some(node)) = (op.conv, op.node) {
                finals.entry(conv).or_default().insert(node, op);
            }
        }
    }
    finals
}

/// `unrecovered`, from final reads: a node that never served a conversation's final read
/// (after healing and waiting for /ready) did not recover, and nothing can be said of that
/// replica.
fn unrecovered_final_reads(ops: &[Op], finals: &Finals, acc: &mut Acc) {
    let mut final_fails: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for op in ops {
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
}

/// `unrecovered`, from the ready events: every member's /ready answered 200 within the
/// wait after the final heal.
fn unrecovered_ready(ops: &[Op], acc: &mut Acc) {
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
}

/// No final read at all makes lost writes unjudgeable (a harness error); a conversation
/// that was sent to but never read at the end gets a note.
fn missing_final_reads(sends: &Sends, finals: &Finals, report: &mut Report) {
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
}

/// The newest seq of each final read, per conversation and node (for the stats).
fn final_read_ends(finals: &Finals) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut ends: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (conv, by_node) in finals {
        for (node, op) in by_node {
            ends.entry(conv.to_string()).or_default().insert(
                node.to_string(),
                msgs(op.value).iter().map(|m| m.seq).max().unwrap_or(0),
            );
        }
    }
    ends
}

/// `stale-read` (G7), from the final reads: they happen after healing and quiescence, so
/// every node's ends at the same seq as the longest one.
fn stale_final_reads(finals: &Finals, acc: &mut Acc) {
    for (conv, by_node) in finals {
        let longest = by_node
            .iter()
            .max_by_key(|(_, op)| msgs(op.value).len())
            .map(|(n, op)| (*n, *op));
        let Some((ln, lop)) = longest else { continue };
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
}

/// The client_msg_ids (with their seqs) of each node's final read of one conversation.
fn final_contents<'a>(
    by_node: &BTreeMap<&'a str, &Op<'a>>,
) -> BTreeMap<&'a str, HashMap<&'a str, u64>> {
    by_node
        .iter()
        .map(|(node, op)| {
            let c = msgs(op.value)
                .iter()
                .map(|m| (m.client_msg_id.as_str(), m.seq))
                .collect();
            (*node, c)
        })
        .collect()
}

/// `lost` (G1), from acks and final reads: a send acked before a node's final read started
/// is in that final read.
fn lost(sends: &Sends, finals: &Finals, acc: &mut Acc) {
    for (conv, by_node) in finals {
        let contents = final_contents(by_node);
        for s in sends.values().filter(|s| s.conv == *conv) {
            let Some((seq, acked_at, ack_op)) = s.acked else {
                continue;
            };
            for (node, c) in &contents {
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
    }
}

/// `uncommitted` (G4), from history pages, pushes, syncs and final reads: what a client saw
/// was committed, so some final read of the conversation holds it. Membership events are
/// exempt. Once per client_msg_id.
fn uncommitted(ops: &[Op], finals: &Finals, acc: &mut Acc) {
    for (conv, by_node) in finals {
        let contents = final_contents(by_node);
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
}

/// Per conversation: (completion time, highest seq acked so far, its op) over the ok acks,
/// sorted by completion time.
struct AckedPrefix<'a>(HashMap<&'a str, Vec<(u64, u64, u64)>>);

impl<'a> AckedPrefix<'a> {
    fn new(ops: &[Op<'a>]) -> Self {
        let mut acks: HashMap<&str, Vec<(u64, u64, u64)>> = HashMap::new();
        for op in ops {
            if matches!(op.f, F::Send | F::LateAck) && op.ty == Type::Ok {
                if let (Some(conv), Some(seq)) = (op.conv, op.value.and_then(|v| v.seq)) {
                    acks.entry(conv)
                        .or_default()
                        .push((op.complete_ns, seq, op.op_id));
                }
            }
        }
        let mut prefix = HashMap::new();
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
        AckedPrefix(prefix)
    }

    /// The highest acked seq (and its op) completed strictly before `t`.
    fn before(&self, conv: &str, t: u64) -> Option<(u64, u64)> {
        let p = self.0.get(conv)?;
        let idx = p.partition_point(|&(ct, _, _)| ct < t);
        (idx > 0).then(|| (p[idx - 1].1, p[idx - 1].2))
    }
}

/// `stale-read` (G7), from acks against newest history pages, final reads and syncs: a read
/// that started after seq s was acked shows s.
fn stale_reads(ops: &[Op], acc: &mut Acc) {
    let acked = AckedPrefix::new(ops);
    for op in ops.iter().filter(|o| o.ty == Type::Ok) {
        match op.f {
            F::History | F::FinalRead => stale_page(op, &acked, acc),
            F::Sync => stale_sync(op, &acked, acc),
            _ => {}
        }
    }
}

/// A newest history page or a final read that ends below a seq acked before it started.
/// Pages asked with before_seq are older pages and exempt.
fn stale_page(op: &Op, acked: &AckedPrefix, acc: &mut Acc) {
    let Some(conv) = op.conv else { return };
    if op.f == F::History && op.invoke_value.and_then(|v| v.before_seq).is_some() {
        return;
    }
    let max = msgs(op.value).iter().map(|m| m.seq).max().unwrap_or(0);
    let Some((s, send_op)) = acked.before(conv, op.invoke_ns) else {
        return;
    };
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

/// A sync entry whose last_seq is below a seq acked before the sync started, or that
/// claimed no more while its messages stop below it. Entries with an error are exempt.
fn stale_sync(op: &Op, acked: &AckedPrefix, acc: &mut Acc) {
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
        let Some((s, send_op)) = acked.before(&e.conversation, op.invoke_ns) else {
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

/// `order` (G6), from the logical sends: a send acked before another was first invoked has
/// the lower seq.
fn order_in_real_time(sends: &Sends, acc: &mut Acc) {
    let mut by_conv: BTreeMap<&str, Vec<&Send>> = BTreeMap::new();
    for s in sends.values() {
        if s.acked.is_some() && s.first_invoke != u64::MAX {
            by_conv.entry(s.conv).or_default().push(s);
        }
    }
    for (conv, list) in by_conv {
        // (ack time, seq, op) and (seq, op, first invoke) of every acked send.
        let mut done: Vec<(u64, u64, u64)> = Vec::new();
        let mut started: Vec<(u64, u64, u64, &str)> = Vec::new();
        for s in &list {
            let Some((seq, t, op)) = s.acked else {
                continue;
            };
            done.push((t, seq, op));
            started.push((s.first_invoke, seq, op, s.cmid));
        }
        done.sort();
        started.sort_by_key(|&(first_invoke, ..)| first_invoke);
        let mut j = 0;
        let mut best: Option<(u64, u64)> = None; // (seq, op)
        for (first_invoke, bseq, bop, cmid) in started {
            while j < done.len() && done[j].0 < first_invoke {
                if best.is_none_or(|(s, _)| done[j].1 > s) {
                    best = Some((done[j].1, done[j].2));
                }
                j += 1;
            }
            let Some((aseq, aop)) = best else { continue };
            if aseq >= bseq && aop != bop {
                acc.add(anomaly(
                    "order",
                    conv,
                    Some(bseq),
                    Some(cmid),
                    vec![aop, bop],
                    format!("seq {aseq} was acked (op {aop}) before {cmid} was first sent, yet {cmid} got seq {bseq} (op {bop})"),
                ));
            }
        }
    }
}

/// Allowed but reported: a send never acked that was observed anyway is recovered (listed
/// with its last attempt's outcome); one never observed counts as absent.
fn recovered(
    ops: &[Op],
    sends: &Sends,
    first_seq: &FirstSeq,
    report: &mut Report,
    stats: &mut Stats,
) {
    for s in sends.values() {
        if s.acked.is_some() || s.first_invoke == u64::MAX {
            continue;
        }
        let Some(&(seq, _)) = first_seq.get(&(s.conv, s.cmid)) else {
            stats.sends_unacked_absent += 1;
            continue;
        };
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
    stats.sends_unacked_stored = report.recovered.len() as u64;
    report.recovered_count = report.recovered.len();
    report.recovered.truncate(LIST_LIMIT);
}

/// One replica's answer to a checksum op: (node, applied index, checksum).
type ReplicaSum = (String, u64, String);

/// One checksum op's answers: how many nodes answered, and per group the (node, applied
/// index, checksum) of every replica. `raw` = { node: {groups:[{group, applied_index,
/// checksum}]} | null }.
fn checksum_groups(raw: &serde_json::Value) -> (usize, BTreeMap<String, Vec<ReplicaSum>>) {
    let mut groups: BTreeMap<String, Vec<ReplicaSum>> = BTreeMap::new();
    let mut answered = 0;
    let Some(obj) = raw.as_object() else {
        return (answered, groups);
    };
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
    (answered, groups)
}

/// `diverge`, from the checksum ops (after healing and quiescence): replicas of one group at
/// one applied index have one checksum. Replicas at different indexes are only a note;
/// checksums that were not recorded or not answered are notes too.
fn diverge(ops: &[Op], acc: &mut Acc, notes: &mut Vec<String>) {
    let checksums: Vec<&Op> = ops.iter().filter(|o| o.f == F::Checksum).collect();
    if checksums.is_empty() {
        notes.push("replica checksums: not recorded".into());
    }
    for op in checksums {
        let Some(raw) = op.value.and_then(|v| v.raw.as_ref()) else {
            notes.push(format!(
                "replica checksums: {}",
                op.error.unwrap_or("no answer")
            ));
            continue;
        };
        let (answered, groups) = checksum_groups(raw);
        if answered == 0 {
            notes.push(format!(
                "replica checksums: skipped ({})",
                op.error.unwrap_or("no node answered /admin/checksum")
            ));
            continue;
        }
        let mut compared = 0;
        for (group, reps) in &groups {
            compared += diverge_in_group(op.op_id, group, reps, acc, notes);
        }
        notes.push(format!(
            "replica checksums: {answered} nodes answered, {compared} (group, index) sets compared"
        ));
    }
}

/// Compares one group's replicas per applied index; returns how many index sets it compared.
fn diverge_in_group(
    op_id: u64,
    group: &str,
    reps: &[(String, u64, String)],
    acc: &mut Acc,
    notes: &mut Vec<String>,
) -> usize {
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
        notes.push(format!(
            "group {group}: replicas at different applied indexes after quiescence: {:?}",
            reps.iter()
                .map(|(n, i, _)| format!("{n}@{i}"))
                .collect::<Vec<_>>()
        ));
    }
    let compared = by_index.len();
    for (idx, sums) in by_index {
        if sums.len() > 1 {
            acc.add(Anomaly {
                class: "diverge",
                conversation: None,
                seq: None,
                client_msg_id: None,
                op_ids: vec![op_id],
                message: format!("group {group} at applied index {idx}: replicas differ: {sums:?}"),
            });
        }
    }
    compared
}

/// The client sends (not the harness' own), for availability and latency.
fn client_sends<'o, 'a>(ops: &'o [Op<'a>]) -> Vec<&'o Op<'a>> {
    ops.iter()
        .filter(|o| o.f == F::Send && o.process >= 0)
        .collect()
}

/// Availability, from nemesis events and client sends: the sends inside each fault window,
/// the time from each heal to the first ok send per shard group, the healthy baseline
/// outside every window, and a summary per fault.
fn availability(ops: &[Op], duration_s: f64, report: &mut Report) {
    let mut windows = fault_windows(ops, duration_s);
    let send_ops = client_sends(ops);
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
    let shard_of = shard_groups(ops);
    for w in &mut windows {
        let (from, to) = (w.start_s, w.end_s);
        count_sends(w, &send_ops, from, to);
        time_recovery(w, &ok_by_conv, &shard_of);
    }
    report.availability = fault_summary(&healthy_baseline(&send_ops, &windows), &windows);
    report.windows = windows;
}

/// The fault windows: from each nemesis start (info or ok) to the next stop (its completion
/// if it completed, else its invoke); a window still open ends with the history.
fn fault_windows(ops: &[Op], duration_s: f64) -> Vec<Window> {
    let mut windows: Vec<Window> = Vec::new();
    let mut open: Option<Window> = None;
    for op in ops.iter().filter(|o| o.f == F::Nemesis) {
        let v = op.value.or(op.invoke_value);
        let action = v.and_then(|v| v.action.as_deref()).unwrap_or("");
        match (action, op.ty) {
            ("start", Type::Info) | ("start", Type::Ok) => {
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
        w.end_s = duration_s;
        windows.push(w);
    }
    windows
}

/// Counts into `w` the sends invoked in [from, to) by outcome.
fn count_sends(w: &mut Window, send_ops: &[&Op], from: f64, to: f64) {
    for o in send_ops {
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
}

/// conversation -> "group N", from the shards events (empty when none was recorded).
fn shard_groups<'a>(ops: &[Op<'a>]) -> HashMap<&'a str, String> {
    ops.iter()
        .filter(|o| o.f == F::Shards)
        .filter_map(|o| o.value.and_then(|v| v.raw.as_ref()))
        .filter_map(|raw| raw.as_object())
        .flat_map(|m| {
            m.iter()
                .filter_map(|(c, g)| Some((c.as_str(), format!("group {}", g.as_u64()?))))
        })
        .collect()
}

/// Recovery is timed per shard group when the history says which group each conversation
/// is in (else per conversation): ms from the heal to the first ok send completed after it.
fn time_recovery(
    w: &mut Window,
    ok_by_conv: &BTreeMap<&str, Vec<u64>>,
    shard_of: &HashMap<&str, String>,
) {
    let heal_ns = (w.end_s * 1e9) as u64;
    for (conv, oks) in ok_by_conv {
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

/// The sends invoked outside every fault window, by outcome.
fn healthy_baseline(send_ops: &[&Op], windows: &[Window]) -> Window {
    let mut healthy = Window {
        fault: "none".into(),
        ..Default::default()
    };
    for o in send_ops {
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
    healthy
}

/// Per fault (and "none" for the healthy baseline): the windows' sends summed, the
/// unavailable fraction, and the max and mean of the windows' heal-to-first-ok maxima.
fn fault_summary(healthy: &Window, windows: &[Window]) -> BTreeMap<String, FaultSummary> {
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
    for w in windows {
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
    summary
}

/// p50, p95, p99 and max of the ok client sends' latency in ms (rounded to µs).
fn send_latency(ops: &[Op]) -> BTreeMap<String, f64> {
    let mut lat: Vec<f64> = client_sends(ops)
        .iter()
        .filter(|o| o.ty == Type::Ok)
        .map(|o| (o.complete_ns - o.invoke_ns) as f64 / 1e6)
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let mut out = BTreeMap::new();
    if !lat.is_empty() {
        for (name, q) in [("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)] {
            let i = ((lat.len() as f64 - 1.0) * q).round() as usize;
            out.insert(name.into(), (lat[i] * 1000.0).round() / 1000.0);
        }
    }
    out
}

/// Counts every class (listing at most LIST_LIMIT of each) and decides validity.
fn wrap_up(mut acc: Acc, mut report: Report, stats: Stats) -> Report {
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
