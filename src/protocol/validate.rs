//! Text and id rules of PROTOCOL.md ("Precise rules": Text). The rules apply also
//! enforces (ids, `client_msg_id`, titles, control characters) are the shard's
//! (`shard::text`); this module maps a broken one onto the protocol's error codes and adds
//! the configurable body limit.

use super::ProtocolError;
use crate::shard::text::{control_error, title_error};
pub use crate::shard::text::{
    is_valid_client_msg_id, is_valid_id, CLIENT_MSG_ID_CHARS_MAX, ID_CHARS_MAX, TITLE_CHARS_MAX,
};

/// Size limits of client text, from the `[limits]` config.
#[derive(Debug, Clone, Copy)]
pub struct TextLimits {
    pub max_body_chars: usize,
    pub max_frame_bytes: usize,
}

impl Default for TextLimits {
    fn default() -> Self {
        TextLimits {
            max_body_chars: 4000,
            max_frame_bytes: 1024 * 1024,
        }
    }
}

/// Control characters other than tab, LF and CR are refused (C0, DEL and C1).
fn check_controls(field: &str, s: &str) -> Result<(), ProtocolError> {
    match control_error(field, s) {
        Some(m) => Err(ProtocolError::bad_request(m)),
        None => Ok(()),
    }
}

pub fn validate_body(body: &str, limits: &TextLimits) -> Result<(), ProtocolError> {
    if body.is_empty() {
        return Err(ProtocolError::bad_request("body must not be empty"));
    }
    // Count code points only up to the limit + 1: bodies can be up to a frame long.
    if body.chars().take(limits.max_body_chars + 1).count() > limits.max_body_chars {
        return Err(ProtocolError::too_large(format!(
            "body is over {} characters",
            limits.max_body_chars
        )));
    }
    check_controls("body", body)
}

pub fn validate_title(title: &str) -> Result<(), ProtocolError> {
    match title_error(title) {
        Some(m) => Err(ProtocolError::bad_request(m)),
        None => Ok(()),
    }
}
