//! Shared counters and histograms, the per-second progress line, and the final report.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Histogram shards: senders record into shard (index mod SHARDS) so a thousand tasks do not
/// contend on one lock; readers merge the shards.
const SHARDS: usize = 16;
/// Error codes come from the server; cap the map so a buggy server cannot grow it unbounded.
const MAX_ERROR_CODES: usize = 32;
/// Latencies in microseconds, up to an hour, 3 significant digits.
const MAX_LATENCY_US: u64 = 3_600_000_000;

fn new_histogram() -> Histogram<u64> {
    // invariant: constant, valid bounds
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds")
}

struct Hists {
    ack: Histogram<u64>,
    delivery: Histogram<u64>,
}

pub struct Stats {
    /// Sends scheduled at or after this instant are measured; earlier ones are warmup.
    pub measure_start: Instant,
    /// True during the measured window: errors and pushes arriving now are counted.
    measuring: AtomicBool,
    shards: Vec<Mutex<Hists>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Sends first scheduled inside the window.
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub pushes: AtomicU64,
    // All-phase totals, for the progress line.
    pub acked_total: AtomicU64,
    pub errors_total: AtomicU64,
    pub pushes_total: AtomicU64,
    pub inflight: AtomicI64,
}

impl Stats {
    pub fn new(measure_start: Instant) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Hists {
                    ack: new_histogram(),
                    delivery: new_histogram(),
                })
            })
            .collect();
        Stats {
            measure_start,
            measuring: AtomicBool::new(false),
            shards,
            errors: Mutex::new(BTreeMap::new()),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            pushes: AtomicU64::new(0),
            acked_total: AtomicU64::new(0),
            errors_total: AtomicU64::new(0),
            pushes_total: AtomicU64::new(0),
            inflight: AtomicI64::new(0),
        }
    }

    pub fn set_measuring(&self, on: bool) {
        self.measuring.store(on, Relaxed);
    }

    pub fn is_measuring(&self) -> bool {
        self.measuring.load(Relaxed)
    }

    /// An ack for a send scheduled at `scheduled`; the latency counts from the schedule, not
    /// from when the frame actually left, so a stalled client cannot hide server latency.
    pub fn on_ack(&self, shard: usize, scheduled: Instant, now: Instant) {
        self.acked_total.fetch_add(1, Relaxed);
        self.inflight.fetch_sub(1, Relaxed);
        if scheduled < self.measure_start {
            return;
        }
        self.acked.fetch_add(1, Relaxed);
        let us = now.saturating_duration_since(scheduled).as_micros() as u64;
        self.shard(shard).ack.saturating_record(us);
    }

    /// A pushed message; `delay_ms` is now minus the server's `ts`, when it had one.
    pub fn on_push(&self, shard: usize, delay_ms: Option<i64>) {
        self.pushes_total.fetch_add(1, Relaxed);
        if !self.is_measuring() {
            return;
        }
        self.pushes.fetch_add(1, Relaxed);
        if let Some(ms) = delay_ms {
            let us = (ms.max(0) as u64).saturating_mul(1000);
            self.shard(shard).delivery.saturating_record(us);
        }
    }

    pub fn on_error(&self, code: &str) {
        self.errors_total.fetch_add(1, Relaxed);
        if !self.is_measuring() {
            return;
        }
        let mut errors = self.errors.lock();
        let key = if errors.len() < MAX_ERROR_CODES || errors.contains_key(code) {
            code
        } else {
            "other"
        };
        *errors.entry(key.to_string()).or_default() += 1;
    }

    fn shard(&self, i: usize) -> parking_lot::MutexGuard<'_, Hists> {
        self.shards[i % SHARDS].lock()
    }

    /// (ack, delivery) histograms merged over all shards.
    pub fn merged(&self) -> (Histogram<u64>, Histogram<u64>) {
        let (mut ack, mut delivery) = (new_histogram(), new_histogram());
        for shard in &self.shards {
            let h = shard.lock();
            ack.add(&h.ack).expect("same bounds"); // invariant: one constructor
            delivery.add(&h.delivery).expect("same bounds"); // invariant: one constructor
        }
        (ack, delivery)
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().clone()
    }
}

/// One stderr line per second until aborted: rates over the last second, totals, percentiles
/// of the measured window so far.
pub async fn progress_loop(stats: std::sync::Arc<Stats>, start: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut acked, mut pushes) = (0, 0);
    loop {
        tick.tick().await;
        let (a, p) = (
            stats.acked_total.load(Relaxed),
            stats.pushes_total.load(Relaxed),
        );
        let phase = if Instant::now() < stats.measure_start {
            "warmup"
        } else {
            "measure"
        };
        let (hist, _) = stats.merged();
        let pct = |q| match hist.len() {
            0 => "-".to_string(),
            _ => format!("{:.2}ms", hist.value_at_quantile(q) as f64 / 1000.0),
        };
        eprintln!(
            "[{:>5.1}s {phase}] acked/s {:>7}  pushes/s {:>7}  errors {}  in-flight {}  p50 {}  p99 {}",
            start.elapsed().as_secs_f64(),
            a - acked,
            p - pushes,
            stats.errors_total.load(Relaxed),
            stats.inflight.load(Relaxed),
            pct(0.5),
            pct(0.99),
        );
        (acked, pushes) = (a, p);
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }

    fn to_json(&self) -> Value {
        json!({"count": self.count, "p50_ms": ms(self.p50_us), "p99_ms": ms(self.p99_us),
               "p999_ms": ms(self.p999_us), "max_ms": ms(self.max_us)})
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProcReport {
    pub pid: u32,
    pub cpu_percent: Option<f64>,
    pub max_rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Synced {
    /// Delta of `chatnode_synced_writes_total` over the window.
    Delta(f64),
    Absent,
    Unavailable(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub setup: String,
    pub window_secs: f64,
    pub sent: u64,
    pub acked: u64,
    pub unacked_at_end: u64,
    pub ack: Option<Latency>,
    pub errors: BTreeMap<String, u64>,
    pub pushes: u64,
    pub delivery: Option<Latency>,
    pub procs: Vec<ProcReport>,
    pub synced: Synced,
}

fn per_sec(n: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        n / secs
    } else {
        0.0
    }
}

fn latency_line(l: &Option<Latency>) -> String {
    match l {
        None => "none recorded".to_string(),
        Some(l) => format!(
            "p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  (n={})",
            ms(l.p50_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
            l.count
        ),
    }
}

impl Report {
    pub fn format(&self) -> String {
        let secs = self.window_secs;
        let mut out = format!("chatbench: {}\nmeasured window  {secs:.1}s\n", self.setup);
        out += &format!(
            "sends            {} acked of {} scheduled ({:.1} acked/s), {} unacked at end\n",
            self.acked,
            self.sent,
            per_sec(self.acked as f64, secs),
            self.unacked_at_end
        );
        out += &format!("ack latency      {}\n", latency_line(&self.ack));
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            let parts: Vec<String> = self
                .errors
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            parts.join(", ")
        };
        out += &format!("errors           {errors}\n");
        out += &format!(
            "pushes received  {} ({:.1}/s)\n",
            self.pushes,
            per_sec(self.pushes as f64, secs)
        );
        // `ts` is in whole milliseconds and from the server's clock: coarse, and only
        // meaningful when client and server clocks agree (same host, or NTP).
        out += &format!("delivery latency {}\n", latency_line(&self.delivery));
        if self.delivery.is_some() {
            out += "                 (now - server ts: 1 ms resolution, assumes synced clocks)\n";
        }
        for p in &self.procs {
            let cpu = p.cpu_percent.map_or("?".into(), |c| format!("{c:.1}%"));
            let rss = p.max_rss_bytes.map_or("?".into(), |b| {
                format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
            });
            out += &format!("server pid {}   avg CPU {cpu}, max RSS {rss}\n", p.pid);
        }
        out += &match &self.synced {
            Synced::Delta(d) => {
                let ratio = if *d > 0.0 {
                    format!("{:.2}", self.acked as f64 / d)
                } else {
                    "n/a".to_string()
                };
                format!(
                    "synced writes    {:.1}/s (first node), {ratio} acked sends per synced write\n",
                    per_sec(*d, secs)
                )
            }
            Synced::Absent => {
                "synced writes    metric chatnode_synced_writes_total absent from /metrics\n".into()
            }
            Synced::Unavailable(e) => format!("synced writes    /metrics unavailable: {e}\n"),
        };
        out
    }

    pub fn to_json(&self) -> Value {
        let secs = self.window_secs;
        let synced = match &self.synced {
            Synced::Delta(d) => json!({"delta": d, "per_sec": per_sec(*d, secs),
                "sends_per_synced_write": (*d > 0.0).then(|| self.acked as f64 / d)}),
            Synced::Absent => json!({"error": "metric absent"}),
            Synced::Unavailable(e) => json!({"error": e}),
        };
        let procs: Vec<Value> = self
            .procs
            .iter()
            .map(|p| json!({"pid": p.pid, "cpu_percent": p.cpu_percent, "max_rss_bytes": p.max_rss_bytes}))
            .collect();
        json!({
            "setup": self.setup, "window_secs": secs, "sent": self.sent, "acked": self.acked,
            "acked_per_sec": per_sec(self.acked as f64, secs), "unacked_at_end": self.unacked_at_end,
            "ack_latency": self.ack.as_ref().map(Latency::to_json), "errors": self.errors,
            "pushes": self.pushes, "pushes_per_sec": per_sec(self.pushes as f64, secs),
            "delivery_latency": self.delivery.as_ref().map(Latency::to_json),
            "server_processes": procs, "synced_writes": synced,
        })
    }
}

#[cfg(test)]
#[path = "stats/tests.rs"]
mod tests;
