//! The conversation state machine: commands, apply, reads.
//!
//! Everything here is deterministic and knows nothing of Raft or the network: `apply` turns
//! one committed command into writes on a [`crate::storage::SmTxn`] and a response; `read`
//! serves history, sync and lookups from the local state machine.
pub mod accounts;
pub mod apply;
pub mod command;
pub mod keys;
pub mod push;
pub mod query;
pub mod read;
pub mod text;
pub mod validate;

pub use apply::apply_shard;
pub use read::{Page, ShardReader};

#[cfg(test)]
mod tests;
