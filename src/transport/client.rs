//! Client-side primitives shared by calls and joins: resolving, dialing, one request/reply
//! round trip on a fresh stream, and mapping quinn errors to [`TransportError`].

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::frame::{read_frame, WireReply, FRAME_BYTES_MAX};
use super::tls::SERVER_NAME;
use super::TransportError;

/// Application close code: the server closed the connection because it refused the peer.
pub(crate) const CLOSE_REFUSED: u32 = 1;
/// Application close code: orderly close (shutdown, join finished).
pub(crate) const CLOSE_DONE: u32 = 0;
/// QUIC carries TLS alerts as transport error codes 0x100..=0x1ff.
const CRYPTO_ERROR_CODES: std::ops::Range<u64> = 0x100..0x200;

/// Resolves `host:port`, preferring an address of the family our socket is bound to (an
/// IPv4-bound endpoint cannot send to an IPv6 address, and `localhost` often resolves to ::1
/// first).
pub(crate) async fn resolve(addr: &str, local: SocketAddr) -> Result<SocketAddr, TransportError> {
    let candidates: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| TransportError::Unreachable(format!("resolve {addr}: {e}")))?
        .collect();
    candidates
        .iter()
        .find(|a| a.is_ipv4() == local.is_ipv4())
        .or(candidates.first())
        .copied()
        .ok_or_else(|| TransportError::Unreachable(format!("resolve {addr}: no addresses")))
}

/// Opens a connection, bounding the handshake by `timeout`.
pub(crate) async fn dial(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<quinn::Connection, TransportError> {
    let connecting = endpoint
        .connect_with(config, addr, SERVER_NAME)
        .map_err(|e| TransportError::Unreachable(format!("connect {addr}: {e}")))?;
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(connection_error(&e)),
        Err(_) => Err(TransportError::Unreachable(format!(
            "connect {addr}: no handshake within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// One call: open a stream, send `frame`, finish, read one reply frame.
pub(crate) async fn round_trip<Resp: DeserializeOwned>(
    conn: &quinn::Connection,
    frame: &[u8],
) -> Result<WireReply<Resp>, TransportError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| connection_error(&e))?;
    let written = send.write_all(frame).await;
    if written.is_ok() {
        // Fails only if the stream is already gone; reading the reply reports why.
        let _ = send.finish();
    }
    // Read even if writing failed: a server that refuses a frame (e.g. too large) stops our
    // stream but still sends its reason.
    match read_frame(&mut recv, FRAME_BYTES_MAX).await {
        Ok(reply) => Ok(reply),
        Err(read_err) => Err(match (conn.close_reason(), written) {
            (Some(closed), _) => connection_error(&closed),
            (None, Err(write_err)) => TransportError::Io(format!("write: {write_err}")),
            (None, Ok(())) => read_err,
        }),
    }
}

/// Maps why a connection ended: TLS alerts → `Tls`, deliberate refusals → `Refused`,
/// everything else (timeouts, resets, closes) → `Unreachable`.
pub(crate) fn connection_error(e: &quinn::ConnectionError) -> TransportError {
    use quinn::ConnectionError as E;
    match e {
        E::TransportError(t) if CRYPTO_ERROR_CODES.contains(&u64::from(t.code)) => {
            TransportError::Tls(e.to_string())
        }
        E::ConnectionClosed(c) if CRYPTO_ERROR_CODES.contains(&u64::from(c.error_code)) => {
            TransportError::Tls(e.to_string())
        }
        E::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(CLOSE_REFUSED) => {
            TransportError::Refused(String::from_utf8_lossy(&c.reason).into_owned())
        }
        _ => TransportError::Unreachable(e.to_string()),
    }
}
