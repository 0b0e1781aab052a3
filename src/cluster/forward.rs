//! Forwarded writes, batched per leader node.
//!
//! A gateway whose client writes to a group led elsewhere forwards the command to the leader.
//! One QUIC stream per command cost a stream setup, a few packets and their encryption each;
//! under load that was a large share of a node's CPU. So forwarded writes bound for the same
//! node travel together: a writer task per peer sends whatever queued while its previous
//! batches were in flight as one `PeerRequest::WriteBatch`, and the leader answers every
//! command of it in one `PeerReply::WriteBatch` (in order). Each command keeps its own trace
//! id, group and deadline; an answer is exactly what a single forwarded write would have
//! returned, so the caller's retry logic (`Cluster::route`) does not change.
//!
//! Also here: [`Cluster::call_peer`], the one way a request leaves this node for another
//! (forwarded writes through the batching writer, everything else as one call).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::peer::{PeerReply, PeerRequest, PeerTransport};
use super::{Cluster, RouteError, UnavailableCause};
use crate::ids::{GroupId, NodeId};
use crate::shard::command::{ShardOp, ShardResponse};
use crate::shutdown::Shutdown;

/// Forwarded writes waiting for a peer's writer task; past it, callers wait.
pub(crate) const FORWARD_QUEUE_MAX: usize = 4096;
/// Most commands in one forwarded batch (the receiver refuses longer ones).
pub(crate) const FORWARD_BATCH_MAX: usize = 256;
/// About the most bytes of commands in one forwarded batch (it ends with the command that
/// reaches it), far below the 16 MiB frame.
pub(crate) const FORWARD_BATCH_BYTES_MAX: usize = 2 << 20;
/// Batches to one peer in flight at once: the first commands of an idle peer go at once,
/// later ones gather while these are answered.
pub(crate) const FORWARD_BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Bound of one batch call (every command's own deadline is enforced by its caller too).
pub(crate) const FORWARD_BATCH_TIMEOUT_MS: u64 = 10_000;

/// One forwarded command in a batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ForwardedWrite {
    pub(crate) group: GroupId,
    pub(crate) trace_id: String,
    pub(crate) op: ShardOp,
}

type WriteResult = Result<ShardResponse, RouteError>;

struct Item {
    addr: String,
    write: ForwardedWrite,
    reply: oneshot::Sender<Result<WriteResult, String>>,
}

/// The per-peer writer tasks of this node.
pub(crate) struct WriteForwarder {
    transport: PeerTransport,
    /// One writer per peer node (bounded by the cluster's size).
    peers: Mutex<HashMap<NodeId, mpsc::Sender<Item>>>,
    /// The writers stop with the node.
    shutdown: Shutdown,
}

impl WriteForwarder {
    pub(crate) fn new(transport: PeerTransport, shutdown: Shutdown) -> Self {
        Self {
            transport,
            peers: Mutex::new(HashMap::new()),
            shutdown,
        }
    }

    /// Forwards `write` to node `target` at `addr` and waits for its answer: the leader's
    /// `serve_write` result, or `Err` with why the batch did not get there (network).
    pub(crate) async fn write(
        &self,
        target: NodeId,
        addr: &str,
        write: ForwardedWrite,
        timeout: Duration,
    ) -> Result<WriteResult, String> {
        let queue = {
            let mut peers = self.peers.lock();
            peers
                .entry(target)
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(FORWARD_QUEUE_MAX);
                    self.shutdown
                        .spawn(run_peer(self.transport.clone(), target, rx));
                    tx
                })
                .clone()
        };
        let (reply, answer) = oneshot::channel();
        let item = Item {
            addr: addr.to_string(),
            write,
            reply,
        };
        let sent = async {
            queue
                .send(item)
                .await
                .map_err(|_| "forwarder stopped".to_string())?;
            answer
                .await
                .map_err(|_| "forwarded batch dropped".to_string())?
        };
        match tokio::time::timeout(timeout, sent).await {
            Ok(r) => r,
            Err(_) => Err("timed out".into()),
        }
    }
}

async fn run_peer(transport: PeerTransport, target: NodeId, mut rx: mpsc::Receiver<Item>) {
    let in_flight = Arc::new(Semaphore::new(FORWARD_BATCHES_IN_FLIGHT_MAX));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let batch = super::with_queued_within(
            first,
            &mut rx,
            FORWARD_BATCH_MAX,
            FORWARD_BATCH_BYTES_MAX,
            |i| i.write.op.size_estimate() + i.write.trace_id.len(),
        );
        let transport = transport.clone();
        tokio::spawn(async move {
            let _permit = permit;
            send_batch(&transport, target, batch).await;
        });
    }
}

async fn send_batch(t: &PeerTransport, target: NodeId, batch: Vec<Item>) {
    // All items name the same node; its latest address is the last one given.
    let addr = batch.last().map(|i| i.addr.clone()).unwrap_or_default();
    let group = batch.first().map_or(0, |i| i.write.group);
    let trace_id = batch
        .first()
        .map(|i| i.write.trace_id.clone())
        .unwrap_or_default();
    let (writes, replies): (Vec<ForwardedWrite>, Vec<_>) =
        batch.into_iter().map(|i| (i.write, i.reply)).unzip();
    let expected = writes.len();
    let timeout = Duration::from_millis(FORWARD_BATCH_TIMEOUT_MS);
    let answer = t
        .call(
            target,
            &addr,
            group,
            &trace_id,
            PeerRequest::WriteBatch(writes),
            timeout,
        )
        .await;
    match answer {
        Ok(PeerReply::WriteBatch(results)) if results.len() == expected => {
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(r));
            }
        }
        Ok(PeerReply::Error(e)) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Ok(_) => {
            for reply in replies {
                let _ = reply.send(Err("reply does not match the request".into()));
            }
        }
        Err(e) => {
            let e = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

impl Cluster {
    /// Sends `req` for `group` to node `target` (a forwarded write joins the writer's next
    /// batch to `target`), bounded by `timeout`.
    pub(super) async fn call_peer(
        &self,
        target: NodeId,
        group: GroupId,
        trace_id: &str,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerReply, RouteError> {
        let unavailable = |error: String| {
            RouteError::unavailable(
                group,
                UnavailableCause::Peer {
                    node: target,
                    error,
                },
            )
        };
        let Some(addr) = self.address_of(target) else {
            return Err(RouteError::unavailable(
                group,
                UnavailableCause::NoAddress { node: target },
            ));
        };
        if let PeerRequest::Write(op) = req {
            let write = ForwardedWrite {
                group,
                trace_id: trace_id.to_string(),
                op,
            };
            return self
                .forwarder
                .write(target, &addr, write, timeout)
                .await
                .map(PeerReply::Write)
                .map_err(unavailable);
        }
        self.transport()
            .call(target, &addr, group, trace_id, req, timeout)
            .await
            .map_err(|e| unavailable(e.to_string()))
    }
}
