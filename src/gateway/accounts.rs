//! Accounts on the client port: registration (open, by invite, or closed), login with
//! throttles per client IP and per username, a bounded password hashing queue, short-lived
//! access tokens with rotating refresh tokens, logout and logout_all, and the session checks
//! of live WebSockets.
//!
//! - `POST /v1/register` `{username, password, invite?}` → `201 {user_id}`
//! - `POST /v1/login` `{username, password}` → `{token, user_id, expires_at, session_id,
//!   refresh_token, refresh_expires_at}`
//! - `POST /v1/refresh` `{refresh_token}` → the same shape, with a new refresh token (the
//!   old one is spent; presenting it again revokes the session)
//! - `POST /v1/logout` (`Authorization: Bearer <access token>`, or `{refresh_token}`)
//! - `POST /v1/logout_all` (same) → every session and access token of the user is revoked
//!
//! Sessions, invites and the per-user token epoch are state in shards (see
//! `shard::accounts`); everything here that is not (throttles, the hashing queue, the
//! session cache) is bounded and per node.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::auth::{hash_password, valid_password, valid_username, verify_password, AccessClaims};
use super::{now_ms, Gateway};
use crate::config::{Config, Registration, INVITE_TTL_SECS_MAX};
use crate::protocol::{is_valid_id, ErrorCode, ErrorKind, ProtocolError};
use crate::shard::command::{AuthState, ShardOp, ShardResponse};
use crate::storage::blocking;

/// Largest account request body.
pub(crate) const ACCOUNT_BODY_BYTES_MAX: usize = 16 * 1024;
/// The window of `[accounts] login_failures_per_15min`.
pub(crate) const LOGIN_FAILURE_WINDOW_MS: u64 = 15 * 60 * 1000;
/// The window of `[accounts] registrations_per_ip_per_hour`.
pub(crate) const REGISTRATION_WINDOW_MS: u64 = 60 * 60 * 1000;
/// Keys (IPs or usernames) one throttle remembers; see [`Throttle`] for what happens past it.
pub(crate) const THROTTLE_KEYS_MAX: usize = 100_000;
/// Registrations hashing at once: the other hashing slots stay free for logins, so a flood
/// of registrations cannot make logins wait behind it.
pub(crate) const REGISTER_HASHES_IN_FLIGHT_MAX: usize = 1;
/// Users whose token epoch and sessions a node caches for the checks of live WebSockets.
pub(crate) const SESSION_CACHE_USERS_MAX: usize = 200_000;
/// Longest invite use count.
pub(crate) const INVITE_USES_MAX: u32 = 10_000;
/// Suggested wait after `overloaded` from the hashing queue.
pub(crate) const HASH_RETRY_AFTER_MS: u64 = 1_000;

/// Counts events per key in fixed windows, for a bounded number of keys.
///
/// When `THROTTLE_KEYS_MAX` keys are held, expired windows are dropped first, then windows
/// that are not (yet) throttling; if every key is throttling, a new key is not tracked (fails
/// open for it while every throttled key stays throttled).
pub(crate) struct Throttle {
    limit: u32,
    window_ms: u64,
    entries: Mutex<HashMap<String, (u64, u32)>>,
}

impl Throttle {
    pub(crate) fn new(limit: u32, window_ms: u64) -> Self {
        Throttle {
            limit,
            window_ms,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, u32)>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `Err(ms to wait)` when `key` used up its window.
    pub(crate) fn check(&self, key: &str, now: u64) -> Result<(), u64> {
        match self.lock().get(key) {
            Some(&(start, n)) if now < start + self.window_ms && n >= self.limit => {
                Err((start + self.window_ms - now).max(1))
            }
            _ => Ok(()),
        }
    }

    /// Counts one event of `key`.
    pub(crate) fn record(&self, key: &str, now: u64) {
        let mut m = self.lock();
        if !m.contains_key(key) && m.len() >= THROTTLE_KEYS_MAX {
            let (window, limit) = (self.window_ms, self.limit);
            m.retain(|_, (start, _)| now < *start + window);
            if m.len() >= THROTTLE_KEYS_MAX {
                m.retain(|_, (_, n)| *n >= limit);
            }
            if m.len() >= THROTTLE_KEYS_MAX {
                return;
            }
        }
        let e = m.entry(key.to_string()).or_insert((now, 0));
        if now >= e.0 + self.window_ms {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }

    /// Checks, then counts (for limits on attempts rather than failures).
    pub(crate) fn hit(&self, key: &str, now: u64) -> Result<(), u64> {
        self.check(key, now)?;
        self.record(key, now);
        Ok(())
    }

    pub(crate) fn clear(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// Who waits for a password hashing slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HashKind {
    Login,
    Register,
}

/// The password hashing queue: at most `PASSWORD_HASHES_IN_FLIGHT_MAX` hashes at once (the
/// gateway's `password_hashing` semaphore), of which `REGISTER_HASHES_IN_FLIGHT_MAX` may be
/// registrations; at most `password_hash_queue_max` waiters per kind, each for at most
/// `password_hash_wait_ms`. Past either: `overloaded` at once.
pub(crate) struct HashQueue {
    register_slots: Semaphore,
    waiting_login: AtomicUsize,
    waiting_register: AtomicUsize,
    queue_max: usize,
    wait: Duration,
}

/// A hashing slot; released on drop.
pub(crate) struct HashPermit<'a> {
    _slot: SemaphorePermit<'a>,
    _register: Option<SemaphorePermit<'a>>,
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn overloaded() -> ProtocolError {
    ProtocolError::overloaded(
        "too many password checks at once; retry later",
        HASH_RETRY_AFTER_MS,
    )
}

impl HashQueue {
    pub(crate) fn new(queue_max: usize, wait_ms: u64) -> Self {
        HashQueue {
            register_slots: Semaphore::new(REGISTER_HASHES_IN_FLIGHT_MAX),
            waiting_login: AtomicUsize::new(0),
            waiting_register: AtomicUsize::new(0),
            queue_max,
            wait: Duration::from_millis(wait_ms),
        }
    }

    pub(crate) async fn acquire<'a>(
        &'a self,
        slots: &'a Semaphore,
        kind: HashKind,
    ) -> Result<HashPermit<'a>, ProtocolError> {
        let counter = match kind {
            HashKind::Login => &self.waiting_login,
            HashKind::Register => &self.waiting_register,
        };
        if counter.fetch_add(1, Ordering::AcqRel) >= self.queue_max {
            counter.fetch_sub(1, Ordering::AcqRel);
            return Err(overloaded());
        }
        let _waiting = Waiting(counter);
        let get = async {
            let register = match kind {
                HashKind::Register => Some(self.register_slots.acquire().await.ok()?),
                HashKind::Login => None,
            };
            let slot = slots.acquire().await.ok()?;
            Some(HashPermit {
                _slot: slot,
                _register: register,
            })
        };
        match tokio::time::timeout(self.wait, get).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(ProtocolError::unavailable("node is shutting down")),
            Err(_) => Err(overloaded()),
        }
    }
}

/// Per-node cache of users' token epochs and sessions, for the periodic checks of live
/// WebSockets: one read per user per `max_age`, whatever the number of that user's
/// connections (concurrent misses for one user wait for one read).
pub(crate) struct SessionCache {
    max_age: Duration,
    #[allow(clippy::type_complexity)]
    users: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<(Instant, AuthState)>>>>>,
}

impl SessionCache {
    pub(crate) fn new(max_age: Duration) -> Self {
        SessionCache {
            max_age,
            users: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, user_id: &str) -> Arc<tokio::sync::Mutex<Option<(Instant, AuthState)>>> {
        let mut m = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(user_id) && m.len() >= SESSION_CACHE_USERS_MAX {
            // Bounded: start over (each user costs one more read).
            m.clear();
        }
        m.entry(user_id.to_string()).or_default().clone()
    }

    /// Forgets a user (after a logout on this node).
    pub(crate) fn invalidate(&self, user_id: &str) {
        self.users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user_id);
    }

    /// The user's state, read now (`fresh`) or at most `max_age` ago.
    pub(crate) async fn get(
        &self,
        gw: &Gateway,
        user_id: &str,
        fresh: bool,
    ) -> Result<AuthState, ProtocolError> {
        let slot = self.slot(user_id);
        let mut entry = slot.lock().await;
        if let (false, Some((at, state))) = (fresh, entry.as_ref()) {
            if at.elapsed() < self.max_age {
                return Ok(state.clone());
            }
        }
        let state = gw.read_auth_state(user_id).await?;
        *entry = Some((Instant::now(), state.clone()));
        Ok(state)
    }
}

/// The node's account machinery (a field of [`Gateway`]).
pub(crate) struct AccountsState {
    pub(crate) registration: Registration,
    pub(crate) invite_ttl_secs: u64,
    pub(crate) refresh_ttl_ms: u64,
    /// How often a live WebSocket re-checks its token.
    pub(crate) session_check_interval: Duration,
    pub(crate) failures_by_ip: Throttle,
    pub(crate) failures_by_username: Throttle,
    pub(crate) registrations_by_ip: Throttle,
    pub(crate) hashing: HashQueue,
    pub(crate) sessions: SessionCache,
    /// Whether a request without the peer's address was seen (logged once).
    no_peer_address_logged: AtomicBool,
}

impl AccountsState {
    /// Also warns, loudly, when anyone on a non-loopback network may register.
    pub(crate) fn new(config: &Config) -> Self {
        let a = &config.accounts;
        let registration = a.registration_for(config.listen);
        if registration == Registration::Open && !config.listen.ip().is_loopback() {
            tracing::warn!(
                listen = %config.listen,
                "REGISTRATION IS OPEN on a non-loopback address: anyone who reaches this port \
                 can create an account; set [accounts] registration = \"invite\" (and create \
                 invites with `chatnode invite`) or \"closed\""
            );
        } else {
            tracing::info!(?registration, "account registration mode");
        }
        let interval = Duration::from_millis(config.auth.session_check_interval_ms);
        AccountsState {
            registration,
            invite_ttl_secs: a.invite_ttl_secs,
            refresh_ttl_ms: config.auth.refresh_token_ttl_secs.saturating_mul(1000),
            session_check_interval: interval,
            failures_by_ip: Throttle::new(a.login_failures_per_15min, LOGIN_FAILURE_WINDOW_MS),
            failures_by_username: Throttle::new(
                a.login_failures_per_15min,
                LOGIN_FAILURE_WINDOW_MS,
            ),
            registrations_by_ip: Throttle::new(
                a.registrations_per_ip_per_hour,
                REGISTRATION_WINDOW_MS,
            ),
            hashing: HashQueue::new(a.password_hash_queue_max, a.password_hash_wait_ms),
            // Half the interval: a revocation is seen within 1.5 intervals.
            sessions: SessionCache::new(interval / 2),
            no_peer_address_logged: AtomicBool::new(false),
        }
    }
}

/// The client's address as the throttles see it: IPv4 as is, IPv6 by its /64 (one host
/// usually holds a whole /64). `None` when the server was started without connection info
/// (then only the per-username throttle applies).
pub(crate) fn client_ip(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Errors of the account endpoints, with the HTTP status of their code.
fn error_response(e: &ProtocolError) -> Response {
    error_response_with(status_of(e.code), e)
}

/// Registration's only conflict is a taken username: `409` (PROTOCOL.md), its code still
/// `bad_request`.
fn register_error(e: &ProtocolError) -> Response {
    match e.kind {
        ErrorKind::Conflict => error_response_with(StatusCode::CONFLICT, e),
        ErrorKind::Plain => error_response(e),
    }
}

fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable | ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_response_with(status: StatusCode, e: &ProtocolError) -> Response {
    let mut body = json!({
        "type": "error",
        "code": e.code,
        "message": e.message,
        "retryable": e.code.retryable(),
    });
    let mut headers = HeaderMap::new();
    if let Some(ms) = e.retry_after_ms {
        body["retry_after_ms"] = json!(ms);
        let secs = ms.div_ceil(1000).max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            headers.insert(header::RETRY_AFTER, v);
        }
    }
    (status, headers, Json(body)).into_response()
}

const USERNAME_TAKEN: &str = "username is taken";

fn throttled(retry_after_ms: u64) -> ProtocolError {
    ProtocolError::rate_limited("too many failed attempts; retry later", retry_after_ms)
}

async fn body_of(req: Request) -> Result<(Option<IpAddr>, HeaderMap, Vec<u8>), ProtocolError> {
    let ip = client_ip(req.extensions());
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, ACCOUNT_BODY_BYTES_MAX)
        .await
        .map_err(|_| ProtocolError::too_large("request body is too large"))?;
    Ok((ip, parts.headers, bytes.to_vec()))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(body)
        .map_err(|e| ProtocolError::bad_request(format!("invalid body: {e}")))
}

/// The per-IP and per-username failure throttles, before any work.
struct Attempt<'a> {
    gw: &'a Gateway,
    ip: Option<String>,
    username: String,
}

impl Attempt<'_> {
    fn new<'a>(gw: &'a Gateway, ip: Option<IpAddr>, username: &str) -> Attempt<'a> {
        if ip.is_none()
            && !gw
                .accounts
                .no_peer_address_logged
                .swap(true, Ordering::Relaxed)
        {
            tracing::warn!("HTTP requests carry no peer address: per-IP throttles are off");
        }
        Attempt {
            gw,
            ip: ip.map(ip_key),
            username: username.to_ascii_lowercase(),
        }
    }

    fn check(&self, now: u64) -> Result<(), ProtocolError> {
        let a = &self.gw.accounts;
        if let Some(ip) = &self.ip {
            a.failures_by_ip.check(ip, now).map_err(throttled)?;
        }
        a.failures_by_username
            .check(&self.username, now)
            .map_err(throttled)
    }

    fn failed(&self, now: u64) {
        let a = &self.gw.accounts;
        if let Some(ip) = &self.ip {
            a.failures_by_ip.record(ip, now);
        }
        a.failures_by_username.record(&self.username, now);
    }
}

#[derive(Deserialize)]
struct RegisterBody {
    username: String,
    password: String,
    #[serde(default)]
    invite: Option<String>,
}

pub(crate) async fn register(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let result = async {
        let (ip, _, body) = body_of(req).await?;
        do_register(&gw, ip, &body).await
    }
    .await;
    match result {
        Ok(user_id) => (StatusCode::CREATED, Json(json!({ "user_id": user_id }))).into_response(),
        Err(e) => {
            gw.metrics.error(e.code);
            register_error(&e)
        }
    }
}

/// Consumes the invite (if the mode asks for one) before hashing, so that a wrong invite
/// costs no hash; then the user record goes to the user id's shard, then the username is
/// claimed in the username's shard: a crash in between leaves an unreachable record, never
/// a name that points nowhere.
async fn do_register(
    gw: &Gateway,
    ip: Option<IpAddr>,
    body: &[u8],
) -> Result<String, ProtocolError> {
    let a = &gw.accounts;
    let b = register_body(a, body)?;
    let now = now_ms();
    let attempt = Attempt::new(gw, ip, &b.username);
    attempt.check(now)?;
    if let Some(ip) = &attempt.ip {
        a.registrations_by_ip.hit(ip, now).map_err(|ms| {
            ProtocolError::rate_limited("too many registrations from this address", ms)
        })?;
    }
    let invite = invite_code(a, &attempt, now, b.invite)?;
    if gw.read_username(&b.username).await?.is_some() {
        attempt.failed(now);
        return Err(ProtocolError::conflict(USERNAME_TAKEN));
    }
    let _permit = a
        .hashing
        .acquire(&gw.password_hashing, HashKind::Register)
        .await?;
    let user_id = ulid::Ulid::new().to_string();
    if let Some(code) = invite {
        use_invite(gw, &attempt, now, code, &user_id).await?;
    }
    let password = b.password;
    let hash = blocking(move || {
        hash_password(&password).map_err(|e| ProtocolError::internal(e.to_string()))
    })
    .await?;
    drop(_permit);
    create_user(gw, &attempt, now, user_id, b.username, hash).await
}

/// The body of a registration, checked before any throttle or read.
fn register_body(a: &AccountsState, body: &[u8]) -> Result<RegisterBody, ProtocolError> {
    if a.registration == Registration::Closed {
        return Err(ProtocolError::forbidden(
            "registration is closed on this server",
        ));
    }
    let b: RegisterBody = parse(body)?;
    if !valid_username(&b.username) {
        return Err(ProtocolError::bad_request(
            "username must be 1..32 characters of [A-Za-z0-9_.-]",
        ));
    }
    if !valid_password(&b.password) {
        return Err(ProtocolError::bad_request("password must be 8..256 bytes"));
    }
    Ok(b)
}

/// The invite code the registration mode asks for (`None` when it asks for none); a missing
/// or malformed one counts as a failed attempt.
fn invite_code(
    a: &AccountsState,
    attempt: &Attempt<'_>,
    now: u64,
    invite: Option<String>,
) -> Result<Option<String>, ProtocolError> {
    match (a.registration, invite) {
        (Registration::Invite, None) => {
            attempt.failed(now);
            Err(ProtocolError::forbidden(
                "registration on this server needs an invite",
            ))
        }
        (Registration::Invite, Some(code)) if !is_valid_id(&code) => {
            attempt.failed(now);
            Err(ProtocolError::forbidden("invalid or used invite"))
        }
        (Registration::Invite, Some(code)) => Ok(Some(code)),
        _ => Ok(None),
    }
}

/// Uses up one use of the invite for `user_id`; a refused invite is a failed attempt.
async fn use_invite(
    gw: &Gateway,
    attempt: &Attempt<'_>,
    now: u64,
    code: String,
    user_id: &str,
) -> Result<(), ProtocolError> {
    let group = gw.shard_map.shard_for_invite(&code);
    let op = ShardOp::UseInvite {
        code,
        user_id: user_id.to_string(),
        ts: now_ms(),
    };
    match gw.write_shard(group, op).await {
        Ok(_) => Ok(()),
        Err(e) => {
            if e.code == ErrorCode::Forbidden {
                attempt.failed(now);
            }
            Err(e)
        }
    }
}

/// Writes the user record, then claims the username; answers the new user id.
async fn create_user(
    gw: &Gateway,
    attempt: &Attempt<'_>,
    now: u64,
    user_id: String,
    username: String,
    password_hash: String,
) -> Result<String, ProtocolError> {
    gw.write_shard(
        gw.shard_map.shard_for_user(&user_id),
        ShardOp::CreateUser {
            user_id: user_id.clone(),
            username: username.clone(),
            password_hash,
            ts: now_ms(),
        },
    )
    .await?;
    let group = gw.shard_map.shard_for_username(&username);
    let claim = ShardOp::ClaimUsername {
        username,
        user_id: user_id.clone(),
    };
    match gw.write_shard(group, claim).await {
        Ok(_) => Ok(user_id),
        // Claimed in between by someone else: apply's `Rejection::Conflict`.
        Err(e) if e.kind == ErrorKind::Conflict => {
            attempt.failed(now);
            Err(e)
        }
        Err(e) => Err(e),
    }
}

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

pub(crate) async fn login(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let result = async {
        let (ip, _, body) = body_of(req).await?;
        do_login(&gw, ip, &body).await
    }
    .await;
    match result {
        Ok(v) => (StatusCode::OK, Json(v)).into_response(),
        Err(e) => {
            gw.metrics.error(e.code);
            error_response(&e)
        }
    }
}

async fn do_login(
    gw: &Gateway,
    ip: Option<IpAddr>,
    body: &[u8],
) -> Result<serde_json::Value, ProtocolError> {
    let denied = || ProtocolError::unauthorized("wrong username or password");
    let b: LoginBody = parse(body).map_err(|_| denied())?;
    let now = now_ms();
    let attempt = Attempt::new(gw, ip, &b.username);
    attempt.check(now)?;
    if !valid_username(&b.username) || !valid_password(&b.password) {
        attempt.failed(now);
        return Err(denied());
    }
    let Some(user_id) = gw.read_username(&b.username).await? else {
        attempt.failed(now);
        return Err(denied());
    };
    let Some(record) = gw.read_user(&user_id).await? else {
        attempt.failed(now);
        return Err(denied());
    };
    let permit = gw
        .accounts
        .hashing
        .acquire(&gw.password_hashing, HashKind::Login)
        .await?;
    let password = b.password;
    let ok =
        blocking(move || Ok::<_, ProtocolError>(verify_password(&password, &record.password_hash)))
            .await?;
    drop(permit);
    if !ok {
        attempt.failed(now);
        return Err(denied());
    }
    gw.accounts.failures_by_username.clear(&attempt.username);
    let session_id = ulid::Ulid::new().to_string();
    let now = now_ms();
    let op = ShardOp::CreateSession {
        user_id: user_id.clone(),
        session_id,
        expires_at: now.saturating_add(gw.accounts.refresh_ttl_ms),
        ts: now,
    };
    let resp = gw
        .write_shard(gw.shard_map.shard_for_user(&user_id), op)
        .await?;
    session_reply(gw, &user_id, resp, now)
}

/// The tokens of a session the shard just opened or rotated.
fn session_reply(
    gw: &Gateway,
    user_id: &str,
    resp: ShardResponse,
    now: u64,
) -> Result<serde_json::Value, ProtocolError> {
    let ShardResponse::Session {
        epoch,
        session: Some(s),
    } = resp
    else {
        return Err(ProtocolError::internal("unexpected session response"));
    };
    let internal = |e: super::auth::AuthError| ProtocolError::internal(e.to_string());
    let (token, expires_at) = gw
        .tokens
        .issue_access(user_id, &s.session_id, epoch, now)
        .map_err(internal)?;
    let refresh = gw
        .tokens
        .issue_refresh(user_id, &s.session_id, s.generation, s.expires_at, now)
        .map_err(internal)?;
    Ok(json!({
        "token": token,
        "user_id": user_id,
        "expires_at": expires_at,
        "session_id": s.session_id,
        "refresh_token": refresh,
        "refresh_expires_at": s.expires_at,
    }))
}

#[derive(Deserialize, Default)]
struct RefreshBody {
    #[serde(default)]
    refresh_token: Option<String>,
}

fn revoked(message: &str) -> ProtocolError {
    ProtocolError::unauthorized(message)
}

pub(crate) async fn refresh(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let result = async {
        let (_, _, body) = body_of(req).await?;
        let b: RefreshBody = parse(&body)?;
        let token = b
            .refresh_token
            .ok_or_else(|| ProtocolError::bad_request("refresh_token is missing"))?;
        let c = gw
            .tokens
            .verify_refresh(&token)
            .map_err(|e| revoked(&e.to_string()))?;
        let now = now_ms();
        let op = ShardOp::RefreshSession {
            user_id: c.user_id.clone(),
            session_id: c.session_id,
            generation: c.generation,
            expires_at: now.saturating_add(gw.accounts.refresh_ttl_ms),
            ts: now,
        };
        let group = gw.shard_map.shard_for_user(&c.user_id);
        match gw.write_shard(group, op).await {
            Ok(resp) => session_reply(&gw, &c.user_id, resp, now),
            Err(e) if e.code == ErrorCode::Forbidden => {
                gw.accounts.sessions.invalidate(&c.user_id);
                Err(revoked(&e.message))
            }
            Err(e) => Err(e),
        }
    }
    .await;
    match result {
        Ok(v) => (StatusCode::OK, Json(v)).into_response(),
        Err(e) => {
            gw.metrics.error(e.code);
            error_response(&e)
        }
    }
}

/// The user and session named by a bearer access token or a refresh token in the body.
fn session_of(
    gw: &Gateway,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, Option<String>), ProtocolError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(t) = bearer {
        let c = gw
            .tokens
            .verify_access(t)
            .map_err(|e| ProtocolError::unauthorized(e.to_string()))?;
        if c.external {
            return Err(ProtocolError::bad_request(
                "tokens of an external issuer are revoked by that issuer",
            ));
        }
        return Ok((c.user_id, c.session_id));
    }
    let b: RefreshBody = if body.is_empty() {
        RefreshBody::default()
    } else {
        parse(body)?
    };
    let Some(t) = b.refresh_token else {
        return Err(ProtocolError::unauthorized(
            "needs Authorization: Bearer <token> or a refresh_token",
        ));
    };
    let c = gw
        .tokens
        .verify_refresh(&t)
        .map_err(|e| ProtocolError::unauthorized(e.to_string()))?;
    Ok((c.user_id, Some(c.session_id)))
}

pub(crate) async fn logout(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    revoke(gw, req, false).await
}

pub(crate) async fn logout_all(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    revoke(gw, req, true).await
}

async fn revoke(gw: Arc<Gateway>, req: Request, all: bool) -> Response {
    let result = async {
        let (_, headers, body) = body_of(req).await?;
        let (user_id, session_id) = session_of(&gw, &headers, &body)?;
        let op = match (all, session_id) {
            (true, _) => ShardOp::RevokeAllSessions {
                user_id: user_id.clone(),
            },
            (false, Some(session_id)) => ShardOp::RevokeSession {
                user_id: user_id.clone(),
                session_id,
            },
            (false, None) => {
                return Err(ProtocolError::bad_request(
                    "this token has no session: use /v1/logout_all",
                ))
            }
        };
        gw.write_shard(gw.shard_map.shard_for_user(&user_id), op)
            .await?;
        gw.accounts.sessions.invalidate(&user_id);
        Ok(())
    }
    .await;
    match result {
        Ok(()) => (StatusCode::OK, Json(json!({"ok": true}))).into_response(),
        Err(e) => {
            gw.metrics.error(e.code);
            error_response(&e)
        }
    }
}

/// `POST /admin/invites?uses=<n>&ttl_secs=<s>` (called by `admin::invites` once the request
/// is authorized): a fresh invite code.
#[derive(Deserialize, Default)]
pub(crate) struct InviteParams {
    #[serde(default)]
    pub(crate) uses: Option<u32>,
    #[serde(default)]
    pub(crate) ttl_secs: Option<u64>,
}

pub(crate) async fn create_invite(gw: &Gateway, p: InviteParams) -> Response {
    let uses = p.uses.unwrap_or(1);
    let ttl = p.ttl_secs.unwrap_or(gw.accounts.invite_ttl_secs);
    if !(1..=INVITE_USES_MAX).contains(&uses) || ttl == 0 || ttl > INVITE_TTL_SECS_MAX {
        return error_response(&ProtocolError::bad_request(format!(
            "uses must be 1..={INVITE_USES_MAX} and ttl_secs 1..={INVITE_TTL_SECS_MAX}"
        )));
    }
    let code = format!("{:032x}", rand::random::<u128>());
    let now = now_ms();
    let expires_at = now.saturating_add(ttl.saturating_mul(1000));
    let op = ShardOp::CreateInvite {
        code: code.clone(),
        expires_at,
        uses,
        ts: now,
    };
    match gw
        .write_shard(gw.shard_map.shard_for_invite(&code), op)
        .await
    {
        Ok(_) => (
            StatusCode::CREATED,
            Json(json!({"invite": code, "expires_at": expires_at, "uses": uses})),
        )
            .into_response(),
        Err(e) => error_response(&e),
    }
}

/// Checks a token presented on the WebSocket: signature and expiry, then (for this
/// cluster's tokens) the user's token epoch and session, read linearizably now. When the
/// user's shard cannot be read (no leader), the token is let in on its signature: the
/// periodic re-check closes the socket once the state is readable again.
pub(crate) async fn verify_ws_token(
    gw: &Gateway,
    token: &str,
) -> Result<AccessClaims, ProtocolError> {
    let c = gw
        .tokens
        .verify_access(token)
        .map_err(|e| ProtocolError::unauthorized(e.to_string()))?;
    if c.external {
        return Ok(c);
    }
    match gw.accounts.sessions.get(gw, &c.user_id, true).await {
        Ok(state) => still_valid(&c, &state, now_ms()).map_err(ProtocolError::unauthorized)?,
        Err(e) => {
            tracing::debug!(user = %c.user_id, error = %e.message, "session not readable at auth");
        }
    }
    Ok(c)
}

/// The periodic check of a live WebSocket's token: expiry locally, the session through the
/// node's cache. A failed read keeps the connection (it is checked again next time).
pub(crate) async fn recheck_ws_token(gw: &Gateway, c: &AccessClaims) -> Result<(), ProtocolError> {
    let now = now_ms();
    if now >= c.expires_at {
        return Err(ProtocolError::unauthorized("token expired"));
    }
    if c.external {
        return Ok(());
    }
    match gw.accounts.sessions.get(gw, &c.user_id, false).await {
        Ok(state) => still_valid(c, &state, now).map_err(ProtocolError::unauthorized),
        Err(e) => {
            tracing::debug!(user = %c.user_id, error = %e.message, "session check skipped");
            Ok(())
        }
    }
}

/// Whether a token of this cluster is still good against its user's state.
pub(crate) fn still_valid(
    c: &AccessClaims,
    state: &AuthState,
    now: u64,
) -> Result<(), &'static str> {
    if now >= c.expires_at {
        return Err("token expired");
    }
    if c.epoch != state.epoch {
        return Err("token revoked");
    }
    match &c.session_id {
        // A token from before sessions: only the epoch (logout_all) revokes it.
        None => Ok(()),
        Some(sid) => {
            let live = state
                .sessions
                .iter()
                .any(|s| &s.session_id == sid && s.epoch == c.epoch && s.expires_at > now);
            if live {
                Ok(())
            } else {
                Err("session revoked")
            }
        }
    }
}

#[cfg(test)]
mod tests;
