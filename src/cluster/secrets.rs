//! The cluster's secrets as this node holds them: the join secret (checked by the transport
//! when a node asks to join; rotatable through the meta group) and the admin token (checked
//! by `/admin/*` on the client port). Both are replicated in the meta state
//! ([`ClusterSecrets`]), so one admin token works on every node; each node writes them to
//! `<data-dir>/join-token` and `<data-dir>/admin-token` (mode 0600) for the operator.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use parking_lot::{Mutex, RwLock};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::command::{ClusterSecrets, SecretBytes, JOIN_SECRET_BYTES};
use super::identity::{write_private, IdentityError, JOIN_TOKEN_FILE};
use crate::transport::{JoinSecret, JoinToken};

/// The admin token's file in the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Admin tokens look like `chatnode-admin-v1.<base64url of 32 random bytes>`.
pub(crate) const ADMIN_TOKEN_PREFIX: &str = "chatnode-admin-v1.";
/// Random bytes in an admin token.
pub(crate) const ADMIN_TOKEN_BYTES: usize = 32;

/// A fresh admin token.
pub(crate) fn generate_admin_token() -> String {
    let mut raw = [0u8; ADMIN_TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    format!("{ADMIN_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// A fresh join secret.
pub(crate) fn generate_join_secret() -> SecretBytes {
    let mut raw = [0u8; JOIN_SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    SecretBytes(raw.to_vec())
}

fn digest(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
}

/// Equality of two digests in time independent of their contents.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
/// Whether `given` is `expected`, compared in constant time (as SHA-256 digests, so neither
/// the position of the first difference nor the expected length shows in the timing).
pub(crate) fn token_matches(expected: &str, given: &str) -> bool {
    !expected.is_empty() && digests_equal(&digest(expected.as_bytes()), &digest(given.as_bytes()))
}

/// [`token_matches`] for raw secrets.
pub(crate) fn token_matches_bytes(expected: &[u8], given: &[u8]) -> bool {
    !expected.is_empty() && digests_equal(&digest(expected), &digest(given))
}

pub(crate) struct LocalSecrets {
    data_dir: PathBuf,
    ca_fingerprint: [u8; 32],
    join: Arc<JoinSecret>,
    /// SHA-256 of the admin token (None until the cluster's secrets are known here).
    admin_digest: RwLock<Option<[u8; 32]>>,
    current: Mutex<ClusterSecrets>,
    /// Wakes the file writer when the secrets changed.
    changed: tokio::sync::watch::Sender<ClusterSecrets>,
}

impl LocalSecrets {
    /// `join_secret` is the secret to admit joiners with until the replicated secrets are
    /// known (a data dir from before they were replicated).
    pub(crate) fn new(
        data_dir: &Path,
        ca_fingerprint: [u8; 32],
        join_secret: [u8; 32],
    ) -> Arc<Self> {
        Arc::new(LocalSecrets {
            data_dir: data_dir.to_path_buf(),
            ca_fingerprint,
            join: Arc::new(JoinSecret::new(join_secret)),
            admin_digest: RwLock::new(None),
            current: Mutex::new(ClusterSecrets::default()),
            changed: tokio::sync::watch::channel(ClusterSecrets::default()).0,
        })
    }

    /// Takes the secrets of a meta state this node saw (never blocks: files are written by
    /// the task of [`Self::spawn_file_writer`]). Older secrets than the ones held (a lagging
    /// replica's meta state) are ignored.
    pub(crate) fn observe(&self, s: &ClusterSecrets) {
        if !s.is_initialized() {
            return;
        }
        let mut cur = self.current.lock();
        if *cur == *s || (cur.is_initialized() && s.join_epoch < cur.join_epoch) {
            return;
        }
        *cur = s.clone();
        if let Ok(secret) = <[u8; 32]>::try_from(s.join_secret.0.as_slice()) {
            self.join.set(secret);
        }
        *self.admin_digest.write() = Some(digest(s.admin_token.as_bytes()));
        self.changed.send_replace(s.clone());
    }

    /// The join secret the transport checks joiners against.
    pub(crate) fn join_secret(&self) -> Arc<JoinSecret> {
        self.join.clone()
    }

    /// The current join token (current secret + the cluster CA's fingerprint).
    pub(crate) fn join_token(&self) -> JoinToken {
        JoinToken {
            secret: self.join.get(),
            ca_fingerprint: self.ca_fingerprint,
        }
    }

    /// Whether the replicated secrets are known here (until then `/admin/*` refuses all).
    pub(crate) fn known(&self) -> bool {
        self.admin_digest.read().is_some()
    }

    /// Whether `given` is the cluster's admin token (constant time).
    pub(crate) fn admin_matches(&self, given: &str) -> bool {
        match *self.admin_digest.read() {
            Some(expected) => digests_equal(&expected, &digest(given.as_bytes())),
            None => false,
        }
    }

    /// Writes `<data-dir>/join-token` and `<data-dir>/admin-token` (blocking).
    pub(crate) fn write_files(&self) -> Result<(), IdentityError> {
        let s = self.current.lock().clone();
        write_files(&self.data_dir, &self.join_token(), &s)
    }

    /// Rewrites the files whenever the secrets change, until `shutdown` (or until this
    /// `LocalSecrets`, the sender, is dropped).
    pub(crate) fn spawn_file_writer(&self, shutdown: &crate::shutdown::Shutdown) {
        let mut rx = self.changed.subscribe();
        rx.mark_unchanged();
        let (dir, fingerprint) = (self.data_dir.clone(), self.ca_fingerprint);
        shutdown.spawn(async move {
            while rx.changed().await.is_ok() {
                let s = rx.borrow_and_update().clone();
                let Ok(secret) = <[u8; 32]>::try_from(s.join_secret.0.as_slice()) else {
                    continue;
                };
                let token = JoinToken {
                    secret,
                    ca_fingerprint: fingerprint,
                };
                let dir = dir.clone();
                let wrote =
                    tokio::task::spawn_blocking(move || write_files(&dir, &token, &s)).await;
                match wrote {
                    Ok(Ok(())) => tracing::info!("cluster secrets changed; token files rewritten"),
                    Ok(Err(e)) => tracing::error!(error = %e, "writing the token files"),
                    Err(e) => tracing::error!(error = %e, "token file writer failed"),
                }
            }
        });
    }
}

fn write_files(dir: &Path, join: &JoinToken, s: &ClusterSecrets) -> Result<(), IdentityError> {
    write_private(&dir.join(JOIN_TOKEN_FILE), join.to_string().as_bytes())?;
    if !s.admin_token.is_empty() {
        write_private(&dir.join(ADMIN_TOKEN_FILE), s.admin_token.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
