//! The one error type of the client: what went wrong, by kind, so callers can decide (retry
//! on another node, give up) without parsing messages.

use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: no answer within {limit:?}")]
    Timeout { what: String, limit: Duration },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad HTTP request: {0}")]
    BadRequest(String),
    #[error("HTTP response body over {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// A non-success answer where the caller asked for a success (e.g. `admin_status`).
    #[error("{what} answered {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    /// Boxed: tungstenite's error is large, and every `Result` of this crate carries it.
    #[error("WebSocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    /// The server closed the WebSocket (close frame or end of stream).
    #[error("WebSocket closed by the server")]
    Closed,
    /// The server asked this connection to move to another node (it is draining).
    #[error("reconnect (node draining): {0}")]
    Reconnect(serde_json::Value),
    /// `auth` was answered with something other than `auth_ok`.
    #[error("authentication refused: {0}")]
    AuthRefused(serde_json::Value),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        Error::WebSocket(Box::new(e))
    }
}
