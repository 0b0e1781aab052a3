use super::*;

fn text(n: usize) -> OutFrame {
    OutFrame::Text(Arc::from("x".repeat(n)))
}

#[test]
fn pushes_past_the_byte_budget_are_full() {
    let (q, mut rx) = out_queue(100, 1000);
    assert!(q.try_send(text(600)).is_ok());
    assert!(matches!(q.try_send(text(600)), Err(TrySendError::Full(_))));
    assert!(q.try_send(text(400)).is_ok());
    assert_eq!(q.queued_bytes(), 1000);
    assert!(rx.try_recv().is_some());
    assert_eq!(q.queued_bytes(), 400);
    assert!(q.try_send(text(600)).is_ok());
}

#[test]
fn an_oversized_frame_enters_only_an_empty_queue() {
    let (q, mut rx) = out_queue(100, 1000);
    assert!(q.try_send(text(5000)).is_ok());
    assert!(matches!(q.try_send(text(1)), Err(TrySendError::Full(_))));
    rx.try_recv();
    assert!(q.try_send(text(1)).is_ok());
}

#[test]
fn the_frame_count_still_bounds() {
    let (q, _rx) = out_queue(2, 1 << 20);
    assert!(q.try_send(text(1)).is_ok());
    assert!(q.try_send(text(1)).is_ok());
    assert!(matches!(q.try_send(text(1)), Err(TrySendError::Full(_))));
    assert_eq!(q.queued_bytes(), 2, "a refused frame holds no bytes");
}

#[tokio::test]
async fn a_reply_waits_for_room_then_times_out() {
    let (q, mut rx) = out_queue(100, 1000);
    q.try_send(text(900)).unwrap();
    let q2 = q.clone();
    let waiting =
        tokio::spawn(async move { q2.send_timeout(text(900), Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    rx.recv().await.unwrap();
    assert_eq!(waiting.await.unwrap(), Ok(()));
    assert_eq!(
        q.send_timeout(text(900), Duration::from_millis(50)).await,
        Err(SendError::TimedOut)
    );
    drop(rx);
    assert_eq!(
        q.send_timeout(text(1), Duration::from_millis(50)).await,
        Err(SendError::Closed)
    );
}
