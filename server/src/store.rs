//! The store: where messages of the durable channels and pending schedules are kept.
//!
//! [`Store`] is the seam. The hub and the scheduler hand it [`Change`]s that never wait (it
//! may write them later, in batches); at start the server [`load`](Store::load)s what it
//! needs; "load earlier messages" reads [`page`](Store::page)s. Two implementations:
//! - [`sqlite`](crate::sqlite): a file, written by one background thread in batches, one
//!   transaction each (write-ahead log, group commit);
//! - [`MemoryStore`]: `--database memory`, nothing on disk; history lasts as long as the
//!   process.
//!
//! A PostgreSQL store plugs in here without touching the hub or the sessions.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::message::{Body, Channel, ChatMessage};

/// A schedule as the store keeps it: only those for durable channels are kept.
#[derive(Debug, Clone)]
pub struct StoredSchedule {
    pub id: u64,
    /// When it is due, in milliseconds since the Unix epoch.
    pub due_ms: i64,
    pub channel: Channel,
    pub author: Arc<str>,
    pub body: Body,
}

/// A change to what is kept.
#[derive(Debug)]
pub enum Change {
    /// A message of a durable channel, as it was fanned out.
    Message(Arc<ChatMessage>),
    /// A schedule just accepted.
    Schedule(StoredSchedule),
    /// A schedule about to be delivered; `written` is told once that is on disk (or could not
    /// be written). A schedule still marked when the server starts was being delivered when
    /// the server stopped: it is not delivered again (see the scheduler).
    Firing { id: u64, written: oneshot::Sender<bool> },
    /// A schedule delivered: it is removed and its message (if its channel is durable) added,
    /// in one transaction, so that it is never both pending and delivered.
    Delivered { id: u64, message: Option<Arc<ChatMessage>> },
}

/// What the server needs at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Per durable channel: the next seq to give, and its newest messages, oldest first.
    pub channels: Vec<(Channel, u64, Vec<ChatMessage>)>,
    /// Pending schedules.
    pub schedules: Vec<StoredSchedule>,
    /// Schedules that were being delivered when the server stopped; removed at load.
    pub interrupted: Vec<StoredSchedule>,
}

/// Whether writes are going through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreHealth {
    Ok,
    /// Writes fail (disk full, read-only, I/O errors); they are retried, and what is waiting
    /// stays in memory up to the backlog bound.
    Failing,
}

/// The store, whichever it is.
pub trait Store: Send + Sync {
    /// Per durable channel, its next seq and newest `recent` messages; the pending schedules.
    /// Called once, at start, before anything is recorded.
    fn load(&self, recent: usize) -> anyhow::Result<Loaded>;

    /// Keeps `change`, now or soon; never waits.
    fn record(&self, change: Change);

    /// Up to `limit` messages of `channel` before `before`, oldest first. Blocks: call it
    /// from a blocking task.
    fn page(&self, channel: Channel, before: u64, limit: usize)
    -> anyhow::Result<Vec<ChatMessage>>;

    /// Writes everything recorded so far; waits up to `limit`. Says whether all was written.
    fn flush(&self, limit: Duration) -> bool;

    /// Writes everything recorded so far and lets go of the file (the server is stopping);
    /// nothing can be recorded after. Waits up to `limit`; says whether all was written.
    fn close(&self, limit: Duration) -> bool {
        self.flush(limit)
    }

    fn health(&self) -> StoreHealth;
}

/// `--database memory`: history for as long as the process runs, `--history-keep` per channel.
pub struct MemoryStore {
    keep: usize,
    channels: Mutex<HashMap<Channel, VecDeque<Arc<ChatMessage>>>>,
}

impl MemoryStore {
    pub fn new(keep: usize) -> MemoryStore {
        MemoryStore { keep, channels: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Channel, VecDeque<Arc<ChatMessage>>>> {
        self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn keep(&self, message: Arc<ChatMessage>) {
        let mut channels = self.lock();
        let kept = channels.entry(message.channel).or_default();
        kept.push_back(message);
        while kept.len() > self.keep {
            kept.pop_front();
        }
    }
}

impl Store for MemoryStore {
    fn load(&self, _recent: usize) -> anyhow::Result<Loaded> {
        Ok(Loaded::default())
    }

    fn record(&self, change: Change) {
        match change {
            Change::Message(message) | Change::Delivered { message: Some(message), .. } => {
                self.keep(message)
            }
            Change::Firing { written, .. } => {
                let _ = written.send(true);
            }
            Change::Schedule(_) | Change::Delivered { message: None, .. } => {}
        }
    }

    fn page(
        &self,
        channel: Channel,
        before: u64,
        limit: usize,
    ) -> anyhow::Result<Vec<ChatMessage>> {
        let channels = self.lock();
        let Some(kept) = channels.get(&channel) else { return Ok(Vec::new()) };
        let end = kept.partition_point(|message| message.seq < before);
        let start = end.saturating_sub(limit);
        Ok(kept
            .range(start..end)
            .map(|message| {
                ChatMessage::new(
                    message.channel,
                    message.seq,
                    message.author.clone(),
                    message.body.clone(),
                    message.at_ms,
                    message.late,
                )
            })
            .collect())
    }

    fn flush(&self, _limit: Duration) -> bool {
        true
    }

    fn health(&self) -> StoreHealth {
        StoreHealth::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64) -> Arc<ChatMessage> {
        Arc::new(ChatMessage::new(
            Channel::Feed,
            seq,
            "a".into(),
            Body::Text(seq.to_string()),
            0,
            false,
        ))
    }

    #[test]
    fn the_memory_store_keeps_the_newest_and_pages_back() {
        let store = MemoryStore::new(5);
        for seq in 1..=8 {
            store.record(Change::Message(message(seq)));
        }
        let seqs = |page: Vec<ChatMessage>| page.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(store.page(Channel::Feed, 9, 3).unwrap()), [6, 7, 8]);
        assert_eq!(seqs(store.page(Channel::Feed, 6, 10).unwrap()), [4, 5]);
        assert_eq!(seqs(store.page(Channel::Room(1), 6, 10).unwrap()), Vec::<u64>::new());
    }
}
