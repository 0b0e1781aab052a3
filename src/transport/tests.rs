//! End-to-end tests over real QUIC sockets on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{join_all, BoxFuture};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

use super::client::{dial, round_trip};
use super::frame::{encode, WireReply, WireRequest};
use super::tls_config::{client_config, join_client_config, quinn_client};
use super::*;

const CLUSTER: &str = "test-cluster";
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const MIB: usize = 1 << 20;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Req {
    Echo(Vec<u8>),
    Sleep(u64),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Resp {
    served_by: NodeId,
    from: NodeId,
    group: GroupId,
    echo: Vec<u8>,
}

/// Echoes requests and counts how often it was invoked.
struct Echo {
    node: NodeId,
    calls: AtomicUsize,
}

impl Handler<Req, Resp> for Echo {
    fn handle(&self, header: FrameHeader, body: Req) -> BoxFuture<'static, Resp> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let node = self.node;
        async move {
            let echo = match body {
                Req::Echo(bytes) => bytes,
                Req::Sleep(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Vec::new()
                }
            };
            Resp {
                served_by: node,
                from: header.from,
                group: header.group,
                echo,
            }
        }
        .boxed()
    }
}

struct Node {
    transport: Transport<Req, Resp>,
    handler: Arc<Echo>,
    addr: String,
}

impl Node {
    fn calls(&self) -> usize {
        self.handler.calls.load(Ordering::SeqCst)
    }
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn start(cfg: TransportConfig) -> Node {
    let handler = Arc::new(Echo {
        node: cfg.node_id,
        calls: AtomicUsize::new(0),
    });
    let transport = Transport::bind(cfg, handler.clone()).unwrap();
    let addr = transport.local_addr().unwrap().to_string();
    Node {
        transport,
        handler,
        addr,
    }
}

fn start_member(ca: &ClusterCa, node_id: NodeId) -> Node {
    let creds = ca.issue_node(node_id).unwrap();
    start(TransportConfig::new(
        localhost(),
        CLUSTER.into(),
        node_id,
        creds,
    ))
}

/// A raw quinn connection from a throwaway endpoint with the given rustls client config.
async fn raw_connect(
    config: rustls::ClientConfig,
    addr: &str,
) -> Result<quinn::Connection, TransportError> {
    let endpoint = quinn::Endpoint::client(localhost()).unwrap();
    dial(
        &endpoint,
        quinn_client(config)?,
        addr.parse().unwrap(),
        Duration::from_secs(5),
    )
    .await
}

async fn raw_call(
    conn: &quinn::Connection,
    request: &WireRequest<Req>,
) -> Result<WireReply<Resp>, TransportError> {
    round_trip::<Resp>(conn, &encode(request).unwrap()).await
}

fn header(from: NodeId, to: NodeId) -> FrameHeader {
    FrameHeader {
        cluster_id: CLUSTER.into(),
        group: 7,
        from,
        to,
        trace_id: "t".into(),
    }
}

struct Admitter {
    next_id: NodeId,
}

impl JoinAdmitter for Admitter {
    fn admit(&self, req: JoinRequest) -> BoxFuture<'static, Result<(NodeId, Vec<u8>), String>> {
        let grant = (self.next_id, req.peer_addr.into_bytes());
        async move { Ok(grant) }.boxed()
    }
}

fn seed_with_join(ca: Arc<ClusterCa>, token: &JoinToken) -> Node {
    let mut cfg = TransportConfig::new(localhost(), CLUSTER.into(), 1, ca.issue_node(1).unwrap());
    cfg.join = Some(JoinConfig {
        admitter: Arc::new(Admitter { next_id: 42 }),
        ca,
        secret: Arc::new(super::JoinSecret::new(token.secret)),
    });
    start(cfg)
}

#[tokio::test]
async fn calls_both_ways_concurrently_and_large_bodies() {
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let (a, b) = (start_member(&ca, 1), start_member(&ca, 2));

    let r = a
        .transport
        .call(2, &b.addr, 7, "t1", Req::Echo(vec![1, 2, 3]), CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        (r.served_by, r.from, r.group, r.echo),
        (2, 1, 7, vec![1, 2, 3])
    );
    let r = b
        .transport
        .call(1, &a.addr, 9, "t2", Req::Echo(vec![4]), CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!((r.served_by, r.from, r.group), (1, 2, 9));

    // 200 concurrent calls multiplexed over the one cached connection.
    let calls = (0..200u32).map(|i| {
        let t = a.transport.clone();
        let addr = b.addr.clone();
        async move {
            t.call(
                2,
                &addr,
                i,
                "c",
                Req::Echo(i.to_be_bytes().to_vec()),
                CALL_TIMEOUT,
            )
            .await
        }
    });
    for (i, r) in join_all(calls).await.into_iter().enumerate() {
        let r = r.unwrap();
        assert_eq!(
            (r.group, r.echo),
            (i as u32, (i as u32).to_be_bytes().to_vec())
        );
    }
    assert_eq!(b.calls(), 201);
    // b's endpoint holds exactly a→b and b→a: the 200 calls did not open connections.
    assert_eq!(b.transport.open_connections(), 2);

    // A 5 MiB body round-trips.
    let big: Vec<u8> = (0..5 * MIB).map(|i| i as u8).collect();
    let r = a
        .transport
        .call(2, &b.addr, 1, "big", Req::Echo(big.clone()), CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(r.echo, big);
}

#[tokio::test]
async fn oversized_frames_are_refused() {
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let (a, b) = (start_member(&ca, 1), start_member(&ca, 2));

    // Sending side: a request over the limit never leaves the node.
    let huge = Req::Echo(vec![0; FRAME_BYTES_MAX + 1]);
    let err = a
        .transport
        .call(2, &b.addr, 1, "t", huge, CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::FrameTooLarge { max, .. } if max == FRAME_BYTES_MAX),
        "{err:?}"
    );

    // Receiving side: a length prefix claiming 4 GiB is refused before anything is allocated.
    let conn = raw_connect(client_config(&ca.issue_node(1).unwrap()).unwrap(), &b.addr)
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    send.write_all(b"garbage").await.unwrap();
    send.finish().unwrap();
    let reply: WireReply<Resp> = frame::read_frame(&mut recv, FRAME_BYTES_MAX).await.unwrap();
    assert!(
        matches!(reply, WireReply::Refused(ref m) if m.contains("exceeds")),
        "{reply:?}"
    );
    assert_eq!(b.calls(), 0);
}

#[tokio::test]
async fn foreign_certificates_cannot_call() {
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let b = start_member(&ca, 2);

    // A certificate from an unrelated CA (self-signed root), while trusting the real CA so the
    // client itself is happy with the server.
    let rogue = ClusterCa::generate(CLUSTER).unwrap().issue_node(1).unwrap();
    let forged = NodeCredentials {
        ca_cert_pem: ca.cert_pem().to_string(),
        ..rogue
    };
    let call = WireRequest::Call {
        header: header(1, 2),
        body: Req::Echo(vec![1]),
    };
    let outcome = match raw_connect(client_config(&forged).unwrap(), &b.addr).await {
        Ok(conn) => raw_call(&conn, &call).await.map(|_| ()),
        Err(e) => Err(e),
    };
    let err = outcome.unwrap_err();
    assert!(
        matches!(err, TransportError::Tls(_) | TransportError::Unreachable(_)),
        "{err:?}"
    );

    // A transport with self-consistent foreign credentials fails as well (both ways).
    let other = ClusterCa::generate(CLUSTER).unwrap();
    let c = start_member(&other, 1);
    assert!(c
        .transport
        .call(2, &b.addr, 1, "t", Req::Echo(vec![1]), CALL_TIMEOUT)
        .await
        .is_err());
    assert_eq!(b.calls(), 0);
}

#[tokio::test]
async fn misaddressed_frames_are_refused() {
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let b = start_member(&ca, 2);

    // Another cluster id (same CA, so TLS succeeds and the header check must catch it).
    let creds = ca.issue_node(1).unwrap();
    let foreign = start(TransportConfig::new(
        localhost(),
        "other-cluster".into(),
        1,
        creds.clone(),
    ));
    let err = foreign
        .transport
        .call(2, &b.addr, 1, "t", Req::Echo(vec![]), CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Refused(ref m) if m.contains("cluster")),
        "{err:?}"
    );

    // Addressed to a node id the receiver does not have.
    let a = start(TransportConfig::new(
        localhost(),
        CLUSTER.into(),
        1,
        creds.clone(),
    ));
    let err = a
        .transport
        .call(99, &b.addr, 1, "t", Req::Echo(vec![]), CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Refused(ref m) if m.contains("addressed to node 99")),
        "{err:?}"
    );

    // A sender id that is not the one in the certificate.
    let conn = raw_connect(client_config(&creds).unwrap(), &b.addr)
        .await
        .unwrap();
    let spoofed = WireRequest::Call {
        header: header(3, 2),
        body: Req::Echo(vec![]),
    };
    let reply = raw_call(&conn, &spoofed).await.unwrap();
    assert!(
        matches!(reply, WireReply::Refused(ref m) if m.contains("certificate names node 1")),
        "{reply:?}"
    );

    assert_eq!(b.calls(), 0);
}

/// A node whose id the receiver counts as revoked (it left the cluster) is refused even
/// though its certificate is valid; other members are still served.
#[tokio::test]
async fn revoked_node_ids_are_refused() {
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let revoked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let r = revoked.clone();
    let mut cfg = TransportConfig::new(localhost(), CLUSTER.into(), 2, ca.issue_node(2).unwrap());
    cfg.revoked = Some(Arc::new(move |id| id == r.load(Ordering::SeqCst)));
    let b = start(cfg);
    let (a, c) = (start_member(&ca, 1), start_member(&ca, 3));
    a.transport
        .call(2, &b.addr, 1, "t", Req::Echo(vec![1]), CALL_TIMEOUT)
        .await
        .expect("node 1 is served before it leaves");
    revoked.store(1, Ordering::SeqCst);
    let err = a
        .transport
        .call(2, &b.addr, 1, "t", Req::Echo(vec![2]), CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Refused(ref m) if m.contains("revoked")),
        "{err:?}"
    );
    // A fresh connection with the same certificate fares no better.
    let conn = raw_connect(client_config(&ca.issue_node(1).unwrap()).unwrap(), &b.addr)
        .await
        .unwrap();
    let reply = raw_call(
        &conn,
        &WireRequest::Call {
            header: header(1, 2),
            body: Req::Echo(vec![]),
        },
    )
    .await;
    assert!(
        matches!(reply, Ok(WireReply::Refused(ref m)) if m.contains("revoked")),
        "{reply:?}"
    );
    c.transport
        .call(2, &b.addr, 1, "t", Req::Echo(vec![3]), CALL_TIMEOUT)
        .await
        .expect("other members are still served");
    assert_eq!(b.calls(), 2);
}

#[tokio::test]
async fn unauthenticated_calls_are_refused() {
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let b = start_member(&ca, 2);
    let conn = raw_connect(join_client_config(ca.fingerprint()).unwrap(), &b.addr)
        .await
        .unwrap();
    let call = WireRequest::Call {
        header: header(1, 2),
        body: Req::Echo(vec![1]),
    };
    let reply = raw_call(&conn, &call).await;
    match reply {
        Ok(WireReply::Refused(m)) => assert!(m.contains("no client certificate"), "{m}"),
        Err(TransportError::Refused(m)) => assert!(m.contains("no client certificate"), "{m}"),
        other => panic!("expected refusal, got {other:?}"),
    }
    // The connection is closed after the refusal.
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap();
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
        "{closed:?}"
    );
    assert_eq!(b.calls(), 0);

    // A node without a join config answers join requests with an error.
    let token = JoinToken::generate(&ca);
    let err = join(&b.addr, &token, "p".into(), "c".into(), CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Join(ref m) if m.contains("does not admit")),
        "{err:?}"
    );
}

#[tokio::test]
async fn join_grants_working_credentials() {
    let ca = Arc::new(ClusterCa::generate(CLUSTER).unwrap());
    let token: JoinToken = JoinToken::generate(&ca).to_string().parse().unwrap();
    let seed = seed_with_join(ca.clone(), &token);

    let grant = join(
        &seed.addr,
        &token,
        "10.0.0.42:7000".into(),
        "10.0.0.42:8080".into(),
        CALL_TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!((grant.node_id, grant.cluster_id.as_str()), (42, CLUSTER));
    assert_eq!(grant.app, b"10.0.0.42:7000");
    assert_eq!(grant.join_secret, token.secret);

    // The joiner can now call the seed over mTLS, and can itself admit the next joiner.
    let admitter = Arc::new(Admitter { next_id: 43 });
    let mut cfg = TransportConfig::new(
        localhost(),
        grant.cluster_id.clone(),
        grant.node_id,
        grant.credentials.clone(),
    );
    cfg.join = Some(JoinConfig::from_grant(&grant, admitter).unwrap());
    let joiner = start(cfg);
    let r = joiner
        .transport
        .call(1, &seed.addr, 3, "t", Req::Echo(vec![9]), CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!((r.served_by, r.from, r.echo), (1, 42, vec![9]));
    let r = seed
        .transport
        .call(42, &joiner.addr, 3, "t", Req::Echo(vec![8]), CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!((r.served_by, r.from), (42, 1));

    let second = join(&joiner.addr, &token, "p".into(), "c".into(), CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(second.node_id, 43);
    assert_eq!(second.credentials.ca_cert_pem, ca.cert_pem());
}

#[tokio::test]
async fn join_rejects_bad_tokens() {
    let ca = Arc::new(ClusterCa::generate(CLUSTER).unwrap());
    let token = JoinToken::generate(&ca);
    let seed = seed_with_join(ca.clone(), &token);

    let wrong_secret = JoinToken {
        secret: [7; 32],
        ..token.clone()
    };
    let err = join(
        &seed.addr,
        &wrong_secret,
        "p".into(),
        "c".into(),
        CALL_TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, TransportError::Join(ref m) if m.contains("secret")),
        "{err:?}"
    );

    // The joiner refuses a server whose CA is not the pinned one.
    let wrong_ca = JoinToken {
        ca_fingerprint: ClusterCa::generate(CLUSTER).unwrap().fingerprint(),
        ..token.clone()
    };
    let err = join(&seed.addr, &wrong_ca, "p".into(), "c".into(), CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Tls(_)), "{err:?}");

    assert!("chatnode-join-v1.abc".parse::<JoinToken>().is_err());
    assert!("nonsense".parse::<JoinToken>().is_err());
}

#[tokio::test]
async fn unreachable_peers_fail_fast_with_backoff() {
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let mut cfg = TransportConfig::new(localhost(), CLUSTER.into(), 1, ca.issue_node(1).unwrap());
    cfg.connect_timeout_ms = 300;
    let a = start(cfg);
    let dead = std::net::UdpSocket::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();

    let started = Instant::now();
    let err = a
        .transport
        .call(2, &dead, 1, "t", Req::Echo(vec![]), CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Unreachable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let err = a
        .transport
        .call(2, &dead, 1, "t", Req::Echo(vec![]), CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Unreachable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );

    // A call timeout shorter than the connect timeout does not abort the dial: its failure is
    // still remembered, so the next call fails fast instead of waiting again.
    let other_dead = std::net::UdpSocket::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let short = Duration::from_millis(100);
    let err = a
        .transport
        .call(3, &other_dead, 1, "t", Req::Echo(vec![]), short)
        .await
        .unwrap_err();
    assert_eq!(err, TransportError::Timeout);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let err = a
        .transport
        .call(3, &other_dead, 1, "t", Req::Echo(vec![]), short)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Unreachable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn faults_block_and_heal() {
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let (a, b) = (start_member(&ca, 1), start_member(&ca, 2));
    let short = Duration::from_millis(500);
    let ping = |n: &Node, to: NodeId, addr: &str| {
        let (t, addr) = (n.transport.clone(), addr.to_string());
        async move { t.call(to, &addr, 1, "f", Req::Echo(vec![1]), short).await }
    };
    ping(&b, 1, &a.addr).await.unwrap();

    a.transport.faults().block(2);
    let err = ping(&a, 2, &b.addr).await.unwrap_err();
    assert!(
        matches!(err, TransportError::Unreachable(ref m) if m.contains("fault")),
        "{err:?}"
    );
    let calls_before = a.calls();
    assert!(ping(&b, 1, &a.addr).await.is_err());
    assert_eq!(a.calls(), calls_before);

    a.transport.faults().heal();
    ping(&a, 2, &b.addr).await.unwrap();
    ping(&b, 1, &a.addr).await.unwrap();

    // Delay counts against the timeout; certain drop looks like a lost message.
    a.transport.faults().set_delay_ms(2, 1_000);
    assert_eq!(
        ping(&a, 2, &b.addr).await.unwrap_err(),
        TransportError::Timeout
    );
    a.transport.faults().set_delay_ms(2, 0);
    a.transport.faults().set_drop_probability(2, 1.0);
    assert_eq!(
        ping(&a, 2, &b.addr).await.unwrap_err(),
        TransportError::Timeout
    );
    a.transport.faults().heal();
    ping(&a, 2, &b.addr).await.unwrap();
}

#[tokio::test]
async fn slow_handlers_do_not_block_other_calls() {
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let (a, b) = (start_member(&ca, 1), start_member(&ca, 2));
    let slow = {
        let (t, addr) = (a.transport.clone(), b.addr.clone());
        tokio::spawn(async move {
            t.call(2, &addr, 1, "s", Req::Sleep(1_000), CALL_TIMEOUT)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    a.transport
        .call(2, &b.addr, 1, "f", Req::Echo(vec![]), CALL_TIMEOUT)
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    slow.await.unwrap().unwrap();
}

#[tokio::test]
async fn credentials_and_ca_survive_pem_round_trip() {
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let restored = ClusterCa::from_pem(CLUSTER, ca.cert_pem(), ca.key_pem()).unwrap();
    assert_eq!(restored.fingerprint(), ca.fingerprint());
    // Certificates issued by the restored CA are accepted by members of the original.
    let b = start_member(&ca, 2);
    let a = start_member(&restored, 1);
    a.transport
        .call(2, &b.addr, 1, "t", Req::Echo(vec![]), CALL_TIMEOUT)
        .await
        .unwrap();
    // The wrong cluster id (hence issuer name) is caught when restoring.
    assert!(ClusterCa::from_pem("other", ca.cert_pem(), ca.key_pem()).is_err());
    // Binding with credentials for another node id is a configuration error.
    let creds = ca.issue_node(5).unwrap();
    let cfg = TransportConfig::new(localhost(), CLUSTER.into(), 6, creds);
    assert!(matches!(
        Transport::<Req, Resp>::bind(cfg, b.handler.clone()),
        Err(TransportError::Tls(_))
    ));
}

#[tokio::test]
async fn shutdown_fails_calls_into_the_node() {
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let (a, b) = (start_member(&ca, 1), start_member(&ca, 2));
    a.transport
        .call(2, &b.addr, 1, "t", Req::Echo(vec![]), CALL_TIMEOUT)
        .await
        .unwrap();
    b.transport.shutdown().await;
    let err = a
        .transport
        .call(
            2,
            &b.addr,
            1,
            "t",
            Req::Echo(vec![]),
            Duration::from_secs(3),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Unreachable(_) | TransportError::Timeout
        ),
        "{err:?}"
    );
}

/// `PeerNetwork::call` returns a `BoxFuture<'static, _>`, so calls must be `Send`.
#[allow(dead_code)]
fn call_futures_are_send(t: Transport<Req, Resp>) {
    fn assert_send<T: Send + 'static>(_: T) {}
    assert_send(async move { t.call(1, "a:1", 1, "t", Req::Sleep(0), CALL_TIMEOUT).await });
    assert_send(async {
        join(
            "a:1",
            &JoinToken {
                secret: [0; 32],
                ca_fingerprint: [0; 32],
            },
            String::new(),
            String::new(),
            CALL_TIMEOUT,
        )
        .await
    });
}
