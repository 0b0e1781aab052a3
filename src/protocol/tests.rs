//! Decoder tests: every malformed frame gets a typed error, nothing panics.

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn decode(text: &str) -> Decoded {
    decode_client_frame(text, &TextLimits::default())
}

fn code_of(text: &str) -> Option<ErrorCode> {
    decode(text).frame.err().map(|e| e.code)
}

#[test]
fn well_formed_frames_decode() {
    let cases = [
        json!({"type":"auth","token":"t","device_id":"phone-1"}),
        json!({"type":"create_conversation","kind":"group","members":["u1","u2"],"title":"hi"}),
        json!({"type":"send","id":1,"conversation_id":"c1","client_msg_id":"m-1","body":"hello\n\tworld"}),
        json!({"type":"history","conversation_id":"c1","before_seq":10,"limit":100}),
        json!({"type":"sync","conversations":{"c1":3}}),
        json!({"type":"list_conversations"}),
        json!({"type":"add_members","conversation_id":"c","members":["u"]}),
        json!({"type":"remove_member","conversation_id":"c","user_id":"u"}),
        json!({"type":"set_role","conversation_id":"c","user_id":"u","role":"admin"}),
        json!({"type":"leave","conversation_id":"c"}),
        json!({"type":"delivered","conversation_id":"c","seq":1}),
        json!({"type":"read","conversation_id":"c","seq":1}),
        json!({"type":"typing","conversation_id":"c","state":"start"}),
        json!({"type":"subscribe_presence","user_ids":["a","b"]}),
        json!({"type":"edit","conversation_id":"c","client_msg_id":"e1","seq":1,"body":"x"}),
        json!({"type":"delete","conversation_id":"c","client_msg_id":"d1","seq":1}),
        json!({"type":"ping","id":"abc"}),
    ];
    for c in cases {
        let d = decode(&c.to_string());
        assert!(d.frame.is_ok(), "{c} -> {:?}", d.frame);
    }
}

/// (frame, expected code, whether the reply must echo the id 7)
fn bad_frames() -> Vec<(String, ErrorCode, bool)> {
    use ErrorCode::*;
    let long_body = "x".repeat(4001);
    let big_frame = format!(
        r#"{{"type":"send","conversation_id":"c","client_msg_id":"m","body":"{}"}}"#,
        "y".repeat(1024 * 1024)
    );
    vec![
        ("not json".into(), BadRequest, false),
        ("".into(), BadRequest, false),
        ("[1,2]".into(), BadRequest, false),
        ("42".into(), BadRequest, false),
        (r#"{"id":7}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"nope"}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":5}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"send"}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"send","conversation_id":1,"client_msg_id":"a","body":"b"}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"send","conversation_id":"c","client_msg_id":"","body":"b"}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"send","conversation_id":"c","client_msg_id":"a b","body":"b"}"#.into(), BadRequest, true),
        (format!(r#"{{"id":7,"type":"send","conversation_id":"c","client_msg_id":"{}","body":"b"}}"#, "a".repeat(65)), BadRequest, true),
        (r#"{"id":7,"type":"send","conversation_id":"c","client_msg_id":"a","body":""}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"send","conversation_id":"c","client_msg_id":"a","body":"nul\u0000"}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"send","conversation_id":"c","client_msg_id":"a","body":"bell\u0007"}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"send","conversation_id":"c","client_msg_id":"a","body":"c1\u0085"}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"send","conversation_id":"c","client_msg_id":"a","body":"\ud800"}"#.into(), BadRequest, false),
        (format!(r#"{{"id":7,"type":"send","conversation_id":"c","client_msg_id":"a","body":"{long_body}"}}"#), TooLarge, true),
        (big_frame, TooLarge, false),
        (r#"{"id":7,"type":"history","conversation_id":"c","limit":0}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"history","conversation_id":"c","limit":101}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"history","conversation_id":"c","limit":1e400}"#.into(), BadRequest, false),
        (r#"{"id":7,"type":"history","conversation_id":"c","before_seq":-1}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"read","conversation_id":"c","seq":18446744073709551616}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"read","conversation_id":"c","seq":1.5}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"read","conversation_id":"c","seq":0}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"read","conversation_id":"c","seq":"1"}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"typing","conversation_id":"c","state":"maybe"}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"set_role","conversation_id":"c","user_id":"u","role":"god"}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"create_conversation","kind":"triangle","members":["u"]}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"create_conversation","kind":"group","members":"u"}"#.into(), BadRequest, true),
        (format!(r#"{{"id":7,"type":"create_conversation","kind":"group","members":["u"],"title":"{}"}}"#, "t".repeat(201)), BadRequest, true),
        (r#"{"id":7,"type":"sync","conversations":{"c":-5}}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"sync","conversations":["c"]}"#.into(), BadRequest, true),
        (r#"{"id":7,"type":"send","conversation_id":"bad\nid","client_msg_id":"a","body":"b"}"#.into(), BadRequest, true),
        (r#"{"id":[7],"type":"ping"}"#.into(), BadRequest, false),
        (r#"{"id":7,"type":"auth","token":"","device_id":"d"}"#.into(), Unauthorized, true),
        (r#"{"id":7,"type":"auth","token":"t","device_id":""}"#.into(), BadRequest, true),
    ]
}

#[test]
fn malformed_frames_get_typed_errors_with_their_id() {
    let cases = bad_frames();
    assert!(cases.len() >= 25);
    for (text, code, echoes_id) in cases {
        let d = decode(&text);
        let shown: String = text.chars().take(80).collect();
        assert_eq!(
            d.frame.as_ref().err().map(|e| e.code),
            Some(code),
            "{shown}"
        );
        assert_eq!(d.id == Some(json!(7)), echoes_id, "{shown}: id {:?}", d.id);
    }
}

#[test]
fn body_limit_counts_code_points_not_bytes() {
    let body = "é".repeat(4000); // 8000 bytes, 4000 code points
    let f = json!({"type":"send","conversation_id":"c","client_msg_id":"m","body":body});
    assert!(decode(&f.to_string()).frame.is_ok());
    let body = "é".repeat(4001);
    let f = json!({"type":"send","conversation_id":"c","client_msg_id":"m","body":body});
    assert_eq!(code_of(&f.to_string()), Some(ErrorCode::TooLarge));
}

#[test]
fn error_frames_carry_code_and_retryable() {
    let f = ServerFrame::error(
        Some(json!(3)),
        ProtocolError::rate_limited("slow down", 250),
    );
    let v: serde_json::Value = serde_json::from_str(&f.to_json()).unwrap();
    assert_eq!(
        v,
        json!({"type":"error","id":3,"code":"rate_limited","message":"slow down","retryable":true,"retry_after_ms":250})
    );
    for c in ErrorCode::ALL {
        let expected = matches!(
            c,
            ErrorCode::RateLimited
                | ErrorCode::Unavailable
                | ErrorCode::Overloaded
                | ErrorCode::Internal
        );
        assert_eq!(c.retryable(), expected, "{c:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary text never panics the decoder.
    #[test]
    fn decoder_never_panics_on_text(s in any::<String>()) {
        let _ = decode(&s);
    }

    /// Structurally plausible frames with random field values never panic, and an accepted
    /// send always satisfies the text rules.
    #[test]
    fn decoder_checks_send_fields(
        cid in "[a-zA-Z0-9_\\-]{0,70}",
        mid in any::<String>(),
        body in any::<String>(),
        id in prop_oneof![Just(json!(null)), any::<i64>().prop_map(|n| json!(n)), "[a-z]{0,5}".prop_map(|s| json!(s))],
    ) {
        let f = json!({"type":"send","id":id,"conversation_id":cid,"client_msg_id":mid,"body":body});
        let d = decode(&f.to_string());
        if let Ok(ClientFrame::Send { client_msg_id, body, .. }) = &d.frame {
            prop_assert!(is_valid_client_msg_id(client_msg_id));
            prop_assert!(!body.is_empty() && body.chars().count() <= 4000);
            prop_assert!(body.chars().all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r')));
        }
        if !id.is_null() {
            prop_assert_eq!(d.id, Some(id));
        }
    }
}

#[test]
fn request_ids_over_64_characters_are_refused_and_not_echoed() {
    let ok = json!({"type":"ping","id":"é".repeat(64)}).to_string();
    assert!(decode(&ok).frame.is_ok());
    for id in [json!("a".repeat(65)), json!("x".repeat(900 * 1024))] {
        let d = decode(&json!({"type":"ping","id":id}).to_string());
        assert_eq!(d.id, None, "an oversized id is echoed");
        assert_eq!(d.frame.err().map(|e| e.code), Some(ErrorCode::BadRequest));
    }
}

#[test]
fn error_messages_quote_nothing_large() {
    let huge = "t".repeat(100_000);
    let d = decode(&json!({"type":huge,"id":1}).to_string());
    let e = d.frame.unwrap_err();
    assert!(
        e.message.chars().count() <= client::ERROR_MESSAGE_CHARS_MAX + 1,
        "{}",
        e.message.len()
    );
    let f = ServerFrame::error(None, ProtocolError::bad_request("m".repeat(10_000)));
    assert!(f.to_json().len() < 400);
}

#[test]
fn id_lists_are_deduplicated_in_order() {
    let f = json!({"type":"subscribe_presence","user_ids":["b","a","b","a","c"]}).to_string();
    match decode(&f).frame {
        Ok(ClientFrame::SubscribePresence { user_ids }) => assert_eq!(user_ids, ["b", "a", "c"]),
        other => panic!("{other:?}"),
    }
    let f = json!({"type":"add_members","conversation_id":"c","members":["u","u","u"]}).to_string();
    match decode(&f).frame {
        Ok(ClientFrame::AddMembers { members, .. }) => assert_eq!(members, ["u"]),
        other => panic!("{other:?}"),
    }
    let f =
        json!({"type":"create_conversation","kind":"group","members":["x","y","x"]}).to_string();
    match decode(&f).frame {
        Ok(ClientFrame::CreateConversation { members, .. }) => assert_eq!(members, ["x", "y"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn json_len_is_the_length_of_the_text() {
    let f = ServerFrame::Pong {
        id: Some(json!("é\"x")),
    };
    assert_eq!(f.json_len(), f.to_json().len());
}

const BAD_CONV: &str = "conversation_id must be 1..128 characters of [A-Za-z0-9_-]";
const BAD_CMID: &str = "client_msg_id must be 1..64 characters of [A-Za-z0-9_-]";
const SEQ0: &str = "seq must be at least 1";

/// Each frame is refused with exactly the message of its first failing check.
fn assert_first_failing(cases: &[(serde_json::Value, &str)]) {
    for (frame, want) in cases {
        let got = decode(&frame.to_string()).frame.unwrap_err().message;
        assert_eq!(&got, want, "{frame}");
    }
}

/// Each family checks its fields in a fixed order; the first failing check is the answer:
/// the message families (send, edit, delete, history, sync).
#[test]
fn first_failing_check_is_the_answer_for_messages() {
    assert_first_failing(&[
        (
            json!({"type":"send","conversation_id":"c!","client_msg_id":"m!","body":""}),
            BAD_CONV,
        ),
        (
            json!({"type":"send","conversation_id":"c","client_msg_id":"m!","body":""}),
            BAD_CMID,
        ),
        (
            json!({"type":"send","conversation_id":"c","client_msg_id":"m","body":""}),
            "body must not be empty",
        ),
        (
            json!({"type":"edit","conversation_id":"c","client_msg_id":"m!","seq":0,"body":""}),
            BAD_CMID,
        ),
        (
            json!({"type":"edit","conversation_id":"c","client_msg_id":"m","seq":0,"body":""}),
            SEQ0,
        ),
        (
            json!({"type":"edit","conversation_id":"c","client_msg_id":"m","seq":1,"body":""}),
            "body must not be empty",
        ),
        (
            json!({"type":"delete","conversation_id":"c!","client_msg_id":"m","seq":0}),
            BAD_CONV,
        ),
        (
            json!({"type":"delete","conversation_id":"c","client_msg_id":"m","seq":0}),
            SEQ0,
        ),
        (
            json!({"type":"history","conversation_id":"c","before_seq":0,"limit":0}),
            SEQ0,
        ),
        (
            json!({"type":"history","conversation_id":"c","limit":0}),
            "limit must be 1..100",
        ),
        (
            json!({"type":"sync","conversations":{"c!":1},"cursor":"x!"}),
            BAD_CONV,
        ),
        (
            json!({"type":"sync","cursor":"x!"}),
            "cursor must be 1..128 characters of [A-Za-z0-9_-]",
        ),
    ]);
}

/// The same for conversation lists, membership, receipts, typing, presence and auth.
#[test]
fn first_failing_check_is_the_answer_for_the_rest() {
    assert_first_failing(&[
        (
            json!({"type":"list_conversations","cursor":""}),
            "cursor must be 1..128 characters of [A-Za-z0-9_-]",
        ),
        (
            json!({"type":"add_members","conversation_id":"c!","members":[]}),
            BAD_CONV,
        ),
        (
            json!({"type":"add_members","conversation_id":"c","members":[]}),
            "members must not be empty",
        ),
        (
            json!({"type":"create_conversation","kind":"group","members":["u!"],"title":"t"}),
            "members must be 1..128 characters of [A-Za-z0-9_-]",
        ),
        (
            json!({"type":"set_role","conversation_id":"c","user_id":"u!","role":"admin"}),
            "user_id must be 1..128 characters of [A-Za-z0-9_-]",
        ),
        (
            json!({"type":"remove_member","conversation_id":"c!","user_id":"u!"}),
            BAD_CONV,
        ),
        (json!({"type":"leave","conversation_id":""}), BAD_CONV),
        (json!({"type":"read","conversation_id":"c","seq":0}), SEQ0),
        (
            json!({"type":"delivered","conversation_id":"c!","seq":0}),
            BAD_CONV,
        ),
        (
            json!({"type":"typing","conversation_id":"c!","state":"start"}),
            BAD_CONV,
        ),
        (
            json!({"type":"subscribe_presence","user_ids":["u!"]}),
            "user_ids must be 1..128 characters of [A-Za-z0-9_-]",
        ),
        (
            json!({"type":"auth","token":"","device_id":"d!"}),
            "invalid token",
        ),
        (
            json!({"type":"auth","token":"t","device_id":"d!"}),
            "device_id must be 1..128 characters of [A-Za-z0-9_-]",
        ),
    ]);
}
