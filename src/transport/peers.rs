//! The outgoing connection cache: one QUIC connection per peer node, dialed lazily, shared by
//! all concurrent calls (streams multiplex), replaced when it closes or the peer's address
//! changes. A failed dial is remembered for [`RECONNECT_BACKOFF_MS`] so that calls to a dead
//! peer fail fast instead of each paying a connect timeout.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{NodeId, TransportError};

/// How long a failed dial is remembered before the peer is dialed again.
pub(crate) const RECONNECT_BACKOFF_MS: u64 = 300;

#[derive(Default)]
struct Slot {
    /// The address `conn` (or `failure`) belongs to.
    addr: String,
    conn: Option<quinn::Connection>,
    failure: Option<(Instant, TransportError)>,
}

impl Slot {
    /// A usable cached connection, or the remembered failure if still in backoff.
    fn cached(&self, addr: &str) -> Option<Result<quinn::Connection, TransportError>> {
        if self.addr != addr {
            return None;
        }
        if let Some(conn) = self.conn.as_ref().filter(|c| c.close_reason().is_none()) {
            return Some(Ok(conn.clone()));
        }
        match &self.failure {
            Some((at, err)) if at.elapsed() < Duration::from_millis(RECONNECT_BACKOFF_MS) => {
                Some(Err(err.clone()))
            }
            _ => None,
        }
    }
}

#[derive(Default)]
struct Peer {
    /// Held while dialing so concurrent first calls wait for one handshake, not race N.
    dialing: Arc<tokio::sync::Mutex<()>>,
    slot: parking_lot::Mutex<Slot>,
}

impl Peer {
    fn record(&self, addr: &str, result: &Result<quinn::Connection, TransportError>) {
        let mut slot = self.slot.lock();
        slot.addr = addr.to_string();
        // A replaced connection is not closed here: in-flight calls still hold it, and quinn
        // closes it once the last handle drops.
        match result {
            Ok(conn) => {
                slot.conn = Some(conn.clone());
                slot.failure = None;
            }
            Err(e) => {
                slot.conn = None;
                slot.failure = Some((Instant::now(), e.clone()));
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct Peers {
    peers: parking_lot::Mutex<HashMap<NodeId, Arc<Peer>>>,
}

impl Peers {
    /// The connection to `node` at `addr`, dialing with `dial()` if there is none (`dial` is
    /// only called on a miss, keeping the hit path allocation-free).
    ///
    /// The dial runs in its own task: a caller whose (possibly short) call timeout expires
    /// mid-handshake does not abort it, so the outcome is still cached (connection) or
    /// remembered for the backoff (failure) for the calls that follow.
    pub(crate) async fn connection<F, D>(
        &self,
        node: NodeId,
        addr: &str,
        dial: F,
    ) -> Result<quinn::Connection, TransportError>
    where
        F: FnOnce() -> D,
        D: Future<Output = Result<quinn::Connection, TransportError>> + Send + 'static,
    {
        let peer = self.peers.lock().entry(node).or_default().clone();
        if let Some(cached) = peer.slot.lock().cached(addr) {
            return cached;
        }
        let dial_lock = peer.dialing.clone().lock_owned().await;
        // Someone else may have dialed (or failed) while we waited for the lock.
        if let Some(cached) = peer.slot.lock().cached(addr) {
            return cached;
        }
        let (addr, attempt) = (addr.to_string(), dial());
        let task = tokio::spawn(async move {
            let result = attempt.await;
            peer.record(&addr, &result);
            drop(dial_lock);
            result
        });
        task.await
            .map_err(|e| TransportError::Unreachable(format!("dial task failed: {e}")))?
    }

    /// Forgets every cached connection (used on shutdown).
    pub(crate) fn clear(&self) {
        self.peers.lock().clear();
    }
}
