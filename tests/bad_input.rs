//! Malformed frames over a real socket: each gets a typed error and the socket keeps working.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_typed_errors_and_the_socket_survives() {
    let n = start_node().await;
    let (_a, at) = register(n.addr, "alice").await;
    let (bob, _) = register(n.addr, "bob").await;
    let mut c = Client::connect(n.addr, &at, "d").await;
    let conv = c.create_direct(&bob).await;
    c.send_msg(&conv, "first", "hello").await;

    let long = "x".repeat(4001);
    // (frame text, expected code, whether the reply carries id 99)
    let cases: Vec<(String, &str, bool)> = vec![
        ("{not json".into(), "bad_request", false),
        ("null".into(), "bad_request", false),
        ("[]".into(), "bad_request", false),
        (r#""a string""#.into(), "bad_request", false),
        (r#"{"id":99}"#.into(), "bad_request", true),
        (r#"{"id":99,"type":"fly"}"#.into(), "bad_request", true),
        (r#"{"id":99,"type":null}"#.into(), "bad_request", true),
        (r#"{"id":99,"type":"send","conversation_id":"c"}"#.into(), "bad_request", true),
        (format!(r#"{{"id":99,"type":"send","conversation_id":"{conv}","client_msg_id":5,"body":"x"}}"#), "bad_request", true),
        (format!(r#"{{"id":99,"type":"send","conversation_id":"{conv}","client_msg_id":"ok","body":["x"]}}"#), "bad_request", true),
        (format!(r#"{{"id":99,"type":"send","conversation_id":"{conv}","client_msg_id":"ok","body":"a\u0000b"}}"#), "bad_request", true),
        (format!(r#"{{"id":99,"type":"send","conversation_id":"{conv}","client_msg_id":"ok","body":"esc\u001b[31m"}}"#), "bad_request", true),
        (format!(r#"{{"id":99,"type":"send","conversation_id":"{conv}","client_msg_id":"ok","body":"\udc00"}}"#), "bad_request", false),
        (format!(r#"{{"id":99,"type":"send","conversation_id":"{conv}","client_msg_id":"ok","body":"{long}"}}"#), "too_large", true),
        (format!(r#"{{"id":99,"type":"send","conversation_id":"{conv}","client_msg_id":"has space","body":"x"}}"#), "bad_request", true),
        (format!(r#"{{"id":99,"type":"send","conversation_id":"{conv}","client_msg_id":"","body":"x"}}"#), "bad_request", true),
        (format!(r#"{{"id":99,"type":"send","conversation_id":"{conv}","client_msg_id":"ok","body":""}}"#), "bad_request", true),
        (format!(r#"{{"id":99,"type":"history","conversation_id":"{conv}","before_seq":-1}}"#), "bad_request", true),
        (format!(r#"{{"id":99,"type":"history","conversation_id":"{conv}","limit":1000}}"#), "bad_request", true),
        (format!(r#"{{"id":99,"type":"history","conversation_id":"{conv}","before_seq":99999999999999999999999}}"#), "bad_request", true),
        (format!(r#"{{"id":99,"type":"read","conversation_id":"{conv}","seq":1e999}}"#), "bad_request", false),
        (format!(r#"{{"id":99,"type":"read","conversation_id":"{conv}","seq":-3}}"#), "bad_request", true),
        (format!(r#"{{"id":99,"type":"read","conversation_id":"{conv}","seq":500}}"#), "bad_request", true),
        (format!(r#"{{"id":99,"type":"edit","conversation_id":"{conv}","client_msg_id":"e","seq":77,"body":"x"}}"#), "not_found", true),
        (r#"{"id":99,"type":"history","conversation_id":"DoesNotExist"}"#.into(), "forbidden", true),
        (r#"{"id":99,"type":"send","conversation_id":"DoesNotExist","client_msg_id":"a","body":"x"}"#.into(), "forbidden", true),
        (r#"{"id":99,"type":"create_conversation","kind":"direct","members":["nobody-like-this"]}"#.into(), "bad_request", true),
        (r#"{"id":99,"type":"create_conversation","kind":"direct","members":[]}"#.into(), "bad_request", true),
        (r#"{"id":99,"type":"auth","token":"t","device_id":"d"}"#.into(), "bad_request", true),
        (r#"{"id":99,"type":"typing","conversation_id":"x","state":"dancing"}"#.into(), "bad_request", true),
    ];
    assert!(cases.len() >= 25);
    for (text, code, echoes) in &cases {
        c.send_text(text.clone()).await;
        let reply = loop {
            let v = c
                .recv(WAIT)
                .await
                .unwrap_or_else(|| panic!("socket closed after {text:.80}"));
            if v["type"] == "error" {
                break v;
            }
        };
        assert_eq!(reply["code"], *code, "{text:.80} -> {reply}");
        assert_eq!(
            reply.get("id") == Some(&json!(99)),
            *echoes,
            "{text:.80} -> {reply}"
        );
        assert!(reply["retryable"].is_boolean() && reply["message"].is_string());
        let pong = c.request(json!({"type":"ping"})).await;
        assert_eq!(pong["type"], "pong", "socket broken after {text:.80}");
    }

    // A frame over 1 MiB: too_large, then the socket is closed.
    let huge = format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "p".repeat(1024 * 1024 + 10)
    );
    c.send_text(huge).await;
    let reply = c
        .recv(WAIT)
        .await
        .expect("too_large reply before the close");
    assert_eq!(reply["code"], "too_large", "{reply}");
    assert!(
        c.recv(WAIT).await.is_none(),
        "socket stays open after an oversize frame"
    );
}

/// Invalid UTF-8 in a text frame: `bad_request`. The WebSocket layer then fails the
/// connection, as RFC 6455 §8.1 requires of an endpoint (a documented exception to
/// "errors never close the socket").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_text_frame_is_bad_request() {
    let n = start_node().await;
    let (_a, at) = register(n.addr, "alice").await;
    let mut c = Client::connect(n.addr, &at, "d").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(frame)).await.unwrap();
    let reply = c.recv(WAIT).await.expect("reply to invalid UTF-8");
    assert_eq!(reply["code"], "bad_request", "{reply}");
}
