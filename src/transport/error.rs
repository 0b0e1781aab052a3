//! The transport's error type. Callers (Raft networking) mostly care about the split between
//! "peer not reachable right now" (retry later), "timed out" and "peer said no" (a bug or a
//! misrouted message, not worth retrying blindly).

/// Why a transport operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached: resolution, dialing or the connection failed (or the
    /// peer is blocked by fault injection, or is inside its reconnect backoff).
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The whole call did not complete within its timeout.
    #[error("timed out")]
    Timeout,
    /// The peer received the request but refused it (wrong cluster, wrong target node,
    /// certificate/sender mismatch, missing client certificate, oversized frame, ...).
    #[error("refused by peer: {0}")]
    Refused(String),
    /// A frame to send would be over the frame limit (nothing was sent): the caller may
    /// retry with a smaller payload.
    #[error("frame of {bytes} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { bytes: usize, max: usize },
    /// A frame could not be encoded/decoded or violated the framing rules.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Certificates, keys or the TLS handshake were rejected.
    #[error("tls error: {0}")]
    Tls(String),
    /// A socket or stream failed below the protocol (bind failure, stream reset, ...).
    #[error("io error: {0}")]
    Io(String),
    /// Joining a cluster failed (bad token, admitter refused, malformed grant).
    #[error("join failed: {0}")]
    Join(String),
}
