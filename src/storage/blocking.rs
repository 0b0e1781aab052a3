//! The one way async code runs a blocking call (RocksDB, argon2) on tokio's blocking pool,
//! so that no tokio worker waits on it. Each caller maps [`TaskFailed`] into its own error.

/// The blocking task panicked or was cancelled (the runtime is shutting down).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blocking task failed: {0}")]
pub(crate) struct TaskFailed(pub(crate) String);

/// Runs `f` on the blocking pool and waits for it; a task that did not finish becomes the
/// caller's error through `From<TaskFailed>`.
pub(crate) async fn blocking<T, E, F>(f: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<TaskFailed> + Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| E::from(TaskFailed(e.to_string())))?
}
