//! The one shutdown signal: set once, seen by UDP threads (a flag), async tasks (a future)
//! and the health probes alike.
//!
//! A leaf: it imports nothing of the crate. Cloning shares the signal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// Cancellation shared by everything a server runs.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    stopped: AtomicBool,
    wake: Notify,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Asks everything to stop; idempotent.
    pub fn trigger(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        self.inner.wake.notify_waiters();
    }

    /// True once `trigger` was called: one atomic load, cheap enough for a UDP batch loop.
    #[inline]
    pub fn is_triggered(&self) -> bool {
        self.inner.stopped.load(Ordering::Acquire)
    }

    /// Completes once `trigger` was called (at once if it already was).
    pub async fn triggered(&self) {
        loop {
            // Registered before the check, so a trigger between the two is not missed.
            let notified = self.inner.wake.notified();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_before_and_after_the_trigger_complete() {
        let shutdown = Shutdown::new();
        let early = tokio::spawn({
            let s = shutdown.clone();
            async move { s.triggered().await }
        });
        tokio::task::yield_now().await;
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        tokio::time::timeout(std::time::Duration::from_secs(5), early)
            .await
            .expect("early waiter woken")
            .expect("joined");
        tokio::time::timeout(std::time::Duration::from_secs(5), shutdown.triggered())
            .await
            .expect("late waiter completes at once");
    }
}
