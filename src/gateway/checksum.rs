//! `/admin/checksum` without a scan on the request path: a background task computes this
//! node's per-group checksums at most once per `[admin] checksum_interval_ms`, and only when
//! a request asked for one since the last computation; the endpoint answers with the last
//! result and its age (`computed_at_ms`, `age_ms`). A caller that needs a checksum taken after
//! some moment (the test harnesses after quiescence) polls until `computed_at_ms` is later.
//!
//! Ownership: the [`ChecksumCache`] is held by the gateway; the task holds a `Weak` to it and
//! its own wake-up `Notify`. It ends when the cache is dropped (its `Drop` wakes the task) or
//! [`ChecksumCache::stop`] is called (node shutdown).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::storage::Store;

/// One computed answer.
pub(crate) struct Checksums {
    /// Wall-clock time the scan started (ms since the epoch).
    pub(crate) computed_at_ms: u64,
    /// `[{group, applied_index, checksum, keys}]`, or the error of the scan.
    pub(crate) groups: Result<Vec<Value>, String>,
}

pub(crate) struct ChecksumCache {
    interval: Duration,
    last: Mutex<Option<Arc<Checksums>>>,
    wake: Arc<tokio::sync::Notify>,
    stopped: AtomicBool,
    scans: AtomicU64,
}

impl Drop for ChecksumCache {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

impl ChecksumCache {
    /// The cache and its background task (spawned on the current runtime).
    pub(crate) fn spawn(cluster: Arc<Cluster>, store: Arc<Store>, interval_ms: u64) -> Arc<Self> {
        let wake = Arc::new(tokio::sync::Notify::new());
        let cache = Arc::new(ChecksumCache {
            interval: Duration::from_millis(interval_ms),
            last: Mutex::new(None),
            wake: wake.clone(),
            stopped: AtomicBool::new(false),
            scans: AtomicU64::new(0),
        });
        let shutdown = cluster.shutdown().clone();
        shutdown.spawn(run(Arc::downgrade(&cache), wake, cluster, store));
        cache
    }

    /// The last result (None before the first scan finished), and asks for a new one (taken
    /// by the task once the interval since the last scan has passed).
    pub(crate) fn request(&self) -> Option<Arc<Checksums>> {
        self.wake.notify_one();
        self.last.lock().clone()
    }

    /// Scans so far (an attack test counts them).
    pub(crate) fn scans(&self) -> u64 {
        self.scans.load(Ordering::Relaxed)
    }

    pub(crate) fn interval_ms(&self) -> u64 {
        self.interval.as_millis() as u64
    }

    /// Ends the background task.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn live(weak: &Weak<Self>) -> Option<Arc<Self>> {
        weak.upgrade().filter(|c| !c.stopped.load(Ordering::SeqCst))
    }
}

async fn run(
    weak: Weak<ChecksumCache>,
    wake: Arc<tokio::sync::Notify>,
    cluster: Arc<Cluster>,
    store: Arc<Store>,
) {
    let mut next_allowed = Instant::now();
    loop {
        wake.notified().await;
        // Wait out the interval since the last scan, but stop promptly (the task holds the
        // store, which a restarted node reopens).
        let cache = loop {
            let cache = ChecksumCache::live(&weak);
            if cache.is_none() || Instant::now() >= next_allowed {
                break cache;
            }
            drop(cache);
            tokio::select! {
                _ = tokio::time::sleep_until(next_allowed.into()) => {}
                _ = wake.notified() => {}
            }
        };
        let Some(cache) = cache else {
            return;
        };
        let interval = cache.interval;
        let started = Instant::now();
        next_allowed = started + interval;
        let computed_at_ms = super::now_ms();
        cache.scans.fetch_add(1, Ordering::Relaxed);
        let groups = scan(&cluster, &store).await;
        *cache.last.lock() = Some(Arc::new(Checksums {
            computed_at_ms,
            groups,
        }));
    }
}

/// Every group this node holds a replica of: checksum and key count of its state machine,
/// with the applied index seen just before (blocking scan, on a blocking thread).
async fn scan(cluster: &Cluster, store: &Arc<Store>) -> Result<Vec<Value>, String> {
    let groups: Vec<(u32, u64)> = cluster
        .local_status()
        .groups
        .iter()
        .filter(|g| g.holds(cluster.node_id))
        .map(|g| (g.group, g.applied))
        .collect();
    let store = store.clone();
    let sums = tokio::task::spawn_blocking(move || {
        groups
            .into_iter()
            .map(|(group, applied)| {
                store.sm_checksum(group).map(|(sum, keys)| {
                    json!({
                        "group": group,
                        "applied_index": applied,
                        "checksum": format!("{sum:016x}"),
                        "keys": keys,
                    })
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await;
    match sums {
        Ok(Ok(groups)) => Ok(groups),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("checksum task failed: {e}")),
    }
}
