//! A connection's outbound queue, bounded in frames (`limits.connection_send_queue_max`)
//! and in bytes (`limits.connection_send_queue_bytes`).
//!
//! The byte count is reserved before a frame enters the channel and released when the
//! writer takes it out, so the frames waiting towards one connection never hold more than
//! the budget (one frame larger than the whole budget is admitted only into an empty queue,
//! so that every frame can be sent at all). Pushes never wait: over either bound they fail
//! with `Full` (the hub then kills the connection). Replies wait a bounded time for room.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use super::hub::OutFrame;

pub(crate) use tokio::sync::mpsc::error::TrySendError;

struct Shared {
    /// Bytes of the frames in the channel.
    bytes: AtomicUsize,
    budget: usize,
    /// Notified when the writer took frames out (room for a waiting reply).
    freed: Notify,
}

/// The sending side; cheap to clone (the hub and the session each hold one).
#[derive(Clone)]
pub(crate) struct OutQueue {
    tx: mpsc::Sender<OutFrame>,
    shared: Arc<Shared>,
}

/// The writer's side.
pub(crate) struct OutReceiver {
    rx: mpsc::Receiver<OutFrame>,
    shared: Arc<Shared>,
}

/// Why a reply could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SendError {
    #[error("the connection is closed")]
    Closed,
    #[error("no room in the outbound queue in time")]
    TimedOut,
}

/// Bytes a frame counts for.
pub(crate) fn frame_bytes(f: &OutFrame) -> usize {
    match f {
        OutFrame::Text(t) => t.len(),
        OutFrame::Ping | OutFrame::Close => 0,
    }
}

/// A queue of at most `frames_max` frames and `bytes_max` bytes.
pub(crate) fn out_queue(frames_max: usize, bytes_max: usize) -> (OutQueue, OutReceiver) {
    let (tx, rx) = mpsc::channel(frames_max.max(1));
    let shared = Arc::new(Shared {
        bytes: AtomicUsize::new(0),
        budget: bytes_max,
        freed: Notify::new(),
    });
    (
        OutQueue {
            tx,
            shared: shared.clone(),
        },
        OutReceiver { rx, shared },
    )
}

impl Shared {
    fn reserve(&self, n: usize) -> bool {
        let budget = self.budget;
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur == 0 || cur.saturating_add(n) <= budget).then(|| cur.saturating_add(n))
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        if n > 0 {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            self.freed.notify_waiters();
        }
    }
}

impl OutQueue {
    /// Enqueues without waiting; `Full` when either bound would be passed.
    pub(crate) fn try_send(&self, frame: OutFrame) -> Result<(), TrySendError<OutFrame>> {
        let n = frame_bytes(&frame);
        if !self.shared.reserve(n) {
            if self.tx.is_closed() {
                return Err(TrySendError::Closed(frame));
            }
            return Err(TrySendError::Full(frame));
        }
        self.tx
            .try_send(frame)
            .inspect_err(|_| self.shared.release(n))
    }

    /// Enqueues, waiting at most `wait` for room under both bounds.
    pub(crate) async fn send_timeout(
        &self,
        frame: OutFrame,
        wait: Duration,
    ) -> Result<(), SendError> {
        let deadline = tokio::time::Instant::now() + wait;
        let n = frame_bytes(&frame);
        loop {
            if self.tx.is_closed() {
                return Err(SendError::Closed);
            }
            let freed = self.shared.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a release between the two is not missed.
            freed.as_mut().enable();
            if self.shared.reserve(n) {
                break;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(SendError::TimedOut);
            }
        }
        match tokio::time::timeout_at(deadline, self.tx.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                self.shared.release(n);
                Err(SendError::Closed)
            }
            Err(_) => {
                self.shared.release(n);
                Err(SendError::TimedOut)
            }
        }
    }

    #[cfg(test)]
    /// Bytes queued now (tests, metrics).
    pub(crate) fn queued_bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Acquire)
    }
}

impl OutReceiver {
    pub(crate) async fn recv(&mut self) -> Option<OutFrame> {
        let f = self.rx.recv().await?;
        self.shared.release(frame_bytes(&f));
        Some(f)
    }

    pub(crate) fn try_recv(&mut self) -> Option<OutFrame> {
        let f = self.rx.try_recv().ok()?;
        self.shared.release(frame_bytes(&f));
        Some(f)
    }
}

impl Drop for OutReceiver {
    fn drop(&mut self) {
        // Frames left behind are dropped with the channel; waiting replies see it closed.
        self.rx.close();
        self.shared.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests;
