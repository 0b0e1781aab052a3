//! The meta group (group 0): cluster-wide settings, node membership and the desired
//! placement of every group's replicas.
//!
//! Apply is deterministic like a shard's: node ids are assigned at apply (`next_node_id`),
//! placements are compare-and-set on `placement_version`.

use super::command::{
    ClusterSettings, MetaOp, MetaState, MetaStateV1, NodeInfo, NodeState, QueryResult, Response,
    JOIN_SECRET_BYTES,
};
use crate::codec::{decode, encode};
use crate::ids::{GroupId, NodeId, META_GROUP};
use crate::shard::query::ShardQuery;
use crate::shard::ShardReader;
use crate::storage::{SmTxn, StorageError, Store};

/// The meta state machine's key of the cluster settings.
const KEY_SETTINGS: &[u8] = &[0x01];
/// The key of [`MetaState`] (small: nodes and one replica list per group).
const KEY_STATE: &[u8] = &[0x02];

/// Most nodes a cluster admits (a bound on the meta state and on fan-out).
pub(crate) const NODES_MAX: usize = 64;

/// Decodes the stored meta state, also in its format from before the secrets.
fn decode_state(bytes: &[u8]) -> Result<MetaState, StorageError> {
    match decode::<MetaState>(bytes) {
        Ok(s) => Ok(s),
        Err(e) => decode::<MetaStateV1>(bytes)
            .map(MetaState::from)
            .map_err(|_| e.into()),
    }
}

fn load_state(txn: &mut SmTxn<'_>) -> Result<MetaState, StorageError> {
    Ok(match txn.get(KEY_STATE)? {
        Some(v) => decode_state(&v)?,
        None => MetaState::default(),
    })
}

fn meta_response(state: MetaState, node_id: Option<NodeId>) -> Response {
    Response::MetaState { state, node_id }
}

/// Applies a meta command. `InitCluster` is first-wins: a later one returns the stored
/// settings unchanged.
pub(crate) fn apply_meta(txn: &mut SmTxn<'_>, op: &MetaOp) -> Result<Response, StorageError> {
    if let MetaOp::InitCluster(settings) = op {
        if let Some(existing) = txn.get(KEY_SETTINGS)? {
            return Ok(Response::Meta(decode(&existing)?));
        }
        txn.put(KEY_SETTINGS.to_vec(), encode(settings)?);
        return Ok(Response::Meta(settings.clone()));
    }
    let mut state = load_state(txn)?;
    let mut admitted = None;
    match op {
        MetaOp::InitCluster(_) => {}
        MetaOp::AddNode {
            peer_addr,
            client_addr,
        } => {
            let existing = state
                .nodes
                .values()
                .find(|n| n.peer_addr == *peer_addr && n.state != NodeState::Left)
                .map(|n| n.node_id);
            match existing {
                Some(id) => admitted = Some(id),
                None if state.nodes.len() >= NODES_MAX => {}
                None => {
                    let id = state.next_node_id.max(1);
                    state.next_node_id = id + 1;
                    state.nodes.insert(
                        id,
                        NodeInfo {
                            node_id: id,
                            peer_addr: peer_addr.clone(),
                            client_addr: client_addr.clone(),
                            state: NodeState::Active,
                        },
                    );
                    admitted = Some(id);
                }
            }
        }
        MetaOp::UpdateNode {
            node_id,
            peer_addr,
            client_addr,
        } => {
            if let Some(n) = state.nodes.get_mut(node_id) {
                n.peer_addr = peer_addr.clone();
                n.client_addr = client_addr.clone();
            }
        }
        MetaOp::SetNodeState { node_id, state: s } => {
            if let Some(n) = state.nodes.get_mut(node_id) {
                // Left is final: a node that left never comes back under the same id.
                if n.state != NodeState::Left {
                    n.state = *s;
                }
            }
        }
        MetaOp::SetPlacement { version, replicas } => {
            if *version == state.placement_version {
                state.replicas = replicas.clone();
                state.placement_version += 1;
            }
        }
        MetaOp::InitSecrets(secrets) => {
            // First wins, like the settings; a malformed proposal changes nothing.
            if !state.secrets.is_initialized() && secrets.is_initialized() {
                state.secrets = secrets.clone();
            }
        }
        MetaOp::RotateJoinSecret { secret } => {
            if state.secrets.is_initialized() && secret.0.len() == JOIN_SECRET_BYTES {
                state.secrets.join_secret = secret.clone();
                state.secrets.join_epoch += 1;
            }
        }
    }
    txn.put(KEY_STATE.to_vec(), encode(&state)?);
    Ok(meta_response(state, admitted))
}

/// Reads the stored settings (blocking).
pub(crate) fn read_settings(store: &Store) -> Result<Option<ClusterSettings>, StorageError> {
    Ok(store
        .sm_get(META_GROUP, KEY_SETTINGS)?
        .map(|v| decode(&v))
        .transpose()?)
}

/// Reads this node's copy of the meta state (blocking; possibly behind the leader's).
pub(crate) fn read_state(store: &Store) -> Result<MetaState, StorageError> {
    Ok(match store.sm_get(META_GROUP, KEY_STATE)? {
        Some(v) => decode_state(&v)?,
        None => MetaState::default(),
    })
}

/// Serves `q` from this node's state of `group` (the caller passed the read barrier): the
/// meta state for [`ShardQuery::Meta`] (which a shard does not know), the shard reader for
/// every other query.
pub(crate) async fn serve_query(
    reader: &ShardReader,
    group: GroupId,
    q: ShardQuery,
) -> Result<QueryResult, StorageError> {
    if !matches!(q, ShardQuery::Meta) {
        return reader.query(group, q).await;
    }
    let store = reader.store().clone();
    let state = tokio::task::spawn_blocking(move || read_state(&store))
        .await
        .map_err(|e| StorageError::Corrupt(format!("read task failed: {e}")))??;
    Ok(QueryResult::Meta(state))
}
