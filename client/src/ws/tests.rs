use super::*;
use tokio::net::TcpListener;

/// A server for one connection: answers `auth` with `auth_ok` (or an error for the token
/// "bad"), then for each request first sends a push, then `extra`, then the reply.
async fn server(extra: Option<Value>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
        while let Some(Ok(Message::Text(t))) = ws.next().await {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            let reply = if v["type"] == "auth" && v["token"] == "bad" {
                json!({"type":"error","id":v["id"],"code":"unauthorized"})
            } else if v["type"] == "auth" {
                json!({"type":"auth_ok","id":v["id"],"user_id":"u1"})
            } else {
                let push = json!({"type":"message","seq":v["id"]});
                ws.send(Message::text(push.to_string())).await.unwrap();
                if let Some(e) = &extra {
                    ws.send(Message::text(e.to_string())).await.unwrap();
                }
                json!({"type":"pong","id":v["id"]})
            };
            ws.send(Message::text(reply.to_string())).await.unwrap();
        }
    });
    addr
}

const LIMIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn replies_are_matched_by_id_and_pushes_kept_aside() {
    let addr = server(None).await;
    let opts = WsOptions {
        read_buffer_bytes: Some(4096),
        ..WsOptions::default()
    };
    let mut c = WsClient::connect_authed(&addr, &opts, "t", "d", LIMIT)
        .await
        .unwrap();
    assert_eq!(c.user_id, "u1");
    let r = c.request(json!({"type":"ping"}), LIMIT).await.unwrap();
    assert_eq!(
        (r["type"].as_str(), r["id"].as_u64()),
        (Some("pong"), Some(2))
    );
    let r = c.request(json!({"type":"ping"}), LIMIT).await.unwrap();
    assert_eq!(r["id"], 3);
    assert_eq!(c.pushes.len(), 2);
    let p = c.push_of("message", LIMIT).await.unwrap().unwrap();
    assert_eq!(p["seq"], 2);
    assert_eq!(c.take_pushes("message").len(), 1);
    assert!(c.pushes.is_empty());
    assert!(c
        .push_of("message", Duration::from_millis(100))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn kept_pushes_are_bounded() {
    let addr = server(None).await;
    let mut c = WsClient::connect_authed(&addr, &WsOptions::default(), "t", "d", LIMIT)
        .await
        .unwrap();
    c.keep_pushes(1);
    for _ in 0..3 {
        c.request(json!({"type":"ping"}), LIMIT).await.unwrap();
    }
    assert_eq!(c.pushes.len(), 1);
    assert_eq!(c.pushes[0]["seq"], 4, "the newest push is kept");
    c.keep_pushes(0);
    c.request(json!({"type":"ping"}), LIMIT).await.unwrap();
    assert!(c.pushes.is_empty());
}

#[tokio::test]
async fn a_refused_auth_and_a_reconnect_are_errors() {
    let addr = server(Some(json!({"type":"reconnect"}))).await;
    let e = WsClient::connect_authed(&addr, &WsOptions::default(), "bad", "d", LIMIT).await;
    assert!(matches!(e, Err(Error::AuthRefused(_))), "{:?}", e.err());

    let addr = server(Some(json!({"type":"reconnect"}))).await;
    let mut c = WsClient::connect_authed(&addr, &WsOptions::default(), "t", "d", LIMIT)
        .await
        .unwrap();
    let r = c.request(json!({"type":"ping"}), LIMIT).await.unwrap();
    assert_eq!(
        r["type"], "pong",
        "a reconnect is a push unless asked otherwise"
    );
    c.reconnect_is_error(true);
    let e = c.request(json!({"type":"ping"}), LIMIT).await;
    assert!(matches!(e, Err(Error::Reconnect(_))), "{e:?}");
}

#[tokio::test]
async fn a_closed_socket_is_an_error_and_a_quiet_one_times_out() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
        let _ = ws.next().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = ws.close(None).await;
    });
    let mut c = WsClient::connect(&addr, &WsOptions::default())
        .await
        .unwrap();
    let e = c
        .request(json!({"type":"ping"}), Duration::from_millis(100))
        .await;
    assert!(matches!(e, Err(Error::Timeout { .. })), "{e:?}");
    let e = c.recv(LIMIT).await;
    assert!(matches!(e, Err(Error::Closed)), "{e:?}");
}
