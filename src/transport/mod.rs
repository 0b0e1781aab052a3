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
pub(crate) mod endpoint;
pub(crate) mod error;
pub(crate) mod fault;
pub(crate) mod frame;
pub(crate) mod handler;
pub(crate) mod join;
mod peers;
mod server;
pub(crate) mod tls;
pub(crate) mod tls_config;
pub(crate) mod token;

#[cfg(test)]
mod tests;

// A node is named in its certificate as `node-<id>`; frames carry the group id so that one
// connection serves all groups.
pub(crate) use crate::ids::{GroupId, NodeId};

pub(crate) use endpoint::{Inbound, PeerRevoked, Transport, TransportConfig};
pub(crate) use error::TransportError;
pub(crate) use frame::FRAME_BYTES_MAX;
pub(crate) use frame::{FrameHeader, JoinGrant, JoinRequest};
pub(crate) use handler::{Handler, JoinAdmitter};
pub(crate) use join::{join, JoinConfig, JoinSecret};
pub(crate) use tls::{ClusterCa, NodeCredentials};
pub(crate) use token::JoinToken;
