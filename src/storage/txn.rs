//! State-machine transactions over one group's `sm` keys.

use super::KvPairs;
use std::collections::BTreeMap;
use std::ops::Bound;

use super::keys::SM_RESERVED_PREFIX;
use super::{StorageError, Store};
use crate::ids::GroupId;

/// A state-machine transaction over one group: reads see its own pending writes first, then
/// the DB. Keys are given without the group prefix and must not start with `0x00` (reserved
/// for the applied log id and membership) nor be empty.
///
/// Nothing is written until raft/ commits the transaction ([`Store::sm_commit`]) in one batch
/// together with the applied log id. A transaction that was given a reserved key is poisoned:
/// its commit fails.
pub(crate) struct SmTxn<'a> {
    store: &'a Store,
    group: GroupId,
    writes: Writes,
    error: Option<StorageError>,
}

/// A transaction's pending writes: key -> `Some(value)` for a put, `None` for a delete.
pub(crate) type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

pub(crate) fn is_user_key(key: &[u8]) -> bool {
    key.first().is_some_and(|b| *b != SM_RESERVED_PREFIX)
}

impl<'a> SmTxn<'a> {
    pub(crate) fn new(store: &'a Store, group: GroupId) -> Self {
        Self {
            store,
            group,
            writes: BTreeMap::new(),
            error: None,
        }
    }

    /// Reads a key: this transaction's pending write if any, else the DB (blocking).
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.writes.get(key) {
            Some(w) => Ok(w.clone()),
            None => self.store.sm_get(self.group, key),
        }
    }

    /// [`SmTxn::get`] through the store's cache of hot values: for keys read by nearly every
    /// apply (a conversation's state), never for keys read once.
    pub(crate) fn get_cached(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.writes.get(key) {
            Some(w) => Ok(w.clone()),
            None => self.store.sm_get_cached(self.group, key),
        }
    }

    /// Range read `[start, end)` (empty `end`: to the end of the group) merged with this
    /// transaction's pending writes, ascending or descending, at most `limit` pairs.
    pub(crate) fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<KvPairs, StorageError> {
        let hi = if end.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(end.to_vec())
        };
        let range = (Bound::Included(start.to_vec()), hi);
        let local: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = self.writes.range(range).collect();
        // Deletions may hide DB rows: read enough of them to still fill `limit`.
        let deletes = local.iter().filter(|(_, v)| v.is_none()).count();
        let db = self.store.sm_scan(
            self.group,
            start,
            end,
            reverse,
            limit.saturating_add(deletes),
        )?;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = db.into_iter().collect();
        if !reverse {
            // The DB part was cut at `limit + deletes` from the start: local writes past its
            // last key may not be merged without the DB rows in between.
            let cut = if merged.len() >= limit.saturating_add(deletes) {
                merged.keys().next_back().cloned()
            } else {
                None
            };
            for (k, v) in local {
                if cut.as_ref().is_some_and(|c| k > c) {
                    break;
                }
                match v {
                    Some(v) => merged.insert(k.clone(), v.clone()),
                    None => merged.remove(k),
                };
            }
            Ok(merged.into_iter().take(limit).collect())
        } else {
            let cut = if merged.len() >= limit.saturating_add(deletes) {
                merged.keys().next().cloned()
            } else {
                None
            };
            for (k, v) in local.into_iter().rev() {
                if cut.as_ref().is_some_and(|c| k < c) {
                    break;
                }
                match v {
                    Some(v) => merged.insert(k.clone(), v.clone()),
                    None => merged.remove(k),
                };
            }
            Ok(merged.into_iter().rev().take(limit).collect())
        }
    }

    pub(crate) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if self.check_key(&key) {
            self.writes.insert(key, Some(value));
        }
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        if self.check_key(&key) {
            self.writes.insert(key, None);
        }
    }

    fn check_key(&mut self, key: &[u8]) -> bool {
        let ok = is_user_key(key);
        debug_assert!(
            ok,
            "state-machine user key is empty or in the reserved 0x00 range: {key:?}"
        );
        if !ok && self.error.is_none() {
            self.error = Some(StorageError::ReservedKey(key.to_vec()));
        }
        ok
    }

    pub(crate) fn into_parts(self) -> Result<(GroupId, Writes), StorageError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok((self.group, self.writes)),
        }
    }
}
