//! The load phase: one writer and one reader task per sender socket.
//!
//! The writer sends on a fixed schedule (open loop) or whenever a window slot is free (closed
//! loop); the reader matches acks and errors to pending sends by frame id. Both share the
//! sender's pending map under a mutex that only these two tasks take.

use crate::net::Ws;
use crate::stats::Stats;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout_at};
use tokio_tungstenite::tungstenite::Message;

/// After the window ends, in-flight sends get this long to be acked (their latency counts).
pub const DRAIN: Duration = Duration::from_secs(2);
/// Frames written per wake-up, so one sender catching up does not starve the others.
const BATCH: usize = 256;
/// Retry delay when a retryable error carries no `retry_after_ms`.
const DEFAULT_RETRY_MS: u64 = 100;
const MAX_RETRY_MS: u64 = 60_000;

/// Open-loop schedule of one sender: send k is intended at
/// `start + (k + index/senders) * interval`, so the senders together are evenly spaced.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start: Instant,
    offset_ns: f64,
    interval_ns: f64,
}

impl Schedule {
    pub fn new(start: Instant, rate_per_sender: f64, index: usize, senders: usize) -> Self {
        let interval_ns = 1e9 / rate_per_sender;
        Schedule {
            start,
            offset_ns: interval_ns * index as f64 / senders as f64,
            interval_ns,
        }
    }

    pub fn at(&self, k: u64) -> Instant {
        self.start + Duration::from_nanos((self.offset_ns + k as f64 * self.interval_ns) as u64)
    }
}

pub struct SenderConfig {
    pub index: usize,
    /// The conversation id, already JSON-quoted.
    pub conversation_json: String,
    /// `client_msg_id` = prefix + k: unique per run and sender.
    pub client_msg_id_prefix: String,
    pub body_json: Arc<str>,
    pub schedule: Option<Schedule>,
    /// Most sends outstanding (pending or awaiting retry) at once.
    pub window: usize,
}

impl SenderConfig {
    fn frame(&self, k: u64) -> String {
        format!(
            r#"{{"type":"send","id":{k},"conversation_id":{},"client_msg_id":"{}{k}","body":{}}}"#,
            self.conversation_json, self.client_msg_id_prefix, self.body_json
        )
    }
}

#[derive(Default)]
struct State {
    /// Frame id k → the instant send k was scheduled.
    pending: HashMap<u64, Instant>,
    /// (when to resend, k) for sends that got a retryable error.
    retries: BTreeSet<(Instant, u64)>,
    dead: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer when a window slot frees up or a retry is queued.
    wake: Notify,
}

/// Starts the tasks of one sender; they end at `stop` (the reader after draining).
pub fn spawn_sender(
    ws: Ws,
    cfg: SenderConfig,
    stats: Arc<Stats>,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<u64>> {
    let (sink, stream) = ws.split();
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Notify::new(),
    });
    let cfg = Arc::new(cfg);
    vec![
        tokio::spawn(writer(
            sink,
            cfg.clone(),
            shared.clone(),
            stats.clone(),
            stop.clone(),
        )),
        tokio::spawn(reader(stream, cfg, shared, stats, stop)),
    ]
}

/// What the writer should do now: frame ids to send, and when to look again.
/// Once `draining`, only retries of earlier sends go out: they are part of the measured work.
fn plan(
    cfg: &SenderConfig,
    st: &mut State,
    next_k: &mut u64,
    now: Instant,
    draining: bool,
    stats: &Stats,
) -> (Vec<u64>, Option<Instant>) {
    let mut ks = Vec::new();
    // Retries first: they are the oldest sends.
    while ks.len() < BATCH {
        match st.retries.first() {
            Some(&(at, k)) if at <= now => {
                st.retries.pop_first();
                ks.push(k);
            }
            _ => break,
        }
    }
    while !draining && ks.len() < BATCH && st.pending.len() < cfg.window {
        let scheduled = match &cfg.schedule {
            Some(s) if s.at(*next_k) > now => break,
            Some(s) => s.at(*next_k),
            None => now,
        };
        if scheduled >= stats.measure_start {
            stats.sent.fetch_add(1, Relaxed);
        }
        stats.inflight.fetch_add(1, Relaxed);
        st.pending.insert(*next_k, scheduled);
        ks.push(*next_k);
        *next_k += 1;
    }
    let next_send = match &cfg.schedule {
        Some(s) if !draining && st.pending.len() < cfg.window => Some(s.at(*next_k)),
        _ => None,
    };
    let next_retry = st.retries.first().map(|&(at, _)| at);
    let wake_at = [next_send, next_retry].into_iter().flatten().min();
    (ks, wake_at)
}

async fn writer(
    mut sink: SplitSink<Ws, Message>,
    cfg: Arc<SenderConfig>,
    shared: Arc<Shared>,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let mut next_k = 0;
    let far = tokio::time::Instant::now() + Duration::from_secs(24 * 3600);
    let mut drain_until = None;
    loop {
        if drain_until.is_none() && *stop.borrow() {
            drain_until = Some(tokio::time::Instant::now() + DRAIN);
        }
        let (ks, wake_at) = {
            let mut st = shared.state.lock();
            if st.dead || (drain_until.is_some() && st.pending.is_empty()) {
                break;
            }
            let now = Instant::now();
            plan(
                &cfg,
                &mut st,
                &mut next_k,
                now,
                drain_until.is_some(),
                &stats,
            )
        };
        if !ks.is_empty() {
            for k in &ks {
                if sink.feed(Message::text(cfg.frame(*k))).await.is_err() {
                    return 0;
                }
            }
            if sink.flush().await.is_err() {
                return 0;
            }
            continue; // more may already be due
        }
        let wake_at = wake_at.map_or(far, tokio::time::Instant::from_std);
        tokio::select! {
            _ = sleep_until(wake_at.min(drain_until.unwrap_or(far))) => {}
            _ = shared.wake.notified() => {}
            changed = stop.changed(), if drain_until.is_none() => {
                if changed.is_err() {
                    drain_until = Some(tokio::time::Instant::now() + DRAIN);
                }
            }
        }
        if drain_until.is_some_and(|until| tokio::time::Instant::now() >= until) {
            break;
        }
    }
    let _ = sink.close().await;
    0
}

/// The fields of a server frame that the load phase looks at; everything else is skipped.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    id: Option<u64>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    retryable: Option<bool>,
    retry_after_ms: Option<u64>,
    ts: Option<i64>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn handle_frame(text: &str, cfg: &SenderConfig, shared: &Shared, stats: &Stats) {
    let Ok(f) = serde_json::from_str::<Incoming>(text) else {
        stats.on_error("client:unparsable_frame");
        return;
    };
    let now = Instant::now();
    match (f.kind.as_ref(), f.id) {
        ("ack", Some(k)) => {
            let scheduled = shared.state.lock().pending.remove(&k);
            if let Some(scheduled) = scheduled {
                stats.on_ack(cfg.index, scheduled, now);
                shared.wake.notify_one();
            }
        }
        ("error", id) => {
            stats.on_error(f.code.as_deref().unwrap_or("unknown"));
            let Some(k) = id else { return };
            let mut st = shared.state.lock();
            if !st.pending.contains_key(&k) {
                return;
            }
            if f.retryable == Some(true) {
                // Same frame id and client_msg_id: the server dedups, the latency keeps
                // counting from the original schedule.
                let delay = f
                    .retry_after_ms
                    .unwrap_or(DEFAULT_RETRY_MS)
                    .min(MAX_RETRY_MS);
                st.retries.insert((now + Duration::from_millis(delay), k));
            } else {
                st.pending.remove(&k);
                stats.inflight.fetch_sub(1, Relaxed);
            }
            drop(st);
            shared.wake.notify_one();
        }
        ("message", _) => stats.on_push(cfg.index, f.ts.map(|ts| now_ms() - ts)),
        ("reconnect", _) => stats.on_error("server:reconnect_push"),
        _ => {} // receipts, presence, typing, pongs
    }
}

/// Reads until the socket closes, or after `stop` until nothing is pending or DRAIN passed.
/// Returns the number of sends still unacked.
async fn reader(
    mut stream: SplitStream<Ws>,
    cfg: Arc<SenderConfig>,
    shared: Arc<Shared>,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let pending = |shared: &Shared| shared.state.lock().pending.len() as u64;
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        if drain_until.is_none() && *stop.borrow() {
            drain_until = Some(tokio::time::Instant::now() + DRAIN);
        }
        if drain_until.is_some() && pending(&shared) == 0 {
            break;
        }
        let next = match drain_until {
            Some(until) => match timeout_at(until, stream.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => tokio::select! {
                next = stream.next() => next,
                changed = stop.changed() => {
                    if changed.is_err() {
                        drain_until = Some(tokio::time::Instant::now() + DRAIN);
                    }
                    continue;
                }
            },
        };
        match next {
            Some(Ok(Message::Text(text))) => handle_frame(text.as_str(), &cfg, &shared, &stats),
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                stats.on_error("client:disconnected");
                shared.state.lock().dead = true;
                shared.wake.notify_one();
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    pending(&shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_interleave_evenly() {
        let start = Instant::now();
        // 1000/s over 4 senders: each every 4 ms, sender i offset by i ms.
        let s0 = Schedule::new(start, 250.0, 0, 4);
        let s3 = Schedule::new(start, 250.0, 3, 4);
        assert_eq!(s0.at(0), start);
        assert_eq!(s0.at(2) - start, Duration::from_millis(8));
        assert_eq!(s3.at(1) - start, Duration::from_millis(7));
    }

    #[test]
    fn plan_sends_what_is_due_within_the_window() {
        let start = Instant::now();
        let stats = Stats::new(start);
        let cfg = SenderConfig {
            index: 0,
            conversation_json: "\"c1\"".into(),
            client_msg_id_prefix: "r-0-".into(),
            body_json: "\"x\"".into(),
            schedule: Some(Schedule::new(start, 100.0, 0, 1)), // every 10 ms
            window: 3,
        };
        let (mut st, mut k) = (State::default(), 0);
        let (ks, wake) = plan(
            &cfg,
            &mut st,
            &mut k,
            start + Duration::from_millis(25),
            false,
            &stats,
        );
        assert_eq!(ks, vec![0, 1, 2]);
        assert_eq!(wake, None, "window full: wait for an ack");
        st.pending.remove(&0);
        let (ks, wake) = plan(
            &cfg,
            &mut st,
            &mut k,
            start + Duration::from_millis(25),
            false,
            &stats,
        );
        assert!(ks.is_empty());
        assert_eq!(wake, Some(start + Duration::from_millis(30)));
        let late = start + Duration::from_millis(50);
        let (ks, _) = plan(&cfg, &mut st, &mut k, late, false, &stats);
        assert_eq!(ks, vec![3]);
        assert_eq!(
            st.pending[&3],
            start + Duration::from_millis(30),
            "latency counts from the schedule"
        );
        st.pending.remove(&1);
        st.retries.insert((late, 2));
        let (ks, _) = plan(&cfg, &mut st, &mut k, late, true, &stats);
        assert_eq!(ks, vec![2], "draining: retries only, no new sends");
        assert_eq!(
            cfg.frame(3),
            r#"{"type":"send","id":3,"conversation_id":"c1","client_msg_id":"r-0-3","body":"x"}"#
        );
    }
}
