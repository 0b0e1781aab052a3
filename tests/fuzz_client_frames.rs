//! Fuzz target for the client frame decoder (issue 12 point 9, client half), run by
//! `cargo test` with fixed case counts so that it finishes in bounded time: arbitrary bytes,
//! arbitrary strings, mutated valid frames and structured-but-hostile JSON. Properties:
//! the decoder never panics; every error echoes no `id` or one of at most 64 characters and
//! carries a short message; every decoded frame satisfies the range checks of PROTOCOL.md.

use std::collections::HashSet;

use chatnode::protocol::client::{
    GROUP_MEMBERS_MAX, HISTORY_LIMIT_MAX, PRESENCE_USERS_MAX, REQUEST_ID_CHARS_MAX,
    SYNC_CONVERSATIONS_MAX,
};
use chatnode::protocol::{
    decode_client_frame, is_valid_client_msg_id, is_valid_id, ClientFrame, Decoded, TextLimits,
    TITLE_CHARS_MAX,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Cases per property; the whole file runs in a few seconds in a debug build.
const CASES: u32 = 1_500;
/// Longest error message (the cut plus its ellipsis).
const MESSAGE_CHARS_MAX: usize = 201;

fn limits() -> TextLimits {
    TextLimits::default()
}

fn id_len_ok(id: &Value) -> bool {
    match id {
        Value::String(s) => s.chars().count() <= REQUEST_ID_CHARS_MAX,
        Value::Number(n) => n.to_string().len() <= REQUEST_ID_CHARS_MAX,
        _ => false,
    }
}

fn no_dups(list: &[String]) -> bool {
    list.iter().collect::<HashSet<_>>().len() == list.len()
}

fn body_ok(body: &str, l: &TextLimits) -> bool {
    !body.is_empty()
        && body.chars().count() <= l.max_body_chars
        && body
            .chars()
            .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
}

/// The properties every decode result must have.
fn check(d: &Decoded) -> Result<(), TestCaseError> {
    let l = limits();
    if let Some(id) = &d.id {
        prop_assert!(id_len_ok(id), "echoed id too long or of a wrong type");
    }
    match &d.frame {
        Err(e) => {
            prop_assert!(
                e.message.chars().count() <= MESSAGE_CHARS_MAX,
                "error message of {} chars",
                e.message.chars().count()
            );
        }
        Ok(f) => check_frame(f, &l)?,
    }
    Ok(())
}

fn check_frame(f: &ClientFrame, l: &TextLimits) -> Result<(), TestCaseError> {
    let ids_ok = |list: &[String], max: usize| {
        list.len() <= max && no_dups(list) && list.iter().all(|u| is_valid_id(u))
    };
    match f {
        ClientFrame::Auth { token, device_id } => {
            prop_assert!(!token.is_empty() && token.len() <= 8192);
            prop_assert!(is_valid_id(device_id));
        }
        ClientFrame::CreateConversation { members, title, .. } => {
            prop_assert!(ids_ok(members, GROUP_MEMBERS_MAX));
            if let Some(t) = title {
                prop_assert!(t.chars().count() <= TITLE_CHARS_MAX);
            }
        }
        ClientFrame::Send {
            conversation_id,
            client_msg_id,
            body,
        } => {
            prop_assert!(is_valid_id(conversation_id));
            prop_assert!(is_valid_client_msg_id(client_msg_id));
            prop_assert!(body_ok(body, l));
        }
        ClientFrame::Edit {
            conversation_id,
            client_msg_id,
            seq,
            body,
        } => {
            prop_assert!(is_valid_id(conversation_id) && is_valid_client_msg_id(client_msg_id));
            prop_assert!(*seq >= 1 && body_ok(body, l));
        }
        ClientFrame::Delete {
            conversation_id,
            client_msg_id,
            seq,
        } => {
            prop_assert!(is_valid_id(conversation_id) && is_valid_client_msg_id(client_msg_id));
            prop_assert!(*seq >= 1);
        }
        ClientFrame::History {
            conversation_id,
            before_seq,
            limit,
        } => {
            prop_assert!(is_valid_id(conversation_id));
            prop_assert!(before_seq.is_none_or(|s| s >= 1));
            prop_assert!(limit.is_none_or(|n| (1..=HISTORY_LIMIT_MAX).contains(&n)));
        }
        ClientFrame::Sync {
            conversations,
            cursor,
        } => {
            prop_assert!(conversations.len() <= SYNC_CONVERSATIONS_MAX);
            prop_assert!(conversations.keys().all(|c| is_valid_id(c)));
            prop_assert!(cursor.as_deref().is_none_or(is_valid_id));
        }
        ClientFrame::ListConversations { cursor } => {
            prop_assert!(cursor.as_deref().is_none_or(is_valid_id));
        }
        ClientFrame::AddMembers {
            conversation_id,
            members,
        } => {
            prop_assert!(is_valid_id(conversation_id));
            prop_assert!(!members.is_empty() && ids_ok(members, GROUP_MEMBERS_MAX));
        }
        ClientFrame::RemoveMember {
            conversation_id,
            user_id,
        }
        | ClientFrame::SetRole {
            conversation_id,
            user_id,
            ..
        } => {
            prop_assert!(is_valid_id(conversation_id) && is_valid_id(user_id));
        }
        ClientFrame::Leave { conversation_id }
        | ClientFrame::Typing {
            conversation_id, ..
        } => {
            prop_assert!(is_valid_id(conversation_id));
        }
        ClientFrame::Delivered {
            conversation_id,
            seq,
        }
        | ClientFrame::Read {
            conversation_id,
            seq,
        } => {
            prop_assert!(is_valid_id(conversation_id) && *seq >= 1);
        }
        ClientFrame::SubscribePresence { user_ids } => {
            prop_assert!(ids_ok(user_ids, PRESENCE_USERS_MAX));
        }
        ClientFrame::Ping => {}
    }
    Ok(())
}

const TYPES: &[&str] = &[
    "auth",
    "create_conversation",
    "send",
    "history",
    "sync",
    "list_conversations",
    "add_members",
    "remove_member",
    "set_role",
    "leave",
    "delivered",
    "read",
    "typing",
    "subscribe_presence",
    "edit",
    "delete",
    "ping",
];

const FIELDS: &[&str] = &[
    "token",
    "device_id",
    "kind",
    "members",
    "title",
    "conversation_id",
    "client_msg_id",
    "body",
    "before_seq",
    "limit",
    "conversations",
    "cursor",
    "user_id",
    "role",
    "seq",
    "state",
    "user_ids",
];

/// Strings an attacker would try: ids of every length around the bounds, control and
/// non-BMP characters, JSON-looking text, long runs.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{0,130}",
        any::<String>(),
        (0usize..3000).prop_map(|n| "x".repeat(n)),
        (60usize..70).prop_map(|n| "i".repeat(n)),
        (120usize..135).prop_map(|n| "u".repeat(n)),
        Just("\u{0}\u{7f}\u{85}\u{200b}😀\"\\".to_string()),
        Just("group".to_string()),
        Just("direct".to_string()),
        Just("start".to_string()),
        Just("owner".to_string()),
    ]
}

fn hostile_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(u64::MAX)),
        (0u32..200).prop_map(|n| json!(n)),
    ]
}

/// JSON values up to a small depth, with lists full of duplicates.
fn hostile_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        hostile_number(),
        hostile_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 64, 16, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..16).prop_map(Value::Array),
            // One id repeated many times (the amplification's shape).
            ("[A-Za-z0-9]{1,30}", 0usize..1500).prop_map(|(s, n)| Value::Array(vec![
                Value::String(
                    s
                );
                n
            ])),
            prop::collection::btree_map("[A-Za-z0-9_-]{0,130}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn hostile_id() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        hostile_value().prop_map(Some),
        (0usize..200).prop_map(|n| Some(json!("d".repeat(n)))),
        Just(Some(json!(1e300))),
        Just(Some(json!(-0.000001))),
    ]
}

/// A frame of a known (or unknown) type with random fields set to hostile values.
fn hostile_frame() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            prop::sample::select(TYPES).prop_map(|t| json!(t)),
            hostile_value()
        ],
        hostile_id(),
        prop::collection::vec((prop::sample::select(FIELDS), hostile_value()), 0..8),
    )
        .prop_map(|(ty, id, fields)| {
            let mut m = Map::new();
            m.insert("type".into(), ty);
            if let Some(id) = id {
                m.insert("id".into(), id);
            }
            for (k, v) in fields {
                m.insert(k.to_string(), v);
            }
            Value::Object(m).to_string()
        })
}

fn valid_frames() -> Vec<String> {
    [
        json!({"type":"auth","id":1,"token":"t","device_id":"phone-1"}),
        json!({"type":"create_conversation","id":"x","kind":"group","members":["u1","u2","u1"],"title":"hi"}),
        json!({"type":"send","id":1,"conversation_id":"c1","client_msg_id":"m-1","body":"hello"}),
        json!({"type":"history","conversation_id":"c1","before_seq":10,"limit":100}),
        json!({"type":"sync","conversations":{"c1":3},"cursor":"c0"}),
        json!({"type":"list_conversations","cursor":"c"}),
        json!({"type":"add_members","conversation_id":"c","members":["u","u"]}),
        json!({"type":"subscribe_presence","id":9,"user_ids":["a","b","a"]}),
        json!({"type":"edit","conversation_id":"c","client_msg_id":"e1","seq":1,"body":"x"}),
    ]
    .iter()
    .map(|v| v.to_string())
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let text = String::from_utf8_lossy(&bytes);
        check(&decode_client_frame(&text, &limits()))?;
    }

    #[test]
    fn arbitrary_strings(s in any::<String>()) {
        check(&decode_client_frame(&s, &limits()))?;
    }

    #[test]
    fn structured_hostile_frames(text in hostile_frame()) {
        check(&decode_client_frame(&text, &limits()))?;
    }

    /// Valid frames with bytes replaced, inserted or cut.
    #[test]
    fn mutated_valid_frames(
        which in 0usize..9,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut bytes = valid_frames()[which].clone().into_bytes();
        for (at, b, op) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = b,
                1 => bytes.insert(i, b),
                _ => bytes.truncate(i),
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        check(&decode_client_frame(&text, &limits()))?;
    }
}

/// Shapes a random search rarely reaches: deep nesting, a frame at the size limit, the
/// issue's amplification frame.
#[test]
fn hand_picked_hostile_frames() {
    let deep = format!(
        r#"{{"type":"sync","id":1,"conversations":{}1{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let own = vec!["01J9Z8K2W5T3M4N6P7Q8R9S0AB"; 1000];
    let amplification =
        json!({"type":"subscribe_presence","id":"x".repeat(900 * 1024),"user_ids":own}).to_string();
    let huge_type = json!({"type":"t".repeat(500_000),"id":1}).to_string();
    let huge_unknown = json!({"type":"send","id":2,"conversation_id":1,"client_msg_id":"m","body":"b".repeat(900_000)})
        .to_string();
    for text in [deep, amplification.clone(), huge_type, huge_unknown] {
        let d = decode_client_frame(&text, &limits());
        assert!(check(&d).is_ok(), "{:?}", d.frame.as_ref().err());
    }
    let d = decode_client_frame(&amplification, &limits());
    assert!(d.id.is_none(), "a 900 KB id is echoed");
    assert!(d.frame.is_err());
    // With a short id the same frame decodes, its 1000 entries collapsed to one.
    let ok = json!({"type":"subscribe_presence","id":7,"user_ids":own}).to_string();
    match decode_client_frame(&ok, &limits()).frame {
        Ok(ClientFrame::SubscribePresence { user_ids }) => assert_eq!(user_ids.len(), 1),
        other => panic!("{other:?}"),
    }
}
