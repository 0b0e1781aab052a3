//! The conversation state machine: commands, apply, reads.
//!
//! Everything here is deterministic and knows nothing of Raft or the network: `apply` turns
//! one committed command into writes on a [`crate::storage::SmTxn`] and a response; `read`
//! serves history, sync and lookups from the local state machine.
pub(crate) mod accounts;
pub(crate) mod apply;
pub(crate) mod command;
pub(crate) mod keys;
pub(crate) mod push;
pub(crate) mod query;
pub(crate) mod read;
pub(crate) mod text;
pub(crate) mod validate;

pub(crate) use apply::apply_shard;
pub(crate) use read::{Page, ShardReader};

#[cfg(test)]
mod tests;
