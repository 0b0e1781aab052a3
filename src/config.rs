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
    // listener (issue 12 points 4, 6): the client port's accept loop.
    /// Most TCP connections the client port holds at once (HTTP and WebSocket alike).
    pub http_connections_max: usize,
    /// Most TCP connections from one source address (IPv4 address, or IPv6 /64) at once.
    pub connections_per_ip: usize,
    /// A request's head (and a TLS handshake) must arrive within this long of the server
    /// starting to wait for it; also bounds an idle keep-alive connection.
    pub http_header_timeout_ms: u64,
    /// A connection (before any WebSocket upgrade) on which no byte moves for this long is
    /// closed: stalled request bodies, unread responses, stuck handlers.
    pub http_idle_timeout_ms: u64,
    // bytes (issue 12 point 1)
    /// Bytes queued towards one connection before it is dropped as too slow (a push that
    /// does not fit kills it; a reply waits up to 5 s for room, then kills it).
    pub connection_send_queue_bytes: usize,
    // ratelimit: per-user budgets of every other frame type (token buckets, bursts up to
    // the full amount) and the caps on conversations (docs/SECURITY.md, "Rate limits and caps").
    /// `typing` frames per user per minute.
    pub typing_per_minute: u32,
    /// `delivered` and `read` frames per user per minute.
    pub receipts_per_minute: u32,
    /// `subscribe_presence` frames per user per minute.
    pub presence_subscriptions_per_minute: u32,
    /// `history`, `sync` and `list_conversations` frames per user per minute.
    pub reads_per_minute: u32,
    /// `create_conversation`, `add_members`, `remove_member`, `set_role` and `leave` frames
    /// per user per minute.
    pub membership_changes_per_minute: u32,
    /// `ping` frames (and a repeated `auth`) per user per minute.
    pub pings_per_minute: u32,
    /// Conversations (direct or group) one user may create per hour.
    pub conversations_created_per_hour: u32,
    /// Most conversations one user can be in; adding a user past it is refused.
    pub memberships_per_user_max: u32,
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
            http_connections_max: 110_000,
            connections_per_ip: 50,
            http_header_timeout_ms: 10_000,
            http_idle_timeout_ms: 60_000,
            connection_send_queue_bytes: 4 * 1024 * 1024,
            // ratelimit
            typing_per_minute: 120,
            receipts_per_minute: 600,
            presence_subscriptions_per_minute: 60,
            reads_per_minute: 600,
            membership_changes_per_minute: 60,
            pings_per_minute: 120,
            conversations_created_per_hour: 100,
            memberships_per_user_max: 2000,
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
    // accounts: refresh tokens and the live re-check of sessions
    /// Lifetime of a refresh token (`POST /v1/login`, `POST /v1/refresh`), in seconds.
    pub refresh_token_ttl_secs: u64,
    /// How often a live WebSocket re-checks its token's expiry and its session (revoked by
    /// `logout` / `logout_all`); a revoked or expired token's socket closes within about
    /// twice this long.
    pub session_check_interval_ms: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            token_ttl_secs: 3600,
            external: ExternalAuth::default(),
            refresh_token_ttl_secs: 30 * 24 * 3600,
            session_check_interval_ms: 30_000,
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
    // accounts
    pub accounts: Accounts,
    // listener (issue 12 points 4, 5): TLS on the client port, a separate metrics port.
    pub tls: Tls,
    /// When set, `GET /metrics` is served on this address only (not on the client port).
    pub metrics_listen: Option<SocketAddr>,
    // secrets (issue 12 point 5)
    pub admin: Admin,
    /// Log compaction of every group (issue 16 point 3).
    pub raft: RaftLog,
}

/// When a group snapshots its state and how much log it keeps behind the snapshot.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RaftLog {
    /// Build a snapshot (after which the log behind it may be purged) every this many
    /// applied entries.
    pub snapshot_every_logs: u64,
    /// Entries kept in the log behind the last snapshot, so that a follower slightly
    /// behind is caught up from the log rather than sent the whole snapshot.
    pub keep_logs_behind_snapshot: u64,
}

/// Default of `[raft] snapshot_every_logs`.
pub const SNAPSHOT_EVERY_LOGS: u64 = crate::raft::SNAPSHOT_EVERY_LOGS;
/// Smallest `[raft] snapshot_every_logs` (each snapshot copies the group's whole state).
pub const SNAPSHOT_EVERY_LOGS_MIN: u64 = 50;
/// Largest `[raft] snapshot_every_logs` and `keep_logs_behind_snapshot` (a restart replays
/// up to this many entries; the log on disk is bounded by it).
pub const RAFT_LOG_ENTRIES_MAX: u64 = 10_000_000;
/// Default of `[raft] keep_logs_behind_snapshot`.
pub const KEEP_LOGS_BEHIND_SNAPSHOT: u64 = crate::raft::KEEP_LOGS_BEHIND_SNAPSHOT;

impl Default for RaftLog {
    fn default() -> Self {
        RaftLog {
            snapshot_every_logs: SNAPSHOT_EVERY_LOGS,
            keep_logs_behind_snapshot: KEEP_LOGS_BEHIND_SNAPSHOT,
        }
    }
}

/// Operator endpoints (`/admin/*`, which need the admin token).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// `/admin/checksum` answers with the last checksum of this node's replicas, computed by
    /// a background task at most once per this many milliseconds (and only when asked for).
    pub checksum_interval_ms: u64,
}

/// Default of `[admin] checksum_interval_ms`.
pub const CHECKSUM_INTERVAL_MS: u64 = 10_000;
/// Smallest `[admin] checksum_interval_ms` (a scan reads every key of every replica).
pub const CHECKSUM_INTERVAL_MIN_MS: u64 = 100;

impl Default for Admin {
    fn default() -> Self {
        Admin {
            checksum_interval_ms: CHECKSUM_INTERVAL_MS,
        }
    }
}

/// TLS for clients (HTTPS and WSS on the client port). Both files or neither; the node
/// reloads them on SIGHUP.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// Who may create an account with `POST /v1/register`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone.
    Open,
    /// Only with an unused invite created by the operator (`chatnode invite`).
    Invite,
    /// Nobody (accounts come from an external issuer, or registration is paused).
    Closed,
}

/// Accounts: registration mode, login/register throttles, the password hashing queue.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Accounts {
    /// Unset: `open` when the client listener is a loopback address, `invite` otherwise
    /// (see [`Accounts::registration_for`]).
    pub registration: Option<Registration>,
    /// Lifetime of an invite when `chatnode invite` names none, in seconds.
    pub invite_ttl_secs: u64,
    /// Failed logins (or refused registrations) per client IP, and per username, within
    /// 15 minutes; past it `429` with `Retry-After` until the window ends.
    pub login_failures_per_15min: u32,
    /// Registration attempts per client IP per hour.
    pub registrations_per_ip_per_hour: u32,
    /// Requests that may wait for a password hashing slot (logins and registrations each);
    /// past it `503 overloaded` at once.
    pub password_hash_queue_max: usize,
    /// Longest wait for a password hashing slot before `503 overloaded`.
    pub password_hash_wait_ms: u64,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            registration: None,
            invite_ttl_secs: 7 * 24 * 3600,
            login_failures_per_15min: 5,
            registrations_per_ip_per_hour: 30,
            password_hash_queue_max: 64,
            password_hash_wait_ms: 2_000,
        }
    }
}

impl Accounts {
    /// The registration mode in force for a client listener on `listen`: the configured one,
    /// else `open` on loopback and `invite` on any other address.
    pub fn registration_for(&self, listen: SocketAddr) -> Registration {
        self.registration.unwrap_or(if listen.ip().is_loopback() {
            Registration::Open
        } else {
            Registration::Invite
        })
    }
}

/// Longest invite lifetime (`invite_ttl_secs` and `chatnode invite --ttl-secs`).
pub const INVITE_TTL_SECS_MAX: u64 = 365 * 24 * 3600;
/// Bounds of `[auth] session_check_interval_ms` (the upper one keeps "closed within a
/// minute" true).
pub const SESSION_CHECK_INTERVAL_MS_MIN: u64 = 100;
pub const SESSION_CHECK_INTERVAL_MS_MAX: u64 = 30_000;

/// Switches for test harnesses; never needed in production.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Testing {
    /// Enables `POST /admin/faults` (block/delay peer links; needs the admin token).
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
            accounts: Accounts::default(),
            tls: Tls::default(),
            metrics_listen: None,
            admin: Admin::default(),
            raft: RaftLog::default(),
        }
    }
}

/// Smallest `limits.connection_send_queue_bytes` (a few replies' worth).
pub const CONNECTION_SEND_QUEUE_BYTES_MIN: usize = 64 * 1024;
/// Largest `limits.max_body_chars`: a message's JSON (at most 4 bytes per code point) must
/// fit well inside one reply's byte budget (`REPLY_BYTES_MAX`, 1 MiB), so that sync and
/// history always make progress.
pub const BODY_CHARS_MAX: usize = 16_000;
// Apply refuses bodies over `shard::validate::BODY_BYTES_MAX` bytes whatever a node's config
// says: the largest allowed body (4 bytes per code point) must fit under it.
const _: () = assert!(BODY_CHARS_MAX * 4 <= crate::shard::validate::BODY_BYTES_MAX);

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
            || l.typing_per_minute == 0
            || l.receipts_per_minute == 0
            || l.presence_subscriptions_per_minute == 0
            || l.reads_per_minute == 0
            || l.membership_changes_per_minute == 0
            || l.pings_per_minute == 0
            || l.conversations_created_per_hour == 0
            || l.memberships_per_user_max == 0
        {
            return Err(ConfigError::Invalid(
                "limits must be positive (max_frame_bytes >= 1024)".into(),
            ));
        }
        if l.connection_send_queue_bytes < CONNECTION_SEND_QUEUE_BYTES_MIN {
            return Err(ConfigError::Invalid(format!(
                "limits.connection_send_queue_bytes must be at least {CONNECTION_SEND_QUEUE_BYTES_MIN}"
            )));
        }
        if l.max_body_chars > BODY_CHARS_MAX {
            return Err(ConfigError::Invalid(format!(
                "limits.max_body_chars must be at most {BODY_CHARS_MAX} (a message must fit a reply)"
            )));
        }
        if l.http_connections_max == 0
            || l.connections_per_ip == 0
            || l.http_header_timeout_ms == 0
            || l.http_idle_timeout_ms == 0
        {
            return Err(ConfigError::Invalid(
                "http_connections_max, connections_per_ip, http_header_timeout_ms and \
                 http_idle_timeout_ms must be positive"
                    .into(),
            ));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(ConfigError::Invalid(
                "tls cert_file and key_file go together (--tls-cert <pem> --tls-key <pem>)".into(),
            ));
        }
        if self.metrics_listen.is_some_and(|m| m == self.listen) {
            return Err(ConfigError::Invalid(
                "metrics_listen must differ from listen".into(),
            ));
        }
        self.validate_accounts()?;
        self.validate_raft()
    }

    fn validate_raft(&self) -> Result<(), ConfigError> {
        let r = &self.raft;
        if !(SNAPSHOT_EVERY_LOGS_MIN..=RAFT_LOG_ENTRIES_MAX).contains(&r.snapshot_every_logs) {
            return Err(ConfigError::Invalid(format!(
                "raft.snapshot_every_logs must be {SNAPSHOT_EVERY_LOGS_MIN}..={RAFT_LOG_ENTRIES_MAX}"
            )));
        }
        if r.keep_logs_behind_snapshot > RAFT_LOG_ENTRIES_MAX {
            return Err(ConfigError::Invalid(format!(
                "raft.keep_logs_behind_snapshot must be at most {RAFT_LOG_ENTRIES_MAX}"
            )));
        }
        Ok(())
    }

    fn validate_accounts(&self) -> Result<(), ConfigError> {
        let a = &self.accounts;
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if a.invite_ttl_secs == 0 || a.invite_ttl_secs > INVITE_TTL_SECS_MAX {
            return invalid("accounts.invite_ttl_secs must be 1..=31536000");
        }
        if a.login_failures_per_15min == 0 || a.registrations_per_ip_per_hour == 0 {
            return invalid("accounts throttles must be positive");
        }
        if a.password_hash_queue_max == 0 || a.password_hash_wait_ms == 0 {
            return invalid(
                "accounts.password_hash_queue_max and password_hash_wait_ms must be positive",
            );
        }
        let t = &self.auth;
        if t.token_ttl_secs == 0 || t.refresh_token_ttl_secs < t.token_ttl_secs {
            return invalid("auth.token_ttl_secs must be positive and <= refresh_token_ttl_secs");
        }
        if !(SESSION_CHECK_INTERVAL_MS_MIN..=SESSION_CHECK_INTERVAL_MS_MAX)
            .contains(&t.session_check_interval_ms)
        {
            return invalid("auth.session_check_interval_ms must be 100..=30000");
        }
        if self.admin.checksum_interval_ms < CHECKSUM_INTERVAL_MIN_MS {
            return Err(ConfigError::Invalid(format!(
                "admin.checksum_interval_ms must be at least {CHECKSUM_INTERVAL_MIN_MS}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
