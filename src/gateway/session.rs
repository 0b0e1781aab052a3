//! One WebSocket connection: authentication, decoding, pipelined requests and the bounded
//! outbound queue drained by a writer task.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::handlers::Session;
use super::{now_ms, Gateway};
use crate::delivery::hub::OutFrame;
use crate::delivery::out_queue::{out_queue, OutQueue, OutReceiver, SendError};
use crate::protocol::{
    decode_client_frame, ClientFrame, ErrorCode, ProtocolError, RequestId, ServerFrame,
};
use crate::shard::command::ShardOp;

/// The first frame must be `auth`, within this long.
pub(crate) const AUTH_TIMEOUT_MS: u64 = 10_000;
/// Requests of one connection being handled at once; more wait (backpressure on the socket).
pub(crate) const REQUESTS_IN_FLIGHT_PER_CONN_MAX: usize = 256;
/// The server pings an idle connection this often...
pub(crate) const HEARTBEAT_INTERVAL_MS: u64 = 20_000;
/// ...and closes it when nothing (not even a pong) came for this long; presence then counts
/// the user's device as gone.
pub(crate) const HEARTBEAT_TIMEOUT_MS: u64 = 60_000;
/// Frames the writer sends before one flush.
const WRITE_BATCH_FRAMES_MAX: usize = 64;
/// Requests of one connection that may build a large reply (sync, history,
/// list_conversations, subscribe_presence; each up to `REPLY_BYTES_MAX`) at once, from their
/// read until the reply is queued: with the byte-bounded queue, this bounds what a client
/// that does not read can make the node hold (4 MiB queued + 4 replies being built).
pub(crate) const LARGE_REPLIES_IN_FLIGHT_PER_CONN_MAX: usize = 4;

fn queue(tx: &OutQueue, frame: &ServerFrame) -> bool {
    tx.try_send(OutFrame::Text(Arc::from(frame.to_json())))
        .is_ok()
}

/// How long a reply may wait for room in a full outbound queue before the client counts as
/// too slow and is disconnected (it reconnects and syncs).
pub(crate) const REPLY_QUEUE_WAIT_MS: u64 = 5_000;

/// Queues a reply, waiting a bounded time for room; a client that does not read is killed.
async fn queue_reply(session: &Session, frame: &ServerFrame) -> bool {
    let item = OutFrame::Text(Arc::from(frame.to_json()));
    let wait = Duration::from_millis(REPLY_QUEUE_WAIT_MS);
    match session.tx.send_timeout(item, wait).await {
        Ok(()) => true,
        Err(SendError::Closed) => false,
        Err(SendError::TimedOut) => {
            session.kill.notify_one();
            false
        }
    }
}

/// Drains the outbound queue into the socket, flushing once per batch.
async fn writer(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: OutReceiver,
) {
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut n = 0;
        while let Some(frame) = next.take() {
            match frame {
                OutFrame::Text(t) => {
                    if sink.feed(Message::Text(t.as_ref().into())).await.is_err() {
                        return;
                    }
                }
                OutFrame::Ping => {
                    if sink.feed(Message::Ping(Default::default())).await.is_err() {
                        return;
                    }
                }
                OutFrame::Close => {
                    let _ = sink.send(Message::Close(None)).await;
                    return;
                }
            }
            n += 1;
            if n < WRITE_BATCH_FRAMES_MAX {
                next = rx.try_recv();
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// Runs one connection to its end. `_permit` holds a slot of the node's connection limit.
pub(crate) async fn run(gw: Arc<Gateway>, socket: WebSocket, _permit: OwnedSemaphorePermit) {
    let (sink, mut stream) = socket.split();
    let (tx, rx) = out_queue(
        gw.limits.connection_send_queue_max,
        gw.limits.connection_send_queue_bytes,
    );
    let writer_task = tokio::spawn(writer(sink, rx));
    gw.metrics.connections.inc();
    if let Some((session, claims)) = authenticate(&gw, &mut stream, &tx).await {
        serve(&gw, &session, &claims, &mut stream).await;
        gw.hub
            .unregister(&session.user_id, session.conn_id, now_ms());
    }
    gw.metrics.connections.dec();
    let _ = tx.try_send(OutFrame::Close);
    drop(tx);
    let mut writer_task = writer_task;
    if tokio::time::timeout(Duration::from_millis(REPLY_QUEUE_WAIT_MS), &mut writer_task)
        .await
        .is_err()
    {
        // A peer that does not read must not keep the socket (and its frames) alive.
        writer_task.abort();
    }
}

/// Reads the next text frame; `Err` carries the error to answer (and whether to close).
async fn next_text(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    last_heard: &mut tokio::time::Instant,
) -> Option<Result<String, (ProtocolError, bool)>> {
    loop {
        let msg = stream.next().await?;
        *last_heard = tokio::time::Instant::now();
        return Some(match msg {
            Ok(Message::Text(t)) => Ok(t.as_str().to_string()),
            Ok(Message::Binary(b)) => match String::from_utf8(b.to_vec()) {
                Ok(s) => Ok(s),
                Err(_) => Err((ProtocolError::bad_request("invalid UTF-8"), false)),
            },
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(Message::Close(_)) => return None,
            Err(e) => return read_error(e).map(Err),
        });
    }
}

/// What a failed socket read means for the client: an invalid UTF-8 text frame is answered
/// and the connection kept; a frame over the size limit is answered, then the connection
/// closed; any other error (reset, protocol violation) ends the connection silently (`None`).
fn read_error(e: axum::Error) -> Option<(ProtocolError, bool)> {
    match e.into_inner().downcast::<tungstenite::Error>().map(|e| *e) {
        Ok(tungstenite::Error::Utf8(_)) => Some((
            ProtocolError::bad_request("invalid UTF-8 in a text frame"),
            false,
        )),
        Ok(tungstenite::Error::Capacity(_)) => Some((
            ProtocolError::too_large("frame is over the size limit"),
            true,
        )),
        _ => None,
    }
}

/// Waits (at most `AUTH_TIMEOUT_MS`) for an `auth` frame whose token holds and registers the
/// connection; a refusal the client may retry is answered and the next frame awaited.
/// `None` closes the socket.
async fn authenticate(
    gw: &Arc<Gateway>,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    tx: &OutQueue,
) -> Option<(Session, super::auth::AccessClaims)> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(AUTH_TIMEOUT_MS);
    loop {
        let (id, token, device_id) = read_auth_frame(gw, stream, tx, deadline).await?;
        let claims = match verify_auth_token(gw, &token).await {
            Ok(c) => c,
            Err((e, close)) => {
                answer_error(gw, tx, id, e);
                if close {
                    return None;
                }
                continue;
            }
        };
        match register_session(gw, tx, id.clone(), claims.user_id.clone(), device_id) {
            Ok(session) => return Some((session, claims)),
            Err(e) => answer_error(gw, tx, id, e),
        }
    }
}

/// Counts `e` and queues it (without waiting) as the answer to request `id`.
fn answer_error(gw: &Gateway, tx: &OutQueue, id: Option<RequestId>, e: ProtocolError) {
    gw.metrics.error(e.code);
    queue(tx, &ServerFrame::error(id, e));
}

/// Reads the next frame before `deadline`: its id, token and device id when it is an `auth`;
/// `None` (after answering what was wrong, if anything was read) ends the connection.
async fn read_auth_frame(
    gw: &Gateway,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    tx: &OutQueue,
    deadline: tokio::time::Instant,
) -> Option<(Option<RequestId>, String, String)> {
    let mut heard = tokio::time::Instant::now();
    let text = match tokio::time::timeout_at(deadline, next_text(stream, &mut heard)).await {
        Err(_) | Ok(None) => return None,
        Ok(Some(Err((e, _)))) => {
            answer_error(gw, tx, None, e);
            return None;
        }
        Ok(Some(Ok(t))) => t,
    };
    let decoded = decode_client_frame(&text, &gw.text_limits);
    let id = decoded.id;
    match decoded.frame {
        Ok(ClientFrame::Auth { token, device_id }) => Some((id, token, device_id)),
        Ok(_) => {
            let e = ProtocolError::unauthorized("the first frame must be auth");
            answer_error(gw, tx, id, e);
            None
        }
        Err(e) => {
            // The first frame must be a valid `auth`: anything else closes the socket.
            answer_error(gw, tx, id, e);
            None
        }
    }
}

/// The claims of an `auth` frame's token (an external issuer's user gets its record here);
/// `Err` carries the error to answer and whether to close (`false`: the client may retry).
async fn verify_auth_token(
    gw: &Gateway,
    token: &str,
) -> Result<super::auth::AccessClaims, (ProtocolError, bool)> {
    // accounts: signature, expiry, and the user's token epoch and session.
    match super::accounts::verify_ws_token(gw, token).await {
        Ok(c) => {
            if c.external {
                if let Err(e) = ensure_external_user(gw, &c.user_id).await {
                    return Err((e, false));
                }
            }
            Ok(c)
        }
        // The session could not be read (unavailable): the client may retry.
        Err(e) if e.code != ErrorCode::Unauthorized => Err((e, false)),
        Err(e) => Err((e, true)),
    }
}

/// Registers the connection with the hub, which queues `auth_ok` before any push; a user
/// with too many devices connected is refused (the client may retry).
fn register_session(
    gw: &Gateway,
    tx: &OutQueue,
    id: Option<RequestId>,
    user_id: String,
    device_id: String,
) -> Result<Session, ProtocolError> {
    let auth_ok = ServerFrame::AuthOk {
        id,
        user_id: user_id.clone(),
        device_id: device_id.clone(),
    };
    match gw
        .hub
        .register(&user_id, &device_id, tx.clone(), &auth_ok, now_ms())
    {
        Ok(handle) => Ok(Session {
            user_id,
            device_id,
            conn_id: handle.id,
            tx: tx.clone(),
            kill: handle.kill,
        }),
        Err(e) => Err(ProtocolError::rate_limited(e.to_string(), 1_000)),
    }
}

/// Users of an external issuer get a record on first sight, so others can add them.
async fn ensure_external_user(gw: &Gateway, user_id: &str) -> Result<(), ProtocolError> {
    let group = gw.shard_map.shard_for_user(user_id);
    if gw.read_user(user_id).await?.is_some() {
        return Ok(());
    }
    let op = ShardOp::CreateUser {
        user_id: user_id.to_string(),
        username: String::new(),
        password_hash: String::new(),
        ts: now_ms(),
    };
    gw.write_shard(group, op).await.map(|_| ())
}

/// The authenticated loop: decode, dispatch each request on its own task (bounded per
/// connection), answer errors with the request's id; ends on close, error or kill.
async fn serve(
    gw: &Arc<Gateway>,
    session: &Session,
    claims: &super::auth::AccessClaims,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
) {
    let mut liveness = Liveness::start(gw).await;
    let in_flight = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_PER_CONN_MAX));
    let large_in_flight = Arc::new(Semaphore::new(LARGE_REPLIES_IN_FLIGHT_PER_CONN_MAX));
    let session = Arc::new(Session {
        user_id: session.user_id.clone(),
        device_id: session.device_id.clone(),
        conn_id: session.conn_id,
        tx: session.tx.clone(),
        kill: session.kill.clone(),
    });
    loop {
        let text = match next_live_text(gw, &session, claims, stream, &mut liveness).await {
            None => return,
            Some(Err((e, close))) => {
                if !answer_bad_frame(gw, &session, None, e, close).await {
                    return;
                }
                continue;
            }
            Some(Ok(t)) => t,
        };
        let decoded = decode_client_frame(&text, &gw.text_limits);
        let id = decoded.id;
        let frame = match decoded.frame {
            Ok(f) => f,
            Err(e) => {
                let close =
                    e.code == ErrorCode::TooLarge && text.len() > gw.text_limits.max_frame_bytes;
                if !answer_bad_frame(gw, &session, id, e, close).await {
                    return;
                }
                continue;
            }
        };
        count_request(gw, &frame);
        let Some(permits) = acquire_permits(&session, &in_flight, &large_in_flight, &frame).await
        else {
            return;
        };
        spawn_request(gw.clone(), session.clone(), id, frame, permits);
    }
}

/// What keeps an authenticated connection alive: when anything was last heard from the
/// client, the heartbeat that pings it, and the periodic recheck of its token.
struct Liveness {
    last_heard: tokio::time::Instant,
    heartbeat: tokio::time::Interval,
    token_check: tokio::time::Interval,
}

impl Liveness {
    /// Both timers, their immediate first tick already taken.
    async fn start(gw: &Gateway) -> Liveness {
        // accounts: the token's expiry and session are checked again this often.
        let mut token_check = tokio::time::interval(gw.accounts.session_check_interval);
        token_check.tick().await;
        let last_heard = tokio::time::Instant::now();
        let mut heartbeat = tokio::time::interval(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
        heartbeat.tick().await;
        Liveness {
            last_heard,
            heartbeat,
            token_check,
        }
    }
}

/// Reads the next text frame (as `next_text`) while pinging an idle client and rechecking
/// its token; `None` ends the connection: closed, killed, silent past its heartbeat, or
/// its token no longer valid (the client is told first).
async fn next_live_text(
    gw: &Gateway,
    session: &Session,
    claims: &super::auth::AccessClaims,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    live: &mut Liveness,
) -> Option<Result<String, (ProtocolError, bool)>> {
    loop {
        tokio::select! {
            next = next_text(stream, &mut live.last_heard) => return next,
            _ = session.kill.notified() => {
                tracing::debug!(user = %session.user_id, "connection killed (replaced or too slow)");
                return None;
            }
            _ = live.heartbeat.tick() => {
                if live.last_heard.elapsed() > Duration::from_millis(HEARTBEAT_TIMEOUT_MS) {
                    tracing::debug!(user = %session.user_id, "connection silent past its heartbeat");
                    return None;
                }
                let _ = session.tx.try_send(OutFrame::Ping);
            }
            _ = live.token_check.tick() => {
                if let Err(e) = super::accounts::recheck_ws_token(gw, claims).await {
                    // Tells the client to refresh (or log in) before the socket closes.
                    tracing::debug!(user = %session.user_id, reason = %e.message, "closing: token no longer valid");
                    gw.metrics.error(e.code);
                    queue(&session.tx, &ServerFrame::error(None, e));
                    return None;
                }
            }
        }
    }
}

/// Answers a frame that could not be read or decoded; `false` when the connection ends:
/// the answer could not be queued, or `close`.
async fn answer_bad_frame(
    gw: &Gateway,
    session: &Session,
    id: Option<RequestId>,
    e: ProtocolError,
    close: bool,
) -> bool {
    gw.metrics.error(e.code);
    queue_reply(session, &ServerFrame::error(id, e)).await && !close
}

/// Counts the request in the `requests` metric, by type.
fn count_request(gw: &Gateway, frame: &ClientFrame) {
    gw.metrics
        .requests
        .get_or_create(&crate::metrics::TypeLabel {
            r#type: frame_type(frame),
        })
        .inc();
}

/// A request's slot among the connection's requests in flight, plus a large-reply slot
/// when its reply may be large; waits for them, `None` when the connection is killed.
async fn acquire_permits(
    session: &Session,
    in_flight: &Arc<Semaphore>,
    large_in_flight: &Arc<Semaphore>,
    frame: &ClientFrame,
) -> Option<(OwnedSemaphorePermit, Option<OwnedSemaphorePermit>)> {
    let permit = tokio::select! {
        permit = in_flight.clone().acquire_owned() => match permit {
            Ok(p) => p,
            Err(_) => return None,
        },
        _ = session.kill.notified() => return None,
    };
    // Taken here, so that a client flooding large requests waits on its own socket.
    let large_permit = if has_large_reply(frame) {
        tokio::select! {
            permit = large_in_flight.clone().acquire_owned() => match permit {
                Ok(p) => Some(p),
                Err(_) => return None,
            },
            _ = session.kill.notified() => return None,
        }
    } else {
        None
    };
    Some((permit, large_permit))
}

/// Handles one request on a task of its own, under a new trace id, and queues its replies
/// (or its error); `permits` are held until then.
fn spawn_request(
    gw: Arc<Gateway>,
    session: Arc<Session>,
    id: Option<RequestId>,
    frame: ClientFrame,
    permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
) {
    let (permit, large_permit) = permits;
    let trace_id = format!("{:016x}", rand::random::<u64>());
    let span = tracing::info_span!("request", trace_id = %trace_id, user = %session.user_id);
    // The trace id also travels in every frame this request sends to other nodes.
    tokio::spawn(crate::cluster::trace::scope(
        trace_id,
        async move {
            let _permit = permit;
            // Held until the reply is queued.
            let _large_permit = large_permit;
            let frames = match gw.handle(&session, id.clone(), frame).await {
                Ok(frames) => frames,
                Err(e) => {
                    gw.metrics.error(e.code);
                    if e.code == ErrorCode::Internal {
                        tracing::error!(error = %e.message, "internal error");
                    }
                    vec![ServerFrame::error(id, e)]
                }
            };
            for f in &frames {
                if !queue_reply(&session, f).await {
                    return;
                }
            }
        }
        .instrument(span),
    ));
}

/// Requests whose reply may be up to `REPLY_BYTES_MAX` (the others answer a few hundred bytes).
fn has_large_reply(f: &ClientFrame) -> bool {
    matches!(
        f,
        ClientFrame::Sync { .. }
            | ClientFrame::History { .. }
            | ClientFrame::ListConversations { .. }
            | ClientFrame::SubscribePresence { .. }
    )
}

fn frame_type(f: &ClientFrame) -> &'static str {
    match f {
        ClientFrame::Auth { .. } => "auth",
        ClientFrame::CreateConversation { .. } => "create_conversation",
        ClientFrame::Send { .. } => "send",
        ClientFrame::History { .. } => "history",
        ClientFrame::Sync { .. } => "sync",
        ClientFrame::ListConversations { .. } => "list_conversations",
        ClientFrame::AddMembers { .. } => "add_members",
        ClientFrame::RemoveMember { .. } => "remove_member",
        ClientFrame::SetRole { .. } => "set_role",
        ClientFrame::Leave { .. } => "leave",
        ClientFrame::Delivered { .. } => "delivered",
        ClientFrame::Read { .. } => "read",
        ClientFrame::Typing { .. } => "typing",
        ClientFrame::SubscribePresence { .. } => "subscribe_presence",
        ClientFrame::Edit { .. } => "edit",
        ClientFrame::Delete { .. } => "delete",
        ClientFrame::Ping => "ping",
    }
}

#[cfg(test)]
mod tests;
