//! Node-to-node transport: QUIC (quinn) with mutual TLS rooted at a per-cluster CA, one cached
//! connection per peer node, one bidirectional stream per call carrying a length-prefixed
//! bincode frame with cluster id, group id and source/target node ids.
//!
//! Module map (one job each):
//! - [`tls`]: the cluster CA and per-node credentials (certificate issuance).
//! - [`token`]: join tokens (`chatnode-join-v1.…`).
//! - [`tls_config`]: rustls/quinn configurations, including the pinned-CA join verifier.
//! - [`frame`]: wire envelope and length-prefixed framing.
//! - [`handler`]: the traits the embedding application implements.
//! - [`endpoint`]: [`Transport`] (bind, call, shutdown).
//! - [`client`] / [`peers`]: dialing, error mapping and the per-peer connection cache.
//! - [`server`]: accept loop and per-stream request validation.
//! - [`join`]: joining a cluster (client side) and admitting joiners (server side).
//! - [`fault`]: fault injection for tests.

mod client;
pub mod endpoint;
pub mod error;
pub mod fault;
pub mod frame;
pub mod handler;
pub mod join;
mod peers;
mod server;
pub mod tls;
pub mod tls_config;
pub mod token;

#[cfg(test)]
mod tests;

// A node is named in its certificate as `node-<id>`; frames carry the group id so that one
// connection serves all groups.
pub use crate::ids::{GroupId, NodeId};

pub use endpoint::{Inbound, PeerRevoked, Transport, TransportConfig};
pub use error::TransportError;
pub use fault::Faults;
pub use frame::{FrameHeader, JoinGrant, JoinRequest, FRAME_BYTES_MAX};
pub use handler::{Handler, JoinAdmitter};
pub use join::{join, JoinConfig, JoinSecret};
pub use tls::{ClusterCa, NodeCredentials};
pub use token::JoinToken;
