//! Receipt coalescing before proposing (G9): `delivered`/`read` frames of one
//! (user, conversation) that arrive within one flush interval become one Raft write carrying
//! the highest watermarks. Every request waits for the write that carries it, so its `ok` (or
//! error) is the truth.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::Gateway;
use crate::protocol::ProtocolError;
use crate::shard::command::ShardOp;

/// How long receipts gather before they are proposed.
pub(crate) const RECEIPT_FLUSH_INTERVAL_MS: u64 = 50;
/// Most (user, conversation) pairs waiting for a flush; past it, `overloaded`.
pub(crate) const RECEIPT_PENDING_MAX: usize = 100_000;
/// Suggested wait when the batcher is full.
const RECEIPT_RETRY_AFTER_MS: u64 = 200;

type Waiter = oneshot::Sender<Result<(), ProtocolError>>;

#[derive(Default)]
struct Pending {
    delivered_seq: Option<u64>,
    read_seq: Option<u64>,
    waiters: Vec<Waiter>,
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

#[derive(Default)]
pub(crate) struct ReceiptBatcher {
    pending: Mutex<HashMap<(String, String), Pending>>,
}

impl ReceiptBatcher {
    /// Queues watermarks of `user` in `conversation_id`; resolves when they are applied.
    pub(crate) fn submit(
        &self,
        conversation_id: &str,
        user_id: &str,
        delivered_seq: Option<u64>,
        read_seq: Option<u64>,
    ) -> Result<oneshot::Receiver<Result<(), ProtocolError>>, ProtocolError> {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.pending.lock();
        let key = (conversation_id.to_string(), user_id.to_string());
        if pending.len() >= RECEIPT_PENDING_MAX && !pending.contains_key(&key) {
            return Err(ProtocolError::overloaded(
                "too many receipts waiting",
                RECEIPT_RETRY_AFTER_MS,
            ));
        }
        let p = pending.entry(key).or_default();
        p.delivered_seq = max_opt(p.delivered_seq, delivered_seq);
        p.read_seq = max_opt(p.read_seq, read_seq);
        p.waiters.push(tx);
        Ok(rx)
    }

    /// Proposes everything gathered so far, one write per (user, conversation).
    async fn flush(&self, gw: &Arc<Gateway>) {
        let batch: Vec<_> = self.pending.lock().drain().collect();
        for ((conversation_id, user_id), p) in batch {
            let gw = gw.clone();
            tokio::spawn(async move {
                let group = gw.shard_map.shard_for_conversation(&conversation_id);
                let op = ShardOp::Receipt {
                    conversation_id,
                    user_id,
                    delivered_seq: p.delivered_seq,
                    read_seq: p.read_seq,
                };
                let result = gw.write_shard(group, op).await.map(|_| ());
                for w in p.waiters {
                    let _ = w.send(result.clone());
                }
            });
        }
    }

    /// Flushes every interval until the node's shutdown or the gateway is gone.
    pub(crate) fn spawn_flusher(gw: &Arc<Gateway>) {
        let weak = Arc::downgrade(gw);
        gw.cluster.shutdown().spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(RECEIPT_FLUSH_INTERVAL_MS));
            loop {
                tick.tick().await;
                let Some(gw) = weak.upgrade() else { return };
                gw.receipts.flush(&gw).await;
            }
        });
    }
}
