//! [`MetaView`]: the latest meta state this node saw (node addresses, desired placement,
//! secrets). Created before any group starts: the applier publishes every meta state it
//! applies into it, `Cluster` and the transport's revocation check read it, and whoever
//! must react to a change subscribes (a `tokio::sync::watch`, so readers never block the
//! apply thread).

use std::sync::Arc;

use tokio::sync::watch;

use crate::cluster::command::{MetaState, NodeState};

/// Cheap to clone: all clones share one value.
#[derive(Clone)]
pub(crate) struct MetaView {
    tx: Arc<watch::Sender<Arc<MetaState>>>,
}

impl MetaView {
    pub(crate) fn new(initial: MetaState) -> Self {
        MetaView {
            tx: Arc::new(watch::channel(Arc::new(initial)).0),
        }
    }

    pub(crate) fn get(&self) -> Arc<MetaState> {
        self.tx.borrow().clone()
    }

    /// Replaces the view with `m` (subscribers are woken only when it differs).
    pub(crate) fn publish(&self, m: MetaState) {
        self.tx.send_if_modified(|cur| {
            if **cur == m {
                return false;
            }
            *cur = Arc::new(m);
            true
        });
    }

    /// Changes from now on.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<MetaState>> {
        self.tx.subscribe()
    }

    /// Whether `node` left the cluster (its certificate no longer counts).
    pub(crate) fn node_left(&self, node: u64) -> bool {
        self.tx
            .borrow()
            .nodes
            .get(&node)
            .is_some_and(|n| n.state == NodeState::Left)
    }

    /// The peer address the meta state gives `node`.
    pub(crate) fn peer_addr(&self, node: u64) -> Option<String> {
        self.tx
            .borrow()
            .nodes
            .get(&node)
            .map(|n| n.peer_addr.clone())
    }
}
