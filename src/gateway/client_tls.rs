//! TLS for clients on the client port (HTTPS and WSS): rustls with the ring provider,
//! TLS 1.3 preferred and TLS 1.2 accepted, HTTP/1.1 by ALPN, and a certificate that can be
//! reloaded while the node runs (SIGHUP): new handshakes use the new certificate, running
//! connections keep theirs, and a new certificate that does not load leaves the old one in
//! place.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Largest certificate chain or key file read (a chain is a few KiB).
pub(crate) const TLS_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Errors loading the client certificate or key.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {TLS_FILE_BYTES_MAX} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("certificate and key do not fit together or the key is unusable: {0}")]
    Key(String),
    #[error("tls config: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, ClientTlsError> {
    let read_err = |source| ClientTlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > TLS_FILE_BYTES_MAX {
        return Err(ClientTlsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    std::fs::read(path).map_err(read_err)
}

/// Reads a PEM chain and key and checks that they belong together.
pub(crate) fn load_certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, ClientTlsError> {
    let pem_err = |path: &Path, e: rustls::pki_types::pem::Error| ClientTlsError::Pem {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let cert_pem = read_bounded(cert_file)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert_file, e))?;
    if chain.is_empty() {
        return Err(ClientTlsError::NoCertificate {
            path: cert_file.to_path_buf(),
        });
    }
    let key_pem = read_bounded(key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| pem_err(key_file, e))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| ClientTlsError::Key(e.to_string()))
}

/// The client port's certificate; [`ReloadableCert::reload`] swaps it for new handshakes.
#[derive(Debug)]
pub struct ReloadableCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    /// Loads the files now (a node with a bad certificate does not start).
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Self>, ClientTlsError> {
        let provider = provider();
        let key = load_certified_key(cert_file, key_file, &provider)?;
        Ok(Arc::new(ReloadableCert {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Reads the files again. On success new handshakes present the new certificate; on
    /// failure the old one stays and the error is returned (the caller logs it).
    pub fn reload(&self) -> Result<(), ClientTlsError> {
        let key = load_certified_key(&self.cert_file, &self.key_file, &self.provider)?;
        *self.current.write() = Arc::new(key);
        Ok(())
    }

    /// The certificate chain new handshakes present.
    pub(crate) fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().clone()
    }

    /// The rustls server config of the client port: TLS 1.3 and 1.2 (rustls prefers 1.3),
    /// no client certificates, ALPN `http/1.1` (the port speaks HTTP/1.1 only).
    pub(crate) fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, ClientTlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ClientTlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod tests;
