//! The meta group (group 0): cluster-wide settings. Later also node membership and the
//! replica map.

use crate::shard::codec::{decode, encode};
use crate::shard::command::{ClusterSettings, MetaOp, Response};
use crate::storage::{SmTxn, StorageError, Store};

/// The meta state machine's key of the cluster settings.
const KEY_SETTINGS: &[u8] = &[0x01];

/// Applies a meta command. `InitCluster` is first-wins: a later one returns the stored
/// settings unchanged.
pub fn apply_meta(txn: &mut SmTxn<'_>, op: &MetaOp) -> Result<Response, StorageError> {
    match op {
        MetaOp::InitCluster(settings) => {
            if let Some(existing) = txn.get(KEY_SETTINGS)? {
                return Ok(Response::Meta(decode(&existing)?));
            }
            txn.put(KEY_SETTINGS.to_vec(), encode(settings)?);
            Ok(Response::Meta(settings.clone()))
        }
    }
}

/// Reads the stored settings (blocking).
pub fn read_settings(store: &Store) -> Result<Option<ClusterSettings>, StorageError> {
    store
        .sm_get(crate::shard::command::META_GROUP, KEY_SETTINGS)?
        .map(|v| decode(&v))
        .transpose()
}
