//! Waiting for the cluster to settle: convergence of the placement and leaders, no
//! lingering replicas, identical replicas (checksums).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::admin::get_json;
use super::config::now_ms;
use super::process::TestCluster;
use super::view::View;

impl TestCluster {
    /// Polls until the status (seen from a running node) shows every group on 3 voters of
    /// `members` with an agreed leader and, if `balanced`, a fair spread. Returns that view.
    pub async fn wait_converged(
        &mut self,
        members: &BTreeSet<u64>,
        balanced: bool,
        timeout: Duration,
    ) -> View {
        match self.try_converge(members, balanced, timeout).await {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// `wait_converged` that returns what was wrong instead of panicking.
    pub async fn try_converge(
        &mut self,
        members: &BTreeSet<u64>,
        balanced: bool,
        timeout: Duration,
    ) -> Result<View, String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no status yet");
        let mut last_summary = String::new();
        loop {
            if let Some(v) = self.view().await {
                let check = v.converged(self.shards, members).and_then(|()| {
                    if balanced {
                        v.balanced(self.shards, members)
                    } else {
                        Ok(())
                    }
                });
                match check {
                    Ok(()) => return Ok(v),
                    Err(e) => {
                        last = e;
                        last_summary = v.summary();
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "cluster did not converge on {members:?} (balanced: {balanced}) within {timeout:?}: {last}\nlast {last_summary}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until no moved-away replica campaigns or leads (see `View::lingering`).
    pub async fn wait_no_lingering(&mut self, timeout: Duration) -> Result<(), String> {
        // A displaced replica may stay "candidate": openraft never tells a removed node that
        // it was removed. What must not happen is campaigning — its term rising (that term
        // would later depose the group's leader). Compare two views 5 s apart.
        let deadline = Instant::now() + timeout;
        loop {
            let mut last = vec!["no status".to_string()];
            if let Some(before) = self.view().await.map(|v| v.lingering()) {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if let Some(after) = self.view().await.map(|v| v.lingering()) {
                    last = after
                        .iter()
                        .filter(|(k, (term, _))| before.get(k).is_some_and(|(t, _)| t < term))
                        .map(|(_, (_, d))| d.clone())
                        .collect();
                    if last.is_empty() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "replicas moved away still campaign (term rising) {timeout:?} later:\n{}",
                    last.join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Polls every running node's `/admin/checksum` until, for every group, all its desired
    /// replicas report the same applied index; then their checksums must be equal. A
    /// mismatch at equal applied indexes seen twice in a row fails at once.
    pub async fn assert_replicas_identical(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        // Checksums are computed in the background: only those taken after this call count.
        let since_ms = now_ms();
        let mut suspect: BTreeMap<u32, u64> = BTreeMap::new();
        loop {
            let Some(view) = self.view().await else {
                assert!(Instant::now() < deadline, "no status");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let running = self.running();
            // group -> node -> (applied, checksum, keys)
            let mut sums: BTreeMap<u32, BTreeMap<u64, (u64, String, u64)>> = BTreeMap::new();
            for id in &running {
                if let Ok(v) =
                    get_json(self.addr_of(*id), "/admin/checksum", &self.admin_token).await
                {
                    if v["computed_at_ms"].as_u64().unwrap_or(0) < since_ms {
                        continue;
                    }
                    for g in v["groups"].as_array().into_iter().flatten() {
                        let group = g["group"].as_u64().unwrap_or(u64::MAX) as u32;
                        sums.entry(group).or_default().insert(
                            *id,
                            (
                                g["applied_index"].as_u64().unwrap_or(0),
                                g["checksum"].as_str().unwrap_or("").to_string(),
                                g["keys"].as_u64().unwrap_or(0),
                            ),
                        );
                    }
                }
            }
            let mut pending = Vec::new();
            for g in 0..=self.shards {
                let desired = view.replicas.get(&g).cloned().unwrap_or_default();
                let got = sums.get(&g).cloned().unwrap_or_default();
                let mut rows = Vec::new();
                for n in &desired {
                    match got.get(n) {
                        Some(r) => rows.push((*n, r.clone())),
                        None => pending.push(format!("group {g}: node {n} reports no checksum")),
                    }
                }
                if rows.len() != desired.len() || rows.is_empty() {
                    continue;
                }
                let applied: BTreeSet<u64> = rows.iter().map(|(_, r)| r.0).collect();
                if applied.len() != 1 {
                    pending.push(format!("group {g}: applied indexes differ: {rows:?}"));
                    continue;
                }
                let sums_set: BTreeSet<&String> = rows.iter().map(|(_, r)| &r.1).collect();
                if sums_set.len() != 1 {
                    let at = *applied.iter().next().unwrap();
                    if suspect.get(&g) == Some(&at) {
                        panic!("group {g}: replicas diverge at applied index {at}: {rows:?}");
                    }
                    suspect.insert(g, at);
                    pending.push(format!("group {g}: checksums differ at {at}: {rows:?}"));
                } else {
                    suspect.remove(&g);
                }
            }
            if pending.is_empty() {
                return;
            }
            let last = pending.join("\n");
            assert!(
                Instant::now() < deadline,
                "replica checksums did not settle within {timeout:?}:\n{last}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
