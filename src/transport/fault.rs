//! Fault injection for tests (always compiled: the fast path is one atomic load per call).
//!
//! Faults are configured per peer node, on the node whose traffic should suffer:
//! - `block(peer)`: calls to `peer` fail with `Unreachable` without touching the network, and
//!   streams from `peer` are reset without a reply (a partition, seen from this node).
//! - `set_delay_ms(peer, ms)`: calls to `peer` wait `ms` before sending (counts against the
//!   call's timeout).
//! - `set_drop_probability(peer, p)`: each call to `peer` is lost with probability `p`; the
//!   caller sees what a lost message looks like, a `Timeout`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use rand::Rng;

use super::NodeId;

#[derive(Clone, Copy, Default)]
struct PeerFault {
    blocked: bool,
    delay_ms: u64,
    drop_probability: f64,
}

impl PeerFault {
    fn is_noop(&self) -> bool {
        !self.blocked && self.delay_ms == 0 && self.drop_probability <= 0.0
    }
}

/// What to do with an outgoing call.
#[derive(Debug, PartialEq)]
pub(crate) enum Outgoing {
    Send { delay: Duration },
    Blocked,
    Dropped,
}

/// Shared fault configuration of one transport.
#[derive(Default)]
pub(crate) struct Faults {
    /// True while any fault is configured; lets the common case skip the lock.
    active: AtomicBool,
    peers: RwLock<HashMap<NodeId, PeerFault>>,
}

impl Faults {
    pub(crate) fn block(&self, peer: NodeId) {
        self.update(peer, |f| f.blocked = true);
    }

    pub(crate) fn unblock(&self, peer: NodeId) {
        self.update(peer, |f| f.blocked = false);
    }

    pub(crate) fn set_delay_ms(&self, peer: NodeId, ms: u64) {
        self.update(peer, |f| f.delay_ms = ms);
    }

    #[cfg(test)]
    pub(crate) fn set_drop_probability(&self, peer: NodeId, p: f64) {
        // NaN would make the random draw panic; treat it as "never drop".
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self.update(peer, |f| f.drop_probability = p);
    }

    /// Removes every fault.
    pub(crate) fn heal(&self) {
        let mut peers = self.peers.write();
        peers.clear();
        self.active.store(false, Ordering::Release);
    }

    fn update(&self, peer: NodeId, change: impl FnOnce(&mut PeerFault)) {
        let mut peers = self.peers.write();
        let fault = peers.entry(peer).or_default();
        change(fault);
        if fault.is_noop() {
            peers.remove(&peer);
        }
        self.active.store(!peers.is_empty(), Ordering::Release);
    }

    fn get(&self, peer: NodeId) -> Option<PeerFault> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        self.peers.read().get(&peer).copied()
    }

    pub(crate) fn outgoing(&self, peer: NodeId) -> Outgoing {
        let Some(fault) = self.get(peer) else {
            return Outgoing::Send {
                delay: Duration::ZERO,
            };
        };
        if fault.blocked {
            return Outgoing::Blocked;
        }
        if fault.drop_probability > 0.0 && rand::thread_rng().gen_bool(fault.drop_probability) {
            return Outgoing::Dropped;
        }
        Outgoing::Send {
            delay: Duration::from_millis(fault.delay_ms),
        }
    }

    pub(crate) fn incoming_blocked(&self, peer: NodeId) -> bool {
        self.get(peer).is_some_and(|f| f.blocked)
    }
}
