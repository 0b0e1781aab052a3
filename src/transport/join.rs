//! Joining a cluster.
//!
//! The joiner has no certificate yet, only a [`JoinToken`]. It connects without a client
//! certificate, accepting the server only if the server's CA matches the token's fingerprint,
//! and sends the token secret. A member with a [`JoinConfig`] checks the secret, asks its
//! [`JoinAdmitter`] for a node id, issues that node's certificate and returns a [`JoinGrant`].

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::client::{dial, resolve, round_trip, CLOSE_DONE};
use super::frame::{encode, JoinGrant, JoinRequest, WireReply, WireRequest};
use super::handler::JoinAdmitter;
use super::tls::{ClusterCa, NodeCredentials};
use super::tls_config::{join_client_config, quinn_client};
use super::token::{constant_time_eq, JoinToken};
use super::TransportError;

/// How long a finished joiner waits for its close to reach the server.
const JOIN_DRAIN_MS: u64 = 200;

/// What a member needs to admit joiners.
#[derive(Clone)]
pub(crate) struct JoinConfig {
    pub(crate) admitter: Arc<dyn JoinAdmitter>,
    /// Issues the joiners' certificates.
    pub(crate) ca: Arc<ClusterCa>,
    /// The secret joiners must present (from the [`JoinToken`]); replaced when the cluster
    /// rotates it.
    pub(crate) secret: Arc<JoinSecret>,
}

/// The current join secret, shared by the transport (which checks joiners against it) and the
/// node (which replaces it when the cluster rotates its join token).
pub(crate) struct JoinSecret(parking_lot::RwLock<[u8; 32]>);

impl JoinSecret {
    pub(crate) fn new(secret: [u8; 32]) -> Self {
        Self(parking_lot::RwLock::new(secret))
    }

    pub(crate) fn get(&self) -> [u8; 32] {
        *self.0.read()
    }

    pub(crate) fn set(&self, secret: [u8; 32]) {
        *self.0.write() = secret;
    }
}

impl std::fmt::Debug for JoinSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinSecret(<redacted>)")
    }
}

impl JoinConfig {
    #[cfg(test)]
    /// The configuration a freshly admitted node uses so that it, too, can admit joiners.
    pub(crate) fn from_grant(
        grant: &JoinGrant,
        admitter: Arc<dyn JoinAdmitter>,
    ) -> Result<Self, TransportError> {
        let ca = ClusterCa::from_pem(
            &grant.cluster_id,
            &grant.credentials.ca_cert_pem,
            &grant.ca_key_pem,
        )?;
        let secret =
            grant.join_secret.as_slice().try_into().map_err(|_| {
                TransportError::Join("grant carries a malformed join secret".into())
            })?;
        Ok(Self {
            admitter,
            ca: Arc::new(ca),
            secret: Arc::new(JoinSecret::new(secret)),
        })
    }
}

/// Server side: decides on one join request.
pub(crate) async fn admit(config: &JoinConfig, req: JoinRequest) -> Result<JoinGrant, String> {
    let secret = config.secret.get();
    if !constant_time_eq(&secret, &req.secret) {
        return Err("invalid join secret".to_string());
    }
    let (node_id, app) = config.admitter.admit(req).await?;
    let credentials: NodeCredentials = config
        .ca
        .issue_node(node_id)
        .map_err(|e| format!("issuing certificate for node {node_id}: {e}"))?;
    Ok(JoinGrant {
        cluster_id: config.ca.cluster_id().to_string(),
        node_id,
        credentials,
        ca_key_pem: config.ca.key_pem().to_string(),
        join_secret: secret.to_vec(),
        app,
    })
}

/// Joins the cluster reachable at `seed_addr` (`host:port`) with `token`, announcing the
/// addresses the new node will serve on. The whole exchange is bounded by `timeout`.
pub(crate) async fn join(
    seed_addr: &str,
    token: &JoinToken,
    peer_addr: String,
    client_addr: String,
    timeout: Duration,
) -> Result<JoinGrant, TransportError> {
    let request = WireRequest::<()>::Join(JoinRequest {
        secret: token.secret.to_vec(),
        peer_addr,
        client_addr,
    });
    let frame = encode(&request)?;
    let config = quinn_client(join_client_config(token.ca_fingerprint)?)?;
    tokio::time::timeout(timeout, async {
        let seed = resolve(seed_addr, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await?;
        // A throwaway endpoint of the seed's address family: the joiner has no transport yet.
        let bind: SocketAddr = if seed.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| TransportError::Io(format!("bind {bind}: {e}")))?;
        let result = async {
            let conn = dial(&endpoint, config, seed, timeout).await?;
            let reply = round_trip::<()>(&conn, &frame).await;
            conn.close(CLOSE_DONE.into(), b"joined");
            reply
        }
        .await;
        endpoint.close(CLOSE_DONE.into(), b"joined");
        // Best effort: let the close reach the seed so it frees the connection promptly.
        let _ =
            tokio::time::timeout(Duration::from_millis(JOIN_DRAIN_MS), endpoint.wait_idle()).await;
        match result? {
            WireReply::Joined(Ok(grant)) => check_grant(grant, token),
            WireReply::Joined(Err(reason)) | WireReply::Refused(reason) => {
                Err(TransportError::Join(reason))
            }
            WireReply::Reply(()) => Err(TransportError::Protocol(
                "call reply to a join request".into(),
            )),
        }
    })
    .await
    .map_err(|_| TransportError::Timeout)?
}

/// The grant must be for the cluster we pinned; anything else is a confused or hostile seed.
fn check_grant(grant: JoinGrant, token: &JoinToken) -> Result<JoinGrant, TransportError> {
    if grant.credentials.ca_fingerprint()? != token.ca_fingerprint {
        return Err(TransportError::Join(
            "granted credentials belong to another CA".into(),
        ));
    }
    if grant.credentials.node_id != grant.node_id {
        return Err(TransportError::Join(
            "granted credentials name another node".into(),
        ));
    }
    Ok(grant)
}
