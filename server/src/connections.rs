//! Counting open WebSocket connections against `--max-connections`, and knowing when the
//! last one has closed (for a graceful shutdown).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

pub struct Connections {
    open: AtomicUsize,
    max: usize,
    all_closed: Notify,
}

/// One connection's place; giving it back (on drop) is what closing a connection means here.
pub struct Slot(Arc<Connections>);

impl Connections {
    pub fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections { open: AtomicUsize::new(0), max, all_closed: Notify::new() })
    }

    /// A place for one more connection, unless all are taken.
    pub fn reserve(self: &Arc<Self>) -> Option<Slot> {
        let max = self.max;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Slot(self.clone()))
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until no connection is open, up to `limit`; says whether that happened.
    pub async fn wait_all_closed(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.all_closed.notified();
                if self.open() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}
