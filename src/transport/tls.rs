//! The cluster certificate authority and per-node credentials.
//!
//! Every cluster has one self-signed CA; every node holds a leaf certificate signed by it that
//! names the node (`node-<id>`) and the shared server name (`chatnode`). The CA key travels to
//! every member on join so that any member can admit later joiners.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{NodeId, TransportError};

/// The TLS server name every node presents and every client verifies: node identity is
/// carried by the `node-<id>` SAN, not by addresses (which change).
pub(crate) const SERVER_NAME: &str = "chatnode";
/// QUIC requires ALPN; a version in it lets a future wire format coexist with this one.
pub(crate) const ALPN: &[u8] = b"chatnode/1";
/// Prefix of the per-node DNS SAN; the remainder is the decimal node id.
const NODE_NAME_PREFIX: &str = "node-";

const SECS_PER_DAY: u64 = 24 * 60 * 60;
/// Node certificates live ten years (incl. leap days): there is no rotation machinery yet.
const NODE_CERT_VALIDITY_SECS: u64 = 3653 * SECS_PER_DAY;
/// The CA outlives every node certificate it can issue during its own first decades.
const CA_CERT_VALIDITY_SECS: u64 = 50 * 366 * SECS_PER_DAY;
/// Certificates start a day in the past so a node whose clock lags still accepts them.
const CLOCK_SKEW_ALLOWANCE_SECS: u64 = SECS_PER_DAY;

/// SHA-256 of a DER certificate (the join token pins the CA by this).
pub(crate) fn sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// The cluster's certificate authority (certificate + signing key).
pub(crate) struct ClusterCa {
    cluster_id: String,
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is deliberately absent: Debug output ends up in logs.
        f.debug_struct("ClusterCa")
            .field("cluster_id", &self.cluster_id)
            .field("fingerprint", &hex(&self.fingerprint()))
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Creates a fresh self-signed CA for `cluster_id`.
    pub(crate) fn generate(cluster_id: &str) -> Result<Self, TransportError> {
        let key = KeyPair::generate().map_err(tls_err)?;
        let params = ca_params(cluster_id)?;
        let cert = params.self_signed(&key).map_err(tls_err)?;
        Ok(Self {
            cluster_id: cluster_id.to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Restores a CA from its PEM certificate and key (e.g. from a [`super::JoinGrant`]).
    ///
    /// The issuer name is rebuilt from `cluster_id` (rcgen cannot parse certificates without
    /// its x509-parser feature), so a probe certificate is issued and verified against
    /// `cert_pem`: a wrong cluster id or a key that does not belong to the certificate is
    /// caught here instead of producing certificates nobody accepts.
    pub(crate) fn from_pem(
        cluster_id: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, TransportError> {
        let key = KeyPair::from_pem(key_pem).map_err(tls_err)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(tls_err)?;
        let ca = Self {
            cluster_id: cluster_id.to_string(),
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            cert_der,
            issuer: Issuer::new(ca_params(cluster_id)?, key),
        };
        let probe = ca.issue_node(0)?;
        super::tls_config::verify_leaf(&ca.cert_der, &probe.leaf_der()?).map_err(|e| {
            TransportError::Tls(format!(
                "CA key/certificate do not match cluster {cluster_id:?}: {e}"
            ))
        })?;
        Ok(ca)
    }

    pub(crate) fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    #[cfg(test)]
    pub(crate) fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PKCS#8 PEM). Secret: whoever holds it can mint node identities.
    pub(crate) fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// SHA-256 of the CA certificate DER; joiners pin the cluster by it.
    pub(crate) fn fingerprint(&self) -> [u8; 32] {
        sha256(&self.cert_der)
    }

    /// Issues a leaf certificate for `node_id`, usable as TLS server and client.
    pub(crate) fn issue_node(&self, node_id: NodeId) -> Result<NodeCredentials, TransportError> {
        let key = KeyPair::generate().map_err(tls_err)?;
        let mut params = CertificateParams::new(vec![
            SERVER_NAME.to_string(),
            format!("{NODE_NAME_PREFIX}{node_id}"),
        ])
        .map_err(tls_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{NODE_NAME_PREFIX}{node_id}"));
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        set_validity(&mut params, NODE_CERT_VALIDITY_SECS)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(tls_err)?;
        Ok(NodeCredentials {
            node_id,
            ca_cert_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The CA's parameters are a pure function of the cluster id, so that [`ClusterCa::from_pem`]
/// reproduces the exact issuer name the certificate was created with.
fn ca_params(cluster_id: &str) -> Result<CertificateParams, TransportError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "chatnode");
    dn.push(
        DnType::CommonName,
        format!("chatnode cluster CA {cluster_id}"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_CERT_VALIDITY_SECS)?;
    Ok(params)
}

/// Makes `params` valid for `secs` from now. Dates are built from the Unix epoch via
/// `rcgen::date_time_ymd` because rcgen does not re-export its date type (and the `time`
/// crate is not a dependency of ours).
fn set_validity(params: &mut CertificateParams, secs: u64) -> Result<(), TransportError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| TransportError::Tls(format!("system clock before 1970: {e}")))?;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(Duration::from_secs(CLOCK_SKEW_ALLOWANCE_SECS));
    params.not_after = epoch + now + Duration::from_secs(secs);
    Ok(())
}

/// A node's identity: its certificate and key plus the cluster CA certificate.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct NodeCredentials {
    pub(crate) node_id: NodeId,
    pub(crate) ca_cert_pem: String,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

impl std::fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("NodeCredentials")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl NodeCredentials {
    pub(crate) fn leaf_der(&self) -> Result<CertificateDer<'static>, TransportError> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(tls_err)
    }

    pub(crate) fn ca_der(&self) -> Result<CertificateDer<'static>, TransportError> {
        CertificateDer::from_pem_slice(self.ca_cert_pem.as_bytes()).map_err(tls_err)
    }

    /// The chain we present: leaf then CA. Sending the CA lets a joiner, which only knows the
    /// CA fingerprint, find and pin it.
    pub(crate) fn cert_chain(&self) -> Result<Vec<CertificateDer<'static>>, TransportError> {
        Ok(vec![self.leaf_der()?, self.ca_der()?])
    }

    pub(crate) fn private_key(&self) -> Result<PrivateKeyDer<'static>, TransportError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(tls_err)
    }

    /// SHA-256 of the CA certificate these credentials chain to.
    pub(crate) fn ca_fingerprint(&self) -> Result<[u8; 32], TransportError> {
        Ok(sha256(&self.ca_der()?))
    }
}

/// The node id a certificate names in its `node-<id>` DNS SAN, if any. Only meaningful for a
/// certificate that already verified against the cluster CA.
pub(crate) fn node_id_of_cert(der: &CertificateDer<'_>) -> Option<NodeId> {
    let cert = webpki::EndEntityCert::try_from(der).ok()?;
    let id = cert
        .valid_dns_names()
        .find_map(|name| name.strip_prefix(NODE_NAME_PREFIX)?.parse().ok());
    id
}

pub(crate) fn tls_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
