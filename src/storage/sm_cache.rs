//! A write-through cache of hot state-machine values (a conversation's state and last seq,
//! read by every send's apply).
//!
//! Only values read with [`Store::sm_get_cached`](super::Store::sm_get_cached) enter it; a
//! commit updates (or drops) the cached keys it writes, and a snapshot install drops the
//! group's keys. It is correct because a group's state-machine writes all go through
//! `sm_commit` / `sm_replace`, which update the cache under the same lock right after the
//! write, and because a group's applies and snapshot installs never overlap (openraft runs
//! them one at a time per group), so a miss read from the DB cannot race a write of its key.

use std::collections::HashMap;
use std::sync::Arc;

/// Bytes of keys and values the cache holds at most; past it, arbitrary entries go.
pub(crate) const SM_CACHE_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Bookkeeping charged per entry on top of its key and value.
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// Full `sm` keys (group prefix included) -> value.
#[derive(Default)]
pub(crate) struct SmCache {
    map: HashMap<Vec<u8>, Arc<[u8]>>,
    bytes: usize,
}

fn cost(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD_BYTES
}

impl SmCache {
    pub(crate) fn get(&self, key: &[u8]) -> Option<Arc<[u8]>> {
        self.map.get(key).cloned()
    }

    /// Caches `value` (a read that missed), evicting arbitrary entries to stay in bounds.
    pub(crate) fn insert(&mut self, key: Vec<u8>, value: Arc<[u8]>) {
        let added = cost(&key, &value);
        if added > SM_CACHE_BYTES_MAX / 16 {
            return;
        }
        self.remove(&key);
        while self.bytes + added > SM_CACHE_BYTES_MAX {
            let Some(victim) = self.map.keys().next().cloned() else {
                break;
            };
            self.remove(&victim);
        }
        self.bytes += added;
        self.map.insert(key, value);
    }

    /// A committed write of `key`: a cached key takes the new value (`None`: deleted).
    pub(crate) fn written(&mut self, key: &[u8], value: Option<&[u8]>) {
        if !self.map.contains_key(key) {
            return;
        }
        match value {
            Some(v) => self.insert(key.to_vec(), Arc::from(v)),
            None => self.remove(key),
        }
    }

    pub(crate) fn remove(&mut self, key: &[u8]) {
        if let Some(v) = self.map.remove(key) {
            self.bytes -= cost(key, &v);
        }
    }

    /// Drops every key starting with `prefix` (a group replaced by a snapshot).
    pub(crate) fn remove_prefix(&mut self, prefix: &[u8]) {
        let gone: Vec<Vec<u8>> = self
            .map
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for k in gone {
            self.remove(&k);
        }
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_update_only_cached_keys_and_bytes_stay_bounded() {
        let mut c = SmCache::default();
        c.insert(b"k1".to_vec(), Arc::from(&b"v1"[..]));
        c.written(b"k1", Some(b"v2"));
        c.written(b"k2", Some(b"x"));
        assert_eq!(c.get(b"k1").as_deref(), Some(&b"v2"[..]));
        assert!(c.get(b"k2").is_none());
        c.written(b"k1", None);
        assert!(c.get(b"k1").is_none());
        assert_eq!(c.bytes(), 0);

        let big = vec![7u8; SM_CACHE_BYTES_MAX / 32];
        for i in 0..100u32 {
            c.insert(i.to_be_bytes().to_vec(), Arc::from(&big[..]));
            assert!(c.bytes() <= SM_CACHE_BYTES_MAX);
        }
        c.remove_prefix(&[0, 0]);
        assert!(c.map.keys().all(|k| !k.starts_with(&[0, 0])));
    }
}
