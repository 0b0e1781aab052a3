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
