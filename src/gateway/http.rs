//! HTTP routes on the client port: accounts, health, readiness, metrics, and the WebSocket
//! upgrade with admission control.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::auth::{hash_password, valid_password, valid_username, verify_password};
use super::{now_ms, session, Gateway};
use crate::protocol::{ErrorCode, ProtocolError, ServerFrame};
use crate::shard::command::{Rejection, ShardOp};

/// Largest HTTP request body (register/login are tiny).
pub const HTTP_BODY_BYTES_MAX: usize = 16 * 1024;
/// WebSocket read buffer per connection (grows for a large frame, up to the frame limit).
pub const WS_READ_BUFFER_BYTES: usize = 4 * 1024;
/// Bytes the WebSocket writer gathers before writing to the socket.
pub const WS_WRITE_BUFFER_BYTES: usize = 4 * 1024;
/// Suggested wait for a client refused by admission control.
pub const ADMISSION_RETRY_AFTER_MS: u64 = 1_000;

pub fn routes(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/register", post(register))
        .route("/v1/login", post(login))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/ws", get(ws))
        .route("/admin/status", get(super::admin::status))
        .route("/admin/checksum", get(super::admin::checksum))
        .route("/admin/shard", get(super::admin::shard))
        .route("/admin/leave", post(super::admin::leave))
        .route("/admin/faults", post(super::admin::faults))
        .route(
            "/admin/rotate-join-token",
            post(super::admin::rotate_join_token),
        )
        .layer(DefaultBodyLimit::max(HTTP_BODY_BYTES_MAX))
        .with_state(gw)
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

fn error_json(status: StatusCode, e: &ProtocolError) -> Response {
    let mut body = json!({
        "type": "error",
        "code": e.code,
        "message": e.message,
        "retryable": e.code.retryable(),
    });
    if let Some(ms) = e.retry_after_ms {
        body["retry_after_ms"] = json!(ms);
    }
    (status, Json(body)).into_response()
}

fn status_of(e: &ProtocolError) -> StatusCode {
    match e.code {
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

fn parse_credentials(body: &[u8]) -> Result<Credentials, ProtocolError> {
    let c: Credentials = serde_json::from_slice(body)
        .map_err(|e| ProtocolError::bad_request(format!("invalid body: {e}")))?;
    if !valid_username(&c.username) {
        return Err(ProtocolError::bad_request(
            "username must be 1..32 characters of [A-Za-z0-9_.-]",
        ));
    }
    if !valid_password(&c.password) {
        return Err(ProtocolError::bad_request("password must be 8..256 bytes"));
    }
    Ok(c)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ProtocolError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProtocolError::internal(format!("worker failed: {e}")))
}

fn shutting_down() -> ProtocolError {
    ProtocolError::unavailable("node is shutting down")
}

async fn register(State(gw): State<Arc<Gateway>>, body: axum::body::Bytes) -> Response {
    match do_register(&gw, &body).await {
        Ok(user_id) => (StatusCode::CREATED, Json(json!({ "user_id": user_id }))).into_response(),
        Err(e) if e.message == "username is taken" => error_json(StatusCode::CONFLICT, &e),
        Err(e) => error_json(status_of(&e), &e),
    }
}

/// The user record goes to the user id's shard first, then the username is claimed in the
/// username's shard: a crash in between leaves an unreachable record, never a name that
/// points nowhere.
async fn do_register(gw: &Gateway, body: &[u8]) -> Result<String, ProtocolError> {
    let c = parse_credentials(body)?;
    let name_group = gw.shard_map.shard_for_username(&c.username);
    if gw.read_username(&c.username).await?.is_some() {
        return Err(ProtocolError::bad_request("username is taken"));
    }
    let password = c.password.clone();
    let _permit = gw
        .password_hashing
        .acquire()
        .await
        .map_err(|_| shutting_down())?;
    let hash = blocking(move || hash_password(&password))
        .await?
        .map_err(|e| ProtocolError::internal(e.to_string()))?;
    let user_id = ulid::Ulid::new().to_string();
    let user_group = gw.shard_map.shard_for_user(&user_id);
    gw.write_shard(
        user_group,
        ShardOp::CreateUser {
            user_id: user_id.clone(),
            username: c.username.clone(),
            password_hash: hash,
            ts: now_ms(),
        },
    )
    .await?;
    let claim = ShardOp::ClaimUsername {
        username: c.username,
        user_id: user_id.clone(),
    };
    match gw.write_shard(name_group, claim).await {
        Ok(_) => Ok(user_id),
        Err(e) if e.code == ErrorCode::BadRequest => Err(ProtocolError::from(Rejection::Conflict(
            "username is taken".into(),
        ))),
        Err(e) => Err(e),
    }
}

async fn login(State(gw): State<Arc<Gateway>>, body: axum::body::Bytes) -> Response {
    match do_login(&gw, &body).await {
        Ok(v) => (StatusCode::OK, Json(v)).into_response(),
        Err(e) => error_json(status_of(&e), &e),
    }
}

async fn do_login(gw: &Gateway, body: &[u8]) -> Result<serde_json::Value, ProtocolError> {
    let denied = || ProtocolError::unauthorized("wrong username or password");
    let c = parse_credentials(body).map_err(|_| denied())?;
    let user_id = gw.read_username(&c.username).await?.ok_or_else(denied)?;
    let record = gw.read_user(&user_id).await?.ok_or_else(denied)?;
    let password = c.password;
    let _permit = gw
        .password_hashing
        .acquire()
        .await
        .map_err(|_| shutting_down())?;
    let ok = blocking(move || verify_password(&password, &record.password_hash)).await?;
    if !ok {
        return Err(denied());
    }
    let (token, expires_at) = gw
        .tokens
        .issue(&user_id, now_ms())
        .map_err(|e| ProtocolError::internal(e.to_string()))?;
    Ok(json!({ "token": token, "user_id": user_id, "expires_at": expires_at }))
}

async fn health() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(gw): State<Arc<Gateway>>) -> StatusCode {
    if gw.cluster.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    let text = gw.metrics.render((gw.synced_writes)());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Admission control happens before the upgrade completes: over the node's connection
/// limit or new-connection rate, the socket is opened only to say `overloaded` and close.
async fn ws(State(gw): State<Arc<Gateway>>, upgrade: WebSocketUpgrade) -> Response {
    let limit = gw.limits.max_frame_bytes;
    // Small socket buffers: most connections are idle most of the time, and the library's
    // defaults (128 KiB each way) would cost a quarter MiB per connection.
    let upgrade = upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES);
    let admitted = gw
        .connect_rate
        .check(&(), Instant::now())
        .map_err(|wait| wait.max(1))
        .and_then(|()| {
            gw.connections
                .clone()
                .try_acquire_owned()
                .map_err(|_| ADMISSION_RETRY_AFTER_MS)
        });
    upgrade.on_upgrade(move |mut socket| async move {
        match admitted {
            Ok(permit) => session::run(gw, socket, permit).await,
            Err(retry_after_ms) => {
                gw.metrics.error(ErrorCode::Overloaded);
                let frame = ServerFrame::error(
                    None,
                    ProtocolError::overloaded("node is at its connection limit", retry_after_ms),
                );
                let _ = socket
                    .send(axum::extract::ws::Message::Text(frame.to_json().into()))
                    .await;
                let _ = socket.send(axum::extract::ws::Message::Close(None)).await;
            }
        }
    })
}
