//! Server side: accept connections, identify the caller by its client certificate, and serve
//! one request per stream after checking that it is meant for us and really from its sender.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::client::CLOSE_REFUSED;
use super::fault::Faults;
use super::frame::{
    encode, read_len, read_payload, FrameHeader, WireReply, WireRequest, FRAME_BYTES_MAX,
};
use super::handler::Handler;
use super::join::{admit, JoinConfig};
use super::tls::node_id_of_cert;
use super::{NodeId, TransportError};

/// Request bytes one connection may have in flight (read but not yet answered); caps memory a
/// single peer can pin at ~4 maximal frames instead of `MAX_CONCURRENT_STREAMS` of them.
const INFLIGHT_BYTES_PER_CONNECTION_MAX: usize = 4 * FRAME_BYTES_MAX;
/// Certificate-less peers can only join; a join request is tiny.
const ANONYMOUS_FRAME_BYTES_MAX: usize = 64 << 10;
/// Certificate-less connections open at once (they are unauthenticated: keep them scarce).
const ANONYMOUS_CONNECTIONS_MAX: usize = 64;
/// Lifetime of a certificate-less connection; a join needs one round trip.
const ANONYMOUS_CONNECTION_MS: u64 = 30_000;
/// How long a refusal that closes the connection waits for its reply to be delivered.
const REFUSAL_DRAIN_MS: u64 = 500;

/// Who is on the other end of a connection, per its TLS client certificate.
#[derive(Clone, Copy, Debug)]
enum Caller {
    /// No client certificate: may only join.
    Anonymous,
    /// A certificate from our CA that names no node.
    Unnamed,
    /// A certificate from our CA naming this node.
    Member(NodeId),
}

/// A refused call: why, and whether the whole connection goes too.
struct Refusal {
    reason: String,
    close_connection: bool,
}

pub(crate) struct Server<Req, Resp> {
    pub(crate) cluster_id: String,
    pub(crate) node_id: NodeId,
    pub(crate) handler: Arc<dyn Handler<Req, Resp>>,
    pub(crate) join: Option<JoinConfig>,
    pub(crate) faults: Arc<Faults>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) anonymous: Arc<Semaphore>,
    /// Node ids whose certificates no longer count (nodes that left).
    pub(crate) revoked: Option<super::PeerRevoked>,
}

impl<Req, Resp> Server<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    pub(crate) fn new(
        cluster_id: String,
        node_id: NodeId,
        handler: Arc<dyn Handler<Req, Resp>>,
        join: Option<JoinConfig>,
        faults: Arc<Faults>,
        handshake_timeout: Duration,
        revoked: Option<super::PeerRevoked>,
    ) -> Self {
        Self {
            cluster_id,
            node_id,
            handler,
            join,
            faults,
            handshake_timeout,
            anonymous: Arc::new(Semaphore::new(ANONYMOUS_CONNECTIONS_MAX)),
            revoked,
        }
    }

    pub(crate) async fn accept_loop(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(self.clone().serve_connection(incoming));
        }
    }

    async fn serve_connection(self: Arc<Self>, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let conn = match tokio::time::timeout(self.handshake_timeout, incoming).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                debug!(%remote, error = %e, "inbound handshake failed");
                return;
            }
            Err(_) => {
                debug!(%remote, "inbound handshake timed out");
                return;
            }
        };
        let caller = caller_of(&conn);
        debug!(%remote, ?caller, "inbound connection");
        match caller {
            Caller::Anonymous => self.serve_anonymous(conn).await,
            Caller::Unnamed | Caller::Member(_) => self.serve_authenticated(conn, caller).await,
        }
    }

    async fn serve_authenticated(self: Arc<Self>, conn: quinn::Connection, caller: Caller) {
        let budget = Arc::new(Semaphore::new(INFLIGHT_BYTES_PER_CONNECTION_MAX));
        // quinn's stream limit (MAX_CONCURRENT_STREAMS) bounds the tasks spawned here.
        while let Ok((send, recv)) = conn.accept_bi().await {
            let (server, conn, budget) = (self.clone(), conn.clone(), budget.clone());
            tokio::spawn(async move {
                server
                    .serve_stream(&conn, caller, send, recv, &budget)
                    .await
            });
        }
    }

    /// Certificate-less peers are served one stream at a time, for a bounded time, and only
    /// up to ANONYMOUS_CONNECTIONS_MAX at once: they can only ask to join.
    async fn serve_anonymous(self: Arc<Self>, conn: quinn::Connection) {
        let Ok(_slot) = self.anonymous.clone().try_acquire_owned() else {
            conn.close(
                CLOSE_REFUSED.into(),
                b"too many unauthenticated connections",
            );
            return;
        };
        let budget = Semaphore::new(ANONYMOUS_FRAME_BYTES_MAX);
        let serve = async {
            while let Ok((send, recv)) = conn.accept_bi().await {
                if !self
                    .serve_stream(&conn, Caller::Anonymous, send, recv, &budget)
                    .await
                {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(ANONYMOUS_CONNECTION_MS), serve).await;
        conn.close(CLOSE_REFUSED.into(), b"unauthenticated connection expired");
    }

    /// Serves one request. Returns false if the connection was closed as a result.
    async fn serve_stream(
        &self,
        conn: &quinn::Connection,
        caller: Caller,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        budget: &Semaphore,
    ) -> bool {
        if let Caller::Member(peer) = caller {
            if self.faults.incoming_blocked(peer) {
                // Partition simulation: drop the request without an answer.
                let _ = send.reset(CLOSE_REFUSED.into());
                let _ = recv.stop(CLOSE_REFUSED.into());
                return true;
            }
        }
        let max = match caller {
            Caller::Anonymous => ANONYMOUS_FRAME_BYTES_MAX,
            _ => FRAME_BYTES_MAX,
        };
        let request = async {
            let len = read_len(&mut recv, max).await?;
            // len <= FRAME_BYTES_MAX, far below u32::MAX and the budget, so this always
            // completes once earlier requests are answered (the semaphore is never closed).
            let permit = budget.acquire_many(len as u32).await.ok();
            let request: WireRequest<Req> = read_payload(&mut recv, len).await?;
            Ok::<_, TransportError>((request, permit))
        };
        let (request, _permit) = match request.await {
            Ok(request) => request,
            Err(TransportError::Io(e)) => {
                debug!(?caller, error = %e, "inbound stream failed");
                return true;
            }
            Err(e) => {
                warn!(?caller, error = %e, "malformed inbound frame");
                send_reply::<Resp>(&mut send, WireReply::Refused(e.to_string())).await;
                return true;
            }
        };
        let reply = match request {
            WireRequest::Join(req) => WireReply::Joined(match &self.join {
                Some(join) => {
                    let (peer_addr, remote) = (req.peer_addr.clone(), conn.remote_address());
                    let result = admit(join, req).await;
                    match &result {
                        Ok(grant) => {
                            info!(%remote, %peer_addr, node = grant.node_id, "admitted joiner")
                        }
                        Err(reason) => warn!(%remote, %peer_addr, %reason, "join refused"),
                    }
                    result
                }
                None => Err("this node does not admit joiners".to_string()),
            }),
            WireRequest::Call { header, body } => match self.check(caller, &header) {
                Ok(()) => WireReply::Reply(self.handler.handle(header, body).await),
                Err(refusal) => {
                    let close = refusal.close_connection;
                    send_reply::<Resp>(&mut send, WireReply::Refused(refusal.reason.clone())).await;
                    if close {
                        // Let the refusal arrive before the close discards unsent data.
                        let _ = tokio::time::timeout(
                            Duration::from_millis(REFUSAL_DRAIN_MS),
                            send.stopped(),
                        )
                        .await;
                        conn.close(CLOSE_REFUSED.into(), refusal.reason.as_bytes());
                    }
                    return !close;
                }
            },
        };
        send_reply(&mut send, reply).await;
        true
    }

    /// Decides whether a call may reach the handler.
    fn check(&self, caller: Caller, header: &FrameHeader) -> Result<(), Refusal> {
        let refuse = |reason: String, close_connection| {
            Err(Refusal {
                reason,
                close_connection,
            })
        };
        let sender = match caller {
            Caller::Anonymous => {
                warn!(trace_id = %header.trace_id, "call without client certificate");
                return refuse("no client certificate".into(), true);
            }
            Caller::Unnamed => {
                warn!(trace_id = %header.trace_id, "call with a certificate naming no node");
                return refuse("client certificate names no node".into(), false);
            }
            Caller::Member(id) => id,
        };
        if self.revoked.as_ref().is_some_and(|r| r(sender)) {
            warn!(from = sender, trace_id = %header.trace_id, "call from a revoked node");
            return refuse(
                format!("node {sender} left the cluster; its identity is revoked"),
                true,
            );
        }
        if header.cluster_id != self.cluster_id {
            warn!(from = sender, theirs = %header.cluster_id, ours = %self.cluster_id, trace_id = %header.trace_id, "call for another cluster");
            return refuse(
                format!(
                    "cluster id mismatch: frame for {:?}, this node is in {:?}",
                    header.cluster_id, self.cluster_id
                ),
                false,
            );
        }
        if header.to != self.node_id {
            // Happens legitimately while a peer still has a stale address for a node.
            debug!(from = sender, to = header.to, trace_id = %header.trace_id, "call for another node");
            return refuse(
                format!(
                    "frame addressed to node {}, this is node {}",
                    header.to, self.node_id
                ),
                false,
            );
        }
        if header.from != sender {
            warn!(from = header.from, cert = sender, trace_id = %header.trace_id, "sender does not match certificate");
            return refuse(
                format!(
                    "frame claims sender node {} but the certificate names node {}",
                    header.from, sender
                ),
                false,
            );
        }
        Ok(())
    }
}

/// The caller's identity: a verified client certificate (rustls only hands out chains that
/// verified against our CA) and the node it names.
fn caller_of(conn: &quinn::Connection) -> Caller {
    let Some(identity) = conn.peer_identity() else {
        return Caller::Anonymous;
    };
    match identity.downcast::<Vec<CertificateDer<'static>>>() {
        Ok(chain) => match chain.first().and_then(node_id_of_cert) {
            Some(id) => Caller::Member(id),
            None => Caller::Unnamed,
        },
        Err(_) => Caller::Unnamed,
    }
}

/// Sends the reply frame and finishes the stream. A reply too large to frame becomes a
/// refusal so the caller learns why instead of timing out.
async fn send_reply<Resp: Serialize>(send: &mut quinn::SendStream, reply: WireReply<Resp>) {
    let frame = match encode(&reply) {
        Ok(frame) => frame,
        Err(e) => {
            warn!(error = %e, "reply not sendable");
            match encode(&WireReply::<Resp>::Refused(format!(
                "reply not sendable: {e}"
            ))) {
                Ok(frame) => frame,
                Err(_) => return,
            }
        }
    };
    match send.write_all(&frame).await {
        Ok(()) => {
            // Fails only if the caller already gave up on the stream.
            let _ = send.finish();
        }
        Err(e) => debug!(error = %e, "reply write failed"),
    }
}
