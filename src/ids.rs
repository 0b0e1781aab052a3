//! The ids every layer shares (bottom layer: imports nothing of the crate).
//!
//! A node and a Raft group are named by these everywhere: in storage keys, Raft RPCs,
//! transport frames, placement and status. One definition, so that a change of width is
//! one edit (and a change of the stored encoding, which it would be, is visible here).

/// A node's id, assigned by the meta group when it admits the node (1, 2, …).
pub(crate) type NodeId = u64;

/// A Raft group id: 0 is the meta group, 1..=S are shard groups.
pub(crate) type GroupId = u32;

/// The meta group's id.
pub(crate) const META_GROUP: GroupId = 0;
