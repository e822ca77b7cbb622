//! The sequencer: in a cluster (`--redis`), where messages of the durable channels (the feed,
//! named rooms) get their seq, from PostgreSQL, and where scheduled ones are claimed.
//!
//! One server alone gives seqs in its hub, from memory. Several servers cannot: two of them
//! would give the same seq to two messages. Redis could count, but it keeps nothing on disk
//! here and may restart; PostgreSQL keeps the messages anyway, and a commit takes ~0.3 ms. So
//! each node has one thread with a connection of its own that takes whatever drafts have
//! queued (it does not wait for more: under load batches grow by themselves) and, in ONE
//! transaction per batch:
//! 1. deletes the schedule rows the batch delivers (`DELETE ... RETURNING`): a draft whose row
//!    is gone was delivered by another node, and is dropped. That is "exactly once";
//! 2. per channel, in name order (so two nodes never wait on each other's locks),
//!    `reserved = reserved + n RETURNING reserved`: the row lock serialises the nodes, so a
//!    seq is committed before any higher seq of its channel is given;
//! 3. inserts the messages with those seqs, and commits.
//!
//! Then the batch goes to the local hub (its senders are told `{"sent"}`) and to the broker,
//! which publishes it to the other nodes once. Because of 2., a node that has seen seq N knows
//! every seq below N is either in the database or was deleted: [`GapFiller`] reads what a node
//! missed from there.
//!
//! Every second the thread also claims schedules overdue by more than [`ORPHANED_AFTER`] (the
//! node that accepted them died, or is far behind): `FOR UPDATE SKIP LOCKED`, deleted and
//! delivered (marked late) in the same transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls, Statement};

use crate::broker::Broker;
use crate::hub::{Hub, PeerId};
use crate::message::{Author, Body, Channel, ChatMessage, now_ms};
use crate::postgres::{
    INSERT_MESSAGES, PostgresStore, insert_messages, prune_channel, schedule_from_row,
};
use crate::store::{AccountStore, StoreHealth};

/// Drafts waiting for the sequencer at most; past this a sender is told the server is busy
/// (PostgreSQL is slow or away), rather than the server's memory growing.
pub const DRAFT_BACKLOG: usize = 10_000;

/// Drafts sequenced in one transaction at most.
const MAX_BATCH: usize = 1024;

/// How often the thread looks for orphaned schedules, and retries a failed batch.
const TICK: Duration = Duration::from_secs(1);

/// A schedule this much overdue is taken by any node: its own node would have fired it by now
/// (a pile of them paced by `--schedule-delivery-rate` may take longer; they are then taken
/// over, still once each).
pub const ORPHANED_AFTER: Duration = Duration::from_secs(3);

/// Orphaned schedules claimed per sweep at most.
const SWEEP_BATCH: i64 = 100;

/// How often old messages of the channels this node sequenced are deleted (`--history-keep`;
/// in a cluster the store's writer inserts no messages, so the sequencer prunes).
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// A failing database is logged at most this often.
const LOG_FAILURE_EVERY: Duration = Duration::from_secs(60);

/// A message of a durable channel that has no seq yet.
#[derive(Debug)]
pub struct Draft {
    pub channel: Channel,
    pub author: Author,
    pub body: Body,
    pub late: bool,
    /// The local connection that sent it (it does not get it back), and whether it asked for
    /// `{"sent"}`.
    pub sender: Option<(PeerId, bool)>,
    /// The schedule it delivers: it is sent only if this node is the one that removes its row.
    pub schedule: Option<u64>,
}

/// A message with its seq, on its way to the hub.
#[derive(Debug, Clone)]
pub struct Sequenced {
    pub message: Arc<ChatMessage>,
    /// As in [`Draft::sender`]; `None` for messages from other nodes and from schedules.
    pub sender: Option<(PeerId, bool)>,
}

/// Why a draft was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DraftRefused {
    #[error("the server is busy (its database is slow or unreachable); try again")]
    Busy,
    #[error("the server is stopping")]
    Stopped,
}

/// The way into the sequencer thread; [`send`](Drafts::send) never waits.
pub struct Drafts {
    queue: Mutex<Option<SyncSender<Draft>>>,
    finished: Mutex<Option<Receiver<()>>>,
    /// Set while the last batch (or sweep) failed. In a cluster the store's writer inserts
    /// no messages, so without this `/healthz` would say `"store": "ok"` all the while
    /// PostgreSQL is away and the feed's messages wait.
    failing: Arc<AtomicBool>,
}

impl Drafts {
    pub fn send(&self, draft: Draft) -> Result<(), DraftRefused> {
        let queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(queue) = queue.as_ref() else { return Err(DraftRefused::Stopped) };
        queue.try_send(draft).map_err(|error| match error {
            TrySendError::Full(_) => DraftRefused::Busy,
            TrySendError::Disconnected(_) => DraftRefused::Stopped,
        })
    }

    /// `Failing` while messages cannot be sequenced (PostgreSQL is away), for `/healthz`.
    pub fn health(&self) -> StoreHealth {
        if self.failing.load(Ordering::Relaxed) { StoreHealth::Failing } else { StoreHealth::Ok }
    }

    /// Lets the thread sequence what is queued and end; waits up to `limit`.
    pub fn close(&self, limit: Duration) -> bool {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        let finished = self.finished.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        finished.is_none_or(|finished| finished.recv_timeout(limit).is_ok())
    }
}

#[cfg(test)]
impl Drafts {
    /// A sequencer that is gone: puts a hub in cluster mode for its unit tests.
    pub fn detached() -> Arc<Drafts> {
        let (queue, _) = mpsc::sync_channel(1);
        Arc::new(Drafts {
            queue: Mutex::new(Some(queue)),
            finished: Mutex::new(None),
            failing: Arc::default(),
        })
    }
}

/// Starts the sequencer thread on a connection of its own to `url`; it hands what it
/// sequences to `hub` and `broker`. Fails only if the thread cannot be started: the database
/// is (re)connected to in the thread, retrying.
/// `keep` is `--history-keep`: messages kept per channel.
pub fn start(
    url: &str,
    keep: usize,
    hub: Arc<Hub>,
    broker: Arc<Broker>,
) -> anyhow::Result<Arc<Drafts>> {
    let config = crate::postgres::connection_config(url)?;
    let (queue, drafts) = mpsc::sync_channel(DRAFT_BACKLOG);
    let (finished_tx, finished) = mpsc::channel();
    let failing = Arc::new(AtomicBool::new(false));
    let mut sequencer = Sequencer {
        failing: failing.clone(),
        place: crate::postgres::place(&config),
        config,
        connected: None,
        hub,
        broker,
        last_failure_log: None,
        keep,
        sequenced_in: BTreeSet::new(),
        last_prune: Instant::now(),
    };
    std::thread::Builder::new().name("sequencer".into()).spawn(move || {
        sequencer.run(drafts);
        let _ = finished_tx.send(());
    })?;
    Ok(Arc::new(Drafts {
        queue: Mutex::new(Some(queue)),
        finished: Mutex::new(Some(finished)),
        failing,
    }))
}

struct Sequencer {
    config: postgres::Config,
    place: String,
    connected: Option<(Client, Statement)>,
    hub: Arc<Hub>,
    broker: Arc<Broker>,
    last_failure_log: Option<Instant>,
    /// See [`Drafts::failing`].
    failing: Arc<AtomicBool>,
    keep: usize,
    /// The channels sequenced here since the last prune.
    sequenced_in: BTreeSet<&'static str>,
    last_prune: Instant,
}

impl Sequencer {
    fn run(&mut self, drafts: Receiver<Draft>) {
        let mut batch: Vec<Draft> = Vec::new();
        let mut last_sweep = Instant::now();
        let mut open = true;
        while open || !batch.is_empty() {
            if batch.is_empty() {
                match drafts.recv_timeout(TICK) {
                    Ok(draft) => batch.push(draft),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
            }
            while batch.len() < MAX_BATCH {
                match drafts.try_recv() {
                    Ok(draft) => batch.push(draft),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if open && self.last_prune.elapsed() >= PRUNE_EVERY {
                self.prune();
            }
            let sweep = open && last_sweep.elapsed() >= TICK;
            if batch.is_empty() && !sweep {
                continue;
            }
            match self.sequence(&batch, sweep) {
                Ok(sequenced) => {
                    batch.clear();
                    self.failing.store(false, Ordering::Relaxed);
                    if sweep {
                        last_sweep = Instant::now();
                    }
                    if !sequenced.is_empty() {
                        let names = sequenced.iter().filter_map(|s| s.message.channel.store_key());
                        self.sequenced_in.extend(names);
                        self.hub.deliver_sequenced(&sequenced);
                        self.broker.publish(&sequenced);
                    }
                }
                Err(error) => {
                    self.failing.store(true, Ordering::Relaxed);
                    self.failed(&error, batch.len());
                    if !open {
                        tracing::error!(
                            unsent = batch.len(),
                            "stopping with messages that could not be sequenced"
                        );
                        return;
                    }
                    // Wait before retrying, but take no new drafts meanwhile: the queue's
                    // bound then tells senders the server is busy.
                    std::thread::sleep(TICK);
                }
            }
        }
    }

    /// Deletes all but the newest `--history-keep` messages of the channels sequenced here
    /// lately (several nodes doing it at once is harmless).
    fn prune(&mut self) {
        self.last_prune = Instant::now();
        let Some((client, _)) = self.connected.as_mut() else { return };
        for name in std::mem::take(&mut self.sequenced_in) {
            if let Err(error) = prune_channel(client, name, self.keep) {
                tracing::debug!(%error, "pruning old messages failed; will try again");
                return;
            }
        }
    }

    fn failed(&mut self, error: &anyhow::Error, waiting: usize) {
        let now = Instant::now();
        if self.last_failure_log.is_none_or(|at| now - at >= LOG_FAILURE_EVERY) {
            self.last_failure_log = Some(now);
            tracing::error!(
                place = %self.place,
                error = format!("{error:#}"),
                waiting,
                "cannot sequence messages in PostgreSQL; retrying every second"
            );
        }
    }

    /// One transaction: the batch's schedules claimed, seqs reserved, messages inserted; with
    /// `sweep`, orphaned schedules too. What it gives back is committed.
    fn sequence(&mut self, batch: &[Draft], sweep: bool) -> anyhow::Result<Vec<Sequenced>> {
        if self.connected.as_ref().is_some_and(|(client, _)| client.is_closed()) {
            self.connected = None;
        }
        let (client, insert) = match &mut self.connected {
            Some(connected) => connected,
            None => {
                let mut client = self.config.connect(NoTls)?;
                let insert = client.prepare(INSERT_MESSAGES)?;
                self.connected.insert((client, insert))
            }
        };
        let result = sequence_batch(client, insert, batch, sweep);
        if result.is_err() {
            self.connected = None;
        }
        Ok(result?)
    }
}

/// See [`Sequencer::sequence`].
fn sequence_batch(
    client: &mut Client,
    insert: &Statement,
    batch: &[Draft],
    sweep: bool,
) -> Result<Vec<Sequenced>, postgres::Error> {
    let mut transaction = client.transaction()?;
    // 1. Schedules, in id order (two nodes claiming the same ones take their locks in the
    // same order).
    let mut claims: Vec<(u64, usize)> = batch
        .iter()
        .enumerate()
        .filter_map(|(index, draft)| draft.schedule.map(|id| (id, index)))
        .collect();
    claims.sort_unstable();
    let mut lost = vec![false; batch.len()];
    for (id, index) in claims {
        let deleted =
            transaction.execute("DELETE FROM schedules WHERE id = $1", &[&(id as i64)])?;
        lost[index] = deleted == 0;
    }
    let mut drafts: Vec<Draft> = Vec::new();
    if sweep {
        let overdue = now_ms() - ORPHANED_AFTER.as_millis() as i64;
        let rows = transaction.query(
            "DELETE FROM schedules WHERE id IN (
                 SELECT id FROM schedules WHERE due_ms < $1 AND NOT firing
                 ORDER BY due_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING *",
            &[&overdue, &SWEEP_BATCH],
        )?;
        for row in rows {
            let Some(schedule) = schedule_from_row(&row)? else { continue };
            tracing::info!(id = schedule.id, "delivering an orphaned schedule (its node did not)");
            drafts.push(Draft {
                channel: schedule.channel,
                author: schedule.author,
                body: schedule.body,
                late: true,
                sender: None,
                schedule: None,
            });
        }
    }
    let kept: Vec<&Draft> = batch
        .iter()
        .zip(&lost)
        .filter(|(_, lost)| !**lost)
        .map(|(draft, _)| draft)
        .chain(&drafts)
        .filter(|draft| draft.channel.is_durable())
        .collect();
    // 2. Seqs: per channel, in name order.
    let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
    for draft in &kept {
        if let Some(name) = draft.channel.store_key() {
            *counts.entry(name).or_default() += 1;
        }
    }
    let mut next: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (name, count) in counts {
        let reserved: i64 = transaction
            .query_one(
                "INSERT INTO channels (name, reserved) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET reserved = channels.reserved + excluded.reserved
                 RETURNING reserved",
                &[&name, &count],
            )?
            .try_get(0)?;
        next.insert(name, (reserved - count + 1) as u64);
    }
    let at_ms = now_ms();
    let mut sequenced = Vec::with_capacity(kept.len());
    for draft in kept {
        let Some(seq) = draft.channel.store_key().and_then(|name| next.get_mut(name)) else {
            continue;
        };
        let message = ChatMessage::new(
            draft.channel,
            *seq,
            draft.author.clone(),
            draft.body.clone(),
            at_ms,
            draft.late,
        );
        *seq += 1;
        sequenced.push(Sequenced { message: Arc::new(message), sender: draft.sender });
    }
    // 3. The messages, in one statement.
    let messages: Vec<&ChatMessage> =
        sequenced.iter().map(|sequenced| &*sequenced.message).collect();
    insert_messages(&mut transaction, insert, &messages)?;
    transaction.commit()?;
    Ok(sequenced)
}

/// How long a message that arrived before an earlier one of its channel is held before the
/// missing ones are read from PostgreSQL: long enough for Redis to bring a message another
/// node sequenced a moment earlier (well under a millisecond on a LAN), short enough that a
/// deleted seq or a lost publish costs people little.
pub const HOLD_FOR: Duration = Duration::from_millis(200);

/// How often the gap filler looks for held messages.
const GAP_CHECK_EVERY: Duration = Duration::from_millis(50);

/// How often a node compares each channel's newest seq in PostgreSQL with its own.
const TAIL_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Messages read per channel in one go when catching up.
const CATCH_UP_PAGE: usize = 1000;

/// Pages read per channel in one catch-up at most (then the next check goes on).
const CATCH_UP_PAGES: usize = 100;

/// How long a resuming client waits at most for its node to catch up.
const REACH_TIMEOUT: Duration = Duration::from_secs(2);

/// Fills what a node missed from PostgreSQL: one timer task for held messages, and a catch-up
/// of every channel when the broker (re)subscribes.
pub struct GapFiller {
    hub: Arc<Hub>,
    store: Arc<PostgresStore>,
}

impl GapFiller {
    /// Starts the timer task.
    pub fn start(hub: Arc<Hub>, store: Arc<PostgresStore>) -> Arc<GapFiller> {
        let filler = Arc::new(GapFiller { hub, store });
        tokio::spawn(filler.clone().watch_gaps());
        tokio::spawn(filler.clone().watch_tails());
        filler
    }

    /// Every [`TAIL_CHECK_EVERY`]: compares each channel's reservation in PostgreSQL with the
    /// last seq delivered here, and reads what is missing. A gap shows only when a later
    /// message arrives; this finds a channel's newest messages when nothing follows them: a
    /// publish that was lost (Redis restarting between a subscription and a publish, the
    /// publishing queue full). One query per check while nothing is missing.
    async fn watch_tails(self: Arc<Self>) {
        let mut every = tokio::time::interval(TAIL_CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let store = self.store.clone();
            let Ok(Ok(reservations)) =
                tokio::task::spawn_blocking(move || store.reservations()).await
            else {
                continue;
            };
            for (channel, reserved) in reservations {
                let Some(last) = self.hub.position(channel) else { continue };
                if last >= reserved {
                    continue;
                }
                let store = self.store.clone();
                let found = tokio::task::spawn_blocking(move || {
                    store.messages_between(channel, last, reserved + 1, CATCH_UP_PAGE)
                })
                .await;
                match found {
                    // Every seq up to `reserved` is committed or deleted: all of it is known.
                    Ok(Ok(found)) if found.len() < CATCH_UP_PAGE => {
                        self.hub.fill(channel, found, Some(reserved + 1))
                    }
                    Ok(Ok(found)) => self.hub.fill(channel, found, None),
                    Ok(Err(_)) | Err(_) => {}
                }
            }
        }
    }

    async fn watch_gaps(self: Arc<Self>) {
        let mut every = tokio::time::interval(GAP_CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            for (channel, after, before) in self.hub.gaps(HOLD_FOR) {
                let store = self.store.clone();
                let found = tokio::task::spawn_blocking(move || {
                    store.messages_between(channel, after, before, CATCH_UP_PAGE)
                })
                .await;
                match found {
                    // Everything below `before` is now known: what is not there was deleted.
                    Ok(Ok(found)) if found.len() < CATCH_UP_PAGE => {
                        self.hub.fill(channel, found, Some(before))
                    }
                    Ok(Ok(found)) => self.hub.fill(channel, found, None),
                    Ok(Err(error)) => {
                        tracing::warn!(error = format!("{error:#}"), "reading a gap failed")
                    }
                    Err(_) => {}
                }
            }
        }
    }

    /// Delivers, for every durable channel, what was committed after the last seq this node
    /// delivered (Redis was away, or this node just subscribed).
    pub async fn catch_up(&self) {
        // Named rooms created elsewhere while this node did not hear them.
        let store = self.store.clone();
        if let Ok(Ok(rooms)) = tokio::task::spawn_blocking(move || store.rooms()).await {
            for room in rooms {
                // One known already is "taken": nothing to do.
                let _ = self.hub.add_room(room, usize::MAX, usize::MAX);
            }
        }
        for (channel, last) in self.hub.positions() {
            self.catch_up_channel(channel, last).await;
        }
    }

    /// Before a client resumes `channel` after `seq`: if this node has not delivered that far
    /// yet (the client came from a node that was ahead), it catches up first, so the client
    /// gets what it missed rather than being told its seq is unknown. Bounded by
    /// [`REACH_TIMEOUT`].
    pub async fn reach(&self, channel: Channel, seq: u64) {
        let Some(last) = self.hub.position(channel) else { return };
        if last < seq {
            let _ = tokio::time::timeout(REACH_TIMEOUT, self.catch_up_channel(channel, last)).await;
        }
    }

    async fn catch_up_channel(&self, channel: Channel, last: u64) {
        let mut after = last;
        for _ in 0..CATCH_UP_PAGES {
            let store = self.store.clone();
            let found = tokio::task::spawn_blocking(move || {
                store.messages_between(channel, after, u64::MAX, CATCH_UP_PAGE)
            })
            .await;
            let found = match found {
                Ok(Ok(found)) => found,
                Ok(Err(error)) => {
                    tracing::warn!(error = format!("{error:#}"), "catching up failed");
                    break;
                }
                Err(_) => break,
            };
            let (count, newest) = (found.len(), found.last().map(|message| message.seq));
            self.hub.fill(channel, found, None);
            match newest {
                Some(newest) if count == CATCH_UP_PAGE => after = newest,
                _ => break,
            }
        }
    }
}
