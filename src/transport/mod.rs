//! Node-to-node transport. A single node has no peers; the QUIC transport (quinn, mutual
//! TLS, length-prefixed bincode frames carrying cluster id, group id and target node id)
//! arrives with clustering and implements [`crate::raft::PeerNetwork`].
