use super::*;

#[tokio::test]
async fn batches_are_cut_by_count_and_bytes_and_keep_the_rest() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    for n in 1..=10usize {
        tx.try_send(n * 100).expect("queued");
    }
    let first = rx.recv().await.expect("first");
    // 100 + 200 + 300 + 400 reaches 1000.
    let b = with_queued_within(first, &mut rx, 8, 1000, |n| *n);
    assert_eq!(b, vec![100, 200, 300, 400]);
    let first = rx.recv().await.expect("next");
    let b = with_queued(first, &mut rx, 3);
    assert_eq!(b, vec![500, 600, 700]);
    let first = rx.recv().await.expect("next");
    // One item over the budget still goes alone.
    let b = with_queued_within(first, &mut rx, 8, 10, |n| *n);
    assert_eq!(b, vec![800]);
}
