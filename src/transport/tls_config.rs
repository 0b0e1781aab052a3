//! rustls and quinn configurations.
//!
//! The ring provider is passed explicitly to every builder (`builder_with_provider`) so the
//! transport never depends on, or fights over, a process-wide default `CryptoProvider`.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::tls::{sha256, tls_err, NodeCredentials, ALPN, SERVER_NAME};
use super::TransportError;

/// Streams a peer may have open towards us at once; also bounds concurrent handler tasks per
/// connection.
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Keep-alives keep idle peer connections open and let a dead peer be noticed...
pub(crate) const KEEP_ALIVE_MS: u64 = 1_000;
/// ...within this long, after which its connection is dropped and redialed on demand.
pub(crate) const IDLE_TIMEOUT_MS: u64 = 5_000;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TransportError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(tls_err)?;
    Ok(Arc::new(roots))
}

/// Server side: present `[leaf, CA]`; verify client certificates against the CA but also let
/// certificate-less clients in (joiners). A client presenting a certificate that does not
/// chain to the CA fails the handshake.
pub(crate) fn server_config(
    creds: &NodeCredentials,
) -> Result<rustls::ServerConfig, TransportError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(&creds.ca_der()?)?, provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(tls_err)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.cert_chain()?, creds.private_key()?)
        .map_err(tls_err)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Member client side (mTLS): trust only the cluster CA, present our own certificate.
pub(crate) fn client_config(
    creds: &NodeCredentials,
) -> Result<rustls::ClientConfig, TransportError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(roots(&creds.ca_der()?)?)
        .with_client_auth_cert(creds.cert_chain()?, creds.private_key()?)
        .map_err(tls_err)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Joiner client side: no client certificate; the server is accepted only if the CA it sends
/// hashes to `ca_fingerprint` and its leaf verifies against that CA.
pub(crate) fn join_client_config(
    ca_fingerprint: [u8; 32],
) -> Result<rustls::ClientConfig, TransportError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        ca_fingerprint,
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Checks that `leaf` is a valid `chatnode` server certificate issued by `ca`.
pub(crate) fn verify_leaf(
    ca: &CertificateDer<'static>,
    leaf: &CertificateDer<'_>,
) -> Result<(), TransportError> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider())
        .build()
        .map_err(tls_err)?;
    let name = ServerName::try_from(SERVER_NAME).map_err(tls_err)?;
    verifier
        .verify_server_cert(leaf, &[], &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(tls_err)
}

/// Server certificate verifier for joiners, who know the CA only by fingerprint.
#[derive(Debug)]
struct PinnedCaVerifier {
    ca_fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Members send [leaf, CA]; the CA is the last certificate of the chain.
        let ca = intermediates.last().ok_or_else(|| {
            rustls::Error::General("server sent no CA certificate to pin".to_string())
        })?;
        if sha256(ca) != self.ca_fingerprint {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// QUIC transport parameters. `accepts_streams` is false for outgoing connections: we never
/// accept streams on them, so the peer gets no stream credit there.
fn quic_transport(accepts_streams: bool) -> Result<Arc<quinn::TransportConfig>, TransportError> {
    let mut t = quinn::TransportConfig::default();
    let streams = if accepts_streams {
        MAX_CONCURRENT_STREAMS
    } else {
        0
    };
    t.max_concurrent_bidi_streams(streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_MS)));
    let idle =
        quinn::IdleTimeout::try_from(Duration::from_millis(IDLE_TIMEOUT_MS)).map_err(tls_err)?;
    t.max_idle_timeout(Some(idle));
    Ok(Arc::new(t))
}

pub(crate) fn quinn_server(
    config: rustls::ServerConfig,
) -> Result<quinn::ServerConfig, TransportError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(config).map_err(tls_err)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(quic_transport(true)?);
    Ok(server)
}

pub(crate) fn quinn_client(
    config: rustls::ClientConfig,
) -> Result<quinn::ClientConfig, TransportError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config).map_err(tls_err)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(quic_transport(false)?);
    Ok(client)
}
