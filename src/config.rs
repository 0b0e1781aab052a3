//! Node configuration: defaults, overridden by a TOML file, overridden by flags.
//!
//! Every option is documented with its default in `config/single-node.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Abuse limits (PROTOCOL.md "Limits"). Test harnesses raise them, so the keys are fixed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub user_messages_per_minute: u32,
    pub conversation_messages_per_minute: u32,
    pub devices_per_user: u32,
    pub max_frame_bytes: usize,
    pub max_body_chars: usize,
    /// Most WebSocket connections a node holds at once.
    pub connections_max: usize,
    /// Most new WebSocket connections a node admits per second (reconnect storms).
    pub new_connections_per_second: u32,
    /// Frames queued towards one connection before it is dropped as too slow.
    pub connection_send_queue_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            user_messages_per_minute: 100,
            conversation_messages_per_minute: 1000,
            devices_per_user: 5,
            max_frame_bytes: 1024 * 1024,
            max_body_chars: 4000,
            connections_max: 100_000,
            new_connections_per_second: 2_000,
            connection_send_queue_max: 1024,
        }
    }
}

/// External token issuer whose JWTs the node also accepts.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ExternalAuth {
    /// HS256 shared secret.
    pub hmac_secret: Option<String>,
    /// PEM public key (RS256 or ES256, by `algorithm`).
    pub public_key_pem: Option<String>,
    /// "RS256" or "ES256" for `public_key_pem`.
    pub algorithm: Option<String>,
    /// Required `iss` claim, when set.
    pub issuer: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// Lifetime of tokens issued by `/v1/login`.
    pub token_ttl_secs: u64,
    pub external: ExternalAuth,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            token_ttl_secs: 7 * 24 * 3600,
            external: ExternalAuth::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Shard groups of a new cluster; fixed once the cluster exists.
    pub shards: u32,
    /// QUIC listen address for other nodes (Raft, forwarded requests, fan-out).
    pub peer_listen: SocketAddr,
    /// The client address other nodes and clients are told (default: the bound `listen`
    /// address; set it when listening on 0.0.0.0).
    pub advertise_client: Option<String>,
    /// The peer address other nodes dial (default: the bound `peer_listen` address).
    pub advertise_peer: Option<String>,
    /// A member's peer address to join on first start (with `token`); ignored once this
    /// data dir belongs to a cluster.
    pub join: Option<String>,
    /// The join token printed by (and written to `<data-dir>/join-token` of) the creating node.
    pub token: Option<String>,
    pub limits: Limits,
    pub auth: Auth,
    pub testing: Testing,
}

/// Switches for test harnesses; never needed in production.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Testing {
    /// Enables `POST /admin/faults` (block/delay peer links; needs the join token).
    pub fault_injection: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            shards: 16,
            peer_listen: SocketAddr::from(([127, 0, 0, 1], 7071)),
            advertise_client: None,
            advertise_peer: None,
            join: None,
            token: None,
            limits: Limits::default(),
            auth: Auth::default(),
            testing: Testing::default(),
        }
    }
}

/// Most shard groups a cluster may have (each costs heartbeats and a Raft task).
pub const SHARDS_MAX: u32 = 1024;

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return Err(ConfigError::Invalid(format!(
                "shards must be 1..={SHARDS_MAX}"
            )));
        }
        if self.join.is_some() != self.token.is_some() {
            return Err(ConfigError::Invalid(
                "join and token go together (--join <addr> --token <token>)".into(),
            ));
        }
        let l = &self.limits;
        if l.user_messages_per_minute == 0
            || l.conversation_messages_per_minute == 0
            || l.devices_per_user == 0
            || l.max_body_chars == 0
            || l.max_frame_bytes < 1024
            || l.connections_max == 0
            || l.new_connections_per_second == 0
            || l.connection_send_queue_max == 0
        {
            return Err(ConfigError::Invalid(
                "limits must be positive (max_frame_bytes >= 1024)".into(),
            ));
        }
        // cluster: apply refuses bodies over BODY_BYTES_MAX whatever a node's config says.
        let body_chars_max = crate::shard::validate::BODY_BYTES_MAX / 4;
        if l.max_body_chars > body_chars_max {
            return Err(ConfigError::Invalid(format!(
                "limits.max_body_chars must be at most {body_chars_max}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_equals_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/single-node.toml");
        let c = Config::from_file(&path).expect("example config parses");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn cluster_example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cluster");
        for n in 1..=3 {
            let c = Config::from_file(&dir.join(format!("node{n}.toml"))).expect("parses");
            assert_eq!(
                c.join.is_some(),
                n > 1,
                "node {n}: only joiners name a seed"
            );
            assert_eq!(c.listen.port(), 7060 + 10 * n);
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("[limits]\nbogus = 1\n").is_err());
    }
}
