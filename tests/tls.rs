//! TLS on the client port (issue 12 point 4): HTTPS register + login and a WSS session with a
//! self-signed certificate, TLS 1.3 preferred and 1.2 accepted, no plain HTTP on a TLS port,
//! and the certificate reloaded on SIGHUP (in-process and through a real `chatnode`).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatnode_client::{http, WsClient};
use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A self-signed certificate for `localhost` written to `<dir>/<name>.{crt,key}`.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, c.cert.pem()).expect("write cert");
    std::fs::write(&key, c.signing_key.serialize_pem()).expect("write key");
    (cert, key, c.cert.der().clone())
}

fn client_config(
    trusted: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).expect("root");
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

fn trust(cert: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    client_config(cert, rustls::DEFAULT_VERSIONS)
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// One HTTPS request (the client library's HTTP exchange over the TLS stream); (status, body).
async fn https(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let s = tls_connect(addr, config).await.expect("TLS handshake");
    let mut req = http::Request::new(method, path);
    if !body.is_empty() {
        req = req.body(body);
    }
    let r = tokio::time::timeout(WAIT, http::exchange(s, "localhost", req, 1 << 20))
        .await
        .expect("answer in time")
        .expect("HTTPS exchange");
    (r.status, r.body)
}

async fn https_register(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    name: &str,
) -> (String, String) {
    let creds = json!({"username": name, "password": "password123"}).to_string();
    let (status, body) = https(addr, config.clone(), "POST", "/v1/register", &creds).await;
    assert_eq!(status, 201, "register over HTTPS: {body}");
    let (status, body) = https(addr, config.clone(), "POST", "/v1/login", &creds).await;
    assert_eq!(status, 200, "login over HTTPS: {body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    (
        v["user_id"].as_str().expect("user_id").to_string(),
        v["token"].as_str().expect("token").to_string(),
    )
}

type Wss = WsClient<TlsStream<TcpStream>>;

async fn wss_connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Wss {
    let tls = tls_connect(addr, config).await.expect("TLS handshake");
    let url = format!("wss://localhost:{}/v1/ws", addr.port());
    let (ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("WSS upgrade");
    WsClient::new(ws)
}

/// Sends `frame` (with a fresh id) and returns the reply with that id (pushes kept aside).
async fn wss_request(ws: &mut Wss, frame: Value) -> Value {
    ws.request(frame, WAIT).await.expect("reply in time")
}

async fn start_tls_node(dir: &Path) -> (TestNode, CertificateDer<'static>, PathBuf, PathBuf) {
    let (cert, key, der) = self_signed(dir, "server");
    let (c, k) = (cert.clone(), key.clone());
    let node = start_node_with(move |cfg| {
        cfg.tls.cert_file = Some(c);
        cfg.tls.key_file = Some(k);
    })
    .await;
    (node, der, cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, der, _, _) = start_tls_node(dir.path()).await;
    let addr = node.addr;
    let cfg = trust(&der);

    let (alice_id, alice_token) = https_register(addr, &cfg, "alice").await;
    let (bob_id, _) = https_register(addr, &cfg, "bob").await;

    let mut ws = wss_connect(addr, cfg.clone()).await;
    let r = wss_request(
        &mut ws,
        json!({"type":"auth","token":alice_token,"device_id":"a"}),
    )
    .await;
    assert_eq!(r["type"], "auth_ok", "{r}");
    assert_eq!(r["user_id"], json!(alice_id));
    let r = wss_request(
        &mut ws,
        json!({"type":"create_conversation","kind":"direct","members":[bob_id]}),
    )
    .await;
    let conv = r["conversation"]["conversation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    let r = wss_request(
        &mut ws,
        json!({"type":"send","conversation_id":conv,"client_msg_id":"c1","body":"over wss"}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");

    // TLS 1.3 by default; a TLS 1.2-only client is served too.
    let s = tls_connect(addr, cfg.clone()).await.expect("handshake");
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let s = tls_connect(addr, client_config(&der, &[&rustls::version::TLS12]))
        .await
        .expect("TLS 1.2 handshake");
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    // No plain HTTP on the TLS port.
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut out)).await;
    assert!(
        !String::from_utf8_lossy(&out).contains("200 OK"),
        "plain HTTP answered on the TLS port"
    );
}

/// A reload swaps the certificate for new handshakes; a bad new pair keeps the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_serves_the_new_certificate_and_keeps_the_old_on_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, first, cert, key) = start_tls_node(dir.path()).await;
    let addr = node.addr;
    assert!(tls_connect(addr, trust(&first)).await.is_ok());

    let (c2, k2, second) = self_signed(dir.path(), "next");
    std::fs::copy(&c2, &cert).expect("copy");
    std::fs::copy(&k2, &key).expect("copy");
    assert_eq!(node.node.reload_tls().ok(), Some(true));
    assert!(tls_connect(addr, trust(&second)).await.is_ok());
    assert!(
        tls_connect(addr, trust(&first)).await.is_err(),
        "the old certificate is still served"
    );

    std::fs::write(&cert, "garbage").expect("write");
    assert!(node.node.reload_tls().is_err());
    let (status, _) = https(addr, trust(&second), "GET", "/health", "").await;
    assert_eq!(status, 200, "the old certificate stays after a bad reload");
}

/// Kills the child on drop (also on panic).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `chatnode --tls-cert --tls-key` reloads its certificate on SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_of_a_running_chatnode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, first) = self_signed(dir.path(), "server");
    let addr = common::cluster::free_tcp();
    let peer = common::cluster::free_udp();
    let log = std::fs::File::create(dir.path().join("node.log")).expect("log");
    let child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_chatnode"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--peer-listen")
            .arg(peer.to_string())
            .arg("--shards")
            .arg("2")
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .stderr(log.try_clone().expect("log"))
            .stdout(log)
            .spawn()
            .expect("spawn chatnode"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while tls_connect(addr, trust(&first)).await.is_err() {
        assert!(Instant::now() < deadline, "chatnode never served TLS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (c2, k2, second) = self_signed(dir.path(), "next");
    std::fs::copy(&c2, &cert).expect("copy");
    std::fs::copy(&k2, &key).expect("copy");
    let hup = || {
        let ok = std::process::Command::new("kill")
            .arg("-HUP")
            .arg(child.0.id().to_string())
            .status()
            .expect("kill -HUP")
            .success();
        assert!(ok);
    };
    hup();
    let deadline = Instant::now() + WAIT;
    while tls_connect(addr, trust(&second)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A bad pair on the next SIGHUP: logged, the node keeps serving the current one.
    std::fs::write(&key, "garbage").expect("write");
    hup();
    let deadline = Instant::now() + WAIT;
    loop {
        let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();
        if log.contains("keeping the old one") {
            break;
        }
        assert!(Instant::now() < deadline, "no error logged: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = https(addr, trust(&second), "GET", "/health", "").await;
    assert_eq!(status, 200);
}
