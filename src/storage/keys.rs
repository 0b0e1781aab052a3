//! Big-endian key encoding.
//!
//! Every key is a tuple encoded so that byte order equals tuple order:
//! - integers are fixed-width big-endian (`u8`, `u32`, `u64`), so they sort numerically;
//! - strings are a `u16` big-endian length followed by the UTF-8 bytes. This makes the encoding
//!   prefix-free (all keys that start with a given string form one contiguous range, and
//!   `"ab"` never interleaves with `"a"`), and orders strings by `(length, bytes)`, not
//!   lexicographically. Use strings for identities, integers for ordered things (seq, index).
//!
//! Column-family key layouts (see `storage/mod.rs`):
//! - `log`: `(group u32, index u64)`
//! - `raft`: `(group u32, tag u8)`
//! - `sm`: `(group u32, user key …)`; user keys never start with `0x00` (reserved).

use super::StorageError;
use crate::ids::GroupId;

#[cfg(test)]
/// The longest string `push_str` can encode.
pub(crate) const MAX_KEY_STR: usize = u16::MAX as usize;

/// First byte of the reserved part of a group's `sm` range (applied log id, membership…).
pub(crate) const SM_RESERVED_PREFIX: u8 = 0x00;

#[cfg(test)]
pub(crate) fn push_u8(buf: &mut Vec<u8>, v: u8) {
    buf.push(v);
}

#[cfg(test)]
pub(crate) fn push_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn push_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_be_bytes());
}

/// Appends a length-prefixed string.
///
/// # Panics
/// If `s` is longer than [`MAX_KEY_STR`] bytes: callers must validate lengths first (ids are
/// bounded by the gateway), or use [`try_push_str`].
pub(crate) fn push_str(buf: &mut Vec<u8>, s: &str) {
    if let Err(e) = try_push_str(buf, s) {
        panic!("{e}");
    }
}

/// Appends a length-prefixed string, failing if it is longer than [`MAX_KEY_STR`] bytes.
pub(crate) fn try_push_str(buf: &mut Vec<u8>, s: &str) -> Result<(), StorageError> {
    let len = u16::try_from(s.len()).map_err(|_| StorageError::KeyTooLong(s.len()))?;
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Decodes keys written with the `push_*` functions, in the same order.
#[derive(Debug, Clone)]
pub(crate) struct KeyReader<'a> {
    buf: &'a [u8],
}

impl<'a> KeyReader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        if self.buf.len() < n {
            return Err(StorageError::Corrupt(format!(
                "key too short: need {n} bytes, have {}",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, StorageError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, StorageError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, StorageError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, StorageError> {
        let b = self.take(2)?;
        let len = u16::from_be_bytes([b[0], b[1]]) as usize;
        let s = self.take(len)?;
        std::str::from_utf8(s).map_err(|e| StorageError::Corrupt(format!("key string: {e}")))
    }

    #[cfg(test)]
    /// The bytes not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` if there is
/// none (the prefix is empty or all `0xff`).
pub(crate) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut v = prefix.to_vec();
    while let Some(last) = v.pop() {
        if last < 0xff {
            v.push(last + 1);
            return Some(v);
        }
    }
    None
}

/// `(group)`: the prefix of all of a group's keys in every column family.
pub(crate) fn group_prefix(group: GroupId) -> [u8; 4] {
    group.to_be_bytes()
}

/// `log` CF key: `(group, index)`.
pub(crate) fn log_key(group: GroupId, index: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&group.to_be_bytes());
    k[4..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Decodes a `log` CF key.
pub(crate) fn parse_log_key(key: &[u8]) -> Result<(GroupId, u64), StorageError> {
    if key.len() != 12 {
        return Err(StorageError::Corrupt(format!(
            "log key of {} bytes",
            key.len()
        )));
    }
    let mut r = KeyReader::new(key);
    Ok((r.u32()?, r.u64()?))
}

/// `raft` CF key: `(group, tag)`.
pub(crate) fn raft_key(group: GroupId, tag: u8) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&group.to_be_bytes());
    k[4] = tag;
    k
}

/// `sm` CF key: `(group, user key)`.
pub(crate) fn sm_key(group: GroupId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(key);
    k
}

#[cfg(test)]
/// Bounds `[start, end)` of all of a group's keys in a column family. `end` is `None` for
/// the last possible group.
pub(crate) fn group_range(group: GroupId) -> (Vec<u8>, Option<Vec<u8>>) {
    let p = group_prefix(group);
    (p.to_vec(), prefix_successor(&p))
}

#[cfg(test)]
mod tests;
