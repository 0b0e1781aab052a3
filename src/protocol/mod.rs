//! Client protocol v1: frame types, decoding with validation, error codes. No IO here.
//!
//! Decoding is two-step so that every error can echo the request's `id`: the text is parsed
//! into a JSON value first (which rejects invalid JSON and lone surrogate escapes), the `id`
//! is taken from it, and only then is the value decoded into a typed [`ClientFrame`] and
//! range-checked against [`TextLimits`].

pub mod client;
mod error;
mod server;
mod validate;

pub use client::{decode_client_frame, ClientFrame, Decoded, RequestId, TypingState};
pub use error::{ErrorCode, ErrorKind, ProtocolError};
pub use server::*;
pub use validate::{
    is_valid_client_msg_id, is_valid_id, validate_body, validate_title, TextLimits,
    CLIENT_MSG_ID_CHARS_MAX, ID_CHARS_MAX, TITLE_CHARS_MAX,
};

#[cfg(test)]
mod tests;
