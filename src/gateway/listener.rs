//! The client port's own accept loop (in place of `axum::serve`), so that a hostile internet
//! cannot hold the port:
//!
//! - every accepted socket gets `TCP_NODELAY` (replies are small frames; Nagle plus delayed
//!   ACKs would add up to 40 ms to some of them);
//! - a cap on the TCP connections held at once (`[limits] http_connections_max`) and on those
//!   of one source (`[limits] connections_per_ip`; an IPv4 address, or an IPv6 /64, since one
//!   IPv6 host commonly has a whole /64). A connection past either cap is answered
//!   `503 Service Unavailable` with `Retry-After` (to whatever request it sends first, a
//!   WebSocket upgrade included) and closed; at most [`REFUSALS_IN_FLIGHT_MAX`] refusals
//!   run at once, each within [`REFUSAL_TIMEOUT_MS`], and past that the socket is closed at
//!   once;
//! - HTTP/1.1 only (hyper), with a header-read timeout (`http_header_timeout_ms`: a
//!   request's head must arrive within it of the server starting to wait, which also bounds
//!   an idle keep-alive connection; slowloris), a request-body deadline
//!   ([`HTTP_BODY_TIMEOUT_MS`]) and an idle timeout (`http_idle_timeout_ms`: no byte moved
//!   either way); a TLS handshake must finish within the header timeout;
//! - TLS (rustls) when the node has a certificate ([`super::client_tls`]);
//! - the peer address reaches handlers as `ConnectInfo<SocketAddr>`;
//! - WebSocket upgrades work (`with_upgrades`); an upgraded connection keeps its connection
//!   permit until the WebSocket closes, and is no longer subject to the HTTP timeouts (the
//!   session has its own heartbeat).
//!
//! Graceful shutdown: the shutdown future stops the accept loop, every HTTP connection is
//! asked to finish its request and close, and [`SHUTDOWN_GRACE_MS`] later the rest are cut.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{header, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::config::Limits;

/// Connections past a cap being answered 503 at once; past this they are closed unanswered.
pub(crate) const REFUSALS_IN_FLIGHT_MAX: usize = 256;
/// The whole refusal (TLS handshake, request head, the 503) must fit in this long.
pub(crate) const REFUSAL_TIMEOUT_MS: u64 = 2_000;
/// `Retry-After` of a refusal, in seconds (HTTP's unit).
pub(crate) const REFUSAL_RETRY_AFTER_SECS: u64 = 1;
/// A request body must have arrived this long after its head (bodies here are ≤ 16 KiB).
pub(crate) const HTTP_BODY_TIMEOUT_MS: u64 = 10_000;
/// Largest request head hyper buffers (hyper's minimum is 8 KiB).
pub(crate) const HTTP_HEAD_BUFFER_BYTES_MAX: usize = 16 * 1024;
/// Pause after a failed `accept` (out of file descriptors): retrying at once would spin.
pub(crate) const ACCEPT_ERROR_PAUSE_MS: u64 = 100;
/// How long shutdown waits for HTTP connections to finish their request.
pub(crate) const SHUTDOWN_GRACE_MS: u64 = 5_000;
/// Bits of an IPv6 address that name one source for `connections_per_ip`.
pub(crate) const IPV6_SOURCE_PREFIX_BITS: u32 = 64;

/// The accept loop's bounds (from `[limits]`).
#[derive(Debug, Clone)]
pub(crate) struct ListenerLimits {
    pub(crate) connections_max: usize,
    pub(crate) connections_per_ip: usize,
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

impl From<&Limits> for ListenerLimits {
    fn from(l: &Limits) -> Self {
        ListenerLimits {
            connections_max: l.http_connections_max,
            connections_per_ip: l.connections_per_ip,
            header_timeout: Duration::from_millis(l.http_header_timeout_ms),
            idle_timeout: Duration::from_millis(l.http_idle_timeout_ms),
        }
    }
}

/// One source of connections for the per-IP cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u128),
}

fn source_of(ip: IpAddr) -> Source {
    match ip {
        IpAddr::V4(a) => Source::V4(u32::from(a)),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => Source::V4(u32::from(v4)),
            None => Source::V6(u128::from(a) >> (128 - IPV6_SOURCE_PREFIX_BITS)),
        },
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    NodeFull,
    SourceFull,
}

impl Refusal {
    fn message(self) -> &'static str {
        match self {
            Refusal::NodeFull => "node is at its connection limit",
            Refusal::SourceFull => "too many connections from this address",
        }
    }
}

/// Counts connections, globally and per source. The per-source map holds only sources with
/// a live connection, so it never has more entries than `connections_max`.
struct Admission {
    global: Arc<Semaphore>,
    per_source: Mutex<HashMap<Source, usize>>,
    per_source_max: usize,
    refusals: Arc<Semaphore>,
}

/// A connection's place under the caps; released when the socket (or the WebSocket it was
/// upgraded to) is dropped.
pub(crate) struct ConnectionPermit {
    _global: OwnedSemaphorePermit,
    source: Source,
    admission: Arc<Admission>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut map = self.admission.per_source.lock();
        if let Some(n) = map.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}

enum Admit {
    Yes(ConnectionPermit),
    Refuse(OwnedSemaphorePermit, Refusal),
    Close,
}

impl Admission {
    fn new(limits: &ListenerLimits) -> Arc<Self> {
        Arc::new(Admission {
            global: Arc::new(Semaphore::new(limits.connections_max)),
            per_source: Mutex::new(HashMap::new()),
            per_source_max: limits.connections_per_ip,
            refusals: Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT_MAX)),
        })
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Admit {
        let source = source_of(ip);
        let refused = match self.global.clone().try_acquire_owned() {
            Ok(global) => {
                let mut map = self.per_source.lock();
                let n = map.entry(source).or_insert(0);
                if *n < self.per_source_max {
                    *n += 1;
                    return Admit::Yes(ConnectionPermit {
                        _global: global,
                        source,
                        admission: self.clone(),
                    });
                }
                Refusal::SourceFull
            }
            Err(_) => Refusal::NodeFull,
        };
        match self.refusals.clone().try_acquire_owned() {
            Ok(slot) => Admit::Refuse(slot, refused),
            Err(_) => Admit::Close,
        }
    }
}

/// When a byte last moved on a connection.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// The socket (plain or TLS) with its connection permit and activity clock.
struct Tracked<IO> {
    inner: IO,
    activity: Arc<Activity>,
    _permit: ConnectionPermit,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A request body that fails once its deadline passes (a body sent one byte at a time).
struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err("request body timed out".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn http1(header_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(HTTP_HEAD_BUFFER_BYTES_MAX);
    b
}

/// Serves `app` on `listener` until `shutdown` resolves (see the module doc).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let admission = Admission::new(&limits);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                        continue;
                    }
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY");
                }
                match admission.admit(peer.ip()) {
                    Admit::Yes(permit) => {
                        tasks.spawn(connection(
                            stream,
                            peer,
                            permit,
                            app.clone(),
                            acceptor.clone(),
                            limits.clone(),
                            stop_rx.clone(),
                        ));
                    }
                    Admit::Refuse(slot, why) => {
                        tracing::debug!(%peer, reason = why.message(), "connection refused");
                        tasks.spawn(refuse(stream, acceptor.clone(), why, slot));
                    }
                    Admit::Close => drop(stream),
                }
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_millis(SHUTDOWN_GRACE_MS), drain)
        .await
        .is_err()
    {
        tracing::info!(
            left = tasks.len(),
            "closing HTTP connections still open at shutdown"
        );
        tasks.shutdown().await;
    }
    Ok(())
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    permit: ConnectionPermit,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ListenerLimits,
    stop: watch::Receiver<bool>,
) {
    let activity = Activity::new();
    match tls {
        None => {
            let io = Tracked {
                inner: stream,
                activity: activity.clone(),
                _permit: permit,
            };
            drive(io, peer, app, &limits, activity, stop).await;
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
            let stream = match handshake.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let io = Tracked {
                inner: stream,
                activity: activity.clone(),
                _permit: permit,
            };
            drive(io, peer, app, &limits, activity, stop).await;
        }
    }
}

/// Runs hyper on one connection until it closes, is upgraded, idles out or shutdown.
async fn drive<IO>(
    io: IO,
    peer: SocketAddr,
    app: Router,
    limits: &ListenerLimits,
    activity: Arc<Activity>,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let deadline = Instant::now() + Duration::from_millis(HTTP_BODY_TIMEOUT_MS);
        let req = req.map(|inner| {
            Body::new(TimedBody {
                inner,
                deadline,
                sleep: None,
            })
        });
        let mut app = app.clone();
        async move { app.call(req).await }
    });
    let conn = http1(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let idle_at = activity.last() + limits.idle_timeout;
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            _ = tokio::time::sleep_until(idle_at) => {
                if activity.last() + limits.idle_timeout <= Instant::now() {
                    tracing::debug!(%peer, "HTTP connection idle; closing");
                    return;
                }
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The answer to a connection past a cap.
fn overloaded(why: Refusal) -> Response<Body> {
    let body = serde_json::json!({
        "type": "error",
        "code": "overloaded",
        "message": why.message(),
        "retryable": true,
        "retry_after_ms": REFUSAL_RETRY_AFTER_SECS * 1000,
    })
    .to_string();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = resp.headers_mut();
    h.insert(header::RETRY_AFTER, REFUSAL_RETRY_AFTER_SECS.into());
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}

/// Reads one request head and answers 503 + `Retry-After`, all within
/// [`REFUSAL_TIMEOUT_MS`]; holds a refusal slot meanwhile.
async fn refuse(
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    why: Refusal,
    _slot: OwnedSemaphorePermit,
) {
    let limit = Duration::from_millis(REFUSAL_TIMEOUT_MS);
    let answer = async move {
        let service = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
            Ok::<_, Infallible>(overloaded(why))
        });
        let mut builder = http1(limit);
        builder.keep_alive(false);
        match tls {
            None => {
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
            Some(acceptor) => {
                if let Ok(s) = acceptor.accept(stream).await {
                    let _ = builder.serve_connection(TokioIo::new(s), service).await;
                }
            }
        }
    };
    let _ = tokio::time::timeout(limit, answer).await;
}

/// The client port's routes without `/metrics` (served on `metrics_listen` instead).
pub(crate) fn without_metrics(app: Router) -> Router {
    app.layer(axum::middleware::from_fn(
        |req: axum::extract::Request, next: axum::middleware::Next| async move {
            if req.uri().path() == "/metrics" {
                return StatusCode::NOT_FOUND.into_response();
            }
            next.run(req).await
        },
    ))
}

#[cfg(test)]
mod tests;
