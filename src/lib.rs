//! chatnode: a self-hosted real-time chat server that is its own database.
//!
//! See `docs/ARCHITECTURE.md` for the codemap and the invariants between modules.
pub mod cluster;
pub mod codec;
pub mod config;
pub mod delivery;
pub mod gateway;
pub mod ids;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod raft;
pub mod sabotage;
pub mod shard;
pub mod shutdown;
pub mod storage;
pub mod transport;
