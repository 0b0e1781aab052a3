//! One stop signal for every loop a node spawns (as in mini-redis: a shared signal, and a
//! way to know when every task that listens to it has ended).
//!
//! [`Shutdown`] is held by whatever spawns loops; each loop holds a [`StopToken`] for as
//! long as it runs and ends when [`StopToken::stopped`] resolves. A token is a receiver of
//! the shutdown's `watch`, so "every loop has ended" is "no token is left": what
//! [`Shutdown::all_stopped`] waits for. Only tasks hold tokens (never a long-lived struct),
//! or that wait would never end.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

/// The stop signal of one node; cheap to clone (all clones are the same signal).
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

/// What one running loop holds: resolves [`StopToken::stopped`] once shutdown began.
pub struct StopToken {
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    /// A token for one task (already stopped if shutdown began).
    pub fn token(&self) -> StopToken {
        StopToken {
            rx: self.tx.subscribe(),
        }
    }

    /// Spawns `task`, which runs until it ends or shutdown begins, whichever is first.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let token = self.token();
        tokio::spawn(async move { token.run_until_stopped(task).await });
    }

    /// Tells every loop to stop.
    pub fn stop(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_stopping(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once every token is gone (every loop given one has ended).
    pub async fn all_stopped(&self) {
        self.tx.closed().await;
    }

    /// Loops still holding a token.
    pub fn running(&self) -> usize {
        self.tx.receiver_count()
    }
}

impl StopToken {
    /// Resolves once shutdown began (or the signal is gone).
    pub async fn stopped(&mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    pub fn is_stopped(&self) -> bool {
        *self.rx.borrow()
    }

    /// Runs `task` until it ends or shutdown begins; the token lives as long as the task.
    pub async fn run_until_stopped<T>(mut self, task: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            _ = self.stopped() => None,
            r = task => Some(r),
        }
    }
}

#[cfg(test)]
mod tests;
