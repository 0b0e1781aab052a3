//! End-to-end over real WebSockets against an in-process node.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_two_devices_direct_and_group() {
    let n = start_node().await;
    let (alice, at) = register(n.addr, "alice").await;
    let (bob, bt) = register(n.addr, "bob").await;
    let (_carol, ct) = register(n.addr, "carol").await;
    let mut a1 = Client::connect(n.addr, &at, "a-phone").await;
    let mut a2 = Client::connect(n.addr, &at, "a-laptop").await;
    let mut b1 = Client::connect(n.addr, &bt, "b-phone").await;
    let mut b2 = Client::connect(n.addr, &bt, "b-laptop").await;
    let mut c1 = Client::connect(n.addr, &ct, "c-phone").await;

    // A direct conversation exists once, whoever creates it.
    let d = a1
        .request(json!({"type":"create_conversation","kind":"direct","members":[bob]}))
        .await;
    assert_eq!(d["type"], "conversation", "{d}");
    let direct = d["conversation"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let again = b1
        .request(json!({"type":"create_conversation","kind":"direct","members":[alice]}))
        .await;
    assert_eq!(again["conversation"]["conversation_id"], direct.as_str());
    assert_eq!(d["conversation"]["last_seq"], 0, "creating consumes no seq");

    // A send is pushed to every device of both users except the sending one.
    let ack = a1.send_msg(&direct, "m1", "hi bob").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["seq"], 1);
    for c in [&mut a2, &mut b1, &mut b2] {
        let p = c.push_of("message", WAIT).await.expect("push");
        assert_eq!(p["seq"], 1);
        assert_eq!(p["body"], "hi bob");
        assert_eq!(p["sender_id"], alice.as_str());
        assert_eq!(p["sender_device"], "a-phone");
        assert_eq!(p["kind"], "text");
    }
    assert!(
        a1.push_of("message", SHORT).await.is_none(),
        "sender got its own push"
    );
    assert!(
        c1.push_of("message", SHORT).await.is_none(),
        "non-member got a push"
    );

    // A retry returns the original ack and is not pushed again.
    let retry = a1.send_msg(&direct, "m1", "different body").await;
    assert_eq!(
        (
            retry["seq"].clone(),
            retry["msg_id"].clone(),
            retry["ts"].clone()
        ),
        (ack["seq"].clone(), ack["msg_id"].clone(), ack["ts"].clone())
    );
    assert!(
        b1.push_of("message", SHORT).await.is_none(),
        "retry pushed twice"
    );

    // Group: carol is a member; pushes go everywhere but the sender.
    let g = b2.request(json!({"type":"create_conversation","kind":"group","members":[alice, common_id(&c1)],"title":"team"})).await;
    let group = g["conversation"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(g["conversation"]["members"].as_array().unwrap().len(), 3);
    let ack = c1.send_msg(&group, "g1", "hello team").await;
    assert_eq!(ack["seq"], 1);
    for c in [&mut a1, &mut a2, &mut b1, &mut b2] {
        let p = c.push_of("message", WAIT).await.expect("group push");
        assert_eq!(p["conversation_id"], group.as_str());
    }

    // A non-member gets forbidden, for an existing and a missing conversation alike.
    let r = c1.send_msg(&direct, "x1", "let me in").await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let r = c1
        .request(json!({"type":"history","conversation_id":direct}))
        .await;
    assert_eq!(r["code"], "forbidden");
    let r = c1.send_msg("NoSuchConversation", "x2", "hello?").await;
    assert_eq!(r["code"], "forbidden");

    // Typing reaches the other members and the typist's other device; nothing is stored.
    a1.request(json!({"type":"ping"})).await;
    a1.send_text(json!({"type":"typing","conversation_id":group,"state":"start"}).to_string())
        .await;
    for c in [&mut a2, &mut b1, &mut c1] {
        let t = c.push_of("typing", WAIT).await.expect("typing push");
        assert_eq!(t["state"], "start");
        assert_eq!(t["user_id"], alice.as_str());
    }
    assert!(a1.push_of("typing", SHORT).await.is_none());
    let h = b1
        .request(json!({"type":"history","conversation_id":group}))
        .await;
    assert_eq!(
        h["messages"].as_array().unwrap().len(),
        1,
        "typing was stored: {h}"
    );

    // Membership changes are sequenced events.
    let (dave, dt) = register(n.addr, "dave").await;
    let mut d1 = Client::connect(n.addr, &dt, "d").await;
    let r = b1
        .request(json!({"type":"add_members","conversation_id":group,"members":[dave]}))
        .await;
    assert_eq!(r["conversation"]["last_seq"], 2, "{r}");
    let ev = a1.push_of("message", WAIT).await.unwrap();
    assert_eq!(ev["kind"], "member_added");
    // The added user sees the event, then later messages, on the connection already open.
    let ev = d1
        .push_of("message", WAIT)
        .await
        .expect("member_added push to the new member");
    assert_eq!(ev["kind"], "member_added");
    c1.send_msg(&group, "g2", "welcome dave").await;
    let p = d1.push_of("message", WAIT).await.expect("new member push");
    assert_eq!(p["body"], "welcome dave");
    // A plain member may not remove others; the owner may.
    let r = c1
        .request(json!({"type":"remove_member","conversation_id":group,"user_id":dave}))
        .await;
    assert_eq!(r["code"], "forbidden");
    let r = b1
        .request(json!({"type":"remove_member","conversation_id":group,"user_id":dave}))
        .await;
    assert_eq!(r["type"], "conversation");
    let r = d1.send_msg(&group, "late", "still here?").await;
    assert_eq!(r["code"], "forbidden", "removed member could send");
}

fn common_id(c: &Client) -> String {
    c.user_id.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_paging_sync_receipts_unread() {
    let n = start_node().await;
    let (_alice, at) = register(n.addr, "alice").await;
    let (bob, bt) = register(n.addr, "bob").await;
    let mut a = Client::connect(n.addr, &at, "a").await;
    let conv = a.create_direct(&bob).await;

    // Bob is offline while 250 messages are sent.
    for i in 1..=250 {
        let r = a
            .send_msg(&conv, &format!("m{i}"), &format!("message {i}"))
            .await;
        assert_eq!(r["seq"], i, "{r}");
    }

    // History: newest first, paged by before_seq until has_more is false.
    let mut b = Client::connect(n.addr, &bt, "b").await;
    let seen: Vec<u64> = b
        .history_all(&conv)
        .await
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    assert_eq!(seen, (1..=250).rev().collect::<Vec<u64>>());
    let h = b
        .request(json!({"type":"history","conversation_id":conv,"limit":101}))
        .await;
    assert_eq!(h["code"], "bad_request");

    // Sync after a disconnect: pages of 100 in ascending order with has_more.
    let mut last = 0u64;
    let mut pages = 0;
    loop {
        let s = b
            .request(json!({"type":"sync","conversations":{conv.clone(): last}}))
            .await;
        let entry = s["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["conversation_id"] == conv.as_str())
            .unwrap()
            .clone();
        assert_eq!(entry["last_seq"], 250);
        let seqs: Vec<u64> = entry["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert!(seqs.len() <= 100);
        assert_eq!(seqs.first().copied(), Some(last + 1), "gap in sync");
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        last = *seqs.last().unwrap();
        pages += 1;
        if !entry["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!((last, pages), (250, 3));
    let s = b
        .request(json!({"type":"sync","conversations":{"NotMine": 0}}))
        .await;
    let forbidden = s["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["conversation_id"] == "NotMine")
        .unwrap()
        .clone();
    assert_eq!(forbidden["error"], "forbidden");

    // Receipts and unread.
    let list = b.request(json!({"type":"list_conversations"})).await;
    let c = &list["conversations"][0];
    assert_eq!(
        (
            c["last_seq"].as_u64(),
            c["read_seq"].as_u64(),
            c["unread"].as_u64()
        ),
        (Some(250), Some(0), Some(250))
    );
    let ok = b
        .request(json!({"type":"read","conversation_id":conv,"seq":200}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    // Alice's own receipts (her sends moved her read watermark) come too; find bob's.
    let r = loop {
        let r = a.push_of("receipt", WAIT).await.expect("receipt push");
        if r["user_id"] == bob.as_str() {
            break r;
        }
        assert_eq!(r["read_seq"], r["delivered_seq"], "{r}");
    };
    assert_eq!(
        (r["read_seq"].as_u64(), r["delivered_seq"].as_u64()),
        (Some(200), Some(200))
    );
    // Lower watermarks are ignored; above last_seq is bad_request.
    b.request(json!({"type":"read","conversation_id":conv,"seq":100}))
        .await;
    let r = b
        .request(json!({"type":"read","conversation_id":conv,"seq":251}))
        .await;
    assert_eq!(r["code"], "bad_request");
    let list = b.request(json!({"type":"list_conversations"})).await;
    assert_eq!(list["conversations"][0]["unread"], 50);
    // The sender's own read watermark follows its sends.
    let list = a.request(json!({"type":"list_conversations"})).await;
    assert_eq!(list["conversations"][0]["unread"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_and_device_limits() {
    let n = start_node_with(|c| {
        c.limits.user_messages_per_minute = 5;
        c.limits.devices_per_user = 2;
    })
    .await;
    let (_a, at) = register(n.addr, "alice").await;
    let (bob, _bt) = register(n.addr, "bob").await;
    let mut a = Client::connect(n.addr, &at, "d1").await;
    let conv = a.create_direct(&bob).await;
    for i in 0..5 {
        assert_eq!(
            a.send_msg(&conv, &format!("m{i}"), "x").await["type"],
            "ack"
        );
    }
    let r = a.send_msg(&conv, "m5", "x").await;
    assert_eq!(r["code"], "rate_limited", "{r}");
    assert_eq!(r["retryable"], true);
    assert!(r["retry_after_ms"].as_u64().unwrap() > 0);

    let _a2 = Client::connect(n.addr, &at, "d2").await;
    let mut ws3 = Client::connect_raw(n.addr).await;
    use futures_util::SinkExt;
    ws3.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({"type":"auth","id":1,"token":at,"device_id":"d3"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let mut c3 = ClientShim(ws3);
    let r = c3.next().await;
    assert_eq!(r["code"], "rate_limited", "third device admitted: {r}");
    // The same device id replaces the old connection instead.
    let mut again = Client::connect(n.addr, &at, "d1").await;
    assert_eq!(again.request(json!({"type":"ping"})).await["type"], "pong");
    assert!(
        a.recv(Duration::from_secs(2)).await.is_none(),
        "replaced connection still open"
    );
}

struct ClientShim(Ws);
impl ClientShim {
    async fn next(&mut self) -> serde_json::Value {
        use futures_util::StreamExt;
        loop {
            match tokio::time::timeout(WAIT, self.0.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            {
                tokio_tungstenite::tungstenite::Message::Text(t) => {
                    return serde_json::from_str(t.as_str()).unwrap()
                }
                _ => continue,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_http_endpoints() {
    let n = start_node().await;
    let (status, _) = http(n.addr, "GET", "/health", "").await;
    assert_eq!(status, 200);
    let (status, _) = http(n.addr, "GET", "/ready", "").await;
    assert_eq!(status, 200);
    register(n.addr, "erin").await;
    let creds = json!({"username":"erin","password":"password123"}).to_string();
    let (status, _) = http(n.addr, "POST", "/v1/register", &creds).await;
    assert_eq!(status, 409, "username taken twice");
    let (status, _) = http(
        n.addr,
        "POST",
        "/v1/register",
        r#"{"username":"x y","password":"password123"}"#,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = http(
        n.addr,
        "POST",
        "/v1/login",
        r#"{"username":"erin","password":"wrongpassword"}"#,
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = http(n.addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("chatnode_synced_writes_total") || body.contains("synced_writes"),
        "{body}"
    );
    // A bad token closes the socket with unauthorized.
    let mut ws = Client::connect_raw(n.addr).await;
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({"type":"auth","token":"garbage","device_id":"d"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let mut shim = ClientShim(ws);
    assert_eq!(shim.next().await["code"], "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_online_for_users_sharing_a_conversation_only() {
    let n = start_node().await;
    let (_alice, at) = register(n.addr, "alice").await;
    let (bob, bt) = register(n.addr, "bob").await;
    let (carol, _ct) = register(n.addr, "carol").await;
    let mut a = Client::connect(n.addr, &at, "a").await;
    a.request(json!({"type":"create_conversation","kind":"direct","members":[bob]}))
        .await;

    // Bob shares a conversation with alice: reported (offline for now); carol does not: skipped.
    let r = a
        .request(json!({"type":"subscribe_presence","user_ids":[bob, carol]}))
        .await;
    assert_eq!(r["type"], "presence", "{r}");
    assert_eq!(r["user_id"], bob.as_str());
    assert_eq!(r["status"], "offline");
    assert!(
        a.collect("presence", SHORT).await.is_empty(),
        "carol's presence was reported"
    );

    // Bob connects: alice is told he is online.
    let _b = Client::connect(n.addr, &bt, "b").await;
    let p = a.push_of("presence", WAIT).await.expect("online push");
    assert_eq!(
        (p["user_id"].as_str(), p["status"].as_str()),
        (Some(bob.as_str()), Some("online"))
    );
    assert!(p["last_seen"].as_u64().unwrap() > 0);
}

/// A connection that does not read is disconnected once its bounded outbound queue is full;
/// the sender is not slowed down by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cannot_keep_up_is_disconnected() {
    let n = start_node_with(|c| c.limits.connection_send_queue_max = 8).await;
    let (_alice, at) = register(n.addr, "alice").await;
    let (bob, bt) = register(n.addr, "bob").await;
    let mut a = Client::connect(n.addr, &at, "a").await;
    let mut b = Client::connect(n.addr, &bt, "b").await;
    let conv = a.create_direct(&bob).await;
    // Bob reads nothing while alice sends far more than socket buffers and his queue hold.
    let body = "x".repeat(4000);
    const SENDS: usize = 1500;
    for i in 0..SENDS {
        a.send_text(
            json!({"type":"send","id":format!("s{i}"),"conversation_id":conv,"client_msg_id":format!("m{i}"),"body":body})
                .to_string(),
        )
        .await;
    }
    for i in 0..SENDS {
        let r = a.reply_to(json!(format!("s{i}"))).await;
        assert_eq!(r["type"], "ack", "{r}");
    }
    let (_, metrics) = http(n.addr, "GET", "/metrics", "").await;
    let kills: u64 = metrics
        .lines()
        .find(|l| l.starts_with("chatnode_slow_consumer_disconnects_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(kills >= 1, "no slow consumer was disconnected");
    // Bob's socket ends after what was already buffered: he must reconnect and sync.
    let mut received = 0;
    while b.recv(WAIT).await.is_some() {
        received += 1;
    }
    assert!(
        received < SENDS,
        "bob got all {received} pushes; he was never cut off"
    );
}

/// `Node::shutdown` stops every loop the node spawned (controller, outbox relay, proposers,
/// hub sweeper, receipt flusher, checksum, secrets, fan-out workers): none keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_loop_of_the_node() {
    let n = start_node().await;
    let (_alice, at) = register(n.addr, "alice").await;
    let (bob, _bt) = register(n.addr, "bob").await;
    let mut a1 = Client::connect(n.addr, &at, "a-phone").await;
    let c = a1
        .request(json!({"type":"create_conversation","kind":"direct","members":[bob]}))
        .await;
    assert_eq!(c["type"], "conversation", "{c}");
    let conv = c["conversation"]["conversation_id"].as_str().unwrap();
    let ack = a1.send_msg(conv, "m1", "hello").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert!(n.node.running_loops() > 0, "the node runs its loops");
    n.node.shutdown().await;
    assert_eq!(
        n.node.running_loops(),
        0,
        "a loop outlived the node's shutdown"
    );
}
