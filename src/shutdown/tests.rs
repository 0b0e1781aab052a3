use super::*;

#[tokio::test]
async fn stop_ends_every_spawned_loop_and_all_stopped_sees_it() {
    let shutdown = Shutdown::new();
    for _ in 0..3 {
        shutdown.spawn(std::future::pending());
    }
    assert_eq!(shutdown.running(), 3);
    shutdown.stop();
    shutdown.all_stopped().await;
    assert_eq!(shutdown.running(), 0);
}

#[tokio::test]
async fn a_token_taken_after_stop_is_already_stopped() {
    let shutdown = Shutdown::new();
    shutdown.stop();
    let mut token = shutdown.token();
    assert!(token.is_stopped());
    token.stopped().await;
}

#[tokio::test]
async fn a_task_that_ends_by_itself_gives_its_token_back() {
    let shutdown = Shutdown::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    shutdown.spawn(async move {
        let _ = tx.send(());
    });
    rx.await.unwrap();
    shutdown.all_stopped().await;
    assert!(!shutdown.is_stopping());
}
