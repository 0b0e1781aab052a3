use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{RaftLogReader, ServerState};
use parking_lot::Mutex;

use serde::{Deserialize, Serialize};

use super::*;
use crate::codec::{decode, encode};

/// Requests of the test groups (raft knows no chat commands: any `D` will do).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Request {
    /// Echoed back as `Response::Settings`.
    Settings { shards: u32 },
    /// A sized entry.
    Blob(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Response {
    None,
    Settings { shards: u32 },
    Done,
}

openraft::declare_raft_types!(
    TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

impl GroupTypes for TypeConfig {
    fn blank_response() -> Response {
        Response::None
    }
}

type LogStore = super::LogStore<TypeConfig>;
type StateMachineStore = super::StateMachineStore<TypeConfig>;
type Entry = super::Entry<TypeConfig>;
type Raft = super::Raft<TypeConfig>;
type RaftRpc = super::RaftRpc<TypeConfig>;

/// Counts applied requests in key `[1]`; echoes meta settings.
#[derive(Default)]
struct CountingApplier {
    after_write: AtomicUsize,
    /// Also stores every request (under `[2, n]`), so snapshots have the data's size.
    keep: bool,
}

const COUNT_KEY: &[u8] = &[1];

impl Applier<TypeConfig> for CountingApplier {
    fn apply(&self, txn: &mut SmTxn<'_>, req: &Request) -> Result<Response, StorageError> {
        let n = match txn.get(COUNT_KEY)? {
            Some(b) => u64::from_be_bytes(
                b.try_into()
                    .map_err(|_| StorageError::Corrupt("count".into()))?,
            ),
            None => 0,
        };
        txn.put(COUNT_KEY.to_vec(), (n + 1).to_be_bytes().to_vec());
        if self.keep {
            let mut key = vec![2u8];
            key.extend_from_slice(&n.to_be_bytes());
            txn.put(key, encode(req)?);
        }
        Ok(match req {
            Request::Settings { shards } => Response::Settings { shards: *shards },
            Request::Blob(_) => Response::Done,
        })
    }

    fn after_write(&self, _group: GroupId, responses: &[Response]) {
        // Completions spawn tasks (gap fills of pushes): they must run inside the runtime.
        assert!(
            tokio::runtime::Handle::try_current().is_ok(),
            "after_write runs outside the runtime"
        );
        self.after_write
            .fetch_add(responses.len(), Ordering::SeqCst);
    }
}

fn count(store: &Store, group: GroupId) -> u64 {
    store
        .sm_get(group, COUNT_KEY)
        .expect("get")
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        .unwrap_or(0)
}

fn settings(n: u32) -> Request {
    Request::Settings { shards: n }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), openraft::StorageError<NodeId>>
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open store");
        let log = LogStore::new(3, store.clone());
        let sm = StateMachineStore::new(3, store, Arc::new(CountingApplier::default()));
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("suite");
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn fast() -> RaftTimings {
    RaftTimings {
        heartbeat_ms: 50,
        election_min_ms: 150,
        election_max_ms: 300,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_node_restart_keeps_log_vote_and_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let group = 2;
    let first_vote;
    {
        let store = Store::open(dir.path()).expect("open");
        let applier = Arc::new(CountingApplier::default());
        let h = start_group(
            1,
            group,
            store.clone(),
            applier.clone(),
            Arc::new(NoPeers),
            &fast(),
        )
        .await
        .expect("start");
        initialize_single(&h, 1, "127.0.0.1:1".into())
            .await
            .expect("init");
        h.raft
            .wait(Some(Duration::from_secs(5)))
            .state(ServerState::Leader, "leader")
            .await
            .expect("leader");
        for n in 0..10 {
            let r = h.raft.client_write(settings(n)).await.expect("write");
            assert_eq!(r.data, Response::Settings { shards: n });
        }
        assert_eq!(count(&store, group), 10);
        // Blank + membership + 10 normal entries.
        assert_eq!(applier.after_write.load(Ordering::SeqCst), 12);
        first_vote = LogStore::new(group, store.clone())
            .read_vote()
            .await
            .expect("vote")
            .expect("some vote");
        h.raft.shutdown().await.expect("shutdown");
        drop(h);
        // Every handle held by openraft's tasks goes away: then the DB closes.
        wait_until("raft tasks to release the store", || {
            Arc::strong_count(&store) == 1
        })
        .await;
    }

    let store = Store::open(dir.path()).expect("reopen");
    let mut log = LogStore::new(group, store.clone());
    let entries = log.try_get_log_entries(0..).await.expect("entries");
    assert_eq!(entries.len(), 12);
    assert!(entries
        .windows(2)
        .all(|w| w[1].log_id.index == w[0].log_id.index + 1));
    assert_eq!(log.read_vote().await.expect("vote"), Some(first_vote));

    let applier = Arc::new(CountingApplier::default());
    let h = start_group(1, group, store.clone(), applier, Arc::new(NoPeers), &fast())
        .await
        .expect("restart");
    assert!(h.raft.is_initialized().await.expect("init?"));
    initialize_single(&h, 1, "127.0.0.1:1".into())
        .await
        .expect("no-op init");
    h.raft
        .wait(Some(Duration::from_secs(5)))
        .state(ServerState::Leader, "leader again")
        .await
        .expect("leader");
    h.raft.client_write(settings(99)).await.expect("write");
    assert_eq!(count(&store, group), 11);
    h.raft.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_entries_and_vote_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let entries: Vec<Entry> = (1..=5)
        .map(|i| Entry {
            log_id: openraft::testing::log_id(1, 1, i),
            payload: openraft::EntryPayload::Normal(settings(i as u32)),
        })
        .collect();
    let vote = openraft::Vote::new_committed(1, 1);
    {
        let store = Store::open(dir.path()).expect("open");
        let mut log = LogStore::new(9, store.clone());
        log.blocking_append(entries.clone()).await.expect("append");
        log.save_vote(&vote).await.expect("vote");
        // Another group's log is independent.
        LogStore::new(10, store.clone())
            .blocking_append(entries[..2].to_vec())
            .await
            .expect("append");
    }
    let store = Store::open(dir.path()).expect("reopen");
    let mut log = LogStore::new(9, store.clone());
    assert_eq!(log.try_get_log_entries(1..=5).await.expect("read"), entries);
    assert_eq!(log.read_vote().await.expect("vote"), Some(vote));
    let st = log.get_log_state().await.expect("state");
    assert_eq!(st.last_log_id, Some(openraft::testing::log_id(1, 1, 5)));
    let mut other = LogStore::new(10, store);
    assert_eq!(other.try_get_log_entries(0..).await.expect("read").len(), 2);
}

/// In-memory peer network: node id -> (group -> Raft).
#[derive(Default, Clone)]
struct Loopback {
    nodes: Arc<Mutex<HashMap<NodeId, HashMap<GroupId, Raft>>>>,
}

impl PeerNetwork<TypeConfig> for Loopback {
    fn call(
        &self,
        target: NodeId,
        _node: &BasicNode,
        group: GroupId,
        rpc: RaftRpc,
        _timeout: Duration,
    ) -> futures_util::future::BoxFuture<'static, Result<RaftRpcReply, PeerError>> {
        let raft = self
            .nodes
            .lock()
            .get(&target)
            .and_then(|g| g.get(&group))
            .cloned();
        Box::pin(async move {
            let raft = raft.ok_or_else(|| PeerError::Unreachable(format!("node {target}")))?;
            // Go through the wire encoding, like a real transport.
            let bytes = encode(&rpc).map_err(|e| PeerError::Network(e.to_string()))?;
            let rpc: RaftRpc = decode(&bytes).map_err(|e| PeerError::Network(e.to_string()))?;
            let reply = handle_rpc(&raft, rpc).await;
            let bytes = encode(&reply).map_err(|e| PeerError::Network(e.to_string()))?;
            decode(&bytes).map_err(|e| PeerError::Network(e.to_string()))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_and_seed_from_snapshot() {
    let net = Loopback::default();
    let timings = RaftTimings {
        snapshot_every_logs: 20,
        keep_logs_behind_snapshot: 0,
        purge_batch_size: 1,
        ..fast()
    };
    let group = 1;
    let mut dirs = Vec::new();
    let mut stores = BTreeMap::new();
    let mut handles = BTreeMap::new();
    for id in 1..=3u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let applier = CountingApplier::default();
        let h = start_on(
            id,
            group,
            &store,
            applier,
            Arc::new(net.clone()),
            &net,
            &timings,
        );
        handles.insert(id, h.await);
        dirs.push(dir);
        stores.insert(id, store);
    }
    let leader = &handles[&1];
    initialize_single(leader, 1, "n1".into())
        .await
        .expect("init");
    leader
        .raft
        .wait(Some(Duration::from_secs(5)))
        .state(ServerState::Leader, "leader")
        .await
        .expect("leader");
    for n in 0..50 {
        leader.raft.client_write(settings(n)).await.expect("write");
    }
    // Logs were compacted into a snapshot and purged: new members are seeded from it.
    leader
        .raft
        .wait(Some(Duration::from_secs(5)))
        .metrics(
            |m| m.snapshot.is_some() && m.purged.is_some(),
            "snapshot + purge",
        )
        .await
        .expect("snapshot");
    leader
        .raft
        .add_learner(2, BasicNode::new("n2"), true)
        .await
        .expect("learner 2");
    leader
        .raft
        .add_learner(3, BasicNode::new("n3"), true)
        .await
        .expect("learner 3");
    leader
        .raft
        .change_membership([1u64, 2, 3], false)
        .await
        .expect("membership");
    let mut last = None;
    for n in 50..60 {
        last = Some(
            leader
                .raft
                .client_write(settings(n))
                .await
                .expect("write")
                .log_id,
        );
    }
    for id in 2..=3u64 {
        assert_seeded(&handles[&id], &stores, id, group, last.map(|l| l.index)).await;
    }
    for h in handles.values() {
        h.raft.shutdown().await.expect("shutdown");
    }
}

/// Node `id` applied up to `last`, holds all 60 writes, and got them from a snapshot.
async fn assert_seeded(
    h: &GroupHandle<TypeConfig>,
    stores: &BTreeMap<u64, Arc<Store>>,
    id: u64,
    group: GroupId,
    last: Option<u64>,
) {
    h.raft
        .wait(Some(Duration::from_secs(5)))
        .applied_index_at_least(last, "caught up")
        .await
        .expect("caught up");
    let m = h.raft.metrics().borrow().clone();
    assert_eq!(
        count(&stores[&id], group),
        60,
        "node {id}: leader count {} metrics {m}",
        count(&stores[&1], group)
    );
    assert!(m.snapshot.is_some(), "node {id} was seeded from a snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_log_id_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committed = openraft::testing::log_id(2, 1, 7);
    {
        let store = Store::open(dir.path()).expect("open");
        let mut log = LogStore::new(4, store.clone());
        log.save_committed(Some(committed)).await.expect("save");
        // The hint is not waited for; a synced write queued after it is written after it.
        log.save_vote(&openraft::Vote::new_committed(2, 1))
            .await
            .expect("vote");
    }
    let store = Store::open(dir.path()).expect("reopen");
    let mut log = LogStore::new(4, store.clone());
    assert_eq!(log.read_committed().await.expect("read"), Some(committed));
    let mut other = LogStore::new(5, store);
    assert_eq!(other.read_committed().await.expect("read"), None);
}

/// Like [`Loopback`], but with a frame limit like the transport's (an RPC that encodes over
/// `frame_max` bytes is not sent: `PayloadTooLarge`), and a record of the largest RPC sent.
#[derive(Clone)]
struct Limited {
    inner: Loopback,
    frame_max: usize,
    largest_append: Arc<AtomicUsize>,
    largest_snapshot: Arc<AtomicUsize>,
    snapshot_chunks: Arc<AtomicUsize>,
}

impl PeerNetwork<TypeConfig> for Limited {
    fn call(
        &self,
        target: NodeId,
        node: &BasicNode,
        group: GroupId,
        rpc: RaftRpc,
        timeout: Duration,
    ) -> futures_util::future::BoxFuture<'static, Result<RaftRpcReply, PeerError>> {
        let bytes = match encode(&rpc) {
            Ok(b) => b.len(),
            Err(e) => return Box::pin(async move { Err(PeerError::Network(e.to_string())) }),
        };
        if bytes > self.frame_max {
            let max = self.frame_max;
            return Box::pin(async move { Err(PeerError::PayloadTooLarge { bytes, max }) });
        }
        match &rpc {
            RaftRpc::AppendEntries(_) => {
                self.largest_append.fetch_max(bytes, Ordering::SeqCst);
            }
            RaftRpc::InstallSnapshot(_) => {
                self.largest_snapshot.fetch_max(bytes, Ordering::SeqCst);
                self.snapshot_chunks.fetch_add(1, Ordering::SeqCst);
            }
            RaftRpc::Vote(_) => {}
        }
        self.inner.call(target, node, group, rpc, timeout)
    }
}

/// An entry of about `bytes` bytes (a string: bincode copies it whole, where a `Vec<u8>`
/// goes byte by byte through serde, slow in a debug build).
fn big_request(n: u32, bytes: usize) -> Request {
    Request::Blob(format!("{n}:{}", "x".repeat(bytes)))
}

/// A follower cut off while the leader appends far more than one frame's worth of large
/// entries catches up once the link is back, and no RPC is ever over the frame limit: the
/// log reader cuts AppendEntries by bytes. Then a snapshot of a group over 2 frames' worth
/// seeds a new member in chunks under the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn far_behind_follower_catches_up_under_the_frame_limit() {
    // 80 entries of 512 KiB: 40 MiB behind, 2.5 frames; openraft would send up to 300
    // entries (150 MiB) in one RPC without the byte cut.
    catch_up(16 << 20, 512 << 10, 80, true).await;
}

/// When the reader's cut is still over the frame (here a 1 MB frame, 400 KB entries: the
/// reader returns 3), the network answers `PayloadTooLarge` and openraft retries with
/// fewer entries: the follower still catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payload_too_large_makes_openraft_send_fewer_entries() {
    catch_up(1_000_000, 400_000, 20, false).await;
}

/// Starts node `id`'s replica of `group` on `store`, its RPCs going through `network`, and
/// registers it on `loopback` (the nodes `network` delivers to).
async fn start_on(
    id: u64,
    group: GroupId,
    store: &Arc<Store>,
    applier: CountingApplier,
    network: Arc<dyn PeerNetwork<TypeConfig>>,
    loopback: &Loopback,
    timings: &RaftTimings,
) -> GroupHandle<TypeConfig> {
    let h = start_group(
        id,
        group,
        store.clone(),
        Arc::new(applier),
        network,
        timings,
    )
    .await
    .expect("start");
    loopback
        .nodes
        .lock()
        .entry(id)
        .or_default()
        .insert(group, h.raft.clone());
    h
}

/// A counting applier that keeps what it applied.
fn keeping() -> CountingApplier {
    CountingApplier {
        keep: true,
        ..Default::default()
    }
}

/// Node 1 leads a group of voters 1, 2, 3.
async fn form_three(leader: &GroupHandle<TypeConfig>) {
    initialize_single(leader, 1, "n1".into())
        .await
        .expect("init");
    leader
        .raft
        .wait(Some(Duration::from_secs(10)))
        .state(ServerState::Leader, "leader")
        .await
        .expect("leader");
    for id in 2..=3u64 {
        leader
            .raft
            .add_learner(id, BasicNode::new(format!("n{id}")), true)
            .await
            .expect("learner");
    }
    leader
        .raft
        .change_membership([1u64, 2, 3], false)
        .await
        .expect("membership");
}

/// A snapshot of the group (its log purged) seeds node 4 in chunks under the frame limit.
async fn seed_from_snapshot(
    handles: &BTreeMap<u64, GroupHandle<TypeConfig>>,
    stores: &BTreeMap<u64, Arc<Store>>,
    net: &Limited,
    group: GroupId,
    last: Option<u64>,
) {
    let leader = &handles[&1];
    leader.raft.trigger().snapshot().await.expect("snapshot");
    leader
        .raft
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.snapshot.is_some(), "snapshot built")
        .await
        .expect("snapshot built");
    leader
        .raft
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.purged.is_some(), "purged")
        .await
        .expect("purged");
    leader
        .raft
        .add_learner(4, BasicNode::new("n4"), true)
        .await
        .expect("learner 4");
    handles[&4]
        .raft
        .wait(Some(Duration::from_secs(60)))
        .applied_index_at_least(last, "node 4 seeded")
        .await
        .expect("node 4 seeded");
    assert_eq!(count(&stores[&4], group), count(&stores[&1], group));
    let chunks = net.snapshot_chunks.load(Ordering::SeqCst);
    let largest = net.largest_snapshot.load(Ordering::SeqCst);
    assert!(chunks >= 15, "a 40 MiB snapshot took {chunks} chunks");
    assert!(
        largest <= super::SNAPSHOT_CHUNK_BYTES_MAX as usize + (64 << 10),
        "largest snapshot chunk RPC was {largest} bytes"
    );
}

async fn catch_up(frame_max: usize, entry_bytes: usize, entries: u32, with_snapshot: bool) {
    let net = Limited {
        inner: Loopback::default(),
        frame_max,
        largest_append: Arc::default(),
        largest_snapshot: Arc::default(),
        snapshot_chunks: Arc::default(),
    };
    let timings = RaftTimings {
        // Long enough for a 4 MiB append on a loaded machine.
        heartbeat_ms: 500,
        election_min_ms: 3_000,
        election_max_ms: 4_000,
        install_snapshot_timeout_ms: 10_000,
        // Purge everything a snapshot covers, so node 4 must be seeded from it.
        keep_logs_behind_snapshot: 0,
        purge_batch_size: 1,
        ..Default::default()
    };
    let group = 1;
    let mut dirs = Vec::new();
    let mut stores = BTreeMap::new();
    let mut handles = BTreeMap::new();
    for id in 1..=4u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let h = start_on(
            id,
            group,
            &store,
            keeping(),
            Arc::new(net.clone()),
            &net.inner,
            &timings,
        );
        handles.insert(id, h.await);
        dirs.push(dir);
        stores.insert(id, store);
    }
    let leader = handles[&1].clone();
    form_three(&leader).await;
    // Node 3 stops (a stopped node does not campaign and disturb the leader on return).
    handles[&3].raft.shutdown().await.expect("shutdown 3");
    net.inner.nodes.lock().remove(&3);
    let mut last = None;
    for n in 0..entries {
        let w = leader
            .raft
            .client_write(big_request(n, entry_bytes))
            .await
            .expect("write");
        last = Some(w.log_id.index);
    }
    let network = Arc::new(net.clone());
    let h3 = start_on(
        3,
        group,
        &stores[&3],
        keeping(),
        network,
        &net.inner,
        &timings,
    )
    .await;
    handles.insert(3, h3);
    if let Err(e) = handles[&3]
        .raft
        .wait(Some(Duration::from_secs(60)))
        .applied_index_at_least(last, "node 3 caught up")
        .await
    {
        let m1 = handles[&1].raft.metrics().borrow().clone();
        let m3 = handles[&3].raft.metrics().borrow().clone();
        panic!(
            "node 3 did not catch up: {e}; largest append {}; leader {m1}; node 3 {m3}",
            net.largest_append.load(Ordering::SeqCst)
        );
    }
    assert_eq!(count(&stores[&3], group), count(&stores[&1], group));
    let largest = net.largest_append.load(Ordering::SeqCst);
    assert!(largest > entry_bytes, "appends carried the large entries");
    assert!(
        largest <= frame_max.min(super::APPEND_ENTRIES_BYTES_MAX + 2 * entry_bytes),
        "largest append was {largest} bytes"
    );
    if with_snapshot {
        seed_from_snapshot(&handles, &stores, &net, group, last).await;
    }
    for h in handles.values() {
        h.raft.shutdown().await.expect("shutdown");
    }
}
