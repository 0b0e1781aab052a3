use super::*;

#[test]
fn throttle_counts_per_key_and_window() {
    let t = Throttle::new(2, 1_000);
    t.record("a", 0);
    t.record("a", 10);
    assert_eq!(t.check("a", 20), Err(980));
    assert!(t.check("b", 20).is_ok());
    assert!(t.check("a", 1_000).is_ok(), "a new window");
    t.clear("a");
    assert!(t.check("a", 20).is_ok());
}

#[test]
fn ipv6_is_throttled_by_its_64() {
    let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
    assert_eq!(ip_key(a), ip_key(b));
    let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
    assert_eq!(ip_key(mapped), "10.0.0.1");
}

#[tokio::test]
async fn hash_queue_is_bounded_and_times_out() {
    let slots = Semaphore::new(1);
    let q = HashQueue::new(1, 50);
    let held = q.acquire(&slots, HashKind::Login).await.unwrap();
    // One waiter may wait (and times out); a second is refused at once.
    let (a, b) = tokio::join!(q.acquire(&slots, HashKind::Login), async {
        tokio::task::yield_now().await;
        q.acquire(&slots, HashKind::Login).await
    });
    assert_eq!(a.err().map(|e| e.code), Some(ErrorCode::Overloaded));
    assert_eq!(b.err().map(|e| e.code), Some(ErrorCode::Overloaded));
    drop(held);
    assert!(q.acquire(&slots, HashKind::Login).await.is_ok());
}

async fn body_json(r: Response) -> serde_json::Value {
    let bytes = axum::body::to_bytes(r.into_body(), 64 * 1024)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn a_taken_username_is_409_by_kind_not_by_message() {
    // As apply refuses a claim (`Rejection::Conflict`) and as the pre-check refuses it.
    let applied = ProtocolError::from(crate::shard::command::Rejection::Conflict(
        "username is taken".into(),
    ));
    assert_eq!(applied, ProtocolError::conflict(USERNAME_TAKEN));
    let r = register_error(&applied);
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(
        body_json(r).await,
        json!({"type": "error", "code": "bad_request", "message": "username is taken", "retryable": false})
    );
    // The same text without the kind is a plain 400: nothing decides on the message.
    let plain = register_error(&ProtocolError::bad_request(USERNAME_TAKEN));
    assert_eq!(plain.status(), StatusCode::BAD_REQUEST);
    // Other endpoints keep the status of the code, a conflict included.
    assert_eq!(
        error_response(&ProtocolError::conflict("invite exists")).status(),
        StatusCode::BAD_REQUEST
    );
    let throttled = register_error(&throttled(1_500));
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.headers()[header::RETRY_AFTER], "2");
}
