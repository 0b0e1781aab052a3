//! Wire format. Every message on a stream is a `u32` big-endian payload length followed by a
//! bincode-2 (serde, standard config) payload. A call is one bidirectional stream carrying one
//! request frame and one reply frame.
//!
//! All enums are externally tagged: bincode cannot encode flattened, untagged or internally
//! tagged serde representations.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::tls::NodeCredentials;
use super::{GroupId, NodeId, TransportError};

/// Largest payload accepted or sent. Larger lengths are rejected before any allocation.
pub(crate) const FRAME_BYTES_MAX: usize = 16 << 20;
const LEN_PREFIX_BYTES: usize = 4;

/// Routing and tracing data carried by every call.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub(crate) cluster_id: String,
    pub(crate) group: GroupId,
    pub(crate) from: NodeId,
    pub(crate) to: NodeId,
    pub(crate) trace_id: String,
}

/// What a client sends on a stream.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum WireRequest<Req> {
    Join(JoinRequest),
    Call { header: FrameHeader, body: Req },
}

/// What a server answers on a stream.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum WireReply<Resp> {
    Joined(Result<JoinGrant, String>),
    Reply(Resp),
    Refused(String),
}

/// A joiner's request: the token secret plus the addresses it will serve on.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct JoinRequest {
    pub(crate) secret: Vec<u8>,
    /// Where other nodes reach the joiner's transport (`host:port`).
    pub(crate) peer_addr: String,
    /// Where clients reach the joiner's gateway (`host:port`).
    pub(crate) client_addr: String,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("peer_addr", &self.peer_addr)
            .field("client_addr", &self.client_addr)
            .finish_non_exhaustive()
    }
}

/// What an admitted joiner receives: its identity plus everything needed to admit others.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct JoinGrant {
    pub(crate) cluster_id: String,
    pub(crate) node_id: NodeId,
    pub(crate) credentials: NodeCredentials,
    /// The cluster CA key, so that every member can issue certificates to later joiners.
    pub(crate) ca_key_pem: String,
    /// The join secret, so that every member can check later joiners' tokens.
    pub(crate) join_secret: Vec<u8>,
    /// Opaque application data from the [`super::JoinAdmitter`] (e.g. the member list).
    pub(crate) app: Vec<u8>,
}

impl std::fmt::Debug for JoinGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The CA key and join secret never go to logs.
        f.debug_struct("JoinGrant")
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .field("app_bytes", &self.app.len())
            .finish_non_exhaustive()
    }
}

/// Bincode configuration. The limit caps how many bytes a decoded length field may claim, so
/// a hostile length inside a frame cannot make bincode pre-allocate more than a frame's worth.
fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<FRAME_BYTES_MAX>()
}

/// Encodes `msg` as a complete frame (length prefix included), in one allocation.
pub(crate) fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, TransportError> {
    let mut buf = vec![0u8; LEN_PREFIX_BYTES];
    bincode::serde::encode_into_std_write(msg, &mut buf, bincode::config::standard())
        .map_err(|e| TransportError::Protocol(format!("encode: {e}")))?;
    let len = buf.len() - LEN_PREFIX_BYTES;
    if len > FRAME_BYTES_MAX {
        return Err(TransportError::FrameTooLarge {
            bytes: len,
            max: FRAME_BYTES_MAX,
        });
    }
    // len <= FRAME_BYTES_MAX < u32::MAX, so the cast is lossless.
    buf[..LEN_PREFIX_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Reads a frame's length prefix and checks it against `max` before anything is allocated.
pub(crate) async fn read_len<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<usize, TransportError> {
    let mut prefix = [0u8; LEN_PREFIX_BYTES];
    r.read_exact(&mut prefix).await.map_err(io_err)?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(too_large(len, max));
    }
    Ok(len)
}

/// Reads a `len`-byte payload (already checked by [`read_len`]) and decodes it.
pub(crate) async fn read_payload<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    len: usize,
) -> Result<T, TransportError> {
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(io_err)?;
    decode(&payload)
}

/// Reads one whole frame of at most `max` payload bytes.
pub(crate) async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
) -> Result<T, TransportError> {
    let len = read_len(r, max).await?;
    read_payload(r, len).await
}

/// Decodes a payload; trailing bytes are an error (they mean sender and receiver disagree
/// about the message type).
pub(crate) fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, TransportError> {
    let (msg, used) = bincode::serde::decode_from_slice(payload, bincode_config())
        .map_err(|e| TransportError::Protocol(format!("decode: {e}")))?;
    if used != payload.len() {
        return Err(TransportError::Protocol(format!(
            "decode: {} trailing bytes",
            payload.len() - used
        )));
    }
    Ok(msg)
}

fn too_large(len: usize, max: usize) -> TransportError {
    TransportError::Protocol(format!("frame of {len} bytes exceeds the {max}-byte limit"))
}

fn io_err(e: std::io::Error) -> TransportError {
    TransportError::Io(format!("stream: {e}"))
}
