//! The writer thread that both real stores ([`sqlite`](crate::sqlite) and
//! [`postgres`](crate::postgres)) share: what they write differs, how they write it does not.
//!
//! The hub and the scheduler hand their [`Change`]s to a queue and go on. The writer thread
//! takes whatever has gathered, writes it in one transaction and commits, then takes the next
//! batch. Under load batches grow, so one commit (one sync to disk) carries many messages:
//! group commit. A message is written a few milliseconds after it was fanned out; the promise
//! written in the README is 100 ms.
//!
//! When writing fails (disk full, read-only, I/O error, the database unreachable), the batch
//! stays in memory (up to `--store-backlog` changes) and is retried every second; the error is
//! logged at most once a minute and `/healthz` says `"store": "failing"`. Live chat does not
//! wait for any of this.
//!
//! `seq`s are never reused: the database holds, per channel, a seq the server may go up to;
//! the writer keeps it well ahead of what has been given. A clean stop brings it back to the
//! last seq given, so that after a restart seqs go on with no gap; after a crash they go on
//! after the reserve, so that a seq a client saw in the moments before the crash, but that
//! never reached the disk, is not given to another message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::store::{Change, StoreHealth};

/// How far ahead of the last seq given the reservation is kept.
pub const SEQ_RESERVE: u64 = 1_000_000;

/// Changes written in one transaction at most.
const MAX_BATCH: usize = 4096;

/// How long the writer lets a batch gather after its first change: far inside the 100 ms
/// promise, and under load it turns many small transactions (each a sync to disk) into few.
const GATHER: Duration = Duration::from_millis(5);

/// How often a failing write is retried.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// A failing store is logged at most this often.
const LOG_FAILURE_EVERY: Duration = Duration::from_secs(60);

/// How often old messages are deleted (`--history-keep`).
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// What a database does for the writer thread; each call is one transaction.
pub trait Batches: Send + 'static {
    /// Writes `changes`, in order, and sets each `(channel, seq)` of `reservations` as the
    /// channel's reservation, all in one transaction: all or nothing.
    fn write(
        &mut self,
        changes: &[Change],
        reservations: &[(&'static str, u64)],
    ) -> anyhow::Result<()>;

    /// Deletes all but the newest `keep` messages of the channel named `name`.
    fn prune(&mut self, name: &str, keep: usize) -> anyhow::Result<()>;

    /// Sets each `(channel, seq)`'s reservation to the seq, the last given (the server is
    /// stopping cleanly).
    fn release(&mut self, last_given: &[(&'static str, u64)]) -> anyhow::Result<()>;

    /// Where it writes, for the log: a file's path, a database's host.
    fn place(&self) -> String;
}

/// How the writer is bounded, from the command line.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Messages kept per channel; older ones are deleted in the background.
    pub keep: usize,
    /// Changes held in memory while writing fails; beyond this new ones are not kept.
    pub backlog: usize,
    /// Where the time each batch took to write is recorded (`/metrics`).
    pub write_seconds: Option<prometheus_client::metrics::histogram::Histogram>,
}

enum Request {
    Change(Change),
    /// Answered once everything before it is written (or could not be).
    Flush(SyncSender<bool>),
}

/// The queue to the writer thread: [`record`](WriteQueue::record) never waits.
pub struct WriteQueue {
    queue: Mutex<Sender<Request>>,
    /// Changes in the queue or waiting to be written; past `--store-backlog`, new messages are
    /// delivered but not kept (and that is logged), so the server's memory stays bounded
    /// whatever the database does.
    queued: Arc<AtomicUsize>,
    backlog: usize,
    failing: Arc<AtomicBool>,
    /// Messages not kept because the backlog was full, since the writer last logged it.
    dropped: Arc<AtomicU64>,
    /// Told by the writer thread when it ends, whether it wrote everything.
    writer: Mutex<Option<Receiver<bool>>>,
}

impl WriteQueue {
    /// Starts the writer thread on `batches`.
    pub fn start(batches: impl Batches, options: WriterOptions) -> std::io::Result<WriteQueue> {
        let (queue, requests) = mpsc::channel();
        let failing = Arc::new(AtomicBool::new(false));
        let queued = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let backlog = options.backlog;
        let writer = Writer {
            batches,
            requests,
            options,
            failing: failing.clone(),
            pending: Vec::new(),
            acks: Vec::new(),
            flushes: Vec::new(),
            seen: HashMap::new(),
            reserved: HashMap::new(),
            queued: queued.clone(),
            dropped: dropped.clone(),
            last_failure_log: None,
            last_prune: Instant::now(),
        };
        let (finished, writer_finished) = mpsc::channel();
        std::thread::Builder::new().name("store-writer".into()).spawn(move || {
            let _ = finished.send(writer.run());
        })?;
        Ok(WriteQueue {
            queue: Mutex::new(queue),
            queued,
            backlog,
            failing,
            dropped,
            writer: Mutex::new(Some(writer_finished)),
        })
    }

    fn send(&self, request: Request) -> bool {
        let queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        queue.send(request).is_ok()
    }

    /// Keeps `change` soon; never waits.
    pub fn record(&self, change: Change) {
        if matches!(change, Change::Message(_))
            && self.queued.load(Ordering::Relaxed) >= self.backlog
        {
            // It was delivered live; it is only not kept. The writer logs how many.
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        if !self.send(Request::Change(change)) {
            tracing::error!("the store's writer has stopped; a change was not kept");
        }
    }

    /// Waits up to `limit` for everything recorded so far to be written; says whether it was.
    pub fn flush(&self, limit: Duration) -> bool {
        let (done, written) = mpsc::sync_channel(1);
        if !self.send(Request::Flush(done)) {
            return false;
        }
        written.recv_timeout(limit).unwrap_or(false)
    }

    /// Closes the queue (the writer then writes what is left, brings the reservations back and
    /// ends) and waits for the writer, up to `limit`.
    pub fn close(&self, limit: Duration) -> bool {
        let (closed, _) = mpsc::channel();
        *self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = closed;
        let finished = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        let Some(finished) = finished else { return true };
        finished.recv_timeout(limit).unwrap_or(false)
    }

    pub fn health(&self) -> StoreHealth {
        if self.failing.load(Ordering::Relaxed) { StoreHealth::Failing } else { StoreHealth::Ok }
    }
}

impl Drop for WriteQueue {
    fn drop(&mut self) {
        self.close(Duration::from_secs(10));
    }
}

/// The one thread that writes.
struct Writer<B> {
    batches: B,
    requests: Receiver<Request>,
    options: WriterOptions,
    failing: Arc<AtomicBool>,
    /// Changes taken from the queue and not yet written.
    pending: Vec<Change>,
    /// Told once the batch they came in is written.
    acks: Vec<oneshot::Sender<bool>>,
    flushes: Vec<SyncSender<bool>>,
    /// Per channel: the highest seq seen in a change (written or not).
    seen: HashMap<&'static str, u64>,
    /// Per channel: the reservation in the database.
    reserved: HashMap<&'static str, u64>,
    /// Changes sent and not yet written (shared with `record`).
    queued: Arc<AtomicUsize>,
    /// Messages not kept because the backlog was full, since the last log line.
    dropped: Arc<AtomicU64>,
    last_failure_log: Option<Instant>,
    last_prune: Instant,
}

impl<B: Batches> Writer<B> {
    /// Writes until the queue closes; says whether everything was written in the end.
    fn run(mut self) -> bool {
        loop {
            // Wait for work, but wake up now and then to retry and to prune.
            let first = match self.requests.recv_timeout(RETRY_EVERY) {
                Ok(request) => Some(request),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut open = true;
            if let Some(request) = first {
                self.take(request);
                // Group commit: whatever arrives in the next few milliseconds goes into the
                // same transaction. The writer sleeps through them rather than waiting on the
                // queue, so that a busy feed does not wake this thread once per message.
                std::thread::sleep(GATHER);
                while self.pending.len() < MAX_BATCH {
                    match self.requests.try_recv() {
                        Ok(request) => self.take(request),
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                }
            }
            self.write_pending();
            if self.last_prune.elapsed() >= PRUNE_EVERY && !self.failing.load(Ordering::Relaxed) {
                self.prune();
            }
            if !open {
                break;
            }
        }
        // The queue closed: the server is stopping. Write what is left, then bring the
        // reservations back to the last seq given, so the next start goes on without a gap.
        while let Ok(request) = self.requests.try_recv() {
            self.take(request);
        }
        self.write_pending();
        if self.pending.is_empty() {
            let last_given: Vec<(&'static str, u64)> =
                self.seen.iter().map(|(&name, &seq)| (name, seq)).collect();
            self.batches.release(&last_given).is_ok()
        } else {
            tracing::error!(
                unwritten = self.pending.len(),
                "stopping with changes the store could not write"
            );
            false
        }
    }

    fn take(&mut self, request: Request) {
        match request {
            Request::Flush(done) => self.flushes.push(done),
            Request::Change(change) => {
                if let Change::Message(message) | Change::Delivered { message: Some(message), .. } =
                    &change
                    && let Some(name) = message.channel.store_key()
                {
                    let seen = self.seen.entry(name).or_default();
                    *seen = (*seen).max(message.seq);
                }
                self.pending.push(change);
            }
        }
    }

    /// The reservations that must move ahead with this batch: those the seqs given have come
    /// within half the reserve of.
    fn reservations(&self) -> Vec<(&'static str, u64)> {
        self.seen
            .iter()
            .filter(|&(name, &seen)| {
                seen + SEQ_RESERVE / 2 > self.reserved.get(name).copied().unwrap_or(0)
            })
            .map(|(&name, &seen)| (name, seen + SEQ_RESERVE))
            .collect()
    }

    /// Writes the pending changes in one transaction; on failure keeps them for the retry.
    fn write_pending(&mut self) {
        if self.pending.is_empty() && self.flushes.is_empty() {
            return;
        }
        let started = Instant::now();
        let reservations = self.reservations();
        let result = self.batches.write(&self.pending, &reservations);
        if let Some(histogram) = &self.options.write_seconds {
            histogram.observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(()) => {
                self.reserved.extend(reservations);
                self.queued.fetch_sub(self.pending.len(), Ordering::Relaxed);
                let dropped = self.dropped.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    tracing::error!(
                        dropped,
                        "messages were delivered but not kept: the store's backlog was full"
                    );
                }
                for change in self.pending.drain(..) {
                    if let Change::Firing { written, .. } = change {
                        self.acks.push(written);
                    }
                }
                for ack in self.acks.drain(..) {
                    let _ = ack.send(true);
                }
                for flush in self.flushes.drain(..) {
                    let _ = flush.send(true);
                }
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!(place = %self.batches.place(), "the store is writing again");
                    self.last_failure_log = None;
                }
            }
            Err(error) => {
                self.failing.store(true, Ordering::Relaxed);
                let now = Instant::now();
                if self.last_failure_log.is_none_or(|at| now - at >= LOG_FAILURE_EVERY) {
                    self.last_failure_log = Some(now);
                    tracing::error!(
                        place = %self.batches.place(),
                        error = format!("{error:#}"),
                        waiting = self.pending.len(),
                        dropped = self.dropped.swap(0, Ordering::Relaxed),
                        "the store cannot write; retrying every second (chat goes on)"
                    );
                }
                // Whoever waits for a schedule's mark goes on: a failing store must not stop
                // schedules (see the scheduler).
                for change in &mut self.pending {
                    if let Change::Firing { written, .. } = change {
                        let (replaced, _) = oneshot::channel();
                        let _ = std::mem::replace(written, replaced).send(false);
                    }
                }
                for flush in self.flushes.drain(..) {
                    let _ = flush.send(false);
                }
            }
        }
    }

    /// Deletes all but the newest `--history-keep` messages of each channel written to.
    fn prune(&mut self) {
        self.last_prune = Instant::now();
        let names: Vec<&'static str> = self.seen.keys().copied().collect();
        for name in names {
            if let Err(error) = self.batches.prune(name, self.options.keep) {
                tracing::debug!(
                    error = format!("{error:#}"),
                    "pruning old messages failed; will try again"
                );
            }
        }
    }
}
