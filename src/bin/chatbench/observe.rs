//! Watching the server from outside: CPU and RSS from /proc, counters from `/metrics`.

use crate::net::{http, Endpoint};
use anyhow::{anyhow, bail, Context, Result};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// USER_HZ, the unit of utime/stime in /proc/<pid>/stat. It is 100 on every mainstream Linux
/// ABI; reading it properly needs sysconf(), i.e. libc, which we do not depend on.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;
pub const SYNCED_WRITES: &str = "chatnode_synced_writes_total";

#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    pub at: Instant,
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
}

pub fn sample(pid: u32) -> Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    Ok(ProcSample {
        at: Instant::now(),
        cpu_ticks: parse_stat_ticks(&stat).ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?,
        rss_bytes: parse_status_rss(&status).ok_or_else(|| anyhow!("no VmRSS for {pid}"))?,
    })
}

/// utime + stime. The command name (field 2) may contain spaces and ')', so fields are
/// counted from the last ')': after it come state, ppid, … with utime and stime 11th and 12th.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Average CPU% (100% = one core busy) between two samples of the same process.
pub fn cpu_percent(before: &ProcSample, after: &ProcSample) -> Option<f64> {
    let secs = after.at.duration_since(before.at).as_secs_f64();
    let ticks = after.cpu_ticks.checked_sub(before.cpu_ticks)?;
    (secs > 0.0).then(|| ticks as f64 / CLOCK_TICKS_PER_SEC / secs * 100.0)
}

/// The soft RLIMIT_NOFILE of this process, from /proc/self/limits (no libc needed).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Samples the RSS of the pids twice a second in the background and keeps the maximum,
/// because a peak between two end-point samples would otherwise go unseen.
pub struct RssWatch {
    max: Arc<Mutex<Vec<Option<u64>>>>,
    task: JoinHandle<()>,
}

impl RssWatch {
    pub fn start(pids: Vec<u32>) -> Self {
        let max = Arc::new(Mutex::new(vec![None; pids.len()]));
        let shared = max.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let rss: Vec<Option<u64>> = pids
                    .iter()
                    .map(|&p| sample(p).ok().map(|s| s.rss_bytes))
                    .collect();
                let mut max = shared.lock();
                for (m, r) in max.iter_mut().zip(rss) {
                    *m = (*m).max(r);
                }
            }
        });
        RssWatch { max, task }
    }

    /// Stops sampling; the maximum RSS seen per pid, in the order given to `start`.
    pub fn stop(self) -> Vec<Option<u64>> {
        self.task.abort();
        let max = self.max.lock().clone();
        max
    }
}

/// Sum of all series of `name` in Prometheus text format, or None if there is none.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // Exactly this name: labels or the value must follow, not a longer name.
        let value_part = if rest.starts_with('{') {
            &rest[rest.find('}')? + 1..]
        } else if rest.starts_with(' ') {
            rest
        } else {
            continue;
        };
        let value: f64 = value_part.split_whitespace().next()?.parse().ok()?;
        sum = Some(sum.unwrap_or(0.0) + value);
    }
    sum
}

/// `chatnode_synced_writes_total` of a node: Ok(None) if the node does not export it.
pub async fn synced_writes(ep: &Endpoint) -> Result<Option<f64>> {
    let r = http(ep, "GET", "/metrics", None).await?;
    if r.status != 200 {
        bail!("GET /metrics: HTTP {}", r.status);
    }
    Ok(metric_sum(&r.body, SYNCED_WRITES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0";
        assert_eq!(parse_stat_ticks(stat), Some(300));
        assert_eq!(
            parse_status_rss("Name:\tx\nVmRSS:\t  2048 kB\n"),
            Some(2 << 20)
        );
    }

    #[test]
    fn sums_a_metric_over_labels_only_for_the_exact_name() {
        let text = "# TYPE chatnode_synced_writes counter\n\
                    chatnode_synced_writes_total{shard=\"0\"} 10\n\
                    chatnode_synced_writes_total{shard=\"1\"} 5.5\n\
                    chatnode_synced_writes_total_bytes 99\n";
        assert_eq!(metric_sum(text, SYNCED_WRITES), Some(15.5));
        assert_eq!(metric_sum("other_total 3\n", SYNCED_WRITES), None);
        assert_eq!(
            metric_sum("chatnode_synced_writes_total 7 1700000000\n", SYNCED_WRITES),
            Some(7.0)
        );
    }
}
