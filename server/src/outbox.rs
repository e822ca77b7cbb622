//! A connection's outbound queue: frames the hub has queued for one client, waiting for that
//! client's session to write them.
//!
//! POLICY (slow consumers): the queue holds at most `--queue-frames` frames, and nothing ever
//! waits for room in it. A client whose queue is full has stopped reading: the hub disconnects
//! it (close 1008, logged as a slow consumer) rather than let the server's memory grow, and
//! everyone else keeps receiving. The frames are shared with every other recipient, so a full
//! queue costs little more than its slots.
//!
//! Why not `tokio::sync::mpsc`: a broadcast pushes one frame into hundreds of queues while the
//! hub's lock is held, so a push must be as cheap as it can be. Here it is a `VecDeque` push
//! under a mutex that nobody holds for longer than a push or a swap, and the writer is woken
//! only when the queue goes from empty to non-empty: a busy writer takes everything queued in
//! one swap, and is woken once per batch instead of once per frame.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use crate::frame::Frame;
use tokio::sync::Notify;

/// The queue was full: its client has stopped reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

pub struct Outbox {
    frames: Mutex<VecDeque<Frame>>,
    /// Holds one wake-up for the writer when frames arrive while it is not waiting.
    ready: Notify,
    capacity: usize,
}

impl Outbox {
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            frames: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Frame>> {
        // Every change is one push or one swap: a panic elsewhere cannot leave it half-done.
        self.frames.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `frame` without waiting, or refuses it when the queue is full.
    pub fn offer(&self, frame: Frame) -> Result<(), Full> {
        let mut frames = self.lock();
        if frames.len() >= self.capacity {
            return Err(Full);
        }
        let was_empty = frames.is_empty();
        frames.push_back(frame);
        drop(frames);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Waits until frames may be waiting (a wake-up can find the queue already emptied).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Moves every queued frame to the end of `batch`.
    pub fn take_all(&self, batch: &mut VecDeque<Frame>) {
        let mut frames = self.lock();
        if batch.is_empty() {
            std::mem::swap(&mut *frames, batch); // no copy, and both keep their allocations
        } else {
            batch.append(&mut frames);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_order_refuses_when_full_and_wakes_the_writer() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.offer(Frame::text("a")), Ok(()));
        assert_eq!(outbox.offer(Frame::text("b")), Ok(()));
        assert_eq!(outbox.offer(Frame::text("c")), Err(Full));
        // The first push stored a wake-up: this returns at once.
        outbox.ready().await;
        let mut batch = VecDeque::new();
        outbox.take_all(&mut batch);
        assert_eq!(batch, [Frame::text("a"), Frame::text("b")]);
        batch.clear();
        // Emptied, it takes frames again and wakes the writer again.
        assert_eq!(outbox.offer(Frame::text("d")), Ok(()));
        outbox.ready().await;
        outbox.take_all(&mut batch);
        assert_eq!(batch, [Frame::text("d")]);
    }
}
