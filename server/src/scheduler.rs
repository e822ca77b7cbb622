//! Scheduled messages: each waits in a timer task of its own, so a pending schedule never
//! delays its sender's next messages, and is then delivered to the channel it was sent in.
//!
//! Both the schedules per connection and those in the whole server are counted and capped;
//! a schedule outlives its sender's connection (the protocol delivers it to whoever is in the
//! channel), which is why the server-wide cap exists too.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::frame::Frame;

use crate::hub::{Channel, Hub};

pub struct Scheduler {
    hub: Arc<Hub>,
    pending: Arc<AtomicUsize>,
    max_per_connection: usize,
    max_total: usize,
}

/// One connection's count of pending schedules.
#[derive(Default, Clone)]
pub struct PendingCount(Arc<AtomicUsize>);

impl Scheduler {
    pub fn new(hub: Arc<Hub>, max_per_connection: usize, max_total: usize) -> Scheduler {
        Scheduler { hub, pending: Arc::default(), max_per_connection, max_total }
    }

    /// Delivers `frame` to `channel` after `delay`, or says why not (the error frame's text).
    pub fn schedule(
        &self,
        mine: &PendingCount,
        delay: Duration,
        channel: Channel,
        frame: Frame,
    ) -> Result<(), String> {
        if !reserve(&mine.0, self.max_per_connection) {
            return Err(format!(
                "schedule: you already have {} scheduled messages waiting",
                self.max_per_connection
            ));
        }
        if !reserve(&self.pending, self.max_total) {
            mine.0.fetch_sub(1, Ordering::Relaxed);
            return Err("schedule: the server has too many scheduled messages waiting".into());
        }
        let (hub, total, mine) = (self.hub.clone(), self.pending.clone(), mine.0.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            hub.deliver(channel, frame);
            mine.fetch_sub(1, Ordering::Relaxed);
            total.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(())
    }

    /// Schedules waiting in the whole server.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

/// Takes one place under `limit`, if there is one.
fn reserve(count: &AtomicUsize, limit: usize) -> bool {
    count
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < limit).then_some(n + 1))
        .is_ok()
}
