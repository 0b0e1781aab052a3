//! The text and id rules of PROTOCOL.md ("Precise rules": Text) that apply also enforces.
//!
//! They live here, below the protocol, because stored data depends on them: apply rejects a
//! command that breaks them (`validate::check_op`), so they may not change with the wire
//! format. The protocol (`protocol::validate`) applies the same rules to client frames and
//! maps a broken rule onto its error codes.

/// `client_msg_id` is 1..=64 characters of `[A-Za-z0-9_-]`.
pub const CLIENT_MSG_ID_CHARS_MAX: usize = 64;
/// Ids the server hands out (users, conversations) and device ids: 1..=128 characters.
pub const ID_CHARS_MAX: usize = 128;
/// `title` is at most 200 code points.
pub const TITLE_CHARS_MAX: usize = 200;

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

/// The first control character other than tab, LF and CR (C0, DEL and C1), if any: text
/// holds none.
pub(crate) fn first_control(s: &str) -> Option<char> {
    s.chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

/// Why `title` breaks the title rules (too long, or a control character), as the
/// protocol's error message says it.
pub(crate) fn title_error(title: &str) -> Option<String> {
    if title.chars().take(TITLE_CHARS_MAX + 1).count() > TITLE_CHARS_MAX {
        return Some(format!("title is over {TITLE_CHARS_MAX} characters"));
    }
    control_error("title", title)
}

/// `"<field> contains control character U+XXXX"` for the first control character of `s`.
pub(crate) fn control_error(field: &str, s: &str) -> Option<String> {
    first_control(s).map(|c| format!("{field} contains control character U+{:04X}", c as u32))
}
