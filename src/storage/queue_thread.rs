//! A dedicated std thread fed by a bounded queue: the shape of both the log writer and the
//! apply thread. Stopping closes the queue (the thread's loop ends once it drained it) and
//! joins the thread, unless the caller is that thread: a completion it runs may hold the
//! store's last handle, and a thread never joins itself.

use tokio::sync::mpsc;

use super::StorageError;

pub(crate) struct QueueThread<T> {
    tx: Option<mpsc::Sender<T>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<T: Send + 'static> QueueThread<T> {
    /// Starts thread `name` running `run` over a queue of `queue_max` items.
    pub(crate) fn spawn(
        name: &str,
        queue_max: usize,
        run: impl FnOnce(mpsc::Receiver<T>) + Send + 'static,
    ) -> Result<Self, StorageError> {
        let (tx, rx) = mpsc::channel(queue_max);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(rx))
            .map_err(|e| StorageError::Rocks(format!("spawn {name} thread: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }
}

impl<T> QueueThread<T> {
    /// The queue, until the thread was stopped.
    pub(crate) fn sender(&self) -> Option<&mpsc::Sender<T>> {
        self.tx.as_ref()
    }

    pub(crate) fn stop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}
