//! `chatnode-jepsen prove`: shows that the checker works. It runs short jepsen runs against
//! a chatnode built with `--features fault-injection`, one per broken switch
//! (`CHATNODE_BREAK=<switch>`, see chatnode's `src/sabotage.rs`), and requires each to be
//! caught with the anomaly class that switch must produce. Then it runs the real build
//! through the same runs and requires no anomaly at all.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The variable that picks a switch in a fault-injection build of chatnode.
const BREAK_ENV: &str = "CHATNODE_BREAK";

/// One broken switch, the fault that exposes it, and the class the checker must report.
pub struct Case {
    pub switch: &'static str,
    pub nemesis: &'static str,
    pub expect: &'static str,
    /// Client count and op rate, when the case needs more in flight than the default.
    pub load: Option<(usize, u32)>,
}

/// Every switch of chatnode's `sabotage::Switch`. One shard group, so that the leader of
/// every conversation is the node `isolate-leader` picks.
pub const CASES: &[Case] = &[
    Case {
        switch: "ack-before-commit",
        nemesis: "isolate-leader",
        expect: "lost",
        load: None,
    },
    Case {
        switch: "unsynced-appends",
        nemesis: "kill-all",
        expect: "lost",
        load: None,
    },
    Case {
        switch: "leader-memory-dedup",
        nemesis: "kill-all",
        expect: "duplicated",
        // Sends committed but not yet acknowledged when every node dies are retried into
        // the new leader: the more in flight, the more such sends.
        load: Some((40, 800)),
    },
    Case {
        switch: "follower-reads",
        nemesis: "isolate-one",
        expect: "stale-read",
        load: None,
    },
    Case {
        switch: "seq-at-proposal",
        nemesis: "isolate-leader",
        expect: "reuse",
        load: None,
    },
    Case {
        switch: "forget-vote",
        nemesis: "isolate+kill-rest",
        // The restarted majority elects at a term below its log's: openraft's own
        // invariants break and its core panics on every node, so nothing recovers.
        expect: "unrecovered",
        load: None,
    },
    Case {
        switch: "push-before-commit",
        nemesis: "isolate-leader",
        expect: "reuse",
        load: None,
    },
];

#[derive(clap::Args, Debug)]
pub struct ProveOpts {
    /// chatnode built with `cargo build --features fault-injection`.
    #[arg(long)]
    pub broken_bin: PathBuf,
    /// The real chatnode build, which must pass the same runs (default as for `run`).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Seconds of workload per run.
    #[arg(long, default_value_t = 30)]
    pub time: u64,
    /// Client operations per second.
    #[arg(long, default_value_t = 150)]
    pub rate: u32,
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Seed of every run (so a failure can be replayed with `run --seed`).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Only these switches (comma-separated); default all.
    #[arg(long)]
    pub only: Option<String>,
    /// Skip the runs of the real build.
    #[arg(long)]
    pub skip_real: bool,
    /// One directory per run goes inside.
    #[arg(long, default_value_os_t = crate::run::default_out().join("prove"))]
    pub out: PathBuf,
}

/// What one run found: the harness' exit code and the anomaly counts by class.
struct Outcome {
    code: i32,
    counts: Vec<(String, u64)>,
}

impl Outcome {
    fn count(&self, class: &str) -> u64 {
        self.counts
            .iter()
            .find(|(c, _)| c == class)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }

    fn summary(&self) -> String {
        let found: Vec<String> = self
            .counts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        if found.is_empty() {
            "no anomaly".into()
        } else {
            found.join(", ")
        }
    }
}

fn run_once(
    opts: &ProveOpts,
    bin: &Path,
    c: &Case,
    switch: Option<&str>,
    dir: &Path,
) -> Result<Outcome> {
    let (clients, rate) = c.load.unwrap_or((10, opts.rate));
    std::fs::create_dir_all(dir)?;
    let log = std::fs::File::create(dir.join("harness.log"))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("run")
        .args(["--time", &opts.time.to_string()])
        .args(["--rate", &rate.to_string()])
        .args(["--clients", &clients.to_string()])
        .args(["--nodes", &opts.nodes.to_string()])
        .args(["--shards", "1"])
        .args(["--interval", "4-6"])
        .args(["--recovery-wait", "45"])
        .args(["--nemesis", c.nemesis])
        .args(["--seed", &opts.seed.to_string()])
        .arg("--bin")
        .arg(bin)
        .arg("--out")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    match switch {
        Some(s) => cmd.env(BREAK_ENV, s),
        None => cmd.env_remove(BREAK_ENV),
    };
    let status = cmd.status().context("start the harness")?;
    let code = status.code().unwrap_or(2);
    let results = dir.join("latest").join("results.json");
    let text = std::fs::read_to_string(&results).with_context(|| {
        format!(
            "{} (see {})",
            results.display(),
            dir.join("harness.log").display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let counts = v["counts"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    Ok(Outcome { code, counts })
}

/// Runs every selected broken switch (each must be caught), then the real build through
/// each distinct run (each must be clean); 0 when all held, 1 otherwise.
pub fn prove(opts: ProveOpts) -> Result<u8> {
    let real_bin = crate::cluster::find_bin(opts.bin.clone())?;
    let cases = selected_cases(opts.only.as_deref())?;
    let mut failed = Vec::new();
    println!(
        "{:<22} {:<18} {:<12} result",
        "switch", "nemesis", "must find"
    );
    for c in &cases {
        prove_caught(&opts, c, &mut failed);
    }
    if !opts.skip_real {
        for c in distinct_runs(&cases) {
            prove_clean(&opts, &real_bin, c, &mut failed);
        }
    }
    println!("runs under {}", opts.out.display());
    if failed.is_empty() {
        println!("prove: every switch caught, the real build clean");
        Ok(0)
    } else {
        println!("prove: FAILED: {}", failed.join(", "));
        Ok(1)
    }
}

/// The cases named in `--only` (comma-separated switches), or all of them.
fn selected_cases(only: Option<&str>) -> Result<Vec<&'static Case>> {
    let only: Option<Vec<String>> =
        only.map(|s| s.split(',').map(|p| p.trim().to_string()).collect());
    let cases: Vec<&Case> = CASES
        .iter()
        .filter(|c| {
            only.as_ref()
                .is_none_or(|o| o.iter().any(|s| s == c.switch))
        })
        .collect();
    if cases.is_empty() {
        bail!(
            "no switch selected; known: {}",
            CASES
                .iter()
                .map(|c| c.switch)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(cases)
}

/// Runs the broken build with the case's switch on; the case's class must be found.
fn prove_caught(opts: &ProveOpts, c: &Case, failed: &mut Vec<String>) {
    let dir = opts.out.join(c.switch);
    let verdict = match run_once(opts, &opts.broken_bin, c, Some(c.switch), &dir) {
        Ok(o) if o.count(c.expect) > 0 => format!("caught: {}", o.summary()),
        Ok(o) => {
            failed.push(c.switch.to_string());
            format!("NOT CAUGHT (exit {}): {}", o.code, o.summary())
        }
        Err(e) => {
            failed.push(c.switch.to_string());
            format!("HARNESS FAILED: {e:#}")
        }
    };
    println!(
        "{:<22} {:<18} {:<12} {verdict}",
        c.switch, c.nemesis, c.expect
    );
}

/// One case per distinct (nemesis, load): the real build goes through each run once.
fn distinct_runs<'c>(cases: &[&'c Case]) -> Vec<&'c Case> {
    let mut runs: Vec<&Case> = Vec::new();
    for c in cases {
        if !runs
            .iter()
            .any(|r| r.nemesis == c.nemesis && r.load == c.load)
        {
            runs.push(c);
        }
    }
    runs
}

/// Runs the real build through the case's run; it must exit 0 (no anomaly).
fn prove_clean(opts: &ProveOpts, real_bin: &Path, c: &Case, failed: &mut Vec<String>) {
    let n = c.nemesis;
    let dir = opts.out.join(format!("real-{}", c.switch));
    let verdict = match run_once(opts, real_bin, c, None, &dir) {
        Ok(o) if o.code == 0 => "passed: no anomaly".to_string(),
        Ok(o) => {
            failed.push(format!("real build under {n}"));
            format!("FAILED (exit {}): {}", o.code, o.summary())
        }
        Err(e) => {
            failed.push(format!("real build under {n}"));
            format!("HARNESS FAILED: {e:#}")
        }
    };
    let what = match c.load {
        Some((clients, rate)) => format!("{n} ({clients} clients, {rate}/s)"),
        None => n.to_string(),
    };
    println!(
        "{:<22} {:<18} {:<12} {verdict}",
        "(real build)", what, "nothing"
    );
}
