//! Join tokens: `chatnode-join-v1.<base64url-no-pad(secret || ca_fingerprint)>`.
//!
//! The secret proves to the cluster that the joiner was invited; the fingerprint lets the
//! joiner authenticate the cluster before it has any certificate of its own.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

use super::tls::ClusterCa;
use super::TransportError;

const TOKEN_PREFIX: &str = "chatnode-join-v1.";
const SECRET_BYTES: usize = 32;
const FINGERPRINT_BYTES: usize = 32;

/// An invitation to join a cluster.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct JoinToken {
    pub(crate) secret: [u8; SECRET_BYTES],
    pub(crate) ca_fingerprint: [u8; FINGERPRINT_BYTES],
}

impl JoinToken {
    /// A token with a fresh random secret for the cluster of `ca`.
    pub(crate) fn generate(ca: &ClusterCa) -> Self {
        let mut secret = [0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        Self {
            secret,
            ca_fingerprint: ca.fingerprint(),
        }
    }
}

/// Constant-time equality for equal-length inputs; the length itself is not secret.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = [0u8; SECRET_BYTES + FINGERPRINT_BYTES];
        raw[..SECRET_BYTES].copy_from_slice(&self.secret);
        raw[SECRET_BYTES..].copy_from_slice(&self.ca_fingerprint);
        write!(f, "{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret stays out of logs; the fingerprint is public.
        f.debug_struct("JoinToken")
            .field("ca_fingerprint", &super::tls::hex(&self.ca_fingerprint))
            .finish_non_exhaustive()
    }
}

impl FromStr for JoinToken {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| TransportError::Join(format!("malformed join token: {why}"));
        let encoded = s
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| bad("missing chatnode-join-v1 prefix"))?;
        let raw = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| bad("not base64url"))?;
        if raw.len() != SECRET_BYTES + FINGERPRINT_BYTES {
            return Err(bad("wrong length"));
        }
        let (secret, fingerprint) = raw.split_at(SECRET_BYTES);
        Ok(Self {
            secret: secret.try_into().map_err(|_| bad("wrong length"))?,
            ca_fingerprint: fingerprint.try_into().map_err(|_| bad("wrong length"))?,
        })
    }
}
