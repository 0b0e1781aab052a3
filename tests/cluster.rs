//! Multi-process acceptance tests of cluster mode: real `chatnode` processes on 127.0.0.1
//! formed by `--join`, killed, isolated, restarted, joined and drained under load.
//!
//! Each test owns a `TestCluster` whose processes are SIGKILLed when it is dropped (also on
//! panic); on failure the tail of every node's log is printed. Set
//! `CHATNODE_KEEP_TEST_DIR=1` to keep the data and logs, `CHATNODE_TEST_LOG` to change the
//! nodes' `RUST_LOG`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chatnode::cluster::ShardMap;
use chatnode_client::status::{GroupState, MemberState};
use common::cluster::*;
use common::Client;
use serde_json::{json, Value};

const SHARDS: u32 = 16;
/// Time for a cluster to settle (membership changes, leader balancing by stepping down).
const CONVERGE: Duration = Duration::from_secs(60);
/// Load: 10 users × 5 devices = 50 clients over 10 conversations.
const LOAD_USERS: usize = 10;
const LOAD_DEVICES: usize = 5;
/// The server's request deadline (5 s) plus slack for a busy machine.
const UNAVAILABLE_WITHIN: Duration = Duration::from_millis(6_500);

async fn pause(d: Duration) {
    tokio::time::sleep(d).await;
}

fn summary(r: &LoadReport) -> String {
    format!(
        "{} acked, {} failed, retries per acked send: {:?}",
        r.acked.len(),
        r.failed.len(),
        r.retry_histogram()
    )
}

fn assert_no_failures(r: &LoadReport) {
    assert!(
        r.failed.is_empty(),
        "sends that never got an ack ({}):\n{}",
        r.failed.len(),
        r.failed
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Waits until node `id` is a voter of every group it should hold and has applied, in each,
/// at least what the group's leader had applied when the wait began.
async fn wait_caught_up(c: &mut TestCluster, id: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut targets: Option<BTreeMap<u32, u64>> = None;
    let mut last = String::new();
    loop {
        if let Some(v) = c.view().await {
            if targets.is_none() {
                let mut t = BTreeMap::new();
                for (g, r) in &v.replicas {
                    if r.contains(&id) {
                        if let Some(l) = v.leader_view(*g) {
                            t.insert(*g, l.applied);
                        }
                    }
                }
                if t.len() == v.replicas.values().filter(|r| r.contains(&id)).count() {
                    targets = Some(t);
                }
            }
            if let Some(t) = &targets {
                let mut behind = Vec::new();
                for (g, want) in t {
                    let mine = v
                        .groups
                        .get(g)
                        .and_then(|rs| rs.iter().find(|r| r.node == id));
                    match mine {
                        Some(r) if r.applied >= *want && r.state != GroupState::Learner => {}
                        Some(r) => behind.push(format!(
                            "group {g}: {} applied {} < {want}",
                            r.state, r.applied
                        )),
                        None => behind.push(format!("group {g}: not reported")),
                    }
                }
                if behind.is_empty() {
                    return;
                }
                last = behind.join("; ");
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not catch up within {timeout:?}: {last}"
        );
        pause(Duration::from_millis(500)).await;
    }
}

/// Waits until every member leads at least one shard and the leaders stopped moving (the
/// same leader for every group over 5 polls, 2.5 s); returns the last view.
async fn wait_leaders_settled(c: &mut TestCluster, members: &BTreeSet<u64>) -> View {
    let deadline = Instant::now() + CONVERGE;
    let mut stable = 0;
    let mut prev: Option<BTreeMap<u32, Option<u64>>> = None;
    loop {
        let v = c.view().await.expect("status");
        let leaders: BTreeMap<u32, Option<u64>> =
            (0..=SHARDS).map(|g| (g, v.leader_of(g))).collect();
        let mut led: BTreeMap<u64, usize> = members.iter().map(|m| (*m, 0)).collect();
        for g in 1..=SHARDS {
            if let Some(l) = leaders[&g] {
                *led.entry(l).or_default() += 1;
            }
        }
        // Balanced (fair share ±1), not just unchanged for a moment: the balancer waits
        // between transfers, and a transfer refuses writes while it runs.
        let fair = SHARDS as usize / members.len().max(1);
        let balanced = led.values().all(|n| *n + 1 >= fair && *n <= fair + 2);
        if balanced && prev.as_ref() == Some(&leaders) {
            stable += 1;
            if stable >= 5 {
                return v;
            }
        } else {
            stable = 0;
        }
        assert!(
            Instant::now() < deadline,
            "leaders did not settle, balanced, within {CONVERGE:?}: shards led per node {led:?}\n{}",
            v.summary()
        );
        prev = Some(leaders);
        pause(Duration::from_millis(500)).await;
    }
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn three_and_five_node_clusters_form() {
    for n in [3usize, 5] {
        let mut c = TestCluster::start(n, SHARDS).await;
        let members = c.ids();
        assert_eq!(
            members,
            (1..=n as u64).collect::<BTreeSet<_>>(),
            "node ids of a {n}-node cluster"
        );
        let v = c.wait_converged(&members, true, CONVERGE).await;
        eprintln!(
            "{n} nodes: replicas per node {:?}, leaders per node {:?}",
            v.replica_counts(&members),
            v.leader_counts(&members)
        );
        // Every group on exactly 3 voters (checked by wait_converged against the desired
        // placement; recheck the count explicitly).
        for g in 0..=SHARDS {
            let l = v.leader_view(g).expect("a leader");
            assert_eq!(l.voters.len(), 3, "group {g}: voters {:?}", l.voters);
        }
        // Every node is ready and sees the same cluster.
        let version = v.status.placement_version;
        let cluster_id = v.status.cluster_id.clone();
        for id in &members {
            let (status, _) = try_http(
                c.addr_of(*id),
                "GET",
                "/ready",
                None,
                "",
                Duration::from_secs(5),
            )
            .await
            .unwrap();
            assert_eq!(status, 200, "node {id} /ready");
            let own = c.view_of(*id).await.unwrap();
            assert_eq!(own.from, *id);
            assert_eq!(own.status.cluster_id, cluster_id, "node {id} cluster id");
            assert_eq!(own.nodes.len(), n, "node {id} knows {:?}", own.nodes);
            if own.status.placement_version == version {
                assert_eq!(
                    own.replicas, v.replicas,
                    "node {id}: same placement version, different replicas"
                );
            }
        }
        // Replicas that moved to the later nodes left nothing campaigning behind.
        if let Err(e) = c.wait_no_lingering(Duration::from_secs(20)).await {
            panic!("{n} nodes: {e}");
        }
        // The fair shares hold a moment later too (no flapping of leaders).
        let again = c.wait_converged(&members, true, CONVERGE).await;
        eprintln!(
            "{n} nodes, again: leaders per node {:?}",
            again.leader_counts(&members)
        );
        drop(c);
    }
}

/// The next `message` push of `conv` at `seq` on `c` (other frames are kept aside).
async fn wait_message(c: &mut Client, conv: &str, seq: u64, wait: Duration) -> Option<Value> {
    let is_it =
        |p: &Value| p["type"] == "message" && p["conversation_id"] == conv && p["seq"] == seq;
    if let Some(pos) = c.pushes.iter().position(is_it) {
        return c.pushes.remove(pos);
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = c.recv(left).await?;
        if is_it(&v) {
            return Some(v);
        }
        c.pushes.push_back(v);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn push_crosses_nodes_in_all_combinations() {
    let mut c = TestCluster::start(3, SHARDS).await;
    let members = c.ids();
    c.wait_converged(&members, false, CONVERGE).await;
    // Every node must lead some shard for every (A, B, C) to exist.
    wait_leaders_settled(&mut c, &members).await;
    let map = ShardMap::new(SHARDS);

    let (sender_id, sender_token) = register_user(c.addr_of(1), "sender").await;
    let (recipient_id, recipient_token) = register_user(c.addr_of(2), "recipient").await;
    // The sender and the recipient each have a connection on every node.
    let mut senders: BTreeMap<u64, Client> = BTreeMap::new();
    let mut recipients: BTreeMap<u64, Client> = BTreeMap::new();
    for id in &members {
        senders.insert(
            *id,
            Client::connect(c.addr_of(*id), &sender_token, &format!("s{id}")).await,
        );
        recipients.insert(
            *id,
            Client::connect(c.addr_of(*id), &recipient_token, &format!("r{id}")).await,
        );
    }

    // Groups (created after the connections exist) until every node leads the shards of at
    // least two of them.
    let mut convs: Vec<(String, u32)> = Vec::new();
    for i in 0..200 {
        let v = c.view().await.expect("status");
        let mut led: BTreeMap<u64, usize> = members.iter().map(|m| (*m, 0)).collect();
        for (_, shard) in &convs {
            if let Some(l) = v.leader_of(*shard) {
                *led.entry(l).or_default() += 1;
            }
        }
        if led.values().all(|n| *n >= 2) {
            break;
        }
        assert!(i < 199, "no conversations led by every node: {led:?}");
        let s = senders.get_mut(&((i % 3) as u64 + 1)).unwrap();
        let r = s
            .request(json!({"type":"create_conversation","kind":"group","members":[recipient_id],"title":format!("p{i}")}))
            .await;
        let id = r["conversation"]["conversation_id"]
            .as_str()
            .unwrap_or_else(|| panic!("create: {r}"))
            .to_string();
        convs.push((id.clone(), map.shard_for_conversation(&id)));
    }

    let mut covered: BTreeSet<(u64, u64, u64)> = BTreeSet::new();
    let mut sent: Vec<(String, u64)> = Vec::new();
    let mut seen: BTreeMap<u64, Vec<(String, u64)>> = BTreeMap::new();
    let mut n = 0;
    for a in &members {
        for b in &members {
            for leader in &members {
                let mut done = false;
                for attempt in 0..5 {
                    let before = c.view().await.expect("status");
                    let Some((conv, shard)) = convs
                        .iter()
                        .find(|(_, s)| before.leader_of(*s) == Some(*leader))
                        .cloned()
                    else {
                        pause(Duration::from_millis(500)).await;
                        continue;
                    };
                    n += 1;
                    let body = format!("from node {a} to node {b} via leader {leader} #{attempt}");
                    let ack = senders
                        .get_mut(a)
                        .unwrap()
                        .send_msg(&conv, &format!("p{n}"), &body)
                        .await;
                    assert_eq!(
                        ack["type"], "ack",
                        "send on node {a} (leader {leader}): {ack}"
                    );
                    let seq = ack["seq"].as_u64().unwrap();
                    sent.push((conv.clone(), seq));
                    let push = wait_message(recipients.get_mut(b).unwrap(), &conv, seq, Duration::from_secs(10))
                        .await
                        .unwrap_or_else(|| {
                            panic!("recipient on node {b} got no push of {conv} seq {seq} sent on node {a}, shard {shard} led by {leader}")
                        });
                    assert_eq!(push["body"], body.as_str());
                    assert_eq!(push["sender_id"], sender_id.as_str());
                    assert_eq!(push["msg_id"], ack["msg_id"]);
                    seen.entry(*b).or_default().push((conv.clone(), seq));
                    let after = c.view().await.expect("status");
                    if after.leader_of(shard) == Some(*leader) {
                        covered.insert((*a, *b, *leader));
                        done = true;
                        break;
                    }
                }
                assert!(done, "could not send on node {a} to node {b} through a shard led by {leader} (leaders keep moving?)");
            }
        }
    }
    assert_eq!(covered.len(), 27, "combinations covered: {covered:?}");

    // Every recipient connection (on every node) got every message exactly once.
    for (id, r) in recipients.iter_mut() {
        let mut got: Vec<(String, u64)> = seen.remove(id).unwrap_or_default();
        for p in r.collect("message", Duration::from_secs(2)).await {
            got.push((
                p["conversation_id"].as_str().unwrap().to_string(),
                p["seq"].as_u64().unwrap(),
            ));
        }
        let mut want = sent.clone();
        want.sort();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(
            sorted, want,
            "pushes on the recipient's connection on node {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_busiest_leader_loses_nothing() {
    let mut c = TestCluster::start(3, SHARDS).await;
    let members = c.ids();
    c.wait_converged(&members, false, CONVERGE).await;
    let w = Workload::setup(c.addr_of(1), "k", LOAD_USERS, LOAD_DEVICES).await;
    let load = w.start(c.client_addrs());
    pause(Duration::from_secs(4)).await;

    let v = c.view().await.expect("status");
    let counts = v.leader_counts(&members);
    let (&victim, &led) = counts
        .iter()
        .max_by_key(|(id, n)| (**n, u64::MAX - **id))
        .unwrap();
    assert!(led > 0, "no leaders: {counts:?}");
    eprintln!("leaders per node {counts:?}; killing node {victim}");
    let slot = c.slot_of(victim);
    c.kill(slot);
    // The two survivors elect leaders for the victim's shards and keep acknowledging.
    let resumed = load.wait_progress(200, Duration::from_secs(30)).await;
    eprintln!("200 acks after the kill took {resumed:?}");
    assert!(
        resumed.is_some(),
        "the surviving majority acknowledged fewer than 200 sends in the 30 s after node {victim} was killed"
    );
    pause(Duration::from_secs(2)).await;
    c.restart(slot).await;
    let back = load.wait_progress(200, Duration::from_secs(30)).await;
    eprintln!("200 acks after the restart took {back:?}");
    assert!(
        back.is_some(),
        "fewer than 200 acks in the 30 s after the restart"
    );
    pause(Duration::from_secs(3)).await;
    let report = load.finish().await;
    eprintln!("load: {}", summary(&report));
    assert_no_failures(&report);
    assert!(
        report.acked.len() >= 100,
        "too little load: {}",
        summary(&report)
    );

    c.wait_converged(&members, false, CONVERGE).await;
    let hist = w.verify(&c.client_addrs(), &report).await;
    let stored: usize = hist.iter().map(Vec::len).sum();
    eprintln!("{stored} messages stored, {} acked", report.acked.len());
    c.assert_replicas_identical(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn isolated_node_refuses_and_majority_continues() {
    let mut c = TestCluster::start(3, SHARDS).await;
    let members = c.ids();
    c.wait_converged(&members, false, CONVERGE).await;
    let map = ShardMap::new(SHARDS);
    let addr1 = c.addr_of(1);
    let alice = register_user(addr1, "alice").await;
    let bob = register_user(addr1, "bob").await;

    // The isolated node: the one leading the most shards (so some of its shards must fail
    // over); the majority's client is on another node.
    let v = wait_leaders_settled(&mut c, &members).await;
    let counts = v.leader_counts(&members);
    let (&x, _) = counts
        .iter()
        .max_by_key(|(id, n)| (**n, u64::MAX - **id))
        .unwrap();
    let m = *members.iter().find(|id| **id != x).unwrap();
    eprintln!("leaders per node {counts:?}; isolating node {x}, majority client on node {m}");

    let mut on_x = open_retrying(&[c.addr_of(x)], &alice.1, "x", Duration::from_secs(30)).await;
    let mut on_m = open_retrying(&[c.addr_of(m)], &alice.1, "m", Duration::from_secs(30)).await;
    // Conversations until both shards led by x and shards led by others are present.
    let mut convs: Vec<(String, u32)> = Vec::new();
    for i in 0..100 {
        let led_by_x = convs
            .iter()
            .filter(|(_, s)| v.leader_of(*s) == Some(x))
            .count();
        if convs.len() >= 8 && led_by_x >= 2 && convs.len() - led_by_x >= 2 {
            break;
        }
        assert!(i < 99, "could not place conversations on x's shards");
        let r = on_m
            .call(json!({"type":"create_conversation","kind":"group","members":[bob.0],"title":format!("i{i}")}), REQUEST_TIMEOUT)
            .await
            .unwrap();
        let id = r["conversation"]["conversation_id"]
            .as_str()
            .unwrap()
            .to_string();
        convs.push((id.clone(), map.shard_for_conversation(&id)));
    }
    let mut acked: Vec<Acked> = Vec::new();
    let mut n = 0;
    // Everyone works before the partition.
    for (conv, _) in &convs {
        n += 1;
        let cmid = format!("pre{n}");
        let r = on_x
            .call(
                json!({"type":"send","conversation_id":conv,"client_msg_id":cmid,"body":"before"}),
                REQUEST_TIMEOUT,
            )
            .await
            .unwrap();
        assert_eq!(r["type"], "ack", "{r}");
        acked.push(Acked {
            conv: conv.clone(),
            cmid,
            seq: r["seq"].as_u64().unwrap(),
            msg_id: r["msg_id"].as_str().unwrap().into(),
            retries: 0,
            reasons: vec![],
            at: Instant::now(),
        });
    }

    c.isolate(x).await;
    let isolated_at = Instant::now();

    // The majority: every shard gets a leader among the other two.
    let majority: BTreeSet<u64> = members.iter().copied().filter(|id| *id != x).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mv = c.view_of(m).await.expect("status from the majority");
        let leaderless: Vec<u32> = (0..=SHARDS)
            .filter(|g| !mv.leader_of(*g).is_some_and(|l| majority.contains(&l)))
            .collect();
        if leaderless.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "groups without a leader on the majority side 20 s after isolating node {x}: {leaderless:?}"
        );
        pause(Duration::from_millis(500)).await;
    }
    eprintln!(
        "majority has every leader {:?} after isolation",
        isolated_at.elapsed()
    );

    // Sends through x: `unavailable` (retryable) within the request deadline, for shards x
    // led and for shards others lead.
    let mut refused: Vec<(String, String)> = Vec::new();
    let mut late: Vec<String> = Vec::new();
    let picks: Vec<&(String, u32)> = {
        let mut p: Vec<&(String, u32)> = convs
            .iter()
            .filter(|(_, s)| v.leader_of(*s) == Some(x))
            .take(2)
            .collect();
        p.extend(
            convs
                .iter()
                .filter(|(_, s)| v.leader_of(*s) != Some(x))
                .take(2),
        );
        p
    };
    for (conv, shard) in picks {
        n += 1;
        let cmid = format!("iso{n}");
        let t = Instant::now();
        let r = on_x
            .call(json!({"type":"send","conversation_id":conv,"client_msg_id":cmid,"body":"from the isolated node"}), REQUEST_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("send on isolated node {x} (shard {shard}): {e}"));
        eprintln!(
            "isolated send (shard {shard}, led by {:?}): {r} after {:?}",
            v.leader_of(*shard),
            t.elapsed()
        );
        assert_eq!(
            r["type"], "error",
            "a send on the isolated node was answered {r}"
        );
        assert_eq!(r["code"], "unavailable", "{r}");
        assert_eq!(r["retryable"], true, "{r}");
        // The request deadline is 5 s; allow 1.5 s for a busy machine. Checked at the end
        // so that a slow answer does not hide the other findings.
        if t.elapsed() > UNAVAILABLE_WITHIN {
            late.push(format!(
                "shard {shard} (led by {:?} before the partition): unavailable after {:?}: {r}",
                v.leader_of(*shard),
                t.elapsed()
            ));
        }
        refused.push((conv.clone(), cmid));
    }

    // The majority keeps accepting.
    for round in 0..3 {
        for (conv, shard) in &convs {
            n += 1;
            let cmid = format!("maj{n}");
            let t = Instant::now();
            let mut retries = 0;
            let mut reasons = Vec::new();
            let r = loop {
                let r = on_m
                    .call(json!({"type":"send","conversation_id":conv,"client_msg_id":cmid,"body":format!("majority round {round}")}), REQUEST_TIMEOUT)
                    .await;
                match r {
                    Ok(r) if r["type"] == "ack" => break r,
                    other => {
                        retries += 1;
                        reasons.push(format!("{other:?}"));
                        assert!(
                            t.elapsed() < Duration::from_secs(20),
                            "majority send to shard {shard} not acked: {reasons:?}"
                        );
                        if other.is_err() {
                            on_m = open_retrying(
                                &[c.addr_of(m)],
                                &alice.1,
                                "m",
                                Duration::from_secs(10),
                            )
                            .await;
                        }
                        pause(Duration::from_millis(200)).await;
                    }
                }
            };
            // Once the majority has its leaders, sends go through without retries.
            assert_eq!(
                retries, 0,
                "majority send to shard {shard} needed retries: {reasons:?}"
            );
            acked.push(Acked {
                conv: conv.clone(),
                cmid,
                seq: r["seq"].as_u64().unwrap(),
                msg_id: r["msg_id"].as_str().unwrap().into(),
                retries,
                reasons,
                at: Instant::now(),
            });
        }
    }

    c.heal_all().await;
    c.wait_converged(&members, false, CONVERGE).await;
    // The refused sends, retried with the same client_msg_id through x, are stored once.
    for (conv, cmid) in &refused {
        let t = Instant::now();
        let r = loop {
            let r = on_x
                .call(json!({"type":"send","conversation_id":conv,"client_msg_id":cmid,"body":"retry after heal"}), REQUEST_TIMEOUT)
                .await;
            match r {
                Ok(r) if r["type"] == "ack" => break r,
                other => {
                    assert!(
                        t.elapsed() < Duration::from_secs(30),
                        "retry of {cmid} after heal: {other:?}"
                    );
                    if other.is_err() {
                        on_x =
                            open_retrying(&[c.addr_of(x)], &alice.1, "x", Duration::from_secs(10))
                                .await;
                    }
                    pause(Duration::from_millis(300)).await;
                }
            }
        };
        acked.push(Acked {
            conv: conv.clone(),
            cmid: cmid.clone(),
            seq: r["seq"].as_u64().unwrap(),
            msg_id: r["msg_id"].as_str().unwrap().into(),
            retries: 1,
            reasons: vec![],
            at: Instant::now(),
        });
    }

    let w = Workload {
        users: vec![alice.clone(), bob.clone()],
        convs: convs.iter().map(|(c, _)| c.clone()).collect(),
        owners: vec![0; convs.len()],
        devices: 1,
    };
    let report = LoadReport {
        acked,
        failed: vec![],
    };
    let hist = w.verify(&c.client_addrs(), &report).await;
    // Nothing but what was acked (the refused sends were retried and acked).
    for (h, (conv, _)) in hist.iter().zip(&convs) {
        let acks = report.acked.iter().filter(|a| &a.conv == conv).count();
        assert_eq!(
            h.len(),
            acks,
            "conversation {conv}: stored {} messages, acked {acks}",
            h.len()
        );
    }
    c.assert_replicas_identical(Duration::from_secs(60)).await;
    assert!(
        late.is_empty(),
        "sends on the isolated node were refused later than {UNAVAILABLE_WITHIN:?}:\n{}",
        late.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fourth_node_joins_and_leaves_under_load() {
    let mut c = TestCluster::start(3, SHARDS).await;
    let three = c.ids();
    c.wait_converged(&three, false, CONVERGE).await;
    let w = Workload::setup(c.addr_of(1), "j", LOAD_USERS, LOAD_DEVICES).await;
    // Clients stay on the first three nodes: the fourth one leaves again.
    let addrs: Vec<SocketAddr> = c.client_addrs();
    let load = w.start(addrs.clone());
    pause(Duration::from_secs(3)).await;

    let slot = c.join().await;
    let id4 = c.nodes[slot].id;
    assert_eq!(id4, 4);
    let four = c.ids();
    // Replicas move to node 4 (its fair share of them); the spread of leaderships is
    // checked at the end so that a failure there does not hide the rest.
    let v = c
        .wait_converged(&four, false, Duration::from_secs(150))
        .await;
    let mut findings: Vec<String> = Vec::new();
    let v = match c.try_converge(&four, true, CONVERGE).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("not balanced with node 4: {e}");
            findings.push(e);
            v
        }
    };
    if let Err(e) = c.wait_no_lingering(Duration::from_secs(20)).await {
        eprintln!("{e}");
        findings.push(e);
    }
    let held = v.replica_counts(&four)[&id4];
    eprintln!(
        "with node 4: replicas {:?}, leaders {:?}",
        v.replica_counts(&four),
        v.leader_counts(&four)
    );
    assert!(
        (12..=13).contains(&held),
        "node 4 holds {held} replicas, not its fair share (51/4)\n{}",
        v.summary()
    );
    pause(Duration::from_secs(2)).await;

    let (status, body) = c.leave(id4).await;
    assert_eq!(status, 202, "leave: {body}");
    let exit = c
        .wait_exit(slot, Duration::from_secs(150))
        .await
        .expect("node 4 did not exit after leaving");
    assert!(exit.success(), "node 4 exited with {exit}");
    let v = c.wait_converged(&three, false, CONVERGE).await;
    assert!(
        !v.holds_anything(id4),
        "node 4 still holds replicas: {}",
        v.summary()
    );
    // Leadership spread after a leave under load is the controller's slow path (one
    // transfer at a time, each waiting out the followers' leases); the fair spread itself is
    // asserted by three_and_five_node_clusters_form. Reported here, not asserted.
    if let Err(e) = c.try_converge(&three, true, CONVERGE).await {
        eprintln!("not balanced after node 4 left: {e}");
    }
    if let Err(e) = c.wait_no_lingering(Duration::from_secs(20)).await {
        eprintln!("after node 4 left: {e}");
        findings.push(format!("after node 4 left: {e}"));
    }
    assert_eq!(v.nodes.get(&id4), Some(&MemberState::Left), "{:?}", v.nodes);
    pause(Duration::from_secs(2)).await;

    let report = load.finish().await;
    eprintln!("load: {}", summary(&report));
    assert_no_failures(&report);
    assert!(
        report.acked.len() >= 100,
        "too little load: {}",
        summary(&report)
    );
    // Replicas moving must not make an acknowledged write fail more than once.
    if report.max_retries() > 1 {
        let worst: Vec<&Acked> = report
            .acked
            .iter()
            .filter(|a| a.retries > 1)
            .take(5)
            .collect();
        findings.push(format!(
            "acked sends needed more than one retry while replicas moved: {}; e.g. {worst:#?}",
            summary(&report)
        ));
    }
    w.verify(&addrs[..3], &report).await;
    c.assert_replicas_identical(Duration::from_secs(60)).await;
    assert!(findings.is_empty(), "{}", findings.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_restart_loses_nothing() {
    let mut c = TestCluster::start(3, SHARDS).await;
    let members = c.ids();
    c.wait_converged(&members, false, CONVERGE).await;
    let w = Workload::setup(c.addr_of(1), "r", LOAD_USERS, LOAD_DEVICES).await;
    let load = w.start(c.client_addrs());
    pause(Duration::from_secs(3)).await;
    for id in members.clone() {
        let slot = c.slot_of(id);
        let t = Instant::now();
        let st = c.terminate(slot, Duration::from_secs(30)).await;
        assert!(st.success(), "node {id} exited with {st} after SIGTERM");
        c.restart(slot).await;
        wait_caught_up(&mut c, id, Duration::from_secs(60)).await;
        eprintln!("node {id} restarted and caught up in {:?}", t.elapsed());
        c.wait_converged(&members, false, CONVERGE).await;
        pause(Duration::from_secs(2)).await;
    }
    let report = load.finish().await;
    eprintln!("load: {}", summary(&report));
    assert_no_failures(&report);
    assert!(
        report.acked.len() >= 100,
        "too little load: {}",
        summary(&report)
    );
    w.verify(&c.client_addrs(), &report).await;
    c.assert_replicas_identical(Duration::from_secs(60)).await;
}

/// A joiner given a token of another cluster, or a forged one, exits with an error and the
/// cluster does not grow.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_join_tokens_are_refused() {
    let a = TestCluster::start(1, 4).await;
    let mut b = TestCluster::start(1, 4).await;
    assert_ne!(a.token, b.token);

    // B's own CA fingerprint with a made-up secret.
    let raw = URL_SAFE_NO_PAD
        .decode(
            b.token
                .strip_prefix("chatnode-join-v1.")
                .expect("token prefix"),
        )
        .expect("token encoding");
    let mut forged = raw.clone();
    for byte in &mut forged[..32] {
        *byte ^= 0x5a;
    }
    let forged = format!("chatnode-join-v1.{}", URL_SAFE_NO_PAD.encode(forged));
    let seed = b.nodes[0].peer.to_string();
    for (what, token) in [
        ("cluster A's token", a.token.clone()),
        ("a forged secret", forged),
        ("garbage", "not-a-token".to_string()),
    ] {
        let slot = b.new_proc();
        let t = Instant::now();
        b.spawn(slot, Some((seed.clone(), token)));
        let st = b
            .wait_exit(slot, Duration::from_secs(100))
            .await
            .unwrap_or_else(|| panic!("a joiner with {what} is still running"));
        eprintln!("joiner with {what}: {st} after {:?}", t.elapsed());
        assert!(!st.success(), "a joiner with {what} exited successfully");
        assert!(
            b.nodes[slot].data.join("cluster.json").metadata().is_err(),
            "a joiner with {what} stored a cluster identity"
        );
    }
    let v = b.view().await.expect("status");
    assert_eq!(v.nodes.len(), 1, "cluster B grew: {:?}", v.nodes);
    // The right token still works.
    let ok = b.join().await;
    assert_eq!(b.nodes[ok].id, 2);
    let v = b.view().await.expect("status");
    assert_eq!(v.nodes.len(), 2, "{:?}", v.nodes);
    drop(a);
}

#[cfg(unix)]
fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chatnode_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_chatnode"))
        .args(args)
        .env_remove("CHATNODE_ADMIN_TOKEN")
        .output()
        .expect("run the chatnode CLI")
}

/// Issue 12, point 5: `chatnode rotate-join-token` replaces the join token cluster-wide (the
/// old one admits nobody through any node; the new one works; every node rewrites its
/// join-token file), and a node that left cannot come back under its old identity: the
/// others refuse its certificate; the same machine comes back only as a new node.
#[tokio::test(flavor = "multi_thread")]
async fn rotated_join_token_and_left_identity_are_refused() {
    let mut c = TestCluster::start(2, 2).await;
    let old = c.token.clone();
    #[cfg(unix)]
    for p in &c.nodes {
        assert_eq!(mode_of(&p.data), 0o700, "{} data dir", p.name);
        assert_eq!(mode_of(&p.data.join("db")), 0o700, "{} db dir", p.name);
        for f in ["cluster.json", "join-token", "admin-token"] {
            assert_eq!(mode_of(&p.data.join(f)), 0o600, "{} {f}", p.name);
        }
    }

    // The CLI: status with --admin-token, refused with the join token or without a token.
    let addr1 = c.nodes[0].client.to_string();
    let out = chatnode_cli(&["status", "--addr", &addr1, "--admin-token", &c.admin_token]);
    assert!(out.status.success(), "status: {out:?}");
    let out = chatnode_cli(&["status", "--addr", &addr1, "--admin-token", &old]);
    assert!(!out.status.success(), "status accepted the join token");
    let empty = tempfile::tempdir().unwrap();
    let empty_dir = empty.path().to_str().unwrap();
    let out = chatnode_cli(&["status", "--addr", &addr1, "--data-dir", empty_dir]);
    assert!(!out.status.success(), "status without a token succeeded");

    // Rotate through node 1, the admin token read from its data dir.
    let n1_dir = c.nodes[0].data.to_str().unwrap().to_string();
    let out = chatnode_cli(&["rotate-join-token", "--addr", &addr1, "--data-dir", &n1_dir]);
    assert!(out.status.success(), "rotate-join-token: {out:?}");
    let new = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(new.starts_with("chatnode-join-v1."), "{new:?}");
    assert_ne!(new, old);
    // Every node rewrites its join-token file.
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in &c.nodes {
        let f = p.data.join("join-token");
        while std::fs::read_to_string(&f).unwrap_or_default().trim() != new {
            assert!(
                Instant::now() < deadline,
                "{} kept its old join token",
                p.name
            );
            pause(Duration::from_millis(100)).await;
        }
    }
    // The old token admits nobody, through either node.
    for seed in [0, 1] {
        let seed_addr = c.nodes[seed].peer.to_string();
        let slot = c.new_proc();
        c.spawn(slot, Some((seed_addr, old.clone())));
        let st = c
            .wait_exit(slot, Duration::from_secs(100))
            .await
            .unwrap_or_else(|| panic!("a joiner with the old token (seed n{}) runs", seed + 1));
        assert!(
            !st.success(),
            "a joiner with the old token exited with {st}"
        );
        assert!(
            c.nodes[slot].data.join("cluster.json").metadata().is_err(),
            "a joiner with the old token stored a cluster identity"
        );
    }
    // The new one works.
    c.token = new.clone();
    let s3 = c.join().await;
    let id3 = c.nodes[s3].id;
    assert_eq!(id3, 3, "refused joiners were given no node id");

    // Node 3 leaves, then is started again from its data dir: refused by the others.
    let (status, body) = c.leave(id3).await;
    assert_eq!(status, 202, "leave: {body}");
    let exit = c
        .wait_exit(s3, Duration::from_secs(150))
        .await
        .expect("node 3 did not exit after leaving");
    assert!(exit.success(), "node 3 exited with {exit}");
    let two: BTreeSet<u64> = [1, 2].into();
    let v = c.wait_converged(&two, false, CONVERGE).await;
    assert_eq!(v.nodes.get(&id3), Some(&MemberState::Left));
    let logs_before: Vec<usize> = c.nodes[..2]
        .iter()
        .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default().len())
        .collect();
    c.spawn(s3, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = loop {
        let seen = c.nodes[..2].iter().zip(&logs_before).any(|(p, before)| {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            log.get(*before..)
                .is_some_and(|l| l.contains("call from a revoked node"))
        });
        if seen {
            break "refused by a member";
        }
        if let Some(st) = c.wait_exit(s3, Duration::ZERO).await {
            assert!(!st.success(), "node 3 restarted and exited with {st}");
            break "refused to start";
        }
        assert!(
            Instant::now() < deadline,
            "node 3 came back under its old identity unnoticed"
        );
        // Make node 3 call its former peers (a status asks every node) rather than wait
        // for one of its own loops to; the answer does not matter, the members' logs do.
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            get_json(c.nodes[s3].client, "/admin/status", &c.admin_token),
        )
        .await;
        pause(Duration::from_millis(200)).await;
    };
    eprintln!("node 3 with its old identity: {refused}");
    let v = c.view().await.expect("status");
    assert_eq!(v.nodes.get(&id3), Some(&MemberState::Left));
    assert!(!v.holds_anything(id3), "{}", v.summary());
    c.kill(s3);

    // The same machine (same peer address), wiped, joins again: as a new node.
    std::fs::remove_dir_all(&c.nodes[s3].data).unwrap();
    let seed = c.nodes[0].peer.to_string();
    c.spawn(s3, Some((seed, new.clone())));
    c.wait_ready(s3, Duration::from_secs(90)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        if let Ok(v) = admin_status(c.nodes[s3].client, &c.admin_token).await {
            break v.node_id;
        }
        assert!(
            Instant::now() < deadline,
            "no node id from the rejoined node"
        );
        pause(Duration::from_millis(200)).await;
    };
    assert_eq!(id, 4, "a wiped machine rejoins under a new id");
    c.nodes[s3].id = id;
    let v = c.view().await.expect("status");
    assert_eq!(v.nodes.get(&id3), Some(&MemberState::Left));
    assert_eq!(v.nodes.get(&4), Some(&MemberState::Active));
}

// ---------------------------------------------------------------------------------------
// Issue 12, points 7 and 8: byte caps on Raft RPCs, and G5 on every push path.

/// Sends `n` messages of `body` to `conv` on `c`, at most `window` in flight, each retried
/// with its `client_msg_id` until acked (pushes on the way are dropped); returns the seqs.
async fn send_pipelined(
    c: &mut Client,
    conv: &str,
    prefix: &str,
    n: usize,
    body: &str,
    window: usize,
) -> Vec<u64> {
    let frame = |k: usize| {
        json!({"type":"send","id":1_000_000 + k,"conversation_id":conv,
               "client_msg_id":format!("{prefix}-{k}"),"body":body})
        .to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seqs = Vec::with_capacity(n);
    let mut next = 0;
    let mut in_flight = 0;
    while seqs.len() < n {
        while in_flight < window && next < n {
            c.send_text(frame(next)).await;
            next += 1;
            in_flight += 1;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} sends acked",
            seqs.len()
        );
        let Some(v) = c.recv(Duration::from_secs(20)).await else {
            panic!("no reply with {in_flight} sends in flight");
        };
        let Some(id) = v["id"].as_u64().filter(|id| *id >= 1_000_000) else {
            continue;
        };
        let k = (id - 1_000_000) as usize;
        if v["type"] == "ack" {
            seqs.push(v["seq"].as_u64().expect("seq"));
            in_flight -= 1;
        } else if v["retryable"] == true {
            pause(Duration::from_millis(200)).await;
            c.send_text(frame(k)).await;
        } else {
            panic!("send {k} refused: {v}");
        }
    }
    seqs
}

/// A follower that was down while its group's leader took far more than one frame's worth
/// of 4,000-character messages (16 KB each: 4-byte code points) catches up after its
/// restart: the same applied index and checksum as the others. Fails without the byte cut
/// of AppendEntries: the whole backlog (≈ 40 entries, 22 MB) went into one RPC, over the
/// 16 MiB frame, refused on every retry.
#[tokio::test(flavor = "multi_thread")]
async fn far_behind_follower_catches_up_with_large_messages() {
    const SHARDS_HERE: u32 = 2;
    const MESSAGES: usize = 1_400;
    const READER_ATTEMPTS: u32 = 10;
    let mut c = TestCluster::start(3, SHARDS_HERE).await;
    let members = c.ids();
    c.wait_converged(&members, false, CONVERGE).await;
    let (_, a_token) = register_user(c.addr_of(1), "bulk-a").await;
    let (b_id, _) = register_user(c.addr_of(1), "bulk-b").await;
    let mut a = Client::connect(c.addr_of(1), &a_token, "a1").await;
    let r = a
        .request(
            json!({"type":"create_conversation","kind":"group","members":[b_id],"title":"bulk"}),
        )
        .await;
    let conv = r["conversation"]["conversation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("create: {r}"))
        .to_string();
    let shard = ShardMap::new(SHARDS_HERE).shard_for_conversation(&conv);
    // Stop a follower of the conversation's shard (not node 1, where the client is).
    let v = c.view().await.expect("status");
    let leader = v.leader_of(shard).expect("leader");
    let victim = *members
        .iter()
        .find(|id| **id != leader && **id != 1)
        .expect("a follower");
    eprintln!("shard {shard} led by {leader}; stopping node {victim}");
    let slot = c.slot_of(victim);
    c.kill(slot);

    let body: String = "\u{1F600}".repeat(4_000);
    let up: Vec<u64> = members.iter().copied().filter(|id| *id != victim).collect();
    let mut senders = Vec::new();
    for k in 0..4 {
        let node = up[k % up.len()];
        senders.push(Client::connect(c.addr_of(node), &a_token, &format!("bulk{k}")).await);
    }
    let mut tasks = Vec::new();
    for (k, mut s) in senders.into_iter().enumerate() {
        let (conv, body) = (conv.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            send_pipelined(&mut s, &conv, &format!("big{k}"), MESSAGES / 4, &body, 16).await
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.expect("sender").len();
    }
    assert_eq!(acked, MESSAGES);
    eprintln!(
        "{MESSAGES} messages, {} MB, sent while node {victim} was down",
        MESSAGES * body.len() / 1_000_000
    );

    c.restart(slot).await;
    c.assert_replicas_identical(Duration::from_secs(180)).await;
    // The restarted node may still be fanning out the pushes of what it caught up on: a
    // reader that a burst of 16 KB pushes overflows is dropped as a slow consumer and, like
    // a real client, connects again and reads again.
    let mut hist = None;
    for attempt in 1..=READER_ATTEMPTS {
        let mut reader = Client::connect(c.addr_of(victim), &a_token, "reader").await;
        reader.0.keep_pushes(0);
        match reader.try_history_all(&conv).await {
            Ok(h) => {
                hist = Some(h);
                break;
            }
            Err(e) => eprintln!("reader attempt {attempt}: {e}"),
        }
        pause(Duration::from_secs(2)).await;
    }
    let hist = hist.expect("no complete history read on the restarted node");
    let texts = hist.iter().filter(|m| m["kind"] == "text").count();
    assert_eq!(texts, MESSAGES, "history on the restarted node");
}

/// G5 across a leader change: X is removed at seq n, the leader of the conversation's shard
/// is killed at once, and the owner keeps sending through the new leader. No device of X,
/// on any node, is pushed a seq above n — not by the replicas' own applies, nor by the new
/// leader's refill (`LeaderChanged`) or a gap fill — while the members that stay get the
/// messages.
#[tokio::test(flavor = "multi_thread")]
async fn removed_member_gets_nothing_after_a_leader_change() {
    const SHARDS_HERE: u32 = 4;
    let mut c = TestCluster::start(3, SHARDS_HERE).await;
    let members = c.ids();
    c.wait_converged(&members, false, CONVERGE).await;
    let (_, a_token) = register_user(c.addr_of(1), "g5-owner").await;
    let (b_id, b_token) = register_user(c.addr_of(1), "g5-stays").await;
    let (x_id, x_token) = register_user(c.addr_of(1), "g5-removed").await;
    let map = ShardMap::new(SHARDS_HERE);

    // A conversation whose shard is led by node 2 or 3, so the owner on node 1 survives the
    // kill of the leader.
    let mut owner = Client::connect(c.addr_of(1), &a_token, "a1").await;
    let (conv, shard, leader) = loop {
        let r = owner
            .request(json!({"type":"create_conversation","kind":"group","members":[b_id, x_id],"title":"g5"}))
            .await;
        let conv = r["conversation"]["conversation_id"]
            .as_str()
            .unwrap_or_else(|| panic!("create: {r}"))
            .to_string();
        let shard = map.shard_for_conversation(&conv);
        let v = c.view().await.expect("status");
        match v.leader_of(shard) {
            Some(l) if l != 1 => break (conv, shard, l),
            _ => continue,
        }
    };
    eprintln!("conversation {conv} in shard {shard}, led by node {leader}");
    // X and B on every node.
    let mut xs = BTreeMap::new();
    let mut bs = BTreeMap::new();
    for id in &members {
        xs.insert(
            *id,
            Client::connect(c.addr_of(*id), &x_token, &format!("x{id}")).await,
        );
        bs.insert(
            *id,
            Client::connect(c.addr_of(*id), &b_token, &format!("b{id}")).await,
        );
    }
    for k in 0..5 {
        let ack = owner.send_msg(&conv, &format!("pre{k}"), "before").await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let r = owner
        .request(json!({"type":"remove_member","conversation_id":conv,"user_id":x_id}))
        .await;
    let removed_at = r["conversation"]["last_seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("remove: {r}"));
    // The leader change right after the removal.
    c.kill(c.slot_of(leader));
    xs.remove(&leader);
    bs.remove(&leader);
    let mut last = 0;
    for k in 0..40 {
        let cmid = format!("post{k}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ack = owner.send_msg(&conv, &cmid, &format!("after {k}")).await;
            if ack["type"] == "ack" {
                last = ack["seq"].as_u64().expect("seq");
                break;
            }
            assert!(
                ack["retryable"] == true && Instant::now() < deadline,
                "send {k}: {ack}"
            );
            pause(Duration::from_millis(200)).await;
        }
    }
    assert!(last > removed_at);
    // Whatever could reach X has had time to: refills, gap fills, pushes by apply.
    for (node, x) in xs.iter_mut() {
        for p in x.collect("message", Duration::from_secs(5)).await {
            if p["conversation_id"] == conv.as_str() {
                let seq = p["seq"].as_u64().unwrap_or(0);
                assert!(
                    seq <= removed_at,
                    "X (removed at seq {removed_at}) was pushed seq {seq} on node {node}: {p}"
                );
            }
        }
    }
    // The member who stays gets the messages after the removal (on some node).
    let mut b_got = 0;
    for b in bs.values_mut() {
        b_got += b
            .collect("message", Duration::from_secs(1))
            .await
            .iter()
            .filter(|p| {
                p["conversation_id"] == conv.as_str() && p["seq"].as_u64() > Some(removed_at)
            })
            .count();
    }
    assert!(b_got > 0, "B was pushed nothing after the removal");
}
