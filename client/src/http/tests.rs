use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A server that answers one connection with `answer` and hands back the request it read.
async fn one_shot(answer: &'static [u8]) -> (String, tokio::task::JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        // The request ends with its (small) body after the blank line.
        while !String::from_utf8_lossy(&req).contains("\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            req.extend_from_slice(&buf[..n]);
        }
        s.write_all(answer).await.unwrap();
        s.shutdown().await.unwrap();
        String::from_utf8_lossy(&req).into_owned()
    });
    (addr, h)
}

#[tokio::test]
async fn reads_a_chunked_answer_and_sends_the_admin_token_only_to_admin_paths() {
    let (addr, h) = one_shot(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .await;
    let c = HttpClient::new(&addr).admin_token(Some("adm".into()));
    let r = c.get("/admin/status").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "abcde"));
    assert_eq!(r.header("x-a"), Some("b"));
    let req = h.await.unwrap().to_ascii_lowercase();
    assert!(req.starts_with("get /admin/status http/1.1\r\n"), "{req}");
    assert!(req.contains("authorization: bearer adm\r\n"), "{req}");
    assert!(req.contains(&format!("host: {addr}\r\n")), "{req}");

    let (addr, h) = one_shot(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}").await;
    let c = HttpClient::new(&addr).admin_token(Some("adm".into()));
    let r = c.register("alice", "pw", None).await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (201, "{}"));
    let req = h.await.unwrap().to_ascii_lowercase();
    assert!(!req.contains("authorization"), "{req}");
    assert!(req.contains("content-type: application/json\r\n"), "{req}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_an_error() {
    let (addr, _h) = one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789").await;
    let e = HttpClient::new(&addr).body_limit(4).get("/metrics").await;
    assert!(matches!(e, Err(Error::BodyTooLarge { limit: 4 })), "{e:?}");
}

#[tokio::test]
async fn a_silent_server_times_out_and_a_closed_port_fails_to_connect() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let e = HttpClient::new(&addr)
        .timeout(Duration::from_millis(200))
        .get("/ready")
        .await;
    assert!(matches!(e, Err(Error::Timeout { .. })), "{e:?}");
    drop(l);
    let e = HttpClient::new(&addr).get("/ready").await;
    assert!(matches!(e, Err(Error::Connect { .. })), "{e:?}");
}

#[tokio::test]
async fn expect_turns_another_status_into_an_error() {
    let (addr, _h) = one_shot(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope").await;
    let e = HttpClient::new(&addr).admin_status().await;
    assert!(
        matches!(&e, Err(Error::Status { status: 401, body, .. }) if body == "nope"),
        "{e:?}"
    );
}
