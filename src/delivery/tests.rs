//! Fan-out as a whole (`fanout::Fanout` with a real hub and fake links): order, dedup, gap
//! fill, removed members (G5), who gets the leader's copy, and what a full inbox does.
//! Deterministic: the tests drive the consumer by hand and await gap reads and peer sends
//! as they happen, never a clock.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::fanout::{Fanout, Filled};
use super::hub::{Hub, OutFrame};
use super::inbox::{inbox_of, Inbound, Lost};
use super::links::{replicas_pushing_by_apply, GapRead, NodeId, Peers, Replication};
use super::out_queue::{out_queue, OutReceiver};
use crate::cluster::push::PushItem;
use crate::cluster::ShardMap;
use crate::ids::*;
use crate::metrics::Metrics;
use crate::protocol::ServerFrame;
use crate::shard::command::*;
use crate::shard::push::Push;

const ME: NodeId = 1;
const CONV: &str = "conv";

fn shard_map() -> Arc<ShardMap> {
    Arc::new(ShardMap::new(4))
}

fn group() -> GroupId {
    shard_map().shard_for_conversation(CONV)
}

fn msg(seq: u64, kind: MsgKind) -> Message {
    Message {
        conversation_id: CONV.into(),
        seq,
        msg_id: format!("m{seq}"),
        sender_id: "alice".into(),
        sender_device: "d".into(),
        client_msg_id: format!("c{seq}"),
        kind,
        body: format!("text {seq}"),
        ts: seq,
        ref_seq: None,
    }
}

fn pushed(seq: u64, kind: MsgKind, recipients: &[&str]) -> Pushed {
    Pushed {
        message: msg(seq, kind),
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
    }
}

fn applied(seq: u64, kind: MsgKind, recipients: &[&str]) -> Inbound {
    Inbound::Applied {
        group: group(),
        pushes: vec![Push::Message(pushed(seq, kind, recipients))],
    }
}

/// The peers as a test sets them; every batch sent comes out of `sent`.
struct FakePeers {
    peers: Vec<NodeId>,
    replication: Mutex<Option<Replication>>,
    sent: mpsc::UnboundedSender<(NodeId, Vec<PushItem>)>,
}

impl Peers for FakePeers {
    fn peers(&self) -> Vec<NodeId> {
        self.peers.clone()
    }
    fn replication(&self, _group: GroupId) -> Option<Replication> {
        self.replication.lock().clone()
    }
    fn send(&self, peer: NodeId, batch: Vec<PushItem>) -> BoxFuture<'_, Result<(), String>> {
        let _ = self.sent.send((peer, batch));
        Box::pin(async { Ok(()) })
    }
}

/// The leader's log of `CONV`; every read is recorded.
struct FakeGaps {
    log: Mutex<Vec<Message>>,
    reads: Mutex<Vec<(u64, u64)>>,
}

impl GapRead for FakeGaps {
    fn read_after(
        &self,
        _group: GroupId,
        _conversation: ConversationId,
        after_seq: u64,
        last_seq: u64,
        limit: u64,
    ) -> BoxFuture<'_, Result<Vec<Message>, String>> {
        self.reads.lock().push((after_seq, last_seq));
        let found = self
            .log
            .lock()
            .iter()
            .filter(|m| m.seq > after_seq && m.seq <= last_seq)
            .take(limit as usize)
            .cloned()
            .collect();
        Box::pin(async move { Ok(found) })
    }
}

struct Rig {
    fanout: Fanout,
    fills: mpsc::Receiver<Filled>,
    hub: Arc<Hub>,
    peers: Arc<FakePeers>,
    gaps: Arc<FakeGaps>,
    sent: mpsc::UnboundedReceiver<(NodeId, Vec<PushItem>)>,
    metrics: Arc<Metrics>,
}

fn rig(peers: &[NodeId]) -> Rig {
    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(16, metrics.clone(), Box::new(|_| {}));
    let (tx, sent) = mpsc::unbounded_channel();
    let peers = Arc::new(FakePeers {
        peers: peers.to_vec(),
        replication: Mutex::new(None),
        sent: tx,
    });
    let gaps = Arc::new(FakeGaps {
        log: Mutex::new(Vec::new()),
        reads: Mutex::new(Vec::new()),
    });
    let (fanout, fills) = Fanout::new(
        ME,
        hub.clone(),
        shard_map(),
        peers.clone(),
        gaps.clone(),
        crate::shutdown::Shutdown::new(),
    );
    Rig {
        fanout,
        fills,
        hub,
        peers,
        gaps,
        sent,
        metrics,
    }
}

impl Rig {
    /// A connection of `user` (device "phone") on this node.
    fn connect(&self, user: &str) -> OutReceiver {
        let (tx, mut rx) = out_queue(1_000, 1 << 20);
        let first = ServerFrame::Reconnect { retry_after_ms: 0 };
        self.hub.register(user, "phone", tx, &first, 0).unwrap();
        rx.try_recv().unwrap(); // the first frame
        rx
    }

    /// Waits for the next gap read to come back and delivers it.
    async fn fill(&mut self) {
        let f = self.fills.recv().await.unwrap();
        self.fanout.finish_fill(f);
    }

    fn leader_log(&self, seqs: std::ops::RangeInclusive<u64>, kind: impl Fn(u64) -> MsgKind) {
        *self.gaps.log.lock() = seqs.map(|s| msg(s, kind(s))).collect();
    }
}

/// The seqs of the message frames queued towards a connection.
fn seqs(rx: &mut OutReceiver) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(f) = rx.try_recv() {
        let OutFrame::Text(t) = f else { continue };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "message" {
            out.push(v["seq"].as_u64().unwrap());
        }
    }
    out
}

#[tokio::test]
async fn pushes_reach_connections_in_seq_order_once() {
    let mut r = rig(&[]);
    let mut bob = r.connect("bob");
    let mut alice = r.connect("alice");
    r.fanout
        .handle(applied(1, MsgKind::Text, &["alice", "bob"]));
    r.fanout
        .handle(applied(2, MsgKind::Text, &["alice", "bob"]));
    // The leader's copy of 2 arrives too (a replica that also pushes by apply): dropped.
    r.fanout.handle(Inbound::Peer {
        from: 2,
        items: vec![PushItem::Message(pushed(
            2,
            MsgKind::Text,
            &["alice", "bob"],
        ))],
    });
    r.fanout
        .handle(applied(3, MsgKind::Text, &["alice", "bob"]));
    assert_eq!(seqs(&mut bob), vec![1, 2, 3]);
    // Alice's other devices get her messages; this one is "phone", the sender is "d".
    assert_eq!(seqs(&mut alice), vec![1, 2, 3]);
    assert!(r.gaps.reads.lock().is_empty(), "no gap, no read");
}

#[tokio::test]
async fn a_gap_is_read_from_the_leader_before_what_follows_it() {
    let mut r = rig(&[]);
    let mut bob = r.connect("bob");
    r.leader_log(1..=4, |_| MsgKind::Text);
    r.fanout
        .handle(applied(1, MsgKind::Text, &["alice", "bob"]));
    // 2 and 3 were lost on the way: 4 waits for them.
    r.fanout
        .handle(applied(4, MsgKind::Text, &["alice", "bob"]));
    assert_eq!(seqs(&mut bob), vec![1]);
    r.fill().await;
    assert_eq!(r.gaps.reads.lock().clone(), vec![(1, 3)]);
    assert_eq!(seqs(&mut bob), vec![2, 3, 4]);
}

/// G5: X is removed at seq 2; a leader change makes the gateway re-read 3 and 4, which carry
/// no recipients. X gets nothing after 2; Bob gets everything, once the next push says who
/// the members are.
#[tokio::test]
async fn a_member_removed_at_n_gets_nothing_after_n() {
    let mut r = rig(&[]);
    let mut bob = r.connect("bob");
    let mut x = r.connect("x");
    r.leader_log(1..=4, |s| {
        if s == 2 {
            MsgKind::MemberRemoved
        } else {
            MsgKind::Text
        }
    });
    r.fanout
        .handle(applied(1, MsgKind::Text, &["alice", "bob", "x"]));
    r.fanout
        .handle(applied(2, MsgKind::MemberRemoved, &["alice", "bob", "x"]));
    r.fanout.handle(Inbound::Peer {
        from: 2,
        items: vec![PushItem::LeaderChanged { group: group() }],
    });
    r.fill().await;
    r.fanout
        .handle(applied(5, MsgKind::Text, &["alice", "bob"]));
    r.fill().await;
    assert_eq!(seqs(&mut x), vec![1, 2]);
    assert_eq!(seqs(&mut bob), vec![1, 2, 3, 4, 5]);
}

#[test]
fn replicas_within_the_lag_push_by_apply() {
    let lag = super::links::PUSH_BY_APPLY_LAG_MAX;
    let r = Replication {
        last_log_index: 1_000,
        matched: vec![
            (2, Some(1_000)),
            (3, Some(1_000 - lag)),
            (4, Some(1_000 - lag - 1)),
            (5, None),
        ],
    };
    assert_eq!(replicas_pushing_by_apply(&r), BTreeSet::from([2, 3]));
}

/// The leader of the group sends its copy to the nodes that need it (4: behind; 5: no
/// replica), not to the replica that keeps up (2). A follower sends nothing.
#[tokio::test]
async fn the_leader_sends_its_copy_only_where_apply_does_not_push() {
    let mut r = rig(&[2, 4, 5]);
    // A follower: nothing goes out.
    r.fanout.handle(applied(1, MsgKind::Text, &["bob"]));
    *r.peers.replication.lock() = Some(Replication {
        last_log_index: 500,
        matched: vec![(2, Some(500)), (4, Some(10))],
    });
    r.fanout.handle(applied(2, MsgKind::Text, &["bob"]));
    // Then typing, which goes to every peer: per peer, batches keep their order, so node
    // 2's first batch shows whether it got message 2 before it.
    r.fanout.handle(Inbound::Local(vec![PushItem::Presence {
        user_id: "bob".into(),
        online: true,
        last_seen: 0,
    }]));
    let mut first: std::collections::BTreeMap<NodeId, Vec<PushItem>> = Default::default();
    while first.len() < 3 {
        let (peer, batch) = r.sent.recv().await.unwrap();
        first.entry(peer).or_insert(batch);
    }
    let message_seqs = |items: &[PushItem]| -> Vec<u64> {
        items
            .iter()
            .filter_map(|i| match i {
                PushItem::Message(p) => Some(p.message.seq),
                _ => None,
            })
            .collect()
    };
    assert_eq!(message_seqs(&first[&2]), Vec::<u64>::new());
    assert_eq!(message_seqs(&first[&4]), vec![2]);
    assert_eq!(message_seqs(&first[&5]), vec![2]);
}

/// The apply side never waits on a full inbox and loses nothing committed: the dropped
/// batch's group is remembered, counted, re-read when the consumer gets to it, and the
/// peers (this node leads) are told to re-read it too.
#[tokio::test]
async fn a_full_inbox_loses_no_committed_push() {
    let mut r = rig(&[2]);
    let mut bob = r.connect("bob");
    *r.peers.replication.lock() = Some(Replication::default());
    r.leader_log(1..=2, |_| MsgKind::Text);
    let (inbox, mut receiver) = inbox_of(1, r.metrics.clone());
    inbox.applied(
        group(),
        vec![Push::Message(pushed(1, MsgKind::Text, &["bob"]))],
    );
    // Full: returns at once.
    inbox.applied(
        group(),
        vec![Push::Message(pushed(2, MsgKind::Text, &["bob"]))],
    );
    assert_eq!(r.metrics.delivery_inbox_overflows.get(), 1);
    let first = receiver.rx.recv().await.unwrap();
    r.fanout.handle(first);
    assert!(
        receiver.rx.try_recv().is_err(),
        "the second batch was dropped"
    );
    let lost = receiver.overflow.take();
    assert_eq!(
        lost,
        Lost {
            applied: BTreeSet::from([group()]),
            received: BTreeSet::new(),
        }
    );
    r.fanout.recover(lost);
    r.fill().await;
    assert_eq!(seqs(&mut bob), vec![1, 2]);
    // Node 2 got message 1, then (in order) the refill of the group.
    let mut items = Vec::new();
    while !items.iter().any(|i| matches!(i, PushItem::Refill { .. })) {
        items.extend(r.sent.recv().await.unwrap().1);
    }
    assert!(matches!(&items[0], PushItem::Message(p) if p.message.seq == 1));
    assert!(matches!(items.last(), Some(PushItem::Refill { group: g }) if *g == group()));
    assert_eq!(receiver.overflow.take(), Lost::default());
}

/// Received pushes that do not fit are refilled here; ephemeral ones are just dropped.
#[tokio::test]
async fn a_full_inbox_refills_the_groups_of_dropped_peer_pushes() {
    let metrics = Arc::new(Metrics::new());
    let (inbox, receiver) = inbox_of(1, metrics.clone());
    let sink = inbox.peer_sink(shard_map());
    sink.receive(2, vec![PushItem::Refill { group: 9 }]);
    sink.receive(
        2,
        vec![PushItem::Presence {
            user_id: "bob".into(),
            online: true,
            last_seen: 0,
        }],
    );
    assert_eq!(receiver.overflow.take(), Lost::default());
    sink.receive(
        2,
        vec![
            PushItem::Message(pushed(7, MsgKind::Text, &["bob"])),
            PushItem::LeaderChanged { group: 8 },
        ],
    );
    assert_eq!(
        receiver.overflow.take(),
        Lost {
            applied: BTreeSet::new(),
            received: BTreeSet::from([group(), 8]),
        }
    );
    assert_eq!(metrics.delivery_inbox_overflows.get(), 1);
}

#[test]
fn push_items_are_sized_by_their_bytes() {
    let small = PushItem::Message(pushed(1, MsgKind::Text, &["a"]));
    let mut big = pushed(2, MsgKind::Text, &["a"]);
    big.message.body = "x".repeat(16_000);
    let big = PushItem::Message(big);
    assert!(big.size_estimate() >= 16_000);
    assert!(small.size_estimate() < 1_000);
}
