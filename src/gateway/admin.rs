//! Operator endpoints on the client port. Every one needs `Authorization: Bearer <admin
//! token>` (the cluster's admin token, in `<data-dir>/admin-token` of every node; compared in
//! constant time); without it the answer is 401 and nothing else happens. The join token is
//! never accepted here.
//!
//! - `GET /admin/status`: every node's view of its replicas (leaders, voters, learners, log
//!   and applied indexes, replication lag), asked over the peer transport.
//! - `GET /admin/checksum`: this node's per-group checksum of state-machine data with the
//!   applied index (replicas at the same applied index must agree), as last computed by a
//!   background task (`computed_at_ms`, `age_ms`; see [`super::checksum`]).
//! - `GET /admin/shard?conversation_id=<id>`: the shard group a conversation hashes to (for
//!   tools that report per shard, like the jepsen checker's availability).
//! - `POST /admin/leave`: drains this node — its replicas move away first — and then stops
//!   it. A node that left never comes back under its id (its certificate is refused).
//! - `POST /admin/rotate-join-token`: replaces the cluster's join secret through the meta
//!   group; answers with the new join token. The old token admits nobody afterwards.
//! - `POST /admin/faults` (only when `[testing] fault_injection = true`): blocks, delays or
//!   heals peer links of this node's transport, for tests.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use chatnode_client::status::{AdminStatus, MemberState, NodeEntry, NodeReport};

use super::Gateway;
use crate::cluster::command::{MetaOp, NodeState, Response as MetaResponse};

/// Time to wait for one peer's status.
pub(crate) const PEER_STATUS_TIMEOUT_MS: u64 = 1_000;
/// Suggested wait when no checksum has been computed yet.
pub(crate) const CHECKSUM_RETRY_AFTER_MS: u64 = 1_000;

/// Whether the request carries the cluster's admin token (constant-time comparison).
pub(crate) fn authorized(gw: &Gateway, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) => gw.secrets.admin_matches(t),
        None => false,
    }
}

/// The answer to a request without the admin token.
pub(crate) fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({
            "type": "error",
            "code": "unauthorized",
            "message": "admin requests need the cluster's admin token (<data-dir>/admin-token) as a bearer token",
            "retryable": false,
        })),
    )
        .into_response()
}

fn forbidden(message: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({"type": "error", "code": "forbidden", "message": message, "retryable": false})),
    )
        .into_response()
}

pub(crate) async fn status(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if !authorized(&gw, &headers) {
        return unauthorized();
    }
    let c = &gw.cluster;
    let meta = c.meta();
    let mut nodes = Vec::new();
    let mut statuses = Vec::new();
    for n in meta.nodes.values() {
        nodes.push(NodeEntry {
            id: n.node_id,
            client_addr: n.client_addr.clone(),
            peer_addr: n.peer_addr.clone(),
            state: member_state(n.state),
        });
        if n.state == NodeState::Left {
            continue;
        }
        let timeout = Duration::from_millis(PEER_STATUS_TIMEOUT_MS);
        statuses.push(match c.peer_status(n.node_id, timeout).await {
            Ok(s) => NodeReport::reachable(n.node_id, s.groups),
            Err(e) => NodeReport::unreachable(n.node_id, e.to_string()),
        });
    }
    let status = AdminStatus {
        node_id: c.node_id,
        cluster_id: c.cluster_id.clone(),
        placement_version: meta.placement_version,
        replicas: meta.replicas.clone(),
        nodes,
        groups: c.local_status().groups,
        node_statuses: statuses,
    };
    // Through a Value, whose map sorts keys: the answer keeps the bytes it had when it was
    // built with `json!` (fields and `replicas` keys in string order).
    match serde_json::to_value(&status) {
        Ok(v) => Json(v).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"type": "error", "code": "internal", "message": e.to_string(), "retryable": true})),
        )
            .into_response(),
    }
}

fn member_state(s: NodeState) -> MemberState {
    match s {
        NodeState::Active => MemberState::Active,
        NodeState::Leaving => MemberState::Leaving,
        NodeState::Left => MemberState::Left,
    }
}

#[derive(Deserialize)]
pub(crate) struct ShardParams {
    conversation_id: String,
}

pub(crate) async fn shard(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    p: Result<axum::extract::Query<ShardParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !authorized(&gw, &headers) {
        return unauthorized();
    }
    let Ok(axum::extract::Query(p)) = p else {
        let message = "conversation_id is required";
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"code": "bad_request", "message": message})),
        )
            .into_response();
    };
    if !crate::protocol::is_valid_id(&p.conversation_id) {
        let message = "conversation_id must be a valid id";
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"code": "bad_request", "message": message})),
        )
            .into_response();
    }
    let group = gw.shard_map.shard_for_conversation(&p.conversation_id);
    Json(json!({"conversation_id": p.conversation_id, "group": group})).into_response()
}

/// The last checksums of this node's replicas; never scans on the request path.
pub(crate) async fn checksum(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if !authorized(&gw, &headers) {
        return unauthorized();
    }
    let cache = &gw.checksums;
    let Some(last) = cache.request() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({
                "type": "error",
                "code": "unavailable",
                "message": "no checksum computed yet",
                "retryable": true,
                "retry_after_ms": CHECKSUM_RETRY_AFTER_MS,
            })),
        )
            .into_response();
    };
    match &last.groups {
        Ok(groups) => Json(json!({
            "node_id": gw.cluster.node_id,
            "computed_at_ms": last.computed_at_ms,
            "age_ms": super::now_ms().saturating_sub(last.computed_at_ms),
            "interval_ms": cache.interval_ms(),
            "scans": cache.scans(),
            "groups": groups,
        }))
        .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.clone()).into_response(),
    }
}

pub(crate) async fn leave(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if !authorized(&gw, &headers) {
        return unauthorized();
    }
    let controller = gw.controller.clone();
    let stop = gw.stop.clone();
    tokio::spawn(async move {
        match controller.leave().await {
            Ok(()) => {
                tracing::info!("left the cluster; stopping");
                stop.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, "leave failed"),
        }
    });
    (
        StatusCode::ACCEPTED,
        Json(json!({"status": "leaving", "node_id": gw.cluster.node_id})),
    )
        .into_response()
}

#[derive(Deserialize)]
pub(crate) struct FaultRequest {
    /// "block", "unblock", "delay" or "heal".
    pub(crate) action: String,
    #[serde(default)]
    pub(crate) peer: u64,
    #[serde(default)]
    pub(crate) delay_ms: u64,
}

pub(crate) async fn faults(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&gw, &headers) {
        return unauthorized();
    }
    if !gw.fault_injection {
        return forbidden("fault injection is off ([testing] fault_injection)");
    }
    let Ok(req) = serde_json::from_slice::<FaultRequest>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad fault request").into_response();
    };
    let f = gw.cluster.transport().faults();
    match req.action.as_str() {
        "block" => f.block(req.peer),
        "unblock" => f.unblock(req.peer),
        "delay" => f.set_delay_ms(req.peer, req.delay_ms),
        "heal" => f.heal(),
        _ => return (StatusCode::BAD_REQUEST, "unknown action").into_response(),
    }
    Json(json!({"ok": true})).into_response()
}

/// `POST /admin/invites?uses=<n>&ttl_secs=<s>` (same auth): creates an invite code for
/// `[accounts] registration = "invite"` (`chatnode invite`).
pub(crate) async fn invites(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    axum::extract::Query(p): axum::extract::Query<super::accounts::InviteParams>,
) -> Response {
    if !authorized(&gw, &headers) {
        return unauthorized();
    }
    super::accounts::create_invite(&gw, p).await
}

/// Replaces the join secret through the meta group (the new secret is chosen here, so apply
/// stays deterministic); every node takes it from the meta state and rewrites its
/// `<data-dir>/join-token`. Answers with the new join token.
pub(crate) async fn rotate_join_token(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&gw, &headers) {
        return unauthorized();
    }
    let secret = crate::cluster::secrets::generate_join_secret();
    let op = MetaOp::RotateJoinSecret {
        secret: secret.clone(),
    };
    match gw.cluster.meta_write(op).await {
        Ok(MetaResponse::MetaState { state, .. }) if state.secrets.join_secret == secret => {
            let epoch = state.secrets.join_epoch;
            gw.cluster.set_meta(state);
            let token = gw.secrets.join_token();
            tracing::info!(epoch, "join token rotated");
            Json(json!({"join_token": token.to_string(), "join_epoch": epoch})).into_response()
        }
        Ok(_) => (
            StatusCode::CONFLICT,
            Json(json!({
                "type": "error",
                "code": "unavailable",
                "message": "the cluster's secrets are not initialized yet; retry",
                "retryable": true,
            })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "type": "error",
                "code": "unavailable",
                "message": e.to_string(),
                "retryable": true,
            })),
        )
            .into_response(),
    }
}
