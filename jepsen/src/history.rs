//! The history: one JSON object per line, every operation as an `invoke` event followed by
//! one completion (`ok`, `fail` or `info` = indeterminate) with the same `op_id`. Observations
//! that nobody asked for (pushes, late acks) are single `ok` events.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// `process` of the nemesis' events.
pub const NEMESIS: i64 = -1;
/// `process` of the final reads and of the harness' own observations (checksums).
pub const HARNESS: i64 = -2;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Type {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum F {
    Send,
    History,
    Sync,
    Push,
    /// An `ack` that arrived after its send had been given up (recorded `info`).
    LateAck,
    FinalRead,
    Nemesis,
    /// `/admin/checksum` of every node after healing and quiescence.
    Checksum,
    /// Which members answered `/ready` 200 within the wait after the final heal
    /// (`value.raw` = {node: true/false}).
    Ready,
    /// The shard group of each conversation (`value.raw` = {conversation: group}).
    Shards,
}

impl F {
    pub fn name(self) -> &'static str {
        match self {
            F::Send => "send",
            F::History => "history",
            F::Sync => "sync",
            F::Push => "push",
            F::LateAck => "late-ack",
            F::FinalRead => "final-read",
            F::Nemesis => "nemesis",
            F::Checksum => "checksum",
            F::Ready => "ready",
            F::Shards => "shards",
        }
    }
}

/// A message as observed in a read or a push.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Msg {
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
    pub client_msg_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
}

/// One conversation's part of a `sync` (request side: `from_seq`; reply side: the rest).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct SyncEntry {
    pub conversation: String,
    pub from_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_more: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Msg>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Value {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
    /// send: the server's `ts` from the ack (ms; may be skewed by the clock-skew fault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Msg>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_more: Option<bool>,
    /// history: the `before_seq` asked for (none = newest page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_seq: Option<u64>,
    /// final-read: the conversation's last seq the reader saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<SyncEntry>>,
    /// nemesis: `start` or `stop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// checksum: the raw answers, per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Event {
    pub op_id: u64,
    pub process: i64,
    #[serde(rename = "type")]
    pub ty: Type,
    pub f: F,
    pub time_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The WebSocket connection (unique per run) the op used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// send: 1 for the first try of a client_msg_id, 2 for its first retry, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Event {
    pub fn new(op_id: u64, process: i64, ty: Type, f: F, time_ns: u64) -> Self {
        Event {
            op_id,
            process,
            ty,
            f,
            time_ns,
            node: None,
            conn: None,
            conversation: None,
            client_msg_id: None,
            attempt: None,
            value: None,
            error: None,
        }
    }
}

#[derive(Default, Debug)]
pub struct Counters {
    pub ok: AtomicU64,
    pub fail: AtomicU64,
    pub info: AtomicU64,
}

/// The recorder: cheap to clone, events go to a writer task in the order they are recorded.
#[derive(Clone)]
pub struct History {
    tx: mpsc::UnboundedSender<Event>,
    start: Instant,
    next_op: Arc<AtomicU64>,
    pub counters: Arc<Counters>,
}

impl History {
    /// Starts the writer; the returned handle finishes once every `History` clone is dropped.
    pub fn create(
        path: &Path,
        start: Instant,
    ) -> Result<(History, tokio::task::JoinHandle<Result<()>>)> {
        let file =
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let writer = tokio::task::spawn_blocking(move || -> Result<()> {
            let mut out = BufWriter::with_capacity(1 << 20, file);
            while let Some(ev) = rx.blocking_recv() {
                serde_json::to_writer(&mut out, &ev)?;
                out.write_all(b"\n")?;
                if rx.is_empty() {
                    out.flush()?;
                }
            }
            out.flush()?;
            Ok(())
        });
        Ok((
            History {
                tx,
                start,
                next_op: Arc::new(AtomicU64::new(1)),
                counters: Arc::new(Counters::default()),
            },
            writer,
        ))
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn next_op_id(&self) -> u64 {
        self.next_op.fetch_add(1, Ordering::Relaxed)
    }

    /// Records an event, stamping its time, and counts completions of client operations.
    pub fn record(&self, mut ev: Event) {
        ev.time_ns = self.now_ns();
        if ev.process >= 0 && matches!(ev.f, F::Send | F::History | F::Sync) {
            match ev.ty {
                Type::Ok => self.counters.ok.fetch_add(1, Ordering::Relaxed),
                Type::Fail => self.counters.fail.fetch_add(1, Ordering::Relaxed),
                Type::Info => self.counters.info.fetch_add(1, Ordering::Relaxed),
                Type::Invoke => 0,
            };
        }
        let _ = self.tx.send(ev);
    }

    /// Records the invocation and returns a template for its completion (same op id and
    /// identifying fields, no value).
    pub fn invoke(&self, ev: Event) -> Event {
        let op_id = self.next_op_id();
        let mut ev = ev;
        ev.op_id = op_id;
        ev.ty = Type::Invoke;
        let mut done = ev.clone();
        done.value = None;
        self.record(ev);
        done
    }

    pub fn complete(&self, mut done: Event, ty: Type, value: Option<Value>, error: Option<String>) {
        done.ty = ty;
        done.value = value;
        done.error = error;
        self.record(done);
    }

    /// A single-event observation (push, late ack).
    pub fn observe(&self, mut ev: Event) {
        ev.op_id = self.next_op_id();
        self.record(ev);
    }
}

pub fn read_history(path: &Path) -> Result<Vec<Event>> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut events = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let ev: Event = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a history event", path.display(), i + 1))?;
        events.push(ev);
    }
    Ok(events)
}
