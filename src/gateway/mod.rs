//! Gateway: HTTP + WebSocket on one port, sessions, request handling. Pushes into the
//! connections are `crate::delivery`'s (the hub and the outbound queues live there).
//!
//! - `http`: axum routes (`/v1/register`, `/v1/login`, `/health`, `/ready`, `/metrics`,
//!   `/v1/ws`) and admission control.
//! - `session`: one WebSocket connection: auth, frame decoding, pipelined requests, the
//!   bounded outbound queue.
//! - `handlers`: what each request does (routing writes and reads to shards).
//! - `auth`, `ratelimit`: accounts/tokens and token buckets.
//! - `listener`: the client port's accept loop (timeouts, connection caps, TLS);
//!   `client_tls`: the client certificate, reloadable.

pub(crate) mod accounts;
pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod checksum;
pub(crate) mod handlers;
pub(crate) mod http;
pub(crate) mod ratelimit;
pub(crate) mod reads;
pub(crate) mod receipts;
pub(crate) mod replies;
pub(crate) mod session;
// listener (issue 12 points 4, 6)
pub mod client_tls;
pub(crate) mod listener;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cluster::{Cluster, Controller, RouteError, ShardMap};
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::protocol::{ProtocolError, TextLimits};
use crate::shard::command::Rejection;
use crate::storage::{StorageError, TaskFailed};

pub(crate) use crate::delivery::Hub;

/// argon2id hashes (register, login) running at once on a node.
pub(crate) const PASSWORD_HASHES_IN_FLIGHT_MAX: usize = 2;

/// Milliseconds since the Unix epoch (server time for `ts`).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Everything a request handler needs; shared by all connections of a node.
pub(crate) struct Gateway {
    /// Writes and reads, routed to each group's leader (batched into few Raft entries there).
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) controller: Arc<Controller>,
    /// `/admin/faults` works only when the config enables it (tests).
    pub(crate) fault_injection: bool,
    /// Notified when the node should stop (after `leave`).
    pub(crate) stop: Arc<tokio::sync::Notify>,
    pub(crate) shard_map: Arc<ShardMap>,
    pub(crate) hub: Arc<Hub>,
    /// Typing leaves through delivery (to the other nodes and this one's connections).
    pub(crate) delivery: crate::delivery::Inbox,
    pub(crate) tokens: auth::TokenAuthority,
    pub(crate) limits: Limits,
    pub(crate) text_limits: TextLimits,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) user_rate: ratelimit::RateLimiter<String>,
    pub(crate) conversation_rate: ratelimit::RateLimiter<String>,
    pub(crate) connect_rate: ratelimit::RateLimiter<()>,
    pub(crate) connections: Arc<tokio::sync::Semaphore>,
    pub(crate) relay: Arc<crate::cluster::OutboxRelay>,
    pub(crate) receipts: receipts::ReceiptBatcher,
    /// argon2id hashes running at once (each takes ~19 MiB and a core for tens of ms):
    /// bounds CPU and memory under a burst of registrations or logins.
    pub(crate) password_hashing: tokio::sync::Semaphore,
    /// Synced writes so far (for `/metrics`).
    pub(crate) synced_writes: Box<dyn Fn() -> u64 + Send + Sync>,
    // accounts
    /// Registration mode, throttles, the password hashing queue, the session cache.
    pub(crate) accounts: accounts::AccountsState,
    // ratelimit
    /// Per-user budgets of every frame type other than sends, and of creations per hour.
    pub(crate) frame_rates: ratelimit::FrameRates,
    // secrets (issue 12 point 5)
    /// The admin token `/admin/*` requires, and the join token (never accepted here).
    pub(crate) secrets: Arc<crate::cluster::secrets::LocalSecrets>,
    /// `/admin/checksum`'s last result, computed in the background.
    pub(crate) checksums: Arc<checksum::ChecksumCache>,
}

/// Maps a routing failure onto the protocol: all are retryable `unavailable`.
impl From<RouteError> for ProtocolError {
    fn from(e: RouteError) -> Self {
        ProtocolError::unavailable(e.to_string())
    }
}

impl From<StorageError> for ProtocolError {
    fn from(e: StorageError) -> Self {
        tracing::error!(error = %e, "storage error");
        ProtocolError::internal("storage error")
    }
}

/// A blocking task (argon2) that did not finish.
impl From<TaskFailed> for ProtocolError {
    fn from(e: TaskFailed) -> Self {
        ProtocolError::internal(format!("worker failed: {}", e.0))
    }
}

impl From<Rejection> for ProtocolError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Forbidden(m) => ProtocolError::forbidden(m),
            Rejection::NotFound(m) => ProtocolError::not_found(m),
            Rejection::BadRequest(m) => ProtocolError::bad_request(m),
            Rejection::Conflict(m) => ProtocolError::conflict(m),
        }
    }
}
