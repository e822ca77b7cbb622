//! Scheduled messages: one timer task over every pending schedule, in order of when they are
//! due, delivering each to the channel it was sent in.
//!
//! A schedule outlives its sender's connection (the protocol delivers it to whoever is in the
//! channel then), so what one client may leave behind is capped three ways: per connection
//! (`--max-scheduled`), per client address, all its connections together
//! (`--max-scheduled-per-address`, so one address cannot take the server-wide capacity from
//! everyone), and in the whole server (`--max-scheduled-total`).
//!
//! Delivery is paced: at most `--schedule-delivery-rate` a second, however many came due at
//! once. Ten thousand schedules set for the same second then arrive over minutes instead of
//! landing in every reader's queue together and evicting readers that keep up with normal chat.
//!
//! Schedules for the feed are kept in the store from the moment they are accepted, and loaded
//! at start: they fire at their original time, or at once (marked `late`) if that passed while
//! the server was down. Delivery is ordered so that none is ever delivered twice:
//! 1. the store marks the schedule as firing, and the timer waits for that to be on disk;
//! 2. the hub delivers it, and the store removes the schedule and keeps the message in one
//!    transaction.
//!
//! A schedule still marked at start was being delivered when the server stopped between 1 and
//! the end of 2: it may have reached people, or not. It is not delivered again, and the server
//! logs that it was interrupted. Random rooms are not kept, and neither are their schedules.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::connections::ClientAddress;
use crate::hub::Hub;
use crate::message::{Author, Body, Channel, now_ms};
use crate::store::{Change, Store, StoredSchedule};

/// How long the timer waits for the store to mark a schedule as firing before it delivers
/// anyway (a failing disk must not stop schedules).
const MARK_TIMEOUT: Duration = Duration::from_secs(2);

/// The caps and the pace, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct ScheduleLimits {
    pub per_connection: usize,
    pub per_address: usize,
    pub total: usize,
    /// Deliveries per second at most.
    pub delivery_rate: f64,
    /// Part of a cluster: schedule ids are random (the nodes share one table), and a due one is
    /// claimed by the sequencer's delete instead of being marked as firing.
    pub cluster: bool,
}

/// One connection's count of pending schedules.
#[derive(Default, Clone)]
pub struct PendingCount(Arc<AtomicUsize>);

struct Pending {
    channel: Channel,
    author: Author,
    body: Body,
    /// Its time passed while the server was down.
    late: bool,
    /// Kept in the store (its channel is durable).
    stored: bool,
    /// The sender's count and address; a schedule loaded at start has neither.
    sender: Option<(PendingCount, ClientAddress)>,
}

#[derive(Default)]
struct State {
    /// By due time, then by arrival: two due at once go in the order they were scheduled.
    queue: BTreeMap<(Instant, u64), Pending>,
    next_id: u64,
    per_address: HashMap<ClientAddress, usize>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the timer task when a schedule earlier than all others arrives.
    changed: Notify,
    limits: ScheduleLimits,
    store: Arc<dyn Store>,
    /// Set when the server stops: the timer ends at its next wait.
    stopping: AtomicBool,
}

pub struct Scheduler {
    shared: Arc<Shared>,
    timer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Scheduler {
    /// Starts the timer task, which delivers through `hub`, with the schedules the store kept.
    pub fn start(
        hub: Arc<Hub>,
        store: Arc<dyn Store>,
        limits: ScheduleLimits,
        kept: Vec<StoredSchedule>,
    ) -> Scheduler {
        let mut state = State::default();
        let (now, now_ms) = (Instant::now(), now_ms());
        for schedule in kept {
            let wait = u64::try_from(schedule.due_ms - now_ms).ok();
            let due = now + Duration::from_millis(wait.unwrap_or(0));
            state.next_id = state.next_id.max(schedule.id + 1);
            let pending = Pending {
                channel: schedule.channel,
                author: schedule.author,
                body: schedule.body,
                late: wait.is_none(),
                stored: true,
                sender: None,
            };
            state.queue.insert((due, schedule.id), pending);
        }
        state.next_id = state.next_id.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changed: Notify::new(),
            limits,
            store,
            stopping: AtomicBool::new(false),
        });
        let timer = tokio::spawn(run_timer(shared.clone(), hub));
        Scheduler { shared, timer: Mutex::new(Some(timer)) }
    }

    /// Delivers `body` to `channel` after `delay`, or says why not (the error frame's text).
    pub fn schedule(
        &self,
        sender: &PendingCount,
        address: ClientAddress,
        delay: Duration,
        channel: Channel,
        author: Author,
        body: Body,
    ) -> Result<(), String> {
        let limits = &self.shared.limits;
        let mut state = self.shared.lock();
        if sender.0.load(Ordering::Relaxed) >= limits.per_connection {
            return Err(format!(
                "schedule: you already have {} scheduled messages waiting",
                limits.per_connection
            ));
        }
        let from_address = state.per_address.get(&address).copied().unwrap_or(0);
        if from_address >= limits.per_address {
            return Err(format!(
                "schedule: your address already has {} scheduled messages waiting",
                limits.per_address
            ));
        }
        if state.queue.len() >= limits.total {
            return Err("schedule: the server has too many scheduled messages waiting".into());
        }
        sender.0.fetch_add(1, Ordering::Relaxed);
        *state.per_address.entry(address).or_default() += 1;
        let due = Instant::now() + delay;
        let id = if limits.cluster { cluster_schedule_id() } else { state.next_id };
        state.next_id += 1;
        let stored = channel.is_durable();
        if stored {
            // Kept before the sender hears nothing went wrong: from now on it survives restarts.
            self.shared.store.record(Change::Schedule(StoredSchedule {
                id,
                due_ms: now_ms() + delay.as_millis() as i64,
                channel,
                author: author.clone(),
                body: body.clone(),
            }));
        }
        let earliest = state.queue.keys().next().is_none_or(|&(first, _)| due < first);
        let pending = Pending {
            channel,
            author,
            body,
            late: false,
            stored,
            sender: Some((sender.clone(), address)),
        };
        state.queue.insert((due, id), pending);
        drop(state);
        if earliest {
            self.shared.changed.notify_one();
        }
        Ok(())
    }

    /// Schedules waiting in the whole server.
    pub fn pending(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Stops the timer once the delivery it may be in the middle of is done (a schedule
    /// marked as firing is always delivered); what is still pending stays in the store for the
    /// next start. Waits up to `limit`.
    pub async fn stop(&self, limit: Duration) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.changed.notify_one();
        let timer = self.timer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(timer) = timer
            && tokio::time::timeout(limit, timer).await.is_err()
        {
            tracing::warn!("the scheduler did not stop in time");
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is a map insert or remove: a panic elsewhere cannot leave it torn.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the first schedule (and its id) if it is due at `now`; otherwise says when the
    /// first is due.
    fn take_due(&self, now: Instant) -> Result<(u64, Pending), Option<Instant>> {
        let mut state = self.lock();
        let Some(entry) = state.queue.first_entry() else { return Err(None) };
        let (due, id) = *entry.key();
        if due > now {
            return Err(Some(due));
        }
        let pending = entry.remove();
        if let Some((count, address)) = &pending.sender {
            if let Some(from_address) = state.per_address.get_mut(address) {
                *from_address -= 1;
                if *from_address == 0 {
                    state.per_address.remove(address);
                }
            }
            count.0.fetch_sub(1, Ordering::Relaxed);
        }
        Ok((id, pending))
    }
}

/// A schedule id no other node will give: 63 random bits (ids are `BIGINT`s). With 10,000
/// schedules pending, the chance that two share one is about 1 in 10^11.
fn cluster_schedule_id() -> u64 {
    let mut bytes = [0; 8];
    // The OS's random source does not fail on the systems the server runs on; if it did, a
    // time-based id is still unlikely to meet another.
    if getrandom::fill(&mut bytes).is_err() {
        bytes = (now_ms() as u64).to_le_bytes();
    }
    (u64::from_le_bytes(bytes) >> 1).max(1)
}

/// The one timer: sleeps until the first schedule is due (or an earlier one arrives), delivers
/// it, and waits out the pace before the next.
async fn run_timer(shared: Arc<Shared>, hub: Arc<Hub>) {
    let rate = shared.limits.delivery_rate;
    let spacing = if rate > 0.0 && rate.is_finite() {
        Duration::from_secs_f64(1.0 / rate)
    } else {
        Duration::ZERO
    };
    let mut next_delivery = Instant::now();
    let stopping = || shared.stopping.load(Ordering::Acquire);
    loop {
        let changed = shared.changed.notified();
        if stopping() {
            return;
        }
        match shared.take_due(Instant::now().max(next_delivery)) {
            Ok((id, pending)) => {
                // The pace; a stop meanwhile leaves this one in the store, unmarked, for the
                // next start.
                tokio::pin!(changed);
                while Instant::now() < next_delivery {
                    tokio::select! {
                        _ = tokio::time::sleep_until(next_delivery) => {}
                        _ = &mut changed => {
                            if stopping() {
                                return;
                            }
                            changed.set(shared.changed.notified());
                        }
                    }
                }
                if pending.stored && !shared.limits.cluster {
                    let (written, marked) = oneshot::channel();
                    shared.store.record(Change::Firing { id, written });
                    if !matches!(tokio::time::timeout(MARK_TIMEOUT, marked).await, Ok(Ok(true))) {
                        tracing::warn!(
                            id,
                            "delivering a schedule whose firing mark is not on disk"
                        );
                    }
                }
                let id = pending.stored.then_some(id);
                hub.deliver_scheduled(
                    id,
                    pending.channel,
                    pending.author,
                    pending.body,
                    pending.late,
                );
                next_delivery = Instant::now().max(next_delivery) + spacing;
            }
            Err(Some(due)) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(due.max(next_delivery)) => {}
                    _ = changed => {}
                }
            }
            Err(None) => changed.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Catchup, HistoryLimits};
    use crate::outbox::Outbox;
    use crate::store::MemoryStore;
    use std::collections::VecDeque;

    fn limits(per_connection: usize, per_address: usize, total: usize) -> ScheduleLimits {
        ScheduleLimits { per_connection, per_address, total, delivery_rate: 10.0, cluster: false }
    }

    fn address(last: u8) -> ClientAddress {
        ClientAddress::of([127, 0, 0, last].into())
    }

    /// A hub with one member in the feed, that member's queue, and the store behind both.
    fn hub_with_reader() -> (Arc<Hub>, Arc<Outbox>, Arc<dyn Store>) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(100));
        let history = HistoryLimits { on_join: 0, resume_max: 10 };
        let counters = crate::metrics::Counters::default();
        let hub = Arc::new(Hub::new(store.clone(), history, Vec::new(), Vec::new(), counters));
        let outbox = Arc::new(Outbox::new(10_000));
        let (evict, _) = oneshot::channel();
        assert!(hub.join(uuid::Uuid::new_v4(), "x".into(), outbox.clone(), evict, Catchup::Latest));
        (hub, outbox, store)
    }

    fn received(outbox: &Outbox) -> Vec<String> {
        let mut batch = VecDeque::new();
        outbox.take_all(&mut batch);
        batch
            .iter()
            .map(|frame| {
                let value: serde_json::Value = serde_json::from_str(frame.payload()).unwrap();
                value["data"]["text"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    fn text(text: &str) -> Body {
        Body::Text(text.into())
    }

    #[tokio::test(start_paused = true)]
    async fn delivers_in_due_order_once_each() {
        let (hub, outbox, store) = hub_with_reader();
        let scheduler = Scheduler::start(hub, store, limits(10, 10, 10), Vec::new());
        let mine = PendingCount::default();
        for (body, secs) in [("c", 3), ("a", 1), ("b", 2)] {
            let delay = Duration::from_secs(secs);
            scheduler
                .schedule(&mine, address(1), delay, Channel::Feed, "x".into(), text(body))
                .unwrap();
        }
        assert_eq!(scheduler.pending(), 3);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(received(&outbox), ["a"]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(received(&outbox), ["b", "c"]);
        assert_eq!(scheduler.pending(), 0);
        assert_eq!(mine.0.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pile_due_at_once_is_paced() {
        let (hub, outbox, store) = hub_with_reader();
        let scheduler = Scheduler::start(hub, store, limits(100, 100, 100), Vec::new());
        let mine = PendingCount::default();
        for n in 0..50 {
            let body = text(&n.to_string());
            let delay = Duration::from_secs(1);
            scheduler.schedule(&mine, address(1), delay, Channel::Feed, "x".into(), body).unwrap();
        }
        // 10 a second: after the due time and one more second, about eleven are out.
        tokio::time::sleep(Duration::from_millis(2050)).await;
        let first = received(&outbox);
        assert!((10..=12).contains(&first.len()), "{} delivered", first.len());
        tokio::time::sleep(Duration::from_secs(10)).await;
        let all: Vec<String> = first.into_iter().chain(received(&outbox)).collect();
        assert_eq!(all, (0..50).map(|n| n.to_string()).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn caps_per_connection_per_address_and_in_total() {
        let (hub, _outbox, store) = hub_with_reader();
        let scheduler = Scheduler::start(hub, store, limits(2, 3, 5), Vec::new());
        let later = Duration::from_secs(60);
        let schedule = |count: &PendingCount, last: u8| {
            scheduler.schedule(count, address(last), later, Channel::Feed, "x".into(), text("x"))
        };
        let (one, two) = (PendingCount::default(), PendingCount::default());
        assert!(schedule(&one, 1).is_ok() && schedule(&one, 1).is_ok());
        assert!(schedule(&one, 1).unwrap_err().contains("you already have 2"));
        assert!(schedule(&two, 1).is_ok());
        assert!(schedule(&two, 1).unwrap_err().contains("your address already has 3"));
        let (three, four) = (PendingCount::default(), PendingCount::default());
        assert!(schedule(&three, 2).is_ok() && schedule(&three, 2).is_ok());
        assert!(schedule(&four, 3).unwrap_err().contains("the server has too many"));
        assert_eq!(scheduler.pending(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn kept_schedules_fire_at_their_time_and_overdue_ones_at_once_marked_late() {
        let (hub, outbox, store) = hub_with_reader();
        let kept = |id, due_ms, body: &str| StoredSchedule {
            id,
            due_ms,
            channel: Channel::Feed,
            author: "x".into(),
            body: text(body),
        };
        let now = now_ms();
        let kept = vec![kept(7, now + 5_000, "on time"), kept(3, now - 60_000, "overdue")];
        let scheduler = Scheduler::start(hub, store, limits(10, 10, 10), kept);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut batch = VecDeque::new();
        outbox.take_all(&mut batch);
        assert_eq!(batch.len(), 1);
        assert!(batch[0].payload().contains(r#""text":"overdue""#));
        assert!(batch[0].payload().ends_with(r#""late":true}"#));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(received(&outbox), ["on time"]);
        // New ids go on after the kept ones.
        let mine = PendingCount::default();
        scheduler
            .schedule(
                &mine,
                address(1),
                Duration::from_secs(1),
                Channel::Feed,
                "x".into(),
                text("new"),
            )
            .unwrap();
        assert_eq!(scheduler.shared.lock().queue.keys().next().unwrap().1, 8);
    }
}
