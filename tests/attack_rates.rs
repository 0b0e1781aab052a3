//! Attacks on the per-user budgets (issue 12 point 2, docs/SECURITY.md, "Rate limits and caps"): floods of
//! every frame type, refused requests that must cost no Raft write, typing at a stalled
//! member, the hourly creation budget and the memberships cap. Each runs against a real
//! in-process node.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Sends `frame` `copies` times with ids `<tag>-<n>` (pipelined) and returns the replies
/// that came for them within `wait` (a successful `typing` has none).
async fn flood(
    c: &mut Client,
    tag: &str,
    frame: &Value,
    copies: usize,
    wait: Duration,
) -> Vec<Value> {
    let ids: Vec<Value> = (0..copies).map(|n| json!(format!("{tag}-{n}"))).collect();
    for id in &ids {
        let mut f = frame.clone();
        f["id"] = id.clone();
        // Sends must not repeat a client_msg_id (a repeat of a stored one gets its ack).
        if f.get("client_msg_id").is_some() {
            f["client_msg_id"] = id.clone();
        }
        c.send_text(f.to_string()).await;
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut replies = Vec::new();
    loop {
        let (mine, rest): (Vec<Value>, Vec<Value>) = c
            .pushes
            .drain(..)
            .partition(|p| p.get("id").is_some_and(|i| ids.contains(i)));
        c.pushes = rest.into();
        replies.extend(mine);
        let limited = replies.iter().any(|r| r["code"] == "rate_limited");
        if replies.len() == copies || limited && frame["type"] == "typing" {
            return replies;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return replies;
        }
        match c.recv(left).await {
            Some(v) => c.pushes.push_back(v),
            None => return replies,
        }
    }
}

fn assert_limited(replies: &[Value], what: &str) {
    let limited: Vec<&Value> = replies
        .iter()
        .filter(|r| r["code"] == "rate_limited")
        .collect();
    assert!(
        !limited.is_empty(),
        "{what}: no rate_limited among {replies:?}"
    );
    for r in limited {
        assert_eq!(r["retryable"], true, "{what}: {r}");
        let wait = r["retry_after_ms"].as_u64().unwrap_or(0);
        assert!(wait > 0, "{what}: no retry_after_ms in {r}");
    }
}

const LIMIT: u32 = 5;

fn small_budgets(c: &mut chatnode::config::Config) {
    let l = &mut c.limits;
    l.user_messages_per_minute = LIMIT;
    l.typing_per_minute = LIMIT;
    l.receipts_per_minute = LIMIT;
    l.presence_subscriptions_per_minute = LIMIT;
    l.reads_per_minute = LIMIT;
    l.membership_changes_per_minute = LIMIT;
    l.pings_per_minute = LIMIT;
}

/// Bob (the victim's peer) sets up a direct conversation and a group with alice, where
/// alice is admin; returns (dm, group).
async fn setup_pair(n: &TestNode, bob: &mut Client, alice: &str) -> (String, String) {
    let dm = bob.create_direct(alice).await;
    let r = bob.send_msg(&dm, "hello-1", "hello").await;
    assert_eq!(r["type"], "ack", "{r}");
    let g = bob
        .request(json!({"type":"create_conversation","kind":"group","members":[alice],"title":"g"}))
        .await;
    let group = g["conversation"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = bob
        .request(json!({"type":"set_role","conversation_id":group,"user_id":alice,"role":"admin"}))
        .await;
    assert_eq!(r["type"], "conversation", "{r}");
    let _ = n;
    (dm, group)
}

/// Every client frame type of alice's, flooded: each is refused with `rate_limited` and
/// `retry_after_ms` once its budget is spent, while bob keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_every_frame_type_is_rate_limited_while_others_are_served() {
    let n = start_node_with(small_budgets).await;
    let (alice, at) = register(n.addr, "alice").await;
    let (_bob, bt) = register(n.addr, "bob").await;
    let (carol, _) = register(n.addr, "carol").await;
    let mut a = Client::connect(n.addr, &at, "a").await;
    let mut b = Client::connect(n.addr, &bt, "b").await;
    let (dm, group) = setup_pair(&n, &mut b, &alice).await;

    let frames = vec![
        json!({"type":"typing","conversation_id":dm,"state":"start"}),
        json!({"type":"delivered","conversation_id":dm,"seq":1}),
        json!({"type":"read","conversation_id":dm,"seq":1}),
        json!({"type":"subscribe_presence","user_ids":[b.user_id]}),
        json!({"type":"history","conversation_id":dm}),
        json!({"type":"sync","conversations":{}}),
        json!({"type":"list_conversations"}),
        json!({"type":"create_conversation","kind":"direct","members":[carol]}),
        json!({"type":"add_members","conversation_id":group,"members":[carol]}),
        json!({"type":"remove_member","conversation_id":group,"user_id":carol}),
        json!({"type":"set_role","conversation_id":group,"user_id":b.user_id,"role":"member"}),
        json!({"type":"leave","conversation_id":group}),
        json!({"type":"send","conversation_id":dm,"client_msg_id":"x","body":"spam"}),
        json!({"type":"edit","conversation_id":dm,"client_msg_id":"x","seq":1,"body":"spam"}),
        json!({"type":"delete","conversation_id":dm,"client_msg_id":"x","seq":1}),
        json!({"type":"ping"}),
    ];
    for (i, f) in frames.iter().enumerate() {
        let ty = f["type"].as_str().unwrap();
        let replies = flood(&mut a, &format!("f{i}"), f, LIMIT as usize + 2, WAIT).await;
        assert_limited(&replies, ty);
        // The other user's budgets are untouched: bob is served at once (a different kind
        // each time, so that bob's own budgets of LIMIT last the whole test).
        let (check, answer) = match i % 4 {
            0 => (
                json!({"type":"history","conversation_id":dm,"limit":1}),
                "history",
            ),
            1 => (json!({"type":"ping"}), "pong"),
            2 => (
                json!({"type":"delivered","conversation_id":dm,"seq":1}),
                "ok",
            ),
            _ => (
                json!({"type":"subscribe_presence","user_ids":[alice]}),
                "presence",
            ),
        };
        let r = b.request(check).await;
        assert_eq!(
            r["type"], answer,
            "bob refused after alice's {ty} flood: {r}"
        );
    }
    let r = b.request(json!({"type":"ping"})).await;
    assert_eq!(r["type"], "pong", "{r}");
    let r = b.send_msg(&dm, "hello-2", "still here").await;
    assert_eq!(r["type"], "ack", "{r}");
}

/// Synced log writes stop changing (the node is idle).
async fn quiet_synced_writes(n: &TestNode) -> u64 {
    let mut last = n.node.synced_writes();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = n.node.synced_writes();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the node never went quiet");
}

/// Once alice's budgets are spent, a flood of every writing or reading frame type is
/// refused without a single Raft write (the log writer's synced-write count stays put).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_cost_no_raft_write() {
    // 2 per minute: a token comes back only after 30 s, longer than the test's refused phase.
    const SPEND: usize = 2;
    let n = start_node_with(|c| {
        small_budgets(c);
        let l = &mut c.limits;
        l.user_messages_per_minute = SPEND as u32;
        l.typing_per_minute = SPEND as u32;
        l.receipts_per_minute = SPEND as u32;
        l.presence_subscriptions_per_minute = SPEND as u32;
        l.reads_per_minute = SPEND as u32;
        l.membership_changes_per_minute = SPEND as u32;
    })
    .await;
    let (alice, at) = register(n.addr, "alice").await;
    let (_bob, bt) = register(n.addr, "bob").await;
    let (carol, _) = register(n.addr, "carol").await;
    let mut a = Client::connect(n.addr, &at, "a").await;
    let mut b = Client::connect(n.addr, &bt, "b").await;
    let dm = b.create_direct(&alice).await;
    let r = b.send_msg(&dm, "hello-1", "hello").await;
    assert_eq!(r["type"], "ack", "{r}");
    let g = b
        .request(json!({"type":"create_conversation","kind":"group","members":[alice]}))
        .await;
    let group = g["conversation"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();

    let frames = [
        json!({"type":"delivered","conversation_id":dm,"seq":1}),
        json!({"type":"create_conversation","kind":"group","members":[carol]}),
        json!({"type":"send","conversation_id":dm,"client_msg_id":"x","body":"spam"}),
        json!({"type":"typing","conversation_id":dm,"state":"start"}),
        json!({"type":"history","conversation_id":dm}),
        json!({"type":"subscribe_presence","user_ids":[b.user_id]}),
    ];
    // Spend every budget first (these may write).
    for (i, f) in frames.iter().enumerate() {
        let replies = flood(&mut a, &format!("spend{i}"), f, SPEND + 1, WAIT).await;
        assert_limited(&replies, f["type"].as_str().unwrap());
    }
    let before = quiet_synced_writes(&n).await;
    let refused = vec![
        json!({"type":"delivered","conversation_id":dm,"seq":1}),
        json!({"type":"read","conversation_id":dm,"seq":1}),
        json!({"type":"create_conversation","kind":"group","members":[carol]}),
        json!({"type":"create_conversation","kind":"direct","members":[carol]}),
        json!({"type":"add_members","conversation_id":group,"members":[carol]}),
        json!({"type":"set_role","conversation_id":group,"user_id":b.user_id,"role":"member"}),
        json!({"type":"leave","conversation_id":group}),
        json!({"type":"send","conversation_id":dm,"client_msg_id":"x","body":"spam"}),
        json!({"type":"delete","conversation_id":dm,"client_msg_id":"x","seq":1}),
    ];
    for (i, f) in refused.iter().enumerate() {
        let replies = flood(&mut a, &format!("r{i}"), f, 30, WAIT).await;
        assert_eq!(replies.len(), 30, "{f}: {replies:?}");
        assert!(
            replies.iter().all(|r| r["code"] == "rate_limited"),
            "{f}: {replies:?}"
        );
    }
    // Receipts are proposed after a 50 ms coalescing window; the outbox sweeps every 1 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = n.node.synced_writes();
    assert_eq!(before, after, "refused requests wrote to the Raft log");
}

/// Alice types at bob, who stopped reading: bob's queue fills, the typing pushes are dropped,
/// and bob stays connected (a committed message to a full queue still disconnects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_at_a_stalled_member_drops_typing_not_the_member() {
    let n = start_node_with(|c| c.limits.connection_send_queue_max = 16).await;
    let (alice, at) = register(n.addr, "alice").await;
    let (bob, bt) = register(n.addr, "bob").await;
    let mut a = Client::connect(n.addr, &at, "a").await;
    let mut b = Client::connect_small_buffer(n.addr, &bt, "b", 4096).await;
    let dm = a.create_direct(&bob).await;
    let _ = alice;
    let disconnects_before = n.node.slow_consumer_disconnects();
    // Bob reads nothing from here on. Each typing frame is one push to him.
    let mut sent = 0;
    for round in 0..40 {
        for i in 0..250 {
            let state = if (round + i) % 2 == 0 {
                "start"
            } else {
                "stop"
            };
            a.send_text(json!({"type":"typing","conversation_id":dm,"state":state}).to_string())
                .await;
            sent += 1;
        }
        // Wait for alice's frames to be handled (pipelined; the pong comes after most).
        let r = a.request(json!({"type":"ping"})).await;
        assert_eq!(r["type"], "pong", "{r}");
        if n.node.ephemeral_pushes_dropped() > 100 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        n.node.slow_consumer_disconnects(),
        disconnects_before,
        "a typing flood disconnected a member"
    );
    let dropped = n.node.ephemeral_pushes_dropped();
    assert!(
        dropped > 0,
        "bob's queue never filled ({sent} typing frames)"
    );
    // Bob reads again: everything queued arrives, then his own request is answered.
    let r = b.request(json!({"type":"ping"})).await;
    assert_eq!(r["type"], "pong", "{r}");
    let r = a.send_msg(&dm, "after", "still connected?").await;
    assert_eq!(r["type"], "ack", "{r}");
    let m = b
        .push_of("message", WAIT)
        .await
        .expect("bob gets the message");
    assert_eq!(m["client_msg_id"], "after", "{m}");
}

/// `conversations_created_per_hour`: past it, `create_conversation` is `rate_limited` with a
/// retry_after_ms of the order of the hour's refill; other users are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_created_per_hour_cap_holds() {
    let n = start_node_with(|c| c.limits.conversations_created_per_hour = 3).await;
    let (_a, at) = register(n.addr, "alice").await;
    let (bob, bt) = register(n.addr, "bob").await;
    let mut a = Client::connect(n.addr, &at, "a").await;
    for i in 0..3 {
        let r = a
            .request(json!({"type":"create_conversation","kind":"group","members":[bob],"title":format!("g{i}")}))
            .await;
        assert_eq!(r["type"], "conversation", "{r}");
    }
    for kind in ["group", "direct"] {
        let r = a
            .request(json!({"type":"create_conversation","kind":kind,"members":[bob]}))
            .await;
        assert_eq!(r["code"], "rate_limited", "{r}");
        // 3 per hour: one more in 20 minutes.
        let wait = r["retry_after_ms"].as_u64().unwrap_or(0);
        assert!(wait > 1_000_000, "{r}");
    }
    let r = a.request(json!({"type":"list_conversations"})).await;
    assert_eq!(r["conversations"].as_array().map(Vec::len), Some(3), "{r}");
    let mut b = Client::connect(n.addr, &bt, "b").await;
    let r = b
        .request(json!({"type":"create_conversation","kind":"group","members":[a.user_id]}))
        .await;
    assert_eq!(r["type"], "conversation", "bob has his own budget: {r}");
}

async fn group_with(c: &mut Client, members: &[&str]) -> Value {
    c.request(json!({"type":"create_conversation","kind":"group","members":members}))
        .await
}

fn conversation_count(list: &Value) -> usize {
    list["conversations"].as_array().map_or(0, Vec::len)
}

/// `memberships_per_user_max`: nobody can put bob in more conversations than the cap, by
/// creating or adding, one at a time or racing; leaving frees a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memberships_per_user_cap_holds() {
    const CAP: usize = 6;
    let n = start_node_with(|c| c.limits.memberships_per_user_max = CAP as u32).await;
    let (bob, bt) = register(n.addr, "bob").await;
    let (_c, ct) = register(n.addr, "carol").await;
    let (_d, dt) = register(n.addr, "dave").await;
    let (erin, _) = register(n.addr, "erin").await;
    let (_f, ft) = register(n.addr, "frank").await;
    let mut b = Client::connect(n.addr, &bt, "b").await;
    let mut carol = Client::connect(n.addr, &ct, "c").await;
    let mut dave = Client::connect(n.addr, &dt, "d").await;
    let mut frank = Client::connect(n.addr, &ft, "f").await;

    let mut carols = Vec::new();
    for _ in 0..CAP {
        let r = group_with(&mut carol, &[&bob]).await;
        assert_eq!(r["type"], "conversation", "{r}");
        carols.push(
            r["conversation"]["conversation_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Bob is full: neither a new group nor an add nor a direct conversation takes him.
    let r = group_with(&mut dave, &[&bob]).await;
    assert_eq!(r["code"], "bad_request", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("too many conversations"),
        "{r}"
    );
    let r = dave
        .request(json!({"type":"create_conversation","kind":"direct","members":[bob]}))
        .await;
    assert_eq!(r["code"], "bad_request", "{r}");
    let r = group_with(&mut dave, &[&erin]).await;
    assert_eq!(r["type"], "conversation", "{r}");
    let dg = r["conversation"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let add = json!({"type":"add_members","conversation_id":dg,"members":[bob]});
    let r = dave.request(add.clone()).await;
    assert_eq!(r["code"], "bad_request", "{r}");
    let r = b.request(json!({"type":"list_conversations"})).await;
    assert_eq!(conversation_count(&r), CAP, "{r}");

    // Leaving frees a slot.
    let r = b
        .request(json!({"type":"leave","conversation_id":carols[0]}))
        .await;
    assert_eq!(r["type"], "conversation", "{r}");
    let r = dave.request(add.clone()).await;
    assert_eq!(r["type"], "conversation", "{r}");
    let r = b.request(json!({"type":"list_conversations"})).await;
    assert_eq!(conversation_count(&r), CAP, "{r}");

    // A race past the gateway's check: bob has 2 free slots, frank creates 6 groups with him
    // at once. The index apply in bob's shard admits 2; the others are taken back.
    for c in &carols[1..3] {
        let r = b.request(json!({"type":"leave","conversation_id":c})).await;
        assert_eq!(r["type"], "conversation", "{r}");
    }
    let ids: Vec<Value> = (0..6).map(|i| json!(format!("race-{i}"))).collect();
    for id in &ids {
        frank
            .send_text(
                json!({"id":id,"type":"create_conversation","kind":"group","members":[bob]})
                    .to_string(),
            )
            .await;
    }
    let mut accepted = 0;
    for id in &ids {
        let r = frank.reply_to(id.clone()).await;
        if r["type"] == "conversation" {
            accepted += 1;
        } else {
            assert_eq!(r["code"], "bad_request", "{r}");
        }
    }
    // The relay delivers (and takes back) in the background within about a second.
    let mut bobs_memberships = usize::MAX;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mine = frank.request(json!({"type":"list_conversations"})).await;
        let in_franks = mine["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| {
                c["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["user_id"] == bob.as_str())
            })
            .count();
        // Bob's others: carol's three left, dave's one.
        bobs_memberships = in_franks + 4;
        if bobs_memberships <= CAP {
            break;
        }
    }
    assert!(
        bobs_memberships <= CAP,
        "bob is in {bobs_memberships} conversations ({accepted} racing creations accepted)"
    );
    let r = b.request(json!({"type":"list_conversations"})).await;
    assert!(conversation_count(&r) <= CAP, "{r}");
    eprintln!("race: {accepted} of 6 creations passed the gateway's check");
}
