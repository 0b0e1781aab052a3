//! chatnode: a self-hosted real-time chat server that is its own database.
//!
//! See `docs/ARCHITECTURE.md` for the codemap and the invariants between modules.
//!
//! Everything is `pub(crate)` unless the binaries or the tests need it (then `pub`), so
//! rustc reports what nothing uses. The crate's public face: `config`, `node::Node`,
//! `protocol` (the client contract), `sabotage`, `shutdown`, and a few names the CLI and the
//! tests share (`cluster::ShardMap`, `cluster::secrets::ADMIN_TOKEN_FILE`,
//! `gateway::now_ms`, `gateway::client_tls::ReloadableCert`).
pub mod cluster;
pub(crate) mod codec;
pub mod config;
pub(crate) mod delivery;
pub mod gateway;
pub(crate) mod ids;
pub(crate) mod metrics;
pub mod node;
pub mod protocol;
pub(crate) mod raft;
pub mod sabotage;
pub(crate) mod shard;
pub mod shutdown;
pub(crate) mod storage;
pub(crate) mod transport;
