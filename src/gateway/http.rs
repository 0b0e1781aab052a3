//! HTTP routes on the client port: accounts, health, readiness, metrics, and the WebSocket
//! upgrade with admission control.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::{session, Gateway};
use crate::protocol::{ErrorCode, ProtocolError, ServerFrame};

/// Largest HTTP request body (register/login are tiny).
pub(crate) const HTTP_BODY_BYTES_MAX: usize = 16 * 1024;
/// WebSocket read buffer per connection (grows for a large frame, up to the frame limit).
pub(crate) const WS_READ_BUFFER_BYTES: usize = 4 * 1024;
/// Bytes the WebSocket writer gathers before writing to the socket.
pub(crate) const WS_WRITE_BUFFER_BYTES: usize = 4 * 1024;
/// Suggested wait for a client refused by admission control.
pub(crate) const ADMISSION_RETRY_AFTER_MS: u64 = 1_000;

pub(crate) fn routes(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/register", post(super::accounts::register))
        .route("/v1/login", post(super::accounts::login))
        .route("/v1/refresh", post(super::accounts::refresh))
        .route("/v1/logout", post(super::accounts::logout))
        .route("/v1/logout_all", post(super::accounts::logout_all))
        .route("/admin/invites", post(super::admin::invites))
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

pub(crate) async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
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
