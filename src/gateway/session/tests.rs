use tungstenite::error::{CapacityError, ProtocolError as WsProtocolError};

use super::*;

fn classify(e: tungstenite::Error) -> Option<(ProtocolError, bool)> {
    read_error(axum::Error::new(e))
}

#[test]
fn invalid_utf8_is_answered_and_the_connection_kept() {
    let (e, close) = classify(tungstenite::Error::Utf8("bad".into())).unwrap();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert_eq!(e.message, "invalid UTF-8 in a text frame");
    assert!(!close);
}

#[test]
fn an_oversized_frame_is_answered_then_closed() {
    let too_long = CapacityError::MessageTooLong {
        size: 2_000_000,
        max_size: 1_000_000,
    };
    let (e, close) = classify(tungstenite::Error::Capacity(too_long)).unwrap();
    assert_eq!(e.code, ErrorCode::TooLarge);
    assert_eq!(e.message, "frame is over the size limit");
    assert!(close);
    let headers = tungstenite::Error::Capacity(CapacityError::TooManyHeaders);
    assert_eq!(classify(headers).unwrap().0.code, ErrorCode::TooLarge);
}

#[test]
fn other_read_errors_end_the_connection_silently() {
    assert!(classify(tungstenite::Error::ConnectionClosed).is_none());
    assert!(classify(tungstenite::Error::AlreadyClosed).is_none());
    let reset = WsProtocolError::ResetWithoutClosingHandshake;
    assert!(classify(tungstenite::Error::Protocol(reset)).is_none());
    let io = std::io::Error::other("Space limit too long UTF-8");
    assert!(classify(tungstenite::Error::Io(io)).is_none());
    assert!(read_error(axum::Error::new(std::io::Error::other("x"))).is_none());
}
