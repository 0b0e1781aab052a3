//! [`Transport`]: one quinn endpoint per node, serving inbound calls and making outbound ones.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::debug;

use super::client::{dial, resolve, round_trip, CLOSE_DONE};
use super::fault::{Faults, Outgoing};
use super::frame::{encode, FrameHeader, WireReply, WireRequest};
use super::handler::Handler;
use super::join::JoinConfig;
use super::peers::Peers;
use super::server::Server;
use super::tls::{node_id_of_cert, tls_err, NodeCredentials};
use super::tls_config::{client_config, quinn_client, quinn_server, server_config};
use super::{GroupId, NodeId, TransportError};

/// Default bound on dialing a peer (and on an inbound handshake).
pub(crate) const CONNECT_TIMEOUT_MS: u64 = 3_000;
/// How long `shutdown` waits for connections to close cleanly.
const SHUTDOWN_DRAIN_MS: u64 = 500;

/// How a node's transport is set up.
#[derive(Clone)]
pub(crate) struct TransportConfig {
    /// UDP address to listen on (and to dial from).
    pub(crate) listen: SocketAddr,
    pub(crate) cluster_id: String,
    pub(crate) node_id: NodeId,
    pub(crate) credentials: NodeCredentials,
    /// Set on members that admit joiners.
    pub(crate) join: Option<JoinConfig>,
    pub(crate) connect_timeout_ms: u64,
    // secrets (issue 12 point 5)
    /// Says whether a node id (from a verified certificate) was revoked, e.g. because the
    /// node left the cluster: its calls are refused and its connection closed.
    pub(crate) revoked: Option<PeerRevoked>,
}

/// See [`TransportConfig::revoked`].
pub(crate) type PeerRevoked = Arc<dyn Fn(NodeId) -> bool + Send + Sync>;

impl TransportConfig {
    pub(crate) fn new(
        listen: SocketAddr,
        cluster_id: String,
        node_id: NodeId,
        credentials: NodeCredentials,
    ) -> Self {
        Self {
            listen,
            cluster_id,
            node_id,
            credentials,
            join: None,
            connect_timeout_ms: CONNECT_TIMEOUT_MS,
            revoked: None,
        }
    }
}

/// A node's transport. Cheap to clone; all clones share one endpoint and connection cache.
pub(crate) struct Transport<Req, Resp> {
    inner: Arc<Inner>,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> Clone for Transport<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _types: PhantomData,
        }
    }
}

struct Inner {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    cluster_id: String,
    node_id: NodeId,
    connect_timeout: Duration,
    peers: Peers,
    faults: Arc<Faults>,
    /// The accept loop, once [`Inbound::serve`] started it.
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    fn stop_accepting(&self) {
        if let Some(task) = self.accept_task.lock().take() {
            task.abort();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The accept loop holds its own endpoint handle; stop it with the last Transport.
        self.stop_accepting();
        self.endpoint.close(CLOSE_DONE.into(), b"transport dropped");
    }
}

/// The serving half of a transport [`Transport::open`] returned: inbound connections wait
/// (in quinn's queue, bounded by their handshake timeout) until [`Inbound::serve`] gives it
/// the handler, so that a node can call out before whatever answers its peers exists.
pub(crate) struct Inbound<Req, Resp> {
    inner: Arc<Inner>,
    cluster_id: String,
    connect_timeout: Duration,
    join: Option<JoinConfig>,
    revoked: Option<PeerRevoked>,
    /// This node's CA, which a join config given to `serve` must be for.
    ca_fingerprint: [u8; 32],
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> Inbound<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Starts accepting: every inbound call is answered by `handler`, joiners (if `join`
    /// is set, or was in the config) by its admitter.
    pub(crate) fn serve(
        self,
        handler: Arc<dyn Handler<Req, Resp>>,
        join: Option<JoinConfig>,
    ) -> Result<(), TransportError> {
        if let Some(j) = &join {
            check_join(j, self.ca_fingerprint, &self.cluster_id)?;
        }
        let server = Arc::new(Server::new(
            self.cluster_id,
            self.inner.node_id,
            handler,
            join.or(self.join),
            self.inner.faults.clone(),
            self.connect_timeout,
            self.revoked,
        ));
        let task = tokio::spawn(server.accept_loop(self.inner.endpoint.clone()));
        *self.inner.accept_task.lock() = Some(task);
        Ok(())
    }
}

impl<Req, Resp> Transport<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    #[cfg(test)]
    /// Binds the endpoint and starts serving. Must be called inside a tokio runtime.
    pub(crate) fn bind(
        cfg: TransportConfig,
        handler: Arc<dyn Handler<Req, Resp>>,
    ) -> Result<Self, TransportError> {
        let (transport, inbound) = Self::open(cfg)?;
        inbound.serve(handler, None)?;
        Ok(transport)
    }

    /// Binds the endpoint: calls out work at once, inbound calls once the returned
    /// [`Inbound`] is served. Must be called inside a tokio runtime.
    pub(crate) fn open(cfg: TransportConfig) -> Result<(Self, Inbound<Req, Resp>), TransportError> {
        check_credentials(&cfg)?;
        let endpoint =
            quinn::Endpoint::server(quinn_server(server_config(&cfg.credentials)?)?, cfg.listen)
                .map_err(|e| TransportError::Io(format!("bind {}: {e}", cfg.listen)))?;
        let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms);
        let inner = Arc::new(Inner {
            endpoint,
            client_config: quinn_client(client_config(&cfg.credentials)?)?,
            cluster_id: cfg.cluster_id.clone(),
            node_id: cfg.node_id,
            connect_timeout,
            peers: Peers::default(),
            faults: Arc::new(Faults::default()),
            accept_task: Mutex::new(None),
        });
        let inbound = Inbound {
            inner: inner.clone(),
            cluster_id: cfg.cluster_id,
            connect_timeout,
            join: cfg.join,
            revoked: cfg.revoked,
            ca_fingerprint: cfg.credentials.ca_fingerprint()?,
            _types: PhantomData,
        };
        Ok((
            Self {
                inner,
                _types: PhantomData,
            },
            inbound,
        ))
    }

    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.inner
            .endpoint
            .local_addr()
            .map_err(|e| TransportError::Io(e.to_string()))
    }

    #[cfg(test)]
    /// Open QUIC connections, inbound and outbound (diagnostics).
    pub(crate) fn open_connections(&self) -> usize {
        self.inner.endpoint.open_connections()
    }

    /// Fault injection controls (tests).
    pub(crate) fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Calls node `to` at `addr` (`host:port`) for Raft group `group`, bounded by `timeout`.
    pub(crate) async fn call(
        &self,
        to: NodeId,
        addr: &str,
        group: GroupId,
        trace_id: &str,
        body: Req,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        let header = FrameHeader {
            cluster_id: self.inner.cluster_id.clone(),
            group,
            from: self.inner.node_id,
            to,
            trace_id: trace_id.to_string(),
        };
        // Encode first: an oversized request fails without touching the network.
        let frame = encode(&WireRequest::Call { header, body })?;
        tokio::time::timeout(timeout, self.send(to, addr, &frame))
            .await
            .map_err(|_| TransportError::Timeout)?
    }

    async fn send(&self, to: NodeId, addr: &str, frame: &[u8]) -> Result<Resp, TransportError> {
        match self.inner.faults.outgoing(to) {
            Outgoing::Blocked => {
                return Err(TransportError::Unreachable(format!(
                    "node {to} blocked by fault injection"
                )))
            }
            // A lost message: the caller's timeout fires.
            Outgoing::Dropped => std::future::pending::<()>().await,
            Outgoing::Send { delay } if !delay.is_zero() => tokio::time::sleep(delay).await,
            Outgoing::Send { .. } => {}
        }
        let inner = &self.inner;
        let dial_peer = || {
            let (endpoint, config) = (inner.endpoint.clone(), inner.client_config.clone());
            let (target, timeout) = (addr.to_string(), inner.connect_timeout);
            async move {
                let result = async {
                    let local = endpoint
                        .local_addr()
                        .map_err(|e| TransportError::Io(e.to_string()))?;
                    dial(&endpoint, config, resolve(&target, local).await?, timeout).await
                }
                .await;
                if let Err(e) = &result {
                    debug!(peer = to, addr = %target, error = %e, "dial failed");
                }
                result
            }
        };
        let conn = inner.peers.connection(to, addr, dial_peer).await?;
        match round_trip::<Resp>(&conn, frame).await? {
            WireReply::Reply(resp) => Ok(resp),
            WireReply::Refused(reason) => Err(TransportError::Refused(reason)),
            WireReply::Joined(_) => Err(TransportError::Protocol("join reply to a call".into())),
        }
    }

    /// Closes the endpoint: in-flight calls fail, the accept loop stops, and the socket is
    /// released once connections have drained (bounded by SHUTDOWN_DRAIN_MS).
    pub(crate) async fn shutdown(&self) {
        self.inner.stop_accepting();
        self.inner.endpoint.close(CLOSE_DONE.into(), b"shutdown");
        self.inner.peers.clear();
        let drain = Duration::from_millis(SHUTDOWN_DRAIN_MS);
        let _ = tokio::time::timeout(drain, self.inner.endpoint.wait_idle()).await;
    }
}

/// Catches configuration mistakes at bind time instead of as handshake failures later.
fn check_credentials(cfg: &TransportConfig) -> Result<(), TransportError> {
    let creds = &cfg.credentials;
    let named = node_id_of_cert(&creds.leaf_der()?);
    if named != Some(cfg.node_id) || creds.node_id != cfg.node_id {
        return Err(TransportError::Tls(format!(
            "credentials are for node {:?} (certificate names {named:?}), transport is node {}",
            creds.node_id, cfg.node_id
        )));
    }
    super::tls_config::verify_leaf(&creds.ca_der()?, &creds.leaf_der()?).map_err(|e| {
        tls_err(format!(
            "node certificate does not verify against its CA: {e}"
        ))
    })?;
    if let Some(join) = &cfg.join {
        check_join(join, creds.ca_fingerprint()?, &cfg.cluster_id)?;
    }
    Ok(())
}

fn check_join(join: &JoinConfig, ca: [u8; 32], cluster_id: &str) -> Result<(), TransportError> {
    if join.ca.fingerprint() != ca || join.ca.cluster_id() != cluster_id {
        return Err(TransportError::Tls(
            "join CA is not this node's cluster CA".into(),
        ));
    }
    Ok(())
}
