//! Operator endpoints on the client port.
//!
//! - `GET /admin/status`: every node's view of its replicas (leaders, voters, learners, log
//!   and applied indexes, replication lag), asked over the peer transport.
//! - `GET /admin/checksum`: this node's per-group checksum of state-machine data with the
//!   applied index (replicas at the same applied index must agree).
//! - `GET /admin/shard?conversation_id=<id>`: the shard group a conversation hashes to (for
//!   tools that report per shard, like the jepsen checker's availability).
//! - `POST /admin/leave` (`Authorization: Bearer <join token>`): drains this node — its
//!   replicas move away first — and then stops it.
//! - `POST /admin/faults` (same auth; only when `[testing] fault_injection = true`): blocks,
//!   delays or heals peer links of this node's transport, for tests.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::Gateway;
use crate::shard::command::NodeState;

/// Time to wait for one peer's status.
pub const PEER_STATUS_TIMEOUT_MS: u64 = 1_000;

fn authorized(gw: &Gateway, headers: &HeaderMap) -> bool {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    !gw.join_token.is_empty() && given == Some(gw.join_token.as_str())
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({"code": "forbidden", "message": "admin requests need the cluster's join token as a bearer token"})),
    )
        .into_response()
}

pub async fn status(State(gw): State<Arc<Gateway>>) -> Response {
    let c = &gw.cluster;
    let meta = c.meta();
    let mut nodes = Vec::new();
    let mut statuses = Vec::new();
    for n in meta.nodes.values() {
        nodes.push(json!({
            "id": n.node_id,
            "client_addr": n.client_addr,
            "peer_addr": n.peer_addr,
            "state": format!("{:?}", n.state).to_lowercase(),
        }));
        if n.state == NodeState::Left {
            continue;
        }
        let timeout = Duration::from_millis(PEER_STATUS_TIMEOUT_MS);
        match c.peer_status(n.node_id, timeout).await {
            Ok(s) => {
                statuses.push(json!({"node_id": n.node_id, "reachable": true, "groups": s.groups}))
            }
            Err(e) => statuses
                .push(json!({"node_id": n.node_id, "reachable": false, "error": e.to_string()})),
        }
    }
    let own = c.local_status();
    Json(json!({
        "node_id": c.node_id,
        "cluster_id": c.cluster_id,
        "placement_version": meta.placement_version,
        "replicas": meta.replicas,
        "nodes": nodes,
        "groups": own.groups,
        "node_statuses": statuses,
    }))
    .into_response()
}

#[derive(Deserialize)]
pub struct ShardParams {
    conversation_id: String,
}

pub async fn shard(
    State(gw): State<Arc<Gateway>>,
    axum::extract::Query(p): axum::extract::Query<ShardParams>,
) -> Response {
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

pub async fn checksum(State(gw): State<Arc<Gateway>>) -> Response {
    let c = gw.cluster.clone();
    let store = gw.store.clone();
    let groups: Vec<(u32, u64)> = c
        .local_status()
        .groups
        .iter()
        .filter(|g| g.holds(c.node_id))
        .map(|g| (g.group, g.applied))
        .collect();
    let sums = tokio::task::spawn_blocking(move || {
        groups
            .into_iter()
            .map(|(group, applied)| {
                store
                    .sm_checksum(group)
                    .map(|(sum, keys)| json!({"group": group, "applied_index": applied, "checksum": format!("{sum:016x}"), "keys": keys}))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await;
    match sums {
        Ok(Ok(groups)) => Json(json!({"node_id": c.node_id, "groups": groups})).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

pub async fn leave(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if !authorized(&gw, &headers) {
        return forbidden();
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
pub struct FaultRequest {
    /// "block", "unblock", "delay" or "heal".
    pub action: String,
    #[serde(default)]
    pub peer: u64,
    #[serde(default)]
    pub delay_ms: u64,
}

pub async fn faults(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !gw.fault_injection || !authorized(&gw, &headers) {
        return forbidden();
    }
    let Ok(req) = serde_json::from_slice::<FaultRequest>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad fault request").into_response();
    };
    let Some(t) = gw.cluster.transport() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no transport").into_response();
    };
    let f = t.faults();
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
pub async fn invites(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    axum::extract::Query(p): axum::extract::Query<super::accounts::InviteParams>,
) -> Response {
    if !authorized(&gw, &headers) {
        return forbidden();
    }
    super::accounts::create_invite(&gw, p).await
}
