//! The test network: namespaces `cnj-n1..`, each with one end of a veth pair whose other end
//! is on the bridge `cnj-br0` (10.77.0.1/24, the harness' side); node i is 10.77.0.(10+i).
//! Partitions are nftables rules inside the namespaces that drop traffic between node
//! addresses, never to or from the harness (10.77.0.1).
//!
//! Everything here is synchronous (`std::process::Command`) so that teardown also works from
//! `Drop` and after a panic.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::process::{Command, Stdio};

pub const BRIDGE: &str = "cnj-br0";
pub const HARNESS_IP: &str = "10.77.0.1";
pub const NS_PREFIX: &str = "cnj-n";
pub const CLIENT_PORT: u16 = 7070;
pub const PEER_PORT: u16 = 7071;

pub fn ns_name(i: usize) -> String {
    format!("{NS_PREFIX}{i}")
}

pub fn node_ip(i: usize) -> String {
    format!("10.77.0.{}", 10 + i)
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("run {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn output(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Checks what the harness needs before touching anything.
pub fn preflight() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("chatnode-jepsen run must run as root (network namespaces, nftables)");
    }
    if Command::new("ip").arg("-V").output().is_err() {
        bail!("`ip` (iproute2) is not installed");
    }
    if Command::new("nft").arg("--version").output().is_err() {
        bail!("`nft` is not installed: apt-get install -y nftables");
    }
    Ok(())
}

/// Creates the bridge and `n` namespaces (1-based indices).
/// With `relays`, the bridge also carries every node's relay address (`relay::relay_ip`).
pub fn setup(n: usize, relays: bool) -> Result<()> {
    run(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
    run(&[
        "ip",
        "addr",
        "add",
        &format!("{HARNESS_IP}/24"),
        "dev",
        BRIDGE,
    ])?;
    run(&["ip", "link", "set", BRIDGE, "up"])?;
    if relays {
        for i in 1..=n {
            let addr = format!("{}/24", crate::relay::relay_ip(i));
            run(&["ip", "addr", "add", &addr, "dev", BRIDGE])?;
        }
    }
    for i in 1..=n {
        add_namespace(i)?;
    }
    Ok(())
}

pub fn add_namespace(i: usize) -> Result<()> {
    let ns = ns_name(i);
    let host_end = format!("cnj-v{i}");
    let ns_end = format!("cnj-v{i}p");
    run(&["ip", "netns", "add", &ns])?;
    run(&[
        "ip", "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
    ])?;
    run(&["ip", "link", "set", &host_end, "master", BRIDGE])?;
    run(&["ip", "link", "set", &host_end, "up"])?;
    run(&["ip", "link", "set", &ns_end, "netns", &ns])?;
    run(&[
        "ip",
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{}/24", node_ip(i)),
        "dev",
        &ns_end,
    ])?;
    run(&["ip", "-n", &ns, "link", "set", &ns_end, "up"])?;
    run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Namespaces of ours that exist now (from an earlier run too).
pub fn our_namespaces() -> Vec<String> {
    output(&["ip", "netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NS_PREFIX))
        .map(str::to_string)
        .collect()
}

/// Removes every trace of a run: processes inside our namespaces (which only this harness
/// starts), the namespaces (their nftables tables and veth ends go with them) and the
/// bridge. Returns what it removed, for the log.
pub fn cleanup() -> Vec<String> {
    let mut removed = Vec::new();
    for ns in our_namespaces() {
        for pid in output(&["ip", "netns", "pids", &ns]).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SIGCONT first: a paused process would otherwise keep its SIGKILL pending.
                unsafe {
                    libc::kill(pid, libc::SIGCONT);
                    libc::kill(pid, libc::SIGKILL);
                }
                removed.push(format!("process {pid} in {ns}"));
            }
        }
        // Give the killed processes a moment to exit so the namespace can go.
        for _ in 0..50 {
            if output(&["ip", "netns", "pids", &ns]).trim().is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = run(&["ip", "netns", "del", &ns]);
        removed.push(format!("namespace {ns}"));
    }
    // veth host ends normally vanish with their namespace; remove strays anyway.
    for line in output(&["ip", "-o", "link", "show"]).lines() {
        if let Some(name) = line.split(": ").nth(1) {
            let name = name.split('@').next().unwrap_or(name);
            if name.starts_with("cnj-v") {
                let _ = run(&["ip", "link", "del", name]);
                removed.push(format!("link {name}"));
            }
        }
    }
    if output(&["ip", "-o", "link", "show", BRIDGE]).contains(BRIDGE) {
        let _ = run(&["ip", "link", "del", BRIDGE]);
        removed.push(format!("bridge {BRIDGE}"));
    }
    removed
}

/// The addresses of these nodes and of their relays: traffic to a node may go through its
/// relay (see `relay`); without relays those addresses are simply unused.
fn addrs_of(nodes: &[usize]) -> Vec<String> {
    let relays = nodes.iter().map(|&n| crate::relay::relay_ip(n));
    nodes.iter().map(|&n| node_ip(n)).chain(relays).collect()
}

/// Makes node `i` drop all traffic to and from the given nodes (replacing the rules it
/// had). An empty list heals it.
pub fn set_blocked(i: usize, blocked: &[usize]) -> Result<()> {
    let blocked = &addrs_of(blocked);
    let rules = if blocked.is_empty() {
        None
    } else {
        let set = blocked.join(", ");
        Some((
            format!("ip saddr {{ {set} }} drop;"),
            format!("ip daddr {{ {set} }} drop;"),
        ))
    };
    load_rules(i, rules)
}

/// Makes node `i` drop `pct` % of the packets it receives from the given nodes (an
/// nftables `numgen` rule), replacing the rules it had.
pub fn set_lossy(i: usize, from: &[usize], pct: u32) -> Result<()> {
    if from.is_empty() || pct == 0 {
        return load_rules(i, None);
    }
    // Through relays, what the others send arrives from this node's own relay address.
    let mut from = addrs_of(from);
    from.push(crate::relay::relay_ip(i));
    let set = from.join(", ");
    load_rules(
        i,
        Some((
            format!("ip saddr {{ {set} }} numgen random mod 100 < {pct} drop;"),
            String::new(),
        )),
    )
}

/// Replaces node i's `inet cnj` table with one holding these input and output rules (none:
/// no table, i.e. healed).
fn load_rules(i: usize, rules: Option<(String, String)>) -> Result<()> {
    let ns = ns_name(i);
    // Declaring the table first makes the delete succeed even when it does not exist yet.
    let mut script = String::from("table inet cnj\ndelete table inet cnj\n");
    if let Some((input, output)) = rules {
        script.push_str(&format!(
            "table inet cnj {{\n\
             \tchain input {{ type filter hook input priority -10; policy accept; {input} }}\n\
             \tchain output {{ type filter hook output priority -10; policy accept; {output} }}\n\
             }}\n"
        ));
    }
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn nft")?;
    child.stdin.take().unwrap().write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The `blocked` lists that realise a grid: `reach[a][b]` says whether a and b may talk
/// (indices 0-based into `nodes`, which holds 1-based node numbers).
pub fn apply_grid(nodes: &[usize], reach: &dyn Fn(usize, usize) -> bool) -> Result<()> {
    for (a, &na) in nodes.iter().enumerate() {
        let blocked: Vec<usize> = nodes
            .iter()
            .enumerate()
            .filter(|&(b, _)| b != a && !reach(a, b))
            .map(|(_, &nb)| nb)
            .collect();
        set_blocked(na, &blocked)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_each_node_and_its_relay() {
        assert_eq!(
            addrs_of(&[2, 5]),
            vec!["10.77.0.12", "10.77.0.15", "10.77.0.102", "10.77.0.105"]
        );
    }
}
