//! What a node remembers about its cluster across restarts, in `<data-dir>/cluster.json`
//! (mode 0600): its node id, its certificate and key, the cluster CA (so that any member can
//! admit joiners), the join secret it joined with and the cluster settings. The current join
//! secret and the admin token are replicated in the meta state (see `super::secrets`). With
//! this file present a node restarts into its cluster with no `--join`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use super::command::{ClusterSettings, MetaState, NodeInfo};
use crate::ids::NodeId;
use crate::transport::{JoinGrant, NodeCredentials};

pub(crate) const IDENTITY_FILE: &str = "cluster.json";
pub(crate) const JOIN_TOKEN_FILE: &str = "join-token";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("join grant: {0}")]
    Grant(String),
}

#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub(crate) cluster_id: String,
    pub(crate) node_id: u64,
    /// This node created the cluster (it alone ever initializes groups).
    pub(crate) creator: bool,
    pub(crate) credentials: NodeCredentials,
    pub(crate) ca_key_pem: String,
    pub(crate) join_secret: Vec<u8>,
    pub(crate) settings: ClusterSettings,
    /// The members as the welcome named them (empty on the creator). A joiner restarted
    /// before it holds a replica has no meta state of its own: these addresses are where it
    /// looks for its cluster (and where a node that left is told it was revoked).
    #[serde(default)]
    pub(crate) members: BTreeMap<NodeId, NodeInfo>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .field("creator", &self.creator)
            .finish_non_exhaustive()
    }
}

/// What a member hands a joiner besides its certificate (the grant's `app` bytes).
#[derive(Serialize, Deserialize)]
pub(crate) struct JoinWelcome {
    pub(crate) settings: ClusterSettings,
    pub(crate) meta: MetaState,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` readable by the owner only, atomically (temp file + rename).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
        // The mode above applies only to a new file (and the umask may narrow it): set it
        // explicitly in case a stale temp file existed with a wider one.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io_err(&tmp))?;
        }
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    // The rename is durable only once the directory is: without this a power loss can
    // undo it, and a node restarts without its identity (found by jepsen's power-loss).
    match path.parent() {
        Some(dir) => sync_dir(dir).map_err(io_err(dir)),
        None => Ok(()),
    }
}

/// Makes `dir`'s entries (a file created or renamed in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)?.sync_all()
}

impl Identity {
    pub(crate) fn load(data_dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = data_dir.join(IDENTITY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| IdentityError::Json { path, source })
    }

    pub(crate) fn save(&self, data_dir: &Path) -> Result<(), IdentityError> {
        let path = data_dir.join(IDENTITY_FILE);
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| IdentityError::Json {
            path: path.clone(),
            source,
        })?;
        write_private(&path, &bytes)
    }

    /// The identity of a node admitted by `grant`.
    pub(crate) fn from_grant(grant: &JoinGrant) -> Result<(Identity, MetaState), IdentityError> {
        let welcome: JoinWelcome =
            crate::codec::decode(&grant.app).map_err(|e| IdentityError::Grant(e.to_string()))?;
        Ok((
            Identity {
                cluster_id: grant.cluster_id.clone(),
                node_id: grant.node_id,
                creator: false,
                credentials: grant.credentials.clone(),
                ca_key_pem: grant.ca_key_pem.clone(),
                join_secret: grant.join_secret.clone(),
                settings: welcome.settings,
                members: welcome.meta.nodes.clone(),
            },
            welcome.meta,
        ))
    }
}
