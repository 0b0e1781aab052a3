//! Proposal batching: shard commands bound for the same group that arrive together are
//! proposed as one Raft entry (`Request::ShardBatch`). One entry costs one trip through
//! openraft, one log append and one state-machine batch however many sends it carries, so
//! under load this is where throughput comes from (on top of group commit, which merges the
//! appends of different groups into one fsync).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::command::{Request, Response};
use super::{LocalGroups, RouteError, UnavailableCause};
use crate::ids::GroupId;
use crate::shard::command::{ShardOp, ShardResponse};
use crate::shutdown::Shutdown;

/// Commands waiting to be proposed, per group; past it, callers wait (backpressure).
pub(crate) const PROPOSAL_QUEUE_MAX: usize = 4096;
/// Most commands in one proposed entry.
pub(crate) const PROPOSAL_BATCH_MAX: usize = 256;
/// About the most bytes of commands in one proposed entry (`ShardOp::size_estimate`; the
/// entry ends with the command that reaches it, each command at most
/// `shard::validate::OP_BYTES_MAX`): an entry stays far below the transport's 16 MiB frame, so
/// AppendEntries can always carry it alone.
pub(crate) const PROPOSAL_BATCH_BYTES_MAX: usize = 1 << 20;
/// Entries of one group being proposed at once. One: everything that arrives while an entry
/// commits goes into the next, which keeps entries big and the per-entry cost rare.
pub(crate) const PROPOSALS_IN_FLIGHT_PER_GROUP_MAX: usize = 1;

type Reply = oneshot::Sender<Result<ShardResponse, RouteError>>;

/// Per-group queues feeding one proposer task each.
pub(crate) struct ProposalBatcher {
    queues: HashMap<GroupId, mpsc::Sender<(ShardOp, Reply)>>,
}

impl ProposalBatcher {
    /// Starts a proposer for each of `groups` (each stops at `shutdown`).
    pub(crate) fn start(
        local: Arc<LocalGroups>,
        groups: impl IntoIterator<Item = GroupId>,
        shutdown: &Shutdown,
    ) -> Arc<Self> {
        let mut queues = HashMap::new();
        for group in groups {
            let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE_MAX);
            shutdown.spawn(run(local.clone(), group, rx));
            queues.insert(group, tx);
        }
        Arc::new(ProposalBatcher { queues })
    }

    /// Proposes `op` to `group` (batched with whatever else is queued) and waits for its
    /// applied response.
    pub(crate) async fn write(
        &self,
        group: GroupId,
        op: ShardOp,
    ) -> Result<ShardResponse, RouteError> {
        let queue = self
            .queues
            .get(&group)
            .ok_or(RouteError::NoSuchGroup(group))?;
        let (tx, rx) = oneshot::channel();
        let closed = || RouteError::unavailable(group, UnavailableCause::ProposerStopped);
        queue.send((op, tx)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

async fn run(router: Arc<LocalGroups>, group: GroupId, mut rx: mpsc::Receiver<(ShardOp, Reply)>) {
    let in_flight = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT_PER_GROUP_MAX));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // Give the requests that are ready to run one turn of the scheduler to join this
        // entry. Measured (docs/BENCHMARKS.md): one turn cut p50/p99 at 12,500 sends/s by
        // 3-4x and 2x; yielding more (while more arrived) was worse again.
        tokio::task::yield_now().await;
        // Everything queued while the previous entries were in flight goes into this one.
        let batch = super::with_queued_within(
            first,
            &mut rx,
            PROPOSAL_BATCH_MAX,
            PROPOSAL_BATCH_BYTES_MAX,
            |(op, _)| op.size_estimate(),
        );
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            propose(&router, group, batch).await;
        });
    }
}

async fn propose(router: &LocalGroups, group: GroupId, batch: Vec<(ShardOp, Reply)>) {
    let (ops, replies): (Vec<ShardOp>, Vec<Reply>) = batch.into_iter().unzip();
    let request = if ops.len() == 1 {
        Request::Shard(ops.into_iter().next().expect("one op")) // invariant: len == 1
    } else {
        Request::ShardBatch(ops)
    };
    let expected = replies.len();
    match router.write(group, request).await {
        Ok(Response::Shard(r)) if expected == 1 => {
            for reply in replies {
                let _ = reply.send(Ok(r.clone()));
            }
        }
        Ok(Response::ShardBatch(rs)) if rs.len() == expected => {
            for (reply, r) in replies.into_iter().zip(rs) {
                let _ = reply.send(Ok(r));
            }
        }
        Ok(other) => {
            let e = RouteError::unavailable(
                group,
                UnavailableCause::UnexpectedResponse(format!("{other:?}")),
            );
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
