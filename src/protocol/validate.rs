//! Text and id rules of PROTOCOL.md ("Precise rules": Text).

use super::ProtocolError;

/// `client_msg_id` is 1..=64 characters of `[A-Za-z0-9_-]`.
pub const CLIENT_MSG_ID_CHARS_MAX: usize = 64;
/// Ids the server hands out (users, conversations) and device ids: 1..=128 characters.
pub const ID_CHARS_MAX: usize = 128;
/// `title` is at most 200 code points.
pub const TITLE_CHARS_MAX: usize = 200;

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

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

pub fn is_valid_client_msg_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= CLIENT_MSG_ID_CHARS_MAX && s.chars().all(is_id_char)
}

/// User, conversation and device ids: `[A-Za-z0-9_-]`, 1..=128.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= ID_CHARS_MAX && s.chars().all(is_id_char)
}

/// Control characters other than tab, LF and CR are refused (C0, DEL and C1).
fn check_controls(field: &str, s: &str) -> Result<(), ProtocolError> {
    match s
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        Some(c) => Err(ProtocolError::bad_request(format!(
            "{field} contains control character U+{:04X}",
            c as u32
        ))),
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
    if title.chars().take(TITLE_CHARS_MAX + 1).count() > TITLE_CHARS_MAX {
        return Err(ProtocolError::bad_request(format!(
            "title is over {TITLE_CHARS_MAX} characters"
        )));
    }
    check_controls("title", title)
}
